"""``vidsearch sql``: read-only SQL over a library's catalog and search history."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  vidsearch sql "SELECT codec, round(sum(duration_s)/3600, 2) AS hours FROM videos GROUP BY codec" --library L
  vidsearch sql "SELECT * FROM failures" --library L --csv
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sql", help="read-only SQL over videos, clips, failures, runs, searches, search_results",
        description="Run one SELECT on the library's tables. Writes, ATTACH, COPY, SET, INSTALL/LOAD "
                    "and reading files or URLs are refused.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sql", help="one SELECT statement")
    p.add_argument("--library", required=True, help="library folder")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    fmt.add_argument("--json", action="store_true", help="JSON (list of row objects) on stdout")
    p.add_argument("--timeout", type=float, default=30.0, help="interrupt the query after this many seconds")
    p.add_argument("--max-width", type=int, default=60, help="cut table cells longer than this")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import math

    from vidsearch.cli import UserError
    from vidsearch.library import Library
    from vidsearch.search.sandbox import QueryFailed, QueryRefused
    from vidsearch.search.sql import format_rows, run_sql, to_csv_rows, to_json_rows

    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise UserError("--timeout must be a positive number of seconds")
    lib = Library(args.library)
    lib.read_manifest()
    try:
        table = run_sql(lib, args.sql, timeout_s=args.timeout)
    except (QueryRefused, QueryFailed) as e:
        raise UserError(str(e)) from None
    if args.json:
        print(to_json_rows(table))
    elif args.csv:
        sys.stdout.write(to_csv_rows(table))
    else:
        print(format_rows(table, args.max_width))
    return 0
