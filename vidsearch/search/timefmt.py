"""Time stamps: ``HH:MM:SS`` formatting and parsing of ``--at`` / ``--from`` / ``--to`` values."""

from __future__ import annotations

import argparse
import math


def format_hms(seconds: float) -> str:
    """``83.0`` -> ``00:01:23``; a fractional second is kept to one decimal (``00:01:23.5``)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--:--"
    tenths = round(seconds * 10)
    whole, frac = divmod(tenths, 10)
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}" + (f".{frac}" if frac else "")


def parse_time(text: str) -> float:
    """Parse ``83``, ``83.5``, ``1:23``, ``00:01:23`` or ``00:01:23.5`` into seconds.

    Raises:
        argparse.ArgumentTypeError: not a time (argparse turns it into a usage error, exit 1).
    """
    parts = text.strip().split(":")
    try:
        if not 1 <= len(parts) <= 3 or any(p.strip() == "" for p in parts):
            raise ValueError
        nums = [float(p) for p in parts]
        if any(not math.isfinite(n) or n < 0 for n in nums) or any(n >= 60 for n in nums[1:]):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (use seconds or HH:MM:SS)") from None
    total = 0.0
    for n in nums:
        total = total * 60 + n
    return total
