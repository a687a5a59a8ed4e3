"""Synthetic libraries for index/search/SQL tests: real shards, real catalog, no model.

autofaiss-style random collections: a random number of videos (each with a random number of
consecutive 4 s clips) committed in a random number of shards. Embeddings are clustered (one
centre per video plus noise, L2-normalised), which gives approximate indexes a realistic
structure; every clip's embedding is returned so tests can compute exact answers.

Use the ``synthetic_library`` fixture (a fresh library per test, built once per session and
copied) or call :func:`build_synthetic_library` for custom sizes. Other test folders can load
this module with ``importlib`` (see tests/reliability/test_security.py).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from vidsearch.library import Library
from vidsearch.schemas.ids import clip_id as make_clip_id
from vidsearch.schemas.manifest import ModelInfo
from vidsearch.schemas.tables import VIDEO_SCHEMA, clip_schema

SYNTH_DIM = 32
SYNTH_FINGERPRINT = "synthetic-fp-1"
CLIP_SECONDS = 4.0
FOLDERS = ("/media/pets", "/media/travel", "/media/sport", "/archive/old", "/archive/new")
CODECS = ("h264", "hevc", "vp9", "av1")


@dataclass
class SyntheticLibrary:
    """A built library plus the ground truth the tests compare against."""

    lib: Library
    clip_ids: np.ndarray          # (n,) int64, committed order
    vectors: np.ndarray           # (n, dim) float32, L2-normalised, same order
    video_of: np.ndarray          # (n,) video index of each clip
    start_s: np.ndarray           # (n,) clip start in its video
    videos: list[dict]            # the video rows (VIDEO_SCHEMA dicts)
    dim: int

    @property
    def n(self) -> int:
        return len(self.clip_ids)


def synthetic_model(dim: int = SYNTH_DIM, fingerprint: str = SYNTH_FINGERPRINT,
                    name: str = "synthetic") -> ModelInfo:
    return ModelInfo(name=name, fingerprint=fingerprint, embed_dim=dim, num_frames=4)


def make_shard_tables(videos: list[dict], clips_per_video: list[int], vectors: list[np.ndarray],
                      fingerprint: str, dim: int, run_id: str = "run-1") -> tuple[pa.Table, pa.Table, np.ndarray]:
    """Clip and video tables for ``videos`` (consecutive 4 s clips); returns their clip ids too."""
    cols: dict[str, list] = {f.name: [] for f in clip_schema(dim)}
    ids = []
    for v, nclip in zip(videos, clips_per_video, strict=True):
        fps = v["fps"]
        for i in range(nclip):
            sf, ef = int(i * CLIP_SECONDS * fps), int((i + 1) * CLIP_SECONDS * fps)
            cid = make_clip_id(v["video_id"], sf, ef, fingerprint)
            ids.append(cid)
            row = {"clip_id": cid, "video_id": v["video_id"], "path": v["path"], "clip_index": i,
                   "start_s": i * CLIP_SECONDS, "end_s": (i + 1) * CLIP_SECONDS, "start_frame": sf,
                   "end_frame": ef, "frame_indices": [sf + j * (ef - sf) // 4 for j in range(4)],
                   "frame_times_s": [i * CLIP_SECONDS + j for j in range(4)], "padded": False,
                   "segment": "fixed", "shot_index": None, "model": "synthetic",
                   "model_fingerprint": fingerprint, "run_id": run_id}
            for k, val in row.items():
                cols[k].append(val)
    emb = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    arrays = [pa.array(cols[f.name], type=f.type) for f in clip_schema(dim) if f.name != "embedding"]
    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim))
    clips = pa.Table.from_arrays(arrays, schema=clip_schema(dim))
    vids = pa.Table.from_pylist(videos, schema=VIDEO_SCHEMA)
    return clips, vids, np.array(ids, dtype=np.int64)


def build_synthetic_library(root: Path, n_clips: int = 3000, *, dim: int = SYNTH_DIM, seed: int = 0,
                            fingerprint: str = SYNTH_FINGERPRINT, max_clips_per_video: int = 40,
                            noise: float = 0.35, paths: list[str] | None = None,
                            statuses: list[str] | None = None, model_name: str = "synthetic") -> SyntheticLibrary:
    """Commit about ``n_clips`` synthetic clips into a new library at ``root``.

    Args:
        root: library folder (created).
        n_clips: clips to create (the last video is cut to hit it exactly).
        dim: embedding dimension.
        seed: everything random derives from it.
        fingerprint: the model fingerprint of the library.
        max_clips_per_video: videos get 1..this many clips.
        noise: spread of clips around their video's centre (smaller = tighter clusters).
        paths: explicit video paths (one video per path; clip counts stay random).
        statuses: explicit video statuses, parallel to ``paths`` (default all "done").
        model_name: the manifest's model name (e.g. "internvideo2-tiny" for text-query tests).
    """
    rng = np.random.default_rng(seed)
    lib = Library(root)
    videos: list[dict] = []
    counts: list[int] = []
    vecs: list[np.ndarray] = []
    total = 0
    vi = 0
    while total < n_clips if paths is None else vi < len(paths):
        nclip = int(rng.integers(1, max_clips_per_video + 1))
        if paths is None:
            nclip = min(nclip, n_clips - total)
            path = f"{FOLDERS[vi % len(FOLDERS)]}/video_{vi:05d}.mp4"
        else:
            path = paths[vi]
        fps = float(rng.choice([24.0, 25.0, 30.0]))
        centre = rng.standard_normal(dim)
        v = centre / np.linalg.norm(centre) + noise * rng.standard_normal((nclip, dim)) / np.sqrt(dim)
        v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        videos.append({
            "video_id": f"{vi:08x}{seed:08x}".ljust(32, "0"), "path": path, "path_bytes": path.encode(),
            "size_bytes": int(rng.integers(1 << 20, 1 << 30)),
            "mtime": dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=int(rng.integers(0, 365))),
            "duration_s": nclip * CLIP_SECONDS, "fps": fps, "frame_count": int(nclip * CLIP_SECONDS * fps),
            "width": int(rng.choice([640, 1280, 1920])), "height": 720, "codec": CODECS[vi % len(CODECS)],
            "container": "mov,mp4,m4a,3gp,3g2,mj2", "rotation": 0, "coverage": 1.0, "num_clips": nclip,
            "status": statuses[vi] if statuses else "done", "stage": None, "error_type": None,
            "error_message": None, "attempts": 1, "run_id": "run-1",
            "ingested_at": dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        })
        counts.append(nclip)
        vecs.append(v)
        total += nclip
        vi += 1
    # Random shard boundaries between videos (a video is settled in exactly one commit).
    n_shards = int(rng.integers(2, min(8, len(videos)) + 1)) if len(videos) > 1 else 1
    cuts = sorted(rng.choice(np.arange(1, len(videos)), n_shards - 1, replace=False).tolist()) \
        if n_shards > 1 else []
    bounds = [0, *cuts, len(videos)]
    all_ids, video_of, starts = [], [], []
    with lib.lock():
        lib.init(synthetic_model(dim, fingerprint, model_name))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            clips, vids, ids = make_shard_tables(videos[a:b], counts[a:b], vecs[a:b], fingerprint, dim)
            lib.commit(clips, vids, run_id="run-1")
            all_ids.append(ids)
            for j in range(a, b):
                video_of += [j] * counts[j]
                starts += [i * CLIP_SECONDS for i in range(counts[j])]
    return SyntheticLibrary(lib=lib, clip_ids=np.concatenate(all_ids), vectors=np.concatenate(vecs),
                            video_of=np.array(video_of), start_s=np.array(starts), videos=videos, dim=dim)


def copy_synthetic(src: SyntheticLibrary, dst: Path) -> SyntheticLibrary:
    """A copy of a built library at ``dst`` (tests that modify a library work on a copy)."""
    shutil.copytree(src.lib.root, dst, symlinks=True)
    return SyntheticLibrary(Library(dst), src.clip_ids, src.vectors, src.video_of, src.start_s,
                            src.videos, src.dim)


@pytest.fixture(scope="session")
def _synthetic_3000(tmp_path_factory: pytest.TempPathFactory) -> SyntheticLibrary:
    return build_synthetic_library(tmp_path_factory.mktemp("synth") / "lib", 3000, seed=7)


@pytest.fixture
def synthetic_library(_synthetic_3000: SyntheticLibrary, tmp_path: Path) -> SyntheticLibrary:
    """A fresh copy of a 3000-clip synthetic library (no index yet), per test."""
    return copy_synthetic(_synthetic_3000, tmp_path / "lib")


@pytest.fixture
def synthetic_library_factory(tmp_path: Path) -> Callable[..., SyntheticLibrary]:
    """``factory(n_clips, **kw)`` builds a new synthetic library under this test's tmp_path."""
    counter = iter(range(1000))

    def factory(n_clips: int = 3000, **kw: object) -> SyntheticLibrary:
        return build_synthetic_library(tmp_path / f"lib{next(counter)}", n_clips, **kw)  # type: ignore[arg-type]

    return factory
