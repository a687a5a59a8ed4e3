"""The :class:`Library` façade: one library folder, its manifest, and who may change it.

Layout (docs/ARCHITECTURE.md)::

    LIBRARY/
      manifest.json          source of truth; replaced atomically, generation += 1 per commit
      shards/part-N.parquet  clip rows with embeddings      } one set per commit, all listed
      shards/videos-N.parquet video rows (failures included) } in the manifest with SHA-256
      shards/<table>-N.parquet optional extra tables of the same commit (transcripts, ...)
      catalog.duckdb         real tables built from shards + manifest; a rebuildable cache
      index/                 FAISS index + index.json (vidsearch.indexer)
      .tmp/                  temp files; nothing here is ever read as data
      .lock                  flock-ed by the one writer (ingest, index, doctor --fix)

Every file becomes visible by temp file -> fsync -> ``os.replace`` -> manifest update, so a kill
at any moment leaves either the old or the new state.

Readers and writers. Reading (``read_manifest``, ``read_shard``, ``verify``, ``writer``,
``open_catalog_readonly``/``connect_catalog``, ``load_catalog_into``) never changes the folder, so
it works on a read-only mount and beside a running writer. Everything that changes the folder
(``init``, ``open_shards``, ``commit``, ``record_run``, ``recover``, ``refresh_catalog``,
``quarantine_bad_shards``) needs :meth:`Library.lock` held by this process and raises
:class:`NeedsWriterLock` otherwise.

The parts: :mod:`.shards` (where shard files live, and reading them with their schema checked),
:mod:`.catalog` (the DuckDB cache, and readers' views of it), :mod:`.lock` (the flock writer
lock), :mod:`.recovery` (what a writer repairs and readers report); :mod:`vidsearch.files` for
hashes and atomic writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from vidsearch.files import atomic_write_bytes, failed_path, is_disk_full, is_read_only, sha256_file
from vidsearch.library.base import (
    DiskFull,
    LibraryError,
    LibraryLocked,
    ModelMismatch,
    NeedsWriterLock,
    crash_point,
    read_only_error,
    utcnow,
)
from vidsearch.library.catalog import Catalog, CatalogLoad, CatalogReader, CatalogRefresh
from vidsearch.library.lock import WriterLock, held_here, lock_holder
from vidsearch.library.recovery import (
    RUN_FAILED,
    RUN_INTERRUPTED,
    clean_tmp,
    quarantine_rows,
    remove_unlisted,
    reported_runs,
    settled_runs,
    shard_problems,
    stray_files,
)
from vidsearch.library.shards import (
    SHARDS_OWNER,
    LocalShards,
    ShardStore,
    UriShards,
    normalize_shards_uri,
    read_parquet,
    schema_problem,
)
from vidsearch.schemas.manifest import (
    CLIPS_TABLE,
    MANIFEST_FORMAT_REMOTE_SHARDS,
    TABLE_NAME_RE,
    VIDEOS_TABLE,
    Manifest,
    ManifestInvalid,
    ModelInfo,
    ShardEntry,
    TableFile,
    shard_file_name,
)
from vidsearch.schemas.tables import VIDEO_SCHEMA, clip_schema
from vidsearch.schemas.text_tables import EXTRA_TABLES

_logger = logging.getLogger(__name__)

# read_shard's names for the two tables every shard has.
_TABLE_OF = {"clips": CLIPS_TABLE, CLIPS_TABLE: CLIPS_TABLE, "videos": VIDEOS_TABLE}


class Library:
    """A library folder. Reading is always safe; writing needs :meth:`lock`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self._store: ShardStore | None = None
        self._catalog: Catalog | None = None
        self._lock: WriterLock | None = None
        self._manifest_cache: tuple[tuple[int, int, int, int], Manifest] | None = None
        # Shards the last in-memory catalog (load_catalog_into) had to leave out: {id: why} (F10).
        self.left_out_shards: dict[int, str] = {}

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

    @property
    def catalog_wal_path(self) -> Path:
        return self.root / "catalog.duckdb.wal"

    @property
    def quarantine_dir(self) -> Path:
        """Where corrupt shards and catalogs are set aside (kept for inspection, never read)."""
        return self.root / "quarantine"

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
        """The committed manifest, every field checked (docs/RELIABILITY.md S1).

        Raises:
            LibraryError: the folder is not a library, or its manifest is malformed (the message
                names manifest.json and the field).
        """
        try:
            with open(self.manifest_path, "rb") as f:
                # The manifest is only ever replaced (a new inode), never rewritten in place: the
                # same file as last time is the same manifest, already checked.
                st = os.fstat(f.fileno())
                key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                if self._manifest_cache is not None and self._manifest_cache[0] == key:
                    return self._manifest_cache[1]
                text = f.read()
        except FileNotFoundError:
            raise LibraryError(
                f"{self.root} is not a vidsearch library (no manifest.json); "
                "create one with `vidsearch ingest PATH --library DIR`"
            ) from None
        try:
            m = Manifest.from_json(text)
        except ManifestInvalid as e:
            raise LibraryError(f"{self.manifest_path}: malformed manifest ({e})") from None
        self._manifest_cache = (key, m)
        return m

    def _write_manifest(self, manifest: Manifest) -> None:
        self._need_lock("writing manifest.json")
        try:
            atomic_write_bytes(self.manifest_path, manifest.to_json().encode(), self.tmp_dir)
        except OSError as e:
            if is_read_only(e):
                raise read_only_error(e, self.manifest_path) from None
            raise

    def init(self, model: ModelInfo, ingest_settings: dict[str, Any] | None = None,
             allow_new_model: bool = False, shards_uri: str | None = None) -> Manifest:
        """Create the library if needed and check that ``model`` is its embedding space. Writer only.

        ``shards_uri``: keep the shard files there (:meth:`open_shards`); None = the library's own.

        Raises:
            ModelMismatch: the library holds embeddings of another model fingerprint and
                ``allow_new_model`` is False.
        """
        self._need_lock("init()")
        if shards_uri is not None:
            self.open_shards(shards_uri)
        remote = self.exists() and self.read_manifest().shards_uri is not None
        for d in (self.root, self.tmp_dir) if remote else (self.root, self.shards_dir, self.tmp_dir):
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
            store = self._shards(m)
            for s in m.shards:
                for rel, _ in s.files().values():
                    store.delete(rel)
            m = replace(m, model=model, shards=(), generation=m.generation + 1)
            self._write_manifest(m)
            self.refresh_catalog()
        elif m.model is None:  # created by open_shards(), or by a run killed before its first commit
            m = replace(m, model=model, ingest_settings=m.ingest_settings or dict(ingest_settings or {}))
            self._write_manifest(m)
        return m

    # ---- shard location --------------------------------------------------------------------
    def _shards(self, manifest: Manifest | None = None) -> ShardStore:
        """The store of this library's shard files (the manifest says which)."""
        if manifest is None and self._store is not None:
            return self._store  # fixed once the library holds shards; open_shards() resets it
        uri = (manifest or self.read_manifest()).shards_uri
        if self._store is None or self._store.uri != uri:
            self._store = (LocalShards(self.shards_dir, self.quarantine_dir, self.resolve_inside,
                                       self._mkdir_no_symlink)
                           if uri is None else UriShards(uri))
        return self._store

    def shards_location(self, manifest: Manifest | None = None) -> str:
        """Where the shard files live: the ``shards/`` folder's path or the shards URI."""
        m = manifest or self.read_manifest()
        return m.shards_uri or str(self.shards_dir)

    def open_shards(self, shards_uri: str | None = None) -> str | None:
        """Settle and check where the shard files go, before any work starts. Writer only.

        A new library (or one holding no shards yet) takes ``shards_uri``; a library with shards
        keeps its location and a different one is refused. A remote location must be reachable,
        its bucket must exist, it must be listable and writable (the owner record
        ``vidsearch-library.json`` is written there) and it must not hold another library's shards.
        A new library with remote shards is created here (its manifest, model still unset).

        Returns:
            The URI in use; None for the library's own ``shards/`` folder.

        Raises:
            LibraryError: one line naming the URI and the problem.
        """
        self._need_lock("open_shards()")
        uri = normalize_shards_uri(shards_uri) if shards_uri else None
        m = self.read_manifest() if self.exists() else None
        if m is not None and uri is None:
            uri = m.shards_uri
        if m is not None and m.shards and uri != m.shards_uri:
            raise LibraryError(
                f"{self.root} keeps its shards at {self.shards_location(m)}; refusing --shards-uri {uri}: "
                "the shard location of a library is fixed once it holds shards (use another --library)")
        if uri is None:
            return None
        store = UriShards(uri)
        if store.renames and Path(store.base).resolve().is_relative_to(self.root.resolve()):
            raise LibraryError(f"--shards-uri {uri} is inside the library folder {self.root}; "
                               "leave --shards-uri out to keep shards in the library's own shards/ folder")
        store.check()
        for d in (self.root, self.tmp_dir):
            self._mkdir_no_symlink(d)
        if m is None:
            m = Manifest(library_id=uuid.uuid4().hex, updated_at=utcnow().isoformat())
        store.claim(m.library_id, self.root, m.shard_file_names)
        if m.shards_uri != uri:
            self._write_manifest(replace(m, shards_uri=uri, format=MANIFEST_FORMAT_REMOTE_SHARDS,
                                         updated_at=utcnow().isoformat()))
        self._store = store
        return uri

    def _mkdir_no_symlink(self, d: Path) -> None:
        # A symlinked subfolder could point writes outside the library (docs/RELIABILITY.md S4).
        self._refuse_symlink(d)
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if is_read_only(e):
                raise read_only_error(e, d) from None
            raise

    @staticmethod
    def _refuse_symlink(d: Path) -> None:
        if d.is_symlink():
            raise LibraryError(f"{d} is a symbolic link; library folders must be real directories")

    # ---- lock ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, break_lock: bool = False) -> Iterator[None]:
        """Hold the single-writer lock (``flock`` on ``.lock``) while the block runs.

        On taking it: refuse symlinked library folders (S4), record runs a dead writer left
        ``running`` as ``interrupted`` (D8), and :meth:`recover`. If the block raises, runs this
        writer left ``running`` are recorded as ``failed`` (``interrupted`` for Ctrl-C/SystemExit),
        as far as the disk allows; else the next writer does it.

        Args:
            break_lock: kept for the CLI's ``--break-lock``. The kernel frees the lock of a
                process that died, so there is no stale lock to break; a live holder's lock is
                never taken over (the flag only changes the message).

        Raises:
            LibraryLocked: another live process holds the lock.
            LibraryReadOnly: the folder cannot be written (read-only mount, permissions; D3).
            DiskFull: not even the lock file can be created.
        """
        self._mkdir_no_symlink(self.root)
        lock = WriterLock(self.lock_path, self.root)
        try:
            lock.acquire()
        except LibraryLocked as e:
            if break_lock:
                raise LibraryLocked(f"{e}. --break-lock cannot take the lock from a running process: the kernel "
                                    "frees it when that process exits, so a dead writer never needs "
                                    "--break-lock") from None
            raise
        self._lock = lock
        try:
            # Refused before any work (S4): index/ and thumbs/ are written at the end of an ingest.
            for d in (self.shards_dir, self.tmp_dir, self.index_dir, self.thumbs_dir):
                self._refuse_symlink(d)
            if self.exists():  # runs a killed writer left "running" (D8): its lock is gone, so it is dead
                self._close_runs(settled_runs(self.read_manifest()))
            self.recover()
            yield
        except BaseException as e:
            self._close_own_runs(e)
            raise
        finally:
            self._lock = None
            lock.release()

    @property
    def holds_lock(self) -> bool:
        """Whether this process holds this library's writer lock."""
        return held_here(self.lock_path)

    def writer(self) -> dict[str, Any] | None:
        """The live writer holding the lock (pid, host, since), or None. Read-only, never waits."""
        return lock_holder(self.lock_path)

    def _need_lock(self, what: str) -> None:
        if not self.holds_lock:
            raise NeedsWriterLock(f"{what} changes {self.root} and needs the writer lock (Library.lock()); "
                                  "read commands never change a library")

    def _close_runs(self, runs: list[dict[str, Any]]) -> None:
        """Record closed run records in the manifest. Writer only.

        The catalog is not refreshed here (that may read a bad shard before the writer has set it
        aside); readers take runs from the manifest, and the writer refreshes the catalog anyway.
        """
        if not runs:
            return
        for r in runs:
            _logger.warning("run %s was left running by a writer that stopped (killed, or out of disk); "
                            "recorded as %s", r["run_id"], r["status"])
        m = self.read_manifest()
        by_id = {r["run_id"]: r for r in runs}
        m = replace(m, runs=tuple(by_id.get(r["run_id"], r) for r in m.runs), generation=m.generation + 1,
                    updated_at=utcnow().isoformat())
        self._write_manifest(m)

    def _close_own_runs(self, e: BaseException) -> None:
        """This writer is failing: close the runs it left ``running`` (best effort; D8)."""
        status = RUN_INTERRUPTED if isinstance(e, (KeyboardInterrupt, SystemExit)) else RUN_FAILED
        try:
            if self.exists():
                self._close_runs(settled_runs(self.read_manifest(), status, utcnow().isoformat()))
        except (OSError, LibraryError, duckdb.Error) as err:
            _logger.warning("runs left running, to be closed by the next writer (%s)", err)

    def recover(self) -> list[str]:
        """Writer start-up: drop temp files and shard files the manifest does not list. Writer only.

        A shard renamed into place but not yet in the manifest (a kill between the two) is
        deleted: its videos are not marked done anywhere, so the resumed run redoes them.
        """
        self._need_lock("recover()")
        # Recovery deletes files: through a symlinked .tmp or shards/ it would empty whatever
        # folder the link points to (S4). Refuse before listing anything.
        for d in (self.tmp_dir, self.shards_dir):
            self._refuse_symlink(d)
        removed = clean_tmp(self.tmp_dir)
        if self.exists():
            m = self.read_manifest()
            store = self._shards(m)
            if isinstance(store, UriShards):
                store.claim(m.library_id, self.root, m.shard_file_names)  # refuses another library's location
            removed += remove_unlisted(store, m)
        return removed

    # ---- commit ----------------------------------------------------------------------------
    def commit(self, clips: pa.Table, videos: pa.Table, run_id: str,
               metadata: dict[str, str] | None = None, *, refresh_catalog: bool = True,
               tables: Mapping[str, pa.Table] | None = None) -> ShardEntry:
        """Commit one shard (clips + video rows, plus extra tables) and refresh the catalog. Writer only.

        Videos listed in ``videos`` are settled by this commit: their clips must all be in
        ``clips``. The manifest write is the commit point.

        Args:
            refresh_catalog: bring ``catalog.duckdb`` up to date before returning. False leaves
                the catalog behind the manifest (it is a cache): a refresh copies the whole
                catalog, so a long run refreshes it only now and then (``ShardWriter``) and at
                its end; any writer's start and ``vidsearch index`` catch a lagging one up.
            tables: extra per-commit tables, {name: table} (e.g. transcripts of the same videos):
                written, hashed and listed in the manifest in the same commit; read back with
                ``read_shard(entry, name)``. Names match ``[a-z][a-z0-9_]*``.
        """
        self._need_lock("commit()")
        m = self.read_manifest()
        if m.model is None:
            raise LibraryError("commit() before init(): the library has no model")
        if clips.num_rows and clips.schema.field("embedding").type.list_size != m.model.embed_dim:
            raise LibraryError("embedding dimension differs from the library's model")
        extra = dict(tables or {})
        for name, table in extra.items():
            if not TABLE_NAME_RE.fullmatch(name) or name in (CLIPS_TABLE, VIDEOS_TABLE, "clips"):
                raise ValueError(f"commit(): {name!r} is not an allowed extra table name")
            if name in EXTRA_TABLES and (why := schema_problem(table.schema, EXTRA_TABLES[name])):
                # Readers check it on every read: a table they would refuse is never written.
                raise ValueError(f"commit(): table {name} does not have its schema ({why})")
        shard_id = max((s.shard_id for s in m.shards), default=0) + 1
        file_meta = {
            "vidsearch.model": m.model.name,
            "vidsearch.model_fingerprint": m.model.fingerprint,
            "vidsearch.preprocess": json.dumps(m.model.preprocess, sort_keys=True),
            "vidsearch.run_id": run_id,
            **(metadata or {}),
        }
        videos = videos.cast(VIDEO_SCHEMA)
        try:
            return self._commit({CLIPS_TABLE: clips, VIDEOS_TABLE: videos, **extra}, run_id, m, shard_id,
                                file_meta, refresh_catalog)
        except OSError as e:
            if is_read_only(e):
                raise read_only_error(e, self.root) from None
            if not is_disk_full(e):
                raise
            raise DiskFull(
                f"disk full writing {e.filename or self.root}: this commit ({clips.num_rows} clips) was "
                f"not written; the library keeps its {m.total_clips} committed clips. Free space and "
                "rerun the same command to resume"
            ) from e

    def _commit(self, tables: dict[str, pa.Table], run_id: str, m: Manifest, shard_id: int,
                file_meta: dict[str, str], refresh: bool = True) -> ShardEntry:
        tmps: list[Path] = []
        digests: dict[str, str] = {}
        names = {t: shard_file_name(t, shard_id) for t in tables}
        try:
            for t, table in tables.items():
                schema = table.schema.with_metadata({**(table.schema.metadata or {}),
                                                     **{k.encode(): v.encode() for k, v in file_meta.items()}})
                tmp = self.tmp_dir / f"{names[t]}.{uuid.uuid4().hex}.tmp"
                tmps.append(tmp)  # before writing: a failed write must not leave its temp file
                try:
                    pq.write_table(table.replace_schema_metadata(schema.metadata), tmp, compression="zstd")
                except OSError as e:
                    e.filename = e.filename or str(tmp)  # pyarrow's error does not name the file
                    raise
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                digests[t] = sha256_file(tmp)
            crash_point("after_shard_tmp_write")
            crash_point("before_rename")
            store = self._shards(m)
            store.publish([(tmp, names[t]) for tmp, t in zip(tmps, tables, strict=True)])  # remote: not yet listed
            crash_point("after_rename_before_manifest")
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
        clips, videos = tables[CLIPS_TABLE], tables[VIDEOS_TABLE]
        ids = clips.column("clip_id") if clips.num_rows else None
        entry = ShardEntry(
            shard_id=shard_id,
            clips_file=store.entry_path(names[CLIPS_TABLE]), clips_rows=clips.num_rows,
            clips_sha256=digests[CLIPS_TABLE],
            videos_file=store.entry_path(names[VIDEOS_TABLE]), videos_rows=videos.num_rows,
            videos_sha256=digests[VIDEOS_TABLE],
            run_id=run_id, created_at=utcnow().isoformat(),
            min_clip_id=int(pa.compute.min(ids).as_py()) if ids is not None else None,
            max_clip_id=int(pa.compute.max(ids).as_py()) if ids is not None else None,
            tables={t: TableFile(store.entry_path(names[t]), tables[t].num_rows, digests[t])
                    for t in tables if t not in (CLIPS_TABLE, VIDEOS_TABLE)},
        )
        m = replace(m, shards=m.shards + (entry,), generation=m.generation + 1,
                    updated_at=utcnow().isoformat())
        self._write_manifest(m)
        self.catalog.keep_fresh_rows(entry, clips, videos,
                                     {t: tbl for t, tbl in tables.items() if t not in (CLIPS_TABLE, VIDEOS_TABLE)})
        crash_point("after_manifest_before_catalog")
        if refresh:
            self.refresh_catalog(m)
        return entry

    def record_run(self, run: dict[str, Any]) -> None:
        """Insert or update a run summary in the manifest (and the catalog). Writer only."""
        self._need_lock("record_run()")
        m = self.read_manifest()
        runs = tuple(r for r in m.runs if r.get("run_id") != run["run_id"]) + (run,)
        m = replace(m, runs=runs, generation=m.generation + 1, updated_at=utcnow().isoformat())
        try:
            self._write_manifest(m)
            self.refresh_catalog(m)
        except (OSError, duckdb.Error) as e:
            if not is_disk_full(e):
                raise
            raise DiskFull(f"disk full writing {failed_path(e, self.catalog_path)} (run record of "
                           f"{run['run_id']}): the library keeps its {m.total_clips} committed clips. "
                           "Free space and rerun the same command") from e

    # ---- shards ----------------------------------------------------------------------------
    def read_shard(self, entry: ShardEntry, which: str = "clips", columns: list[str] | None = None,
                   verify: bool = False, *, schema: pa.Schema | None = None) -> pa.Table:
        """Read one table of a listed shard, its schema checked (D7), optionally its SHA-256.

        Args:
            which: "clips", "videos", or the name of an extra table of the shard.
            columns: read only these.
            verify: check the file's SHA-256 against the manifest first.
            schema: the schema an extra table must have (clips, videos and the extra tables this
                version knows, ``text_tables.EXTRA_TABLES``, are always checked).

        Raises:
            ShardInvalid: the file is not the table it should be (wrong schema, not Parquet).
            LibraryError: the file is missing or its SHA-256 differs.
        """
        table = _TABLE_OF.get(which, which)
        files = entry.files()
        if table not in files:
            raise LibraryError(f"shard {entry.shard_id} has no table {which!r}")
        rel, digest = files[table]
        store = self._shards()
        if table == CLIPS_TABLE:
            schema = self._clip_schema()
        elif table == VIDEOS_TABLE:
            schema = VIDEO_SCHEMA
        elif schema is None:
            schema = EXTRA_TABLES.get(table)
        return read_parquet(store.source(rel, digest if verify else None), store.where(rel), columns, schema)

    def _clip_schema(self) -> pa.Schema:
        m = self.read_manifest()
        if m.model is None:
            raise LibraryError(f"{self.manifest_path}: shards listed but no model")
        return clip_schema(m.model.embed_dim)

    def shard_problems(self, manifest: Manifest | None = None) -> dict[int, list[str]]:
        """Listed shards whose files are missing, differ from their SHA-256 or have a wrong schema.

        Raises:
            LibraryError: the shard location cannot be read at all (remote stores).
        """
        m = manifest or self.read_manifest()
        return shard_problems(self._shards(m), m)

    def verify(self) -> list[str]:
        """Problems found: missing or corrupt listed shards, stray files. Empty list = healthy."""
        try:
            m = self.read_manifest()
        except LibraryError as e:
            return [str(e)]
        problems: list[str] = []
        try:
            store = self._shards(m)
            problems += [p for ps in self.shard_problems(m).values() for p in ps]
            names = store.names()
            if isinstance(store, UriShards) and SHARDS_OWNER in names:
                holder = store.owner() or {}
                if holder.get("library_id") != m.library_id:
                    problems.append(f"{store.where(SHARDS_OWNER)} names another library "
                                    f"({holder.get('library_id')}); two libraries share this shard location")
        except LibraryError as e:  # an unreachable shard location is a problem to report, not a crash
            return [*problems, str(e)]
        return problems + stray_files(store, m, names)

    def quarantine_bad_shards(self) -> list[int]:
        """Writer start-up: set aside listed shards that are missing, corrupt or of a wrong schema
        (docs/RELIABILITY.md F10, D7). Writer only.

        Every video that had its latest row or any clip in a bad shard gets a new row first (see
        :func:`~vidsearch.library.recovery.quarantine_rows`), from the catalog, built while the
        shard was good, else from the shard's intact videos file. Then the shard's files move to
        ``quarantine/`` (of the library, or of a remote shard location) and the manifest drops it.
        Rows first: a kill in between redoes the same work at the next start. It reads every
        shard once to hash it (~0.6 GB/s on one core here: ~4 s for a million 512-d clips).

        Returns:
            The ids of the shards set aside (empty when all are intact).
        """
        self._need_lock("quarantine_bad_shards()")
        m = self.read_manifest()
        problems = self.shard_problems(m)
        if not problems:
            return []
        bad = [s for s in m.shards if s.shard_id in problems]
        stamp = utcnow().strftime("%Y%m%dT%H%M%S")
        why = "; ".join(p for ps in problems.values() for p in ps)
        rows = quarantine_rows(self._rows_touching(bad, problems), why, stamp)
        if rows:
            assert m.model is not None  # the manifest check refuses shards without a model
            empty = pa.Table.from_pylist([], schema=clip_schema(m.model.embed_dim))
            try:
                self.commit(empty, pa.Table.from_pylist(rows, schema=VIDEO_SCHEMA), run_id=f"quarantine-{stamp}")
            except DiskFull:
                raise
            except LibraryError as e:
                # Committed (the manifest lists the rows), but a catalog rebuilt from scratch reads
                # the bad shards too: the refresh after dropping them below succeeds.
                _logger.info("catalog refresh deferred until the bad shards are dropped (%s)", e)
        store = self._shards(m)
        for s in bad:
            moved = [w for w in (store.set_aside(rel, stamp) for rel, _ in s.files().values()) if w]
            _logger.error("shard %d: %s; set aside (%s): its %d clips are not searchable until their "
                          "videos are ingested again", s.shard_id, "; ".join(problems[s.shard_id]),
                          ", ".join(moved) or "nothing left to move", s.clips_rows)
        m = self.read_manifest()  # the commit above moved the generation on
        m = replace(m, shards=tuple(s for s in m.shards if s.shard_id not in problems),
                    generation=m.generation + 1, updated_at=utcnow().isoformat())
        self._write_manifest(m)
        self.refresh_catalog(m)
        return sorted(problems)

    def _rows_touching(self, bad: list[ShardEntry], problems: dict[int, list[str]]) -> list[dict[str, Any]]:
        """Latest video rows (with ``shard_id``) settled in ``bad`` shards or owning clips there."""
        from_catalog = self.catalog.rows_touching([s.shard_id for s in bad])
        if from_catalog is not None:
            return from_catalog
        rows: dict[str, dict[str, Any]] = {}
        for s in bad:
            if not any(s.videos_file in p for p in problems[s.shard_id]):
                for r in self.read_shard(s, "videos").to_pylist():
                    rows[r["video_id"]] = {**r, "shard_id": s.shard_id}
            else:
                _logger.error("shard %d: its videos file is lost too; its videos are re-ingested as new "
                              "files when seen again", s.shard_id)
        return list(rows.values())

    # ---- catalog ---------------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        """The DuckDB catalog cache of this library (:class:`~vidsearch.library.catalog.Catalog`)."""
        if self._catalog is None:
            self._catalog = Catalog(self.catalog_path, self.tmp_dir, self.quarantine_dir, self._mkdir_no_symlink,
                                    lambda e, which, cols: self.read_shard(e, which, columns=cols, verify=True),
                                    self.runs)
        return self._catalog

    def runs(self, manifest: Manifest | None = None) -> list[dict[str, Any]]:
        """The run records, a run left ``running`` by a dead writer reported ``interrupted`` (D8).

        Read-only: only the next writer records the change.
        """
        m = manifest or self.read_manifest()
        alive = any(r.get("status") == "running" for r in m.runs) and self.writer() is not None
        return reported_runs(m, alive)

    def catalog_problem(self) -> str | None:
        """Why ``catalog.duckdb`` must not be opened as it stands, or None (F15)."""
        return self.catalog.problem()

    def catalog_is_current(self, manifest: Manifest | None = None) -> bool:
        """Whether ``catalog.duckdb`` is usable and at the manifest's generation."""
        return self.catalog.is_current(manifest or self.read_manifest())

    def refresh_catalog(self, manifest: Manifest | None = None) -> CatalogRefresh:
        """Bring ``catalog.duckdb`` to the manifest's generation (incrementally when it can). Writer only.

        The new catalog is built in ``.tmp`` and swapped in with ``os.replace``; a missing,
        corrupt or foreign catalog is set aside and rebuilt from shards (rule 11). A catalog
        already at the manifest's generation is left alone. The copy makes a refresh cost
        O(catalog size), which is why long runs defer it (:meth:`commit`'s ``refresh_catalog``).

        Returns:
            What it did: shards added and seconds taken, of which inserting their rows.

        Raises:
            DiskFull: no space for the new catalog; the committed shards are kept and the
                catalog stays behind until the next writer refreshes it (readers complete it
                from the shards meanwhile).
        """
        self._need_lock("refresh_catalog()")
        m = manifest or self.read_manifest()
        try:
            return self.catalog.refresh(m)
        except (OSError, duckdb.Error) as e:
            if isinstance(e, OSError) and is_read_only(e):
                raise read_only_error(e, self.catalog_path) from None
            if not is_disk_full(e):
                raise
            # The shards are committed (the manifest lists them); only the cache is behind, and
            # the next writer or `vidsearch index` brings it up to date.
            last = m.shards[-1].shard_id if m.shards else 0
            raise DiskFull(f"disk full writing {failed_path(e, self.catalog_path)}: shard {last} is committed "
                           f"but the catalog is behind. Free space and rerun the same command") from e

    def load_catalog_into(self, con: duckdb.DuckDBPyConnection, manifest: Manifest | None = None, *,
                          attached: str | None = None) -> CatalogLoad:
        """Give ``con`` the catalog tables (videos, clips, failures, runs) of the manifest's shards.

        Writes no file and reads none through SQL (only registered Arrow tables and constant SQL),
        so it runs on a connection whose external access is already off and configuration locked.
        ``attached``: the name under which the caller ATTACHed ``catalog.duckdb`` READ_ONLY before
        locking the connection; it is used if current, completed with newer shards if behind, and
        detached if unusable. See :meth:`vidsearch.library.catalog.Catalog.load_into`.

        Returns:
            Where the tables came from; also ``left_out_shards`` (kept on ``self`` as before).
        """
        load = self.catalog.load_into(con, manifest or self.read_manifest(), attached=attached)
        self.left_out_shards = dict(load.left_out_shards)
        return load

    def open_catalog_readonly(self, manifest: Manifest | None = None) -> CatalogReader:
        """A reader's catalog: the tables of the manifest's generation, without writing anything.

        ``catalog.duckdb`` attached read-only if it is usable, completed in memory with the rows of
        shards committed after it (a writer killed or out of disk before refreshing it, D9); else
        every table built in memory from the shards. ``reader.stale`` says why the file alone was
        not enough (None: it is current); ``reader.load.left_out_shards`` lists unreadable shards.
        Never waits on a writer (the writer swaps whole files).
        """
        reader = self.catalog.open_readonly(manifest or self.read_manifest())
        self.left_out_shards = dict(reader.load.left_out_shards)
        return reader

    def connect_catalog(self) -> duckdb.DuckDBPyConnection:
        """The connection of :meth:`open_catalog_readonly` (tables of the last committed generation)."""
        return self.open_catalog_readonly().con
