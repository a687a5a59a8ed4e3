"""Fusion of per-modality hit lists into ranked moments (reciprocal rank fusion)."""

from __future__ import annotations

import pytest

from vidsearch.schemas.snippet import Snippet
from vidsearch.search.fusion import ModalityHit, fuse


def V(video: str, start: float, end: float, score: float) -> ModalityHit:  # noqa: N802 - short test helper
    return ModalityHit("visual", video, start, end, score)


def S(video: str, start: float, end: float, score: float, text: str = "x", source: str = "speech") -> ModalityHit:  # noqa: N802
    return ModalityHit("speech", video, start, end, score, snippet=Snippet(text, ((0, 1),)), source=source,
                       play_s=start)


def test_moment_in_both_modalities_beats_one_in_a_single_modality() -> None:
    visual = [V("a", 0, 4, 0.35), V("b", 10, 14, 0.30), V("c", 0, 4, 0.20)]
    speech = [S("x", 3, 4, 25.0), S("b", 11.0, 11.6, 9.0)]
    out = fuse({"visual": visual, "speech": speech}, k=None)
    assert (out[0].video_id, out[0].start_s, out[0].end_s) == ("b", 10, 14)
    assert out[0].modalities == ("visual", "speech")  # equal contributions: time order
    assert out[0].scores == {"visual": 0.30, "speech": 9.0}  # each modality's own score, as found
    assert out[0].ranks == {"visual": 2, "speech": 2}
    assert out[0].score == pytest.approx(2 / 62)
    assert out[0].play_s == 11.0  # playback starts at the first matched word
    assert out[0].snippet is not None
    # the rest keep their own modality only, in RRF order (rank 1s tie; then by video id)
    assert [(f.video_id, f.modalities) for f in out[1:]] == [("a", ("visual",)), ("x", ("speech",)),
                                                             ("c", ("visual",))]


def test_scores_of_different_kinds_are_never_compared() -> None:
    # a huge BM25 score does not beat a top visual hit: only ranks count
    out = fuse({"visual": [V("a", 0, 4, 0.2)], "speech": [S("b", 0, 1, 1e9)]}, k=None)
    assert out[0].score == out[1].score == pytest.approx(1 / 61)


def test_overlap_merging_and_one_vote_per_modality() -> None:
    speech = [S("a", t, t + 1, 10 - t) for t in range(5)]  # five adjacent lines of one video
    visual = [V("b", 0, 4, 0.3)]
    out = fuse({"speech": speech, "visual": visual}, k=None, merge_gap_s=0.5)
    merged = [f for f in out if f.video_id == "a"]
    assert len(merged) == 1 and (merged[0].start_s, merged[0].end_s) == (0, 5)
    assert merged[0].ranks == {"speech": 1} and len(merged[0].hits) == 5
    assert merged[0].score == pytest.approx(1 / 61)  # one vote (its best rank), not five
    # without a gap tolerance, touching hits still merge; separated ones do not
    out = fuse({"speech": [S("a", 0, 1, 2), S("a", 3, 4, 1)]}, k=None)
    assert [(f.start_s, f.end_s) for f in out] == [(0, 1), (3, 4)]


def test_max_moment_length_splits_long_runs() -> None:
    speech = [S("a", t, t + 1.5, 1.0) for t in range(0, 100)]
    out = fuse({"speech": speech}, k=None, max_moment_s=10)
    assert all(f.end_s - f.start_s <= 10 for f in out) and len(out) > 5


def test_subtitle_and_speech_count_as_one_modality() -> None:
    speech = [S("a", 1, 2, 5.0, source="speech"), S("a", 1.1, 2.2, 4.0, source="subtitle")]
    out = fuse({"speech": speech, "visual": [V("b", 0, 4, 0.3)]}, k=None)
    a = next(f for f in out if f.video_id == "a")
    assert a.sources == ("speech", "subtitle") and a.modalities == ("speech",)
    assert a.score == pytest.approx(1 / 61)


def test_k_weights_and_validation() -> None:
    lists = {"visual": [V("a", 0, 4, 0.3)], "speech": [S("b", 0, 1, 3.0)]}
    assert len(fuse(lists, k=1)) == 1
    assert fuse(lists, k=None, weights={"speech": 2.0})[0].video_id == "b"
    with pytest.raises(ValueError, match="unknown modality"):
        fuse({"audio": []})
    with pytest.raises(ValueError, match="in the visual list"):
        fuse({"visual": [S("a", 0, 1, 1.0)]})
    with pytest.raises(ValueError, match="ends before it starts"):
        V("a", 3, 1, 0.1)
    with pytest.raises(ValueError, match="rrf_k"):
        fuse(lists, rrf_k=0)
