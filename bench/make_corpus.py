"""Generate a benchmark corpus: h264 30 fps moving test-pattern videos at a given resolution.

    python bench/make_corpus.py OUT_DIR --height 1080 --videos 24 --seconds 60 --jobs 16
    python bench/make_corpus.py OUT_DIR --height 1080 --videos 8 --seconds 40 --copies 16

Uses the ffmpeg of ``imageio-ffmpeg`` (lavfi ``testsrc2`` + noise) when it is installed, else
PyAV's bundled libx264 on numpy-drawn frames (GPU images without imageio-ffmpeg).

``--copies K`` adds K-1 remuxed copies of each video (stream copy, a different ``comment`` tag):
the same pictures at the same decode cost, but distinct files with distinct content ids, so a
throughput run gets a long corpus for the price of encoding a short one (encoding 1080p costs
more CPU than decoding it). Files already present are kept (a re-run finishes a corpus);
each file is written under a temporary name and renamed, so a killed run leaves no partial video.
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
    tmp = out.with_name(out.name + ".part")  # not *.mp4: never globbed as a video
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", src, "-vf", f"noise=alls=12:allf=t+u:all_seed={seed}",
           "-c:v", codec, "-preset", "veryfast" if codec == "libx264" else "ultrafast", "-g", "250",
           "-pix_fmt", "yuv420p", *(["-x265-params", "log-level=none"] if codec == "libx265" else []),
           "-f", "mp4", str(tmp)]
    subprocess.run(cmd, check=True)
    tmp.replace(out)
    return out


def copy(src: Path, out: Path, n: int) -> Path:
    """A stream copy of ``src`` with a different ``comment`` tag (a distinct file, same pictures)."""
    tmp = out.with_name(out.name + ".part")
    try:
        import imageio_ffmpeg

        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
                        "-i", str(src), "-map", "0", "-c", "copy", "-metadata", f"comment=vidsearch-copy-{n}",
                        "-f", "mp4", str(tmp)], check=True)
    except ImportError:
        import av

        with av.open(str(src)) as i, av.open(str(tmp), "w", format="mp4") as o:
            o.metadata["comment"] = f"vidsearch-copy-{n}"
            s_in = i.streams.video[0]
            s_out = o.add_stream_from_template(s_in)
            for pkt in i.demux(s_in):
                if pkt.dts is None:
                    continue
                pkt.stream = s_out
                o.mux(pkt)
    tmp.replace(out)
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
    tmp = out.with_name(out.name + ".part")
    with av.open(str(tmp), "w", format="mp4") as c:
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
    ap.add_argument("--copies", type=int, default=1, help="files per encoded video (K-1 remuxed copies)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    width = (a.height * 16 // 9) // 2 * 2
    try:
        import imageio_ffmpeg  # noqa: F401

        maker, pool = make, cf.ThreadPoolExecutor
    except ImportError:
        maker, pool = make_pyav, cf.ProcessPoolExecutor  # numpy drawing needs processes, not threads
    tag = "" if a.codec == "libx264" else "hevc_"
    names = [a.out / f"v{tag}{a.height}p_{i:04d}.mp4" for i in range(a.videos)]
    with pool(a.jobs) as ex:
        futs = [ex.submit(maker, p, width, a.height, a.seconds, i, a.codec)
                for i, p in enumerate(names) if not p.exists()]
        for f in futs:
            f.result()
    with cf.ThreadPoolExecutor(a.jobs) as tx:
        futs = [tx.submit(copy, p, p.with_name(f"{p.stem}_c{n:02d}.mp4"), n)
                for p in names for n in range(1, a.copies) if not p.with_name(f"{p.stem}_c{n:02d}.mp4").exists()]
        for f in futs:
            f.result()


if __name__ == "__main__":
    main()
