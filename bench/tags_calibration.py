"""How comparable are zero-shot tag scores across labels? Measured on a demo library.

    vidsearch demo --library /tmp/d                     # once: 24 videos, 419 clips
    python bench/tags_calibration.py --library /tmp/d

For the label sets the demo world has a ground truth for ("colour shape": 42 labels, shape: 6,
colour: 7, motion: 9), each clip's true label is the scene under its middle. Per prompt-template
set and per scoring method it prints:

- top-1 / top-3: the clip's true label is its best / among its 3 best labels;
- macro-F1 at one threshold: the best macro-averaged F1 (over labels) that a single threshold on
  the score reaches, labels being positive for the clips showing them. Scores that mean the same
  for every label reach a higher one: this is what ``vidsearch tag --min-score`` relies on.

Scoring methods: raw cosine; per-label z-score of the cosine over the library's clips; the
softmax over labels at the model's scale (x100), which vidsearch uses (vidsearch/search/tags.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from vidsearch.demo.captions import COLOURS, SHAPES
from vidsearch.demo.model import load_demo_model
from vidsearch.demo.run import scene_at
from vidsearch.demo.world import load_world
from vidsearch.library import Library
from vidsearch.search.tags import LOGIT_SCALE, VIDEO_TEMPLATES, encode_labels, label_scores

MOTION_WORDS = {"left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
                "grow": "growing", "shrink": "shrinking", "rotate": "rotating", "appear": "appearing",
                "disappear": "disappearing"}
TEMPLATE_SETS = {
    "clip-video (default)": VIDEO_TEMPLATES,
    "plain": ("{}",),
    "object": ("a video of {}.", "a video of a {}.", "a clip of a {}.", "a {}."),
}


def macro_f1_one_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    y = np.zeros(scores.shape, bool)
    y[np.arange(len(truth)), truth] = True
    best = 0.0
    for th in np.quantile(scores, np.linspace(0.5, 0.999, 300)):
        p = scores >= th
        tp, fp, fn = (p & y).sum(0), (p & ~y).sum(0), (~p & y).sum(0)
        best = max(best, float(np.mean(2 * tp / np.maximum(2 * tp + fp + fn, 1))))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", required=True, help="a library made by `vidsearch demo`")
    ap.add_argument("--world", default=None, help="its world folder (default: LIBRARY/world)")
    args = ap.parse_args()
    root = Path(args.library)
    lib = Library(root)
    m = lib.read_manifest()
    # Commits without clips (tags, text-only) are skipped.
    tables = [pq.read_table(root / s.clips_file, columns=["path", "start_s", "end_s", "embedding"])
              for s in m.shards if s.clips_rows]
    emb = np.concatenate([np.asarray(t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                                     np.float32).reshape(t.num_rows, -1) for t in tables])
    world = load_world(Path(args.world) if args.world else root / "world")
    scenes = [scene_at(world, p, (a + b) / 2) for t in tables
              for p, a, b in zip(t.column("path").to_pylist(), t.column("start_s").to_pylist(),
                                 t.column("end_s").to_pylist(), strict=True)]
    keep = np.array([s is not None for s in scenes])
    emb = emb[keep]
    attrs = [s.attributes for s in scenes if s is not None]
    model = load_demo_model(device="cpu")
    label_sets = {
        "colour shape": ([f"{c} {s}" for c in COLOURS for s in SHAPES], [f"{a.colour} {a.shape}" for a in attrs]),
        "shape": (list(SHAPES), [a.shape for a in attrs]),
        "colour": (list(COLOURS), [a.colour for a in attrs]),
        "motion": (list(MOTION_WORDS.values()), [MOTION_WORDS[a.motion] for a in attrs]),
    }
    print(f"{len(attrs)} clips of {root}")
    for set_name, (labels, true_labels) in label_sets.items():
        truth = np.array([labels.index(x) for x in true_labels])
        for t_name, templates in TEMPLATE_SETS.items():
            label_emb = encode_labels(model.encode_text, labels, templates)
            cos = emb @ label_emb.T
            methods = {"cosine": cos, "z-score": (cos - cos.mean(0)) / (cos.std(0) + 1e-6),
                       f"softmax x{LOGIT_SCALE:g}": label_scores(emb, label_emb)}
            cells = []
            for name, s in methods.items():
                order = np.argsort(-s, axis=1)
                top1 = float(np.mean(order[:, 0] == truth))
                top3 = float(np.mean([truth[i] in order[i, :3] for i in range(len(truth))]))
                cells.append(f"{name}: top1 {top1:.3f} top3 {top3:.3f} F1@1thr {macro_f1_one_threshold(s, truth):.3f}")
            print(f"[{set_name} ({len(labels)} labels) | {t_name}] " + " | ".join(cells))


if __name__ == "__main__":
    main()
