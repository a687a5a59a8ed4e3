"""``vidsearch doctor``: check a library (shards, catalog, index); ``--fix`` repairs it."""

from __future__ import annotations

import argparse
import sys

from vidsearch.commands import add_break_lock_argument, add_library_argument


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("doctor", help="check a library's shards, catalog and index (--fix repairs)",
                              description="Verify shard SHA-256s, catalog currency and the index against "
                                          "the manifest, and print each problem with the command that fixes "
                                          "it. Without --fix nothing in the library is changed. With --fix, "
                                          "under the writer lock: remove what a killed writer left, set "
                                          "corrupt shards aside, rebuild the catalog and the index.")
    add_library_argument(p)
    p.add_argument("--fix", action="store_true", help="repair what is found (takes the writer lock)")
    add_break_lock_argument(p)
    p.add_argument("--json", action="store_true", help="problems (and repairs) as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from vidsearch.commands.index import writer_error
    from vidsearch.indexer.doctor import diagnose, repair
    from vidsearch.library import Library
    from vidsearch.search.output import escape_display

    lib = Library(args.library)
    problems = diagnose(lib)
    repaired = None
    if args.fix and problems:
        lib.read_manifest()  # not a library: the LibraryError above already said so
        try:
            with lib.lock(break_lock=args.break_lock):
                repaired = repair(lib, progress=lambda msg: print(msg, file=sys.stderr))
        except OSError as e:
            err = writer_error(e, lib.root)
            if err is None:
                raise
            raise err from None
        before, problems = problems, diagnose(lib)
    if args.json:
        out = {"library": str(lib.root), "ok": not problems, "problems": [asdict(p) for p in problems]}
        if repaired is not None:
            out.update(found=[asdict(p) for p in before], repaired=repaired.to_dict())
        print(json.dumps(out, indent=2))
        return 1 if problems else 0
    if repaired is not None:
        for line in repaired.lines():
            print(f"fixed: {escape_display(line)}")
    if not problems:
        print(f"{escape_display(str(lib.root))}: ok")
    for p in problems:
        print(f"problem: {escape_display(p.message)}\n    fix: {escape_display(p.fix)}")
    return 1 if problems else 0
