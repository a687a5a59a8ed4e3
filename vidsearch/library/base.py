"""Names every part of the library package shares: its errors, the clock and the crash points."""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import signal

from vidsearch.files import failed_path, is_disk_full, is_read_only

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


class LibraryReadOnly(LibraryError):
    """A writer command met a library it may not write (read-only mount, no permission)."""


class NeedsWriterLock(LibraryError):
    """A writer-only operation was called without holding :meth:`Library.lock` (a programming error)."""


class ShardInvalid(LibraryError):
    """A listed shard file is not the Parquet table its manifest entry promises (wrong schema; D7)."""


class ModelMismatch(LibraryError):
    """The library was built with another model, weights or preprocessing."""


class DiskFull(LibraryError):
    """No space left while writing a commit; nothing of it became visible (docs/RELIABILITY.md F8)."""


def read_only_error(e: OSError, default: str | os.PathLike[str]) -> LibraryReadOnly:
    """The one-line error for a write refused by the filesystem (D3), naming the path."""
    why = "read-only filesystem" if e.errno == errno.EROFS else "permission denied"
    return LibraryReadOnly(f"cannot write {failed_path(e, default)}: {why}; the library is read-only here "
                           "(search, sql, status and serve work on it; ingest and index need write access)")


def writer_os_error(e: BaseException, default: str | os.PathLike[str]) -> LibraryError | None:
    """A writer's ``OSError`` (or DuckDB's text of one) as a one-line library error, else None."""
    if is_disk_full(e):
        return DiskFull(f"disk full writing {failed_path(e, default)}")
    if isinstance(e, OSError) and is_read_only(e):
        return read_only_error(e, default)
    return None


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if ``VIDSEARCH_CRASH_AT`` names this point (tests only)."""
    if name not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {name!r}")
    if os.environ.get(CRASH_ENV) == name:
        _logger.warning("crash point %s armed: killing pid %d", name, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC (every timestamp a library stores)."""
    return dt.datetime.now(dt.UTC)
