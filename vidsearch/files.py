"""File helpers every layer shares: SHA-256 of a file, atomic writes, and what an ``OSError`` means.

Standard library only, so that ``vidsearch.models`` (checkpoint hashes, conversions) and the demo
can use it without importing DuckDB or pyarrow.

A file becomes visible by temp file -> fsync -> ``os.replace`` -> fsync of the folder (docs/
docs/RELIABILITY.md rule 4): a reader sees the old or the new content, never a mix, and a power cut
after the rename cannot leave an empty file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

_BLOCK = 1 << 22  # 4 MiB reads: hashing runs at memory speed, not at syscall speed

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NO_SPACE_TEXT = tuple(os.strerror(n) for n in sorted(_NO_SPACE))
_READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})

_sha_cache: dict[tuple[int, int, int, int], str] = {}
_sha_cache_lock = threading.Lock()


def sha256_file(path: str | os.PathLike[str], *, cache: bool = False) -> str:
    """SHA-256 hex digest of a file's bytes.

    Args:
        path: the file.
        cache: remember the digest for this process, keyed by device, inode, size and mtime
            (for large immutable files hashed repeatedly, e.g. checkpoints). Library data is
            always hashed afresh: a shard checked for corruption must be read, not remembered.
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if cache:
            with _sha_cache_lock:
                hit = _sha_cache.get(key)
            if hit is not None:
                return hit
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if cache:
        with _sha_cache_lock:
            _sha_cache[key] = digest
    return digest


def sha256_bytes(data: bytes) -> str:
    """SHA-256 hex digest of ``data`` (a shard downloaded from an object store)."""
    return hashlib.sha256(data).hexdigest()


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's data to stable storage."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename inside it) to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_replace(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """fsync ``tmp``, rename it over ``final`` and fsync the folder."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike[str], tmp_dir: str | os.PathLike[str] | None = None,
                  suffix: str = ".tmp", mode: int | None = None) -> Iterator[Path]:
    """A temp path to write ``final``'s new content to; it replaces ``final`` when the block ends.

    The temp file lives in ``tmp_dir`` (default: ``final``'s folder; it must be on the same
    filesystem) under a hidden unique name; whatever the block leaves there is removed if the
    block raises, and ``final`` is untouched. ``suffix`` lets tools that pick a format from the
    name (ffmpeg) see the right extension; ``mode`` sets the file's permissions before it
    appears under its final name.
    """
    final = Path(final)
    folder = Path(tmp_dir) if tmp_dir is not None else final.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{final.name}.{uuid.uuid4().hex}{suffix}"
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        atomic_replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes,
                       tmp_dir: str | os.PathLike[str] | None = None, mode: int | None = None) -> None:
    """Write ``data`` to ``final`` so that readers see the old or the new content, never a mix."""
    with atomic_output(final, tmp_dir, mode=mode) as tmp:
        if mode is None:
            tmp.write_bytes(data)
        else:  # never readable by others, not even before the chmod
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)


def atomic_write_text(final: str | os.PathLike[str], text: str,
                      tmp_dir: str | os.PathLike[str] | None = None, mode: int | None = None) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(final, text.encode(), tmp_dir, mode)


def is_disk_full(e: BaseException) -> bool:
    """True when ``e`` says the disk, the quota or the file-size limit is full.

    pyarrow and Python raise ``OSError`` with ENOSPC/EDQUOT/EFBIG, but DuckDB and FAISS raise
    their own errors carrying only the text ("Could not write file ...: No space left on device"),
    so both are checked.
    """
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
        return True
    return any(t in str(e) for t in _NO_SPACE_TEXT)


def is_read_only(e: BaseException) -> bool:
    """True when ``e`` is a write refused by a read-only filesystem or by permissions."""
    return isinstance(e, OSError) and e.errno in _READ_ONLY


def failed_path(e: BaseException, default: str | os.PathLike[str]) -> str:
    """The file a write error names: ``OSError.filename``, else a quoted path in DuckDB's text."""
    name = getattr(e, "filename", None)
    if name:
        return str(name)
    m = re.search(r'file "([^"]+)"', str(e))
    return m.group(1) if m else str(default)
