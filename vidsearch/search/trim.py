"""Export each hit as its own ``.mp4``: stream copy where the hit starts on a keyframe, else re-encode.

A stream copy can only start on a keyframe: cut anywhere else and the first frames cannot be
decoded (or the cut moves to the keyframe before, changing the span). So each hit's start is
compared with the source's keyframes (PyAV packet flags, a demux pass without decoding): within
half a frame of one -> ``copy`` (lossless, fast), else ``re-encode`` (H.264 + AAC, frame-exact).
A copy that the MP4 muxer refuses (a codec MP4 cannot hold, e.g. VP8 or Vorbis) is re-encoded.

File names come from the rank and the ids (``hit-001-<clip_id>.mp4``), never from the video's
name or title; each file is written to a temporary name in the folder and renamed into place.
The source is opened with its sniffed container format forced and only the ``file`` protocol
allowed, like the ingest's probe.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vidsearch.search.export import ExportError, ExportHit, clean_text
from vidsearch.search.timecode import TimecodeError, conform_rate, frames_to_timecode, parse_timecode

_logger = logging.getLogger(__name__)

__all__ = ["TrimmedClip", "keyframe_times", "trim_hits"]

_SAFE_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


@dataclass(frozen=True)
class TrimmedClip:
    """One written clip."""

    rank: int
    path: Path
    mode: Literal["copy", "re-encode"]
    start_s: float          # the span cut from the source (seconds from its first frame)
    end_s: float
    reason: str             # why this mode


@dataclass(frozen=True)
class _Source:
    demuxer: str
    keyframes: list[float]   # seconds from the first frame, ascending
    frame_s: float           # one frame's duration (average)
    offset_s: float          # first video frame's time minus the container's start (ffmpeg's -ss origin)


def _probe(path: str) -> _Source:
    import av

    from vidsearch.pipeline.probe import SNIFF_BYTES, open_path, sniff_container

    raw = os.fsencode(path)
    with open(raw, "rb") as f:
        head = f.read(SNIFF_BYTES)
    demuxer = sniff_container(head)
    if demuxer is None:
        raise ExportError(f"{clean_text(path)}: not a known video container")
    with open_path(raw) as p:
        try:
            container = av.open(p, format=demuxer, options={"protocol_whitelist": "file"})
        except av.error.FFmpegError as e:
            raise ExportError(f"{clean_text(path)}: container does not open ({e})") from None
    try:
        if not container.streams.video:
            raise ExportError(f"{clean_text(path)}: no video stream")
        vs = container.streams.video[0]
        tb = float(vs.time_base) if vs.time_base is not None else 1.0
        pts: list[int] = []
        keys: list[int] = []
        for packet in container.demux(vs):
            if packet.pts is None:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
        if not pts:
            raise ExportError(f"{clean_text(path)}: no video frames")
        t0 = min(pts)  # times are from the first frame, as the ingest counts them
        rate = vs.average_rate or vs.guessed_rate
        frame_s = 1.0 / float(rate) if rate is not None and rate > 0 else (max(pts) - t0) * tb / max(1, len(pts) - 1)
        start = container.start_time / 1_000_000 if container.start_time is not None else t0 * tb
        return _Source(demuxer, sorted((k - t0) * tb for k in keys), frame_s, t0 * tb - start)
    finally:
        container.close()


def keyframe_times(path: str) -> list[float]:
    """Times (s, from the first frame) of the video's keyframes."""
    return _probe(path).keyframes


def _file_name(h: ExportHit) -> str:
    ident = str(h.clip_id) if h.clip_id is not None else (h.video_id or "")
    if not _SAFE_ID.match(ident):
        ident = uuid.uuid5(uuid.NAMESPACE_URL, f"{h.path}:{h.start_s}:{h.end_s}").hex[:16]
    return f"hit-{max(0, int(h.rank)):03d}-{ident}.mp4"


def trim_hits(hits: Sequence[ExportHit], out_dir: str | os.PathLike[str], *, timeout_s: float = 600.0,
              ffmpeg: str | None = None) -> list[TrimmedClip]:
    """Write each hit's span of its source to ``out_dir/hit-<rank>-<id>.mp4``.

    Args:
        hits: the hits (rank order).
        out_dir: the folder; created if missing (its parent must exist).
        timeout_s: limit for one ffmpeg run.
        ffmpeg: the ffmpeg binary (default: the one ``imageio-ffmpeg`` ships).

    Returns:
        One entry per hit, with the mode used.

    Raises:
        ExportError: the folder cannot be made, a source is missing or not a video, ffmpeg fails.
    """
    if ffmpeg is None:
        import imageio_ffmpeg  # type: ignore[import-untyped]

        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ExportError(f"{clean_text(str(out))} is not a folder")
    if not out.parent.is_dir():
        raise ExportError(f"{clean_text(str(out.parent))}: no such folder")
    out.mkdir(exist_ok=True)
    sources: dict[str, _Source] = {}
    done = []
    for h in hits:
        try:
            src = sources.get(h.path) or _probe(h.path)
        except OSError as e:
            raise ExportError(f"{clean_text(h.path)}: {e.strerror or e}") from None
        sources[h.path] = src
        done.append(_trim_one(h, src, out, ffmpeg, timeout_s))
    return done


def _trim_one(h: ExportHit, src: _Source, out: Path, ffmpeg: str, timeout_s: float) -> TrimmedClip:
    from vidsearch.library import atomic_replace

    final = out / _file_name(h)
    tmp = out / f".{final.stem}.{uuid.uuid4().hex}.tmp.mp4"
    i = bisect.bisect_left(src.keyframes, h.start_s - src.frame_s / 2)
    key = src.keyframes[i] if i < len(src.keyframes) and src.keyframes[i] <= h.start_s + src.frame_s / 2 else None
    if key is not None:
        mode: Literal["copy", "re-encode"] = "copy"
        start, reason = key, f"starts on a keyframe at {key:.3f} s"
    else:
        mode = "re-encode"
        before = src.keyframes[max(0, i - 1)] if src.keyframes else 0.0
        start, reason = h.start_s, f"no keyframe at {h.start_s:.3f} s (previous one at {before:.3f} s)"
    duration = h.end_s - start
    try:
        try:
            _run(_command(ffmpeg, src, h.path, start, duration, mode, tmp, _timecode_at(h, start)), timeout_s)
        except ExportError as e:
            if mode != "copy":
                raise
            # e.g. a codec the MP4 muxer does not take: re-encode instead.
            mode, start, duration = "re-encode", h.start_s, h.end_s - h.start_s
            reason = f"stream copy failed ({e}); re-encoded"
            _run(_command(ffmpeg, src, h.path, start, duration, mode, tmp, _timecode_at(h, start)), timeout_s)
        atomic_replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return TrimmedClip(rank=h.rank, path=final, mode=mode, start_s=start, end_s=start + duration, reason=reason)


def _timecode_at(h: ExportHit, start: float) -> str | None:
    """The source's timecode label at ``start`` (the clip keeps it), None without one."""
    if not h.start_timecode:
        return None
    try:
        rate, _ = conform_rate(h.fps, variable=h.variable_rate)
        tc0, drop = parse_timecode(h.start_timecode, rate)
        return frames_to_timecode(tc0 + round(start * rate), rate, drop)
    except TimecodeError:
        return None


def _command(ffmpeg: str, src: _Source, path: str, start: float, duration: float,
             mode: Literal["copy", "re-encode"], tmp: Path, timecode: str | None) -> list[str]:
    # -ss counts from the container's start; hit times count from the first video frame. A copy
    # seeks a quarter frame past its keyframe: ffmpeg starts at the keyframe at or before -ss, and
    # rounding must not make that the one before.
    seek = max(0.0, start + src.offset_s + (src.frame_s / 4 if mode == "copy" else 0.0))
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-protocol_whitelist", "file", "-f", src.demuxer, "-ss", f"{seek:.6f}",
           "-i", f"file:{os.path.abspath(path)}", "-t", f"{duration:.6f}",
           "-map", "0:v:0", "-map", "0:a:0?", "-sn", "-dn", "-map_metadata", "-1"]
    if timecode:
        cmd += ["-timecode", timecode]
    if mode == "copy":
        cmd += ["-c", "copy", "-avoid_negative_ts", "make_zero"]
    else:
        cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
                "-c:a", "aac", "-b:a", "192k"]
    return [*cmd, "-movflags", "+faststart", "-f", "mp4", str(tmp)]


def _run(cmd: list[str], timeout_s: float) -> None:
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ExportError(f"ffmpeg took over {timeout_s:g} s") from None
    except OSError as e:
        raise ExportError(f"ffmpeg did not start: {e}") from None
    if p.returncode != 0:
        lines = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ExportError(clean_text(lines[-1] if lines else f"ffmpeg exit code {p.returncode}"))
