"""Pictures + words on generated demo worlds: how fusion and the keyword match rule do on real parts.

Each world is ``vidsearch demo``'s (coloured shapes; a narrator in every 4th video saying where it
was recorded and what three scenes show, a sidecar ``.srt`` with a paraphrased caption per scene
in every 4th from the 3rd on), ingested with the demo model, subtitles read (and speech
transcribed when a Whisper model is available offline). The queries are the canonical and the
paraphrased caption of every kind of scene; a hit is right when it overlaps a scene of that kind
(``vidsearch eval``'s rule, every scene of the kind a target).

Compared, per world and over all: the pictures alone (``--in visual``: the demo model), the words
alone (``--in speech``), and both fused (the default) with several values of
``SearchCfg.keyword_min_match`` (the share of a plain query's words, stop words aside, a
transcript row must hold): recall@1, recall@5, MRR. Also the words-only queries ("recorded in the
<folder>"): recall@1 of the narrated lines.

    python bench/fusion_demo.py --seeds 1,2,3 --videos 24 --json out/fusion_demo.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np


def _queries(world: Any, seed: int) -> list[Any]:
    from vidsearch.demo.captions import sample_caption
    from vidsearch.search.evaluate import EvalQuery, EvalTarget

    rng = np.random.default_rng(seed)
    kinds: dict[Any, list[tuple[str, float, float]]] = {}
    for v, s in world.scenes():
        kinds.setdefault(s.attributes, []).append((str(world.root / v.relpath), s.start_s, s.end_s))
    out = []
    for style in ("canonical", "paraphrase"):
        for attrs, targets in kinds.items():
            (p, a, b), *also = targets
            out.append(EvalQuery(query=sample_caption(attrs, rng, style), path=p, start_s=a, end_s=b, line=0,
                                 also=tuple(EvalTarget(path=q, start_s=x, end_s=y) for q, x, y in also)))
    return out


def _score(queries: list[Any], hits_of: dict[str, list[Any]], k: int = 10) -> dict[str, float]:
    from vidsearch.search.evaluate import evaluate

    r = evaluate(queries, lambda text, _k: hits_of[text], k=k)
    return {"recall_at_1": round(r.recall_at_1, 4), "recall_at_5": round(r.recall_at_5, 4), "mrr": round(r.mrr, 4),
            "n": r.n_queries}


def run_world(seed: int, videos: int, min_matches: list[float], workdir: Path) -> dict[str, Any]:
    from vidsearch.demo.model import load_demo_model
    from vidsearch.demo.narrate import narrate_world, offline_speech_model
    from vidsearch.demo.run import check_speech_hits, ingest_world, speech_query
    from vidsearch.demo.world import generate_world
    from vidsearch.library import Library
    from vidsearch.schemas.config import SearchCfg
    from vidsearch.search.searcher import Searcher

    root = workdir / f"world{seed}"
    t0 = time.monotonic()
    world = generate_world(root / "world", n_videos=videos, seed=seed)
    narration = narrate_world(world, seed=seed)
    model_path = offline_speech_model() if narration.spoken else None
    ingest_world(world, root, executor="local", speech_model=model_path)
    ingest_s = time.monotonic() - t0
    queries = _queries(world, seed)
    # vidsearch eval resolves targets to video ids by path; here the paths are the catalog's own.
    with Library(root).connect_catalog() as con:
        ids = dict(con.execute("SELECT path, video_id FROM videos").fetchall())
    queries = [replace(q, video_id=ids.get(q.path), also=tuple(replace(t, video_id=ids.get(t.path)) for t in q.also))
               for q in queries]
    out: dict[str, Any] = {"seed": seed, "videos": videos, "queries": len(queries), "ingest_s": round(ingest_s, 1),
                           "speech_model": model_path, "settings": {}}
    model = load_demo_model(device="cpu")
    for mm in min_matches:
        cfg = SearchCfg(keyword_min_match=mm)
        with Searcher(Library(root), model=model, cfg=cfg, record_history=False) as s:
            out["modalities"] = list(s.modalities())
            runs = {"visual": ("visual",), "speech": ("speech",), "fused": None}
            got: dict[str, dict[str, list[Any]]] = {name: {} for name in runs}
            t1 = time.monotonic()
            for q in queries:
                for name, mods in runs.items():
                    got[name][q.query] = s.search(q.query, k=10, modalities=mods).hits
            res = {name: _score(queries, got[name]) for name in runs}
            res["search_ms_per_query"] = round((time.monotonic() - t1) * 1e3 / len(queries), 1)
            sq = speech_query(world, narration)
            if sq is not None:
                text, lines = sq
                o = check_speech_hits(world, lines, text, s.search(text, k=10).hits)
                res["words_only_query"] = {"query": text, "first_right": o.first_correct, "lines": len(lines)}
            out["settings"][str(round(mm, 3))] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1,2,3", help="world seeds (comma-separated)")
    ap.add_argument("--videos", type=int, default=24, help="videos per world (default 24, as vidsearch demo)")
    ap.add_argument("--min-match", default="0.5,0.667,0.8,1.0", help="keyword_min_match values to compare")
    ap.add_argument("--workdir", default=None, help="keep the worlds here (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    mms = [float(x) for x in args.min_match.split(",")]
    with tempfile.TemporaryDirectory(prefix="fusion-demo-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        worlds = [run_world(seed, args.videos, mms, work) for seed in seeds]
    summary: dict[str, Any] = {}
    for mm in map(lambda x: str(round(x, 3)), mms):
        agg: dict[str, Any] = {}
        for name in ("visual", "speech", "fused"):
            n = sum(w["settings"][mm][name]["n"] for w in worlds)
            agg[name] = {m: round(sum(w["settings"][mm][name][m] * w["settings"][mm][name]["n"] for w in worlds) / n, 4)
                         for m in ("recall_at_1", "recall_at_5", "mrr")}
        agg["words_only_first_right"] = [w["settings"][mm].get("words_only_query", {}).get("first_right")
                                         for w in worlds]
        summary[mm] = agg
    doc = {"worlds": worlds, "summary": summary, "cpu_count": os.cpu_count()}
    print(json.dumps(summary, indent=1))
    for w in worlds:
        print(f"seed {w['seed']}: {w['queries']} queries, modalities {w['modalities']}, ingest {w['ingest_s']} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
