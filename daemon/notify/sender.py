"""The background sender behind every notification channel.

The bus handler only appends to an outbox and returns (the publisher is often
the capture loop); one worker thread, `picamd-notify`, makes the attempts.

Outboxes are kept per destination ("lane"): the configured webhook, a region's
own webhook, the SMTP server. Each lane holds at most `notify.queue_size`
pending notifications (plus the one being attempted) and drops its oldest
pending one when full. Events may carry attachments (the JPEG of an alert):
only the channels that send them keep them (`wants_attachments`), and all
lanes together hold at most `notify.queue_max_mb` of them, the oldest pending
one with an attachment dropped first, so a dead endpoint cannot fill the
memory with pictures. A lane delivers in order: a
notification waiting for its next retry holds back the later ones of the same
lane (so a STOPPED never arrives after the RUNNING that followed it), but never
those of another lane, and the worker sleeps through no backoff: it attempts
whatever is due elsewhere in the meantime. One attempt at a time is bounded by
`notify.timeout_s`.

A new channel (MQTT, say) is a small `Channel` subclass: `destination()` says
whether and where an event goes, `send()` makes one attempt and raises
`SendError` saying whether another attempt could help.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from daemon.core.bus import Event
from daemon.core.status import ComponentStatus
from daemon.core.timefmt import format_duration
from daemon.core.worker import Worker

log = logging.getLogger("picamd.notify")

# A single wait between attempts never exceeds this, whatever backoff_s and retries multiply to.
MAX_BACKOFF_S = 3600.0


class SendError(Exception):
    """One attempt failed. `reason` is shown in logs and health, so it must never hold a secret."""

    def __init__(self, reason: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class Channel(ABC):
    """One way out for notifications."""

    #: short name used in logs, health and command replies ("webhook", "email", "mqtt")
    name: str = "channel"
    #: True: the channel picks its events itself (`destination`), whatever `notify.events` selects
    #: (a sweep's report goes out whenever its own `ptz.report.*` key is set).
    own_selection: bool = False
    #: True: the channel sends the event's attachments (an alert's image); other channels never hold them.
    wants_attachments: bool = False

    @abstractmethod
    def enabled(self) -> bool:
        """Whether the channel is configured at all (for health and the startup line)."""

    @abstractmethod
    def destination(self, event: Event) -> str | None:
        """Where `event` goes on this channel (a lane key), or None if it does not go out here.

        Called on the publisher's thread: it must only look at the config and the event.
        """

    @abstractmethod
    def describe(self, destination: str) -> str:
        """The destination as it may appear in logs: no keys, tokens or passwords."""

    @abstractmethod
    def send(self, event: Event, destination: str, timeout: float) -> None:
        """Make one attempt within about `timeout` seconds; raise SendError when it fails."""

    def secrets(self, destination: str) -> list[str]:
        """Strings that must never reach a log line (scrubbed from any error text as a last resort)."""
        return []

    def problem(self) -> str | None:
        """Why the channel cannot send though it is asked to (a key set, one it needs not), for health; None when nothing is amiss."""
        return None


# --- what an event says, shared by the channels --------------------------------------------------

_NEW_STATE_KEYS = ("new", "state", "new_state")
_OLD_STATE_KEYS = ("old", "old_state", "previous")
_DURATION_KEYS = ("duration_s", "previous_duration_s")  # how long the state that just ended lasted
_IDLE_KEYS = ("idle_s",)  # on resume: the whole idle time (STOPPED plus DEEP_SLEEP)
_WHO_KEYS = ("machine_id", "region", "name")
_TEXT_KEYS = ("text", "message")
# Never repeated in a notification: a region's own webhook URL may carry a key.
PRIVATE_FIELDS = frozenset({"webhook"})
_IDLE_STATES = {"STOPPED", "DEEP_SLEEP", "IDLE"}
_NO_STATE_YET = {"UNKNOWN", "NONE", ""}


def _first(data: dict[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        value = data.get(key)
        if value not in (None, ""):
            return value
    return None


def _one_line(text: Any, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass(frozen=True)
class Summary:
    """An event in three parts, the shape of IFTTT's value1..value3 and of a mail subject."""

    who: str  # machine id, else region, else the camera's host name
    what: str  # the new state, or the event kind
    detail: str  # "idle for 12m03s", "was RUNNING for 12m03s", the event's text, or its fields
    name: str = ""  # who for people: "press1 (machine 7)" when the event names both

    @property
    def headline(self) -> str:
        return f"{self.name or self.who} {self.what}" + (f" ({self.detail})" if self.detail else "")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarize(event: Event, host: str) -> Summary:
    data = event.data
    region = data.get("region")
    machine = data.get("machine_id")
    who = _first(data, _WHO_KEYS)
    name = f"{region} (machine {machine})" if region not in (None, "") and machine not in (None, "") and str(region) != str(machine) else ""
    new = _first(data, _NEW_STATE_KEYS)
    old = _first(data, _OLD_STATE_KEYS)
    old_state = None if old is None else str(old).upper()
    duration = _number(_first(data, _DURATION_KEYS))
    idle = _number(_first(data, _IDLE_KEYS))
    text = _first(data, _TEXT_KEYS)
    what = str(new).upper() if new is not None else event.kind
    quiet = idle if idle is not None else duration
    if text is not None:
        detail = _one_line(text)
    elif old_state in _NO_STATE_YET:
        detail = "first reading since start"
    elif what == "RUNNING" and old_state in _IDLE_STATES and quiet is not None:
        detail = f"idle for {format_duration(quiet)}"
    elif duration is not None and old_state is not None:
        detail = f"was {old_state} for {format_duration(duration)}"
    elif duration is not None:
        detail = f"after {format_duration(duration)}"
    elif old_state is not None:
        detail = f"was {old_state}"
    else:
        shown = set(_WHO_KEYS) | set(_NEW_STATE_KEYS) | PRIVATE_FIELDS | {"host", "ts"}
        rest = [f"{k}={_one_line(v, 40)}" for k, v in data.items() if k not in shown and isinstance(v, (str, int, float, bool))]
        detail = _one_line(", ".join(rest))
    return Summary(_one_line(who if who is not None else host, 80), _one_line(what, 80), detail, _one_line(name, 120))


def public_fields(event: Event, host: str) -> dict[str, Any]:
    """The event as channels send it: `Event.to_dict()` plus the host, without private fields."""
    out = {k: v for k, v in event.to_dict().items() if k not in PRIVATE_FIELDS}
    out.setdefault("host", host)
    return out


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


# --- the queue and the worker ---------------------------------------------------------------------


@dataclass
class _Delivery:
    event: Event
    enqueued: float  # monotonic
    attempts: int = 0
    due: float = 0.0  # monotonic time of the next attempt (only for the lane's current delivery)
    in_flight: bool = False  # an attempt is running; no worker may start another
    size: int = 0  # bytes of attachments held, counted against notify.queue_max_mb


@dataclass
class _Lane:
    channel: Channel
    destination: str
    pending: deque = field(default_factory=deque)
    current: _Delivery | None = None  # being attempted, or waiting for its next attempt
    overflow_drops: int = 0  # drops since the lane last ran empty (one warning per overflow)

    def due_at(self) -> float | None:
        if self.current is not None:
            return None if self.current.in_flight else self.current.due
        if self.pending:
            return self.pending[0].enqueued
        return None

    def size(self) -> int:
        return len(self.pending) + (self.current is not None)


@dataclass
class _ChannelStats:
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    last_error: str | None = None
    last_error_ts: float | None = None
    last_success: float | None = None
    failing: bool = False  # the last notification given up on was not followed by a success


class Sender:
    """Bounded per-destination outboxes and the `picamd-notify` worker that empties them.

    `cfg` is the `notify` config section (queue_size, queue_max_mb, timeout_s, retries, backoff_s, read live).
    """

    def __init__(self, cfg: Any, status: ComponentStatus, channels: Iterable[Channel] = ()) -> None:
        self._cfg = cfg
        self._status = status
        self._channels: list[Channel] = []
        self._stats: dict[str, _ChannelStats] = {}
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._held_bytes = 0  # attachments held by every delivery queued or in flight
        self._cond = threading.Condition()
        self._worker = Worker("notify", self._step, status=status, on_stop=self._wake, join_timeout_s=1.5)
        self._started = False
        for channel in channels:
            self.add_channel(channel)

    # -- channels
    def add_channel(self, channel: Channel) -> None:
        with self._cond:
            if channel.name in self._stats:
                raise ValueError(f"notification channel {channel.name} is added twice")
            self._channels.append(channel)
            self._stats[channel.name] = _ChannelStats()

    @property
    def channels(self) -> list[Channel]:
        with self._cond:
            return list(self._channels)

    def route(self, event: Event, selected: bool = True) -> list[tuple[Channel, str]]:
        """The channels and destinations `event` goes to now (only those with `own_selection` when `notify.events`
        does not select it). Never raises."""
        routes = []
        for channel in self.channels:
            if not selected and not channel.own_selection:
                continue
            try:
                destination = channel.destination(event)
            except Exception as exc:  # a channel bug must not reach the publisher
                self._status.error(f"{channel.name}: cannot route {event.kind}", exc)
                continue
            if destination is not None:
                routes.append((channel, destination))
        return routes

    # -- the publisher side: never blocks beyond a short bookkeeping lock
    def enqueue(self, event: Event, selected: bool = True) -> list[tuple[Channel, str]]:
        routes = self.route(event, selected)
        if not routes:
            return routes
        limit = max(1, int(self._cfg.queue_size))
        max_bytes = max(1, int(float(self._cfg.queue_max_mb) * 2**20))
        now = time.monotonic()
        overflowed: list[tuple[_Lane, str]] = []
        with self._cond:
            for channel, destination in routes:
                key = (channel.name, destination)
                lane = self._lanes.get(key)
                if lane is None:
                    lane = self._lanes[key] = _Lane(channel, destination)
                held = event if channel.wants_attachments else event.without_attachments()
                delivery = _Delivery(held, now, size=sum(len(b) for b in held.attachments.values()))
                while len(lane.pending) >= limit:
                    self._drop(lane, lane.pending.popleft(), overflowed, f"outbox full ({limit})")
                if delivery.size and not self._make_room(delivery.size, max_bytes, overflowed):
                    # Even dropping every pending attachment would not fit it (it is larger than the bound, or
                    # attempts in progress hold the rest): the new one goes.
                    self._drop(
                        lane,
                        delivery,
                        overflowed,
                        f"an attachment of {delivery.size / 2**20:.1f} MB does not fit "
                        f"notify.queue_max_mb ({self._held_bytes / 2**20:.1f} MB held by attempts in progress)",
                        held=False,
                    )
                    continue
                self._held_bytes += delivery.size
                lane.pending.append(delivery)
            self._cond.notify_all()
        for lane, why in overflowed:
            log.warning(
                "%s %s: %s, dropping the oldest notifications until it catches up",
                lane.channel.name,
                lane.channel.describe(lane.destination),
                why,
            )
        return routes

    def _drop(self, lane: _Lane, delivery: _Delivery, overflowed: list[tuple[_Lane, str]], why: str, *, held: bool = True) -> None:
        """Count a delivery dropped; the first drop of an overflow is logged (by the caller, outside the lock)."""
        if held:
            self._held_bytes -= delivery.size
        self._stats[lane.channel.name].dropped += 1
        lane.overflow_drops += 1
        if lane.overflow_drops == 1:
            overflowed.append((lane, why))

    def _make_room(self, size: int, max_bytes: int, overflowed: list[tuple[_Lane, str]]) -> bool:
        """Drop the oldest pending deliveries with attachments, in any lane, until `size` more bytes fit."""
        if size > max_bytes:
            return False
        while self._held_bytes + size > max_bytes:
            victims = [(d.enqueued, n, lane, d) for n, lane in enumerate(self._lanes.values()) for d in lane.pending if d.size]
            if not victims:
                return False
            _, _, lane, delivery = min(victims, key=lambda v: (v[0], v[1]))
            lane.pending = deque(d for d in lane.pending if d is not delivery)
            self._drop(lane, delivery, overflowed, f"attachments over notify.queue_max_mb ({max_bytes / 2**20:.3g} MB)")
        return True

    # -- lifecycle
    @property
    def running(self) -> bool:
        return self._worker.alive and not self._worker.stopping.is_set()

    def start(self) -> None:
        self._started = True
        self._worker.start()

    def stop(self, timeout: float = 1.5) -> None:
        if not self._started:
            return
        self._started = False
        if not self._worker.stop(timeout):
            log.info("notify: an attempt is still in progress; it ends within notify.timeout_s and is not retried")
        unsent = self.queued()
        if unsent:
            log.warning("notify: %d notification(s) not sent at shutdown", unsent)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def forget_failures(self) -> None:
        """After a config change, judge the channels afresh instead of staying degraded on an old address."""
        with self._cond:
            for stats in self._stats.values():
                stats.failing = False
        self._update_status()

    # -- figures
    def queued(self) -> int:
        with self._cond:
            return sum(lane.size() for lane in self._lanes.values())

    def queued_bytes(self) -> int:
        """Bytes of attachments held by the deliveries queued or in flight."""
        with self._cond:
            return self._held_bytes

    def health(self) -> dict[str, Any]:
        with self._cond:
            per_channel: dict[str, dict[str, Any]] = {}
            for channel in self._channels:
                stats = self._stats[channel.name]
                lanes = [lane for lane in self._lanes.values() if lane.channel is channel]
                per_channel[channel.name] = {
                    "enabled": _safe_enabled(channel),
                    "problem": _safe_problem(channel),
                    "queued": sum(lane.size() for lane in lanes),
                    "queued_bytes": sum(d.size for lane in lanes for d in (*lane.pending, *([lane.current] if lane.current else []))),
                    # notifications that failed at least once and wait for their next attempt
                    "retrying": sum(1 for lane in lanes if lane.current is not None and not lane.current.in_flight),
                    "sent": stats.sent,
                    "failed": stats.failed,
                    "dropped": stats.dropped,
                    "failing": stats.failing,
                    "last_error": stats.last_error,
                    "last_error_ts": stats.last_error_ts,
                    "last_success": stats.last_success,
                }
        return {
            "running": self.running,
            "queued": sum(c["queued"] for c in per_channel.values()),
            "queued_bytes": sum(c["queued_bytes"] for c in per_channel.values()),
            "sent": sum(c["sent"] for c in per_channel.values()),
            "failed": sum(c["failed"] for c in per_channel.values()),
            "dropped": sum(c["dropped"] for c in per_channel.values()),
            "channels": per_channel,
        }

    # -- the worker
    def _next_due(self, now: float) -> tuple[_Lane | None, float | None]:
        """The lane whose head is due soonest, if due now; else how long until the next one (None: nothing queued)."""
        best, best_due = None, math.inf
        for lane in self._lanes.values():
            due = lane.due_at()
            if due is not None and due < best_due:
                best, best_due = lane, due
        if best is None:
            return None, None
        if best_due <= now:
            return best, 0.0
        return None, best_due - now

    def _step(self) -> None:
        """One delivery attempt, or a wait until the next one is due."""
        stop = self._worker.stopping
        with self._cond:
            if stop.is_set():
                return
            lane, wait = self._next_due(time.monotonic())
            if lane is None:
                self._cond.wait(wait)
                return
            if lane.current is None:
                lane.current = lane.pending.popleft()
            delivery = lane.current
            delivery.attempts += 1
            delivery.in_flight = True
        try:
            self._attempt(lane, delivery)
        except Exception as exc:  # bookkeeping bugs are counted, the worker carries on
            self._status.error("notify worker error", exc)
            with self._cond:
                if lane.current is delivery:
                    lane.current = None
                    self._held_bytes -= delivery.size
                self._retire_if_empty(lane)
        finally:
            delivery.in_flight = False

    def _attempt(self, lane: _Lane, delivery: _Delivery) -> None:
        channel, destination = lane.channel, lane.destination
        where = f"{channel.name} {channel.describe(destination)}"
        timeout = float(self._cfg.timeout_s)
        try:
            channel.send(delivery.event, destination, timeout)
            error = None
        except SendError as exc:
            error = exc
        except Exception as exc:  # a channel bug: count it, do not retry what will fail the same way
            log.debug("traceback of %s", where, exc_info=exc)
            error = SendError(f"unexpected {type(exc).__name__}: {exc}", retryable=False)
        what = _label(delivery.event)
        if error is None:
            self._succeeded(lane, delivery, where, what)
            return
        reason = scrub(_one_line(error.reason, 300), channel.secrets(destination))
        retries = int(self._cfg.retries)
        if error.retryable and delivery.attempts <= retries:
            wait = min(float(self._cfg.backoff_s) * 2 ** (delivery.attempts - 1), MAX_BACKOFF_S)
            if error.retry_after is not None:
                wait = max(wait, min(error.retry_after, MAX_BACKOFF_S))
            with self._cond:
                delivery.due = time.monotonic() + wait
            log.info("%s: attempt %d of %d for %s failed (%s); next in %.3g s", where, delivery.attempts, retries + 1, what, reason, wait)
            return
        self._gave_up(lane, delivery, where, what, reason, error.retryable)

    def _succeeded(self, lane: _Lane, delivery: _Delivery, where: str, what: str) -> None:
        with self._cond:
            stats = self._stats[lane.channel.name]
            stats.sent += 1
            stats.last_success = time.time()
            stats.failing = False
            lane.current = None
            self._held_bytes -= delivery.size
            caught_up = self._retire_if_empty(lane)
        tries = f" on attempt {delivery.attempts}" if delivery.attempts > 1 else ""
        log.info("%s: sent %s%s", where, what, tries)
        if caught_up:
            log.info("%s: outbox caught up after dropping %d notification(s)", where, caught_up)
        self._update_status()

    def _gave_up(self, lane: _Lane, delivery: _Delivery, where: str, what: str, reason: str, retryable: bool) -> None:
        with self._cond:
            stats = self._stats[lane.channel.name]
            stats.failed += 1
            stats.last_error = f"{lane.channel.describe(lane.destination)}: {reason}"
            stats.last_error_ts = time.time()
            stats.failing = True
            lane.current = None
            self._held_bytes -= delivery.size
            caught_up = self._retire_if_empty(lane)
        after = f"after {delivery.attempts} attempt(s)" if retryable else "(not retried)"
        self._status.error(f"{where}: gave up on {what} {after}: {reason}")
        if caught_up:
            log.info("%s: outbox caught up after dropping %d notification(s)", where, caught_up)
        self._update_status()

    def _retire_if_empty(self, lane: _Lane) -> int:
        """Forget an empty lane (region webhooks come and go); returns the drops of the overflow that just ended."""
        if lane.current is None and not lane.pending:
            drops, lane.overflow_drops = lane.overflow_drops, 0
            if self._lanes.get((lane.channel.name, lane.destination)) is lane:
                del self._lanes[(lane.channel.name, lane.destination)]
            return drops
        return 0

    def _update_status(self) -> None:
        with self._cond:
            failing = [f"{name}: {stats.last_error}" for name, stats in self._stats.items() if stats.failing]
        if failing:
            self._status.degrade("; ".join(failing))
        else:
            self._status.recover()


def _label(event: Event) -> str:
    """'motion.state (press1 STOPPED)' for logs; just the kind when the event names no region or state."""
    summary = summarize(event, "")
    parts = [p for p in (summary.who, summary.what if summary.what != event.kind else "") if p]
    return event.kind + (f" ({' '.join(parts)})" if parts else "")


def _safe_enabled(channel: Channel) -> bool:
    try:
        return bool(channel.enabled())
    except Exception:
        return False


def _safe_problem(channel: Channel) -> str | None:
    try:
        return channel.problem()
    except Exception as exc:
        return f"cannot tell: {type(exc).__name__}"
