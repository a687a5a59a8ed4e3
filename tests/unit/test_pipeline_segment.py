"""Clip boundaries and sampled frame indices, exactly as specified (segment.py docstring)."""

from __future__ import annotations

import pytest

from vidsearch.pipeline.segment import fixed_spans, join_short_tail, plan_clips, shot_spans
from vidsearch.schemas.config import IngestCfg


def _pts(n: int, fps: float) -> tuple[tuple[float, ...], float]:
    """Frame times and duration of ``n`` frames at constant ``fps``."""
    return tuple(i / fps for i in range(n)), n / fps


def test_fixed_windows_30fps_10s() -> None:
    pts, dur = _pts(300, 30.0)
    assert fixed_spans(pts, dur, 4.0, 4.0) == [(0, 120), (120, 240), (240, 300)]
    clips = plan_clips(pts, dur, IngestCfg(), num_frames=4, sampling="uniform")
    assert [c.frame_indices for c in clips] == [(0, 30, 60, 90), (120, 150, 180, 210), (240, 255, 270, 285)]
    assert [(c.start_s, c.end_s) for c in clips] == [(0.0, 4.0), (4.0, 8.0), (8.0, 10.0)]
    assert not any(c.padded for c in clips)
    assert [c.clip_index for c in clips] == [0, 1, 2]


def test_fixed_windows_overlap_and_gap() -> None:
    pts, dur = _pts(100, 10.0)  # 10 s
    assert fixed_spans(pts, dur, 4.0, 2.0) == [(0, 40), (20, 60), (40, 80), (60, 100), (80, 100)]
    assert fixed_spans(pts, dur, 2.0, 4.0) == [(0, 20), (40, 60), (80, 100)]


def test_short_and_single_frame_videos_give_one_padded_clip() -> None:
    short = plan_clips(*_pts(15, 30.0), IngestCfg(), 4, "uniform")
    assert len(short) == 1 and short[0].start_frame == 0 and short[0].end_frame == 15
    assert short[0].frame_indices == (0, 3, 6, 9) and short[0].end_s == pytest.approx(0.5)
    one = plan_clips(*_pts(1, 30.0), IngestCfg(), 4, "uniform")
    assert len(one) == 1 and one[0].frame_indices == (0, 0, 0, 0) and one[0].padded


def test_vfr_windows_follow_pts() -> None:
    pts = (0.0, 0.5, 1.0, 3.9, 4.0, 4.1, 7.0)
    assert fixed_spans(pts, 7.5, 4.0, 4.0) == [(0, 4), (4, 7)]
    clips = plan_clips(pts, 7.5, IngestCfg(), 4, "uniform")
    assert [(c.start_s, c.end_s) for c in clips] == [(0.0, 4.0), (4.0, 7.5)]


def test_a_tail_of_one_frame_joins_the_clip_before() -> None:
    """Issue 11: 2-s clips every second over 26.1 s at 10 fps ended in a clip [26.0, 26.1): one
    frame repeated four times, a hit of its own with no frame for a thumbnail. Now the window
    before ([25, 26.1), which reaches the end already) is the last clip."""
    pts, dur = _pts(261, 10.0)
    cfg = IngestCfg(clip_seconds=2.0, stride=1.0)
    assert fixed_spans(pts, dur, 2.0, 1.0)[-2:] == [(250, 261), (260, 261)]  # the raw windows
    clips = plan_clips(pts, dur, cfg, 4, "uniform")
    assert len(clips) == 26 and not any(c.padded for c in clips)
    last = clips[-1]
    assert (last.start_frame, last.end_frame, last.start_s, last.end_s) == (250, 261, 25.0, pytest.approx(26.1))
    assert last.frame_indices == (250, 252, 254, 256) and last.clip_index == 25
    # Every frame is still in a clip.
    assert {i for c in clips for i in range(c.start_frame, c.end_frame)} == set(range(261))


@pytest.mark.parametrize(("n", "fps", "clip", "want"), [
    (241, 10.0, 4.0, [(0, 40), (40, 80), (80, 120), (120, 160), (160, 200), (200, 241)]),  # 0.1 s tail joins
    (261, 10.0, 4.0, [(0, 40), (40, 80), (80, 120), (120, 160), (160, 200), (200, 240), (240, 261)]),  # 2.1 s
    (150, 30.0, 4.0, [(0, 120), (120, 150)]),     # a 1-s tail is a clip of its own
    (148, 30.0, 4.0, [(0, 148)]),                 # 0.93 s: shorter than min_shot_seconds, joins
    (5, 1.0, 4.0, [(0, 4), (4, 5)]),              # 1 fps: one frame lasting 1 s is a clip of its own
    (12, 1.0, 4.0, [(0, 4), (4, 8), (8, 12)]),    # whole windows only: nothing to join
])
def test_fixed_tail_rule(n: int, fps: float, clip: float, want: list[tuple[int, int]]) -> None:
    pts, dur = _pts(n, fps)
    clips = plan_clips(pts, dur, IngestCfg(clip_seconds=clip, stride=clip), 4, "uniform")
    assert [(c.start_frame, c.end_frame) for c in clips] == want
    assert clips[-1].end_s == pytest.approx(dur)


def test_join_short_tail_with_overlap_and_gaps() -> None:
    pts, dur = _pts(101, 10.0)  # 10.1 s
    # Overlapping windows: the 0.1 s tail [10.0, 10.1) adds nothing the window before lacks.
    spans = fixed_spans(pts, dur, 4.0, 2.0)
    assert spans[-2:] == [(80, 101), (100, 101)]
    assert join_short_tail(spans, pts, dur, 1.0)[-1] == (80, 101)
    # Gaps (stride > clip): the window before grows over the gap to the end.
    spans = fixed_spans(pts, dur, 2.0, 5.0)
    assert spans == [(0, 20), (50, 70), (100, 101)]
    assert join_short_tail(spans, pts, dur, 1.0) == [(0, 20), (50, 101)]
    # One span stays whatever its length (B11, B12).
    assert join_short_tail([(0, 1)], (0.0,), 0.1, 1.0) == [(0, 1)]


def test_shots_cut_merge_split() -> None:
    pts, dur = _pts(200, 10.0)  # 20 s
    # cuts at 3 s, 3.5 s and 12 s: the 0.5 s shot [3, 3.5) joins the previous one; the 8.5 s shot
    # [3.5, 12) splits into 4 s + 4.5 s (its 0.5 s tail joins the piece before); [12, 20) -> 4 + 4.
    spans = shot_spans(pts, dur, [30, 35, 120], clip_seconds=4.0, min_shot_seconds=1.0)
    assert spans == [(0, 35, 0), (35, 75, 1), (75, 120, 1), (120, 160, 2), (160, 200, 2)]


def test_shots_tail_merge_and_no_cuts() -> None:
    pts, dur = _pts(95, 10.0)  # 9.5 s, no cuts: one shot split 4 + 4 + 1.5
    assert shot_spans(pts, dur, [], 4.0, 1.0) == [(0, 40, 0), (40, 80, 0), (80, 95, 0)]
    pts, dur = _pts(85, 10.0)  # 8.5 s: 4 + 4 + 0.5 -> the 0.5 s tail joins the piece before
    assert shot_spans(pts, dur, [], 4.0, 1.0) == [(0, 40, 0), (40, 85, 0)]
    # a tiny first shot joins the next
    pts, dur = _pts(50, 10.0)
    assert shot_spans(pts, dur, [5], 4.0, 1.0) == [(0, 40, 0), (40, 50, 0)]
