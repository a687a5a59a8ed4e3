"""What an ingest run is asked (:class:`IngestOptions`, beside the ``IngestCfg``) and what it did
(:class:`IngestSummary`: printed by the CLI, stored in the run record)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL = "internvideo2-s2-1b"


@dataclass
class IngestOptions:
    """Everything ``vidsearch ingest`` decides besides the IngestCfg."""

    model: str | None = None               # None: the library's model, else DEFAULT_MODEL
    checkpoint: str | None = None
    tokenizer: str | None = None
    device: str | None = None
    executor: str = "ray"                  # "ray" or "local"
    ray_address: str | None = None
    shards_uri: str | None = None          # shard files at this pyarrow filesystem URI (new library)
    embed_actors: int | None = None
    new_index: bool = False
    retry_failed: bool = False
    break_lock: bool = False
    build_index: bool = True
    sniff: bool = True
    max_attempts: int = 2
    decode_chunk_clips: int = 16
    progress: bool = True                  # start-up lines and progress on stderr
    progress_interval_s: float = 5.0       # between progress lines when stderr is not a terminal
    random_weights: bool = False           # benchmarks only: the architecture without its weights
    decode: str = "auto"                   # auto (NVDEC when usable, with the CPU), cpu, gpu (NVDEC required)
    nvdec_sessions: int = 8                # NVDEC sessions (threads) per GPU
    compile: bool = True                   # torch.compile the encoder blocks on CUDA
    speech: bool = False                   # transcribe speech (subtitles are always read)
    speech_model: str | None = None        # None: the library's last one, else DEFAULT_SPEECH_MODEL
    speech_language: str | None = None     # None: detected per video
    speech_workers: int | None = None      # None: one per GPU, else 1
    speech_threads: int | None = None      # CTranslate2 CPU threads per worker (None: min(4, CPUs / 2))
    retranscribe: bool = False             # transcribe again what another speech model transcribed
    ocr: bool = False                      # read the text on screen (issue 15)
    ocr_workers: int | None = None         # None: one per GPU with onnxruntime-gpu, else CPUs / 4 (Ray); 1 (local)
    ocr_threads: int | None = None         # onnxruntime threads per OCR worker (None: 1; local: min(4, CPUs / 2))
    ocr_det_side: int | None = None        # detector input long side (None: the library's last, else OcrCfg's)
    reocr: bool = False                    # read again what was read with other OCR settings
    # Preprocessing overrides of the model (get_model_config's ``sampling``, ``interpolation``), e.g.
    # the official eval's middle sampling + bicubic for `vidsearch eval --msrvtt`. They change the
    # fingerprint: a library keeps the preprocessing it was created with.
    model_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class IngestSummary:
    """What one run did (printed by the CLI, stored in ``runs``)."""

    run_id: str
    library: str
    status: str = "running"                # ok, partial, interrupted
    model: str | None = None
    videos_seen: int = 0
    videos_done: int = 0
    videos_partial: int = 0
    videos_failed: int = 0
    videos_skipped: int = 0                # already settled by an earlier run
    videos_quarantined: int = 0            # failed max_attempts times; skipped
    videos_moved: int = 0                  # known content at a new path: path row, no re-embed
    videos_duplicate: int = 0              # same content as another path of this run
    videos_replaced: int = 0
    videos_failed_before: int = 0          # failed/partial in an earlier run, not retried
    not_regular: int = 0
    clips: int = 0
    elapsed_s: float = 0.0
    embed_calls: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    index: str | None = None
    decode_nodes: int = 1                  # cluster nodes the decode workers ran on
    shards_quarantined: int = 0            # missing/corrupt shards set aside at the start (F10)
    loop_s: float = 0.0                    # time in the scheduling loop (no start-up, no index)
    decoders: str = "cpu"                  # "cpu" or "gpu+cpu": what decoded this run
    gpu_videos: int = 0                    # videos given to the GPU decoder
    gpu_fallbacks: int = 0                 # of those, handed back to the CPU path (not failures)
    # Text stages (issue 14).
    text_only_videos: int = 0              # videos embedded earlier that got only text stages
    subtitle_videos: int = 0               # videos with subtitle rows written by this run
    subtitle_segments: int = 0
    speech_model: str | None = None        # the model id this run transcribed with
    speech_device: str | None = None
    speech_videos: int = 0                 # transcribed with speech found
    speech_silent: int = 0
    speech_no_audio: int = 0
    speech_failed: int = 0
    speech_failed_before: int = 0          # failed for good in an earlier run; not retried
    speech_done_before: int = 0            # transcribed by an earlier run with this model
    speech_other_model: int = 0            # transcribed by another model; kept (--retranscribe redoes them)
    speech_segments: int = 0
    speech_audio_s: float = 0.0            # audio transcribed
    speech_work_s: float = 0.0             # seconds the speech workers spent on it
    speech_held_out: int = 0               # videos committed before their transcript (pool behind)
    # On-screen text (issue 15).
    screen_model: str | None = None        # the OCR engine's id (screen_text.model)
    screen_status_model: str | None = None  # ... with the settings hash (text_status.model of kind screen)
    ocr_device: str | None = None
    ocr_workers: int = 0
    screen_videos: int = 0                 # videos with text on screen found
    screen_none: int = 0                   # read, no text on screen
    screen_failed: int = 0
    screen_failed_before: int = 0          # failed for good in an earlier run; not retried
    screen_done_before: int = 0            # read by an earlier run with these settings
    screen_other_settings: int = 0         # read with other OCR settings; kept (--reocr redoes them)
    screen_rows: int = 0
    screen_held_out: int = 0               # videos committed before their screen text (OCR behind)
    ocr_candidates: int = 0                # candidate frames the decode passes handed out
    ocr_frames_read: int = 0               # frames OCR read
    ocr_video_s: float = 0.0               # seconds of video whose screen text was settled
    ocr_work_s: float = 0.0                # seconds the OCR workers spent reading
    ocr_decode_s: float = 0.0              # seconds the decode processes spent on change checks + RGB
    ocr_waiting_peak: int = 0              # most OCR frames decoded and not read yet at one time

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ocr_frames_per_s(self) -> float:
        """Frames read per second of OCR worker time (one worker's speed)."""
        return self.ocr_frames_read / self.ocr_work_s if self.ocr_work_s > 0 else 0.0

    @property
    def ocr_video_h_per_h(self) -> float:
        """Video hours whose screen text was read per hour of this run's loop."""
        return self.ocr_video_s / self.loop_s if self.loop_s > 0 else 0.0

    @property
    def speech_audio_h_per_h(self) -> float:
        """Audio hours transcribed per hour of this run's loop (the pipeline's speech throughput)."""
        return self.speech_audio_s / self.loop_s if self.loop_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        if self.status == "interrupted":
            return 130
        # The same command gives the same answer: inputs that failed earlier still count.
        bad = (self.videos_failed + self.videos_partial + self.videos_quarantined + self.videos_failed_before
               + self.speech_failed + self.speech_failed_before + self.screen_failed + self.screen_failed_before)
        return 2 if bad else 0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["clips_per_s"] = round(self.clips_per_s, 3)
        d["speech_audio_h_per_h"] = round(self.speech_audio_h_per_h, 3)
        d["ocr_frames_per_s"] = round(self.ocr_frames_per_s, 3)
        d["ocr_video_h_per_h"] = round(self.ocr_video_h_per_h, 3)
        d["exit_code"] = self.exit_code
        return d
