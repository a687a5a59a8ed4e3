"""Search quality on the user's own data: recall@1/5/10, MRR and temporal IoU of a queries file.

Each query names the moment it should find: ``{"query": "...", "path": "...", "start_s": x,
"end_s": y}`` (one JSON object per line). A hit is **right** when it is in the same video (same
path after resolving, or the same ``video_id``) and its span overlaps the target span (they share
more than an instant; a target without ``start_s``/``end_s`` is the whole video). A query with
more than one right answer (the same event in several videos) lists the others in ``"also": [{"path",
"start_s", "end_s"}, ...]``; a hit answering any of them is right. Per query, the rank of the first
right hit among the top ``k`` (10) gives

- ``recall_at_K``: share of queries with a right hit at rank <= K (K = 1, 5, 10);
- ``mrr``: mean of 1/rank (0 when no right hit in the top ``k``);
- ``mean_iou``: mean temporal IoU between the first right hit and its target, over the queries
  that have one (how well the moment's extent matches, not only whether it was found).

:func:`evaluate` takes the search as a function, so it runs without a library (tests, other
engines); the CLI passes one that calls the :class:`~vidsearch.search.searcher.Searcher` with
the same filters as ``vidsearch search``.

:func:`read_msrvtt` reads the MSR-VTT 1k-A test split from its usual folder layout: the
JSFusion csv ``MSRVTT_JSFUSION_test.csv`` (columns ``key,vid_key,video_id,sentence``, 1000
sentence/video pairs, as distributed with CLIP4Clip's ``msrvtt_data.zip``) and the videos
``<video_id>.mp4`` from MSR-VTT's own archive (``MSRVTT/videos/all/video7010.mp4``) or CLIP4Clip's
``MSRVTT_Videos/`` folder. Text-to-video retrieval there is one query per sentence whose target
is the whole video (:data:`MSRVTT_PROTOCOL` lists what ingest must do to compare with published
figures).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

_logger = logging.getLogger(__name__)

__all__ = [
    "MSRVTT_PROTOCOL",
    "EvalError",
    "EvalHit",
    "EvalQuery",
    "EvalReport",
    "EvalTarget",
    "QueryOutcome",
    "evaluate",
    "find_msrvtt",
    "official_pre_text",
    "read_msrvtt",
    "read_queries",
    "temporal_iou",
]

RECALL_AT = (1, 5, 10)
MAX_QUERY_CHARS = 2000
MAX_ALSO = 1000

# What "the official protocol" means for InternVideo2-s2-1B's MSR-VTT 1k-A zero-shot T2V (51.9 R@1
# in its model zoo; InternVideo2/multi_modality scripts/evaluation/stage2/zero_shot/1B/eval_msrvtt.sh).
MSRVTT_PROTOCOL = {
    "frames": 4,                 # frames per video, one clip covering the whole video
    "sampling": "middle",        # the middle frame of each of 4 equal segments (eval), not random
    "max_text_tokens": 40,       # text truncated to 40 tokens ([CLS] included)
    "clip": "whole video",       # ingest: --segment fixed --clip-seconds 3600 --stride 3600
    "queries": 1000,             # one sentence per test video (JSFusion 1k-A)
    "score": "cosine",           # dual-encoder ranking; 51.9 adds ITM re-ranking of the top 128
}


# The official eval's caption cleaning (InternVideo2 multi_modality dataset/utils.py ``pre_text``).
_PRE_TEXT_DROP = re.compile(r"[,.'!?\"()*#:;~]")


def official_pre_text(text: str) -> str:
    """A caption as InternVideo2's official retrieval eval feeds it to the text encoder: lower
    case, ``, . ' ! ? " ( ) * # : ; ~`` deleted, ``-`` and ``/`` as spaces, ``<person>`` ->
    ``person``, runs of spaces collapsed (``dataset/utils.py: pre_text``)."""
    t = _PRE_TEXT_DROP.sub("", text.lower())
    t = t.replace("-", " ").replace("/", " ").replace("<person>", "person")
    return " ".join(t.split())


class EvalError(ValueError):
    """A queries file or dataset folder that cannot be evaluated (one line, names the file)."""


@dataclass(frozen=True)
class EvalTarget:
    """One more moment that answers a query (``"also"`` in the queries file)."""

    path: str
    start_s: float | None = None
    end_s: float | None = None
    video_id: str | None = None


@dataclass(frozen=True)
class EvalQuery:
    """A query and the moment it should find (and, in ``also``, other moments that answer it)."""

    query: str
    path: str                    # the target video (absolute, normalised)
    start_s: float | None = None  # None: the whole video
    end_s: float | None = None
    video_id: str | None = None  # when known (content fingerprint), matched as well as the path
    line: int = 0                # 1-based line of the queries file (messages)
    also: tuple[EvalTarget, ...] = ()  # other right answers (the same event elsewhere)

    def targets(self) -> tuple[EvalTarget, ...]:
        """Every moment that answers the query, the main one first."""
        return (EvalTarget(self.path, self.start_s, self.end_s, self.video_id), *self.also)


class HitLike(Protocol):
    """What :func:`evaluate` reads from a search hit (``Searcher`` hits qualify)."""

    @property
    def path(self) -> str: ...
    @property
    def start_s(self) -> float: ...
    @property
    def end_s(self) -> float: ...
    @property
    def video_id(self) -> str: ...


@dataclass(frozen=True)
class EvalHit:
    """A plain hit, for search functions that do not return ``Searcher`` hits."""

    path: str
    start_s: float
    end_s: float
    video_id: str = ""


@dataclass
class QueryOutcome:
    """How one query fared."""

    query: str
    path: str
    start_s: float | None
    end_s: float | None
    rank: int | None             # of the first right hit, 1-based; None: none in the top k
    iou: float | None            # temporal IoU of that hit with the target
    hits: int                    # hits the search returned


@dataclass
class EvalReport:
    """The figures of one evaluation (``to_dict`` is the ``--json`` output)."""

    n_queries: int
    k: int
    recall_at_1: float
    recall_at_5: float
    recall_at_10: float
    mrr: float
    mean_iou: float | None
    per_query: list[QueryOutcome] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_query"] = [asdict(q) for q in self.per_query]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _norm_path(path: str, base: Path | None = None) -> str:
    p = Path(os.path.expanduser(path))
    if not p.is_absolute() and base is not None:
        p = base / p
    return os.path.normpath(os.path.abspath(p))


def _number(obj: dict[str, Any], key: str, where: str) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise EvalError(f"{where}: {key} must be a non-negative number of seconds, got {v!r}")
    return float(v)


def read_queries(path: str | os.PathLike[str]) -> list[EvalQuery]:
    """Queries from a JSONL file: ``{"query", "path", "start_s", "end_s"}`` per line.

    Relative video paths are relative to the queries file's folder. ``start_s``/``end_s`` may
    be left out (or null) together: the target is then the whole video. Blank lines are skipped.

    Raises:
        EvalError: unreadable file, a line that is not a JSON object, a missing or mistyped
            field, an empty span; the message names the file and line.
    """
    name = os.fsdecode(path)
    base = Path(os.path.abspath(path)).parent
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise EvalError(f"{name}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise EvalError(f"{name}: not UTF-8 text (byte {e.start})") from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name}:{i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise EvalError(f"{where}: expected a JSON object with query, path, start_s, end_s")
        q, p = obj.get("query"), obj.get("path")
        if not isinstance(q, str) or not q.strip():
            raise EvalError(f"{where}: 'query' must be a non-empty string")
        if len(q) > MAX_QUERY_CHARS:
            raise EvalError(f"{where}: query longer than {MAX_QUERY_CHARS} characters")
        if not isinstance(p, str) or not p.strip():
            raise EvalError(f"{where}: 'path' must name the video the query should find")
        main = _target(obj, base, where)
        also = obj.get("also", [])
        if not isinstance(also, list) or len(also) > MAX_ALSO:
            raise EvalError(f"{where}: 'also' must be a list of at most {MAX_ALSO} objects with path, start_s, end_s")
        more = []
        for j, t in enumerate(also, 1):
            if not isinstance(t, dict) or not isinstance(t.get("path"), str) or not t["path"].strip():
                raise EvalError(f"{where}: also[{j}] must be an object with a 'path' (and start_s, end_s)")
            more.append(_target(t, base, f"{where}: also[{j}]"))
        out.append(EvalQuery(query=q.strip(), path=main.path, start_s=main.start_s, end_s=main.end_s,
                             video_id=main.video_id, line=i, also=tuple(more)))
    if not out:
        raise EvalError(f"{name}: no queries")
    return out


def _target(obj: dict[str, Any], base: Path, where: str) -> EvalTarget:
    start, end = _number(obj, "start_s", where), _number(obj, "end_s", where)
    if (start is None) != (end is None):
        raise EvalError(f"{where}: give both start_s and end_s, or neither (the whole video)")
    if start is not None and end is not None and end <= start:
        raise EvalError(f"{where}: end_s ({end:g}) must be after start_s ({start:g})")
    vid = obj.get("video_id")
    return EvalTarget(_norm_path(obj["path"], base), start, end, vid if isinstance(vid, str) and vid else None)


def temporal_iou(a0: float, a1: float, b0: float, b1: float) -> float:
    """Intersection over union of the spans ``[a0, a1]`` and ``[b0, b1]``."""
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    union = max(a1, b1) - min(a0, b0)
    return inter / union if union > 0 else 0.0


def _answers(q: EvalQuery, h: HitLike) -> EvalTarget | None:
    """The first of the query's targets the hit answers, None if none."""
    for t in q.targets():
        same = (t.video_id is not None and getattr(h, "video_id", None) == t.video_id) or \
            _norm_path(h.path) == t.path
        if same and (t.start_s is None or t.end_s is None or (h.start_s < t.end_s and h.end_s > t.start_s)):
            return t  # same video, and overlapping (not just touching) the span
    return None


def evaluate(queries: Sequence[EvalQuery], search: Callable[[str, int], Sequence[HitLike]], *,
             k: int = 10, progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Run every query through ``search(text, k)`` and score the ranked hits.

    Args:
        queries: the queries and their targets.
        search: returns the ranked hits of a text (best first), at most ``k``.
        k: hits looked at per query (at least 10, so that recall@10 means what it says).
        progress: called with (done, total) after each query.
    """
    if k < max(RECALL_AT):
        raise EvalError(f"k must be at least {max(RECALL_AT)} (recall@10 looks at 10 hits)")
    outcomes = []
    for n, q in enumerate(queries, 1):
        hits = list(search(q.query, k))[:k]
        rank, iou = None, None
        for i, h in enumerate(hits, 1):
            t = _answers(q, h)
            if t is not None:
                t0, t1 = (t.start_s, t.end_s) if t.start_s is not None and t.end_s is not None else (h.start_s, h.end_s)
                rank, iou = i, temporal_iou(h.start_s, h.end_s, t0, t1)
                break
        outcomes.append(QueryOutcome(q.query, q.path, q.start_s, q.end_s, rank, iou, len(hits)))
        if progress:
            progress(n, len(queries))
    n = len(outcomes)
    ranks = [o.rank for o in outcomes]

    def recall(at: int) -> float:
        return sum(r is not None and r <= at for r in ranks) / n if n else 0.0

    ious = [o.iou for o in outcomes if o.iou is not None]
    return EvalReport(
        n_queries=n, k=k, recall_at_1=recall(1), recall_at_5=recall(5), recall_at_10=recall(10),
        mrr=sum(1.0 / r for r in ranks if r is not None) / n if n else 0.0,
        mean_iou=sum(ious) / len(ious) if ious else None, per_query=outcomes)


# ---- MSR-VTT 1k-A -----------------------------------------------------------------------------------
MSRVTT_CSV = "MSRVTT_JSFUSION_test.csv"
_CSV_PLACES = (MSRVTT_CSV, f"msrvtt_data/{MSRVTT_CSV}", f"MSRVTT/msrvtt_data/{MSRVTT_CSV}",
               f"MSRVTT/{MSRVTT_CSV}", f"annotation/{MSRVTT_CSV}")
_VIDEO_PLACES = ("MSRVTT/videos/all", "videos/all", "MSRVTT_Videos", "videos", "MSRVTT/videos")
_VIDEO_ID = re.compile(r"^video\d{1,6}$")


def find_msrvtt(root: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The 1k-A csv and the videos folder under ``root`` (the layouts in the module docstring).

    Raises:
        EvalError: no csv or no videos folder found; the message lists where it looked.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise EvalError(f"{base}: no such folder")
    csv_path = next((base / p for p in _CSV_PLACES if (base / p).is_file()), None)
    if csv_path is None:
        raise EvalError(f"{base}: no {MSRVTT_CSV} (looked in: {', '.join(_CSV_PLACES)})")
    videos = next((base / p for p in _VIDEO_PLACES if (base / p).is_dir()), None)
    if videos is None:
        raise EvalError(f"{base}: no videos folder (looked for: {', '.join(_VIDEO_PLACES)})")
    return csv_path, videos


def read_msrvtt(root: str | os.PathLike[str], *, require_all: bool = True) -> list[EvalQuery]:
    """MSR-VTT 1k-A text-to-video queries: one per csv row, target = the whole video.

    Args:
        root: the dataset folder.
        require_all: fail when a listed video file is missing (else skip it, with a warning:
            the figures then are not comparable with published ones).

    Raises:
        EvalError: layout not found, a csv without ``video_id``/``sentence`` columns, a video id
            that is not ``video<N>`` (it would name a path), a missing video.
    """
    csv_path, videos = find_msrvtt(root)
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise EvalError(f"{csv_path}: {e}") from None
    if not rows or not {"video_id", "sentence"} <= set(rows[0]):
        raise EvalError(f"{csv_path}: expected the columns key,vid_key,video_id,sentence")
    out, missing = [], []
    for i, row in enumerate(rows, 2):
        vid, text = (row.get("video_id") or "").strip(), (row.get("sentence") or "").strip()
        if not _VIDEO_ID.match(vid):
            raise EvalError(f"{csv_path}:{i}: video_id {vid!r} is not video<N>")
        if not text:
            raise EvalError(f"{csv_path}:{i}: empty sentence")
        video = next((videos / f"{vid}{ext}" for ext in (".mp4", ".webm") if (videos / f"{vid}{ext}").is_file()), None)
        if video is None:
            missing.append(vid)
            continue
        out.append(EvalQuery(query=text, path=_norm_path(str(video)), line=i))
    if missing:
        msg = f"{videos}: {len(missing)} of {len(rows)} videos missing (first: {missing[0]}.mp4)"
        if require_all:
            raise EvalError(msg)
        _logger.warning("%s; they are left out, so the figures are not comparable with published ones", msg)
    if len(rows) != MSRVTT_PROTOCOL["queries"]:
        _logger.warning("%s has %d rows, not the 1000 of the 1k-A split", csv_path, len(rows))
    return out
