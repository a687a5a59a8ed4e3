"""Screen-text (OCR) speed: frames/s, video-hours per hour, and the share of ingest time it adds.

Builds three 1280x720 H.264 videos of ``--seconds`` each, the kinds of content that bound OCR's
cost at the default rate (``OcrCfg``: a candidate every 0.5 s, a read only where the picture
changed, at most one read per second):

* ``slides``: a slide deck, a new slide every 6 s (Pillow) -> few reads;
* ``captions``: a moving fractal with burnt-in captions changing every 3 s -> the picture always
  changes, reads at the cap (one per second);
* ``sign``: a still scene with a sign and a clock that ticks every second (a small change) ->
  one read per second too, through the change check, not the cap.

Per video it decodes once as the decode reader would with OCR on and reports, per second of
video on one core: the decode itself, what OCR adds to that pass (each candidate converted by
swscale to a half-size grey image, the change check, and an RGB frame at the OCR size for the
candidates that pass it) and that addition as a share of the decode; then the reads per
video-second and OCR seconds per read. Then it measures the OCR throughput of the whole machine: ``--workers`` processes
each with a ``ScreenReader`` of ``--threads`` onnxruntime threads, reading the same frames
(comma lists are tried in turn, e.g. ``--workers 1,2 --threads 2,1`` on 2 cores,
``--workers 16,8,4 --threads 1,2,4`` on 16). From those:

* ``frames_per_s``: OCR reads per second of the machine (best worker/thread split);
* ``video_hours_per_hour`` per content kind = frames_per_s / reads per video-second;
* with ``--ingest-clips-per-s R --clip-seconds C`` (the rate ingest reaches on this machine
  without OCR, e.g. from ``bench/ingest_throughput.py`` or ``bench/embed_throughput.py``), the
  share of ingest time OCR adds when it shares the machine's CPUs with ingest:
  ``ocr_s / (ocr_s + ingest_s)`` per video-hour.

    python bench/ocr_speed.py --seconds 60 --workers 1,2 --threads 2,1                 # 2-core box
    python bench/ocr_speed.py --seconds 60 --workers 16,8,4 --threads 1,2,4 \\
        --ingest-clips-per-s 140 --clip-seconds 4                                      # 16-core GPU box

Needs Pillow and a TrueType font (DejaVu from fonts-dejavu-core, else Pillow's bundled font) and
ffmpeg (imageio-ffmpeg's binary). Onnxruntime runs on the CPU (the device kit has no
onnxruntime-gpu; ``--device cuda`` uses its CUDA provider where it is installed).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

W, H, RATE = 1280, 720, 25
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


def _font(size: int, bold: bool = False) -> Any:
    from PIL import ImageFont

    p = FONT_DIR / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    return ImageFont.truetype(str(p), size) if p.is_file() else ImageFont.load_default(size=size)


def _encode(out: Path, frames: Iterator[np.ndarray]) -> Path:
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt",
           "rgb24", "-s", f"{W}x{H}", "-r", str(RATE), "-i", "-", "-c:v", "libx264", "-preset", "veryfast",
           "-pix_fmt", "yuv420p", str(out)]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE) as p:
        assert p.stdin is not None
        for f in frames:
            p.stdin.write(f.tobytes())
        p.stdin.close()
        if p.wait():
            raise RuntimeError(f"ffmpeg failed making {out}")
    return out


LINES = ["Quarterly revenue by region", "Project timeline and milestones", "Hiring plan for next year",
         "Customer satisfaction survey", "Open questions and next steps", "Welcome to the annual meeting",
         "Fresh bread baked every morning", "Platform 4 trains to the airport", "Caution wet floor"]


def slides(seconds: int) -> Iterator[np.ndarray]:
    from PIL import Image, ImageDraw

    for i in range(0, seconds, 6):
        img = Image.new("RGB", (W, H), (245, 245, 240))
        d = ImageDraw.Draw(img)
        d.text((80, 70), LINES[i // 6 % len(LINES)], font=_font(52, True), fill=(20, 20, 20))
        for j in range(4):
            d.text((110, 230 + 70 * j), f"- {LINES[(i // 6 + j + 1) % len(LINES)]} ({i + j})", font=_font(30),
                   fill=(40, 40, 40))
        f = np.asarray(img)
        for _ in range(6 * RATE):
            yield f


def captions(seconds: int) -> Iterator[np.ndarray]:
    from PIL import Image, ImageDraw

    font = _font(40, True)
    for k in range(seconds * RATE):
        t = k / RATE
        # a moving colour field: every candidate differs
        x = np.linspace(0, 6, W)[None, :] + t                      # (1, W)
        y = np.linspace(0, 4, H)[:, None] - 0.5 * t                # (H, 1)
        bg = np.stack([np.sin(x + y), np.sin(1.3 * x - y + 1), np.sin(0.7 * y + 2 + 0 * x)], axis=-1) * 0.5 + 0.5
        img = Image.fromarray((bg * 200).astype(np.uint8))
        d = ImageDraw.Draw(img)
        d.rectangle((0, 600, W, 680), fill=(0, 0, 0))
        d.text((60, 615), LINES[int(t // 3) % len(LINES)], font=font, fill=(255, 255, 255))
        yield np.asarray(img)


def sign(seconds: int) -> Iterator[np.ndarray]:
    from PIL import Image, ImageDraw

    base = Image.new("RGB", (W, H), (90, 120, 80))
    d = ImageDraw.Draw(base)
    d.rectangle((300, 200, 980, 420), fill=(20, 60, 140))
    d.text((340, 260), "CENTRAL STATION", font=_font(72, True), fill=(255, 255, 255))
    for s in range(seconds):
        img = base.copy()
        ImageDraw.Draw(img).text((1050, 40), f"10:{s // 60:02d}:{s % 60:02d}", font=_font(36), fill=(255, 255, 0))
        f = np.asarray(img)
        for _ in range(RATE):
            yield f


def decode_pass(path: Path, cfg: Any) -> dict[str, Any]:
    """Decode ``path`` once as the decode reader would with OCR on: every frame decoded; each
    candidate converted by swscale to a half-size grey image for the change check; only the
    candidates the check passes converted to RGB at the OCR size. Returns the read frames and the
    seconds spent in each part."""
    import av

    from vidsearch.pipeline.ocr import ChangeGate, ocr_frame_size, ocr_sample_indices

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = sorted(p.pts for p in c.demux(s) if p.pts is not None and p.size)
        tb = float(s.time_base)  # read while open: a closed container's stream reads freed memory
    times = [(p - pts[0]) * tb for p in pts]
    wanted = set(ocr_sample_indices(times, cfg.interval_s))
    from av.video.reformatter import VideoReformatter

    gate = ChangeGate(cfg)
    # One reformatter per conversion kind, kept: frame.to_ndarray(width=...) builds a new
    # swscale context per call (measured 10 ms a frame against 0.75 ms with a kept one).
    to_grey, to_rgb = VideoReformatter(), VideoReformatter()
    out: dict[str, Any] = {"reads": [], "candidates": 0, "grey_s": 0.0, "gate_s": 0.0, "rgb_s": 0.0}
    t0 = time.perf_counter()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        w, h = ocr_frame_size(s.codec_context.width, s.codec_context.height, cfg.long_side)
        for i, frame in enumerate(c.decode(s)):
            if i not in wanted:
                continue
            out["candidates"] += 1
            t = time.perf_counter()
            grey = to_grey.reformat(frame, width=w // 2, height=h // 2, format="gray",
                                    interpolation="AREA").to_ndarray()
            t1 = time.perf_counter()
            decision = gate.decide(times[i], grey)
            t2 = time.perf_counter()
            out["grey_s"] += t1 - t
            out["gate_s"] += t2 - t1
            if decision == "ocr":
                out["reads"].append(to_rgb.reformat(frame, width=w, height=h, format="rgb24").to_ndarray())
                out["rgb_s"] += time.perf_counter() - t2
    out["decode_s"] = time.perf_counter() - t0 - out["grey_s"] - out["gate_s"] - out["rgb_s"]
    return out


_READER: Any = None


def _init(cfg_dict: dict[str, Any]) -> None:
    global _READER
    from vidsearch.pipeline.ocr import ScreenReader
    from vidsearch.schemas.ocr_config import OcrCfg

    _READER = ScreenReader(OcrCfg(**cfg_dict))
    _READER.setup()


def _read(frame: np.ndarray) -> int:
    return len(_READER.read(frame))


def throughput(frames: list[np.ndarray], workers: int, threads: int, cfg_dict: dict[str, Any]) -> float:
    cfg = {**cfg_dict, "threads": threads}
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(cfg,)) as ex:
        list(ex.map(_read, frames[:workers]))            # warm-up: every worker loads its models
        t = time.perf_counter()
        list(ex.map(_read, frames, chunksize=1))
        return len(frames) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=60, help="length of each test video")
    ap.add_argument("--workers", default="1,2", help="comma list: OCR processes")
    ap.add_argument("--threads", default="2,1", help="comma list (paired with --workers): threads per process")
    ap.add_argument("--frames", type=int, default=24, help="frames read per throughput measurement")
    ap.add_argument("--repeat", type=int, default=2, help="repeats of each worker/thread split (best kept)")
    ap.add_argument("--long-side", type=int, default=None, help="OCR frame long side (default: OcrCfg)")
    ap.add_argument("--det-side", type=int, default=None, help="detector long side (default: OcrCfg)")
    ap.add_argument("--ingest-clips-per-s", type=float, default=None, help="ingest rate without OCR, this machine")
    ap.add_argument("--clip-seconds", type=float, default=4.0, help="seconds of video per clip")
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                    help="onnxruntime device (cuda needs onnxruntime-gpu)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    from vidsearch.pipeline.ocr import ScreenReader
    from vidsearch.schemas.ocr_config import OcrCfg

    base = OcrCfg()
    cfg_dict = {**base.to_dict(), "device": args.device}
    if args.long_side:
        cfg_dict["long_side"] = args.long_side
    if args.det_side:
        cfg_dict["det_side"] = args.det_side
    cfg = OcrCfg(**cfg_dict)
    report: dict[str, Any] = {"cpus": os.cpu_count(), "cfg": cfg.to_dict(), "videos": {}}
    reader = ScreenReader(OcrCfg(**{**cfg_dict, "threads": 1}))
    reader.setup()
    report["device"] = reader.device
    read_frames: list[np.ndarray] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, gen in (("slides", slides), ("captions", captions), ("sign", sign)):
            path = _encode(Path(tmp) / f"{name}.mp4", gen(args.seconds))
            dp = decode_pass(path, cfg)
            t0 = time.perf_counter()
            for f in dp["reads"]:
                reader.read(f)
            ocr_s = time.perf_counter() - t0
            reads = len(dp["reads"])
            read_frames += dp["reads"][: args.frames // 3 + 1]   # a mix of the three kinds
            ms = {k: round(1000 * dp[k] / args.seconds, 2) for k in ("decode_s", "grey_s", "gate_s", "rgb_s")}
            row = {"video_s": args.seconds, "candidates": dp["candidates"], "reads": reads,
                   "reads_per_video_s": round(reads / args.seconds, 3),
                   # per second of video, one core: the decode pass without OCR, and what OCR adds to it
                   "decode_ms_per_video_s": ms["decode_s"], "candidate_grey_ms_per_video_s": ms["grey_s"],
                   "change_check_ms_per_video_s": ms["gate_s"], "read_rgb_ms_per_video_s": ms["rgb_s"],
                   "decode_pass_added": round((dp["grey_s"] + dp["gate_s"] + dp["rgb_s"]) / dp["decode_s"], 3),
                   "ocr_s_per_read_1_thread": round(ocr_s / max(1, reads), 3)}
            report["videos"][name] = row
            print(name, json.dumps(row), flush=True)
    read_frames = read_frames[: args.frames]
    while len(read_frames) < args.frames:
        read_frames += read_frames[: args.frames - len(read_frames)]
    best = 0.0
    report["throughput"] = []
    splits = list(zip((int(x) for x in args.workers.split(",")), (int(x) for x in args.threads.split(",")),
                      strict=True))
    for rep in range(args.repeat):   # interleaved repeats: a shared machine's load drifts
        for w, t in splits:
            fps = throughput(read_frames, w, t, cfg_dict)
            report["throughput"].append({"workers": w, "threads": t, "repeat": rep, "frames_per_s": round(fps, 2)})
            print(f"throughput {w} workers x {t} threads: {fps:.2f} frames/s", flush=True)
            best = max(best, fps)
    report["frames_per_s"] = round(best, 2)
    report["video_hours_per_hour"] = {}
    report["share_of_ingest"] = {}
    for name, row in report["videos"].items():
        r = row["reads_per_video_s"]
        vhph = best / r if r else float("inf")
        report["video_hours_per_hour"][name] = round(vhph, 2)
        if args.ingest_clips_per_s:
            ingest_vs = args.ingest_clips_per_s * args.clip_seconds      # video-seconds per second
            ocr_cost, ingest_cost = 1 / vhph, 1 / ingest_vs
            report["share_of_ingest"][name] = round(ocr_cost / (ocr_cost + ingest_cost), 3)
    print(json.dumps({k: report[k] for k in ("cpus", "frames_per_s", "video_hours_per_hour", "share_of_ingest")}))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
