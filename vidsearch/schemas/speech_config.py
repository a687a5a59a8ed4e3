"""Typed configuration of speech recognition (``ingest --speech``); see ``pipeline/speech.py``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

# Default model: multilingual Whisper "small" (244M parameters, 99 languages, ~0.5 GB in
# CTranslate2 float16). The English-only distil-large-v3 / *.en models would silently
# transcribe other languages as English-sounding text; large-v3(-turbo) is better but 3-6x slower
# on a CPU, where the default has to stay usable. Pass --speech-model large-v3-turbo on a GPU.
DEFAULT_SPEECH_MODEL = "small"


@dataclass(frozen=True)
class SpeechCfg:
    """How speech becomes transcript segments. Fields that change the text are recorded per run."""

    # faster-whisper model name (tiny ... large-v3, turbo, distil-*), a Hugging Face repo id of a
    # CTranslate2 Whisper model, or a local CTranslate2 folder (config.json, model.bin,
    # tokenizer.json, vocabulary.txt). An English-only model on other languages writes nonsense.
    model: str = DEFAULT_SPEECH_MODEL
    # Spoken language ("en", "de", ...); None detects it once per video from its first speech.
    # A wrong forced language makes Whisper translate or garble instead of transcribing.
    language: str | None = None
    # "auto" = CUDA when CTranslate2 sees a GPU, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # CTranslate2 compute type; None = float16 on CUDA, int8 on CPU (4x less memory, ~2x faster
    # than float32 on CPU at nearly the same accuracy).
    compute_type: str | None = None
    # CPU threads of one transcriber (0 = CTranslate2's default of 4). Set it to the cores the
    # transcription actor owns, or actors oversubscribe the machine.
    cpu_threads: int = 0
    # Beam search width: 5 is Whisper's reference setting; 1 (greedy) is ~2x faster, a little worse.
    beam_size: int = 5
    # Silero VAD: speech probability threshold, and the pause length that ends a speech region.
    # Regions bound the word times (a word never ends inside a pause, see speech.clip_words), so
    # a long min-silence lets Whisper's last word of a sentence run into the pause after it.
    vad_threshold: float = 0.5
    vad_min_silence_ms: int = 500
    # Padding kept on each side of a speech region (Whisper needs a little context at the edges).
    vad_speech_pad_ms: int = 200
    # Audio is decoded and transcribed in windows of about this many seconds (memory bound:
    # 30 min = 115 MB of samples), each cut at a quiet point.
    window_s: float = 1800.0
    # Feed the previous window's text as a prompt. Off: Whisper's repetition loops on music or
    # noise then cannot carry over, at a small cost in consistency.
    condition_on_previous_text: bool = False

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("speech model must not be empty")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if not 0.0 < self.vad_threshold < 1.0:
            raise ValueError(f"vad_threshold must be in (0, 1), got {self.vad_threshold}")
        if self.window_s < 60:
            raise ValueError(f"window_s must be >= 60 s, got {self.window_s}")
        if self.cpu_threads < 0 or self.vad_min_silence_ms < 0 or self.vad_speech_pad_ms < 0:
            raise ValueError("cpu_threads, vad_min_silence_ms and vad_speech_pad_ms must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
