"""The DuckDB catalog of a library: a cache of the shards' metadata, rebuilt from them at will.

``catalog.duckdb`` holds real tables (videos, clips without embeddings, failures, runs, meta) so
that user SQL can read them with file access off (docs/RELIABILITY.md rule 8). Only the writer
changes it, by building a new file in ``.tmp`` and swapping it in with ``os.replace``: a reader
that opened the previous file keeps reading it (rule 7). During a long run it may lag the
manifest by a few commits (the copy costs O(catalog size)); the manifest is the commit point.

Readers never write it (docs/RELIABILITY.md, "read commands do not write"). They get their tables
through :meth:`Catalog.load_into`, which needs nothing but Arrow tables registered on the
connection and constant SQL, so it works on a connection whose external access is already off
and whose configuration is locked (the SQL sandbox):

* the file catalog is current: views over it;
* it is behind (a run killed or out of disk before its refresh; D9): views over it plus the rows
  of the newer shards, read from their files into memory;
* it is missing, corrupt, foreign, or knows shards the manifest dropped: every table in memory,
  from the shards.

No value read from any file is ever formatted into SQL here (S1): shard ids travel as Arrow
columns or bind parameters, and the only names in SQL text are this module's constants.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from vidsearch.files import atomic_replace
from vidsearch.library.base import LibraryError, utcnow
from vidsearch.schemas.manifest import Manifest, ShardEntry
from vidsearch.schemas.tables import (
    CATALOG_DDL,
    CLIP_CATALOG_COLUMNS,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PARTIAL,
    VIDEO_SCHEMA,
)
from vidsearch.schemas.tag_tables import TAG_CATALOG_DDL, TAG_ROW_SCHEMA, TAG_SET_SCHEMA
from vidsearch.schemas.text_tables import (
    EXTRA_TABLES,
    KIND_STAGE_SQL,
    SCREEN_TEXT_SCHEMA,
    TEXT_CATALOG_DDL,
    TEXT_FAILED,
    TEXT_STATUS_SCHEMA,
    TRANSCRIPT_SCHEMA,
)

_logger = logging.getLogger(__name__)

# Catalog rows of freshly committed shards kept in memory for the next catalog refresh (bytes).
FRESH_ROWS_BYTES = 256 << 20
# Where load_into keeps rows read from shards when it overlays an attached catalog.
OVERLAY_SCHEMA = "_shards"
# Tables a reader sees (meta is the catalog's own bookkeeping).
READER_TABLES = ("videos", "clips", "failures", "runs", "transcripts", "screen_text", "text_status", "tags",
                 "tag_sets")
# Extra per-commit tables loaded into the catalog (schemas.text_tables.EXTRA_TABLES), in insert order.
TEXT_TABLES = ("text_status", "transcripts", "screen_text")
# The zero-shot tag tables (schemas.tag_tables), in insert order: a commit's tag_sets row first.
TAG_TABLES = ("tag_sets", "tags")
CATALOG_EXTRA_TABLES = TEXT_TABLES + TAG_TABLES

# SQL text below is built from these constants only, never from data.
_CLIP_COLS = ", ".join(CLIP_CATALOG_COLUMNS)
_VIDEO_COLS = ", ".join(VIDEO_SCHEMA.names)
_FAILURE_COLS = "video_id, path, stage, error_type, error_message, attempts, run_id, ingested_at, shard_id"
_KEYS = {"clips": "clip_id", "videos": "video_id"}
_TEXT_COLS = {"transcripts": ", ".join(TRANSCRIPT_SCHEMA.names), "screen_text": ", ".join(SCREEN_TEXT_SCHEMA.names),
              "text_status": ", ".join(TEXT_STATUS_SCHEMA.names)}
_TAG_COLS = {"tags": ", ".join(TAG_ROW_SCHEMA.names), "tag_sets": ", ".join(TAG_SET_SCHEMA.names)}
# The catalog table of each tag table (readers see ``tags`` as a view over ``tag_rows``).
_TAG_CATALOG_TABLE = {"tags": "tag_rows", "tag_sets": "tag_sets"}
# The current label set: the newest tagging commit's.
_CURRENT_TAGSET = "(SELECT tagset FROM tag_sets ORDER BY shard_id DESC LIMIT 1)"
# A commit's text_status row (kind, status other than failed) supersedes that video's rows of the
# same kind from earlier commits (a re-transcription with another model, subtitles read again):
# rows of a kind live in this table, with this condition linking them to the kind.
_KIND_ROWS = (("transcripts", "t.source = s.kind AND s.kind IN ('speech', 'subtitle')"),
              ("screen_text", "s.kind = 'screen'"))


@dataclass(frozen=True)
class CatalogRefresh:
    """What :meth:`Catalog.refresh` did."""

    shards_added: int
    seconds: float
    insert_seconds: float       # inserting the added shards' rows (work any catalog must do)

    @property
    def fixed_seconds(self) -> float:
        """The part that does not depend on how many shards were added: copying the catalog,
        opening it, checkpointing and swapping it in (grows with the catalog's size)."""
        return max(0.0, self.seconds - self.insert_seconds)


@dataclass
class CatalogLoad:
    """What :meth:`Catalog.load_into` put into a connection."""

    source: str                          # "catalog", "catalog+shards" or "shards"
    stale: str | None = None             # why the file catalog was not used as it is (None: current)
    shards_read: tuple[int, ...] = ()    # shards whose rows were read from their files
    left_out_shards: dict[int, str] = field(default_factory=dict)   # unreadable shards: {id: why}


class CatalogReader:
    """A reader's connection to the catalog's tables (from :meth:`Catalog.open_readonly`).

    Attributes:
        con: the DuckDB connection; tables ``videos``, ``clips``, ``failures``, ``runs``.
        load: where they came from; ``load.stale`` is None when the file catalog is current.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, load: CatalogLoad) -> None:
        self.con = con
        self.load = load

    @property
    def stale(self) -> str | None:
        """Why the file catalog could not serve as it is (its tables were completed from the shards)."""
        return self.load.stale

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> CatalogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def catalog_clip_rows(clips: pa.Table) -> pa.Table:
    """A shard's catalog clip columns plus ``row_in_shard``, numbered in the file's order (not by
    row_number() OVER () in SQL, whose order over a parallel scan is not guaranteed)."""
    return clips.append_column("row_in_shard", pa.array(range(clips.num_rows), pa.int32()))


def meta_is_current(meta: dict[str, str], m: Manifest) -> bool:
    """Whether a catalog's ``meta`` says it holds exactly manifest ``m``'s generation."""
    return meta.get("library_id") == m.library_id and meta.get("generation") == str(m.generation)


def create_tables(con: duckdb.DuckDBPyConnection, schema: str | None = None) -> None:
    """The catalog's tables (CATALOG_DDL) in ``con``, in ``schema`` if given (a constant of this module)."""
    ddl = CATALOG_DDL + TEXT_CATALOG_DDL + TAG_CATALOG_DDL
    if schema is None:
        con.execute(ddl)
        return
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    con.execute(re.sub(r"CREATE TABLE IF NOT EXISTS (\w+)", rf"CREATE TABLE IF NOT EXISTS {schema}.\1", ddl))


def insert_shard_rows(con: duckdb.DuckDBPyConnection, shard_id: int, clips: pa.Table, videos: pa.Table,
                      schema: str | None = None, extra: dict[str, pa.Table] | None = None) -> None:
    """Insert one shard's catalog rows (clips with ``row_in_shard``; videos; its text tables) into
    ``con``'s tables.

    Later shards replace earlier rows of the same clip or video (INSERT OR REPLACE), and a
    ``text_status`` row of a video and kind (not ``failed``) replaces that video's text rows of the
    kind from earlier shards (``_KIND_ROWS``). A failed text stage is a ``failures`` row whose
    stage is the kind's (``KIND_STAGE``: ``ocr`` for ``screen``). A ``tag_sets`` row (a tagging
    commit) drops the tag rows of every other label set: the newest commit's set is the current
    one. The shard id rides in an Arrow column, never in the SQL text.
    """
    prefix = f"{schema}." if schema else ""
    sid = pa.array([shard_id], pa.int32())
    con.register("_clips", clips.append_column("shard_id", pa.repeat(sid[0], clips.num_rows)))
    con.register("_videos", videos.append_column("shard_id", pa.repeat(sid[0], videos.num_rows)))
    texts = {t: tbl for t, tbl in (extra or {}).items() if t in TEXT_TABLES}
    for t, tbl in texts.items():
        con.register(f"_{t}", tbl.select(list(EXTRA_TABLES[t].names))
                     .append_column("shard_id", pa.repeat(sid[0], tbl.num_rows)))
    tags = {t: tbl for t, tbl in (extra or {}).items() if t in TAG_TABLES}
    for t, tbl in tags.items():
        con.register(f"_{t}", tbl.select(list(EXTRA_TABLES[t].names))
                     .append_column("shard_id", pa.repeat(sid[0], tbl.num_rows)))
    try:
        con.execute(f"INSERT OR REPLACE INTO {prefix}clips ({_CLIP_COLS}, shard_id, row_in_shard) "
                    f"SELECT {_CLIP_COLS}, shard_id, row_in_shard FROM _clips")
        con.execute(f"INSERT OR REPLACE INTO {prefix}videos ({_VIDEO_COLS}, shard_id) "
                    f"SELECT {_VIDEO_COLS}, shard_id FROM _videos")
        con.execute(f"INSERT INTO {prefix}failures SELECT {_FAILURE_COLS} FROM _videos "
                    "WHERE error_type IS NOT NULL AND status IN (?, ?)", [STATUS_FAILED, STATUS_PARTIAL])
        if "text_status" in texts:
            for table, link in _KIND_ROWS:
                con.execute(f"DELETE FROM {prefix}{table} t WHERE EXISTS (SELECT 1 FROM _text_status s "
                            f"WHERE s.video_id = t.video_id AND s.status <> ? AND {link})", [TEXT_FAILED])
            con.execute(f"INSERT OR REPLACE INTO {prefix}text_status ({_TEXT_COLS['text_status']}, shard_id) "
                        f"SELECT {_TEXT_COLS['text_status']}, shard_id FROM _text_status")
            con.execute(f"INSERT INTO {prefix}failures SELECT video_id, path, {KIND_STAGE_SQL}, error_type, "
                        "error_message, attempts, run_id, recorded_at, shard_id FROM _text_status WHERE status = ?",
                        [TEXT_FAILED])
        for t in ("transcripts", "screen_text"):
            if t in texts:
                con.execute(f"INSERT INTO {prefix}{t} ({_TEXT_COLS[t]}, shard_id) "
                            f"SELECT {_TEXT_COLS[t]}, shard_id FROM _{t}")
        if "tag_sets" in tags:
            con.execute(f"INSERT INTO {prefix}tag_sets ({_TAG_COLS['tag_sets']}, shard_id) "
                        f"SELECT {_TAG_COLS['tag_sets']}, shard_id FROM _tag_sets")
            con.execute(f"DELETE FROM {prefix}tag_rows WHERE tagset NOT IN (SELECT tagset FROM _tag_sets)")
        if "tags" in tags:  # a clip tagged again (ingested again after its shard was lost) keeps one set
            con.execute(f"DELETE FROM {prefix}tag_rows WHERE clip_id IN (SELECT clip_id FROM _tags)")
            con.execute(f"INSERT INTO {prefix}tag_rows ({_TAG_COLS['tags']}, shard_id) "
                        f"SELECT {_TAG_COLS['tags']}, shard_id FROM _tags")
    finally:
        con.unregister("_clips")
        con.unregister("_videos")
        for t in [*texts, *tags]:
            con.unregister(f"_{t}")


def insert_runs(con: duckdb.DuckDBPyConnection, runs: Sequence[dict[str, Any]], schema: str | None = None) -> None:
    """Replace the ``runs`` table's rows by ``runs`` (bind parameters only)."""
    prefix = f"{schema}." if schema else ""
    con.execute(f"DELETE FROM {prefix}runs")
    for r in runs:
        con.execute(
            f"INSERT INTO {prefix}runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [r.get("run_id"), r.get("started_at"), r.get("ended_at"), r.get("status"),
             r.get("videos_seen"), r.get("videos_done"), r.get("videos_partial"),
             r.get("videos_failed"), r.get("videos_skipped"), r.get("clips"),
             r.get("clips_per_s"), json.dumps(r.get("settings", {}), sort_keys=True)],
        )


_expected_columns: dict[str, list[tuple[str, str]]] | None = None


def _catalog_columns() -> dict[str, list[tuple[str, str]]]:
    """{table: [(column, type)]} of a catalog made by CATALOG_DDL (computed once)."""
    global _expected_columns
    if _expected_columns is None:
        with duckdb.connect(":memory:") as con:
            create_tables(con)
            _expected_columns = _columns(con, "memory")
    return _expected_columns


def _columns(con: duckdb.DuckDBPyConnection, database: str) -> dict[str, list[tuple[str, str]]]:
    rows = con.execute("SELECT table_name, column_name, data_type FROM duckdb_columns() "
                       "WHERE database_name = ? AND schema_name = 'main' ORDER BY table_name, column_index",
                       [database]).fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for t, c, ty in rows:
        out.setdefault(t, []).append((c, ty))
    return out


class Catalog:
    """``catalog.duckdb`` of one library.

    Args:
        path: the catalog file (its write-ahead log is ``path`` + ``.wal``).
        tmp_dir: where new catalogs are built before they are swapped in.
        quarantine_dir: where a corrupt catalog is set aside (F15).
        mkdir: creates a library folder, refusing a symbolic link.
        read_shard: reads one table of a listed shard, SHA-256 and schema checked
            (``read_shard(entry, "clips" | "videos", columns)``).
        runs: the run records to show for a manifest (dead runs reported as such, D8).
    """

    def __init__(self, path: Path, tmp_dir: Path, quarantine_dir: Path, mkdir: Callable[[Path], None],
                 read_shard: Callable[[ShardEntry, str, list[str] | None], pa.Table],
                 runs: Callable[[Manifest], list[dict[str, Any]]]) -> None:
        self.path = path
        self.wal_path = Path(f"{path}.wal")
        self.tmp_dir = tmp_dir
        self.quarantine_dir = quarantine_dir
        self._mkdir = mkdir
        self._read_shard = read_shard
        self._runs = runs
        # Catalog rows of shards this process committed and the catalog has not taken in yet,
        # keyed by shard id with both files' SHA-256: a refresh inserts them from memory instead
        # of reading back (and, for a remote store, downloading) the files it just wrote.
        self._fresh_rows: OrderedDict[int, tuple[str, str, pa.Table, pa.Table, dict[str, pa.Table]]] = OrderedDict()
        self._fresh_lock = threading.Lock()  # refreshes read shards on a helper thread

    # ---- state -------------------------------------------------------------------------------
    def problem(self) -> str | None:
        """Why ``catalog.duckdb`` must not be opened as it stands, or None (one ``stat``; F15).

        The writer only ever swaps in checkpointed catalogs built in ``.tmp``, so a write-ahead
        log beside ``catalog.duckdb`` was left by another process or a crash, and DuckDB would
        replay it on open, even read-only: a truncated or random one silently, another file's
        with an error.
        """
        if self.wal_path.exists():
            return f"has a write-ahead log beside it ({self.wal_path.name}) that vidsearch never writes"
        return None

    def meta(self) -> dict[str, str]:
        """The ``meta`` table of ``catalog.duckdb`` (raises duckdb.Error when it cannot be read)."""
        with duckdb.connect(str(self.path), read_only=True) as con:
            return {str(k): str(v) for k, v in con.execute("SELECT key, value FROM meta").fetchall()}

    def is_current(self, m: Manifest) -> bool:
        """Whether ``catalog.duckdb`` is usable, has this version's tables and holds exactly ``m``'s generation."""
        if self.problem() is not None:
            return False
        try:
            meta = self.meta()
            return meta_is_current(meta, m) and self.tables_match()
        except (duckdb.Error, OSError):
            return False

    # ---- writer ------------------------------------------------------------------------------
    def set_aside(self, problem: str) -> None:
        """Move ``catalog.duckdb`` and its WAL to ``quarantine/`` (kept for inspection; F15). Writer only."""
        self._mkdir(self.quarantine_dir)
        stamp = f"{utcnow().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        for p in (self.path, self.wal_path):
            if p.exists():
                p.replace(self.quarantine_dir / f"{stamp}-{p.name}")
        _logger.warning("%s %s: moved aside to %s; rebuilding it from the shards and the manifest",
                        self.path, problem, self.quarantine_dir)

    def refresh(self, m: Manifest) -> CatalogRefresh:
        """Bring ``catalog.duckdb`` to ``m``'s generation (incrementally when it can). Writer only.

        A missing, corrupt or foreign catalog is rebuilt from shards (rule 11); one already at the
        generation is left alone. A catalog whose tables are not this version's (made before a
        table was added, or by another vidsearch) is rebuilt from the shards as a whole: readers
        would not use it, and rows of tables it lacks may sit in shards it already covers.
        Raises OSError/duckdb.Error as they come (the façade turns a full disk into DiskFull).
        """
        t0 = time.perf_counter()
        problem = self.problem()
        meta: dict[str, str] | None = None
        same_tables = False
        if problem is None and self.path.is_file():
            try:
                meta = self.meta()
                same_tables = self.tables_match()
            except duckdb.Error as e:
                problem = f"is unreadable ({str(e).splitlines()[0][:200]})"
        if problem is not None:
            self.set_aside(problem)
        elif meta is not None and same_tables and meta_is_current(meta, m):
            return CatalogRefresh(0, time.perf_counter() - t0, 0.0)
        elif meta is not None and not same_tables:
            _logger.info("catalog %s has tables of another vidsearch version; rebuilding it from the shards",
                         self.path)
        added, insert_s = self._rebuild(m, from_scratch=not same_tables)
        return CatalogRefresh(added, time.perf_counter() - t0, insert_s)

    def tables_match(self) -> bool:
        """Whether ``catalog.duckdb`` has exactly this version's tables and columns (raises
        duckdb.Error when it cannot be read)."""
        with duckdb.connect(str(self.path), read_only=True) as con:
            (db,) = con.execute("SELECT current_database()").fetchone() or ("",)
            return _columns(con, str(db)) == _catalog_columns()

    def _rebuild(self, m: Manifest, *, from_scratch: bool = False) -> tuple[int, float]:
        tmp = self.tmp_dir / f"catalog.{uuid.uuid4().hex}.duckdb"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        covered: set[int] | None = None
        if self.path.is_file() and not from_scratch:
            try:
                shutil.copyfile(self.path, tmp)
                with duckdb.connect(str(tmp)) as con:
                    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
                    covered = _covered(meta, m)
            except (duckdb.Error, OSError, ValueError) as e:
                _logger.warning("catalog %s unreadable (%s); rebuilding from shards", self.path, e)
                covered = None
        if covered is None:
            for p in (tmp, Path(f"{tmp}.wal")):
                p.unlink(missing_ok=True)
            covered = set()
        try:
            with duckdb.connect(str(tmp)) as con:
                create_tables(con)
                todo = [e for e in m.shards if e.shard_id not in covered]
                t0 = time.perf_counter()
                # One transaction for all new shards: no automatic checkpoint after every shard,
                # and a compact file. The next shard is read and hash-checked while one is inserted.
                con.execute("BEGIN")
                for entry, (clips, videos, extra) in zip(todo, self._shard_rows_ahead(todo), strict=True):
                    insert_shard_rows(con, entry.shard_id, clips, videos, extra=extra)
                    covered.add(entry.shard_id)
                con.execute("COMMIT")
                added, insert_s = len(todo), time.perf_counter() - t0
                insert_runs(con, m.runs)
                meta = {"library_id": m.library_id, "generation": str(m.generation),
                        "shards": json.dumps(sorted(covered)),
                        "model": m.model.name if m.model else "",
                        "model_fingerprint": m.model.fingerprint if m.model else ""}
                con.execute("DELETE FROM meta")
                con.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
                con.execute("CHECKPOINT")
            atomic_replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
            Path(f"{tmp}.wal").unlink(missing_ok=True)
        return added, insert_s

    def keep_fresh_rows(self, entry: ShardEntry, clips: pa.Table, videos: pa.Table,
                        extra: dict[str, pa.Table] | None = None) -> None:
        """Remember the tables just committed as shard ``entry``, for the next refresh."""
        # Bounded: past FRESH_ROWS_BYTES the oldest are dropped and read from their files instead.
        try:
            rows = catalog_clip_rows(clips.select(list(CLIP_CATALOG_COLUMNS)))
            texts = {t: tbl.select(list(EXTRA_TABLES[t].names)) for t, tbl in (extra or {}).items()
                     if t in CATALOG_EXTRA_TABLES}
        except (KeyError, ValueError, pa.ArrowException):  # an odd table: read it back instead
            return
        if set(texts) != {t for t in entry.tables if t in CATALOG_EXTRA_TABLES}:
            return
        with self._fresh_lock:
            self._fresh_rows[entry.shard_id] = (entry.clips_sha256, entry.videos_sha256, rows, videos, texts)
            while sum(r.nbytes + v.nbytes + sum(x.nbytes for x in e.values())
                      for _, _, r, v, e in self._fresh_rows.values()) > FRESH_ROWS_BYTES:
                self._fresh_rows.popitem(last=False)

    def shard_rows(self, entry: ShardEntry) -> tuple[pa.Table, pa.Table, dict[str, pa.Table]]:
        """A shard's catalog rows (clips without embeddings, plus row_in_shard; videos; the text
        tables it has), SHA-256 checked; from memory when this process committed the shard (the
        same bytes it hashed)."""
        with self._fresh_lock:
            fresh = self._fresh_rows.pop(entry.shard_id, None)
        if fresh is not None and fresh[:2] == (entry.clips_sha256, entry.videos_sha256):
            return fresh[2], fresh[3], fresh[4]
        clips = self._read_shard(entry, "clips", list(CLIP_CATALOG_COLUMNS))
        extra = {t: self._read_shard(entry, t, None) for t in CATALOG_EXTRA_TABLES if t in entry.tables}
        return catalog_clip_rows(clips), self._read_shard(entry, "videos", None), extra

    def _shard_rows_ahead(self, entries: list[ShardEntry]) -> Iterator[tuple[pa.Table, pa.Table, dict[str, pa.Table]]]:
        """:meth:`shard_rows` of each entry in order, reading one shard ahead in a thread."""
        if not entries:
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(self.shard_rows, entries[0])
            for i in range(len(entries)):
                rows = nxt.result()
                if i + 1 < len(entries):
                    nxt = pool.submit(self.shard_rows, entries[i + 1])
                yield rows

    def rows_touching(self, shard_ids: list[int]) -> list[dict[str, Any]] | None:
        """Latest video rows (with ``shard_id``) settled in these shards or owning clips there, from
        the catalog file; None when it cannot be read."""
        if not self.path.is_file() or self.problem() is not None:
            return None
        try:
            with duckdb.connect(str(self.path), read_only=True) as con:
                con.register("_bad", pa.table({"shard_id": pa.array(shard_ids, pa.int32())}))
                cur = con.execute(
                    "SELECT * FROM videos WHERE shard_id IN (SELECT shard_id FROM _bad) "
                    "OR video_id IN (SELECT video_id FROM clips WHERE shard_id IN (SELECT shard_id FROM _bad))")
                names = [d[0] for d in cur.description]
                return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        except duckdb.Error as e:
            _logger.warning("catalog unreadable (%s): finding the lost videos in the shards", e)
            return None

    # ---- readers -----------------------------------------------------------------------------
    def load_into(self, con: duckdb.DuckDBPyConnection, m: Manifest, *, attached: str | None = None) -> CatalogLoad:
        """Give ``con`` the tables ``videos``, ``clips``, ``failures`` and ``runs`` of manifest ``m``.

        Writes no file, reads no file through SQL: works on a connection whose external access is
        off and configuration locked.

        Args:
            con: the connection (typically in-memory).
            m: the manifest whose shards the tables must hold.
            attached: the name under which the caller ATTACHed ``catalog.duckdb`` read-only, if it
                did (the attach must come before external access is turned off). A current one is
                used through views; one behind the manifest is completed with the newer shards'
                rows; a foreign, malformed or dropped-shard one is detached and ignored.

        Returns:
            Where the tables came from, and the shards that had to be left out (unreadable,
            wrong schema: F10, D7), each also logged as a warning.
        """
        load = self._plan(con, m, attached)
        if load.source == "shards" and attached is not None:
            con.execute(f"DETACH DATABASE IF EXISTS {_ident(attached)}")
        schema = OVERLAY_SCHEMA if load.source != "shards" else None
        create_tables(con, schema)
        read: list[int] = []
        for entry in m.shards:
            if load.source != "shards" and entry.shard_id not in load.shards_read:
                continue
            try:
                clips, videos, extra = self.shard_rows(entry)
                insert_shard_rows(con, entry.shard_id, clips, videos, schema, extra)
                read.append(entry.shard_id)
            except (LibraryError, OSError, duckdb.Error) as e:
                # A reader cannot repair (F10: the next writer sets the shard aside); it answers
                # from the readable shards and says what is missing.
                load.left_out_shards[entry.shard_id] = str(e)
                _logger.warning("shard %d left out (%s): its %d clips are not searchable; the next "
                                "`vidsearch ingest` sets it aside and re-ingests its videos",
                                entry.shard_id, e, entry.clips_rows)
        load.shards_read = tuple(read)
        insert_runs(con, self._runs(m), schema)
        if schema is not None:
            assert attached is not None
            src = _ident(attached)
            for t in ("clips", "videos"):
                if load.source == "catalog":
                    con.execute(f"CREATE VIEW {t} AS SELECT * FROM {src}.main.{t}")
                else:  # rows of newer shards replace the catalog's rows of the same clip / video
                    k = _KEYS[t]
                    con.execute(f"CREATE VIEW {t} AS SELECT * FROM {src}.main.{t} c WHERE NOT EXISTS "
                                f"(SELECT 1 FROM {schema}.{t} n WHERE n.{k} = c.{k}) "
                                f"UNION ALL SELECT * FROM {schema}.{t}")
            con.execute(f"CREATE VIEW failures AS SELECT * FROM {src}.main.failures "
                        f"UNION ALL SELECT * FROM {schema}.failures")
            # Text rows: the catalog's, less those a newer shard's text_status supersedes
            # (insert_shard_rows' rule), plus the newer shards'.
            if load.source == "catalog":
                for t in TEXT_TABLES:
                    con.execute(f"CREATE VIEW {t} AS SELECT * FROM {src}.main.{t}")
            else:
                con.execute(f"CREATE VIEW text_status AS SELECT * FROM {src}.main.text_status c WHERE NOT EXISTS "
                            f"(SELECT 1 FROM {schema}.text_status n WHERE n.video_id = c.video_id AND n.kind = c.kind) "
                            f"UNION ALL SELECT * FROM {schema}.text_status")
                for t, link in _KIND_ROWS:
                    con.execute(f"CREATE VIEW {t} AS SELECT * FROM {src}.main.{t} t WHERE NOT EXISTS "
                                f"(SELECT 1 FROM {schema}.text_status s WHERE s.video_id = t.video_id "
                                f"AND s.status <> '{TEXT_FAILED}' AND {link}) UNION ALL SELECT * FROM {schema}.{t}")
            con.execute(f"CREATE VIEW runs AS SELECT * FROM {schema}.runs")
            # Tag rows: the catalog's of the current label set (a newer shard's tag_sets row may
            # have replaced it), plus the newer shards' (insert_shard_rows pruned those).
            con.execute(f"CREATE VIEW tag_sets AS SELECT * FROM {src}.main.tag_sets"
                        + ("" if load.source == "catalog" else f" UNION ALL SELECT * FROM {schema}.tag_sets"))
            con.execute(f"CREATE VIEW tag_rows AS SELECT * FROM {src}.main.tag_rows c WHERE tagset = {_CURRENT_TAGSET}"
                        + ("" if load.source == "catalog" else
                           f" AND NOT EXISTS (SELECT 1 FROM {schema}.tag_rows n WHERE n.clip_id = c.clip_id) "
                           f"UNION ALL SELECT * FROM {schema}.tag_rows"))
        # What users query: the current label set's tags of clips whose video is searchable (tags
        # of replaced or lost videos drop out with them).
        con.execute(f"CREATE VIEW tags AS SELECT r.clip_id, r.video_id, r.label, r.score, r.rank FROM tag_rows r "
                    f"WHERE r.tagset = {_CURRENT_TAGSET} AND r.video_id IN "
                    f"(SELECT video_id FROM videos WHERE status IN ('{STATUS_DONE}', '{STATUS_PARTIAL}'))")
        return load

    def _plan(self, con: duckdb.DuckDBPyConnection, m: Manifest, attached: str | None) -> CatalogLoad:
        """Whether the attached catalog can serve (as it is, or with newer shards) or not at all."""
        if attached is None:
            return CatalogLoad("shards", stale="no catalog attached")
        src = _ident(attached)
        try:
            if _columns(con, attached) != {t: c for t, c in _catalog_columns().items()}:
                return CatalogLoad("shards", stale="its tables are not the catalog's")
            meta = {str(k): str(v) for k, v in con.execute(f"SELECT key, value FROM {src}.main.meta").fetchall()}
            covered = _covered(meta, m)
        except (duckdb.Error, ValueError) as e:
            return CatalogLoad("shards", stale=f"it is unreadable ({str(e).splitlines()[0][:200]})")
        if covered is None:
            return CatalogLoad("shards", stale="it belongs to another library or lists shards the manifest dropped")
        newer = tuple(s.shard_id for s in m.shards if s.shard_id not in covered)
        if newer and covered and min(newer) < max(covered):
            # Only newer shards can be laid over it (their rows replace older ones).
            return CatalogLoad("shards", stale="it lacks shards older than ones it holds")
        if meta_is_current(meta, m):
            return CatalogLoad("catalog")
        return CatalogLoad("catalog+shards", stale=f"it is behind the manifest (generation {meta.get('generation')} "
                                                    f"of {m.generation}, {len(newer)} shard(s) newer)",
                           shards_read=newer)

    def open_readonly(self, m: Manifest) -> CatalogReader:
        """A reader's connection holding ``m``'s catalog tables, without writing anything.

        The file catalog if usable (attached read-only to an in-memory connection), completed with
        the rows of shards committed after it (D9); else the tables built from the shards in
        memory. ``reader.stale`` says why the file alone was not enough.
        """
        con = duckdb.connect(":memory:")
        try:
            attached = None
            problem = self.problem()
            if problem is not None:
                _logger.warning("catalog %s %s; reading the shards directly until a writer rebuilds it",
                                self.path, problem)
            elif self.path.is_file():
                try:
                    con.execute("ATTACH ? AS catalog (READ_ONLY)", [str(self.path)])
                    attached = "catalog"
                except duckdb.Error as e:
                    _logger.warning("catalog %s unreadable (%s); reading the shards directly", self.path, e)
            load = self.load_into(con, m, attached=attached)
            if problem is not None:
                load.stale = f"catalog.duckdb {problem}"
            return CatalogReader(con, load)
        except BaseException:
            con.close()
            raise


def _covered(meta: dict[str, Any], m: Manifest) -> set[int] | None:
    """The shard ids a catalog's meta says it holds, if it is this library's and the manifest
    still lists them all; else None (rebuild from scratch)."""
    if meta.get("library_id") != m.library_id:
        return None
    raw = json.loads(meta.get("shards", "[]"))
    if not isinstance(raw, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        raise ValueError("meta.shards is not a list of shard ids")
    covered = set(raw)
    return covered if covered <= {s.shard_id for s in m.shards} else None


def _ident(name: str) -> str:
    """``name`` as a SQL identifier; only this package's constant names are ever passed."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"not an identifier: {name!r}")
    return name
