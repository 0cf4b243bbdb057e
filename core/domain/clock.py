"""How a time is shown to a user: one formatter, so every message agrees (`1:05`, `1:05.5`, `1:00:00`)."""

from __future__ import annotations

import math


def clock(seconds: float, tenths: bool = True) -> str:
    """`m:ss` (`h:mm:ss` from an hour on), with a tenth when there is one and `tenths` is set.

    The value is rounded once, at the precision shown, and then split: 59.96 s is `1:00`,
    never `0:59` with a fraction of `1.0` carried nowhere.
    """
    scale = 10 if tenths else 1
    units = max(0, math.floor(seconds * scale + 0.5))  # half up, as people round
    whole, tenth = divmod(units, scale)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    tail = f".{tenth}" if tenth else ""
    return f"{hours}:{minutes:02d}:{secs:02d}{tail}" if hours else f"{minutes}:{secs:02d}{tail}"
