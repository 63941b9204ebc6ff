"""`Latest`: the newest value, overwritten rather than queued.

The one hand-off between a producer and its readers everywhere in the daemon
(the ring's readers, the full-resolution slot, the JPEG feed, the sources'
reader threads, the detector's results). The producer `put`s; a reader asks
for "something other than the version I last had" and waits for it with a
timeout. A slow reader never slows the producer and never sees a backlog: it
skips straight to the newest value. `fail` wakes every reader with the
producer's error (a dead camera, say) until the next `put`.
"""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class HandoffFailed(RuntimeError):
    """The producer reported a failure instead of a value."""


class Latest(Generic[T]):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._value: T | None = None
        self._version = 0  # 0: nothing put yet
        self._error: str | None = None

    @property
    def version(self) -> int:
        """Version of the current value: 0 before the first put, then what `put` returned last."""
        return self._version

    def put(self, value: T, version: int | None = None) -> int:
        """Replace the value and wake every waiting reader. `version` defaults to one more than the last.

        A producer with its own counter (frame ids) passes it, so readers can
        wait in that counter's terms; a counter that restarts lower is taken as
        it is, because readers wait for a version that *differs* from theirs.
        """
        with self._cond:
            self._version = self._version + 1 if version is None else version
            self._value = value
            self._error = None
            self._cond.notify_all()
            return self._version

    def fail(self, reason: str) -> None:
        """Wake every reader with `reason`: once it has the last value, `wait_newer` raises `HandoffFailed` until the next `put`."""
        with self._cond:
            self._error = reason
            self._cond.notify_all()

    def clear(self) -> None:
        """Forget the value (a source that closes): readers wait again for the next `put`."""
        with self._cond:
            self._value = None
            self._error = None
            self._cond.notify_all()

    def get(self) -> tuple[int, T] | None:
        """The current (version, value), or None before the first put or after `clear`."""
        with self._cond:
            if self._value is None:
                return None
            return self._version, self._value

    def wait_newer(self, after: int, timeout: float) -> tuple[int, T] | None:
        """Wait until a value whose version differs from `after` is there; None when `timeout` passes first.

        Raises `HandoffFailed` if the producer has failed since its last put and
        the reader already has that last value (nothing put before a failure is lost).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._value is not None and self._version != after:
                    return self._version, self._value
                if self._error is not None:
                    raise HandoffFailed(self._error)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def wake(self) -> None:
        """Wake waiting readers without a new value (they re-check their own stop conditions)."""
        with self._cond:
            self._cond.notify_all()
