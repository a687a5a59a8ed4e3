"""Search a library: query vector -> ANN (or exact) top-k -> DuckDB filters/metadata -> moments.

One :class:`Searcher` serves many queries (the model, the index and the DuckDB sandbox are loaded
once); the CLI and the web server both use it::

    s = Searcher(Library(path))
    result = s.search("dog playing in snow", k=10, filters=Filters(path_glob="*/pets/*"))

A filter becomes a boolean mask over clip positions (:class:`~vidsearch.search.cliptable.ClipTable`),
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
in, never dropped.

A searcher only reads (docs/RELIABILITY.md, "read commands do not write"): it never takes the
writer lock, never repairs, rebuilds or deletes anything. A missing, stale or corrupt index is
answered by exact search over the shards' vectors; a missing or corrupt catalog by an in-memory
catalog read from the shards, one behind the manifest by completing it from the newer shards
(the sandbox does both); each with a warning naming the command that repairs it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import duckdb
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
)
from vidsearch.library import Library, LibraryError
from vidsearch.schemas.config import SearchCfg
from vidsearch.schemas.manifest import Manifest, ModelInfo
from vidsearch.search.cliptable import ClipAt, ClipTable
from vidsearch.search.sandbox import matching_clip_ids, open_sandbox
from vidsearch.search.shaping import ClipHit, Moment, shape
from vidsearch.search.textsearch import TextHit, TextSide
from vidsearch.search.types import MODALITIES, Filters, Hit, SearchError, SearchResult

_logger = logging.getLogger(__name__)

__all__ = ["Filters", "Hit", "SearchError", "SearchResult", "Searcher", "TextEncoder", "random_model_warning"]


class TextEncoder(Protocol):
    """What a searcher needs of a model (``vidsearch.models`` encoders; test doubles)."""

    @property
    def name(self) -> str: ...

    @property
    def fingerprint(self) -> str: ...

    def encode_text(self, texts: list[str]) -> Any: ...


@runtime_checkable
class ItmEncoder(TextEncoder, Protocol):
    """A full InternVideo2 model with its image-text matching head (``rerank``)."""

    @property
    def num_frames(self) -> int: ...

    @property
    def with_itm(self) -> bool: ...

    def itm_score(self, frames: np.ndarray, texts: list[str]) -> Any: ...


def random_model_warning(model_name: str) -> str:
    """The warning every result of a library built with a random-weight test model carries
    (the words of ``InternVideo2Model.test_model_warning``, known here without loading it)."""
    return (f"{model_name} is a TEST MODEL with random weights: its results mean nothing; use a real model "
            "(vidsearch weights list) for search")


@dataclass(frozen=True)
class _ModelArgs:
    """How to create the text encoder when none was given (``create_model`` arguments)."""

    checkpoint: str | None = None
    tokenizer: str | None = None
    device: str | None = None
    with_itm: bool = False


@dataclass
class _Generation:
    """Everything a searcher loaded for one committed generation; replaced as a whole on reload."""

    manifest: Manifest
    model_info: ModelInfo
    index: LoadedIndex | None             # None: exact search over the shards' vectors
    extra_ids: np.ndarray                 # clips the index does not cover (or all, without one)
    extra_vecs: np.ndarray                # their vectors, (n, dim) float32
    con: duckdb.DuckDBPyConnection        # the locked read-only sandbox of this generation
    clips: ClipTable
    warnings: list[str]
    catalog_behind: bool                  # catalog.duckdb lags the manifest (completed from shards)
    catalog_stamp: tuple[int, int, int] | None  # identity of catalog.duckdb when opened
    text: TextSide | None = None          # speech / screen text search, made on first use


@dataclass
class _Visual:
    """The pictures' part of a search."""

    moments: list[Moment]
    n_moments: int
    strategy: str
    n_match: int | None
    best: float | None                    # best cosine found, also when cut by min_score
    min_score: float | None               # the cut applied
    no_good_match: str | None             # the warning when min_score cut every moment


# Why a text modality has nothing to search: (what it lacks, what gives it).
_ABSENT = {"speech": ("speech transcripts or subtitles",
                      "ingest with --speech (subtitle tracks and .srt/.vtt files are read always)"),
           "screen": ("screen text", "ingest with --ocr")}


class Searcher:
    """Searches one library; reusable across queries and reloads after each commit.

    Args:
        library: the library.
        model: an encoder with ``encode_text`` and ``fingerprint``; loaded on the first text query
            when None (``create_model(manifest.model.name, checkpoint, tokenizer, device)``).
        cfg: search settings.
        checkpoint, tokenizer, device, with_itm: passed to ``create_model`` (``with_itm`` for
            ``rerank``).
        record_history: save every search in ``history.duckdb``.
        filter_cache: filter results kept (LRU, dropped when the library changes); 0 = none.

    Raises:
        SearchError: the library has no clips yet.
        LibraryError: not a library (no or unreadable manifest).
    """

    def __init__(self, library: Library, model: TextEncoder | None = None, *, cfg: SearchCfg | None = None,
                 checkpoint: str | None = None, tokenizer: str | None = None, device: str | None = None,
                 with_itm: bool = False, record_history: bool = True, filter_cache: int = 16) -> None:
        self.library = library
        self.cfg = cfg or SearchCfg()
        self._model: TextEncoder | None = model
        self._model_args = _ModelArgs(checkpoint, tokenizer, device, with_itm)
        self.record_history = record_history
        self.filter_cache = int(filter_cache)
        self._gen: _Generation | None = None
        self._gen = self._open(library.read_manifest())

    # ---- the current generation ------------------------------------------------------------
    @property
    def _g(self) -> _Generation:
        if self._gen is None:
            raise SearchError(f"{self.library.root}: the searcher is closed")
        return self._gen

    @property
    def manifest(self) -> Manifest:
        """The manifest of the generation being searched."""
        return self._g.manifest

    @property
    def index(self) -> LoadedIndex | None:
        """The FAISS index, or None while searching the shards exactly."""
        return self._g.index

    @property
    def warnings(self) -> list[str]:
        """What is wrong with this generation (missing index, stale catalog, test model, ...)."""
        return self._g.warnings

    @property
    def clips(self) -> ClipTable:
        """The clip table (positions, spans, filter masks) of this generation."""
        return self._g.clips

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The locked read-only DuckDB sandbox of this generation (``run_query`` on it is safe)."""
        return self._g.con

    # ---- loading ---------------------------------------------------------------------------
    def _open(self, m: Manifest, problem: IndexCorrupt | None = None) -> _Generation:
        """Load index, uncovered shards, catalog and clip table of manifest ``m``; write nothing."""
        if m.model is None:
            raise SearchError(f"{self.library.root}: the library has no clips yet")
        info = m.model
        root = self.library.root
        warnings: list[str] = []
        if info.is_test_model:
            warnings.append(random_model_warning(info.name))
        index: LoadedIndex | None = None
        try:
            if problem is not None:  # found after load_index: a vector-cache file failed its check
                raise problem
            index = load_index(self.library, m)
        except IndexMissing:
            warnings.append("the library has no FAISS index yet; searching the shards exactly (slower). "
                            f"Build it: `vidsearch index --library {root}`")
        except (IndexStale, IndexCorrupt) as e:
            warnings.append(f"{e}; searching the shards exactly instead (slower). "
                            f"Fix: `vidsearch doctor --fix --library {root}` "
                            f"(or `vidsearch index --rebuild --library {root}`)")
        covered = index.meta.covered_ids if index else set()
        extra = [s for s in m.shards if s.shard_id not in covered and s.clips_rows > 0]
        if index is not None and extra:
            warnings.append(f"{sum(s.clips_rows for s in extra)} clips in {len(extra)} shard(s) are "
                            f"not in the index yet; searched exactly (run `vidsearch index --library {root}`)")
        ids, vecs = [], []
        unreadable: dict[int, str] = {}
        for s in extra if index else uncovered_shards(None, m):
            try:
                i, v = read_shard_vectors(self.library, s, info.embed_dim)
            except (LibraryError, OSError) as e:  # F10: search what is readable, say what is not
                unreadable[s.shard_id] = str(e)
                continue
            ids.append(i)
            vecs.append(v)
        extra_ids = np.concatenate(ids) if ids else np.empty(0, np.int64)
        extra_vecs = np.concatenate(vecs) if vecs else np.empty((0, info.embed_dim), np.float32)
        if index is not None and len(extra_ids):
            dup = in_sorted(extra_ids, index.vectors.all_ids())
            extra_ids, extra_vecs = extra_ids[~dup], extra_vecs[~dup]

        catalog_issue = _catalog_state(self.library, m)
        current = catalog_issue is None
        # A catalog behind the manifest (a writer defers refreshes during a long run, or was
        # killed or ran out of disk between them) lacks the newest clips' rows: the sandbox
        # completes it from their shards (D9), and refresh() reloads once the file is swapped.
        # Missing or unusable, its tables are read from the shards.
        stamp = _catalog_identity(self.library)
        # history.duckdb is not attached: this process writes it after each search, and DuckDB
        # refuses a second handle on a file one connection already holds.
        self.library.left_out_shards = {}
        con = open_sandbox(self.library, memory_limit=self.cfg.sql_memory_limit, threads=self.cfg.sql_threads,
                           history=False)
        try:
            for sid, why in sorted({**self.library.left_out_shards, **unreadable}.items()):
                rows = next((s.clips_rows for s in m.shards if s.shard_id == sid), 0)
                warnings.append(f"reduced coverage: the {rows} clips of shard {sid} are not searched ({why}); "
                                "the next `vidsearch ingest` sets the shard aside and re-ingests its videos")
            if index is not None:
                store_ids, store_order = index.vectors.store_order()
            else:
                store_ids, store_order = np.empty(0, np.int64), np.empty(0, np.int64)
            clips = ClipTable.load(con, store_ids, store_order, extra_ids, attached_is_current=current,
                                   where_ids=self._where_ids, timeout_s=self.cfg.sql_timeout_s,
                                   cache_size=self.filter_cache)
        except BaseException:
            con.close()
            raise
        if catalog_issue is not None:
            writer = self.library.writer()
            if writer is not None and catalog_issue.startswith("is behind"):
                fix = f"the ingest writing the library (pid {writer.get('pid')}) refreshes it"
            else:
                fix = f"Fix: `vidsearch doctor --fix --library {root}`"
            read = "the newest clips' metadata was read from their shards" if catalog_issue.startswith("is behind") \
                else "its tables were read from the shards (slower to open)"
            warnings.append(f"catalog.duckdb {catalog_issue}; {read}. {fix}")
        for w in warnings:
            _logger.warning("%s", w)
        return _Generation(manifest=m, model_info=info, index=index, extra_ids=extra_ids, extra_vecs=extra_vecs,
                           con=con, clips=clips, warnings=warnings, catalog_behind=not current,
                           catalog_stamp=stamp)

    def _where_ids(self, predicate: str) -> np.ndarray:
        """Clip ids matching a ``--where`` predicate: user SQL, evaluated in a sandbox worker
        process (killed at the timeout, memory capped), never in this one."""
        return matching_clip_ids(self.library, predicate, timeout_s=self.cfg.sql_timeout_s,
                                 memory_limit=self.cfg.sql_memory_limit, threads=self.cfg.sql_threads)

    def _reopen(self, m: Manifest, problem: IndexCorrupt | None = None) -> None:
        new = self._open(m, problem)
        old, self._gen = self._gen, new
        if old is not None:
            old.con.close()

    def check_vector_cache(self) -> None:
        """Hash-check every file of the index's vector cache now instead of as queries first
        touch them (a server does this at start: 2 s at 10M clips on 16 cores, 7-11 s on 2). A
        corrupt file is handled like a corrupt index: exact search over the shards, with a warning."""
        g = self._g
        if g.index is None:
            return
        try:
            g.index.vectors.open_all()
        except IndexCorrupt as e:
            self._reopen(g.manifest, problem=e)

    def refresh(self) -> bool:
        """Reload if a writer committed since, or refreshed a catalog that was behind; returns
        True if it did (F12/F13: a manifest read, plus a stat while the catalog lags)."""
        g = self._g
        m = self.library.read_manifest()
        same = m.generation == g.manifest.generation and m.library_id == g.manifest.library_id
        if same and not (g.catalog_behind and _catalog_identity(self.library) != g.catalog_stamp):
            return False
        self._reopen(m)
        return True

    def close(self) -> None:
        if self._gen is not None:
            self._gen.con.close()
            self._gen = None

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the model -------------------------------------------------------------------------
    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> TextEncoder:
        """The text encoder, loaded on first use and checked against the library's fingerprint."""
        model = self._model
        if model is None:
            a = self._model_args
            model = load_text_encoder(self._g.model_info, checkpoint=a.checkpoint, tokenizer=a.tokenizer,
                                      device=a.device, with_itm=a.with_itm)
            self._model = model
        self._check_model(model)
        return model

    def _check_model(self, model: TextEncoder) -> None:
        lib = self._g.model_info
        if model.fingerprint != lib.fingerprint:
            raise SearchError(
                f"model {model.name} (fingerprint {model.fingerprint}) is not the "
                f"embedding space of {self.library.root}, built with {lib.name} (fingerprint "
                f"{lib.fingerprint}); pass the checkpoint/tokenizer the library was ingested with")

    def default_min_score(self) -> float | None:
        """The model's ``min_score`` for text queries (its config), None when it has none.

        Loads the model (text queries load it anyway)."""
        cfg = getattr(self.model, "cfg", None)
        v = getattr(cfg, "min_score", None)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    # ---- vectors ---------------------------------------------------------------------------
    def encode_text(self, text: str) -> np.ndarray:
        v = self.model.encode_text([text])
        return np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, np.float32).reshape(-1)

    def vector_of(self, clip_id: int) -> np.ndarray:
        """The stored embedding of ``clip_id`` (query by example)."""
        g = self._g
        if g.index is not None:
            found, vecs = g.index.vectors.gather(np.array([clip_id], np.int64))
            if found[0]:
                return np.asarray(vecs[0], np.float32)
        pos = np.nonzero(g.extra_ids == clip_id)[0]
        if len(pos):
            return np.asarray(g.extra_vecs[pos[0]], np.float32)
        raise SearchError(f"clip {clip_id} is not in {self.library.root}")

    def clip_at(self, video_id: str, at_s: float, *, name: str | None = None) -> ClipAt:
        """The clip of ``video_id`` containing second ``at_s`` (nearest, with a warning, when none does)."""
        return self._g.clips.clip_at(video_id, at_s, name=name)

    # ---- filters ---------------------------------------------------------------------------
    def matching_ids(self, f: Filters) -> np.ndarray:
        """Sorted clip ids matching ``f`` (searchable videos only)."""
        return self._g.clips.matching_ids(f)

    def clear_filter_cache(self) -> None:
        """Forget cached filter results (benchmarks time the cold path with it)."""
        self._g.clips.clear_cache()

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
        g = self._g
        parts = []
        ns = g.clips.n_store
        if g.index is not None and g.index.ntotal:
            if strategy == "exact-subset":
                assert mask is not None
                rows = np.flatnonzero(mask[:ns])
                parts.append(self._top(g.index.vectors.score_rows(rows, q), g.clips.ids[rows], m))
            elif strategy == "selector":
                assert mask is not None
                sel = g.clips.ids[:ns][mask[:ns]]
                # Only ~selectivity of each probed list matches: probe 1/selectivity as many.
                d, i = g.index.search(q[None], m, sel_ids=sel, boost=1.0 / max(selectivity, 1e-6))
                parts.append((d[0][i[0] >= 0], i[0][i[0] >= 0]))
            else:
                # Over-fetch keeps ~selectivity of the candidates: search deeper in proportion.
                boost = min(16.0, self.cfg.overfetch_boost / max(selectivity, 1e-6)) if strategy == "overfetch" else 1.0
                d, i = g.index.search(q[None], m, boost=boost)
                parts.append((d[0][i[0] >= 0], i[0][i[0] >= 0]))
        if len(g.extra_ids):
            if mask is None:
                ids, vecs = g.extra_ids, g.extra_vecs
            else:
                keep = mask[ns:ns + len(g.extra_ids)]
                ids, vecs = g.extra_ids[keep], g.extra_vecs[keep]
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
               merge: bool = True, min_score: float | None = None, use_default_min_score: bool = True,
               warnings: list[str] | None = None, modalities: Sequence[str] | None = None) -> SearchResult:
        """Ranked moments for a text query, an example clip or a raw vector.

        Args:
            query: text, encoded with the library's model (pictures) and matched against what is
                said and written on screen (keyword index).
            like_clip_id: find clips similar to this one (the clip itself is left out).
            vector: a query embedding (dim of the library, L2-normalised here).
            k: moments to return (default ``SearchCfg.k``).
            filters: metadata filters; they apply to every modality.
            per_video: at most this many moments per video.
            rerank: re-score the top ``rerank`` moments of the pictures with the ITM head (text
                queries only).
            offset: skip this many moments (paging).
            merge: merge adjacent hits of a video into one moment.
            min_score: leave out picture hits whose best clip scores below this (the cosine; text
                hits are not cut by it).
            use_default_min_score: for a text query without ``min_score``, use the model's
                (``ModelCfg.min_score``; clip-to-clip scores of ``like_clip_id`` are on another
                scale and get none).
            warnings: more warnings to report with the result (e.g. from ``clip_at``).
            modalities: some of ``visual``, ``speech``, ``screen``; None: every modality the
                library has for a text query (pictures only for an example clip or a vector).
                Several are fused into one list by reciprocal rank fusion (:mod:`.fusion`).

        Raises:
            SearchError: bad filter or predicate, unknown clip, wrong model, nothing to search with.
        """
        for attempt in (0, 1):
            try:
                return self._search(query, like_clip_id=like_clip_id, vector=vector, k=k, filters=filters,
                                    per_video=per_video, rerank=rerank, offset=offset, merge=merge,
                                    min_score=min_score, use_default_min_score=use_default_min_score,
                                    extra_warnings=warnings or [], modalities=modalities)
            except IndexCorrupt as e:
                if attempt:
                    raise
                # A vector-cache file failed its check when a query first touched it: answer
                # exactly from the shards (with a warning), as for a corrupt index at open.
                self._reopen(self._g.manifest, problem=e)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- modalities --------------------------------------------------------------------------
    def _text(self) -> TextSide:
        """The text side of this generation (counts its rows now; opens the keyword index on the
        first text search)."""
        g = self._g
        if g.text is None:
            g.text = TextSide(self.library, g.manifest, g.con, g.clips, self.cfg)
        return g.text

    def modalities(self) -> tuple[str, ...]:
        """What this library can be searched in: ``visual``, plus ``speech`` when it has
        transcripts or subtitles, ``screen`` when it has screen text."""
        return ("visual", *self._text().available())

    def _resolve_modalities(self, query: str | None, modalities: Sequence[str] | None,
                            warnings: list[str]) -> tuple[str, ...]:
        if query is None:  # an example clip or a vector: pictures only
            if modalities is not None and set(modalities) - {"visual"}:
                raise SearchError("speech and screen text are searched with a text query; an example clip "
                                  "(--like, --video/--at) searches the pictures only (--in visual)")
            return ("visual",)
        if modalities is None:
            return self.modalities()
        bad = sorted(set(modalities) - set(MODALITIES))
        if bad:
            raise SearchError(f"unknown modality {bad[0]!r}: give some of {', '.join(MODALITIES)}")
        asked = tuple(m for m in MODALITIES if m in set(modalities))
        if not asked:
            raise SearchError(f"no modality to search in: give some of {', '.join(MODALITIES)}")
        have = self._text().available() if set(asked) - {"visual"} else ()
        missing = [m for m in asked if m != "visual" and m not in have]
        for m in missing:
            what, how = _ABSENT[m]
            warnings.append(f"the library has no {what} to search (--in {m}): {how}")
        mods = tuple(m for m in asked if m == "visual" or m in have)
        if not mods:
            raise SearchError(warnings[-1])
        return mods

    # ---- search ------------------------------------------------------------------------------
    def _search(self, query: str | None, *, like_clip_id: int | None, vector: np.ndarray | None,
                k: int | None, filters: Filters | None, per_video: int | None, rerank: int,
                offset: int, merge: bool, min_score: float | None, use_default_min_score: bool,
                extra_warnings: list[str], modalities: Sequence[str] | None) -> SearchResult:
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        self.refresh()
        g = self._g
        k = self.cfg.k if k is None else int(k)
        if k <= 0 or offset < 0:
            raise SearchError("k must be positive and offset non-negative")
        filters = filters or Filters()
        per_video = per_video if per_video is not None else self.cfg.per_video
        if sum(x is not None for x in (query, like_clip_id, vector)) != 1:
            raise SearchError("give exactly one of a text query, --like CLIP_ID or a vector")
        warnings = list(g.warnings)
        mods = self._resolve_modalities(query, modalities, warnings)
        text_mods = tuple(m for m in mods if m != "visual")
        if rerank and "visual" not in mods:
            raise SearchError("--rerank re-scores the pictures' hits: search them too (--in visual,...)")
        if text_mods and min_score is not None and min_score > -1 and "visual" not in mods:
            warnings.append("--min-score applies to the pictures' cosine only; text hits are not cut by it")
        fused = len(mods) > 1
        # Each modality's list is cut deeper than the page when fused: a moment ranked 30th by
        # the pictures and 2nd by speech may make the first page.
        depth = max(offset + k, self.cfg.fusion_depth) if fused else offset + k

        visual: _Visual | None = None
        n_match: int | None = None
        if "visual" in mods:
            visual = self._visual(query, like_clip_id, vector, k=depth if fused else k, offset=0 if fused else offset,
                                  filters=filters, per_video=None if fused else per_video, rerank=rerank, merge=merge,
                                  min_score=min_score, use_default_min_score=use_default_min_score, timings=timings,
                                  warnings=warnings)
            n_match = visual.n_match
            min_score = visual.min_score
        elif not filters.is_empty():
            n_match = g.clips.mask(filters)[1]
        warnings += extra_warnings

        text_hits: list[TextHit] = []
        text_strategy = ""
        if text_mods:
            assert query is not None
            side = self._text()
            t0 = time.perf_counter()
            clip_level = filters.from_s is not None or filters.to_s is not None or filters.where is not None
            clip_mask = g.clips.mask(filters)[0] if clip_level else None
            text_hits = side.search(query, text_mods, filters, depth, clip_mask)
            timings["keyword"] = (time.perf_counter() - t0) * 1e3 - side.open_ms
            if side.open_ms:
                timings["keyword_open"], side.open_ms = side.open_ms, 0.0
            warnings += side.warnings
            text_strategy = side.strategy

        score_kind = "cosine"
        if visual is not None and not fused:
            hits = [Hit(mo.rank, mo.score, mo.clip_id, mo.video_id, mo.path, mo.start_s, mo.end_s,
                        tuple(mo.clip_ids), mo.rerank_score, scores={"visual": mo.score}) for mo in visual.moments]
            n_moments, strategy = visual.n_moments, visual.strategy
        else:
            t0 = time.perf_counter()
            hits, n_moments, score_kind = self._fuse(visual, text_hits, k=k, offset=offset, per_video=per_video)
            timings["fuse"] = (time.perf_counter() - t0) * 1e3
            strategy = f"{visual.strategy}+{text_strategy}" if visual is not None else text_strategy
        if visual is not None and visual.no_good_match and not hits:
            warnings.append(visual.no_good_match)
        timings["total"] = (time.perf_counter() - t_start) * 1e3

        info = g.model_info
        result = SearchResult(
            hits=hits, query=query, like_clip_id=like_clip_id, k=k, offset=offset, per_video=per_video,
            rerank=rerank, filters=filters, strategy=strategy, matched=n_match,
            total_moments=n_moments, timings_ms=timings, warnings=warnings,
            index_kind=g.index.meta.kind if g.index else None, generation=g.manifest.generation,
            model_name=info.name, model_fingerprint=info.fingerprint,
            min_score=min_score if visual is not None else None,
            best_score=visual.best if visual is not None else None, modalities=mods, score_kind=score_kind)
        if self.record_history:
            from vidsearch.search.history import record_search

            result.search_id = record_search(self.library, result)
        return result

    def _visual(self, query: str | None, like_clip_id: int | None, vector: np.ndarray | None, *, k: int,
                offset: int, filters: Filters, per_video: int | None, rerank: int, merge: bool,
                min_score: float | None, use_default_min_score: bool, timings: dict[str, float],
                warnings: list[str]) -> _Visual:
        """The pictures' moments: encode, filter, ANN or exact candidates, shape, re-rank, min_score."""
        g = self._g
        if query is not None and self._model is None:
            t0 = time.perf_counter()
            self.model  # noqa: B018 - created now, so that loading is not counted as encoding
            timings["load"] = (time.perf_counter() - t0) * 1e3
        if query is not None and getattr(self._model, "is_test_model", False) and not g.model_info.is_test_model:
            warnings.append(random_model_warning(g.model_info.name))  # a manifest older than the flag
        t0 = time.perf_counter()
        if query is not None:
            q = self.encode_text(query)
        elif like_clip_id is not None:
            q = self.vector_of(int(like_clip_id))
        else:
            q = np.asarray(vector, np.float32).reshape(-1)
        if q.shape != (g.model_info.embed_dim,):
            raise SearchError(f"query vector has dim {q.shape}, the library {g.model_info.embed_dim}")
        q = (q / max(float(np.linalg.norm(q)), 1e-12)).astype(np.float32)
        timings["encode"] = (time.perf_counter() - t0) * 1e3
        if min_score is None and use_default_min_score and query is not None:
            min_score = self.default_min_score()

        t0 = time.perf_counter()
        total = (g.index.ntotal if g.index else 0) + len(g.extra_ids)
        mask = None
        n_match: int | None = None
        strategy = "ann" if g.index is not None else "exact"
        selectivity = 1.0
        if not filters.is_empty():
            mask, n_match = g.clips.mask(filters)
            if like_clip_id is not None:
                pos, ok = g.clips.positions(np.array([like_clip_id], np.int64))
                if ok[0] and mask[pos[0]]:
                    mask = mask.copy()
                    mask[pos[0]] = False
                    n_match -= 1
            selectivity = n_match / max(total, 1)
            if g.index is None or (selectivity < self.cfg.overfetch_min_selectivity
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
                pos, keep = g.clips.positions(ids)
                keep &= mask[pos]
                scores, ids = scores[keep], ids[keep]
            meta = g.clips.metadata(ids)
            hits = [ClipHit(int(c), float(s), *meta[int(c)]) for s, c in zip(scores, ids, strict=True)
                    if int(c) in meta]
            if len(meta) < len(ids) and strategy in ("ann", "exact"):
                _logger.debug("%d candidates hidden (status or not in the catalog)", len(ids) - len(meta))
            moments, n_moments = shape(hits, k=k, offset=offset, per_video=per_video,
                                       max_gap_s=self.cfg.merge_gap_s, max_span_s=self.cfg.max_moment_s,
                                       score_margin=self.cfg.merge_score_margin, merge=merge)
            meta_ms += (time.perf_counter() - t0) * 1e3
            if n_moments >= need or m >= available:
                break
            m = min(m * 4, available)
        timings["ann"] = ann_ms
        timings["db"] = meta_ms
        if len(g.extra_ids) and g.index is not None:
            strategy += "+exact-new"

        if rerank and moments:
            if query is None:
                raise SearchError("--rerank needs a text query")
            t0 = time.perf_counter()
            moments = self._rerank(query, moments, rerank)
            timings["rerank"] = (time.perf_counter() - t0) * 1e3
        best = max((mo.score for mo in moments), default=None)
        no_good = None
        if min_score is not None:
            # Moments are in score order (a rerank re-orders only the page); the cut is by the
            # embedding score, the one min_score is calibrated on.
            kept = [mo for mo in moments if mo.score >= min_score]
            if moments and not kept:
                no_good = (f"no good match: the best score {best:.3f} is below the minimum score "
                           f"{min_score:g} (--min-score)")
            moments = kept
        return _Visual(moments, n_moments, strategy, n_match, best, min_score, no_good)

    def _fuse(self, visual: _Visual | None, text_hits: list[TextHit], *, k: int, offset: int,
              per_video: int | None) -> tuple[list[Hit], int, str]:
        """The page of moments of several modalities (or of one text modality): reciprocal rank
        fusion, overlapping hits of a video merged (:func:`.fusion.fuse`).

        Returns:
            (the page, moments found, what a hit's score is). When only one modality found
            anything, its moments keep their own score (cosine or BM25), not a fusion score.
        """
        from vidsearch.search.fusion import ModalityHit, fuse

        g = self._g
        lists: dict[str, list[ModalityHit]] = {}
        vrank: dict[int, int] = {}
        if visual is not None:
            lists["visual"] = []
            for i, mo in enumerate(visual.moments):
                vrank[id(mo)] = i
                lists["visual"].append(ModalityHit("visual", mo.video_id, mo.start_s, mo.end_s, mo.score, ref=mo))
        for th in text_hits:
            lists.setdefault(th.modality, []).append(ModalityHit(th.modality, th.video_id, th.start_s, th.end_s,
                                                                 th.score, source=th.source, play_s=th.start_s,
                                                                 ref=th))
        # Lists are in rank order already (a re-ranked visual list is not in cosine order).
        moments = fuse(lists, k=None, max_moment_s=self.cfg.max_moment_s, presorted=True)
        if per_video:
            count: dict[str, int] = {}
            kept = []
            for fm in moments:
                if count.get(fm.video_id, 0) < per_video:
                    kept.append(fm)
                    count[fm.video_id] = count.get(fm.video_id, 0) + 1
            moments = kept
        present = [m for m, hs in lists.items() if hs]
        single = len(present) <= 1
        kind = "rrf" if not single else ("cosine" if (present or ["visual" if visual else "speech"])[0] == "visual"
                                         else "bm25")
        hits = []
        for i, fm in enumerate(moments[offset:offset + k]):
            vis = [h.ref for h in fm.hits if h.modality == "visual"]
            best_vis = min(vis, key=lambda mo: vrank[id(mo)]) if vis else None
            text_mod = next((m for m in fm.modalities if m != "visual"), None)
            best_text = max((h.ref for h in fm.hits if h.modality == text_mod), key=lambda t: t.score,
                            default=None)
            ids = {c for mo in vis for c in mo.clip_ids} | {c for h in fm.hits if h.modality != "visual"
                                                            for c in h.ref.clip_ids}
            clip_ids = np.array(sorted(ids), np.int64)
            pos, _ok = g.clips.positions(clip_ids)
            clip_ids = clip_ids[np.lexsort((clip_ids, g.clips.start_s[pos]))]
            if best_vis is not None:
                clip_id, path = best_vis.clip_id, best_vis.path
            else:  # found by its words only: the clip the best text hit starts in
                assert best_text is not None
                clip_id, path = best_text.clip_id, g.clips.paths[g.clips.code_of(fm.video_id)]
            hits.append(Hit(
                rank=offset + i + 1, score=fm.scores[fm.modalities[0]] if single else fm.score, clip_id=int(clip_id),
                video_id=fm.video_id, path=path, start_s=round(fm.start_s, 3), end_s=round(fm.end_s, 3),
                clip_ids=tuple(int(c) for c in clip_ids),
                rerank_score=best_vis.rerank_score if best_vis is not None else None,
                modalities=fm.modalities, scores=dict(fm.scores),
                snippet=best_text.snippet if best_text is not None else None,
                play_s=round(fm.play_s, 3) if fm.play_s != fm.start_s else None))
        return hits, len(moments), kind

    def _rerank(self, query: str, moments: list[Moment], n: int) -> list[Moment]:
        """Re-score the best clip of the top ``n`` moments with the ITM head; the rest keep order."""
        from vidsearch.search.frames import clip_frames

        model = self.model
        if not isinstance(model, ItmEncoder) or not model.with_itm:
            raise SearchError("--rerank needs a model with the ITM head (create_model(..., with_itm=True))")
        head = moments[:n]
        frames = np.stack([clip_frames(self._g.con, mo.clip_id, int(model.num_frames)) for mo in head])
        scores = np.asarray(model.itm_score(frames, [query])).reshape(-1)
        for mo, s in zip(head, scores.tolist(), strict=True):
            mo.rerank_score = float(s)
        head.sort(key=lambda mo: -(mo.rerank_score or -math.inf))
        out = head + moments[n:]
        first = moments[0].rank
        for i, mo in enumerate(out):
            mo.rank = first + i
        return out


def load_text_encoder(info: ModelInfo, *, checkpoint: str | None = None, tokenizer: str | None = None,
                      device: str | None = None, with_itm: bool = False) -> TextEncoder:
    """The text encoder of a library's model (``info``: the manifest's), with the preprocessing
    the library was ingested with (its fingerprint must match; see ``preprocess_overrides``).

    On the CPU the NumPy port of the text tower (no torch import); on another device torch's text
    tower; ``with_itm`` the whole model with its ITM head (re-ranking).
    """
    from vidsearch.models.registry import preprocess_overrides

    name = info.name
    overrides = preprocess_overrides(name, info.preprocess)
    if with_itm:  # re-ranking needs the whole model with its ITM head
        from vidsearch.models import create_model

        return create_model(name, checkpoint=checkpoint, tokenizer=tokenizer, device=device, with_itm=True,
                            **overrides)
    if device in (None, "cpu"):
        # A text query needs only the text tower; on the CPU its NumPy port, which imports
        # no torch (~2.3 s of CPU on the 2-core machine; same ranking, float32 rounding).
        from vidsearch.models import create_numpy_text_encoder

        return create_numpy_text_encoder(name, checkpoint=checkpoint, tokenizer=tokenizer, **overrides)
    from vidsearch.models import create_text_encoder

    return create_text_encoder(name, checkpoint=checkpoint, tokenizer=tokenizer, device=device, **overrides)


def _catalog_identity(library: Library) -> tuple[int, int, int] | None:
    # The writer swaps catalog.duckdb by os.replace: a new inode means a new catalog.
    try:
        st = library.catalog_path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _catalog_state(library: Library, m: Manifest) -> str | None:
    """None when ``catalog.duckdb`` holds manifest ``m``'s generation; else why not, as a
    phrase after "catalog.duckdb" (read-only: one stat and one read-only open)."""
    if not library.catalog_path.is_file():
        return "is missing"
    problem = library.catalog_problem()
    if problem is not None:
        return problem
    try:
        meta = library.catalog.meta()
    except (duckdb.Error, OSError) as e:
        return f"is unreadable ({str(e).splitlines()[0][:120]})"
    if meta.get("library_id") != m.library_id:
        return "belongs to another library"
    if meta.get("generation") != str(m.generation):
        return f"is behind the manifest (generation {meta.get('generation')} of {m.generation})"
    try:
        if not library.catalog.tables_match():  # made before a table was added: read from the shards
            return "has the tables of another vidsearch version"
    except (duckdb.Error, OSError) as e:
        return f"is unreadable ({str(e).splitlines()[0][:120]})"
    return None
