#!/usr/bin/env bash
# One device session for issue 13 (GPU decode): library choice, GPU parity tests, throughput.
#
#   source .devkit/env.sh && bash bench/gpu_session.sh 1     # on the H200, from the repo root
#
# A device command runs 10 minutes at most, so the session is three calls (each under ~9.5 min):
#   1: diagnostics, 1080p corpus (8 videos), library choice (decode alone), GPU tests   ~7-9 min
#   2: 1080p corpus (24 videos) + 360p corpus, throughput at 1080p h264 and 360p         ~7-9 min
#   3: HEVC 1080p + 4K corpora, throughput (decode alone + end to end) at both           ~5-7 min
# A corpus left by an earlier call on a still-warm machine is reused. Assumes the device kit is
# unpacked (/tmp/site: core + faiss + media + ffmpeg groups; ../shared/device-kit/README.md).
# Every part is time-boxed (and the call as a whole: BUDGET_S, default 570 s) and guarded: one
# failing part never stops the others. Files go to $OUT: session.log (all output), parts.txt,
# *.json (each bench), summary.txt (the table printed last, also the last lines of the output).
set -u
CALL=${1:-1}
BUDGET_S=${BUDGET_S:-570}
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
C=${CORPUS_DIR:-/tmp/gd_corpus}
mkdir -p "$C"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
LOG="$OUT/session.log"
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s)
part() {  # part NAME SECONDS CMD...: run, time-box, never stop the script
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET_S - 25 - ($(date +%s) - T0)))  # 25 s kept for the summary
  if [ "$left" -lt 20 ]; then echo "=== [$name] SKIPPED: the call's time is used up"; echo "$name skipped" >> "$OUT/parts.txt"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo; echo "=== [$name] $(($(date +%s) - T0)) s into the session; limit ${limit} s: $*"
  local t=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "=== [$name] rc=$rc in $(($(date +%s) - t)) s"
  echo "$name rc=$rc $(($(date +%s) - t))s" >> "$OUT/parts.txt"
}

# Diagnostics (each call: a fresh machine may answer differently): enough to fix a failure from
# this log alone.
part diag 90 bash -c '
  nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc; python3 -V; ldconfig -p | grep -i nvcuvid || echo "libnvcuvid: not in ldconfig"
  python3 - <<EOF
import av, torch, importlib
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0))
print("av", av.__version__, av.ffmpeg_version_info)
from av.codec.hwaccel import hwdevices_available
print("hw devices", hwdevices_available())
for m in ("ray", "torchcodec", "PyNvVideoCodec", "imageio_ffmpeg", "decord", "duckdb", "faiss"):
    try:
        mod = importlib.import_module(m); print(m, getattr(mod, "__version__", "ok"))
    except Exception as e:
        print(m, "IMPORT FAILED", type(e).__name__, str(e)[:200])
from vidsearch.pipeline.nvdec import nvdec_status
print("nvdec_status:", nvdec_status(0))
EOF'

corpus() {  # corpus NAME HEIGHT VIDEOS SECONDS [CODEC]: made once per machine (kept while it is warm)
  local d="$C/$1"
  if [ "$(ls "$d"/*.mp4 2>/dev/null | wc -l)" -ge "$3" ]; then echo "corpus $1: reusing $(ls "$d"/*.mp4 | wc -l) videos"; return; fi
  part "corpus_$1" 200 python3 bench/make_corpus.py "$d" --height "$2" --videos "$3" --seconds "$4" --jobs 16 --codec "${5:-libx264}"
}
TP="python3 bench/ingest_throughput.py --model internvideo2-s2-1b --random-weights --batch-size 64 --clip-seconds 2"

if [ "$CALL" = 1 ]; then
  # Library choice: decode alone, 8 threads, one process, 8 x 40 s of 1080p h264 (x264 veryfast,
  # GOP 250, 3 B-frames): PyAV+NVDEC with/without packet selection, torchcodec, PyNvVideoCodec.
  corpus h264_1080 1080 8 40
  mkdir -p "$C/libs" && for f in $(ls "$C"/h264_1080/*.mp4 | head -8); do ln -sf "$f" "$C/libs/"; done
  part libs 200 python3 bench/gpu_decode_libs.py "$C/libs" --threads 8 --json-out "$OUT/libs.json"
  # GPU tests: parity (PSNR, cosine on the 1B encoder in bf16), NVDEC rejection -> CPU, mixed corpus.
  part gpu_tests 300 python3 -m pytest tests/unit/test_pipeline_nvdec_gpu.py -m gpu -q -s -p no:cacheprovider -rA
elif [ "$CALL" = 2 ]; then
  # 1080p h264: 24 x 40 s = 480 clips, so that the end to end reaches steady state at ~150 clips/s.
  corpus h264_1080 1080 24 40
  corpus h264_360 360 48 30
  # decode alone (CPU: 15 workers; NVDEC: 8 sessions), embed alone (compiled), end to end (Ray,
  # --decode auto: NVDEC + CPU workers together), 2-s clips of 4 frames, batch 64, random weights.
  part t1080 300 $TP "$C/h264_1080" --decode both --compile --json-out "$OUT/t1080.json"
  part t360 200 $TP "$C/h264_360" --decode both --json-out "$OUT/t360.json"
else
  corpus hevc_1080 1080 8 20 libx265
  corpus h264_2160 2160 6 12
  part thevc 200 $TP "$C/hevc_1080" --decode both --skip embed --json-out "$OUT/thevc.json"
  part t4k 200 $TP "$C/h264_2160" --decode both --skip embed --json-out "$OUT/t4k.json"
fi

# The table (last); docs/ARCHITECTURE.md says what each figure is.
python3 - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
def load(n):
    p = out / f"{n}.json"
    try:
        return json.loads(p.read_text())
    except Exception as e:
        return {"error": f"{p.name}: {type(e).__name__}"}
def f(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return "-"
        d = d[k]
    return f"{d:.1f}" if isinstance(d, (int, float)) else str(d)[:40]
print("\n=== issue 13 summary (clips/s unless said; 2-s clips, 4 frames, 224 px) ===")
libs = load("libs")
print("decode alone, 1080p h264, 8 threads, one process:")
for b in ("pyav_nvdec_select", "pyav_nvdec_all", "torchcodec", "pynvvideocodec"):
    r = libs.get("results", {}).get(b, {})
    print(f"  {b:<20} {f(r, 'clips_per_s'):>8}  {r.get('error', '')[:90]}")
print(f"{'corpus':<10} {'cpu dec':>8} {'gpu dec':>8} {'both':>8} {'embed':>8} {'e2e':>8} {'e2e/bound':>9} {'vh/gpuh':>8}  decoders gpu_videos fallbacks")
for n in ("t1080", "t360", "thevc", "t4k"):
    d = load(n)
    print(f"{n:<10} {f(d,'decode','clips_per_s') if 'decode_gpu' not in d or 'decode_both_clips_per_s' in d else '-':>8} "
          f"{f(d,'decode_gpu','clips_per_s'):>8} {f(d,'decode_both_clips_per_s'):>8} {f(d,'embed','clips_per_s'):>8} "
          f"{f(d,'e2e','clips_per_s'):>8} {f(d,'e2e_vs_bound'):>9} {f(d,'e2e','video_hours_per_gpu_hour'):>8}  "
          f"{f(d,'e2e','decoders')} {f(d,'e2e','gpu_videos')} {f(d,'e2e','gpu_fallbacks')}  {d.get('error','')}")
print("parts:", (out / "parts.txt").read_text().replace("\n", "; ") if (out / "parts.txt").exists() else "-")
EOF
echo "session done in $(($(date +%s) - T0)) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
