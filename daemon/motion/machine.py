"""The machine state of a region: a sliding window of moving frames, and RUNNING/STOPPED/DEEP_SLEEP.

Per region, each frame is moving or not (or not judged: settling, a fresh
background). The region is RUNNING when more than `running_fraction` of the
judged frames of the last `window_s` seconds moved (by frame timestamps, so
the frame rate does not matter), else STOPPED. A region starts UNKNOWN and
gets its first state once it has been judged for a whole window (after a
restart nothing is claimed on a few frames); the same holds after a gap
longer than the window (a camera stall). STOPPED for `deep_sleep_s` becomes
DEEP_SLEEP; moving again wakes it (RUNNING). Times in a state count from when
the state was decided.

`Machine.step` runs on the capture thread once per region and frame, so it
is one call that keeps the window and decides the state together (the
window is a few counters in at most ~64 time buckets, whatever the frame
rate); it allocates nothing unless the state changes, and then returns the
`Transition`s for the component to announce.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

UNKNOWN, RUNNING, STOPPED, DEEP_SLEEP, SETTLING = "UNKNOWN", "RUNNING", "STOPPED", "DEEP_SLEEP", "SETTLING"
_WINDOW_BUCKETS = 64  # the sliding window keeps at most this many time buckets, whatever the frame rate
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of state: `duration_s` is how long `old` lasted; `idle_s` the time since the region stopped
    (when it leaves STOPPED or DEEP_SLEEP, else None); `window_moving` the moving share of the window."""

    old: str
    new: str
    duration_s: float
    idle_s: float | None
    window_moving: float | None


_NO_CHANGE: tuple[Transition, ...] = ()


class Machine:
    """The window and machine state of one region; kept across geometry changes of the region (it goes with the name)."""

    __slots__ = ("buckets", "fill_start", "frames", "moving", "since", "state", "stopped_since")

    def __init__(self) -> None:
        self.state = UNKNOWN
        self.since: float | None = None  # mono when the state began (first frame for UNKNOWN)
        self.stopped_since: float | None = None  # mono when the region last stopped (kept through DEEP_SLEEP)
        # The window: judged and moving frames of the last window_s seconds, per time bucket.
        self.buckets: collections.deque[list[float]] = collections.deque()  # [start_mono, frames, moving]
        self.frames = 0
        self.moving = 0
        self.fill_start: float | None = None  # first judged frame since the window was last empty

    @property
    def moving_share(self) -> float | None:
        """The moving fraction of the judged frames in the window (None while it holds none)."""
        return None if self.frames == 0 else self.moving / self.frames

    def step(
        self, mono: float, moving: bool | None, window_s: float, running_fraction: float, deep_sleep_s: float
    ) -> tuple[Transition, ...]:
        """Take in one frame (moving None: not judged); the changes of state it caused, in order (usually none).

        The window's verdict is RUNNING when more than running_fraction of it moved, else STOPPED, and none
        until the window has been judged for a whole window_s."""
        if self.since is None:
            self.since = mono
        buckets = self.buckets
        if buckets and buckets[0][0] < mono - window_s:
            self._expire(mono, window_s)
        if moving is not None:
            if buckets and 0 <= mono - buckets[-1][0] < window_s / _WINDOW_BUCKETS:
                last = buckets[-1]
                last[1] += 1
                last[2] += moving
            else:
                buckets.append([mono, 1, int(moving)])
            self.frames += 1
            self.moving += int(moving)
            if self.fill_start is None:
                self.fill_start = mono
        fill_start = self.fill_start  # None exactly when the window holds no frame
        state = self.state
        changes = _NO_CHANGE
        if fill_start is not None and mono - fill_start >= window_s - _EPS:
            if self.moving / self.frames > running_fraction:
                if state != RUNNING:
                    changes = (self._move(RUNNING, mono),)
            elif state == RUNNING or state == UNKNOWN:
                changes = (self._move(STOPPED, mono),)
        if self.state == STOPPED:
            stopped_since = self.stopped_since
            if stopped_since is not None and mono - stopped_since >= deep_sleep_s:
                changes = (*changes, self._move(DEEP_SLEEP, mono))
        return changes

    def _expire(self, mono: float, window_s: float) -> None:
        cutoff = mono - window_s
        buckets = self.buckets
        while buckets and buckets[0][0] < cutoff:
            _, n, m = buckets.popleft()
            self.frames -= int(n)
            self.moving -= int(m)
        if not buckets:
            self.frames = self.moving = 0
            self.fill_start = None

    def _move(self, new: str, mono: float) -> Transition:
        old = self.state
        duration = mono - (self.since if self.since is not None else mono)
        idle = None
        if old in (STOPPED, DEEP_SLEEP) and self.stopped_since is not None:
            idle = mono - self.stopped_since
        self.state = new
        self.since = mono
        if new == STOPPED:
            self.stopped_since = mono
        elif new == RUNNING:
            self.stopped_since = None
        return Transition(old, new, duration, idle, self.moving_share)

    def in_state_s(self, now: float | None) -> float | None:
        return None if now is None or self.since is None else now - self.since

    def idle_s(self, now: float | None) -> float | None:
        """Time since the region stopped, while it is STOPPED or DEEP_SLEEP."""
        if self.state in (STOPPED, DEEP_SLEEP) and self.stopped_since is not None and now is not None:
            return now - self.stopped_since
        return None
