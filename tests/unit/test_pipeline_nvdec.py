"""GPU decode path, everything but the hardware: NVDEC's refusals (pure), the machine probe without
CUDA, and the GPU reader/decoder run with PyAV's CPU decoder (``device="cpu"``): same packets
selected, same clips, frames as torch tensors within swscale's rounding of the CPU reader's."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from media_tools import ffmpeg

from vidsearch.pipeline.decode import ChildState, decode_chunk, plan_video
from vidsearch.pipeline.discover import make_task
from vidsearch.pipeline.nvdec import GpuDecoder, NvdecCaps, NvdecReader, nvdec_refusal, nvdec_status
from vidsearch.pipeline.types import FramesChunk, GpuChunkRequest, GpuFallback, ProbeInfo
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.model_config import PreprocessCfg

H264 = ProbeInfo(container="mp4", demuxer="mov", codec="h264", width=1920, height=1080, coded_width=1920,
                 coded_height=1080, rotation=0, fps=30.0, frame_count=900, claimed_frames=900, duration_s=30.0,
                 num_streams=1, pix_fmt="yuv420p", profile="High")
HOPPER = NvdecCaps(av1=False, gpu="NVIDIA H200")


@pytest.mark.parametrize(("change", "caps", "refused"), [
    ({}, HOPPER, None),
    ({"codec": "hevc", "pix_fmt": "yuv420p10le", "profile": "Main 10"}, HOPPER, None),
    ({"codec": "vp9"}, HOPPER, None),
    ({"codec": "mpeg4", "profile": "Simple Profile"}, HOPPER, "codec mpeg4"),
    ({"codec": "av1"}, HOPPER, "no AV1 decoder"),
    ({"codec": "av1"}, NvdecCaps(av1=True, gpu="NVIDIA L4"), None),
    ({"pix_fmt": "yuv444p", "profile": "High 4:4:4 Predictive"}, HOPPER, "yuv444p"),
    ({"pix_fmt": "yuv420p10le", "profile": "High 10"}, HOPPER, "8-bit"),
    ({"codec": "hevc", "pix_fmt": "yuv422p10le", "profile": "Rext"}, HOPPER, "yuv422p10le"),
    ({"coded_width": 1921}, HOPPER, "odd frame size"),
    ({"coded_width": 32, "coded_height": 32}, HOPPER, "minimum"),
    ({"coded_width": 7680, "coded_height": 4320}, HOPPER, "4096x4096"),
    ({"codec": "hevc", "coded_width": 7680, "coded_height": 4320}, HOPPER, "decode_max_pixels"),
    ({"pix_fmt": ""}, HOPPER, "unknown"),
])
def test_nvdec_refusals(change: dict[str, object], caps: NvdecCaps, refused: str | None) -> None:
    why = nvdec_refusal(replace(H264, **change), caps, IngestCfg().decode_max_pixels)  # type: ignore[arg-type]
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why


def test_nvdec_status_without_cuda_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    nvdec_status.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    st = nvdec_status(0)
    assert not st.ok and st.reason.startswith("CUDA is not available")
    nvdec_status.cache_clear()
    monkeypatch.setenv("VIDSEARCH_NVDEC", "0")
    assert "VIDSEARCH_NVDEC=0" in nvdec_status(0).reason
    nvdec_status.cache_clear()


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nvdec") / "bt709.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x96:rate=30:duration=4,noise=alls=10:allf=t",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "250", "-colorspace", "bt709", "-color_range", "tv", out)
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_gpu_decoder_on_cpu_gives_the_cpu_paths_clips(video: Path) -> None:
    pp = PreprocessCfg(img_size=32)
    cfg = IngestCfg(clip_seconds=0.5, stride=0.5)
    plan = plan_video(make_task(os.fsencode(video)), cfg, pp)  # type: ignore[arg-type]
    assert plan.probe.pix_fmt == "yuv420p" and plan.probe.profile == "High"
    n = len(plan.clips)
    state = ChildState()
    cpu = [decode_chunk(plan, lo, min(n, lo + 3), cfg, pp, state) for lo in range(0, n, 3)]
    state.reset()
    gpu = GpuDecoder(cfg, pp, sessions=2, device="cpu")
    assert gpu.setup().ok
    out = [gpu.decode(GpuChunkRequest(plan, lo, min(n, lo + 3))) for lo in range(0, n, 3)]
    assert all(isinstance(c, FramesChunk) for c in out)
    assert not gpu._open  # the session closed after the last chunk
    for c, g in zip(cpu, out, strict=True):
        assert isinstance(g, FramesChunk) and isinstance(g.frames, torch.Tensor)
        assert g.kept == c.kept and g.decoder == "nvdec" and not g.truncated and g.error is None
        assert g.decoded_frames == c.decoded_frames
        got, want = g.frames.numpy(), np.asarray(c.frames)
        assert got.shape == want.shape and got.dtype == np.uint8
        assert np.abs(got.astype(np.int16) - want).max() <= 3 and _psnr(got, want) > 45


def test_gpu_reader_skips_the_same_nonreference_pictures(video: Path) -> None:
    from vidsearch.pipeline.readers import PyAVReader

    keep = frozenset({0, 31, 62, 93})
    cpu = PyAVReader(str(video), "mov", 0, keep)
    gpu = NvdecReader(str(video), "mov", 0, keep, PreprocessCfg(img_size=32), device="cpu")
    a, b = cpu.get(sorted(keep)), gpu.get(sorted(keep))
    assert sorted(a.frames) == sorted(b.frames) == sorted(keep)
    assert bytes(cpu.must) == bytes(gpu.must) and 0 < sum(gpu.must) < len(gpu.must)  # same packets decoded in full
    cpu.close()
    gpu.close()


def test_gpu_decoder_refuses_and_falls_back(video: Path, tmp_path: Path) -> None:
    pp = PreprocessCfg(img_size=32)
    cfg = IngestCfg(clip_seconds=0.5, stride=0.5)
    mpeg4 = tmp_path / "mpeg4.avi"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x96:rate=30:duration=1", "-c:v", "mpeg4", mpeg4)
    plan = plan_video(make_task(os.fsencode(mpeg4)), cfg, pp)  # type: ignore[arg-type]
    gpu = GpuDecoder(cfg, pp, device="cpu")
    gpu.setup()
    out = gpu.decode(GpuChunkRequest(plan, 0, 1))
    assert isinstance(out, GpuFallback) and "mpeg4" in out.reason
    # A file that fails under the reader (here: gone after planning) is a fallback, not an error.
    plan = plan_video(make_task(os.fsencode(video)), cfg, pp)  # type: ignore[arg-type]
    gone = replace(plan, task=replace(plan.task, path_bytes=os.fsencode(tmp_path / "missing.mp4")))
    out = gpu.decode(GpuChunkRequest(gone, 0, 1))
    assert isinstance(out, GpuFallback) and gpu.fallbacks == 2 and not gpu._open


def test_align_cuda_context_reports_instead_of_raising_without_a_gpu() -> None:
    """On a machine without the CUDA driver the alignment says why it did nothing (CI)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU machine: covered by test_pipeline_nvdec_gpu.py")
    from vidsearch.pipeline.nvdec import align_cuda_context

    why = align_cuda_context(0)
    assert why is not None and ("libcuda" in why or "CUDA" in why)
