"""Speech recognition stage: a video's audio -> word-timed transcript segments (faster-whisper).

faster-whisper runs Whisper on CTranslate2 (Radford et al. 2022, "Robust Speech Recognition via
Large-Scale Weak Supervision"; https://github.com/SYSTRAN/faster-whisper): int8 on a CPU, float16
on a GPU. Per video (:meth:`Transcriber.process`):

1. decode the audio ourselves (``pipeline.audio``: PyAV, 16 kHz mono float32, in bounded
   windows). No audio stream -> ``status="no_audio"``, not a failure;
2. Silero VAD (shipped with faster-whisper) finds the speech regions once; no speech ->
   ``status="silent"``, no model call;
3. Whisper transcribes only the speech (regions concatenated, as faster-whisper's own
   ``vad_filter`` does), word timestamps on, language detected once per video (or given);
4. times are mapped back to the video, then every word is clipped to its speech region
   (:func:`clip_words`): Whisper's last word of a sentence can run seconds into the pause after
   it, and a search hit must not.

Failure branches: the audio does not decode -> :class:`SpeechError` ``AudioDecodeError``; the
model fails on it -> ``TranscribeError``. Both are per-video rows for the speech stage only (the
clips stay). A model that cannot be found is a systemic error raised by :meth:`Transcriber.setup`
(:class:`SpeechModelNotFoundError`), before any video is touched.

Model resolution (:func:`resolve_speech_model`): a local CTranslate2 Whisper folder, or a
faster-whisper name / HF repo id looked up in the Hugging Face cache first, then downloaded
unless ``HF_HUB_OFFLINE=1``, with the same actionable message as the InternVideo2 weights
(``models/hub.py``; not imported: that package pulls torch into the transcription worker).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidsearch.pipeline.audio import SAMPLE_RATE, AudioStats, NoAudioError, iter_audio_windows, open_media
from vidsearch.schemas.speech_config import SpeechCfg
from vidsearch.schemas.text_tables import TranscriptSegment, Word, segment_id

_logger = logging.getLogger(__name__)

SPEECH_TRACK = "asr"
# Files of a CTranslate2 Whisper folder. tokenizer.json is required here although faster-whisper
# would download a tokenizer without it: ingest must not reach the network behind the user's back.
MODEL_FILES = ("config.json", "model.bin", "tokenizer.json")
VOCAB_FILES = ("vocabulary.txt", "vocabulary.json")
SPEECH_ERROR_TYPES = ("AudioDecodeError", "TranscribeError")


class SpeechModelNotFoundError(FileNotFoundError):
    """The speech model is neither a usable local folder nor in the cache/hub; the message says what to do."""


class SpeechError(Exception):
    """A per-video speech failure (a failure row for stage ``speech``; the video's clips stay).

    Args:
        error_type: one of :data:`SPEECH_ERROR_TYPES`.
        message: one human line; the runner prefixes the file's display path.
    """

    stage = "speech"

    def __init__(self, error_type: str, message: str) -> None:
        if error_type not in SPEECH_ERROR_TYPES:
            raise ValueError(f"unknown speech error type {error_type!r}")
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (SpeechError, (self.error_type, self.message))  # travels between processes as a value


@dataclass(frozen=True)
class ResolvedSpeechModel:
    """Where a speech model's files are and the id recorded in ``transcripts.model``."""

    path: Path
    model_id: str   # e.g. "Systran/faster-whisper-small@<revision>" or "local:<folder>@<digest>"


def _check_folder(p: Path) -> None:
    missing = [f for f in MODEL_FILES if not (p / f).is_file()]
    if not any((p / f).is_file() for f in VOCAB_FILES):
        missing.append("vocabulary.txt")
    if missing:
        raise SpeechModelNotFoundError(
            f"{p} is not a CTranslate2 Whisper model folder: missing {', '.join(missing)}. Convert a Whisper "
            f"checkpoint with `ct2-transformers-converter --model openai/whisper-small --output_dir DIR "
            f"--copy_files tokenizer.json preprocessor_config.json --quantization float16`, or pass a model "
            f"name such as small."
        )


def _folder_digest(p: Path) -> str:
    """A cheap fingerprint of a model folder: config and tokenizer bytes, the weights' size and first MiB."""
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json"):
        h.update((p / name).read_bytes())
    w = p / "model.bin"
    h.update(str(w.stat().st_size).encode())
    with open(w, "rb") as f:
        h.update(f.read(1 << 20))  # the header and first tensors: different weights differ here
    return h.hexdigest()[:12]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _model_help(name: str, repo: str, reason: str) -> str:
    return (
        f"speech model {name} not found ({reason}).\n"
        f"Download it on a machine with internet access (small is about 0.5 GB, large-v3 about 3 GB):\n"
        f"    hf download {repo}\n"
        f"then run again (the Hugging Face cache is searched; copy ~/.cache/huggingface to an offline "
        f"machine), or pass --speech-model PATH to a local CTranslate2 Whisper folder (config.json, model.bin, "
        f"tokenizer.json, vocabulary.txt)."
    )


def resolve_speech_model(name_or_path: str) -> ResolvedSpeechModel:
    """Find the files of a speech model: a local folder, or a name/repo in the HF cache or hub.

    Raises:
        SpeechModelNotFoundError: not a usable folder, an unknown name, or not downloadable
            (offline); the message says what to download and which flag to use.
    """
    from faster_whisper.utils import _MODELS, available_models, download_model

    p = Path(name_or_path).expanduser()
    if p.is_dir():
        _check_folder(p)
        return ResolvedSpeechModel(p.resolve(), f"local:{p.resolve().name}@{_folder_digest(p)}")
    repo = _MODELS.get(name_or_path)
    if repo is None:
        if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name_or_path) and not name_or_path.startswith("."):
            repo = name_or_path  # a Hugging Face repo id of a CTranslate2 Whisper model
        elif p.is_absolute() or os.sep in name_or_path or name_or_path.startswith(("~", ".")):
            raise SpeechModelNotFoundError(f"--speech-model points at {p}, which does not exist")
        else:
            raise SpeechModelNotFoundError(
                f"unknown speech model {name_or_path!r}: use one of {', '.join(available_models())}, a "
                f"Hugging Face repo id of a CTranslate2 Whisper model, or a local model folder"
            )
    try:
        path = Path(download_model(repo, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - any cache miss falls through to the online try
        if _offline():
            raise SpeechModelNotFoundError(_model_help(name_or_path, repo, f"not in the cache and HF_HUB_OFFLINE "
                                                                            f"is set: {type(e).__name__}")) from e
        _logger.info("speech model %s not in the HF cache (%s); downloading", repo, type(e).__name__)
        try:
            path = Path(download_model(repo))
        except Exception as e2:  # noqa: BLE001 - every hub failure becomes the same actionable message
            first_line = str(e2).splitlines()[0][:200] if str(e2) else ""
            why = f"{type(e2).__name__}: {first_line}"
            raise SpeechModelNotFoundError(_model_help(name_or_path, repo, why)) from e2
    _check_folder(path)
    return ResolvedSpeechModel(path, f"{repo}@{path.name[:12]}")  # snapshot folder name = revision


# ----------------------------------------------------------------------------------------------
# Word times


def clip_words(words: Sequence[Word], regions: Sequence[tuple[float, float]]) -> list[Word]:
    """Clip each word to the speech region it belongs to (the one holding its midpoint, else the nearest).

    Whisper's word alignment lets the last word of a sentence run on into the following pause,
    sometimes by seconds; voice activity knows where the voice stopped. ``regions`` are sorted,
    non-overlapping ``(start_s, end_s)``; words outside every region move into the nearest one.
    """
    if not regions:
        return list(words)
    starts = [r[0] for r in regions]
    out = []
    for w in words:
        mid = (w.start_s + w.end_s) / 2
        i = max(0, bisect.bisect_right(starts, mid) - 1)
        if i + 1 < len(regions) and mid > regions[i][1] and regions[i + 1][0] - mid < mid - regions[i][1]:
            i += 1  # in a pause, closer to the next region's start
        lo, hi = regions[i]
        start = min(max(w.start_s, lo), hi)
        end = min(max(w.end_s, start), hi)
        out.append(Word(start, end, w.word, w.prob))
    return out


def split_at_pauses(words: Sequence[Word], gap_s: float) -> list[list[Word]]:
    """Split a segment's words where the voice pauses for more than ``gap_s``.

    Whisper only sees the speech regions glued together, so one of its segments can hold two
    sentences said ten seconds apart; as one row it would span the silence between them.
    """
    groups: list[list[Word]] = []
    for w in words:
        if groups and w.start_s - groups[-1][-1].end_s <= gap_s:
            groups[-1].append(w)
        else:
            groups.append([w])
    return groups


# ----------------------------------------------------------------------------------------------
# The stage


@dataclass
class SpeechResult:
    """The transcript of one video and what it cost.

    ``status``: ``ok`` (segments found), ``silent`` (audio without speech, or speech Whisper
    wrote nothing for) or ``no_audio`` (no audio stream). None of them is a failure.
    """

    status: str
    segments: list[TranscriptSegment] = field(default_factory=list)
    language: str | None = None
    language_probability: float | None = None
    audio_s: float = 0.0           # audio decoded
    speech_s: float = 0.0          # of which voice activity
    decode_s: float = 0.0          # wall time decoding audio
    vad_s: float = 0.0             # wall time in VAD
    transcribe_s: float = 0.0      # wall time in Whisper
    bad_packets: int = 0           # audio packets that failed to decode (skipped)
    model_id: str | None = None


class Transcriber:
    """Speech recognition of whole videos (stage contract: ``setup()`` in the worker, ``process()``, ``close()``).

    Args:
        cfg: model, device, language and VAD settings.
    """

    def __init__(self, cfg: SpeechCfg | None = None) -> None:
        self.cfg = cfg or SpeechCfg()
        self._model: Any = None
        self.resolved: ResolvedSpeechModel | None = None
        self.device: str | None = None
        self.compute_type: str | None = None
        # A pause longer than this inside one Whisper segment starts a new transcript row.
        self.split_gap_s = 1.0

    @property
    def model_id(self) -> str:
        if self.resolved is None:
            raise RuntimeError("Transcriber.setup() has not run")
        return self.resolved.model_id

    def setup(self) -> None:
        """Resolve and load the model (once per worker). Raises SpeechModelNotFoundError."""
        if self._model is not None:
            return
        import ctranslate2
        from faster_whisper import WhisperModel

        self.resolved = resolve_speech_model(self.cfg.model)
        device = self.cfg.device
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        compute = self.cfg.compute_type or ("float16" if device == "cuda" else "int8")
        t0 = time.perf_counter()
        try:
            self._model = WhisperModel(str(self.resolved.path), device=device, compute_type=compute,
                                       cpu_threads=self.cfg.cpu_threads, local_files_only=True)
        except ValueError as e:
            # e.g. float16 on a GPU without efficient fp16: let CTranslate2 pick what the device supports.
            _logger.warning("compute type %s not supported on %s (%s); using the device default", compute, device, e)
            compute = "default"
            self._model = WhisperModel(str(self.resolved.path), device=device, compute_type=compute,
                                       cpu_threads=self.cfg.cpu_threads, local_files_only=True)
        if device == "cuda" and self.cfg.device == "auto":
            # CTranslate2 loads cuBLAS/cuDNN at the first computation, not at load: a machine whose
            # CUDA libraries do not match would fail every video. One second of audio through the
            # model finds out now; then the CPU (int8) does the work, with one warning.
            try:
                list(self._model.transcribe(np.zeros(SAMPLE_RATE, np.float32), language="en", beam_size=1,
                                            vad_filter=False, without_timestamps=True)[0])
            except Exception as e:  # noqa: BLE001 - any CUDA library or driver error means "not usable"
                _logger.warning("speech model on CUDA failed (%s: %s); transcribing on the CPU (int8) instead",
                                type(e).__name__, str(e)[:200])
                device, compute = "cpu", "int8"
                self._model = WhisperModel(str(self.resolved.path), device=device, compute_type=compute,
                                           cpu_threads=self.cfg.cpu_threads, local_files_only=True)
        self.device, self.compute_type = device, compute
        _logger.info("speech model %s on %s (%s) loaded in %.1f s", self.resolved.model_id, device, compute,
                     time.perf_counter() - t0)

    def close(self) -> None:
        """Drop the model (frees its memory; ``setup()`` loads it again)."""
        self._model = None

    @property
    def multilingual(self) -> bool:
        return bool(self._model is not None and self._model.model.is_multilingual)

    def process(self, path_bytes: bytes, video_id: str, *, origin_s: float | None = None,
                language: str | None = None) -> SpeechResult:
        """Transcribe one video.

        Args:
            path_bytes: the video file.
            video_id: its id (rows and segment ids carry it).
            origin_s: absolute time (s) of the clips' zero (the probe's first video frame); read
                from the file when None.
            language: overrides ``cfg.language`` for this video.

        Returns:
            A :class:`SpeechResult`: ``ok``, ``silent`` or ``no_audio``.

        Raises:
            SpeechError: ``AudioDecodeError`` (the container or its audio does not decode) or
                ``TranscribeError`` (the model failed).
        """
        from vidsearch.pipeline.subtitles import video_origin_s

        self.setup()
        assert self.resolved is not None
        result = SpeechResult(status="silent", model_id=self.resolved.model_id)
        lang = language or self.cfg.language
        stats = AudioStats()
        try:
            with open_media(path_bytes) as container:
                if origin_s is None:
                    origin_s = video_origin_s(container)[0]
                t = time.perf_counter()
                for window in iter_audio_windows(container, origin_s=origin_s, window_s=self.cfg.window_s,
                                                 stats=stats):
                    result.decode_s += time.perf_counter() - t
                    lang = self._transcribe_window(window.samples, window.offset_s, video_id, lang, result)
                    t = time.perf_counter()
                result.decode_s += time.perf_counter() - t
        except NoAudioError:
            result.status = "no_audio"
            return result
        except SpeechError:
            raise
        except Exception as e:  # noqa: BLE001 - PyAV/ffmpeg errors are many classes; all mean "audio unreadable"
            raise SpeechError("AudioDecodeError", f"audio does not decode ({type(e).__name__}: {str(e)[:200]})") from e
        result.audio_s = stats.duration_s
        result.bad_packets = stats.bad_packets
        if stats.packets and stats.bad_packets == stats.packets:
            raise SpeechError("AudioDecodeError", f"none of {stats.packets} audio packets decodes ({stats.codec})")
        result.status = "ok" if result.segments else "silent"
        return result

    def speech_regions(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """Silero VAD speech regions of 16 kHz samples, as (start, end) sample indices (padded)."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        opts = VadOptions(threshold=self.cfg.vad_threshold, min_silence_duration_ms=self.cfg.vad_min_silence_ms,
                          speech_pad_ms=self.cfg.vad_speech_pad_ms)
        return [(int(c["start"]), int(c["end"])) for c in get_speech_timestamps(samples, opts)]

    def _transcribe_window(self, samples: np.ndarray, offset_s: float, video_id: str, lang: str | None,
                           result: SpeechResult) -> str | None:
        from faster_whisper.transcribe import restore_speech_timestamps
        from faster_whisper.vad import collect_chunks

        t = time.perf_counter()
        regions = self.speech_regions(samples)
        result.vad_s += time.perf_counter() - t
        if not regions:
            return lang
        result.speech_s += sum(e - s for s, e in regions) / SAMPLE_RATE
        chunks = [{"start": s, "end": e} for s, e in regions]
        speech = np.concatenate(collect_chunks(samples, chunks)[0])
        t = time.perf_counter()
        try:
            # The same steps as faster-whisper's own vad_filter path, with the VAD run once here
            # so that its regions can also bound the word times.
            segments, info = self._model.transcribe(
                speech, language=lang, beam_size=self.cfg.beam_size, word_timestamps=True, vad_filter=False,
                condition_on_previous_text=self.cfg.condition_on_previous_text,
            )
            segments = list(restore_speech_timestamps(segments, chunks, SAMPLE_RATE))
        except Exception as e:  # noqa: BLE001 - CTranslate2 raises RuntimeError/ValueError/MemoryError
            raise SpeechError("TranscribeError", f"speech recognition failed ({type(e).__name__}: "
                              f"{str(e)[:200]})") from e
        result.transcribe_s += time.perf_counter() - t
        if result.language is None:
            result.language, result.language_probability = info.language, float(info.language_probability)
        region_s = [(offset_s + s / SAMPLE_RATE, offset_s + e / SAMPLE_RATE) for s, e in regions]
        for seg in segments:
            if not seg.text.strip():
                continue
            words = [Word(offset_s + float(w.start), offset_s + float(w.end), w.word, float(w.probability))
                     for w in seg.words or ()]
            words = [Word(max(0.0, w.start_s), max(0.0, w.end_s), w.word, w.prob)
                     for w in clip_words(words, region_s) if w.word.strip()]
            if not words:  # no word timings: the segment's own span
                start = max(0.0, offset_s + float(seg.start))
                groups: list[tuple[float, float, str, list[Word]]] = [
                    (start, max(start, offset_s + float(seg.end)), seg.text.strip(), [])]
            else:
                groups = [(g[0].start_s, max(w.end_s for w in g), "".join(w.word for w in g).strip(), g)
                          for g in split_at_pauses(words, self.split_gap_s)]
            for start, end, text, ws in groups:
                i = len(result.segments)
                model = self.model_id
                result.segments.append(TranscriptSegment(
                    video_id=video_id, segment_id=segment_id(video_id, "speech", SPEECH_TRACK, i, start, end, model),
                    segment_index=i, start_s=start, end_s=end, text=text, source="speech", track=SPEECH_TRACK,
                    language=info.language, model=model, words=tuple(ws) or None,
                    avg_logprob=float(seg.avg_logprob), no_speech_prob=float(seg.no_speech_prob),
                ))
        # Detect once per video: later windows reuse the first window's language.
        return lang or result.language
