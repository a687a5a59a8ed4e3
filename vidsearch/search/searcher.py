"""Search a library: query vector -> ANN (or exact) top-k -> DuckDB filters/metadata -> moments.

One :class:`Searcher` serves many queries (the model, the index and the DuckDB sandbox are loaded
once); the CLI and the web server both use it::

    s = Searcher(Library(path))
    result = s.search("dog playing in snow", k=10, filters=Filters(path_glob="*/pets/*"))

A filter becomes a boolean mask over clip positions (vector-store order; see ``_match_mask``),
cached per filter until the library changes. How it is answered depends on how many clips match:

- no filter: ANN top-m with over-fetch, hidden statuses dropped in the metadata join;
- at least ``overfetch_min_selectivity`` of the library: ANN over-fetch (nprobe/efSearch widened
  by ``overfetch_boost``/selectivity), non-matching dropped;
- else at most ``SearchCfg.exact_subset_max`` matches: exact search over exactly those clips,
  scored straight from the index's memory-mapped vector cache by FAISS, split over threads
  (exact, hence as good as brute force);
- else (only in libraries past exact_subset_max / overfetch_min_selectivity clips, 10M by
  default): FAISS ``IDSelectorBatch`` with nprobe/efSearch widened by 1/selectivity.

Every path widens (m x 4) until ``k`` moments survive merging and the per-video limit, or the
candidates run out. Shards committed after the index was built are searched exactly and merged
in, never dropped. A corrupt or stale index is rebuilt when no writer holds the library, or
replaced by exact search over the shards (with a warning) when one does.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vidsearch.indexer import (
    IndexCorrupt,
    IndexMissing,
    IndexStale,
    LoadedIndex,
    in_sorted,
    load_index,
    read_shard_vectors,
    uncovered_shards,
    update_index,
)
from vidsearch.library import Library, LibraryError, LibraryLocked
from vidsearch.schemas.config import IndexCfg, SearchCfg
from vidsearch.schemas.manifest import Manifest
from vidsearch.schemas.tables import SEARCHABLE_STATUSES
from vidsearch.search.sandbox import QueryFailed, QueryRefused, matching_clip_ids, open_sandbox, run_query
from vidsearch.search.shaping import ClipHit, Moment, shape

_logger = logging.getLogger(__name__)


class SearchError(ValueError):
    """A search the user asked for cannot be done (bad filter, unknown clip, wrong model)."""


@dataclass(frozen=True)
class Filters:
    """Metadata filters; every value is bound as a parameter, ``where`` is checked first."""

    path_glob: str | None = None          # GLOB over videos.path, e.g. "*/pets/*.mp4"
    min_duration_s: float | None = None   # video duration bounds
    max_duration_s: float | None = None
    from_s: float | None = None           # keep clips overlapping [from_s, to_s] inside their video
    to_s: float | None = None
    where: str | None = None              # a SQL predicate over clips/videos columns
    video_id: str | None = None

    def is_empty(self) -> bool:
        return all(v is None for v in (self.path_glob, self.min_duration_s, self.max_duration_s,
                                       self.from_s, self.to_s, self.where, self.video_id))


@dataclass
class Hit:
    """One ranked result (a moment)."""

    rank: int
    score: float
    clip_id: int                  # the best clip of the moment
    video_id: str
    path: str
    start_s: float                # the moment's extent (all merged clips)
    end_s: float
    clip_ids: tuple[int, ...]     # merged clips in time order
    rerank_score: float | None = None


@dataclass
class SearchResult:
    """Hits plus how they were found (also what the search history records)."""

    hits: list[Hit]
    query: str | None
    like_clip_id: int | None
    k: int
    offset: int
    per_video: int | None
    rerank: int
    filters: Filters
    strategy: str                 # ann / overfetch / selector / exact-subset, "+exact-new" suffix
    matched: int | None           # clips matching the filters (None: no filter)
    total_moments: int            # moments found before the [offset, offset+k) cut (lower bound)
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    index_kind: str | None = None
    generation: int = 0
    model_name: str | None = None
    model_fingerprint: str | None = None
    search_id: str | None = None


class Searcher:
    """Searches one library; reusable across queries and reloads after each commit.

    Args:
        library: the library.
        model: an encoder with ``encode_text`` and ``fingerprint``; loaded on the first text query
            when None (``create_model(manifest.model.name, checkpoint, tokenizer, device)``).
        cfg: search settings.
        index_cfg: settings used if the index has to be rebuilt.
        checkpoint, tokenizer, device, with_itm: passed to ``create_model`` (``with_itm`` for
            ``rerank``).
        auto_repair: rebuild a missing/corrupt/stale index when no writer holds the library.
        record_history: save every search in ``history.duckdb``.
        filter_cache: filter results kept (LRU, dropped when the library changes); 0 = none.
    """

    def __init__(self, library: Library, model: Any = None, *, cfg: SearchCfg | None = None,
                 index_cfg: IndexCfg | None = None, checkpoint: str | None = None,
                 tokenizer: str | None = None, device: str | None = None, with_itm: bool = False,
                 auto_repair: bool = True, record_history: bool = True, filter_cache: int = 16) -> None:
        self.library = library
        self.cfg = cfg or SearchCfg()
        self.index_cfg = index_cfg or IndexCfg()
        self._model = model
        self._model_args = {"checkpoint": checkpoint, "tokenizer": tokenizer, "device": device,
                            "with_itm": with_itm}
        self.auto_repair = auto_repair
        self.record_history = record_history
        self.filter_cache = int(filter_cache)
        self.warnings: list[str] = []
        self.manifest: Manifest = library.read_manifest()
        if self.manifest.model is None:
            raise SearchError(f"{library.root}: the library has no clips yet")
        self.index: LoadedIndex | None = None
        self._extra_ids = np.empty(0, np.int64)
        self._extra_vecs = np.empty((0, self.manifest.model.embed_dim), np.float32)
        self._con = None
        self._catalog_behind = False
        self._catalog_stamp: tuple[int, int, int] | None = None
        self._mask_cache: OrderedDict[Filters, tuple[np.ndarray, int]] = OrderedDict()
        self._open()

    # ---- loading ---------------------------------------------------------------------------
    def _open(self, problem: IndexCorrupt | None = None) -> None:
        m = self.manifest
        assert m.model is not None
        self.warnings = []
        try:
            if problem is not None:  # found after load_index: a vector-cache file failed its check
                raise problem
            self.index = load_index(self.library, m)
        except (IndexMissing, IndexStale, IndexCorrupt) as e:
            self.index = self._repair(e)
        covered = self.index.meta.covered_ids if self.index else set()
        extra = [s for s in m.shards if s.shard_id not in covered and s.clips_rows > 0]
        if self.index is not None and extra:
            self.warnings.append(f"{sum(s.clips_rows for s in extra)} clips in {len(extra)} shard(s) are "
                                 "not in the index yet; searched exactly (run `vidsearch index`)")
        ids, vecs = [], []
        unreadable: dict[int, str] = {}
        for s in extra if self.index else uncovered_shards(None, m):
            try:
                i, v = read_shard_vectors(self.library, s, m.model.embed_dim)
            except (LibraryError, OSError) as e:  # F10: search what is readable, say what is not
                unreadable[s.shard_id] = str(e)
                continue
            ids.append(i)
            vecs.append(v)
        self._extra_ids = np.concatenate(ids) if ids else np.empty(0, np.int64)
        self._extra_vecs = np.concatenate(vecs) if vecs else np.empty((0, m.model.embed_dim), np.float32)
        if self.index is not None and len(self._extra_ids):
            dup = in_sorted(self._extra_ids, self.index.vectors.all_ids())
            self._extra_ids, self._extra_vecs = self._extra_ids[~dup], self._extra_vecs[~dup]
        if self._con is not None:
            self._con.close()
        current = self.library.catalog_is_current(m)
        if self.auto_repair and not current:
            self._refresh_catalog()
            current = self.library.catalog_is_current(m)
        self._catalog_stamp = self._catalog_identity()
        # history.duckdb is not attached: this process writes it after each search, and DuckDB
        # refuses a second handle on a file one connection already holds.
        self.library.left_out_shards = {}
        self._con = open_sandbox(self.library, memory_limit=self.cfg.sql_memory_limit,
                                 threads=self.cfg.sql_threads, history=False)
        for sid, why in sorted({**self.library.left_out_shards, **unreadable}.items()):
            rows = next((s.clips_rows for s in m.shards if s.shard_id == sid), 0)
            self.warnings.append(f"reduced coverage: the {rows} clips of shard {sid} are not searched ({why}); "
                                 "the next `vidsearch ingest` sets the shard aside and re-ingests its videos")
        # A catalog behind the manifest (a writer defers refreshes during a long run, or was
        # killed or ran out of disk between them) lacks the newest clips' rows: the sandbox
        # reads them from their shards (D9), and refresh() reloads once the file is swapped.
        self._catalog_behind = not current
        self._load_metadata()
        if self._catalog_behind:
            self.warnings.append("catalog.duckdb is behind the manifest; the newest clips' metadata was "
                                 "read from their shards (run `vidsearch index "
                                 f"--library {self.library.root}` if no ingest is running)")
        for w in self.warnings:
            _logger.warning("%s", w)

    def check_vector_cache(self) -> None:
        """Hash-check every file of the index's vector cache now instead of as queries first
        touch them (a server does this at start: 2 s at 10M clips on 16 cores, 7-11 s on 2). A
        corrupt file is handled like a corrupt index: rebuilt when no writer holds the library,
        else exact search over the shards with a warning."""
        if self.index is None:
            return
        try:
            self.index.vectors.open_all()
        except IndexCorrupt as e:
            self._open(problem=e)

    def _refresh_catalog(self) -> None:
        """Rebuild a missing, behind or corrupt catalog when no writer holds the library (F15).

        Otherwise the sandbox answers from an in-memory catalog read from the shards, every time.
        """
        try:
            with self.library.lock():
                self.library.refresh_catalog()
        except LibraryLocked:
            pass  # the writer refreshes it now and then, and at the end of its run
        except (LibraryError, OSError) as e:  # a corrupt shard, a read-only library: answer anyway
            _logger.warning("catalog not rebuilt: %s", e)

    def _repair(self, problem: Exception) -> LoadedIndex | None:
        fix = f"vidsearch index --rebuild --library {self.library.root}"
        if self.auto_repair:
            try:
                with self.library.lock():
                    _logger.warning("%s; rebuilding the index from the shards", problem)
                    if not self.library.catalog_is_current():
                        self.library.refresh_catalog()  # F15: a corrupt catalog is set aside and rebuilt
                    update_index(self.library, self.index_cfg, rebuild=not isinstance(problem, IndexMissing))
                self.manifest = self.library.read_manifest()
                return load_index(self.library, self.manifest)
            except LibraryLocked:
                pass
            except LibraryError as e:  # e.g. a corrupt shard (F10): only an ingest may set it aside
                problem = e
        self.warnings.append(f"{problem}; searching the shards exactly instead (slower). "
                             f"Fix: `{fix}`")
        return None

    def _catalog_identity(self) -> tuple[int, int, int] | None:
        # The writer swaps catalog.duckdb by os.replace: a new inode means a new catalog.
        try:
            st = self.library.catalog_path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def refresh(self) -> bool:
        """Reload if a writer committed since, or refreshed a catalog that was behind; returns
        True if it did (F12/F13: a manifest read, plus a stat while the catalog lags)."""
        m = self.library.read_manifest()
        same = m.generation == self.manifest.generation and m.library_id == self.manifest.library_id
        if same and not (self._catalog_behind and self._catalog_identity() != self._catalog_stamp):
            return False
        self.manifest = m
        self._open()
        return True

    @property
    def connection(self) -> Any:
        """The locked read-only DuckDB sandbox of this generation (``run_query`` on it is safe)."""
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def model(self) -> Any:
        """The text encoder, loaded on first use and checked against the library's fingerprint."""
        if self._model is None:
            from vidsearch.models import create_model

            assert self.manifest.model is not None
            self._model = create_model(self.manifest.model.name, **self._model_args)
        self._check_model(self._model)
        return self._model

    def _check_model(self, model: Any) -> None:
        lib = self.manifest.model
        assert lib is not None
        if model.fingerprint != lib.fingerprint:
            raise SearchError(
                f"model {getattr(model, 'name', '?')} (fingerprint {model.fingerprint}) is not the "
                f"embedding space of {self.library.root}, built with {lib.name} (fingerprint "
                f"{lib.fingerprint}); pass the checkpoint/tokenizer the library was ingested with")

    # ---- vectors ---------------------------------------------------------------------------
    def encode_text(self, text: str) -> np.ndarray:
        v = self.model.encode_text([text])
        return np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, np.float32).reshape(-1)

    def vector_of(self, clip_id: int) -> np.ndarray:
        """The stored embedding of ``clip_id`` (query by example)."""
        if self.index is not None:
            found, vecs = self.index.vectors.gather(np.array([clip_id], np.int64))
            if found[0]:
                return vecs[0]
        pos = np.nonzero(self._extra_ids == clip_id)[0]
        if len(pos):
            return self._extra_vecs[pos[0]]
        raise SearchError(f"clip {clip_id} is not in {self.library.root}")

    def clip_at(self, video_id: str, at_s: float) -> int:
        """The clip of ``video_id`` that contains second ``at_s`` (nearest when in a gap)."""
        t = run_query(self._con, "SELECT clip_id FROM clips WHERE video_id = ? "
                      "ORDER BY (start_s <= ? AND ? < end_s) DESC, abs((start_s + end_s) / 2 - ?) LIMIT 1",
                      [video_id, at_s, at_s, at_s])
        if t.num_rows == 0:
            raise SearchError(f"video {video_id} has no clips in {self.library.root}")
        return int(t.column(0)[0].as_py())

    # ---- filters ---------------------------------------------------------------------------
    def _filter_sql(self, f: Filters) -> tuple[str, list[Any]]:
        conds = [f"videos.status IN ({', '.join('?' * len(SEARCHABLE_STATUSES))})"]
        params: list[Any] = list(SEARCHABLE_STATUSES)
        if f.path_glob is not None:
            conds.append("videos.path GLOB ?")
            params.append(f.path_glob)
        if f.min_duration_s is not None:
            conds.append("videos.duration_s >= ?")
            params.append(float(f.min_duration_s))
        if f.max_duration_s is not None:
            conds.append("videos.duration_s <= ?")
            params.append(float(f.max_duration_s))
        if f.from_s is not None:
            conds.append("clips.end_s > ?")
            params.append(float(f.from_s))
        if f.to_s is not None:
            conds.append("clips.start_s < ?")
            params.append(float(f.to_s))
        if f.video_id is not None:
            conds.append("videos.video_id = ?")
            params.append(f.video_id)
        if f.where:  # user SQL never runs in this process: see _where_mask
            raise ValueError("_filter_sql takes no where predicate")
        return " AND ".join(conds), params

    def _query(self, sql: str, params: list[Any]) -> Any:
        try:
            return run_query(self._con, sql, params, timeout_s=self.cfg.sql_timeout_s)
        except (QueryRefused, QueryFailed) as e:
            raise SearchError(str(e)) from None

    def matching_ids(self, f: Filters) -> np.ndarray:
        """Sorted clip ids matching ``f`` (searchable videos only)."""
        mask, _ = self._match_mask(f)
        return np.sort(self._p_ids[mask])

    def clear_filter_cache(self) -> None:
        """Forget cached filter results (benchmarks time the cold path with it)."""
        self._mask_cache.clear()

    def _match_mask(self, f: Filters) -> tuple[np.ndarray, int]:
        """(read-only bool mask over clip positions, count) of the clips matching ``f``.

        Per-video conditions (path, duration, status, video id) are evaluated by DuckDB over the
        small ``videos`` table and expanded to clips through the per-video position runs; clip
        spans on the in-memory arrays; ``where`` by DuckDB, returning catalog row ids (no sort,
        no id lookup), and without the clips-videos join when the predicate binds to ``clips``
        alone. Results are cached per filter (LRU of ``filter_cache`` entries) until the
        library changes: a server answering the same filter again skips it all.
        """
        hit = self._mask_cache.get(f)
        if hit is not None:
            self._mask_cache.move_to_end(f)
            return hit
        vf = Filters(path_glob=f.path_glob, min_duration_s=f.min_duration_s,
                     max_duration_s=f.max_duration_s, video_id=f.video_id)
        vmask = np.zeros(len(self._v_id) + 1, bool)  # last slot: clips of unknown videos
        if vf.is_empty():  # status only: known
            vmask[:-1] = self._v_ok
        elif self._base is not None:
            cond, params = self._filter_sql(vf)
            t = self._query(f"SELECT videos.rowid FROM {self._base[1]} AS videos WHERE {cond}", params)
            vmask[self._vrow_code[t.column(0).to_numpy()]] = True
        else:
            import pyarrow.compute as pc

            cond, params = self._filter_sql(vf)
            t = self._query(f"SELECT videos.video_id FROM videos WHERE {cond}", params)
            codes = pc.index_in(t.column(0), value_set=self._v_id_arr)
            vmask[pc.drop_null(codes).to_numpy().astype(np.int64)] = True
        mask = np.repeat(vmask[self._run_video], self._run_len)
        if f.from_s is not None:
            mask &= self._p_end > f.from_s
        if f.to_s is not None:
            mask &= self._p_start < f.to_s
        if f.where is not None:
            mask &= self._where_mask(f.where)
        mask.flags.writeable = False
        out = (mask, int(np.count_nonzero(mask)))
        if self.filter_cache > 0:
            self._mask_cache[f] = out
            while len(self._mask_cache) > self.filter_cache:
                self._mask_cache.popitem(last=False)
        return out

    def _where_mask(self, where: str) -> np.ndarray:
        """Clip positions satisfying the ``--where`` predicate (status is checked by the caller).

        The predicate is user SQL: a sandbox worker process evaluates it (killed at the timeout,
        memory capped; :func:`vidsearch.search.sandbox.matching_clip_ids`) and returns the
        matching clip ids, which are looked up here.
        """
        ids = matching_clip_ids(self.library, where, timeout_s=self.cfg.sql_timeout_s,
                                memory_limit=self.cfg.sql_memory_limit, threads=self.cfg.sql_threads)
        mask = np.zeros(len(self._p_ids), bool)
        pos, ok = self._positions(ids)
        mask[pos[ok]] = True
        return mask

    def _load_metadata(self) -> None:
        """Clip spans and video paths in memory: per-query metadata without a DuckDB round trip.

        Clips live at *positions*: first the index's vector-store rows (store order, so a video's
        clips are one run, read sequentially when an exact subset is scored), then the
        uncovered shards' clips (``_extra_ids`` order), then catalog clips without a vector.
        ~40 bytes per clip. Read from the same read-only catalog the filters use, so both agree
        on which clips exist and which videos are searchable.
        """
        import pyarrow.compute as pc

        self._mask_cache.clear()
        clips = None
        self._base: tuple[str, str] | None = None
        # The attached file's tables directly (rowids) only when current: a lagging one is
        # completed with newer shards' rows in the sandbox's views (D9).
        for schema in ("main",) if self._catalog_behind else ("catalog.main", "main"):
            try:
                clips = run_query(self._con, f"SELECT rowid AS rid, clip_id, video_id, start_s, end_s "
                                  f"FROM {schema}.clips", timeout_s=None)
                self._base = (f"{schema}.clips", f"{schema}.videos")
                break
            except QueryFailed:
                continue
        if clips is None:
            clips = run_query(self._con, "SELECT clip_id, video_id, start_s, end_s FROM clips", timeout_s=None)
        vids = run_query(self._con, f"SELECT {'rowid AS rid, ' if self._base else ''}video_id, path, status IN ("
                         + ", ".join("?" * len(SEARCHABLE_STATUSES)) + ") AS ok FROM "
                         + (self._base[1] if self._base else "videos"),
                         list(SEARCHABLE_STATUSES), timeout_s=None)
        if self._base is not None:
            vrid = vids.column("rid").to_numpy()
            self._vrow_code = np.full(int(vrid.max()) + 1 if len(vrid) else 0, -1, np.int64)
            self._vrow_code[vrid] = np.arange(len(vrid))
        cat_ids = clips.column("clip_id").to_numpy().astype(np.int64)
        code = pc.index_in(clips.column("video_id"), value_set=vids.column("video_id"))
        cat_video = pc.fill_null(code, -1).to_numpy().astype(np.int32)

        if self.index is not None:
            store_ids, store_order = self.index.vectors.store_order()
        else:
            store_ids, store_order = np.empty(0, np.int64), np.empty(0, np.int64)
        self._n_store = len(store_ids)
        vec_ids = np.concatenate([store_ids, self._extra_ids])
        perm = store_order if len(self._extra_ids) == 0 else np.argsort(vec_ids, kind="stable")
        sorted_v = vec_ids[perm]
        pos = np.minimum(np.searchsorted(sorted_v, cat_ids), max(len(sorted_v) - 1, 0))
        found = sorted_v[pos] == cat_ids if len(sorted_v) else np.zeros(len(cat_ids), bool)
        n_other = int((~found).sum())
        cat_pos = np.empty(len(cat_ids), np.int64)
        cat_pos[found] = perm[pos[found]]
        cat_pos[~found] = len(vec_ids) + np.arange(n_other)
        n = len(vec_ids) + n_other
        self._p_ids = np.concatenate([vec_ids, cat_ids[~found]])
        self._p_video = np.full(n, -1, np.int32)
        self._p_video[cat_pos] = cat_video
        self._p_start = np.full(n, np.nan)
        self._p_start[cat_pos] = clips.column("start_s").to_numpy()
        self._p_end = np.full(n, np.nan)
        self._p_end[cat_pos] = clips.column("end_s").to_numpy()
        if n_other == 0:
            self._id_sorted, self._id_perm = sorted_v, perm
        else:
            self._id_perm = np.argsort(self._p_ids, kind="stable")
            self._id_sorted = self._p_ids[self._id_perm]
        if self._base is not None:
            rid = clips.column("rid").to_numpy()
            self._rowid_pos = np.full(int(rid.max()) + 1 if len(rid) else 0, -1, np.int64)
            self._rowid_pos[rid] = cat_pos
        # Runs of equal video code along positions (a video's clips are consecutive rows):
        # a per-video mask becomes a clip mask by np.repeat over ~#videos runs.
        change = np.flatnonzero(np.diff(self._p_video)) + 1
        starts = np.concatenate(([0], change)) if n else np.empty(0, np.int64)
        self._run_video = self._p_video[starts] if n else np.empty(0, np.int32)
        self._run_len = np.diff(np.append(starts, n)).astype(np.int64)
        self._v_id_arr = vids.column("video_id").combine_chunks()
        self._v_id = self._v_id_arr.to_pylist()
        self._v_path = vids.column("path").to_pylist()
        self._v_ok = np.asarray(vids.column("ok").to_numpy(zero_copy_only=False), bool)

    def _positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, found) of clip ids."""
        if len(self._id_sorted) == 0:
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        at = np.minimum(np.searchsorted(self._id_sorted, ids), len(self._id_sorted) - 1)
        return self._id_perm[at], self._id_sorted[at] == ids

    def _metadata(self, ids: np.ndarray) -> dict[int, tuple[str, str, float, float]]:
        """(video_id, path, start_s, end_s) of the ids that are in the catalog and searchable."""
        if len(ids) == 0:
            return {}
        pos, ok = self._positions(ids)
        vcode = self._p_video[pos]
        ok &= vcode >= 0
        ok[ok] &= self._v_ok[vcode[ok]]
        return {int(c): (self._v_id[v], self._v_path[v], float(self._p_start[p]), float(self._p_end[p]))
                for c, p, v in zip(ids[ok].tolist(), pos[ok].tolist(), vcode[ok].tolist(), strict=True)}

    # ---- candidates ------------------------------------------------------------------------
    @staticmethod
    def _top(s: np.ndarray, ids: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        if len(ids) == 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        m = min(m, len(s))
        top = np.argpartition(-s, m - 1)[:m] if m < len(s) else np.arange(len(s))
        top = top[np.lexsort((ids[top], -s[top]))]
        return s[top], ids[top]

    def _candidates(self, q: np.ndarray, m: int, mask: np.ndarray | None, strategy: str,
                    selectivity: float) -> tuple[np.ndarray, np.ndarray]:
        """Top-``m`` (scores, ids) among the index + uncovered shards, restricted to ``mask``."""
        parts = []
        ns = self._n_store
        if self.index is not None and self.index.ntotal:
            if strategy == "exact-subset":
                assert mask is not None
                rows = np.flatnonzero(mask[:ns])
                parts.append(self._top(self.index.vectors.score_rows(rows, q), self._p_ids[rows], m))
            elif strategy == "selector":
                assert mask is not None
                sel = self._p_ids[:ns][mask[:ns]]
                # Only ~selectivity of each probed list matches: probe 1/selectivity as many.
                d, i = self.index.search(q[None], m, sel_ids=sel, boost=1.0 / max(selectivity, 1e-6))
                parts.append((d[0][i[0] >= 0], i[0][i[0] >= 0]))
            else:
                # Over-fetch keeps ~selectivity of the candidates: search deeper in proportion.
                boost = min(16.0, self.cfg.overfetch_boost / max(selectivity, 1e-6)) if strategy == "overfetch" else 1.0
                d, i = self.index.search(q[None], m, boost=boost)
                parts.append((d[0][i[0] >= 0], i[0][i[0] >= 0]))
        if len(self._extra_ids):
            if mask is None:
                ids, vecs = self._extra_ids, self._extra_vecs
            else:
                keep = mask[ns:ns + len(self._extra_ids)]
                ids, vecs = self._extra_ids[keep], self._extra_vecs[keep]
            parts.append(self._top(vecs @ q, ids, m))
        if not parts:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        scores = np.concatenate([p[0] for p in parts])
        ids = np.concatenate([p[1] for p in parts])
        order = np.lexsort((ids, -scores))[:m]
        return scores[order], ids[order]

    # ---- search ----------------------------------------------------------------------------
    def search(self, query: str | None = None, *, like_clip_id: int | None = None,
               vector: np.ndarray | None = None, k: int | None = None, filters: Filters | None = None,
               per_video: int | None = None, rerank: int = 0, offset: int = 0,
               merge: bool = True) -> SearchResult:
        """Ranked moments for a text query, an example clip or a raw vector.

        Args:
            query: text, encoded with the library's model.
            like_clip_id: find clips similar to this one (the clip itself is left out).
            vector: a query embedding (dim of the library, L2-normalised here).
            k: moments to return (default ``SearchCfg.k``).
            filters: metadata filters.
            per_video: at most this many moments per video.
            rerank: re-score the top ``rerank`` moments with the ITM head (text queries only).
            offset: skip this many moments (paging).
            merge: merge adjacent hits of a video into one moment.

        Raises:
            SearchError: bad filter or predicate, unknown clip, wrong model, nothing to search with.
        """
        args = dict(query=query, like_clip_id=like_clip_id, vector=vector, k=k, filters=filters,
                    per_video=per_video, rerank=rerank, offset=offset, merge=merge)
        try:
            return self._search(**args)
        except IndexCorrupt as e:
            # A vector-cache file failed its check when a query first touched it: rebuild, or
            # answer exactly from the shards (with a warning), as for a corrupt index at open.
            self._open(problem=e)
            return self._search(**args)

    def _search(self, query: str | None, *, like_clip_id: int | None, vector: np.ndarray | None,
                k: int | None, filters: Filters | None, per_video: int | None, rerank: int,
                offset: int, merge: bool) -> SearchResult:
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        self.refresh()
        k = self.cfg.k if k is None else int(k)
        if k <= 0 or offset < 0:
            raise SearchError("k must be positive and offset non-negative")
        filters = filters or Filters()
        per_video = per_video if per_video is not None else self.cfg.per_video
        if sum(x is not None for x in (query, like_clip_id, vector)) != 1:
            raise SearchError("give exactly one of a text query, --like CLIP_ID or a vector")
        t0 = time.perf_counter()
        if query is not None:
            q = self.encode_text(query)
        elif like_clip_id is not None:
            q = self.vector_of(int(like_clip_id))
        else:
            q = np.asarray(vector, np.float32).reshape(-1)
        assert self.manifest.model is not None
        if q.shape != (self.manifest.model.embed_dim,):
            raise SearchError(f"query vector has dim {q.shape}, the library {self.manifest.model.embed_dim}")
        q = (q / max(float(np.linalg.norm(q)), 1e-12)).astype(np.float32)
        timings["encode"] = (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        total = (self.index.ntotal if self.index else 0) + len(self._extra_ids)
        mask = None
        n_match: int | None = None
        strategy = "ann" if self.index is not None else "exact"
        selectivity = 1.0
        if not filters.is_empty():
            mask, n_match = self._match_mask(filters)
            if like_clip_id is not None:
                pos, ok = self._positions(np.array([like_clip_id], np.int64))
                if ok[0] and mask[pos[0]]:
                    mask = mask.copy()
                    mask[pos[0]] = False
                    n_match -= 1
            selectivity = n_match / max(total, 1)
            if self.index is None or (selectivity < self.cfg.overfetch_min_selectivity
                                      and n_match <= self.cfg.exact_subset_max):
                strategy = "exact-subset"
            elif selectivity >= self.cfg.overfetch_min_selectivity:
                strategy = "overfetch"
            else:
                strategy = "selector"
        timings["filter"] = (time.perf_counter() - t0) * 1e3
        available = n_match if n_match is not None else total

        need = offset + k
        m = max(need * max(self.cfg.overfetch, 1), 16)
        ann_ms = meta_ms = 0.0
        while True:
            t0 = time.perf_counter()
            scores, ids = self._candidates(q, m, mask, strategy, selectivity)
            if like_clip_id is not None:
                keep = ids != like_clip_id
                scores, ids = scores[keep], ids[keep]
            ann_ms += (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            if strategy == "overfetch":
                assert mask is not None
                pos, keep = self._positions(ids)
                keep &= mask[pos]
                scores, ids = scores[keep], ids[keep]
            meta = self._metadata(ids)
            hits = [ClipHit(int(c), float(s), *meta[int(c)]) for s, c in zip(scores, ids, strict=True)
                    if int(c) in meta]
            if len(meta) < len(ids) and strategy in ("ann", "exact"):
                n_missing = sum(int(c) not in meta for c in ids)
                _logger.debug("%d candidates hidden (status or not in the catalog)", n_missing)
            moments, n_moments = shape(hits, k=k, offset=offset, per_video=per_video,
                                       max_gap_s=self.cfg.merge_gap_s, max_span_s=self.cfg.max_moment_s,
                                       score_margin=self.cfg.merge_score_margin,
                                       merge=merge)
            meta_ms += (time.perf_counter() - t0) * 1e3
            if n_moments >= need or m >= available:
                break
            m = min(m * 4, available)
        timings["ann"] = ann_ms
        timings["db"] = meta_ms
        if self._extra_ids.size and self.index is not None:
            strategy += "+exact-new"

        if rerank and moments:
            if query is None:
                raise SearchError("--rerank needs a text query")
            t0 = time.perf_counter()
            moments = self._rerank(query, moments, rerank)
            timings["rerank"] = (time.perf_counter() - t0) * 1e3
        timings["total"] = (time.perf_counter() - t_start) * 1e3

        model = self.manifest.model
        result = SearchResult(
            hits=[Hit(mo.rank, mo.score, mo.clip_id, mo.video_id, mo.path, mo.start_s, mo.end_s,
                      tuple(mo.clip_ids), mo.rerank_score) for mo in moments],
            query=query, like_clip_id=like_clip_id, k=k, offset=offset, per_video=per_video,
            rerank=rerank, filters=filters, strategy=strategy,
            matched=n_match,
            total_moments=n_moments, timings_ms=timings, warnings=list(self.warnings),
            index_kind=self.index.meta.kind if self.index else None, generation=self.manifest.generation,
            model_name=model.name, model_fingerprint=model.fingerprint)
        if self.record_history:
            from vidsearch.search.history import record_search

            result.search_id = record_search(self.library, result)
        return result

    def _rerank(self, query: str, moments: list[Moment], n: int) -> list[Moment]:
        """Re-score the best clip of the top ``n`` moments with the ITM head; the rest keep order."""
        from vidsearch.search.frames import clip_frames

        model = self.model
        if not getattr(model, "with_itm", False):
            raise SearchError("--rerank needs a model with the ITM head (create_model(..., with_itm=True))")
        head = moments[:n]
        frames = np.stack([clip_frames(self._con, mo.clip_id, model.num_frames) for mo in head])
        scores = model.itm_score(frames, [query]).reshape(-1)
        for mo, s in zip(head, scores.tolist(), strict=True):
            mo.rerank_score = float(s)
        head.sort(key=lambda mo: -(mo.rerank_score or -math.inf))
        out = head + moments[n:]
        first = moments[0].rank
        for i, mo in enumerate(out):
            mo.rank = first + i
        return out

