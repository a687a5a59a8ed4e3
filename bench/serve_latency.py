"""Query latency of ``vidsearch serve`` under a bounded loopback load test.

Starts ``vidsearch serve --port 0`` on 127.0.0.1 against a library (or first builds a small
tiny-model library with ``--make-tiny DIR``), waits until the text encoder is warm, then sends
``--queries`` text searches (varied phrases, a quarter of them with a folder or duration filter,
some paged) from ``--concurrency`` client threads over HTTP, and prints client-side p50/p99
(and the server's own ``timings_ms.total``). Every reply must be 200.

    python bench/serve_latency.py --make-tiny /tmp/serve_bench             # build + measure
    python bench/serve_latency.py --library ~/vlib --queries 200 --concurrency 4

Measured on the shared 2-core development machine (load average ~7 from other work), tiny model,
3 videos / 13 clips, flat index, k=24, history on (recorded off the request path), 200 queries:

    clients  client p50  client p99  server p50  server p99  throughput
    1        16.0 ms     50.2 ms     9.8 ms      42.5 ms     53 q/s
    4        62.2 ms     138.9 ms    13.1 ms     61.0 ms     57 q/s   (queued on the one searcher lock)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHRASES = ("dog playing in snow", "a goal in football", "sunset over the sea", "people dancing",
           "a car driving at night", "cooking pasta", "a cat on a sofa", "fireworks", "rain on a window",
           "children on a playground", "a plane taking off", "waves on a beach", "a man riding a bike")


def _harness():
    spec = importlib.util.spec_from_file_location("_serve_harness", ROOT / "tests" / "browser" / "harness.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--library", help="an existing library")
    g.add_argument("--make-tiny", metavar="DIR", help="build a small tiny-model library in DIR first")
    ap.add_argument("--queries", type=int, default=200, help="number of queries (bounded load)")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads")
    ap.add_argument("--k", type=int, default=24, help="results per query (the page's default)")
    ap.add_argument("--no-history", action="store_true", help="serve with --no-history")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    h = _harness()
    if args.make_tiny:
        t0 = time.perf_counter()
        lib = h.make_library(Path(args.make_tiny)).root
        print(f"built tiny library {lib} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    else:
        lib = Path(args.library)
    extra = ("--no-history",) if args.no_history else ()
    t0 = time.perf_counter()
    with h.serving(lib, *extra) as server:
        startup = time.perf_counter() - t0
        status = h.get(server.url + "/api/status").json()

        def one(i: int) -> tuple[float, float]:
            params = {"q": f"{PHRASES[i % len(PHRASES)]} {i // len(PHRASES)}", "k": args.k}
            if i % 8 == 1:
                params["folder"] = "travel"
            elif i % 8 == 5:
                params["min_duration"] = "5"
            if i % 10 == 3:
                params["offset"] = args.k
            t = time.perf_counter()
            r = h.get(f"{server.url}/api/search?{urllib.parse.urlencode(params)}")
            dt = (time.perf_counter() - t) * 1e3
            if r.status != 200:
                raise RuntimeError(f"query {i}: HTTP {r.status} {r.body[:200]!r}")
            return dt, float(r.json()["timings_ms"]["total"])

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            res = list(pool.map(one, range(args.queries)))
        wall = time.perf_counter() - t0
    client = [c for c, _ in res]
    server_ms = [s for _, s in res]
    out = {
        "library": str(lib), "clips": status["clips"], "model": status["model"]["name"],
        "index": status["index"], "queries": args.queries, "concurrency": args.concurrency, "k": args.k,
        "history": not args.no_history, "server_startup_s": round(startup, 1),
        "client_ms": {"p50": round(percentile(client, 50), 1), "p99": round(percentile(client, 99), 1),
                      "mean": round(statistics.fmean(client), 1), "max": round(max(client), 1)},
        "server_ms": {"p50": round(percentile(server_ms, 50), 1), "p99": round(percentile(server_ms, 99), 1)},
        "throughput_qps": round(args.queries / wall, 1),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['queries']} queries, {out['concurrency']} clients, k={out['k']}, {out['clips']} clips "
              f"({out['model']}, index {out['index']['kind'] if out['index'] else 'none'}), "
              f"history {'on' if out['history'] else 'off'}; server ready in {out['server_startup_s']} s")
        c, s = out["client_ms"], out["server_ms"]
        print(f"client latency  p50 {c['p50']} ms  p99 {c['p99']} ms  (mean {c['mean']}, max {c['max']})")
        print(f"server search   p50 {s['p50']} ms  p99 {s['p99']} ms   throughput {out['throughput_qps']} q/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
