"""The search layer's typed hand-offs: filters in, hits and results out.

Kept apart from :mod:`vidsearch.search.searcher` so that the modules that only consume results
(history, output, the web server, the remote client) import no FAISS, DuckDB or model code, and
so that ``history`` and ``searcher`` no longer import each other.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from typing import Any

from vidsearch.schemas.snippet import Snippet

# What a search can look in (`vidsearch search --in`): the pictures (InternVideo2), what is said
# (speech transcripts and subtitles) and what is written on screen (OCR).
MODALITIES: tuple[str, ...] = ("visual", "speech", "screen")

# Clip ids are positive int64 (vidsearch.schemas.ids.clip_id); JSON carries them as decimal
# strings, since a JavaScript (or jq) number holds only 53 bits.
CLIP_ID_MAX = 2**63 - 1


class SearchError(ValueError):
    """A search the user asked for cannot be done (bad filter, unknown clip, wrong model)."""


class BadClipId(ValueError):
    """Text that is not a clip id (a decimal integer in 1 .. 2**63-1)."""


def parse_clip_id(text: str | int) -> int:
    """The clip id written as ``text`` (decimal digits, optional surrounding blanks).

    The one parser of clip ids for the CLI (``--like``) and the web API (``like=``, paths).

    Raises:
        BadClipId: not decimal digits, or outside 1 .. 2**63-1 (0 is never a clip id).
    """
    if isinstance(text, bool):
        raise BadClipId(f"not a clip id: {text!r}")
    s = str(text).strip()
    # isdigit() accepts other scripts' digits and superscripts; ids are ASCII decimal only.
    if not s or len(s) > 19 or not all("0" <= c <= "9" for c in s):
        raise BadClipId(f"not a clip id: {text!r} (a positive decimal integer)")
    v = int(s)
    if not 0 < v <= CLIP_ID_MAX:
        raise BadClipId(f"not a clip id: {text!r} (clip ids are 1 .. {CLIP_ID_MAX})")
    return v


@dataclass(frozen=True)
class Filters:
    """Metadata filters. Every value is bound as a parameter; ``where`` is checked first.

    Hashable (the searcher caches the clip mask of each filter).
    """

    path_glob: str | None = None          # GLOB over videos.path, e.g. "*/pets/*.mp4"
    folder: str | None = None             # videos under this folder: "/media/pets" (absolute:
    #                                       a prefix) or "pets" (a folder of that name at any depth)
    min_duration_s: float | None = None   # video duration bounds
    max_duration_s: float | None = None
    date_from: dt.date | None = None      # file date (videos.mtime, UTC) on or after this day
    date_to: dt.date | None = None        # ... on or before this day
    from_s: float | None = None           # keep clips overlapping [from_s, to_s] inside their video
    to_s: float | None = None
    where: str | None = None              # a SQL predicate over clips/videos columns
    video_id: str | None = None

    def is_empty(self) -> bool:
        return all(v is None for v in (self.path_glob, self.folder, self.min_duration_s, self.max_duration_s,
                                       self.date_from, self.date_to, self.from_s, self.to_s, self.where,
                                       self.video_id))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (dates as ``YYYY-MM-DD``), as the search history records it."""
        return {f.name: (v.isoformat() if isinstance(v, dt.date) else v)
                for f in fields(self) for v in [getattr(self, f.name)]}

    def video_part(self) -> Filters:
        """The conditions decided per video (path, folder, duration, date, video id)."""
        return Filters(path_glob=self.path_glob, folder=self.folder, min_duration_s=self.min_duration_s,
                       max_duration_s=self.max_duration_s, date_from=self.date_from, date_to=self.date_to,
                       video_id=self.video_id)

    def check(self) -> None:
        """Refuse contradictory or meaningless bounds.

        Raises:
            SearchError: a lower bound above its upper bound, a negative time, an empty folder,
                both a path GLOB and a folder.
        """
        if _above(self.min_duration_s, self.max_duration_s):
            raise SearchError("the minimum video duration is above the maximum (min_duration > max_duration)")
        if _above(self.from_s, self.to_s):
            raise SearchError("the clip time range is empty (from > to)")
        if self.date_from is not None and self.date_to is not None and self.date_from > self.date_to:
            raise SearchError("the file date range is empty (date_from > date_to)")
        for v, what in ((self.min_duration_s, "min duration"), (self.max_duration_s, "max duration"),
                        (self.from_s, "from"), (self.to_s, "to")):
            if v is not None and not v >= 0:  # also NaN
                raise SearchError(f"{what} must be a non-negative number of seconds")
        if self.folder is not None and not self.folder.strip().strip("/"):
            raise SearchError("folder is empty")
        if self.folder is not None and self.path_glob is not None:
            raise SearchError("give a path GLOB or a folder, not both")


def _above(lo: float | None, hi: float | None) -> bool:
    return lo is not None and hi is not None and lo > hi


def parse_modalities(text: str | None) -> tuple[str, ...] | None:
    """``"visual,speech"`` -> ``("visual", "speech")`` (order of :data:`MODALITIES`, no repeats);
    None or blank -> None (every modality the library has). ``"all"`` is all three.

    Raises:
        SearchError: an unknown name.
    """
    if text is None or not text.strip():
        return None
    names = {t.strip().lower() for t in text.split(",") if t.strip()}
    if names == {"all"}:
        return MODALITIES
    bad = sorted(names - set(MODALITIES))
    if bad:
        raise SearchError(f"unknown modality {bad[0]!r}: give some of {', '.join(MODALITIES)} (comma-separated)")
    return tuple(m for m in MODALITIES if m in names)


@dataclass(frozen=True)
class TextSnippet(Snippet):
    """The matched text of a hit: the row's text (maybe cut around the marks) and the character
    spans (Python string offsets, i.e. code points) of the words that matched, with the text's source."""

    source: str = "speech"        # speech / subtitle / screen


@dataclass
class Hit:
    """One ranked result (a moment).

    ``score`` is what ranked it: the cosine of its best clip (a pictures-only search), the BM25
    of its best text row (one text modality) or the reciprocal-rank-fusion score (several);
    ``scores`` holds each matching modality's own score, never compared across modalities.
    """

    rank: int
    score: float
    clip_id: int                  # the best clip of the moment (a text hit: the clip it lies in)
    video_id: str
    path: str
    start_s: float                # the moment's extent (all merged clips, matched words), rounded to ms
    end_s: float
    clip_ids: tuple[int, ...]     # merged clips in time order
    rerank_score: float | None = None
    modalities: tuple[str, ...] = ("visual",)   # which modalities found it, best contribution first
    scores: dict[str, float] = field(default_factory=dict)  # modality -> its own best score
    snippet: TextSnippet | None = None          # the matched words (speech, subtitles, screen text)
    play_s: float | None = None   # where playback starts (a speech hit: its first matched word)

    @property
    def play_at(self) -> float:
        """Where to start playing: ``play_s``, else the moment's start."""
        return self.start_s if self.play_s is None else self.play_s


@dataclass
class SearchResult:
    """Hits plus how they were found (also what the search history records)."""

    hits: list[Hit]
    query: str | None
    like_clip_id: int | None
    k: int
    offset: int
    per_video: int | None
    rerank: int
    filters: Filters
    strategy: str                 # ann / overfetch / selector / exact-subset / exact, "+exact-new" suffix
    matched: int | None           # clips matching the filters (None: no filter)
    total_moments: int            # moments found before the [offset, offset+k) cut (lower bound)
    timings_ms: dict[str, float] = field(default_factory=dict)  # load (model), encode, filter, ann, db, total
    warnings: list[str] = field(default_factory=list)
    index_kind: str | None = None
    generation: int = 0
    model_name: str | None = None
    model_fingerprint: str | None = None
    search_id: str | None = None
    min_score: float | None = None    # hits scoring below it were left out
    best_score: float | None = None   # best score found, also when below min_score
    server: str | None = None         # URL of the `vidsearch serve` that answered; None: this process
    modalities: tuple[str, ...] = ("visual",)  # what was searched
    score_kind: str = "cosine"        # what Hit.score is: cosine, bm25 (one text modality) or rrf

    @property
    def no_good_match(self) -> bool:
        """Nothing cleared ``min_score`` (the pictures' cosine) although something was found."""
        return not self.hits and self.min_score is not None and self.best_score is not None
