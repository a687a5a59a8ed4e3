"""Generate a benchmark corpus: h264 30 fps moving test-pattern videos at a given resolution.

    python bench/make_corpus.py OUT_DIR --height 1080 --videos 24 --seconds 60 --jobs 16

Uses the ffmpeg of ``imageio-ffmpeg`` (lavfi ``testsrc2`` + noise) when it is installed, else
PyAV's bundled libx264 on numpy-drawn frames (GPU images without imageio-ffmpeg).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import subprocess
from pathlib import Path


def make(out: Path, width: int, height: int, seconds: int, seed: int, codec: str = "libx264") -> Path:
    import imageio_ffmpeg

    # A moving test pattern plus noise so that the encoder cannot skip most of the picture
    # (decode cost close to real footage, unlike a static colour).
    src = f"testsrc2=size={width}x{height}:rate=30:duration={seconds}"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", src, "-vf", f"noise=alls=12:allf=t+u:all_seed={seed}",
           "-c:v", codec, "-preset", "veryfast" if codec == "libx264" else "ultrafast", "-g", "250",
           "-pix_fmt", "yuv420p", *(["-x265-params", "log-level=none"] if codec == "libx265" else []), str(out)]
    subprocess.run(cmd, check=True)
    return out


def make_pyav(out: Path, width: int, height: int, seconds: int, seed: int, codec: str = "libx264") -> Path:
    """Same kind of content without an ffmpeg binary: moving bars + temporal noise, libx264."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    # A small bank of noise frames, shifted per frame: real per-frame noise at 1080p would cost
    # more to draw than to encode, and the encoder still sees changing high-frequency content.
    bank = rng.integers(-12, 13, (4, height, width, 1), dtype=np.int16)
    xs = np.arange(width, dtype=np.int16)[None, :, None]
    colors = np.array([[255, 255, 255], [255, 255, 0], [0, 255, 255], [0, 255, 0], [255, 0, 255],
                       [255, 0, 0], [0, 0, 255], [16, 16, 16]], dtype=np.int16)
    tmp = out.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as c:
        st = c.add_stream(codec, rate=30, options={"preset": "veryfast", "g": "250"})
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * 30):
            bar = ((xs + 4 * i) * 8 // width) % 8  # (1, W, 1) moving colour bars
            img = colors[bar[0, :, 0]][None, :, :].repeat(height, 0)  # (H, W, 3)
            img = img + np.roll(bank[i % 4], 3 * i, axis=1)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            for pkt in st.encode(frame):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    tmp.replace(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--videos", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--codec", default="libx264", choices=["libx264", "libx265"],
                    help="libx264 (veryfast) or libx265 (ultrafast, HEVC Main)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    width = (a.height * 16 // 9) // 2 * 2
    try:
        import imageio_ffmpeg  # noqa: F401

        maker, pool = make, cf.ThreadPoolExecutor
    except ImportError:
        maker, pool = make_pyav, cf.ProcessPoolExecutor  # numpy drawing needs processes, not threads
    with pool(a.jobs) as ex:
        tag = "" if a.codec == "libx264" else "hevc_"
        futs = [ex.submit(maker, a.out / f"v{tag}{a.height}p_{i:04d}.mp4", width, a.height, a.seconds, i, a.codec)
                for i in range(a.videos)]
        for f in futs:
            f.result()


if __name__ == "__main__":
    main()
