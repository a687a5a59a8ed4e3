"""NVDEC on a real GPU (marker ``gpu``; skipped without CUDA or without a usable NVDEC).

* parity: the same clips through the CPU path and NVDEC; frame PSNR printed (and >= 40 dB), the
  1B encoder (random weights, bf16) gives embeddings with cosine >= 0.999;
* a file NVDEC cannot decode (4:4:4 H.264, forced past the refusal) falls back to the CPU path;
* a mixed corpus through ``run_ingest`` (auto: NVDEC + CPU) gives the clip ids of a CPU-only run
  and embeddings within tolerance.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from media_tools import TEST_MODEL, ffmpeg

from vidsearch.pipeline import nvdec
from vidsearch.pipeline.decode import ChildState, decode_chunk, plan_video
from vidsearch.pipeline.discover import make_task
from vidsearch.pipeline.types import FramesChunk, GpuChunkRequest, GpuFallback
from vidsearch.schemas.config import IngestCfg

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def status() -> nvdec.NvdecStatus:
    st = nvdec.nvdec_status(0)
    print(f"\nNVDEC status: {st}")
    if not st.ok:
        pytest.skip(f"no usable NVDEC: {st.reason}")
    return st


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("nvdec_gpu")
    src = "testsrc2=size=1280x720:rate=30:duration=4,noise=alls=12:allf=t"
    v = {"h264_709": d / "h264_709.mp4", "hevc": d / "hevc.mp4", "h264_full": d / "h264_full.mp4",
         "h444": d / "h444.mp4", "mpeg4": d / "mpeg4.avi"}
    ffmpeg("-f", "lavfi", "-i", src, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-colorspace", "bt709",
           "-color_range", "tv", v["h264_709"])
    ffmpeg("-f", "lavfi", "-i", src, "-c:v", "libx265", "-pix_fmt", "yuv420p", "-x265-params", "log-level=none",
           v["hevc"])
    ffmpeg("-f", "lavfi", "-i", src, "-c:v", "libx264", "-pix_fmt", "yuvj420p", "-color_range", "pc", v["h264_full"])
    ffmpeg("-f", "lavfi", "-i", src, "-c:v", "libx264", "-pix_fmt", "yuv444p", v["h444"])
    ffmpeg("-f", "lavfi", "-i", src, "-c:v", "mpeg4", v["mpeg4"])
    return v


@pytest.fixture(scope="module")
def embedder(status: nvdec.NvdecStatus) -> object:
    """The 1B encoder (random weights, bf16), built once for the parity cases (a build takes
    seconds of CPU per case otherwise)."""
    from vidsearch.pipeline.embed import Embedder

    emb = Embedder("internvideo2-s2-1b", device="cuda", batch_size=8, pretrained=False, compile="off")
    emb.setup()
    return emb


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("name", ["h264_709", "hevc", "h264_full"])
def test_nvdec_frames_and_embeddings_match_the_cpu_path(status: nvdec.NvdecStatus, corpus: dict[str, Path],
                                                        embedder: Any, name: str) -> None:
    cfg = IngestCfg(clip_seconds=1.0, stride=1.0)
    emb = embedder
    pp = emb.preprocess_cfg()
    plan = plan_video(make_task(os.fsencode(corpus[name])), cfg, pp)  # type: ignore[arg-type]
    n = len(plan.clips)
    state = ChildState()
    cpu = decode_chunk(plan, 0, n, cfg, pp, state)
    state.reset()
    gpu = nvdec.GpuDecoder(cfg, pp, sessions=2, device="0")
    assert gpu.setup().ok
    out = gpu.decode(GpuChunkRequest(plan, 0, n))
    assert isinstance(out, FramesChunk), out
    assert out.frames.device.type == "cuda" and out.kept == cpu.kept and out.decoder == "nvdec"
    got, want = out.frames.cpu().numpy(), np.asarray(cpu.frames)
    psnr = _psnr(got, want)
    diff = np.abs(got.astype(np.int16) - want)
    e_cpu, e_gpu = emb.process(want), emb.process(out.frames)
    cos = (e_cpu * e_gpu).sum(axis=1)
    print(f"\n{name}: {n} clips, frame PSNR {psnr:.1f} dB, max |diff| {diff.max()}, mean {diff.mean():.3f}; "
          f"embedding cosine min {cos.min():.6f} mean {cos.mean():.6f}")
    assert psnr >= 40.0
    assert cos.min() >= 0.999


def test_a_stream_nvdec_cannot_decode_falls_back(status: nvdec.NvdecStatus, corpus: dict[str, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from vidsearch.schemas.model_config import PreprocessCfg

    cfg, pp = IngestCfg(clip_seconds=1.0, stride=1.0), PreprocessCfg()
    plan = plan_video(make_task(os.fsencode(corpus["h444"])), cfg, pp)  # type: ignore[arg-type]
    gpu = nvdec.GpuDecoder(cfg, pp, sessions=1, device="0")
    gpu.setup()
    refused = gpu.decode(GpuChunkRequest(plan, 0, 1))
    assert isinstance(refused, GpuFallback) and "yuv444p" in refused.reason
    monkeypatch.setattr(nvdec, "nvdec_refusal", lambda *a, **k: None)  # send it to NVDEC anyway
    failed = gpu.decode(GpuChunkRequest(plan, 0, 1))
    print(f"\n4:4:4 H.264 forced onto NVDEC: {failed}")
    assert isinstance(failed, GpuFallback) and not gpu._open


def test_mixed_corpus_same_clips_as_cpu_only(status: nvdec.NvdecStatus, corpus: dict[str, Path],
                                             tmp_path: Path) -> None:
    from vidsearch.library import Library
    from vidsearch.pipeline.runner import IngestOptions, run_ingest

    folder = tmp_path / "in"
    folder.mkdir()
    for p in corpus.values():
        (folder / p.name).symlink_to(p)

    def run(decode: str) -> tuple[object, dict[int, np.ndarray]]:
        s = run_ingest([folder], tmp_path / decode, IngestCfg(decode_workers=2, batch_size=8, clip_seconds=1.0,
                                                              stride=1.0),
                       IngestOptions(model=TEST_MODEL, executor="local", build_index=False, progress=False,
                                     decode=decode, device="cuda", compile=False, nvdec_sessions=2))
        lib = Library(tmp_path / decode)
        out = {}
        for sh in lib.read_manifest().shards:
            if sh.clips_rows:
                t = lib.read_shard(sh, "clips")
                for cid, e in zip(t.column("clip_id").to_pylist(), t.column("embedding").to_pylist(), strict=True):
                    out[cid] = np.asarray(e, np.float32)
        return s, out

    s_cpu, a = run("cpu")
    s_gpu, b = run("auto")
    print(f"\nmixed corpus: cpu {s_cpu}\nauto {s_gpu}")
    assert s_gpu.decoders == "gpu+cpu" and s_gpu.gpu_videos >= 1  # type: ignore[attr-defined]
    assert s_gpu.videos_failed == s_cpu.videos_failed == 0  # type: ignore[attr-defined]
    assert set(a) == set(b)
    cos = np.array([float(a[k] @ b[k]) for k in a])
    print(f"mixed corpus embedding cosine: min {cos.min():.6f} mean {cos.mean():.6f}")
    assert cos.min() >= 0.999


def test_nvdec_works_after_torch_activated_the_gpu(status: nvdec.NvdecStatus) -> None:
    """Regression (H200, 2026-12-02): the Ray embed worker built its model first, torch activated
    the primary CUDA context with default flags, and FFmpeg's NVDEC then refused it ("Primary
    context already active with incompatible flags", errno 95): every video went to the CPU path.
    A fresh process does the same here and must still decode on the GPU."""
    import subprocess
    import sys

    code = ("import torch\n"
            "torch.zeros(1, device='cuda').sum().item()\n"  # the context is now active, flags 0
            "from vidsearch.pipeline.nvdec import nvdec_status\n"
            "st = nvdec_status(0)\n"
            "print('status', st)\n"
            "raise SystemExit(0 if st.ok else 1)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    print(r.stdout.strip())
    assert r.returncode == 0, r.stdout + r.stderr
