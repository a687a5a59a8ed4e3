"""The device session's table: every figure measured so far, compact (``bench/device_call.sh``).

    python3 bench/device_summary.py /tmp/devrun/res [--json-out results.json]

Reads what the calls left in the results folder (each part's JSON, the GPU tests' output,
``parts.txt``) and prints, in the order of issue 13's priorities: decode alone by library, the GPU
tests' figures, decode alone / embed alone / end to end per corpus, then speech and OCR. Anything
missing or unreadable is a ``-`` (or one line saying why), never an error. ``--json-out`` merges
every result into one file (what the device tool brings back).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any


def load(res: Path, name: str) -> dict[str, Any]:
    p = res / f"{name}.json"
    if not p.exists():
        return {}
    try:
        d = json.loads(p.read_text())
        return d if isinstance(d, dict) else {"error": f"{p.name}: not an object"}
    except Exception as e:  # noqa: BLE001 - a half-written or damaged file is reported, not fatal
        return {"error": f"{p.name}: {type(e).__name__}"}


def num(d: Any, *keys: str, fmt: str = "{:.1f}") -> str:
    """``d[k1][k2]...`` formatted, or ``-``."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return "-"
        d = d[k]
    if isinstance(d, bool) or d is None:
        return str(d) if d is not None else "-"
    if isinstance(d, (int, float)):
        return fmt.format(d) if math.isfinite(d) else str(d)
    return str(d)[:40]


def err(d: dict[str, Any]) -> str:
    e = d.get("error")
    return f"  ERROR {str(e)[:100]}" if e else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("res", type=Path)
    ap.add_argument("--json-out", type=Path, default=None)
    a = ap.parse_args()
    res: Path = a.res
    out: list[str] = []
    p = out.append

    diag: dict[str, Any] = {}
    for f in sorted(res.glob("diag_call*.json")):
        diag = load(res, f.stem) or diag
    p("=" * 100)
    p(f"DEVICE SESSION SUMMARY  gpu: {diag.get('gpu', diag.get('nvidia_smi', '-'))}  cpus: {diag.get('cpus', '-')}  "
      f"python {diag.get('python', '-')}  torch {str(diag.get('torch', '-'))[:40]}")
    p(f"nvdec_status: {diag.get('nvdec_status', '- (needs core)')}")
    missing = [m for m, v in (diag.get("modules") or {}).items() if str(v).startswith("MISSING")]
    if missing:
        p(f"modules missing at the last call: {', '.join(missing)}")

    # Issue 13 (a): decode alone by library.
    libs = load(res, "libs")
    pynv = load(res, "libs_pynv")  # PyNvVideoCodec ran in a process of its own
    libs.setdefault("results", {}).update(pynv.get("results") or ({"pynvvideocodec": pynv} if pynv else {}))
    p(f"-- (a) decode alone, 1080p h264, {libs.get('threads', '-')} threads of one process, "
      f"{libs.get('videos', '-')} videos, {libs.get('clips', '-')} clips{err(libs)}")
    for b, r in (libs.get("results") or {}).items():
        fps = r.get("video_s_per_s", 0) * 30 if isinstance(r.get("video_s_per_s"), (int, float)) else None
        p(f"   {b:<19} {num(r, 'clips_per_s'):>7} clips/s  {f'{fps:.0f}' if fps else '-':>6} frames/s of video"
          f"  wall {num(r, 'wall_s')} s{err(r)}")

    # (b) the GPU tests.
    t = res / "gpu_tests.txt"
    if t.exists():
        lines = t.read_text(errors="replace").splitlines()
        keep = [ln.strip() for ln in lines if re.search(
            r"PSNR|cosine|forced onto NVDEC|NVDEC status|mixed corpus: |^(PASSED|FAILED|ERROR|SKIPPED) "
            r"|\d+ (passed|failed|error)", ln)]
        p("-- (b) GPU tests (tests/unit/test_pipeline_nvdec_gpu.py)")
        for ln in keep[-16:]:
            p("   " + ln[:160])
    else:
        p("-- (b) GPU tests: not run")

    # Embed alone (call 1).
    ee, ec = load(res, "embed_eager"), load(res, "embed_compiled")
    p(f"-- embed alone, 1B random weights bf16, batch 64: eager {num(ee, 'embed', 'clips_per_s')} clips/s "
      f"(setup {num(ee, 'embed', 'setup_s')} s), compiled {num(ec, 'embed', 'clips_per_s')} clips/s "
      f"(compiled={num(ec, 'embed', 'compiled')}, setup {num(ec, 'embed', 'setup_s')} s){err(ee)}{err(ec)}")

    # (c)-(e) throughput per corpus.
    p("-- (c)-(e) clips/s (2-s clips, 4 frames): decode alone cpu (15 workers) / gpu (8 NVDEC sessions) / sum; "
      "end to end (Ray, --decode auto, compiled)")
    p(f"   {'corpus':<6} {'cpu':>6} {'gpu':>6} {'sum':>6} {'embed':>6} {'e2e':>6} {'e2e/bnd':>7} {'vh/gh':>6} "
      f"{'e2e clips':>9} {'loop s':>6} {'start s':>7}  decoders gpu_videos/videos fallbacks")
    for n in ("t1080", "t360", "thevc", "t4k"):
        d = load(res, n)
        if not d:
            p(f"   {n:<6} not run")
            continue
        cpu = d.get("decode", {}) if d.get("decode_mode") in ("cpu", "both") else {}
        e2e = d.get("e2e", {})
        start = (e2e.get("total_seconds", 0) - e2e.get("seconds", 0)) if e2e else None
        p(f"   {n:<6} {num(cpu, 'clips_per_s'):>6} {num(d, 'decode_gpu', 'clips_per_s'):>6} "
          f"{num(d, 'decode_both_clips_per_s'):>6} {num(d, 'embed', 'clips_per_s') if 'embed' in d else '(c1)':>6} "
          f"{num(e2e, 'clips_per_s'):>6} {num(d, 'e2e_vs_bound', fmt='{:.2f}'):>7} "
          f"{num(e2e, 'video_hours_per_gpu_hour'):>6} {num(e2e, 'clips', fmt='{:.0f}'):>9} {num(e2e, 'seconds'):>6} "
          f"{f'{start:.0f}' if start else '-':>7}  {e2e.get('decoders', '-')} "
          f"{e2e.get('gpu_videos', '-')}/{e2e.get('videos_done', '-')} {e2e.get('gpu_fallbacks', '-')}"
          f"{' failed=' + str(e2e['videos_failed']) if e2e.get('videos_failed') else ''}"
          f"{err(d)}{err(d.get('decode_gpu', {}))}")

    # Issue 14: speech.
    for n in ("speech_gpu",):
        d = load(res, n)
        if d:
            p(f"-- {n}: {num(d, 'audio_hours_per_hour')} audio hours/hour ({d.get('device', '-')} "
              f"{d.get('compute_type', '-')}, beam {d.get('beam_size', '-')}), {num(d, 'audio_s')} s audio in "
              f"{num(d, 'wall_s')} s (load {num(d, 'load_s')} s; decode {num(d, 'split_s', 'decode')} "
              f"vad {num(d, 'split_s', 'vad')} whisper {num(d, 'split_s', 'whisper')}), "
              f"WER {num(d, 'wer', fmt='{:.3f}')}{err(d)}")
        else:
            p(f"-- {n}: not run")

    # Issue 15: OCR.
    o = load(res, "ocr")
    if o:
        tp = ", ".join(f"{r.get('workers')}x{r.get('threads')}: {r.get('frames_per_s')}"
                       for r in o.get("throughput", []))
        p(f"-- ocr on {o.get('cpus', '-')} CPUs ({o.get('device', '-')}): best {num(o, 'frames_per_s')} frames/s "
          f"[{tp}]; video-hours/hour {o.get('video_hours_per_hour', '-')}; share of ingest "
          f"{o.get('share_of_ingest', '-')}{err(o)}")
    else:
        p("-- ocr: not run")

    parts = res / "parts.txt"
    if parts.exists():
        by_call: dict[str, list[str]] = {}
        for ln in parts.read_text().splitlines():
            call, _, rest = ln.partition(" ")
            by_call.setdefault(call, []).append(rest)
        p("-- parts (rc=124/137: timed out):")
        for call, items in by_call.items():
            p(f"   {call}: " + "; ".join(items))
    print("\n".join(out))

    if a.json_out:
        merged: dict[str, Any] = {f.stem: load(res, f.stem) for f in sorted(res.glob("*.json"))}
        merged["parts"] = parts.read_text().splitlines() if parts.exists() else []
        if t.exists():
            merged["gpu_tests_tail"] = t.read_text(errors="replace").splitlines()[-60:]
        a.json_out.write_text(json.dumps(merged, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
