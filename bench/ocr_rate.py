"""OCR candidate rate vs time accuracy and cost: which ``interval_s`` / ``min_ocr_interval_s`` (issue 15).

Makes 720p videos with texts shown at known, irregular times (ffmpeg drawtext, DejaVu font): a
slide-like one on a still background and one whose background never stops moving (so every
candidate is a change and the read-rate cap decides). For each (interval, cap) pair it runs the
change check, rapidocr and merging (:func:`vidsearch.pipeline.ocr.read_video_text`) and reports
reads per video-second, texts found, and the worst and mean error of each found text's start and
end against the truth.

    python bench/ocr_rate.py --pairs 0.25:0.5,0.5:1,1:1,0.5:2
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import numpy as np

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
WORDS = ["station", "museum", "coffee", "garden", "harbour", "library", "market", "theatre", "bakery", "pharmacy",
         "airport", "stadium", "gallery", "kitchen", "tunnel", "bridge", "castle", "temple", "forest", "island"]


def make(out: Path, background: str, seconds: float, rng: random.Random) -> list[tuple[str, float, float]]:
    """A video with a text every ~2-4 s at irregular times (two may overlap); returns the truth."""
    import subprocess

    import imageio_ffmpeg

    truth, t = [], 0.3
    while t < seconds - 2:
        dur = rng.uniform(1.8, 4.5)
        text = f"{rng.choice(WORDS).upper()} {rng.randint(2, 98)}"
        truth.append((text, round(t, 2), round(min(seconds, t + dur), 2)))
        t += rng.uniform(1.2, 3.5)
    filters = []
    for i, (text, a, b) in enumerate(truth):
        y = 80 + (i % 5) * 120
        filters.append(f"drawtext=fontfile={FONT}:text='{text}':fontsize={rng.choice([28, 40, 56])}:"
                       f"fontcolor=white:borderw=2:bordercolor=black:x={60 + (i % 3) * 300}:y={y}:"
                       f"enable='between(t,{a},{b - 0.001:.3f})'")
    src = f"{background}{':' if '=' in background else '='}size=1280x720:rate=25"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", src,
           "-t", str(seconds), "-vf", ",".join(filters), "-c:v", "libx264", "-preset", "veryfast",
           "-pix_fmt", "yuv420p", str(out)]
    subprocess.run(cmd, check=True)
    return truth


def samples(path: Path, interval_s: float, long_side: int):  # -> Iterator[tuple[float, np.ndarray]]
    import av
    from av.video.reformatter import VideoReformatter

    from vidsearch.pipeline.ocr import ocr_frame_size, ocr_sample_indices

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = sorted(p.pts for p in c.demux(s) if p.pts is not None and p.size)
        tb = float(s.time_base)
    times = [(p - pts[0]) * tb for p in pts]
    wanted = set(ocr_sample_indices(times, interval_s))
    rgb = VideoReformatter()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        w, h = ocr_frame_size(s.codec_context.width, s.codec_context.height, long_side)
        for i, frame in enumerate(c.decode(s)):
            if i in wanted:
                yield times[i], rgb.reformat(frame, width=w, height=h, format="rgb24").to_ndarray()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="0.25:0.5,0.5:1,1:1,0.5:2", help="interval_s:min_ocr_interval_s list")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not FONT.is_file():
        raise SystemExit(f"{FONT} missing: apt-get install fonts-dejavu-core")
    from vidsearch.pipeline.ocr import ScreenReader, read_video_text, similarity
    from vidsearch.schemas.ocr_config import OcrCfg

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        videos = {name: (Path(tmp) / f"{name}.mp4", bg) for name, bg in
                  (("still", "color=c=0x203040"), ("moving", "testsrc2"))}
        truths = {name: make(p, bg, args.seconds, rng) for name, (p, bg) in videos.items()}
        for pair in args.pairs.split(","):
            interval, cap = (float(x) for x in pair.split(":"))
            cfg = OcrCfg(interval_s=interval, min_ocr_interval_s=cap, threads=args.threads)
            reader = ScreenReader(cfg)
            for name, (path, _) in videos.items():
                res = read_video_text(reader, name, samples(path, interval, cfg.long_side), duration_s=args.seconds)
                errs_s, errs_e, found = [], [], 0
                for text, a, b in truths[name]:
                    rows = [r for r in res.rows if similarity(r.text, text) >= 0.8]
                    if not rows:
                        continue
                    found += 1
                    r = min(rows, key=lambda r: abs(r.start_s - a))
                    errs_s.append(r.start_s - a)
                    errs_e.append(r.end_s - b)
                print(json.dumps({
                    "video": name, "interval_s": interval, "min_ocr_interval_s": cap,
                    "reads_per_video_s": round(res.read / args.seconds, 3), "texts": len(truths[name]),
                    "found": found,
                    "start_err_s": {"max": round(float(np.max(np.abs(errs_s))), 2) if errs_s else None,
                                    "mean": round(float(np.mean(errs_s)), 2) if errs_s else None},
                    "end_err_s": {"max": round(float(np.max(np.abs(errs_e))), 2) if errs_e else None,
                                  "mean": round(float(np.mean(errs_e)), 2) if errs_e else None},
                    "within_1s": sum(abs(x) <= 1 and abs(y) <= 1 for x, y in zip(errs_s, errs_e, strict=True)),
                }), flush=True)


if __name__ == "__main__":
    main()
