"""Search latency and recall at scale, on a synthetic library (real shards, catalog and index).

    python bench/search_latency.py --n 100000            # builds /tmp/vidsearch-bench-100000
    python bench/search_latency.py --n 1000000 --queries 200 --model ''
    bench/scale_run.sh DATA OUT 10000000                 # per phase, all cores and 2 cores

Builds (or reuses) a library of ``--n`` clips with clustered synthetic 512-d embeddings (one
centre per video, clips around it) with the bulk path (shards committed without a catalog
refresh, one catalog build at the end), indexes it with the automatic choice (or ``--factory``),
then runs ``--queries`` vector queries (stored clip embeddings plus noise, so they are not exact
copies) through :class:`vidsearch.search.Searcher` with no filter and with filters of about 50%,
5% and 0.5% selectivity (each filter twice: cold, i.e. the filter cache cleared before every
query, and cached, the same filter repeated). Prints p50/p99 of each stage (DuckDB filter, ANN,
DuckDB metadata, total without text encoding) and recall@10 against exact brute-force filtered
search (streamed over the vector cache), plus the peak anonymous memory of each phase
(``--phase build|index|search`` runs one phase per process). Text encoding is timed separately
with ``--model``: ``internvideo2-s2-1b`` times its real-size text tower (BERT-large, random
weights, a stand-in vocabulary of the same size) on all CPU threads, on 2 threads and on CUDA;
the default tiny test model says nothing about the 1B model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from vidsearch.indexer import in_sorted, load_index, update_index
from vidsearch.indexer.build import exact_topk
from vidsearch.library import Library
from vidsearch.schemas.config import IndexCfg, SearchCfg
from vidsearch.schemas.manifest import ModelInfo
from vidsearch.schemas.tables import VIDEO_SCHEMA, clip_schema
from vidsearch.search import Filters, Searcher

FOLDERS = 20  # videos spread over 20 folders: a path glob on one selects ~5%


def _shard_tables(rng: np.random.Generator, start: int, end: int, v0: int, v1: int, dim: int,
                  per_video: np.ndarray, video_of: np.ndarray, clip_index: np.ndarray,
                  clip_ids: np.ndarray, vids: list[str], paths: list[str]) -> tuple[pa.Table, pa.Table]:
    """Clip and video tables of clips [start, end) = videos [v0, v1)."""
    sl = slice(start, end)
    m = end - start
    centres = rng.standard_normal((v1 - v0, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    emb = rng.standard_normal((m, dim), dtype=np.float32)
    emb *= np.float32(0.35 / np.sqrt(dim))
    emb += centres[video_of[sl] - v0]
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
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    vrows = [{"video_id": vids[v], "path": paths[v], "path_bytes": paths[v].encode(),
              "duration_s": float(per_video[v] * 4), "fps": 30.0, "codec": ("h264", "hevc")[v % 2],
              "width": 1280, "height": 720, "num_clips": int(per_video[v]), "status": "done",
              "attempts": 1, "run_id": "bench", "ingested_at": now} for v in range(v0, v1)]
    return clips, pa.Table.from_pylist(vrows, schema=VIDEO_SCHEMA)


def build_library(root: Path, n: int, dim: int, seed: int, shard_rows: int) -> dict[str, float]:
    """Commit ``n`` synthetic clips (~30 per video) into a new library: the bulk path.

    Shards are committed without refreshing the catalog (``refresh_catalog=False``), and the
    catalog is built once at the end: a refresh per commit copies the whole catalog, O(N^2) over
    the build. The next shard's tables are generated in a thread while the current one commits
    (NumPy's generator, Parquet, zstd and SHA-256 release the GIL). Returns timings.
    """
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
    ends = np.cumsum(per_video)
    # Shard boundaries at video boundaries (a video is settled in one commit).
    bounds = []
    start = v0 = 0
    while start < n:
        v1 = max(int(np.searchsorted(ends, start + shard_rows, side="right")), v0 + 1)
        end = int(ends[v1 - 1])
        bounds.append((start, end, v0, v1))
        start, v0 = end, v1
    out = {"commit_s": 0.0, "generate_wait_s": 0.0}
    with lib.lock(), ThreadPoolExecutor(max_workers=1) as gen:
        lib.init(ModelInfo(name="synthetic", fingerprint=f"bench-{dim}", embed_dim=dim, num_frames=4))
        make = lambda b: _shard_tables(rng, *b, dim, per_video, video_of, clip_index, clip_ids, vids, paths)  # noqa: E731
        nxt = gen.submit(make, bounds[0])
        for i in range(len(bounds)):
            t0 = time.perf_counter()
            clips, videos = nxt.result()
            out["generate_wait_s"] += time.perf_counter() - t0
            if i + 1 < len(bounds):
                nxt = gen.submit(make, bounds[i + 1])
            t0 = time.perf_counter()
            lib.commit(clips, videos, run_id="bench", refresh_catalog=False)
            out["commit_s"] += time.perf_counter() - t0
            if (i + 1) % 20 == 0:
                print(f"  committed {i + 1}/{len(bounds)} shards", flush=True)
        t0 = time.perf_counter()
        lib.refresh_catalog()
        out["catalog_s"] = time.perf_counter() - t0
    out["shards"] = len(bounds)
    out["catalog_mib"] = lib.catalog_path.stat().st_size / 2**20
    return out


def rss_mib() -> tuple[float, float]:
    """(anonymous, file-backed) resident memory of this process now, MiB. File-backed pages are
    the memory-mapped vector cache and index files: the kernel can drop them; anonymous
    memory (heap: arrays, DuckDB, FAISS) is what must fit."""
    kv = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            kv[k] = v.strip()
    return int(kv["RssAnon"].split()[0]) / 1024, int(kv["RssFile"].split()[0]) / 1024


class PeakMemory:
    """Peak anonymous resident memory of this process over a ``with`` block (sampled every 50 ms)."""

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, rss_mib()[0])
            self._stop.wait(0.05)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, rss_mib()[0])


def pct(xs: list[float]) -> str:
    return f"p50 {np.percentile(xs, 50):7.2f} ms  p99 {np.percentile(xs, 99):7.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="clips in the synthetic library")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--library", default=None, help="library folder (default /tmp/vidsearch-bench-N)")
    ap.add_argument("--phase", choices=("build", "index", "search", "all"), default="all",
                    help="run one phase only (each in its own process gives per-phase peak RSS)")
    ap.add_argument("--factory", default=None, help="FAISS factory (default: automatic choice)")
    ap.add_argument("--memory-budget", default=None, help="index memory budget, e.g. 1G (default: IndexCfg's)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the index even if one exists")
    ap.add_argument("--no-gpu", action="store_true", help="build the index on the CPU only")
    ap.add_argument("--shard-rows", type=int, default=65536)
    ap.add_argument("--model", default="internvideo2-tiny", help="model whose text encoding is timed ('' = skip)")
    ap.add_argument("--nprobe", type=int, default=None, help="override the tuned IVF nprobe at search time")
    ap.add_argument("--ef", type=int, default=None, help="override the tuned HNSW efSearch at search time")
    ap.add_argument("--overfetch-boost", type=float, default=None,
                    help="override SearchCfg.overfetch_boost (nprobe/efSearch widening of over-fetch)")
    ap.add_argument("--exact-subset-max", type=int, default=None, help="override SearchCfg.exact_subset_max")
    ap.add_argument("--skip-index", action="store_true", help="use the existing index as it is")
    ap.add_argument("--no-recall", action="store_true", help="skip the exact filtered search (recall@10)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.library or f"/tmp/vidsearch-bench-{args.n}")
    out: dict = {"n": args.n, "dim": args.dim, "cpus": os.cpu_count(),
                 "cpus_usable": len(os.sched_getaffinity(0)), "machine": platform.processor() or platform.machine()}
    lib = Library(root)
    if args.phase in ("build", "all") and not lib.exists():
        t0 = time.perf_counter()
        with PeakMemory() as mem:
            out["build"] = build_library(root, args.n, args.dim, 0, args.shard_rows)
        out["library_build_s"] = time.perf_counter() - t0
        out["build_peak_anon_mib"] = mem.peak_mib
        b = out["build"]
        print(f"library: {args.n} clips in {b['shards']} shards built in {out['library_build_s']:.0f} s at {root} "
              f"(commits {b['commit_s']:.0f} s, waiting for data {b['generate_wait_s']:.0f} s, one catalog "
              f"build {b['catalog_s']:.0f} s, catalog {b['catalog_mib']:.0f} MiB); peak anonymous RSS "
              f"{mem.peak_mib:.0f} MiB", flush=True)
    if args.phase in ("index", "all"):
        if args.skip_index:
            out["index"] = load_index(lib).meta.report
        else:
            from dataclasses import replace

            cfg = IndexCfg(factory=args.factory, use_gpu=not args.no_gpu)
            if args.memory_budget:
                from vidsearch.commands.index import _bytes

                cfg = replace(cfg, memory_budget_bytes=_bytes(args.memory_budget))
            t0 = time.perf_counter()
            with lib.lock(), PeakMemory() as mem:
                report = update_index(lib, cfg, rebuild=args.rebuild,
                                      progress=lambda m: print(f"  {time.perf_counter() - t0:6.1f} s  {m}", flush=True))
            print(report.format())
            out["index"] = report.to_dict()
            out["index_peak_anon_mib"] = mem.peak_mib
            print(f"index phase: peak anonymous RSS {mem.peak_mib:.0f} MiB (file-backed now "
                  f"{rss_mib()[1]:.0f} MiB)", flush=True)
    if args.phase in ("search", "all"):
        with PeakMemory() as mem:
            search_phase(lib, args, out)
        out["search_peak_anon_mib"] = mem.peak_mib
        print(f"search phase: peak anonymous RSS {mem.peak_mib:.0f} MiB", flush=True)
        if args.model:  # after the searcher's memory was measured: the model is not part of it
            try:
                out["encode_ms"] = time_text_encode(args.model)
            except Exception as e:  # noqa: BLE001 - the rest of the benchmark is still worth having
                print(f"text encode not timed: {type(e).__name__}: {e}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


def _stand_in_vocab() -> str:
    """A WordPiece vocabulary of bert-large-uncased's size (30522) for timing the text tower
    without downloading the real one: texts are padded to the context length, so the cost of
    encoding does not depend on which ids the words get."""
    import tempfile

    words = ["a", "dog", "playing", "in", "the", "snow"]
    special = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    toks = special + words + [f"tok{i}" for i in range(30522 - len(special) - len(words))]
    path = Path(tempfile.mkdtemp(prefix="vidsearch-vocab-")) / "vocab.txt"
    path.write_text("\n".join(toks) + "\n")
    return str(path)


def time_text_encode(name: str) -> dict[str, float]:
    """p50/p99 ms of one-query ``encode_text`` with model ``name``, on the CPU (and on CUDA in
    bf16 when there is a GPU). ``internvideo2-s2-1b`` is timed with random weights, the real
    text tower (BERT-large, 19 layers, 40 tokens) and a one-block vision tower (not used here)."""
    import torch

    from vidsearch.models import create_model

    kw: dict = {}
    if name == "internvideo2-s2-1b":
        # No download (retries cost a minute offline): the vocabulary VIDSEARCH_TOKENIZER names,
        # else a stand-in of bert-large-uncased's size.
        kw = {"pretrained": False, "vision_depth": 1,
              "tokenizer": os.environ.get("VIDSEARCH_TOKENIZER") or _stand_in_vocab()}
    model = create_model(name, **kw)
    out: dict[str, float] = {}
    threads = torch.get_num_threads()
    # All CPU threads; 2 threads (a 2-core machine, approximately); CUDA bf16 when present.
    devices = ["cpu"] + (["cpu2"] if threads > 2 else []) + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        torch.set_num_threads(2 if dev == "cpu2" else threads)
        if dev == "cuda":
            model.to(device="cuda", dtype=torch.bfloat16)
        model.encode_text(["warm up"])
        enc = []
        for i in range(50):
            t0 = time.perf_counter()
            v = model.encode_text([f"a dog playing in the snow {i}"])
            v.cpu()  # the vector is needed on the host: this also waits for the GPU
            enc.append((time.perf_counter() - t0) * 1e3)
        where = {"cpu": f"{threads} CPU threads", "cpu2": "2 CPU threads", "cuda": "CUDA bf16"}[dev]
        print(f"text encode ({name}, {where}): {pct(enc)}", flush=True)
        out[f"{dev}_p50"], out[f"{dev}_p99"] = float(np.percentile(enc, 50)), float(np.percentile(enc, 99))
    return out


def search_phase(lib: Library, args: argparse.Namespace, out: dict) -> None:
    """Query latency per stage and recall@10 against exact (filtered) search."""
    cases = {
        "no filter": Filters(),
        "~50% (--where)": Filters(where="clips.clip_id % 1000 < 500"),
        "~5% (--path glob)": Filters(path_glob="/bench/folder07/*"),
        "~0.5% (--where)": Filters(where="clips.clip_id % 1000 < 5"),
    }
    out["cases"] = {}
    t0 = time.perf_counter()
    over = {k: v for k, v in (("overfetch_boost", args.overfetch_boost),
                               ("exact_subset_max", args.exact_subset_max)) if v is not None}
    searcher = Searcher(lib, cfg=SearchCfg(**over), record_history=False)
    out["searcher_open_s"] = time.perf_counter() - t0
    with searcher:
        assert searcher.index is not None
        store = searcher.index.vectors
        t0 = time.perf_counter()
        store.open_all()  # hash-check every vector file now, not inside the first queries
        out["vector_cache_open_s"] = time.perf_counter() - t0
        out["searcher_rss_mib"] = rss_mib()
        print(f"Searcher open {out['searcher_open_s']:.1f} s (index {searcher.index.meta.factory}, "
              f"{searcher.index.ntotal} vectors), vector cache hash-checked in {out['vector_cache_open_s']:.1f} s; "
              f"RSS anonymous/file-backed {out['searcher_rss_mib'][0]:.0f}/{out['searcher_rss_mib'][1]:.0f} MiB",
              flush=True)
        if args.nprobe:
            searcher.index.meta.search_params["nprobe"] = args.nprobe
        if args.ef:
            searcher.index.meta.search_params["efSearch"] = args.ef
        out["search_params"] = dict(searcher.index.meta.search_params)
        print("search params:", out["search_params"])
        # Queries: stored clip embeddings plus noise (streamed from the cache, never all of it).
        rng = np.random.default_rng(1)
        n = store.n
        qpos = rng.choice(n, args.queries, replace=False)
        order = np.argsort(qpos)
        qs = np.empty((args.queries, args.dim), np.float32)
        qs[order] = store.take_rows(qpos[order])
        qs += 0.35 * rng.standard_normal((args.queries, args.dim)).astype(np.float32) / np.sqrt(args.dim)
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
        store_ids, _ = store.store_order()
        # Filter results are cached per Searcher: time the cold path (cache cleared before each
        # query: what a new filter costs) and the cached path (the same filter again).
        runs = [r for name, f in cases.items()
                for r in ([(name, f, False)] if f.is_empty() else [(name, f, False), (name + " cached", f, True)])]
        for name, f, cached in runs:
            mask = in_sorted(store_ids, searcher.matching_ids(f)) if not f.is_empty() else None
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
            sel = float(mask.mean()) if mask is not None else 1.0
            rec = None
            if not args.no_recall and not cached:
                # Exact filtered top-10 of all queries, streamed over the vector cache's shards.
                _, truth = exact_topk(store, qs, 10, mask)
                rec = float(np.mean([len(set(tr[tr >= 0].tolist()) & g) / 10
                                     for tr, g in zip(truth, got, strict=True)]))
            elif cached:
                rec = out["cases"].get(name.removesuffix(" cached"), {}).get("recall_at_10")
            print(f"{name:25s} sel {sel:6.2%} via {','.join(sorted(strategies)):14s} "
                  f"ANN+filter total {pct(t['total'])} | filter {np.percentile(t['filter'], 50):.2f} "
                  f"ann {np.percentile(t['ann'], 50):.2f} db {np.percentile(t['db'], 50):.2f} (p50 ms) "
                  f"| recall@10 {'n/a' if rec is None else format(rec, '.3f')} | load {os.getloadavg()[0]:.2f}",
                  flush=True)
            out["cases"][name] = {"selectivity": sel, "strategies": sorted(strategies),
                                  "recall_at_10": rec, "load1": os.getloadavg()[0],
                                  **{f"{k}_p50_ms": float(np.percentile(v, 50)) for k, v in t.items()},
                                  **{f"{k}_p99_ms": float(np.percentile(v, 99)) for k, v in t.items()}}


if __name__ == "__main__":
    main()
