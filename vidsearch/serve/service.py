"""What the web server does, without HTTP: one warm :class:`Searcher`, clip/video lookups, files.

The HTTP layer (:mod:`vidsearch.serve.app`) only parses parameters and turns the exceptions below
into status codes; everything that touches the library is here, so it is testable and the rules
are in one place:

- **Reads only the last committed generation** (docs/RELIABILITY.md F12/F13): every request calls
  ``Searcher.refresh()``, which reloads index and catalog when an ingest committed since. Like every
  searcher, it never takes the writer lock, repairs or rebuilds anything (a damaged index or catalog
  is answered around, with a warning in ``/api/status`` and every search).
- **Files by id only** (docs/RELIABILITY.md S4): a video file is found by ``video_id`` in the catalog's
  ``videos`` table (searchable status only) and served only if it is a regular file; no request
  carries a path. Thumbnails are ``LIBRARY/thumbs/<clip_id>.jpg``, named by an integer.
- **One lock** guards the Searcher and its DuckDB connection, which are not made for concurrent
  use; thumbnail extraction (an ffmpeg child), file streaming and **user SQL** run outside it. A
  ``where`` predicate is evaluated first, in a sandbox worker process
  (:func:`vidsearch.search.sandbox.matching_clip_ids`: killed at ``SearchCfg.sql_timeout_s``,
  memory capped), and only then is the lock taken; the searcher's own evaluation of the same
  predicate is then a lookup. A slow predicate holds up its own request only (RELIABILITY S4).
- **Files by the probed container** (RELIABILITY S3): a video is sent as the ``video/*`` type of
  the container the probe found (``videos.container``), never a type guessed from its name; a
  container without one is ``application/octet-stream`` as an attachment. (A real H.264 file
  named ``holiday.html`` was served as ``text/html``: markup in its metadata ran in the page's
  origin.)
- **Search history off the request path**: recording a search opens ``history.duckdb`` and
  commits (~90 ms on the 2-core dev machine, 10x the search itself), so a background thread
  records them in order; when it falls behind by ``HISTORY_QUEUE`` searches, newer ones are
  dropped with a warning rather than slowing every query.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import math
import os
import queue
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidsearch.library import Library
from vidsearch.schemas.config import SearchCfg
from vidsearch.schemas.tables import SEARCHABLE_STATUSES
from vidsearch.schemas.times import round_ms
from vidsearch.search.output import hit_json
from vidsearch.search.sandbox import (
    QueryFailed,
    QueryRefused,
    matching_clip_ids,
    recent_queries,
    run_query,
    sql_pool,
)
from vidsearch.search.searcher import Searcher
from vidsearch.search.timefmt import format_hms
from vidsearch.search.types import Filters, Hit, SearchError, SearchResult

_logger = logging.getLogger(__name__)

HISTORY_QUEUE = 1000

# Media type by the probed container (ffmpeg's demuxer name in videos.container, e.g.
# "mov,mp4,m4a,3gp,3g2,mj2" or "matroska,webm"), never by the file name. QuickTime/MP4 share one
# demuxer and browsers play H.264 in either as video/mp4 (Firefox refuses video/quicktime).
_CONTAINER_TYPES = {"mp4": "video/mp4", "mov": "video/mp4", "matroska": "video/x-matroska", "webm": "video/webm",
                    "avi": "video/x-msvideo", "mpegts": "video/mp2t", "mpeg": "video/mpeg", "flv": "video/x-flv",
                    "ogg": "video/ogg", "asf": "video/x-ms-asf"}
# Example queries offered by the page: at most this many, each at most this long.
MAX_EXAMPLES = 5
MAX_EXAMPLE_CHARS = 120
# world.json of a demo library (`vidsearch demo`) is read for its captions up to this size.
MAX_WORLD_BYTES = 16 * 2**20


class ServeError(Exception):
    """A request that cannot be answered; ``status`` is the HTTP status code."""

    status = 400


class BadRequest(ServeError):
    status = 400


class NotFound(ServeError):
    status = 404


class Unavailable(ServeError):
    status = 503


@dataclass(frozen=True)
class SearchParams:
    """One search request, already type-checked by the HTTP layer."""

    query: str | None = None
    like_clip_id: int | None = None
    k: int = 24
    offset: int = 0
    per_video: int | None = None
    merge: bool = True
    filters: Filters = Filters()         # folder and file dates included: all bound parameters
    min_score: float | None = None       # None: the model's default (text queries)
    modalities: tuple[str, ...] | None = None  # None: every modality the library has (text queries)


def media_type(container: str | None) -> str | None:
    """The ``video/*`` type of a probed container (``videos.container``), or None for any other."""
    names = [n.strip().lower() for n in (container or "").split(",")]
    if "mp4" in names:
        return "video/mp4"
    return next((_CONTAINER_TYPES[n] for n in names if n in _CONTAINER_TYPES), None)


@dataclass(frozen=True)
class VideoFile:
    """What the file endpoint sends: a checked regular file and how to label it."""

    path: str
    stat: os.stat_result
    media_type: str            # video/* from the probed container, else application/octet-stream
    attachment: str | None     # download file name when the type is not video/* (never the real name)


def _good_example(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    t = " ".join(text.split())
    return t if t and len(t) <= MAX_EXAMPLE_CHARS and t.isprintable() else None


def demo_captions(library: Library, limit: int = MAX_EXAMPLES) -> list[str]:
    """Scene captions of the demo world beside a library made by ``vidsearch demo`` (its
    ``world/world.json``), or []. The file is untrusted like the rest of the folder: size, types
    and lengths are checked, anything odd is skipped."""
    path = library.root / "world" / "world.json"
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_WORLD_BYTES:
            return []
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return []
    out: list[str] = []
    videos = doc.get("videos") if isinstance(doc, dict) else None
    for v in videos if isinstance(videos, list) else []:
        scenes = v.get("scenes") if isinstance(v, dict) else None
        for sc in scenes if isinstance(scenes, list) else []:
            c = _good_example(sc.get("caption") if isinstance(sc, dict) else None)
            if c is not None and c not in out:
                out.append(c)
                if len(out) >= limit:
                    return out
    return out


def _json_value(v: Any) -> Any:
    """A catalog value for strict JSON: dates as ISO text, a float that is not finite (a damaged
    or hostile shard can hold one) as null; Starlette refuses NaN with a 500 otherwise."""
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _ms(v: Any) -> Any:
    """Times in seconds rounded to ms, as in search results (4.004, not 4.0040000000000004)."""
    return round_ms(v) if isinstance(v, float) else v


class LibraryService:
    """The library as the web server sees it: search, metadata, files, thumbnails, status.

    Args:
        library: the library to serve.
        model: an already created text encoder (tests); else created from ``model_name`` or the
            library's manifest on :meth:`start`.
        model_name, checkpoint, tokenizer, device: as for ``vidsearch search``.
        record_history: save each search in ``history.duckdb`` (like the CLI).
        cfg: search settings.
    """

    def __init__(self, library: Library, *, model: Any = None, model_name: str | None = None,
                 checkpoint: str | None = None, tokenizer: str | None = None, device: str | None = None,
                 record_history: bool = True, cfg: SearchCfg | None = None) -> None:
        self.library = library
        self.cfg = cfg or SearchCfg()
        self.record_history = record_history
        self._model = model
        self._model_name = model_name
        self._checkpoint, self._tokenizer, self._device = checkpoint, tokenizer, device
        self._searcher: Searcher | None = None
        self._lock = threading.Lock()
        self.started_at = time.time()
        self._history: queue.Queue[SearchResult | None] = queue.Queue(HISTORY_QUEUE)
        self._history_dropped = 0
        self._history_thread: threading.Thread | None = None
        self._examples: list[str] = []
        self._recent: collections.deque[str] = collections.deque(maxlen=MAX_EXAMPLES)
        if record_history:
            self._history_thread = threading.Thread(target=self._record_history, name="vidsearch-history",
                                                    daemon=True)
            self._history_thread.start()

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, warm: bool = True) -> None:
        """Open the searcher and load the text encoder now, so the first query is not the slow one.

        A library without clips yet (its first ingest is running) is not an error: searches answer
        503 until a commit appears.
        """
        self.library.read_manifest()  # LibraryError: not a library at all
        # Before the history thread writes: the reader would hold the file it writes.
        self._examples = demo_captions(self.library)
        for q in reversed(recent_queries(self.library, MAX_EXAMPLES)):
            if (g := _good_example(q)) is not None and g not in self._recent:
                self._recent.appendleft(g)
        # The first `where` then does not wait for a worker's start-up.
        sql_pool(self.library, memory_limit=self.cfg.sql_memory_limit, threads=self.cfg.sql_threads).prestart()
        with self._lock:
            try:
                s = self._get_searcher()
            except Unavailable as e:
                _logger.warning("%s", e)
                return
            if warm:
                t0 = time.perf_counter()
                s.encode_text("warm up")  # loads weights + tokenizer, runs one forward pass
                self._model = s.model
                _logger.info("text encoder %s warm in %.1f s", self._model.name, time.perf_counter() - t0)
                # Re-ranking and exact filtered search touch many vector-cache files: check them
                # all now rather than on the first queries.
                t0 = time.perf_counter()
                s.check_vector_cache()
                _logger.info("vector cache checked in %.1f s", time.perf_counter() - t0)

    def close(self) -> None:
        """Close the searcher; searches still queued for the history are written first."""
        if self._history_thread is not None:
            self._history.put(None)
            self._history_thread.join(timeout=10)
            if self._history_thread.is_alive():
                _logger.warning("stopped before %d searches were recorded in the history", self._history.qsize())
            self._history_thread = None
        with self._lock:
            if self._searcher is not None:
                self._searcher.close()
                self._searcher = None
        # Its user-SQL workers end with the server, not only at interpreter exit.
        sql_pool(self.library, memory_limit=self.cfg.sql_memory_limit, threads=self.cfg.sql_threads).close()

    def _get_searcher(self) -> Searcher:
        """The searcher at the last committed generation (lock held by the caller)."""
        if self._searcher is None:
            if self._model is None and self._model_name is not None:
                from vidsearch.models import create_model

                self._model = create_model(self._model_name, checkpoint=self._checkpoint, tokenizer=self._tokenizer,
                                           device=self._device)
            try:
                self._searcher = Searcher(self.library, self._model, cfg=self.cfg, record_history=False,
                                          checkpoint=self._checkpoint, tokenizer=self._tokenizer, device=self._device)
            except SearchError as e:  # "the library has no clips yet"
                raise Unavailable(str(e)) from None
        else:
            self._searcher.refresh()
        return self._searcher

    def _rows(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        # The searcher's locked read-only sandbox, at its generation; the caller holds self._lock.
        assert self._searcher is not None and self._searcher.connection is not None
        try:
            return run_query(self._searcher.connection, sql, params, timeout_s=self.cfg.sql_timeout_s).to_pylist()
        except (QueryRefused, QueryFailed) as e:
            raise BadRequest(str(e)) from None

    # ---- search ------------------------------------------------------------------------------
    def search(self, p: SearchParams) -> tuple[SearchResult, bool]:
        """Run one search; returns the result (at most ``k`` hits) and whether more exist."""
        if (p.query is None) == (p.like_clip_id is None):
            raise BadRequest("give exactly one of q (text) or like (a clip id)")
        if p.query is not None and not p.query.strip():
            raise BadRequest("q is empty")
        f = p.filters
        try:
            f.check()
        except SearchError as e:
            raise BadRequest(str(e)) from None
        if f.where:
            # User SQL, before the lock (see the module docstring): a slow or failing predicate
            # ends here without holding up any other request.
            try:
                matching_clip_ids(self.library, f.where, timeout_s=self.cfg.sql_timeout_s,
                                  memory_limit=self.cfg.sql_memory_limit, threads=self.cfg.sql_threads)
            except (QueryRefused, QueryFailed) as e:
                raise BadRequest(str(e)) from None
        with self._lock:
            s = self._get_searcher()
            if p.like_clip_id is not None:
                self._clip_row(p.like_clip_id)  # 404 for an unknown clip, before the search
            try:
                # One extra moment tells whether a next page exists.
                r = s.search(p.query, like_clip_id=p.like_clip_id, k=p.k + 1, filters=p.filters,
                             per_video=p.per_video, offset=p.offset, merge=p.merge, min_score=p.min_score,
                             modalities=p.modalities)
            except (QueryRefused, QueryFailed) as e:
                raise BadRequest(str(e)) from None
            except SearchError as e:
                raise BadRequest(str(e)) from None
        more = len(r.hits) > p.k
        r.hits = r.hits[:p.k]
        r.k = p.k
        if p.query and r.hits and (g := _good_example(p.query)) is not None:
            with self._lock:
                if g in self._recent:
                    self._recent.remove(g)
                self._recent.appendleft(g)
        if self.record_history:
            try:
                self._history.put_nowait(r)
            except queue.Full:
                self._history_dropped += 1
                if self._history_dropped in (1, 10, 100) or self._history_dropped % 1000 == 0:
                    _logger.warning("search history is behind; %d searches not recorded", self._history_dropped)
        return r, more

    def _record_history(self) -> None:
        from vidsearch.search.history import record_search

        while (r := self._history.get()) is not None:
            record_search(self.library, r)  # logs and returns None on failure; never raises for I/O

    @staticmethod
    def hit_record(h: Hit) -> dict[str, Any]:
        """One hit as JSON: the fields of ``search --json`` (ids as strings) plus the page's."""
        return {**hit_json(h), "name": os.path.basename(h.path), "folder": os.path.dirname(h.path),
                "thumbnail_url": f"/api/clips/{h.clip_id}/thumbnail",
                "video_url": f"/api/videos/{h.video_id}/file"}

    # ---- metadata ------------------------------------------------------------------------------
    _STATUS_IN = f"videos.status IN ({', '.join('?' * len(SEARCHABLE_STATUSES))})"

    def _clip_row(self, clip_id: int) -> dict[str, Any]:
        rows = self._rows(
            "SELECT clips.clip_id, clips.video_id, videos.path, videos.path_bytes, clips.clip_index, "
            "clips.start_s, clips.end_s, clips.start_frame, clips.end_frame, clips.padded, clips.segment, "
            "clips.shot_index, clips.model FROM clips JOIN videos USING (video_id) "
            f"WHERE clips.clip_id = ? AND {self._STATUS_IN}", [int(clip_id), *SEARCHABLE_STATUSES])
        if not rows:
            raise NotFound(f"clip {clip_id} is not in this library")
        return rows[0]

    def clip(self, clip_id: int) -> dict[str, Any]:
        """Metadata of one clip of a searchable video."""
        with self._lock:
            self._get_searcher()
            row = self._clip_row(clip_id)
        row.pop("path_bytes")
        row = {k: _json_value(val) for k, val in row.items()}
        row["clip_id"] = str(row["clip_id"])
        row["start_s"], row["end_s"] = _ms(row["start_s"]), _ms(row["end_s"])
        row.update(name=os.path.basename(row["path"]),
                   start=None if row["start_s"] is None else format_hms(row["start_s"]),
                   end=None if row["end_s"] is None else format_hms(row["end_s"]),
                   thumbnail_url=f"/api/clips/{clip_id}/thumbnail",
                   video_url=f"/api/videos/{row['video_id']}/file")
        return row

    def video(self, video_id: str) -> dict[str, Any]:
        """Metadata of one searchable video and the list of its clips."""
        with self._lock:
            self._get_searcher()
            rows = self._rows(
                "SELECT video_id, path, size_bytes, mtime, duration_s, fps, frame_count, width, height, codec, "
                "container, rotation, coverage, num_clips, status FROM videos "
                f"WHERE video_id = ? AND {self._STATUS_IN}", [video_id, *SEARCHABLE_STATUSES])
            if not rows:
                raise NotFound(f"video {video_id} is not in this library")
            clips = self._rows("SELECT clip_id, start_s, end_s FROM clips WHERE video_id = ? ORDER BY start_s",
                               [video_id])
        v = {k: _json_value(val) for k, val in rows[0].items()}
        v["duration_s"] = _ms(v["duration_s"])
        v["name"] = os.path.basename(v["path"])
        v["file_url"] = f"/api/videos/{video_id}/file"
        v["clips"] = [{"clip_id": str(c["clip_id"]), "start_s": _ms(_json_value(c["start_s"])),
                       "end_s": _ms(_json_value(c["end_s"]))} for c in clips]
        return v

    def video_file(self, video_id: str) -> VideoFile:
        """A searchable video's file, checked to be a regular file, with its media type."""
        with self._lock:
            self._get_searcher()
            rows = self._rows(f"SELECT path_bytes, container FROM videos WHERE video_id = ? AND {self._STATUS_IN}",
                              [video_id, *SEARCHABLE_STATUSES])
        if not rows:
            raise NotFound(f"video {video_id} is not in this library")
        path = os.fsdecode(rows[0]["path_bytes"])
        try:
            st = os.stat(path)
        except OSError as e:
            raise NotFound(f"video {video_id}: its file is gone or unreadable ({e.strerror})") from None
        # A FIFO or device swapped in at that path would block or stream forever (B22).
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"video {video_id}: its path is not a regular file")
        media = media_type(rows[0]["container"])
        if media is None:
            return VideoFile(path, st, "application/octet-stream", f"{video_id}.bin")
        return VideoFile(path, st, media, None)

    def thumbnail(self, clip_id: int) -> Path:
        """``LIBRARY/thumbs/<clip_id>.jpg``, extracted on first request (the clip's middle sampled frame)."""
        from vidsearch.library import LibraryError
        from vidsearch.search.output import make_thumbnails, thumbnail_frames

        final = self.library.thumbs_dir / f"{int(clip_id)}.jpg"
        with self._lock:
            s = self._get_searcher()
            self._clip_row(clip_id)  # 404 before the cache: a stale thumb of a removed clip is not served
            frames = thumbnail_frames(s.connection, [int(clip_id)])
        # S4: a symlinked thumbs/ (or thumb) could point anywhere; make_thumbnails refuses the folder.
        if final.is_file() and not final.is_symlink() and not self.library.thumbs_dir.is_symlink():
            return final
        try:
            made = make_thumbnails(self.library, frames)
        except (OSError, ValueError, LibraryError) as e:
            raise Unavailable(f"no thumbnail for clip {clip_id}: {e}") from None
        out = made.get(int(clip_id))
        if out is None:
            raise Unavailable(f"no thumbnail for clip {clip_id} (the video could not be decoded; see the log)")
        return out

    # ---- status --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What the server serves: generation, model, counts, index, warnings, a running writer."""
        m = self.library.read_manifest()
        out: dict[str, Any] = {
            "library": str(self.library.root), "library_id": m.library_id, "generation": m.generation,
            "model": None if m.model is None else {"name": m.model.name, "fingerprint": m.model.fingerprint,
                                                   "embed_dim": m.model.embed_dim,
                                                   "is_test_model": m.model.is_test_model},
            "shards": len(m.shards), "ready": False, "videos": {}, "clips": 0, "index": None, "modalities": [],
            "warnings": [], "writer": self._writer(), "uptime_s": round(time.time() - self.started_at, 1),
            "examples": self.examples(),
        }
        with self._lock:
            try:
                s = self._get_searcher()
            except Unavailable as e:
                out["warnings"] = [str(e)]
                return out
            out["ready"] = True
            out["generation"] = s.manifest.generation
            out["videos"] = {r["status"]: r["n"] for r in self._rows(
                "SELECT status, count(*) AS n FROM videos GROUP BY status ORDER BY status", [])}
            out["clips"] = self._rows(f"SELECT count(*) AS n FROM clips JOIN videos USING (video_id) "
                                      f"WHERE {self._STATUS_IN}", list(SEARCHABLE_STATUSES))[0]["n"]
            out["index"] = None if s.index is None else {"kind": s.index.meta.kind, "ntotal": int(s.index.ntotal)}
            out["modalities"] = list(s.modalities())
            out["warnings"] = list(s.warnings)
            out["model_loaded"] = self._model is not None or s.model_loaded
        return out

    def examples(self) -> list[str]:
        """Queries to offer as examples: the demo world's captions (a demo library), else recent
        searches (this server's, then the history's), else none (the page has a generic one)."""
        with self._lock:
            recent = list(self._recent)
        return (self._examples or recent)[:MAX_EXAMPLES]

    def _writer(self) -> dict[str, Any] | None:
        """The ingest/index process holding the writer lock, if any (read only, never taken): a
        record a killed writer left in ``.lock`` is not a writer (the kernel freed its lock)."""
        return self.library.writer()
