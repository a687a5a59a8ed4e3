"""Ingest throughput: end-to-end clips/s next to the decode and embed stages' own rates.

    python bench/make_corpus.py /tmp/c360 --height 360 --videos 48 --seconds 60
    python bench/ingest_throughput.py /tmp/c360 --model internvideo2-s2-1b --random-weights

Three measurements on the same corpus and machine, so the bottleneck is visible:

1. decode: ``DecodeWorker`` processes (the real decode stage: probe, segment, decord, resize) on
   all but one CPU, no embedding -> the clips/s the CPUs can decode;
2. embed: the ``Embedder`` alone on already-sampled frames (bf16 on the GPU) -> clips/s;
3. end to end: ``run_ingest`` on Ray (decode actors + a GPU embed actor + the writer) ->
   clips/s and video-hours per GPU-hour. Targets (issue 3): >= 80 % of (1) at 1080p and >= 80 %
   of (2) at 360p, whichever stage bounds the run.

``--random-weights`` builds the model's architecture without its checkpoint (same compute, the
embeddings are meaningless); use it where the weights cannot be downloaded.

``--decode cpu|gpu|both`` (issue 13) picks the decoders: ``cpu`` measures CPU decode alone and
end to end with ``--decode cpu``; ``gpu`` measures NVDEC decode alone (``GpuDecoder``,
``--nvdec-sessions`` threads in this process, frames kept on the GPU) and end to end with
``--decode gpu``; ``both`` measures both decoders alone and end to end with ``--decode auto``
(NVDEC and the CPU workers together), plus the sum of the two decode rates. The last line is
``e2e / min(decode, embed)``: the pipeline's efficiency against its slowest stage.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def decode_rate(files: list[Path], workers: int, cfg: object, pp: object) -> dict[str, float]:
    from vidsearch.pipeline.decode import DecodeWorker
    from vidsearch.pipeline.discover import make_task
    from vidsearch.pipeline.types import ChunkRequest

    pool = [DecodeWorker(cfg, pp) for _ in range(workers)]  # type: ignore[arg-type]
    for w in pool:
        w.setup()
    # setup() only starts a child, which then imports torch/av/decord: one untimed plan per child
    # so that the clock measures decoding, not 15 interpreters starting (as e2e's loop_s does).
    with cf.ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda w: w.plan(make_task(os.fsencode(files[0]))), pool))  # type: ignore[arg-type]
    clips = 0
    seconds = 0.0

    def one(i: int, f: Path) -> tuple[int, float]:
        w = pool[i % workers]
        plan = w.plan(make_task(os.fsencode(f)))  # type: ignore[arg-type]
        n = len(plan.clips)
        got = 0
        for lo in range(0, n, 16):
            got += len(w.decode(ChunkRequest(plan.task, lo, min(n, lo + 16), n)).kept)
        return got, plan.probe.duration_s

    t0 = time.perf_counter()
    # One thread per worker, each feeding its own child: like the decode actors.
    with cf.ThreadPoolExecutor(workers) as ex:
        futs = [ex.submit(lambda k: [one(k, f) for f in files[k::workers]], k) for k in range(workers)]
        for fu in futs:
            for c, d in fu.result():
                clips += c
                seconds += d
    el = time.perf_counter() - t0
    for w in pool:
        w.close()
    return {"clips": clips, "seconds": el, "clips_per_s": clips / el, "video_s_per_s": seconds / el}


def gpu_decode_rate(files: list[Path], sessions: int, cfg: object, pp: object, chunk: int = 16) -> dict[str, float]:
    """NVDEC alone: ``sessions`` threads, each decoding whole videos chunk by chunk (plans made first, untimed)."""
    import torch

    from vidsearch.pipeline.decode import plan_video
    from vidsearch.pipeline.discover import make_task
    from vidsearch.pipeline.nvdec import GpuDecoder
    from vidsearch.pipeline.types import FramesChunk, GpuChunkRequest

    dec = GpuDecoder(cfg, pp, sessions, "0")  # type: ignore[arg-type]
    st = dec.setup()
    if not st.ok:
        return {"error": st.reason}
    plans = [plan_video(make_task(os.fsencode(f)), cfg, pp) for f in files]  # type: ignore[arg-type]
    fallbacks = 0

    def one(plan: object) -> int:
        nonlocal fallbacks
        n, got = len(plan.clips), 0  # type: ignore[attr-defined]
        for lo in range(0, n, chunk):
            out = dec.decode(GpuChunkRequest(plan, lo, min(n, lo + chunk)))  # type: ignore[arg-type]
            if not isinstance(out, FramesChunk):
                fallbacks += 1
                print("gpu fallback:", out, file=sys.stderr)
                break
            got += len(out.kept)
        return got

    one(plans[0])  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(sessions) as ex:
        clips = sum(ex.map(one, plans))
    torch.cuda.synchronize()
    el = time.perf_counter() - t0
    seconds = sum(p.probe.duration_s for p in plans)
    return {"clips": clips, "seconds": el, "clips_per_s": clips / el, "video_s_per_s": seconds / el,
            "fallbacks": fallbacks}


def embed_rate(model: str, batch: int, random_weights: bool, n_batches: int = 30,
               compile: bool = False) -> dict[str, float]:
    import torch

    from vidsearch.pipeline.embed import Embedder

    e = Embedder(model, batch_size=batch, pretrained=not random_weights, compile="auto" if compile else "off")
    e.setup()
    pp = e.preprocess_cfg()
    x = np.random.default_rng(0).integers(0, 256, (batch, pp.num_frames, pp.img_size, pp.img_size, 3), np.uint8)
    for _ in range(3):
        e.process(x)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n_batches):
        e.process(x)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    el = time.perf_counter() - t0
    return {"clips": batch * n_batches, "seconds": el, "clips_per_s": batch * n_batches / el}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--model", default="internvideo2-s2-1b")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--decode-workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--skip", default="", help="comma list of stages to skip: decode,embed,e2e")
    ap.add_argument("--executor", default="ray", choices=["ray", "local"],
                    help="executor of the end-to-end run (local = same units without Ray)")
    ap.add_argument("--clip-seconds", type=float, default=4.0, help="clip window and stride, seconds")
    ap.add_argument("--decode", default="cpu", choices=["cpu", "gpu", "both"],
                    help="decoders to measure (alone and end to end; both = NVDEC + CPU workers)")
    ap.add_argument("--nvdec-sessions", type=int, default=8)
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder blocks (embed and e2e)")
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()

    from vidsearch.models import get_model_config
    from vidsearch.pipeline.runner import IngestOptions, run_ingest
    from vidsearch.schemas.config import IngestCfg

    files = sorted(a.corpus.glob("*.mp4")) + sorted(a.corpus.glob("*.mkv"))
    pp = get_model_config(a.model).preprocess
    cfg = IngestCfg(decode_workers=a.decode_workers, batch_size=a.batch_size, decode_timeout_s=600,
                    clip_seconds=a.clip_seconds, stride=a.clip_seconds)
    skip = set(a.skip.split(","))
    out: dict[str, object] = {"corpus": str(a.corpus), "videos": len(files), "model": a.model,
                              "decode_workers": a.decode_workers, "batch_size": a.batch_size,
                              "cpus": os.cpu_count(), "executor": a.executor,
                              "clip_seconds": a.clip_seconds, "frames_per_clip": pp.num_frames,
                              "decode_mode": a.decode, "compile": a.compile}
    if "decode" not in skip and a.decode in ("cpu", "both"):
        out["decode"] = decode_rate(files, a.decode_workers, cfg, pp)
        print("decode", json.dumps(out["decode"]), file=sys.stderr, flush=True)
    if "decode" not in skip and a.decode in ("gpu", "both"):
        out["decode_gpu"] = gpu_decode_rate(files, a.nvdec_sessions, cfg, pp)
        print("decode_gpu", json.dumps(out["decode_gpu"]), file=sys.stderr, flush=True)
    if "decode" in out and "decode_gpu" in out and "clips_per_s" in out["decode_gpu"]:  # type: ignore[operator]
        out["decode_both_clips_per_s"] = (out["decode"]["clips_per_s"]  # type: ignore[index]
                                          + out["decode_gpu"]["clips_per_s"])  # type: ignore[index]
    elif "decode_gpu" in out:
        out["decode"] = out["decode_gpu"]
    if "embed" not in skip:
        out["embed"] = embed_rate(a.model, a.batch_size, a.random_weights, compile=a.compile)
        print("embed ", json.dumps(out["embed"]), file=sys.stderr, flush=True)
    if "e2e" not in skip:
        mode = {"cpu": "cpu", "gpu": "gpu", "both": "auto"}[a.decode]
        with tempfile.TemporaryDirectory() as lib:
            s = run_ingest([a.corpus], lib, cfg,
                           IngestOptions(model=a.model, executor=a.executor, build_index=False, progress=False,
                                         random_weights=a.random_weights, decode=mode,
                                         nvdec_sessions=a.nvdec_sessions, compile=a.compile))
        # Steady state: the scheduling loop only (Ray start-up and model load excluded; both are
        # reported too).
        out["e2e"] = {"clips": s.clips, "seconds": s.loop_s, "clips_per_s": s.clips / s.loop_s,
                      "total_seconds": s.elapsed_s, "total_clips_per_s": s.clips_per_s,
                      "videos_done": s.videos_done, "videos_failed": s.videos_failed,
                      "decoders": s.decoders, "gpu_videos": s.gpu_videos, "gpu_fallbacks": s.gpu_fallbacks}
        print("e2e   ", json.dumps(out["e2e"]), file=sys.stderr, flush=True)
        if "decode" in out:
            dec = out["decode"]
            vs = dec["video_s_per_s"] / dec["clips_per_s"] * s.clips  # type: ignore[index]
            out["e2e"]["video_hours_per_gpu_hour"] = vs / s.loop_s  # type: ignore[index]
            out["e2e_vs_decode"] = s.clips / s.loop_s / dec["clips_per_s"]  # type: ignore[index]
        if "embed" in out:
            out["e2e_vs_embed"] = s.clips / s.loop_s / out["embed"]["clips_per_s"]  # type: ignore[index]
            dec_rate = out.get("decode_both_clips_per_s") or out.get("decode", {}).get("clips_per_s")  # type: ignore[attr-defined]
            if dec_rate:
                bound = min(float(dec_rate), out["embed"]["clips_per_s"])  # type: ignore[index]
                out["e2e_vs_bound"] = s.clips / s.loop_s / bound
    print(json.dumps(out, indent=2))
    if a.json_out:
        a.json_out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
