"""Commit cost over a long ingest: time per commit, catalog refresh time and process RSS.

    python bench/commit_scaling.py                       # 10,000 videos x 30 clips, 512-d
    python bench/commit_scaling.py --videos 2000 --policy every

Feeds ``--videos`` synthetic settled videos (``--clips`` clips each, random L2-normalised
``--dim`` embeddings) through the real :class:`vidsearch.pipeline.write.ShardWriter` into a new
library, exactly as ingest does (shard pairs of ``--shard-rows`` clips via ``Library.commit``),
and times every commit and every catalog refresh. The only work between commits is building the
videos, so the figures are the writer's own cost, not decode or embedding.

``--policy`` picks the catalog refresh of the writer:

- ``every``: refresh the catalog inside every commit (the behaviour before the adaptive writer);
- ``adaptive``: the ShardWriter default: a refresh once at least ``--refresh-interval`` seconds and
  10x the previous refresh's duration have passed, and one at the end of the run;
- ``both``: one run of each, in that order (separate libraries).

Prints, per tenth of the run: mean commit time (catalog refresh included when it happened in that
commit), refreshes and their mean time, catalog size and RSS; then totals. ``--json`` writes every
per-commit figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vidsearch.library import Library
from vidsearch.pipeline.types import ClipSpan, ProbeInfo, VideoTask
from vidsearch.pipeline.write import PendingVideo, ShardWriter, video_row
from vidsearch.schemas.manifest import ModelInfo
from vidsearch.schemas.tables import STATUS_DONE


def rss_mib() -> float:
    """Resident set size of this process now (MiB), from /proc."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_video(i: int, clips: int, dim: int, rng: np.random.Generator, run_id: str) -> PendingVideo:
    """One settled video of ``clips`` 4-s clips at 30 fps with random unit embeddings."""
    path = f"/bench/folder{i % 20:02d}/video_{i:07d}.mp4".encode()
    task = VideoTask(path, path.decode(), f"{i:032x}", 10_000_000,
                     dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    probe = ProbeInfo("mp4", "mov", "h264", 1280, 720, 1280, 720, 0, 30.0, clips * 120,
                      clips * 120, clips * 4.0, 1)
    spans = [ClipSpan(c, c * 120, c * 120 + 120, c * 4.0, c * 4.0 + 4.0, (c * 120, c * 120 + 30,
                      c * 120 + 60, c * 120 + 90), (c * 4.0, c * 4.0 + 1, c * 4.0 + 2, c * 4.0 + 3),
                      False, "fixed") for c in range(clips)]
    emb = rng.standard_normal((clips, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    row = video_row(task, status=STATUS_DONE, run_id=run_id, attempts=1, probe=probe, coverage=1.0,
                    num_clips=clips)
    return PendingVideo(row=row, clips=spans, embeddings=emb)


def run(policy: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """One ingest-like run into a fresh library at ``root``; returns per-commit figures."""
    lib = Library(root)
    commits: list[dict[str, Any]] = []
    refreshes: list[float] = []
    state = {"refresh_s": 0.0}
    real_refresh = lib.refresh_catalog

    def timed_refresh(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = real_refresh(*a, **kw)
        dt_s = time.perf_counter() - t0
        refreshes.append(dt_s)
        state["refresh_s"] += dt_s
        return out

    lib.refresh_catalog = timed_refresh  # type: ignore[method-assign]
    model = ModelInfo(name="synthetic", fingerprint=f"bench-{args.dim}", embed_dim=args.dim, num_frames=4)
    rng = np.random.default_rng(0)
    params = inspect.signature(ShardWriter).parameters
    kw: dict[str, Any] = {}
    if policy == "every":
        if "catalog_refresh_s" in params:  # the adaptive writer, told to refresh at every commit
            kw = {"catalog_refresh_s": 0.0, "refresh_overhead": 0.0}
    elif "catalog_refresh_s" not in params:
        raise SystemExit("this checkout's ShardWriter has no adaptive catalog refresh; use --policy every")
    else:
        kw = {"catalog_refresh_s": args.refresh_interval}
    t_start = time.perf_counter()
    with lib.lock():
        lib.init(model)
        writer = ShardWriter(lib, model, "bench", args.shard_rows, 1e9, **kw)
        real_flush = writer.flush

        def timed_flush() -> None:
            # What ingest pays per commit: the shard pair, the manifest, a catalog refresh if due.
            before, rows = state["refresh_s"], writer.pending_clips
            t0 = time.perf_counter()
            real_flush()
            if rows:
                commits.append({"commit_s": time.perf_counter() - t0,
                                "refresh_in_commit_s": state["refresh_s"] - before, "rows": rows,
                                "t": time.perf_counter() - t_start, "rss_mib": rss_mib(),
                                "catalog_mib": lib.catalog_path.stat().st_size / 2**20
                                if lib.catalog_path.exists() else 0.0})

        writer.flush = timed_flush  # type: ignore[method-assign]
        for i in range(args.videos):
            writer.add(make_video(i, args.clips, args.dim, rng, "bench"))
        n_before = len(refreshes)
        t0 = time.perf_counter()
        if hasattr(writer, "finish"):
            writer.finish()  # the last commit and the end-of-run refresh (adaptive writer)
        else:
            writer.flush()
        end_s = time.perf_counter() - t0
        end_refreshes = len(refreshes) - n_before
    wall = time.perf_counter() - t_start
    current = lib.catalog_is_current()
    return {"policy": policy, "wall_s": wall, "commits": commits, "refreshes": refreshes,
            "end_of_run_s": end_s, "end_refreshes": end_refreshes,
            "catalog_current_at_end": current, "peak_rss_mib": peak_rss_mib(),
            "catalog_mib": lib.catalog_path.stat().st_size / 2**20,
            "clips": args.videos * args.clips}


def report(r: dict[str, Any]) -> None:
    c = r["commits"]
    n = len(c)
    print(f"\npolicy {r['policy']}: {n} commits, {len(r['refreshes'])} catalog refreshes, "
          f"{r['clips']} clips, wall {r['wall_s']:.1f} s")
    print(f"{'commits':>13s} {'commit ms':>10s} {'max ms':>8s} {'refresh ms':>11s} {'refreshes':>9s} "
          f"{'catalog MiB':>11s} {'RSS MiB':>8s}")
    for b in range(10):
        part = c[b * n // 10:(b + 1) * n // 10]
        if not part:
            continue
        ref = [x["refresh_in_commit_s"] for x in part if x["refresh_in_commit_s"] > 0]
        print(f"{b * n // 10 + 1:>6d}-{(b + 1) * n // 10:<6d} "
              f"{1e3 * np.mean([x['commit_s'] for x in part]):10.1f} "
              f"{1e3 * max(x['commit_s'] for x in part):8.1f} "
              f"{1e3 * np.mean(ref) if ref else 0.0:11.1f} {len(ref):9d} "
              f"{part[-1]['catalog_mib']:11.1f} {part[-1]['rss_mib']:8.0f}")
    commit_total = sum(x["commit_s"] for x in c)
    refresh_total = sum(r["refreshes"])
    last = r["refreshes"][-1] if r["refreshes"] else 0.0
    print(f"end of run (last commit + final refresh): {r['end_of_run_s']:.2f} s")
    print(f"total: commits {commit_total:.1f} s (of which catalog refresh {refresh_total:.1f} s = "
          f"{refresh_total / r['wall_s']:.1%} of wall), last refresh {1e3 * last:.0f} ms, "
          f"catalog current at end: {r['catalog_current_at_end']}, catalog {r['catalog_mib']:.1f} MiB, "
          f"RSS first/last commit {c[0]['rss_mib']:.0f}/{c[-1]['rss_mib']:.0f} MiB, "
          f"peak {r['peak_rss_mib']:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--clips", type=int, default=30, help="clips per video")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shard-rows", type=int, default=4096, help="clips per commit (IngestCfg.shard_rows)")
    ap.add_argument("--refresh-interval", type=float, default=5.0,
                    help="adaptive policy: minimum seconds between refreshes (ingest uses its commit "
                         "interval, 60 s by default; shorter here because this loop commits much faster "
                         "than an ingest)")
    ap.add_argument("--policy", choices=("every", "adaptive", "both"), default="both")
    ap.add_argument("--dir", default=None, help="parent folder for the libraries (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the libraries")
    ap.add_argument("--json", default=None, help="write all per-commit figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.policy == "both":
        # One process per policy: peak RSS and allocator state must not carry over.
        for policy in ("every", "adaptive"):
            argv = [*sys.argv[1:], "--policy", policy]  # the last --policy / --json win
            if args.json:
                argv += ["--json", str(Path(args.json).with_suffix(f".{policy}.json"))]
            subprocess.run([sys.executable, __file__, *argv], check=True)
        return
    parent = Path(args.dir or tempfile.mkdtemp(prefix="vidsearch-commit-bench-"))
    results = []
    for policy in (args.policy,):
        root = parent / f"lib-{policy}"
        shutil.rmtree(root, ignore_errors=True)
        r = run(policy, args, root)
        report(r)
        results.append(r)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": results}, indent=1))
    if not args.keep and args.dir is None:
        shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    main()
