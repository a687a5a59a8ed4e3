"""Result shaping: merge nearby hits of one video into moments, limit hits per video, cut to k.

Grouping happens before cutting to k, so ``k`` counts moments, not raw clips. Merging is bounded:
a hit joins a moment only if it lies within ``max_gap_s`` of the moment's current extent, scores
within ``score_margin`` of the moment's best clip, and the merged moment stays within
``max_span_s``. So a long run of similar clips cannot chain separate events into one hour-long
"moment", and a clip that straddles a cut (half this scene, half the next: it scores lower than
the clips inside the scene) does not stretch the moment past the cut.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClipHit:
    """One scored clip, with the metadata shaping needs."""

    clip_id: int
    score: float
    video_id: str
    path: str
    start_s: float
    end_s: float


@dataclass
class Moment:
    """One result: a best clip plus the nearby hits of the same video merged into it."""

    score: float                 # the best clip's score
    clip_id: int                 # the best clip
    video_id: str
    path: str
    start_s: float               # extent of all merged clips
    end_s: float
    clip_ids: list[int] = field(default_factory=list)   # merged clips in time order
    rank: int = 0
    rerank_score: float | None = None

    def add(self, h: ClipHit) -> None:
        self.start_s = min(self.start_s, h.start_s)
        self.end_s = max(self.end_s, h.end_s)
        self.clip_ids.append(h.clip_id)


def merge_moments(hits: Iterable[ClipHit], max_gap_s: float = 2.0, max_span_s: float = 30.0,
                  merge: bool = True, score_margin: float | None = None) -> list[Moment]:
    """Group hits into moments, best first.

    Hits are taken in score order; each joins the best-scoring moment of its video whose extent
    it overlaps or touches within ``max_gap_s``, provided the union stays within ``max_span_s``;
    otherwise it starts a new moment.

    Args:
        hits: scored clips (any order; duplicates of a clip id are ignored).
        max_gap_s: largest gap between a moment and a hit that still merges.
        max_span_s: longest moment (a single clip longer than this stays a moment of its own).
        merge: False keeps every clip as its own moment.
        score_margin: a hit scoring more than this below the moment's best clip does not merge
            (it may start a moment of its own); None merges regardless of score.
    """
    ordered = sorted(hits, key=lambda h: (-h.score, h.clip_id))
    moments: list[Moment] = []
    by_video: dict[str, list[Moment]] = {}
    seen: set[int] = set()
    for h in ordered:
        if h.clip_id in seen:
            continue
        seen.add(h.clip_id)
        target = None
        if merge:
            for m in by_video.get(h.video_id, ()):  # in creation order = best score first
                near = h.start_s <= m.end_s + max_gap_s and h.end_s >= m.start_s - max_gap_s
                span = max(m.end_s, h.end_s) - min(m.start_s, h.start_s)
                close = score_margin is None or h.score >= m.score - score_margin
                if near and close and span <= max_span_s:
                    target = m
                    break
        if target is None:
            m = Moment(score=h.score, clip_id=h.clip_id, video_id=h.video_id, path=h.path,
                       start_s=h.start_s, end_s=h.end_s, clip_ids=[h.clip_id])
            moments.append(m)
            by_video.setdefault(h.video_id, []).append(m)
        else:
            target.add(h)
    starts = {h.clip_id: h.start_s for h in ordered}
    for m in moments:
        m.clip_ids.sort(key=lambda c: (starts[c], c))
    return moments


def limit_per_video(moments: list[Moment], per_video: int | None) -> list[Moment]:
    """Keep at most ``per_video`` moments of each video (the best ones), order unchanged."""
    if not per_video:
        return list(moments)
    count: dict[str, int] = {}
    out = []
    for m in moments:
        c = count.get(m.video_id, 0)
        if c < per_video:
            out.append(m)
            count[m.video_id] = c + 1
    return out


def shape(hits: Iterable[ClipHit], *, k: int, offset: int = 0, per_video: int | None = None,
          max_gap_s: float = 2.0, max_span_s: float = 30.0, merge: bool = True,
          score_margin: float | None = None) -> tuple[list[Moment], int]:
    """Merge, limit per video, then cut to ``[offset, offset + k)`` and number the ranks.

    Returns:
        (the page of moments, how many moments existed before cutting).
    """
    moments = limit_per_video(merge_moments(hits, max_gap_s, max_span_s, merge, score_margin), per_video)
    page = moments[offset:offset + k]
    for i, m in enumerate(page):
        m.rank = offset + i + 1
    return page, len(moments)
