"""Decode stage: probe + segment + sample frames of one video, in a killable child process.

Why a child process (RELIABILITY.md rule 1, F1/F2): a decoder that segfaults or hangs on one
input must fail that video, not the run. [M] Ray Data's default path looped forever on a
segfaulting decoder. :class:`DecodeWorker` keeps one persistent ``spawn`` child; every job has a
wall-clock timeout (reset by each reply, so long videos are fine as long as chunks come back).
A child that dies becomes ``DecoderCrash(signal=SIGSEGV)``, one that stops answering is killed
and becomes ``DecodeTimeout``; the next job gets a fresh child.

Decoding (in the child), one reader per video kept between its chunks (chunks come in order,
so a video is read in one forward pass, never re-seeked per chunk):

* PyAV first (:class:`_PyAVReader`): one decoder thread (one worker per core is the
  parallelism), only the sampled frames are converted to RGB, and for h264 the non-reference
  pictures that no clip samples are not decoded at all (``skip_frame=NONREF`` on their packets;
  no other picture is predicted from them, so the kept frames are bit-exact). Frames are placed by
  pts; they are rotated by the display matrix so that frames are upright whichever decoder ran
  (B16).
* decord as the fallback when PyAV cannot open the file (``VIDSEARCH_DECODER=decord`` puts it
  first, for comparisons): ``get_batch`` of the sorted frame indices of a chunk; decord applies
  the display rotation itself. It converts every frame it passes to RGB, which is why it is
  second. Both give identical frames for 8-bit h264/hevc/vp9 (tests/unit/test_pipeline_decode.py);
  MPEG-4 part 2 (a few pixels, +-2) and 10-bit video differ, as decord bundles ffmpeg 4.1.
* Coverage (rule 2): decord's frame count and the point where a decoder stops early are compared
  with the probe's frame count; the runner marks a video ``partial`` below ``min_coverage``.
* Frames are resized to the model's input size here, with exactly the resize of
  :func:`vidsearch.models.preprocess.preprocess_frames` (so the model's own resize is the
  identity and embeddings are unchanged), which keeps full-resolution frames inside this process.
  Each sampled frame is resized once (a frame shared by two clips too), through a reused float
  buffer (:func:`resize_uint8`).

Transient I/O errors (RELIABILITY.md F18): an ``OSError`` such as EIO or ESTALE while the child
reads a video (a network filesystem hiccup) comes back as ``IOError``; :class:`DecodeWorker`
retries that job with exponential backoff (``IngestCfg.io_retries``, ``io_retry_backoff_s``, as
cosmos-curate's ``do_with_retries``) and only then reports it, so the runner writes an
``IOError`` failure row (retried by the next run).

Test hooks (F1, F2, F3, F5, F18): ``VIDSEARCH_TEST_DECODE_FAULT`` (:mod:`vidsearch.pipeline.faults`,
read by the driver and passed to workers) makes the child segfault, hang, stall or fail reads
on a file whose path contains a substring. Inert otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from vidsearch.pipeline.faults import DecodeFaults
from vidsearch.pipeline.types import FramesChunk, VideoError, VideoPlan, VideoTask, is_transient_io
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.model_config import PreprocessCfg

_logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# In-child work
# ---------------------------------------------------------------------------------------------
_RESIZE_BUF: dict[str, Any] = {}


def resize_uint8(frames: np.ndarray, pp: PreprocessCfg) -> np.ndarray:
    """(K, H, W, 3) uint8 -> (K, S, S, 3) uint8, exactly as ``preprocess_frames`` resizes.

    Same arithmetic as ``preprocess_frames`` (float32 ``F.interpolate`` of a channels-last
    (1, 3, H, W) view, then round and clamp), so the results are bit-identical; what differs is
    only where the float32 copy of the frame lives: one buffer per frame size, reused, filled by
    ``copy_`` from the contiguous (H, W, 3) frame. A fresh ``x.float()`` of four 1080p frames is a
    100 MB allocation that the allocator maps and faults in anew on every call (~20 ms a frame,
    more than the interpolation itself); the reused buffer costs ~2.5 ms a frame. torch's uint8
    bilinear path is not used: it rounds differently in ~20 % of the pixels.
    """
    import torch
    import torch.nn.functional as F

    S = pp.img_size
    K, H, W = frames.shape[:3]
    if (H, W) == (S, S):
        return frames
    buf = _RESIZE_BUF.get("buf")
    if buf is None or tuple(buf.shape) != (1, H, W, 3):
        _RESIZE_BUF.clear()  # one size kept: a video's frames all have one size
        buf = _RESIZE_BUF["buf"] = torch.empty((1, H, W, 3), dtype=torch.float32)
    out = np.empty((K, S, S, 3), np.uint8)
    src = torch.from_numpy(np.ascontiguousarray(frames))  # (K, H, W, 3) uint8
    for k in range(K):
        buf.copy_(src[k : k + 1])
        x = F.interpolate(buf.permute(0, 3, 1, 2), size=(S, S), mode=pp.interpolation,
                          align_corners=False, antialias=False)  # (1, 3, S, S) channels-last
        x = x.round_().clamp_(0, 255).to(torch.uint8)
        out[k] = x[0].permute(1, 2, 0).numpy()  # (S, S, 3)
    return out


# Codecs whose decoder may drop the non-reference pictures that no clip samples (skip_frame
# NONREF, see _PyAVReader). h264 only: a non-reference picture (nal_ref_idc 0) is by definition
# never used to predict another one, and its POC/frame_num bookkeeping does not feed later
# pictures. HEVC's "sub-layer non-reference" pictures can still be references of higher
# temporal layers, and other decoders apply skip_frame in their own ways, so they decode fully.
_SKIP_NONREF_CODECS = frozenset({"h264"})


def h264_is_reference(head: bytes, length_size: int = 4) -> bool | None:
    """Whether the first slice of an H.264 packet is a reference picture (``nal_ref_idc`` != 0);
    None when no slice header is found in ``head`` (e.g. damaged data).

    ``length_size``: bytes of each NAL unit's length prefix (MP4, Matroska: from the avcC
    record), or 0 for Annex B start codes (MPEG-TS). The two cannot be told apart from the
    bytes alone (a 4-byte length of 256-511 starts with 00 00 01).
    """
    nals: list[bytes] = []
    if length_size == 0:
        nals = [p.lstrip(b"\x00") for p in head.split(b"\x00\x00\x01")[1:]]
    else:
        pos = 0
        while pos + length_size < len(head):
            size = int.from_bytes(head[pos: pos + length_size], "big")
            if size == 0:
                return None
            nals.append(head[pos + length_size: pos + length_size + 1])
            pos += length_size + size
    for nal in nals:
        if not nal or nal[0] & 0x80:  # forbidden_zero_bit set: not a valid NAL header
            return None
        if (nal[0] & 0x1F) in (1, 5):  # coded slice (non-IDR, IDR)
            return bool(nal[0] & 0x60)
    return None


class _PyAVReader:
    """Forward-only PyAV decoder over one file; a request behind the current position reopens.

    * One decoder thread (``thread_type="NONE"``): the decode stage runs one worker per core, so
      decoder threads would only compete with the other workers; and with one thread a packet
      is decoded inside its own ``decode`` call, which the skipping below relies on.
    * Only the requested frames are converted to RGB (``to_ndarray``, the same swscale
      conversion decord's filter graph does: identical frames for 8-bit video).
    * Frame index = rank of the frame's pts among the pts of all packets (read by a packet-only
      demux pass at open), when every packet has a pts and no two share one; else the number of
      frames decoded so far (as before).
    * With pts indices, an h264 stream and ``keep`` (every frame any clip of the video samples),
      the packet of a frame outside ``keep`` is decoded with ``skip_frame=NONREF``: the decoder
      drops it only if it is a non-reference picture, which no other picture is predicted from,
      so every frame handed out is bit-identical to a full decode (tested against one). About
      half the pictures of a typical x264 stream with B-frames are non-reference. Skipping stops
      at the first interlaced frame (field pairs with one reference field: not worth the risk).
    * A requested frame that the decoder never outputs (a corrupt packet) is reported missing
      once a later frame comes out; a sampled frame that a later chunk needs (decoded past the
      request, or shared by overlapping clips) is kept (``pending``), so chunks never re-decode.
    """

    name = "pyav"

    def __init__(self, path: str, demuxer: str, rotation: int, keep: frozenset[int] | None = None,
                 max_pixels: int | None = None, post: Callable[[np.ndarray], np.ndarray] | None = None,
                 ) -> None:
        self.path, self.demuxer, self.rotation = path, demuxer, rotation
        self.max_pixels, self.post = max_pixels, post
        self.keep: set[int] | None = set(keep) if keep is not None else None
        self.index_of: dict[int, int] | None = None
        self._indexed = False
        self._open()

    def _open(self) -> None:
        import av

        self.container = av.open(self.path, format=self.demuxer, options={"protocol_whitelist": "file"})
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "NONE"
        self.stream.thread_count = 1
        if not self._indexed:
            self._indexed = True
            self.index_of = self._pts_index()
            n = len(self.index_of) if self.index_of else 0
            self.must = bytearray(n)  # frame i's packet went in while nothing was being skipped
            self.seen = bytearray(n)  # frame i came out of the decoder
            self.checked = 0          # frames below this are accounted for (out, lost, or skipped)
            self.lost = 0             # frames that should have come out and did not (rule 2)
        self.skip = (self.index_of is not None and self.keep is not None
                     and self.stream.codec_context.name in _SKIP_NONREF_CODECS)
        extradata = self.stream.codec_context.extradata or b""
        # avcC (MP4, Matroska) starts with version 1 and gives the NAL length size; else Annex B.
        self.nal_length_size = (extradata[4] & 3) + 1 if len(extradata) > 4 and extradata[0] == 1 else 0
        self._skipping = False
        self.packets = self.container.demux(self.stream)
        self.buffer: list[Any] = []
        self.pending: dict[int, np.ndarray] = {}  # sampled frames decoded ahead of the request
        self.pos = 0  # frames below pos are decoded, skipped or lost (a request below reopens)
        self.fed = -1  # highest frame index whose packet went into the decoder (pts mode)
        self.errors = 0
        self.eof = False

    def _pts_index(self) -> dict[int, int] | None:
        """{packet pts: presentation index} from a packet-only demux, or None when ambiguous."""
        import av

        pts: list[int] = []
        try:
            with av.open(self.path, format=self.demuxer, options={"protocol_whitelist": "file"}) as c:
                for packet in c.demux(c.streams.video[0]):
                    if packet.size == 0:
                        continue
                    if packet.pts is None:
                        return None
                    pts.append(packet.pts)
        except av.error.FFmpegError:
            pass  # a cut container: index the packets that exist
        if not pts or len(set(pts)) != len(pts):
            return None
        return {p: i for i, p in enumerate(sorted(pts))}

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
            except MemoryError:
                raise  # av.error.MemoryError is an FFmpegError too: the child's memory cap, not a cut file
            except av.error.FFmpegError as e:
                if is_transient_io(e):
                    raise  # a network filesystem hiccup: the job is retried, not truncated
                self.eof = True  # the container itself is cut: nothing after this point
                return None
            if self.index_of is not None and packet.size and packet.pts is not None:
                i = self.index_of.get(packet.pts, -1)
                self.fed = max(self.fed, i)
                skip = self.skip and i >= 0 and i not in self.keep  # type: ignore[operator]
                if skip != self._skipping:
                    self.stream.codec_context.skip_frame = "NONREF" if skip else "DEFAULT"
                    self._skipping = skip
                if i >= 0 and (not skip or h264_is_reference(bytes(memoryview(packet)[:1024]),
                                                             self.nal_length_size) is not False):
                    self.must[i] = 1  # a reference picture is decoded even while skipping
            try:
                self.buffer.extend(packet.decode())
            except av.error.EOFError:
                self.eof = True
            except MemoryError:
                raise
            except av.error.FFmpegError as e:
                if is_transient_io(e):
                    raise
                self.errors += 1
        return self.buffer.pop(0)

    def _rgb(self, frame: Any) -> np.ndarray:
        size = downscaled_size(frame.width, frame.height, self.max_pixels)
        if size is None:
            a = frame.to_ndarray(format="rgb24")
        else:
            # Decode-side downscale (B13): swscale converts and shrinks in one pass, so no
            # full-resolution RGB copy of the frame is ever made.
            a = frame.reformat(width=size[0], height=size[1], format="rgb24",
                               interpolation="AREA").to_ndarray()
        if self.rotation:
            a = np.ascontiguousarray(np.rot90(a, self.rotation // 90))
        return self.post(a) if self.post is not None else a

    def get(self, indices: list[int], retain_from: int | None = None,
            ) -> tuple[dict[int, np.ndarray], int | None, str | None]:
        """Frames for sorted ``indices``; returns (frames, frames_available_if_ended, error).

        ``retain_from``: the smallest frame index a later request may ask for (default: past
        ``indices``). Sampled frames at or above it that this pass decodes or hands out are kept
        for that request, so overlapping clips (stride < clip length) across a chunk boundary
        do not reopen the file and decode it again from the start.
        """
        if not indices:
            return {}, None, None
        if self.keep is not None and not self.keep.issuperset(indices):
            new = set(indices) - self.keep
            self.keep |= new
            if min(new) <= self.fed:  # its packet may have been skipped already
                self.close()
                self._open()
        if any(i < self.pos and i not in self.pending for i in indices):
            self.close()
            self._open()
        if self.index_of is None:
            return self._get_counting(indices)
        want = set(indices)
        last = indices[-1]
        hold = last + 1 if retain_from is None else retain_from
        out = {i: self.pending[i] for i in indices if i in self.pending}
        ended = False
        while len(out) < len(want):
            frame = self._next_frame()
            if frame is None:
                ended = True
                self._account(len(self.must))
                break
            i = self.index_of.get(frame.pts, -1) if frame.pts is not None else -1
            if i < 0:
                self.errors += 1  # a frame whose pts no packet had: cannot be placed
                continue
            self.seen[i] = 1
            self._account(i)
            if self.skip and getattr(frame, "interlaced_frame", False):
                self.skip = False
                if self._skipping:
                    self.stream.codec_context.skip_frame = "DEFAULT"
                    self._skipping = False
            self.pos = max(self.pos, i + 1)
            if i in want:
                out[i] = self._rgb(frame)
            elif i >= hold and self.keep is not None and i in self.keep:
                self.pending[i] = self._rgb(frame)  # sampled by a later request
            if i > last:
                break  # frames come out in presentation order: what is missing is lost
        self.pending = {i: a for i, a in {**self.pending, **out}.items() if i >= hold}
        if len(out) < len(want):
            missing = min(want - out.keys())
            why = "stream ended before" if ended else "did not decode:"
            return out, missing, f"pyav: {why} frame {missing} ({self.errors} bad packets)"
        return out, None, None

    def _account(self, upto: int) -> None:
        """Count as lost the frames below ``upto`` that were decoded in full (not skipped) yet
        never came out: frames come out in presentation order, so they never will. A damaged
        packet often makes the decoder drop its picture without an error; this is how the
        coverage sees it. (A skipped non-reference picture is not counted: no sampled frame
        depends on it.)"""
        for i in range(self.checked, upto):
            if self.must[i] and not self.seen[i]:
                self.lost += 1
        self.checked = max(self.checked, upto)

    def _get_counting(self, indices: list[int]) -> tuple[dict[int, np.ndarray], int | None, str | None]:
        """``get`` when frames cannot be placed by pts: the n-th decoded frame is frame n."""
        want = set(indices)
        out: dict[int, np.ndarray] = {}
        last = indices[-1]
        while self.pos <= last:
            frame = self._next_frame()
            if frame is None:
                return out, self.pos, f"pyav: stream ended after {self.pos} frames ({self.errors} bad packets)"
            if self.pos in want:
                out[self.pos] = self._rgb(frame)
            self.pos += 1
        return out, None, None


def downscaled_size(width: int, height: int, max_pixels: int | None) -> tuple[int, int] | None:
    """(w, h) with the aspect ratio of ``width x height`` and at most ``max_pixels``, or None
    when the frame is already within the limit."""
    if not max_pixels or width * height <= max_pixels:
        return None
    f = (max_pixels / (width * height)) ** 0.5
    return max(2, int(width * f)), max(2, int(height * f))


_DECORD_BATCH_BYTES = 256 << 20  # RGB bytes of one get_batch call (a chunk asks for up to ~64 frames)


class _DecordReader:
    name = "decord"

    def __init__(self, path: str, size: tuple[int, int] | None = None, max_pixels: int | None = None,
                 post: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        import decord

        # decord scales inside its ffmpeg filter graph: frames above max_pixels never exist at
        # full resolution in RGB (B13).
        small = downscaled_size(*size, max_pixels) if size is not None else None
        w, h = small if small is not None else (-1, -1)
        self.vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, width=w, height=h)
        self.length = len(self.vr)
        self.post = post
        fw, fh = small or size or (1920, 1080)
        self.batch = max(1, _DECORD_BATCH_BYTES // (fw * fh * 3))

    def close(self) -> None:
        del self.vr

    def get(self, indices: list[int], retain_from: int | None = None,
            ) -> tuple[dict[int, np.ndarray], int | None, str | None]:
        ok = [i for i in indices if i < self.length]
        ended = self.length if len(ok) < len(indices) else None
        if not ok:
            return {}, ended, "decord: frame index past the decodable frames"
        out: dict[int, np.ndarray] = {}
        for k in range(0, len(ok), self.batch):  # in order: still one forward pass for sorted ok
            part = ok[k : k + self.batch]
            batch = self.vr.get_batch(part).asnumpy()  # (K, H, W, 3)
            for i, a in zip(part, batch, strict=True):
                out[i] = self.post(a) if self.post is not None else a
        return out, ended, None


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
                     expected_frames=max(info.frame_count, info.claimed_frames, info.expected_frames))


_START_TIMEOUT_S = 120.0  # a decode child's imports; generous for a loaded machine
DECODER_ENV = "VIDSEARCH_DECODER"  # "pyav" (default) or "decord": the reader tried first


def _open_pyav(plan: VideoPlan, state: ChildState, cfg: IngestCfg, pp: PreprocessCfg) -> _PyAVReader:
    keep = frozenset(i for c in plan.clips for i in c.frame_indices)
    return _PyAVReader(_child_path(plan.task.path_bytes, state), _demuxer_of(plan), plan.probe.rotation, keep,
                       max_pixels=cfg.decode_max_pixels, post=_model_resize(pp))


def _model_resize(pp: PreprocessCfg) -> Callable[[np.ndarray], np.ndarray]:
    """Per-frame resize to the model's input size, applied as each frame is decoded: a chunk
    then holds (S, S, 3) frames only, never ~64 full-resolution ones (2 GB at 4K)."""
    return lambda a: resize_uint8(a[None], pp)[0]


def _open_reader(plan: VideoPlan, state: ChildState, cfg: IngestCfg, pp: PreprocessCfg) -> Any:
    """The first reader that opens the file: PyAV, then decord (or decord first, see DECODER_ENV).

    PyAV is first because it converts only the sampled frames to RGB and can skip unsampled
    non-reference frames (see :class:`_PyAVReader`); decord converts every frame it passes.
    Both give identical frames for 8-bit h264/hevc/vp9 (tested); 10-bit video and MPEG-4 part 2
    differ slightly (decord bundles ffmpeg 4.1, PyAV a current ffmpeg).
    """
    import av

    order = ["decord", "pyav"] if os.environ.get(DECODER_ENV, "pyav") == "decord" else ["pyav", "decord"]
    errors = []
    for name in order:
        try:
            if name == "decord":
                return _DecordReader(_child_path(plan.task.path_bytes, state),
                                     (plan.probe.coded_width, plan.probe.coded_height),
                                     cfg.decode_max_pixels, _model_resize(pp))
            return _open_pyav(plan, state, cfg, pp)
        except MemoryError:
            raise
        except av.error.FFmpegError as e:
            if is_transient_io(e):
                raise
            errors.append(f"pyav: {str(e)[:120]}")
        except OSError:
            raise  # the file itself (vanished, unreadable): not a codec problem
        except Exception as e:  # noqa: BLE001 - decord raises bare RuntimeError/DECORDError subclasses
            errors.append(f"{name}: {str(e)[:120]}")
        _logger.info("%s cannot open %s (%s)", name, plan.task.display_path, errors[-1])
        state.reset()
    raise VideoError("UnsupportedCodec", "decode",
                     f"codec {plan.probe.codec}: neither decord nor PyAV opens it ({'; '.join(errors)})")


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
        state.reader = _open_reader(plan, state, cfg, pp)
        state.key = key
    reader = state.reader
    clips = plan.clips[lo:hi]
    wanted = sorted({i for c in clips for i in c.frame_indices})
    # Frames the next chunks may still ask for (overlapping clips): the reader keeps those.
    later = min((min(c.frame_indices) for c in plan.clips[hi:hi + 64]), default=None)
    try:
        got, ended, err = reader.get(wanted, later)
    except Exception as e:  # noqa: BLE001 - decord raises untyped errors on corrupt data
        if is_transient_io(e) or _is_oom(e):
            raise
        if isinstance(reader, _DecordReader) and lo == 0:
            # decord opened the file but cannot read it: retry the whole video with PyAV.
            state.reset()
            state.reader = _open_pyav(plan, state, cfg, pp)
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
        frames = np.stack([got[i] for i in c.frame_indices])  # (T, S, S, 3): readers resize as they decode
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
    lost = getattr(reader, "lost", 0)  # cumulative over the video: the runner keeps the minimum
    if lost:
        decoded = max(0, decoded - lost)
        err = err or f"{reader.name}: {lost} frames did not decode"
    if isinstance(reader, _DecordReader):
        decoded = min(decoded, reader.length)
        truncated = truncated or reader.length < plan.probe.frame_count and hi == len(plan.clips)
    return FramesChunk(video_id=plan.task.video_id, clip_lo=lo, clip_hi=hi, frames=out, kept=kept,
                       decoded_frames=decoded, truncated=truncated, decoder=reader.name, error=err)


def _demuxer_of(plan: VideoPlan) -> str:
    from vidsearch.pipeline.probe import SNIFF_BYTES, sniff_container

    with open(plan.task.path_bytes, "rb") as f:
        return sniff_container(f.read(SNIFF_BYTES)) or "mov"


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


def _is_oom(e: BaseException) -> bool:
    # torch's CPU allocator raises RuntimeError("... can't allocate memory ..."), not MemoryError.
    return isinstance(e, MemoryError) or "can't allocate memory" in str(e)


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, so that the next reading is this job's peak


def _child_main(conn: Any, cfg: IngestCfg, pp: PreprocessCfg, fault: str | None) -> None:
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
                result = plan_video(job[1], cfg, pp)
            elif kind == "decode":
                _, plan, lo, hi = job
                hooks.before_job(plan.task.display_path)
                result = decode_chunk(plan, lo, hi, cfg, pp, state)
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
            if _is_oom(e):
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
    """

    def __init__(self, cfg: IngestCfg, pp: PreprocessCfg, fault: str | None = None) -> None:
        self.cfg, self.pp, self.fault = cfg, pp, fault
        self._proc: Any = None
        self._conn: Any = None
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
        self._proc = ctx.Process(target=_child_main, args=(child, self.cfg, self.pp, self.fault),
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

    def plan(self, task: VideoTask) -> VideoPlan | VideoError:
        """Probe + segment ``task``; per-video errors come back as values (errors as data).

        Failure branches: any probe/segment ``VideoError``, ``DecoderCrash`` (the child died: it
        is restarted for the next job), ``DecodeTimeout`` (the child was killed), ``IOError``
        (a read kept failing after the retries).
        """
        try:
            return self._call_retrying(("plan", task), "probe", task.display_path)
        except VideoError as e:
            return e

    def decode(self, plan: VideoPlan, lo: int, hi: int) -> FramesChunk | VideoError:
        """Frames of clips ``[lo, hi)``; failure branches as :meth:`plan` plus ``UnsupportedCodec``."""
        try:
            return self._call_retrying(("decode", plan, lo, hi), "decode", plan.task.display_path)
        except VideoError as e:
            return e


def strip_frames(chunk: FramesChunk) -> tuple[FramesChunk, Any]:
    """Split a chunk into its small metadata and its frames (for Ray's two return values)."""
    return replace(chunk, frames=None), chunk.frames
