"""Text stages of ingest: subtitles (always), speech (``--speech``) and on-screen text (``--ocr``)
-> :class:`TextOutcome` per video.

Units that the executors run (no Ray here):

* :func:`read_subtitle_outcome`: every text subtitle track of a video (``pipeline.subtitles``),
  run in the decode worker's child while it plans the video (the file is open there and the
  child is killable), or on its own for a video already embedded;
* :class:`SpeechWorker`: one :class:`~vidsearch.pipeline.speech.Transcriber` (model loaded once)
  behind the stage contract ``setup()`` / ``process()`` / ``close()``; a per-video speech error
  becomes a ``failed`` outcome (a failure of the speech stage only), never an exception;
* :class:`ScreenWorker`: one :class:`~vidsearch.pipeline.ocr.ScreenReader` (models loaded once)
  reading the frames the decode pass handed out for a video (:class:`OcrRead`: the lines of each
  frame, or the error as data); :func:`screen_outcome` merges a video's readings, chunk by chunk
  in time order, into ``screen_text`` rows;
* :func:`status_row`: the ``text_status`` row of an outcome (the resume state of text stages).

Outcomes travel to the driver, which commits them with the video's clips (or alone, for a
video embedded earlier: a text-only commit of ``transcripts`` + ``text_status``).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vidsearch.pipeline.faults import SpeechFaults
from vidsearch.pipeline.types import OcrChunk, TextOutcome, VideoTask
from vidsearch.schemas.ocr_config import OcrCfg
from vidsearch.schemas.speech_config import SpeechCfg
from vidsearch.schemas.text_tables import (
    TEXT_FAILED,
    TEXT_NO_AUDIO,
    TEXT_NONE,
    TEXT_OK,
    TEXT_SILENT,
)

if TYPE_CHECKING:
    from vidsearch.pipeline.ocr import TextBox

_logger = logging.getLogger(__name__)

_NOTES_MAX = 500


def read_subtitle_outcome(path_bytes: bytes, video_id: str, origin_s: float | None = None,
                          embedded: bool = True) -> TextOutcome:
    """Every text subtitle of one video as one outcome (``ok`` with rows, or ``none``).

    Args:
        path_bytes: the video file.
        video_id: its id.
        origin_s: the clips' time zero (the probe's first video frame time); read from the
            container when None (a video embedded by an earlier run).
        embedded: look at the container's subtitle streams (False when the probe saw none:
            only sidecar files are looked for, and the container is not opened again).

    Never raises for a bad subtitle: problems are the outcome's ``notes``.
    """
    from vidsearch.pipeline.subtitles import read_subtitles

    t0 = time.perf_counter()
    result = read_subtitles(path_bytes, video_id, origin_s=origin_s, embedded=embedded)
    notes = "; ".join(f"{n.track} {n.kind}: {n.message}" for n in result.notes)
    langs = sorted({s.language for s in result.segments if s.language})
    return TextOutcome(
        video_id=video_id, kind="subtitle", status=TEXT_OK if result.segments else TEXT_NONE,
        rows=tuple(result.segments), language=",".join(langs) or None, work_s=time.perf_counter() - t0,
        notes=notes[:_NOTES_MAX] or None)


class SpeechWorker:
    """Speech recognition of whole videos in one worker (a Ray actor or a thread of the local run).

    Args:
        cfg: model, device, language and VAD settings.
        fault: the test hook's spec (:data:`vidsearch.pipeline.faults.SPEECH_FAULT_ENV`).
    """

    def __init__(self, cfg: SpeechCfg, fault: str | None = None) -> None:
        from vidsearch.pipeline.speech import Transcriber

        self.cfg = cfg
        self.transcriber = Transcriber(cfg)
        self.faults = SpeechFaults(fault)

    def setup(self) -> None:
        """Load the model. Raises SpeechModelNotFoundError."""
        self.transcriber.setup()

    def info(self) -> dict[str, Any]:
        """The loaded model: ``model_id`` (what ``transcripts.model`` records), device, compute type."""
        self.setup()
        t = self.transcriber
        return {"model_id": t.model_id, "device": t.device, "compute_type": t.compute_type,
                "cpu_threads": self.cfg.cpu_threads}

    def process(self, task: VideoTask, origin_s: float | None = None) -> TextOutcome:
        """Transcribe one video: ``ok``, ``silent``, ``no_audio``, or ``failed`` (errors as data)."""
        from vidsearch.pipeline.speech import SpeechError

        self.setup()
        t0 = time.perf_counter()
        model = self.transcriber.model_id
        try:
            if self.faults.before_video(task.display_path):
                raise SpeechError("TranscribeError", "speech recognition failed (test hook)")
            r = self.transcriber.process(task.path_bytes, task.video_id, origin_s=origin_s)
        except SpeechError as e:
            return TextOutcome(video_id=task.video_id, kind="speech", status=TEXT_FAILED, model=model,
                               work_s=time.perf_counter() - t0, error_type=e.error_type, error_message=e.message)
        except Exception as e:  # noqa: BLE001 - one video's unexpected error must stay that video's
            _logger.warning("speech: %s: %s", task.display_path, e, exc_info=True)
            return TextOutcome(video_id=task.video_id, kind="speech", status=TEXT_FAILED, model=model,
                               work_s=time.perf_counter() - t0, error_type="TranscribeError",
                               error_message=f"speech recognition failed ({type(e).__name__}: {str(e)[:200]})")
        status = {"ok": TEXT_OK, "silent": TEXT_SILENT, "no_audio": TEXT_NO_AUDIO}[r.status]
        notes = f"{r.bad_packets} audio packets did not decode" if r.bad_packets else None
        return TextOutcome(video_id=task.video_id, kind="speech", status=status, rows=tuple(r.segments),
                           model=model, language=r.language, media_s=r.audio_s,
                           work_s=time.perf_counter() - t0, notes=notes)

    def close(self) -> None:
        self.transcriber.close()


@dataclass(frozen=True)
class OcrRead:
    """What an OCR worker read in one chunk's frames (errors as data)."""

    boxes: tuple[tuple[TextBox, ...], ...] = ()   # the lines of each frame read, in order
    work_s: float = 0.0                           # seconds the worker spent on them
    error_type: str | None = None                 # OcrError: the engine failed on a frame
    error_message: str | None = None


class ScreenWorker:
    """OCR of the frames a video's decode pass handed out, in one worker (a Ray actor or a thread
    of the local run); frames come in chunks, in any order across videos.

    Args:
        cfg: OCR settings (detector size, confidence floor, threads, device).
        fault: the test hook's spec (:data:`vidsearch.pipeline.faults.OCR_FAULT_ENV`).
    """

    def __init__(self, cfg: OcrCfg, fault: str | None = None) -> None:
        # OpenCV (rapidocr's image library) swaps sys.path while it imports (opencv#18502): a
        # process spawned meanwhile by another thread (the local executor starts its decode
        # children while the OCR thread loads) inherits the swapped path and fails to import
        # the standard library. Importing it here, in the thread that builds the worker, before
        # any of those threads start, closes that window.
        import cv2  # noqa: F401

        from vidsearch.pipeline.ocr import ScreenReader

        self.cfg = cfg
        self.reader = ScreenReader(cfg)
        self.faults = SpeechFaults(fault, kind="ocr")

    def setup(self) -> None:
        """Load the models. Raises OcrModelNotFoundError, OcrDeviceError."""
        self.reader.setup()

    def info(self) -> dict[str, Any]:
        """The loaded engine: ``model_id`` (``screen_text.model``), ``status_model`` (with the
        settings hash: what resume compares), device and threads."""
        from vidsearch.pipeline.ocr import status_model_id

        self.setup()
        return {"model_id": self.reader.model_id, "status_model": status_model_id(self.reader.model_id, self.cfg),
                "device": self.reader.device, "threads": self.cfg.threads}

    def process(self, task: VideoTask, frames: Any) -> OcrRead:
        """Read each of ``frames`` (uint8 (n, H, W, 3) RGB): their lines, or the error (never raises)."""
        import numpy as np

        from vidsearch.pipeline.ocr import OcrError

        self.setup()
        t0 = time.perf_counter()
        try:
            if self.faults.before_video(task.display_path):
                raise OcrError("OcrError", "text recognition failed (test hook)")
            out = tuple(tuple(self.reader.read(f)) for f in np.asarray(frames))
        except OcrError as e:
            return OcrRead(work_s=time.perf_counter() - t0, error_type=e.error_type, error_message=e.message)
        except Exception as e:  # noqa: BLE001 - one video's unexpected error must stay that video's
            _logger.warning("ocr: %s: %s", task.display_path, e, exc_info=True)
            return OcrRead(work_s=time.perf_counter() - t0, error_type="OcrError",
                           error_message=f"text recognition failed ({type(e).__name__}: {str(e)[:200]})")
        return OcrRead(out, work_s=time.perf_counter() - t0)

    def close(self) -> None:
        self.reader.close()


def screen_outcome(video_id: str, parts: Sequence[tuple[OcrChunk, Sequence[Sequence[TextBox]]]], cfg: OcrCfg, *,
                   model_id: str | None, status_model: str | None, duration_s: float | None,
                   work_s: float = 0.0) -> TextOutcome:
    """A video's ``screen`` outcome from its chunks' candidates and readings, in time order:
    ``ok`` with ``screen_text`` rows, or ``none`` (no text on screen; done all the same)."""
    from vidsearch.pipeline.ocr import FrameText, merge_screen_text

    texts: list[FrameText] = []
    n = {"o": 0, "s": 0, "k": 0}
    for meta, boxes in parts:
        read = iter(boxes)
        for t, d in zip(meta.times, meta.decisions, strict=True):
            n[d] += 1
            if d == "o":
                texts.append(FrameText(t, tuple(next(read))))
            elif d == "s":
                texts.append(FrameText(t, None))
    rows = merge_screen_text(video_id, texts, cfg=cfg, duration_s=duration_s, model=model_id)
    notes = f"{sum(n.values())} candidates: {n['o']} read, {n['s']} unchanged, {n['k']} changed too soon"
    return TextOutcome(video_id=video_id, kind="screen", status=TEXT_OK if rows else TEXT_NONE, rows=tuple(rows),
                       model=status_model, media_s=duration_s, work_s=work_s, notes=notes)


def status_row(outcome: TextOutcome, *, path: str, attempts: int, run_id: str,
               recorded_at: dt.datetime) -> dict[str, Any]:
    """The ``text_status`` row (``TEXT_STATUS_SCHEMA``) of one outcome; a failure's message names the file."""
    message = outcome.error_message
    if message is not None:
        message = f"{path!r}: {message}".replace("\n", " ")
    return {"video_id": outcome.video_id, "kind": outcome.kind, "status": outcome.status, "model": outcome.model,
            "segments": len(outcome.rows), "language": outcome.language, "media_s": outcome.media_s,
            "work_s": outcome.work_s, "notes": outcome.notes, "error_type": outcome.error_type,
            "error_message": message, "attempts": attempts, "path": path, "run_id": run_id,
            "recorded_at": recorded_at}


def no_audio_outcome(video_id: str) -> TextOutcome:
    """A video whose probe found no audio stream: nothing to transcribe (not a failure)."""
    return TextOutcome(video_id=video_id, kind="speech", status=TEXT_NO_AUDIO, work_s=0.0)


def failed_outcome(video_id: str, kind: str, error_type: str, message: str, model: str | None = None) -> TextOutcome:
    """A text stage that could not run on a video (its worker died under it, ...)."""
    return TextOutcome(video_id=video_id, kind=kind, status=TEXT_FAILED, model=model, error_type=error_type,
                       error_message=message)
