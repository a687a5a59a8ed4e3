"""Build, extend, load and measure the FAISS index of a library.

The index maps ``clip_id`` (int64) to an embedding, inner product on L2-normalised vectors.
Its type is chosen from the number of vectors, the dimension and a memory budget (autofaiss's
idea, simplified): exact ``Flat`` for small libraries, ``HNSW32`` up to a few hundred thousand
vectors, ``IVF<nlist>,Flat`` while the vectors fit the budget, ``IVF<nlist>,PQ<m>`` with exact
re-ranking from the vector cache beyond. ``nprobe`` / ``efSearch`` are tuned on held-out clip
embeddings until recall@10 against exact search reaches ``IndexCfg.target_recall``.

New shards are added without retraining; a rebuild is suggested once the vectors added since
training outnumber ``rebuild_ratio`` x the training set, and done with ``rebuild=True``.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import faiss
import numpy as np

from vidsearch.indexer.store import (
    CoveredShard,
    IndexCorrupt,
    IndexMeta,
    IndexMissing,
    IndexStale,
    VectorStore,
    cleanup_unreferenced,
    in_sorted,
    index_dir_is_safe,
    index_file_path,
    new_index_name,
    read_meta,
    stale_reasons,
    uncovered_shards,
    vectors_names,
    write_meta,
    write_npy_atomic,
)
from vidsearch.indexer.structure import ACCEPTED_FAMILIES, UnsupportedIndex, check_structure, read_checked_index
from vidsearch.library import (
    DiskFull,
    Library,
    LibraryError,
    atomic_replace,
    failed_path,
    is_disk_full,
    sha256_file,
    utcnow,
)
from vidsearch.schemas.config import IndexCfg
from vidsearch.schemas.manifest import Manifest, ShardEntry

_logger = logging.getLogger(__name__)

# faiss 1.15 ships a stub (faiss/__init__.pyi) older than the module: no SearchParametersHNSW, no
# keyword arguments for search parameters (the Python wrapper takes them). Those calls go through
# this untyped alias instead of a type: ignore on each.
_FAISS: Any = faiss

# Vectors examined per IVF-PQ result before exact re-ranking (PQ distances are approximate).
PQ_RERANK_FACTOR = 10


# ---- choice ------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexPlan:
    """The index type chosen for a library."""

    factory: str
    kind: str      # flat / hnsw / ivf_flat / ivf_pq / custom
    reason: str


def _nlist_for(n: int) -> int:
    # ~4 sqrt(n) lists (FAISS guideline), power of two, and >= 39 training points per list.
    nlist = 2 ** round(math.log2(max(16.0, 4 * math.sqrt(max(n, 1)))))
    return int(max(16, min(nlist, 65536, max(16, n // 39))))


def choose_index(n: int, dim: int, cfg: IndexCfg | None = None) -> IndexPlan:
    """Pick a FAISS factory string for ``n`` vectors of ``dim`` floats under ``cfg``'s budget."""
    cfg = cfg or IndexCfg()
    if cfg.factory:
        return IndexPlan(cfg.factory, _kind_of_factory(cfg.factory), "factory string given")
    flat_bytes = n * dim * 4
    if n <= cfg.flat_max_vectors:
        return IndexPlan("IDMap2,Flat", "flat", f"{n} <= {cfg.flat_max_vectors} vectors: exact search")
    hnsw_bytes = n * (dim * 4 + 32 * 2 * 4 + 16)
    if n <= cfg.hnsw_max_vectors and hnsw_bytes <= cfg.memory_budget_bytes:
        return IndexPlan("IDMap2,HNSW32,Flat", "hnsw", f"{n} vectors: graph index, no training")
    nlist = _nlist_for(n)
    if flat_bytes * 1.05 <= cfg.memory_budget_bytes:
        return IndexPlan(f"IVF{nlist},Flat", "ivf_flat",
                         f"{flat_bytes / 2**30:.1f} GiB of vectors fit the budget")
    # PQ: the largest code (bytes per vector) that fits, m dividing dim, with sub-vectors of at
    # least 4 dimensions: exact re-ranking restores the precision, and 2-d sub-vectors (PQ256 at
    # 512-d) double the index and the scan cost for little gain.
    per_vec = cfg.memory_budget_bytes / max(n, 1) - 8 - 8  # id + inverted-list overhead
    m = max((m for m in range(1, dim + 1) if dim % m == 0 and m <= per_vec and m <= dim // 4),
            default=0)
    if m < 4:
        raise LibraryError(f"{n} vectors of dim {dim} cannot fit a {cfg.memory_budget_bytes} byte "
                           "index budget; raise --memory-budget")
    return IndexPlan(f"IVF{nlist},PQ{m}", "ivf_pq",
                     f"{flat_bytes / 2**30:.1f} GiB of vectors exceed the budget: PQ{m} codes + exact re-ranking")


def _kind_of_factory(factory: str) -> str:
    f = factory.upper()
    if "IVF" in f:
        return "ivf_pq" if "PQ" in f else ("ivf_flat" if f.endswith(",FLAT") else "custom")
    if "HNSW" in f:
        return "hnsw"
    if f.replace("IDMAP2,", "").replace("IDMAP,", "") == "FLAT":
        return "flat"
    return "custom"


def _make_index(factory: str, dim: int) -> faiss.Index:
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise LibraryError(f"FAISS factory {factory!r}: {str(e).splitlines()[0][:200]}") from None
    if isinstance(index, faiss.IndexIVFPQ):
        # The factory turns on polysemous training (simulated annealing of the PQ code order for
        # Hamming-distance filtering, which search never uses): measured >20 min of CPU for
        # IVF4096,PQ256 at 1M, for nothing.
        index.do_polysemous_training = False  # type: ignore[attr-defined]  # not in faiss's stub
    if faiss.try_extract_index_ivf(index) is None and not isinstance(index, faiss.IndexIDMap):
        index = faiss.IndexIDMap2(index)  # Flat / HNSW store no ids of their own
    # Readers accept only a few FAISS structures (vidsearch.indexer.structure); refuse to build
    # any other (e.g. a custom --factory 'PCA64,IVF1024,Flat') instead of an unloadable index.
    empty = faiss.serialize_index(index).tobytes()  # untrained and empty: a few bytes
    try:
        check_structure(io.BytesIO(empty), len(empty), dim)
    except UnsupportedIndex as e:
        raise LibraryError(f"FAISS factory {factory!r} builds a structure vidsearch does not load ({e}); "
                           f"use one of: {', '.join(ACCEPTED_FAMILIES)}") from None
    return index


def _inner(index: faiss.Index) -> faiss.Index:
    if isinstance(index, faiss.IndexIDMap):
        return faiss.downcast_index(index.index)
    return index


# ---- reports -----------------------------------------------------------------------------
@dataclass
class IndexReport:
    """What :func:`update_index` did and how good the index is (saved in index.json)."""

    action: str                    # built / rebuilt / extended / unchanged
    kind: str
    factory: str
    vectors: int
    index_bytes: int
    build_seconds: float
    added: int = 0                 # vectors added by this call
    recall_at_1: float | None = None
    recall_at_10: float | None = None
    quality_queries: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    search_params: dict[str, Any] = field(default_factory=dict)
    rebuild_suggested: bool = False
    notes: list[str] = field(default_factory=list)
    gpu: bool = False
    keyword: dict[str, Any] | None = None   # what update_keyword_index did (indexer/text.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """Human-readable summary, several lines."""
        def f(x: float | None, spec: str) -> str:
            return "n/a" if x is None else format(x, spec)
        lines = [
            f"index {self.action}: {self.kind} ({self.factory}), {self.vectors} vectors, "
            f"{self.index_bytes / 2**20:.1f} MiB, {self.build_seconds:.1f} s"
            + (f", +{self.added} added" if self.action == "extended" else "")
            + (" [GPU]" if self.gpu else ""),
            f"quality on {self.quality_queries} held-out clip embeddings: recall@1 "
            f"{f(self.recall_at_1, '.3f')}, recall@10 {f(self.recall_at_10, '.3f')}; latency p50 "
            f"{f(self.latency_p50_ms, '.2f')} ms, p99 {f(self.latency_p99_ms, '.2f')} ms"
            + (f"; params {json.dumps(self.search_params)}" if self.search_params else ""),
        ]
        if self.keyword is not None and self.keyword.get("action") != "none":
            from vidsearch.indexer.text import KeywordReport

            lines.append(KeywordReport(**self.keyword).line())
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---- the loaded index ----------------------------------------------------------------------
class LoadedIndex:
    """A verified FAISS index with its vector cache; ``search`` applies the tuned parameters."""

    def __init__(self, library: Library, meta: IndexMeta, index: faiss.Index,
                 vectors: VectorStore | None = None) -> None:
        """``vectors``: the store over ``meta.shards`` when the caller has one open already."""
        self.library = library
        self.meta = meta
        self.index = index
        self.vectors = vectors if vectors is not None else VectorStore(library, meta.shards, meta.dim)
        inner = _inner(index)
        self._ivf = faiss.try_extract_index_ivf(inner)
        self._hnsw = isinstance(inner, faiss.IndexHNSW)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, sel_ids: np.ndarray | None = None,
               boost: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, clip ids), rows per query; missing results have id -1.

        Args:
            queries: (nq, dim) float32, L2-normalised.
            k: results per query.
            sel_ids: restrict to these clip ids (FAISS ID selector).
            boost: widen nprobe / efSearch by this factor (selective filters leave fewer
                matching vectors in each probed list or graph neighbourhood).
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ntotal == 0 or k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        sp = self.meta.search_params
        rerank = int(sp.get("rerank", 1))
        kk = min(k * rerank, self.ntotal)
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(sel_ids, dtype=np.int64)) \
            if sel_ids is not None else None
        params: Any = None
        if self._ivf is not None:
            nprobe = min(int(self._ivf.nlist), max(1, math.ceil(sp.get("nprobe", 1) * boost)))
            params = _FAISS.SearchParametersIVF(sel=sel, nprobe=nprobe) \
                if sel is not None else _FAISS.SearchParametersIVF(nprobe=nprobe)
        elif self._hnsw:
            ef = min(4096, max(kk, math.ceil(sp.get("efSearch", 64) * boost)))
            params = _FAISS.SearchParametersHNSW(sel=sel, efSearch=ef) if sel is not None \
                else _FAISS.SearchParametersHNSW(efSearch=ef)
        elif sel is not None:
            params = _FAISS.SearchParameters(sel=sel)
        # One query gains nothing from OpenMP threads, and on a busy machine their barriers
        # cost milliseconds (measured: HNSW p50 8 ms with 2 threads vs 0.4 ms with 1).
        threads = faiss.omp_get_max_threads()
        if len(q) == 1:
            faiss.omp_set_num_threads(1)
        try:
            scores, labels = self.index.search(q, kk, params=params)
        finally:
            if len(q) == 1:
                faiss.omp_set_num_threads(threads)
        if rerank > 1:
            scores, labels = self._rerank(q, labels, k)
        return scores[:, :k], labels[:, :k]

    def _rerank(self, q: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # PQ scores are approximate: rescore the candidates with their exact vectors.
        outD = np.full((len(q), k), -np.inf, np.float32)
        outI = np.full((len(q), k), -1, np.int64)
        for i in range(len(q)):
            cand = labels[i][labels[i] >= 0]
            found, vecs = self.vectors.gather(cand)
            cand = cand[found]
            s = vecs @ q[i]
            order = np.argsort(-s, kind="stable")[:k]
            outD[i, :len(order)] = s[order]
            outI[i, :len(order)] = cand[order]
        return outD, outI


def _writer_check(library: Library) -> None:
    # The kernel lock held by this process, not the holder record (which a full disk can leave empty).
    if not library.holds_lock:
        raise LibraryError("update_index() needs the writer lock held by this process (Library.lock())")


def load_index(library: Library, manifest: Manifest | None = None, *,
               meta: IndexMeta | None = None) -> LoadedIndex:
    """Load the index after checking it against the manifest and its SHA-256.

    Shards added after the index was built are allowed (see
    :func:`vidsearch.indexer.store.uncovered_shards`); the caller searches them separately.

    Raises:
        IndexMissing: no index yet.
        IndexStale: another model or library, or it covers shards the manifest lacks.
        IndexCorrupt: a file is missing, truncated or altered.
    """
    manifest = manifest or library.read_manifest()
    meta = meta or read_meta(library)
    reasons = stale_reasons(meta, manifest)
    if reasons:
        raise IndexStale(f"{library.index_dir}: " + "; ".join(reasons) +
                         f"; rebuild with `vidsearch index --rebuild --library {library.root}`")
    # The digest first: FAISS reads a bit-flipped file without complaint (RELIABILITY F9); then
    # the structure, before FAISS sees a byte: only what vidsearch builds, nothing that would
    # make FAISS open or map another file (RELIABILITY S2; vidsearch.indexer.structure).
    p = index_file_path(library, meta.index_file)
    try:
        index, shape = read_checked_index(p, meta.dim, meta.index_sha256)
    except FileNotFoundError:
        raise IndexCorrupt(f"{p}: missing index file") from None
    except UnsupportedIndex as e:
        raise IndexCorrupt(f"{p}: {e}") from e
    if index.ntotal != meta.n:
        raise IndexCorrupt(f"{p}: holds {index.ntotal} vectors of dim {index.d}, "
                           f"index.json says {meta.n} of dim {meta.dim}")
    if meta.kind != "custom" and meta.kind != shape.family:
        raise IndexCorrupt(f"{p}: a {shape.family} index, index.json says {meta.kind}")
    return LoadedIndex(library, meta, index)


# ---- building ------------------------------------------------------------------------------
def read_shard_vectors(library: Library, entry: ShardEntry, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(clip ids, (rows, dim) float32 L2-normalised embeddings) of a shard, SHA-256 checked."""
    t = library.read_shard(entry, "clips", columns=["clip_id", "embedding"], verify=True)
    ids = t.column("clip_id").to_numpy().astype(np.int64, copy=False)
    emb = t.column("embedding").combine_chunks()
    vecs = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
    norms = np.linalg.norm(vecs, axis=1)
    if len(norms) and np.abs(norms - 1).max() > 1e-3:
        _logger.warning("%s: embeddings are not L2-normalised; normalising them for the index",
                        entry.clips_file)
        vecs = vecs / np.maximum(norms, 1e-12)[:, None]
    return ids, np.ascontiguousarray(vecs, dtype=np.float32)


def _keep_masks(library: Library, entries: list[ShardEntry], known: np.ndarray) -> list[np.ndarray]:
    """Per shard, which rows to index: a clip id already indexed (``known``, sorted) or in an
    earlier shard (a video redone in a later run) is kept once, the first copy. Reads only the
    clip_id column (NumPy, no set of millions of Python ints)."""
    id_arrays = [library.read_shard(e, "clips", columns=["clip_id"]).column("clip_id").to_numpy()
                 .astype(np.int64, copy=False) for e in entries]
    if not id_arrays:
        return []
    all_ids = np.concatenate(id_arrays)
    keep = np.zeros(len(all_ids), bool)
    keep[np.unique(all_ids, return_index=True)[1]] = True  # first occurrence of each id
    keep &= ~in_sorted(all_ids, known)
    return np.split(keep, np.cumsum([len(a) for a in id_arrays])[:-1])


def _cache_shards(library: Library, entries: list[ShardEntry], dim: int, known: np.ndarray,
                  say: Callable[[str], None]) -> list[CoveredShard]:
    """Write each shard's vectors (minus duplicate clip ids) into the vector cache.

    Shards are independent, so they are read, hashed and written by a few threads (Parquet
    decoding, SHA-256 and file writes release the GIL); memory holds one shard per thread, never
    the library (10M x 512 float32 would be 20 GB).
    """
    masks = _keep_masks(library, entries, known)
    done = [0]

    def one(entry: ShardEntry, keep: np.ndarray) -> CoveredShard:
        ids, vecs = read_shard_vectors(library, entry, dim)
        if len(keep) != len(ids):
            raise LibraryError(f"{entry.clips_file}: changed while being indexed")
        if not keep.all():
            _logger.info("%s: %d clip ids already indexed from earlier shards; kept once",
                         entry.clips_file, int((~keep).sum()))
            ids, vecs = ids[keep], vecs[keep]
        vrel, irel = vectors_names(entry.shard_id)
        cov = CoveredShard(entry.shard_id, entry.clips_sha256, int(len(ids)), vrel,
                           write_npy_atomic(library, vrel, vecs), irel, write_npy_atomic(library, irel, ids))
        done[0] += 1
        if done[0] % 50 == 0:
            say(f"cached the vectors of {done[0]}/{len(entries)} shards")
        return cov

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, len(entries)))) as ex:
        return list(ex.map(one, entries, masks))


def _gpu_available(cfg: IndexCfg) -> bool:
    return bool(cfg.use_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)


def _train_size(index: faiss.Index, n: int, cfg: IndexCfg) -> int:
    # k-means wants 39..256 points per centroid: a large nlist needs more than max_train_vectors.
    ivf = faiss.try_extract_index_ivf(index)
    return min(n, max(cfg.max_train_vectors, 40 * int(ivf.nlist) if ivf is not None else 0))


def _train(index: faiss.Index, store: VectorStore, cfg: IndexCfg,
           rng: np.random.Generator) -> tuple[int, bool]:
    """Train on a random sample gathered from the vector cache; returns (sample size, GPU used)."""
    if index.is_trained:
        return 0, False
    n = store.n
    size = _train_size(index, n, cfg)
    sample = store.take_rows(np.sort(rng.choice(n, size, replace=False)) if size < n else np.arange(n))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and _gpu_available(cfg):
        # k-means of the coarse quantizer on GPU, the rest on CPU (GPU FAISS when present).
        try:
            clus = faiss.Clustering(ivf.d, ivf.nlist)
            clus.niter = 20
            gpu_q = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
            clus.train(sample, gpu_q)
            ivf.quantizer.add(faiss.vector_float_to_array(clus.centroids).reshape(ivf.nlist, ivf.d))
            index.train(sample)
            return len(sample), True
        except RuntimeError as e:  # pragma: no cover - GPU only
            _logger.warning("GPU training failed (%s); training on CPU", e)
    index.train(sample)
    return len(sample), False


def _add(index: faiss.Index, store: VectorStore, say: Callable[[str], None]) -> None:
    """Add the store's vectors shard by shard (one shard in memory at a time)."""
    ids_all, _ = store.store_order()
    shards = store.shard_rows()
    for j, (sid, a, b) in enumerate(shards):
        if b > a:
            index.add_with_ids(np.ascontiguousarray(store.vectors(sid)), np.ascontiguousarray(ids_all[a:b]))
        if (j + 1) % 50 == 0:
            say(f"added {j + 1}/{len(shards)} shards")


def _drop_self(labels: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Rows of ``labels`` without each row's own id, cut to ``k`` (padded with -1)."""
    out = np.full((len(labels), k), -1, np.int64)
    for i, (row, me) in enumerate(zip(labels, self_ids, strict=True)):
        kept = row[row != me][:k]
        out[i, :len(kept)] = kept
    return out


def exact_topk(store: VectorStore, q: np.ndarray, k: int,
               mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (scores, clip ids) of ``q`` over the vectors of ``store`` (only the store
    rows where ``mask`` is True, if given), one shard at a time; ties broken by clip id."""
    nq = len(q)
    best_s = np.full((nq, 0), -np.inf, np.float32)
    best_i = np.full((nq, 0), -1, np.int64)
    ids_all, _ = store.store_order()
    q = np.ascontiguousarray(q, np.float32)
    for sid, a, b in store.shard_rows():
        v, ids = store.vectors(sid), ids_all[a:b]
        if mask is not None:
            rows = np.flatnonzero(mask[a:b])
            v, ids = np.take(v, rows, axis=0), ids[rows]
        if len(ids) == 0:
            continue
        s, pos = faiss.knn(q, np.ascontiguousarray(v), min(k, len(ids)), metric=faiss.METRIC_INNER_PRODUCT)
        cs = np.concatenate([best_s, s], axis=1)
        ci = np.concatenate([best_i, ids[pos]], axis=1)
        order = np.lexsort((ci, -cs), axis=1)[:, :k] if cs.shape[1] > k else np.lexsort((ci, -cs), axis=1)
        best_s = np.take_along_axis(cs, order, axis=1)
        best_i = np.take_along_axis(ci, order, axis=1)
    return best_s, best_i


def _quality(loaded: LoadedIndex, cfg: IndexCfg, rng: np.random.Generator, tune: bool) -> dict[str, Any]:
    """Tune nprobe/efSearch, then recall@1/10 and single-query latency on held-out embeddings.

    Queries and exact answers come from the vector cache, shard by shard: memory holds the
    queries and their answers, never the library.
    """
    store = loaded.vectors
    n = store.n
    if n == 0:
        return {}
    nq = min(cfg.quality_queries, n)
    qpos = rng.choice(n, nq, replace=False)
    ids_all, _ = store.store_order()
    order = np.argsort(qpos)
    q = np.empty((nq, store.dim), np.float32)
    q[order] = store.take_rows(qpos[order])
    qid = ids_all[qpos]
    k = min(10, n - 1)
    if k < 1:
        return {}
    # Each query is a stored clip held out of its own answer: both the exact and the ANN lists
    # drop the query clip itself, so recall measures neighbours, not trivial self-matches.
    # Search over-fetches (k x SearchCfg.overfetch) before filtering and merging; the parameters
    # are tuned on a depth-``tune_depth`` list too, not only on the top 10. (Depth 40 on synthetic
    # clusters of ~30 clips forced nprobe 1024/4096 at 1M: neighbours past a clip's own video
    # are noise there, so deep recall needs near-exhaustive probing.)
    depth = min(max(cfg.tune_depth, k), n - 1)
    gt_deep = _drop_self(exact_topk(store, q, depth + 1)[1], qid, depth)

    def recall(params: dict[str, Any], kk: int = k) -> tuple[float, float]:
        loaded.meta = replace(loaded.meta, search_params=params)
        _, got = loaded.search(q, kk + 1)
        got = _drop_self(got, qid, kk)
        truth = gt_deep[:, :kk]
        r1 = float(np.mean(got[:, 0] == truth[:, 0]))
        r_k = float(np.mean([len(set(a) & set(b)) / kk for a, b in zip(got.tolist(), truth.tolist(), strict=True)]))
        return r1, r_k

    def good(params: dict[str, Any]) -> bool:
        return recall(params)[1] >= cfg.target_recall and recall(params, depth)[1] >= cfg.target_recall

    params = dict(loaded.meta.search_params)
    if tune and loaded._ivf is not None:
        for nprobe in [2 ** i for i in range(0, 17) if 2 ** i <= loaded._ivf.nlist]:
            params["nprobe"] = nprobe
            if good(params):
                break
    elif tune and loaded._hnsw:
        for ef in (16, 32, 64, 128, 256, 512, 1024):
            params["efSearch"] = ef
            if good(params):
                break
    r1, r10 = recall(params)
    times = []
    for i in range(nq):
        t0 = time.perf_counter()
        loaded.search(q[i:i + 1], 10)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"recall_at_1": r1, "recall_at_10": r10, "quality_queries": nq,
            "latency_p50_ms": float(np.percentile(times, 50)),
            "latency_p99_ms": float(np.percentile(times, 99)), "search_params": params}


def _save(library: Library, loaded: LoadedIndex, meta: IndexMeta) -> IndexMeta:
    name = new_index_name()
    tmp = library.tmp_dir / f"{name}.tmp"
    library.tmp_dir.mkdir(parents=True, exist_ok=True)
    try:
        try:
            faiss.write_index(loaded.index, str(tmp))
        except RuntimeError as e:  # "write error in <tmp>: a != b (No space left on device)"
            if is_disk_full(e):
                raise OSError(errno.ENOSPC, str(e).rsplit("(", 1)[-1].rstrip(")"), str(tmp)) from e
            raise
        digest, size = sha256_file(tmp), tmp.stat().st_size
        atomic_replace(tmp, library.index_dir / name)
    finally:
        tmp.unlink(missing_ok=True)
    meta = replace(meta, index_file=name, index_sha256=digest, index_bytes=size)
    write_meta(library, meta)  # the commit point: the new index is visible from here on
    cleanup_unreferenced(library, meta)
    return meta


def update_index(library: Library, cfg: IndexCfg | None = None, *, rebuild: bool = False,
                 progress: Callable[[str], None] | None = None) -> IndexReport:
    """Bring the library's index up to date with its manifest (writer only).

    Builds it when missing, rebuilds it when it is corrupt, stale (another model, shards the
    manifest lacks), of another factory than asked, or when ``rebuild`` is set; otherwise adds
    the shards committed since the last call without retraining. The keyword index of the text
    tables (``index/text``) follows the same rules (:func:`vidsearch.indexer.text.update_keyword_index`;
    ``report.keyword``).

    Args:
        library: the library; this process must hold ``library.lock()``.
        cfg: index settings (defaults: :class:`IndexCfg`).
        rebuild: retrain and rebuild from all shards.
        progress: called with one-line progress messages.

    Returns:
        The report, also saved in ``index/index.json``.

    Raises:
        LibraryError: no writer lock, no model, or a shard whose SHA-256 differs.
        DiskFull: no space for the new files (docs/RELIABILITY.md F8); the files of this attempt are
            removed and ``index.json`` still names the previous, complete index.
    """
    cfg = cfg or IndexCfg()
    say = progress or (lambda msg: _logger.info("%s", msg))
    _writer_check(library)
    index_dir_is_safe(library)
    m = library.read_manifest()
    if m.model is None:
        raise LibraryError(f"{library.root}: the library has no model yet; nothing to index")
    notes: list[str] = []
    old: LoadedIndex | None = None
    if not rebuild:
        try:
            old = load_index(library, m)
        except IndexMissing:
            pass
        except (IndexStale, IndexCorrupt) as e:
            _logger.warning("%s; rebuilding it from the shards", e)
            notes.append(f"rebuilt because: {e}")
        if old is not None and cfg.factory and cfg.factory != old.meta.factory:
            notes.append(f"rebuilt with factory {cfg.factory} (was {old.meta.factory})")
            old = None
        if old is not None and not cfg.factory and old.meta.kind == "flat":
            new_n = old.meta.n + sum(s.clips_rows for s in uncovered_shards(old.meta, m))
            if choose_index(new_n, m.model.embed_dim, cfg).kind != "flat":
                # An exact index has nothing to lose by a rebuild into the type this size needs.
                notes.append(f"{new_n} vectors outgrow the exact index: rebuilt")
                old = None
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    try:
        if old is not None:
            report = _extend(library, old, m, cfg, notes, t0, rng, say)
        else:
            report = _build(library, m, cfg, notes, t0, rng, say, action="rebuilt" if (rebuild or notes) else "built")
        from vidsearch.indexer.text import update_keyword_index

        report.keyword = update_keyword_index(library, rebuild=rebuild, progress=say).to_dict()
        return report
    except (OSError, RuntimeError) as e:  # FAISS reports a failed write as a RuntimeError
        if not is_disk_full(e):
            raise
        _drop_unreferenced(library)
        raise DiskFull(f"disk full writing {failed_path(e, library.index_dir)}: the index was not updated "
                       f"(index.json still names the previous complete index; clips it lacks are searched "
                       f"exactly). Free space and run `vidsearch index --library {library.root}`") from e


def _drop_unreferenced(library: Library) -> None:
    """Remove the index files that ``index.json`` does not name (all of them when there is none)."""
    try:
        meta = read_meta(library)
    except IndexCorrupt:
        return  # cannot tell what is in use: leave everything for `vidsearch index --rebuild`
    except IndexMissing:
        for p in [*library.index_dir.glob("faiss-*.index"), *(library.index_dir / "vectors").glob("v-*.npy")]:
            p.unlink(missing_ok=True)
        return
    cleanup_unreferenced(library, meta)


def _build(library: Library, m: Manifest, cfg: IndexCfg, notes: list[str], t0: float,
           rng: np.random.Generator, say: Callable[[str], None], action: str) -> IndexReport:
    assert m.model is not None
    dim = m.model.embed_dim
    entries = [e for e in m.shards if e.clips_rows > 0]
    covered = _cache_shards(library, entries, dim, np.empty(0, np.int64), say)
    store = VectorStore(library, tuple(covered), dim, verified=frozenset(c.shard_id for c in covered))
    n = store.n
    plan = choose_index(n, dim, cfg)
    say(f"building {plan.kind} index ({plan.factory}) over {n} vectors: {plan.reason}")
    index = _make_index(plan.factory, dim)
    trained_n, gpu = _train(index, store, cfg, rng) if n else (0, False)
    if n and not index.is_trained:
        raise LibraryError(f"{plan.factory}: {n} vectors are too few to train this index")
    _add(index, store, say)
    sp: dict[str, Any] = {"rerank": PQ_RERANK_FACTOR} if plan.kind == "ivf_pq" else {}
    meta = IndexMeta(
        library_id=m.library_id, model_name=m.model.name, model_fingerprint=m.model.fingerprint,
        dim=dim, factory=plan.factory, kind=plan.kind, n=int(index.ntotal), trained_n=trained_n,
        added_since_training=0, index_file="", index_sha256="", index_bytes=0,
        faiss_version=faiss.__version__, shards=tuple(covered), search_params=sp,
        manifest_generation=m.generation, built_at=utcnow().isoformat(),
    )
    loaded = LoadedIndex(library, meta, index, vectors=store)  # its id table is built already
    say("measuring recall and latency on held-out clip embeddings")
    quality = _quality(loaded, cfg, rng, tune=True)
    report = IndexReport(action=action, kind=plan.kind, factory=plan.factory, vectors=meta.n,
                         index_bytes=0, build_seconds=0.0, added=meta.n, notes=notes, gpu=gpu, **quality)
    return _finish(library, meta, loaded, report, t0)


def _finish(library: Library, meta: IndexMeta, loaded: LoadedIndex, report: IndexReport,
            t0: float) -> IndexReport:
    report.build_seconds = time.perf_counter() - t0
    meta = replace(meta, search_params=report.search_params or meta.search_params)
    loaded.meta = meta
    meta = _save(library, loaded, meta)
    report.index_bytes = meta.index_bytes
    meta = replace(meta, report=report.to_dict())
    write_meta(library, meta)
    return report


def _extend(library: Library, old: LoadedIndex, m: Manifest, cfg: IndexCfg, notes: list[str],
            t0: float, rng: np.random.Generator, say: Callable[[str], None]) -> IndexReport:
    assert m.model is not None
    dim = m.model.embed_dim
    new = uncovered_shards(old.meta, m)
    meta = old.meta
    if not new:
        report = IndexReport(action="unchanged", kind=meta.kind, factory=meta.factory, vectors=meta.n,
                             index_bytes=meta.index_bytes, build_seconds=0.0,
                             **{k: v for k, v in meta.report.items()
                                if k in ("recall_at_1", "recall_at_10", "quality_queries",
                                         "latency_p50_ms", "latency_p99_ms", "search_params")})
        _suggest(meta, cfg, report)
        return report
    fresh = _cache_shards(library, new, dim, old.vectors.all_ids(), say)
    added = sum(c.rows for c in fresh)
    written = frozenset(c.shard_id for c in fresh)
    _add(old.index, VectorStore(library, tuple(fresh), dim, written), say)
    say(f"added {added} vectors from {len(new)} new shard(s) without retraining")
    meta = replace(meta, shards=tuple(meta.shards) + tuple(fresh), n=int(old.index.ntotal),
                   added_since_training=meta.added_since_training + (added if meta.trained_n else 0),
                   manifest_generation=m.generation)
    loaded = LoadedIndex(library, meta, old.index, VectorStore(library, meta.shards, dim, written))
    # Quality over every vector now indexed, read back from the (verified) vector cache.
    quality = _quality(loaded, cfg, rng, tune=False)
    report = IndexReport(action="extended", kind=meta.kind, factory=meta.factory, vectors=meta.n,
                         index_bytes=0, build_seconds=0.0, added=added, notes=notes, **quality)
    _suggest(meta, cfg, report)
    return _finish(library, meta, loaded, report, t0)


def _suggest(meta: IndexMeta, cfg: IndexCfg, report: IndexReport) -> None:
    reason = None
    if meta.trained_n and meta.added_since_training > cfg.rebuild_ratio * meta.trained_n:
        reason = (f"{meta.added_since_training} vectors were added since the index was trained on "
                  f"{meta.trained_n}")
    elif not cfg.factory and meta.kind != "custom" and choose_index(meta.n, meta.dim, cfg).kind != meta.kind:
        reason = f"{meta.n} vectors are better served by a {choose_index(meta.n, meta.dim, cfg).kind} index"
    if reason:
        report.rebuild_suggested = True
        report.notes.append(f"{reason}; rebuild with `vidsearch index --rebuild`")
