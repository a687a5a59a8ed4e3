"""Decode-stage micro-benchmark on CPU: decoded frames/s and clips/s per decode worker.

    python bench/make_corpus.py /tmp/c1080 --height 1080 --videos 2 --seconds 20 --jobs 2
    python bench/decode_rate.py /tmp/c1080 --workers 1,2 --repeat 3
    VIDSEARCH_DECODER=decord python bench/decode_rate.py /tmp/c1080   # the decord reader, for A/B
    python bench/decode_rate.py /tmp/c1080 --inprocess --repeat 5       # one worker, CPU time too

Runs the real decode stage (``DecodeWorker`` children: probe + segment + decode + resize to the
model's input size), one driver thread per worker as the runners do, with ``--workers`` children
at once; the children are started before the clock starts. Each worker takes every
``workers``-th video (``--files-per-worker`` repeats the corpus so that every worker has work).

Reported per run (median of ``--repeat`` runs, all runs listed):

* ``clips_per_s`` and ``video_s_per_s`` of the whole pool;
* ``frames_per_s``: frames the decoder had to go through (up to the last sampled frame of each
  video) per second, for the pool and ``per_worker`` (the number that scales with cores);
* ``plan_s`` / ``decode_s``: summed worker time spent in plan (probe + segment) and decode calls;
* ``frames_per_child_cpu_s``: the same frames per CPU-second used by the decode children (their
  start-up and one warm-up probe included), a figure less sensitive to other load than the clock.

The machine's load (``os.getloadavg``) is recorded before and after: other processes on the same
cores make the numbers lower, so compare runs taken under the same load. With N cores, N workers
(or N-1 next to the embedder) is the configuration that the ingest runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def run_once(files: list[Path], workers: int, cfg: Any, pp: Any, chunk: int) -> dict[str, float]:
    from vidsearch.pipeline.decode import DecodeWorker
    from vidsearch.pipeline.discover import make_task
    from vidsearch.pipeline.types import ChunkRequest, VideoError

    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    pool = [DecodeWorker(cfg, pp) for _ in range(workers)]
    for w in pool:
        w.setup()
    def feed(k: int) -> dict[str, float]:
        w = pool[k]
        st = {"clips": 0, "video_s": 0.0, "frames": 0, "plan_s": 0.0, "decode_s": 0.0, "failed": 0}
        for f in files[k::workers]:
            t = time.perf_counter()
            plan = w.plan(make_task(os.fsencode(f)))  # type: ignore[arg-type]
            st["plan_s"] += time.perf_counter() - t
            if isinstance(plan, VideoError):
                st["failed"] += 1
                continue
            n = len(plan.clips)
            t = time.perf_counter()
            for lo in range(0, n, chunk):
                out = w.decode(ChunkRequest(plan.task, lo, min(n, lo + chunk), n))
                if isinstance(out, VideoError):
                    st["failed"] += 1
                    break
                st["clips"] += len(out.kept)
            st["decode_s"] += time.perf_counter() - t
            st["video_s"] += plan.probe.duration_s
            st["frames"] += max(i for c in plan.clips for i in c.frame_indices) + 1
        return st

    # Warm-up: each child imports its libraries on the first job; a plan of the first file
    # (not timed) pays that outside the measurement.
    with cf.ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda w: w.plan(make_task(os.fsencode(files[0]))), pool))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(workers) as ex:
        parts = list(ex.map(feed, range(workers)))
    el = time.perf_counter() - t0
    for w in pool:
        w.close()
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the (joined) children, start-up and warm-up included: less sensitive to other
    # load on the machine than the wall clock.
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    tot = {k: sum(p[k] for p in parts) for k in parts[0]}
    return {"seconds": el, "clips": tot["clips"], "failed": tot["failed"], "child_cpu_s": cpu_s,
            "frames_per_child_cpu_s": tot["frames"] / cpu_s,
            "clips_per_s": tot["clips"] / el, "video_s_per_s": tot["video_s"] / el,
            "frames_per_s": tot["frames"] / el, "frames_per_s_per_worker": tot["frames"] / el / workers,
            "clips_per_s_per_worker": tot["clips"] / el / workers,
            "plan_s": tot["plan_s"], "decode_s": tot["decode_s"]}


def run_inprocess(files: list[Path], cfg: Any, pp: Any, chunk: int) -> dict[str, float]:
    """One worker's work in this process (no child): wall and CPU time of plan + decode."""
    import torch

    from vidsearch.pipeline.decode import ChildState, decode_chunk, plan_video
    from vidsearch.pipeline.discover import make_task

    torch.set_num_threads(1)  # as in the decode child
    plan_video(make_task(os.fsencode(files[0])), cfg, pp)  # type: ignore[arg-type]  # warm-up
    clips = frames = 0
    video_s = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for f in files:
        plan = plan_video(make_task(os.fsencode(f)), cfg, pp)  # type: ignore[arg-type]
        state = ChildState()
        n = len(plan.clips)
        for lo in range(0, n, chunk):
            clips += len(decode_chunk(plan, lo, min(n, lo + chunk), cfg, pp, state).kept)
        state.reset()
        video_s += plan.probe.duration_s
        frames += max(i for c in plan.clips for i in c.frame_indices) + 1
    el, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": el, "cpu_s": cpu, "clips": clips, "clips_per_s": clips / el,
            "video_s_per_s": video_s / el, "frames_per_s": frames / el, "frames_per_cpu_s": frames / cpu,
            "clips_per_cpu_s": clips / cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--workers", default="1,2", help="comma list of pool sizes to measure")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--clip-seconds", type=float, default=2.0, help="clip window and stride, seconds")
    ap.add_argument("--chunk", type=int, default=16, help="clips per decode call (the runner's default)")
    ap.add_argument("--files-per-worker", type=int, default=0,
                    help="repeat the corpus so that each worker gets at least this many videos")
    ap.add_argument("--model", default="internvideo2-s2-1b", help="model whose preprocessing is used")
    ap.add_argument("--inprocess", action="store_true",
                    help="one worker's work in this process, no child: reports CPU time too "
                         "(frames_per_cpu_s), the figure least disturbed by other load")
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()

    from vidsearch.models import get_model_config
    from vidsearch.schemas.config import IngestCfg

    files = sorted(a.corpus.glob("*.mp4"))
    if not files:
        ap.error(f"no .mp4 in {a.corpus}")
    pp = get_model_config(a.model).preprocess
    out: dict[str, Any] = {"corpus": str(a.corpus), "videos": len(files), "cpus": os.cpu_count(),
                           "decoder": os.environ.get("VIDSEARCH_DECODER", "default"),
                           "clip_seconds": a.clip_seconds, "frames_per_clip": pp.num_frames,
                           "img_size": pp.img_size, "chunk": a.chunk, "runs": {}}
    if a.inprocess:
        cfg = IngestCfg(decode_timeout_s=600, clip_seconds=a.clip_seconds, stride=a.clip_seconds)
        fl = files * max(1, a.files_per_worker // len(files))
        runs = []
        for r in range(a.repeat):
            res = run_inprocess(fl, cfg, pp, a.chunk)
            res["load1"] = os.getloadavg()[0]
            runs.append(res)
            print(f"inprocess run {r}: {json.dumps({k: round(v, 3) for k, v in res.items()})}",
                  file=sys.stderr, flush=True)
        out["runs"]["inprocess"] = {
            "median": {k: statistics.median(x[k] for x in runs) for k in runs[0]}, "all": runs}
        print(json.dumps(out, indent=2))
        if a.json_out:
            a.json_out.write_text(json.dumps(out, indent=2))
        return 0
    for workers in [int(x) for x in a.workers.split(",")]:
        cfg = IngestCfg(decode_workers=workers, decode_timeout_s=600, clip_seconds=a.clip_seconds,
                        stride=a.clip_seconds)
        fl = files * max(1, -(-a.files_per_worker * workers // len(files)) if a.files_per_worker else 1)
        if len(fl) < workers:
            fl = files * -(-workers // len(files))
        runs = []
        for r in range(a.repeat):
            load0 = os.getloadavg()[0]
            res = run_once(fl, workers, cfg, pp, a.chunk)
            res["load1_before"], res["load1_after"] = load0, os.getloadavg()[0]
            runs.append(res)
            print(f"workers={workers} run {r}: {json.dumps({k: round(v, 3) for k, v in res.items()})}",
                  file=sys.stderr, flush=True)
        keys = ("clips_per_s", "video_s_per_s", "frames_per_s", "frames_per_s_per_worker",
                "clips_per_s_per_worker", "frames_per_child_cpu_s", "plan_s", "decode_s")
        out["runs"][str(workers)] = {"median": {k: statistics.median(x[k] for x in runs) for k in keys},
                                     "all": runs}
    print(json.dumps(out, indent=2))
    if a.json_out:
        a.json_out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
