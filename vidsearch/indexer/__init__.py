"""FAISS index of a library: choice, build, incremental add, verified load, quality report.

Public API (the ingest pipeline calls :func:`update_index` at the end of a run)::

    report = update_index(library, IndexCfg(), rebuild=False)   # writer lock held
    loaded = load_index(library)                                 # verified, read-only
"""

from vidsearch.indexer.build import (
    IndexPlan,
    IndexReport,
    LoadedIndex,
    choose_index,
    load_index,
    read_shard_vectors,
    update_index,
)
from vidsearch.indexer.store import (
    IndexCorrupt,
    IndexError_,
    IndexMeta,
    IndexMissing,
    IndexProblem,
    IndexStale,
    VectorStore,
    in_sorted,
    read_meta,
    stale_reasons,
    uncovered_shards,
)

__all__ = [
    "IndexCorrupt", "IndexError_", "IndexMeta", "IndexMissing", "IndexPlan", "IndexProblem", "IndexReport",
    "IndexStale", "LoadedIndex", "VectorStore", "choose_index", "in_sorted", "load_index", "read_meta",
    "read_shard_vectors", "stale_reasons", "uncovered_shards", "update_index",
]
