"""User SQL (``vidsearch sql``, ``--where``, the API's ``where``) on a locked, read-only DuckDB.

User SQL is code (DuckDB's security model; docs/RELIABILITY.md rule 8). Two layers:

**The locked connection** (:func:`open_sandbox`), verified against the DuckDB installed here
(2.0) by tests/reliability/test_security.py:

- an in-memory connection; ``catalog.duckdb`` and ``history.duckdb`` attached ``READ_ONLY``;
- then, before anything is read or built in it, ``enable_external_access=false`` with **no**
  ``allowed_directories`` / ``allowed_paths`` (they also grant write access: a ``COPY ... TO`` a
  shard overwrote it when they were set), extension auto-install/auto-load off, memory, threads
  and spill space capped, ``lock_configuration=true``;
- only then the catalog's tables, by :meth:`Library.load_catalog_into` (registered Arrow tables,
  bound parameters): views over the attached catalog (a view or macro in a crafted catalog file
  binds with file access already off), completed with newer shards' rows when it lags the
  manifest, or, without a usable catalog, tables built in memory from the shards;
- exactly one statement, of type SELECT (``extract_statements``), before anything runs.

**The worker process** (:class:`SqlWorker`, :class:`SqlPool`): a connection's ``interrupt()``
and ``memory_limit`` do not bound a single expression (``SELECT len(range(40000000))`` with a 1 s
timeout ran 23-57 s and reached 3.6 GB; ``repeat('x', 1e9)`` allocates before any check). So
user SQL runs in a child process (``python -c``, no fork of a threaded parent) with its own
locked sandbox, an address-space limit (``RLIMIT_AS``: its size after start-up plus the memory
limit plus :data:`WORKER_HEADROOM`) and its own spill folder, and the parent kills it (SIGKILL)
when the timeout passes. Nothing the child sends back is unpickled: a JSON header line, then
length-prefixed frames (an Arrow IPC stream, or raw int64 clip ids).

vidsearch's own queries (metadata, bound filter values) still use an in-process
:func:`open_sandbox` connection with :func:`run_query`; no user text reaches it (a ``--where``
predicate is only parsed there, never bound or run).

The catalog is never opened for writing here: the ingest writer swaps it as a whole file, so an
attached copy stays the generation it was when attached; a worker reopens its sandbox when the
manifest or catalog file changes.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

import duckdb
import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from vidsearch.library import Library

_logger = logging.getLogger(__name__)

CATALOG_TABLES = ("videos", "clips", "failures", "runs", "transcripts", "screen_text", "text_status", "tags",
                  "tag_sets")
HISTORY_TABLES = ("searches", "search_results")

# Spill space of one user query (DuckDB's temp_directory), in a private folder per worker. The
# default (90% of the free disk, under $CWD/.tmp) let one DISTINCT write 648 MB where the user
# happened to stand, which a read command must not do (and cannot, on a read-only library).
SPILL_LIMIT = "1GB"
# Address space a worker may add beyond its size after start-up plus the memory limit: Arrow
# result buffers, allocator arenas, DuckDB allocations outside its buffer manager.
WORKER_HEADROOM = 512 * 2**20
# Workers of one library kept for the server (each holds a sandbox; a third concurrent user query
# waits for one of them, up to its own timeout).
POOL_SIZE = 2
# A worker's start (interpreter, imports, attaching or loading the catalog) is not user SQL and
# does not count against a query's timeout, but it is bounded too.
START_TIMEOUT_S = 120.0

Shape = Literal["raw", "text", "json"]

HISTORY_DDL = """
CREATE TABLE IF NOT EXISTS searches (
    search_id VARCHAR PRIMARY KEY, searched_at TIMESTAMPTZ NOT NULL, query VARCHAR,
    like_clip_id BIGINT, k INTEGER NOT NULL, offset_ INTEGER NOT NULL, per_video INTEGER,
    rerank INTEGER NOT NULL, filters VARCHAR NOT NULL, strategy VARCHAR NOT NULL,
    n_results INTEGER NOT NULL, latency_ms DOUBLE NOT NULL, timings VARCHAR NOT NULL,
    index_kind VARCHAR, library_generation BIGINT NOT NULL, model VARCHAR, model_fingerprint VARCHAR,
    modalities VARCHAR[], score_kind VARCHAR
);
CREATE TABLE IF NOT EXISTS search_results (
    search_id VARCHAR NOT NULL, rank INTEGER NOT NULL, score DOUBLE NOT NULL, clip_id BIGINT NOT NULL,
    video_id VARCHAR NOT NULL, path VARCHAR NOT NULL, start_s DOUBLE NOT NULL, end_s DOUBLE NOT NULL,
    merged_clip_ids BIGINT[] NOT NULL, rerank_score DOUBLE,
    modalities VARCHAR[], visual_score DOUBLE, speech_score DOUBLE, screen_score DOUBLE,
    snippet VARCHAR, snippet_marks INTEGER[][], snippet_source VARCHAR, play_s DOUBLE
);
"""
# Columns added to a history.duckdb made before modalities existed (issue 14): a writer adds them
# (ALTER TABLE ... ADD COLUMN IF NOT EXISTS) before its first insert; the old rows read as NULL.
HISTORY_UPGRADE = """
ALTER TABLE searches ADD COLUMN IF NOT EXISTS modalities VARCHAR[];
ALTER TABLE searches ADD COLUMN IF NOT EXISTS score_kind VARCHAR;
ALTER TABLE search_results ADD COLUMN IF NOT EXISTS modalities VARCHAR[];
ALTER TABLE search_results ADD COLUMN IF NOT EXISTS visual_score DOUBLE;
ALTER TABLE search_results ADD COLUMN IF NOT EXISTS speech_score DOUBLE;
ALTER TABLE search_results ADD COLUMN IF NOT EXISTS screen_score DOUBLE;
ALTER TABLE search_results ADD COLUMN IF NOT EXISTS snippet VARCHAR;
ALTER TABLE search_results ADD COLUMN IF NOT EXISTS snippet_marks INTEGER[][];
ALTER TABLE search_results ADD COLUMN IF NOT EXISTS snippet_source VARCHAR;
ALTER TABLE search_results ADD COLUMN IF NOT EXISTS play_s DOUBLE;
"""


class QueryRefused(ValueError):
    """User SQL was refused before it ran (not a single SELECT, or not a plain predicate)."""


class QueryFailed(ValueError):
    """User SQL ran and failed: blocked file access, a syntax or binder error, a timeout, memory."""


def history_path(library: Library) -> str:
    return str(library.root / "history.duckdb")


# ---- the locked connection ----------------------------------------------------------------------

def open_sandbox(library: Library, *, memory_limit: str = "2GB", threads: int = 2,
                 history: bool = True, attach_retries: int = 20, spill_dir: str | None = None,
                 spill_limit: str = SPILL_LIMIT) -> duckdb.DuckDBPyConnection:
    """An in-memory connection exposing the library's tables read-only, configuration locked.

    Args:
        library: the library.
        memory_limit: DuckDB memory limit of the connection.
        threads: DuckDB threads of the connection.
        history: attach ``history.duckdb`` too (``searches``, ``search_results``).
        attach_retries: tries (50 ms apart) while a search holds history.duckdb for writing.
        spill_dir: a folder DuckDB may create to spill to (at most ``spill_limit``); None: no
            spilling (queries past the memory limit fail instead).
        spill_limit: size cap of the spill folder.
    """
    con = duckdb.connect(":memory:")
    try:
        catalog = _attach_catalog(con, library)
        hist = history and _attach_history(con, library, attach_retries)
        # Order matters: the ATTACHes above need file access; from the next line on none is
        # possible, and everything read or built below (views, the in-memory catalog) runs locked.
        _lock_down(con, memory_limit=memory_limit, threads=threads, spill_dir=spill_dir, spill_limit=spill_limit)
        # Views over the attached catalog when it is current; completed with the rows of newer
        # shards when it is behind the manifest (a writer killed or out of disk before its
        # refresh: every committed clip stays searchable, D9); without a usable one, its tables
        # built from the manifest's shards in this memory database. Arrow tables and constant SQL
        # only: this runs locked.
        library.load_catalog_into(con, attached="catalog" if catalog else None)
        if not (hist and _create_views(con, "history", HISTORY_TABLES)):
            # Same columns, no rows: queries over the history work before the first search.
            con.execute(HISTORY_DDL)
    except BaseException:
        con.close()
        raise
    return con


def _lock_down(con: duckdb.DuckDBPyConnection, *, memory_limit: str | None = None, threads: int | None = None,
               spill_dir: str | None = None, spill_limit: str = SPILL_LIMIT) -> None:
    """Caps, then no file/network/extension access, then configuration locked for good."""
    spill = "" if spill_dir is None else spill_dir.replace("'", "''")
    # No progress bar: DuckDB draws one on stderr for queries past 2 s, into the user's terminal
    # or the server's log.
    stmts = [f"SET temp_directory = '{spill}'", f"SET max_temp_directory_size = '{_checked_size(spill_limit)}'",
             "SET enable_progress_bar = false"]
    if memory_limit is not None:
        stmts.append(f"SET memory_limit = '{_checked_size(memory_limit)}'")
    if threads is not None:
        stmts.append(f"SET threads = {int(threads)}")
    stmts += ["SET enable_external_access = false", "SET autoinstall_known_extensions = false",
              "SET autoload_known_extensions = false", "SET lock_configuration = true"]
    for stmt in stmts:
        con.execute(stmt)


def _checked_size(text: str) -> str:
    t = text.strip()
    if not t or not all(c.isalnum() or c == "." for c in t):
        raise ValueError(f"bad memory limit {text!r}")
    return t


_UNITS = {"": 1, "b": 1, "bytes": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def size_bytes(text: str) -> int:
    """Bytes of a DuckDB-style size (``2GB`` = 2e9, ``512MiB`` = 512 * 2**20)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if m is None or m.group(2).lower() not in _UNITS:
        raise ValueError(f"bad size {text!r} (e.g. 2GB, 512MiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _attach_catalog(con: duckdb.DuckDBPyConnection, library: Library) -> bool:
    path = library.catalog_path
    problem = library.catalog_problem()
    if problem is not None:
        _logger.warning("catalog %s %s; reading the shards directly", path, problem)
        return False
    if not path.is_file():
        return False
    try:
        con.execute("ATTACH ? AS catalog (READ_ONLY)", [str(path)])
        return True
    except duckdb.Error as e:
        _logger.warning("catalog %s unreadable (%s); reading the shards directly", path, _one_line(e))
        con.execute("DETACH DATABASE IF EXISTS catalog")
        return False


def _attach_history(con: duckdb.DuckDBPyConnection, library: Library, retries: int) -> bool:
    path = library.root / "history.duckdb"
    if not path.is_file():
        return False
    for attempt in range(max(1, retries)):
        try:
            con.execute("ATTACH ? AS history (READ_ONLY)", [str(path)])
            return True
        except duckdb.Error as e:
            # A search holds it for a few milliseconds (rule 7: one writer or many readers).
            if attempt == retries - 1:
                _logger.warning("search history %s unavailable (%s); searches shown empty", path, _one_line(e))
            con.execute("DETACH DATABASE IF EXISTS history")
            time.sleep(0.05)
    return False


def _create_views(con: duckdb.DuckDBPyConnection, db: str, tables: tuple[str, ...]) -> bool:
    """Views ``t`` over ``db.main.t`` (runs locked: binding them reads nothing outside)."""
    try:
        for t in tables:
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM {db}.main.{t}")
        return True
    except duckdb.Error as e:
        _logger.warning("%s database unusable (%s); %s", db, _one_line(e),
                        "reading the shards directly" if db == "catalog" else "searches shown empty")
        for t in tables:
            con.execute(f"DROP VIEW IF EXISTS {t}")
        con.execute(f"DETACH DATABASE IF EXISTS {db}")
        return False


def recent_queries(library: Library, limit: int = 5) -> list[str]:
    """The latest distinct text queries of ``history.duckdb``, newest first ([] when unreadable).

    The file is read like user SQL reads it: attached read-only to a locked connection, so a
    crafted history whose ``searches`` is a view over files reads nothing.
    """
    con = duckdb.connect(":memory:")
    try:
        if not _attach_history(con, library, retries=1):
            return []
        _lock_down(con, memory_limit="256MB", threads=1)
        rows = con.execute("SELECT query FROM history.main.searches WHERE query IS NOT NULL "
                           "GROUP BY query ORDER BY max(searched_at) DESC LIMIT ?", [int(limit)]).fetchall()
        return [r[0] for r in rows if isinstance(r[0], str)]
    except duckdb.Error as e:
        _logger.warning("search history %s unreadable (%s)", history_path(library), _one_line(e))
        return []
    finally:
        con.close()


# ---- checks (parse only) -------------------------------------------------------------------------

_PARSER: duckdb.DuckDBPyConnection | None = None
_PARSER_LOCK = threading.Lock()


@contextlib.contextmanager
def _parser() -> Iterator[duckdb.DuckDBPyConnection]:
    # One empty connection for parsing (opening one costs tens of ms): no data is reachable from
    # it, and a lock keeps threads (the server's) from using it at once.
    global _PARSER
    with _PARSER_LOCK:
        if _PARSER is None:
            _PARSER = duckdb.connect(":memory:")
        yield _PARSER


def check_select(con: duckdb.DuckDBPyConnection | None, sql: str) -> str:
    """Return ``sql`` if it is exactly one SELECT statement; raise :class:`QueryRefused` otherwise.

    Parses only (``con`` None: a private empty connection).
    """
    if con is None:
        with _parser() as c:
            return check_select(c, sql)
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


def validate_predicate(con: duckdb.DuckDBPyConnection | None, predicate: str) -> str:
    """Check a ``--where`` predicate; returns it stripped. Parses only, runs nothing.

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
    """Run one of vidsearch's own SELECTs (bound values only) with an interrupt timeout.

    Not for user SQL: ``interrupt()`` does not stop a single long expression (use
    :func:`run_user_sql` / :func:`matching_clip_ids`). DuckDB errors become :class:`QueryFailed`.
    """
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
        raise QueryFailed(_permission_message(e)) from None
    except duckdb.Error as e:
        raise QueryFailed(_one_line(e)) from None
    finally:
        if timer:
            timer.cancel()


def _permission_message(e: BaseException) -> str:
    return f"refused: file, network and extension access are disabled in vidsearch SQL ({_one_line(e)})"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split("\n")[0].split())


# ---- what a worker answers ------------------------------------------------------------------------

# Result columns that stay as they are in every shape; the rest become text (DuckDB's own
# rendering: 'infinity', BC dates, intervals, blobs) or, for JSON, DuckDB's to_json.
_NATIVE_TEXT = {"tinyint", "smallint", "integer", "bigint", "utinyint", "usmallint", "uinteger", "ubigint",
                "float", "double", "varchar"}
_NATIVE_JSON = _NATIVE_TEXT | {"boolean", "decimal"}
# 128-bit integers: Arrow has no such type (DuckDB's decimal128 turns UHUGEINT's maximum into
# -1), so JSON gets their exact decimal text and turns it back into an integer.
_WIDE_INT = {"hugeint", "uhugeint"}
_NESTED = {"list", "array", "struct", "map", "union", "tuple"}
ENCODING_KEY = b"vidsearch.encoding"   # field metadata: b"native", b"text", b"json" or b"int"
TYPE_KEY = b"duckdb.type"              # field metadata: the DuckDB type of the user's column


def library_stamp(library: Library) -> tuple[tuple[int, int, int] | None, ...]:
    """Identity of the manifest and catalog files (both are replaced whole by writers)."""
    out: list[tuple[int, int, int] | None] = []
    for p in (library.manifest_path, library.catalog_path, library.catalog_wal_path):
        try:
            st = os.stat(p)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class _Box:
    """The child's side: a locked sandbox, reopened when the library's files change."""

    def __init__(self, library: Library, cfg: dict[str, Any]) -> None:
        self.library = library
        self.cfg = cfg
        self.con: duckdb.DuckDBPyConnection | None = None
        self.stamp: tuple[Any, ...] | None = None
        self._join: dict[str, bool] = {}

    def ensure_open(self) -> None:
        stamp = library_stamp(self.library)
        if self.con is not None and stamp == self.stamp:
            return
        self.close()
        for _ in range(5):  # a writer swapping a file while it is attached: attach again
            self.con = open_sandbox(self.library, memory_limit=self.cfg["memory_limit"],
                                    threads=self.cfg["threads"], history=self.cfg["history"],
                                    spill_dir=self.cfg["spill_dir"], spill_limit=self.cfg["spill_limit"])
            after = library_stamp(self.library)
            if after == stamp:
                break
            self.con.close()
            stamp = after
        self.stamp = stamp
        self._join.clear()

    def close(self) -> None:
        if self.con is not None:
            self.con.close()  # DuckDB removes its spill files with the connection
            self.con = None

    def query(self, sql: str, shape: Shape) -> pa.RecordBatchReader:
        assert self.con is not None
        check_select(self.con, sql)
        rel = self.con.sql(sql)
        if rel is None:  # not a query after all (check_select lets only SELECT through)
            raise QueryRefused("only SELECT queries are allowed")
        names, types = list(rel.columns), [t for t in rel.types]
        exprs, fields = [], []
        for i, (name, t) in enumerate(zip(names, types, strict=True), start=1):
            kind = str(t.id)
            if shape == "raw" or kind in (_NATIVE_TEXT if shape == "text" else _NATIVE_JSON):
                enc, expr = b"native", f"#{i}"
            elif shape == "json" and kind in _NESTED:
                enc, expr = b"json", f"to_json(#{i})"
            elif shape == "json" and kind in _WIDE_INT:
                enc, expr = b"int", f"CAST(#{i} AS VARCHAR)"
            else:
                enc, expr = b"text", f"CAST(#{i} AS VARCHAR)"
            exprs.append(expr)
            fields.append((name, {ENCODING_KEY: enc, TYPE_KEY: str(t).encode()}))
        reader = rel.project(", ".join(exprs)).to_arrow_reader(65536)
        schema = pa.schema([pa.field(n, f.type, metadata=md)
                            for (n, md), f in zip(fields, reader.schema, strict=True)])
        return pa.RecordBatchReader.from_batches(
            schema, (pa.RecordBatch.from_arrays(b.columns, schema=schema) for b in reader))

    def ids(self, predicate: str) -> np.ndarray:
        """Sorted unique clip ids of clips (joined to their video) satisfying ``predicate``."""
        assert self.con is not None
        pred = validate_predicate(self.con, predicate)
        join_sql = f"FROM clips JOIN videos USING (video_id) WHERE ({pred})"
        join = self._join.get(pred)
        if join is None:
            # Same meaning without the join when every column resolves in clips: the join
            # version must bind (an ambiguous or unknown column stays an error), and the
            # clips-alone version too (else it names a videos column).
            self.con.sql(f"SELECT clips.clip_id {join_sql} LIMIT 0").fetchall()
            try:
                self.con.sql(f"SELECT clips.clip_id FROM clips WHERE ({pred}) LIMIT 0").fetchall()
                join = False
            except duckdb.Error:
                join = True
            self._join[pred] = join
        sql = f"SELECT clips.clip_id {join_sql}" if join else f"SELECT clips.clip_id FROM clips WHERE ({pred})"
        col = self.con.sql(sql).fetchnumpy()["clip_id"]
        ids = np.asarray(col[~col.mask] if np.ma.isMaskedArray(col) else col, dtype=np.int64)
        return np.unique(ids)


def _worker_main() -> None:
    """Entry point of a worker process (``python -c``): serve requests on stdin/stdout."""
    # The protocol owns the real stdout; anything printed by a library goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; it kills us
    inp = sys.stdin.buffer
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    init = json.loads(inp.readline())
    private_dir = os.path.dirname(init["spill_dir"]) if init.get("spill_dir") else None
    _watch_parent(int(init["ppid"]), private_dir)
    try:
        _serve(inp, out, init)
    finally:
        # However the worker leaves (its input ended because the parent closed it or died, or it
        # could not start), its private folder goes before the process does: a parent killed
        # between two requests ends our input, and nobody else would remove it.
        if private_dir is not None and not _remove_private(private_dir):
            _logger.warning("could not remove the SQL worker's folder %s", private_dir)


def _serve(inp: IO[bytes], out: IO[bytes], init: dict[str, Any]) -> None:
    """Open the library, report ready, then answer requests until the input ends."""
    box: _Box | None = None
    try:
        box = _Box(Library(init["root"]), init)
        box.ensure_open()
        try:
            base: int | None = _vm_size()
        except OSError:  # no /proc (not Linux): DuckDB's memory_limit and the timeout still hold
            base = None
            _logger.warning("no address-space limit for user SQL on this system (no /proc/self/status)")
        limit = None if base is None else base + size_bytes(init["memory_limit"]) + int(init["headroom"])
        if limit is not None:
            _set_address_limit(limit)
        _send(out, {"ok": True, "ready": True, "pid": os.getpid(), "vm_base": base, "as_limit": limit})
    except Exception as e:
        _send(out, {"ok": False, "kind": "failed", "error": f"cannot open the library for SQL: {_one_line(e)}"})
        return
    for line in inp:
        req = json.loads(line)
        try:
            box.ensure_open()
            if req["op"] == "query":
                _send_stream(out, box.query(req["sql"], req["shape"]), init["memory_limit"])
            elif req["op"] == "ids":
                ids = box.ids(req["predicate"])
                _send(out, {"ok": True, "n": len(ids), "stamp": box.stamp}, ids.astype("<i8").tobytes())
            else:
                _send(out, {"ok": False, "kind": "failed", "error": f"unknown request {req['op']!r}"})
        except Exception as e:
            _send(out, _error_header(e, init["memory_limit"]))
    box.close()


def _remove_private(private_dir: str) -> bool:
    """Remove the worker's private folder; a few tries, as a query still running (the orphan
    watcher's case) may add a spill file while the tree is being removed. True when it is gone."""
    for _ in range(5):
        shutil.rmtree(private_dir, ignore_errors=True)
        if not os.path.lexists(private_dir):
            return True
        time.sleep(0.05)
    return False


def _watch_parent(ppid: int, private_dir: str | None) -> None:
    # A killed parent cannot kill us: leave as soon as we are orphaned, even mid-query (DuckDB
    # releases the GIL while it runs). PR_SET_PDEATHSIG would follow the spawning *thread*,
    # which in the server is a pool thread that may exit while we are still wanted. The parent
    # removes our private folder when it stops us (SIGKILL); orphaned, we remove it ourselves.
    def watch() -> None:
        while True:
            if os.getppid() != ppid:
                if private_dir:
                    _remove_private(private_dir)
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


def _set_address_limit(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _error_header(e: BaseException, memory_limit: str) -> dict[str, Any]:
    """The reply header for a failed request."""
    if isinstance(e, QueryRefused):
        return {"ok": False, "kind": "refused", "error": str(e)}
    if isinstance(e, duckdb.PermissionException):
        msg = _permission_message(e)
    elif isinstance(e, (duckdb.OutOfMemoryException, MemoryError)):
        msg = f"query ran out of memory (limit {memory_limit}): {_one_line(e) or 'allocation failed'}"
    elif isinstance(e, (QueryFailed, duckdb.Error, pa.ArrowException)):
        msg = _one_line(e)
    else:  # a bug here, not in the query: still one line, and the worker lives on
        msg = f"internal error in the SQL worker: {type(e).__name__}: {_one_line(e)}"
    return {"ok": False, "kind": "failed", "error": msg}


# Reply framing after the header line: 8-byte little-endian signed lengths, each followed by that
# many bytes; 0 ends the reply; -1 says the rest of the reply is an error header line (a query
# can fail after its first rows were sent).
_END, _ERROR = 0, -1


def _frame(n: int) -> bytes:
    return n.to_bytes(8, "little", signed=True)


def _send(out: IO[bytes], header: dict[str, Any], payload: bytes = b"") -> None:
    out.write(json.dumps(header).encode() + b"\n")
    if header.get("ok"):
        if payload:
            out.write(_frame(len(payload)) + payload)
        out.write(_frame(_END))
    out.flush()


class _FrameSink:
    """A write-only file for Arrow that frames each write."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        b = bytes(data)
        if b:
            self.out.write(_frame(len(b)) + b)
        return len(b)

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        self.closed = True


def _send_stream(out: IO[bytes], reader: pa.RecordBatchReader, memory_limit: str) -> None:
    # The first batch decides most run-time failures: those are sent as a plain error reply.
    batches = iter(reader)
    first = next(batches, None)
    out.write(json.dumps({"ok": True}).encode() + b"\n")
    try:
        sink = pa.PythonFile(_FrameSink(out), mode="w")
        with pa.ipc.new_stream(sink, reader.schema) as w:
            if first is not None:
                w.write_batch(first)
            for b in batches:
                w.write_batch(b)
    except Exception as e:
        out.write(_frame(_ERROR) + json.dumps(_error_header(e, memory_limit)).encode() + b"\n")
    else:
        out.write(_frame(_END))
    out.flush()


# ---- the parent's side ------------------------------------------------------------------------------

class _Timeout(Exception):
    pass


class _Died(Exception):
    pass


class SqlWorker:
    """A child process with its own locked sandbox of one library; user SQL runs there.

    Not thread-safe: one request at a time (:class:`SqlPool` hands workers out). A request past
    its timeout kills the process; the next request starts a new one.

    Args:
        library: the library (its root is all the child gets).
        memory_limit: DuckDB memory limit; the child's address space may grow by this plus
            :data:`WORKER_HEADROOM` over its size after start-up.
        threads: DuckDB threads.
        history: attach ``history.duckdb`` (a reader holds it: keep such a worker short-lived,
            the history's writer waits for it).
        spill_limit: cap of the private spill folder.
    """

    def __init__(self, library: Library, *, memory_limit: str = "2GB", threads: int = 2, history: bool = False,
                 spill_limit: str = SPILL_LIMIT) -> None:
        size_bytes(memory_limit)  # a bad value fails here, not in the child
        _checked_size(spill_limit)
        self.library = library
        self.memory_limit = memory_limit
        self.threads = int(threads)
        self.history = history
        self.spill_limit = spill_limit
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: str | None = None
        self._buf = bytearray()
        self._ready = False
        self.info: dict[str, Any] = {}

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the child (returns at once; :meth:`request` waits for it to be ready)."""
        if self.alive:
            return
        self.kill()
        self._tmp = tempfile.mkdtemp(prefix="vidsearch-sql-")  # 0700: spilled rows are the user's data
        env = {**os.environ, "MALLOC_ARENA_MAX": "2", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from vidsearch.search.sandbox import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        init = {"ppid": os.getpid(), "root": str(self.library.root), "memory_limit": self.memory_limit,
                "threads": self.threads, "history": self.history, "spill_dir": os.path.join(self._tmp, "spill"),
                "spill_limit": self.spill_limit, "headroom": WORKER_HEADROOM}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(init).encode() + b"\n")
        self.proc.stdin.flush()
        self._buf.clear()
        self._ready = False

    def _wait_ready(self) -> None:
        if self._ready and self.alive:
            return
        if not self.alive:
            self.start()
        try:
            header, _ = self._read_reply(time.monotonic() + START_TIMEOUT_S)
        except _Timeout:
            self.kill()
            raise QueryFailed(f"the SQL worker did not start within {START_TIMEOUT_S:g} s") from None
        except _Died as e:
            self.kill()
            raise QueryFailed(f"the SQL worker failed to start ({e})") from None
        if not header.get("ok"):
            self.kill()
            raise QueryFailed(str(header.get("error", "the SQL worker failed to start")))
        self.info = header
        self._ready = True

    def request(self, req: dict[str, Any], timeout_s: float | None) -> tuple[dict[str, Any], bytes]:
        """Send one request and wait for its reply, at most ``timeout_s`` after it was sent."""
        self._wait_ready()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            self.kill()
            raise QueryFailed("the SQL worker exited unexpectedly") from None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            header, payload = self._read_reply(deadline)
        except _Timeout:
            self.kill()
            raise QueryFailed(f"query stopped after the {timeout_s:g} s timeout (--timeout)") from None
        except _Died as e:
            self.kill()
            raise QueryFailed(f"query stopped: {e} (memory limit {self.memory_limit}; "
                              "a query past it is ended)") from None
        if not header.get("ok"):
            cls = QueryRefused if header.get("kind") == "refused" else QueryFailed
            raise cls(str(header.get("error", "query failed")))
        return header, payload

    def _read_reply(self, deadline: float | None) -> tuple[dict[str, Any], bytes]:
        line = self._read_line(deadline)
        try:
            header = json.loads(line)
        except ValueError:
            self.kill()
            raise _Died("the SQL worker sent garbage") from None
        if not isinstance(header, dict):
            raise _Died("the SQL worker sent garbage")
        if not header.get("ok"):
            return header, b""
        chunks: list[bytes] = []
        while True:
            n = int.from_bytes(self._read_exact(8, deadline), "little", signed=True)
            if n == _END:
                return header, b"".join(chunks)
            if n == _ERROR:
                try:
                    err = json.loads(self._read_line(deadline))
                except ValueError:
                    raise _Died("the SQL worker sent garbage") from None
                return (err if isinstance(err, dict) and not err.get("ok") else
                        {"ok": False, "error": "the SQL worker sent garbage"}), b""
            if n < 0:
                raise _Died("the SQL worker sent garbage")
            chunks.append(self._read_exact(n, deadline))

    def _fill(self, deadline: float | None) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            raise _Timeout()
        data = os.read(fd, 1 << 20)
        if not data:
            code = self.proc.wait()
            raise _Died(f"the SQL worker died ({_exit_text(code)})")
        self._buf += data

    def _read_line(self, deadline: float | None) -> bytes:
        while (i := self._buf.find(b"\n")) < 0:
            self._fill(deadline)
        line = bytes(self._buf[:i])
        del self._buf[:i + 1]
        return line

    def _read_exact(self, n: int, deadline: float | None) -> bytes:
        while len(self._buf) < n:
            self._fill(deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def kill(self) -> None:
        """Stop the child now (SIGKILL) and remove its spill folder."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
            self.proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._ready = False
        self._buf.clear()

    def close(self) -> None:
        """Let the child finish (end of its input), then clean up."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass
class _Memo:
    stamp: tuple[Any, ...]
    ids: np.ndarray


class SqlPool:
    """Up to ``size`` :class:`SqlWorker` of one library, shared by threads (the server).

    A query waits for a free worker at most its own timeout. Results of :meth:`matching_clip_ids`
    are remembered per predicate while the library's files stay the same (a few, and at least
    the latest): the server evaluates a ``where`` before it takes its lock, and the searcher's
    own call under that lock is then a lookup.
    """

    MEMO_ENTRIES = 8
    MEMO_BYTES = 256 * 2**20

    def __init__(self, library: Library, *, memory_limit: str = "2GB", threads: int = 2,
                 size: int = POOL_SIZE) -> None:
        self.library = library
        self.memory_limit = memory_limit
        self.threads = threads
        self.size = max(1, int(size))
        self._idle: list[SqlWorker] = []
        self._busy = 0
        self._cond = threading.Condition()
        self._memo: OrderedDict[str, _Memo] = OrderedDict()
        self._closed = False

    @contextlib.contextmanager
    def _worker(self, timeout_s: float | None) -> Iterator[SqlWorker]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not self._idle and self._busy >= self.size:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise QueryFailed(f"{self._busy} SQL queries are running on this library; "
                                      f"none finished within the {timeout_s:g} s timeout")
                self._cond.wait(left)
            if self._closed:
                raise QueryFailed("the SQL workers are closed")
            w = self._idle.pop() if self._idle else SqlWorker(self.library, memory_limit=self.memory_limit,
                                                              threads=self.threads)
            self._busy += 1
        try:
            yield w
        finally:
            with self._cond:
                self._busy -= 1
                if self._closed:
                    w.close()
                else:
                    self._idle.append(w)
                self._cond.notify()

    def prestart(self) -> None:
        """Start a worker now, without waiting for it (its start-up, ~0.3-1.5 s of interpreter
        and imports, then overlaps other work such as loading a model)."""
        with self._cond:  # started under the lock: no other thread can take it half-started
            if self._closed or self._idle or self._busy >= self.size:
                return
            w = SqlWorker(self.library, memory_limit=self.memory_limit, threads=self.threads)
            w.start()
            self._idle.append(w)

    def query(self, sql: str, *, timeout_s: float | None = 30.0, shape: Shape = "raw") -> pa.Table:
        """Run one user SELECT in a worker; see :func:`run_user_sql`."""
        with self._worker(timeout_s) as w:
            _, payload = w.request({"op": "query", "sql": sql, "shape": shape}, timeout_s)
        return pa.ipc.open_stream(payload).read_all()

    def matching_clip_ids(self, predicate: str, *, timeout_s: float | None = 30.0) -> np.ndarray:
        """See :func:`matching_clip_ids`."""
        pred = validate_predicate(None, predicate)  # refused here without starting a worker
        stamp = library_stamp(self.library)
        with self._cond:
            m = self._memo.get(pred)
            if m is not None and m.stamp == stamp:
                self._memo.move_to_end(pred)
                return m.ids
        with self._worker(timeout_s) as w:
            header, payload = w.request({"op": "ids", "predicate": pred}, timeout_s)
        if len(payload) % 8:
            raise QueryFailed("the SQL worker sent a malformed id list")
        ids = np.frombuffer(payload, dtype="<i8").astype(np.int64, copy=False)
        ids.flags.writeable = False
        got = tuple(tuple(x) if x is not None else None for x in header.get("stamp") or ())
        with self._cond:
            self._memo[pred] = _Memo(got, ids)
            self._memo.move_to_end(pred)
            while len(self._memo) > 1 and (len(self._memo) > self.MEMO_ENTRIES or
                                            sum(e.ids.nbytes for e in self._memo.values()) > self.MEMO_BYTES):
                self._memo.popitem(last=False)
        return ids

    def close(self) -> None:
        """Stop every worker (busy ones when their query returns)."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._memo.clear()
        for w in idle:
            w.close()


_POOLS: dict[tuple[str, str, int], SqlPool] = {}
_POOLS_LOCK = threading.Lock()


def sql_pool(library: Library, *, memory_limit: str = "2GB", threads: int = 2) -> SqlPool:
    """The process-wide :class:`SqlPool` of ``library`` (created on first use, closed at exit)."""
    key = (str(library.root), memory_limit, int(threads))
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None or pool._closed:
            pool = _POOLS[key] = SqlPool(library, memory_limit=memory_limit, threads=threads)
        return pool


@atexit.register
def close_pools() -> None:
    """Stop every worker of this process (also run at exit)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for p in pools:
        p.close()


def matching_clip_ids(library: Library, predicate: str, *, timeout_s: float | None = 30.0,
                      memory_limit: str = "2GB", threads: int = 2) -> np.ndarray:
    """Sorted, unique ids of the clips (joined to their video row) for which ``predicate`` holds.

    The ``--where`` filter of search and of the API. The predicate is checked
    (:func:`validate_predicate`) and evaluated in a worker process of the library's
    :func:`sql_pool`, which is killed at ``timeout_s`` and whose memory is capped. Video status
    is not checked here (the caller keeps searchable videos only). The array is read-only.

    Raises:
        QueryRefused: not a single plain predicate.
        QueryFailed: it ran and failed (unknown column, blocked file access, timeout, memory).
    """
    pool = sql_pool(library, memory_limit=memory_limit, threads=threads)
    return pool.matching_clip_ids(predicate, timeout_s=timeout_s)


def run_user_sql(library: Library, sql: str, *, timeout_s: float | None = 30.0, memory_limit: str = "2GB",
                 threads: int = 2, history: bool = True, shape: Shape = "raw") -> pa.Table:
    """Run one user SELECT in a fresh worker process and return its rows.

    Args:
        shape: ``raw``: DuckDB's Arrow types; ``text``: every column but numbers and strings
            rendered by DuckDB as text (``infinity``, BC dates, intervals, lists); ``json``:
            booleans, numbers and strings as they are, nested values as DuckDB's ``to_json``
            text, the rest as text. Each field's metadata says which (:data:`ENCODING_KEY`,
            :data:`TYPE_KEY`).

    Raises:
        QueryRefused: not exactly one SELECT statement.
        QueryFailed: it ran and failed (blocked file/network access, an error, the timeout, memory).
    """
    check_select(None, sql)  # refused here without starting a worker
    w = SqlWorker(library, memory_limit=memory_limit, threads=threads, history=history)
    try:
        w.start()
        _, payload = w.request({"op": "query", "sql": sql, "shape": shape}, timeout_s)
    finally:
        # One query per worker with the history attached: its reader would block the history's
        # writer (another process's search) for as long as it lived.
        w.close()
    return pa.ipc.open_stream(payload).read_all()


def finite_or_text(v: float) -> float | str:
    """A float for strict JSON: itself if finite, else DuckDB's spelling (nan, inf, -inf)."""
    if math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
