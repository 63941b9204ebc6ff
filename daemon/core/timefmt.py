"""Durations as people read them in logs, notifications and charts."""

from __future__ import annotations

import math


def format_duration(seconds: float) -> str:
    """723 -> '12m03s'; 45 -> '45s'; 3723 -> '1h02m03s'; 2 days and more -> '2d03h04m'. Junk or negative -> '0s'."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        seconds = 0
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{s:02d}s"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{s}s"
