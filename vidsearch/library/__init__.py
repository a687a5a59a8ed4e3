"""The library folder: manifest, shards, writer lock, recovery and the DuckDB catalog.

:class:`Library` (in :mod:`.folder`) is the façade every other layer uses; the names below are
the package's public surface, importable as ``from vidsearch.library import ...``.
"""

from vidsearch.files import atomic_replace, atomic_write_bytes, failed_path, is_disk_full, sha256_file
from vidsearch.library.base import (
    CRASH_ENV,
    CRASH_POINTS,
    DiskFull,
    LibraryError,
    LibraryLocked,
    LibraryReadOnly,
    ModelMismatch,
    NeedsWriterLock,
    ShardInvalid,
    crash_point,
    utcnow,
)
from vidsearch.library.catalog import CatalogLoad, CatalogReader, CatalogRefresh
from vidsearch.library.folder import Library
from vidsearch.library.shards import SHARD_PREFIXES, SHARDS_OWNER, normalize_shards_uri

__all__ = [
    "CRASH_ENV", "CRASH_POINTS", "SHARDS_OWNER", "SHARD_PREFIXES", "CatalogLoad", "CatalogReader",
    "CatalogRefresh", "DiskFull", "Library", "LibraryError", "LibraryLocked", "LibraryReadOnly",
    "ModelMismatch", "NeedsWriterLock", "ShardInvalid", "atomic_replace", "atomic_write_bytes",
    "crash_point", "failed_path", "is_disk_full", "normalize_shards_uri", "sha256_file", "utcnow",
]
