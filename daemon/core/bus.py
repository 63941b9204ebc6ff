"""A small in-process event bus.

Night changes, machine state changes, detections and errors are published
here; the notifier, the logs and the MJPEG headers subscribe. Subscribers are
called on the publisher's thread, so they must be quick (append to a queue,
set a value); a subscriber that raises is logged and never hurts the
publisher, which is usually the capture loop.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from daemon.core.repeat import RepeatedLog

log = logging.getLogger("picamd.bus")


@dataclass(frozen=True)
class Event:
    """`kind` is dotted, e.g. `night.enter`, `motion.state`; subscribers match on a prefix."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)
    #: Large binary parts (the annotated JPEG of a `detect.person`) for the channels that send them: never in
    #: `to_dict()`, the logs, the history or MQTT, so an image is held only as long as someone is to send it.
    attachments: Mapping[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "ts": self.ts, **self.data}

    def without_attachments(self) -> Event:
        return replace(self, attachments={}) if self.attachments else self


Handler = Callable[[Event], None]


class EventBus:
    def __init__(self, history: int = 200) -> None:
        self._lock = threading.Lock()
        self._subs: list[tuple[str, Handler]] = []
        self._history: list[Event] = []
        self._history_len = history
        self.errors = 0
        self._errlog = RepeatedLog(log)

    def subscribe(self, prefix: str, handler: Handler) -> Callable[[], None]:
        """Call `handler` for every event whose kind starts with `prefix` ('' for all). Returns an unsubscribe function."""
        entry = (prefix, handler)
        with self._lock:
            self._subs.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subs:
                    self._subs.remove(entry)

        return unsubscribe

    def publish(self, kind: str, /, attachments: Mapping[str, bytes] | None = None, **data: Any) -> Event:
        event = Event(kind, data, attachments=dict(attachments or {}))
        with self._lock:
            subs = list(self._subs)
            self._history.append(event.without_attachments())
            if len(self._history) > self._history_len:
                del self._history[: len(self._history) - self._history_len]
        for prefix, handler in subs:
            if kind.startswith(prefix):
                try:
                    handler(event)
                except Exception:  # a broken subscriber must not break the publisher
                    self.errors += 1
                    self._errlog.log(
                        logging.ERROR, f"{handler!r} {kind}", "event subscriber %r failed on %s", handler, kind, exc_info=sys.exc_info()[1]
                    )
        return event

    def recent(self, prefix: str = "", limit: int = 50) -> list[Event]:
        with self._lock:
            return [e for e in self._history if e.kind.startswith(prefix)][-limit:]
