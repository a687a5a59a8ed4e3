"""Moment merging and per-video limits on hand-built hit lists."""

from __future__ import annotations

import pytest

from vidsearch.schemas.times import round_ms
from vidsearch.search.shaping import ClipHit, limit_per_video, merge_moments, shape
from vidsearch.search.timefmt import TimeFormatError, format_hms, format_span, parse_time


def hit(cid: int, score: float, video: str, start: float, length: float = 4.0) -> ClipHit:
    return ClipHit(cid, score, video, f"/v/{video}.mp4", start, start + length)


def test_adjacent_and_overlapping_hits_merge_into_one_moment() -> None:
    hits = [hit(1, 0.9, "a", 8), hit(2, 0.8, "a", 12), hit(3, 0.7, "a", 4), hit(4, 0.6, "a", 10)]
    [m] = merge_moments(hits)
    assert (m.start_s, m.end_s, m.score, m.clip_id) == (4, 16, 0.9, 1)
    assert m.clip_ids == [3, 1, 4, 2]  # time order


def test_gap_and_video_boundaries() -> None:
    hits = [hit(1, 0.9, "a", 0), hit(2, 0.8, "a", 5), hit(3, 0.7, "a", 20), hit(4, 0.85, "b", 4)]
    moments = merge_moments(hits, max_gap_s=2.0)
    assert [m.clip_ids for m in moments] == [[1, 2], [4], [3]]  # 1 s gap merges, 11 s does not
    assert [m.score for m in moments] == [0.9, 0.85, 0.7]


def test_no_chaining_past_max_span() -> None:
    # Twenty adjacent clips of one video: bounded moments, not one 80 s blob.
    hits = [hit(i, 1.0 - i / 100, "a", 4 * i) for i in range(20)]
    moments = merge_moments(hits, max_gap_s=2.0, max_span_s=12.0)
    assert all(m.end_s - m.start_s <= 12.0 for m in moments)
    assert sum(len(m.clip_ids) for m in moments) == 20
    assert len(moments) >= 7


def test_merge_off_and_duplicates() -> None:
    hits = [hit(1, 0.9, "a", 0), hit(2, 0.8, "a", 4), hit(1, 0.9, "a", 0)]
    assert [m.clip_ids for m in merge_moments(hits, merge=False)] == [[1], [2]]


def test_per_video_limit_and_grouping_before_k() -> None:
    hits = [hit(1, 0.99, "a", 0), hit(2, 0.98, "a", 40), hit(3, 0.97, "a", 80), hit(4, 0.5, "b", 0),
            hit(5, 0.4, "c", 0)]
    assert [m.video_id for m in limit_per_video(merge_moments(hits), 1)] == ["a", "b", "c"]
    page, total = shape(hits, k=2, per_video=2)
    assert [(m.rank, m.clip_id) for m in page] == [(1, 1), (2, 2)] and total == 4
    page, _ = shape(hits, k=2, offset=2, per_video=2)
    assert [(m.rank, m.clip_id) for m in page] == [(3, 4), (4, 5)]


def test_time_formats() -> None:
    # One fixed format (HH:MM:SS.mmm), milliseconds rounded, read back by parse_time.
    assert format_hms(83) == "00:01:23.000" and format_hms(3600 + 0.5) == "01:00:00.500"
    assert format_hms(4.0040000000000004) == "00:00:04.004" and format_hms(59.9996) == "00:01:00.000"
    assert format_span(12, 16.5) == "00:00:12.000-00:00:16.500"
    assert round_ms(4.0040000000000004) == 4.004 and str(round_ms(26.1 + 1e-12)) == "26.1"
    assert parse_time("00:01:20") == 80 and parse_time("1:20") == 80 and parse_time("80.5") == 80.5
    for t in (0.0, 4.004, 83.5, 3725.125):
        assert parse_time(format_hms(t)) == pytest.approx(t)
    for bad in ("1; DROP TABLE clips", "-1", "1:75", "", "nan", "a:b", "inf", "1e3", "１２"):
        with pytest.raises(TimeFormatError, match="not a time"):  # a ValueError, not argparse's error
            parse_time(bad)
    assert issubclass(TimeFormatError, ValueError)


def test_one_clip_id_parser_for_cli_and_web() -> None:
    from vidsearch.search.types import BadClipId, parse_clip_id

    assert parse_clip_id("887001044795390268") == 887001044795390268
    assert parse_clip_id(" 1 ") == 1 and parse_clip_id(str(2**63 - 1)) == 2**63 - 1
    for bad in ("0", "-5", str(2**63), "12ab", "", "1.0", "١٢", "+7", "99999999999999999999"):
        with pytest.raises(BadClipId, match="not a clip id"):
            parse_clip_id(bad)


def test_score_margin_keeps_a_straddling_clip_out_of_the_moment() -> None:
    """Overlapping windows: clip [4,6) straddles a cut at 5 s and scores lower than [2,4), [3,5)."""
    from vidsearch.search.shaping import ClipHit, merge_moments

    hits = [ClipHit(1, 0.90, "v", "/v.mp4", 2.0, 4.0), ClipHit(2, 0.88, "v", "/v.mp4", 3.0, 5.0),
            ClipHit(3, 0.70, "v", "/v.mp4", 4.0, 6.0)]
    merged = merge_moments(hits, max_gap_s=2.0, score_margin=None)
    assert [(m.start_s, m.end_s) for m in merged] == [(2.0, 6.0)]
    kept = merge_moments(hits, max_gap_s=2.0, score_margin=0.05)
    assert [(m.start_s, m.end_s, m.clip_ids) for m in kept] == [(2.0, 5.0, [1, 2]), (4.0, 6.0, [3])]
