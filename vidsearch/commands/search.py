"""``vidsearch search``: ranked, time-stamped clips for a text query or an example clip.

When a ``vidsearch serve`` of the same library is running, a plain search is sent to it (its
model is loaded and warm: milliseconds instead of seconds); see :mod:`vidsearch.search.remote`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from typing import Any

from vidsearch.commands import add_library_argument


def _time(text: str) -> float:
    from vidsearch.search.timefmt import TimeFormatError, parse_time

    try:
        return parse_time(text)
    except TimeFormatError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from None


def _pos_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return v


def _nonneg_int(text: str) -> int:
    if text.strip() == "0":
        return 0
    return _pos_int(text)


def _clip_id(text: str) -> int:
    from vidsearch.search.types import BadClipId, parse_clip_id

    try:
        return parse_clip_id(text)
    except BadClipId as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _min_score(text: str) -> float | None:
    """A cosine threshold, or ``off`` (None: keep every hit, even below the model's default)."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a score: {text!r} (a number, or 'off')") from None
    if not -1.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"scores are cosine similarities in [-1, 1]: {text!r}")
    return v


def add_min_score_argument(p: argparse.ArgumentParser) -> None:
    """``--min-score SCORE|off`` (shared by ``search`` and ``eval``); read it with :func:`min_score_from_args`."""
    p.add_argument("--min-score", type=_min_score, default=argparse.SUPPRESS, metavar="SCORE",
                   help="leave out picture hits scoring below SCORE (the cosine; speech and screen-text hits "
                        "are not cut by it), and say 'no good match' when nothing is left (default for text "
                        "queries: the model's min_score, e.g. 0.9 for internvideo2-demo, none where it was not "
                        "measured; 'off' keeps every hit)")


def min_score_from_args(args: argparse.Namespace) -> float | None:
    """The searcher's ``min_score``: -1 for 'off' (no cosine is lower), None for the model's default."""
    if "min_score" not in args:
        return None
    return -1.0 if args.min_score is None else float(args.min_score)


def _modalities(text: str) -> tuple[str, ...] | None:
    from vidsearch.search.types import SearchError, parse_modalities

    try:
        return parse_modalities(text)
    except SearchError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_modalities_argument(p: argparse.ArgumentParser) -> None:
    """``--in visual,speech,screen`` (shared by ``search`` and ``eval``)."""
    p.add_argument("--in", dest="modalities", type=_modalities, default=None, metavar="MODALITIES",
                   help="what to search, comma-separated: visual (the pictures), speech (what is said: speech "
                        "transcripts and subtitles), screen (text on screen), or all (default: every one the "
                        "library has, fused into one ranked list)")


def add_filter_arguments(p: argparse.ArgumentParser) -> None:
    """The metadata filters of ``search`` (shared by ``eval``); read them with :func:`filters_from_args`."""
    g = p.add_argument_group("filters (values are bound parameters, never pasted into SQL)")
    g.add_argument("--path", dest="path_glob", default=None, help="GLOB over the video path, e.g. '*/pets/*'")
    g.add_argument("--folder", default=None,
                   help="videos under this folder: '/media/pets' (absolute) or 'pets' (at any depth)")
    g.add_argument("--min-duration", type=_time, default=None, help="video at least this long (s or HH:MM:SS)")
    g.add_argument("--max-duration", type=_time, default=None, help="video at most this long")
    g.add_argument("--date-from", type=_date, default=None, help="file date (mtime, UTC) on or after YYYY-MM-DD")
    g.add_argument("--date-to", type=_date, default=None, help="file date (mtime, UTC) on or before YYYY-MM-DD")
    g.add_argument("--from", dest="from_s", type=_time, default=None,
                   help="only clips after this time inside the video")
    g.add_argument("--to", dest="to_s", type=_time, default=None,
                   help="only clips before this time inside the video")
    g.add_argument("--where", default=None,
                   help="SQL predicate over clips/videos columns, e.g. \"codec = 'h264' AND width >= 1280\" "
                        "(qualify shared names: videos.path, clips.run_id)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search", help="search a library by text or by example clip",
        description="Ranked moments (merged adjacent clips) for a text query: found in the pictures, in "
                    "what is said (speech transcripts, subtitles) and in text on screen, fused into one list "
                    "(--in chooses). A search is sent to a running `vidsearch serve` of the same library when "
                    "there is one (its model is already loaded); otherwise the text encoder is loaded here.")
    p.add_argument("query", nargs="?", default=None, help="what to look for, e.g. 'dog playing in snow'")
    add_library_argument(p)
    p.add_argument("-k", "--k", type=_pos_int, default=10, help="number of results (moments; default 10)")
    p.add_argument("--offset", type=_nonneg_int, default=0, help="skip this many results (paging; default 0)")
    add_modalities_argument(p)
    add_min_score_argument(p)
    add_filter_arguments(p)
    s = p.add_argument_group("shaping")
    s.add_argument("--per-video", type=_pos_int, default=None, help="at most N results per video")
    s.add_argument("--no-merge", action="store_true", help="do not merge adjacent hits into moments")
    s.add_argument("--merge-gap", type=float, default=None, help="merge hits closer than this (s; default 2)")
    s.add_argument("--max-moment", type=float, default=None, help="longest merged moment (s; default 30)")
    s.add_argument("--merge-margin", type=float, default=None,
                   help="merge only hits scoring within this of the moment's best clip (default 0.05; "
                        "a negative value merges regardless of score)")
    e = p.add_argument_group("query by example")
    e.add_argument("--like", type=_clip_id, default=None, metavar="CLIP_ID", help="clips similar to this clip")
    e.add_argument("--video", default=None, metavar="FILE", help="a video of the library (with --at)")
    e.add_argument("--at", type=_time, default=None, help="time in --video, e.g. 00:01:20")
    p.add_argument("--rerank", type=_nonneg_int, default=0, metavar="N",
                   help="re-score the top N results with the InternVideo2 ITM head (decodes their frames)")
    o = p.add_argument_group("output")
    fmt = o.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON on stdout (clip ids as strings)")
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    o.add_argument("--parquet", default=None, metavar="FILE", help="also write the results to a Parquet file")
    o.add_argument("--export", default=None, metavar="FILE|DIR/",
                   help="also write the hits for editing software, the format by extension: .edl (CMX 3600 "
                        "with Resolve markers), .fcpxml (Final Cut Pro X, Resolve), .xml (Premiere Pro / FCP7), "
                        ".otio (OpenTimelineIO), .csv (Resolve edit index); a folder (ending in /) gets one "
                        ".mp4 per hit (stream copy where the hit starts on a keyframe, else re-encoded)")
    o.add_argument("--thumbnails", action="store_true", help="extract a jpg per hit into LIBRARY/thumbs/")
    o.add_argument("--open", nargs="?", const="auto", choices=("auto", "mpv", "ffplay"), default=None,
                   help="print a command that plays each hit (mpv or ffplay; 'auto': whichever is installed)")
    m = p.add_argument_group("model")
    m.add_argument("--checkpoint", default=None, help="weights file/folder (default: as for ingest)")
    m.add_argument("--tokenizer", default=None, help="tokenizer vocab file/folder")
    m.add_argument("--device", default=None, help="torch device for the text encoder (default cpu)")
    p.add_argument("--timeout", type=float, default=30.0, help="limit for the --where query (s; default 30)")
    p.add_argument("--no-history", action="store_true", help="do not record this search in history.duckdb")
    p.add_argument("--no-server", action="store_true",
                   help="search in this process even if a `vidsearch serve` of the library is running")
    p.set_defaults(func=run)


def filters_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~vidsearch.search.types.Filters` of the filter arguments, checked (UserError otherwise)."""
    from vidsearch.search.types import Filters, SearchError

    f = Filters(path_glob=args.path_glob, folder=args.folder, min_duration_s=args.min_duration,
                max_duration_s=args.max_duration, date_from=args.date_from, date_to=args.date_to,
                from_s=args.from_s, to_s=args.to_s, where=args.where)
    try:
        f.check()
    except SearchError as e:
        from vidsearch.cli import UserError

        raise UserError(str(e)) from None
    return f


def _remote_eligible(args: argparse.Namespace) -> bool:
    """A search the web API answers exactly as this process would (same options, same output)."""
    from vidsearch.search.remote import can_ask

    local_only = (args.no_server, args.rerank, args.video is not None, args.thumbnails, args.open,
                  args.no_history, args.merge_gap is not None, args.max_moment is not None,
                  args.merge_margin is not None, args.checkpoint, args.tokenizer, args.device)
    return not any(local_only) and can_ask(k=args.k, offset=args.offset, query=args.query, where=args.where)


def _try_server(args: argparse.Namespace, filters: Any, min_score: float | None) -> Any:
    """The result from a running server of this library, or None (then search locally)."""
    import logging

    from vidsearch.search.remote import find_server, remote_search

    server = find_server(args.library)
    if server is None:
        return None
    try:
        return remote_search(server, query=args.query, like_clip_id=args.like, k=args.k, offset=args.offset,
                             filters=filters, per_video=args.per_video, merge=not args.no_merge,
                             min_score=min_score, modalities=args.modalities)
    except (OSError, ValueError, KeyError, TypeError) as e:
        from vidsearch.search.types import SearchError

        if isinstance(e, SearchError):
            raise  # the server refused the request itself (a bad --where): the same answer here
        logging.getLogger(__name__).warning("%s failed (%s); searching in this process", server.url, e)
        return None


def run(args: argparse.Namespace) -> int:
    from vidsearch.cli import UserError
    from vidsearch.search.types import SearchError

    given = sum(x is not None for x in (args.query, args.like, args.video))
    if given != 1:
        raise UserError("give exactly one of QUERY, --like CLIP_ID or --video FILE --at TIME")
    if (args.video is None) != (args.at is None):
        raise UserError("--video and --at go together")
    if args.timeout <= 0 or not math.isfinite(args.timeout):
        raise UserError("--timeout must be a positive number of seconds")
    filters = filters_from_args(args)
    # --min-score SCORE; 'off' keeps everything (-1: no cosine is lower); absent: the model's default.
    min_score = min_score_from_args(args)
    player = None
    if args.open:
        from vidsearch.search.output import find_player

        player = find_player(None if args.open == "auto" else args.open)
        if player is None:
            want = "mpv or ffplay" if args.open == "auto" else args.open
            raise UserError(f"--open: no video player found ({want} is not on PATH); install mpv or ffplay")
    if args.parquet:
        from pathlib import Path

        target = Path(args.parquet).expanduser()
        if target.is_dir() or not target.absolute().parent.is_dir():
            raise UserError(f"--parquet {args.parquet}: give a file name in an existing folder (not a directory)")

    export_to = None
    if args.export:
        from vidsearch.library import Library
        from vidsearch.search.export import ExportError
        from vidsearch.search.hit_export import export_target

        try:  # before searching: a bad destination costs nothing
            export_to = export_target(args.export, Library(args.library))
        except ExportError as e:
            raise UserError(f"--export: {e}") from None

    result = None
    sources: dict[str, Any] | None = None
    try:
        if _remote_eligible(args):
            result = _try_server(args, filters, min_score)
        if result is None:
            result, paths, thumbs, said, sources = _search_here(args, filters, min_score, player,
                                                                export_to is not None)
        else:
            paths, thumbs, said = {}, {}, set()
    except SearchError as e:
        raise UserError(str(e)) from None
    code = _print(args, result, paths, thumbs, player, said)
    if export_to is not None:
        _export(args, result, export_to, sources)
    return code


def _export(args: argparse.Namespace, result: Any, target: Any, sources: dict[str, Any] | None) -> None:
    """Write the result's hits to ``target`` (the ranked hits as shown); lines on stderr with --json/--csv."""
    from vidsearch.cli import UserError
    from vidsearch.library import Library
    from vidsearch.search.export import ExportError
    from vidsearch.search.hit_export import default_title, source_rows, to_export_hits, write_export

    if sources is None:  # answered by a server: the exact paths come from the catalog here
        with Library(args.library).open_catalog_readonly() as reader:
            sources = source_rows(reader.con, [h.video_id for h in result.hits])
    hits, warnings = to_export_hits(result.hits, sources, query=result.query)
    try:
        outcome = write_export(target, hits, title=default_title(result.query, result.like_clip_id))
    except ExportError as e:
        for w in warnings if not args.quiet else ():
            print(f"warning: {w}", file=sys.stderr)
        raise UserError(f"--export: {e}") from None
    side = sys.stderr if args.json or args.csv else sys.stdout
    for w in warnings + outcome.warnings if not args.quiet else ():
        print(f"warning: {w}", file=sys.stderr)
    for line in outcome.lines:
        print(line, file=side)


def _search_here(args: argparse.Namespace, filters: Any, min_score: float | None, player: str | None,
                 export: bool = False) -> tuple[Any, dict[str, str], dict[int, Any], set[str], dict[str, Any] | None]:
    """Search in this process: open the library, load the model if the query is text.

    Returns the result, video paths (for --open), thumbnails, the warnings the searcher already
    logged when it opened the library, and (``export``) the catalog facts of the hits' videos.
    """
    from dataclasses import replace

    from vidsearch.cli import UserError
    from vidsearch.library import Library, LibraryError
    from vidsearch.schemas.config import SearchCfg
    from vidsearch.search import output
    from vidsearch.search.searcher import Searcher

    lib = Library(args.library)
    lib.read_manifest()
    cfg = replace(SearchCfg(), sql_timeout_s=args.timeout)
    if args.merge_gap is not None:
        cfg = replace(cfg, merge_gap_s=args.merge_gap)
    if args.max_moment is not None:
        cfg = replace(cfg, max_moment_s=args.max_moment)
    if args.merge_margin is not None:
        cfg = replace(cfg, merge_score_margin=None if args.merge_margin < 0 else args.merge_margin)
    with Searcher(lib, cfg=cfg, checkpoint=args.checkpoint, tokenizer=args.tokenizer, device=args.device,
                  with_itm=bool(args.rerank), record_history=not args.no_history) as searcher:
        like = args.like
        extra: list[str] = []
        if args.video is not None:
            from vidsearch.schemas.ids import video_fingerprint

            try:
                vid = video_fingerprint(args.video)
            except OSError as e:
                raise UserError(f"{args.video}: {e.strerror or e}") from None
            at = searcher.clip_at(vid, args.at, name=args.video)
            like = at.clip_id
            if at.warning:
                extra.append(at.warning)
        said = set(searcher.warnings)  # logged by the searcher as it opened the library
        result = searcher.search(args.query, like_clip_id=like, k=args.k, filters=filters,
                                 per_video=args.per_video, rerank=args.rerank, offset=args.offset,
                                 merge=not args.no_merge, min_score=min_score, warnings=extra,
                                 modalities=args.modalities)
        paths = output.video_paths(searcher.connection, [h.video_id for h in result.hits]) if player else {}
        thumbs: dict[int, Any] = {}
        if args.thumbnails:
            frames = output.thumbnail_frames(searcher.connection, [h.clip_id for h in result.hits])
            try:
                thumbs = output.make_thumbnails(lib, frames)
            except LibraryError as e:  # thumbs/ read-only or a symlink: one line, exit 1
                raise UserError(f"--thumbnails: {e}") from None
        sources = None
        if export:
            from vidsearch.search.hit_export import source_rows

            sources = source_rows(searcher.connection, [h.video_id for h in result.hits])
    return result, paths, thumbs, said, sources


def _print(args: argparse.Namespace, result: Any, paths: dict[str, str], thumbs: dict[int, Any],
           player: str | None, said: set[str]) -> int:
    from vidsearch.cli import UserError
    from vidsearch.search import output

    if args.parquet:
        try:
            output.write_parquet(result, args.parquet)
        except ValueError as e:
            raise UserError(str(e)) from None
    side = sys.stderr if args.json or args.csv else sys.stdout
    if args.json:
        print(output.to_json(result))
    elif args.csv:
        sys.stdout.write(output.to_csv(result))
    else:
        print(output.format_table(result))
        # Warnings of the library (index, catalog, test model) were logged when it was opened;
        # those of this search, and all of a server's, are said here.
        for w in result.warnings:
            if w not in said and not (result.no_good_match and w.startswith("no good match")):  # in the table
                print(f"warning: {w}", file=sys.stderr)
        print(output.timing_line(result), file=sys.stderr)
    for h in result.hits:
        if thumbs.get(h.clip_id):
            print(f"thumbnail {h.rank}: {thumbs[h.clip_id]}", file=side)
        if player and h.video_id in paths:
            print(output.open_command(h, paths[h.video_id], player), file=side)
    return 0

