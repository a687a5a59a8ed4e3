"""``vidsearch index``: build, extend or rebuild the FAISS index of a library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vidsearch.commands import add_break_lock_argument, add_library_argument


def _bytes(text: str) -> int:
    """Parse ``4G`` / ``512M`` / ``1000000`` into bytes (argparse type)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4G, 512M)") from None


def writer_error(e: OSError, root: Path) -> Exception | None:
    """A refused or failed write (read-only library, D3; full disk) as a one-line library error."""
    from vidsearch.library.base import writer_os_error

    return writer_os_error(e, root)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("index", help="build or update the FAISS index of a library",
                              description="Build the index from the library's shards, add shards "
                                          "committed since the last build, or rebuild it.")
    add_library_argument(p)
    p.add_argument("--rebuild", action="store_true", help="retrain and rebuild from all shards")
    p.add_argument("--factory", default=None,
                   help="FAISS factory string overriding the automatic choice (e.g. 'IVF4096,Flat', 'HNSW32')")
    p.add_argument("--memory-budget", type=_bytes, default=None, help="index memory budget (default 4G)")
    p.add_argument("--target-recall", type=float, default=None,
                   help="recall@10 that nprobe/efSearch are tuned to reach (default 0.95)")
    p.add_argument("--no-gpu", action="store_true", help="do not use GPU FAISS even when present")
    add_break_lock_argument(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vidsearch.indexer import update_index
    from vidsearch.library import Library
    from vidsearch.schemas.config import IndexCfg

    lib = Library(args.library)
    lib.read_manifest()  # a clear error if this is not a library, before taking the lock
    cfg = IndexCfg()
    if args.factory:
        cfg = replace(cfg, factory=args.factory)
    if args.memory_budget:
        cfg = replace(cfg, memory_budget_bytes=args.memory_budget)
    if args.target_recall:
        cfg = replace(cfg, target_recall=args.target_recall)
    if args.no_gpu:
        cfg = replace(cfg, use_gpu=False)
    try:
        with lib.lock(break_lock=args.break_lock):
            lost = lib.quarantine_bad_shards()  # F10: the index is built from intact shards only
            if lost:
                print(f"set aside {len(lost)} missing or corrupt shard(s) in quarantine/; their videos are "
                      "re-ingested by the next `vidsearch ingest`", file=sys.stderr)
            if not lib.catalog_is_current():
                print("refreshing catalog.duckdb from the shards", file=sys.stderr)
                lib.refresh_catalog()
            report = update_index(lib, cfg, rebuild=args.rebuild,
                                  progress=lambda msg: print(msg, file=sys.stderr))
    except OSError as e:
        err = writer_error(e, lib.root)
        if err is None:
            raise
        raise err from None
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format())
    return 0
