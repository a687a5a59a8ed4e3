"""What an ingest shows on stderr while it works: start-up steps, then progress.

On a terminal, progress is a tqdm bar; otherwise (a log file, CI, the demo's pipe) one line every
``interval_s`` seconds and a last one at the end, so a long run is never silent. Start-up steps
("starting Ray ...", "loading model ...") are one line each in both cases. Everything here is
display: ``enabled=False`` (``-q``) shows nothing, and warnings go through logging, not here.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 clip"``, ``"2 clips"`` (``many`` for irregular plurals)."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def duration_text(seconds: float) -> str:
    """A duration for people: ``"42 s"``, ``"7 min 9 s"``, ``"3 h 12 min"``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, s = divmod(s, 60)
        return f"{m} min {s} s" if s else f"{m} min"
    h, rest = divmod(s, 3600)
    m = rest // 60
    return f"{h} h {m} min" if m else f"{h} h"


@dataclass(frozen=True)
class Snapshot:
    """Where a run stands (computed by the driver)."""

    videos_settled: int
    videos_total: int
    clips: int                     # clips embedded so far (settled videos and those in flight)
    failed: int                    # videos failed or partial so far
    elapsed_s: float
    eta_s: float | None            # None until there is a rate to go by
    speech_audio_s: float | None = None   # audio transcribed so far (None: no --speech)
    ocr_read: int | None = None           # frames OCR read so far (None: no --ocr)
    ocr_waiting: int = 0                  # frames decoded for OCR, not read yet

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ocr_frames_per_s(self) -> float:
        """Frames OCR read per second of the run so far."""
        return (self.ocr_read or 0) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def audio_h_per_h(self) -> float:
        """Audio hours transcribed per hour of the run so far."""
        return (self.speech_audio_s or 0.0) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        parts = [f"{self.videos_settled}/{plural(self.videos_total, 'video')}", plural(self.clips, "clip"),
                 f"{self.clips_per_s:.1f} clips/s"]
        if self.speech_audio_s is not None:
            parts.append(f"speech {duration_text(self.speech_audio_s)} of audio ({self.audio_h_per_h:.1f} audio h/h)")
        if self.ocr_read is not None:
            parts.append(f"OCR {plural(self.ocr_read, 'frame')} read ({self.ocr_frames_per_s:.1f}/s)"
                         + (f", {self.ocr_waiting:,} waiting" if self.ocr_waiting else ""))
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.eta_s is not None and self.videos_settled < self.videos_total:
            parts.append(f"about {duration_text(self.eta_s)} left")
        return "ingest: " + ", ".join(parts)


class Progress:
    """Start-up lines and a progress display (module docstring).

    Args:
        enabled: False shows nothing.
        stream: where to write (default ``sys.stderr``).
        interval_s: seconds between progress lines when ``stream`` is not a terminal.
        clock: time source (tests pass a fake one).
    """

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.clock = clock
        self.tty = self.stream.isatty()
        self._bar: Any = None
        self._last_line = -math.inf
        self._last: Snapshot | None = None
        self._last_shown = True       # the last snapshot has been written as a line

    def say(self, message: str) -> None:
        """One start-up or status line."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
            return
        self.stream.write(message + "\n")
        self.stream.flush()

    def start(self, total_videos: int) -> None:
        """The processing loop begins."""
        if not self.enabled or not self.tty:
            self._last_line = self.clock()  # the first line after one interval of work
            return
        from tqdm import tqdm  # type: ignore[import-untyped]

        self._bar = tqdm(total=total_videos, unit="video", file=self.stream, dynamic_ncols=True)

    def update(self, snap: Snapshot) -> None:
        """New figures; shown on the bar, or as a line once ``interval_s`` has passed."""
        self._last, self._last_shown = snap, False
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.n = snap.videos_settled
            extra: dict[str, Any] = {} if snap.speech_audio_s is None else {"audio_h_h": f"{snap.audio_h_per_h:.1f}"}
            if snap.ocr_read is not None:
                extra.update(ocr=snap.ocr_read, ocr_wait=snap.ocr_waiting)
            self._bar.set_postfix(clips=snap.clips, clips_s=f"{snap.clips_per_s:.1f}", failed=snap.failed,
                                  **extra, refresh=False)
            self._bar.refresh()
            return
        now = self.clock()
        if now - self._last_line >= self.interval_s:
            self._last_line, self._last_shown = now, True
            self.say(snap.line())

    def close(self) -> None:
        """The loop ended: close the bar, or write the last line (when the last update was not
        one already)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self._last is not None and not self._last_shown:
            self._last_shown = True
            self.say(self._last.line())
