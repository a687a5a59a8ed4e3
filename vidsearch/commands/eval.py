"""``vidsearch eval``: measure search quality on your own queries, or on MSR-VTT 1k-A.

``vidsearch eval QUERIES.jsonl --library L`` runs every query through the same search as
``vidsearch search`` (same filters, same ``--min-score`` rule) and prints recall@1/5/10, the mean
reciprocal rank and the mean temporal IoU of the right hits (:mod:`vidsearch.search.evaluate`
says what "right" means). ``vidsearch eval --msrvtt DIR`` ingests the MSR-VTT 1k-A test videos
into a library of their own under the official protocol and compares text-to-video recall with
InternVideo2's published figures.

``--in`` chooses the modalities as for ``vidsearch search`` (default: every one the library
has, fused); ``--in visual`` measures the pictures (the model) alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vidsearch.commands import LIBRARY_ENV
from vidsearch.commands.search import (
    add_filter_arguments,
    add_min_score_argument,
    add_modalities_argument,
    filters_from_args,
    min_score_from_args,
)

MSRVTT_DEFAULT_MODEL = "internvideo2-s2-1b"
MSRVTT_LIBRARY = ".vidsearch-lib"
# InternVideo2-s2-1B, MSR-VTT 1k-A zero-shot text-to-video R@1 (%): the model zoo's figure (with
# ITM re-ranking of the dual encoder's top candidates) and the dual encoder's alone (paper tables).
PUBLISHED_R1 = {"with ITM re-ranking": 51.9, "dual encoder": 47.0}
# The clip window of a whole-video clip (one clip per video, frames sampled over all of it).
WHOLE_VIDEO_S = 1.0e6


def _k(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 10:
        raise argparse.ArgumentTypeError("k must be at least 10 (recall@10 looks at 10 hits)")
    return v


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval", help="measure search quality: recall@1/5/10, MRR and temporal IoU of a queries file, or MSR-VTT",
        description="Run each query of QUERIES.jsonl (one JSON object per line: {\"query\": \"...\", \"path\": "
                    "\"video file\", \"start_s\": x, \"end_s\": y}; leave out start_s/end_s to target the whole "
                    "video; relative paths are relative to the file) through `vidsearch search` and score the "
                    "ranked hits: a hit is right when it is in the target video and overlaps the target span. "
                    "With --msrvtt DIR: ingest the MSR-VTT 1k-A test split found in DIR into a library of its "
                    "own (one clip per video, 4 frames, middle sampling, 40-token texts) and report "
                    "text-to-video recall next to InternVideo2's published figures.")
    p.add_argument("queries", nargs="?", default=None, metavar="QUERIES.jsonl", help="the queries file")
    p.add_argument("--library", metavar="DIR", default=None,
                   help=f"library folder (default: ${LIBRARY_ENV}; with --msrvtt: DIR/{MSRVTT_LIBRARY})")
    p.add_argument("--msrvtt", metavar="DIR", default=None,
                   help="MSR-VTT folder: MSRVTT_JSFUSION_test.csv (CLIP4Clip's msrvtt_data) and the videos "
                        "(MSRVTT/videos/all/ or MSRVTT_Videos/)")
    p.add_argument("-k", "--k", type=_k, default=10, help="hits looked at per query (default 10, at least 10)")
    p.add_argument("--json", action="store_true",
                   help="JSON on stdout: n_queries, recall_at_1/5/10, mrr, mean_iou and per-query ranks")
    p.add_argument("--per-query", action="store_true", help="also list each query's rank (table output)")
    add_modalities_argument(p)
    add_min_score_argument(p)
    add_filter_arguments(p)
    m = p.add_argument_group("model")
    m.add_argument("--model", default=None,
                   help=f"model to ingest MSR-VTT with (--msrvtt only; default {MSRVTT_DEFAULT_MODEL})")
    m.add_argument("--checkpoint", default=None, help="weights file/folder (default: as for ingest)")
    m.add_argument("--tokenizer", default=None, help="tokenizer vocab file/folder")
    m.add_argument("--device", default=None, help="torch device (default: cpu for queries; ingest: cuda if present)")
    m.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="ingest executor for --msrvtt (default ray)")
    p.add_argument("--timeout", type=float, default=30.0, help="limit for the --where query (s; default 30)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidsearch.cli import UserError

    if (args.queries is None) == (args.msrvtt is None):
        raise UserError("give a QUERIES.jsonl file or --msrvtt DIR (one of them)")
    if args.model and not args.msrvtt:
        raise UserError("--model is for --msrvtt (a library is searched with the model it was built with)")
    if not args.timeout > 0:
        raise UserError("--timeout must be a positive number of seconds")
    filters = filters_from_args(args)
    if args.msrvtt:
        return _msrvtt(args, filters)
    library = args.library or os.environ.get(LIBRARY_ENV)
    if not library:
        raise UserError(f"give --library DIR (or set {LIBRARY_ENV})")
    from vidsearch.search.evaluate import read_queries

    queries = read_queries(args.queries)
    report, extra = _evaluate(args, library, queries, filters, min_score_from_args(args))
    _print(args, report, extra)
    return 0


def _evaluate(args: argparse.Namespace, library: str | os.PathLike[str], queries: list[Any], filters: Any,
              min_score: float | None) -> tuple[Any, dict[str, Any]]:
    """Search every query in ``library`` and score the hits; the report and facts for the output."""
    from dataclasses import replace

    from vidsearch.cli import UserError
    from vidsearch.library import Library
    from vidsearch.schemas.config import SearchCfg
    from vidsearch.search.evaluate import EvalHit, evaluate
    from vidsearch.search.hit_export import source_rows
    from vidsearch.search.searcher import Searcher
    from vidsearch.search.types import SearchError

    lib = Library(library)
    lib.read_manifest()
    cfg = replace(SearchCfg(), sql_timeout_s=args.timeout)
    say = _Progress(quiet=args.quiet or args.json)
    with Searcher(lib, cfg=cfg, checkpoint=args.checkpoint, tokenizer=args.tokenizer, device=args.device,
                  record_history=False) as searcher:
        queries, unknown = _resolve_targets(searcher.connection, queries)
        if unknown:
            first = queries[unknown[0]]
            _warn(args, f"{len(unknown)} of {len(queries)} queries name a video the library does not hold "
                        f"(first: line {first.line}, {_line(first.path)}); they count as misses")
        paths: dict[str, str] = {}

        def search(text: str, k: int) -> list[EvalHit]:
            try:
                res = searcher.search(text, k=k, filters=filters, min_score=min_score, modalities=args.modalities)
            except SearchError as e:
                raise UserError(str(e)) from None
            missing = [h.video_id for h in res.hits if h.video_id not in paths]
            if missing:  # exact file paths (path_bytes), as the queries file names them
                paths.update({v: r.path for v, r in source_rows(searcher.connection, missing).items()})
            return [EvalHit(paths.get(h.video_id, h.path), h.start_s, h.end_s, h.video_id) for h in res.hits]

        t0 = time.monotonic()
        report = evaluate(queries, search, k=args.k, progress=say.progress)
        extra = {"library": str(lib.root), "model": searcher.manifest.model.name if searcher.manifest.model else None,
                 "seconds": round(time.monotonic() - t0, 3), "targets_not_in_library": len(unknown)}
    return report, extra


def _resolve_targets(con: Any, queries: list[Any]) -> tuple[list[Any], list[int]]:
    """Each query with the ``video_id`` of its target file (by exact path, else by real path), and
    the positions of queries whose target the library does not hold."""
    from dataclasses import replace

    from vidsearch.schemas.tables import SEARCHABLE_STATUSES
    from vidsearch.search.sandbox import run_query

    t = run_query(con, "SELECT video_id, path_bytes FROM videos WHERE status IN (SELECT unnest(?::VARCHAR[]))",
                  [list(SEARCHABLE_STATUSES)])
    by_path: dict[str, str] = {}
    for vid, raw in zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True):
        p = os.fsdecode(raw)
        by_path.setdefault(os.path.normpath(p), vid)
        by_path.setdefault(os.path.realpath(p), vid)
    out, unknown = [], []
    for i, q in enumerate(queries):
        ids = [t.video_id or by_path.get(t.path) or by_path.get(os.path.realpath(t.path)) for t in q.targets()]
        if not any(ids):
            unknown.append(i)
        out.append(replace(q, video_id=ids[0], also=tuple(replace(t, video_id=v) for t, v in zip(q.also, ids[1:],
                                                                                               strict=True))))
    return out, unknown


class _Progress:
    """A line on stderr every 10 s for long evaluations (none when quiet or for short runs)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.t0, self.last = quiet, time.monotonic(), time.monotonic()

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.quiet and now - self.last >= 10.0 and done < total:
            self.last = now
            print(f"  {done}/{total} queries ({now - self.t0:.0f} s)", file=sys.stderr)


def _print(args: argparse.Namespace, report: Any, extra: dict[str, Any]) -> None:
    if args.json:
        doc = report.to_dict()
        doc.update(extra)
        print(json.dumps(doc, indent=2))
        return
    print(format_report(report))
    if extra.get("published"):
        for line in extra["published"]:
            print(line)
    if args.per_query:
        print("\nrank  query (target)")
        for o in report.per_query:
            span = "" if o.start_s is None else f" {o.start_s:g}-{o.end_s:g} s"
            rank = "-" if o.rank is None else str(o.rank)
            print(f"{rank:>4}  {_line(o.query)}  ({_line(o.path)}{span})")


def _line(text: str) -> str:
    from vidsearch.search.export import clean_text

    return clean_text(text)


def format_report(report: Any) -> str:
    """The figures as a small table (what ``vidsearch eval`` and ``vidsearch demo`` print)."""
    n = report.n_queries

    def count(at: int) -> int:
        return sum(o.rank is not None and o.rank <= at for o in report.per_query)

    found = sum(o.iou is not None for o in report.per_query)
    iou = "-" if report.mean_iou is None else f"{report.mean_iou:.3f}"
    return "\n".join([
        f"queries            {n}",
        f"recall@1           {report.recall_at_1:.3f}  ({count(1)}/{n})",
        f"recall@5           {report.recall_at_5:.3f}  ({count(5)}/{n})",
        f"recall@10          {report.recall_at_10:.3f}  ({count(10)}/{n})",
        f"MRR                {report.mrr:.3f}",
        f"mean temporal IoU  {iou}  (over the {found} queries with a right hit in the top {report.k})",
    ])


def _msrvtt(args: argparse.Namespace, filters: Any) -> int:
    """MSR-VTT 1k-A: ingest the test videos (official protocol), then text-to-video recall."""
    from dataclasses import replace

    from vidsearch.cli import UserError
    from vidsearch.pipeline.runner import IngestOptions, run_ingest
    from vidsearch.schemas.config import IngestCfg
    from vidsearch.search.evaluate import MSRVTT_PROTOCOL, official_pre_text, read_msrvtt

    if not filters.is_empty():
        raise UserError("filters do not apply to --msrvtt (the protocol searches all 1000 test videos)")
    if "min_score" in args:
        raise UserError("--min-score does not apply to --msrvtt (the protocol ranks every video)")
    if args.modalities not in (None, ("visual",)):
        raise UserError("--msrvtt measures text-to-video retrieval by the pictures (--in visual)")
    args.modalities = ("visual",)
    root = Path(args.msrvtt).expanduser().absolute()
    queries = read_msrvtt(root)
    # The official eval cleans captions (pre_text) and truncates them to 40 tokens (the model's
    # context length); the video is one clip: 4 frames at the middles of 4 equal segments, bicubic.
    queries = [replace(q, query=official_pre_text(q.query) or q.query) for q in queries]
    library = Path(args.library).expanduser() if args.library else root / MSRVTT_LIBRARY
    model = args.model or MSRVTT_DEFAULT_MODEL
    overrides = {"sampling": MSRVTT_PROTOCOL["sampling"], "interpolation": "bicubic"}
    _check_protocol(args, model, overrides)
    videos = sorted({q.path for q in queries})
    if not args.quiet and not args.json:
        print(f"MSR-VTT 1k-A: {len(queries)} queries over {len(videos)} videos; ingesting into {library} "
              f"with {model} (one clip per video, {MSRVTT_PROTOCOL['frames']} frames, middle sampling, bicubic)",
              file=sys.stderr)
    cfg = IngestCfg(segment="fixed", clip_seconds=WHOLE_VIDEO_S, stride=WHOLE_VIDEO_S)
    opts = IngestOptions(model=model, checkpoint=args.checkpoint, tokenizer=args.tokenizer, device=args.device,
                         executor=args.executor, progress=not (args.quiet or args.json), model_overrides=overrides)
    summary = run_ingest(videos, library, cfg, opts)
    if summary.exit_code != 0:
        _warn(args, f"{summary.videos_failed} videos failed to ingest (`vidsearch status --library {library}`); "
                    "they count as misses, so the figures are not comparable with published ones")
    report, extra = _evaluate(args, library, queries, filters, -1.0)
    extra["dataset"] = "MSR-VTT 1k-A (JSFusion test split)"
    extra["protocol"] = {**MSRVTT_PROTOCOL, "interpolation": "bicubic", "text": "official pre_text"}
    extra["published_r1_internvideo2_s2_1b"] = PUBLISHED_R1
    r1 = 100 * report.recall_at_1
    note = "" if model == MSRVTT_DEFAULT_MODEL else f" (published figures are for {MSRVTT_DEFAULT_MODEL}, not {model})"
    extra["published"] = [
        "",
        f"text->video R@1 {r1:.1f}  R@5 {100 * report.recall_at_5:.1f}  R@10 {100 * report.recall_at_10:.1f}"
        f"  ({model}, dual encoder, cosine ranking)",
        f"published InternVideo2-s2-1B R@1: {PUBLISHED_R1['with ITM re-ranking']} with ITM re-ranking, "
        f"~{PUBLISHED_R1['dual encoder']:.0f} dual encoder{note}",
    ]
    if report.n_queries != MSRVTT_PROTOCOL["queries"]:
        extra["published"].append(f"note: {report.n_queries} queries, not the split's 1000: not comparable")
    _print(args, report, extra)
    return 2 if summary.exit_code == 2 else 0


def _warn(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"warning: {text}", file=sys.stderr)


def _check_protocol(args: argparse.Namespace, model: str, overrides: dict[str, Any]) -> None:
    """The model exists and takes 4 frames and 40-token texts (the protocol), else a warning."""
    from vidsearch.models.registry import get_model_config
    from vidsearch.search.evaluate import MSRVTT_PROTOCOL

    cfg = get_model_config(model, **overrides)  # ValueError (user error) for an unknown model
    frames, tokens = cfg.preprocess.num_frames, cfg.encoder.text.context_length
    if (frames, tokens) != (MSRVTT_PROTOCOL["frames"], MSRVTT_PROTOCOL["max_text_tokens"]):
        _warn(args, f"{model} takes {frames} frames and {tokens}-token texts; the protocol is "
                    f"{MSRVTT_PROTOCOL['frames']} and {MSRVTT_PROTOCOL['max_text_tokens']}: not comparable with "
                    "published figures")
