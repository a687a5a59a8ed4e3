"""Audio of a video for speech recognition: PyAV decode to 16 kHz mono float32, in bounded windows.

Why our own decode: faster-whisper's ``decode_audio`` (and ``transcribe(path)``) call
``av.open(..., metadata_errors=...)``, which PyAV 19 removed (measured on the GPU machine), and it
would open the file without the probe's safety options. Here the container is opened like the
probe opens it (:func:`open_media`: demuxer forced to the sniffed format, ``file`` protocol only).

Memory is bounded: the audio comes out in windows of ``window_s`` seconds (30 min = 115 MB of
float32), each cut at the quietest 100 ms of its last ``search_s`` seconds so that a cut does not
split a word. A 3 h lecture never sits in memory whole.

Times: a window's ``offset_s`` is on the clips' timeline (0 = the first video frame; see
``pipeline.subtitles.video_origin_s``). Samples are taken as contiguous from the first decoded
frame: gaps in the audio timestamps are not filled (rare outside broken captures).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

_logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # Whisper's input rate


class NoAudioError(Exception):
    """The container has no audio stream (not a failure: the video simply has nothing to hear)."""


@dataclass(frozen=True)
class AudioWindow:
    """A piece of a video's audio: mono float32 at :data:`SAMPLE_RATE`, starting at ``offset_s``."""

    offset_s: float
    samples: np.ndarray

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass
class AudioStats:
    """What the decode saw (filled while iterating)."""

    stream_index: int | None = None
    codec: str | None = None
    samples: int = 0
    bad_packets: int = 0
    packets: int = 0

    @property
    def duration_s(self) -> float:
        return self.samples / SAMPLE_RATE


@contextmanager
def open_media(path_bytes: bytes) -> Iterator[object]:
    """Open a video with PyAV the way the probe does (sniffed demuxer, ``file`` protocol only).

    Raises:
        ValueError: the first bytes are not a known video container.
        av.error.FFmpegError / OSError: the container does not open.
    """
    import av

    from vidsearch.pipeline.probe import open_path, sniff_container

    with open(path_bytes, "rb") as f:
        demuxer = sniff_container(f.read(512))
    if demuxer is None:
        raise ValueError("not a known video container")
    with open_path(path_bytes) as p, av.open(p, format=demuxer, options={"protocol_whitelist": "file"}) as c:
        yield c


def pick_audio_stream(container: object) -> object | None:
    """The audio stream to transcribe: the one marked default, else the first; None without audio."""
    streams = list(container.streams.audio)  # type: ignore[attr-defined]
    if not streams:
        return None
    for s in streams:
        disp = getattr(s, "disposition", None)
        if disp is not None and "default" in str(disp).lower():
            return s
    return streams[0]


def _quietest_cut(buf: np.ndarray, lo: int, hi: int) -> int:
    """Sample index in [lo, hi) at the start of the 100 ms frame with the least energy."""
    frame = SAMPLE_RATE // 10
    lo = max(0, lo)
    n = (hi - lo) // frame
    if n <= 1:
        return hi
    energy = np.square(buf[lo:lo + n * frame]).reshape(n, frame).sum(axis=1)
    return lo + int(np.argmin(energy)) * frame + frame // 2


def iter_audio_windows(container: object, *, origin_s: float = 0.0, window_s: float = 1800.0,
                       search_s: float = 30.0, stats: AudioStats | None = None) -> Iterator[AudioWindow]:
    """Decode the chosen audio stream of an open container into windows of about ``window_s`` seconds.

    Args:
        container: an open PyAV container (:func:`open_media`).
        origin_s: absolute time (s) of the clips' zero; window offsets are relative to it.
        window_s: target window length; windows are cut at the quietest point of their last
            ``search_s`` seconds.
        search_s: how far back from the window end to look for the cut.
        stats: filled with what was decoded (stream, samples, packets that failed to decode).

    Raises:
        NoAudioError: no audio stream.
        av.error.FFmpegError: the demuxer failed (corrupt or truncated file) before any audio.
    """
    import av

    stats = stats if stats is not None else AudioStats()
    stream = pick_audio_stream(container)
    if stream is None:
        raise NoAudioError("no audio stream")
    stats.stream_index = stream.index  # type: ignore[attr-defined]
    stats.codec = stream.codec_context.name  # type: ignore[attr-defined]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    window = max(1, int(window_s * SAMPLE_RATE))
    search = min(window // 2, int(search_s * SAMPLE_RATE))
    pieces: list[np.ndarray] = []
    buffered = 0
    offset: float | None = None

    def frames() -> Iterator[object]:
        try:
            for packet in container.demux(stream):  # type: ignore[attr-defined]
                if packet.size == 0:
                    continue
                stats.packets += 1
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    stats.bad_packets += 1  # one corrupt packet costs its few ms of audio, not the video
                    continue
                yield from decoded
        except av.error.FFmpegError as e:
            if not stats.packets:
                raise
            # A truncated file: keep what was decoded; the probe's coverage already reports it.
            _logger.info("audio demux stopped early after %d packets: %s", stats.packets, e)
        yield None  # flush the resampler

    for frame in frames():
        if offset is None and frame is not None and frame.time is not None:  # type: ignore[attr-defined]
            offset = float(frame.time) - origin_s  # type: ignore[attr-defined]
        for out in resampler.resample(frame):  # type: ignore[arg-type]
            a = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            if not a.size:
                continue
            pieces.append(a)
            buffered += a.size
            stats.samples += a.size
        while buffered >= window + search:
            buf = np.concatenate(pieces)
            cut = _quietest_cut(buf, window - search, window)
            start = offset if offset is not None else 0.0
            yield AudioWindow(start, buf[:cut])
            rest = buf[cut:]
            pieces, buffered = [rest], rest.size
            offset = start + cut / SAMPLE_RATE
    if buffered:
        yield AudioWindow(offset if offset is not None else 0.0, np.concatenate(pieces))
