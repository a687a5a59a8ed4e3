"""``vidsearch search``: ranked, time-stamped clips for a text query or an example clip."""

from __future__ import annotations

import argparse
import math
import sys

from vidsearch.commands import add_library_argument


def _nonneg_float(text: str) -> float:
    from vidsearch.search.timefmt import parse_time

    return parse_time(text)


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
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a clip id: {text!r}") from None
    if not 0 <= v < 2**63:
        raise argparse.ArgumentTypeError(f"not a clip id: {text!r}")
    return v


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("search", help="search a library by text or by example clip",
                              description="Ranked moments (merged adjacent clips) for a text query.")
    p.add_argument("query", nargs="?", default=None, help="what to look for, e.g. 'dog playing in snow'")
    add_library_argument(p)
    p.add_argument("-k", "--k", type=_pos_int, default=10, help="number of results (moments)")
    p.add_argument("--offset", type=_nonneg_int, default=0, help="skip this many results (paging)")
    g = p.add_argument_group("filters (values are bound parameters, never pasted into SQL)")
    g.add_argument("--path", dest="path_glob", default=None, help="GLOB over the video path, e.g. '*/pets/*'")
    g.add_argument("--min-duration", type=_nonneg_float, default=None, help="video at least this long (s or HH:MM:SS)")
    g.add_argument("--max-duration", type=_nonneg_float, default=None, help="video at most this long")
    g.add_argument("--from", dest="from_s", type=_nonneg_float, default=None,
                   help="only clips after this time inside the video")
    g.add_argument("--to", dest="to_s", type=_nonneg_float, default=None,
                   help="only clips before this time inside the video")
    g.add_argument("--where", default=None,
                   help="SQL predicate over clips/videos columns, e.g. \"codec = 'h264' AND width >= 1280\" "
                        "(qualify shared names: videos.path, clips.run_id)")
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
    e.add_argument("--at", type=_nonneg_float, default=None, help="time in --video, e.g. 00:01:20")
    p.add_argument("--rerank", type=_nonneg_int, default=0, metavar="N",
                   help="re-score the top N results with the InternVideo2 ITM head (decodes their frames)")
    o = p.add_argument_group("output")
    fmt = o.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON on stdout")
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    o.add_argument("--parquet", default=None, metavar="FILE", help="also write the results to a Parquet file")
    o.add_argument("--thumbnails", action="store_true", help="extract a jpg per hit into LIBRARY/thumbs/")
    o.add_argument("--open", nargs="?", const="mpv", choices=("mpv", "ffplay"), default=None,
                   help="print a command that plays each hit (mpv or ffplay)")
    m = p.add_argument_group("model")
    m.add_argument("--checkpoint", default=None, help="weights file/folder (default: as for ingest)")
    m.add_argument("--tokenizer", default=None, help="tokenizer vocab file/folder")
    m.add_argument("--device", default=None, help="torch device for the text encoder (default cpu)")
    p.add_argument("--timeout", type=float, default=30.0, help="limit for the --where query (s)")
    p.add_argument("--no-history", action="store_true", help="do not record this search in history.duckdb")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vidsearch.cli import UserError
    from vidsearch.library import Library
    from vidsearch.schemas.config import SearchCfg
    from vidsearch.search import output
    from vidsearch.search.sandbox import QueryFailed, QueryRefused
    from vidsearch.search.searcher import Filters, Searcher, SearchError

    given = sum(x is not None for x in (args.query, args.like, args.video))
    if given != 1:
        raise UserError("give exactly one of QUERY, --like CLIP_ID or --video FILE --at TIME")
    if (args.video is None) != (args.at is None):
        raise UserError("--video and --at go together")
    if args.timeout <= 0 or not math.isfinite(args.timeout):
        raise UserError("--timeout must be a positive number of seconds")
    if args.parquet:
        from pathlib import Path

        target = Path(args.parquet).expanduser()
        if target.is_dir() or not target.absolute().parent.is_dir():
            raise UserError(f"--parquet {args.parquet}: give a file name in an existing folder (not a directory)")
    lib = Library(args.library)
    lib.read_manifest()
    cfg = replace(SearchCfg(), sql_timeout_s=args.timeout)
    if args.merge_gap is not None:
        cfg = replace(cfg, merge_gap_s=args.merge_gap)
    if args.max_moment is not None:
        cfg = replace(cfg, max_moment_s=args.max_moment)
    if args.merge_margin is not None:
        cfg = replace(cfg, merge_score_margin=None if args.merge_margin < 0 else args.merge_margin)
    filters = Filters(path_glob=args.path_glob, min_duration_s=args.min_duration,
                      max_duration_s=args.max_duration, from_s=args.from_s, to_s=args.to_s, where=args.where)
    try:
        with Searcher(lib, cfg=cfg, checkpoint=args.checkpoint, tokenizer=args.tokenizer, device=args.device,
                      with_itm=bool(args.rerank), record_history=not args.no_history) as searcher:
            like = args.like
            if args.video is not None:
                from vidsearch.schemas.ids import video_fingerprint

                try:
                    vid = video_fingerprint(args.video)
                except OSError as e:
                    raise UserError(f"{args.video}: {e.strerror or e}") from None
                like = searcher.clip_at(vid, args.at)
            result = searcher.search(args.query, like_clip_id=like, k=args.k, filters=filters,
                                     per_video=args.per_video, rerank=args.rerank, offset=args.offset,
                                     merge=not args.no_merge)
            paths = output.video_paths(searcher.connection, [h.video_id for h in result.hits]) \
                if (args.thumbnails or args.open) else {}
            thumbs = output.make_thumbnails(lib, result.hits, paths) if args.thumbnails else {}
    except (SearchError, QueryRefused, QueryFailed) as e:
        raise UserError(str(e)) from None
    if args.parquet:
        try:
            output.write_parquet(result, args.parquet)
        except ValueError as e:
            raise UserError(str(e)) from None
    if args.json:
        print(output.to_json(result))
    elif args.csv:
        sys.stdout.write(output.to_csv(result))
    else:
        print(output.format_table(result))
        t = result.timings_ms
        print(f"{len(result.hits)} results in {t.get('total', 0):.0f} ms "
              f"(encode {t.get('encode', 0):.0f}, filter {t.get('filter', 0):.0f}, ann {t.get('ann', 0):.1f}, "
              f"db {t.get('db', 0):.1f}) via {result.strategy}", file=sys.stderr)
    for h in result.hits:
        if args.thumbnails and thumbs.get(h.clip_id):
            print(f"thumbnail {h.rank}: {thumbs[h.clip_id]}", file=sys.stderr if args.json or args.csv else sys.stdout)
        if args.open and h.video_id in paths:
            print(output.open_command(h, paths[h.video_id], args.open),
                  file=sys.stderr if args.json or args.csv else sys.stdout)
    return 0
