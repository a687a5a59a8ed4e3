"""The library folder: atomic files, the manifest, the writer lock and the DuckDB catalog.

Layout (docs/ARCHITECTURE.md)::

    LIBRARY/
      manifest.json          source of truth; replaced atomically, generation += 1 per commit
      shards/part-N.parquet  clip rows with embeddings      } one pair per commit, both listed
      shards/videos-N.parquet video rows (failures included) } in the manifest with SHA-256
      catalog.duckdb         real tables built from shards + manifest; a rebuildable cache
      index/                 FAISS index + index.json (vidsearch.indexer)
      .tmp/                  temp files; nothing here is ever read as data
      .lock                  held by the one writer (ingest, index)

Every file becomes visible by temp file -> fsync -> ``os.replace`` -> manifest update, so a kill
at any moment leaves either the old or the new state. The catalog is replaced as a whole file at
each commit, so readers that opened the previous one keep reading it (a DuckDB file cannot have
a writer and readers in different processes at once; RELIABILITY.md rule 7).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from vidsearch.schemas.manifest import Manifest, ModelInfo, ShardEntry
from vidsearch.schemas.tables import (
    CATALOG_DDL,
    CLIP_CATALOG_COLUMNS,
    STATUS_FAILED,
    STATUS_PARTIAL,
    VIDEO_SCHEMA,
)

_logger = logging.getLogger(__name__)

CRASH_ENV = "VIDSEARCH_CRASH_AT"
# Named crash points (faiss ``crash_at`` pattern): armed by VIDSEARCH_CRASH_AT=<name>, inert
# otherwise. Tests kill the process at each one and check that a rerun recovers.
CRASH_POINTS = (
    "after_shard_tmp_write",
    "before_rename",
    "after_rename_before_manifest",
    "after_manifest_before_catalog",
    "after_manifest_before_index",
)


class LibraryError(Exception):
    """A library folder is missing, malformed, or used against its rules."""


class LibraryLocked(LibraryError):
    """Another live process holds the writer lock."""


class ModelMismatch(LibraryError):
    """The library was built with another model, weights or preprocessing."""


class DiskFull(LibraryError):
    """No space left while writing a commit; nothing of it became visible (RELIABILITY.md F8)."""


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if ``VIDSEARCH_CRASH_AT`` names this point (tests only)."""
    assert name in CRASH_POINTS, name
    if os.environ.get(CRASH_ENV) == name:
        _logger.warning("crash point %s armed: killing pid %d", name, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_replace(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, rename it over ``final`` and fsync the directory."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def atomic_write_bytes(final: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """Write ``data`` to ``final`` so that readers see the old or the new content, never a mix."""
    tmp_dir = tmp_dir or final.parent
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        atomic_replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Library:
    """A library folder. Reading is always safe; writing needs :meth:`lock`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()

    # ---- paths ---------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def tmp_dir(self) -> Path:
        return self.root / ".tmp"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def thumbs_dir(self) -> Path:
        return self.root / "thumbs"

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def resolve_inside(self, rel: str) -> Path:
        """Resolve a manifest-relative path and refuse anything outside the library root."""
        p = (self.root / rel).resolve()
        if not p.is_relative_to(self.root.resolve()):
            raise LibraryError(f"{self.root}: path {rel!r} escapes the library folder")
        return p

    # ---- manifest --------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> Manifest:
        """The committed manifest; raises LibraryError if the folder is not a library."""
        try:
            text = self.manifest_path.read_text()
        except FileNotFoundError:
            raise LibraryError(
                f"{self.root} is not a vidsearch library (no manifest.json); "
                "create one with `vidsearch ingest PATH --library DIR`"
            ) from None
        try:
            return Manifest.from_json(text)
        except (ValueError, KeyError, TypeError) as e:
            raise LibraryError(f"{self.manifest_path}: malformed manifest ({e})") from e

    def _write_manifest(self, manifest: Manifest) -> None:
        atomic_write_bytes(self.manifest_path, manifest.to_json().encode(), self.tmp_dir)

    def init(self, model: ModelInfo, ingest_settings: dict[str, Any] | None = None,
             allow_new_model: bool = False) -> Manifest:
        """Create the library if needed and check that ``model`` is its embedding space.

        Raises:
            ModelMismatch: the library holds embeddings of another model fingerprint and
                ``allow_new_model`` is False.
        """
        for d in (self.root, self.shards_dir, self.tmp_dir):
            self._mkdir_no_symlink(d)
        if not self.exists():
            m = Manifest(library_id=uuid.uuid4().hex, model=model,
                         ingest_settings=dict(ingest_settings or {}), updated_at=utcnow().isoformat())
            self._write_manifest(m)
            return m
        m = self.read_manifest()
        if m.model is not None and m.model.fingerprint != model.fingerprint:
            if not allow_new_model:
                raise ModelMismatch(
                    f"{self.root} holds embeddings of model {m.model.name} "
                    f"(fingerprint {m.model.fingerprint}); refusing to mix in {model.name} "
                    f"(fingerprint {model.fingerprint}). Use another --library, or pass "
                    "--new-index to start this library over with the new model."
                )
            _logger.warning("starting %s over with model %s", self.root, model.name)
            for s in m.shards:
                for rel in (s.clips_file, s.videos_file):
                    self.resolve_inside(rel).unlink(missing_ok=True)
            m = replace(m, model=model, shards=(), generation=m.generation + 1)
            self._write_manifest(m)
            self.refresh_catalog()
        elif m.model is None:
            m = replace(m, model=model)
            self._write_manifest(m)
        return m

    def _mkdir_no_symlink(self, d: Path) -> None:
        # A symlinked subfolder could point writes outside the library (RELIABILITY.md S4).
        if d.is_symlink():
            raise LibraryError(f"{d} is a symbolic link; library folders must be real directories")
        d.mkdir(parents=True, exist_ok=True)

    # ---- lock ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, break_lock: bool = False) -> Iterator[None]:
        """Hold the single-writer lock; a stale lock of a dead local process is taken over."""
        self._mkdir_no_symlink(self.root)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": utcnow().isoformat()}
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_lock()
                stale = (holder.get("host") == me["host"] and isinstance(holder.get("pid"), int)
                         and not _pid_alive(holder["pid"]))
                if stale or break_lock:
                    _logger.warning("taking over %s lock of %s", "stale" if stale else "broken", holder)
                    self.lock_path.unlink(missing_ok=True)
                    continue
                raise LibraryLocked(
                    f"{self.root} is locked by pid {holder.get('pid')} on {holder.get('host')} "
                    f"since {holder.get('since')}; if that process is gone, rerun with --break-lock"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
        else:  # pragma: no cover - two racing takeovers
            raise LibraryLocked(f"{self.root}: could not take the writer lock")
        try:
            self.recover()
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                if self._read_lock().get("pid") == me["pid"]:
                    self.lock_path.unlink()

    def _read_lock(self) -> dict[str, Any]:
        try:
            return json.loads(self.lock_path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def recover(self) -> list[str]:
        """Writer start-up: drop temp files and shard files the manifest does not list.

        A shard renamed into place but not yet in the manifest (a kill between the two) is
        deleted: its videos are not marked done anywhere, so the resumed run redoes them.
        """
        removed: list[str] = []
        if self.tmp_dir.is_dir():
            for p in self.tmp_dir.iterdir():
                if p.is_file() or p.is_symlink():
                    p.unlink()
                    removed.append(str(p))
        if self.shards_dir.is_dir() and self.exists():
            listed = self.read_manifest().shard_file_names
            for p in self.shards_dir.iterdir():
                if p.name.startswith(("part-", "videos-")) and p.name not in listed:
                    _logger.warning("removing unlisted shard %s (left by an interrupted commit)", p)
                    p.unlink()
                    removed.append(str(p))
        return removed

    # ---- commit ----------------------------------------------------------------------------
    def commit(self, clips: pa.Table, videos: pa.Table, run_id: str,
               metadata: dict[str, str] | None = None) -> ShardEntry:
        """Commit one shard pair (clips + video rows) and refresh the catalog. Writer only.

        The caller must hold :meth:`lock`. Videos listed in ``videos`` are settled by this
        commit: their clips must all be in ``clips``.
        """
        if not self.lock_path.exists():
            raise LibraryError("commit() needs the writer lock (Library.lock())")
        m = self.read_manifest()
        if m.model is None:
            raise LibraryError("commit() before init(): the library has no model")
        if clips.num_rows and clips.schema.field("embedding").type.list_size != m.model.embed_dim:
            raise LibraryError("embedding dimension differs from the library's model")
        shard_id = max((s.shard_id for s in m.shards), default=0) + 1
        names = (f"part-{shard_id:06d}.parquet", f"videos-{shard_id:06d}.parquet")
        file_meta = {
            "vidsearch.model": m.model.name,
            "vidsearch.model_fingerprint": m.model.fingerprint,
            "vidsearch.preprocess": json.dumps(m.model.preprocess, sort_keys=True),
            "vidsearch.run_id": run_id,
            **(metadata or {}),
        }
        videos = videos.cast(VIDEO_SCHEMA)
        try:
            return self._commit(clips, videos, run_id, m, shard_id, names, file_meta)
        except OSError as e:
            if e.errno not in _NO_SPACE:
                raise
            raise DiskFull(
                f"disk full writing {e.filename or self.root}: this commit ({clips.num_rows} clips) was "
                f"not written; the library keeps its {m.total_clips} committed clips. Free space and "
                "rerun the same command to resume"
            ) from e

    def _commit(self, clips: pa.Table, videos: pa.Table, run_id: str, m: Manifest, shard_id: int,
                names: tuple[str, str], file_meta: dict[str, str]) -> ShardEntry:
        tmps: list[Path] = []
        digests: list[str] = []
        try:
            for name, table in zip(names, (clips, videos), strict=True):
                schema = table.schema.with_metadata({**(table.schema.metadata or {}),
                                                     **{k.encode(): v.encode() for k, v in file_meta.items()}})
                tmp = self.tmp_dir / f"{name}.{uuid.uuid4().hex}.tmp"
                tmps.append(tmp)  # before writing: a failed write must not leave its temp file
                pq.write_table(table.replace_schema_metadata(schema.metadata), tmp, compression="zstd")
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                digests.append(sha256_file(tmp))
            crash_point("after_shard_tmp_write")
            crash_point("before_rename")
            for tmp, name in zip(tmps, names, strict=True):
                os.replace(tmp, self.shards_dir / name)
            _fsync_dir(self.shards_dir)
            crash_point("after_rename_before_manifest")
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
        ids = clips.column("clip_id") if clips.num_rows else None
        entry = ShardEntry(
            shard_id=shard_id,
            clips_file=f"shards/{names[0]}", clips_rows=clips.num_rows, clips_sha256=digests[0],
            videos_file=f"shards/{names[1]}", videos_rows=videos.num_rows, videos_sha256=digests[1],
            run_id=run_id, created_at=utcnow().isoformat(),
            min_clip_id=int(pa.compute.min(ids).as_py()) if ids is not None else None,
            max_clip_id=int(pa.compute.max(ids).as_py()) if ids is not None else None,
        )
        m = replace(m, shards=m.shards + (entry,), generation=m.generation + 1,
                    updated_at=utcnow().isoformat())
        self._write_manifest(m)
        crash_point("after_manifest_before_catalog")
        try:
            self.refresh_catalog(m)
        except OSError as e:
            if e.errno not in _NO_SPACE:
                raise
            # The shard is committed (the manifest lists it); only the cache is behind, and the
            # next writer or `vidsearch index` brings it up to date.
            raise DiskFull(f"disk full refreshing {self.catalog_path}: shard {shard_id} is committed "
                           f"but the catalog is behind. Free space and rerun the same command") from e
        return entry

    def record_run(self, run: dict[str, Any]) -> None:
        """Insert or update a run summary in the manifest (and the catalog). Writer only."""
        m = self.read_manifest()
        runs = tuple(r for r in m.runs if r.get("run_id") != run["run_id"]) + (run,)
        m = replace(m, runs=runs, generation=m.generation + 1, updated_at=utcnow().isoformat())
        self._write_manifest(m)
        self.refresh_catalog(m)

    # ---- shards ----------------------------------------------------------------------------
    def read_shard(self, entry: ShardEntry, which: str = "clips", columns: list[str] | None = None,
                   verify: bool = False) -> pa.Table:
        """Read one listed shard file (``which`` = "clips" or "videos"), optionally checking its SHA-256."""
        rel, digest = ((entry.clips_file, entry.clips_sha256) if which == "clips"
                       else (entry.videos_file, entry.videos_sha256))
        path = self.resolve_inside(rel)
        if verify and sha256_file(path) != digest:
            raise LibraryError(f"{path}: SHA-256 differs from the manifest (corrupt or replaced shard)")
        return pq.read_table(path, columns=columns)

    def verify(self) -> list[str]:
        """Problems found: missing or corrupt listed shards, stray files. Empty list = healthy."""
        problems: list[str] = []
        try:
            m = self.read_manifest()
        except LibraryError as e:
            return [str(e)]
        listed = m.shard_file_names
        for s in m.shards:
            for rel, digest in ((s.clips_file, s.clips_sha256), (s.videos_file, s.videos_sha256)):
                p = self.root / rel
                if not p.is_file():
                    problems.append(f"missing shard {rel}")
                elif sha256_file(p) != digest:
                    problems.append(f"SHA-256 mismatch in {rel}")
        if self.shards_dir.is_dir():
            for p in self.shards_dir.iterdir():
                if p.name not in listed:
                    problems.append(f"stray file shards/{p.name} (not in the manifest; ignored)")
        return problems

    # ---- catalog ---------------------------------------------------------------------------
    def refresh_catalog(self, manifest: Manifest | None = None) -> None:
        """Bring ``catalog.duckdb`` to the manifest's generation (incrementally when it can).

        Writer only. The new catalog is built in ``.tmp`` and swapped in with ``os.replace``;
        a missing, corrupt or foreign catalog is rebuilt from shards (rule 11).
        """
        m = manifest or self.read_manifest()
        tmp = self.tmp_dir / f"catalog.{uuid.uuid4().hex}.duckdb"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        covered: set[int] | None = None
        if self.catalog_path.is_file():
            try:
                shutil.copyfile(self.catalog_path, tmp)
                with duckdb.connect(str(tmp)) as con:
                    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
                    if meta.get("library_id") == m.library_id:
                        covered = {int(x) for x in json.loads(meta.get("shards", "[]"))}
                        if not covered <= {s.shard_id for s in m.shards}:
                            covered = None  # the catalog knows shards the manifest dropped
            except (duckdb.Error, OSError, ValueError) as e:
                _logger.warning("catalog %s unreadable (%s); rebuilding from shards", self.catalog_path, e)
                covered = None
        if covered is None:
            for p in (tmp, Path(f"{tmp}.wal")):
                p.unlink(missing_ok=True)
            covered = set()
        try:
            with duckdb.connect(str(tmp)) as con:
                con.execute(CATALOG_DDL)
                for entry in m.shards:
                    if entry.shard_id not in covered:
                        self._insert_shard(con, entry)
                        covered.add(entry.shard_id)
                self._insert_runs(con, m)
                meta = {"library_id": m.library_id, "generation": str(m.generation),
                        "shards": json.dumps(sorted(covered)),
                        "model": m.model.name if m.model else "",
                        "model_fingerprint": m.model.fingerprint if m.model else ""}
                con.execute("DELETE FROM meta")
                con.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
                con.execute("CHECKPOINT")
            atomic_replace(tmp, self.catalog_path)
        finally:
            tmp.unlink(missing_ok=True)
            Path(f"{tmp}.wal").unlink(missing_ok=True)

    @staticmethod
    def _insert_runs(con: duckdb.DuckDBPyConnection, m: Manifest) -> None:
        con.execute("DELETE FROM runs")
        for r in m.runs:
            con.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [r.get("run_id"), r.get("started_at"), r.get("ended_at"), r.get("status"),
                 r.get("videos_seen"), r.get("videos_done"), r.get("videos_partial"),
                 r.get("videos_failed"), r.get("videos_skipped"), r.get("clips"),
                 r.get("clips_per_s"), json.dumps(r.get("settings", {}), sort_keys=True)],
            )

    def load_catalog_into(self, con: duckdb.DuckDBPyConnection, manifest: Manifest | None = None) -> None:
        """Create the catalog tables in ``con`` and fill them from the listed shards and runs.

        Writes no file: this is how readers get a catalog when ``catalog.duckdb`` is missing or
        unreadable (rule 11) without waiting for a writer to rebuild it.
        """
        m = manifest or self.read_manifest()
        con.execute(CATALOG_DDL)
        for entry in m.shards:
            self._insert_shard(con, entry)
        self._insert_runs(con, m)

    def _insert_shard(self, con: duckdb.DuckDBPyConnection, entry: ShardEntry) -> None:
        cols = list(CLIP_CATALOG_COLUMNS)
        clips = self.read_shard(entry, "clips", columns=cols, verify=True)
        videos = self.read_shard(entry, "videos", verify=True)
        con.register("_clips", clips)
        con.register("_videos", videos)
        try:
            col_list = ", ".join(cols)
            con.execute(
                f"INSERT OR REPLACE INTO clips ({col_list}, shard_id, row_in_shard) "
                f"SELECT {col_list}, {entry.shard_id}, (row_number() OVER ()) - 1 FROM _clips"
            )
            vcols = ", ".join(VIDEO_SCHEMA.names)
            con.execute(
                f"INSERT OR REPLACE INTO videos ({vcols}, shard_id) SELECT {vcols}, {entry.shard_id} FROM _videos"
            )
            con.execute(
                "INSERT INTO failures SELECT video_id, path, stage, error_type, error_message, attempts, "
                f"run_id, ingested_at, {entry.shard_id} FROM _videos "
                "WHERE error_type IS NOT NULL AND status IN (?, ?)",
                [STATUS_FAILED, STATUS_PARTIAL],
            )
        finally:
            con.unregister("_clips")
            con.unregister("_videos")

    def catalog_is_current(self, manifest: Manifest | None = None) -> bool:
        m = manifest or self.read_manifest()
        try:
            with duckdb.connect(str(self.catalog_path), read_only=True) as con:
                meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        except (duckdb.Error, OSError):
            return False
        return meta.get("library_id") == m.library_id and meta.get("generation") == str(m.generation)

    def connect_catalog(self) -> duckdb.DuckDBPyConnection:
        """A read-only connection to the last committed catalog.

        Never waits on a writer: the writer swaps whole files, so the open file is stable. If
        the catalog is missing or unreadable, an in-memory catalog is built from the shards.
        """
        if self.catalog_path.is_file():
            try:
                return duckdb.connect(str(self.catalog_path), read_only=True)
            except duckdb.Error as e:
                _logger.warning("catalog %s unreadable (%s); reading shards directly", self.catalog_path, e)
        con = duckdb.connect(":memory:")
        self.load_catalog_into(con)
        return con
