"""The demo world: deterministic scenes, honest captions, real H.264 files, shipped model assets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest

from vidsearch.demo.captions import (
    CAPTION_STYLES,
    COLOURS,
    MOTIONS,
    SHAPES,
    Attributes,
    all_words,
    canonical_caption,
    sample_caption,
    training_words,
)
from vidsearch.demo.model import ASSETS_DIR, CONFIGS_DIR, DEMO_MODEL, EVAL_NAME, VOCAB_NAME, WEIGHTS_NAME, build_vocab
from vidsearch.demo.run import hit_matches, scene_at
from vidsearch.demo.train import TrainCfg, render_training_clip, yuv420_roundtrip
from vidsearch.demo.world import (
    SceneRenderer,
    SceneSpec,
    generate_world,
    load_world,
    sample_scene,
    sample_video,
    write_video,
)


def _mask(frame: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Pixels close to the object colour (the background is muted and dark)."""
    return np.abs(frame.astype(np.float32) - rgb).max(axis=-1) < 45


def _spec(shape: str, colour: str, count: int, motion: str, n: int = 40, seed: int = 5) -> SceneSpec:
    return SceneSpec(Attributes(shape, colour, count, motion), n, seed)


def test_sampling_and_rendering_are_deterministic() -> None:
    assert sample_video(3, 7) == sample_video(3, 7)
    assert sample_video(3, 7) != sample_video(3, 8)
    spec = sample_video(3, 7).scenes[0]
    a = SceneRenderer(spec).frames([0, 5, 9])
    b = SceneRenderer(spec).frames([9, 5, 0])[::-1]
    assert a.dtype == np.uint8 and a.shape == (3, 96, 128, 3)
    np.testing.assert_array_equal(a, b)  # any frame, any order: a pure function of (seed, index)
    c1, k1, t1 = render_training_clip(0, 11, TrainCfg())
    c2, k2, t2 = render_training_clip(0, 11, TrainCfg())
    np.testing.assert_array_equal(c1, c2)
    assert (k1, t1) == (k2, t2)


def test_consecutive_scenes_differ_and_circles_never_rotate() -> None:
    for i in range(30):
        v = sample_video(1, i)
        assert 3 <= len(v.scenes) <= 5
        for s, t in zip(v.scenes, v.scenes[1:], strict=False):
            assert s.attributes != t.attributes
    rng = np.random.default_rng(0)
    for _ in range(500):
        a = sample_scene(rng).attributes
        assert not (a.shape == "circle" and a.motion == "rotate")


@pytest.mark.parametrize("motion,axis,sign", [("left", 1, -1), ("right", 1, 1), ("up", 0, -1), ("down", 0, 1)])
def test_motion_moves_the_shape_the_way_the_caption_says(motion: str, axis: int, sign: int) -> None:
    r = SceneRenderer(_spec("square", "yellow", 1, motion))
    first, last = (np.argwhere(_mask(f, r.rgb)).mean(axis=0) for f in r.frames([0, 39]))
    assert sign * (last[axis] - first[axis]) > 10  # pixels, image axes (row, col)


def test_grow_shrink_appear_disappear() -> None:
    def area(motion: str, frame: int) -> int:
        r = SceneRenderer(_spec("heart", "red", 2, motion))
        return int(_mask(r.frame(frame), r.rgb).sum())

    assert area("grow", 39) > 2.5 * area("grow", 0)
    assert area("shrink", 0) > 2.5 * area("shrink", 39)
    r = SceneRenderer(_spec("star", "green", 3, "appear"))
    assert _mask(r.frame(r.event_frame - 1), r.rgb).sum() < 20 < _mask(r.frame(r.event_frame), r.rgb).sum()
    r = SceneRenderer(_spec("star", "green", 3, "disappear"))
    assert _mask(r.frame(r.event_frame), r.rgb).sum() < 20 < _mask(r.frame(r.event_frame - 1), r.rgb).sum()


def test_count_is_the_number_of_separate_objects() -> None:
    for count in (1, 2, 3):
        r = SceneRenderer(_spec("circle", "white", count, "grow", seed=count))
        m = _mask(r.frame(39), r.rgb)
        cols = m.any(axis=0)
        runs = np.count_nonzero(np.diff(cols.astype(int)) == 1) + int(cols[0])
        assert runs == count  # in-place objects lie side by side, never overlapping


def test_captions_name_the_attributes() -> None:
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        for colour in COLOURS:
            a = Attributes(shape, colour, 2, "left")
            assert canonical_caption(a) == f"two {colour} {shape}{'es' if shape == 'cross' else 's'} moving to the left"
    assert canonical_caption(Attributes("circle", "orange", 1, "grow")) == "an orange circle growing"
    for motion in MOTIONS:
        a = Attributes("star", "red", 3, motion)
        for style in ("canonical", "paraphrase"):
            text = sample_caption(a, rng, style)
            assert "red" in text and "stars" in text and "three" in text


def test_held_out_paraphrases_use_known_words_in_new_sentences() -> None:
    vocab = set(training_words())
    assert all_words("paraphrase") <= vocab
    assert all_words("synonym") <= vocab
    assert not (all_words("unseen") & {"ruby", "orb", "cobalt"} & vocab)
    a = Attributes("cross", "blue", 2, "shrink")
    rng = np.random.default_rng(0)
    train = {sample_caption(a, rng, "train") for _ in range(3000)}
    for style in ("paraphrase", "synonym"):
        held_out = {sample_caption(a, rng, style) for _ in range(300)}
        assert not held_out & train  # never a training sentence


def test_written_video_decodes_with_the_ground_truth_frame_count(tmp_path: Path) -> None:
    spec = sample_video(0, 2, scenes=(2, 2), scene_seconds=(1.0, 1.5))
    truth = write_video(spec, tmp_path / "v.mp4")
    with av.open(str(tmp_path / "v.mp4")) as c:
        st = c.streams.video[0]
        assert st.codec_context.name == "h264" and (st.width, st.height) == (128, 96)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(st)]
    assert len(frames) == truth.num_frames == spec.num_frames
    assert truth.scenes[1].start_frame == spec.scenes[0].num_frames
    assert truth.scenes[1].start_s == pytest.approx(spec.scenes[0].num_frames / spec.fps)
    # The decoded picture is the rendered one up to H.264 loss.
    rendered = SceneRenderer(spec.scenes[0]).frame(3).astype(np.float32)
    assert np.abs(frames[3].astype(np.float32) - rendered).mean() < 8
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left behind


def test_world_json_round_trip_and_scene_lookup(tmp_path: Path) -> None:
    w = generate_world(tmp_path, n_videos=2, seed=4, scenes=(2, 2), scene_seconds=(1.0, 1.2))
    assert load_world(tmp_path) == w
    v = w.videos[1]
    assert v.relpath.startswith("videos/studio/")
    s = v.scenes[1]
    path = str(tmp_path / v.relpath)
    assert scene_at(w, path, s.start_s + 0.01) == s
    assert scene_at(w, path, v.duration_s + 1) is None
    assert hit_matches(w, path, s.start_s, s.end_s, s.attributes)
    mtime = (tmp_path / v.relpath).stat().st_mtime_ns
    generate_world(tmp_path, n_videos=2, seed=4, scenes=(2, 2), scene_seconds=(1.0, 1.2))
    assert (tmp_path / v.relpath).stat().st_mtime_ns == mtime  # a rerun keeps finished videos


def test_yuv_roundtrip_keeps_luma_and_blurs_chroma() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 8, 10, 3), dtype=np.uint8)
    y = yuv420_roundtrip(x)
    assert y.shape == x.shape and y.dtype == np.uint8
    flat = np.full((1, 4, 4, 3), 120, np.uint8)
    assert np.abs(yuv420_roundtrip(flat).astype(int) - 120).max() <= 1


def test_shipped_demo_model_assets_are_consistent() -> None:
    cfg = json.loads((CONFIGS_DIR / f"{DEMO_MODEL}.json").read_text())
    weights = ASSETS_DIR / WEIGHTS_NAME
    assert cfg["pretrained"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weights.stat().st_size < 10 << 20  # a few MB
    assert "not InternVideo2" in cfg["description"]
    vocab = (ASSETS_DIR / VOCAB_NAME).read_text().splitlines()
    assert vocab == build_vocab() and cfg["encoder"]["text"]["vocab_size"] == len(vocab)
    ev = json.loads((ASSETS_DIR / EVAL_NAME).read_text())
    assert ev["weights_sha256"] == cfg["pretrained"]["sha256"]
    assert ev["heldout"]["clips"] >= 500
    for style in ("canonical", "train", "paraphrase"):
        assert ev["heldout"]["styles"][style]["R@1"] >= 0.8
        assert ev["heldout"]["styles"][style]["R@5"] >= 0.95
    assert set(ev["heldout"]["styles"]) == set(CAPTION_STYLES)
