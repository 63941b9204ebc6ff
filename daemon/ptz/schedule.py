"""When scheduled sweeps are due: every N minutes (aligned to local midnight) and at given local times.

Pure functions of the wall clock, so the scheduler (in `component.py`) only
asks "which slot is the latest that has begun?" once a second and starts a
sweep when a new one begins. A slot is never run late: one missed while the
daemon was down or a sweep was running is skipped, not made up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta

_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def check_times(value: list) -> list:
    """The schema's check of `ptz.sweep_at`: 'HH:MM' local times, sorted, no duplicates."""
    out: list[str] = []
    for item in value:
        m = _TIME.match(str(item).strip())
        if not m:
            raise ValueError(f"{item!r} is not a local time HH:MM (00:00..23:59)")
        text = f"{int(m[1]):02d}:{m[2]}"
        if text in out:
            raise ValueError(f"{text} is listed twice")
        out.append(text)
    return sorted(out)


def _midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _fixed(day: datetime, at_times: Sequence[str]) -> list[datetime]:
    midnight = _midnight(day)
    return [midnight.replace(hour=int(t[:2]), minute=int(t[3:])) for t in at_times]


def last_slot(now: float, every_min: float, at_times: Sequence[str]) -> float | None:
    """Wall-clock time of the latest slot at or before `now` (today's or yesterday's), None when nothing is scheduled."""
    moment = datetime.fromtimestamp(now)
    found: list[datetime] = []
    if every_min > 0:
        midnight = _midnight(moment)
        step = timedelta(minutes=every_min)
        found.append(midnight + step * int((moment - midnight) / step))
    for day in (moment, moment - timedelta(days=1)):
        past = [s for s in _fixed(day, at_times) if s <= moment]
        if past:
            found.append(max(past))
            break
    return max(found).timestamp() if found else None


def next_slot(now: float, every_min: float, at_times: Sequence[str]) -> float | None:
    """Wall-clock time of the first slot after `now`, None when nothing is scheduled."""
    moment = datetime.fromtimestamp(now)
    found: list[datetime] = []
    if every_min > 0:
        midnight = _midnight(moment)
        step = timedelta(minutes=every_min)
        candidate = midnight + step * (int((moment - midnight) / step) + 1)
        found.append(min(candidate, midnight + timedelta(days=1)))  # a new day starts the steps again
    for day in (moment, moment + timedelta(days=1)):
        ahead = [s for s in _fixed(day, at_times) if s > moment]
        if ahead:
            found.append(min(ahead))
            break
    return min(found).timestamp() if found else None


def check_every(value: float) -> float:
    """The schema's check of `ptz.sweep_every_min`: 0 (off) or at least one minute."""
    if 0 < value < 1:
        raise ValueError("must be 0 (off) or at least 1 minute")
    return value
