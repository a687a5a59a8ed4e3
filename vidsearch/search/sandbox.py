"""A locked, read-only DuckDB connection for user SQL (``vidsearch sql``, ``--where``) and search.

User SQL is code (DuckDB's security model; RELIABILITY.md rule 8). The pattern, verified against
the DuckDB installed here (2.0.0) by tests/reliability/test_security.py:

- an in-memory connection; ``catalog.duckdb`` and ``history.duckdb`` attached ``READ_ONLY``; views
  in the memory database so that plain ``videos``, ``clips``, ``searches`` ... resolve;
- ``enable_external_access=false`` with **no** ``allowed_directories`` / ``allowed_paths`` (they
  also grant write access: a ``COPY ... TO`` a shard overwrote it when they were set);
- extension auto-install/auto-load off, memory and threads capped, ``lock_configuration=true``;
- exactly one statement, of type SELECT (``extract_statements``), before anything runs;
- a wall-clock timeout by ``interrupt()`` from a timer thread.

The catalog is never opened for writing here: the ingest writer swaps it as a whole file, so an
attached copy stays the generation it was when attached.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import duckdb
import pyarrow as pa

from vidsearch.library import Library

_logger = logging.getLogger(__name__)

CATALOG_TABLES = ("videos", "clips", "failures", "runs")
HISTORY_TABLES = ("searches", "search_results")

HISTORY_DDL = """
CREATE TABLE IF NOT EXISTS searches (
    search_id VARCHAR PRIMARY KEY, searched_at TIMESTAMPTZ NOT NULL, query VARCHAR,
    like_clip_id BIGINT, k INTEGER NOT NULL, offset_ INTEGER NOT NULL, per_video INTEGER,
    rerank INTEGER NOT NULL, filters VARCHAR NOT NULL, strategy VARCHAR NOT NULL,
    n_results INTEGER NOT NULL, latency_ms DOUBLE NOT NULL, timings VARCHAR NOT NULL,
    index_kind VARCHAR, library_generation BIGINT NOT NULL, model VARCHAR, model_fingerprint VARCHAR
);
CREATE TABLE IF NOT EXISTS search_results (
    search_id VARCHAR NOT NULL, rank INTEGER NOT NULL, score DOUBLE NOT NULL, clip_id BIGINT NOT NULL,
    video_id VARCHAR NOT NULL, path VARCHAR NOT NULL, start_s DOUBLE NOT NULL, end_s DOUBLE NOT NULL,
    merged_clip_ids BIGINT[] NOT NULL, rerank_score DOUBLE
);
"""


class QueryRefused(ValueError):
    """User SQL was refused before it ran (not a single SELECT, or not a plain predicate)."""


class QueryFailed(ValueError):
    """User SQL ran and failed: blocked file access, a syntax or binder error, a timeout."""


def history_path(library: Library) -> str:
    return str(library.root / "history.duckdb")


def open_sandbox(library: Library, *, memory_limit: str = "2GB", threads: int = 2,
                 history: bool = True, attach_retries: int = 20) -> duckdb.DuckDBPyConnection:
    """An in-memory connection exposing the library's tables read-only, configuration locked.

    Args:
        library: the library.
        memory_limit: DuckDB memory limit of the connection.
        threads: DuckDB threads of the connection.
        history: attach ``history.duckdb`` too (``searches``, ``search_results``).
        attach_retries: tries (50 ms apart) while a search holds history.duckdb for writing.
    """
    con = duckdb.connect(":memory:")
    try:
        _attach_catalog(con, library)
        _attach_history(con, library, history, attach_retries)
        # Order matters: every ATTACH above needs file access; after this line none is possible.
        for stmt in ("SET enable_external_access = false",
                     "SET autoinstall_known_extensions = false",
                     "SET autoload_known_extensions = false",
                     f"SET memory_limit = '{_checked_size(memory_limit)}'",
                     f"SET threads = {int(threads)}",
                     "SET lock_configuration = true"):
            con.execute(stmt)
    except BaseException:
        con.close()
        raise
    return con


def _checked_size(text: str) -> str:
    t = text.strip()
    if not t or not all(c.isalnum() or c == "." for c in t):
        raise ValueError(f"bad memory limit {text!r}")
    return t


def _attach_catalog(con: duckdb.DuckDBPyConnection, library: Library) -> None:
    path = library.catalog_path
    problem = library.catalog_problem()
    if problem is not None:
        _logger.warning("catalog %s %s; reading the shards directly", path, problem)
    elif path.is_file():
        try:
            con.execute("ATTACH ? AS catalog (READ_ONLY)", [str(path)])
            for t in CATALOG_TABLES:
                con.execute(f"CREATE VIEW {t} AS SELECT * FROM catalog.main.{t}")
            return
        except duckdb.Error as e:
            _logger.warning("catalog %s unreadable (%s); reading the shards directly", path, e)
            con.execute("DETACH DATABASE IF EXISTS catalog")
    # No usable catalog: build its tables from the manifest's shards in this memory database.
    library.load_catalog_into(con)


def _attach_history(con: duckdb.DuckDBPyConnection, library: Library, history: bool, retries: int) -> None:
    path = library.root / "history.duckdb"
    if history and path.is_file():
        for attempt in range(max(1, retries)):
            try:
                con.execute("ATTACH ? AS history (READ_ONLY)", [str(path)])
                for t in HISTORY_TABLES:
                    con.execute(f"CREATE VIEW {t} AS SELECT * FROM history.main.{t}")
                return
            except duckdb.Error as e:
                # A search holds it for a few milliseconds (rule 7: one writer or many readers).
                if attempt == retries - 1:
                    _logger.warning("search history %s unavailable (%s); searches shown empty", path, e)
                con.execute("DETACH DATABASE IF EXISTS history")
                time.sleep(0.05)
    # Same columns, no rows: queries over the history work before the first search.
    con.execute(HISTORY_DDL)


def check_select(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """Return ``sql`` if it is exactly one SELECT statement; raise :class:`QueryRefused` otherwise."""
    try:
        stmts = con.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryRefused(f"SQL does not parse: {_one_line(e)}") from None
    if len(stmts) != 1:
        raise QueryRefused(f"exactly one statement is allowed, got {len(stmts)}")
    st = stmts[0]
    if st.type != duckdb.StatementType.SELECT:
        kind = str(st.type).split(".")[-1]
        raise QueryRefused(f"only SELECT queries are allowed (read-only); refused a {kind} statement")
    return sql


def validate_predicate(con: duckdb.DuckDBPyConnection, predicate: str) -> str:
    """Check a ``--where`` predicate; returns it stripped.

    It must be an expression over ``clips`` / ``videos`` columns: no statement separators, no
    comments, parentheses balanced outside string literals (so it cannot close the wrapper's
    ``WHERE (`` and append a UNION), and the wrapper must parse as exactly one SELECT.
    """
    pred = predicate.strip()
    if not pred:
        raise QueryRefused("--where predicate is empty")
    try:
        tokens = duckdb.tokenize(pred)
    except duckdb.Error as e:
        raise QueryRefused(f"--where does not parse: {_one_line(e)}") from None
    depth = 0
    for i, (pos, ttype) in enumerate(tokens):
        end = tokens[i + 1][0] if i + 1 < len(tokens) else len(pred)
        text = pred[pos:end].strip()
        if ttype == duckdb.token_type.comment:
            raise QueryRefused("--where may not contain comments")
        if ttype in (duckdb.token_type.string_const, duckdb.token_type.identifier):
            continue
        for ch in text:
            if ch == ";":
                raise QueryRefused("--where must be one predicate; ';' is not allowed")
            depth += (ch == "(") - (ch == ")")
            if depth < 0:
                raise QueryRefused("--where has an unbalanced ')': it must be a single predicate")
    if depth != 0:
        raise QueryRefused("--where has an unbalanced '(': it must be a single predicate")
    check_select(con, f"SELECT clip_id FROM clips JOIN videos USING (video_id) WHERE ({pred})")
    return pred


def run_query(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None,
              timeout_s: float | None = 30.0) -> pa.Table:
    """Run one checked SELECT with a timeout; DuckDB errors become :class:`QueryFailed`."""
    check_select(con, sql)
    timer = threading.Timer(timeout_s, con.interrupt) if timeout_s else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        return con.sql(sql, params=params or None).to_arrow_table()
    except duckdb.InterruptException:
        raise QueryFailed(f"query interrupted after the {timeout_s:g} s timeout (--timeout)") from None
    except duckdb.PermissionException as e:
        raise QueryFailed(f"refused: file, network and extension access are disabled in vidsearch SQL "
                          f"({_one_line(e)})") from None
    except duckdb.Error as e:
        raise QueryFailed(_one_line(e)) from None
    finally:
        if timer:
            timer.cancel()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split("\n")[0].split())
