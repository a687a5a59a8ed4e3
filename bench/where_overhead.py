"""What running user SQL in a worker process costs (issue 10 S4): ``--where`` and ``vidsearch sql``.

User SQL runs in a child process with its own locked DuckDB sandbox (``vidsearch.search.sandbox``)
so that a timeout and a memory cap hold for any expression. This prints, on a synthetic library
(``tests/unit/conftest.py``'s builder, no model), in milliseconds:

- ``worker start``: a new worker until it answers (interpreter, imports, attaching the catalog);
- ``round trip SELECT 1``: a warm worker answering ``SELECT i`` (the pipe, framing and Arrow
  IPC alone);
- ``where, worker``: ``SqlWorker`` evaluating a predicate to sorted clip ids (a different
  predicate each time, so nothing is remembered), header + frames over the pipe included;
- ``where, in process``: the same SQL on an in-process sandbox connection (what the old path
  cost, without its timeout/memory guarantees);
- ``where, remembered``: ``matching_clip_ids`` for a predicate already evaluated (the server's
  second evaluation under its lock, or a repeated filter);
- ``search + where``: ``Searcher.search`` (vector query, k=10) with a new ``where`` each time,
  against the same search without a filter;
- ``sql SELECT 1``: ``run_user_sql`` with its fresh worker per call (``vidsearch sql``).

    python bench/where_overhead.py                 # 3000 clips, 30 repetitions
    python bench/where_overhead.py --clips 100000 --reps 20

Measured on the shared 2-core development machine (load average 9-12 from other work), DuckDB
2.0.1, p50 (p99) in ms:

                          3000 clips, 30 reps     200k clips, 15 reps (predicate keeps ~85%)
    worker start          816 (987)               830 (1178)
    round trip SELECT 1   2.3 (9.8)               1.5 (12)
    where, worker         5.5 (16)                373 (479)
    where, in process     7.7 (10)                342 (572)
    where, remembered     0.04 (0.5)              0.05 (0.5)
    search, no filter     0.24 (0.37)             0.48 (8.6)
    search + where        8.8 (48)                384 (482)
    sql SELECT 1          1167 (1935)             1271 (1544)

The worker adds ~2 ms per predicate once started (the DuckDB query itself dominates past ~10k
clips, in or out of process); its start-up (interpreter + imports + attach) is paid once per
process for --where (the server starts one at launch) and once per `vidsearch sql`.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("_synth", ROOT / "tests" / "unit" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_synth"] = mod
    spec.loader.exec_module(mod)
    return mod.build_synthetic_library


def _times(fn: Callable[[int], object], reps: int) -> list[float]:
    out = []
    for i in range(reps):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _row(name: str, ms: list[float]) -> None:
    ms = sorted(ms)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    print(f"{name:<22} {statistics.median(ms):9.2f} {p99:9.2f} {len(ms):5d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=3000, help="synthetic library size")
    ap.add_argument("--reps", type=int, default=30, help="repetitions per measurement")
    ap.add_argument("--library", default=None, help="use this synthetic library folder (built if missing)")
    args = ap.parse_args()

    from vidsearch.indexer import update_index
    from vidsearch.library import Library
    from vidsearch.search import Searcher
    from vidsearch.search.sandbox import SqlWorker, matching_clip_ids, open_sandbox, run_user_sql

    root = Path(args.library) if args.library else Path(tempfile.mkdtemp(prefix="where_bench_")) / "lib"
    if not (root / "manifest.json").is_file():
        s = _builder()(root, args.clips, seed=3)
        with s.lib.lock():
            update_index(s.lib)
    lib = Library(root)
    n = len(lib.read_manifest().shards)
    print(f"library {root} ({n} shards), {args.reps} reps; milliseconds")
    print(f"{'':<22} {'p50':>9} {'p99':>9} {'n':>5}")

    starts = []
    for _ in range(min(args.reps, 10)):
        w = SqlWorker(lib)
        t = time.perf_counter()
        w.start()
        w.request({"op": "query", "sql": "SELECT 1", "shape": "raw"}, 30)
        starts.append((time.perf_counter() - t) * 1000)
        w.close()
    _row("worker start", starts)

    w = SqlWorker(lib)
    w.start()
    w.request({"op": "ids", "predicate": "clip_index >= 0"}, 30)  # warm: catalog pages, join probe
    _row("round trip SELECT 1", _times(lambda i: w.request({"op": "query", "sql": f"SELECT {i}",
                                                            "shape": "raw"}, 30), args.reps))
    _row("where, worker", _times(lambda i: w.request({"op": "ids", "predicate": f"clip_index >= {i % 7}"
                                                                               f" AND codec <> 'x{i}'"}, 30),
                                 args.reps))
    w.close()

    con = open_sandbox(lib, history=False)
    _row("where, in process", _times(lambda i: np.unique(con.sql(
        f"SELECT clips.clip_id FROM clips JOIN videos USING (video_id) WHERE (clip_index >= {i % 7} "
        f"AND codec <> 'x{i}')").fetchnumpy()["clip_id"]), args.reps))
    con.close()

    matching_clip_ids(lib, "clip_index >= 2")
    _row("where, remembered", _times(lambda i: matching_clip_ids(lib, "clip_index >= 2"), args.reps))

    with Searcher(lib, record_history=False) as s:
        from vidsearch.search import Filters

        q = np.random.default_rng(0).standard_normal(s.manifest.model.embed_dim).astype(np.float32)  # type: ignore[union-attr]
        q /= np.linalg.norm(q)
        s.search(vector=q, k=10)
        _row("search, no filter", _times(lambda i: s.search(vector=q, k=10), args.reps))
        _row("search + where", _times(lambda i: s.search(vector=q, k=10, filters=Filters(
            where=f"clip_index >= {i % 5} AND fps > {i}.5 - {i}")), args.reps))

    _row("sql SELECT 1", _times(lambda i: run_user_sql(lib, "SELECT 1", history=False), min(args.reps, 10)))


if __name__ == "__main__":
    main()
