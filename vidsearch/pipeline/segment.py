"""Segment stage: a probed video -> clips (frame spans) and the frames sampled in each clip.

Two modes (``IngestCfg.segment``):

* ``fixed``: windows ``[k*stride, k*stride + clip_seconds)`` for every ``k*stride < duration``
  that contains at least one frame. A frame belongs to a window when its pts is inside it, so
  clip times come from pts, exact for variable frame rate (B15). A video shorter than one window
  gives one clip ``[0, duration)`` (B12). The last window, cut short by the end of the video,
  joins the window before it when it is shorter than ``min_shot_seconds``, as the last piece of
  a shot does (:func:`join_short_tail`): such a tail was a clip of a fraction of a second, one
  frame repeated, that came up as a hit of its own ("00:00:26-00:00:26.1") and had no frame for
  a thumbnail (issue 11). The window before then ends at the video's end (it grows
  by the short tail); every frame stays in a clip. (Libraries ingested
  before keep their tail clips: a rerun skips done videos, and this changes only the ids of
  tail clips of videos ingested from now on.)
* ``shots``: cut where ffmpeg's scene score exceeds ``scene_threshold`` (:func:`detect_cuts`); a
  shot shorter than ``min_shot_seconds`` joins the previous shot (the first joins the next); a shot
  longer than ``clip_seconds`` is split into ``clip_seconds`` pieces from its start, and a last
  piece shorter than ``min_shot_seconds`` joins the piece before it. No cut = one shot. This is
  the "dynamic key-frame selection" of the InternVideo family: clips follow the picture's changes.

Inside a clip ``[start, end)``, the model's frames are sampled by
:func:`vidsearch.models.preprocess.sample_frame_indices` (uniform: ``start + i*(n//T)``).
"""

from __future__ import annotations

import bisect
import logging
import re
import subprocess
from collections.abc import Sequence

from vidsearch.pipeline.types import ClipSpan, VideoError
from vidsearch.schemas.config import IngestCfg

_logger = logging.getLogger(__name__)

# Frame times are floats computed from integer pts; a window edge within this of a frame's pts
# counts as that frame's time (4.0 vs 3.9999999999).
_EPS = 1e-6


def fixed_spans(pts_s: Sequence[float], duration_s: float, clip_seconds: float,
                stride: float) -> list[tuple[int, int]]:
    """Frame spans ``[start, end)`` of the fixed windows (see the module docstring)."""
    if clip_seconds <= 0 or stride <= 0:
        raise ValueError("clip_seconds and stride must be positive")
    spans: list[tuple[int, int]] = []
    k = 0
    while k * stride < duration_s - _EPS or k == 0:
        t0 = k * stride
        t1 = t0 + clip_seconds
        a = bisect.bisect_left(pts_s, t0 - _EPS)
        b = bisect.bisect_left(pts_s, t1 - _EPS)
        if b > a:
            spans.append((a, b))
        k += 1
    return spans


def join_short_tail(spans: list[tuple[int, int]], pts_s: Sequence[float], duration_s: float,
                    min_seconds: float) -> list[tuple[int, int]]:
    """``spans`` with a short last span joined to the one before it (module docstring).

    A last span is short when it lasts less than ``min_seconds`` (from its first frame to its
    end). The span before it is extended to the end of the last one (with overlapping windows it
    may already reach it; the tail then adds nothing and is dropped). A video of one span keeps
    it, however short (B11, B12).
    """
    if len(spans) < 2:
        return spans
    a, b = spans[-1]
    end = pts_s[b] if b < len(pts_s) else duration_s
    if end - pts_s[a] >= min_seconds - _EPS:
        return spans
    pa, pb = spans[-2]
    return [*spans[:-2], (pa, max(pb, b))]


def shot_spans(pts_s: Sequence[float], duration_s: float, cut_frames: Sequence[int],
               clip_seconds: float, min_shot_seconds: float) -> list[tuple[int, int, int]]:
    """Frame spans ``[start, end)`` and shot number of the shot clips (module docstring)."""
    n = len(pts_s)
    if n == 0:
        return []

    def t(i: int) -> float:
        return pts_s[i] if i < n else duration_s

    bounds = sorted({c for c in cut_frames if 0 < c < n})
    shots = [[a, b] for a, b in zip([0, *bounds], [*bounds, n], strict=True)]
    merged: list[list[int]] = []
    for s in shots:
        if merged and t(s[1]) - t(s[0]) < min_shot_seconds - _EPS:
            merged[-1][1] = s[1]          # a tiny shot joins the previous one
        else:
            merged.append(s)
    if len(merged) > 1 and t(merged[0][1]) - t(merged[0][0]) < min_shot_seconds - _EPS:
        merged[1][0] = merged[0][0]       # a tiny first shot joins the next one
        merged.pop(0)
    out: list[tuple[int, int, int]] = []
    for shot_index, (a, b) in enumerate(merged):
        pieces: list[list[int]] = []
        start = a
        while start < b:
            end = max(start + 1, min(b, bisect.bisect_left(pts_s, t(start) + clip_seconds - _EPS)))
            pieces.append([start, end])
            start = end
        if len(pieces) > 1 and t(pieces[-1][1]) - t(pieces[-1][0]) < min_shot_seconds - _EPS:
            pieces[-2][1] = pieces[-1][1]
            pieces.pop()
        out.extend((p[0], p[1], shot_index) for p in pieces)
    return out


_PTS_TIME = re.compile(rb"\bn:\s*(\d+)\b.*?\bpts_time:\s*(-?[0-9.]+)")


def detect_cuts(path: str, demuxer: str, threshold: float, timeout_s: float,
                pass_fds: Sequence[int] = ()) -> list[float]:
    """Times (s, from the first frame) where ffmpeg's scene score exceeds ``threshold``.

    Runs the ffmpeg binary of imageio-ffmpeg with ``select='eq(n,0)+gt(scene,T)',showinfo`` on a
    160-px-wide copy of the picture (the score is a mean absolute difference of successive frames,
    so a small copy finds the same cuts far faster). The first frame is selected too so that its
    time anchors the others (ffmpeg may shift timestamps to start at 0).

    Raises:
        VideoError: ``DecodeTimeout`` past ``timeout_s``; ``DecodeError`` when ffmpeg fails.
    """
    import imageio_ffmpeg  # type: ignore[import-untyped]

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "info",
           "-protocol_whitelist", "file", "-f", demuxer, "-i", f"file:{path}", "-an", "-sn", "-dn",
           "-vf", f"scale=160:-2,select='eq(n\\,0)+gt(scene\\,{threshold})',showinfo",
           "-fps_mode", "passthrough", "-f", "null", "-"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, pass_fds=tuple(pass_fds))
    except subprocess.TimeoutExpired:
        raise VideoError("DecodeTimeout", "segment", f"scene detection took over {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        last = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["?"]
        raise VideoError("DecodeError", "segment", f"scene detection failed: {last[0][:200]}")
    times = [float(m.group(2)) for line in proc.stderr.splitlines()
             if b"Parsed_showinfo" in line and (m := _PTS_TIME.search(line))]
    if not times:
        return []
    t0 = times[0]
    return [x - t0 for x in times[1:]]


def plan_clips(pts_s: Sequence[float], duration_s: float, cfg: IngestCfg, num_frames: int, sampling: str,
               cut_times_s: Sequence[float] = ()) -> tuple[ClipSpan, ...]:
    """Clips of one video with their sampled frame indices.

    Args:
        pts_s: every frame's presentation time, in presentation order, from 0 (the probe's).
        duration_s: the video's duration (the probe's).
        cfg: segmentation settings.
        num_frames: frames per clip of the model.
        sampling: the model's sampling mode ("uniform" or "middle").
        cut_times_s: scene cuts (``segment="shots"`` only).

    Returns:
        The clips, in order. Failure branch: no frame at all -> ``VideoError(NoClips)``.
    """
    from vidsearch.models.preprocess import sample_frame_indices

    pts = pts_s
    spans: list[tuple[int, int, int | None]]
    if cfg.segment == "shots":
        cut_frames = [bisect.bisect_left(pts, c - 1e-3) for c in cut_times_s]
        spans = list(shot_spans(pts, duration_s, cut_frames, cfg.clip_seconds, cfg.min_shot_seconds))
    else:
        windows = join_short_tail(fixed_spans(pts, duration_s, cfg.clip_seconds, cfg.stride), pts, duration_s,
                                  cfg.min_shot_seconds)
        spans = [(a, b, None) for a, b in windows]
    if not spans:
        raise VideoError("NoClips", "segment", "no clip could be cut (no frames)")
    clips = []
    n = len(pts)
    for i, (a, b, shot) in enumerate(spans):
        sample = sample_frame_indices(a, b, num_frames, sampling)  # type: ignore[arg-type]
        clips.append(ClipSpan(
            clip_index=i, start_frame=a, end_frame=b, start_s=pts[a],
            end_s=min(pts[b] if b < n else duration_s, duration_s),
            frame_indices=tuple(sample.indices), frame_times_s=tuple(pts[j] for j in sample.indices),
            padded=sample.padded, segment=cfg.segment, shot_index=shot,
        ))
    return tuple(clips)
