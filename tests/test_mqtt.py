"""MQTT end to end: a real Mosquitto on a loopback port, the real daemon as a subprocess, a real paho subscriber.

One broker and one daemon (synthetic scene, a motion region on the machine,
a token on the command port) serve the whole file; the tests run in order
and the last one kills the daemon with SIGKILL to see the last will.
Checked through the broker only: topics, payloads and retained flags (the
subscriber asks for retain-as-published), commands and replies with the
TCP port's token rules, Home Assistant's controls, the discovery configs
against the keys Home Assistant's MQTT integration documents per component
(Home Assistant itself is not run), Home Assistant's birth message, a broker
restart with nothing lost within `mqtt.queue_size` and the oldest dropped
and counted beyond it, and the last will.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from daemon_proc import Daemon, free_port, replies, reply_json, wait_for

from daemon.mqtt.discovery import REQUIRED
from daemon.mqtt.messages import HEALTH_KEYS
from daemon.mqtt.outbox import Message, Outbox
from daemon.sources.scene import MACHINE_RECT_FRAC

mqtt = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)
TOKEN = "mqtt-s3cret"
PASSWORD = "broker-pa55word-never-logged"
CAMERA = "cam1"
BASE = f"picamd/{CAMERA}"
AVAILABLE = f"{BASE}/available"

needs_broker = pytest.mark.skipif(
    MOSQUITTO is None, reason="mosquitto is not installed (make setup-test installs it from Debian's packages when run as root)"
)


# -- a real broker ---------------------------------------------------------------------------------------------


class Broker:
    """Mosquitto on 127.0.0.1:port with persistence (a subscriber's session and its queued messages survive a restart)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.conf = workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence true", f"persistence_location {workdir}/"]
        if os.geteuid() == 0:
            lines.append("user root")  # as root it would switch to the mosquitto user, who cannot write here
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def accepting() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        assert wait_for(accepting, 15), (self.dir / "mosquitto.log").read_text()[-2000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


# -- a real subscriber -----------------------------------------------------------------------------------------


@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool
    properties: Any

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client recording what it receives (retained flags as published)."""

    def __init__(self, port: int, topics: list[str], *, client_id: str | None = None, persistent: bool = False) -> None:
        self.messages: list[Msg] = []
        self._cond = threading.Condition()
        self.connected = threading.Event()  # set once the broker has acknowledged the subscriptions
        self.topics = topics
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self.connected.set()
        self.client.on_disconnect = lambda *_a: self.connected.clear()
        self.client.reconnect_delay_set(1, 2)
        props = Properties(PacketTypes.CONNECT)
        if persistent:
            props.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", port, clean_start=not persistent, properties=props)
        self.client.loop_start()
        assert self.connected.wait(10), "the subscriber could not connect"

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            return
        client.subscribe([(t, SubscribeOptions(qos=1, retainAsPublished=True)) for t in self.topics])

    def _on_message(self, _client, _userdata, msg) -> None:
        with self._cond:
            self.messages.append(Msg(msg.topic, bytes(msg.payload), bool(msg.retain), msg.properties))
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def on(self, topic: str, since: int = 0) -> list[Msg]:
        with self._cond:
            return [m for m in self.messages[since:] if m.topic == topic]

    def wait(self, topic: str, pred: Callable[[Msg], bool] = lambda m: True, since: int = 0, timeout: float = 20.0) -> Msg:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages[since:]:
                    if m.topic == topic and pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({m.topic for m in self.messages})
                    raise AssertionError(f"nothing matching on {topic} within {timeout} s; topics seen: {seen}")
                self._cond.wait(left)

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = False, properties: Any = None) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain, properties=properties).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the shared broker and daemon ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make setup-test installs it from Debian's packages when run as root)")
    b = Broker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def daemon(broker: Broker, tmp_path_factory) -> Iterator[Daemon]:
    region = {"name": "machine", "rect": list(MACHINE_RECT_FRAC), "min_fraction": 0.02, "machine_id": 7}
    d = Daemon(
        tmp_path_factory.mktemp("daemon"),
        overrides={
            "camera.name": CAMERA,
            "control.token": TOKEN,
            "mqtt.host": "127.0.0.1",
            "mqtt.port": broker.port,
            "mqtt.username": "picamd",
            "mqtt.health_every_s": 2.0,
            "mqtt.snapshot_every_s": 2.0,
            "motion.regions": [region],
            "motion.window_s": 2.0,
            "motion.settle_s": 0.5,
            "synthetic.day_length_s": 86400,
            "synthetic.start_phase": 0.5,
            "night.exposure_us": 50000,
        },
        env={"PICAMD_MQTT_PASSWORD": PASSWORD},
    ).start()
    yield d
    d.stop()


def health(d: Daemon) -> dict:
    return reply_json(replies(d.cmd("health"))[0])


def as_owner(d: Daemon, *lines: str) -> list[str]:
    """Commands on one TCP connection after `token`; returns the replies after the token's."""
    out = replies(d.cmd(f"token {TOKEN}", *lines))
    assert out[0].startswith("OK"), out
    return out[1:]


# -- the tests --------------------------------------------------------------------------------------------------


def test_the_outbox_keeps_the_newest_messages_within_its_bound_and_every_states_newest_value() -> None:
    size = 10
    box = Outbox(lambda: size)
    box.put(Message("p/available", b"online", retain=True))
    for i in range(25):
        box.put(Message("p/events", f"e{i}".encode()))
        box.put(Message("p/night", b"ON" if i % 2 else b"OFF", retain=True))  # a state changing often pushes nothing out
    assert box.stats()["dropped"] == 15 and box.stats()["held"] == size
    box.resync(first="p/available")
    out = []
    while (m := box.take()) is not None:
        out.append((m.topic, m.payload.decode()))
    # The states first (availability at the front, each topic once with its newest value), then the newest events in order.
    assert out[:2] == [("p/available", "online"), ("p/night", "OFF")]  # e24 came with OFF
    assert out[2:] == [("p/events", f"e{i}") for i in range(15, 25)]
    # In normal running a state keeps its place among the events around it, and a message put back goes first.
    box.put(Message("p/events", b"a"))
    box.put(Message("p/night", b"OFF", retain=True))
    box.put(Message("p/events", b"b"))
    first = box.take()
    assert first is not None and first.payload == b"a"
    box.put_back(first)
    assert [box.take().payload for _ in range(3)] == [b"a", b"OFF", b"b"]  # type: ignore[union-attr]
    assert box.take() is None


@needs_broker
def test_topics_payloads_and_retained_flags(daemon: Daemon, broker: Broker) -> None:
    sub = Subscriber(broker.port, [f"{BASE}/#"])
    try:
        assert sub.wait(AVAILABLE).payload == b"online" and sub.wait(AVAILABLE).retain
        info = sub.wait(f"{BASE}/info").json()
        assert info["camera"] == CAMERA and info["version"]
        assert info["http"] == f"http://127.0.0.1:{daemon.http_port}/" and info["command"] == f"127.0.0.1:{daemon.control_port}"
        assert sub.wait(f"{BASE}/info").retain
        for topic, value in (
            ("night", b"OFF"),
            ("night/mode", b"auto"),
            ("motion/state", b"ON"),
            ("detect/state", b"OFF"),
            ("people", b"0"),
        ):
            m = sub.wait(f"{BASE}/{topic}")
            assert (m.payload, m.retain) == (value, True), topic

        # The machine runs first: the region moves and its machine is RUNNING after one window, with its attributes.
        running = sub.wait(f"{BASE}/machine/machine/state", lambda m: m.payload == b"RUNNING")
        assert running.retain
        attrs = sub.wait(f"{BASE}/machine/machine/attributes", lambda m: m.json()["state"] == "RUNNING").json()
        assert attrs["machine_id"] == 7 and attrs["in_state_s"] is not None and attrs["in_state_s"] >= 0
        assert sub.wait(f"{BASE}/motion/machine", lambda m: m.payload == b"ON").retain
        fraction = sub.wait(f"{BASE}/motion/machine/fraction")
        assert not fraction.retain and 0.0 <= float(fraction.payload) <= 1.0

        # The health summary (not retained) has the keys Home Assistant's sensors read, and the MQTT figures.
        h = sub.wait(f"{BASE}/health", lambda m: m.json()["mqtt"]["connected"])
        assert not h.retain
        summary = h.json()
        assert set(HEALTH_KEYS) <= set(summary) and summary["status"] in ("ok", "degraded") and summary["fps"] > 0
        assert summary["night"] is False and summary["dark_score"] > 0

        # The snapshot is a retained JPEG of the whole frame.
        snap = sub.wait(f"{BASE}/snapshot")
        assert snap.retain
        image = cv2.imdecode(np.frombuffer(snap.payload, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[:2] == (480, 640)
    finally:
        sub.close()

    # The daemon's own health shows the component; the password is neither logged nor shown.
    body = health(daemon)
    assert body["mqtt"]["connected"] is True and body["components"]["mqtt"]["state"] == "ok"
    assert body["mqtt"]["broker"] == f"127.0.0.1:{broker.port}" and "mqtt" not in body["degraded"]
    assert PASSWORD not in daemon.log_path.read_text() and PASSWORD not in daemon.cmd("dump_config")
    # Connecting at start is no fault: said at INFO, neither a degradation nor a recovery in the log.
    logged = [ln for ln in daemon.log_path.read_text().splitlines() if " picamd.mqtt: mqtt" in ln]
    assert any(f"INFO picamd.mqtt: mqtt: connecting to the broker 127.0.0.1:{broker.port}" in ln for ln in logged), logged
    assert not any("degraded" in ln or "recovered" in ln for ln in logged), logged
    # The info topic's URLs are the daemon's real ones.
    status, _headers, raw = daemon.http("/health")
    assert status == 200 and json.loads(raw)["mqtt"]["connected"] is True


@needs_broker
def test_commands_and_replies_follow_the_token_rules_of_the_command_port(daemon: Daemon, broker: Broker) -> None:
    inbox = f"test/{uuid.uuid4().hex[:6]}"
    sub = Subscriber(broker.port, [f"{BASE}/cmd/reply", f"{BASE}/events", f"{BASE}/night", f"{BASE}/night/mode", f"{inbox}/#"])
    reply_topic = f"{BASE}/cmd/reply"
    try:

        def ask(payload: str | bytes, topic: str = reply_topic, properties: Any = None) -> Msg:
            mark = sub.mark()
            sub.publish(f"{BASE}/cmd", payload, properties=properties)
            return sub.wait(topic, since=mark)

        # Plain text, as netcat would send it: reading needs no token.
        r = ask("health").json()
        assert r["ok"] and r["reply"].startswith("OK") and r["command"] == "health" and r["body"]["mqtt"]["connected"]
        assert not sub.on(reply_topic)[-1].retain

        # Changing state needs the token, as on the TCP port.
        r = ask(json.dumps({"command": "night night"})).json()
        assert not r["ok"] and "needs 'token SECRET'" in r["reply"]
        # A wrong token, and the right one straight after it: refused unheard for a while (that doubles with every failure).
        mark = sub.mark()
        sub.publish(f"{BASE}/cmd", json.dumps({"command": "night night", "token": "wrong"}))
        sub.publish(f"{BASE}/cmd", json.dumps({"command": "night night", "token": TOKEN}))
        sub.wait(reply_topic, lambda m: "refused unheard" in m.json()["reply"], since=mark)
        first, second = (m.json() for m in sub.on(reply_topic, mark)[:2])
        assert not first["ok"] and "wrong token" in first["reply"]
        assert not second["ok"] and "refused unheard" in second["reply"]
        mark = sub.mark()

        def forced_night() -> bool:
            return ask(json.dumps({"command": "night night", "token": TOKEN})).json()["ok"]

        assert wait_for(forced_night, 15, interval=0.3)
        assert sub.wait(f"{BASE}/night", lambda m: m.payload == b"ON", since=mark).retain
        assert sub.wait(f"{BASE}/night/mode", lambda m: m.payload == b"night", since=mark)
        new = sub.wait(f"{BASE}/events", lambda m: m.json()["after"]["kind"] == "night", since=mark).json()
        assert new["type"] == "new" and new["before"] is None and new["after"]["end_time"] is None
        assert new["after"]["camera"] == CAMERA

        # Plain text may carry the token on its first line, like a netcat session; each line gets its reply.
        mark = sub.mark()
        sub.publish(f"{BASE}/cmd", f"token {TOKEN}\nnight day\nnight auto")
        sub.wait(reply_topic, lambda m: m.json()["command"] == "night auto", since=mark)
        got = [m.json() for m in sub.on(reply_topic, mark)]
        assert [g["command"] for g in got] == ["token ***", "night day", "night auto"] and all(g["ok"] for g in got)
        end = sub.wait(f"{BASE}/events", lambda m: m.json()["type"] == "end", since=mark).json()
        assert end["after"]["id"] == new["after"]["id"] and end["before"] == new["after"] and end["after"]["end_time"] is not None
        assert sub.wait(f"{BASE}/night", lambda m: m.payload == b"OFF", since=mark)

        # MQTT 5 request/response: the reply goes to the response topic with the correlation data.
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{inbox}/v5"
        props.CorrelationData = b"req-42"
        m = ask("status", topic=f"{inbox}/v5", properties=props)
        assert m.json()["ok"] and m.properties.CorrelationData == b"req-42"
        # Or to reply_to from the payload.
        assert (
            ask(json.dumps({"command": "get camera.name", "reply_to": f"{inbox}/plain"}), topic=f"{inbox}/plain").json()["reply"]
            == f'OK camera.name="{CAMERA}"'
        )
        # Never to one of the camera's own topics (that would overwrite a state or loop).
        r = ask(json.dumps({"command": "status", "reply_to": f"{BASE}/night"})).json()
        assert not r["ok"] and "own topics" in r["reply"]

        # Bad requests get a clear error; a streaming command is for the TCP port.
        assert "unknown key" in ask(json.dumps({"command": "status", "tokn": "x"})).json()["reply"]
        assert "not valid JSON" in ask("{nope").json()["reply"]
        assert "unknown command" in ask("frobnicate").json()["reply"]
        assert "TCP command port" in ask("shortstream 2").json()["reply"]
        r = ask(json.dumps({"command": f"set control.token {TOKEN}x", "token": TOKEN})).json()  # a secret is never echoed
        assert r["ok"] and TOKEN not in json.dumps(r)
        assert ask(json.dumps({"command": f"set control.token {TOKEN}", "token": TOKEN + "x"})).json()["ok"]

        # A retained command is never run (it would run again on every reconnect).
        before = health(daemon)["mqtt"]["retained_requests_ignored"]
        sub.publish(f"{BASE}/cmd", "night night", retain=True)
        assert wait_for(lambda: health(daemon)["mqtt"]["retained_requests_ignored"] > before, 10)
        sub.publish(f"{BASE}/cmd", b"", retain=True)  # deletes the retained message (and is ignored too)
        assert replies(daemon.cmd("night"))[0].startswith("OK DAY")
    finally:
        sub.close()


@needs_broker
def test_home_assistant_controls_need_allow_controls_while_a_token_is_set(daemon: Daemon, broker: Broker) -> None:
    sub = Subscriber(
        broker.port, [f"{BASE}/cmd/reply", f"{BASE}/night", f"{BASE}/night/mode", f"{BASE}/motion/state", f"{BASE}/detect/state"]
    )
    try:

        def control(topic: str, payload: str) -> dict:
            mark = sub.mark()
            sub.publish(f"{BASE}/{topic}", payload)
            return sub.wait(f"{BASE}/cmd/reply", lambda m: m.json().get("control") == f"{BASE}/{topic}", since=mark).json()

        r = control("night/set", "night")
        assert not r["ok"] and "mqtt.allow_controls" in r["reply"]
        assert replies(daemon.cmd("night"))[0].startswith("OK DAY")

        assert as_owner(daemon, "set mqtt.allow_controls true")[0].startswith("OK mqtt.allow_controls=true (applied)")
        mark = sub.mark()
        assert control("night/set", "night")["ok"]
        assert sub.wait(f"{BASE}/night/mode", lambda m: m.payload == b"night", since=mark)
        assert sub.wait(f"{BASE}/night", lambda m: m.payload == b"ON", since=mark)
        assert control("night/set", "day")["ok"] and control("night/set", "auto")["ok"]
        assert sub.wait(f"{BASE}/night/mode", lambda m: m.payload == b"auto", since=mark)

        mark = sub.mark()
        assert control("motion/set", "OFF")["ok"]
        assert sub.wait(f"{BASE}/motion/state", lambda m: m.payload == b"OFF", since=mark).retain
        assert replies(daemon.cmd("get motion.enabled"))[0] == "OK motion.enabled=false"
        assert control("motion/set", "ON")["ok"]
        assert sub.wait(f"{BASE}/motion/state", lambda m: m.payload == b"ON", since=mark)

        mark = sub.mark()
        assert control("detect/set", "ON")["ok"]
        assert sub.wait(f"{BASE}/detect/state", lambda m: m.payload == b"ON", since=mark)
        assert health(daemon)["detect"]["mode"] == "auto"
        assert control("detect/set", "OFF")["ok"]
        assert sub.wait(f"{BASE}/detect/state", lambda m: m.payload == b"OFF", since=mark)

        r = control("night/set", "maybe")
        assert not r["ok"] and "auto, day, night" in r["reply"]
    finally:
        as_owner(daemon, "set mqtt.allow_controls false")
        sub.close()


@needs_broker
def test_discovery_configs_have_what_home_assistant_requires(daemon: Daemon, broker: Broker) -> None:
    sub = Subscriber(broker.port, ["homeassistant/#", f"{BASE}/#"])
    try:
        sub.wait("homeassistant/switch/picamd_cam1/detection/config")
        wait_for(lambda: len([m for m in sub.messages if m.topic.startswith("homeassistant/")]) >= 12, 10)
        configs = {m.topic: m for m in sub.messages if m.topic.startswith("homeassistant/") and m.payload}
        kinds: dict[str, int] = {}
        unique_ids = set()
        device_ids = set()
        for topic, m in configs.items():
            assert m.retain, topic
            prefix, component, node, _object, last = topic.split("/")
            assert (prefix, node, last) == ("homeassistant", "picamd_cam1", "config"), topic
            assert component in REQUIRED, topic
            config = m.json()
            missing = [k for k in REQUIRED[component] if k not in config]
            assert not missing, f"{topic} lacks {missing}"
            assert config["availability_topic"] == AVAILABLE and "availability" not in config
            assert config["unique_id"] not in unique_ids
            unique_ids.add(config["unique_id"])
            device = config["device"]
            assert device["identifiers"] == ["picamd_cam1"] and device["name"] == CAMERA
            assert device["configuration_url"] == f"http://127.0.0.1:{daemon.http_port}/"
            device_ids.add(json.dumps(device, sort_keys=True))
            for key in ("state_topic", "command_topic", "json_attributes_topic", "topic"):
                if key in config:
                    assert config[key].startswith(BASE + "/") and not set(config[key]) & {"+", "#"}, (topic, key)
            if "device_class" in config:
                allowed = {"binary_sensor": {"motion", "running"}, "sensor": {"temperature", "data_size", "duration"}}[component]
                assert config["device_class"] in allowed, topic
            if config.get("state_topic") == f"{BASE}/health":
                assert config["value_template"].startswith("{{ value_json.")
            kinds[component] = kinds.get(component, 0) + 1
        assert len(device_ids) == 1
        assert kinds == {"camera": 1, "binary_sensor": 3, "sensor": 5, "select": 1, "switch": 2}
        select = configs["homeassistant/select/picamd_cam1/night_mode/config"].json()
        assert select["options"] == ["auto", "day", "night"] and select["command_topic"] == f"{BASE}/night/set"
        # Every state topic an entity reads has a retained value already (health comes every health_every_s).
        for m in configs.values():
            state = m.json().get("state_topic") or m.json().get("topic")
            if state != f"{BASE}/health":
                assert sub.wait(state).retain, state

        # Home Assistant announcing itself (birth message) gets the discovery and the states again.
        mark = sub.mark()
        sub.publish("homeassistant/status", "online")

        def configs_again() -> set[str]:
            return {m.topic for m in sub.messages[mark:] if m.topic.endswith("/config")}

        assert wait_for(lambda: configs_again() == set(configs), 15), set(configs) ^ configs_again()
        sub.wait(AVAILABLE, since=mark)

        # A region added gets its entities; deleted, they are removed (empty retained configs) with its topics.
        mark = sub.mark()
        assert as_owner(daemon, "region add door 0.05 0.05 0.2 0.3")[0].startswith("OK")
        door = "homeassistant/binary_sensor/picamd_cam1/motion_door/config"
        assert sub.wait(door, lambda m: bool(m.payload), since=mark).json()["state_topic"] == f"{BASE}/motion/door"
        assert sub.wait(f"{BASE}/machine/door/state", since=mark).retain
        mark = sub.mark()
        assert as_owner(daemon, "region del door")[0].startswith("OK")
        assert sub.wait(door, lambda m: m.payload == b"", since=mark).retain
        assert sub.wait(f"{BASE}/machine/door/state", lambda m: m.payload == b"", since=mark)
    finally:
        sub.close()


@needs_broker
def test_a_broker_restart_loses_nothing_within_the_queue_and_only_the_oldest_beyond_it(daemon: Daemon, broker: Broker) -> None:
    # A persistent session: the broker keeps this subscriber's queued messages across its own restart.
    sub = Subscriber(broker.port, [f"{BASE}/events", f"{BASE}/cmd/reply", AVAILABLE], client_id="test-restart", persistent=True)

    def night_episodes(since: int) -> list[dict]:
        return [e for e in (m.json() for m in sub.on(f"{BASE}/events", since)) if e["after"]["kind"] == "night"]

    def outage(toggles: int, settled: Callable[[dict, dict], bool]) -> tuple[int, dict, dict]:
        """Stop the broker, switch night on and off `toggles` times, wait until the daemon holds them (`settled(before, now)`),
        start the broker again; returns the mark, and the MQTT health before and at the end of the outage."""
        mark = sub.mark()
        broker.stop()
        assert wait_for(lambda: not health(daemon)["mqtt"]["connected"], 15)
        down = health(daemon)
        assert (
            "mqtt" in down["degraded"]
            and down["components"]["mqtt"]["state"].startswith("degraded (")
            and "broker" in down["components"]["mqtt"]["state"]
        )
        assert "WARNING picamd.mqtt: mqtt degraded: " in daemon.log_path.read_text()  # a real loss still warns
        as_owner(daemon, *(["night night", "night day"] * toggles))
        assert wait_for(lambda: settled(down["mqtt"], health(daemon)["mqtt"]), 10), health(daemon)["mqtt"]
        held = health(daemon)["mqtt"]
        broker.start()
        assert wait_for(lambda: health(daemon)["mqtt"]["connected"], 30), daemon.log()
        assert sub.connected.wait(15)
        # Once the daemon has handed over what it held, a command's reply comes after all of it.
        assert wait_for(lambda: health(daemon)["mqtt"]["held"] == 0, 15)
        barrier = uuid.uuid4().hex[:8]
        sub.publish(f"{BASE}/cmd", json.dumps({"command": f"help {barrier}"}))
        sub.wait(f"{BASE}/cmd/reply", lambda m: barrier in m.payload.decode(), since=mark, timeout=30)
        return mark, down, held

    try:
        # Within the bound: every episode made while the broker was away arrives, in order, and "online" again.
        mark, down, held = outage(3, lambda before, now: now["held"] - before["held"] >= 6)
        assert held["held"] >= 6 and held["dropped"] == down["mqtt"]["dropped"]
        got = night_episodes(mark)
        assert [e["type"] for e in got] == ["new", "end"] * 3
        for new, end in zip(got[::2], got[1::2], strict=True):
            assert end["after"]["id"] == new["after"]["id"] and end["before"] == new["after"]
        assert len({e["after"]["id"] for e in got}) == 3
        assert sub.wait(AVAILABLE, lambda m: m.payload == b"online", since=mark).retain  # the states are published again
        after = health(daemon)
        assert after["mqtt"]["dropped"] == down["mqtt"]["dropped"] and after["components"]["mqtt"]["state"] == "ok"

        # Beyond the bound: a queue of 10 keeps the newest 10 of the 16 episodes, in order, and counts what it dropped.
        as_owner(daemon, "set mqtt.queue_size 10", "set mqtt.health_every_s 600")
        mark, down, held = outage(8, lambda before, now: now["dropped"] - before["dropped"] >= 6)
        assert held["held"] == 10 and held["dropped"] - down["mqtt"]["dropped"] >= 6
        got = night_episodes(mark)
        assert [e["type"] for e in got] == ["new", "end"] * 5
        for new, end in zip(got[::2], got[1::2], strict=True):
            assert end["after"]["id"] == new["after"]["id"]
        assert len(night_episodes(0)) - len(got) == 6  # nothing from before the outage came twice
    finally:
        as_owner(daemon, "set mqtt.queue_size 1000", "set mqtt.health_every_s 2")
        sub.close()


@needs_broker
def test_the_last_will_says_offline_when_the_daemon_is_killed(daemon: Daemon, broker: Broker) -> None:
    sub = Subscriber(broker.port, [AVAILABLE])
    try:
        assert sub.wait(AVAILABLE).payload == b"online"
        mark = sub.mark()
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(10)
        will = sub.wait(AVAILABLE, lambda m: m.payload == b"offline", since=mark)
        assert will.retain
    finally:
        sub.close()
    late = Subscriber(broker.port, [AVAILABLE])  # and it stays: a newcomer gets it retained
    try:
        m = late.wait(AVAILABLE)
        assert (m.payload, m.retain) == (b"offline", True)
    finally:
        late.close()
