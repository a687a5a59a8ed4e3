"""Where a library's shard files live: its own ``shards/`` folder, or a pyarrow filesystem URI.

Both stores offer the same few operations (list, publish, inspect, open for reading, delete, set
aside), on shard file names the manifest lists; the :class:`~vidsearch.library.Library` façade
decides when each runs. A store is given the paths and helpers it needs, never the library.

Every shard file is read through :func:`read_parquet`, which checks the file's schema against the
one its table must have before a reader uses it (docs/RELIABILITY.md D7): a file with a valid
SHA-256 but a string ``clip_id``, a missing column or another embedding size is a
:class:`~vidsearch.library.base.ShardInvalid`, set aside by writers and left out by readers like a
corrupt shard (F10), instead of an ``ArrowInvalid`` deep inside DuckDB or FAISS.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vidsearch.files import fsync_dir, fsync_file, sha256_bytes, sha256_file
from vidsearch.library.base import LibraryError, ShardInvalid
from vidsearch.schemas.manifest import SHARD_FILE_RE

# Kept for callers that test names by prefix; :func:`is_shard_file` knows every table.
SHARD_PREFIXES = ("part-", "videos-")
# A shard file, or the temp name a store gives one while renaming it into place.
_SHARD_OR_TEMP_RE = re.compile(SHARD_FILE_RE.pattern + r"(\.[0-9A-Za-z]{1,64}\.tmp)?")


def is_shard_file(name: str) -> bool:
    """Whether ``name`` is a shard file name (any table), or a store's temp name for one."""
    return _SHARD_OR_TEMP_RE.fullmatch(name) is not None


def _is_bad_content(e: BaseException) -> bool:
    """Whether a pyarrow error reading a Parquet file says its bytes are bad (not the disk or the OS).

    pyarrow raises ``ArrowInvalid`` (a ``ValueError``) for some damage but a plain ``OSError``
    without errno for much of the rest: a footer or page header whose Thrift cannot be decoded,
    a page that fails to decompress, a stream that ends early. An error the OS reported (missing
    file, no permission, EIO) carries its errno and is no verdict on the file: it propagates.
    """
    if isinstance(e, OSError):
        return e.errno is None
    return isinstance(e, (pa.ArrowException, ValueError))


def footer_schema(source: str | os.PathLike[str] | pa.BufferReader) -> pa.Schema | str:
    """The Arrow schema in a Parquet file's footer, or why it cannot be read."""
    try:
        return pq.read_schema(source)
    except (pa.ArrowException, ValueError, OSError) as e:
        if not _is_bad_content(e):
            raise
        return f"not a readable Parquet file ({_first_line(e)})"


def schema_problem(schema: pa.Schema, expected: pa.Schema, columns: list[str] | None = None) -> str | None:
    """Why ``schema`` cannot serve as ``expected`` (restricted to ``columns``), or None.

    Extra columns are allowed; a listed column must be there once, with exactly the expected type.
    """
    for f in expected:
        if columns is not None and f.name not in columns:
            continue
        i = schema.get_field_index(f.name)  # -1: missing, or present twice
        if i < 0:
            return f"column {f.name} is missing" if f.name not in schema.names else f"column {f.name} is duplicated"
        got = schema.field(i).type
        if not got.equals(f.type):
            return f"column {f.name} is {got}, expected {f.type}"
    return None


def read_parquet(source: str | os.PathLike[str] | pa.BufferReader, where: str, columns: list[str] | None,
                 expected: pa.Schema | None) -> pa.Table:
    """Read a shard file (``columns`` of it), checking it against ``expected`` (if given) first.

    Raises:
        ShardInvalid: not Parquet, a missing column, a column of another type, or a null where
            the schema forbids one; the message names the file.
    """
    try:
        pf = pq.ParquetFile(source)
        if expected is not None:
            # The whole schema, not only the columns asked for: a shard fit for the catalog but
            # not for search (another embedding size) must not be half-used by readers.
            problem = schema_problem(pf.schema_arrow, expected)
            if problem:
                raise ShardInvalid(f"{where}: wrong schema ({problem})")
        table = pf.read(columns=columns)
    except (pa.ArrowException, ValueError, OSError) as e:
        if not _is_bad_content(e):
            raise
        raise ShardInvalid(f"{where}: not a readable Parquet file ({_first_line(e)})") from None
    if expected is not None:
        for f in expected:
            if not f.nullable and f.name in table.column_names and table.column(f.name).null_count:
                raise ShardInvalid(f"{where}: wrong schema (column {f.name} holds nulls)")
    return table


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


class ShardStore(Protocol):
    """What the library needs of a shard location."""

    @property
    def kind(self) -> str:
        """"file" or "object" (for messages)."""

    @property
    def uri(self) -> str | None:
        """The location's URI; None for the library's own shards/ folder."""

    def entry_path(self, name: str) -> str: ...
    def where(self, rel: str) -> str: ...
    def names(self) -> list[str]: ...
    def publish(self, staged: list[tuple[Path, str]]) -> None: ...
    def inspect(self, rel: str) -> tuple[str, pa.Schema | str] | None: ...
    def source(self, rel: str, digest: str | None) -> str | os.PathLike[str] | pa.BufferReader: ...
    def delete(self, rel: str) -> None: ...
    def set_aside(self, rel: str, tag: str) -> str | None: ...


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



class LocalShards:
    """Shard files in ``LIBRARY/shards/`` (the default layout; manifest names ``shards/NAME``).

    Args:
        shards_dir: the folder.
        quarantine_dir: where :meth:`set_aside` moves files.
        resolve: maps a manifest path to a file, refusing one outside the library.
        mkdir: creates a library folder, refusing a symbolic link.
    """

    kind = "file"
    uri: str | None = None

    def __init__(self, shards_dir: Path, quarantine_dir: Path, resolve: Callable[[str], Path],
                 mkdir: Callable[[Path], None]) -> None:
        self.dir = shards_dir
        self.quarantine_dir = quarantine_dir
        self.resolve = resolve
        self.mkdir = mkdir

    def entry_path(self, name: str) -> str:
        return f"shards/{name}"

    def where(self, rel: str) -> str:
        return rel if "/" in rel else f"shards/{rel}"

    def names(self) -> list[str]:
        return [p.name for p in self.dir.iterdir()] if self.dir.is_dir() else []

    def publish(self, staged: list[tuple[Path, str]]) -> None:
        for tmp, name in staged:
            os.replace(tmp, self.dir / name)
        fsync_dir(self.dir)

    def inspect(self, rel: str) -> tuple[str, pa.Schema | str] | None:
        p = self.resolve(rel)
        if not p.is_file():
            return None
        return sha256_file(p), footer_schema(p)

    def source(self, rel: str, digest: str | None) -> Path:
        path = self.resolve(rel)
        if not path.is_file():
            raise LibraryError(f"{path}: listed shard is missing")
        if digest is not None and sha256_file(path) != digest:
            raise LibraryError(f"{path}: SHA-256 differs from the manifest (corrupt or replaced shard)")
        return path

    def delete(self, rel: str) -> None:
        # A manifest path is checked against escapes; a base name comes from listing shards/.
        (self.resolve(rel) if "/" in rel else self.dir / rel).unlink(missing_ok=True)

    def set_aside(self, rel: str, tag: str) -> str | None:
        """Move a listed shard file to ``LIBRARY/quarantine/<tag>-<name>`` (F10); None if absent."""
        p = self.resolve(rel)
        if not p.is_file():
            return None
        self.mkdir(self.quarantine_dir)
        dest = self.quarantine_dir / f"{tag}-{p.name}"
        os.replace(p, dest)
        return str(dest)


class UriShards:
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
                    self._io(f"cannot write {name}", fsync_file, part)  # leave an empty renamed file
                self._io(f"cannot rename {name} into place", self.fs.move, part, key)
            else:
                self._io(f"cannot upload {name}", self._put, key, tmp.read_bytes())
        if self.fs.type_name == "local":
            self._io("cannot sync the folder", fsync_dir, Path(self.base))

    def _read(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._key(rel)) as f:
            return f.read()

    def inspect(self, rel: str) -> tuple[str, pa.Schema | str] | None:
        try:
            data = self._io(f"cannot read {rel}", self._read, rel)
        except FileNotFoundError:
            return None
        return sha256_bytes(data), footer_schema(pa.BufferReader(data))

    def source(self, rel: str, digest: str | None) -> pa.BufferReader:
        try:
            data = self._io(f"cannot read {rel}", self._read, rel)
        except FileNotFoundError:
            raise LibraryError(f"{self.where(rel)}: listed shard is missing") from None
        if digest is not None and sha256_bytes(data) != digest:
            raise LibraryError(f"{self.where(rel)}: SHA-256 differs from the manifest (corrupt or replaced shard)")
        return pa.BufferReader(data)

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
        present = {n for n in self.names() if is_shard_file(n)}
        if present and (holder is not None or not present & listed):
            # Another library's shards: never adopt them, and never let recover() delete them.
            who = (f"library {holder.get('library_id')} ({holder.get('host')}:{holder.get('library')})"
                   if holder else "an unknown library")
            raise LibraryError(f"--shards-uri {self.uri} already holds {len(present)} shard file(s) of {who}; "
                               "give each library its own shard location")
        record = {"library_id": library_id, "library": str(root), "host": socket.gethostname()}
        self._io("cannot write (a write test at creation)", self._put, self._key(SHARDS_OWNER),
                 json.dumps(record, indent=2).encode())

