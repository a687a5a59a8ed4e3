"""Search history: every search and its results, in ``LIBRARY/history.duckdb``.

Not in ``catalog.duckdb``: the catalog is written only by the ingest writer and swapped as a whole
file, so a search writing into it would race the writer (docs/RELIABILITY.md rule 7). Each search
holds history.duckdb for one short transaction, retrying briefly while another search holds it;
failing to record is a warning, never a failed search.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import duckdb

from vidsearch.library import Library, utcnow
from vidsearch.search.sandbox import HISTORY_DDL, HISTORY_UPGRADE
from vidsearch.search.types import Hit, SearchError, SearchResult, TextSnippet

# What record_search writes, by name: a file made before a column existed gets it first
# (HISTORY_UPGRADE), and a file with columns of a newer vidsearch still takes these rows.
_SEARCH_COLS = ("search_id", "searched_at", "query", "like_clip_id", "k", "offset_", "per_video", "rerank",
                "filters", "strategy", "n_results", "latency_ms", "timings", "index_kind", "library_generation",
                "model", "model_fingerprint", "modalities", "score_kind")
_RESULT_COLS = ("search_id", "rank", "score", "clip_id", "video_id", "path", "start_s", "end_s", "merged_clip_ids",
                "rerank_score", "modalities", "visual_score", "speech_score", "screen_score", "snippet",
                "snippet_marks", "snippet_source", "play_s")

_logger = logging.getLogger(__name__)


def _insert(table: str, cols: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


def record_search(library: Library, result: SearchResult, *, retries: int = 20) -> str | None:
    """Append ``result`` to the library's search history; returns its ``search_id`` or None.

    Each hit keeps its modalities, each modality's own score, the snippet (text, marked spans,
    source) and where playback starts.
    """
    search_id = uuid.uuid4().hex
    path = library.root / "history.duckdb"
    if path.is_symlink():
        _logger.warning("%s is a symbolic link; search not recorded", path)
        return None
    row = [search_id, utcnow(), result.query, result.like_clip_id, result.k, result.offset,
           result.per_video, result.rerank, json.dumps(result.filters.to_dict(), sort_keys=True),
           result.strategy, len(result.hits), result.timings_ms.get("total", 0.0),
           json.dumps(result.timings_ms, sort_keys=True), result.index_kind, result.generation,
           result.model_name, result.model_fingerprint, list(result.modalities), result.score_kind]
    hits = []
    for h in result.hits:
        sc = h.scores or {"visual": h.score}
        sn = h.snippet
        hits.append([search_id, h.rank, h.score, h.clip_id, h.video_id, h.path, h.start_s, h.end_s,
                     list(h.clip_ids), h.rerank_score, list(h.modalities), sc.get("visual"), sc.get("speech"),
                     sc.get("screen"), None if sn is None else sn.text,
                     None if sn is None else [[a, b] for a, b in sn.marks], None if sn is None else sn.source,
                     h.play_s])
    for attempt in range(max(1, retries)):
        try:
            with duckdb.connect(str(path)) as con:
                con.execute(HISTORY_DDL)
                con.execute(HISTORY_UPGRADE)
                con.execute("BEGIN TRANSACTION")
                con.execute(_insert("searches", _SEARCH_COLS), row)
                if hits:
                    con.executemany(_insert("search_results", _RESULT_COLS), hits)
                con.execute("COMMIT")
            return search_id
        except duckdb.IOException as e:  # another process holds the file: retry briefly
            if attempt == retries - 1:
                _logger.warning("search not recorded in %s: %s", path, str(e).splitlines()[0])
            time.sleep(0.02 + 0.01 * attempt)
        except duckdb.Error as e:
            _logger.warning("search not recorded in %s: %s", path, str(e).splitlines()[0])
            return None
    return None


# ---- saved searches ---------------------------------------------------------------------------------
def _saved_hit(r: dict[str, Any]) -> Hit:
    """A ``search_results`` row as a Hit (values type-checked: the file is input like any other)."""
    mods = tuple(str(m) for m in (r.get("modalities") or ("visual",)))
    scores = {m: float(r[f"{m}_score"]) for m in ("visual", "speech", "screen") if r.get(f"{m}_score") is not None}
    snippet = None
    if r.get("snippet") is not None:
        text = r["snippet"]
        if not isinstance(text, str):
            raise TypeError("snippet is not text")
        marks = tuple((int(m[0]), int(m[1])) for m in (r.get("snippet_marks") or ()))
        if any(not 0 <= a <= b <= len(text) for a, b in marks):
            raise ValueError("snippet marks outside the snippet")
        snippet = TextSnippet(text, marks, str(r.get("snippet_source") or "speech"))
    return Hit(rank=int(r["rank"]), score=float(r["score"]), clip_id=int(r["clip_id"]),
               video_id=str(r["video_id"]), path=str(r["path"]), start_s=float(r["start_s"]),
               end_s=float(r["end_s"]), clip_ids=tuple(int(c) for c in (r["merged_clip_ids"] or ())),
               rerank_score=None if r["rerank_score"] is None else float(r["rerank_score"]),
               modalities=mods, scores=scores, snippet=snippet,
               play_s=None if r.get("play_s") is None else float(r["play_s"]))


SEARCH_ID_RE = re.compile(r"^[0-9a-f]{4,32}$")
LAST = "last"


@dataclass(frozen=True)
class SavedSearch:
    """A search of ``history.duckdb`` with its hits, in their saved ranks."""

    search_id: str
    searched_at: Any
    query: str | None
    like_clip_id: int | None
    hits: list[Hit]


def load_search(con: Any, search_id: str) -> SavedSearch:
    """The saved search ``search_id`` (or a unique prefix of at least 4 hex digits, or ``last``).

    ``con`` is a sandbox connection with the history attached (:func:`~vidsearch.search.sandbox.
    open_sandbox`): history.duckdb is read read-only on a locked connection, the id bound as a
    parameter, and every value checked, since the file is input like any other.

    Raises:
        SearchError: not a search id, no such search, an ambiguous prefix, or a malformed row.
    """
    from vidsearch.search.sandbox import run_query

    sid = search_id.strip().lower()
    cols = "SELECT search_id, searched_at, query, like_clip_id FROM searches"
    if sid == LAST:
        found = run_query(con, f"{cols} ORDER BY searched_at DESC, search_id LIMIT 1").to_pylist()
    elif SEARCH_ID_RE.match(sid):
        found = run_query(con, f"{cols} WHERE starts_with(search_id, ?) ORDER BY search_id LIMIT 2", [sid]).to_pylist()
    else:
        raise SearchError(f"not a search id: {search_id!r} (32 hex digits as in `vidsearch search --json`, "
                          "a prefix of at least 4 of them, or 'last')")
    if not found:
        raise SearchError(f"no saved search {search_id!r} in history.duckdb; list them with "
                          "`vidsearch sql \"SELECT search_id, searched_at, query FROM searches ORDER BY searched_at\"`")
    if len(found) > 1:
        raise SearchError(f"search id prefix {search_id!r} matches several searches "
                          f"({found[0]['search_id']}, {found[1]['search_id']}, ...); give more digits")
    row = found[0]
    # A history made before modalities (issue 14) lacks their columns: its hits are visual.
    have = set(run_query(con, "SELECT * FROM search_results LIMIT 0").column_names)
    extra = [c for c in ("modalities", "visual_score", "speech_score", "screen_score", "snippet", "snippet_marks",
                         "snippet_source", "play_s") if c in have]
    rows = run_query(con, "SELECT rank, score, clip_id, video_id, path, start_s, end_s, merged_clip_ids, rerank_score"
                          + "".join(f", {c}" for c in extra)
                          + " FROM search_results WHERE search_id = ? ORDER BY rank", [row["search_id"]]).to_pylist()
    try:
        hits = [_saved_hit(r) for r in rows]
        like = row["like_clip_id"]
        query = row["query"]
        if query is not None and not isinstance(query, str):
            raise TypeError("query is not text")
        return SavedSearch(str(row["search_id"]), row["searched_at"], query,
                           None if like is None else int(like), hits)
    except (TypeError, ValueError) as e:
        raise SearchError(f"history.duckdb: search {row['search_id']} has a malformed row ({e})") from None
