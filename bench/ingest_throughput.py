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

Sizing for a time-boxed machine (``bench/device_call.sh``): ``--decode-videos N`` measures the
decoders alone on the first N videos only; ``--e2e-seconds S`` gives the end-to-end run the first
videos that keep its scheduling loop near S seconds at the rate the stages alone predict
(``min(decode, embed)``; ``--embed-clips-per-s`` stands in for a skipped embed stage). The JSON
(``--json-out``) is rewritten after every stage, so a run stopped by a time limit keeps what it
measured.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def decode_rate(files: list[Path], workers: int, cfg: object, pp: object) -> dict[str, Any]:
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
    errors: list[str] = []  # a video that fails is reported, not fatal (and not counted)

    def one(i: int, f: Path) -> tuple[int, float]:
        w = pool[i % workers]
        plan: Any = w.plan(make_task(os.fsencode(f)))  # type: ignore[arg-type]
        if not hasattr(plan, "clips"):
            errors.append(f"{f.name}: {plan}")
            return 0, 0.0
        n = len(plan.clips)
        got = 0
        for lo in range(0, n, 16):
            out: Any = w.decode(ChunkRequest(plan.task, lo, min(n, lo + 16), n))
            if not hasattr(out, "kept"):
                errors.append(f"{f.name}: {out}")
                break
            got += len(out.kept)
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
    if errors:
        print(f"decode: {len(errors)} failed, first: {errors[0][:300]}", file=sys.stderr)
    return {"clips": clips, "seconds": el, "clips_per_s": clips / el, "video_s_per_s": seconds / el,
            "videos": len(files), "workers": workers, "errors": len(errors)}


def gpu_decode_rate(files: list[Path], sessions: int, cfg: object, pp: object, chunk: int = 16) -> dict[str, Any]:
    """NVDEC alone: ``sessions`` threads, each decoding whole videos chunk by chunk (plans made first, untimed)."""
    import torch

    from vidsearch.pipeline.decode import plan_video
    from vidsearch.pipeline.discover import make_task
    from vidsearch.pipeline.nvdec import GpuDecoder
    from vidsearch.pipeline.types import FramesChunk, GpuChunkRequest

    # VIDSEARCH_TEST_NVDEC_CPU=1 (the runner's test hook): PyAV's CPU decoder in the same code (a dry run).
    cpu = os.environ.get("VIDSEARCH_TEST_NVDEC_CPU") == "1"
    dec = GpuDecoder(cfg, pp, sessions, "cpu" if cpu else "0")  # type: ignore[arg-type]
    st = dec.setup()
    if not st.ok:
        return {"error": st.reason}
    def plan(f: Path) -> Any:
        try:
            return plan_video(make_task(os.fsencode(f)), cfg, pp)  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - a video that cannot be planned is reported, not fatal
            print(f"decode_gpu: {f.name} not planned: {e}", file=sys.stderr)
            return None

    # Plans (probe: a demux of every packet) are untimed; threads, as PyAV releases the GIL.
    with cf.ThreadPoolExecutor(min(16, os.cpu_count() or 2)) as ex:
        plans = [p for p in ex.map(plan, files) if p is not None]
    if not plans:
        return {"error": "no video could be planned"}
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
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(sessions) as ex:
        clips = sum(ex.map(one, plans))
    sync()
    el = time.perf_counter() - t0
    dec.close()
    seconds = sum(p.probe.duration_s for p in plans)
    return {"clips": clips, "seconds": el, "clips_per_s": clips / el, "video_s_per_s": seconds / el,
            "fallbacks": fallbacks, "videos": len(plans), "sessions": sessions}


def embed_rate(model: str, batch: int, random_weights: bool, n_batches: int = 30,
               compile: bool = False) -> dict[str, float]:
    import torch

    from vidsearch.pipeline.embed import Embedder

    e = Embedder(model, batch_size=batch, pretrained=not random_weights, compile="auto" if compile else "off")
    t_setup = time.perf_counter()
    e.setup()  # model build (+ compile and its warm-up)
    setup_s = time.perf_counter() - t_setup
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
    return {"clips": batch * n_batches, "seconds": el, "clips_per_s": batch * n_batches / el,
            "compiled": e.compiled, "setup_s": setup_s}


def _write(path: Path | None, out: dict[str, Any]) -> None:
    """Rewrite the JSON result (atomically: a run killed by a time limit leaves the last stage's)."""
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(path)


def e2e_files(files: list[Path], seconds: float, rate: float | None, clips_per_video: float | None) -> list[Path]:
    """The first videos whose clips keep the end-to-end loop near ``seconds`` at ``rate`` clips/s
    (all of them when either estimate is missing or ``seconds`` is 0)."""
    if not seconds or not rate or not clips_per_video:
        return files
    return files[:max(1, min(len(files), math.ceil(seconds * rate / clips_per_video)))]


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
    ap.add_argument("--embed-batches", type=int, default=30, help="timed batches of the embed stage")
    ap.add_argument("--decode-videos", type=int, default=0,
                    help="decoders alone on the first N videos only (0: all)")
    ap.add_argument("--e2e-seconds", type=float, default=0.0,
                    help="size the end-to-end run to about this loop time (0: the whole corpus)")
    ap.add_argument("--embed-clips-per-s", type=float, default=None,
                    help="embed rate measured elsewhere on this machine (when the embed stage is skipped)")
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()

    from vidsearch.models import get_model_config
    from vidsearch.schemas.config import IngestCfg

    files = sorted(a.corpus.glob("*.mp4")) + sorted(a.corpus.glob("*.mkv"))
    dec_files = files[:a.decode_videos] if a.decode_videos else files
    pp = get_model_config(a.model).preprocess
    cfg = IngestCfg(decode_workers=a.decode_workers, batch_size=a.batch_size, decode_timeout_s=600,
                    clip_seconds=a.clip_seconds, stride=a.clip_seconds)
    skip = set(a.skip.split(","))
    out: dict[str, Any] = {"corpus": str(a.corpus), "videos": len(files), "model": a.model,
                           "decode_workers": a.decode_workers, "batch_size": a.batch_size,
                           "cpus": os.cpu_count(), "executor": a.executor,
                           "clip_seconds": a.clip_seconds, "frames_per_clip": pp.num_frames,
                           "decode_mode": a.decode, "compile": a.compile}
    if "decode" not in skip and a.decode in ("cpu", "both") and dec_files:
        out["decode"] = decode_rate(dec_files, a.decode_workers, cfg, pp)
        print("decode", json.dumps(out["decode"]), file=sys.stderr, flush=True)
        _write(a.json_out, out)
    if "decode" not in skip and a.decode in ("gpu", "both") and dec_files:
        out["decode_gpu"] = gpu_decode_rate(dec_files, a.nvdec_sessions, cfg, pp)
        print("decode_gpu", json.dumps(out["decode_gpu"]), file=sys.stderr, flush=True)
        _write(a.json_out, out)
    if "decode" in out and "clips_per_s" in out.get("decode_gpu", {}):
        out["decode_both_clips_per_s"] = out["decode"]["clips_per_s"] + out["decode_gpu"]["clips_per_s"]
    elif "clips_per_s" in out.get("decode_gpu", {}):
        out["decode"] = out["decode_gpu"]
    if "embed" not in skip:
        out["embed"] = embed_rate(a.model, a.batch_size, a.random_weights, n_batches=a.embed_batches,
                                  compile=a.compile)
        print("embed ", json.dumps(out["embed"]), file=sys.stderr, flush=True)
        _write(a.json_out, out)
    embed_cps = out["embed"]["clips_per_s"] if "embed" in out else a.embed_clips_per_s
    dec: dict[str, Any] = out.get("decode", {})
    dec_rate = out.get("decode_both_clips_per_s") or dec.get("clips_per_s")
    bound = min(r for r in (dec_rate, embed_cps) if r) if (dec_rate or embed_cps) else None
    if bound is not None:
        out["bound_clips_per_s"] = bound
    if "e2e" not in skip and files:
        from vidsearch.pipeline.runner import IngestOptions, run_ingest

        per_video = dec["clips"] / dec["videos"] if dec.get("videos") else None
        run_files = e2e_files(files, a.e2e_seconds, bound, per_video)
        mode = {"cpu": "cpu", "gpu": "gpu", "both": "auto"}[a.decode]
        inputs = [str(a.corpus)] if len(run_files) == len(files) else [str(f) for f in run_files]
        with tempfile.TemporaryDirectory() as lib:
            s = run_ingest(inputs, lib, cfg,
                           IngestOptions(model=a.model, executor=a.executor, build_index=False, progress=False,
                                         random_weights=a.random_weights, decode=mode,
                                         nvdec_sessions=a.nvdec_sessions, compile=a.compile))
        # Steady state: the scheduling loop only (Ray start-up and model load excluded; both are
        # reported too).
        out["e2e"] = {"clips": s.clips, "seconds": s.loop_s, "clips_per_s": s.clips / s.loop_s,
                      "videos": len(run_files), "total_seconds": s.elapsed_s, "total_clips_per_s": s.clips_per_s,
                      "videos_done": s.videos_done, "videos_failed": s.videos_failed,
                      "decoders": s.decoders, "gpu_videos": s.gpu_videos, "gpu_fallbacks": s.gpu_fallbacks}
        print("e2e   ", json.dumps(out["e2e"]), file=sys.stderr, flush=True)
        e2e_rate = s.clips / s.loop_s
        if dec.get("clips_per_s"):
            vs = dec["video_s_per_s"] / dec["clips_per_s"] * s.clips
            out["e2e"]["video_hours_per_gpu_hour"] = vs / s.loop_s
            out["e2e_vs_decode"] = e2e_rate / dec["clips_per_s"]
        if embed_cps:
            out["e2e_vs_embed"] = e2e_rate / embed_cps
        if bound:
            out["e2e_vs_bound"] = e2e_rate / bound
    print(json.dumps(out, indent=2))
    _write(a.json_out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
