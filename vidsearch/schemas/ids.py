"""Deterministic identifiers: ``video_id`` from file content, ``clip_id`` from (video, span, model).

Ids are content-derived so that a moved or renamed file is not embedded twice, a changed file is,
and re-running ingest rewrites nothing (docs/RELIABILITY.md rule 6). FAISS stores ``clip_id`` as its id.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Bytes read from each of three places in the file (start, middle, end) for the fingerprint.
# Size + three 1 MiB windows tells apart any two real videos we have seen while reading at most
# 3 MiB; ``full=True`` hashes the whole file for users who want a cryptographic identity.
_WINDOW = 1 << 20
VIDEO_ID_HEX = 32


def video_fingerprint(path: str | os.PathLike[str] | bytes, *, full: bool = False) -> str:
    """Content fingerprint of a file: hex string of ``VIDEO_ID_HEX`` chars.

    Args:
        path: the file.
        full: hash every byte instead of size + three 1 MiB windows.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(b"vidsearch-video-v1\0" + size.to_bytes(8, "little"))
        if full or size <= 3 * _WINDOW:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            for offset in (0, size // 2 - _WINDOW // 2, size - _WINDOW):
                f.seek(offset)
                h.update(f.read(_WINDOW))
    return h.hexdigest()[:VIDEO_ID_HEX]


def clip_id(video_id: str, start_frame: int, end_frame: int, model_fingerprint: str) -> int:
    """Deterministic positive int64 id of a clip (FAISS reserves -1, so the sign bit stays clear)."""
    key = f"{video_id}:{start_frame}:{end_frame}:{model_fingerprint}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def display_path(path: str | bytes | Path) -> str:
    """A printable, lossless-as-possible text form of a path (undecodable bytes become \\xNN)."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")
