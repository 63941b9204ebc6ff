"""MQTT against a broker that checks who connects: a real Mosquitto with a password file and no anonymous access,
a plain listener and a TLS listener (a CA and a server certificate for 127.0.0.1 made here with openssl), the real
daemon as a subprocess with the password in PICAMD_MQTT_PASSWORD, and a real paho subscriber that logs in over TLS.

Checked: the right password over TLS with `mqtt.ca_file` gets `available` = online on the broker; a wrong password
leaves the daemon running with the mqtt component degraded and saying the broker did not authorise it; the password
never shows in the daemon's log, `health` or `dump_config`; a broker certificate signed by another CA than
`mqtt.ca_file`'s, and TLS against the plain listener, are refused with reasons that say so.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from certificates import OPENSSL, openssl, self_signed
from daemon_proc import Daemon, free_port, replies, reply_json, wait_for

mqtt = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
USER = "picamd"
PASSWORD = "s3cret-broker-Pa55-never-shown"
WRONG = "wrong-Pa55-also-never-shown"
CAMERA = "authcam"
AVAILABLE = f"picamd/{CAMERA}/available"


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost signed by it; returns (ca, cert, key)."""
    self_signed(
        folder / "ca.key",
        folder / "ca.crt",
        "/CN=picamd test CA",
        "basicConstraints=critical,CA:TRUE",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=folder)
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "2",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
        cwd=folder,
    )
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


class Broker:
    """Mosquitto with a password file and no anonymous access: a plain listener and a TLS one, both on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = free_port()
        self.tls_port = free_port()
        passwords = workdir / "passwords"
        made = [str(MOSQUITTO_PASSWD), "-b", "-c", str(passwords), USER, PASSWORD]
        done = subprocess.run(made, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        self.ca, cert, key = make_certificates(workdir)
        lines = [
            "allow_anonymous false",
            f"password_file {passwords}",
            f"listener {self.port} 127.0.0.1",
            f"listener {self.tls_port} 127.0.0.1",
            f"cafile {self.ca}",
            f"certfile {cert}",
            f"keyfile {key}",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")  # as root it would switch to the mosquitto user, who cannot read these files
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = workdir / "mosquitto.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT)

        def accepting() -> bool:
            try:
                for port in (self.port, self.tls_port):
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        pass
                return True
            except OSError:
                return False

        assert wait_for(accepting, 15), self.log.read_text()[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Subscriber:
    """A paho client logging in (optionally over TLS) and recording the payloads it receives per topic."""

    def __init__(self, port: int, topic: str, *, password: str, ca: Path | None) -> None:
        self.payloads: dict[str, list[bytes]] = {}
        self.refused: Any = None
        self._cond = threading.Condition()
        self.topic = topic
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(USER, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        with self._cond:
            if reason_code.is_failure:
                self.refused = reason_code
                self._cond.notify_all()
                return
        client.subscribe(self.topic, qos=1)

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        with self._cond:
            self.payloads.setdefault(msg.topic, []).append(bytes(msg.payload))
            self._cond.notify_all()

    def wait(self, topic: str, payload: bytes, timeout: float = 20.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: payload in self.payloads.get(topic, []), timeout)

    def wait_refused(self, timeout: float = 10.0) -> Any:
        with self._cond:
            self._cond.wait_for(lambda: self.refused is not None, timeout)
            return self.refused

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if MOSQUITTO is None or MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto and mosquitto_passwd are not installed (Debian's mosquitto package has both)")
    if OPENSSL is None:
        pytest.skip("openssl is not installed: no certificates for the TLS listener")
    b = Broker(tmp_path_factory.mktemp("authbroker"))
    yield b
    b.stop()


def make_daemon(workdir: Path, broker: Broker, password: str, ca_file: Path | None = None, port: int | None = None) -> Daemon:
    """A daemon that logs in over TLS to the broker's TLS listener (or `port`), trusting `ca_file` (default: the broker's CA)."""
    # The CA file lies next to the config file: a folder storage.allowed_roots allows by default.
    ca = workdir / "broker-ca.pem"
    ca.write_bytes((ca_file or broker.ca).read_bytes())
    return Daemon(
        workdir,
        overrides={
            "camera.name": CAMERA,
            "mqtt.host": "127.0.0.1",
            "mqtt.port": port or broker.tls_port,
            "mqtt.username": USER,
            "mqtt.ca_file": str(ca),
            "mqtt.health_every_s": 2.0,
            "mqtt.snapshot_every_s": 0,
        },
        env={"PICAMD_MQTT_PASSWORD": password},
    )


def health(d: Daemon) -> dict[str, Any]:
    body: dict[str, Any] = reply_json(replies(d.cmd("health"))[0])
    return body


def frame_id(d: Daemon) -> int:
    return int(health(d)["ring"]["newest_frame_id"] or 0)


def assert_never_shown(d: Daemon, secret: str) -> None:
    """The password is in none of what the running daemon shows or logs."""
    assert secret not in d.log_path.read_text(errors="replace")
    assert secret not in d.cmd("health")
    assert secret not in d.cmd("dump_config")
    _status, _headers, raw = d.http("/health")
    assert secret.encode() not in raw


def degraded_saying(d: Daemon, words: str) -> dict[str, Any]:
    """`health` once the mqtt component's state says `words` (any case), the daemon not connected; fails with its log."""

    def said() -> dict[str, Any] | None:
        h = health(d)
        return h if words in h["components"]["mqtt"]["state"].lower() else None

    h = wait_for(said, 15, interval=0.2)
    assert h, (health(d)["components"]["mqtt"], d.log())
    assert "mqtt" in h["degraded"] and h["mqtt"]["connected"] is False
    return h


def runs_on(d: Daemon, secret: str) -> None:
    """The daemon goes on without its broker: the command port answers, frames keep coming, the secret is never shown."""
    assert d.proc is not None and d.proc.poll() is None
    frame = frame_id(d)
    assert wait_for(lambda: frame_id(d) > frame, 10)
    assert_never_shown(d, secret)


def test_the_broker_turns_away_anonymous_and_wrong_passwords(broker: Broker) -> None:
    # The broker really checks: otherwise the tests below would prove nothing.
    anonymous = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    refused: list[Any] = []
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        refused.append(rc)
        done.set()

    anonymous.on_connect = on_connect
    anonymous.connect("127.0.0.1", broker.port)
    anonymous.loop_start()
    try:
        assert done.wait(10) and refused[0].is_failure, refused
    finally:
        anonymous.disconnect()
        anonymous.loop_stop()
    wrong = Subscriber(broker.tls_port, "#", password=WRONG, ca=broker.ca)
    try:
        rc = wrong.wait_refused()
        assert rc is not None and rc.is_failure, rc
    finally:
        wrong.close()


def test_the_right_password_over_tls_puts_the_camera_online(broker: Broker, tmp_path: Path) -> None:
    (tmp_path / "right").mkdir()
    right = make_daemon(tmp_path / "right", broker, PASSWORD)
    sub = Subscriber(broker.tls_port, f"picamd/{CAMERA}/#", password=PASSWORD, ca=broker.ca)
    right.start()
    try:
        assert sub.wait(AVAILABLE, b"online"), (sub.payloads.keys(), right.log())
        assert wait_for(lambda: health(right)["mqtt"]["connected"], 15), right.log()
        h = health(right)
        assert h["mqtt"]["tls"] is True and h["mqtt"]["broker"] == f"127.0.0.1:{broker.tls_port}"
        assert h["components"]["mqtt"]["state"] == "ok" and "mqtt" not in h["degraded"]
        assert_never_shown(right, PASSWORD)
    finally:
        right.stop()
        sub.close()
    assert PASSWORD not in right.log_path.read_text(errors="replace")  # the goodbye logs nothing of it either
    # A clean stop says offline on the broker, over the same authenticated TLS connection.
    late = Subscriber(broker.tls_port, AVAILABLE, password=PASSWORD, ca=broker.ca)
    try:
        assert late.wait(AVAILABLE, b"offline")
    finally:
        late.close()


def test_a_wrong_password_degrades_mqtt_with_the_reason_and_the_daemon_runs_on(broker: Broker, tmp_path: Path) -> None:
    (tmp_path / "wrong").mkdir()
    wrong = make_daemon(tmp_path / "wrong", broker, WRONG).start()
    try:
        degraded_saying(wrong, "not authori")
        runs_on(wrong, WRONG)
    finally:
        wrong.stop()
    assert WRONG not in wrong.log_path.read_text(errors="replace")


def test_a_broker_certificate_from_another_ca_is_refused_and_the_daemon_runs_on(broker: Broker, tmp_path: Path) -> None:
    """TLS is checked, not just switched on: trusting another CA than the one that signed the broker's certificate
    never connects (so the password is never sent), degrades mqtt with the reason, and the camera carries on."""
    other = tmp_path / "other-ca"
    other.mkdir()
    self_signed(
        other / "ca.key",
        other / "ca.crt",
        "/CN=some other CA",
        "basicConstraints=critical,CA:TRUE",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    (tmp_path / "mitm").mkdir()
    d = make_daemon(tmp_path / "mitm", broker, PASSWORD, ca_file=other / "ca.crt").start()
    try:
        degraded_saying(d, "tls certificate failed verification against the ca in")
        runs_on(d, PASSWORD)
    finally:
        d.stop()


def test_tls_against_the_plain_listener_says_so(broker: Broker, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    d = make_daemon(tmp_path / "plain", broker, PASSWORD, port=broker.port).start()  # the listener without TLS
    try:
        degraded_saying(d, "(is mqtt.port its tls listener?)")
    finally:
        d.stop()
