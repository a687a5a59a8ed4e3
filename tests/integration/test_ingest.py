"""End-to-end ingest on real Ray (local mode), real ffmpeg videos, the tiny model and DuckDB.

Checks the contract of issue 3: clip boundaries and sampled frames exactly as specified (fixed
windows and shots), every clip row maps to exactly one embedding and back, embeddings equal the
model's on the same frames, a rerun is a no-op, a new file is the only thing ingested, a changed
file is re-ingested (old clips marked replaced), a renamed file is not re-embedded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import decord
import numpy as np
import pyarrow as pa
import pytest
from media_tools import TEST_MODEL, lavfi_video
from reliability.invariants import check_library

from vidsearch.library import Library
from vidsearch.pipeline.runner import IngestOptions, IngestSummary, run_ingest
from vidsearch.schemas.config import IngestCfg

pytestmark = pytest.mark.ray


def ingest(inputs: list[Any], lib: Path, executor: str = "ray", **cfg: Any) -> IngestSummary:
    return run_ingest(inputs, lib, IngestCfg(decode_workers=1, batch_size=8, **cfg),
                      IngestOptions(model=TEST_MODEL, executor=executor, build_index=False, progress=False))


def clips_table(lib: Path) -> pa.Table:
    library = Library(lib)
    return pa.concat_tables([library.read_shard(s, "clips", verify=True) for s in library.read_manifest().shards
                             if s.clips_rows])


@pytest.fixture(scope="module")
def media_lib(media_videos: dict[str, Path], shared_demo_video: Path, ray_session: None,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("media_lib")
    listfile = root / "paths.txt"
    listfile.write_text(f"{shared_demo_video}\n")
    lib = root / "lib"
    s = ingest([media_videos["h264"].parent, f"@{listfile}"], lib)
    return {"lib": lib, "summary": s}


def test_all_media_done_and_invariants(media_lib: dict[str, Any], media_videos: dict[str, Path]) -> None:
    s = media_lib["summary"]
    assert s.exit_code == 0 and s.videos_failed == 0
    assert s.videos_done == len(media_videos) + 1  # + the shared demo video
    check_library(media_lib["lib"])


def test_fixed_window_boundaries_and_indices(media_lib: dict[str, Any], media_videos: dict[str, Path]) -> None:
    t = clips_table(media_lib["lib"]).to_pylist()
    by_path: dict[str, list[dict[str, Any]]] = {}
    for r in t:
        by_path.setdefault(r["path"], []).append(r)
    h264 = sorted(by_path[str(media_videos["h264"])], key=lambda r: r["clip_index"])  # 150 frames @ 30
    assert [(r["start_frame"], r["end_frame"]) for r in h264] == [(0, 120), (120, 150)]
    assert [r["frame_indices"] for r in h264] == [[0, 30, 60, 90], [120, 127, 134, 141]]
    assert [(r["start_s"], r["end_s"]) for r in h264] == [(0.0, 4.0), (4.0, 5.0)]
    mpeg4 = sorted(by_path[str(media_videos["mpeg4"])], key=lambda r: r["clip_index"])  # 225 @ 25
    assert [(r["start_frame"], r["end_frame"]) for r in mpeg4] == [(0, 100), (100, 200), (200, 225)]
    assert mpeg4[2]["frame_indices"] == [200, 206, 212, 218]
    assert len(by_path[str(media_videos["vp9"])]) == 1


def test_every_clip_maps_to_one_embedding_and_back(media_lib: dict[str, Any]) -> None:
    t = clips_table(media_lib["lib"])
    ids = t.column("clip_id").to_pylist()
    emb = np.asarray(t.column("embedding").to_pylist(), np.float32)
    assert len(set(ids)) == len(ids) == len(emb)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    with Library(media_lib["lib"]).connect_catalog() as con:
        cat = con.execute("SELECT clip_id, shard_id, row_in_shard FROM clips").fetchall()
    assert sorted(c[0] for c in cat) == sorted(ids)
    lib = Library(media_lib["lib"])
    shards = {s.shard_id: lib.read_shard(s, "clips") for s in lib.read_manifest().shards}
    for cid, shard_id, row in cat:  # catalog -> exactly the shard row holding that clip's embedding
        assert shards[shard_id].column("clip_id")[row].as_py() == cid


def test_embeddings_equal_the_model_on_full_resolution_frames(media_lib: dict[str, Any],
                                                              media_videos: dict[str, Path]) -> None:
    from vidsearch.models import create_model

    model = create_model(TEST_MODEL, vision_only=True)
    t = clips_table(media_lib["lib"]).to_pylist()
    for name in ("h264", "rot90"):
        rows = [r for r in t if r["path"] == str(media_videos[name])]
        vr = decord.VideoReader(str(media_videos[name]))
        for r in rows:
            frames = vr.get_batch(r["frame_indices"]).asnumpy()[None]  # (1, T, H, W, 3) full res
            ref = model.encode_video(frames)[0].numpy()
            np.testing.assert_allclose(np.asarray(r["embedding"]), ref, atol=1e-5)


def test_shots_cut_at_known_scene_changes(media_videos: dict[str, Path], tmp_path: Path) -> None:
    # Local executor: segmentation is the same code on either; media_lib above is this file's Ray run.
    s = ingest([media_videos["cuts"]], tmp_path / "lib", executor="local", segment="shots")
    assert s.videos_done == 1
    rows = sorted(clips_table(tmp_path / "lib").to_pylist(), key=lambda r: r["clip_index"])
    # 25 fps; cuts at 2 s and 5 s -> shots [0, 50), [50, 125), [125, 175).
    assert [(r["start_frame"], r["end_frame"], r["shot_index"]) for r in rows] == [
        (0, 50, 0), (50, 125, 1), (125, 175, 2)]
    assert [r["frame_indices"] for r in rows] == [[0, 12, 24, 36], [50, 68, 86, 104], [125, 137, 149, 161]]
    assert all(r["segment"] == "shots" for r in rows)


def test_rerun_noop_new_file_changed_file_and_rename(media_videos: dict[str, Path], tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    for k in ("h264", "vp9"):
        shutil.copy(media_videos[k], d / media_videos[k].name)
    lib = tmp_path / "lib"
    s = ingest([d], lib, executor="local")
    assert (s.videos_done, s.clips) == (2, 3)
    gen = Library(lib).read_manifest().shards
    s = ingest([d], lib, executor="local")
    assert (s.videos_done, s.clips, s.videos_skipped, s.embed_calls) == (0, 0, 2, 0)
    assert Library(lib).read_manifest().shards == gen  # no new shard: nothing rewritten
    shutil.copy(media_videos["mpeg4"], d / "new.avi")
    s = ingest([d], lib, executor="local")
    assert (s.videos_done, s.clips, s.videos_skipped) == (1, 3, 2)
    # Changed content at a known path: new video_id ingested, the old one marked replaced.
    lavfi_video(d / "h264_96x64_30fps.mp4", seconds=3, size="64x48")
    s = ingest([d], lib, executor="local")
    assert (s.videos_done, s.videos_replaced, s.clips) == (1, 1, 1)
    # Renamed file: same content, no re-embed, the path is updated.
    os.rename(d / "new.avi", d / "renamed.avi")
    s = ingest([d], lib, executor="local")
    assert (s.videos_done, s.videos_moved, s.clips, s.embed_calls) == (0, 1, 0, 0)
    with Library(lib).connect_catalog() as con:
        st = dict(con.execute("SELECT status, count(*) FROM videos GROUP BY status").fetchall())
        paths = [p for (p,) in con.execute("SELECT path FROM videos WHERE status = 'done'").fetchall()]
    assert st == {"done": 3, "replaced": 1}
    assert str(d / "renamed.avi") in paths
    check_library(lib)
