"""`MqttBridge`: picamd on an MQTT broker (paho-mqtt), with Home Assistant discovery.

Threads. paho's own network thread (`paho-mqtt-client-picamd-<camera>`,
from `loop_start`) connects, reconnects with backoff (1 s doubling to 30 s)
and runs the callbacks, which only set flags and append to queues. The
bus calls `_on_bus` on the publisher's thread (often the capture loop): it
only appends to a bounded deque. `picamd-mqtt` does the work: it turns bus
events into messages, looks at the states (night, regions, switches) four
times a second and publishes what changed, sends the health summary and the
snapshot on time, and hands messages to paho (at most `INFLIGHT` waiting
for the broker's acknowledgement). `picamd-mqtt-cmd` runs the commands that
arrive (a command may take seconds: `detect`, `night day`), so publishing
never waits for one.

Delivery. Everything is published with QoS 1. While the broker is away,
picamd keeps running and holds at most `mqtt.queue_size` messages in the
`Outbox` (the oldest dropped and counted) plus the up to `INFLIGHT` paho had
been given and not yet seen acknowledged (paho sends those again after the
reconnect); the retained state (availability, states, discovery, the last
snapshot) is kept apart and published again, newest value first, on every
connect and whenever Home Assistant announces itself (`online` on
`<discovery_prefix>/status`). The changed fractions, the health summary and
the snapshot are live pictures: they are made only while connected with
nothing held waiting, so they are never stale and never push a held event
out. Messages paho still holds when the daemon stops are lost.

Health: the `mqtt` component is `starting` while it first connects (no
fault: logged at INFO), degraded while it cannot connect or is not connected,
with why (refused, unreachable, gone away), and `health` shows the counts.

The broker's password comes from the environment (`PICAMD_MQTT_PASSWORD`),
never from the config, and is never logged. The last will is `offline`,
retained, on `P/available`; a clean stop publishes it itself.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from daemon.commands import Registry
from daemon.config import Section
from daemon.core.bus import Event, EventBus
from daemon.core.repeat import RepeatedLog
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker

from . import discovery
from .commands import MqttCommands, Request
from .messages import Episodes, health_summary, machine_attributes
from .outbox import Message, Outbox
from .topics import Topics, region_slug

if TYPE_CHECKING:
    from paho.mqtt.client import Client, MQTTMessage

log = logging.getLogger("picamd.mqtt")

PASSWORD_ENV = "PICAMD_MQTT_PASSWORD"
#: Messages handed to paho and not yet acknowledged by the broker, at most (less when the broker's receive maximum is lower).
INFLIGHT = 10
#: A message unacknowledged this long no longer counts against the window (paho still holds it, or it was lost with a session).
INFLIGHT_EXPIRE_S = 60.0
#: Bus events and incoming requests waiting for the workers, at most (the oldest are dropped and counted).
EVENT_BACKLOG = 1000
REQUEST_BACKLOG = 64
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
#: Bus events the bridge listens to (by prefix; kinds it does not know are ignored).
EVENT_PREFIXES = ("night.", "motion.", "camera.", "disk.", "detect.", "ptz.sweep.")
FRACTION_EVERY_S = 1.0
STOP_TIMEOUT_S = 3.0


class MotionView(Protocol):
    @property
    def enabled(self) -> bool: ...

    def region_states(self) -> list[dict[str, Any]]: ...


class NightView(Protocol):
    @property
    def is_night(self) -> bool: ...

    def health(self) -> dict[str, Any]: ...


class DetectionView(Protocol):
    @property
    def mode(self) -> str: ...


class MqttBridge:
    #: How often the worker looks at the states when nothing wakes it.
    poll_s = 0.25

    def __init__(
        self,
        cfg: Section,
        *,
        camera: str,
        version: str,
        bus: EventBus,
        registry: Registry,
        status: ComponentStatus,
        token: Callable[[], str],
        health: Callable[[], dict[str, Any]],
        snapshot: Callable[[], tuple[bytes, Any] | None],
        motion: MotionView,
        night: NightView,
        detection: DetectionView | None,
        endpoints: Callable[[], dict[str, Any]],
        max_line: Callable[[], int] = lambda: 4096,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._cfg = cfg
        self._camera = camera
        self._version = version
        self._bus = bus
        self.status = status
        self._health = health
        self._snapshot = snapshot
        self._motion = motion
        self._night = night
        self._detection = detection
        self._endpoints = endpoints
        self._env = os.environ if env is None else env
        self.topics = Topics(cfg.topic_prefix, camera, cfg.discovery_prefix)
        self.outbox = Outbox(lambda: int(cfg.queue_size))
        self.commands = MqttCommands(registry, self.topics, token=token, allow_controls=lambda: bool(cfg.allow_controls), max_line=max_line)
        self._episodes = Episodes(camera)
        self._events: collections.deque[Event] = collections.deque(maxlen=EVENT_BACKLOG)
        self._requests: collections.deque[Request] = collections.deque(maxlen=REQUEST_BACKLOG)
        self._wake = threading.Event()
        self._cmd_wake = threading.Event()
        self._retime = threading.Event()  # a timing key changed: publish health and snapshot now, discovery again
        self._worker = Worker("mqtt", self._step, status=status, on_stop=self._wake.set, error_pause_s=1.0)
        self._cmd_worker = Worker("mqtt-cmd", self._cmd_step, status=status, on_stop=self._cmd_wake.set, error_pause_s=1.0)
        self._unsubscribe: list[Callable[[], None]] = []
        self._client: Client | None = None
        self._lock = threading.Lock()  # the connection flags and counters below; never held across a paho call
        self._connected = False
        self._resync = False
        self._local_address: str | None = None
        self._window = INFLIGHT
        self._inflight: dict[int, float] = {}  # mid -> when it was handed to paho
        self._acked_early: dict[int, float] = {}  # acknowledged before publish() returned its mid
        self._counts = {
            "connects": 0,
            "disconnects": 0,
            "published": 0,
            "acknowledged": 0,
            "refused_by_broker": 0,
            "events_dropped": 0,
            "requests_dropped": 0,
            "retained_requests_ignored": 0,
            "ha_announcements": 0,
            "snapshots": 0,
            "unacknowledged_expired": 0,
        }
        self._last_disconnect: str | None = None
        self._connected_since: float | None = None
        self._published: dict[str, bytes] = {}  # the last value made per state topic (so only changes are sent)
        self._regions: list[tuple[str, str]] = []
        self._discovery: dict[str, bytes] = {}
        self._fraction_at: dict[str, float] = {}
        self._next_health = 0.0
        self._next_snapshot = 0.0
        self._errlog = RepeatedLog(log)
        cfg.on_change(self._on_config)

    # -- lifecycle
    @property
    def broker(self) -> str:
        host = self._cfg.host
        return f"[{host}]:{self._cfg.port}" if ":" in host else f"{host}:{self._cfg.port}"

    def start(self) -> None:
        self.status.starting(f"connecting to the broker {self.broker}")
        self._put(Message(self.topics.available, b"online", retain=True))
        self._put_info()
        try:
            self._client = self._build_client()
        except Exception as exc:  # no paho, a CA file that does not load: picamd runs on without MQTT
            self.status.error("MQTT cannot start", exc)
            self.status.degrade(f"cannot start: {exc}")
            return
        for prefix in EVENT_PREFIXES:
            self._unsubscribe.append(self._bus.subscribe(prefix, self._on_bus))
        self._worker.start()
        self._cmd_worker.start()
        self._client.connect_async(self._cfg.host, int(self._cfg.port), keepalive=int(self._cfg.keepalive_s))
        self._client.loop_start()
        log.info(
            "MQTT: publishing to %s under %s/ (discovery %s)",
            self.broker,
            self.topics.base,
            f"under {self.topics.discovery_prefix}/" if self._cfg.discovery else "off",
        )

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        self._cmd_worker.stop()
        self._worker.stop()
        client = self._client
        if client is None:
            return
        with self._lock:
            connected = self._connected
            self._connected = False
        try:
            if connected:  # the last will is for deaths; a clean stop says offline itself
                info = client.publish(self.topics.available, b"offline", qos=1, retain=True)
                info.wait_for_publish(timeout=STOP_TIMEOUT_S / 2)
            client.disconnect()
        except Exception as exc:
            log.debug("MQTT: saying goodbye failed: %s", exc)
        # loop_stop joins paho's thread without a timeout; a connect stuck on a dead network must not hold up the exit.
        stopper = threading.Thread(target=client.loop_stop, name="picamd-mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT_S)
        if stopper.is_alive():
            log.warning("MQTT: the network thread did not stop within %.0f s", STOP_TIMEOUT_S)

    def _build_client(self) -> Client:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        cfg = self._cfg
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"picamd-{self._camera}", protocol=mqtt.MQTTv5)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        # paho's own window stays off: picamd's window decides what paho gets, and paho never parks a message as "queued"
        # (a parked message can be left unsent by paho's resend after a reconnect).
        client.max_inflight_messages_set(0)
        client.will_set(self.topics.available, b"offline", qos=1, retain=True)
        if cfg.username:
            client.username_pw_set(cfg.username, self._env.get(PASSWORD_ENV) or None)
        if cfg.tls or cfg.ca_file:
            client.tls_set(ca_certs=cfg.ca_file or None)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _on_config(self, name: str, _value: Any) -> None:
        # On the thread of `set`: the worker does the work (the camera entity comes and goes with snapshots).
        if name in ("mqtt.snapshot_every_s", "mqtt.health_every_s"):
            self._retime.set()
            self._wake.set()

    # -- paho's callbacks (its network thread): flags and queues only
    def _on_connect(self, client: Client, _userdata: Any, _flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._set_disconnected(f"the broker {self.broker} refused the connection: {reason_code}")
            return
        from paho.mqtt.subscribeoptions import SubscribeOptions

        # noLocal: picamd never hears its own replies. retainAsPublished: a retained command is seen as one, live or replayed.
        client.subscribe([(t, SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True)) for t in self.topics.subscriptions()])
        try:
            address = client.socket().getsockname()[0]  # type: ignore[union-attr]
        except (OSError, AttributeError):
            address = None
        receive_max = getattr(properties, "ReceiveMaximum", None)
        with self._lock:
            self._window = min(INFLIGHT, int(receive_max)) if receive_max else INFLIGHT
            self._connected = True
            self._resync = True
            self._local_address = address
            self._counts["connects"] += 1
            self._connected_since = time.time()
            first = self._counts["connects"] == 1
        self.status.recover()
        log.info("MQTT: %s to %s", "connected" if first else "connected again", self.broker)
        self._wake.set()

    def _on_connect_fail(self, _client: Client, _userdata: Any) -> None:
        # paho calls this inside its `except OSError:`, so the exception is the one being handled: name a TLS failure
        # (another CA, a wrong host name, a broker without TLS) rather than call the broker down.
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLCertVerificationError):
            why = exc.verify_message or exc.reason or str(exc)
            ca = f"the CA in {self._cfg.ca_file}" if self._cfg.ca_file else "the system's CAs"
            reason = f"the broker {self.broker}'s TLS certificate failed verification against {ca}: {why}; retrying"
        elif isinstance(exc, ssl.SSLError):
            reason = f"TLS with the broker {self.broker} failed: {exc.reason or exc} (is mqtt.port its TLS listener?); retrying"
        elif isinstance(exc, ConnectionResetError) and (self._cfg.tls or self._cfg.ca_file):
            # A listener without TLS drops the handshake's first bytes: a reset, not a refusal.
            reason = f"TLS with the broker {self.broker} failed: it reset the handshake (is mqtt.port its TLS listener?); retrying"
        else:
            reason = f"cannot connect to the broker {self.broker} (down, unreachable or refusing); retrying"
        self._set_disconnected(reason)

    def _on_disconnect(self, _client: Client, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        if not self._worker.alive:
            return  # our own goodbye
        if not self.connected:
            return  # paho's close after a refused CONNACK: the refusal (not authorised...) stays the reason
        self._set_disconnected(f"lost the broker {self.broker} ({reason_code}); reconnecting")

    def _set_disconnected(self, reason: str) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
            if was:
                self._counts["disconnects"] += 1
            self._last_disconnect = reason
            self._connected_since = None
        self.status.degrade(reason)

    def _on_publish(self, _client: Client, _userdata: Any, mid: int, reason_code: Any, _properties: Any) -> None:
        with self._lock:
            if self._inflight.pop(mid, None) is None:
                self._acked_early[mid] = time.monotonic()
            self._counts["acknowledged"] += 1
            window_was_full = len(self._inflight) + 1 >= self._window
            refused = bool(getattr(reason_code, "is_failure", False))
            if refused:
                self._counts["refused_by_broker"] += 1
        if window_was_full:
            self._wake.set()  # room again: the worker goes on with what is held at once
        if refused:
            self._errlog.warning(
                "refused", "MQTT: the broker refused a message (%s): check its ACL for %s/#", reason_code, self.topics.base
            )

    def _on_message(self, _client: Client, _userdata: Any, msg: MQTTMessage) -> None:
        topic = msg.topic
        if topic == self.topics.ha_status:
            if msg.payload.strip() == b"online":
                with self._lock:
                    self._resync = True
                    self._counts["ha_announcements"] += 1
                self._wake.set()
            return
        if msg.retain:
            # A retained command would run again on every reconnect: only live messages are commands.
            with self._lock:
                self._counts["retained_requests_ignored"] += 1
            self._errlog.warning(f"retained {topic}", "MQTT: ignored a retained message on %s (commands must not be retained)", topic)
            return
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        with self._lock:
            if len(self._requests) == REQUEST_BACKLOG:
                self._counts["requests_dropped"] += 1
            self._requests.append(Request(topic, bytes(msg.payload), response_topic, correlation))
        self._cmd_wake.set()

    # -- the bus (publisher's thread): append only
    def _on_bus(self, event: Event) -> None:
        if len(self._events) == EVENT_BACKLOG:
            with self._lock:
                self._counts["events_dropped"] += 1
        self._events.append(event)
        self._wake.set()

    # -- the command worker
    def _cmd_step(self) -> None:
        self._cmd_wake.wait(1.0)
        self._cmd_wake.clear()
        while not self._cmd_worker.stopping.is_set():
            with self._lock:
                request = self._requests.popleft() if self._requests else None
            if request is None:
                return
            for message in self.commands.handle(request):
                self._put(message)
            self._wake.set()

    # -- the publishing worker
    def _step(self) -> None:
        self._wake.wait(self.poll_s)
        self._wake.clear()
        now = time.monotonic()
        while self._events:
            self._on_event(self._events.popleft())
        self._flush()
        self._poll_states(now)
        self._periodic(now)
        self._flush()

    def _put(self, message: Message) -> None:
        self.outbox.put(message)

    def _put_state(self, topic: str, value: str | bytes) -> bool:
        """Publish a retained state when it changed; True if it did."""
        payload = value.encode() if isinstance(value, str) else value
        if self._published.get(topic) == payload:
            return False
        self._published[topic] = payload
        self._put(Message(topic, payload, retain=True))
        return True

    def _put_json(self, topic: str, payload: dict[str, Any], retain: bool = False) -> None:
        data = json.dumps(payload, default=str).encode()
        if retain:
            self._put_state(topic, data)
        else:
            self._put(Message(topic, data))

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    def _on_event(self, event: Event) -> None:
        kind = event.kind
        for episode in self._episodes.on_event(event):
            self._put_json(self.topics.events, episode)
        if kind.startswith("detect."):
            self._put_json(self.topics.detections, {k: v for k, v in event.to_dict().items() if k != "webhook"})
            if kind == "detect.count":
                self._put_state(self.topics.people, str(int(event.data.get("count") or 0)))
            elif kind == "detect.clear":
                self._put_state(self.topics.people, "0")
        elif kind.startswith("ptz.sweep."):
            self._put_json(self.topics.sweep, event.to_dict(), retain=True)

    def _poll_states(self, now: float) -> None:
        night = self._night
        self._put_state(self.topics.night, "ON" if night.is_night else "OFF")
        mode = str(night.health().get("mode", "auto"))
        self._put_state(self.topics.night_mode, "night" if mode == "forced night" else "day" if mode == "forced day" else "auto")
        self._put_state(self.topics.motion_state, "ON" if self._motion.enabled else "OFF")
        if self._detection is not None:
            self._put_state(self.topics.detect_state, "OFF" if self._detection.mode == "off" else "ON")
        if self.topics.people not in self._published:
            self._put_state(self.topics.people, "0")
        states = self._motion.region_states()
        regions = [(str(r["name"]), region_slug(str(r["name"]))) for r in states]
        if regions != self._regions:
            self._regions_changed(regions)
        live = self._live()
        for region, (_name, slug) in zip(states, regions, strict=True):
            self._put_state(self.topics.motion(slug), "ON" if region.get("moving") else "OFF")
            if self._put_state(self.topics.machine_state(slug), str(region.get("state"))):
                self._put_json(self.topics.machine_attributes(slug), machine_attributes(region), retain=True)
            if live and now - self._fraction_at.get(slug, -FRACTION_EVERY_S) >= FRACTION_EVERY_S:
                value = f"{float(region.get('fraction') or 0.0):.4f}"
                key = self.topics.motion_fraction(slug)
                if self._published.get(key) != value.encode():
                    self._published[key] = value.encode()
                    self._fraction_at[slug] = now
                    self._put(Message(key, value.encode()))

    def _regions_changed(self, regions: list[tuple[str, str]]) -> None:
        gone = {slug for _, slug in self._regions} - {slug for _, slug in regions}
        for slug in sorted(gone):
            # Empty retained payloads delete the region's topics on the broker.
            for topic in (self.topics.motion(slug), self.topics.machine_state(slug), self.topics.machine_attributes(slug)):
                self._published.pop(topic, None)
                self._put(Message(topic, b"", retain=True))
            self._published.pop(self.topics.motion_fraction(slug), None)
        self._regions = regions
        self._discovery_update()

    def _discovery_update(self) -> None:
        if not self._cfg.discovery:
            return
        configs = discovery.entities(self.topics, self._version, self._http_url(), self._regions, self._cfg.snapshot_every_s > 0)
        new = {topic: json.dumps(config).encode() for topic, config in configs.items()}
        for topic in sorted(set(self._discovery) - set(new)):
            self._put(Message(topic, b"", retain=True))  # an entity that is no more
        for topic, payload in new.items():
            if self._discovery.get(topic) != payload:
                self._put(Message(topic, payload, retain=True))
        self._discovery = new

    def _periodic(self, now: float) -> None:
        if self._retime.is_set():
            self._retime.clear()
            self._next_health = self._next_snapshot = 0.0
            self._discovery_update()
        if not self._live():
            return
        if now >= self._next_health:
            self._next_health = now + float(self._cfg.health_every_s)
            self._publish_health()
        every = float(self._cfg.snapshot_every_s)
        if every > 0 and now >= self._next_snapshot:
            self._next_snapshot = now + every
            got = self._snapshot()
            if got is not None:
                self._put(Message(self.topics.snapshot, bytes(got[0]), retain=True))
                with self._lock:
                    self._counts["snapshots"] += 1

    def _live(self) -> bool:
        """Whether to make the live pictures (fractions, health, snapshot): connected, with nothing held waiting.

        They describe the present: one made while the broker is away is stale by the time it goes out, and on a
        backlog it would push a held event out of the queue.
        """
        return self.connected and self.outbox.backlog() == 0

    def _publish_health(self) -> None:
        h = self._health()
        self._put_json(self.topics.health, health_summary(h, {"mqtt": self._brief()}))
        regions = {str(r.get("name")): r for r in (h.get("motion") or {}).get("regions", {}).values()}
        for name, slug in self._regions:
            if name in regions:  # time in state grows: refreshed with every health tick
                self._put_json(self.topics.machine_attributes(slug), machine_attributes(regions[name]), retain=True)

    def _flush(self) -> None:
        client = self._client
        with self._lock:
            if not self._connected or client is None:
                return
            resync, self._resync = self._resync, False
        if resync:
            self._put_info()
            self._discovery_update()
            self._next_health = self._next_snapshot = 0.0  # as soon as what was held has gone out
            count = self.outbox.resync(first=self.topics.available)
            log.debug("MQTT: %d retained topics lined up again", count)
        from paho.mqtt.client import MQTT_ERR_NO_CONN, MQTT_ERR_SUCCESS

        self._expire_inflight()
        while True:
            with self._lock:
                if len(self._inflight) >= self._window or not self._connected:
                    return
            message = self.outbox.take()
            if message is None:
                return
            properties = None
            if message.correlation is not None:
                from paho.mqtt.packettypes import PacketTypes
                from paho.mqtt.properties import Properties

                properties = Properties(PacketTypes.PUBLISH)
                properties.CorrelationData = message.correlation
            try:
                info = client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain, properties=properties)
            except ValueError as exc:  # a topic or payload the protocol cannot carry: drop it, say why
                self.status.error(f"cannot publish on {message.topic[:120]}", exc)
                continue
            if info.rc not in (MQTT_ERR_SUCCESS, MQTT_ERR_NO_CONN):  # NO_CONN: paho keeps a QoS 1 message and sends it after reconnecting
                self.outbox.put_back(message)
                return
            with self._lock:
                self._counts["published"] += 1
                if self._acked_early.pop(info.mid, None) is None:
                    self._inflight[info.mid] = time.monotonic()

    def _expire_inflight(self) -> None:
        limit = time.monotonic() - INFLIGHT_EXPIRE_S
        with self._lock:
            for table in (self._inflight, self._acked_early):
                old = [mid for mid, at in table.items() if at < limit]
                for mid in old:
                    del table[mid]
                if table is self._inflight:
                    self._counts["unacknowledged_expired"] += len(old)

    # -- what the daemon and viewers read
    def _http_url(self) -> str | None:
        ep = self._endpoints()
        host = self._reachable(str(ep.get("http_bind", "")))
        port = ep.get("http_port")
        if host is None or not port:
            return None
        return f"http://{host}:{port}/"

    def _reachable(self, bind: str) -> str | None:
        """The address a viewer uses: the bind address, or for 0.0.0.0/:: the one this host reaches the broker from."""
        if bind and bind not in ("0.0.0.0", "::"):
            host = bind
        else:
            with self._lock:
                host = self._local_address or ""
        if not host:
            return None
        return f"[{host}]" if ":" in host else host

    def _put_info(self) -> None:
        ep = self._endpoints()
        url = self._http_url()
        control_host = self._reachable(str(ep.get("control_bind", "")))
        info: dict[str, Any] = {
            "camera": self._camera,
            "version": self._version,
            "http": url,
            "stream": f"{url}stream" if url else None,
            "snapshot": f"{url}snapshot.jpg" if url else None,
            "health": f"{url}health" if url else None,
            "command": f"{control_host}:{ep.get('control_port')}" if control_host and ep.get("control_port") else None,
            "topics": self.topics.base,
        }
        self._put_json(self.topics.info, info, retain=True)

    def _brief(self) -> dict[str, Any]:
        stats = self.outbox.stats()
        with self._lock:
            return {"connected": self._connected, "held": stats["held"], "dropped": stats["dropped"], "inflight": len(self._inflight)}

    def health(self) -> dict[str, Any]:
        stats = self.outbox.stats()
        with self._lock:
            counts = dict(self._counts)
            out = {
                "state": self.status.state,
                "broker": self.broker,
                "tls": bool(self._cfg.tls or self._cfg.ca_file),
                "connected": self._connected,
                "connected_since": self._connected_since,
                "last_disconnect": self._last_disconnect,
                "topics": self.topics.base,
                "discovery": self.topics.discovery_prefix if self._cfg.discovery else None,
                "inflight": len(self._inflight),
            }
        return {**out, **stats, **counts, "commands": dict(self.commands.counts), "workers_alive": self._worker.alive}
