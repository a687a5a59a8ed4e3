"""Compare fusion rules on a synthetic two-modality retrieval set (issue 14: "RRF or better, measured").

Model of the data: each query has 1-3 relevant moments. The visual modality finds each relevant
moment with probability ``--p-visual`` at a geometric-ish rank, with cosine-like scores (relevant
~N(0.30, 0.03), others ~N(0.25, 0.03)); speech finds it with ``--p-speech`` with BM25-like
scores (relevant ~N(12, 4), others a heavy-tailed lognormal: a frequent word can give an
unrelated segment a high BM25). Each list holds 50 hits; the rest are distractor moments.
Speech hits lie inside the visual moment they belong to (a word span inside a clip), so the
moment merge of :func:`vidsearch.search.fusion.fuse` is exercised as well.

Rules compared (nDCG@10 and recall@10, mean over queries):
RRF (k = 10, 60), CombSUM and CombMNZ of min-max normalised scores, sum of z-scores, and each
modality alone.

    python bench/fusion_eval.py --queries 2000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import defaultdict

from vidsearch.search.fusion import ModalityHit, fuse


def _rank_of_found(rng: random.Random, n: int) -> int:
    return min(n - 1, int(rng.expovariate(1 / 6)))  # mostly top ranks, some deep


def make_query(rng: random.Random, args: argparse.Namespace,
               n_videos: int = 500) -> tuple[set[tuple[str, int]], dict[str, list[ModalityHit]]]:
    rel = {(f"v{rng.randrange(n_videos)}", rng.randrange(20)) for _ in range(rng.randint(1, 3))}
    lists: dict[str, list[ModalityHit]] = {}
    for modality, p in (("visual", args.p_visual), ("speech", args.p_speech)):
        slots: list[tuple[tuple[str, int], bool] | None] = [None] * 50
        for moment in rel:
            if rng.random() < p:
                r = _rank_of_found(rng, 50)
                while slots[r] is not None and r < 49:
                    r += 1
                slots[r] = (moment, True)
        hits = []
        for r in range(50):
            moment, relevant = slots[r] or ((f"v{rng.randrange(n_videos)}", rng.randrange(20)), False)
            if modality == "visual":
                score = rng.gauss(0.30 if relevant else 0.25, 0.03)
                start, end = moment[1] * 4.0, moment[1] * 4.0 + 4.0
            else:
                score = rng.gauss(12, 4) if relevant else rng.lognormvariate(1.8, 0.6)
                start = moment[1] * 4.0 + 1.0
                end = start + 1.5
            hits.append(ModalityHit(modality, moment[0], start, end, score, ref=(moment, relevant)))
        # the modality's own order is by its score, not by the planted rank
        lists[modality] = sorted(hits, key=lambda h: -h.score)
    return rel, lists


def _moment(h: ModalityHit) -> tuple[str, int]:
    return h.ref[0]


def score_fusion(lists: dict[str, list[ModalityHit]], how: str) -> list[tuple[str, int]]:
    agg: dict[tuple[str, int], list[float]] = defaultdict(list)
    for _m, hits in lists.items():
        s = [h.score for h in hits]
        lo, hi = min(s), max(s)
        mu = sum(s) / len(s)
        sd = math.sqrt(sum((x - mu) ** 2 for x in s) / len(s)) or 1.0
        best: dict[tuple[str, int], float] = {}
        for h in hits:
            v = (h.score - lo) / (hi - lo or 1.0) if how in ("combsum", "combmnz") else (h.score - mu) / sd
            best[_moment(h)] = max(best.get(_moment(h), -1e9), v)
        for mom, v in best.items():
            agg[mom].append(v)
    def total(vs: list[float]) -> float:
        return sum(vs) * (len(vs) if how == "combmnz" else 1)
    return sorted(agg, key=lambda m: -total(agg[m]))


def ndcg(ranked: list[tuple[str, int]], rel: set[tuple[str, int]], k: int = 10) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, m in enumerate(ranked[:k]) if m in rel)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(rel))))
    return dcg / idcg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--p-visual", type=float, default=0.7)
    ap.add_argument("--p-speech", type=float, default=0.5)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    res: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _ in range(args.queries):
        rel, lists = make_query(rng, args)
        runs: dict[str, list[tuple[str, int]]] = {}
        for kk in (10, 60):
            fused = fuse(lists, k=None, rrf_k=kk)
            runs[f"rrf_k{kk}"] = list(dict.fromkeys(_moment(f.hits[0]) for f in fused))
        for how in ("combsum", "combmnz", "zscore"):
            runs[how] = score_fusion(lists, how)
        for m in lists:
            runs[f"{m}_only"] = list(dict.fromkeys(_moment(h) for h in lists[m]))
        for name, ranked in runs.items():
            rec = len(set(ranked[:10]) & rel) / len(rel)
            res[name].append((ndcg(ranked, rel), rec))
    out = {name: {"ndcg@10": round(sum(x[0] for x in v) / len(v), 4),
                  "recall@10": round(sum(x[1] for x in v) / len(v), 4)} for name, v in res.items()}
    print(json.dumps({"queries": args.queries, "seed": args.seed, "p_visual": args.p_visual,
                      "p_speech": args.p_speech, "results": out}, indent=1))


if __name__ == "__main__":
    main()
