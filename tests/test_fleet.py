"""tools/fleet.py against real daemons on loopback: the table, the JSON, the page, the page in headless Chromium, and
cameras found over MQTT.

Two daemons on the synthetic scene: `shed` with a motion region and the detector, `gate` with HTTP login on
(http.users, /health closed too), so the tool must send its credentials. The page is fetched and checked, then
loaded in Debian's `chromium` when it is installed (headless, no sandbox: the tests run as root), which must show
both cards and decode shed's live stream straight from the daemon. The MQTT case starts a real `mosquitto` on a
loopback port (skipped, saying why, when it is not installed) and a third daemon that announces itself there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from daemon_proc import ROOT, Daemon, free_port, wait_for

from daemon.net.httpauth import hash_password

pytestmark = pytest.mark.timeout(90)

FLEET = ROOT / "tools" / "fleet.py"
PASSWORD = "s3cret-gate-pass"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module")
def cams(tmp_path_factory) -> Iterator[dict[str, Daemon]]:
    region = [{"name": "door", "rect": [0.64, 0.30, 0.30, 0.26], "min_fraction": 0.02}]
    shed = Daemon(
        tmp_path_factory.mktemp("shed"),
        overrides={"camera.name": "shed", "motion.regions": region, "detect.enabled": True, "detect.gate": "always", "detect.max_fps": 2.0},
    )
    gate = Daemon(
        tmp_path_factory.mktemp("gate"),
        overrides={"camera.name": "gate", "http.users": {"alice": hash_password(PASSWORD)}, "http.health_open": False},
    )
    shed.start(wait=False)
    gate.start(wait=False)
    try:
        shed.wait_ready()
        gate.wait_ready()
        # The detector has given its first result, so the people and detection columns have values.
        assert wait_for(lambda: json.loads(shed.http("/detections")[2]).get("frame_id") is not None, timeout=30), shed.log()
        yield {"shed": shed, "gate": gate}
    finally:
        shed.stop()
        gate.stop()


def fleet(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(FLEET), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def addr(d: Daemon) -> str:
    return f"127.0.0.1:{d.http_port}"


def gate_url(d: Daemon) -> str:
    return f"http://alice:{PASSWORD}@127.0.0.1:{d.http_port}"


def row(table: str, name: str) -> str:
    lines = [line for line in table.splitlines() if line.split()[0] == name]
    assert len(lines) == 1, table
    return lines[0]


def test_status_table_shows_both_cameras(cams: dict[str, Daemon]) -> None:
    done = fleet("status", addr(cams["shed"]), gate_url(cams["gate"]))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "URL", "HEALTH", "FPS", "NIGHT", "MACHINES", "PEOPLE", "LAST", "DETECTION"]
    shed = row(done.stdout, "shed")
    assert f"http://127.0.0.1:{cams['shed'].http_port}" in shed and " ok " in shed
    assert re.search(r" \d+\.\d +(DAY|NIGHT) +door (RUNNING|STOPPED|UNKNOWN) \d+(s|m\d\ds) ", shed), shed
    # People (from /health) and the newest detection (from /detections, read a moment later: they may differ by then).
    assert re.search(r"s +\d+ +(nobody|\d+ person(, \d+ \w+)*) \(\d+s ago\)$", shed), shed
    gate = row(done.stdout, "gate")
    assert " ok " in gate and PASSWORD not in done.stdout
    assert re.search(r" \d+\.\d +(DAY|NIGHT) +- ", gate), gate  # no region on the gate


def test_credentials_from_the_options_and_a_camera_that_needs_them(cams: dict[str, Daemon]) -> None:
    gate = cams["gate"]
    done = fleet("status", addr(gate))
    assert done.returncode == 1 and "DOWN: login needed" in row(done.stdout, addr(gate))
    done = fleet("status", addr(gate), "--user", "alice", env={"PICAMD_HTTP_PASSWORD": PASSWORD})
    assert done.returncode == 0 and " ok " in row(done.stdout, "gate"), done.stdout
    done = fleet("status", addr(gate), "--user", "alice:wrong-password")
    assert done.returncode == 1 and "login needed" in done.stdout


def test_json_from_a_file_of_cameras_with_a_name_and_one_down(cams: dict[str, Daemon], tmp_path: Path) -> None:
    dead = free_port()
    hosts = tmp_path / "cameras.txt"
    hosts.write_text(f"# the fleet\nbackyard {addr(cams['shed'])}\n\n{gate_url(cams['gate'])}  # at the gate\n127.0.0.1:{dead}\n")
    done = fleet("status", "--file", str(hosts), "--json", "--timeout", "2")
    assert done.returncode == 1, done.stderr  # one camera is down
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert set(rows) == {"backyard", "gate", f"127.0.0.1:{dead}"}
    backyard = rows["backyard"]  # the file's name wins over the daemon's camera.name
    assert backyard["health"] == "ok" and backyard["night"] in ("DAY", "NIGHT") and backyard["fps"] > 0
    assert backyard["stream"] == f"http://127.0.0.1:{cams['shed'].http_port}/stream"
    assert [m["region"] for m in backyard["machines"]] == ["door"] and backyard["machines"][0]["state"] in ("RUNNING", "STOPPED", "UNKNOWN")
    assert backyard["detector"] == "running" and isinstance(backyard["people"], int)
    assert backyard["detections"]["frame_id"] is not None and isinstance(backyard["detections"]["counts"], dict)
    assert rows["gate"]["health"] == "ok" and rows["gate"]["reachable"]
    down = rows[f"127.0.0.1:{dead}"]
    assert not down["reachable"] and down["health"] == "down" and "refused" in down["error"].lower()
    assert PASSWORD not in done.stdout
    bad = fleet("status", "ftp://x", "--json")
    assert bad.returncode == 2 and "only http:// and https://" in bad.stderr


class _Serve:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(FLEET), "serve", "--port", "0", "--poll", "0.5", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line + self.proc.stderr.read() if self.proc.stderr else line
        self.port = int(found.group(1))

    def get(self, path: str) -> tuple[int, str, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.headers["Content-Type"], err.read().decode()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def page(cams: dict[str, Daemon]):
    serve = _Serve(addr(cams["shed"]), gate_url(cams["gate"]))
    yield serve
    serve.stop()


class _Cards(HTMLParser):
    """The cards of the fleet page as the browser left them: name, health, the image's src and whether it is live."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: dict[str, dict[str, Any]] = {}
        self._card: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and "card" in (a.get("class") or ""):
            self._card = {"health": a.get("data-health"), "links": [], "buttons": [], "src": None}
            self.cards[a.get("data-name") or "?"] = self._card
        elif self._card is not None and tag == "img":
            self._card.update(src=a.get("src"), live=a.get("data-live"))
        elif self._card is not None and tag == "a":
            self._card["links"].append(a.get("href"))
        elif self._card is not None and tag == "button":
            self._card["buttons"].append(tag)


def test_the_page_and_its_status_are_served(page: _Serve, cams: dict[str, Daemon]) -> None:
    code, content_type, html = page.get("/")
    assert code == 200 and content_type.startswith("text/html")
    assert '<main id="grid">' in html and 'fetch("/api/status"' in html
    code, content_type, text = page.get("/api/status")
    assert code == 200 and content_type == "application/json"
    body = json.loads(text)
    assert body["fps"] == 5.0 and body["poll_s"] == 0.5
    cameras = {c["name"]: c for c in body["cameras"]}
    assert set(cameras) == {"shed", "gate"}
    for name, d in cams.items():
        # The page's <img> points at the daemon itself: frames never pass through the fleet tool.
        assert cameras[name]["stream"] == f"http://127.0.0.1:{d.http_port}/stream"
        assert cameras[name]["health"] == "ok"
    assert PASSWORD not in text and "alice" not in text  # credentials stay in the tool
    assert page.get("/nothing")[0] == 404


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_page_in_headless_chromium_shows_both_cameras_and_a_live_stream(page: _Serve, cams: dict[str, Daemon]) -> None:
    sent_before = json.loads(cams["shed"].http("/health")[2])["clients"]["mjpeg"]["frames_sent"]
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-extensions",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=6000",
                "--dump-dom",
                f"http://127.0.0.1:{page.port}/",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = _Cards()
    parsed.feed(done.stdout)
    cards = parsed.cards
    assert set(cards) == {"shed", "gate"}, done.stdout[-3000:]
    shed, gate = cards["shed"], cards["gate"]
    assert shed["health"] == "ok" and gate["health"] == "ok"  # the tool read gate's /health with its login
    assert shed["src"].startswith(f"http://127.0.0.1:{cams['shed'].http_port}/stream?fps=5")
    assert shed["live"] == "1", done.stdout[-3000:]  # the browser decoded shed's stream
    # Gate has login on and the browser has no login for it: the card asks first (the daemon's page, then a button),
    # rather than loading a stream that would be refused.
    assert gate["src"] is None and gate["live"] == "0" and gate["buttons"], done.stdout[-3000:]
    assert f"http://127.0.0.1:{cams['gate'].http_port}/" in gate["links"]
    sent_after = json.loads(cams["shed"].http("/health")[2])["clients"]["mjpeg"]["frames_sent"]
    assert sent_after > sent_before  # frames went from the daemon to the browser


# -- found over MQTT


@pytest.fixture
def broker(tmp_path: Path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    try:
        assert wait_for(listening, timeout=10), "mosquitto did not listen" if proc.poll() is None else proc.communicate()[1].decode()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def retained(port: int, topic_filter: str, want: int, timeout: float = 20.0) -> dict[str, bytes]:
    """The retained messages matching a filter, once `want` of them have arrived (a real subscriber)."""
    import paho.mqtt.client as mqtt

    got: dict[str, bytes] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, bytes(m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe(topic_filter)
    client.loop_start()
    try:
        wait_for(lambda: len(got) >= want, timeout=timeout, interval=0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def test_cameras_found_over_mqtt(broker: int, tmp_path: Path, cams: dict[str, Daemon]) -> None:
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed")
    import paho.mqtt.client as mqtt
    import paho.mqtt.publish as publish

    # A camera that went away: its last will said offline; its info is still retained.
    publish.multiple(
        [
            {"topic": "picamd/old/available", "payload": "offline", "retain": True},
            {"topic": "picamd/old/info", "payload": json.dumps({"http": f"http://127.0.0.1:{free_port()}/"}), "retain": True},
        ],
        hostname="127.0.0.1",
        port=broker,
        protocol=mqtt.MQTTv311,
    )
    (tmp_path / "yard").mkdir()
    yard = Daemon(
        tmp_path / "yard", overrides={"camera.name": "yard", "mqtt.host": "127.0.0.1", "mqtt.port": broker, "mqtt.discovery": False}
    ).start()
    try:
        announced = retained(broker, "picamd/yard/+", want=2)
        assert announced.get("picamd/yard/available") == b"online", (announced, yard.log())
        done = fleet("status", "--mqtt", f"127.0.0.1:{broker}", "--mqtt-wait", "1", "--json")
        rows = {r["name"]: r for r in json.loads(done.stdout or "[]")}
        assert set(rows) == {"yard"}, done.stdout + done.stderr
        assert rows["yard"]["source"] == "mqtt" and rows["yard"]["health"] == "ok"
        assert rows["yard"]["url"] == f"http://127.0.0.1:{yard.http_port}"
        # Given cameras and found ones together; a broker that is not there is a clear error.
        done = fleet("status", addr(cams["shed"]), "--mqtt", f"127.0.0.1:{broker}", "--mqtt-wait", "1")
        assert {"shed", "yard"} <= {line.split()[0] for line in done.stdout.splitlines()[1:]}, done.stdout
        done = fleet("status", "--mqtt", f"127.0.0.1:{free_port()}")
        assert done.returncode == 2 and "--mqtt 127.0.0.1:" in done.stderr
    finally:
        yard.stop()
