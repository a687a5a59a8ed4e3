"""Text stages of ingest: subtitles (always) and speech (``--speech``) -> :class:`TextOutcome` per video.

Units that the executors run (no Ray here):

* :func:`read_subtitle_outcome`: every text subtitle track of a video (``pipeline.subtitles``),
  run in the decode worker's child while it plans the video (the file is open there and the
  child is killable), or on its own for a video already embedded;
* :class:`SpeechWorker`: one :class:`~vidsearch.pipeline.speech.Transcriber` (model loaded once)
  behind the stage contract ``setup()`` / ``process()`` / ``close()``; a per-video speech error
  becomes a ``failed`` outcome (a failure of the speech stage only), never an exception;
* :func:`status_row`: the ``text_status`` row of an outcome (the resume state of text stages).

Outcomes travel to the driver, which commits them with the video's clips (or alone, for a
video embedded earlier: a text-only commit of ``transcripts`` + ``text_status``).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from vidsearch.pipeline.faults import SpeechFaults
from vidsearch.pipeline.types import TextOutcome, VideoTask
from vidsearch.schemas.speech_config import SpeechCfg
from vidsearch.schemas.text_tables import (
    TEXT_FAILED,
    TEXT_NO_AUDIO,
    TEXT_NONE,
    TEXT_OK,
    TEXT_SILENT,
)

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
