"""``vidsearch demo``: see vidsearch find the right moment, offline, in about a minute on a CPU."""

from __future__ import annotations

import argparse
import shlex
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="generate a small video library, ingest, index and search it with the demo model",
        description="Generate demo videos of coloured shapes (known content), ingest them with the "
                    "built-in demo model internvideo2-demo (no download, no GPU), build the FAISS "
                    "index, run a few searches and mark each hit right or wrong against the ground "
                    "truth. Rerunning reuses what is already there.")
    p.add_argument("--library", default="vidsearch-demo",
                   help="demo folder: the library, with the generated videos in world/ (default ./vidsearch-demo)")
    p.add_argument("--videos", type=int, default=24, help="number of generated videos (default 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated world and queries (default 0)")
    p.add_argument("--queries", type=int, default=6, help="example searches to run (default 6)")
    p.add_argument("-k", type=int, default=3, help="results shown per search (default 3)")
    p.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="ingest executor: ray (default, as vidsearch ingest) or local (no Ray)")
    p.add_argument("--device", default=None, help="embedding device (default: cuda when present, else cpu)")
    p.set_defaults(func=run)


def _checkpoint_flag() -> str:
    """`` --checkpoint <shipped weights>`` when the model hub cannot find the packaged weights alone.

    Older ``vidsearch.models.hub`` versions resolve ``builtin:`` only for vocabularies; then the
    next commands must name the weights file (the SHA-256 is still checked against the registry).
    """
    from vidsearch.demo.model import DEMO_MODEL, weights_path
    from vidsearch.models import WeightsNotFoundError, get_model_config
    from vidsearch.models.hub import resolve_checkpoint

    try:
        resolve_checkpoint(get_model_config(DEMO_MODEL))
    except WeightsNotFoundError:
        return f" --checkpoint {shlex.quote(str(weights_path()))}"
    return ""


def run(args: argparse.Namespace) -> int:
    from vidsearch.cli import UserError
    from vidsearch.demo.run import run_demo

    if args.videos < 1 or args.queries < 1 or args.k < 1:
        raise UserError("--videos, --queries and -k must be positive")
    print("vidsearch demo: the demo model internvideo2-demo is a tiny InternVideo2-architecture model "
          "trained only on generated shapes videos; it is NOT the real InternVideo2.\n")
    report = run_demo(args.library, videos=args.videos, seed=args.seed, queries=args.queries, k=args.k,
                      executor=args.executor, device=args.device, say=print)
    ev = report.evaluation
    lib = shlex.quote(str(report.library))
    queries = shlex.quote(str(report.queries_file))
    ck = _checkpoint_flag()
    example = shlex.quote(report.outcomes[0].query.text) if report.outcomes else "'a red circle moving to the left'"
    in_folder = report.folder_example or ("a red circle moving to the left", "studio")
    spoken = report.speech_query.query.text if report.speech_query else "recorded in the park"
    n = ev.n_queries
    r1 = sum(o.rank == 1 for o in ev.per_query)
    r5 = sum(o.rank is not None and o.rank <= 5 for o in ev.per_query)
    print(f"\nvidsearch eval of these {n} queries (their scenes are in {queries}), the pictures alone "
          f"(--in visual: the demo model): recall@1 {ev.recall_at_1:.2f} ({r1}/{n}), recall@5 {ev.recall_at_5:.2f} "
          f"({r5}/{n}), MRR {ev.mrr:.2f} ({report.clips} clips, {report.timings_s['total']:.0f} s in all).")
    if report.evaluation_all is not None:
        ea = report.evaluation_all
        print(f"With what is said fused in (--in {','.join(report.modalities)}, the default; the narrator describes "
              f"some scenes in words): recall@1 {ea.recall_at_1:.2f}, recall@5 {ea.recall_at_5:.2f}, MRR {ea.mrr:.2f}.")
    print(f"""
Next, try:
  vidsearch search {example} --library {lib}{ck}
  vidsearch search {shlex.quote(in_folder[0])} --library {lib}{ck} --folder {shlex.quote(in_folder[1])}
  vidsearch search --like CLIP_ID --library {lib}            # more like a clip (ids: --json)
  vidsearch search {shlex.quote(spoken)} --library {lib} --in speech   # what is said: speech and subtitles
  vidsearch sql "SELECT path, count(*) AS clips FROM clips GROUP BY path ORDER BY path" --library {lib}
  vidsearch sql "SELECT path, round(start_s, 1) AS at_s, source, text FROM transcripts JOIN videos \\
USING (video_id) ORDER BY 1, 2" --library {lib}   # what is said: speech and subtitles
  vidsearch status --library {lib}
  vidsearch eval {queries} --library {lib}{ck} --in visual   # recall@1/5/10, MRR, temporal IoU
  vidsearch search {example} --library {lib}{ck} --export hits.edl   # or .fcpxml .xml .otio .csv, or clips/
The world's ground truth (scene times and captions) is in {shlex.quote(str(report.world.root / 'world.json'))}.

The demo model knows shapes, colours, counts and motions; it knows nothing else. For real videos
use InternVideo2 (3 GB, gated on Hugging Face; a GPU is recommended):
  hf auth login              # after accepting the licence of OpenGVLab/InternVideo2-Stage2_1B-224p-f4
  vidsearch weights download internvideo2-s2-1b         # checkpoint + vocabulary into the HF cache
  vidsearch ingest ~/videos --library ~/vlib            # --model internvideo2-s2-1b is the default
  vidsearch search 'dog playing in the snow' --library ~/vlib""")
    return 0 if report.ingest_exit_code == 0 else report.ingest_exit_code
