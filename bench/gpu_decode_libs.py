"""Decode-alone clips/s on the GPU: PyAV hwaccel (ours, with and without packet selection),
torchcodec's CUDA decoder and PyNvVideoCodec, same corpus, same threads (issue 13's library choice).

    python bench/gpu_decode_libs.py /tmp/c1080 --threads 8 --json-out out.json

Each video is planned first (probe + segment, untimed: the CPU decode workers do that in the
pipeline), then ``--threads`` threads of this one process decode all videos' sampled frames into
(S, S, 3) uint8 CUDA tensors at the model's size (colour conversion + resize on the GPU):

* ``pyav_nvdec_select``: our ``GpuDecoder`` (H.264 non-reference pictures no clip samples are
  dropped before the decoder, ``skip_frame=NONREF``);
* ``pyav_nvdec_all``: the same reader decoding every picture (what the selection buys);
* ``torchcodec``: ``VideoDecoder(device="cuda").get_frames_at(sampled indices)``, its default
  CUDA backend, RGB on the GPU, then the same resize;
* ``pynvvideocodec``: every frame decoded to GPU memory (NV12), sampled ones converted and resized.

* ``torchcodec_ffmpeg``: the same with torchcodec's other CUDA backend, FFmpeg's CUDA decoder
  (``set_cuda_backend("ffmpeg")``; 0.17's default is its own NVDEC backend).

A backend that fails prints its error and the run goes on. Prints one JSON line per backend and
rewrites ``--json-out`` after each (a run stopped by a time limit keeps the finished ones).
``--videos N`` takes the first N videos of the folder. ``--device cpu`` runs the PyAV backends with
PyAV's CPU decoder through the same code (a dry run on a machine without a GPU).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _plans(files: list[Path], clip_s: float, pp: Any) -> list[Any]:
    from vidsearch.pipeline.decode import plan_video
    from vidsearch.pipeline.discover import make_task
    from vidsearch.schemas.config import IngestCfg

    cfg = IngestCfg(clip_seconds=clip_s, stride=clip_s)
    # Probing demuxes every packet: threads (PyAV releases the GIL), untimed.
    with cf.ThreadPoolExecutor(min(16, os.cpu_count() or 2)) as ex:
        return list(ex.map(lambda f: plan_video(make_task(os.fsencode(f)), cfg, pp), files))  # type: ignore[arg-type]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _run(plans: list[Any], threads: int, one: Any) -> dict[str, float]:
    clips = sum(len(p.clips) for p in plans)
    one(plans[0])  # warm-up: CUDA context, decoder libraries, kernels
    _sync()
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, plans))
    _sync()
    el = time.perf_counter() - t0
    video_s = sum(p.probe.duration_s for p in plans)
    return {"clips": clips, "seconds": el, "clips_per_s": clips / el, "video_s_per_s": video_s / el}


def pyav(plans: list[Any], threads: int, pp: Any, select: bool, chunk: int = 16,
         device: str = "0") -> dict[str, float]:
    from vidsearch.pipeline.nvdec import NvdecReader, nvdec_status

    if device != "cpu":
        st = nvdec_status(int(device))
        if not st.ok:
            raise RuntimeError(st.reason)

    def one(plan: Any) -> None:
        keep = frozenset(i for c in plan.clips for i in c.frame_indices) if select else None
        r = NvdecReader(plan.task.path_bytes.decode(), plan.probe.demuxer, plan.probe.rotation, keep, pp, device)
        n = len(plan.clips)
        for lo in range(0, n, chunk):
            want = sorted({i for c in plan.clips[lo:lo + chunk] for i in c.frame_indices})
            res = r.get(want)
            if res.error:
                raise RuntimeError(res.error)
        r.close()

    return _run(plans, threads, one)


def torchcodec(plans: list[Any], threads: int, pp: Any, backend: str | None = None) -> dict[str, float]:
    from torchcodec.decoders import VideoDecoder

    from vidsearch.pipeline.colour import resize_rgb

    def open_decoder(path: str) -> Any:
        if backend is None:
            return VideoDecoder(path, device="cuda")
        from torchcodec.decoders import set_cuda_backend

        with set_cuda_backend(backend):
            return VideoDecoder(path, device="cuda")

    def one(plan: Any) -> None:
        d = open_decoder(plan.task.path_bytes.decode())
        idx = sorted({i for c in plan.clips for i in c.frame_indices})
        for k in range(0, len(idx), 64):
            frames = d.get_frames_at(idx[k:k + 64]).data  # (N, 3, H, W) uint8 on the GPU
            for f in frames:
                resize_rgb(f.float(), pp.img_size, pp.interpolation)

    return _run(plans, threads, one)


def pynvvideocodec(plans: list[Any], threads: int, pp: Any) -> dict[str, float]:
    import PyNvVideoCodec as nvc  # noqa: N813
    from torch.utils import dlpack

    from vidsearch.pipeline.colour import ColourSpec, nv12_to_rgb, resize_rgb

    def one(plan: Any) -> None:
        keep = {i for c in plan.clips for i in c.frame_indices}
        dmx = nvc.CreateDemuxer(plan.task.path_bytes.decode())
        try:
            dec = nvc.CreateDecoder(gpuid=0, codec=dmx.GetNvCodecId(), cudacontext=0, cudastream=0,
                                    usedevicememory=True)
        except TypeError:
            dec = nvc.CreateDecoder(0, dmx.GetNvCodecId(), 0, 0, True)
        i = 0

        def take(fr: Any) -> None:
            nonlocal i
            if i in keep:
                t = dlpack.from_dlpack(fr)  # NV12 as (H*3/2, W) uint8; H from the surface, not the probe
                if t.ndim == 3 and t.shape[-1] == 1:
                    t = t[..., 0]
                h, w = t.shape[0] * 2 // 3, t.shape[1]
                y, uv = t[:h], t[h:h + h // 2].reshape(h // 2, w // 2, 2)
                resize_rgb(nv12_to_rgb(y, uv, ColourSpec()), pp.img_size, pp.interpolation)
            i += 1

        for pkt in dmx:
            for fr in dec.Decode(pkt):
                take(fr)
        try:
            for fr in dec.Decode(nvc.PacketData()):
                take(fr)
        except Exception:  # noqa: BLE001,S110 - some releases raise on the flush packet
            pass

    return _run(plans, threads, one)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--clip-seconds", type=float, default=2.0)
    ap.add_argument("--backends",
                    default="pyav_nvdec_select,pyav_nvdec_all,torchcodec,torchcodec_ffmpeg,pynvvideocodec")
    ap.add_argument("--model", default="internvideo2-s2-1b", help="model whose preprocessing is used")
    ap.add_argument("--videos", type=int, default=0, help="the first N videos of the folder (0: all)")
    ap.add_argument("--device", default="0", help="CUDA device index, or cpu (PyAV backends only: a dry run)")
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()

    from vidsearch.models import get_model_config

    pp = get_model_config(a.model).preprocess
    files = sorted(a.corpus.glob("*.mp4")) + sorted(a.corpus.glob("*.mkv"))
    if a.videos:
        files = files[:a.videos]
    if not files:
        print(f"no videos in {a.corpus}", file=sys.stderr)
        return 1
    plans = _plans(files, a.clip_seconds, pp)
    out: dict[str, Any] = {"corpus": str(a.corpus), "videos": len(files), "threads": a.threads,
                           "clips": sum(len(p.clips) for p in plans), "results": {}}
    runners = {"pyav_nvdec_select": lambda: pyav(plans, a.threads, pp, True, device=a.device),
               "pyav_nvdec_all": lambda: pyav(plans, a.threads, pp, False, device=a.device),
               "torchcodec": lambda: torchcodec(plans, a.threads, pp),
               "torchcodec_ffmpeg": lambda: torchcodec(plans, a.threads, pp, backend="ffmpeg"),
               "pynvvideocodec": lambda: pynvvideocodec(plans, a.threads, pp)}
    for name in a.backends.split(","):
        t0 = time.perf_counter()
        try:
            res: dict[str, Any] = runners[name]()
        except Exception as e:  # noqa: BLE001 - report and go on with the next backend
            res = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            traceback.print_exc(limit=3)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        out["results"][name] = res
        print(json.dumps({"backend": name, **res}), flush=True)
        if a.json_out:
            tmp = a.json_out.with_name(a.json_out.name + ".tmp")
            tmp.write_text(json.dumps(out, indent=2))
            tmp.replace(a.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
