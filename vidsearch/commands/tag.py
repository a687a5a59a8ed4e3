"""``vidsearch tag``: zero-shot labels for every clip, as a catalog table ``tags`` (a writer command)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vidsearch.commands import add_library_argument


def _top(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= v <= 1000:
        raise argparse.ArgumentTypeError(f"--top must be 1 .. 1000, got {text!r}")
    return v


def _share(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"--min-score is a share between 0 and 1, got {text!r}")
    return v


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tag", help="zero-shot labels for every clip (a label list, or the builtin Kinetics-400), into the table tags",
        description="Score every clip against a list of labels with the library's own model (each label written "
                    "into several prompts, 'a video of ...', and the embeddings averaged) and keep each clip's "
                    "best labels in the catalog table tags(clip_id, video_id, label, score, rank). A score is the "
                    "softmax over the label set of 100 x cosine: the share of the model's belief that this label, "
                    "rather than another of the set, describes the clip, so one --min-score means the same for "
                    "every label (it depends on the label set: adding near-synonyms lowers scores). Rerunning "
                    "tags only clips added since; another label set, --top or --min-score replaces the tags.",
        epilog="example: vidsearch tag --library L --labels kinetics400 && vidsearch sql \"SELECT label, "
               "count(DISTINCT video_id) AS videos FROM tags GROUP BY 1 ORDER BY 2 DESC\" --library L")
    add_library_argument(p)
    p.add_argument("--labels", required=True, metavar="FILE|kinetics400",
                   help="a UTF-8 file with one label per line ('#' starts a comment), or a builtin list: kinetics400")
    p.add_argument("--top", type=_top, default=5, metavar="K", help="labels kept per clip (default 5)")
    p.add_argument("--min-score", type=_share, default=0.0, metavar="S",
                   help="keep only labels scoring at least S, a share of the label set's probability in 0..1 "
                        "(default 0: always the top K)")
    p.add_argument("--template", action="append", default=None, metavar="TEXT",
                   help="a prompt with {} where the label goes (repeat for several; default: CLIP's seven "
                        "Kinetics 'a video of ...' prompts, made for actions; for objects try --template "
                        "'a video of {}.')")
    m = p.add_argument_group("model")
    m.add_argument("--checkpoint", default=None, help="weights file/folder (default: as for ingest)")
    m.add_argument("--tokenizer", default=None, help="tokenizer vocab file/folder")
    m.add_argument("--device", default=None, help="torch device for the text encoder (default: cpu, NumPy)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidsearch.library import Library
    from vidsearch.search.tagging import label_source, tag_library
    from vidsearch.search.tags import VIDEO_TEMPLATES

    labels, source = label_source(args.labels)
    lib = Library(args.library)
    lib.read_manifest()

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr)

    rep = tag_library(lib, labels, source=source, top_k=args.top, min_score=args.min_score,
                      templates=tuple(args.template) if args.template else VIDEO_TEMPLATES,
                      checkpoint=args.checkpoint, tokenizer=args.tokenizer, device=args.device,
                      say=say)
    print(f"vidsearch tag: label set {rep.tagset} ({rep.n_labels} labels from {rep.labels}"
          f"{', embeddings cached' if rep.embeddings_cached else ''})")
    if rep.clips_tagged:
        print(f"  tagged    {rep.clips_tagged} clips: {rep.rows} tags in {rep.commits} commit"
              f"{'s' if rep.commits != 1 else ''} ({rep.seconds:.1f} s)")
    else:
        print(f"  nothing to do: all {rep.clips_already} clips already carry this label set's tags")
    if rep.replaced:
        print(f"  replaces  label set {rep.replaced} (its tags are no longer in the table tags)")
    if rep.top_labels:
        print("  most common labels (videos): " + ", ".join(f"{label} ({n})" for label, n in rep.top_labels[:5]))
    return 0
