"""Checkpoint digests, remembered while a file is unchanged (standard library only, no torch).

A model's fingerprint names its weights by SHA-256, so every process that builds a model hashes
its checkpoint: seconds for the 3 GB 1B file at each one-shot search. ``checkpoint_sha256``
keeps the digest in this process and, for large files, in the user cache folder.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from vidsearch import files

_logger = logging.getLogger(__name__)

__all__ = ["checkpoint_sha256", "user_cache_dir"]


def user_cache_dir() -> Path:
    """``$VIDSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/vidsearch`` (``~/.cache/vidsearch``)."""
    return Path(os.environ.get("VIDSEARCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vidsearch"))


def checkpoint_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a checkpoint, remembered for an unchanged file (in this process, and
    across processes for files of 64 MiB and more: see ``_DigestCache``)."""
    return _DIGESTS.get(Path(path))


class _DigestCache:
    """Checkpoint digests kept between processes: hashing the 1B checkpoint (3 GB) took seconds at
    every one-shot search, for a file that does not change.

    The file ``$VIDSEARCH_CACHE_DIR`` (default ``$XDG_CACHE_HOME/vidsearch``, ``~/.cache/vidsearch``)
    ``/weights-sha256.json`` maps a resolved path to (device, inode, size, mtime, ctime, digest).
    An entry counts only while all five still match: any write to the file changes its ctime,
    which no user can set back, so a changed file is always hashed again. Failures to read or
    write the cache are ignored (it is only a cache); library data never goes through it.
    """

    MIN_BYTES = 64 << 20

    def _path(self) -> Path:
        return user_cache_dir() / "weights-sha256.json"

    def _load(self) -> dict[str, Any]:
        try:
            with open(self._path(), encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def __init__(self) -> None:
        self._here: dict[tuple[str, tuple[int, ...]], str] = {}  # this process, every size

    def get(self, path: Path) -> str:
        try:
            key, stamp = str(path.resolve()), _stamp(path)
        except OSError:
            return files.sha256_file(path)  # let it raise its own error
        digest = self._here.get((key, tuple(stamp)))
        if digest is not None:
            return digest
        if stamp[2] >= self.MIN_BYTES:
            entry = self._load().get(key)
            if isinstance(entry, dict) and entry.get("stat") == stamp and isinstance(entry.get("sha256"), str):
                digest = str(entry["sha256"])
        if digest is None:
            digest = files.sha256_file(path)
            if _stamp(path) != stamp:  # changed while it was hashed: remember nothing
                return digest
            if stamp[2] >= self.MIN_BYTES:
                self._store(key, stamp, digest)
        self._here[(key, tuple(stamp))] = digest
        return digest

    def _store(self, key: str, stamp: list[int], digest: str) -> None:
        try:
            data = self._load()
            data[key] = {"stat": stamp, "sha256": digest}
            target = self._path()
            target.parent.mkdir(parents=True, exist_ok=True)
            with files.atomic_output(target) as tmp:
                Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        except OSError as e:
            _logger.debug("weights digest cache not written (%s)", e)


def _stamp(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


_DIGESTS = _DigestCache()
