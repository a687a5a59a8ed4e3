"""Time stamps: one format everywhere, ``HH:MM:SS.mmm``, and parsing of ``--at`` / ``--from`` / ``--to``.

Clip times are rounded to milliseconds in the data the search layer hands out (hits, JSON, CSV,
Parquet, history, the web API): a 30000/1001 fps frame time such as 4.004 s would otherwise print
as ``4.0040000000000004``. The same fixed format (WebVTT's, and what ``mpv --start`` and ffmpeg
``-ss`` accept) is used by the table output, the demo and the web page, and :func:`parse_time`
reads it back.
"""

from __future__ import annotations

import math


class TimeFormatError(ValueError):
    """Text that is not a time of day / offset (the CLI turns it into a usage error, exit 1)."""


def format_hms(seconds: float) -> str:
    """``83.5`` -> ``00:01:23.500``; always hours, minutes, seconds and milliseconds."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--:--.---"
    ms = round(seconds * 1000)
    whole, frac = divmod(ms, 1000)
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}.{frac:03d}"


def format_span(start_s: float, end_s: float) -> str:
    """``00:00:04.000-00:00:08.000``: a moment's extent."""
    return f"{format_hms(start_s)}-{format_hms(end_s)}"


def parse_time(text: str) -> float:
    """Parse ``83``, ``83.5``, ``1:23``, ``00:01:23`` or ``00:01:23.500`` into seconds.

    Raises:
        TimeFormatError: not a non-negative time (minutes and seconds fields below 60).
    """
    parts = text.strip().split(":")
    try:
        if not 1 <= len(parts) <= 3 or any(p.strip() == "" for p in parts):
            raise ValueError
        # float() also reads "inf", "nan" and "1e3"; a time is digits and at most one point.
        if any(not all(c.isascii() and (c.isdigit() or c == ".") for c in p.strip()) for p in parts):
            raise ValueError
        nums = [float(p) for p in parts]
        if any(not math.isfinite(n) or n < 0 for n in nums) or any(n >= 60 for n in nums[1:]):
            raise ValueError
    except ValueError:
        raise TimeFormatError(f"not a time: {text!r} (use seconds or HH:MM:SS.mmm)") from None
    total = 0.0
    for n in nums:
        total = total * 60 + n
    return total
