"""How times are stored and shown: seconds rounded to the millisecond (standard library only)."""

from __future__ import annotations

import math


def round_ms(seconds: float) -> float:
    """``seconds`` rounded to the millisecond (NaN and infinities unchanged).

    Times are stored this way (clip spans and frame times, transcript and screen-text spans):
    a time computed from pts and a time base carries float noise (4.0040000000000004) that
    ``vidsearch sql`` would print; a millisecond is finer than any frame step.
    """
    return round(seconds, 3) if math.isfinite(seconds) else seconds
