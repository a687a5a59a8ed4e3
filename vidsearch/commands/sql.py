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


TERMINAL_WIDTH = 60


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sql", help="read-only SQL over videos, clips, failures, runs, transcripts, text_status, screen_text, "
                   "tags, tag_sets, searches, search_results",
        description="Run one SELECT on the library's tables. Writes, ATTACH, COPY, SET, INSTALL/LOAD "
                    "and reading files or URLs are refused.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sql", help="one SELECT statement")
    add_library_argument(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    fmt.add_argument("--json", action="store_true", help="JSON (list of row objects) on stdout")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="stop the query after this many seconds (default 30)")
    p.add_argument("--memory-limit", default="2GB",
                   help="memory the query may use, e.g. 2GB or 512MiB (default 2GB); past it the query is ended")
    p.add_argument("--max-width", type=int, default=None,
                   help=f"cut table cells longer than this many characters (paths keep their end); default "
                        f"{TERMINAL_WIDTH} on a terminal, no limit otherwise; 0: no limit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import math

    from vidsearch.cli import UserError
    from vidsearch.library import Library
    from vidsearch.search.sandbox import QueryFailed, QueryRefused, size_bytes
    from vidsearch.search.sql import format_rows, run_sql, to_csv_rows, to_json_rows

    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise UserError("--timeout must be a positive number of seconds")
    if args.max_width is not None and args.max_width < 0:
        raise UserError("--max-width must be 0 (no limit) or a positive number of characters")
    try:
        size_bytes(args.memory_limit)
    except ValueError as e:
        raise UserError(f"--memory-limit: {e}") from None
    lib = Library(args.library)
    lib.read_manifest()
    try:
        table = run_sql(lib, args.sql, timeout_s=args.timeout, memory_limit=args.memory_limit,
                        shape="json" if args.json else "text")
    except (QueryRefused, QueryFailed) as e:
        raise UserError(str(e)) from None
    if args.json:
        _write(to_json_rows(table) + "\n")
    elif args.csv:
        _write(to_csv_rows(table))
    else:
        width = args.max_width if args.max_width is not None else (TERMINAL_WIDTH if sys.stdout.isatty() else 0)
        _write(format_rows(table, width) + "\n")
    return 0


def _write(text: str, chunk: int = 1 << 16) -> None:
    # In pieces: one huge write() into a pipe whose reader left (`| head`) can end as a short
    # write that Python does not report; the next piece then raises BrokenPipeError, which the
    # CLI turns into a quiet exit.
    for i in range(0, len(text), chunk):
        sys.stdout.write(text[i:i + chunk])
