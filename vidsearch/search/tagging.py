"""``vidsearch tag``: tag every clip of a library with its best labels, as committed catalog rows.

The scores are those of :mod:`vidsearch.search.tags` (prompt-ensembled label embeddings, softmax
over the label set at x100); this module runs them over a library and keeps the result where a
catalog rebuild finds it again:

- **Storage.** Rows go into extra per-commit tables (``tags``, ``tag_sets``;
  :mod:`vidsearch.schemas.tag_tables`) of commits without clips or videos, listed in the manifest
  with their SHA-256 like every shard file. The catalog is a cache of them (``tags`` view,
  ``tag_sets`` table).
- **Writer only.** Tagging holds the library's writer lock (it commits), so it waits for no
  reader and refuses while an ingest runs.
- **Rerunnable, incremental.** A run's ``tagset`` is a hash of the labels, prompt templates,
  scale, model, ``--top`` and ``--min-score``. Each commit lists the clip shards whose every clip
  it tagged; a run tags only the clips of shards that no commit of its tagset lists: the same
  command again does nothing, and after an ingest it tags only the new clips.
- **A new label set replaces the old one.** A run with another tagset tags every clip; its first
  commit makes it the current set, so readers' ``tags`` show only its rows from then on (while it
  runs, the clips tagged so far) and the writer's catalog drops the old set's rows. The old rows
  stay in their Parquet files (the manifest's history), unread.
- **Label embeddings are cached** in the user cache (``$VIDSEARCH_CACHE_DIR``, else
  ``~/.cache/vidsearch``) as ``label-embeddings/<fingerprint>.npy``: encoding the 400 Kinetics
  labels x 7 prompts costs a text-tower pass over 2,800 sentences; a cached set skips loading the
  text model at all. The file is read back without pickles and its shape and values checked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from vidsearch.library import Library, LibraryError
from vidsearch.schemas.manifest import ModelInfo, ShardEntry
from vidsearch.schemas.tables import VIDEO_SCHEMA, clip_schema
from vidsearch.schemas.tag_tables import TAG_ROW_SCHEMA, TAG_SET_SCHEMA
from vidsearch.search.tags import (
    LOGIT_SCALE,
    VIDEO_TEMPLATES,
    LabelError,
    ZeroShotTagger,
    check_labels,
    check_templates,
    tagger_fingerprint,
)

_logger = logging.getLogger(__name__)

__all__ = ["CLIPS_PER_COMMIT", "TagReport", "label_source", "make_tagger", "tag_library", "tagset_of"]

# Clips tagged per commit: bounds memory (their embeddings and scores) and the work a kill loses.
CLIPS_PER_COMMIT = 100_000
# Clips scored at once (memory: this x labels floats).
SCORE_BATCH = 8192


@dataclass
class TagReport:
    """What :func:`tag_library` did."""

    tagset: str
    labels: str
    n_labels: int
    clips_tagged: int = 0
    rows: int = 0
    commits: int = 0
    clips_already: int = 0             # clips of shards this tagset had tagged before
    replaced: str | None = None        # the previous current tagset, when this run replaces it
    embeddings_cached: bool = False    # the label embeddings came from the user cache
    seconds: float = 0.0
    top_labels: list[tuple[str, int]] = field(default_factory=list)   # (label, videos) of the current set


def tagset_of(tagger_fp: str, top_k: int, min_score: float) -> str:
    """The id of a tagging: the tagger's fingerprint plus the cut (``--top``, ``--min-score``)."""
    key = json.dumps({"tagger": tagger_fp, "top_k": int(top_k), "min_score": float(min_score)}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _cache_path(fingerprint: str) -> Path:
    from vidsearch.models.digests import user_cache_dir

    return user_cache_dir() / "label-embeddings" / f"{fingerprint}.npy"


def _cached_embeddings(fingerprint: str, n_labels: int, dim: int) -> np.ndarray | None:
    path = _cache_path(fingerprint)
    try:
        emb = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # a damaged or foreign file: encode again (and overwrite it)
        _logger.info("label embedding cache %s unreadable (%s); encoding the labels again", path, e)
        return None
    if emb.dtype != np.float32 or emb.shape != (n_labels, dim) or not np.isfinite(emb).all():
        _logger.info("label embedding cache %s does not fit (%s %s); encoding the labels again", path, emb.dtype,
                     emb.shape)
        return None
    return emb


def _store_embeddings(fingerprint: str, emb: np.ndarray) -> None:
    from vidsearch.files import atomic_output

    path = _cache_path(fingerprint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.save(f, emb.astype(np.float32), allow_pickle=False)
    except OSError as e:  # a cache: failing to keep it costs time next run, nothing else
        _logger.warning("label embeddings not cached in %s (%s)", path, e.strerror or e)


def make_tagger(info: ModelInfo, labels: Sequence[str], *, templates: Sequence[str] = VIDEO_TEMPLATES,
                checkpoint: str | None = None, tokenizer: str | None = None, device: str | None = None,
                say: Callable[[str], None] = lambda s: None) -> tuple[ZeroShotTagger, bool]:
    """A tagger for the library's model; the label embeddings from the cache when there.

    Returns:
        The tagger, and whether its embeddings came from the cache.

    Raises:
        LibraryError: the loaded text model is not the library's embedding space.
    """
    from vidsearch.search.searcher import load_text_encoder

    clean, prompts = check_labels(labels), check_templates(templates)
    cached = _cached_embeddings(tagger_fingerprint(clean, prompts, LOGIT_SCALE, info.fingerprint), len(clean),
                                info.embed_dim)
    if cached is not None:
        return ZeroShotTagger(None, clean, templates=prompts, model_fingerprint=info.fingerprint,
                              embeddings=cached), True
    say(f"encoding {len(clean)} labels x {len(prompts)} prompts with {info.name} ...")
    model = load_text_encoder(info, checkpoint=checkpoint, tokenizer=tokenizer, device=device)
    if model.fingerprint != info.fingerprint:
        raise LibraryError(f"model {model.name} (fingerprint {model.fingerprint}) is not the embedding space of "
                           f"the library (built with {info.name}, fingerprint {info.fingerprint}); pass the "
                           "checkpoint/tokenizer the library was ingested with")
    tagger = ZeroShotTagger(model.encode_text, clean, templates=prompts, model_fingerprint=info.fingerprint)
    _store_embeddings(tagger.fingerprint, tagger.embeddings)
    return tagger, False


def _covered(con: Any, tagset: str) -> tuple[set[int], str | None]:
    """Clip shards this tagset has tagged, and the library's current tagset (None: never tagged)."""
    rows = con.execute("SELECT clip_shards FROM tag_sets WHERE tagset = ?", [tagset]).fetchall()
    covered = {int(s) for (shards,) in rows for s in (shards or ())}
    cur = con.execute("SELECT tagset FROM tag_sets ORDER BY shard_id DESC LIMIT 1").fetchone()
    return covered, (str(cur[0]) if cur else None)


def tag_library(library: Library, labels: Sequence[str], *, source: str, top_k: int = 5, min_score: float = 0.0,
                templates: Sequence[str] = VIDEO_TEMPLATES, checkpoint: str | None = None,
                tokenizer: str | None = None, device: str | None = None, clips_per_commit: int = CLIPS_PER_COMMIT,
                say: Callable[[str], None] = lambda s: None) -> TagReport:
    """Tag the library's clips that this label set has not tagged yet (a writer: takes the lock).

    Args:
        library: the library.
        labels: the labels (``read_labels`` / ``builtin_labels``).
        source: where they came from, as recorded in ``tag_sets.labels`` (a path, ``builtin:NAME``).
        top_k: labels kept per clip.
        min_score: keep labels scoring at least this (a softmax share over the label set, 0..1).
        templates: prompt templates (``{}`` where the label goes).
        checkpoint, tokenizer, device: the text model, as for search.
        clips_per_commit: clips tagged per commit.
        say: receives progress lines.

    Raises:
        LabelError: bad labels, templates, ``top_k`` or ``min_score``.
        LibraryError: not a library, no clips yet, another writer holds it, wrong model.
    """
    t0 = time.monotonic()
    if top_k < 1:
        raise LabelError(f"--top must be at least 1, got {top_k}")
    if not 0.0 <= min_score <= 1.0:
        raise LabelError(f"--min-score is a share of the label set's probability, between 0 and 1, got {min_score}")
    m = library.read_manifest()
    if m.model is None or m.total_clips == 0:
        raise LibraryError(f"{library.root} has no clips yet; ingest videos first (vidsearch ingest)")
    info = m.model
    with library.lock():
        m = library.read_manifest()
        assert m.model is not None  # checked above; the lock does not change the model
        tagger, cached = make_tagger(info, labels, templates=templates, checkpoint=checkpoint, tokenizer=tokenizer,
                                     device=device, say=say)
        tagset = tagset_of(tagger.fingerprint, top_k, min_score)
        report = TagReport(tagset=tagset, labels=source, n_labels=len(tagger.labels), embeddings_cached=cached)
        library.refresh_catalog(m)  # a writer reads its state from a current catalog
        with library.open_catalog_readonly(m) as reader:
            covered, current = _covered(reader.con, tagset)
        todo = [s for s in m.shards if s.clips_rows > 0 and s.shard_id not in covered]
        report.clips_already = sum(s.clips_rows for s in m.shards if s.clips_rows > 0 and s.shard_id in covered)
        if current is not None and current != tagset:
            report.replaced = current
        if todo:
            n = sum(s.clips_rows for s in todo)
            say(f"tagging {n} clips with {len(tagger.labels)} labels (top {top_k}"
                + (f", score >= {min_score:g}" if min_score > 0 else "") + ")"
                + (f"; replaces label set {current}" if report.replaced else ""))
            _run(library, m.model, tagger, todo, tagset=tagset, source=source, top_k=top_k, min_score=min_score,
                 clips_per_commit=clips_per_commit, report=report, say=say)
            library.refresh_catalog()
        with library.open_catalog_readonly() as reader:
            report.top_labels = [(str(a), int(b)) for a, b in reader.con.execute(
                "SELECT label, count(DISTINCT video_id) AS videos FROM tags GROUP BY label "
                "ORDER BY videos DESC, label LIMIT 10").fetchall()]
    report.seconds = time.monotonic() - t0
    return report


def _run(library: Library, info: ModelInfo, tagger: ZeroShotTagger, todo: list[ShardEntry], *, tagset: str,
         source: str, top_k: int, min_score: float, clips_per_commit: int, report: TagReport,
         say: Callable[[str], None]) -> None:
    parts: list[pa.Table] = []
    shards: list[int] = []
    clips = 0
    run_id = f"tag-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}-{tagset[:8]}"
    empty_clips = clip_schema(info.embed_dim).empty_table()
    empty_videos = VIDEO_SCHEMA.empty_table()

    def commit() -> None:
        nonlocal parts, shards, clips
        rows = pa.concat_tables(parts) if parts else TAG_ROW_SCHEMA.empty_table()
        tag_set = pa.Table.from_pylist([{
            "tagset": tagset, "labels": source,
            "labels_sha256": hashlib.sha256("\n".join(tagger.labels).encode()).hexdigest(),
            "n_labels": len(tagger.labels), "templates": json.dumps(list(tagger.templates)),
            "logit_scale": tagger.logit_scale, "top_k": top_k, "min_score": float(min_score), "model": info.name,
            "model_fingerprint": info.fingerprint, "clips": clips, "clip_shards": shards, "run_id": run_id,
            "created_at": dt.datetime.now(dt.UTC)}], schema=TAG_SET_SCHEMA)
        # A commit of its own (no clips, no videos): the tag rows of the clips of `shards`.
        library.commit(empty_clips, empty_videos, run_id, tables={"tags": rows, "tag_sets": tag_set},
                       refresh_catalog=False)
        report.commits += 1
        report.clips_tagged += clips
        report.rows += rows.num_rows
        say(f"  {report.clips_tagged} clips tagged ({report.rows} tags)")
        parts, shards, clips = [], [], 0

    for entry in todo:
        t = library.read_shard(entry, "clips", columns=["clip_id", "video_id", "embedding"], verify=True)
        emb = np.asarray(t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                         np.float32).reshape(t.num_rows, -1)
        ids = t.column("clip_id").to_numpy()
        vids = t.column("video_id").to_pylist()
        for i in range(0, t.num_rows, SCORE_BATCH):
            rows = tagger.tag(emb[i:i + SCORE_BATCH], ids[i:i + SCORE_BATCH], vids[i:i + SCORE_BATCH], top_k=top_k,
                              min_score=min_score)
            parts.append(rows.append_column("tagset", pa.array([tagset] * rows.num_rows, pa.string()))
                         .cast(TAG_ROW_SCHEMA))
        shards.append(entry.shard_id)
        clips += t.num_rows
        if clips >= clips_per_commit:
            commit()
    if shards:
        commit()


def label_source(value: str) -> tuple[list[str], str]:
    """The labels named by ``--labels``: a file (one label per line) or a builtin list's name.

    Returns:
        The labels and their source as recorded (the file's absolute path, or ``builtin:NAME``).

    Raises:
        LabelError: neither an existing file nor a builtin list.
    """
    import os

    from vidsearch.search.tags import BUILTIN_LABELS, builtin_labels, read_labels

    path = Path(os.path.expanduser(value))
    if path.is_file():
        return read_labels(path), str(path.absolute())
    if value in BUILTIN_LABELS:
        return builtin_labels(value), f"builtin:{value}"
    raise LabelError(f"--labels {value}: no such file, and not a builtin list (builtin: {', '.join(BUILTIN_LABELS)})")
