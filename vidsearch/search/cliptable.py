"""The clip table of one library generation: every clip at a *position*, its span, its video,
and the filters over them as boolean masks.

Positions are the searcher's coordinate system: first the index's vector-store rows (store
order, so a video's clips are one run and an exact subset is scored sequentially), then the
clips of shards the index does not cover yet (``extra_ids`` order), then catalog clips that
have no vector at all. A filter becomes a mask over positions; the ANN and exact paths use it
directly. ~40 bytes per clip, loaded once per generation from the same read-only DuckDB sandbox
the filters query, so both agree on which clips exist and which videos are searchable.

All SQL of the search layer over the catalog lives here. Every value is a bound parameter, and
the only names pasted into SQL are the tables this module chose itself. A ``--where`` predicate
is user SQL and never runs in this process: the ``where_ids`` callable given at load
(:func:`vidsearch.search.sandbox.matching_clip_ids`, a killable, memory-capped worker process)
returns the clip ids it matches.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vidsearch.schemas.tables import SEARCHABLE_STATUSES
from vidsearch.search.sandbox import QueryFailed, QueryRefused, run_query
from vidsearch.search.timefmt import format_hms, format_span
from vidsearch.search.types import Filters, SearchError

_logger = logging.getLogger(__name__)

_STATUS_IN = f"videos.status IN ({', '.join('?' * len(SEARCHABLE_STATUSES))})"


class ClipMeta(NamedTuple):
    """What a hit needs to know about its clip."""

    video_id: str
    path: str
    start_s: float
    end_s: float


class ClipAt(NamedTuple):
    """The clip of a video at a time, and a warning when the time is not inside any clip."""

    clip_id: int
    warning: str | None


class ClipTable:
    """Clip positions, spans, video codes and filter masks of one generation.

    Build with :meth:`load`; the connection must stay open as long as the table is used (filters
    and :meth:`clip_at` query it).

    Args:
        con: the locked read-only sandbox of this generation.
        ids: (n,) int64 clip id at each position.
        video: (n,) int32 code of its video (index into ``video_ids``), -1 when not in the catalog.
        start_s, end_s: (n,) float64 clip span in its video, rounded to ms; NaN without a catalog row.
        n_store: positions [0, n_store) are the index's vector-store rows.
        n_extra: positions [n_store, n_store + n_extra) are clips of shards the index does not cover.
        video_ids, paths: per video code.
        searchable: (videos,) bool, the video's status is searchable.
        base: (clips, videos) base table names addressed by ``rowid``, None when only views exist.
        video_row_code: catalog ``videos.rowid`` -> video code (when ``base``).
        id_order: (ids sorted, the position of each), when the caller has it.
        where_ids: evaluates a ``--where`` predicate to the clip ids it matches (raises
            QueryRefused/QueryFailed); None refuses every predicate.
        timeout_s: wall-clock limit of filter queries.
        cache_size: filter masks kept (LRU); 0 = none.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, *, ids: np.ndarray, video: np.ndarray,
                 start_s: np.ndarray, end_s: np.ndarray, n_store: int, n_extra: int,
                 video_ids: pa.Array, paths: list[str], searchable: np.ndarray,
                 base: tuple[str, str] | None, video_row_code: np.ndarray,
                 id_order: tuple[np.ndarray, np.ndarray] | None = None,
                 where_ids: Callable[[str], np.ndarray] | None = None,
                 timeout_s: float | None = 30.0, cache_size: int = 16) -> None:
        self.con = con
        self.ids = ids
        self.video = video
        self.start_s = start_s
        self.end_s = end_s
        self.n_store = n_store
        self.n_extra = n_extra
        self.video_id_array = video_ids
        self.video_ids: list[str] = video_ids.to_pylist()
        self.paths = paths
        self.searchable = searchable
        self.base = base
        self.video_row_code = video_row_code
        self.where_ids = where_ids
        self.timeout_s = timeout_s
        self.cache_size = int(cache_size)
        self._masks: OrderedDict[Filters, tuple[np.ndarray, int]] = OrderedDict()
        # Id lookup: ids sorted, and the position of each (10M ids take a second to sort, so
        # the vector store's own order is reused when given).
        if id_order is None:
            perm = np.argsort(ids, kind="stable")
            id_order = (ids[perm], perm)
        self._id_sorted: np.ndarray = id_order[0]
        self._id_perm: np.ndarray = id_order[1]
        # Runs of equal video code along positions (a video's clips are consecutive rows):
        # a per-video mask becomes a clip mask by np.repeat over ~#videos runs.
        n = len(ids)
        change = np.flatnonzero(np.diff(video)) + 1
        starts = np.concatenate(([0], change)) if n else np.empty(0, np.int64)
        self._run_video: np.ndarray = video[starts] if n else np.empty(0, np.int32)
        self._run_len: np.ndarray = np.diff(np.append(starts, n)).astype(np.int64)
        self._run_start: np.ndarray = starts.astype(np.int64) if n else np.empty(0, np.int64)
        # Built on first use by text searches (video id -> code; runs sorted by video).
        self._code: dict[str, int] | None = None
        self._runs_by_video: tuple[np.ndarray, np.ndarray] | None = None
        self._vmasks: OrderedDict[Filters, np.ndarray] = OrderedDict()

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection, store_ids: np.ndarray, store_order: np.ndarray,
             extra_ids: np.ndarray, *, attached_is_current: bool = True,
             where_ids: Callable[[str], np.ndarray] | None = None, timeout_s: float | None = 30.0,
             cache_size: int = 16) -> ClipTable:
        """Read clip spans and video paths from the sandbox and lay them out at positions.

        Args:
            con: the sandbox (``clips`` and ``videos`` resolve in it).
            store_ids: the vector store's clip ids in store order (empty without an index).
            store_order: the permutation sorting ``store_ids`` (``VectorStore.store_order``).
            extra_ids: clip ids of the shards the index does not cover, in the order searched.
            attached_is_current: the catalog attached as ``catalog`` holds the manifest's
                generation; when it lags, only the sandbox's views (completed from the shards) are read.
            where_ids, timeout_s, cache_size: see the class.
        """
        clips: pa.Table | None = None
        base: tuple[str, str] | None = None
        # Base tables give row ids (per-video filters answered without an id lookup); the catalog
        # is attached as `catalog`, an in-memory one lives in `main`; views are the fallback.
        for schema in ("catalog.main", "main") if attached_is_current else ("main",):
            try:
                clips = run_query(con, f"SELECT rowid AS rid, clip_id, video_id, start_s, end_s FROM {schema}.clips",
                                  timeout_s=None)
                base = (f"{schema}.clips", f"{schema}.videos")
                break
            except QueryFailed:
                continue
        if clips is None:
            clips = run_query(con, "SELECT clip_id, video_id, start_s, end_s FROM clips", timeout_s=None)
        vids = run_query(con, f"SELECT {'rowid AS rid, ' if base else ''}video_id, path, status IN ("
                         + ", ".join("?" * len(SEARCHABLE_STATUSES)) + ") AS ok FROM "
                         + (base[1] if base else "videos"), list(SEARCHABLE_STATUSES), timeout_s=None)
        video_row_code = np.empty(0, np.int64)
        if base is not None:
            vrid = vids.column("rid").to_numpy()
            video_row_code = np.full(int(vrid.max()) + 1 if len(vrid) else 0, -1, np.int64)
            video_row_code[vrid] = np.arange(len(vrid))
        cat_ids = clips.column("clip_id").to_numpy().astype(np.int64)
        code = pc.index_in(clips.column("video_id"), value_set=vids.column("video_id"))
        cat_video = pc.fill_null(code, -1).to_numpy().astype(np.int32)

        vec_ids = np.concatenate([store_ids, extra_ids]).astype(np.int64, copy=False)
        perm = store_order if len(extra_ids) == 0 else np.argsort(vec_ids, kind="stable")
        sorted_v = vec_ids[perm]
        pos = np.minimum(np.searchsorted(sorted_v, cat_ids), max(len(sorted_v) - 1, 0))
        found = sorted_v[pos] == cat_ids if len(sorted_v) else np.zeros(len(cat_ids), bool)
        n_other = int((~found).sum())
        cat_pos = np.empty(len(cat_ids), np.int64)
        cat_pos[found] = perm[pos[found]]
        cat_pos[~found] = len(vec_ids) + np.arange(n_other)
        n = len(vec_ids) + n_other
        ids = np.concatenate([vec_ids, cat_ids[~found]])
        video = np.full(n, -1, np.int32)
        video[cat_pos] = cat_video
        # Rounded to ms: frame times such as 4.004 (30000/1001 fps) are not exact in binary and
        # printed as 4.0040000000000004; every hit, export and the history get these values.
        start_s = np.full(n, np.nan)
        start_s[cat_pos] = np.round(clips.column("start_s").to_numpy(zero_copy_only=False), 3)
        end_s = np.full(n, np.nan)
        end_s[cat_pos] = np.round(clips.column("end_s").to_numpy(zero_copy_only=False), 3)
        id_order = (sorted_v, perm) if n_other == 0 else None
        return cls(con, ids=ids, video=video, start_s=start_s, end_s=end_s, n_store=len(store_ids),
                   n_extra=len(extra_ids), video_ids=vids.column("video_id").combine_chunks(),
                   paths=vids.column("path").to_pylist(),
                   searchable=np.asarray(vids.column("ok").to_numpy(zero_copy_only=False), bool),
                   base=base, video_row_code=video_row_code, id_order=id_order, where_ids=where_ids,
                   timeout_s=timeout_s, cache_size=cache_size)

    @property
    def n(self) -> int:
        """Number of positions."""
        return len(self.ids)

    # ---- lookups -------------------------------------------------------------------------
    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, found) of clip ids."""
        if len(self._id_sorted) == 0:
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        at = np.minimum(np.searchsorted(self._id_sorted, ids), len(self._id_sorted) - 1)
        return self._id_perm[at], self._id_sorted[at] == ids

    def metadata(self, ids: np.ndarray) -> dict[int, ClipMeta]:
        """What hits need of the ids that are in the catalog and whose video is searchable."""
        if len(ids) == 0:
            return {}
        pos, ok = self.positions(ids)
        vcode = self.video[pos]
        ok &= vcode >= 0
        ok[ok] &= self.searchable[vcode[ok]]
        return {int(c): ClipMeta(self.video_ids[v], self.paths[v], float(self.start_s[p]), float(self.end_s[p]))
                for c, p, v in zip(ids[ok].tolist(), pos[ok].tolist(), vcode[ok].tolist(), strict=True)}

    def clip_at(self, video_id: str, at_s: float, *, name: str | None = None) -> ClipAt:
        """The clip of ``video_id`` containing second ``at_s``, else the nearest one, with a
        warning naming what was used instead (a time past the video's end, or in a gap).

        Raises:
            SearchError: the video has no clips in this library.
        """
        t = self._query("SELECT clips.clip_id, clips.start_s, clips.end_s, videos.duration_s "
                        "FROM clips JOIN videos USING (video_id) WHERE clips.video_id = ? "
                        "ORDER BY (clips.start_s <= ? AND ? < clips.end_s) DESC, "
                        "abs((clips.start_s + clips.end_s) / 2 - ?), clips.start_s LIMIT 1",
                        [video_id, at_s, at_s, at_s])
        if t.num_rows == 0:
            raise SearchError(f"{name or 'video ' + video_id} has no clips in this library")
        row = t.to_pylist()[0]
        start, end, duration = row["start_s"], row["end_s"], row["duration_s"]
        if start <= at_s < end:
            return ClipAt(int(row["clip_id"]), None)
        what = name or f"video {video_id}"
        if duration is not None and at_s >= duration:
            why = f"{format_hms(at_s)} is past the end of {what} ({format_hms(duration)})"
        else:
            why = f"no clip of {what} contains {format_hms(at_s)}"
        return ClipAt(int(row["clip_id"]), f"{why}; searching like its nearest clip {format_span(start, end)}")

    # ---- per video (text hits) -------------------------------------------------------------
    def code_of(self, video_id: str) -> int:
        """The video code of ``video_id`` (index into ``video_ids``), -1 when not in the catalog."""
        if self._code is None:
            self._code = {v: i for i, v in enumerate(self.video_ids)}
        return self._code.get(video_id, -1)

    def video_positions(self, code: int) -> np.ndarray:
        """Positions of the clips of video ``code`` (any order; empty for -1 or no clips).

        A video's clips are a few runs of positions (index rows, then newer shards, then clips
        without a vector); the runs sorted by video, once per table, answer this by binary search.
        """
        if code < 0:
            return np.empty(0, np.int64)
        if self._runs_by_video is None:
            order = np.argsort(self._run_video, kind="stable")
            self._runs_by_video = (self._run_video[order], order)
        rv, order = self._runs_by_video
        lo, hi = np.searchsorted(rv, code, "left"), np.searchsorted(rv, code, "right")
        runs = order[lo:hi]
        if len(runs) == 0:
            return np.empty(0, np.int64)
        return np.concatenate([np.arange(self._run_start[r], self._run_start[r] + self._run_len[r]) for r in runs])

    def video_mask(self, f: Filters) -> np.ndarray:
        """Per video code: the video is searchable and passes the per-video part of ``f`` (path,
        folder, durations, dates, video id). One slot more than there are videos (always False)."""
        vf = f.video_part()
        hit = self._vmasks.get(vf)
        if hit is not None:
            self._vmasks.move_to_end(vf)
            return hit
        vf.check()
        vmask = self._video_mask(vf)
        vmask.flags.writeable = False
        self._vmasks[vf] = vmask
        while len(self._vmasks) > max(self.cache_size, 1):
            self._vmasks.popitem(last=False)
        return vmask

    # ---- filters -------------------------------------------------------------------------
    def _query(self, sql: str, params: list[Any]) -> pa.Table:
        try:
            return run_query(self.con, sql, params, timeout_s=self.timeout_s)
        except (QueryRefused, QueryFailed) as e:
            raise SearchError(str(e)) from None

    @staticmethod
    def video_conditions(f: Filters) -> tuple[str, list[Any]]:
        """SQL conditions over ``videos`` for the per-video part of ``f`` (status included), and
        their parameters. Nothing from ``f`` is pasted into the text."""
        conds = [_STATUS_IN]
        params: list[Any] = list(SEARCHABLE_STATUSES)
        if f.path_glob is not None:
            conds.append("videos.path GLOB ?")
            params.append(f.path_glob)
        if f.folder is not None:
            # A prefix (absolute folder) or a path component at any depth (relative name):
            # plain string functions, so '*', '?' and '[' in folder names need no escaping.
            folder = f.folder.strip().rstrip("/")
            if folder.startswith("/"):
                conds.append("starts_with(videos.path, ?)")
            else:
                conds.append("(starts_with(videos.path, ?) OR contains(videos.path, ?))")
                params.append(folder.lstrip("/") + "/")
                folder = "/" + folder.lstrip("/")
            params.append(folder + "/")
        if f.min_duration_s is not None:
            conds.append("videos.duration_s >= ?")
            params.append(float(f.min_duration_s))
        if f.max_duration_s is not None:
            conds.append("videos.duration_s <= ?")
            params.append(float(f.max_duration_s))
        # The file date in UTC, as instants: the sandbox's time zone is whatever the machine's is,
        # so no CAST(... AS DATE) of a TIMESTAMPTZ.
        if f.date_from is not None:
            conds.append("videos.mtime >= ?")
            params.append(_utc_midnight(f.date_from))
        if f.date_to is not None:
            conds.append("videos.mtime < ?")
            params.append(_utc_midnight(f.date_to + dt.timedelta(days=1)))
        if f.video_id is not None:
            conds.append("videos.video_id = ?")
            params.append(f.video_id)
        return " AND ".join(conds), params

    def matching_ids(self, f: Filters) -> np.ndarray:
        """Sorted clip ids matching ``f`` (searchable videos only)."""
        mask, _ = self.mask(f)
        return np.sort(self.ids[mask])

    def clear_cache(self) -> None:
        """Forget cached filter results (benchmarks time the cold path with it)."""
        self._masks.clear()
        self._vmasks.clear()

    def mask(self, f: Filters) -> tuple[np.ndarray, int]:
        """(read-only bool mask over positions, count) of the clips matching ``f``.

        Per-video conditions (path, folder, duration, date, status, video id) are evaluated by
        DuckDB over the small ``videos`` table and expanded to clips through the per-video
        position runs; clip spans on the in-memory arrays; ``where`` by DuckDB, returning catalog
        row ids (no sort, no id lookup), and without the clips-videos join when the predicate
        binds to ``clips`` alone. Results are cached per filter (LRU of ``cache_size``): a server
        answering the same filter again skips it all.

        Raises:
            SearchError: contradictory bounds, a bad ``where``, a filter query that failed.
        """
        hit = self._masks.get(f)
        if hit is not None:
            self._masks.move_to_end(f)
            return hit
        f.check()
        vmask = self._video_mask(f.video_part())
        mask = np.repeat(vmask[self._run_video], self._run_len)
        if f.from_s is not None:
            mask &= self.end_s > f.from_s
        if f.to_s is not None:
            mask &= self.start_s < f.to_s
        if f.where is not None:
            mask &= self._where_mask(f.where)
        mask.flags.writeable = False
        out = (mask, int(np.count_nonzero(mask)))
        if self.cache_size > 0:
            self._masks[f] = out
            while len(self._masks) > self.cache_size:
                self._masks.popitem(last=False)
        return out

    def _video_mask(self, vf: Filters) -> np.ndarray:
        """Per video code (plus a last slot for clips of unknown videos, always False)."""
        vmask = np.zeros(len(self.video_ids) + 1, bool)
        if vf.is_empty():  # status only: known
            vmask[:-1] = self.searchable
            return vmask
        cond, params = self.video_conditions(vf)
        if self.base is not None:
            t = self._query(f"SELECT videos.rowid FROM {self.base[1]} AS videos WHERE {cond}", params)
            vmask[self.video_row_code[t.column(0).to_numpy()]] = True
        else:
            t = self._query(f"SELECT videos.video_id FROM videos WHERE {cond}", params)
            codes = pc.index_in(t.column(0), value_set=self.video_id_array)
            vmask[pc.drop_null(codes).to_numpy().astype(np.int64)] = True
        return vmask

    def _where_mask(self, where: str) -> np.ndarray:
        """Positions satisfying the ``--where`` predicate (status is checked by the caller)."""
        if self.where_ids is None:
            raise SearchError("--where is not available here")
        try:
            ids = self.where_ids(where)
        except (QueryRefused, QueryFailed) as e:
            raise SearchError(str(e)) from None
        mask = np.zeros(self.n, bool)
        pos, ok = self.positions(np.asarray(ids, np.int64))
        mask[pos[ok]] = True
        return mask


def _utc_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
