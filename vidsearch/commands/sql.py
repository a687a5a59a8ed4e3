"""``vidsearch sql``: read-only SQL over a library's catalog and search history."""

from __future__ import annotations

import argparse
import sys

from vidsearch.commands import add_library_argument

# Useful analytics (also in the README); tests/unit/test_sql_analytics.py runs each one.
ANALYTICS = {
    "hits per folder for the latest search": (
        "SELECT regexp_replace(r.path, '/[^/]*$', '') AS folder, count(*) AS hits, round(max(r.score), 3) AS best "
        "FROM search_results r WHERE r.search_id = (SELECT search_id FROM searches ORDER BY searched_at DESC LIMIT 1) "
        "GROUP BY folder ORDER BY hits DESC"),
    "hours of video per codec": (
        "SELECT codec, count(*) AS videos, round(sum(duration_s) / 3600, 2) AS hours FROM videos "
        "WHERE status IN ('done', 'partial') GROUP BY codec ORDER BY hours DESC"),
    "top videos across all searches": (
        "SELECT v.path, count(*) AS hits, round(avg(r.score), 3) AS mean_score FROM search_results r "
        "JOIN videos v USING (video_id) GROUP BY v.path ORDER BY hits DESC, mean_score DESC LIMIT 10"),
}

EXAMPLES = "examples:\n" + "\n".join(f"  # {name}\n  vidsearch sql \"{sql}\" --library L"
                                     for name, sql in ANALYTICS.items()) + "\n"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sql", help="read-only SQL over videos, clips, failures, runs, searches, search_results",
        description="Run one SELECT on the library's tables. Writes, ATTACH, COPY, SET, INSTALL/LOAD "
                    "and reading files or URLs are refused.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sql", help="one SELECT statement")
    add_library_argument(p)
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
