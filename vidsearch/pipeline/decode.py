"""Decode stage: probe + segment + sample frames of one video, in a killable child process.

Why a child process (docs/RELIABILITY.md rule 1, F1/F2): a decoder that segfaults or hangs on one
input must fail that video, not the run. [M] Ray Data's default path looped forever on a
segfaulting decoder. :class:`DecodeWorker` keeps one persistent ``spawn`` child; every job has a
wall-clock timeout (reset by each reply, so long videos are fine as long as chunks come back).
A child that dies becomes ``DecoderCrash(signal=SIGSEGV)``, one that stops answering is killed
and becomes ``DecodeTimeout``; the next job gets a fresh child.

Decoding (in the child): one reader per video (:mod:`vidsearch.pipeline.readers`: PyAV first,
decord as the fallback), kept open between the video's chunks (chunks come in order, so a video
is read in one forward pass, never re-seeked per chunk). A reader that opens the file but fails
on its first chunk hands the video to the next reader. The chunk's clips are assembled from the
frames it delivers (resized as they were decoded, so full-resolution frames never leave the
reader); coverage (rule 2) compares the frames a reader delivered, lost or knew of with the
probe's frame count, and the runner marks a video ``partial`` below ``min_coverage``.
:class:`DecodeWorker` keeps the plans of the videos it planned: the driver's chunk requests
name the video (:class:`~vidsearch.pipeline.types.ChunkRequest`) instead of sending the plan back.

Transient I/O errors (docs/RELIABILITY.md F18): an ``OSError`` such as EIO or ESTALE while the child
reads a video (a network filesystem hiccup) comes back as ``IOError``; :class:`DecodeWorker`
retries that job with exponential backoff (``IngestCfg.io_retries``, ``io_retry_backoff_s``, as
cosmos-curate's ``do_with_retries``) and only then reports it, so the runner writes an
``IOError`` failure row (retried by the next run).

Test hooks (F1, F2, F3, F5, F18): ``VIDSEARCH_TEST_DECODE_FAULT`` (:mod:`vidsearch.pipeline.faults`,
read by the driver and passed to workers) makes the child segfault, hang, stall or fail reads
on a file whose path contains a substring. Inert otherwise.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import replace
from typing import Any

import numpy as np

from vidsearch.pipeline import readers
from vidsearch.pipeline.faults import DecodeFaults
from vidsearch.pipeline.ocr import OCR_ONLY_WINDOW_S, CandidateTap, ocr_frame_size, ocr_sample_indices
from vidsearch.pipeline.readers import FrameReader
from vidsearch.pipeline.text import read_subtitle_outcome
from vidsearch.pipeline.types import (
    ChunkRequest,
    ClipSpan,
    FramesChunk,
    OcrPlan,
    TextOutcome,
    VideoError,
    VideoPlan,
    VideoTask,
    is_transient_io,
)
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.model_config import PreprocessCfg
from vidsearch.schemas.ocr_config import OcrCfg

_logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# In-child work
# ---------------------------------------------------------------------------------------------
class ChildState:
    """Per-child cache: the open reader of the video being decoded (chunks come in order), and
    its OCR candidate tap (``--ocr``; kept by :meth:`reset`, which a reader change also calls)."""

    def __init__(self) -> None:
        self.key: tuple[str, str] | None = None
        self.reader: FrameReader | None = None
        self.last_sig: np.ndarray | None = None
        self.fd: int | None = None
        self.failed_readers: set[str] = set()  # readers that failed on this video (kept by reset())
        self.tap: CandidateTap | None = None

    def reset(self) -> None:
        if self.reader is not None:
            with contextlib.suppress(Exception):
                self.reader.close()
        if self.fd is not None:
            os.close(self.fd)
        self.key, self.reader, self.last_sig, self.fd = None, None, None, None


def _child_path(path_bytes: bytes, state: ChildState | None = None) -> str:
    try:
        p = path_bytes.decode("utf-8")
        if "\n" not in p:
            return os.path.abspath(p)
    except UnicodeDecodeError:
        pass
    # decord encodes str paths and fails on non-UTF-8 names (B17): hand it an fd path instead.
    fd = os.open(path_bytes, os.O_RDONLY)
    if state is not None:
        state.fd = fd
    return f"/proc/self/fd/{fd}"


def plan_video(task: VideoTask, cfg: IngestCfg, pp: PreprocessCfg, ocr: OcrCfg | None = None,
               ocr_only: bool = False) -> VideoPlan:
    """Probe and segment one video (runs in the child).

    The frame timestamps end here: segmentation is their last user, so the plan that travels to
    the driver and back carries clip spans, not one float per frame. With ``ocr`` the plan also
    lists the OCR candidate frames (``OcrPlan``); ``ocr_only`` plans a decode pass for them alone
    (a video embedded earlier): its clips are fixed windows of ``OCR_ONLY_WINDOW_S``, never
    embedded, only the chunks of the pass (no scene detection, which would decode it once more).

    Failure branches: every probe error (see :func:`vidsearch.pipeline.probe.probe`), scene
    detection ``DecodeTimeout``/``DecodeError``, ``NoClips``.
    """
    from vidsearch.pipeline.probe import open_path, probe
    from vidsearch.pipeline.segment import detect_cuts, plan_clips

    if ocr_only:
        cfg = replace(cfg, segment="fixed", clip_seconds=OCR_ONLY_WINDOW_S, stride=OCR_ONLY_WINDOW_S)
    info, pts_s = probe(task.path_bytes, cfg)
    cuts: list[float] = []
    if cfg.segment == "shots" and info.frame_count > 1:
        with open_path(task.path_bytes) as path:
            fds = (int(path.rsplit("/", 1)[1]),) if path.startswith("/proc/self/fd/") else ()
            cuts = detect_cuts(path, info.demuxer, cfg.scene_threshold, cfg.decode_timeout_s, fds)
    clips = plan_clips(pts_s, info.duration_s, cfg, pp.num_frames, pp.sampling, cuts)
    # Subtitles are always read (issue 14), here: the probe just told whether the container has
    # subtitle streams (none: only the sidecar files are looked for) and where its time zero is.
    text = (read_subtitle_outcome(task.path_bytes, task.video_id, origin_s=info.origin_s,
                                  embedded=info.subtitle_streams > 0),)
    ocr_plan = None
    if ocr is not None:
        idx = ocr_sample_indices(pts_s, ocr.interval_s)
        ocr_plan = OcrPlan(len(idx), ocr_frame_size(info.width, info.height, ocr.long_side), tuple(idx),
                           tuple(float(pts_s[i]) for i in idx))
    return VideoPlan(task=task, probe=info, clips=clips,
                     expected_frames=max(info.frame_count, info.claimed_frames, info.expected_frames), text=text,
                     ocr=ocr_plan, ocr_only=ocr_only)


_START_TIMEOUT_S = 120.0  # a decode child's imports; generous for a loaded machine
# Plans a worker keeps. The driver gives a worker a new video only once the chunks of the last
# one are queued, so two or three are live at a time; older ones belong to videos that failed.
_PLANS_KEPT = 8


def _open_reader(plan: VideoPlan, state: ChildState, cfg: IngestCfg, pp: PreprocessCfg) -> FrameReader:
    """The first reader of :func:`readers.reader_order` that opens the file, skipping those that
    already failed on this video (``state.failed_readers``, which gains those that fail here).

    Raises:
        VideoError: ``UnsupportedCodec`` when none does.
    """
    import av

    errors = []
    for name in readers.reader_order():
        if name in state.failed_readers:
            continue
        try:
            return readers.READERS[name](plan, _child_path(plan.task.path_bytes, state), cfg, pp)
        except MemoryError:
            raise
        except av.error.FFmpegError as e:
            if is_transient_io(e):
                raise
            errors.append(f"{name}: {str(e)[:120]}")
        except OSError:
            raise  # the file itself (vanished, unreadable): not a codec problem
        except Exception as e:  # noqa: BLE001 - decord raises bare RuntimeError/DECORDError subclasses
            errors.append(f"{name}: {str(e)[:120]}")
        _logger.info("%s cannot open %s (%s)", name, plan.task.display_path, errors[-1])
        state.failed_readers.add(name)
        state.reset()
    raise VideoError("UnsupportedCodec", "decode",
                     f"codec {plan.probe.codec}: no reader opens it ({'; '.join(errors) or 'none left to try'})")


def _static_signature(clip_frames: Any) -> np.ndarray:
    """(T, S, S, 3) -> (T, 16, 16) float grey thumbnails for the near-static test (a numpy
    array, or a torch tensor of the GPU reader: computed where it lies, the thumbnails come back)."""
    if not isinstance(clip_frames, np.ndarray):
        g_t = clip_frames.float().mean(dim=-1)  # (T, S, S)
        t, s, _ = g_t.shape
        k = max(1, s // 16)
        g_t = g_t[:, : k * (s // k), : k * (s // k)]
        return np.asarray(g_t.reshape(t, s // k, k, s // k, k).mean(dim=(2, 4)).cpu().numpy(), np.float32)
    g = clip_frames.astype(np.float32).mean(axis=-1)
    t, s, _ = g.shape
    k = max(1, s // 16)
    g = g[:, : k * (s // k), : k * (s // k)]
    return g.reshape(t, s // k, k, s // k, k).mean(axis=(2, 4))


def ocr_bounds(plan: VideoPlan, lo: int, hi: int) -> tuple[int, int | None]:
    """Frames ``[a, b)`` whose OCR candidates belong to the chunk of clips ``[lo, hi)`` (b None:
    to the end): from its first clip's start (0 for the first chunk) to the next chunk's first
    clip's start. Each candidate is handed out by exactly one chunk, whatever the reader decoded."""
    a = 0 if lo == 0 else plan.clips[lo].start_frame
    return a, (plan.clips[hi].start_frame if hi < len(plan.clips) else None)


def decode_chunk(plan: VideoPlan, lo: int, hi: int, cfg: IngestCfg, pp: PreprocessCfg,
                 state: ChildState, ocr: OcrCfg | None = None) -> FramesChunk:
    """Decode the sampled frames of clips ``[lo, hi)`` of ``plan`` (runs in the child), and with
    ``ocr`` (the plan has OCR candidates) the chunk's candidates; an ``ocr_only`` plan decodes
    no clip frame.

    Failure branches: no reader opens the file -> ``UnsupportedCodec``; a reader that opened the
    file but fails on its first chunk -> the next reader decodes the whole video; a decoder error
    mid-way ends the chunk early (``truncated``; the runner records partial coverage; never an
    exception); zero clips decodable in the first chunk -> the runner's ``NoClips``. OCR
    candidates that cannot be made are the chunk's ``ocr.error`` (a failure of stage ocr only).
    """
    key = (plan.task.video_id, plan.task.display_path)
    a, b = ocr_bounds(plan, lo, hi)
    if state.key != key or state.reader is None:
        state.reset()
        state.failed_readers.clear()
        state.tap = None
        if ocr is not None and plan.ocr is not None and plan.ocr.indices:
            state.tap = CandidateTap(ocr, plan.ocr.indices, plan.ocr.times, plan.ocr.size, plan.probe.rotation,
                                     start=a)
        state.reader = _open_reader(plan, state, cfg, pp)
        state.key = key
    reader = state.reader
    clips = () if plan.ocr_only else plan.clips[lo:hi]
    wanted = sorted({i for c in clips for i in c.frame_indices})
    # Frames the next chunks may still ask for (overlapping clips): the reader keeps those.
    later = None if plan.ocr_only else min((min(c.frame_indices) for c in plan.clips[hi:hi + 64]), default=None)
    through = state.tap.last_in(a, b) if state.tap is not None else None
    while True:
        try:
            reader.on_tap = state.tap.on_frame if state.tap is not None else None
            got, ended, err = reader.get(wanted, later, through)
            break
        except Exception as e:  # noqa: BLE001 - decord raises untyped errors on corrupt data
            if is_transient_io(e) or _is_allocation_failure(e):
                raise
            if lo == 0 and set(readers.reader_order()) - state.failed_readers - {reader.name}:
                # The reader opened the file but cannot read it: the next one decodes the video.
                _logger.info("%s fails on %s (%s); trying the next reader", reader.name,
                             plan.task.display_path, str(e)[:120])
                state.failed_readers.add(reader.name)
                state.reset()
                state.reader = reader = _open_reader(plan, state, cfg, pp)
                state.key = key
                continue
            got, ended, err = _clip_by_clip(reader, clips, e)
            break
    if plan.ocr_only:
        chunk = FramesChunk(video_id=plan.task.video_id, clip_lo=lo, clip_hi=hi, frames=None,
                            decoded_frames=max(0, plan.probe.frame_count - reader.lost), decoder=reader.name,
                            error=err)
    else:
        chunk = _assemble(plan, lo, hi, got, ended, err, reader, cfg, pp, state)
    if state.tap is not None:
        chunk.ocr, chunk.ocr_frames = state.tap.take(a, b)
    return chunk


def _clip_by_clip(reader: FrameReader, clips: tuple[ClipSpan, ...], first_error: Exception) -> readers.ReadResult:
    """After a failed request: how far the reader gets clip by clip (decord cannot tell how far
    it got inside a failed batch)."""
    got: dict[int, np.ndarray] = {}
    ended = clips[0].frame_indices[0] if clips else 0
    err = f"{reader.name}: {first_error}"
    for c in clips:
        try:
            part, _, perr = reader.get(list(c.frame_indices))
        except Exception as e2:  # noqa: BLE001
            err = f"{reader.name}: {e2}"
            break
        if perr or len(part) < len(set(c.frame_indices)):
            break
        got.update(part)
        ended = c.end_frame
    return readers.ReadResult(got, ended, err)


def _assemble(plan: VideoPlan, lo: int, hi: int, got: dict[int, np.ndarray], ended: int | None,
              err: str | None, reader: FrameReader, cfg: IngestCfg, pp: PreprocessCfg,
              state: ChildState) -> FramesChunk:
    chunk, state.last_sig = assemble_chunk(plan, lo, hi, got, ended, err, reader, cfg, pp, state.last_sig)
    return chunk


def assemble_chunk(plan: VideoPlan, lo: int, hi: int, got: dict[int, Any], ended: int | None,
                   err: str | None, reader: FrameReader, cfg: IngestCfg, pp: PreprocessCfg,
                   last_sig: np.ndarray | None) -> tuple[FramesChunk, np.ndarray | None]:
    """The chunk's clips from the frames a reader delivered, and the video's coverage so far.

    Frames are numpy arrays (CPU readers) or torch tensors (the GPU reader: the chunk's frames
    are then one tensor on the GPU). Returns the chunk and the last kept clip's static
    signature (``skip_static``), which the caller keeps for the video's next chunk.
    """
    clips = plan.clips[lo:hi]
    kept: list[int] = []
    arrays: list[Any] = []
    on_torch = bool(got) and not isinstance(next(iter(got.values())), np.ndarray)
    for c in clips:
        if not all(i in got for i in c.frame_indices):
            break  # clips after the first undecodable one are not trusted either
        if on_torch:
            import torch

            frames: Any = torch.stack([got[i] for i in c.frame_indices])  # (T, S, S, 3) on the reader's device
        else:
            frames = np.stack([got[i] for i in c.frame_indices])  # (T, S, S, 3): readers resize as they decode
        if cfg.skip_static:
            sig = _static_signature(frames)
            inner = float(np.abs(np.diff(sig, axis=0)).mean()) if len(sig) > 1 else 0.0
            if (last_sig is not None and inner < cfg.static_threshold
                    and float(np.abs(sig - last_sig).mean()) < cfg.static_threshold):
                continue  # near-static and the same picture as the last kept clip
            last_sig = sig
        kept.append(c.clip_index)
        arrays.append(frames)
    truncated = err is not None and ended is not None and any(
        i >= ended for c in clips for i in c.frame_indices)
    S = pp.img_size
    if on_torch and arrays:
        import torch

        out: Any = torch.stack(arrays)  # (n, T, S, S, 3)
    else:
        out = np.stack(arrays) if arrays else np.zeros((0, pp.num_frames, S, S, 3), np.uint8)
    decoded = ended if truncated and ended is not None else plan.probe.frame_count
    if hi == len(plan.clips):
        reader.finish()  # the video's last chunk: frames after the last sampled one count too
    if reader.lost:  # cumulative over the video: the runner keeps the minimum
        decoded = max(0, decoded - reader.lost)
        err = err or f"{reader.name}: {reader.lost} frames did not decode"
    if reader.available is not None:
        decoded = min(decoded, reader.available)
        truncated = truncated or reader.available < plan.probe.frame_count and hi == len(plan.clips)
    return FramesChunk(video_id=plan.task.video_id, clip_lo=lo, clip_hi=hi, frames=out, kept=kept,
                       decoded_frames=decoded, truncated=truncated, decoder=reader.name, error=err), last_sig


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when its parent dies (a worker killed by -9 or the OOM
    killer), so a child stuck in a hanging decoder does not outlive it. No-op elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _limit_memory(mb: int) -> None:
    """Let this process's writable memory grow by at most ``mb`` MiB from now (RLIMIT_DATA: heap
    and private writable mappings, what decoded frames live in; not address space reserved and
    never touched, which RLIMIT_AS would count). An allocation past it fails with ENOMEM, which
    becomes ``TooLarge``. Relative to the start-up (imports), which differs between machines
    and torch builds, so that the setting means the same everywhere."""
    import resource

    if mb <= 0:
        return
    want = _status_bytes("VmData") + (mb << 20)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (want, hard))


def _status_bytes(key: str) -> int:
    """A memory figure of this process from /proc/self/status (VmHWM, VmRSS, VmData), or 0."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _peak_rss_bytes() -> int:
    """This process's peak resident memory. VmHWM, not ``ru_maxrss``: Linux carries ru_maxrss
    over ``execve``, so a spawned child would report its forking parent's peak as its own."""
    peak = _status_bytes("VmHWM")
    if peak:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _is_allocation_failure(e: BaseException) -> bool:
    """An allocation failed under the child's memory cap: ``MemoryError``, or torch's CPU
    allocator's ``RuntimeError("... can't allocate memory ...")``."""
    return isinstance(e, MemoryError) or "can't allocate memory" in str(e)


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, so that the next reading is this job's peak


def _child_main(conn: Any, cfg: IngestCfg, pp: PreprocessCfg, fault: str | None, ocr: OcrCfg | None = None) -> None:
    # Ctrl-C goes to the whole foreground process group; the parent decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    import av  # noqa: F401 - imported before the memory cap: start-up is not a video's cost
    import torch

    torch.set_num_threads(1)
    start_rss, start_data = _status_bytes("VmRSS"), _status_bytes("VmData")
    _limit_memory(cfg.decode_memory_mb)
    conn.send(("ready",))
    cap = cfg.decode_memory_mb << 20
    oom = f"out of memory (decode child capped at {cfg.decode_memory_mb} MiB over its start-up; --decode-memory)"
    state = ChildState()
    hooks = DecodeFaults(fault)
    lifetime_peak = _peak_rss_bytes()

    def near_cap() -> bool:
        # ffmpeg reports some failed allocations as invalid data (the h264 decoder) or EAGAIN
        # (swscale): a job that failed with its memory (still held: call this before
        # state.reset()) or its peak close to the cap is taken as out of memory.
        if cap <= 0:
            return False
        held = _status_bytes("VmData") - start_data
        return held >= cap - max(32 << 20, cap // 8) or _peak_rss_bytes() - start_rss >= 0.8 * cap

    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        kind = job[0]
        stage = "probe" if kind == "plan" else "decode"
        if kind != "stats":
            lifetime_peak = max(lifetime_peak, _peak_rss_bytes())
            _reset_peak_rss()
        try:
            if kind == "stats":
                result: Any = {"peak_rss_bytes": max(lifetime_peak, _peak_rss_bytes()), "start_rss_bytes": start_rss}
            elif kind == "plan":
                hooks.before_job(job[1].display_path)
                result = plan_video(job[1], cfg, pp, ocr if job[2] else None, ocr_only=job[3])
            elif kind == "subtitles":  # a video embedded earlier: its subtitles only
                hooks.before_job(job[1].display_path)
                result = read_subtitle_outcome(job[1].path_bytes, job[1].video_id)
            elif kind == "decode":
                _, plan, lo, hi = job
                hooks.before_job(plan.task.display_path)
                result = decode_chunk(plan, lo, hi, cfg, pp, state, ocr)
                if result.truncated and near_cap():
                    raise MemoryError(result.error)
            else:
                return
            conn.send(("ok", result))
        except VideoError as e:
            oom_like = near_cap()
            state.reset()
            if e.error_type in ("UnsupportedCodec", "CorruptContainer", "DecodeError") and oom_like:
                conn.send(("err", "TooLarge", e.stage, f"{oom}: {e.message}"))
            else:
                conn.send(("err", e.error_type, e.stage, e.message))
        except OSError as e:
            oom_like = near_cap()
            state.reset()
            if e.errno == errno.ENOMEM or oom_like:
                # Under the cap a failed allocation can surface as EAGAIN (swscale): not the
                # filesystem's hiccup that is_transient_io retries.
                conn.send(("err", "TooLarge", stage, f"{oom}: {type(e).__name__}: {str(e)[:160]}"))
                continue
            if not is_transient_io(e):
                conn.send(("err", "DecodeError", stage, f"{type(e).__name__}: {str(e)[:200]}"))
                continue
            conn.send(("err", "IOError", stage, f"read error: {e.strerror or e} (errno {e.errno})"))
        except Exception as e:  # noqa: BLE001 - a decoder bug on one file must stay one failed video
            state.reset()
            if _is_allocation_failure(e):
                conn.send(("err", "TooLarge", "decode", oom))
                continue
            _logger.debug("decode job failed", exc_info=True)
            conn.send(("err", "DecodeError", "decode", f"{type(e).__name__}: {str(e)[:200]}"))


# ---------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------
class DecodeWorker:
    """One persistent decode child; ``setup()`` / ``plan()`` / ``decode()`` / ``close()``.

    Plain class (no Ray): the local runner uses it directly and Ray's decode actors wrap it.
    It keeps the plans of the videos it planned (the driver's chunk requests only name them; see
    :class:`~vidsearch.pipeline.types.ChunkRequest`), dropping a plan after its last chunk.
    """

    def __init__(self, cfg: IngestCfg, pp: PreprocessCfg, fault: str | None = None, ocr: OcrCfg | None = None) -> None:
        self.cfg, self.pp, self.fault, self.ocr = cfg, pp, fault, ocr
        self._proc: Any = None
        self._conn: Any = None
        self._plans: collections.OrderedDict[str, VideoPlan] = collections.OrderedDict()
        self.replans = 0  # chunk requests for a video this worker had no plan of
        self.restarts = 0
        self.retired_peak_growth_bytes = 0  # the largest peak-over-start-up of a retired child

    def setup(self) -> None:
        """Start the child (it imports decord, PyAV and torch once) and wait until it is ready.

        Waiting here keeps start-up out of the per-job timeout: a child restarted after a killed
        job takes seconds to import torch, which must not time out the next, innocent video.

        Raises:
            VideoError: ``DecoderCrash`` when the child dies or is not ready within
                ``_START_TIMEOUT_S``.
        """
        if self._proc is not None and self._proc.is_alive():
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(child, self.cfg, self.pp, self.fault, self.ocr),
                                 daemon=True, name="vidsearch-decode")
        self._proc.start()
        child.close()
        self._conn = parent
        try:
            ready = parent.poll(_START_TIMEOUT_S) and parent.recv() == ("ready",)
        except (EOFError, OSError):
            ready = False
        if not ready:
            self._kill()
            raise VideoError("DecoderCrash", "decode",
                             f"the decode process did not start within {_START_TIMEOUT_S:.0f} s")

    def close(self) -> None:
        """Stop the child."""
        if self._conn is not None:
            with contextlib.suppress(OSError, BrokenPipeError):
                self._conn.send(("stop",))
            self._conn.close()
        if self._proc is not None:
            self._proc.join(timeout=2)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._proc = self._conn = None

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        if self._proc is not None:
            self._proc.join()
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None
        self.restarts += 1

    def _call(self, job: tuple[Any, ...], stage: str) -> Any:
        self.setup()
        try:
            self._conn.send(job)
        except (BrokenPipeError, OSError):
            self._kill()
            self.setup()
            self._conn.send(job)
        timeout = self.cfg.decode_timeout_s
        if not self._conn.poll(timeout):
            self._kill()
            raise VideoError("DecodeTimeout", stage, f"decoder gave no result within {timeout:.0f} s; killed")
        try:
            reply = self._conn.recv()
        except (EOFError, ConnectionError, OSError):
            self._proc.join(timeout=5)
            code = self._proc.exitcode
            self._kill()
            if code is not None and code < 0:
                try:
                    name = signal.Signals(-code).name
                except ValueError:
                    name = str(-code)
                raise VideoError("DecoderCrash", stage, f"decoder crashed (signal={name})") from None
            raise VideoError("DecoderCrash", stage, f"decoder exited with code {code}") from None
        if reply[0] == "err":
            if reply[1] == "TooLarge":
                self._retire_after_oom()
            raise VideoError(reply[1], reply[2], reply[3])
        return reply[1]

    def _retire_after_oom(self) -> None:
        """Replace a child that hit its memory cap. What the failed job allocated may stay held
        (allocator arenas, the decoder's buffer pools) and fail the next, small video with
        EAGAIN or ENOMEM; a fresh child gives that video its whole budget back. The retired
        child's peak growth is kept in ``retired_peak_growth_bytes``."""
        with contextlib.suppress(OSError, EOFError, TypeError, KeyError, IndexError):
            self._conn.send(("stats",))
            if self._conn.poll(5):
                st = self._conn.recv()[1]
                growth = int(st["peak_rss_bytes"]) - int(st["start_rss_bytes"])
                self.retired_peak_growth_bytes = max(self.retired_peak_growth_bytes, growth)
        self.close()
        self.restarts += 1

    def _call_retrying(self, job: tuple[Any, ...], stage: str, what: str) -> Any:
        """``_call``, retrying a transient read error (``IOError``) with exponential backoff."""
        tries = 1 + max(0, self.cfg.io_retries)
        for attempt in range(1, tries + 1):
            try:
                return self._call(job, stage)
            except VideoError as e:
                if e.error_type != "IOError":
                    raise
                if attempt == tries:
                    raise VideoError("IOError", e.stage, f"{e.message}; gave up after {tries} attempts") from None
                delay = self.cfg.io_retry_backoff_s * 2 ** (attempt - 1)
                _logger.warning("%s: %s (attempt %d of %d); retrying in %.2f s", what, e.message,
                                attempt, tries, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def memory_stats(self) -> dict[str, int]:
        """The current decode child's ``peak_rss_bytes`` (its lifetime VmHWM) and
        ``start_rss_bytes`` (after its imports, before any video)."""
        return dict(self._call(("stats",), "decode"))

    def peak_rss_bytes(self) -> int:
        """Peak resident memory of the current decode child, in bytes."""
        return self.memory_stats()["peak_rss_bytes"]

    def plan(self, task: VideoTask, ocr: bool = False, ocr_only: bool = False) -> VideoPlan | VideoError:
        """Probe + segment ``task``; per-video errors come back as values (errors as data).

        ``ocr``: list its OCR candidates (the worker's ``OcrCfg``); ``ocr_only``: plan a decode
        pass for them alone (see :func:`plan_video`). The plan returned carries their count only;
        the worker keeps the list for the video's chunks.

        Failure branches: any probe/segment ``VideoError``, ``DecoderCrash`` (the child died: it
        is restarted for the next job), ``DecodeTimeout`` (the child was killed), ``IOError``
        (a read kept failing after the retries).
        """
        want_ocr = (ocr or ocr_only) and self.ocr is not None
        try:
            plan: VideoPlan = self._call_retrying(("plan", task, want_ocr, ocr_only), "probe", task.display_path)
        except VideoError as e:
            return e
        self._plans[task.video_id] = plan
        while len(self._plans) > _PLANS_KEPT:  # only videos that failed elsewhere stay unfinished
            self._plans.popitem(last=False)
        return replace(plan, ocr=plan.ocr.summary()) if plan.ocr is not None else plan

    def subtitles(self, task: VideoTask) -> TextOutcome | VideoError:
        """The subtitles of a video embedded by an earlier run (no probe, no plan, no frames).

        Failure branches as :meth:`plan` (the child crashed or hung on the file); a subtitle that
        does not read is a note of the outcome, not an error.
        """
        try:
            out: TextOutcome = self._call_retrying(("subtitles", task), "subtitles", task.display_path)
        except VideoError as e:
            return e
        return out

    def decode(self, request: ChunkRequest) -> FramesChunk | VideoError:
        """Frames of clips ``[request.lo, request.hi)`` of a planned video.

        Failure branches as :meth:`plan` plus ``UnsupportedCodec``; a video this worker must plan
        again (see :class:`ChunkRequest`) whose new plan differs from the driver's -> ``Unstable``.
        """
        task = request.task
        plan = self._plans.get(task.video_id)
        if plan is None:
            self.replans += 1
            _logger.info("%s: planning again (this worker did not plan it)", task.display_path)
            replanned = self.plan(task, ocr=request.ocr, ocr_only=request.ocr_only)
            if isinstance(replanned, VideoError):
                return replanned
            if len(replanned.clips) != request.n_clips:
                self._plans.pop(task.video_id, None)
                return VideoError("Unstable", "decode", f"planned again: {len(replanned.clips)} clips, not "
                                                        f"{request.n_clips} (file changed?); retried next run")
            plan = self._plans[task.video_id]
        try:
            out: FramesChunk = self._call_retrying(("decode", plan, request.lo, request.hi), "decode",
                                                   task.display_path)
        except VideoError as e:
            self._plans.pop(task.video_id, None)
            return e
        if request.hi >= len(plan.clips):
            self._plans.pop(task.video_id, None)
        return out


def strip_frames(chunk: FramesChunk) -> tuple[FramesChunk, Any, Any]:
    """Split a chunk into its small metadata, its frames and its OCR frames (for Ray's three
    return values: the frames go to an embed call, the OCR frames to an OCR call, unfetched)."""
    return replace(chunk, frames=None, ocr_frames=None), chunk.frames, chunk.ocr_frames
