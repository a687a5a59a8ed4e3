"""Helpers for screen-text tests: videos with text drawn at known times, and their OCR candidate frames.

Text is drawn two ways: ffmpeg's ``drawtext`` filter with a Debian font (``fonts-dejavu-core``;
tests that need it skip with a reason when it is missing) and frames drawn with Pillow (its own
bundled font when DejaVu is missing) piped to ffmpeg. Frames for OCR are decoded here with PyAV
the way the decode reader hands them out: one candidate per ``OcrCfg.interval_s``
(:func:`vidsearch.pipeline.ocr.ocr_sample_indices`) at :func:`~vidsearch.pipeline.ocr.ocr_frame_size`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from media_tools import ffmpeg, ffmpeg_exe

from vidsearch.pipeline.ocr import ocr_frame_size, ocr_sample_indices

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
FONT = DEJAVU / "DejaVuSans.ttf"
FONT_BOLD = DEJAVU / "DejaVuSans-Bold.ttf"
FONT_SERIF = DEJAVU / "DejaVuSerif.ttf"


def need_font() -> Path:
    """The DejaVu Sans font file, or skip the test."""
    if not FONT.is_file():
        pytest.skip(f"{FONT} is missing (apt-get install fonts-dejavu-core)")
    return FONT


@dataclass(frozen=True)
class Shown:
    """A text shown from ``start_s`` to ``end_s`` in a test video."""

    text: str
    start_s: float
    end_s: float


def _escape(text: str) -> str:
    # drawtext's text= value: escape the filter-graph specials (':' and ',' and quotes)
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("'", "\\'").replace(",", "\\,")


def drawtext(text: str, start_s: float, end_s: float, *, size: int, colour: str, x: str, y: str,
             font: Path = FONT, extra: str = "") -> str:
    """One ``drawtext`` filter shown in [start_s, end_s)."""
    f = (f"drawtext=fontfile={font}:text='{_escape(text)}':fontsize={size}:fontcolor={colour}:x={x}:y={y}"
         f":enable='between(t,{start_s},{end_s - 0.001})'")
    return f + (":" + extra if extra else "")


def drawtext_video(out: Path, source: str, filters: list[str], *, seconds: float, rate: int = 10) -> Path:
    """``source`` (a lavfi graph, e.g. ``color=c=navy:size=960x540``) with ``filters`` on it, H.264."""
    ffmpeg("-f", "lavfi", "-i", f"{source}:rate={rate}:duration={seconds}", "-vf", ",".join(filters),
           "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", out)
    return out


def pillow_font(size: int, path: Path = FONT):  # -> ImageFont.FreeTypeFont
    from PIL import ImageFont

    if path.is_file():
        return ImageFont.truetype(str(path), size=size)
    return ImageFont.load_default(size=size)  # Pillow's bundled font (FreeType builds)


def pillow_video(out: Path, frames: Iterator[np.ndarray], *, size: tuple[int, int], rate: int) -> Path:
    """Encode RGB frames (H, W, 3) uint8 of ``size`` (w, h) at ``rate`` fps with H.264."""
    w, h = size
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo",
           "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(rate), "-i", "-", "-c:v", "libx264", "-preset",
           "veryfast", "-pix_fmt", "yuv420p", str(out)]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        assert p.stdin is not None
        for f in frames:
            p.stdin.write(np.ascontiguousarray(f, dtype=np.uint8).tobytes())
        p.stdin.close()
        err = p.stderr.read() if p.stderr else b""
        if p.wait() != 0:
            raise RuntimeError(f"ffmpeg failed: {err.decode(errors='replace')}")
    return out


def slide_frames(slides: list[tuple[str, list[str]]], *, seconds_each: float, rate: int,
                 size: tuple[int, int] = (1280, 720)) -> Iterator[np.ndarray]:
    """A slide deck: each (title, bullets) slide shown for ``seconds_each`` (Pillow-drawn)."""
    from PIL import Image, ImageDraw

    w, h = size
    title_font, body_font = pillow_font(56, FONT_BOLD), pillow_font(30, FONT_SERIF)
    for i, (title, bullets) in enumerate(slides):
        img = Image.new("RGB", size, (245, 245, 240) if i % 2 == 0 else (20, 30, 60))
        ink = (20, 20, 20) if i % 2 == 0 else (240, 240, 240)
        d = ImageDraw.Draw(img)
        d.rectangle((0, 0, w, 8), fill=(200, 60, 40))
        d.text((80, 70), title, font=title_font, fill=ink)
        for j, b in enumerate(bullets):
            d.text((110, 230 + 70 * j), "- " + b, font=body_font, fill=ink)
        frame = np.asarray(img)
        for _ in range(round(seconds_each * rate)):
            yield frame


def frame_times(path: Path) -> list[float]:
    """Presentation times (s, 0 = first frame) of every video frame, from the packets (no decode)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = sorted(p.pts for p in c.demux(s) if p.pts is not None and p.size)
        tb = float(s.time_base)
    return [(p - pts[0]) * tb for p in pts]


def ocr_samples(path: Path, interval_s: float, long_side: int) -> Iterator[tuple[float, np.ndarray]]:
    """The OCR candidate frames of ``path`` as the decode reader hands them out: (time_s, RGB frame)."""
    for t, _, rgb in ocr_candidates(path, interval_s, long_side):
        yield t, rgb


def ocr_candidates(path: Path, interval_s: float, long_side: int) -> Iterator[tuple[float, np.ndarray, np.ndarray]]:
    """(time_s, half-size grey frame made by swscale's area filter, RGB frame) per OCR candidate."""
    import av
    from av.video.reformatter import VideoReformatter

    times = frame_times(path)
    wanted = set(ocr_sample_indices(times, interval_s))
    to_grey, to_rgb = VideoReformatter(), VideoReformatter()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        w, h = ocr_frame_size(s.codec_context.width, s.codec_context.height, long_side)
        for i, frame in enumerate(c.decode(s)):
            if i in wanted:
                grey = to_grey.reformat(frame, width=w // 2, height=h // 2, format="gray",
                                        interpolation="AREA").to_ndarray()
                yield times[i], grey, to_rgb.reformat(frame, width=w, height=h, format="rgb24").to_ndarray()
