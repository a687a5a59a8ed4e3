"""The ingest driver: the scheduling loop between the executors' units and the one writer.

The driver owns the loop and the one writer. Executors (:mod:`local_runner`, :mod:`ray_runner`)
only run the units. Scheduling rules:

* a video's plan (probe + segment) and all its decode chunks go to the same decode worker, which
  keeps the video's plan and reader between chunks (one forward pass per video; a chunk request
  names the video, it does not carry the plan back);
* at most ``_PER_WORKER`` calls are queued per worker, and no new chunk is decoded while more than
  ``max_pending_clips`` decoded clips wait for the embedder: memory stays flat whatever the size
  of the library;
* embed batches are filled from chunks of any video (``batch_size`` clips);
* a video is written only when settled: every chunk embedded (done / partial) or failed.

Text stages (issue 14): subtitles are read by the decode worker while it plans a video (they ride
back in the plan); speech (``--speech``) goes to its own worker pool once the plan says the file
is a video with audio, beside decode and embed, at most ``_SPEECH_PER_WORKER`` calls queued per
worker. On-screen text (``--ocr``, issue 15) comes from the same decode pass as the clips: the
decode worker hands out each chunk's OCR candidates (a change check in the decode child picks
the frames worth reading, converted to RGB at the OCR size), the frames go to the OCR worker pool
(``_OCR_PER_WORKER`` calls per worker) and the readings come back per chunk; once a video's
chunks are all read they are merged into its ``screen_text`` rows. Frames waiting for OCR are
bounded: past ``_OCR_FRAMES_PER_WORKER`` per OCR worker no new video starts (the videos under
way go on, so the embedder is not held up), past twice that no chunk of a video with OCR is
decoded until OCR catches up (memory stays bounded when OCR is the slowest stage). Videos with
OCR are decoded on the CPU path (the GPU decoder hands out no OCR frames).

A video whose clips are embedded waits for its transcript (and screen text) so that both go into
the same commit, but at most ``_HELD_MAX`` such videos per speech or OCR worker wait (a slow pool
must not hold the visual library back, nor its embeddings in memory): past that the oldest is
committed without it and its text follows in a text-only commit. Videos embedded earlier that lack a text stage (a
later ``--speech``, a library older than subtitles) get only that stage: no probe, decode or
embed; for on-screen text that is a decode pass of its own that decodes only the OCR candidates
(no clip frame, no embedding). A failed text stage is a failure of that stage only
(``text_status`` ``failed``, a ``failures`` row of stage ``speech`` / ``ocr``); the clips stay.

Resume rules: :mod:`vidsearch.pipeline.resume`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

import numpy as np

from vidsearch.library import utcnow
from vidsearch.pipeline.progress import Progress, Snapshot, plural
from vidsearch.pipeline.resume import (
    Selection,
    TextSelection,
)
from vidsearch.pipeline.run_types import IngestOptions, IngestSummary
from vidsearch.pipeline.schedule import choose_side, gpu_room, next_gpu_chunks, worth_gpu
from vidsearch.pipeline.text import OcrRead, failed_outcome, no_audio_outcome, screen_outcome, status_row
from vidsearch.pipeline.types import (
    ChunkRequest,
    ClipSpan,
    FramesChunk,
    GpuChunkRequest,
    GpuFallback,
    OcrChunk,
    TextOutcome,
    VideoError,
    VideoPlan,
    VideoTask,
    WorkerLost,
)
from vidsearch.pipeline.write import PendingVideo, ShardWriter, failure_row, video_row
from vidsearch.schemas import ids
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.manifest import ModelInfo
from vidsearch.schemas.ocr_config import OcrCfg
from vidsearch.schemas.tables import STATUS_DONE, STATUS_FAILED, STATUS_PARTIAL
from vidsearch.schemas.text_tables import KIND_STAGE, TEXT_FAILED, TEXT_NO_AUDIO, TEXT_NONE, TEXT_OK, TEXT_SILENT

_logger = logging.getLogger(__name__)

_FILE_ACCESS_ERRORS = frozenset({"NotFound", "PermissionDenied", "IOError", "Unstable"})
_PER_WORKER = 2          # calls queued per decode worker (one running + one ready to start)
_EMBED_PER_WORKER = 2
_SPEECH_PER_WORKER = 2
_OCR_PER_WORKER = 2
# OCR frames (RGB at the OCR size, 2.7 MB at 1280x720) decoded and waiting for an OCR worker, per
# OCR worker: past this no new video is started; past twice this no chunk of a video with OCR is
# decoded (module docstring).
_OCR_FRAMES_PER_WORKER = 32
# Videos whose clips are embedded and wait for their transcript, to be committed together, per
# speech worker; past that the oldest is committed without it (module docstring).
_HELD_MAX = 8
# A call whose worker process dies under it (kill -9, the OOM killer, Ray's memory monitor) is
# retried on the restarted worker; after this many deaths on one video (or one embed batch) its
# videos fail with WorkerKilled instead: a video that kills its worker every time must not loop.
_WORKER_DEATHS_MAX = 3


class Backend(Protocol):
    """What the driver needs from an executor (handles are futures or Ray ObjectRefs).

    Calls to one worker run in submission order (one Ray actor, or one thread per local worker).
    """

    n_decode: int
    n_embed: int
    n_speech: int                 # speech workers (0: no --speech)
    n_ocr: int                    # OCR workers (0: no --ocr)

    def model_info(self) -> ModelInfo: ...
    def speech_info(self) -> dict[str, Any] | None:
        """The speech workers' model (``model_id``, ``device``, ...), None without speech; raises
        their setup error (e.g. ``SpeechModelNotFoundError``)."""
        ...
    def submit_speech(self, worker: int, task: VideoTask, origin_s: float | None) -> Any:
        """Transcribe a video on speech worker ``worker``; the handle gives a :class:`TextOutcome`."""
        ...
    def ocr_info(self) -> dict[str, Any] | None:
        """The OCR workers' engine (``model_id``, ``status_model``, ``device``, ...), None without
        OCR; raises their setup error (e.g. ``OcrModelNotFoundError``)."""
        ...
    def submit_ocr(self, worker: int, task: VideoTask, frames: Any) -> Any:
        """Read the OCR frames of a decoded chunk (``frames``: the third handle of
        :meth:`submit_decode`) on OCR worker ``worker``; the handle gives an :class:`OcrRead`."""
        ...
    def submit_subtitles(self, worker: int, task: VideoTask) -> Any:
        """Read a video's subtitles on decode worker ``worker`` (a video embedded earlier); the
        handle gives a :class:`TextOutcome` or a :class:`VideoError` (the child crashed or hung)."""
        ...
    def submit_plan(self, worker: int, task: VideoTask, ocr: bool = False, ocr_only: bool = False) -> Any:
        """Plan a video on decode worker ``worker`` (``ocr``: with its OCR candidates; ``ocr_only``:
        for an OCR-only decode pass); the handle gives a :class:`VideoPlan` or a :class:`VideoError`."""
        ...
    def submit_decode(self, worker: int, request: ChunkRequest) -> tuple[Any, Any, Any]:
        """Handles of the chunk's metadata (fetched by the driver), of its frames (passed on to
        an embed call unfetched) and of its OCR frames (passed on to an OCR call unfetched)."""
        ...
    def submit_embed(self, worker: int, frames: list[Any]) -> Any:
        """``frames``: handles of CPU-decoded chunks and :class:`GpuKey` of chunks the embed
        worker decoded itself (their frames never left its GPU)."""
        ...
    def gpu_status(self) -> list[Any]:
        """Per embed worker, its :class:`~vidsearch.pipeline.nvdec.NvdecStatus` (empty: GPU
        decode not asked for)."""
        ...
    def gpu_sessions(self) -> int:
        """NVDEC sessions (threads) of each embed worker that decodes."""
        ...
    def submit_gpu_decode(self, worker: int, request: GpuChunkRequest, key: str) -> Any:
        """A chunk decoded on embed worker ``worker``'s GPU; the handle gives the chunk's
        metadata (frames kept there under ``key``) or a :class:`GpuFallback`."""
        ...
    def release_gpu(self, worker: int, video_id: str, keys: list[str]) -> None:
        """Drop frames kept under ``keys`` and close the video's NVDEC session (it settled)."""
        ...
    def await_worker(self, pool: str, worker: int, timeout: float = 300.0) -> None: ...
    def wait(self, handles: list[Any], timeout: float) -> list[Any]: ...
    def get(self, handle: Any) -> Any: ...
    def close(self) -> None: ...


# ---- the driver's in-flight calls ---------------------------------------------------------------
@dataclass(frozen=True)
class _ChunkJob:
    """Clips ``[lo, hi)`` of a video, queued for its decode worker."""

    video_id: str
    lo: int
    hi: int


@dataclass(frozen=True)
class _Decoded:
    """A decoded chunk waiting for (or in) an embed call."""

    video_id: str
    chunk: FramesChunk            # its metadata (under Ray without the frames)
    frames: Any                   # the handle of its frames
    owner: int | None = None      # the embed worker holding its frames on its GPU (GPU decode)


@dataclass(frozen=True)
class _PlanCall:
    pool: ClassVar[str] = "decode"
    video_id: str
    worker: int


@dataclass(frozen=True)
class _DecodeCall:
    pool: ClassVar[str] = "decode"
    job: _ChunkJob
    worker: int
    frames: Any                   # the handle of the chunk's frames, handed to the embed call
    ocr_frames: Any = None        # the handle of its OCR frames, handed to an OCR call


@dataclass(frozen=True)
class _EmbedCall:
    pool: ClassVar[str] = "embed"
    worker: int
    batch: tuple[_Decoded, ...]
    deaths: int = 0               # embed workers that died while running this batch


@dataclass(frozen=True)
class _GpuDecodeCall:
    pool: ClassVar[str] = "gpu"   # runs on an embed worker, beside its embed calls
    job: _ChunkJob
    worker: int                   # the embed worker
    key: str                      # where that worker keeps the chunk's frames


@dataclass(frozen=True)
class _SpeechCall:
    pool: ClassVar[str] = "speech"
    video_id: str
    worker: int


@dataclass(frozen=True)
class _OcrJob:
    """A decoded chunk's OCR frames, waiting for (or in) an OCR call."""

    video_id: str
    lo: int                       # the chunk's first clip: its place in the video
    meta: OcrChunk
    frames: Any                   # the handle of its OCR frames


@dataclass(frozen=True)
class _OcrCall:
    pool: ClassVar[str] = "ocr"
    job: _OcrJob
    worker: int


@dataclass(frozen=True)
class _SubtitleCall:
    pool: ClassVar[str] = "decode"  # a video embedded earlier: its subtitles, on a decode worker
    video_id: str
    worker: int


class GpuKey(str):
    """Names a chunk's frames kept by the embed worker that decoded them on its GPU."""


_Call = _PlanCall | _DecodeCall | _EmbedCall | _GpuDecodeCall | _SpeechCall | _SubtitleCall | _OcrCall


@dataclass
class _Video:
    task: VideoTask
    worker: int                   # the decode worker holding its plan and reader
    plan: VideoPlan | None = None
    chunks_total: int = 0
    chunks_decoded: int = 0
    chunks_embedded: int = 0
    embeddings: dict[int, np.ndarray] = field(default_factory=dict)   # clip_index -> embedding
    decoded_frames: int | None = None
    truncated: bool = False
    decode_error: str | None = None
    settled: bool = False         # written (done, partial or failed): late results are ignored
    extra_rows: list[dict[str, Any]] = field(default_factory=list)
    worker_deaths: int = 0        # decode worker deaths while this video's call was running
    gpu: int | None = None        # the embed worker decoding it on its GPU (None: the CPU path)
    gpu_jobs: collections.deque[_ChunkJob] = field(default_factory=collections.deque)
    gpu_busy: bool = False        # one of its chunks is being decoded on the GPU
    # Text stages: those this run settles for the video ({kind: attempt}), their outcomes so far,
    # and those already handed to the writer.
    text_want: dict[str, int] = field(default_factory=dict)
    text: dict[str, TextOutcome] = field(default_factory=dict)
    text_written: set[str] = field(default_factory=set)
    text_only: bool = False       # embedded by an earlier run: text stages only
    dropped: bool = False         # failed (not searchable): its text results are not written
    visual_written: bool = False  # its clips and row were handed to the writer
    speech_deaths: int = 0        # speech worker deaths while transcribing it
    origin_s: float | None = None  # the clips' time zero (from the plan; None: read from the file)
    # On-screen text: its decode pass hands out OCR candidates (ocr), or, embedded earlier, it
    # gets a decode pass for them alone (ocr_pass, until that pass is over).
    ocr: bool = False
    ocr_pass: bool = False
    ocr_parts: dict[int, tuple[OcrChunk, tuple[Any, ...]]] = field(default_factory=dict)  # chunk lo -> readings
    ocr_chunks_decoded: int = 0   # chunks whose candidates came back from the decode worker
    ocr_calls: int = 0            # of those, chunks waiting for (or in) an OCR call
    ocr_error: tuple[str, str] | None = None   # (error_type, message): the stage failed
    ocr_done: bool = False        # its screen outcome was made
    ocr_work_s: float = 0.0       # OCR worker seconds on it
    ocr_deaths: int = 0           # OCR worker deaths while reading its frames


def _chunk_jobs(video_id: str, clips: Sequence[ClipSpan], step: int, ocr: bool) -> list[_ChunkJob]:
    """A video's decode chunks: ``step`` clips each; with OCR also at most ``OCR_CHUNK_S`` seconds
    of video (at least one clip), since the chunk's OCR frames travel with it."""
    from vidsearch.pipeline.ocr import OCR_CHUNK_S

    jobs, lo, n = [], 0, len(clips)
    while lo < n:
        hi = min(n, lo + step)
        while ocr and hi - lo > 1 and clips[hi - 1].end_s - clips[lo].start_s > OCR_CHUNK_S:
            hi -= 1
        jobs.append(_ChunkJob(video_id, lo, hi))
        lo = hi
    return jobs


class Driver:
    """The scheduling loop (module docstring)."""

    def __init__(self, backend: Backend, writer: ShardWriter, cfg: IngestCfg, opts: IngestOptions,
                 summary: IngestSummary, stop: threading.Event, progress: Progress,
                 gpu_caps: list[Any] | None = None, ocr: OcrCfg | None = None) -> None:
        self.backend, self.writer, self.cfg, self.opts = backend, writer, cfg, opts
        self.ocr_cfg = ocr
        # GPU decode (issue 13): per embed worker, its NVDEC capabilities (None: none) and sessions.
        self.gpu_caps: list[Any] = list(gpu_caps or [None] * backend.n_embed)
        n_sessions = backend.gpu_sessions() if any(c is not None for c in self.gpu_caps) else 0
        self.gpu_sessions = [n_sessions if c is not None else 0 for c in self.gpu_caps]
        self.gpu_load = [0] * backend.n_embed          # GPU decode calls in flight per embed worker
        self.gpu_videos: list[list[str]] = [[] for _ in range(backend.n_embed)]  # videos each holds
        self.plans_inflight = 0
        self.summary, self.stop, self.progress = summary, stop, progress
        self.videos: dict[str, _Video] = {}
        self.chunk_jobs: list[collections.deque[_ChunkJob]] = [
            collections.deque() for _ in range(backend.n_decode)]
        self.decode_load = [0] * backend.n_decode
        self.embed_load = [0] * backend.n_embed
        self.inflight: dict[Any, _Call] = {}
        # Calls per worker in submission order: a worker runs them in this order, so when it
        # dies, the oldest pending call is the one it was running (the others only waited).
        self.order: dict[tuple[str, int], collections.deque[Any]] = collections.defaultdict(collections.deque)
        self.dead: set[tuple[str, int]] = set()   # workers that will not come back
        self.embed_ready: collections.deque[_Decoded] = collections.deque()
        # Text stages: videos waiting for a speech worker, videos embedded earlier waiting for a
        # decode worker to read their subtitles, and embedded videos waiting for their transcript.
        self.speech_load = [0] * backend.n_speech
        self.speech_queue: collections.deque[str] = collections.deque()
        self.subtitle_jobs: collections.deque[str] = collections.deque()
        self.held: collections.OrderedDict[str, PendingVideo] = collections.OrderedDict()
        self.held_max = _HELD_MAX * max(1, backend.n_speech + backend.n_ocr)
        # OCR: chunks' frames waiting for an OCR worker, and how many frames they hold.
        self.ocr_load = [0] * backend.n_ocr
        self.ocr_queue: collections.deque[_OcrJob] = collections.deque()
        self.ocr_waiting = 0
        self.ocr_soft = _OCR_FRAMES_PER_WORKER * max(1, backend.n_ocr)
        self.ocr_read = 0             # frames read so far (progress)
        self.pending_clips = 0
        self.max_pending_clips = max(4 * cfg.batch_size * backend.n_embed,
                                     2 * opts.decode_chunk_clips * (backend.n_decode + sum(self.gpu_sessions)))
        self.t0 = time.monotonic()
        self.total = 0
        # Progress: videos of this run's work settled; clips embedded; for the ETA, videos
        # planned, their clips, those still to embed, and videos settled before a plan came.
        self.settled = 0
        self.clips_embedded = 0
        self.speech_audio_s = 0.0     # audio transcribed so far (progress)
        self.planned = self.clips_planned = self.clips_left = self.settled_unplanned = 0
        self.last_tick = 0.0

    # ---- main loop -------------------------------------------------------------------------
    def run(self, selection: Selection, text: TextSelection | None = None) -> None:
        self.t0 = time.monotonic()
        try:
            self._run(selection, text or TextSelection())
        finally:
            self.summary.loop_s = time.monotonic() - self.t0

    def _run(self, selection: Selection, text: TextSelection) -> None:
        self._take(selection, text)
        # Videos embedded earlier that get an OCR-only decode pass are planned after the new ones.
        queue = collections.deque([*(t.task for t in selection.todo),
                                   *(v.task for v in self.videos.values() if v.ocr_pass)])
        n_text = sum(1 for v in self.videos.values() if v.text_only)
        self.total = len(queue) + n_text
        c = selection.counts
        self.progress.say(f"{plural(len(queue), 'video')} to ingest"
                          + (f", {c.skipped:,} already done" if c.skipped else "")
                          + (f", {c.failed_before + c.quarantined:,} failed before" if c.failed_before
                             + c.quarantined else "")
                          + (f"; {plural(n_text, 'video')} embedded earlier get {self._text_only_what()}"
                             if n_text else ""))
        self.progress.start(self.total)
        try:
            while not self.stop.is_set():
                self._schedule(queue)
                if not self.inflight:
                    if (queue or any(self.chunk_jobs) or self.embed_ready or self._gpu_jobs_left()
                            or self.speech_queue or self.subtitle_jobs or self.ocr_queue):
                        continue
                    break
                for h in self.backend.wait(list(self.inflight), timeout=0.5):
                    self._on_ready(h)
                self._tick()
            self._tick(force=True)
        finally:
            self.progress.close()
            # Embedded videos still waiting for a transcript (only when stopped early) are
            # committed without it: their clips are not lost, and the next run transcribes them.
            self._release_held(0)
        if self.stop.is_set():
            _logger.warning("interrupted: committing settled videos; rerun the same command to finish")

    def _text_only_what(self) -> str:
        kinds = {k for v in self.videos.values() if v.text_only for k in v.text_want}
        return " and ".join(x for k, x in (("speech", "speech"), ("subtitle", "subtitles"),
                                           ("screen", "on-screen text")) if k in kinds) + " only"

    def _take(self, sel: Selection, text: TextSelection) -> None:
        """Adopt the resume selection: its counts, its rows, its work (text stages included)."""
        c, s = sel.counts, self.summary
        s.videos_seen += c.seen
        s.videos_skipped += c.skipped
        s.videos_quarantined += c.quarantined
        s.videos_moved += c.moved
        s.videos_duplicate += c.duplicate
        s.videos_replaced += c.replaced
        s.videos_failed_before += c.failed_before
        for row in sel.rows:
            if row["status"] == STATUS_FAILED:
                self._settle_failed(row)
            else:
                self.writer.add(PendingVideo(row=row))
        for todo in sel.todo:
            want = dict(text.work.get(todo.task.video_id, {}))
            self.videos[todo.task.video_id] = _Video(
                task=todo.task, worker=0, extra_rows=[todo.replaces] if todo.replaces else [],
                text_want=want, ocr="screen" in want)
        for t in sel.searchable:
            got = text.work.get(t.video_id)
            if not got or t.video_id in self.videos:
                continue
            want = dict(got)
            self.videos[t.video_id] = _Video(task=t, worker=0, text_want=want, text_only=True, settled=True,
                                             ocr_pass="screen" in want)
            if "subtitle" in want and "screen" not in want:  # an OCR pass's plan reads them
                self.subtitle_jobs.append(t.video_id)
            if "speech" in want:
                self.speech_queue.append(t.video_id)

    def _live(self, pool: str, n: int) -> list[int]:
        live = [w for w in range(n) if (pool, w) not in self.dead]
        if not live:
            # Systemic (rule 10): nothing can run any more; committed work stays committed.
            raise RuntimeError(f"every {pool} worker died and cannot be restarted; rerun to resume")
        return live

    def _track(self, handle: Any, call: _Call) -> None:
        self.inflight[handle] = call
        self.order[call.pool, call.worker].append(handle)
        self._load(call.pool)[call.worker] += 1

    def _load(self, pool: str) -> list[int]:
        """Calls in flight per worker of ``pool``."""
        return {"decode": self.decode_load, "gpu": self.gpu_load, "speech": self.speech_load,
                "ocr": self.ocr_load}.get(pool, self.embed_load)

    def _schedule_speech(self) -> None:
        """Speech calls: at most ``_SPEECH_PER_WORKER`` per worker, videos in the order they came."""
        if not self.speech_queue:
            return
        for w in sorted(self._live("speech", self.backend.n_speech), key=lambda i: self.speech_load[i]):
            while self.speech_queue and self.speech_load[w] < _SPEECH_PER_WORKER:
                v = self.videos[self.speech_queue.popleft()]
                if v.dropped:
                    continue
                self._track(self.backend.submit_speech(w, v.task, v.origin_s), _SpeechCall(v.task.video_id, w))

    def _schedule_ocr(self) -> None:
        """OCR calls: at most ``_OCR_PER_WORKER`` per worker, chunks in the order they were decoded."""
        if not self.ocr_queue:
            return
        for w in sorted(self._live("ocr", self.backend.n_ocr), key=lambda i: self.ocr_load[i]):
            while self.ocr_queue and self.ocr_load[w] < _OCR_PER_WORKER:
                job = self.ocr_queue.popleft()
                v = self.videos[job.video_id]
                if v.dropped or v.ocr_error is not None:  # nothing of its reading will be used
                    self._ocr_resolved(v, job, ())
                    continue
                self._track(self.backend.submit_ocr(w, v.task, job.frames), _OcrCall(job, w))

    def _ocr_backlogged(self, hard: bool = False) -> bool:
        """Too many OCR frames wait: no new video starts (``hard``: no chunk of an OCR video is decoded)."""
        return bool(self.backend.n_ocr) and self.ocr_waiting >= self.ocr_soft * (2 if hard else 1)

    def _submit_plan(self, w: int, video_id: str) -> None:
        v = self.videos[video_id]
        v.worker = w
        self.plans_inflight += 1
        self._track(self.backend.submit_plan(w, v.task, ocr=v.ocr, ocr_only=v.ocr_pass), _PlanCall(video_id, w))

    def _submit_gpu(self, e: int, v: _Video, job: _ChunkJob) -> None:
        assert v.plan is not None
        v.gpu_busy = True
        key = f"{job.video_id}/{job.lo}"
        h = self.backend.submit_gpu_decode(e, GpuChunkRequest(v.plan, job.lo, job.hi), key)
        self._track(h, _GpuDecodeCall(job, e, key))

    def _gpu_jobs_left(self) -> bool:
        return any(self.videos[vid].gpu_jobs for vids in self.gpu_videos for vid in vids)

    def _schedule_gpu(self, queue: collections.deque[VideoTask]) -> None:
        """GPU decode calls (one chunk in flight per video, up to the sessions), and plans ahead
        for the GPU: CPU workers plan while the GPU has room, even with chunks of their own queued."""
        for e in range(self.backend.n_embed):
            if not self.gpu_sessions[e] or ("embed", e) in self.dead:
                continue
            vids = [vid for vid in self.gpu_videos[e] if not self.videos[vid].settled]
            self.gpu_videos[e] = vids
            if self.pending_clips >= self.max_pending_clips:
                continue
            state = [(self.videos[vid].gpu_busy, bool(self.videos[vid].gpu_jobs)) for vid in vids]
            for i in next_gpu_chunks(state, self.gpu_load[e], self.gpu_sessions[e]):
                v = self.videos[vids[i]]
                self._submit_gpu(e, v, v.gpu_jobs.popleft())
        need = gpu_room([len(x) for x in self.gpu_videos], self.gpu_sessions) - self.plans_inflight
        live = self._live("decode", self.backend.n_decode)
        for w in sorted(live, key=lambda i: self.decode_load[i]):
            if need <= 0 or not queue or self._ocr_backlogged():
                break
            if self.decode_load[w] < _PER_WORKER:
                self._submit_plan(w, queue.popleft().video_id)
                need -= 1

    def _submit_decode(self, w: int, job: _ChunkJob) -> None:
        v = self.videos[job.video_id]
        assert v.plan is not None  # chunk jobs exist only once the plan came back
        request = ChunkRequest(v.task, job.lo, job.hi, len(v.plan.clips), ocr=v.ocr or v.ocr_pass, ocr_only=v.ocr_pass)
        meta, frames, ocr_frames = self.backend.submit_decode(w, request)
        self._track(meta, _DecodeCall(job, w, frames, ocr_frames))

    def _submit_embed(self, e: int, batch: tuple[_Decoded, ...], deaths: int = 0) -> None:
        h = self.backend.submit_embed(e, [d.frames for d in batch])
        self._track(h, _EmbedCall(e, batch, deaths))

    def _schedule(self, queue: collections.deque[VideoTask]) -> None:
        if any(self.gpu_sessions):
            self._schedule_gpu(queue)
        for w in sorted(self._live("decode", self.backend.n_decode), key=lambda i: self.decode_load[i]):
            while self.decode_load[w] < _PER_WORKER:
                head = self.videos[self.chunk_jobs[w][0].video_id] if self.chunk_jobs[w] else None
                if (head is not None and self.pending_clips < self.max_pending_clips
                        and not ((head.ocr or head.ocr_pass) and self._ocr_backlogged(hard=True))):
                    job = self.chunk_jobs[w].popleft()
                    if head.settled and not head.ocr_pass:
                        continue
                    if head.ocr_pass and head.ocr_error is not None:
                        continue  # its OCR-only pass failed: nothing more to decode
                    self._submit_decode(w, job)
                elif self.subtitle_jobs:  # milliseconds each: before new plans
                    vid = self.subtitle_jobs.popleft()
                    self._track(self.backend.submit_subtitles(w, self.videos[vid].task), _SubtitleCall(vid, w))
                elif queue and not self.chunk_jobs[w] and not self._ocr_backlogged():
                    self._submit_plan(w, queue.popleft().video_id)
                else:
                    break
        self._schedule_speech()
        self._schedule_ocr()
        decoding = (any(c.pool in ("decode", "gpu") for c in self.inflight.values()) or any(self.chunk_jobs)
                    or self._gpu_jobs_left())
        for e in sorted(self._live("embed", self.backend.n_embed), key=lambda i: self.embed_load[i]):
            while self.embed_ready and self.embed_load[e] < _EMBED_PER_WORKER:
                # Chunks decoded on a GPU are embedded where their frames are; CPU ones anywhere.
                eligible = [d for d in self.embed_ready if d.owner is None or d.owner == e]
                n_ready = sum(len(d.chunk.kept) for d in eligible)
                if not eligible or (n_ready < self.cfg.batch_size and decoding
                                    and self.pending_clips < self.max_pending_clips):
                    break  # wait for a fuller batch
                batch: list[_Decoded] = []
                taken: set[int] = set()
                n = 0
                for item in eligible:
                    if n >= self.cfg.batch_size:
                        break
                    taken.add(id(item))
                    if self.videos[item.video_id].settled:
                        self.pending_clips -= len(item.chunk.kept)
                        if item.owner is not None:
                            self.backend.release_gpu(item.owner, item.video_id, [str(item.frames)])
                        continue
                    batch.append(item)
                    n += len(item.chunk.kept)
                self.embed_ready = collections.deque(d for d in self.embed_ready if id(d) not in taken)
                if batch:
                    self._submit_embed(e, tuple(batch))

    def _on_ready(self, h: Any) -> None:
        call = self.inflight.pop(h)
        key = (call.pool, call.worker)
        self._load(call.pool)[call.worker] -= 1
        if isinstance(call, _PlanCall):
            self.plans_inflight -= 1
        running = self.order[key][0] == h
        self.order[key].remove(h)
        try:
            out = self.backend.get(h)
        except WorkerLost as lost:
            self._on_worker_lost(call, running, lost)
            return
        if isinstance(call, _PlanCall):
            self._on_plan(self.videos[call.video_id], out)
        elif isinstance(call, _DecodeCall):
            self._on_decoded(call, out)
        elif isinstance(call, _GpuDecodeCall):
            self._on_gpu_decoded(call, out)
        elif isinstance(call, _SpeechCall):
            self._on_text(self.videos[call.video_id], out)
        elif isinstance(call, _SubtitleCall):
            if isinstance(out, VideoError):  # the decode child crashed or hung on the file
                out = failed_outcome(call.video_id, "subtitle", out.error_type, out.message)
            self._on_text(self.videos[call.video_id], out)
        elif isinstance(call, _OcrCall):
            self._on_ocr(call, out)
        else:
            self._on_embedded(call, out)

    def _on_plan(self, v: _Video, out: VideoPlan | VideoError) -> None:
        if isinstance(out, VideoError):
            self._fail_any(v, out)
            return
        for t in out.text:  # subtitles read while planning
            if t.kind in v.text_want:
                v.text[t.kind] = t
        out = replace(out, text=())
        if v.ocr_pass:  # embedded earlier: a decode pass for OCR only, one window per chunk
            v.plan = out
            v.chunks_total = len(out.clips)
            self.chunk_jobs[v.worker].extend(_ChunkJob(v.task.video_id, i, i + 1) for i in range(len(out.clips)))
            return
        v.origin_s = out.probe.origin_s
        if "speech" in v.text_want and "speech" not in v.text:
            if out.probe.audio_streams == 0:
                v.text["speech"] = no_audio_outcome(v.task.video_id)
            else:
                self.speech_queue.append(v.task.video_id)
        v.plan = out
        n = len(out.clips)
        self.planned += 1
        self.clips_planned += n
        self.clips_left += n
        jobs = _chunk_jobs(v.task.video_id, out.clips, max(1, self.opts.decode_chunk_clips), v.ocr)
        v.chunks_total = len(jobs)
        e = self._gpu_side(v, out)
        if e is None:
            self.chunk_jobs[v.worker].extend(jobs)
        else:
            v.gpu = e
            v.gpu_jobs.extend(jobs)
            self.gpu_videos[e].append(v.task.video_id)
            self.summary.gpu_videos += 1

    def _gpu_side(self, v: _Video, plan: VideoPlan) -> int | None:
        """The embed worker whose GPU decodes this video, or None for the CPU path (always for a
        video with OCR: the GPU decoder hands out no OCR candidates)."""
        if not any(self.gpu_sessions) or v.ocr:
            return None
        if self.opts.decode == "auto" and not worth_gpu(plan.probe.coded_width, plan.probe.coded_height,
                                                        self.cfg.gpu_decode_min_pixels):
            return None
        from vidsearch.pipeline.nvdec import nvdec_refusal

        eligible = [caps is not None and ("embed", e) not in self.dead
                    and nvdec_refusal(plan.probe, caps, self.cfg.decode_max_pixels) is None
                    for e, caps in enumerate(self.gpu_caps)]
        return choose_side(eligible, [len(x) for x in self.gpu_videos], self.gpu_sessions,
                           cpu_room=not self.chunk_jobs[v.worker])

    def _on_gpu_decoded(self, call: _GpuDecodeCall, out: FramesChunk | GpuFallback) -> None:
        v = self.videos[call.job.video_id]
        v.gpu_busy = False
        if v.settled:
            if isinstance(out, FramesChunk) and out.kept:
                self.backend.release_gpu(call.worker, v.task.video_id, [call.key])
            return
        if isinstance(out, GpuFallback):
            self._gpu_to_cpu(v, [call.job], out.reason)
            return
        if not v.gpu_jobs and v.task.video_id in self.gpu_videos[call.worker]:
            self.gpu_videos[call.worker].remove(v.task.video_id)
        self._take_chunk(v, out, GpuKey(call.key), owner=call.worker)

    def _gpu_to_cpu(self, v: _Video, jobs: list[_ChunkJob], why: str) -> None:
        """Hand a video's remaining chunks (``jobs`` and those not yet sent) to the CPU path:
        never a failure row (NVDEC refused it, failed on it, or its embed worker died)."""
        if v.gpu is not None and v.task.video_id in self.gpu_videos[v.gpu]:
            self.gpu_videos[v.gpu].remove(v.task.video_id)
        rest = sorted([*jobs, *v.gpu_jobs], key=lambda j: j.lo)
        v.gpu_jobs.clear()
        v.gpu, v.gpu_busy = None, False
        if ("decode", v.worker) in self.dead:
            v.worker = self._live("decode", self.backend.n_decode)[0]
        self.chunk_jobs[v.worker].extend(rest)
        self.summary.gpu_fallbacks += 1
        _logger.info("%s: decoding on the CPU instead of the GPU (%s)", v.task.display_path, why)

    def _gpu_lost(self, e: int, why: str) -> None:
        """Embed worker ``e`` died: the frames it held are gone. Its chunks waiting for an embed
        call are decoded again on the CPU, and its videos continue there."""
        lost = [d for d in self.embed_ready if d.owner == e]
        self.embed_ready = collections.deque(d for d in self.embed_ready if d.owner != e)
        for d in lost:
            self._requeue_on_cpu(d, why)
        for vid in list(self.gpu_videos[e]):
            v = self.videos[vid]
            if not v.settled and not v.gpu_busy:
                self._gpu_to_cpu(v, [], why)

    def _requeue_on_cpu(self, d: _Decoded, why: str) -> None:
        """A GPU-decoded chunk whose frames were lost: decode it again on the CPU."""
        self.pending_clips -= len(d.chunk.kept)
        v = self.videos[d.video_id]
        if v.settled:
            return
        v.chunks_decoded -= 1
        self._gpu_to_cpu(v, [_ChunkJob(d.video_id, d.chunk.clip_lo, d.chunk.clip_hi)], why)

    def _on_decoded(self, call: _DecodeCall, out: FramesChunk | VideoError) -> None:
        v = self.videos[call.job.video_id]
        if v.ocr_pass:
            if isinstance(out, VideoError):
                self._text_pass_failed(v, out)
            elif v.ocr_error is None:
                self._take_ocr(v, call.job.lo, out, call.ocr_frames)
            return
        if v.settled:
            return
        if isinstance(out, VideoError):
            self._fail(v, out)
            return
        if v.ocr:
            self._take_ocr(v, call.job.lo, out, call.ocr_frames)
        self._take_chunk(v, out, call.frames)

    def _take_chunk(self, v: _Video, out: FramesChunk, frames: Any, owner: int | None = None) -> None:
        """A decoded chunk (either side): coverage bookkeeping, then the embed queue."""
        v.chunks_decoded += 1
        v.decoded_frames = (out.decoded_frames if v.decoded_frames is None
                            else min(v.decoded_frames, out.decoded_frames))
        v.truncated |= out.truncated
        v.decode_error = v.decode_error or out.error
        if out.kept:
            self.embed_ready.append(_Decoded(v.task.video_id, out, frames, owner))
            self.pending_clips += len(out.kept)
        else:
            v.chunks_embedded += 1
            self._maybe_finish(v)

    def _on_embedded(self, call: _EmbedCall, out: list[np.ndarray] | VideoError) -> None:
        self.summary.embed_calls += 1
        for d in call.batch:
            self.pending_clips -= len(d.chunk.kept)
        if isinstance(out, VideoError):
            for d in call.batch:
                self._fail(self.videos[d.video_id], out)
            return
        for d, emb in zip(call.batch, out, strict=True):
            v = self.videos[d.video_id]
            if v.settled:
                continue
            if np.isnan(emb).any():
                self._fail(v, VideoError("EmbedOOM", "embed", "a clip does not fit in GPU memory even alone "
                                         "(try a smaller model input or a larger GPU)"))
                continue
            for ci, row in zip(d.chunk.kept, emb, strict=True):
                v.embeddings[ci] = row
            self.clips_embedded += len(d.chunk.kept)
            self.clips_left -= len(d.chunk.kept)
            v.chunks_embedded += 1
            self._maybe_finish(v)

    def _on_worker_lost(self, call: _Call, running: bool, lost: WorkerLost) -> None:
        """A worker died with this call pending: retry it, or fail after repeated deaths (F3-F5).

        Only the call the worker was running is charged with the death; calls queued behind it
        are resubmitted as they are. A worker that will not come back is taken out of its pool
        and its queued work moves to the others (which plan such a video again themselves).
        """
        if isinstance(call, _GpuDecodeCall):
            # The embed worker died while decoding on its GPU: this video and the chunks that
            # worker held continue on the CPU path (its restart, if any, decodes new videos).
            if ("embed", call.worker) not in self.dead:
                try:
                    if not lost.permanent:
                        self.backend.await_worker("embed", call.worker)
                    else:
                        self.dead.add(("embed", call.worker))
                except WorkerLost:
                    self.dead.add(("embed", call.worker))
            v = self.videos[call.job.video_id]
            v.gpu_busy = False
            if not v.settled:
                self._gpu_to_cpu(v, [call.job], f"embed worker {call.worker} died ({str(lost)[:100]})")
            self._gpu_lost(call.worker, "its embed worker died")
            return
        pool, worker = call.pool, call.worker
        key = (pool, worker)
        if not lost.permanent and key not in self.dead:
            try:
                self.backend.await_worker(pool, worker)  # calls to a restarting actor are refused
            except WorkerLost as e:
                lost = e
        if lost.permanent and key not in self.dead:
            self.dead.add(key)
            _logger.error("%s worker %d is gone for good (%s); continuing with the others", pool, worker, lost)
            if pool == "decode":
                jobs, self.chunk_jobs[worker] = self.chunk_jobs[worker], collections.deque()
                for job in jobs:
                    v = self.videos[job.video_id]
                    v.worker = self._live("decode", self.backend.n_decode)[0]
                    self.chunk_jobs[v.worker].append(job)
        if isinstance(call, _EmbedCall) and any(d.owner is not None for d in call.batch):
            for d in call.batch:
                if d.owner is not None:
                    self._requeue_on_cpu(d, "its embed worker died")
            self._gpu_lost(worker, "its embed worker died")
            call = _EmbedCall(call.worker, tuple(d for d in call.batch if d.owner is None), call.deaths)
            if not call.batch:
                return
        if isinstance(call, (_SpeechCall, _SubtitleCall)):
            self._text_worker_lost(call, running, lost)
            return
        if isinstance(call, _OcrCall):
            self._ocr_worker_lost(call, running, lost)
            return
        if isinstance(call, _EmbedCall):
            deaths = call.deaths + running
            if deaths >= _WORKER_DEATHS_MAX:
                for d in call.batch:
                    self.pending_clips -= len(d.chunk.kept)
                err = VideoError("WorkerKilled", "embed", f"the embed worker died {deaths} times on this "
                                 f"video's batch (killed, e.g. out of memory); last: {str(lost)[:150]}")
                for d in call.batch:
                    self._fail(self.videos[d.video_id], err)
                return
            _logger.warning("embed worker %d died (%s); retrying its batch", worker, str(lost)[:150])
            target = worker if key not in self.dead else self._live("embed", self.backend.n_embed)[0]
            self._submit_embed(target, call.batch, deaths)
            return
        v = self.videos[call.job.video_id if isinstance(call, _DecodeCall) else call.video_id]
        if v.settled and not v.ocr_pass:
            return
        v.worker_deaths += running
        if v.worker_deaths >= _WORKER_DEATHS_MAX:
            self._fail_any(v, VideoError("WorkerKilled", "probe" if isinstance(call, _PlanCall) else "decode",
                                         f"the decode worker died {v.worker_deaths} times while handling this video "
                                         f"(killed, e.g. out of memory); last: {str(lost)[:150]}"))
            return
        _logger.warning("decode worker %d died (%s); retrying %s", worker, str(lost)[:150], v.task.display_path)
        w = v.worker if ("decode", v.worker) not in self.dead else self._live("decode", self.backend.n_decode)[0]
        v.worker = w
        if isinstance(call, _PlanCall):
            self._submit_plan(w, call.video_id)
        else:
            self._submit_decode(w, call.job)

    def _fail(self, v: _Video, err: VideoError) -> None:
        if v.settled:
            return
        if (err.stage in ("probe", "segment", "decode") and err.error_type not in _FILE_ACCESS_ERRORS
                and self._changed(v.task)):
            # A file still being written (B20) looks corrupt (moov not yet there) or cut short:
            # that verdict is about bytes that are no longer the file's, so it must not stick
            # (deterministic errors are never retried) nor count towards quarantine.
            err = VideoError("Unstable", err.stage, f"file changed while being ingested ({err.error_type}: "
                                                    f"{err.message}); retried next run")
        v.settled = True
        v.dropped = True  # not searchable: its text stages are not written (redone with it next run)
        vid = v.task.video_id
        self.chunk_jobs[v.worker] = collections.deque(j for j in self.chunk_jobs[v.worker] if j.video_id != vid)
        if v.gpu is not None:
            v.gpu_jobs.clear()
            if vid in self.gpu_videos[v.gpu]:
                self.gpu_videos[v.gpu].remove(vid)
            self.backend.release_gpu(v.gpu, vid, [])
        row = failure_row(v.task, err.error_type, err.stage, err.message, run_id=self.writer.run_id,
                          attempts=v.task.attempts, probe=v.plan.probe if v.plan else None)
        self._settle_failed(row, v.extra_rows)  # v stays in self.videos: late results are ignored
        self._advance(v)

    def _settle_failed(self, row: dict[str, Any], extra: list[dict[str, Any]] | None = None) -> None:
        self.summary.videos_failed += 1
        if len(self.summary.failures) < 1000:
            self.summary.failures.append({k: row[k] for k in ("path", "stage", "error_type", "error_message")})
        _logger.warning("failed: %s", row["error_message"])
        self.writer.add(PendingVideo(row=row, extra_rows=list(extra or [])))

    def _maybe_finish(self, v: _Video) -> None:
        if v.settled or v.plan is None or v.chunks_embedded < v.chunks_total:
            return
        plan = v.plan
        clips: list[ClipSpan] = [c for c in plan.clips if c.clip_index in v.embeddings]
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
            self.summary.videos_partial += 1
            self.summary.failures.append({k: row[k] for k in ("path", "stage", "error_type", "error_message")})
        else:
            self.summary.videos_done += 1
        emb = np.stack([v.embeddings[c.clip_index] for c in clips])
        self.summary.clips += len(clips)
        pending = PendingVideo(row=row, clips=clips, embeddings=emb, extra_rows=v.extra_rows)
        v.settled = True
        if self._text_missing(v):
            self.held[v.task.video_id] = pending  # committed with its transcript when it comes
            self._release_held(self.held_max)
        else:
            self._commit(v, pending)
        self._advance(v)
        v.embeddings.clear()

    # ---- on-screen text ------------------------------------------------------------------------
    def _take_ocr(self, v: _Video, lo: int, out: FramesChunk, frames: Any) -> None:
        """A decoded chunk's OCR candidates: to an OCR worker when it has frames to read."""
        meta = out.ocr if out.ocr is not None else OcrChunk((), "")
        v.ocr_chunks_decoded += 1
        self.summary.ocr_candidates += len(meta.times)
        self.summary.ocr_decode_s += meta.gate_s + meta.convert_s
        if meta.error is not None and v.ocr_error is None:
            v.ocr_error = ("OcrDecodeError", meta.error)
        v.ocr_calls += 1
        job = _OcrJob(v.task.video_id, lo, meta, frames)
        if meta.n_read and v.ocr_error is None:
            self.ocr_queue.append(job)
            self.ocr_waiting += meta.n_read
            self.summary.ocr_waiting_peak = max(self.summary.ocr_waiting_peak, self.ocr_waiting)
        else:
            self._ocr_resolved(v, job, (), queued=False)

    def _ocr_resolved(self, v: _Video, job: _OcrJob, boxes: tuple[Any, ...], queued: bool = True) -> None:
        """A chunk's readings are in (``boxes``: the lines of each frame read)."""
        if queued:
            self.ocr_waiting -= job.meta.n_read
        v.ocr_calls -= 1
        if not v.ocr_done:
            v.ocr_parts[job.lo] = (job.meta, boxes)
        self._settle_ocr(v)

    def _settle_ocr(self, v: _Video) -> None:
        """The video's screen text, once every chunk is decoded and read (or, after an error, once
        no OCR call of it is pending: the rest of its chunks are not read)."""
        if v.dropped or v.ocr_done or v.ocr_calls or v.plan is None:
            return
        if v.ocr_error is None and v.ocr_chunks_decoded < v.chunks_total:
            return
        v.ocr_done = True
        plan = v.plan
        if v.ocr_error is not None:
            etype, msg = v.ocr_error
            out = failed_outcome(v.task.video_id, "screen", etype, msg, self.summary.screen_status_model)
            out = replace(out, work_s=v.ocr_work_s)
        else:
            assert self.ocr_cfg is not None
            parts = [v.ocr_parts[k] for k in sorted(v.ocr_parts)]
            out = screen_outcome(v.task.video_id, parts, self.ocr_cfg, model_id=self.summary.screen_model,
                                 status_model=self.summary.screen_status_model, duration_s=plan.probe.duration_s,
                                 work_s=v.ocr_work_s)
        v.ocr_parts.clear()
        v.ocr_pass = False
        self._on_text(v, out)

    def _on_ocr(self, call: _OcrCall, out: OcrRead) -> None:
        job = call.job
        v = self.videos[job.video_id]
        v.ocr_work_s += out.work_s
        self.summary.ocr_work_s += out.work_s
        if out.error_type is None:
            self.summary.ocr_frames_read += len(out.boxes)
            self.ocr_read += len(out.boxes)
        elif v.ocr_error is None:
            v.ocr_error = (out.error_type, out.error_message or "text recognition failed")
        self._ocr_resolved(v, job, out.boxes)

    def _text_pass_failed(self, v: _Video, err: VideoError) -> None:
        """The OCR-only decode pass of a video embedded earlier failed (the file is unreadable now,
        the decoder crashed...): its text stages fail, the video and its clips stay."""
        if not v.ocr_pass:
            return
        v.ocr_pass = False
        vid = v.task.video_id
        self.chunk_jobs[v.worker] = collections.deque(j for j in self.chunk_jobs[v.worker] if j.video_id != vid)
        msg = f"decoding its frames for OCR failed ({err.error_type}: {err.message})"
        v.ocr_error = ("OcrDecodeError", msg)
        v.ocr_done = True
        if "subtitle" in v.text_want and "subtitle" not in v.text:  # its subtitles were to come with the plan
            self._on_text(v, failed_outcome(vid, "subtitle", err.error_type, err.message))
        out = failed_outcome(vid, "screen", "OcrDecodeError", msg, self.summary.screen_status_model)
        self._on_text(v, replace(out, work_s=v.ocr_work_s))

    def _fail_any(self, v: _Video, err: VideoError) -> None:
        """A decode worker's error on ``v``: the video fails, or, for an OCR-only pass, its text stages."""
        if v.text_only:
            self._text_pass_failed(v, err)
        else:
            self._fail(v, err)

    # ---- text stages -------------------------------------------------------------------------
    @staticmethod
    def _text_missing(v: _Video) -> bool:
        """Whether a text stage this run settles for ``v`` has not come back yet."""
        return any(k not in v.text for k in v.text_want)

    def _on_text(self, v: _Video, out: TextOutcome) -> None:
        """A text stage's outcome for ``v`` (speech, or the subtitles of a video embedded earlier)."""
        if v.dropped or out.kind in v.text or out.kind not in v.text_want:
            return  # failed meanwhile (nothing of it is written), or a duplicate
        v.text[out.kind] = out
        if out.kind == "speech":
            self.speech_audio_s += out.media_s or 0.0
        if self._text_missing(v):
            return
        vid = v.task.video_id
        if v.text_only:
            self._commit(v, PendingVideo(row=None))
            self.settled += 1
            self._tick(force=self.progress.tty)
        elif vid in self.held:
            self._commit(v, self.held.pop(vid))
        elif v.visual_written:
            self._commit(v, PendingVideo(row=None))  # its clips went ahead of its transcript
        # else: its clips are still being embedded; _maybe_finish commits both

    def _release_held(self, limit: int) -> None:
        """Commit the oldest embedded videos still waiting for a transcript, down to ``limit``.

        Their transcript follows in a text-only commit of this run (or, if the run stops first,
        the next run transcribes them: the video is done and has no speech status)."""
        while len(self.held) > limit:
            vid, pending = self.held.popitem(last=False)
            v = self.videos[vid]
            self.summary.speech_held_out += "speech" in v.text_want and "speech" not in v.text
            self.summary.screen_held_out += "screen" in v.text_want and "screen" not in v.text
            self._commit(v, pending)

    def _commit(self, v: _Video, pending: PendingVideo) -> None:
        """Hand ``pending`` to the writer with every text outcome of ``v`` not written yet."""
        for kind, out in v.text.items():
            if kind in v.text_written:
                continue
            pending.text.append(out)
            pending.text_status.append(status_row(out, path=v.task.display_path, attempts=v.text_want[kind],
                                                  run_id=self.writer.run_id, recorded_at=utcnow()))
            v.text_written.add(kind)
            self._count_text(v, out)
        if pending.row is not None:
            v.visual_written = True
        self.writer.add(pending)

    def _count_text(self, v: _Video, out: TextOutcome) -> None:
        """The run summary's text figures, for an outcome being written."""
        s = self.summary
        if out.status == TEXT_FAILED:
            if out.kind == "speech":
                s.speech_failed += 1
            elif out.kind == "screen":
                s.screen_failed += 1
            msg = f"{v.task.display_path!r}: {out.error_message}"
            stage = KIND_STAGE.get(out.kind, out.kind)
            if len(s.failures) < 1000:
                s.failures.append({"path": v.task.display_path, "stage": stage,
                                   "error_type": out.error_type, "error_message": msg})
            _logger.warning("%s failed (the clips stay): %s", stage, msg)
        elif out.kind == "subtitle" and out.status == TEXT_OK:
            s.subtitle_videos += 1
            s.subtitle_segments += len(out.rows)
        elif out.kind == "speech":
            s.speech_videos += out.status == TEXT_OK
            s.speech_silent += out.status == TEXT_SILENT
            s.speech_no_audio += out.status == TEXT_NO_AUDIO
            s.speech_segments += len(out.rows)
        elif out.kind == "screen":
            s.screen_videos += out.status == TEXT_OK
            s.screen_none += out.status == TEXT_NONE
            s.screen_rows += len(out.rows)
            s.ocr_video_s += out.media_s or 0.0
        if out.kind == "speech":
            s.speech_audio_s += out.media_s or 0.0
            s.speech_work_s += out.work_s or 0.0

    def _text_worker_lost(self, call: _SpeechCall | _SubtitleCall, running: bool, lost: WorkerLost) -> None:
        """A speech worker (or the decode worker reading subtitles) died under this call: retry it
        on a live worker, or after repeated deaths settle the stage as failed (the clips stay)."""
        v = self.videos[call.video_id]
        kind = "speech" if isinstance(call, _SpeechCall) else "subtitle"
        if v.dropped or kind in v.text:
            return
        v.speech_deaths += running
        if v.speech_deaths >= _WORKER_DEATHS_MAX:
            self._on_text(v, failed_outcome(
                v.task.video_id, kind, "WorkerKilled", f"the {call.pool} worker died {v.speech_deaths} times on "
                f"this video (killed, e.g. out of memory); last: {str(lost)[:150]}", self.summary.speech_model
                if kind == "speech" else None))
            return
        _logger.warning("%s worker %d died (%s); retrying %s", call.pool, call.worker, str(lost)[:150],
                        v.task.display_path)
        n = self.backend.n_speech if kind == "speech" else self.backend.n_decode
        w = call.worker if (call.pool, call.worker) not in self.dead else self._live(call.pool, n)[0]
        if isinstance(call, _SpeechCall):
            self._track(self.backend.submit_speech(w, v.task, v.origin_s), _SpeechCall(v.task.video_id, w))
        else:
            self._track(self.backend.submit_subtitles(w, v.task), _SubtitleCall(v.task.video_id, w))

    def _ocr_worker_lost(self, call: _OcrCall, running: bool, lost: WorkerLost) -> None:
        """An OCR worker died under this call: read the chunk again on a live worker (its frames are
        still in the object store), or after repeated deaths fail the video's OCR (the clips stay)."""
        job = call.job
        v = self.videos[job.video_id]
        v.ocr_deaths += running
        if v.dropped or v.ocr_error is not None or v.ocr_deaths >= _WORKER_DEATHS_MAX:
            if not v.dropped and v.ocr_error is None:
                v.ocr_error = ("WorkerKilled", f"the ocr worker died {v.ocr_deaths} times on this video (killed, "
                                               f"e.g. out of memory); last: {str(lost)[:150]}")
            self._ocr_resolved(v, job, ())
            return
        _logger.warning("ocr worker %d died (%s); retrying %s", call.worker, str(lost)[:150], v.task.display_path)
        w = call.worker if ("ocr", call.worker) not in self.dead else self._live("ocr", self.backend.n_ocr)[0]
        self._track(self.backend.submit_ocr(w, v.task, job.frames), _OcrCall(job, w))

    @staticmethod
    def _changed(task: VideoTask) -> bool:
        """Whether the file's content differs from what discovery fingerprinted."""
        try:
            return ids.video_fingerprint(task.path_bytes) != task.video_id
        except OSError:
            return False  # vanished or unreadable: the error at hand says enough

    # ---- progress --------------------------------------------------------------------------
    def _advance(self, v: _Video) -> None:
        """A video of this run's work was settled."""
        self.settled += 1
        if v.plan is None:
            self.settled_unplanned += 1
        else:  # its clips that were not embedded never will be (failed, dropped as static or cut)
            self.clips_left -= len(v.plan.clips) - len(v.embeddings)
        self._tick(force=self.progress.tty)

    def _tick(self, force: bool = False) -> None:
        """Progress figures, at most once a second (a full pass over the videos for the ETA)."""
        now = time.monotonic()
        if not force and now - self.last_tick < 1.0:
            return
        self.last_tick = now
        elapsed = now - self.t0
        self.progress.update(Snapshot(
            videos_settled=min(self.settled, self.total), videos_total=self.total, clips=self.clips_embedded,
            failed=self.summary.videos_failed + self.summary.videos_partial, elapsed_s=elapsed,
            eta_s=self._eta(elapsed), speech_audio_s=self.speech_audio_s if self.backend.n_speech else None,
            ocr_read=self.ocr_read if self.backend.n_ocr else None, ocr_waiting=self.ocr_waiting))

    def _eta(self, elapsed: float) -> float | None:
        """Seconds left at the clip rate so far: clips of planned videos not embedded yet, plus
        the mean clips per planned video for each video not planned yet."""
        if self.clips_embedded == 0 or elapsed <= 0 or not self.planned:
            return None
        unplanned = self.total - self.planned - self.settled_unplanned
        left = max(0, self.clips_left) + unplanned * self.clips_planned / self.planned
        return left / (self.clips_embedded / elapsed)

