"""Where to put a model's ``min_score``: best scores of queries that have an answer vs ones that do not.

A weak best match looks like a broken tool, so ``vidsearch search`` leaves out moments below the
model's ``min_score`` and says "no good match". This measures a value for the demo model on a
library made by ``vidsearch demo``, whose ground truth is known: every (shape, colour, count,
motion) combination is asked once (canonical and paraphrased wording, the demo's captions);
a query *has an answer* when a scene of the world shows exactly that combination.

    vidsearch demo --library /tmp/dm                 # once
    python bench/min_score.py --library /tmp/dm [--path '*/studio/*']

Prints, for queries with and without an answer, the distribution of the best score, of the
score of the best *right* hit, and for a range of thresholds: the share of answerable queries
whose right hit survives, and the share of unanswerable ones that say "no good match".
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np

from vidsearch.demo.captions import COLOURS, COUNTS, MOTIONS, SHAPES, Attributes, sample_caption
from vidsearch.demo.model import load_demo_model
from vidsearch.demo.run import hit_matches
from vidsearch.demo.world import World, load_world
from vidsearch.library import Library
from vidsearch.search import Filters, Hit, Searcher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", required=True, help="a library made by `vidsearch demo`")
    ap.add_argument("--path", default=None, help="also filter by this GLOB (what the demo suggests)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    lib = Library(args.library)
    world = load_world(lib.root / "world")
    present = {s.attributes.key for v, s in world.scenes()
               if args.path is None or _glob(str(world.root / v.relpath), args.path)}
    model = load_demo_model(device="cpu")
    rng = np.random.default_rng(args.seed)
    rows: list[dict[str, object]] = []
    with Searcher(lib, model=model, record_history=False) as searcher:
        for shape, colour, count, motion in itertools.product(SHAPES, COLOURS, COUNTS, MOTIONS):
            a = Attributes(shape, colour, count, motion)
            for style in ("canonical", "paraphrase"):
                text = sample_caption(a, rng, style)
                res = searcher.search(text, k=args.k, filters=Filters(path_glob=args.path),
                                      use_default_min_score=False)
                if not res.hits:
                    continue
                right = [h.score for h in res.hits if _right(world, searcher, h, a)]
                rows.append({"query": text, "style": style, "answer": a.key in present,
                             "best": res.hits[0].score, "best_right": max(right) if right else None})
    ans = [r for r in rows if r["answer"]]
    non = [r for r in rows if not r["answer"]]
    out: dict[str, object] = {
        "queries": len(rows), "with_answer": len(ans), "without_answer": len(non),
        "best_with_answer": _pct([float(r["best"]) for r in ans]),  # type: ignore[arg-type]
        "best_right_hit": _pct([float(r["best_right"]) for r in ans if r["best_right"] is not None]),  # type: ignore[arg-type]
        "best_without_answer": _pct([float(r["best"]) for r in non]),  # type: ignore[arg-type]
        "thresholds": {},
    }
    for t in np.arange(0.70, 0.96, 0.01):
        kept = np.mean([r["best_right"] is not None and float(r["best_right"]) >= t for r in ans])  # type: ignore[arg-type]
        said = np.mean([float(r["best"]) < t for r in non])  # type: ignore[arg-type]
        out["thresholds"][f"{t:.2f}"] = {"right_hit_kept": round(float(kept), 3),  # type: ignore[index]
                                         "no_good_match_when_none": round(float(said), 3)}
    print(json.dumps(out, indent=2) if args.json else _table(out))


def _glob(path: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(path, pattern)


def _right(world: World, searcher: Searcher, h: Hit, a: Attributes) -> bool:
    """Whether the hit's best clip (its own span, as the demo judges hits) shows ``a``."""
    meta = searcher.clips.metadata(np.array([h.clip_id], np.int64)).get(h.clip_id)
    return meta is not None and hit_matches(world, h.path, meta.start_s, meta.end_s, a)


def _pct(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    q = np.percentile(xs, [1, 5, 25, 50, 75, 95, 99])
    return {f"p{p}": round(float(v), 4) for p, v in zip((1, 5, 25, 50, 75, 95, 99), q, strict=True)}


def _table(out: dict[str, object]) -> str:
    lines = [f"{out['queries']} queries: {out['with_answer']} with an answer in the library, "
             f"{out['without_answer']} without",
             f"best score, with an answer:    {out['best_with_answer']}",
             f"best right hit's score:        {out['best_right_hit']}",
             f"best score, without an answer: {out['best_without_answer']}",
             "threshold  right hit kept  'no good match' when there is none"]
    for t, v in out["thresholds"].items():  # type: ignore[attr-defined]
        lines.append(f"  {t}        {v['right_hit_kept']:.3f}           {v['no_good_match_when_none']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
