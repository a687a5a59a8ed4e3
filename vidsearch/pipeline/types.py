"""Rows that travel between the ingest stages (plain, picklable dataclasses; no Ray here).

The flow of one video (``docs/ARCHITECTURE.md``)::

    VideoTask --probe+segment--> VideoPlan --decode (ChunkRequest per chunk)--> FramesChunk
              --embed--> embeddings --write--> clip rows + one video row

Per-video failures are data, not exceptions that cross stages: a stage raises
:class:`VideoError` inside its own unit, and the runner turns it into a ``videos`` row with
``status=failed`` (``stage``, ``error_type``, ``error_message``).
"""

from __future__ import annotations

import datetime as dt
import errno
from dataclasses import dataclass, field
from typing import Any

# Stable error_type names (docs/RELIABILITY.md §8 vocabulary). Tests and users match on these.
ERROR_TYPES = (
    "EmptyFile", "CorruptContainer", "NotAVideo", "NoVideoStream", "UnsupportedCodec", "TooShort",
    "TooLarge", "TooManyFrames", "TooManyStreams", "DecodeTimeout", "DecoderCrash", "DecodeError",
    "NotFound", "PermissionDenied", "NotRegularFile", "Unstable", "EmbedOOM", "NoClips", "IOError",
    "PartialDecode", "WorkerKilled", "ShardCorrupt",
)
# Errors that depend only on the bytes of the file: the same video_id fails the same way again,
# so a rerun does not retry them (``--retry-failed`` does). Others (timeouts, crashes, I/O) are
# retried up to ``max_attempts`` times, then quarantined.
DETERMINISTIC_ERRORS = frozenset({
    "EmptyFile", "CorruptContainer", "NotAVideo", "NoVideoStream", "UnsupportedCodec", "TooShort",
    "TooLarge", "TooManyFrames", "TooManyStreams", "NoClips", "PartialDecode",
})


# errno values of a read that may succeed when tried again (network filesystems: EIO from an
# NFS/SMB/FUSE server hiccup, ESTALE after a failover, timeouts). ENOENT/EACCES are not here:
# they are the file's own state (NotFound, PermissionDenied).
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR,
                              errno.ECONNRESET, errno.ECONNABORTED, errno.ENETDOWN,
                              errno.ENETUNREACH, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENOLINK})


def is_transient_io(e: BaseException) -> bool:
    """True for an ``OSError`` (PyAV's included) whose errno says "try the read again"."""
    return isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS


class VideoError(Exception):
    """A per-video failure: becomes a failure row, never stops the run.

    Args:
        error_type: one of :data:`ERROR_TYPES`.
        stage: the stage that failed (discover, probe, segment, decode, embed).
        message: one human line; the runner prefixes the file's display path.
    """

    def __init__(self, error_type: str, stage: str, message: str) -> None:
        if error_type not in ERROR_TYPES:
            # Users and tests match on these names: a new one is added to ERROR_TYPES on purpose.
            raise ValueError(f"unknown error_type {error_type!r} (not in ERROR_TYPES)")
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.stage = stage
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        # Travels between processes (decode child, Ray actors) as a value: errors are data.
        return (VideoError, (self.error_type, self.stage, self.message))


class WorkerLost(Exception):
    """A worker process (Ray actor) died while a call to it was pending (killed, out of memory).

    Raised by ``Backend.get``; the driver retries the call or, after repeated deaths on the same
    video, fails it with ``WorkerKilled`` (docs/RELIABILITY.md F3-F5).

    Args:
        message: what the executor reported.
        permanent: the worker will not come back (its restarts are used up).
    """

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class VideoTask:
    """One discovered regular file to ingest."""

    path_bytes: bytes             # exact os.fsencode(path): non-UTF-8 names round-trip
    display_path: str             # ids.display_path(path_bytes)
    video_id: str                 # ids.video_fingerprint() at discovery
    size_bytes: int
    mtime: dt.datetime
    attempts: int = 1             # this run's attempt number for this video_id


@dataclass(frozen=True)
class ProbeInfo:
    """What the probe learnt about a video (container metadata checked by a demux pass).

    The frame timestamps stay with the probe's caller (segmentation, in the decode worker): one
    float per frame is ~1 MB for an hour of video, and nothing downstream of the plan needs them.
    """

    container: str                # what the file is: mp4, mov, 3gp, webm, matroska, avi, ... (probe.container_name)
    demuxer: str                  # the ffmpeg demuxer that reads it, sniffed once by the probe; decoders reuse it
    codec: str
    width: int                    # display width (after rotation)
    height: int                   # display height
    coded_width: int
    coded_height: int
    rotation: int                 # degrees clockwise to display upright: 0/90/180/270
    fps: float                    # average frame rate (frames / duration)
    frame_count: int              # frames demuxed (packets with data), the decodable upper bound
    claimed_frames: int           # the container's own claim (0 when it has none)
    duration_s: float             # from the frame timestamps: last pts - first pts + one frame
    num_streams: int
    # Frames the container implies beyond those demuxed (rule 2): a declared duration longer than
    # the frames reach, or timestamp gaps where the demuxer reported damage. 0 = frame_count.
    expected_frames: int = 0
    expected_note: str = ""       # why expected_frames exceeds frame_count, for the failure message
    # The decoder's view of the stream, for choosing a decoder (NVDEC takes 4:2:0 only, h264 in
    # 8 bits only): pixel format ("yuv420p", "yuv444p", "yuv420p10le", ...; "" unknown) and profile
    # ("High", "Main 10", "High 4:4:4 Predictive", ...; "" unknown).
    pix_fmt: str = ""
    profile: str = ""
    # The clips' time zero in container time: the first video frame's presentation time (s).
    # Subtitle cues and audio are put on the clips' timeline with it.
    origin_s: float = 0.0
    audio_streams: int = 0        # 0: nothing to transcribe (speech status no_audio, no worker call)
    subtitle_streams: int = 0     # embedded subtitle tracks (0: only sidecar files are looked for)


@dataclass(frozen=True)
class ClipSpan:
    """One clip: frames ``[start_frame, end_frame)`` and the frames sampled for the model."""

    clip_index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    frame_indices: tuple[int, ...]
    frame_times_s: tuple[float, ...]
    padded: bool
    segment: str                  # "fixed" or "shots"
    shot_index: int | None = None


@dataclass(frozen=True)
class TextOutcome:
    """What one text stage found in one video: its rows, or why there are none (issue 14, 15).

    ``kind`` is the stage (``subtitle``, ``speech``, ``screen``), ``status`` one of
    ``schemas.text_tables.TEXT_STATUSES``. A ``failed`` outcome is a failure of that stage only:
    the video's clips are committed as usual.
    """

    video_id: str
    kind: str
    status: str
    rows: tuple[Any, ...] = ()    # TranscriptSegment (subtitle, speech) or ScreenTextRow (screen)
    model: str | None = None      # ASR / OCR model id (None for subtitles)
    language: str | None = None
    media_s: float | None = None  # seconds of audio transcribed (speech)
    work_s: float | None = None   # seconds the stage spent on the video
    notes: str | None = None      # tracks skipped, cut or re-encoded (one line)
    error_type: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class OcrPlan:
    """The OCR candidate frames of one video (``ingest --ocr``, issue 15): the frame nearest each
    ``OcrCfg.interval_s`` of the clips' timeline (:func:`vidsearch.pipeline.ocr.ocr_sample_indices`).

    The decode worker keeps the indices and times with its plan; the driver's copy carries only
    their count (one int and one float per half second is ~100 KB per hour of video).
    """

    count: int                    # candidates
    size: tuple[int, int]         # (width, height) of the OCR frames, as displayed (rotation applied)
    indices: tuple[int, ...] = ()  # frame indices, ascending (empty in the driver's copy)
    times: tuple[float, ...] = ()  # their times (s, 0 = the first frame)

    def summary(self) -> OcrPlan:
        """This plan without the per-candidate lists (what travels to the driver)."""
        return OcrPlan(self.count, self.size)


@dataclass(frozen=True)
class VideoPlan:
    """Probe + segmentation result of one video: what the decoder must produce."""

    task: VideoTask
    probe: ProbeInfo
    clips: tuple[ClipSpan, ...]
    expected_frames: int          # max(demuxed, claimed, implied by the probe): the coverage denominator
    # The subtitles read while planning (cheapest there: the file is open in the decode worker).
    # The driver takes them out of the plan it keeps, which travels back to GPU decode calls.
    text: tuple[TextOutcome, ...] = ()
    # OCR candidates (None: no --ocr for this video). An OCR-only plan (a video embedded by an
    # earlier run) has fixed windows of ``OCR_ONLY_WINDOW_S`` as its clips: a time partition of
    # the decode pass into chunks, never embedded.
    ocr: OcrPlan | None = None
    ocr_only: bool = False


@dataclass(frozen=True)
class ChunkRequest:
    """Decode clips ``[lo, hi)`` of a video (driver -> decode worker).

    The worker that planned the video keeps its plan, so a request names the video instead of
    carrying the plan back with every chunk. A worker without it (restarted after its process
    died, or taking over from a worker that will not come back) plans the video again: probe and
    segmentation are deterministic, and ``n_clips`` checks that the new plan is the driver's.
    """

    task: VideoTask
    lo: int
    hi: int
    n_clips: int                  # len(plan.clips) of the driver's plan
    # The worker's plan (made again if it lacks one) has OCR candidates; ocr_only: a decode pass
    # for OCR alone (no clip frames, no embedding: a video embedded by an earlier run).
    ocr: bool = False
    ocr_only: bool = False


# One letter per OCR candidate: read by OCR ("o"), the same picture as the last read ("s"),
# changed but read too recently ("k": skipped). ChangeGate's decisions, compact for the driver.
OCR_DECISION_CODES = {"ocr": "o", "same": "s", "skip": "k"}


@dataclass(frozen=True)
class OcrChunk:
    """The OCR candidates that one decode chunk handed out (decode worker -> driver).

    The frames to read travel apart (``FramesChunk.ocr_frames``: uint8 (n_read, H, W, 3) at the
    OCR size), straight to an OCR worker; this small part tells the driver what they are.
    """

    times: tuple[float, ...]      # candidate times (s), ascending
    decisions: str                # one OCR_DECISION_CODES letter per candidate
    gate_s: float = 0.0           # decode-process seconds in the change check (grey copy + compare)
    convert_s: float = 0.0        # decode-process seconds converting the frames to read to RGB
    error: str | None = None      # the candidates could not be made (the rest of the video has none)

    @property
    def n_read(self) -> int:
        return self.decisions.count("o")


@dataclass
class FramesChunk:
    """Decoded, resized frames of consecutive clips ``[clip_lo, clip_hi)`` of one video.

    ``frames`` is uint8 (n, T, S, S, 3) at the model's input size, so frames stay small in queues
    and in Ray's object store (full-resolution frames never leave the decode process).
    """

    video_id: str
    clip_lo: int
    clip_hi: int                  # requested range end; clips >= decoded_hi were not decodable
    frames: object                # numpy uint8 array; typed loosely to keep numpy out of this module
    kept: list[int] = field(default_factory=list)   # clip indices present in ``frames`` (in order)
    decoded_frames: int = 0       # frames the decoder could deliver up to the end of this range
    truncated: bool = False       # the decoder stopped early (coverage < 1 for this video)
    decoder: str = "decord"
    error: str | None = None      # why the decoder stopped early
    ocr: OcrChunk | None = None   # the chunk's OCR candidates (--ocr)
    ocr_frames: object = None     # uint8 (n_read, H, W, 3) RGB frames to read, or None


@dataclass(frozen=True)
class GpuChunkRequest:
    """Decode clips ``[lo, hi)`` of a planned video on the GPU (driver -> the embed worker that
    owns the video's NVDEC session). It carries the plan: the embed worker did not plan it."""

    plan: VideoPlan
    lo: int
    hi: int


@dataclass(frozen=True)
class GpuFallback:
    """The GPU decoder cannot take this video (from this chunk on): the CPU path decodes it.
    Not a failure: nothing of it reaches the ``failures`` table."""

    video_id: str
    reason: str                   # one line: what NVDEC refused or what failed
