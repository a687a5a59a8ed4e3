"""GPU decode: NVDEC through PyAV's CUDA hwaccel, in the process that embeds (issue 13).

Why PyAV's hwaccel (``docs/ARCHITECTURE.md`` has the measurements): it reuses the CPU reader's
demux and packet selection unchanged (:class:`~vidsearch.pipeline.readers.PyAVReader`: frames
placed by pts, H.264 non-reference pictures that no clip samples dropped with
``skip_frame=NONREF`` before they reach the decoder, frames kept for overlapping clips), and its
frames stay on the GPU (``HWAccel(is_hw_owned=True)``: FFmpeg decodes into the primary CUDA
context, the one torch uses; ``VideoPlane.__dlpack__`` hands the NV12 planes to torch without a
copy). Colour conversion and the model's resize then run in torch on the GPU
(:mod:`vidsearch.pipeline.colour`), and the (S, S, 3) uint8 frames go to the embedder as a CUDA
tensor: no host round trip, no object store.

Pieces:

* :func:`nvdec_status` (machine level, once per process): CUDA present, then an actual NVDEC
  decode of a tiny H.264 stream made on the spot. Containers mount ``libnvcuvid`` only with the
  ``video`` driver capability, and a MIG slice may have no decoder: both look fine until the
  first decode, so the probe decodes. The result names what is missing.
* :func:`nvdec_refusal` (per video, pure): codecs, pixel formats, profiles and sizes NVDEC cannot
  take (MPEG-4 part 2, AV1 on Hopper, 4:2:2/4:4:4, 10-bit H.264, odd sizes, > 4K) -> the CPU path.
* :class:`NvdecReader`: a :class:`PyAVReader` decoding with NVDEC; ``device="cpu"`` runs the
  same code with PyAV's CPU decoder (the tests' way to check everything but the hardware).
* :class:`GpuDecoder`: the NVDEC sessions of one GPU, used from several threads (one session per
  thread: 8 threads keep H100/H200's 7 engines busy; processes were slower, one CUDA context
  each). ``decode(request)`` -> :class:`FramesChunk` whose frames are a CUDA tensor, or
  :class:`GpuFallback` when the video must go to the CPU path instead (never a failure row).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from vidsearch.pipeline.colour import ColourSpec, colour_spec, nv12_to_rgb, resize_rgb, yuv_to_rgb
from vidsearch.pipeline.readers import PyAVReader
from vidsearch.pipeline.types import FramesChunk, GpuChunkRequest, GpuFallback, ProbeInfo, VideoPlan
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.model_config import PreprocessCfg

_logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# What NVDEC takes (pure)
# ---------------------------------------------------------------------------------------------
# Codec -> pixel formats NVDEC decodes (NVIDIA Video Codec SDK support matrix, Ampere/Hopper):
# 4:2:0 only (4:4:4 HEVC exists on some chips, 4:2:2 from Blackwell: routed to the CPU for
# simplicity), H.264 in 8 bits only. MPEG-4 part 2 is not here on purpose (NVDEC's MPEG-4 support
# is partial: no GMC, data partitioning); VC-1/MPEG-1/MJPEG are rare enough for the CPU path.
_NVDEC_FORMATS: dict[str, frozenset[str]] = {
    "h264": frozenset({"yuv420p", "yuvj420p"}),
    "hevc": frozenset({"yuv420p", "yuvj420p", "yuv420p10le", "yuv420p12le"}),
    "vp9": frozenset({"yuv420p", "yuvj420p", "yuv420p10le", "yuv420p12le"}),
    "av1": frozenset({"yuv420p", "yuvj420p", "yuv420p10le"}),
    "mpeg2video": frozenset({"yuv420p", "yuvj420p"}),
    "vp8": frozenset({"yuv420p", "yuvj420p"}),
}
# Largest coded size per codec (NVDEC caps: 4096x4096 for H.264/MPEG-2/VP8, 8192x8192 others).
_NVDEC_MAX_SIDE = {"h264": 4096, "mpeg2video": 4096, "vp8": 4096}
_NVDEC_MIN_W, _NVDEC_MIN_H = 48, 16


@dataclass(frozen=True)
class NvdecCaps:
    """What this machine's NVDEC can do (from :func:`nvdec_status`)."""

    av1: bool = True              # False on H100/H200 (Hopper: no AV1 decode engine)
    gpu: str = ""                 # device name, for messages


def nvdec_refusal(probe: ProbeInfo, caps: NvdecCaps, max_pixels: int | None = None) -> str | None:
    """Why NVDEC cannot decode this video (it then goes to the CPU path), or None when it can.

    Args:
        probe: the video's probe.
        caps: the machine's NVDEC capabilities.
        max_pixels: frames above this size go to the CPU path, which shrinks them as it decodes
            (``IngestCfg.decode_max_pixels``).
    """
    codec = probe.codec
    formats = _NVDEC_FORMATS.get(codec)
    if formats is None:
        return f"codec {codec} is not decoded by NVDEC here"
    if codec == "av1" and not caps.av1:
        return f"{caps.gpu or 'this GPU'} has no AV1 decoder"
    if not probe.pix_fmt:
        return "pixel format unknown"
    if probe.pix_fmt not in formats:
        return f"{codec} {probe.pix_fmt} is not decoded by NVDEC (4:2:0 only{', 8-bit' if codec == 'h264' else ''})"
    prof = probe.profile.lower()
    if "4:4:4" in prof or "4:2:2" in prof or "rext" in prof or (codec == "h264" and ("high 10" in prof)):
        return f"{codec} profile {probe.profile} is not decoded by NVDEC"
    w, h = probe.coded_width, probe.coded_height
    if w % 2 or h % 2:
        return f"odd frame size {w}x{h}"
    if w < _NVDEC_MIN_W or h < _NVDEC_MIN_H:
        return f"frame size {w}x{h} below NVDEC's minimum {_NVDEC_MIN_W}x{_NVDEC_MIN_H}"
    side = _NVDEC_MAX_SIDE.get(codec, 8192)
    if w > side or h > side:
        return f"frame size {w}x{h} above NVDEC's {side}x{side} for {codec}"
    if max_pixels and w * h > max_pixels:
        return f"frame size {w}x{h} above decode_max_pixels (the CPU path shrinks it while decoding)"
    return None


# ---------------------------------------------------------------------------------------------
# Machine-level probe
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NvdecStatus:
    """Whether this process can decode on the GPU, and if not, what is missing (one line)."""

    ok: bool
    reason: str                   # "" when ok; else e.g. "CUDA is not available (torch ... +cpu)"
    caps: NvdecCaps = NvdecCaps()


NVDEC_ENV = "VIDSEARCH_NVDEC"  # "0": report GPU decode as unavailable (tests, debugging)


@functools.lru_cache(maxsize=4)
def nvdec_status(device_index: int = 0) -> NvdecStatus:
    """Probe GPU decode once per process: CUDA, PyAV's CUDA hwaccel, then a real NVDEC decode of
    a 64x64 H.264 stream encoded here (libnvcuvid is only loaded by that decode)."""
    if os.environ.get(NVDEC_ENV) == "0":
        return NvdecStatus(False, f"GPU decode turned off ({NVDEC_ENV}=0)")
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return NvdecStatus(False, "torch is not installed")
    if not torch.cuda.is_available():
        why = "torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        return NvdecStatus(False, f"CUDA is not available ({why}: torch {torch.__version__})")
    name = torch.cuda.get_device_name(device_index)
    # Hopper (sm_90: H100, H200, GH200) has NVDEC engines without AV1; Ampere/Ada/Blackwell decode it.
    caps = NvdecCaps(av1=torch.cuda.get_device_capability(device_index) != (9, 0), gpu=name)
    try:
        import av
        from av.codec.hwaccel import HWAccel, hwdevices_available
    except ImportError as e:
        return NvdecStatus(False, f"PyAV has no hardware decoding ({e})", caps)
    if "cuda" not in hwdevices_available():
        return NvdecStatus(False, f"PyAV's FFmpeg {av.ffmpeg_version_info} was built without CUDA", caps)
    ctx_note = align_cuda_context(device_index)
    if ctx_note is not None:
        _logger.info("GPU decode: %s", ctx_note)
    try:
        n = _probe_decode(device_index)
    except Exception as e:  # noqa: BLE001 - any failure here means "no GPU decode on this machine"
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        hint = f" ({ctx_note})" if ctx_note is not None else ""
        if "cuvid" in msg.lower() or "nvcuvid" in msg.lower() or "Function not implemented" in msg:
            hint = " (libnvcuvid missing: in a container, the NVIDIA 'video' driver capability)"
        return NvdecStatus(False, f"NVDEC decode failed on {name}: {msg}{hint}", caps)
    if n == 0:
        return NvdecStatus(False, f"NVDEC gave no frame on {name} (MIG slice without decoders?)", caps)
    _ = HWAccel
    return NvdecStatus(True, "", caps)


# FFmpeg's CUDA device (PyAV's hwaccel with ``is_hw_owned``) retains the device's primary context,
# torch's, and insists on this scheduling flag: if the context is already active with other flags
# (torch activates it with 0 when it first touches the GPU, e.g. when the embedder is built), FFmpeg
# refuses with ENOTSUP ("Primary context already active with incompatible flags") and GPU decode
# is lost for the process. Measured on the H200: the embed actor built its model first and every
# video went to the CPU path.
_CU_CTX_SCHED_BLOCKING_SYNC = 0x04


def align_cuda_context(device_index: int = 0) -> str | None:
    """Give the device's primary CUDA context the scheduling flag FFmpeg's NVDEC needs
    (blocking sync), before or after torch activated it; None when done, else why not.

    Call it before anything touches the GPU in a process that will decode on it (the embed worker
    does, before building its model); :func:`nvdec_status` calls it too. Blocking sync only changes
    how a host thread waits for the GPU (it sleeps instead of spinning).
    """
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return f"libcuda.so.1 not loadable ({e})"
    dev, flags, active = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), int(device_index)) != 0:
        return f"CUDA device {device_index} not found"
    if cuda.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active)) != 0:
        return "cuDevicePrimaryCtxGetState failed"
    if flags.value == _CU_CTX_SCHED_BLOCKING_SYNC:
        return None
    # The _v2 entry point (CUDA >= 11) may change the flags of an active context as well.
    set_flags = getattr(cuda, "cuDevicePrimaryCtxSetFlags_v2", None) or cuda.cuDevicePrimaryCtxSetFlags
    rc = set_flags(dev, _CU_CTX_SCHED_BLOCKING_SYNC)
    if rc != 0:
        return (f"the CUDA context of device {device_index} is already active with flags {flags.value:#x} "
                f"and cannot take blocking sync (CUresult {rc})")
    return None


def _probe_decode(device_index: int) -> int:
    """Encode 8 frames of 64x64 H.264 in memory, decode them with NVDEC into torch; frame count."""
    import io

    import av
    import torch
    from av.codec.hwaccel import HWAccel

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        st = c.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        st.width, st.height, st.pix_fmt = 64, 64, "yuv420p"
        for i in range(8):
            img = np.full((64, 64, 3), 16 * i, np.uint8)
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    buf.seek(0)
    n = 0
    hw = HWAccel("cuda", device=str(device_index), allow_software_fallback=False, is_hw_owned=True)
    with av.open(buf, "r", format="mp4", hwaccel=hw) as c:
        for frame in c.decode(video=0):
            y, uv = frame_planes(frame)
            if y.device.type != "cuda":
                raise RuntimeError(f"frames came back in {y.device}, not on the GPU")
            nv12_to_rgb(y, uv, ColourSpec())
            n += 1
    torch.cuda.synchronize()
    return n


def frame_planes(frame: Any) -> tuple[Any, Any]:
    """(Y, UV) torch views of an NV12/P010 frame's planes (CUDA frames through DLPack, no copy).

    PyAV's ``__dlpack__`` refuses a ``stream`` argument, and ``torch.from_dlpack(plane)`` passes
    one for CUDA tensors; the capsule itself is taken instead. Ordering: FFmpeg copies each
    decoded surface out on the legacy default stream, torch's default stream is the same one.
    """
    from torch.utils import dlpack

    planes = frame.planes
    return dlpack.from_dlpack(planes[0].__dlpack__()), dlpack.from_dlpack(planes[1].__dlpack__())


def _cpu_planes(frame: Any) -> tuple[Any, Any, Any]:
    """(Y, U, V) uint8 tensors of a CPU yuv420p frame (the test path of :class:`NvdecReader`)."""
    import torch

    out = []
    for p in frame.planes[:3]:
        a = np.frombuffer(memoryview(p), np.uint8).reshape(p.height, p.line_size)[:, : p.width]
        out.append(torch.from_numpy(a.copy()))
    return out[0], out[1], out[2]


# ---------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------
class NvdecReader(PyAVReader):
    """:class:`PyAVReader` decoding with NVDEC; frames come out as (S, S, 3) uint8 CUDA tensors.

    Everything else (pts placement, ``skip_frame=NONREF`` on unsampled non-reference pictures,
    frames kept for later chunks, lost-frame accounting) is the CPU reader's. The colour matrix
    and range are the frame's (:func:`colour_spec`), as on the CPU path; rotation is applied
    before the resize, as on the CPU path.

    Args:
        device: a CUDA device index (``"0"``) or ``"cpu"``: decode with PyAV's CPU decoder and
            convert the planes in torch on the CPU (tests).
    """

    name = "nvdec"

    def __init__(self, path: str, demuxer: str, rotation: int, keep: frozenset[int] | None,
                 pp: PreprocessCfg, device: str = "0") -> None:
        self.device = device
        self.size, self.interpolation = pp.img_size, pp.interpolation
        self._spec: ColourSpec | None = None
        super().__init__(path, demuxer, rotation, keep, max_pixels=None, post=None)

    def _hwaccel(self) -> Any:
        if self.device == "cpu":
            return None
        from av.codec.hwaccel import HWAccel

        # is_hw_owned: frames stay on the GPU, in the primary context (torch's); no software
        # fallback: a stream NVDEC refuses must fail here and go to the CPU path as a whole.
        return HWAccel("cuda", device=self.device, allow_software_fallback=False, is_hw_owned=True)

    def _rgb(self, frame: Any) -> Any:
        import torch

        if self._spec is None:
            self._spec = colour_spec(frame.colorspace, frame.color_range)
        if self.device == "cpu":
            rgb = yuv_to_rgb(*_cpu_planes(frame), self._spec)  # (3, H, W)
        else:
            y, uv = frame_planes(frame)
            if y.device.type != "cuda":
                raise RuntimeError("NVDEC handed out a frame in host memory (software fallback)")
            # P010/P016 keep 10/12-bit samples in the high bits of 16-bit words: /256 = 8-bit units.
            scale = 1.0 / 256.0 if y.element_size() == 2 else 1.0
            rgb = nv12_to_rgb(y, uv, self._spec, scale)  # (3, H, W) float32 on the GPU
        if self.rotation:
            rgb = torch.rot90(rgb, self.rotation // 90, dims=(1, 2))  # as np.rot90 on (H, W, 3)
        return resize_rgb(rgb, self.size, self.interpolation)  # (S, S, 3) uint8


def _open_path(path_bytes: bytes) -> tuple[str, int | None]:
    """A path PyAV can open for ``path_bytes``: the name itself when it is UTF-8, else
    ``/proc/self/fd/N`` of an fd opened here (returned, to be closed with the reader)."""
    try:
        p = path_bytes.decode("utf-8")
        if "\n" not in p:
            return os.path.abspath(p), None
    except UnicodeDecodeError:
        pass
    fd = os.open(path_bytes, os.O_RDONLY)
    return f"/proc/self/fd/{fd}", fd


# ---------------------------------------------------------------------------------------------
# The GPU's decode sessions
# ---------------------------------------------------------------------------------------------
class _Session:
    """One video's open reader; its chunks come one at a time (the driver keeps one in flight)."""

    def __init__(self, reader: NvdecReader, fd: int | None) -> None:
        self.reader, self.fd = reader, fd
        self.lock = threading.Lock()
        self.last_sig: np.ndarray | None = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.reader.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class GpuDecoder:
    """NVDEC decode sessions of one GPU, used from the threads of the embedding process.

    Plain class (no Ray): the local runner calls it from a thread pool, the Ray embed actor from a
    concurrency group of ``sessions`` threads. Each video being decoded holds one open
    :class:`NvdecReader` (one NVDEC session) until its last chunk or a failure.
    """

    def __init__(self, cfg: IngestCfg, pp: PreprocessCfg, sessions: int = 8, device: str = "0") -> None:
        self.cfg, self.pp, self.sessions, self.device = cfg, pp, max(1, sessions), device
        self._open: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self.status: NvdecStatus | None = None
        self.fallbacks = 0          # videos handed to the CPU path

    def setup(self) -> NvdecStatus:
        """Probe NVDEC on this process's GPU (cached); the decoder is usable when ``ok``."""
        if self.device == "cpu":
            self.status = NvdecStatus(True, "", NvdecCaps())
        else:
            self.status = nvdec_status(int(self.device))
        return self.status

    def refusal(self, probe: ProbeInfo) -> str | None:
        """Why this decoder cannot take a video (see :func:`nvdec_refusal`), or None."""
        st = self.status or self.setup()
        if not st.ok:
            return st.reason
        return nvdec_refusal(probe, st.caps, self.cfg.decode_max_pixels)

    def decode(self, request: GpuChunkRequest) -> FramesChunk | GpuFallback:
        """Frames of clips ``[lo, hi)`` as a CUDA uint8 tensor (n, T, S, S, 3), or
        :class:`GpuFallback` when the CPU path must decode this chunk and the rest of the video.

        Failure branches (all -> ``GpuFallback``, the session closed): NVDEC refuses the stream,
        the reader fails to open or raises, or stops early (a damaged stream: the CPU path's
        coverage accounting decides what that means). Nothing here becomes a failure row.
        """
        from vidsearch.pipeline.decode import assemble_chunk

        plan, lo, hi = request.plan, request.lo, request.hi
        vid = plan.task.video_id
        why = self.refusal(plan.probe)
        if why is not None:
            return self._fallback(vid, why)
        try:
            sess = self._session(plan, lo)
            with sess.lock:
                clips = plan.clips[lo:hi]
                wanted = sorted({i for c in clips for i in c.frame_indices})
                later = min((min(c.frame_indices) for c in plan.clips[hi:hi + 64]), default=None)
                got, ended, err = sess.reader.get(wanted, later)
                if err is not None:
                    return self._fallback(vid, err)
                chunk, sess.last_sig = assemble_chunk(plan, lo, hi, got, ended, err, sess.reader, self.cfg,
                                                      self.pp, sess.last_sig)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever NVDEC or PyAV raise, the CPU path takes over
            return self._fallback(vid, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        if hi >= len(plan.clips):
            self._close(vid)
        return chunk

    def _session(self, plan: VideoPlan, lo: int) -> _Session:
        vid = plan.task.video_id
        with self._lock:
            sess = self._open.get(vid)
        if sess is not None:
            return sess
        keep = frozenset(i for c in plan.clips[lo:] for i in c.frame_indices)
        path, fd = _open_path(plan.task.path_bytes)
        try:
            reader = NvdecReader(path, plan.probe.demuxer, plan.probe.rotation, keep, self.pp, self.device)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        sess = _Session(reader, fd)
        with self._lock:
            self._open[vid] = sess
        return sess

    def _close(self, vid: str) -> None:
        with self._lock:
            sess = self._open.pop(vid, None)
        if sess is not None:
            sess.close()

    def _fallback(self, vid: str, why: str) -> GpuFallback:
        self._close(vid)
        self.fallbacks += 1
        _logger.info("GPU decode hands video %s to the CPU path: %s", vid, why)
        return GpuFallback(video_id=vid, reason=why)

    def discard(self, video_id: str) -> None:
        """Close a video's session (it failed or was settled elsewhere)."""
        self._close(video_id)

    def close(self) -> None:
        """Close every open session."""
        for vid in list(self._open):
            self._close(vid)
