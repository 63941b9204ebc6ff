"""Notifications: events from the bus go out by webhook, email and alerts, from a background sender.

`Notifier` subscribes to the bus, keeps only the event kinds listed in
`notify.events` (read at each event, so `set notify.events ...` applies at
once), and hands them to the `Sender`, whose worker thread does the network
I/O with timeouts, retries and backoff. Publishing never waits on a network.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from daemon.commands import Command, Registry, Reply, Session
from daemon.core.bus import Event, EventBus
from daemon.core.status import ComponentStatus

from .alerts import AlertChannel
from .email import EmailChannel
from .sender import Channel, Sender, SendError, format_duration, summarize
from .webhook import WebhookChannel

__all__ = ["Notifier", "Channel", "SendError", "Sender", "AlertChannel", "EmailChannel", "WebhookChannel", "format_duration", "summarize"]

log = logging.getLogger("picamd.notify")

TEST_EVENT = "notify.test"
MAX_TEST_TEXT = 500


def kind_selected(kind: str, prefixes: Any) -> bool:
    """'night' selects night.enter and night.exit (whole dotted segments); '*' selects everything."""
    for item in prefixes or ():
        prefix = str(item).strip()
        if not prefix:
            continue
        if prefix == "*" or kind == prefix or kind.startswith(prefix if prefix.endswith(".") else prefix + "."):
            return True
    return False


class Notifier:
    def __init__(self, cfg: Any, bus: EventBus, status: ComponentStatus, env: Mapping[str, str] = os.environ) -> None:
        """`cfg` is the `notify` config section; `env` supplies PICAMD_SMTP_PASSWORD."""
        self._cfg = cfg
        self._bus = bus
        self._status = status
        self._host = socket.gethostname() or "picamd"
        self._sender = Sender(
            cfg,
            status,
            [
                WebhookChannel(cfg.section("webhook"), self._host),
                EmailChannel(cfg.section("email"), self._host, env),
                AlertChannel(cfg.section("alerts"), lambda: str(cfg.config.get("camera.name")), self._host),
            ],
        )
        self._unsubscribe: Callable[[], None] | None = None
        self.ignored = 0  # events seen on the bus that notify.events does not select
        # A corrected URL or server should not leave the status degraded on the old one's failures.
        cfg.on_change(self._on_config_change)

    def _on_config_change(self, name: str, value: Any) -> None:
        if name.startswith(("notify.webhook.", "notify.email.", "notify.alerts.")):
            self._sender.forget_failures()

    def add_channel(self, channel: Channel) -> None:
        """Another way out (MQTT): a `sender.Channel` subclass."""
        self._sender.add_channel(channel)

    # -- the bus side: runs on the publisher's thread, so it only filters and appends
    def _on_event(self, event: Event) -> None:
        selected = event.kind == TEST_EVENT or kind_selected(event.kind, self._cfg.events)
        # Not selected, it may still go to a channel that selects its own events (a sweep's report).
        if not self._sender.enqueue(event, selected) and not selected:
            self.ignored += 1

    def start(self) -> None:
        if self._unsubscribe is None:
            # Subscribed to everything and filtered in the handler, so a live change of
            # notify.events needs no new subscription.
            self._unsubscribe = self._bus.subscribe("", self._on_event)
        self._sender.start()
        ways = [f"{c.name} {c.describe(c.destination(Event(TEST_EVENT)) or '')}" for c in self._sender.channels if c.enabled()]
        if ways:
            log.info("notifications by %s; events: %s", "; ".join(ways), ", ".join(map(str, self._cfg.events)) or "(none)")
        else:
            log.info(
                "notifications: no channel configured (set notify.webhook.url, notify.email.smtp_host or notify.alerts.url); "
                "regions with their own webhook still notify"
            )

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._sender.stop()

    def health(self) -> dict[str, Any]:
        return {"state": self._status.state, **self._sender.health(), "ignored": self.ignored}

    # -- commands
    def register_commands(self, registry: Registry) -> None:
        registry.register(
            Command("notify", self._cmd_notify, "Notification figures: queued, sent, failed, dropped, last error and success per channel")
        )
        registry.register(
            Command(
                "notify_test",
                self._cmd_test,
                "Send a test notification to every configured channel",
                usage="[TEXT]",
                mutating=True,
                max_args=1,
                raw_tail=True,
            )
        )

    def _cmd_notify(self, args: list[str], session: Session) -> Reply:
        h = self.health()
        return Reply(
            True, f"notify {h['state']}: {h['queued']} queued, {h['sent']} sent, {h['failed']} failed, {h['dropped']} dropped", body=h
        )

    def _cmd_test(self, args: list[str], session: Session) -> Reply:
        text = " ".join(args[0].split()) if args else f"test notification from picamd on {self._host}"
        if not text:
            text = f"test notification from picamd on {self._host}"
        if len(text) > MAX_TEST_TEXT:
            return Reply.error(f"TEXT is {len(text)} characters; at most {MAX_TEST_TEXT}")
        if not self._sender.running or self._unsubscribe is None:
            return Reply.error("the notifier is not running")
        probe = Event(TEST_EVENT, {"text": text})
        routes = self._sender.route(probe)
        if not routes:
            return Reply.error("no channel to send to: set notify.webhook.url, notify.email.smtp_host or notify.alerts.url")
        self._bus.publish(TEST_EVENT, text=text, peer=session.peer)
        ways = ", ".join(f"{channel.name} {channel.describe(destination)}" for channel, destination in routes)
        return Reply(True, f"test notification queued for {ways}")
