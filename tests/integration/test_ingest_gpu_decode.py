"""The GPU decode path end to end on a machine without a GPU.

``VIDSEARCH_TEST_NVDEC_CPU=1`` makes the GPU decoder (the local executor's, or the Ray embed
actor's in its NVDEC concurrency group) use PyAV's CPU decoder in place of NVDEC (everything else
is the GPU path's: the driver's side choice, plans ahead, one chunk in flight per video, frames
kept by the embedding process and joined to CPU-decoded ones in embed batches, refusals). A
mixed corpus then gives the clip ids of a CPU-only run and the same embeddings within the colour
conversion's rounding. ``--decode gpu`` without CUDA exits 1 with one line naming what is
missing, before a library exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from media_tools import TEST_MODEL

from vidsearch.cli import main
from vidsearch.library import Library
from vidsearch.pipeline.runner import IngestOptions, run_ingest
from vidsearch.schemas.config import IngestCfg


def _embeddings(lib: Path) -> dict[int, np.ndarray]:
    library = Library(lib)
    out: dict[int, np.ndarray] = {}
    for s in library.read_manifest().shards:
        if s.clips_rows:
            t = library.read_shard(s, "clips", verify=True)
            for cid, emb in zip(t.column("clip_id").to_pylist(), t.column("embedding").to_pylist(), strict=True):
                out[cid] = np.asarray(emb, np.float32)
    return out


def test_mixed_corpus_gpu_path_equals_cpu_path(media_videos: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The test videos are tiny: offer every one to the GPU side (auto keeps small frames on the CPU).
    cfg = IngestCfg(decode_workers=1, batch_size=8, clip_seconds=1.0, stride=1.0, gpu_decode_min_pixels=0)
    folder = media_videos["h264"].parent
    cpu = run_ingest([folder], tmp_path / "cpu", cfg, IngestOptions(
        model=TEST_MODEL, executor="local", build_index=False, progress=False, decode="cpu", decode_chunk_clips=2))
    monkeypatch.setenv("VIDSEARCH_TEST_NVDEC_CPU", "1")
    gpu = run_ingest([folder], tmp_path / "gpu", cfg, IngestOptions(
        model=TEST_MODEL, executor="local", build_index=False, progress=False, decode="auto",
        decode_chunk_clips=2, nvdec_sessions=2))
    assert cpu.decoders == "cpu" and gpu.decoders == "gpu+cpu"
    assert gpu.videos_done == cpu.videos_done == len(media_videos) and gpu.videos_failed == 0
    # Videos went to whichever side had room; never the MPEG-4 part 2 one (NVDEC refuses it: the
    # CPU path took it, without a failure row), and nothing had to fall back.
    assert 1 <= gpu.gpu_videos <= len(media_videos) - 1 and gpu.gpu_fallbacks == 0
    a, b = _embeddings(tmp_path / "cpu"), _embeddings(tmp_path / "gpu")
    assert set(a) == set(b) and len(a) == cpu.clips == gpu.clips
    cos = np.array([float(a[k] @ b[k]) for k in a])
    assert cos.min() > 0.999, cos.min()


def test_auto_keeps_small_frames_on_the_cpu(media_videos: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Under --decode auto a video below gpu_decode_min_pixels is decoded by the CPU workers (at
    360p NVDEC was 4x slower than 15 CPU workers on the H200 and slowed the embedder); at the
    limit it goes to the GPU side."""
    monkeypatch.setenv("VIDSEARCH_TEST_NVDEC_CPU", "1")
    one = tmp_path / "in"
    one.mkdir()
    (one / "v.mp4").symlink_to(media_videos["h264"])  # 96x64
    for mode, limit, expect in (("auto", 96 * 64 + 1, 0), ("auto", 96 * 64, 1)):
        cfg = IngestCfg(decode_workers=1, batch_size=8, clip_seconds=1.0, stride=1.0, gpu_decode_min_pixels=limit)
        s = run_ingest([one], tmp_path / f"{mode}-{limit}", cfg, IngestOptions(
            model=TEST_MODEL, executor="local", build_index=False, progress=False, decode=mode,
            decode_chunk_clips=2, nvdec_sessions=2))
        assert s.videos_done == 1 and s.gpu_videos == expect, (mode, limit, s.gpu_videos)


@pytest.mark.ray
def test_ray_executor_gpu_path_equals_cpu_path(media_videos: dict[str, Path], tmp_path: Path, ray_session: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The Ray wiring of GPU decode (NVDEC threads in the embed actor's concurrency group, frames
    kept by the actor until their embed call, release calls) with the CPU stand-in decoder."""
    cfg = IngestCfg(decode_workers=1, batch_size=8, clip_seconds=1.0, stride=1.0, gpu_decode_min_pixels=0)
    folder = media_videos["h264"].parent
    cpu = run_ingest([folder], tmp_path / "cpu", cfg, IngestOptions(
        model=TEST_MODEL, executor="local", build_index=False, progress=False, decode="cpu", decode_chunk_clips=2))
    monkeypatch.setenv("VIDSEARCH_TEST_NVDEC_CPU", "1")
    ray = run_ingest([folder], tmp_path / "ray", cfg, IngestOptions(
        model=TEST_MODEL, executor="ray", build_index=False, progress=False, decode="auto",
        decode_chunk_clips=2, nvdec_sessions=2))
    assert ray.decoders == "gpu+cpu" and ray.gpu_videos >= 1 and ray.gpu_fallbacks == 0
    assert ray.videos_done == cpu.videos_done == len(media_videos) and ray.videos_failed == 0
    a, b = _embeddings(tmp_path / "cpu"), _embeddings(tmp_path / "ray")
    assert set(a) == set(b) and len(a) == cpu.clips == ray.clips
    cos = np.array([float(a[k] @ b[k]) for k in a])
    assert cos.min() > 0.999, cos.min()


def test_decode_gpu_without_cuda_exits_1_naming_it(media_videos: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    lib = tmp_path / "lib"
    code = main(["ingest", str(media_videos["h264"]), "--library", str(lib), "--model", TEST_MODEL,
                 "--executor", "local", "--decode", "gpu", "--no-index"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert any("--decode gpu: CUDA is not available" in line for line in err), err
    assert not lib.exists()
