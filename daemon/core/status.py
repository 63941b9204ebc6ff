"""Per-component health: ok, starting or degraded, with the last error and counters.

Every component owns one `ComponentStatus`; the app gathers them for the
`health` command and `/health`. Loops record their own errors here instead of
dying silently. `starting` is for a component that is not ready yet for an
expected reason (MQTT connecting to its broker at start): not ok in health,
but no fault, so the log says it at INFO and its end is not a recovery.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from daemon.core.repeat import RepeatedLog


class ComponentStatus:
    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._degraded: str | None = None
        self._starting = False  # the reason above is an expected one (see `starting`), not a fault
        self._since = time.time()
        self.last_error: str | None = None
        self.last_error_ts: float | None = None
        self.errors = 0
        self._log = logging.getLogger(f"picamd.{name}")
        self._errlog = RepeatedLog(self._log)

    @property
    def ok(self) -> bool:
        return self._degraded is None

    @property
    def state(self) -> str:
        with self._lock:
            reason, starting = self._degraded, self._starting
        if reason is None:
            return "ok"
        return f"{'starting' if starting else 'degraded'} ({reason})"

    def degrade(self, reason: str) -> None:
        """Mark degraded; logs once per change of reason, not on every retry."""
        with self._lock:
            if self._degraded == reason and not self._starting:
                return
            self._degraded, self._starting = reason, False
            self._since = time.time()
        self._log.warning("%s degraded: %s", self.name, reason)

    def starting(self, reason: str) -> None:
        """Not ready yet for an expected reason (connecting at start): not ok until `recover`, logged at INFO, no fault."""
        with self._lock:
            self._degraded, self._starting = reason, True
            self._since = time.time()
        self._log.info("%s: %s", self.name, reason)

    def recover(self) -> None:
        with self._lock:
            if self._degraded is None:
                return
            reason, self._degraded = self._degraded, None
            was_starting, self._starting = self._starting, False
            down_for = time.time() - self._since
            self._since = time.time()
        if not was_starting:  # the end of a start is no recovery: the component says itself that it is ready
            self._log.info("%s recovered after %.1f s (was: %s)", self.name, down_for, reason)

    def error(self, message: str, exc: BaseException | None = None, *, key: str | None = None) -> None:
        """Count and remember an error. The first of a kind is logged at once, repeats once a minute with a count
        (a full disk under load must not flood the journal); tracebacks only at debug level. The kind is `key`,
        else the message: give a key when the message names what changes from one time to the next (a file)."""
        with self._lock:
            self.errors += 1
            self.last_error = message if exc is None else f"{message}: {exc}"
            self.last_error_ts = time.time()
            text = self.last_error
        if self._errlog.error(key or message, "%s", text) and exc is not None:
            self._log.debug("traceback", exc_info=exc)

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "since": round(self._since, 3),
            "errors": self.errors,
            "last_error": self.last_error,
            "last_error_ts": self.last_error_ts,
        }
