"""Decode stage: probe + segment + sample frames of one video, in a killable child process.

Why a child process (RELIABILITY.md rule 1, F1/F2): a decoder that segfaults or hangs on one
input must fail that video, not the run. [M] Ray Data's default path looped forever on a
segfaulting decoder. :class:`DecodeWorker` keeps one persistent ``spawn`` child; every job has a
wall-clock timeout (reset by each reply, so long videos are fine as long as chunks come back).
A child that dies becomes ``DecoderCrash(signal=SIGSEGV)``, one that stops answering is killed
and becomes ``DecodeTimeout``; the next job gets a fresh child.

Decoding (in the child):

* decord first: one ``VideoReader`` per video, ``get_batch`` of the sorted frame indices of a
  chunk of clips, so the video is read in one forward pass (no seek per frame); the reader is
  kept between the chunks of a video. decord applies the display rotation itself.
* PyAV (ffmpeg) as the fallback when decord cannot open or read the file (AV1 and others): one
  forward decode pass that keeps the wanted frames and rotates them by the display matrix so that
  frames are upright whichever decoder ran (B16).
* Coverage (rule 2): decord's frame count and the point where a decoder stops early are compared
  with the probe's frame count; the runner marks a video ``partial`` below ``min_coverage``.
* Frames are resized to the model's input size here, with exactly the resize of
  :func:`vidsearch.models.preprocess.preprocess_frames` (so the model's own resize is the
  identity and embeddings are unchanged), which keeps full-resolution frames inside this process.

Test hook (F1/F2): ``VIDSEARCH_TEST_DECODE_FAULT=segv:<substring>|hang:<substring>`` (read by the
driver and passed to workers) makes the child segfault or hang on a file whose path contains the
substring. Inert otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import replace
from typing import Any

import numpy as np

from vidsearch.pipeline.types import FramesChunk, VideoError, VideoPlan, VideoTask
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.model_config import PreprocessCfg

_logger = logging.getLogger(__name__)

FAULT_ENV = "VIDSEARCH_TEST_DECODE_FAULT"


# ---------------------------------------------------------------------------------------------
# In-child work
# ---------------------------------------------------------------------------------------------
def resize_uint8(frames: np.ndarray, pp: PreprocessCfg) -> np.ndarray:
    """(K, H, W, 3) uint8 -> (K, S, S, 3) uint8, exactly as ``preprocess_frames`` resizes."""
    import torch
    import torch.nn.functional as F

    S = pp.img_size
    if frames.shape[1:3] == (S, S):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (K, 3, H, W)
    x = F.interpolate(x.float(), size=(S, S), mode=pp.interpolation, align_corners=False, antialias=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8)  # (K, 3, S, S)
    return x.permute(0, 2, 3, 1).contiguous().numpy()  # (K, S, S, 3)


class _PyAVReader:
    """Forward-only PyAV decoder over one file; a request behind the current position reopens."""

    name = "pyav"

    def __init__(self, path: str, demuxer: str, rotation: int) -> None:
        self.path, self.demuxer, self.rotation = path, demuxer, rotation
        self._open()

    def _open(self) -> None:
        import av

        self.container = av.open(self.path, format=self.demuxer, options={"protocol_whitelist": "file"})
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.packets = self.container.demux(self.stream)
        self.buffer: list[Any] = []
        self.pos = 0  # index of the next frame handed out
        self.errors = 0
        self.eof = False

    def close(self) -> None:
        self.container.close()

    def _next_frame(self) -> Any:
        """Next decoded frame; a packet that fails to decode is skipped (its frames are lost,
        which the coverage check sees) instead of ending the whole decode."""
        import av

        while not self.buffer:
            if self.eof:
                return None
            try:
                packet = next(self.packets)
            except StopIteration:
                self.eof = True
                return None
            except av.error.FFmpegError:
                self.eof = True  # the container itself is cut: nothing after this point
                return None
            try:
                self.buffer.extend(packet.decode())
            except av.error.EOFError:
                self.eof = True
            except av.error.FFmpegError:
                self.errors += 1
        return self.buffer.pop(0)

    def get(self, indices: list[int]) -> tuple[dict[int, np.ndarray], int | None, str | None]:
        """Frames for sorted ``indices``; returns (frames, frames_available_if_ended, error)."""
        if indices and indices[0] < self.pos:
            self.close()
            self._open()
        want = set(indices)
        out: dict[int, np.ndarray] = {}
        last = indices[-1] if indices else -1
        while self.pos <= last:
            frame = self._next_frame()
            if frame is None:
                return out, self.pos, f"pyav: stream ended after {self.pos} frames ({self.errors} bad packets)"
            if self.pos in want:
                a = frame.to_ndarray(format="rgb24")
                if self.rotation:
                    a = np.ascontiguousarray(np.rot90(a, self.rotation // 90))
                out[self.pos] = a
            self.pos += 1
        return out, None, None


class _DecordReader:
    name = "decord"

    def __init__(self, path: str) -> None:
        import decord

        self.vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        self.length = len(self.vr)

    def close(self) -> None:
        del self.vr

    def get(self, indices: list[int]) -> tuple[dict[int, np.ndarray], int | None, str | None]:
        ok = [i for i in indices if i < self.length]
        ended = self.length if len(ok) < len(indices) else None
        if not ok:
            return {}, ended, "decord: frame index past the decodable frames"
        batch = self.vr.get_batch(ok).asnumpy()  # (K, H, W, 3); one forward pass for sorted ok
        return dict(zip(ok, batch, strict=True)), ended, None


class ChildState:
    """Per-child cache: the open reader of the video being decoded (chunks come in order)."""

    def __init__(self) -> None:
        self.key: tuple[str, str] | None = None
        self.reader: Any = None
        self.last_sig: np.ndarray | None = None
        self.fd: int | None = None

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


def plan_video(task: VideoTask, cfg: IngestCfg, pp: PreprocessCfg) -> VideoPlan:
    """Probe and segment one video (runs in the child).

    Failure branches: every probe error (see :func:`vidsearch.pipeline.probe.probe`), scene
    detection ``DecodeTimeout``/``DecodeError``, ``NoClips``.
    """
    from vidsearch.pipeline.probe import SNIFF_BYTES, open_path, probe, sniff_container
    from vidsearch.pipeline.segment import detect_cuts, plan_clips

    info = probe(task.path_bytes, cfg)
    cuts: list[float] = []
    if cfg.segment == "shots" and info.frame_count > 1:
        with open(task.path_bytes, "rb") as f:
            demuxer = sniff_container(f.read(SNIFF_BYTES)) or "mov"
        with open_path(task.path_bytes) as path:
            fds = (int(path.rsplit("/", 1)[1]),) if path.startswith("/proc/self/fd/") else ()
            cuts = detect_cuts(path, demuxer, cfg.scene_threshold, cfg.decode_timeout_s, fds)
    clips = plan_clips(info, cfg, pp.num_frames, pp.sampling, cuts)
    return VideoPlan(task=task, probe=info, clips=clips,
                     expected_frames=max(info.frame_count, info.claimed_frames))


def _open_reader(plan: VideoPlan, state: ChildState) -> Any:
    from vidsearch.pipeline.probe import SNIFF_BYTES, sniff_container

    path = _child_path(plan.task.path_bytes, state)
    try:
        return _DecordReader(path)
    except Exception as e:  # noqa: BLE001 - decord raises bare RuntimeError/DECORDError subclasses
        _logger.info("decord cannot open %s (%s); using PyAV", plan.task.display_path, str(e)[:120])
    with open(plan.task.path_bytes, "rb") as f:
        demuxer = sniff_container(f.read(SNIFF_BYTES)) or "mov"
    import av

    try:
        return _PyAVReader(path, demuxer, plan.probe.rotation)
    except av.error.FFmpegError as e:
        raise VideoError("UnsupportedCodec", "decode",
                         f"codec {plan.probe.codec}: neither decord nor PyAV opens it ({e})") from None


def _static_signature(clip_frames: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) -> (T, 16, 16) float grey thumbnails for the near-static test."""
    g = clip_frames.astype(np.float32).mean(axis=-1)
    t, s, _ = g.shape
    k = max(1, s // 16)
    g = g[:, : k * (s // k), : k * (s // k)]
    return g.reshape(t, s // k, k, s // k, k).mean(axis=(2, 4))


def decode_chunk(plan: VideoPlan, lo: int, hi: int, cfg: IngestCfg, pp: PreprocessCfg,
                 state: ChildState) -> FramesChunk:
    """Decode the sampled frames of clips ``[lo, hi)`` of ``plan`` (runs in the child).

    Failure branches: no decoder opens the file -> ``UnsupportedCodec``; a decoder error mid-way
    ends the chunk early (``truncated``; the runner records partial coverage; never an
    exception); zero clips decodable in the first chunk -> the runner's ``NoClips``.
    """
    key = (plan.task.video_id, plan.task.display_path)
    if state.key != key:
        state.reset()
        state.reader = _open_reader(plan, state)
        state.key = key
    reader = state.reader
    clips = plan.clips[lo:hi]
    wanted = sorted({i for c in clips for i in c.frame_indices})
    try:
        got, ended, err = reader.get(wanted)
    except Exception as e:  # noqa: BLE001 - decord raises untyped errors on corrupt data
        if isinstance(reader, _DecordReader) and lo == 0:
            # decord opened the file but cannot read it: retry the whole video with PyAV.
            state.reset()
            state.reader = _PyAVReader(_child_path(plan.task.path_bytes, state),
                                       _demuxer_of(plan), plan.probe.rotation)
            state.key = key
            return decode_chunk(plan, lo, hi, cfg, pp, state)
        got, ended, err = {}, (clips[0].frame_indices[0] if clips else 0), f"{reader.name}: {e}"
        # decord cannot tell how far it got inside a failed batch: decode clip by clip.
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
    kept: list[int] = []
    arrays: list[np.ndarray] = []
    for c in clips:
        if not all(i in got for i in c.frame_indices):
            break  # clips after the first undecodable one are not trusted either
        frames = resize_uint8(np.stack([got[i] for i in c.frame_indices]), pp)  # (T, S, S, 3)
        if cfg.skip_static:
            sig = _static_signature(frames)
            inner = float(np.abs(np.diff(sig, axis=0)).mean()) if len(sig) > 1 else 0.0
            if (state.last_sig is not None and inner < cfg.static_threshold
                    and float(np.abs(sig - state.last_sig).mean()) < cfg.static_threshold):
                continue  # near-static and the same picture as the last kept clip
            state.last_sig = sig
        kept.append(c.clip_index)
        arrays.append(frames)
    truncated = err is not None and ended is not None and any(
        i >= ended for c in clips for i in c.frame_indices)
    S = pp.img_size
    out = np.stack(arrays) if arrays else np.zeros((0, pp.num_frames, S, S, 3), np.uint8)
    decoded = ended if truncated and ended is not None else plan.probe.frame_count
    if isinstance(reader, _DecordReader):
        decoded = min(decoded, reader.length)
        truncated = truncated or reader.length < plan.probe.frame_count and hi == len(plan.clips)
    return FramesChunk(video_id=plan.task.video_id, clip_lo=lo, clip_hi=hi, frames=out, kept=kept,
                       decoded_frames=decoded, truncated=truncated, decoder=reader.name, error=err)


def _demuxer_of(plan: VideoPlan) -> str:
    from vidsearch.pipeline.probe import SNIFF_BYTES, sniff_container

    with open(plan.task.path_bytes, "rb") as f:
        return sniff_container(f.read(SNIFF_BYTES)) or "mov"


def _maybe_fault(fault: str | None, task: VideoTask) -> None:
    if not fault:
        return
    for part in fault.split("|"):
        kind, _, needle = part.partition(":")
        if needle and needle in task.display_path:
            if kind == "segv":
                ctypes.string_at(0)  # a real SIGSEGV in this child, as a broken decoder would
            elif kind == "hang":
                time.sleep(10**6)


def _child_main(conn: Any, cfg: IngestCfg, pp: PreprocessCfg, fault: str | None) -> None:
    # Ctrl-C goes to the whole foreground process group; the parent decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(1)
    state = ChildState()
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        kind = job[0]
        try:
            if kind == "plan":
                _maybe_fault(fault, job[1])
                result: Any = plan_video(job[1], cfg, pp)
            elif kind == "decode":
                _, plan, lo, hi = job
                _maybe_fault(fault, plan.task)
                result = decode_chunk(plan, lo, hi, cfg, pp, state)
            else:
                return
            conn.send(("ok", result))
        except VideoError as e:
            state.reset()
            conn.send(("err", e.error_type, e.stage, e.message))
        except MemoryError:
            state.reset()
            conn.send(("err", "TooLarge", "decode", "out of memory decoding the video"))
        except Exception as e:  # noqa: BLE001 - a decoder bug on one file must stay one failed video
            state.reset()
            _logger.debug("decode job failed", exc_info=True)
            conn.send(("err", "DecodeError", "decode", f"{type(e).__name__}: {str(e)[:200]}"))


# ---------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------
class DecodeWorker:
    """One persistent decode child; ``setup()`` / ``plan()`` / ``decode()`` / ``close()``.

    Plain class (no Ray): the local runner uses it directly and Ray's decode actors wrap it.
    """

    def __init__(self, cfg: IngestCfg, pp: PreprocessCfg, fault: str | None = None) -> None:
        self.cfg, self.pp, self.fault = cfg, pp, fault
        self._proc: Any = None
        self._conn: Any = None
        self.restarts = 0

    def setup(self) -> None:
        """Start the child (it imports decord, PyAV and torch once)."""
        if self._proc is not None and self._proc.is_alive():
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(child, self.cfg, self.pp, self.fault),
                                 daemon=True, name="vidsearch-decode")
        self._proc.start()
        child.close()
        self._conn = parent

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
            raise VideoError(reply[1], reply[2], reply[3])
        return reply[1]

    def plan(self, task: VideoTask) -> VideoPlan | VideoError:
        """Probe + segment ``task``; per-video errors come back as values (errors as data).

        Failure branches: any probe/segment ``VideoError``, ``DecoderCrash`` (the child died: it
        is restarted for the next job), ``DecodeTimeout`` (the child was killed).
        """
        try:
            return self._call(("plan", task), "probe")
        except VideoError as e:
            return e

    def decode(self, plan: VideoPlan, lo: int, hi: int) -> FramesChunk | VideoError:
        """Frames of clips ``[lo, hi)``; failure branches as :meth:`plan` plus ``UnsupportedCodec``."""
        try:
            return self._call(("decode", plan, lo, hi), "decode")
        except VideoError as e:
            return e


def strip_frames(chunk: FramesChunk) -> tuple[FramesChunk, Any]:
    """Split a chunk into its small metadata and its frames (for Ray's two return values)."""
    return replace(chunk, frames=None), chunk.frames
