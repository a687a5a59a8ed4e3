"""Clip boundaries and sampled frame indices, exactly as specified (segment.py docstring)."""

from __future__ import annotations

import pytest

from vidsearch.pipeline.segment import fixed_spans, plan_clips, shot_spans
from vidsearch.pipeline.types import ProbeInfo
from vidsearch.schemas.config import IngestCfg


def _probe(n: int, fps: float) -> ProbeInfo:
    pts = tuple(i / fps for i in range(n))
    return ProbeInfo(container="mov", codec="h264", width=64, height=64, coded_width=64, coded_height=64,
                     rotation=0, fps=fps, frame_count=n, claimed_frames=n, duration_s=n / fps, pts_s=pts,
                     num_streams=1)


def test_fixed_windows_30fps_10s() -> None:
    p = _probe(300, 30.0)
    assert fixed_spans(p.pts_s, p.duration_s, 4.0, 4.0) == [(0, 120), (120, 240), (240, 300)]
    clips = plan_clips(p, IngestCfg(), num_frames=4, sampling="uniform")
    assert [c.frame_indices for c in clips] == [(0, 30, 60, 90), (120, 150, 180, 210), (240, 255, 270, 285)]
    assert [(c.start_s, c.end_s) for c in clips] == [(0.0, 4.0), (4.0, 8.0), (8.0, 10.0)]
    assert not any(c.padded for c in clips)
    assert [c.clip_index for c in clips] == [0, 1, 2]


def test_fixed_windows_overlap_and_gap() -> None:
    p = _probe(100, 10.0)  # 10 s
    assert fixed_spans(p.pts_s, p.duration_s, 4.0, 2.0) == [(0, 40), (20, 60), (40, 80), (60, 100), (80, 100)]
    assert fixed_spans(p.pts_s, p.duration_s, 2.0, 4.0) == [(0, 20), (40, 60), (80, 100)]


def test_short_and_single_frame_videos_give_one_padded_clip() -> None:
    short = plan_clips(_probe(15, 30.0), IngestCfg(), 4, "uniform")
    assert len(short) == 1 and short[0].start_frame == 0 and short[0].end_frame == 15
    assert short[0].frame_indices == (0, 3, 6, 9) and short[0].end_s == pytest.approx(0.5)
    one = plan_clips(_probe(1, 30.0), IngestCfg(), 4, "uniform")
    assert len(one) == 1 and one[0].frame_indices == (0, 0, 0, 0) and one[0].padded


def test_vfr_windows_follow_pts() -> None:
    pts = (0.0, 0.5, 1.0, 3.9, 4.0, 4.1, 7.0)
    p = ProbeInfo("mov", "h264", 8, 8, 8, 8, 0, 1.0, 7, 7, 7.5, pts, 1)
    assert fixed_spans(pts, 7.5, 4.0, 4.0) == [(0, 4), (4, 7)]
    clips = plan_clips(p, IngestCfg(), 4, "uniform")
    assert [(c.start_s, c.end_s) for c in clips] == [(0.0, 4.0), (4.0, 7.5)]


def test_shots_cut_merge_split() -> None:
    fps = 10.0
    p = _probe(200, fps)  # 20 s
    # cuts at 3 s, 3.5 s and 12 s: the 0.5 s shot [3, 3.5) joins the previous one; the 8.5 s shot
    # [3.5, 12) splits into 4 s + 4.5 s (its 0.5 s tail joins the piece before); [12, 20) -> 4 + 4.
    spans = shot_spans(p.pts_s, p.duration_s, [30, 35, 120], clip_seconds=4.0, min_shot_seconds=1.0)
    assert spans == [(0, 35, 0), (35, 75, 1), (75, 120, 1), (120, 160, 2), (160, 200, 2)]


def test_shots_tail_merge_and_no_cuts() -> None:
    p = _probe(95, 10.0)  # 9.5 s, no cuts: one shot split 4 + 4 + 1.5
    assert shot_spans(p.pts_s, p.duration_s, [], 4.0, 1.0) == [(0, 40, 0), (40, 80, 0), (80, 95, 0)]
    p = _probe(85, 10.0)  # 8.5 s: 4 + 4 + 0.5 -> the 0.5 s tail joins the piece before
    assert shot_spans(p.pts_s, p.duration_s, [], 4.0, 1.0) == [(0, 40, 0), (40, 85, 0)]
    # a tiny first shot joins the next
    p = _probe(50, 10.0)
    assert shot_spans(p.pts_s, p.duration_s, [5], 4.0, 1.0) == [(0, 40, 0), (40, 50, 0)]
