"""Frame rates and SMPTE timecode for exports to editing software.

Timecode counts frames at a *nominal* integer rate: 29.97 fps (30000/1001) counts 30 labels a
second and, as drop-frame (DF), skips the labels ``;00`` and ``;01`` at the start of every minute
except each tenth, so that the label tracks the clock (SMPTE ST 12-1). 59.94 skips four labels.
OpenTimelineIO implements exactly this for the SMPTE rates (:data:`STANDARD_RATES`) and is used
for them; other whole-number rates (10, 12, 15 fps ...) have no SMPTE timecode, so their labels are
plain non-drop arithmetic here (OTIO refuses them).

Rates are :class:`fractions.Fraction`: NTSC rates are exact (30000/1001), never 29.97.
:func:`conform_rate` decides the rate an export uses for a source (its own when it is clean, the
nearest standard rate when it is variable), :func:`timeline_rate` the rate of the exported
timeline, which must have a timecode.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

__all__ = [
    "DROP_FRAME_RATES",
    "STANDARD_RATES",
    "TimecodeError",
    "as_rate",
    "conform_rate",
    "format_rate",
    "frames_to_timecode",
    "is_drop_frame_rate",
    "nominal_fps",
    "parse_timecode",
    "timeline_rate",
]

# The rates editing software offers for a timeline (FCP X, Premiere, Resolve all offer these).
STANDARD_RATES: tuple[Fraction, ...] = (
    Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30),
    Fraction(48), Fraction(50), Fraction(60000, 1001), Fraction(60),
)
DROP_FRAME_RATES: frozenset[Fraction] = frozenset({Fraction(30000, 1001), Fraction(60000, 1001)})

# Two rates closer than this (relative) are the same rate: 29.97 vs 30 differ by 0.1 %, so the
# tolerance must stay well below that, and above the rounding of a catalog fps computed as
# frames / duration (a 10 s clip at 29.97 gives 29.970 +- 0.003 %).
_SAME_RATE = 3e-4
# A container whose average rate and base rate differ by more than this is variable-rate.
_VARIABLE = 2e-3

_TC = re.compile(r"^(\d{1,2})[:;.,](\d{2})[:;.,](\d{2})([:;.,])(\d{2,3})$")


class TimecodeError(ValueError):
    """A timecode string or frame rate that cannot be used."""


def as_rate(value: float | Fraction | int | str) -> Fraction:
    """A frame rate as an exact fraction; 29.97 / 23.976 / 59.94 snap to the NTSC fractions.

    Raises:
        TimecodeError: not a positive finite rate.
    """
    try:
        r = Fraction(value) if not isinstance(value, float) else None
    except (ValueError, ZeroDivisionError):
        raise TimecodeError(f"not a frame rate: {value!r}") from None
    if r is None:
        f = float(value)
        if not math.isfinite(f) or f <= 0:
            raise TimecodeError(f"not a frame rate: {value!r}")
        r = Fraction(f).limit_denominator(1_000_000)
    if r <= 0 or r > 1000:
        raise TimecodeError(f"not a frame rate: {value!r}")
    for s in STANDARD_RATES:
        if s.denominator != 1 and abs(r / s - 1) < _SAME_RATE:
            return s
    whole = round(r)
    if whole >= 1 and abs(r / whole - 1) < _SAME_RATE:
        return Fraction(whole)
    return r


def format_rate(rate: Fraction) -> str:
    """``30000/1001`` -> ``"29.97"``, ``25`` -> ``"25"`` (for messages and CSV cells)."""
    if rate.denominator == 1:
        return str(rate.numerator)
    return f"{float(rate):.3f}".rstrip("0").rstrip(".")


def nominal_fps(rate: Fraction) -> int:
    """Labels per second of the timecode at ``rate`` (30 for 29.97)."""
    return max(1, round(rate))


def is_drop_frame_rate(rate: Fraction) -> bool:
    """True for 29.97 and 59.94, the rates that have a drop-frame timecode."""
    return rate in DROP_FRAME_RATES


def _nearest_standard(rate: Fraction) -> Fraction:
    return min(STANDARD_RATES, key=lambda s: abs(math.log(float(rate) / float(s))))


def conform_rate(fps: float | Fraction | None, *, variable: bool = False) -> tuple[Fraction, str | None]:
    """The rate an export counts a source's frames at, and a note when it is not the source's own.

    - a standard rate (23.976 ... 60), or any other whole number of frames a second (10, 12, 15,
      120), is kept: editing software counts such a file's frames at its own rate;
    - a variable frame rate, or an odd constant one (e.g. 7.3 fps), is conformed to the nearest
      standard rate of its average, which is what editors do when they import such a file (a
      phone's 29.6 fps average becomes 29.97); every time is then placed at that rate by its
      seconds, so a source range stays within one frame of the hit's seconds;
    - no rate at all (unknown) is 25 with a note.
    """
    if fps is None:
        return Fraction(25), "frame rate unknown: counted at 25 fps"
    r = as_rate(fps)
    if not variable and (r in STANDARD_RATES or r.denominator == 1):
        return r, None
    s = _nearest_standard(r)
    why = "variable frame rate" if variable else "not a whole-number frame rate"
    return s, f"{why} (average {float(r):.3f} fps): conformed to {format_rate(s)} fps"


def timeline_rate(source_rates: Sequence[Fraction]) -> Fraction:
    """A standard rate for a timeline holding sources at ``source_rates`` (in rank order).

    The most common source rate (the best-ranked one on a tie) when it is standard; for another
    whole rate, the smallest standard rate it divides (10 -> 30, 12 -> 24, 15 -> 30: every source
    frame then starts on a timeline frame), else the nearest standard rate.
    """
    if not source_rates:
        return Fraction(25)
    counts = Counter(source_rates)
    best = max(counts.values())
    common = next(r for r in source_rates if counts[r] == best)
    if common in STANDARD_RATES:
        return common
    if common.denominator == 1:
        multiples = [s for s in STANDARD_RATES if s.denominator == 1 and s.numerator % common.numerator == 0]
        if multiples:
            return min(multiples)
    return _nearest_standard(common)


def frames_to_timecode(frames: int, rate: Fraction, drop_frame: bool = False) -> str:
    """``HH:MM:SS:FF`` (``HH:MM:SS;FF`` for drop-frame) of frame number ``frames`` at ``rate``.

    Raises:
        TimecodeError: negative frame, or drop-frame asked at a rate that has none.
    """
    if frames < 0:
        raise TimecodeError(f"negative frame number {frames}")
    if drop_frame and not is_drop_frame_rate(rate):
        raise TimecodeError(f"{format_rate(rate)} fps has no drop-frame timecode")
    if rate in STANDARD_RATES:
        from opentimelineio import opentime  # type: ignore[import-untyped]

        return str(opentime.to_timecode(opentime.RationalTime(frames, float(rate)), float(rate), drop_frame))
    # Non-SMPTE whole rates: plain non-drop labels (no library writes these).
    fps = nominal_fps(rate)
    ff = frames % fps
    total_s = frames // fps % 86400  # labels wrap at 24 h, as SMPTE's do
    return f"{total_s // 3600:02d}:{total_s // 60 % 60:02d}:{total_s % 60:02d}:{ff:02d}"


def parse_timecode(text: str, rate: Fraction) -> tuple[int, bool]:
    """Frame number and drop-frame flag of a timecode label at ``rate``.

    Accepts ``HH:MM:SS:FF`` and, at 29.97/59.94, drop-frame ``HH:MM:SS;FF`` (also ``.`` or ``,``
    before the frames, as some cameras write it). A drop-frame separator at another rate is read
    as non-drop (the label is then the same frames).

    Raises:
        TimecodeError: not a timecode, or a field out of range (frames >= the nominal rate, a
            label that drop-frame skips).
    """
    m = _TC.match(text.strip())
    if not m:
        raise TimecodeError(f"not a timecode: {text!r}")
    hh, mm, ss, sep, ff = int(m[1]), int(m[2]), int(m[3]), m[4], int(m[5])
    fps = nominal_fps(rate)
    if mm >= 60 or ss >= 60 or ff >= fps:
        raise TimecodeError(f"timecode {text!r} out of range at {format_rate(rate)} fps")
    drop = sep in ";.," and is_drop_frame_rate(rate)
    if drop:
        skipped = 2 * fps // 30  # labels dropped per minute: 2 at 29.97, 4 at 59.94
        if ss == 0 and ff < skipped and mm % 10 != 0:
            raise TimecodeError(f"timecode {text!r} does not exist in drop-frame (skipped label)")
        total_minutes = 60 * hh + mm
        frames = (3600 * hh + 60 * mm + ss) * fps + ff - skipped * (total_minutes - total_minutes // 10)
    else:
        frames = (3600 * hh + 60 * mm + ss) * fps + ff
    return frames, drop
