"""One log line for a repeated error, then a count.

A full disk under load, a broker that is down or a client that keeps sending
junk would otherwise write the same ERROR hundreds of times a second into
the journal. `RepeatedLog` logs the first occurrence of each kind of problem
at once; later ones within `every_s` are only counted, and the next one after
that is logged with the count of those in between ("... (and 312 more like
it in the last 60 s)").
"""

from __future__ import annotations

import logging
import threading
import time


class RepeatedLog:
    def __init__(self, logger: logging.Logger, every_s: float = 60.0, max_keys: int = 256) -> None:
        self._log = logger
        self._every_s = every_s
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # key -> monotonic time it was last logged
        self._held: dict[str, int] = {}  # key -> occurrences since

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: BaseException | None = None) -> bool:
        """Log `msg % args` now if `key` was not logged within `every_s`, else count it. True if it was logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._every_s:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            held = self._held.pop(key, 0)
            if key not in self._last and len(self._last) >= self._max_keys:
                # Keys come from messages; an attacker varying them must not grow this forever.
                oldest = min(self._last, key=self._last.__getitem__)
                del self._last[oldest]
                self._held.pop(oldest, None)
            self._last[key] = now
        if held:
            msg += " (and %d more like it in the last %.0f s)"
            args = (*args, held, now - (last or now))
        self._log.log(level, msg, *args, exc_info=exc_info)
        return True

    def error(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, key, msg, *args)

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def held(self, key: str) -> int:
        """Occurrences of `key` counted but not yet logged."""
        with self._lock:
            return self._held.get(key, 0)
