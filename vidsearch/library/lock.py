"""The single-writer lock of a library folder (docs/RELIABILITY.md F14 and D2).

The lock is a kernel lock, ``flock(LIBRARY/.lock, LOCK_EX)``: the kernel releases it when its
holder exits however it exits (SIGKILL, a crash, a power cut), so a dead writer never leaves a
stale lock, and two writers cannot both "take over" one (the race that an ``O_EXCL`` file plus a
pid check allowed). The JSON record written into the file (pid, host, since) is only for the
message another writer prints; a record that could not be written (disk full) locks nobody out.

The holder removes ``.lock`` when it releases it, so a library at rest has no ``.lock``. That
removal is safe because a writer checks, once it holds the lock, that the file it locked is still
the one at ``.lock`` (else it locked a removed file and tries again).

Readers never take the lock; :func:`lock_holder` tells them whether a writer is running, with a
shared-lock probe that needs only read access (a read-only library works).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from vidsearch.files import is_disk_full, is_read_only
from vidsearch.library.base import DiskFull, LibraryError, LibraryLocked, read_only_error, utcnow

_logger = logging.getLogger(__name__)

# A reader's probe holds a shared lock for microseconds: a writer that meets one retries this
# long (seconds, summed) before it reports the library as locked.
_RETRY_DELAYS = (0.01, 0.05, 0.1, 0.2)

# Lock files held by this process: {resolved path: WriterLock}. A second Library object of the
# same folder in this process sees the lock as its own (commit, update_index).
_held: dict[str, WriterLock] = {}
_held_guard = threading.Lock()


def _key(path: Path) -> str:
    return str(path.parent.resolve() / path.name)


class WriterLock:
    """``flock`` on one library's ``.lock`` file; :meth:`acquire` then :meth:`release`."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = root
        self.fd: int | None = None
        self.record: dict[str, Any] = {}

    def acquire(self) -> None:
        """Take the lock now or fail at once (after a few short retries past reader probes).

        Raises:
            LibraryLocked: a live process holds it (the message names it from its record).
            LibraryReadOnly: the folder cannot be written.
            DiskFull: not even the empty lock file can be created.
            LibraryError: ``.lock`` is a symbolic link, or the filesystem has no file locks.
        """
        busy = 0
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if busy < len(_RETRY_DELAYS):
                    time.sleep(_RETRY_DELAYS[busy])
                    busy += 1
                    continue
                raise LibraryLocked(_locked_message(self.root, read_holder(self.path))) from None
            except OSError as e:
                os.close(fd)
                raise LibraryError(f"{self.path}: cannot lock the library ({e.strerror}); this filesystem "
                                   "does not support file locks (flock)") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # a releasing holder removed the file we locked: lock the new one
        self.fd = fd
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "since": utcnow().isoformat()}
        try:
            data = json.dumps(self.record).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError as e:
            # The kernel lock is what excludes other writers; the record only names us to them.
            _logger.warning("%s: could not write the lock holder record (%s); the lock is held all the same",
                            self.path, e.strerror)
        with _held_guard:
            _held[_key(self.path)] = self

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise LibraryError(f"{self.path} is a symbolic link; refusing to lock through it") from None
            if is_read_only(e):
                raise read_only_error(e, self.path) from None
            if is_disk_full(e):
                raise DiskFull(f"disk full creating {self.path}: free space and rerun the same command") from None
            raise

    def release(self) -> None:
        """Remove ``.lock`` (if it is still ours) and release the kernel lock."""
        if self.fd is None:
            return
        with _held_guard:
            _held.pop(_key(self.path), None)
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        except OSError as e:  # a folder turned read-only meanwhile: the kernel lock goes anyway
            _logger.warning("%s: not removed (%s)", self.path, e.strerror)
        finally:
            os.close(self.fd)  # releases the flock
            self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def held_here(path: Path) -> bool:
    """Whether this process holds the lock at ``path``."""
    with _held_guard:
        return _key(path) in _held


def read_holder(path: Path) -> dict[str, Any]:
    """The holder record in ``path`` (keys pid, host, since; None where unreadable)."""
    try:
        raw = json.loads(path.read_bytes() or b"{}")
    except (OSError, ValueError):
        raw = {}
    raw = raw if isinstance(raw, dict) else {}
    return {k: raw.get(k) for k in ("pid", "host", "since")}


def lock_holder(path: Path) -> dict[str, Any] | None:
    """The record of the live writer holding the lock at ``path``, or None when none does.

    Read-only: opens ``.lock`` for reading and probes with a shared ``flock`` it drops at once.
    A record left in the file by a killed writer is not a holder.
    """
    with _held_guard:
        mine = _held.get(_key(path))
    if mine is not None:
        return dict(mine.record)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None  # no lock file (or none we may read): no writer we can know of
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_holder(path)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _locked_message(root: Path, holder: dict[str, Any]) -> str:
    who = (f"pid {holder['pid']} on {holder['host']} since {holder['since']}" if holder.get("pid") is not None
           else "another process (its holder record is unreadable)")
    return (f"{root} is locked by {who}: another ingest or index is writing it. The lock is released when "
            "that process exits, however it exits; wait for it or stop it")

