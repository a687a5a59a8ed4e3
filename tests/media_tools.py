"""ffmpeg helpers for tests: generate small videos with the imageio-ffmpeg binary and lavfi.

Import from here (``from media_tools import lavfi_video``), never from ``conftest``: the test tree
has several conftest modules and the name is ambiguous when suites are collected together.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

TEST_DATA = Path(__file__).resolve().parent / "data"
# The official InternVideo2 demo video, shipped with the tests (tests/data/README.md: source, licence).
DEMO_VIDEO = TEST_DATA / "internvideo2_demo_example1.mp4"
TEST_MODEL = "internvideo2-tiny"
# Scene cuts of the "cuts" video: three different pictures of 2 s, 3 s and 2 s at 25 fps.
CUTS_S = (2.0, 5.0)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args: str | os.PathLike[str]) -> None:
    """Run ffmpeg quietly; raises CalledProcessError with its stderr on failure."""
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    subprocess.run(cmd, check=True, capture_output=True)


def lavfi_video(out: Path, *, size: str = "96x64", rate: int = 30, seconds: float = 2.0,
                codec: str = "libx264", src: str = "testsrc2", extra: tuple[str, ...] = ()) -> Path:
    """A ``lavfi`` test-pattern video (yuv420p)."""
    ffmpeg("-f", "lavfi", "-i", f"{src}=size={size}:rate={rate}:duration={seconds}",
           "-c:v", codec, "-pix_fmt", "yuv420p", *extra, out)
    return out
