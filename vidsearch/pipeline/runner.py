"""``run_ingest``: discover -> resume filter -> (plan, decode, embed on an executor) -> write.

The driver owns the loop and the one writer. Executors (:mod:`local_runner`, :mod:`ray_runner`)
only run the units. Scheduling rules:

* a video's plan (probe + segment) and all its decode chunks go to the same decode worker, which
  keeps the video's reader open between chunks (one forward pass per video);
* at most ``_PER_WORKER`` calls are queued per worker, and no new chunk is decoded while more than
  ``max_pending_clips`` decoded clips wait for the embedder: memory stays flat whatever the size
  of the library;
* embed batches are filled from chunks of any video (``batch_size`` clips);
* a video is written only when settled: every chunk embedded (done / partial) or failed.

Resume: the catalog's latest row per ``video_id`` decides. done/partial -> skipped; failed ->
retried while ``attempts < max_attempts`` (else quarantined) or with ``retry_failed``. A known
video at a new path whose old path is gone gets a path-update row (no re-embed); a known path with
new content gets its old video marked ``replaced``.
"""

from __future__ import annotations

import collections
import datetime as dt
import importlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vidsearch.library import Library, crash_point, utcnow
from vidsearch.pipeline.discover import DiscoverFailure, discover
from vidsearch.pipeline.faults import DECODE_FAULT_ENV, EMBED_FAULT_ENV
from vidsearch.pipeline.types import (
    DETERMINISTIC_ERRORS,
    ClipSpan,
    FramesChunk,
    VideoError,
    VideoPlan,
    VideoTask,
    WorkerLost,
)
from vidsearch.pipeline.write import PendingVideo, ShardWriter, failure_row, video_row
from vidsearch.schemas import ids
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.tables import (
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PARTIAL,
    STATUS_REPLACED,
)

_logger = logging.getLogger(__name__)

_FILE_ACCESS_ERRORS = frozenset({"NotFound", "PermissionDenied", "IOError", "Unstable"})
_PER_WORKER = 2          # calls queued per decode worker (one running + one ready to start)
_EMBED_PER_WORKER = 2
# A call whose worker process dies under it (kill -9, the OOM killer, Ray's memory monitor) is
# retried on the restarted worker; after this many deaths on one video (or one embed batch) its
# videos fail with WorkerKilled instead: a video that kills its worker every time must not loop.
_WORKER_DEATHS_MAX = 3


class Backend(Protocol):
    """What the driver needs from an executor (handles are futures or Ray ObjectRefs)."""

    n_decode: int
    n_embed: int

    def model_info(self) -> Any: ...
    def submit_plan(self, worker: int, task: VideoTask) -> Any: ...
    def submit_decode(self, worker: int, plan: VideoPlan, lo: int, hi: int) -> tuple[Any, Any]: ...
    def submit_embed(self, worker: int, frames: list[Any]) -> Any: ...
    def await_worker(self, pool: str, worker: int, timeout: float = 300.0) -> None: ...
    def wait(self, handles: list[Any], timeout: float) -> list[Any]: ...
    def get(self, handle: Any) -> Any: ...
    def release(self, handles: list[Any]) -> None: ...
    def close(self) -> None: ...


@dataclass
class IngestOptions:
    """Everything ``vidsearch ingest`` decides besides the IngestCfg."""

    model: str = "internvideo2-s2-1b"
    checkpoint: str | None = None
    tokenizer: str | None = None
    device: str | None = None
    executor: str = "ray"                  # "ray" or "local"
    ray_address: str | None = None
    shards_uri: str | None = None          # shard files at this pyarrow filesystem URI (new library)
    embed_actors: int | None = None
    new_index: bool = False
    retry_failed: bool = False
    break_lock: bool = False
    build_index: bool = True
    sniff: bool = True
    max_attempts: int = 2
    decode_chunk_clips: int = 16
    progress: bool = True
    random_weights: bool = False           # benchmarks only: the architecture without its weights


@dataclass
class IngestSummary:
    """What one run did (printed by the CLI, stored in ``runs``)."""

    run_id: str
    library: str
    status: str = "running"                # ok, partial, interrupted
    videos_seen: int = 0
    videos_done: int = 0
    videos_partial: int = 0
    videos_failed: int = 0
    videos_skipped: int = 0                # already settled by an earlier run
    videos_quarantined: int = 0            # failed max_attempts times; skipped
    videos_moved: int = 0                  # known content at a new path: path row, no re-embed
    videos_duplicate: int = 0              # same content as another path of this run
    videos_replaced: int = 0
    videos_failed_before: int = 0          # failed/partial in an earlier run, not retried
    not_regular: int = 0
    clips: int = 0
    elapsed_s: float = 0.0
    embed_calls: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    index: str | None = None
    decode_nodes: int = 1                  # cluster nodes the decode workers ran on
    shards_quarantined: int = 0            # missing/corrupt shards set aside at the start (F10)
    loop_s: float = 0.0                    # time in the scheduling loop (no start-up, no index)

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        if self.status == "interrupted":
            return 130
        # The same command gives the same answer: inputs that failed earlier still count.
        bad = self.videos_failed + self.videos_partial + self.videos_quarantined + self.videos_failed_before
        return 2 if bad else 0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["clips_per_s"] = round(self.clips_per_s, 3)
        d["exit_code"] = self.exit_code
        return d


@dataclass
class _Video:
    task: VideoTask
    worker: int
    plan: VideoPlan | None = None
    chunks_total: int = 0
    chunks_decoded: int = 0
    chunks_embedded: int = 0
    kept: dict[int, np.ndarray] = field(default_factory=dict)   # clip_index -> embedding
    decoded_frames: int | None = None
    truncated: bool = False
    decode_error: str | None = None
    failed: bool = False
    extra_rows: list[dict[str, Any]] = field(default_factory=list)
    worker_deaths: int = 0         # decode worker deaths while this video's call was running


def _read_state(library: Library) -> tuple[dict[str, dict[str, Any]], dict[bytes, str]]:
    """Latest row per video_id, and the video_id last ingested at each path (done, partial or
    failed: new content at the path replaces any of them, so a failure of content that is gone,
    e.g. a file caught while being written (B20), leaves the failure list).

    Writer only (lock held): a catalog left behind the manifest (a kill between deferred
    refreshes) is caught up first, else videos settled in its missing shards would be redone.
    """
    if not library.exists():
        return {}, {}
    m = library.read_manifest()
    if not m.shards:
        return {}, {}
    library.refresh_catalog(m)  # no-op when current
    with library.connect_catalog() as con:
        cur = con.execute("SELECT * FROM videos")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    by_id = {r["video_id"]: r for r in rows}
    by_path: dict[bytes, str] = {}
    for r in sorted(rows, key=lambda r: r["status"] != STATUS_FAILED):  # a live row wins over a failed one
        if r["status"] in (STATUS_DONE, STATUS_PARTIAL, STATUS_FAILED):
            by_path[bytes(r["path_bytes"])] = r["video_id"]
    return by_id, by_path


def _fault_spec(var: str = DECODE_FAULT_ENV) -> str | None:
    """A test hook's spec (:mod:`vidsearch.pipeline.faults`), read here and passed to workers."""
    return os.environ.get(var) or None


def run_ingest(inputs: Sequence[str | bytes], library_root: str | os.PathLike[str], cfg: IngestCfg,
               opts: IngestOptions) -> IngestSummary:
    """Ingest ``inputs`` into the library at ``library_root``.

    Args:
        inputs: folders, files, globs or ``@LIST`` files.
        library_root: the library folder (created if needed).
        cfg: how videos become clips.
        opts: model, executor and resume options.

    Returns:
        The run summary; ``exit_code`` is 0 ok, 2 some videos failed/partial, 130 interrupted.

    Raises:
        LibraryLocked: another writer holds the library.
        ModelMismatch: the library holds another model's embeddings (and not ``new_index``).
        LibraryError: the shard location is unusable (unreachable, no bucket, denied) or differs
            from the one the library was created with.
    """
    from vidsearch.models import get_model_config

    t_start = time.monotonic()
    library = Library(library_root)
    run_id = f"{utcnow().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    summary = IngestSummary(run_id=run_id, library=str(library.root))
    pp = get_model_config(opts.model).preprocess
    stop = threading.Event()
    with library.lock(break_lock=opts.break_lock):
        # Before Ray, the model and any decoding: a bad shard location fails in a second.
        library.open_shards(opts.shards_uri)
        if library.exists():
            # F10: a missing or corrupt shard is set aside and its videos redone by this run.
            summary.shards_quarantined = len(library.quarantine_bad_shards())
        found = discover(inputs, cfg.extensions, sniff=opts.sniff)
        summary.not_regular = len(found.skipped_not_regular)
        embedder_kwargs = {"model_name": opts.model, "checkpoint": opts.checkpoint,
                           "tokenizer": opts.tokenizer, "device": opts.device,
                           "batch_size": cfg.batch_size, "pretrained": not opts.random_weights,
                           "fault": _fault_spec(EMBED_FAULT_ENV)}
        n_decode = cfg.decode_workers or max(1, (os.cpu_count() or 2) - 1)
        backend: Backend
        if opts.executor == "local":
            from vidsearch.pipeline.local_runner import LocalBackend

            backend = LocalBackend(cfg, pp, embedder_kwargs, n_decode, _fault_spec())
        else:
            from vidsearch.pipeline.ray_runner import RayBackend

            backend = RayBackend(cfg, pp, embedder_kwargs, cfg.decode_workers, opts.embed_actors,
                                 _fault_spec(), opts.ray_address)
        summary.decode_nodes = len(set(getattr(backend, "nodes", ()))) or 1
        try:
            model = backend.model_info()
            if model.preprocess and tuple(model.preprocess.get("mean", ())) != tuple(pp.mean):
                _logger.warning("embedder preprocessing differs from the registry's")
            settings = {**cfg.to_dict(), "model": opts.model, "executor": opts.executor}
            library.init(model, settings, allow_new_model=opts.new_index)
            writer = ShardWriter(library, model, run_id, cfg.shard_rows, cfg.commit_interval_s)
            started = utcnow()
            library.record_run(_run_record(summary, started, None, settings))
            old_handler = None
            if threading.current_thread() is threading.main_thread():
                def on_sigint(signum: int, frame: Any) -> None:
                    # First Ctrl-C: stop cleanly (commit what is settled); a second one aborts.
                    stop.set()
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                old_handler = signal.signal(signal.SIGINT, on_sigint)
            try:
                _Driver(backend, writer, cfg, opts, summary, stop).run(found.tasks, found.failures,
                                                                       *_read_state(library))
                writer.flush()
            finally:
                if old_handler is not None:
                    signal.signal(signal.SIGINT, old_handler)
            summary.elapsed_s = time.monotonic() - t_start
            summary.status = ("interrupted" if stop.is_set()
                              else "partial" if summary.exit_code == 2 else "ok")
            # Also the end-of-run catalog refresh: the writer deferred some (ShardWriter).
            library.record_run(_run_record(summary, started, utcnow(), settings))
        finally:
            backend.close()
        if opts.build_index and not stop.is_set():
            crash_point("after_manifest_before_index")
            summary.index = _update_index(library)
    summary.elapsed_s = time.monotonic() - t_start
    return summary


def _run_record(s: IngestSummary, started: dt.datetime, ended: dt.datetime | None,
                settings: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": s.run_id, "started_at": started.isoformat(),
            "ended_at": ended.isoformat() if ended else None, "status": s.status,
            "videos_seen": s.videos_seen, "videos_done": s.videos_done,
            "videos_partial": s.videos_partial, "videos_failed": s.videos_failed,
            "videos_skipped": s.videos_skipped + s.videos_quarantined, "clips": s.clips,
            "clips_per_s": round(s.clips_per_s, 3), "settings": settings}


def _update_index(library: Library) -> str | None:
    try:
        indexer = importlib.import_module("vidsearch.indexer")
    except ImportError:
        return None
    update = getattr(indexer, "update_index", None)
    if update is None:
        _logger.info("vidsearch.indexer.update_index not available yet; skipping the FAISS index")
        return None
    r = update(library)
    if r is None:
        return "updated"
    return (f"{getattr(r, 'action', 'updated')} {getattr(r, 'factory', '')} "
            f"({getattr(r, 'vectors', '?')} vectors, +{getattr(r, 'added', 0)})")


class _Driver:
    """The scheduling loop (module docstring)."""

    def __init__(self, backend: Backend, writer: ShardWriter, cfg: IngestCfg, opts: IngestOptions,
                 summary: IngestSummary, stop: threading.Event) -> None:
        self.b, self.writer, self.cfg, self.opts, self.s, self.stop = backend, writer, cfg, opts, summary, stop
        self.videos: dict[str, _Video] = {}
        self.chunk_jobs: list[collections.deque[tuple[str, int, int]]] = [
            collections.deque() for _ in range(backend.n_decode)]
        self.load = [0] * backend.n_decode
        self.embed_load = [0] * backend.n_embed
        self.inflight: dict[Any, tuple[str, Any]] = {}
        # Calls per worker in submission order: a worker runs them in this order, so when it
        # dies, the oldest pending call is the one it was running (the others only waited).
        self.order: dict[tuple[str, int], collections.deque[Any]] = collections.defaultdict(collections.deque)
        self.dead: set[tuple[str, int]] = set()   # workers that will not come back
        self.frames_ref: dict[Any, Any] = {}
        self.embed_ready: collections.deque[tuple[str, FramesChunk, Any]] = collections.deque()
        self.pending_clips = 0
        self.max_pending_clips = max(4 * cfg.batch_size * backend.n_embed,
                                     2 * opts.decode_chunk_clips * backend.n_decode)
        self.progress: Any = None
        self.t0 = time.monotonic()
        self.total = 0

    # ---- resume filter ---------------------------------------------------------------------
    def _select(self, tasks: list[VideoTask], failures: list[DiscoverFailure],
                by_id: dict[str, dict[str, Any]], by_path: dict[bytes, str]) -> list[VideoTask]:
        todo: list[VideoTask] = []
        seen_ids: set[str] = set()
        present_paths = {t.path_bytes for t in tasks}
        for f in failures:
            self.s.videos_seen += 1
            prev = by_id.get(f.video_id)
            attempts = self._attempts(prev)
            if attempts is None:
                continue
            row = failure_row(None, f.error_type, "discover", f.message, run_id=self.writer.run_id,
                              attempts=attempts, path_bytes=f.path_bytes, video_id=f.video_id)
            self._settle_failed(row)
        for t in tasks:
            self.s.videos_seen += 1
            if t.video_id in seen_ids:
                self.s.videos_duplicate += 1
                _logger.info("%s: same content as another file of this run", t.display_path)
                continue
            seen_ids.add(t.video_id)
            prev = by_id.get(t.video_id)
            if prev is not None and prev["status"] == STATUS_PARTIAL and not self.opts.retry_failed:
                self.s.videos_failed_before += 1
                continue
            if prev is not None and prev["status"] in (STATUS_DONE, STATUS_PARTIAL) and not (
                    prev["status"] == STATUS_PARTIAL and self.opts.retry_failed):
                old_path = bytes(prev["path_bytes"])
                if old_path != t.path_bytes and old_path not in present_paths \
                        and not os.path.lexists(old_path):
                    # Moved or renamed: same content, so no re-embed; record the new path.
                    row = dict(prev)
                    row.pop("shard_id", None)
                    row.update(path=t.display_path, path_bytes=t.path_bytes, mtime=t.mtime,
                               run_id=self.writer.run_id, ingested_at=utcnow())
                    self.writer.add(PendingVideo(row=row))
                    self.s.videos_moved += 1
                else:
                    self.s.videos_skipped += 1
                continue
            attempts = self._attempts(prev)
            if attempts is None:
                continue
            old_id = by_path.get(t.path_bytes)
            v = _Video(task=VideoTask(t.path_bytes, t.display_path, t.video_id, t.size_bytes, t.mtime,
                                      attempts), worker=0)
            if old_id is not None and old_id != t.video_id and old_id not in seen_ids:
                old = dict(by_id[old_id])
                old.pop("shard_id", None)
                old.update(status=STATUS_REPLACED, run_id=self.writer.run_id, ingested_at=utcnow())
                v.extra_rows.append(old)
                self.s.videos_replaced += 1
            self.videos[t.video_id] = v
            todo.append(v.task)
        return todo

    def _attempts(self, prev: dict[str, Any] | None) -> int | None:
        """This run's attempt number for a video, or None when it is quarantined."""
        if prev is None or prev["status"] == STATUS_REPLACED:
            return 1
        n = int(prev["attempts"] or 0)
        if prev["status"] == STATUS_FAILED and not self.opts.retry_failed:
            if prev["error_type"] in DETERMINISTIC_ERRORS:
                self.s.videos_failed_before += 1
                return None
            if n >= self.opts.max_attempts:
                self.s.videos_quarantined += 1
                return None
        return n + 1

    # ---- main loop -------------------------------------------------------------------------
    def run(self, tasks: list[VideoTask], failures: list[DiscoverFailure],
            by_id: dict[str, dict[str, Any]], by_path: dict[bytes, str]) -> None:
        self.t0 = time.monotonic()
        try:
            self._run(tasks, failures, by_id, by_path)
        finally:
            self.s.loop_s = time.monotonic() - self.t0

    def _run(self, tasks: list[VideoTask], failures: list[DiscoverFailure],
             by_id: dict[str, dict[str, Any]], by_path: dict[bytes, str]) -> None:
        queue = collections.deque(self._select(tasks, failures, by_id, by_path))
        self.total = len(queue)
        self._open_progress()
        try:
            while not self.stop.is_set():
                self._schedule(queue)
                if not self.inflight:
                    if queue or any(self.chunk_jobs) or self.embed_ready:
                        continue
                    break
                for h in self.b.wait(list(self.inflight), timeout=0.5):
                    self._on_ready(h)
                self._tick()
        finally:
            if self.progress is not None:
                self.progress.close()
        if self.stop.is_set():
            _logger.warning("interrupted: committing settled videos; rerun the same command to finish")

    def _live(self, pool: str, n: int) -> list[int]:
        live = [w for w in range(n) if (pool, w) not in self.dead]
        if not live:
            # Systemic (rule 10): nothing can run any more; committed work stays committed.
            raise RuntimeError(f"every {pool} worker died and cannot be restarted; rerun to resume")
        return live

    def _submit_plan(self, w: int, vid: str) -> None:
        v = self.videos[vid]
        v.worker = w
        h = self.b.submit_plan(w, v.task)
        self.inflight[h] = ("plan", (vid, w))
        self.order["decode", w].append(h)
        self.load[w] += 1

    def _submit_decode(self, w: int, vid: str, lo: int, hi: int) -> None:
        meta, frames = self.b.submit_decode(w, self.videos[vid].plan, lo, hi)  # type: ignore[arg-type]
        self.inflight[meta] = ("decode", (vid, lo, hi, w))
        self.frames_ref[meta] = frames
        self.order["decode", w].append(meta)
        self.load[w] += 1

    def _submit_embed(self, e: int, batch: list[tuple[str, FramesChunk, Any]], deaths: int = 0) -> None:
        h = self.b.submit_embed(e, [f for _, _, f in batch])
        self.inflight[h] = ("embed", (e, batch, deaths))
        self.order["embed", e].append(h)
        self.embed_load[e] += 1

    def _schedule(self, queue: collections.deque[VideoTask]) -> None:
        for w in sorted(self._live("decode", self.b.n_decode), key=lambda i: self.load[i]):
            while self.load[w] < _PER_WORKER:
                if self.chunk_jobs[w] and self.pending_clips < self.max_pending_clips:
                    vid, lo, hi = self.chunk_jobs[w].popleft()
                    if self.videos[vid].failed:
                        continue
                    self._submit_decode(w, vid, lo, hi)
                elif queue and not self.chunk_jobs[w]:
                    self._submit_plan(w, queue.popleft().video_id)
                else:
                    break
        decoding = any(k == "decode" or k == "plan" for k, _ in self.inflight.values()) or any(self.chunk_jobs)
        for e in sorted(self._live("embed", self.b.n_embed), key=lambda i: self.embed_load[i]):
            while self.embed_ready and self.embed_load[e] < _EMBED_PER_WORKER:
                n_ready = sum(len(c.kept) for _, c, _ in self.embed_ready)
                if n_ready < self.cfg.batch_size and decoding and self.pending_clips < self.max_pending_clips:
                    return  # wait for a fuller batch
                batch: list[tuple[str, FramesChunk, Any]] = []
                n = 0
                while self.embed_ready and n < self.cfg.batch_size:
                    item = self.embed_ready.popleft()
                    if self.videos[item[0]].failed:
                        self.pending_clips -= len(item[1].kept)
                        continue
                    batch.append(item)
                    n += len(item[1].kept)
                if not batch:
                    continue
                self._submit_embed(e, batch)

    def _on_ready(self, h: Any) -> None:
        kind, info = self.inflight.pop(h)
        if kind == "embed":
            e = info[0]
            self.embed_load[e] -= 1
            key = ("embed", e)
        else:
            w = info[-1]
            self.load[w] -= 1
            key = ("decode", w)
        running = self.order[key][0] == h
        self.order[key].remove(h)
        frames = self.frames_ref.pop(h, None)
        try:
            out = self.b.get(h)
        except WorkerLost as lost:
            self._on_worker_lost(kind, info, key, running, lost)
            return
        if kind == "plan":
            vid = info[0]
            v = self.videos[vid]
            if isinstance(out, VideoError):
                self._fail(v, out)
                return
            v.plan = out
            n = len(out.clips)
            step = max(1, self.opts.decode_chunk_clips)
            for lo in range(0, n, step):
                self.chunk_jobs[v.worker].append((vid, lo, min(n, lo + step)))
            v.chunks_total = len(range(0, n, step))
        elif kind == "decode":
            vid = info[0]
            v = self.videos[vid]
            if v.failed:
                return
            if isinstance(out, VideoError):
                self._fail(v, out)
                return
            v.chunks_decoded += 1
            v.decoded_frames = out.decoded_frames if v.decoded_frames is None else min(v.decoded_frames,
                                                                                        out.decoded_frames)
            v.truncated |= out.truncated
            v.decode_error = v.decode_error or out.error
            if out.kept:
                self.embed_ready.append((vid, out, frames))
                self.pending_clips += len(out.kept)
            else:
                v.chunks_embedded += 1
                self._maybe_finish(v)
        else:
            _, batch, _ = info
            self.s.embed_calls += 1
            for _, chunk, _ in batch:
                self.pending_clips -= len(chunk.kept)
            if isinstance(out, VideoError):
                for vid, _, _ in batch:
                    self._fail(self.videos[vid], out)
                return
            for (vid, chunk, _), emb in zip(batch, out, strict=True):
                v = self.videos[vid]
                if v.failed:
                    continue
                if np.isnan(emb).any():
                    self._fail(v, VideoError("EmbedOOM", "embed", "a clip does not fit in GPU memory even alone "
                                             "(try a smaller model input or a larger GPU)"))
                    continue
                for ci, row in zip(chunk.kept, emb, strict=True):
                    v.kept[ci] = row
                v.chunks_embedded += 1
                self._maybe_finish(v)
            self.b.release([f for _, _, f in batch])

    def _on_worker_lost(self, kind: str, info: Any, key: tuple[str, int], running: bool, lost: WorkerLost) -> None:
        """A worker died with this call pending: retry it, or fail after repeated deaths (F3-F5).

        Only the call the worker was running is charged with the death; calls queued behind it
        are resubmitted as they are. A worker that will not come back is taken out of its pool
        and its queued work moves to the others.
        """
        pool = key[0]
        if not lost.permanent and key not in self.dead:
            try:
                self.b.await_worker(pool, key[1])  # calls to a restarting actor are refused
            except WorkerLost as e:
                lost = e
        if lost.permanent and key not in self.dead:
            self.dead.add(key)
            _logger.error("%s worker %d is gone for good (%s); continuing with the others", pool, key[1], lost)
            if pool == "decode":
                jobs, self.chunk_jobs[key[1]] = self.chunk_jobs[key[1]], collections.deque()
                for vid, lo, hi in jobs:
                    self.videos[vid].worker = self._live("decode", self.b.n_decode)[0]
                    self.chunk_jobs[self.videos[vid].worker].append((vid, lo, hi))
        if kind == "embed":
            e, batch, deaths = info
            deaths += running
            if deaths >= _WORKER_DEATHS_MAX:
                for _, chunk, _ in batch:
                    self.pending_clips -= len(chunk.kept)
                err = VideoError("WorkerKilled", "embed", f"the embed worker died {deaths} times on this "
                                 f"video's batch (killed, e.g. out of memory); last: {str(lost)[:150]}")
                for vid, _, _ in batch:
                    self._fail(self.videos[vid], err)
                return
            _logger.warning("embed worker %d died (%s); retrying its batch", e, str(lost)[:150])
            self._submit_embed(e if key not in self.dead else self._live("embed", self.b.n_embed)[0], batch, deaths)
            return
        vid = info[0]
        v = self.videos[vid]
        if v.failed:
            return
        v.worker_deaths += running
        if v.worker_deaths >= _WORKER_DEATHS_MAX:
            self._fail(v, VideoError("WorkerKilled", "probe" if kind == "plan" else "decode",
                                     f"the decode worker died {v.worker_deaths} times while handling this video "
                                     f"(killed, e.g. out of memory); last: {str(lost)[:150]}"))
            return
        _logger.warning("decode worker %d died (%s); retrying %s", key[1], str(lost)[:150], v.task.display_path)
        w = v.worker if ("decode", v.worker) not in self.dead else self._live("decode", self.b.n_decode)[0]
        if kind == "plan":
            self._submit_plan(w, vid)
        else:
            v.worker = w
            self._submit_decode(w, vid, info[1], info[2])

    def _fail(self, v: _Video, err: VideoError) -> None:
        if v.failed:
            return
        if (err.stage in ("probe", "segment", "decode") and err.error_type not in _FILE_ACCESS_ERRORS
                and self._changed(v.task)):
            # A file still being written (B20) looks corrupt (moov not yet there) or cut short:
            # that verdict is about bytes that are no longer the file's, so it must not stick
            # (deterministic errors are never retried) nor count towards quarantine.
            err = VideoError("Unstable", err.stage, f"file changed while being ingested ({err.error_type}: "
                                                    f"{err.message}); retried next run")
        v.failed = True
        self.chunk_jobs[v.worker] = collections.deque(j for j in self.chunk_jobs[v.worker] if j[0] != v.task.video_id)
        row = failure_row(v.task, err.error_type, err.stage, err.message, run_id=self.writer.run_id,
                          attempts=v.task.attempts, probe=v.plan.probe if v.plan else None)
        self._settle_failed(row, v.extra_rows)  # v stays in self.videos: late results are ignored
        self._advance()

    def _settle_failed(self, row: dict[str, Any], extra: list[dict[str, Any]] | None = None) -> None:
        self.s.videos_failed += 1
        if len(self.s.failures) < 1000:
            self.s.failures.append({k: row[k] for k in ("path", "stage", "error_type", "error_message")})
        _logger.warning("failed: %s", row["error_message"])
        self.writer.add(PendingVideo(row=row, extra_rows=list(extra or [])))

    def _maybe_finish(self, v: _Video) -> None:
        if v.failed or v.plan is None or v.chunks_embedded < v.chunks_total:
            return
        plan = v.plan
        clips: list[ClipSpan] = [c for c in plan.clips if c.clip_index in v.kept]
        if not clips:
            msg = f"zero clips from a non-empty video ({v.decode_error or 'nothing decoded'})"
            self._fail(v, VideoError("NoClips", "decode", msg))
            return
        try:
            if ids.video_fingerprint(v.task.path_bytes) != v.task.video_id:
                # No clip of content that is no longer the file's is committed (B20).
                self._fail(v, VideoError("Unstable", "decode", "file changed while being ingested; retried next run"))
                return
        except OSError as e:
            self._fail(v, VideoError("NotFound", "decode", f"file vanished during ingest ({e.strerror})"))
            return
        expected = max(1, plan.expected_frames)
        decoded = plan.probe.frame_count if v.decoded_frames is None else v.decoded_frames
        coverage = min(1.0, decoded / expected)
        ok = coverage >= self.cfg.min_coverage and not v.truncated
        status = STATUS_DONE if ok else STATUS_PARTIAL
        row = video_row(v.task, status=status, run_id=self.writer.run_id, attempts=v.task.attempts,
                        probe=plan.probe, coverage=round(coverage, 6), num_clips=len(clips))
        if not ok:
            why = "; ".join(x for x in (plan.probe.expected_note, v.decode_error) if x)
            row.update(stage="decode", error_type="PartialDecode",
                       error_message=f"{v.task.display_path!r}: decoded {decoded} of {expected} frames "
                                     f"(coverage {coverage:.2f}){': ' + why if why else ''}")
            self.s.videos_partial += 1
            self.s.failures.append({k: row[k] for k in ("path", "stage", "error_type", "error_message")})
        else:
            self.s.videos_done += 1
        emb = np.stack([v.kept[c.clip_index] for c in clips])
        self.s.clips += len(clips)
        self.writer.add(PendingVideo(row=row, clips=clips, embeddings=emb, extra_rows=v.extra_rows))
        v.kept.clear()
        v.failed = True  # settled: ignore anything late
        self._advance()

    @staticmethod
    def _changed(task: VideoTask) -> bool:
        """Whether the file's content differs from what discovery fingerprinted."""
        try:
            return ids.video_fingerprint(task.path_bytes) != task.video_id
        except OSError:
            return False  # vanished or unreadable: the error at hand says enough

    # ---- progress --------------------------------------------------------------------------
    def _open_progress(self) -> None:
        if not self.opts.progress or not sys.stderr.isatty():
            return
        from tqdm import tqdm

        self.progress = tqdm(total=self.total, unit="video", file=sys.stderr, dynamic_ncols=True)

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress.update(1)
            self._tick()

    def _tick(self) -> None:
        if self.progress is None:
            return
        el = max(1e-6, time.monotonic() - self.t0)
        self.progress.set_postfix(clips=self.s.clips, clips_s=f"{self.s.clips / el:.1f}",
                                  failed=self.s.videos_failed, refresh=False)
