"""``vidsearch export SEARCH_ID``: a saved search's hits for editing software, or as .mp4 clips.

The hits come from ``history.duckdb`` (what ``vidsearch search`` recorded, in their saved
ranks), read on a locked read-only connection; the files they point at from the catalog's exact
``path_bytes``. A read command: nothing in the library changes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vidsearch.commands import add_library_argument


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="write a saved search's hits as an EDL, FCPXML, FCP7 XML, OTIO or CSV timeline, or as clips",
        description="Write the hits of a search recorded in the library's history (its search_id is in "
                    "`vidsearch search --json`) for editing software: one timeline with the hits back to back "
                    "in rank order. The format comes from --out's extension (.edl .fcpxml .xml .otio .csv) or "
                    "--format; a folder (ending in /, or --format mp4) gets one .mp4 per hit.")
    p.add_argument("search_id", metavar="SEARCH_ID",
                   help="the search's id (32 hex digits, or a unique prefix of at least 4), or 'last'")
    add_library_argument(p)
    p.add_argument("--out", "-o", required=True, metavar="FILE|DIR/",
                   help="the timeline file, or a folder for one .mp4 per hit")
    p.add_argument("--format", default=None, choices=("edl", "fcpxml", "xml", "otio", "csv", "mp4"),
                   help="format (default: from --out's extension; mp4: one clip per hit into the folder --out)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidsearch.cli import UserError
    from vidsearch.library import Library
    from vidsearch.search.export import ExportError
    from vidsearch.search.history import load_search
    from vidsearch.search.hit_export import (
        default_title,
        export_target,
        source_rows,
        to_export_hits,
        write_export,
    )
    from vidsearch.search.sandbox import open_sandbox
    from vidsearch.search.types import SearchError

    lib = Library(args.library)
    lib.read_manifest()  # not a library: one line
    try:
        target = export_target(args.out, lib, args.format)
    except ExportError as e:
        raise UserError(f"--out: {e}") from None
    con = open_sandbox(lib, memory_limit="512MB", threads=1)
    try:
        saved = load_search(con, args.search_id)
        sources = source_rows(con, [h.video_id for h in saved.hits])
    except SearchError as e:
        raise UserError(str(e)) from None
    finally:
        con.close()
    hits, warnings = to_export_hits(saved.hits, sources, query=saved.query)
    for w in warnings if not args.quiet else ():
        print(f"warning: {w}", file=sys.stderr)
    try:
        outcome = write_export(target, hits, title=default_title(saved.query, saved.like_clip_id))
    except ExportError as e:
        raise UserError(f"search {saved.search_id}: {e}") from None
    for w in outcome.warnings if not args.quiet else ():
        print(f"warning: {w}", file=sys.stderr)
    for line in outcome.lines:
        print(line)
    return 0
