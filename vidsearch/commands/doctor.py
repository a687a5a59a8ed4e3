"""``vidsearch doctor``: check a library (shards, catalog, index) and say how to fix it."""

from __future__ import annotations

import argparse

from vidsearch.commands import add_library_argument


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("doctor", help="check a library's shards, catalog and index",
                              description="Verify shard SHA-256s, catalog currency and the index against "
                                          "the manifest; print each problem with the command that fixes it.")
    add_library_argument(p)
    p.add_argument("--json", action="store_true", help="problems as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from vidsearch.indexer.doctor import diagnose
    from vidsearch.library import Library
    from vidsearch.search.output import escape_display

    lib = Library(args.library)
    problems = diagnose(lib)
    if args.json:
        print(json.dumps({"library": str(lib.root), "ok": not problems,
                          "problems": [asdict(p) for p in problems]}, indent=2))
    elif not problems:
        print(f"{escape_display(str(lib.root))}: ok")
    else:
        for p in problems:
            print(f"problem: {escape_display(p.message)}\n    fix: {escape_display(p.fix)}")
    return 1 if problems else 0
