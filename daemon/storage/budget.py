"""The stack memory budget: what the stacks in progress hold, against one limit (`export.stack_memory_mb`).

A mean stack holds a float32 sum (4 bytes a value) and its result, a sigma clip its N frames (an exact clip
needs every sample of a pixel) plus one band of scratch, a pastStack the ring frames it copies. A stack reserves
what it will hold before it starts and releases it when it ends, however it ends: beyond what is free it is
refused with `ERR busy: ...` (what is held, by which stacks, and what would fit now), beyond the whole budget
with `ERR too large: ...`. A module of its own because the budget is shared: every stack of the Exporter, in the
foreground or the background, reserves from the one instance.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from daemon.storage.errors import BusyError, TooLargeError, mb


@dataclass
class _Hold:
    what: str
    nbytes: int


class StackBudget:
    """The memory the stacks in progress hold, against one limit (`export.stack_memory_mb`).

    A stack reserves what it will hold before it starts and releases it when
    it ends, however it ends. `hint(free_bytes)` lets the caller say what would
    fit in a refusal ("; sigma_clip of up to 12 frames would fit now").
    """

    def __init__(self, limit_bytes: Callable[[], int]) -> None:
        self._limit = limit_bytes
        self._lock = threading.Lock()
        self._holds: list[_Hold] = []

    @property
    def limit(self) -> int:
        return int(self._limit())

    def snapshot(self) -> tuple[int, list[str]]:
        """(bytes held, what holds them)."""
        with self._lock:
            return sum(h.nbytes for h in self._holds), [h.what for h in self._holds]

    def reserve(self, nbytes: int, what: str, hint: Callable[[int], str] = lambda free: "") -> Reservation:
        limit = self.limit
        limit_mb = f"export.stack_memory_mb {limit / 2**20:g}"
        if nbytes > limit:
            raise TooLargeError(f"too large: {what} needs {mb(nbytes)}, more than {limit_mb}{hint(limit)}", summary="too large")
        with self._lock:
            used = sum(h.nbytes for h in self._holds)
            if used + nbytes > limit:
                holders = ", ".join(h.what for h in self._holds)
                raise BusyError(
                    f"busy: {what} needs {mb(nbytes)}; stacks in progress hold {mb(used)} of {limit_mb} "
                    f"({holders}), {mb(limit - used)} is free{hint(limit - used)}; try again when one ends",
                    summary="busy",
                )
            hold = _Hold(what, nbytes)
            self._holds.append(hold)
        return Reservation(self, hold)

    def _release(self, hold: _Hold) -> None:
        with self._lock:
            if hold in self._holds:
                self._holds.remove(hold)


class Reservation:
    """Memory held by one stack until `release()` (or the end of a `with`); releasing again does nothing."""

    def __init__(self, budget: StackBudget, hold: _Hold) -> None:
        self._budget = budget
        self.hold = hold

    def release(self) -> None:
        self._budget._release(self.hold)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
