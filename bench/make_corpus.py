"""Generate a benchmark corpus: h264 30 fps ``testsrc2`` videos at a given resolution.

    python bench/make_corpus.py OUT_DIR --height 1080 --videos 24 --seconds 60 --jobs 16
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import subprocess
from pathlib import Path


def make(out: Path, width: int, height: int, seconds: int, seed: int) -> Path:
    import imageio_ffmpeg

    # A moving test pattern plus noise so that the encoder cannot skip most of the picture
    # (decode cost close to real footage, unlike a static colour).
    src = f"testsrc2=size={width}x{height}:rate=30:duration={seconds}"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", src, "-vf", f"noise=alls=12:allf=t+u:all_seed={seed}",
           "-c:v", "libx264", "-preset", "veryfast", "-g", "250", "-pix_fmt", "yuv420p", str(out)]
    subprocess.run(cmd, check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--videos", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--jobs", type=int, default=8)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    width = (a.height * 16 // 9) // 2 * 2
    with cf.ThreadPoolExecutor(a.jobs) as ex:
        list(ex.map(lambda i: make(a.out / f"v{a.height}p_{i:04d}.mp4", width, a.height, a.seconds, i),
                    range(a.videos)))


if __name__ == "__main__":
    main()
