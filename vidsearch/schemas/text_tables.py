"""Arrow schemas and typed rows of the text tables: ``transcripts`` (speech, subtitles) and ``screen_text``.

These tables sit beside the clip shards (issue 14: what is said; issue 15: what is written on
screen). Each is a per-commit Parquet table committed atomically with the video's clips and
loaded into the catalog as a real table, so ``vidsearch sql`` sees it. The keyword index
(:mod:`vidsearch.indexer.keyword`) is built from both through one document shape,
:data:`KEYWORD_DOC_SCHEMA`.

Times are seconds on the clips' timeline: 0 is the first video frame's presentation time (the
probe's origin), so a transcript word and a clip of the same video can be compared directly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa  # type: ignore[import-untyped]

from vidsearch.schemas.tag_tables import TAG_TABLES
from vidsearch.schemas.times import round_ms

TEXT_SCHEMA_VERSION = 1

# Where a text row comes from. "speech" = ASR (faster-whisper); "subtitle" = a text subtitle track
# (sidecar file or embedded stream); "screen" = OCR of the picture (issue 15).
Source = Literal["speech", "subtitle", "screen"]
TRANSCRIPT_SOURCES: tuple[str, ...] = ("speech", "subtitle")
TEXT_SOURCES: tuple[str, ...] = ("speech", "subtitle", "screen")

# Search modalities (`vidsearch search --in`). Subtitles are what is said, so they answer the
# "speech" modality: a line found in both the ASR transcript and the subtitles is one piece of
# evidence, not two (fusion must not count it twice).
Modality = Literal["visual", "speech", "screen"]
MODALITIES: tuple[str, ...] = ("visual", "speech", "screen")
SOURCE_MODALITY: dict[str, str] = {"speech": "speech", "subtitle": "speech", "screen": "screen"}

_META = {b"vidsearch.schema_version": str(TEXT_SCHEMA_VERSION).encode()}

WORD_TYPE = pa.struct(
    [
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),   # clipped to voice activity (speech.py)
        pa.field("word", pa.string(), nullable=False),     # as the model wrote it, leading space kept
        pa.field("prob", pa.float32(), nullable=False),    # the model's word probability
    ]
)

TRANSCRIPT_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("segment_id", pa.int64(), nullable=False),    # segment_id(); the keyword index's key
        pa.field("segment_index", pa.int32(), nullable=False),  # order inside (video, source, track)
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("text", pa.string(), nullable=False),          # plain text (tags stripped)
        pa.field("source", pa.string(), nullable=False),        # "speech" | "subtitle"
        # Which track: "asr" for speech; "sidecar:<file name>" or "stream:<index>:<codec>" for subtitles.
        pa.field("track", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=True),       # ISO code as found ("en", "eng"); null = unknown
        pa.field("model", pa.string(), nullable=True),          # ASR model id; null for subtitles
        pa.field("words", pa.list_(WORD_TYPE), nullable=True),  # word timings (speech only)
        pa.field("avg_logprob", pa.float32(), nullable=True),   # ASR confidence signals (speech only):
        pa.field("no_speech_prob", pa.float32(), nullable=True),  # filter hallucinations with SQL
        pa.field("run_id", pa.string(), nullable=False),
    ],
    metadata=_META,
)

SCREEN_TEXT_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("text_id", pa.int64(), nullable=False),        # text_row_id(); the keyword index's key
        pa.field("start_s", pa.float64(), nullable=False),      # first frame the text was read on
        pa.field("end_s", pa.float64(), nullable=False),        # last frame it was read on (+ 1 frame step)
        pa.field("text", pa.string(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),   # OCR score, 0..1
        # x0, y0, x1, y1 as fractions (0..1) of the displayed frame: independent of the OCR resolution.
        pa.field("box", pa.list_(pa.float32(), 4), nullable=True),
        pa.field("model", pa.string(), nullable=True),          # OCR engine id
        pa.field("run_id", pa.string(), nullable=False),
    ],
    metadata=_META,
)

# What the keyword index is built from: one document per transcript segment or screen-text row.
KEYWORD_DOC_SCHEMA = pa.schema(
    [
        pa.field("key", pa.int64(), nullable=False),            # segment_id / text_id
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),        # one of TEXT_SOURCES
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("words", pa.list_(WORD_TYPE), nullable=True),
    ]
)

# What a video's text extraction came to, one row per (video, kind) and commit: the resume state of
# the text stages (a silent or audio-less video is not transcribed again) and their failures. Kinds
# are the text stages: "subtitle" (always read), "speech" (``ingest --speech``), "screen" (OCR).
TEXT_KINDS: tuple[str, ...] = ("subtitle", "speech", "screen")
# The table each kind's rows go to, and (transcripts) the ``source`` value they carry there.
KIND_TABLE: dict[str, str] = {"subtitle": "transcripts", "speech": "transcripts", "screen": "screen_text"}
# The ``failures.stage`` of a failed text stage: the kind, except OCR, whose stage is named for what
# failed (reading the picture) rather than for the rows it makes (screen text).
KIND_STAGE: dict[str, str] = {"subtitle": "subtitle", "speech": "speech", "screen": "ocr"}
# KIND_STAGE in SQL (constant text: no value read from a file is formatted into it).
KIND_STAGE_SQL = "CASE kind WHEN 'screen' THEN 'ocr' ELSE kind END"
TEXT_OK = "ok"              # rows written
TEXT_NONE = "none"          # nothing to read (no subtitle track, no text on screen)
TEXT_SILENT = "silent"      # audio without speech (or speech the model wrote nothing for)
TEXT_NO_AUDIO = "no_audio"  # no audio stream: nothing to hear, not a failure
TEXT_FAILED = "failed"      # error_type / error_message say why; the video's clips stay
TEXT_STATUSES: tuple[str, ...] = (TEXT_OK, TEXT_NONE, TEXT_SILENT, TEXT_NO_AUDIO, TEXT_FAILED)

TEXT_STATUS_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),          # one of TEXT_KINDS
        pa.field("status", pa.string(), nullable=False),        # one of TEXT_STATUSES
        pa.field("model", pa.string(), nullable=True),          # ASR / OCR model id; null for subtitles
        pa.field("segments", pa.int32(), nullable=False),       # rows written by this commit
        pa.field("language", pa.string(), nullable=True),       # detected or given (speech)
        pa.field("media_s", pa.float64(), nullable=True),       # seconds of audio transcribed (speech)
        pa.field("work_s", pa.float64(), nullable=True),        # seconds the stage spent on the video
        pa.field("notes", pa.string(), nullable=True),          # tracks skipped, cut, re-encoded (one line)
        pa.field("error_type", pa.string(), nullable=True),     # status failed: a stable name
        pa.field("error_message", pa.string(), nullable=True),  # one human line naming the file
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("path", pa.string(), nullable=False),          # display path (for the failures table)
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata=_META,
)

# Catalog DDL (DuckDB): real tables like videos/clips; shard_id = the commit they came in.
TEXT_CATALOG_DDL = """
CREATE TABLE IF NOT EXISTS transcripts (
    video_id VARCHAR NOT NULL, segment_id BIGINT NOT NULL, segment_index INTEGER NOT NULL,
    start_s DOUBLE NOT NULL, end_s DOUBLE NOT NULL, text VARCHAR NOT NULL, source VARCHAR NOT NULL,
    track VARCHAR NOT NULL, language VARCHAR, model VARCHAR,
    words STRUCT(start_s DOUBLE, end_s DOUBLE, word VARCHAR, prob FLOAT)[],
    avg_logprob FLOAT, no_speech_prob FLOAT, run_id VARCHAR NOT NULL, shard_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS screen_text (
    video_id VARCHAR NOT NULL, text_id BIGINT NOT NULL, start_s DOUBLE NOT NULL, end_s DOUBLE NOT NULL,
    text VARCHAR NOT NULL, confidence FLOAT NOT NULL, box FLOAT[4], model VARCHAR,
    run_id VARCHAR NOT NULL, shard_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS text_status (
    video_id VARCHAR NOT NULL, kind VARCHAR NOT NULL, status VARCHAR NOT NULL, model VARCHAR,
    segments INTEGER NOT NULL, language VARCHAR, media_s DOUBLE, work_s DOUBLE, notes VARCHAR,
    error_type VARCHAR, error_message VARCHAR, attempts INTEGER NOT NULL, path VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL, recorded_at TIMESTAMPTZ NOT NULL, shard_id INTEGER NOT NULL,
    PRIMARY KEY (video_id, kind)
);
"""

# Extra per-commit tables a library knows (``ShardEntry.tables``): name -> schema, checked on every
# read like the clips and videos files; the zero-shot tag tables (schemas/tag_tables.py) too. A
# table not listed here (written by a newer vidsearch) is kept and verified by its SHA-256, but
# not loaded into the catalog.
EXTRA_TABLES: dict[str, pa.Schema] = {
    "transcripts": TRANSCRIPT_SCHEMA, "screen_text": SCREEN_TEXT_SCHEMA, "text_status": TEXT_STATUS_SCHEMA,
    **TAG_TABLES}


def text_row_id(video_id: str, *parts: object) -> int:
    """Deterministic positive int64 id of a text row (like ``ids.clip_id``): a rerun rewrites nothing."""
    key = ":".join([video_id, *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


def segment_id(video_id: str, source: str, track: str, index: int, start_s: float, end_s: float,
               model: str | None) -> int:
    """Id of a transcript segment: same video, track, position, span and model -> same id."""
    return text_row_id(video_id, source, track, index, round(start_s * 1000), round(end_s * 1000), model or "")


@dataclass(frozen=True)
class Word:
    """One timed word of a speech segment."""

    start_s: float
    end_s: float
    word: str
    prob: float


@dataclass(frozen=True)
class TranscriptSegment:
    """One row of ``transcripts`` (before ``run_id`` is attached at commit)."""

    video_id: str
    segment_id: int
    segment_index: int
    start_s: float
    end_s: float
    text: str
    source: str
    track: str
    language: str | None = None
    model: str | None = None
    words: tuple[Word, ...] | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None

    def __post_init__(self) -> None:
        if self.source not in TRANSCRIPT_SOURCES:
            raise ValueError(f"transcript source must be one of {TRANSCRIPT_SOURCES}, got {self.source!r}")
        if not (math.isfinite(self.start_s) and math.isfinite(self.end_s)) or self.end_s < self.start_s:
            raise ValueError(f"bad segment span {self.start_s}..{self.end_s}")


@dataclass(frozen=True)
class ScreenTextRow:
    """One row of ``screen_text`` (before ``run_id`` is attached at commit)."""

    video_id: str
    text_id: int
    start_s: float
    end_s: float
    text: str
    confidence: float
    box: tuple[float, float, float, float] | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_s) and math.isfinite(self.end_s)) or self.end_s < self.start_s:
            raise ValueError(f"bad screen-text span {self.start_s}..{self.end_s}")


def _words_value(words: tuple[Word, ...] | None) -> list[dict[str, object]] | None:
    if words is None:
        return None
    return [{"start_s": round_ms(w.start_s), "end_s": round_ms(w.end_s), "word": w.word, "prob": w.prob}
            for w in words]


def transcripts_table(rows: Iterable[TranscriptSegment], run_id: str) -> pa.Table:
    """The ``transcripts`` Parquet table of ``rows`` (schema :data:`TRANSCRIPT_SCHEMA`)."""
    rows = list(rows)
    cols: dict[str, list[object]] = {f.name: [] for f in TRANSCRIPT_SCHEMA}
    for r in rows:
        for name in cols:
            if name == "run_id":
                cols[name].append(run_id)
            elif name == "words":
                cols[name].append(_words_value(r.words))
            elif name in ("start_s", "end_s"):
                cols[name].append(round_ms(getattr(r, name)))
            else:
                cols[name].append(getattr(r, name))
    return pa.Table.from_pydict(cols, schema=TRANSCRIPT_SCHEMA)


def screen_text_table(rows: Iterable[ScreenTextRow], run_id: str) -> pa.Table:
    """The ``screen_text`` Parquet table of ``rows`` (schema :data:`SCREEN_TEXT_SCHEMA`)."""
    rows = list(rows)
    cols: dict[str, list[object]] = {f.name: [] for f in SCREEN_TEXT_SCHEMA}
    for r in rows:
        for name in cols:
            if name == "run_id":
                cols[name].append(run_id)
            elif name == "box":
                cols[name].append(list(r.box) if r.box is not None else None)
            elif name in ("start_s", "end_s"):
                cols[name].append(round_ms(getattr(r, name)))
            else:
                cols[name].append(getattr(r, name))
    return pa.Table.from_pydict(cols, schema=SCREEN_TEXT_SCHEMA)


def transcript_segments(table: pa.Table) -> list[TranscriptSegment]:
    """Rows of a ``transcripts`` table back as :class:`TranscriptSegment` (validated)."""
    table = conform(table, TRANSCRIPT_SCHEMA, "transcripts")
    out = []
    for r in table.to_pylist():
        words = None if r["words"] is None else tuple(Word(**w) for w in r["words"])
        r.pop("run_id")
        out.append(TranscriptSegment(**{**r, "words": words}))
    return out


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, or ValueError naming ``what`` and the problem.

    Parquet files are untrusted input: a missing column, a type that does not cast safely or a
    null in a non-null column is refused here rather than met later as a KeyError or a bad index.
    """
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}")
    cols = []
    for f in schema:
        col = table.column(f.name)
        if not f.nullable and col.null_count:
            raise ValueError(f"{what}: column {f.name} has {col.null_count} null value(s)")
        try:
            cols.append(col.cast(f.type, safe=True) if col.type != f.type else col)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ValueError(f"{what}: column {f.name} is {col.type}, expected {f.type} ({e})") from None
    return pa.Table.from_arrays(cols, schema=schema)


def keyword_docs(transcripts: pa.Table | None = None, screen_text: pa.Table | None = None) -> pa.Table:
    """Keyword-index documents (:data:`KEYWORD_DOC_SCHEMA`) from ``transcripts`` and ``screen_text`` tables."""
    parts: list[pa.Table] = []
    if transcripts is not None and transcripts.num_rows:
        t = conform(transcripts, TRANSCRIPT_SCHEMA, "transcripts")
        parts.append(pa.table({
            "key": t["segment_id"], "video_id": t["video_id"], "source": t["source"],
            "start_s": t["start_s"], "end_s": t["end_s"], "text": t["text"], "words": t["words"],
        }, schema=KEYWORD_DOC_SCHEMA))
    if screen_text is not None and screen_text.num_rows:
        s = conform(screen_text, SCREEN_TEXT_SCHEMA, "screen_text")
        n = s.num_rows
        parts.append(pa.table({
            "key": s["text_id"], "video_id": s["video_id"], "source": pa.array(["screen"] * n, pa.string()),
            "start_s": s["start_s"], "end_s": s["end_s"], "text": s["text"],
            "words": pa.nulls(n, pa.list_(WORD_TYPE)),
        }, schema=KEYWORD_DOC_SCHEMA))
    if not parts:
        return KEYWORD_DOC_SCHEMA.empty_table()
    return pa.concat_tables(parts)


def modalities_sources(modalities: Sequence[str]) -> tuple[str, ...]:
    """The text sources that answer ``modalities`` (``speech`` -> speech + subtitle; ``visual`` -> none)."""
    bad = [m for m in modalities if m not in MODALITIES]
    if bad:
        raise ValueError(f"unknown modality {bad[0]!r}; expected some of {', '.join(MODALITIES)}")
    return tuple(s for s in TEXT_SOURCES if SOURCE_MODALITY[s] in modalities)
