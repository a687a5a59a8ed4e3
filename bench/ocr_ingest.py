"""An ingest with and without ``--ocr``: what reading on-screen text adds to a run (issue 15).

Builds four 1280x720 videos of ``--seconds`` each, the kinds the OCR rate was chosen on
(``bench/ocr_rate.py``, ``bench/ocr_speed.py``):

* ``slides``: a slide deck (Pillow; a new slide every 6 s, title + three bullets);
* ``captions``: burnt-in captions changing every 3 s over a moving test pattern (the picture never
  stands still, so OCR reads at its cap, once a second);
* ``sign``: a still picture whose sign text changes every 10 s;
* ``footage``: moving footage without text (a Mandelbrot zoom).

Then ingests them into fresh libraries, in one process, one after the other:

1. without ``--ocr``;
2. with ``--ocr`` (candidates from the same decode pass, the OCR pool beside decode and embed);
3. ``--ocr`` on the library of run 1 (the OCR-only decode pass: no clip frames, no embedding),

and reports per run the wall time, the loop time (no start-up, no index), clips/s, and for the
OCR runs the candidates, frames read, the OCR workers' frames/s and video hours per hour, the
decode processes' seconds in change checks + RGB conversion, and the rows found. The share of
ingest time ``--ocr`` adds is (run 2 - run 1) / run 1, on the loop and on the wall.

    python bench/ocr_ingest.py --seconds 60                    # 2-core CPU: tiny test model, local executor
    python bench/ocr_ingest.py --seconds 120 --executor ray --model internvideo2-s2-1b --random-weights \\
        --ocr-workers 8                                        # GPU machine

The default model is the tests' (``internvideo2-tiny``, random weights): its embedding costs
nearly nothing, so the OCR share measured with it is an upper bound; with the 1B model on a CPU
(~60 s a 4-s clip on the 2-core box) the same OCR seconds are a few percent of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vidsearch.pipeline.runner import IngestOptions, run_ingest
from vidsearch.schemas.config import IngestCfg

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
FONT_BOLD = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
WORDS = ["budget", "review", "harbour", "lighthouse", "quarterly", "museum", "festival", "platform", "coffee",
         "garden", "delivery", "engine", "kitchen", "summer", "library", "station", "tomato", "winter", "orange",
         "market", "mountain", "river", "schedule"]


def ffmpeg(*args: str | os.PathLike[str], stdin: Any = None) -> subprocess.Popen[bytes] | None:
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    if stdin is not None:
        return subprocess.Popen(cmd, stdin=subprocess.PIPE)
    subprocess.run(cmd, check=True)
    return None


def phrase(rng: np.random.Generator, n: int) -> str:
    return " ".join(str(w) for w in rng.choice(WORDS, n, replace=False)).capitalize()


def slides(out: Path, seconds: float, rng: np.random.Generator, rate: int = 10) -> None:
    from PIL import Image, ImageDraw, ImageFont

    title, body = ImageFont.truetype(str(FONT_BOLD), 56), ImageFont.truetype(str(FONT), 32)
    p = ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "1280x720", "-r", str(rate), "-i", "-", "-c:v",
               "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", out, stdin=True)
    assert p is not None and p.stdin is not None
    for i in range(int(seconds // 6) + 1):
        img = Image.new("RGB", (1280, 720), (245, 245, 240) if i % 2 == 0 else (20, 30, 60))
        ink = (20, 20, 20) if i % 2 == 0 else (240, 240, 240)
        d = ImageDraw.Draw(img)
        d.text((80, 70), phrase(rng, 3), font=title, fill=ink)
        for j in range(3):
            d.text((110, 230 + 80 * j), "- " + phrase(rng, 4), font=body, fill=ink)
        frame = np.asarray(img).tobytes()
        for _ in range(round(min(6.0, seconds - 6 * i) * rate)):
            p.stdin.write(frame)
    p.stdin.close()
    assert p.wait() == 0


def drawtext_video(out: Path, source: str, texts: list[tuple[str, float, float, str]], seconds: float) -> None:
    def esc(t: str) -> str:
        return t.replace(":", "\\:").replace("'", "\\'").replace(",", "\\,")

    vf = ",".join(f"drawtext=fontfile={FONT}:text='{esc(t)}':fontsize=40:fontcolor=white:{pos}:box=1:"
                  f"boxcolor=black@0.6:enable='between(t,{a},{b - 0.001})'" for t, a, b, pos in texts)
    ffmpeg("-f", "lavfi", "-i", f"{source}:rate=25", "-t", str(seconds), "-vf", vf or "null", "-c:v", "libx264",
           "-preset", "veryfast", "-pix_fmt", "yuv420p", out)


def corpus(folder: Path, seconds: float) -> None:
    rng = np.random.default_rng(0)
    slides(folder / "slides.mp4", seconds, rng)
    caps = [(phrase(rng, 5), t, min(seconds, t + 3), "x=(w-text_w)/2:y=h-100") for t in np.arange(0, seconds, 3)]
    drawtext_video(folder / "captions.mp4", "testsrc2=size=1280x720", caps, seconds)
    sign = [(phrase(rng, 2).upper(), t, min(seconds, t + 10), "x=200:y=250") for t in np.arange(0, seconds, 10)]
    drawtext_video(folder / "sign.mp4", "color=c=darkgreen:size=1280x720", sign, seconds)
    drawtext_video(folder / "footage.mp4", "mandelbrot=size=1280x720", [], seconds)


def run(src: Path, lib: Path, args: argparse.Namespace, ocr: bool) -> dict[str, Any]:
    cfg = IngestCfg(decode_workers=args.decode_workers, batch_size=args.batch_size)
    opts = IngestOptions(model=args.model, executor=args.executor, progress=False, random_weights=args.random_weights,
                         device=args.device, ocr=ocr, ocr_workers=args.ocr_workers if ocr else None,
                         ocr_threads=args.ocr_threads if ocr else None)
    t0 = time.perf_counter()
    s = run_ingest([str(src)], lib, cfg, opts)
    wall = time.perf_counter() - t0
    d = s.to_dict()
    keys = ("clips", "embed_calls", "loop_s", "clips_per_s", "screen_videos", "screen_none", "screen_rows",
            "ocr_candidates", "ocr_frames_read", "ocr_work_s", "ocr_frames_per_s", "ocr_video_s", "ocr_video_h_per_h",
            "ocr_decode_s", "ocr_waiting_peak", "ocr_workers", "text_only_videos")
    out = {k: d[k] for k in keys}
    out["wall_s"] = wall
    assert s.exit_code == 0, d["failures"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each of the four videos")
    ap.add_argument("--model", default="internvideo2-tiny")
    ap.add_argument("--random-weights", action="store_true", help="the model's architecture without its weights")
    ap.add_argument("--device", default=None)
    ap.add_argument("--executor", choices=("local", "ray"), default="local")
    ap.add_argument("--decode-workers", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--ocr-workers", type=int, default=None)
    ap.add_argument("--ocr-threads", type=int, default=None)
    ap.add_argument("--work", type=Path, default=None, help="folder for the corpus and libraries (default: a temp one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if not FONT.is_file():
        raise SystemExit(f"needs {FONT} (apt-get install fonts-dejavu-core)")
    work = args.work or Path(tempfile.mkdtemp(prefix="ocr_ingest_"))
    src = work / "videos"
    if not src.is_dir():
        src.mkdir(parents=True)
        t0 = time.perf_counter()
        corpus(src, args.seconds)
        print(f"corpus: 4 x {args.seconds:g} s at 1280x720 in {time.perf_counter() - t0:.1f} s ({src})")
    for name in ("plain", "ocr"):
        shutil.rmtree(work / name, ignore_errors=True)
    results = {"without --ocr": run(src, work / "plain", args, ocr=False),
               "with --ocr": run(src, work / "ocr", args, ocr=True)}
    results["--ocr added later"] = run(src, work / "plain", args, ocr=True)
    a, b = results["without --ocr"], results["with --ocr"]
    summary = {"ocr_share_of_loop": (b["loop_s"] - a["loop_s"]) / a["loop_s"],
               "ocr_share_of_wall": (b["wall_s"] - a["wall_s"]) / a["wall_s"],
               "video_s": 4 * args.seconds, "load_avg": os.getloadavg(), "cpus": os.cpu_count(),
               "model": args.model, "executor": args.executor}
    for name, r in results.items():
        print(f"{name:>18}: wall {r['wall_s']:6.1f} s, loop {r['loop_s']:6.1f} s, {r['clips']} clips "
              f"({r['clips_per_s']:.1f}/s)"
              + (f"; OCR {r['ocr_frames_read']} of {r['ocr_candidates']} candidates read, {r['ocr_frames_per_s']:.2f} "
                 f"frames/s per worker ({r['ocr_workers']}), {r['ocr_video_h_per_h']:.1f} video h/h for the run, "
                 f"decoders {r['ocr_decode_s']:.1f} s, peak waiting {r['ocr_waiting_peak']}, {r['screen_rows']} rows"
                 if r["ocr_workers"] else ""))
    print(f"--ocr adds {100 * summary['ocr_share_of_loop']:.0f}% to the loop, "
          f"{100 * summary['ocr_share_of_wall']:.0f}% to the wall time (load average {summary['load_avg'][0]:.1f})")
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
