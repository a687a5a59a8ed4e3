"""Frames of a stored clip, decoded again from its video (for ITM re-ranking and thumbnails)."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from vidsearch.search.sandbox import run_query

_logger = logging.getLogger(__name__)


def clip_source(con: Any, clip_id: int) -> tuple[str, list[float]]:
    """(video file path, sampled frame times in seconds) of a clip, from the catalog."""
    t = run_query(con, "SELECT videos.path_bytes, clips.frame_times_s FROM clips JOIN videos USING (video_id) "
                  "WHERE clips.clip_id = ?", [int(clip_id)])
    if t.num_rows == 0:
        raise ValueError(f"clip {clip_id} is not in the catalog")
    return os.fsdecode(t.column(0)[0].as_py()), list(t.column(1)[0].as_py())


def read_frames_at(path: str, times_s: list[float]) -> np.ndarray:
    """uint8 RGB frames (T, H, W, 3): for each time, the first frame at or after it (PyAV)."""
    import av

    frames = []
    with av.open(path, mode="r") as container:
        stream = container.streams.video[0]
        tb = float(stream.time_base) if stream.time_base else 1e-6
        for t in times_s:
            container.seek(int(max(t, 0) / tb), stream=stream, backward=True)
            got = None
            for frame in container.decode(stream):
                got = frame
                if frame.pts is not None and frame.pts * tb >= t - 1e-3:
                    break
            if got is None:
                raise ValueError(f"{path}: no frame at {t:.3f} s")
            frames.append(got.to_ndarray(format="rgb24"))
    return np.stack(frames)


def clip_frames(con: Any, clip_id: int, num_frames: int) -> np.ndarray:
    """The clip's sampled frames (num_frames, H, W, 3), re-decoded from its video."""
    path, times = clip_source(con, clip_id)
    if len(times) != num_frames:
        idx = np.linspace(0, len(times) - 1, num_frames).round().astype(int)
        times = [times[i] for i in idx]
    return read_frames_at(path, times)
