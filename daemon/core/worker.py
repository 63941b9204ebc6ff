"""`Worker`: a named thread with a stop event, a bounded stop and counted errors.

Every threaded component runs its loop in one: the worker calls `step()`
until it is stopped (or once, with `repeat=False`, for a body that owns its
loop, such as a source's reader that keeps its device in local variables); a step that raises is counted, logged once per kind of
error (then counted, see `RepeatedLog`), recorded in the component's status
and followed by a short pause, so a loop never dies silently and never spins
at full speed on a persistent fault. `stop()` sets the event, calls the
component's `on_stop` (to close a socket or wake a condition the step waits
on) and joins within a bounded time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .repeat import RepeatedLog
from .status import ComponentStatus

log = logging.getLogger("picamd.worker")


class Worker:
    def __init__(
        self,
        name: str,
        step: Callable[[], None],
        *,
        status: ComponentStatus | None = None,
        interval_s: float = 0.0,
        error_pause_s: float = 0.2,
        on_stop: Callable[[], None] | None = None,
        join_timeout_s: float = 2.0,
        repeat: bool = True,
    ) -> None:
        if not name.startswith("picamd-"):
            name = "picamd-" + name
        self.name = name
        self._step = step
        self._status = status
        self._interval_s = interval_s
        self._error_pause_s = error_pause_s
        self._on_stop = on_stop
        self._join_timeout_s = join_timeout_s
        self._repeat = repeat
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self._errlog = RepeatedLog(logging.getLogger(f"picamd.{name.removeprefix('picamd-')}"))

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, step: Callable[[], None] | None = None) -> None:
        """Start the thread (a no-op while it runs); `step` replaces the body given at construction."""
        if self.alive and not self.stopping.is_set():
            return
        if step is not None:
            self._step = step
        # A fresh event per run: a thread left finishing a step after a timed-out stop() keeps its own
        # event set and ends, even when the worker is started again meanwhile.
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self.stopping,), name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop and join; True if the thread ended within the timeout (it is a daemon thread either way)."""
        self.stopping.set()
        if self._on_stop is not None:
            try:
                self._on_stop()
            except Exception as exc:
                log.warning("%s: stopping: %s", self.name, exc)
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(self._join_timeout_s if timeout_s is None else timeout_s)
        if thread.is_alive():
            log.warning("%s did not stop within %.1f s", self.name, self._join_timeout_s if timeout_s is None else timeout_s)
            return False
        return True

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking at once on stop; True if stopping."""
        return self.stopping.wait(seconds)

    def _run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                self._step()
            except Exception as exc:
                self.errors += 1
                what = f"{type(exc).__name__}: {exc}"
                if self._status is not None:
                    self._status.error(f"{self.name} failed", exc)
                else:
                    self._errlog.log(logging.ERROR, type(exc).__name__, "%s failed: %s", self.name, what, exc_info=exc)
                if not self._repeat or stopping.wait(self._error_pause_s):
                    break
                continue
            if not self._repeat or (self._interval_s and stopping.wait(self._interval_s)):
                break
