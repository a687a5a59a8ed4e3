"""Search latency and recall at scale, on a synthetic library (real shards, catalog and index).

    python bench/search_latency.py --n 100000            # builds /tmp/vidsearch-bench-100000
    python bench/search_latency.py --n 1000000 --queries 200

Builds (or reuses) a library of ``--n`` clips with clustered synthetic 512-d embeddings (one
centre per video, clips around it), indexes it with the automatic choice (or ``--factory``),
then runs ``--queries`` vector queries (stored clip embeddings plus noise, so they are not exact
copies) through :class:`vidsearch.search.Searcher` with no filter and with filters of about 50%,
5% and 0.5% selectivity (each filter twice: cold, i.e. the filter cache cleared before every
query, and cached, the same filter repeated). Prints p50/p99 of each stage (DuckDB filter, ANN, DuckDB metadata, total
without text encoding) and recall@10 against exact brute-force filtered search. Text encoding is
timed separately with ``--model`` (the tiny test model by default: its time says nothing about
the 1B model; use --model internvideo2-s2-1b with weights for that).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from vidsearch.indexer import load_index, update_index
from vidsearch.library import Library
from vidsearch.schemas.config import IndexCfg, SearchCfg
from vidsearch.schemas.manifest import ModelInfo
from vidsearch.schemas.tables import VIDEO_SCHEMA, clip_schema
from vidsearch.search import Filters, Searcher

FOLDERS = 20  # videos spread over 20 folders: a path glob on one selects ~5%


def build_library(root: Path, n: int, dim: int, seed: int, shard_rows: int) -> Library:
    """Commit ``n`` synthetic clips (vectorised; ~30 clips per video) into a new library."""
    rng = np.random.default_rng(seed)
    lib = Library(root)
    per_video = rng.integers(5, 56, size=n // 5 + 1)
    per_video = per_video[np.cumsum(per_video) <= n]
    per_video = np.append(per_video, n - per_video.sum()) if per_video.sum() < n else per_video
    nv = len(per_video)
    video_of = np.repeat(np.arange(nv), per_video)
    clip_index = np.arange(n) - np.repeat(np.cumsum(per_video) - per_video, per_video)
    clip_ids = rng.permutation(np.arange(1, n + 1, dtype=np.int64) * 1_000_003 % (2**62))
    vids = [f"{i:032x}" for i in range(nv)]
    paths = [f"/bench/folder{i % FOLDERS:02d}/video_{i:07d}.mp4" for i in range(nv)]
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    with lib.lock():
        lib.init(ModelInfo(name="synthetic", fingerprint=f"bench-{dim}", embed_dim=dim, num_frames=4))
        start = 0
        v0 = 0
        while start < n:
            # Shard boundaries at video boundaries (a video is settled in one commit).
            v1 = int(np.searchsorted(np.cumsum(per_video), start + shard_rows, side="right"))
            v1 = max(v1, v0 + 1)
            end = int(per_video[:v1].sum())
            sl = slice(start, end)
            m = end - start
            centres = rng.standard_normal((v1 - v0, dim)).astype(np.float32)
            centres /= np.linalg.norm(centres, axis=1, keepdims=True)
            emb = centres[video_of[sl] - v0] + 0.35 * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            ci = clip_index[sl]
            fields = {
                "clip_id": clip_ids[sl], "video_id": [vids[v] for v in video_of[sl]],
                "path": [paths[v] for v in video_of[sl]], "clip_index": ci.astype(np.int32),
                "start_s": ci * 4.0, "end_s": ci * 4.0 + 4.0, "start_frame": ci * 120, "end_frame": ci * 120 + 120,
                "frame_indices": pa.array([[0, 30, 60, 90]] * m, pa.list_(pa.int64())),
                "frame_times_s": pa.array([[0.0, 1.0, 2.0, 3.0]] * m, pa.list_(pa.float64())),
                "padded": np.zeros(m, bool), "segment": ["fixed"] * m, "shot_index": pa.nulls(m, pa.int32()),
                "model": ["synthetic"] * m, "model_fingerprint": [f"bench-{dim}"] * m, "run_id": ["bench"] * m,
            }
            schema = clip_schema(dim)
            arrays = [pa.array(fields[f.name], type=f.type) if not isinstance(fields[f.name], pa.Array)
                      else fields[f.name] for f in schema if f.name != "embedding"]
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim))
            clips = pa.Table.from_arrays(arrays, schema=schema)
            vrows = [{"video_id": vids[v], "path": paths[v], "path_bytes": paths[v].encode(),
                      "duration_s": float(per_video[v] * 4), "fps": 30.0, "codec": ("h264", "hevc")[v % 2],
                      "width": 1280, "height": 720, "num_clips": int(per_video[v]), "status": "done",
                      "attempts": 1, "run_id": "bench", "ingested_at": now} for v in range(v0, v1)]
            lib.commit(clips, pa.Table.from_pylist(vrows, schema=VIDEO_SCHEMA), run_id="bench")
            start, v0 = end, v1
    return lib


def pct(xs: list[float]) -> str:
    return f"p50 {np.percentile(xs, 50):7.2f} ms  p99 {np.percentile(xs, 99):7.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="clips in the synthetic library")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--library", default=None, help="library folder (default /tmp/vidsearch-bench-N)")
    ap.add_argument("--factory", default=None, help="FAISS factory (default: automatic choice)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the index even if one exists")
    ap.add_argument("--shard-rows", type=int, default=65536)
    ap.add_argument("--model", default="internvideo2-tiny", help="model whose text encoding is timed ('' = skip)")
    ap.add_argument("--nprobe", type=int, default=None, help="override the tuned IVF nprobe at search time")
    ap.add_argument("--ef", type=int, default=None, help="override the tuned HNSW efSearch at search time")
    ap.add_argument("--skip-index", action="store_true", help="use the existing index as it is")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.library or f"/tmp/vidsearch-bench-{args.n}")
    out: dict = {"n": args.n, "dim": args.dim, "cpus": os.cpu_count(), "machine": platform.processor() or
                 platform.machine()}
    lib = Library(root)
    if not lib.exists():
        t0 = time.perf_counter()
        build_library(root, args.n, args.dim, 0, args.shard_rows)
        out["library_build_s"] = time.perf_counter() - t0
        print(f"library: {args.n} clips built in {out['library_build_s']:.0f} s at {root}")
    if args.skip_index:
        out["index"] = load_index(lib).meta.report
        print("index:", json.dumps({k: out["index"].get(k) for k in ("kind", "factory", "vectors", "recall_at_10",
                                                                     "search_params")}))
    else:
        with lib.lock():
            report = update_index(lib, IndexCfg(factory=args.factory), rebuild=args.rebuild,
                                  progress=lambda m: print("  " + m))
        print(report.format())
        out["index"] = report.to_dict()

    idx = load_index(lib)
    ids = idx.vectors.all_ids()
    _, xb = idx.vectors.gather(ids)
    rng = np.random.default_rng(1)
    qpos = rng.choice(len(ids), args.queries, replace=False)
    qs = xb[qpos] + 0.35 * rng.standard_normal((args.queries, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)

    if args.model:
        from vidsearch.models import create_model

        model = create_model(args.model)
        model.encode_text(["warm up"])
        enc = []
        for i in range(50):
            t0 = time.perf_counter()
            model.encode_text([f"a dog playing in the snow {i}"])
            enc.append((time.perf_counter() - t0) * 1e3)
        print(f"text encode ({args.model}, {os.cpu_count()} CPUs): {pct(enc)}")
        out["encode_ms"] = {"p50": float(np.percentile(enc, 50)), "p99": float(np.percentile(enc, 99))}

    cases = {
        "no filter": Filters(),
        "~50% (--where)": Filters(where="clips.clip_id % 1000 < 500"),
        "~5% (--path glob)": Filters(path_glob="/bench/folder07/*"),
        "~0.5% (--where)": Filters(where="clips.clip_id % 1000 < 5"),
    }
    out["cases"] = {}
    with Searcher(lib, cfg=SearchCfg(), record_history=False) as searcher:
        assert searcher.index is not None
        if args.nprobe:
            searcher.index.meta.search_params["nprobe"] = args.nprobe
        if args.ef:
            searcher.index.meta.search_params["efSearch"] = args.ef
        out["search_params"] = dict(searcher.index.meta.search_params)
        print("search params:", out["search_params"])
        # Filter results are cached per Searcher: time the cold path (cache cleared before each
        # query: what a new filter costs) and the cached path (the same filter again).
        runs = [r for name, f in cases.items()
                for r in ([(name, f, False)] if f.is_empty() else [(name, f, False), (name + " cached", f, True)])]
        for name, f, cached in runs:
            allowed = searcher.matching_ids(f) if not f.is_empty() else None
            mask = np.isin(ids, allowed) if allowed is not None else np.ones(len(ids), bool)
            searcher.search(vector=qs[0], k=10, filters=f, merge=False)  # warm up
            t = {"filter": [], "ann": [], "db": [], "total": []}
            strategies = set()
            got = []
            for q in qs:
                if not cached:
                    searcher.clear_filter_cache()
                res = searcher.search(vector=q, k=10, filters=f, merge=False)
                for key in t:
                    t[key].append(res.timings_ms.get(key, 0.0) - (res.timings_ms.get("encode", 0.0)
                                                                  if key == "total" else 0.0))
                strategies.add(res.strategy)
                got.append({h.clip_id for h in res.hits})
            # Exact filtered top-10 of all queries at once (one BLAS call, not 1M-row matvecs).
            sub_ids = ids[mask]
            _, pos = faiss.knn(qs, xb[mask] if not mask.all() else xb, 10, metric=faiss.METRIC_INNER_PRODUCT)
            rec = [len(set(sub_ids[p].tolist()) & g) / 10 for p, g in zip(pos, got, strict=True)]
            sel = mask.mean()
            print(f"{name:25s} sel {sel:6.2%} via {','.join(sorted(strategies)):14s} "
                  f"ANN+filter total {pct(t['total'])} | filter {np.percentile(t['filter'], 50):.2f} "
                  f"ann {np.percentile(t['ann'], 50):.2f} db {np.percentile(t['db'], 50):.2f} (p50 ms) "
                  f"| recall@10 {np.mean(rec):.3f} | load {os.getloadavg()[0]:.2f}", flush=True)
            out["cases"][name] = {"selectivity": float(sel), "strategies": sorted(strategies),
                                  "recall_at_10": float(np.mean(rec)), "load1": os.getloadavg()[0],
                                  **{f"{k}_p50_ms": float(np.percentile(v, 50)) for k, v in t.items()},
                                  **{f"{k}_p99_ms": float(np.percentile(v, 99)) for k, v in t.items()}}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
