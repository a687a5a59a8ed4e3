"""Which frame size and detector size rapidocr needs to read small text (issue 15).

Draws ``--frames`` 1920x1080 frames with Pillow: each holds phrases of several text heights
(given in pixels of the 1080p frame) in different fonts and colours on different backgrounds
(flat colour, gradient, smooth colour noise, stripes, busy noise). Each frame is shrunk with
OpenCV's area filter (what a decoder's downscale does) to every ``--long-sides`` value, then read
by :class:`vidsearch.pipeline.ocr.ScreenReader` with the detector limited to each
``--det-sides`` value (recognition always reads crops of the full OCR frame). Prints, per
(frame long side, detector side), the share of phrases read exactly (case and punctuation
ignored) and within a similarity of 0.8 per text height, and the seconds per frame.

    python bench/ocr_resolution.py --frames 12 --threads 2
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/liberation")
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
         "LiberationSans-Regular.ttf", "LiberationSerif-Bold.ttf", "LiberationSansNarrow-Regular.ttf")
WORDS = [
    "grand", "opening", "sale", "today", "only", "fresh", "bread", "coffee", "station", "platform", "exit",
    "north", "south", "museum", "library", "closed", "monday", "friday", "weekend", "discount", "kitchen",
    "garden", "hotel", "pharmacy", "police", "parking", "entrance", "welcome", "introduction", "results",
    "chapter", "summary", "revenue", "growth", "quarter", "market", "analysis", "project", "timeline", "team",
    "meeting", "agenda", "questions", "final", "score", "minutes", "goal", "penalty", "delivery", "premium",
    "organic", "chocolate", "tomato", "recipe", "warning", "danger", "caution", "floor",
]


def fonts() -> list[str]:
    out = [str(Path(d) / f) for f in FONTS for d in FONT_DIRS if (Path(d) / f).is_file()]
    if not out:
        raise SystemExit("no TrueType fonts found: apt-get install fonts-dejavu-core fonts-liberation")
    return out


def background(kind: str, rng: np.random.Generator, h: int = 1080, w: int = 1920) -> np.ndarray:
    import cv2

    if kind == "flat":
        return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (h, w, 3)).copy()
    if kind == "gradient":
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, w)[None, :, None]
        return np.broadcast_to(a + (b - a) * t, (h, w, 3)).astype(np.uint8).copy()
    if kind == "smooth":
        small = rng.integers(0, 256, (9, 16, 3)).astype(np.uint8)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    if kind == "stripes":
        x = (np.arange(w)[None, :] // 40 + np.arange(h)[:, None] // 40) % 2
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        return np.where(x[..., None] == 1, a, b).astype(np.uint8)
    # busy: coarse colour noise with fine grain, like foliage or a crowd
    small = rng.integers(0, 256, (68, 120, 3)).astype(np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.int16)
    return np.clip(img + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def draw_frame(rng: random.Random, nrng: np.random.Generator, heights: list[int], kind: str,
               font_files: list[str]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """A 1080p frame with one phrase per text height, each on its own band; returns (frame, [(height, phrase)])."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(background(kind, nrng))
    d = ImageDraw.Draw(img)
    truth = []
    band = 1080 // len(heights)
    for i, hpx in enumerate(heights):
        phrase = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))
        if rng.random() < 0.3:
            phrase = phrase.upper()
        elif rng.random() < 0.5:
            phrase = phrase.title()
        font = ImageFont.truetype(rng.choice(font_files), size=hpx)
        width = d.textbbox((0, 0), phrase, font=font)[2]
        while width > 1880:  # keep the whole phrase inside the frame
            phrase = phrase.rsplit(" ", 1)[0]
            width = d.textbbox((0, 0), phrase, font=font)[2]
        x0, y0 = rng.randint(10, 1900 - width), i * band + rng.randint(0, max(1, band - int(hpx * 1.4)))
        box = d.textbbox((x0, y0), phrase, font=font)
        region = np.asarray(img)[max(0, box[1]):box[3], max(0, box[0]):min(1920, box[2])]
        lum = float(region.mean()) if region.size else 128.0
        # text must stand out from what is behind it, as real captions and signs do
        colour = (255, 255, rng.randint(0, 255)) if lum < 128 else (0, 0, rng.randint(0, 120))
        stroke = 2 if kind in ("busy", "stripes") else 0
        d.text((x0, y0), phrase, font=font, fill=colour, stroke_width=stroke,
               stroke_fill=(0, 0, 0) if lum < 128 else (255, 255, 255))
        truth.append((hpx, phrase))
    return np.asarray(img), truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--heights", default="10,13,16,20,27,36,54", help="text heights in pixels at 1080p")
    ap.add_argument("--long-sides", default="640,960,1280,1920")
    ap.add_argument("--det-sides", default="640,960")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import cv2

    from vidsearch.pipeline.ocr import ScreenReader, similarity
    from vidsearch.schemas.ocr_config import OcrCfg

    heights = [int(x) for x in args.heights.split(",")]
    rng, nrng, ff = random.Random(args.seed), np.random.default_rng(args.seed), fonts()
    kinds = ["flat", "gradient", "smooth", "stripes", "busy"]
    frames = [draw_frame(rng, nrng, heights, kinds[i % len(kinds)], ff) for i in range(args.frames)]
    results = []
    for det in (int(x) for x in args.det_sides.split(",")):
        reader = ScreenReader(OcrCfg(det_side=det, threads=args.threads, min_confidence=0.5))
        reader.setup()
        for side in (int(x) for x in args.long_sides.split(",")):
            w, h = side, round(side * 1080 / 1920)
            exact = {hp: 0 for hp in heights}
            close = {hp: 0 for hp in heights}
            secs = 0.0
            for img, truth in frames:
                small = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) if side != 1920 else img
                t = time.perf_counter()
                readings = reader.read(small)
                secs += time.perf_counter() - t
                for hp, phrase in truth:
                    best = max((similarity(phrase, r.text) for r in readings), default=0.0)
                    exact[hp] += best >= 0.999
                    close[hp] += best >= 0.8
            n = len(frames)
            row = {"long_side": side, "det_side": min(det, side), "s_per_frame": round(secs / n, 3),
                   "exact": {f"{hp}px({hp / 10.8:.1f}%)": round(exact[hp] / n, 2) for hp in heights},
                   "sim>=0.8": {f"{hp}px": round(close[hp] / n, 2) for hp in heights}}
            print(json.dumps(row), flush=True)
            results.append(row)
        reader.close()


if __name__ == "__main__":
    main()
