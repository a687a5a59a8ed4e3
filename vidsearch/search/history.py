"""Search history: every search and its results, in ``LIBRARY/history.duckdb``.

Not in ``catalog.duckdb``: the catalog is written only by the ingest writer and swapped as a whole
file, so a search writing into it would race the writer (RELIABILITY.md rule 7). Each search
holds history.duckdb for one short transaction, retrying briefly while another search holds it;
failing to record is a warning, never a failed search.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

import duckdb

from vidsearch.library import Library, utcnow
from vidsearch.search.sandbox import HISTORY_DDL
from vidsearch.search.types import SearchResult

_logger = logging.getLogger(__name__)


def record_search(library: Library, result: SearchResult, *, retries: int = 20) -> str | None:
    """Append ``result`` to the library's search history; returns its ``search_id`` or None."""
    search_id = uuid.uuid4().hex
    path = library.root / "history.duckdb"
    if path.is_symlink():
        _logger.warning("%s is a symbolic link; search not recorded", path)
        return None
    row = [search_id, utcnow(), result.query, result.like_clip_id, result.k, result.offset,
           result.per_video, result.rerank, json.dumps(result.filters.to_dict(), sort_keys=True),
           result.strategy, len(result.hits), result.timings_ms.get("total", 0.0),
           json.dumps(result.timings_ms, sort_keys=True), result.index_kind, result.generation,
           result.model_name, result.model_fingerprint]
    hits = [[search_id, h.rank, h.score, h.clip_id, h.video_id, h.path, h.start_s, h.end_s,
             list(h.clip_ids), h.rerank_score] for h in result.hits]
    for attempt in range(max(1, retries)):
        try:
            with duckdb.connect(str(path)) as con:
                con.execute(HISTORY_DDL)
                con.execute("BEGIN TRANSACTION")
                con.execute("INSERT INTO searches VALUES (" + ",".join("?" * len(row)) + ")", row)
                if hits:
                    con.executemany("INSERT INTO search_results VALUES (?,?,?,?,?,?,?,?,?,?)", hits)
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
