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
at any moment leaves either the old or the new state. The catalog is replaced as a whole file
when it is refreshed, so readers that opened the previous one keep reading it (a DuckDB file
cannot have a writer and readers in different processes at once; RELIABILITY.md rule 7). It may
lag the manifest by a few commits during a long run (``commit(refresh_catalog=False)``): it is a
cache, the manifest is the commit point, and every writer catches it up before reading it.

Shard files may instead live at a pyarrow filesystem URI (``--shards-uri s3://bucket/prefix``,
``gs://``, ``file://``, ``hdfs://``; recorded in the manifest when the library is created) while
everything else stays in the local folder (DuckDB and the FAISS mmap need local files). All shard
I/O goes through :class:`Library` (:meth:`~Library.read_shard`, :meth:`~Library.verify`,
:meth:`~Library.recover`, :meth:`~Library.commit`), which hands it to a ``_LocalShards`` or a
``_UriShards`` store. A shard is still staged in ``.tmp`` and hashed there; publishing it is a
rename where the filesystem has one (local, ``file://``, ``hdfs://``: temp name + move) and one
direct write of the final key elsewhere (an S3/GCS PUT is atomic per object). The manifest update
stays the commit point, and an uploaded but unlisted object is deleted by :meth:`Library.recover`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vidsearch.schemas.manifest import MANIFEST_FORMAT_REMOTE_SHARDS, Manifest, ModelInfo, ShardEntry
from vidsearch.schemas.tables import (
    CATALOG_DDL,
    CLIP_CATALOG_COLUMNS,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PARTIAL,
    VIDEO_SCHEMA,
    clip_schema,
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
    "after_commit_catalog_behind",   # ShardWriter: a commit whose catalog refresh was deferred
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
# Catalog rows of freshly committed shards kept in memory for the next catalog refresh (bytes).
_FRESH_ROWS_BYTES = 256 << 20
_NO_SPACE_TEXT = tuple(os.strerror(n) for n in _NO_SPACE)


def is_disk_full(e: BaseException) -> bool:
    """True when ``e`` says the disk, the quota or the file-size limit is full.

    pyarrow and Python raise ``OSError`` with ENOSPC/EDQUOT/EFBIG, but DuckDB and FAISS raise
    their own errors carrying only the text ("Could not write file ...: No space left on device"),
    so both are checked.
    """
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
        return True
    return any(t in str(e) for t in _NO_SPACE_TEXT)


def failed_path(e: BaseException, default: str | os.PathLike[str]) -> str:
    """The file a write error names: ``OSError.filename``, else a quoted path in DuckDB's text."""
    name = getattr(e, "filename", None)
    if name:
        return str(name)
    m = re.search(r'file "([^"]+)"', str(e))
    return m.group(1) if m else str(default)


@dataclass(frozen=True)
class CatalogRefresh:
    """What :meth:`Library.refresh_catalog` did."""

    shards_added: int
    seconds: float
    insert_seconds: float       # inserting the added shards' rows (work any catalog must do)

    @property
    def fixed_seconds(self) -> float:
        """The part that does not depend on how many shards were added: copying the catalog,
        opening it, checkpointing and swapping it in (grows with the catalog's size)."""
        return max(0.0, self.seconds - self.insert_seconds)


def _catalog_clip_rows(clips: pa.Table) -> pa.Table:
    """A shard's catalog clip columns plus ``row_in_shard``, numbered in the file's order (not by
    row_number() OVER () in SQL, whose order over a parallel scan is not guaranteed)."""
    return clips.append_column("row_in_shard", pa.array(range(clips.num_rows), pa.int32()))


def _meta_is_current(meta: dict[str, str], m: Manifest) -> bool:
    """Whether a catalog's ``meta`` says it holds exactly manifest ``m``'s generation."""
    return meta.get("library_id") == m.library_id and meta.get("generation") == str(m.generation)


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


def _fsync_file(path: str | os.PathLike[str]) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_replace(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, rename it over ``final`` and fsync the directory."""
    _fsync_file(tmp)
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


# ---- shard stores ------------------------------------------------------------------------------
SHARD_PREFIXES = ("part-", "videos-")
# The object a remote shard location holds beside the shards: which library owns it. recover()
# deletes unlisted part-/videos- objects, so two libraries must never share one location.
SHARDS_OWNER = "vidsearch-library.json"
# Query parameters that carry secrets in pyarrow/fsspec-style URIs (the manifest is not a secret).
_SECRET_PARAM = re.compile(r"secret|token|passw|credential|access_key|key_id|signature|^sig$|^sas", re.I)
# Schemes whose URI user name is itself a credential (s3://KEY_ID:SECRET@bucket).
_USER_IS_KEY = ("s3", "gs", "gcs")


def normalize_shards_uri(uri: str) -> str:
    """The shard location as the manifest records it: a URI, or an absolute local path.

    Raises:
        LibraryError: the URI carries a credential (user:password@, or a secret query parameter);
            the message names where, never the secret itself.
    """
    uri = uri.strip()
    if "://" not in uri:
        return str(Path(uri).expanduser().absolute())
    parts = urllib.parse.urlsplit(uri)
    host = f"{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
    shown = urllib.parse.urlunsplit(parts._replace(netloc=host, query=""))  # never echo the secret
    if parts.password is not None or (parts.username and parts.scheme.lower() in _USER_IS_KEY):
        raise LibraryError(
            f"--shards-uri {shown}: the URI embeds credentials (user:password@ before the bucket/host) and "
            "vidsearch records this URI in manifest.json; give credentials through the environment "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS)")
    for key, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_PARAM.search(key):
            raise LibraryError(
                f"--shards-uri {shown}: query parameter {key!r} is a credential and vidsearch records this URI "
                "in manifest.json; give credentials through the environment instead")
    path = parts.path.rstrip("/") if len(parts.path) > 1 else parts.path
    return urllib.parse.urlunsplit(parts._replace(path=path))


def _explain(e: Exception) -> str:
    """One line from a pyarrow/AWS SDK error, classified (the SDK's text can span lines)."""
    msg = re.sub(r"\s*\(Request ID: [^)]*\)", "", " ".join(str(e).split()))
    up = msg.upper()
    if any(k in up for k in ("ACCESS_DENIED", "ACCESSDENIED", "SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY",
                             "PERMISSION DENIED", "FORBIDDEN", "UNAUTHORIZED")) or isinstance(e, PermissionError):
        kind = "access denied"
    elif any(k in up for k in ("NETWORK_CONNECTION", "COULD NOT CONNECT", "COULDN'T RESOLVE", "CURLCODE",
                               "CONNECTION REFUSED", "TIMED OUT")):
        kind = "unreachable"
    elif "NOSUCHBUCKET" in up or "NO_SUCH_BUCKET" in up:
        kind = "no such bucket"
    else:
        kind = "error"
    return f"{kind} ({msg})"


class _LocalShards:
    """Shard files in ``LIBRARY/shards/`` (the default layout; manifest names ``shards/NAME``)."""

    kind = "file"
    uri = None

    def __init__(self, library: Library) -> None:
        self.library = library
        self.dir = library.shards_dir

    def entry_path(self, name: str) -> str:
        return f"shards/{name}"

    def where(self, rel: str) -> str:
        return rel if "/" in rel else f"shards/{rel}"

    def names(self) -> list[str]:
        return [p.name for p in self.dir.iterdir()] if self.dir.is_dir() else []

    def publish(self, staged: list[tuple[Path, str]]) -> None:
        for tmp, name in staged:
            os.replace(tmp, self.dir / name)
        _fsync_dir(self.dir)

    def digest(self, rel: str) -> str | None:
        p = self.library.root / rel
        return sha256_file(p) if p.is_file() else None

    def read_table(self, rel: str, columns: list[str] | None, digest: str | None) -> pa.Table:
        path = self.library.resolve_inside(rel)
        if digest is not None and sha256_file(path) != digest:
            raise LibraryError(f"{path}: SHA-256 differs from the manifest (corrupt or replaced shard)")
        return pq.read_table(path, columns=columns)

    def delete(self, rel: str) -> None:
        # A manifest path is checked against escapes; a base name comes from listing shards/.
        (self.library.resolve_inside(rel) if "/" in rel else self.dir / rel).unlink(missing_ok=True)

    def set_aside(self, rel: str, tag: str) -> str | None:
        """Move a listed shard file to ``LIBRARY/quarantine/<tag>-<name>`` (F10); None if absent."""
        p = self.library.resolve_inside(rel)
        if not p.is_file():
            return None
        self.library._mkdir_no_symlink(self.library.quarantine_dir)
        dest = self.library.quarantine_dir / f"{tag}-{p.name}"
        os.replace(p, dest)
        return str(dest)


class _UriShards:
    """Shard files under a pyarrow filesystem URI; the manifest names them by base name."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        try:
            self.fs, base = pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as e:  # pa.ArrowInvalid is a ValueError
            raise LibraryError(f"--shards-uri {uri}: not a location pyarrow can open ({_explain(e)})") from None
        self.base = base.rstrip("/")
        # A move is an atomic rename only here; on object stores it is copy + delete.
        self.renames = self.fs.type_name in ("local", "hdfs")
        self.kind = "file" if self.renames else "object"
        self._shown = urllib.parse.urlunsplit(urllib.parse.urlsplit(uri)._replace(query="")).rstrip("/")

    def _key(self, rel: str) -> str:
        if "/" in rel or rel.startswith(".") or not rel:
            raise LibraryError(f"shard name {rel!r} escapes the shard location {self.uri}")
        return f"{self.base}/{rel}"

    def _io(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise LibraryError(f"shards at {self.uri}: {what}: {_explain(e)}") from e

    def entry_path(self, name: str) -> str:
        return name

    def where(self, rel: str) -> str:
        return f"{self._shown}/{rel}"

    def check(self) -> None:
        """Reachable, the bucket exists, listable; a local/HDFS folder is created (one-line errors)."""
        if self.fs.type_name in ("s3", "gcs"):
            bucket = self.base.split("/", 1)[0]
            info = self._io("cannot reach the bucket", self.fs.get_file_info, bucket)
            if info.type == pafs.FileType.NotFound:
                raise LibraryError(f"--shards-uri {self.uri}: bucket {bucket!r} does not exist (create it first)")
        elif self.renames:
            self._io("cannot create the folder", functools.partial(self.fs.create_dir, self.base, recursive=True))
        self.names()

    def names(self) -> list[str]:
        sel = pafs.FileSelector(self.base, allow_not_found=True, recursive=False)
        infos = self._io("cannot list the shards", self.fs.get_file_info, sel)
        return [i.base_name for i in infos if i.type == pafs.FileType.File]

    def _put(self, key: str, data: bytes) -> None:
        # One write call of the whole file, then close: an interruption can only come before the
        # write (nothing sent) or after it (the whole object); S3's close completes the upload.
        out = self.fs.open_output_stream(key)
        out.write(data)
        out.close()

    def publish(self, staged: list[tuple[Path, str]]) -> None:
        for tmp, name in staged:
            key = self._key(name)
            if self.renames:
                # The temp name starts with part-/videos-: recover() deletes one left by a kill.
                part = f"{key}.{uuid.uuid4().hex}.tmp"
                self._io(f"cannot write {name}", self._put, part, tmp.read_bytes())
                if self.fs.type_name == "local":  # pyarrow does not fsync: a power cut must not
                    self._io(f"cannot write {name}", _fsync_file, part)  # leave an empty renamed file
                self._io(f"cannot rename {name} into place", self.fs.move, part, key)
            else:
                self._io(f"cannot upload {name}", self._put, key, tmp.read_bytes())
        if self.fs.type_name == "local":
            self._io("cannot sync the folder", _fsync_dir, Path(self.base))

    def _read(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._key(rel)) as f:
            return f.read()

    def digest(self, rel: str) -> str | None:
        try:
            return hashlib.sha256(self._io(f"cannot read {rel}", self._read, rel)).hexdigest()
        except FileNotFoundError:
            return None

    def read_table(self, rel: str, columns: list[str] | None, digest: str | None) -> pa.Table:
        try:
            data = self._io(f"cannot read {rel}", self._read, rel)
        except FileNotFoundError:
            raise LibraryError(f"{self.where(rel)}: listed shard is missing") from None
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise LibraryError(f"{self.where(rel)}: SHA-256 differs from the manifest (corrupt or replaced shard)")
        return pq.read_table(pa.BufferReader(data), columns=columns)

    def delete(self, rel: str) -> None:
        try:
            self._io(f"cannot delete {rel}", self.fs.delete_file, self._key(rel))
        except FileNotFoundError:
            pass

    def set_aside(self, rel: str, tag: str) -> str | None:
        """Move a listed shard to ``<location>/quarantine/<tag>-<name>`` (F10); None if absent.

        A subfolder: never listed as a shard (``names`` is not recursive), never deleted by
        ``recover``. On object stores the move is a copy and a delete.
        """
        dest = f"{self.base}/quarantine/{tag}-{rel}"
        self._key(rel)  # refuses names that escape the location
        try:
            if self.fs.type_name == "local":
                self._io("cannot create the quarantine folder",
                         functools.partial(self.fs.create_dir, f"{self.base}/quarantine", recursive=True))
            self._io(f"cannot move {rel} aside", self.fs.move, self._key(rel), dest)
        except FileNotFoundError:
            return None
        return f"{self._shown}/quarantine/{tag}-{rel}"

    def owner(self) -> dict[str, Any] | None:
        """The owner record of this location (None: unclaimed)."""
        try:
            return json.loads(self._io("cannot read the owner record", self._read, SHARDS_OWNER) or b"{}")
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def claim(self, library_id: str, root: Path, listed: set[str]) -> None:
        """Make this location the library's, refusing one that holds another library's shards.

        ``listed``: the library's own shard names (a lost owner record is re-written when they are here).
        """
        holder = self.owner()
        if holder is not None and holder.get("library_id") == library_id:
            return
        present = {n for n in self.names() if n.startswith(SHARD_PREFIXES)}
        if present and (holder is not None or not present & listed):
            # Another library's shards: never adopt them, and never let recover() delete them.
            who = (f"library {holder.get('library_id')} ({holder.get('host')}:{holder.get('library')})"
                   if holder else "an unknown library")
            raise LibraryError(f"--shards-uri {self.uri} already holds {len(present)} shard file(s) of {who}; "
                               "give each library its own shard location")
        record = {"library_id": library_id, "library": str(root), "host": socket.gethostname()}
        self._io("cannot write (a write test at creation)", self._put, self._key(SHARDS_OWNER),
                 json.dumps(record, indent=2).encode())


class Library:
    """A library folder. Reading is always safe; writing needs :meth:`lock`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self._store: _LocalShards | _UriShards | None = None
        # Shards the last in-memory catalog (load_catalog_into) had to leave out: {id: why} (F10).
        self.left_out_shards: dict[int, str] = {}
        # Catalog rows of shards this process committed and the catalog has not taken in yet,
        # keyed by shard id with both files' SHA-256: a refresh inserts them from memory instead
        # of reading back (and, for a remote store, downloading) the files it just wrote.
        self._fresh_rows: OrderedDict[int, tuple[str, str, pa.Table, pa.Table]] = OrderedDict()
        self._fresh_lock = threading.Lock()  # refreshes read shards on a helper thread

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
             allow_new_model: bool = False, shards_uri: str | None = None) -> Manifest:
        """Create the library if needed and check that ``model`` is its embedding space.

        ``shards_uri``: keep the shard files there (:meth:`open_shards`); None = the library's own.

        Raises:
            ModelMismatch: the library holds embeddings of another model fingerprint and
                ``allow_new_model`` is False.
        """
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
                for rel in (s.clips_file, s.videos_file):
                    store.delete(rel)
            m = replace(m, model=model, shards=(), generation=m.generation + 1)
            self._write_manifest(m)
            self.refresh_catalog()
        elif m.model is None:  # created by open_shards(), or by a run killed before its first commit
            m = replace(m, model=model, ingest_settings=m.ingest_settings or dict(ingest_settings or {}))
            self._write_manifest(m)
        return m

    # ---- shard location --------------------------------------------------------------------
    def _shards(self, manifest: Manifest | None = None) -> _LocalShards | _UriShards:
        """The store of this library's shard files (the manifest says which)."""
        if manifest is None and self._store is not None:
            return self._store  # fixed once the library holds shards; open_shards() resets it
        uri = (manifest or self.read_manifest()).shards_uri
        if self._store is None or self._store.uri != uri:
            self._store = _LocalShards(self) if uri is None else _UriShards(uri)
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
        store = _UriShards(uri)
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
        # A symlinked subfolder could point writes outside the library (RELIABILITY.md S4).
        self._refuse_symlink(d)
        d.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _refuse_symlink(d: Path) -> None:
        if d.is_symlink():
            raise LibraryError(f"{d} is a symbolic link; library folders must be real directories")

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
            # Refused before any work (S4): index/ and thumbs/ are written at the end of an ingest.
            for d in (self.shards_dir, self.tmp_dir, self.index_dir, self.thumbs_dir):
                self._refuse_symlink(d)
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
        # Recovery deletes files: through a symlinked .tmp or shards/ it would empty whatever
        # folder the link points to (S4). Refuse before listing anything.
        for d in (self.tmp_dir, self.shards_dir):
            self._refuse_symlink(d)
        if self.tmp_dir.is_dir():
            for p in self.tmp_dir.iterdir():
                if p.is_file() or p.is_symlink():
                    p.unlink()
                    removed.append(str(p))
        if self.exists():
            m = self.read_manifest()
            store = self._shards(m)
            listed = m.shard_file_names
            if isinstance(store, _UriShards):
                store.claim(m.library_id, self.root, listed)  # refuses another library's location
            for name in store.names():
                if name.startswith(SHARD_PREFIXES) and name not in listed:
                    shown = store.where(name) if store.uri else str(self.shards_dir / name)
                    _logger.warning("removing unlisted shard %s (left by an interrupted commit)", shown)
                    store.delete(name)
                    removed.append(shown)
        return removed

    # ---- commit ----------------------------------------------------------------------------
    def commit(self, clips: pa.Table, videos: pa.Table, run_id: str,
               metadata: dict[str, str] | None = None, *, refresh_catalog: bool = True) -> ShardEntry:
        """Commit one shard pair (clips + video rows) and refresh the catalog. Writer only.

        The caller must hold :meth:`lock`. Videos listed in ``videos`` are settled by this
        commit: their clips must all be in ``clips``. The manifest write is the commit point.

        Args:
            refresh_catalog: bring ``catalog.duckdb`` up to date before returning. False leaves
                the catalog behind the manifest (it is a cache): a refresh copies the whole
                catalog, so a long run refreshes it only now and then (``ShardWriter``) and at
                its end; any writer's start and ``vidsearch index`` catch a lagging one up.
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
            return self._commit(clips, videos, run_id, m, shard_id, names, file_meta, refresh_catalog)
        except OSError as e:
            if not is_disk_full(e):
                raise
            raise DiskFull(
                f"disk full writing {e.filename or self.root}: this commit ({clips.num_rows} clips) was "
                f"not written; the library keeps its {m.total_clips} committed clips. Free space and "
                "rerun the same command to resume"
            ) from e

    def _commit(self, clips: pa.Table, videos: pa.Table, run_id: str, m: Manifest, shard_id: int,
                names: tuple[str, str], file_meta: dict[str, str], refresh: bool = True) -> ShardEntry:
        tmps: list[Path] = []
        digests: list[str] = []
        try:
            for name, table in zip(names, (clips, videos), strict=True):
                schema = table.schema.with_metadata({**(table.schema.metadata or {}),
                                                     **{k.encode(): v.encode() for k, v in file_meta.items()}})
                tmp = self.tmp_dir / f"{name}.{uuid.uuid4().hex}.tmp"
                tmps.append(tmp)  # before writing: a failed write must not leave its temp file
                try:
                    pq.write_table(table.replace_schema_metadata(schema.metadata), tmp, compression="zstd")
                except OSError as e:
                    e.filename = e.filename or str(tmp)  # pyarrow's error does not name the file
                    raise
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                digests.append(sha256_file(tmp))
            crash_point("after_shard_tmp_write")
            crash_point("before_rename")
            store = self._shards(m)
            store.publish(list(zip(tmps, names, strict=True)))  # remote: uploaded, not yet listed
            crash_point("after_rename_before_manifest")
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
        ids = clips.column("clip_id") if clips.num_rows else None
        entry = ShardEntry(
            shard_id=shard_id,
            clips_file=store.entry_path(names[0]), clips_rows=clips.num_rows, clips_sha256=digests[0],
            videos_file=store.entry_path(names[1]), videos_rows=videos.num_rows, videos_sha256=digests[1],
            run_id=run_id, created_at=utcnow().isoformat(),
            min_clip_id=int(pa.compute.min(ids).as_py()) if ids is not None else None,
            max_clip_id=int(pa.compute.max(ids).as_py()) if ids is not None else None,
        )
        m = replace(m, shards=m.shards + (entry,), generation=m.generation + 1,
                    updated_at=utcnow().isoformat())
        self._write_manifest(m)
        self._keep_fresh_rows(entry, clips, videos)
        crash_point("after_manifest_before_catalog")
        if refresh:
            self.refresh_catalog(m)
        return entry

    def record_run(self, run: dict[str, Any]) -> None:
        """Insert or update a run summary in the manifest (and the catalog). Writer only."""
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
                   verify: bool = False) -> pa.Table:
        """Read one listed shard file (``which`` = "clips" or "videos"), optionally checking its SHA-256."""
        rel, digest = ((entry.clips_file, entry.clips_sha256) if which == "clips"
                       else (entry.videos_file, entry.videos_sha256))
        return self._shards().read_table(rel, columns, digest if verify else None)

    def shard_problems(self, manifest: Manifest | None = None) -> dict[int, list[str]]:
        """Listed shards whose files are missing or differ from their SHA-256: {shard_id: problems}.

        Raises:
            LibraryError: the shard location cannot be read at all (remote stores).
        """
        m = manifest or self.read_manifest()
        store = self._shards(m)
        out: dict[int, list[str]] = {}
        for s in m.shards:
            for rel, digest in ((s.clips_file, s.clips_sha256), (s.videos_file, s.videos_sha256)):
                found = store.digest(rel)
                if found is None:
                    out.setdefault(s.shard_id, []).append(f"missing shard {store.where(rel)}")
                elif found != digest:
                    out.setdefault(s.shard_id, []).append(f"SHA-256 mismatch in {store.where(rel)}")
        return out

    def verify(self) -> list[str]:
        """Problems found: missing or corrupt listed shards, stray files. Empty list = healthy."""
        try:
            m = self.read_manifest()
        except LibraryError as e:
            return [str(e)]
        listed = m.shard_file_names
        problems: list[str] = []
        try:
            store = self._shards(m)
            problems += [p for ps in self.shard_problems(m).values() for p in ps]
            names = store.names()
            if isinstance(store, _UriShards) and SHARDS_OWNER in names:
                holder = store.owner() or {}
                if holder.get("library_id") != m.library_id:
                    problems.append(f"{store.where(SHARDS_OWNER)} names another library "
                                    f"({holder.get('library_id')}); two libraries share this shard location")
                names.remove(SHARDS_OWNER)
        except LibraryError as e:  # an unreachable shard location is a problem to report, not a crash
            return [*problems, str(e)]
        for name in names:
            if name not in listed:
                problems.append(f"stray {store.kind} {store.where(name)} (not in the manifest; ignored)")
        return problems

    def quarantine_bad_shards(self) -> list[int]:
        """Writer start-up: set aside listed shards that are missing or corrupt (RELIABILITY.md F10).

        Every video that had its latest row or any clip in a bad pair gets a new row first: a
        ``failed`` row (``error_type=ShardCorrupt``, ``attempts=0``) for one that was searchable,
        so ``status`` shows it and the next ingest of its file embeds it again; its old row
        unchanged for one that had failed or was replaced (its attempt count stays). The rows come
        from the catalog, built while the shard was good, else from the pair's intact videos file.
        Then the pair's files move to ``quarantine/`` (of the library, or of a remote shard
        location) and the manifest drops it. Rows first: a kill in between redoes the same work
        at the next start. Writer only. It reads every shard once to hash it (~0.6 GB/s on one
        core here: ~4 s for a million 512-d clips).

        Returns:
            The ids of the shards set aside (empty when all are intact).
        """
        m = self.read_manifest()
        problems = self.shard_problems(m)
        if not problems:
            return []
        bad = [s for s in m.shards if s.shard_id in problems]
        stamp = utcnow().strftime("%Y%m%dT%H%M%S")
        rows = self._rows_touching(bad, problems)
        assert m.model is not None  # a library with shards has a model
        why = "; ".join(p for ps in problems.values() for p in ps)
        for r in rows:
            r.pop("shard_id", None)
            if r["status"] in (STATUS_DONE, STATUS_PARTIAL):
                r.update(status=STATUS_FAILED, stage="write", error_type="ShardCorrupt", attempts=0,
                         num_clips=0, coverage=None, run_id=f"quarantine-{stamp}", ingested_at=utcnow(),
                         error_message=f"{r['path']!r}: its clips were in a shard that is missing or "
                                       f"corrupt ({why}); set aside in quarantine/. The next ingest of "
                                       "this file embeds it again")
        if rows:
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
            moved = [w for w in (store.set_aside(rel, stamp) for rel in (s.clips_file, s.videos_file)) if w]
            _logger.error("shard %d: %s; set aside (%s): its %d clips are not searchable until their "
                          "videos are ingested again", s.shard_id, "; ".join(problems[s.shard_id]),
                          ", ".join(moved) or "nothing left to move", s.clips_rows)
        m = self.read_manifest()  # the commit above moved the generation on
        m = replace(m, shards=tuple(s for s in m.shards if s.shard_id not in problems),
                    generation=m.generation + 1, updated_at=utcnow().isoformat())
        self._write_manifest(m)
        self.refresh_catalog(m)
        return sorted(problems)

    def catalog_problem(self) -> str | None:
        """Why ``catalog.duckdb`` must not be opened as it stands, or None (one ``stat``; F15).

        The writer only ever swaps in checkpointed catalogs built in ``.tmp``, so a write-ahead
        log beside ``catalog.duckdb`` was left by another process or a crash, and DuckDB would
        replay it on open, even read-only: a truncated or random one silently, another file's
        with an error.
        """
        if self.catalog_wal_path.exists():
            return f"has a write-ahead log beside it ({self.catalog_wal_path.name}) that vidsearch never writes"
        return None

    def _set_aside_catalog(self, problem: str) -> None:
        """Move ``catalog.duckdb`` and its WAL to ``quarantine/`` (kept for inspection; F15)."""
        self._mkdir_no_symlink(self.quarantine_dir)
        stamp = f"{utcnow().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        for p in (self.catalog_path, self.catalog_wal_path):
            if p.exists():
                os.replace(p, self.quarantine_dir / f"{stamp}-{p.name}")
        _logger.warning("%s %s: moved aside to %s; rebuilding it from the shards and the manifest",
                        self.catalog_path, problem, self.quarantine_dir)

    def _rows_touching(self, bad: list[ShardEntry], problems: dict[int, list[str]]) -> list[dict[str, Any]]:
        """Latest video rows (with ``shard_id``) settled in ``bad`` shards or owning clips there."""
        ids = ", ".join(str(s.shard_id) for s in bad)
        if self.catalog_path.is_file() and self.catalog_problem() is None:
            try:
                with duckdb.connect(str(self.catalog_path), read_only=True) as con:
                    cur = con.execute(
                        f"SELECT * FROM videos WHERE shard_id IN ({ids}) "
                        f"OR video_id IN (SELECT video_id FROM clips WHERE shard_id IN ({ids}))")
                    names = [d[0] for d in cur.description]
                    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            except duckdb.Error as e:
                _logger.warning("catalog unreadable (%s): finding the lost videos in the shards", e)
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
    def refresh_catalog(self, manifest: Manifest | None = None) -> CatalogRefresh:
        """Bring ``catalog.duckdb`` to the manifest's generation (incrementally when it can).

        Writer only. The new catalog is built in ``.tmp`` and swapped in with ``os.replace``;
        a missing, corrupt or foreign catalog is rebuilt from shards (rule 11). A catalog already
        at the manifest's generation is left alone. The copy makes a refresh cost O(catalog
        size), which is why long runs defer it (:meth:`commit`'s ``refresh_catalog``).

        Returns:
            What it did: shards added and seconds taken, of which inserting their rows.

        Raises:
            DiskFull: no space for the new catalog; the committed shards are kept and the
                catalog stays behind until the next writer refreshes it.
        """
        t0 = time.perf_counter()
        m = manifest or self.read_manifest()
        problem = self.catalog_problem()
        meta: dict[str, str] | None = None
        if problem is None and self.catalog_path.is_file():
            try:
                meta = self._catalog_meta()
            except duckdb.Error as e:
                problem = f"is unreadable ({str(e).splitlines()[0][:200]})"
        if problem is not None:
            self._set_aside_catalog(problem)
        elif meta is not None and _meta_is_current(meta, m):
            return CatalogRefresh(0, time.perf_counter() - t0, 0.0)
        try:
            added, insert_s = self._refresh_catalog(m)
            return CatalogRefresh(added, time.perf_counter() - t0, insert_s)
        except (OSError, duckdb.Error) as e:
            if not is_disk_full(e):
                raise
            # The shards are committed (the manifest lists them); only the cache is behind, and
            # the next writer or `vidsearch index` brings it up to date.
            last = m.shards[-1].shard_id if m.shards else 0
            raise DiskFull(f"disk full writing {failed_path(e, self.catalog_path)}: shard {last} is committed "
                           f"but the catalog is behind. Free space and rerun the same command") from e

    def _refresh_catalog(self, m: Manifest) -> tuple[int, float]:
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
                todo = [e for e in m.shards if e.shard_id not in covered]
                t0 = time.perf_counter()
                # One transaction for all new shards: no automatic checkpoint after every shard,
                # and a compact file. The next shard is read and hash-checked while one is inserted.
                con.execute("BEGIN")
                for entry, (clips, videos) in zip(todo, self._shard_rows_ahead(todo), strict=True):
                    self._insert_rows(con, entry, clips, videos)
                    covered.add(entry.shard_id)
                con.execute("COMMIT")
                added, insert_s = len(todo), time.perf_counter() - t0
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
        return added, insert_s

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
        self.left_out_shards = {}
        for entry in m.shards:
            try:
                self._insert_shard(con, entry)
            except (LibraryError, OSError) as e:
                # A reader cannot repair (F10: the next ingest quarantines the shard); it answers
                # from the readable shards and says what is missing (``left_out_shards``).
                self.left_out_shards[entry.shard_id] = str(e)
                _logger.warning("shard %d left out (%s): its %d clips are not searchable; the next "
                                "`vidsearch ingest` sets it aside and re-ingests its videos",
                                entry.shard_id, e, entry.clips_rows)
        self._insert_runs(con, m)

    def _insert_shard(self, con: duckdb.DuckDBPyConnection, entry: ShardEntry) -> None:
        self._insert_rows(con, entry, *self._shard_rows(entry))

    def _keep_fresh_rows(self, entry: ShardEntry, clips: pa.Table, videos: pa.Table) -> None:
        # The tables just written, as _shard_rows would read them back. Bounded: past
        # _FRESH_ROWS_BYTES the oldest are dropped and read from their files instead.
        try:
            rows = _catalog_clip_rows(clips.select(list(CLIP_CATALOG_COLUMNS)))
        except (KeyError, ValueError, pa.ArrowException):  # an odd table: read it back instead
            return
        with self._fresh_lock:
            self._fresh_rows[entry.shard_id] = (entry.clips_sha256, entry.videos_sha256, rows, videos)
            while sum(r.nbytes + v.nbytes for _, _, r, v in self._fresh_rows.values()) > _FRESH_ROWS_BYTES:
                self._fresh_rows.popitem(last=False)

    def _shard_rows(self, entry: ShardEntry) -> tuple[pa.Table, pa.Table]:
        """A shard's catalog rows (clips without embeddings, plus row_in_shard; videos), SHA-256
        checked; from memory when this process committed the shard (the same bytes it hashed)."""
        with self._fresh_lock:
            fresh = self._fresh_rows.pop(entry.shard_id, None)
        if fresh is not None and fresh[:2] == (entry.clips_sha256, entry.videos_sha256):
            return fresh[2], fresh[3]
        clips = self.read_shard(entry, "clips", columns=list(CLIP_CATALOG_COLUMNS), verify=True)
        return _catalog_clip_rows(clips), self.read_shard(entry, "videos", verify=True)

    def _shard_rows_ahead(self, entries: list[ShardEntry]) -> Iterator[tuple[pa.Table, pa.Table]]:
        """:meth:`_shard_rows` of each entry in order, reading one shard ahead in a thread."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(self._shard_rows, entries[0]) if entries else None
            for i in range(len(entries)):
                assert nxt is not None
                rows = nxt.result()
                if i + 1 < len(entries):
                    nxt = pool.submit(self._shard_rows, entries[i + 1])
                yield rows

    def _insert_rows(self, con: duckdb.DuckDBPyConnection, entry: ShardEntry, clips: pa.Table,
                     videos: pa.Table) -> None:
        cols = list(CLIP_CATALOG_COLUMNS)
        con.register("_clips", clips)
        con.register("_videos", videos)
        try:
            col_list = ", ".join(cols)
            con.execute(
                f"INSERT OR REPLACE INTO clips ({col_list}, shard_id, row_in_shard) "
                f"SELECT {col_list}, {entry.shard_id}, row_in_shard FROM _clips"
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
        if self.catalog_problem() is not None:
            return False
        try:
            meta = self._catalog_meta()
        except (duckdb.Error, OSError):
            return False
        return _meta_is_current(meta, m)

    def _catalog_meta(self) -> dict[str, str]:
        """The ``meta`` table of ``catalog.duckdb`` (raises duckdb.Error when it cannot be read)."""
        with duckdb.connect(str(self.catalog_path), read_only=True) as con:
            return dict(con.execute("SELECT key, value FROM meta").fetchall())

    def connect_catalog(self) -> duckdb.DuckDBPyConnection:
        """A read-only connection to the last committed catalog.

        Never waits on a writer: the writer swaps whole files, so the open file is stable. If
        the catalog is missing or unreadable, an in-memory catalog is built from the shards.
        """
        problem = self.catalog_problem()
        if problem is not None:
            _logger.warning("catalog %s %s; reading shards directly until a writer rebuilds it",
                            self.catalog_path, problem)
        elif self.catalog_path.is_file():
            try:
                return duckdb.connect(str(self.catalog_path), read_only=True)
            except duckdb.Error as e:
                _logger.warning("catalog %s unreadable (%s); reading shards directly", self.catalog_path, e)
        con = duckdb.connect(":memory:")
        self.load_catalog_into(con)
        return con
