"""Notifications through real peers on loopback: an HTTP server for webhooks, an SMTP server for email."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import logging
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from certificates import OPENSSL, self_signed
from daemon_proc import free_port

from daemon.commands import Registry, Session
from daemon.config import Config
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.notify import Channel, Notifier, SendError

TOKEN = "tok-7Hq2-bearer-secret"
PASSWORD = "pw-Secret-9f3a"
IFTTT_KEY = "ifttt-key-Zx81Lq"

STOPPED: dict[str, Any] = dict(region="press1", old="RUNNING", new="STOPPED", duration_s=723.4)


# --- peers ---------------------------------------------------------------------------------------


class WebhookServer:
    """A real HTTP server that records every request and answers from a plan.

    Each entry of `plan` serves one request: a status code, or "hang" (hold the request until
    the test sets `release`, then answer 200). With the plan used up, it answers 200.
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.plan: deque = deque()
        self.cond = threading.Condition()
        self.release = threading.Event()
        self.hanging = threading.Event()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with recorder.cond:
                    action = recorder.plan.popleft() if recorder.plan else 200
                    recorder.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "json": json.loads(body),
                            "answer": action,
                        }
                    )
                    recorder.cond.notify_all()
                if action == "hang":
                    recorder.hanging.set()
                    recorder.release.wait(60)
                    action = 200
                try:
                    self.send_response(action)
                    if action == 429:
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up on a held request

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="test-webhook", daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 20) -> list[dict]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.requests) >= count, timeout), (
                f"expected {count} request(s), got {len(self.requests)}"
            )
            return list(self.requests)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class MailRecorder:
    def __init__(self) -> None:
        self.messages: list[tuple] = []
        self.logins: list[tuple[bytes, bytes]] = []
        self.cond = threading.Condition()
        self.port = 0  # set once the SMTP server listens

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's naming)
        with self.cond:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            self.cond.notify_all()
        return "250 OK"

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login, auth_data.password))
        ok = auth_data.login == b"camera" and auth_data.password == PASSWORD.encode()
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 on failure

    def wait_for(self, count: int, timeout: float = 20) -> list[tuple]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.messages) >= count, timeout), f"expected {count} mail(s), got {len(self.messages)}"
            return list(self.messages)


def wait_until(predicate, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    # A proxy configured in the environment must not capture the loopback requests.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def web():
    server = WebhookServer()
    yield server
    server.close()


@pytest.fixture
def mail():
    recorder = MailRecorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port(), authenticator=recorder.authenticator, auth_require_tls=False)
    controller.start()
    recorder.port = controller.port
    yield recorder
    controller.stop()


class Rig:
    def __init__(self, env: dict[str, str] | None = None, **values) -> None:
        base = {"notify.backoff_s": 0.01, "notify.timeout_s": 5.0, "notify.retries": 2}
        base.update(values)
        self.config = Config(base)
        self.bus = EventBus()
        self.status = ComponentStatus("notify")
        self.notifier = Notifier(self.config.section("notify"), self.bus, self.status, env=env or {})
        self.registry = Registry()
        self.notifier.register_commands(self.registry)

    def health(self) -> dict:
        return self.notifier.health()


@pytest.fixture
def rig_factory():
    rigs = []

    def make(env=None, **values) -> Rig:
        rig = Rig(env, **values)
        rig.notifier.start()
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.notifier.stop()


def closed_port_url(path: str = "/hook") -> str:
    return f"http://127.0.0.1:{free_port()}{path}"


# --- webhook -------------------------------------------------------------------------------------


def test_json_webhook_posts_the_event_with_headers_and_bearer_token(web, rig_factory, caplog):
    caplog.set_level(logging.DEBUG, logger="picamd")
    rig = rig_factory(
        **{
            "notify.webhook.url": web.url("/hooks/picamd?site=hall"),
            "notify.webhook.headers": {"X-Site": "hall-2"},
            "notify.webhook.token": TOKEN,
        }
    )
    event = rig.bus.publish("motion.state", machine_id="7", **STOPPED)
    (req,) = web.wait_for(1)
    assert req["method"] == "POST"
    assert req["path"] == "/hooks/picamd?site=hall"
    assert req["headers"]["content-type"] == "application/json"
    assert req["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert req["headers"]["x-site"] == "hall-2"
    assert req["headers"]["user-agent"].startswith("picamd/")
    expected = event.to_dict()
    expected["host"] = socket.gethostname()
    assert req["json"] == expected
    wait_until(lambda: rig.health()["sent"] == 1, what="sent counted")
    h = rig.health()["channels"]["webhook"]
    assert h["enabled"] and h["last_success"] is not None and h["last_error"] is None
    assert rig.status.ok
    assert TOKEN not in caplog.text
    assert TOKEN not in rig.registry.dispatch("notify").encode().decode()


def test_ifttt_format_and_secret_url_key_never_logged(web, rig_factory, caplog):
    caplog.set_level(logging.DEBUG, logger="picamd")
    url = web.url(f"/trigger/machine_state/with/key/{IFTTT_KEY}")
    rig = rig_factory(**{"notify.webhook.url": url, "notify.webhook.format": "ifttt"})
    rig.bus.publish("motion.state", region="press1", old="STOPPED", new="RUNNING", duration_s=723.0)
    rig.bus.publish("motion.state", region="press1", old="RUNNING", new="STOPPED", duration_s=3723.0)
    rig.bus.publish("night.enter", dark_score=12.5)
    # The shape the motion component publishes: a machine id, and on waking the whole idle time.
    rig.bus.publish(
        "motion.state", region="press1", machine_id=7, old="DEEP_SLEEP", new="RUNNING", duration_s=600.0, idle_s=1800.0, webhook=None
    )
    rig.bus.publish("motion.state", region="press2", machine_id=None, old="UNKNOWN", new="RUNNING", duration_s=31.0, idle_s=None)
    reqs = web.wait_for(5)
    assert [r["path"] for r in reqs] == [f"/trigger/machine_state/with/key/{IFTTT_KEY}"] * 5
    assert reqs[0]["json"] == {"value1": "press1", "value2": "RUNNING", "value3": "idle for 12m03s"}
    assert reqs[1]["json"] == {"value1": "press1", "value2": "STOPPED", "value3": "was RUNNING for 1h02m03s"}
    assert reqs[2]["json"] == {"value1": socket.gethostname(), "value2": "night.enter", "value3": "dark_score=12.5"}
    assert reqs[3]["json"] == {"value1": "7", "value2": "RUNNING", "value3": "idle for 30m00s"}
    assert reqs[4]["json"] == {"value1": "press2", "value2": "RUNNING", "value3": "first reading since start"}
    assert "authorization" not in reqs[0]["headers"]
    wait_until(lambda: rig.health()["sent"] == 5, what="five sent")
    assert "sent motion.state" in caplog.text  # the log says what went out...
    assert IFTTT_KEY not in caplog.text  # ...but never the key in the URL
    assert IFTTT_KEY not in json.dumps(rig.health())


def test_events_not_selected_are_ignored_and_selection_applies_live(web, rig_factory):
    rig = rig_factory(**{"notify.webhook.url": web.url()})
    rig.bus.publish("camera.degraded", reason="no frames")
    rig.bus.publish("nightly.report")  # 'night' selects whole segments only
    rig.bus.publish("night.enter", dark_score=3.0)
    (first,) = web.wait_for(1)
    # The lane is first in, first out: had the ignored events been queued they would have come first.
    assert first["json"]["event"] == "night.enter"
    assert rig.notifier.ignored == 2
    assert rig.config.set("notify.events", "camera,motion.state") is True
    rig.bus.publish("night.exit")  # no longer selected
    rig.bus.publish("camera.degraded", reason="no frames")
    reqs = web.wait_for(2)
    assert reqs[1]["json"]["event"] == "camera.degraded"
    assert reqs[1]["json"]["reason"] == "no frames"
    wait_until(lambda: rig.health()["sent"] == 2, what="two sent")
    assert len(web.requests) == 2 and rig.notifier.ignored == 3


def test_endpoints_down_retry_then_count_failures_and_degrade_without_hurting_the_publisher(rig_factory, caplog):
    caplog.set_level(logging.INFO, logger="picamd")
    rig = rig_factory(
        env={"PICAMD_SMTP_PASSWORD": PASSWORD},
        **{
            "notify.webhook.url": closed_port_url(),
            "notify.webhook.token": TOKEN,
            "notify.email.smtp_host": "127.0.0.1",
            "notify.email.smtp_port": free_port(),
            "notify.email.security": "none",
            "notify.email.username": "camera",
            "notify.email.recipients": ["ops@example.org"],
            "notify.retries": 2,
        },
    )
    event = rig.bus.publish("motion.state", **STOPPED)  # must return normally
    assert event.kind == "motion.state" and rig.bus.errors == 0
    wait_until(lambda: rig.health()["failed"] == 2, what="both channels giving up")
    # Giving up is counted first and logged just after: wait for both lines rather than race them.
    wait_until(lambda: sum("gave up" in r.getMessage() for r in caplog.records) == 2, what="two gave-up lines")
    h = rig.health()
    assert h["sent"] == 0 and h["queued"] == 0
    assert "cannot connect" in h["channels"]["webhook"]["last_error"]
    assert "cannot connect" in h["channels"]["email"]["last_error"]
    assert h["channels"]["webhook"]["failing"] and h["channels"]["email"]["failing"]
    assert not rig.status.ok and "webhook" in rig.status.state and "email" in rig.status.state
    assert rig.status.errors == 2
    # Three attempts per channel: two retries logged, then one line giving up with the reason.
    assert caplog.text.count("webhook http://127.0.0.1") >= 3
    gave_up = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
    assert len(gave_up) == 2
    assert any("webhook" in m and "after 3 attempt(s)" in m and "cannot connect" in m for m in gave_up)
    assert TOKEN not in caplog.text and PASSWORD not in caplog.text


def test_server_errors_and_throttling_are_retried_until_success(web, rig_factory):
    web.plan.extend([503, 429, 500])
    rig = rig_factory(**{"notify.webhook.url": web.url(), "notify.retries": 3})
    rig.bus.publish("motion.state", **STOPPED)
    reqs = web.wait_for(4)
    assert [r["answer"] for r in reqs] == [503, 429, 500, 200]
    assert all(r["json"] == reqs[0]["json"] for r in reqs)
    wait_until(lambda: rig.health()["sent"] == 1, what="sent after retries")
    h = rig.health()
    assert h["failed"] == 0 and rig.status.ok


def test_client_errors_are_not_retried_and_status_recovers_on_success(web, rig_factory):
    web.plan.append(404)
    rig = rig_factory(**{"notify.webhook.url": web.url(), "notify.retries": 3})
    rig.bus.publish("motion.state", **STOPPED)
    wait_until(lambda: rig.health()["failed"] == 1, what="404 given up")
    assert not rig.status.ok and "HTTP 404" in rig.status.state
    assert "HTTP 404" in rig.health()["channels"]["webhook"]["last_error"]
    rig.bus.publish("night.enter")
    reqs = web.wait_for(2)
    wait_until(lambda: rig.health()["sent"] == 1, what="next event sent")
    # A retry of the 404 would have come before the next event on the same lane.
    assert [r["json"]["event"] for r in web.requests] == ["motion.state", "night.enter"]
    assert reqs[0]["answer"] == 404
    assert rig.status.ok


def test_hanging_webhook_never_blocks_the_publisher_and_later_events_flow(web, rig_factory):
    web.plan.append("hang")
    rig = rig_factory(**{"notify.webhook.url": web.url(), "notify.timeout_s": 0.5, "notify.retries": 0})
    rig.bus.publish("motion.state", **STOPPED)
    assert web.hanging.wait(20)
    # A stand-in for the capture loop: it publishes while the server holds the first request.
    published = threading.Event()

    def capture_loop() -> None:
        for i in range(20):
            rig.bus.publish("motion.state", region="press1", old="STOPPED", new="RUNNING", duration_s=float(i))
        published.set()

    threading.Thread(target=capture_loop, name="test-capture", daemon=True).start()
    assert published.wait(20)
    assert not web.release.is_set()  # every publish returned while the request was still held
    reqs = web.wait_for(21)  # the held one timed out on our side; the rest went on
    assert not web.release.is_set()
    assert [r["json"]["duration_s"] for r in reqs[1:]] == [float(i) for i in range(20)]
    wait_until(lambda: rig.health()["sent"] == 20 and rig.health()["failed"] == 1, what="20 sent, 1 failed")
    assert "no answer within 0.5 s" in rig.health()["channels"]["webhook"]["last_error"]
    assert rig.bus.errors == 0


def test_full_queue_drops_the_oldest_and_counts(web, rig_factory, caplog):
    caplog.set_level(logging.INFO, logger="picamd")
    web.plan.append("hang")
    rig = rig_factory(**{"notify.webhook.url": web.url(), "notify.queue_size": 3, "notify.timeout_s": 30})
    rig.bus.publish("motion.state", seq=0)
    assert web.hanging.wait(20)  # seq 0 is in flight and stays there
    for seq in range(1, 7):
        rig.bus.publish("motion.state", seq=seq)
    h = rig.health()
    assert h["dropped"] == 3 and h["queued"] == 4  # three pending plus the one in flight
    assert h["channels"]["webhook"]["dropped"] == 3
    web.release.set()
    reqs = web.wait_for(4)
    wait_until(lambda: rig.health()["sent"] == 4, what="four sent")
    assert [r["json"]["seq"] for r in reqs] == [0, 4, 5, 6]
    assert caplog.text.count("outbox full") == 1
    # The worker logs "caught up" just after counting the last send, so wait for the line rather than race it.
    wait_until(lambda: "caught up after dropping 3" in caplog.text, what="the caught-up log line")


def test_region_webhook_overrides_and_keeps_the_token_to_its_own_origin(web, rig_factory):
    other = WebhookServer()
    try:
        rig = rig_factory(**{"notify.webhook.url": web.url("/global"), "notify.webhook.token": TOKEN})
        rig.bus.publish("motion.state", webhook=web.url("/region/press1"), **STOPPED)
        rig.bus.publish("motion.state", webhook=other.url("/elsewhere"), region="door", new="RUNNING")
        rig.bus.publish("motion.state", region="press2", new="STOPPED")
        reqs = web.wait_for(2)
        (foreign,) = other.wait_for(1)
        assert sorted(r["path"] for r in reqs) == ["/global", "/region/press1"]
        region_req = next(r for r in reqs if r["path"] == "/region/press1")
        assert region_req["json"]["region"] == "press1"
        assert "webhook" not in region_req["json"]  # a region's URL is never repeated in a body
        assert region_req["headers"]["authorization"] == f"Bearer {TOKEN}"  # same origin as notify.webhook.url
        assert foreign["path"] == "/elsewhere" and foreign["json"]["region"] == "door"
        assert "authorization" not in foreign["headers"]
        wait_until(lambda: rig.health()["sent"] == 3, what="three sent")
    finally:
        other.close()


def test_region_webhook_works_without_a_configured_url(web, rig_factory):
    rig = rig_factory()
    assert not rig.health()["channels"]["webhook"]["enabled"]
    rig.bus.publish("motion.state", webhook=web.url("/only-region"), **STOPPED)
    (req,) = web.wait_for(1)
    assert req["path"] == "/only-region" and req["json"]["new"] == "STOPPED"


@pytest.mark.parametrize(
    "url, reason",
    [
        ("ftp://127.0.0.1/hook", "not an http:// or https:// URL"),
        ("http://", "not an http:// or https:// URL"),
    ],
)
def test_bad_webhook_url_fails_without_retries(rig_factory, url, reason):
    # The config refuses such a URL (set and load); an event can still name one (a region's webhook on the bus).
    rig = rig_factory(**{"notify.retries": 5, "notify.backoff_s": 60})
    rig.bus.publish("motion.state", webhook=url, **STOPPED)
    wait_until(lambda: rig.health()["failed"] == 1, what="refused URL counted")
    h = rig.health()
    assert reason in h["channels"]["webhook"]["last_error"] and h["queued"] == 0
    assert not rig.status.ok


def test_bad_webhook_header_fails_without_retries(web, rig_factory):
    rig = rig_factory(
        **{
            "notify.webhook.url": web.url(),
            "notify.webhook.headers": {"X-Bad": "a\r\nInjected: 1"},
            "notify.retries": 5,
            "notify.backoff_s": 60,
        }
    )
    rig.bus.publish("motion.state", **STOPPED)
    wait_until(lambda: rig.health()["failed"] == 1, what="refused header counted")
    assert "refused locally" in rig.health()["channels"]["webhook"]["last_error"]
    assert web.requests == []


def test_stop_returns_promptly_in_the_middle_of_a_backoff(rig_factory):
    rig = rig_factory(**{"notify.webhook.url": closed_port_url(), "notify.retries": 5, "notify.backoff_s": 120})
    rig.bus.publish("motion.state", **STOPPED)
    wait_until(lambda: rig.health()["channels"]["webhook"]["retrying"] == 1, what="first attempt failed")
    stopper = threading.Thread(target=rig.notifier.stop, name="test-stopper", daemon=True)
    stopper.start()
    stopper.join(20)  # a stop that waited for the backoff would take 120 s
    assert not stopper.is_alive()
    assert not any(t.name == "picamd-notify" and t.is_alive() for t in threading.enumerate())
    assert not rig.health()["running"]
    # Stopped means unsubscribed: later events are not queued.
    rig.bus.publish("motion.state", **STOPPED)
    assert rig.health()["queued"] == 1  # only the one that was waiting


# --- email ---------------------------------------------------------------------------------------


def _mail_rig(rig_factory, mail, env=None, **values):
    base = {
        "notify.email.smtp_host": "127.0.0.1",
        "notify.email.smtp_port": mail.port,
        "notify.email.security": "none",
        "notify.email.sender": "camera@example.org",
        "notify.email.recipients": ["ops@example.org", "boss@example.org"],
    }
    base.update(values)
    return rig_factory(env=env, **base)


def test_email_is_sent_with_subject_recipients_body_and_login(mail, rig_factory, caplog):
    caplog.set_level(logging.DEBUG, logger="picamd")
    rig = _mail_rig(rig_factory, mail, env={"PICAMD_SMTP_PASSWORD": PASSWORD}, **{"notify.email.username": "camera"})
    rig.bus.publish("motion.state", machine_id=7, idle_s=None, **STOPPED)
    ((mail_from, rcpts, content),) = mail.wait_for(1)
    assert mail.logins == [(b"camera", PASSWORD.encode())]
    assert mail_from == "camera@example.org"
    assert rcpts == ["ops@example.org", "boss@example.org"]
    msg = email.message_from_bytes(content, policy=email.policy.default)
    assert msg["Subject"] == "picamd: press1 (machine 7) STOPPED (was RUNNING for 12m03s)"
    assert msg["From"] == "camera@example.org"
    assert msg["To"] == "ops@example.org, boss@example.org"
    assert msg["X-Picamd-Event"] == "motion.state"
    body = msg.get_content().replace("\r\n", "\n")
    assert body.startswith("press1 (machine 7) STOPPED (was RUNNING for 12m03s)\n")
    assert "motion.state" in body and "RUNNING" in body and "723.4 (12m03s)" in body
    assert "idle_s" not in body  # empty fields are left out
    assert socket.gethostname() in body
    wait_until(lambda: rig.health()["channels"]["email"]["sent"] == 1, what="mail counted")
    assert rig.status.ok
    assert PASSWORD not in caplog.text


def test_email_wrong_password_is_not_retried_and_never_logged(mail, rig_factory, caplog):
    caplog.set_level(logging.DEBUG, logger="picamd")
    wrong = "pw-Wrong-0000"
    rig = _mail_rig(
        rig_factory,
        mail,
        env={"PICAMD_SMTP_PASSWORD": wrong},
        **{"notify.email.username": "camera", "notify.retries": 4, "notify.backoff_s": 60},
    )
    rig.bus.publish("motion.state", **STOPPED)
    wait_until(lambda: rig.health()["failed"] == 1, what="login refused")
    assert len(mail.logins) == 1  # refused logins are not retried
    assert mail.messages == []
    assert "login refused for camera" in rig.health()["channels"]["email"]["last_error"]
    assert wrong not in caplog.text and wrong not in json.dumps(rig.health())


@pytest.mark.parametrize(
    "values, env, reason",
    [
        ({"notify.email.username": "camera"}, {}, "PICAMD_SMTP_PASSWORD is not in the environment"),
        ({"notify.email.recipients": []}, {}, "notify.email.recipients is empty"),
    ],
)
def test_email_misconfiguration_fails_clearly_without_sending(mail, rig_factory, values, env, reason):
    rig = _mail_rig(rig_factory, mail, env=env, **{**values, "notify.retries": 4, "notify.backoff_s": 60})
    rig.bus.publish("motion.state", **STOPPED)
    wait_until(lambda: rig.health()["failed"] == 1, what="refused mail counted")
    assert reason in rig.health()["channels"]["email"]["last_error"]
    assert mail.messages == [] and mail.logins == []


@pytest.fixture
def tls_files(tmp_path):
    if OPENSSL is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    self_signed(key, cert, "/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    return key, cert


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_email_over_tls_with_a_trusted_self_signed_certificate(tls_files, rig_factory, security, caplog):
    import ssl

    caplog.set_level(logging.DEBUG, logger="picamd")
    key, cert = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(cert), str(key))
    recorder = MailRecorder()
    # aiosmtpd only counts STARTTLS as TLS for offering AUTH; implicit TLS is encrypted all the same.
    kwargs: dict[str, Any] = (
        {"tls_context": server_ctx, "require_starttls": True}
        if security == "starttls"
        else {"ssl_context": server_ctx, "auth_require_tls": False}
    )
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port(), authenticator=recorder.authenticator, **kwargs)
    controller.start()
    try:
        rig = rig_factory(
            env={"PICAMD_SMTP_PASSWORD": PASSWORD},
            **{
                "notify.email.smtp_host": "127.0.0.1",
                "notify.email.smtp_port": controller.port,
                "notify.email.security": security,
                "notify.email.ca_file": str(cert),
                "notify.email.username": "camera",
                "notify.email.recipients": ["ops@example.org"],
            },
        )
        rig.bus.publish("night.enter", dark_score=4.2)
        ((_, rcpts, content),) = recorder.wait_for(1)
        assert rcpts == ["ops@example.org"]
        msg = email.message_from_bytes(content, policy=email.policy.default)
        assert msg["Subject"].startswith(f"picamd: {socket.gethostname()} night.enter")
        assert recorder.logins == [(b"camera", PASSWORD.encode())]
        assert PASSWORD not in caplog.text
    finally:
        controller.stop()


def test_email_tls_with_an_untrusted_certificate_is_refused(tls_files, rig_factory):
    import ssl

    key, cert = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(cert), str(key))
    recorder = MailRecorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port(), tls_context=server_ctx, require_starttls=True)
    controller.start()
    try:
        rig = rig_factory(
            **{
                "notify.email.smtp_host": "127.0.0.1",
                "notify.email.smtp_port": controller.port,
                "notify.email.security": "starttls",
                "notify.email.recipients": ["ops@example.org"],
                "notify.retries": 4,
                "notify.backoff_s": 60,
            }
        )
        rig.bus.publish("night.enter")
        wait_until(lambda: rig.health()["failed"] == 1, what="certificate refused")
        assert "certificate not trusted" in rig.health()["channels"]["email"]["last_error"]
        assert recorder.messages == []
    finally:
        controller.stop()


# --- commands ------------------------------------------------------------------------------------


def test_notify_commands_show_health_and_send_a_test(web, mail, rig_factory):
    rig = rig_factory(
        **{
            "notify.webhook.url": web.url("/t"),
            "notify.email.smtp_host": "127.0.0.1",
            "notify.email.smtp_port": mail.port,
            "notify.email.security": "none",
            "notify.email.recipients": ["ops@example.org"],
            "notify.events": [],
        }
    )
    reply = rig.registry.dispatch("notify_test  the  door is open ")
    assert reply.ok, reply.message
    assert "webhook http://127.0.0.1" in reply.message and "email via 127.0.0.1" in reply.message
    (req,) = web.wait_for(1)
    assert req["json"]["event"] == "notify.test" and req["json"]["text"] == "the door is open"
    ((_, _, content),) = mail.wait_for(1)
    msg = email.message_from_bytes(content, policy=email.policy.default)
    assert "the door is open" in msg["Subject"]
    wait_until(lambda: rig.health()["sent"] == 2, what="both sent")
    reply = rig.registry.dispatch("notify")
    assert reply.ok and reply.first_line().startswith("OK notify ok: 0 queued, 2 sent, 0 failed, 0 dropped")
    body = json.loads(reply.encode().decode().split("\n", 1)[1])
    assert body["channels"]["webhook"]["sent"] == 1 and body["channels"]["email"]["sent"] == 1
    # A test with no text says where it comes from.
    assert rig.registry.dispatch("notify_test").ok
    reqs = web.wait_for(2)
    assert "test notification from picamd" in reqs[1]["json"]["text"]


def test_notify_commands_refuse_bad_input_and_change_nothing(web, rig_factory):
    rig = rig_factory(**{"notify.webhook.url": web.url()})
    before = rig.health()
    assert rig.registry.dispatch("notify extra").first_line() == "ERR usage: notify"
    reply = rig.registry.dispatch("notify_test " + "x" * 600)
    assert not reply.ok and "at most 500" in reply.message
    assert rig.health() == before and rig.bus.recent() == []

    rig.config.set("notify.webhook.url", "")
    reply = rig.registry.dispatch("notify_test hello")
    assert not reply.ok and "no channel" in reply.message
    assert rig.bus.recent() == [] and rig.health()["queued"] == 0

    locked = Registry(token=lambda: "s3cret")
    rig.notifier.register_commands(locked)
    rig.config.set("notify.webhook.url", web.url())
    reply = locked.dispatch("notify_test hello", Session(peer="10.0.0.9"))
    assert not reply.ok and "needs 'token SECRET'" in reply.message
    assert rig.bus.recent() == [] and web.requests == []


def test_notify_test_refused_when_not_running(web):
    rig = Rig(**{"notify.webhook.url": web.url()})
    reply = rig.registry.dispatch("notify_test hello")
    assert not reply.ok and "not running" in reply.message
    assert rig.bus.recent() == []


# --- alerts: detect.person with its picture ------------------------------------------------------

ALERT_TOKEN = "alert-tok-Pq93-secret"


def person_picture() -> bytes:
    """A real JPEG: scikit-image's astronaut with a box drawn, as the detector's annotated frame is."""
    skimage_data = pytest.importorskip("skimage.data")
    image = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    cv2.rectangle(image, (5, 15), (363, 511), (0, 200, 255), 3)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def publish_person(bus: EventBus, track: int, picture: bytes, **extra):
    data = dict(
        track=track,
        label="person",
        score=0.8477,
        box=[5.0, 15.0, 363.0, 512.0],
        people=2,
        frame_id=1234,
        frame_ts=1767000000.5,
        frame_size=[512, 512],
        detections=[
            {"label": "person", "score": 0.8477, "box": [5.0, 15.0, 363.0, 512.0], "track": track},
            {"label": "person", "score": 0.61, "box": [380.0, 40.0, 500.0, 400.0], "track": 99},
        ],
        groups={"people": 2, "groups": 1, "sizes": [2], "alone": 0},
    )
    data.update(extra)
    return bus.publish("detect.person", {"jpeg": picture}, **data)


def test_alert_posts_the_person_with_the_picture_and_the_token_header(web, rig_factory, caplog):
    caplog.set_level(logging.DEBUG, logger="picamd")
    rig = rig_factory(**{"notify.alerts.url": web.url("/api/send-alert/"), "notify.alerts.token": ALERT_TOKEN, "camera.name": "gate-cam"})
    picture = person_picture()
    # notify.events does not name detect: the alerts channel picks detect.person itself.
    event = publish_person(rig.bus, 3, picture)
    (req,) = web.wait_for(1)
    assert req["path"] == "/api/send-alert/" and req["headers"]["authorization"] == f"Token {ALERT_TOKEN}"
    assert req["headers"]["content-type"] == "application/json" and req["headers"]["user-agent"].startswith("picamd/")
    alert = req["json"]
    assert alert["camera_id"] == "gate-cam" and alert["alert_type"] == "person" and alert["confidence"] == 0.8477
    assert alert["description"] == "Person detected on gate-cam (track 3; 2 people in view)"
    assert alert["track_id"] == 3 and alert["count"] == 2 and alert["frame_id"] == 1234 and alert["ts"] == 1767000000.5
    assert alert["boxes"] == event.data["detections"] and alert["groups"] == event.data["groups"]
    image = cv2.imdecode(np.frombuffer(base64.b64decode(alert["image_base64"]), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (512, 512, 3)
    assert base64.b64decode(alert["image_base64"]) == picture
    wait_until(lambda: rig.health()["channels"]["alerts"]["sent"] == 1, what="the alert counted")
    # The picture stays out of the bus history and everything that shows events; the token out of every log and figure.
    assert rig.bus.recent("detect.person")[0].attachments == {} and "jpeg" not in event.to_dict()
    assert ALERT_TOKEN not in caplog.text and ALERT_TOKEN not in json.dumps(rig.health())
    assert ALERT_TOKEN not in rig.registry.dispatch("notify").encode().decode()
    assert rig.config.dump(redact=True)["notify"]["alerts"]["token"] == "***"
    # A number as camera_id goes as a number (the seed's backend numbers its cameras), and notify_test reaches the endpoint.
    rig.config.set("notify.alerts.camera_id", "12")
    reply = rig.registry.dispatch("notify_test is the alert endpoint there?")
    assert reply.ok and "alerts http://127.0.0.1" in reply.message, reply.message
    test = web.wait_for(2)[1]["json"]
    assert test["camera_id"] == 12 and test["alert_type"] == "test" and test["description"] == "is the alert endpoint there?"


def test_alert_cooldown_is_per_track(web, rig_factory):
    rig = rig_factory(**{"notify.alerts.url": web.url(), "notify.alerts.cooldown_s": 3600})
    picture = person_picture()
    for track in (3, 3, 4, 3):
        publish_person(rig.bus, track, picture)
    wait_until(lambda: rig.health()["channels"]["alerts"]["sent"] == 2, what="two alerts")
    assert [r["json"]["track_id"] for r in web.requests] == [3, 4]
    rig.config.set("notify.alerts.cooldown_s", 0)
    publish_person(rig.bus, 3, picture)
    assert [r["json"]["track_id"] for r in web.wait_for(3)] == [3, 4, 3]


def test_pictures_held_by_the_outboxes_are_bounded_in_bytes(web, rig_factory, caplog):
    caplog.set_level(logging.INFO, logger="picamd")
    other = WebhookServer()
    try:
        web.plan.append("hang")
        rig = rig_factory(
            **{
                "notify.alerts.url": web.url(),
                "notify.alerts.cooldown_s": 0,
                "notify.queue_max_mb": 0.1,
                "notify.timeout_s": 30,
                "notify.webhook.url": other.url(),
                "notify.events": ["detect"],
            }
        )
        picture = bytes(range(256)) * 160  # 40,960 bytes: two fit in 0.1 MB (104,857 bytes), three do not
        publish_person(rig.bus, 1, picture)
        assert web.hanging.wait(20)  # the first alert is in flight and stays there, holding its picture
        for track in range(2, 6):
            publish_person(rig.bus, track, picture)
        h = rig.health()
        # In flight (1) and the newest (5) fit; 2, 3 and 4 were dropped in turn, oldest first. The count alone would keep them all.
        assert h["channels"]["alerts"]["dropped"] == 3 and h["channels"]["alerts"]["queued"] == 2
        assert h["queued_bytes"] == 2 * len(picture) and h["channels"]["alerts"]["queued_bytes"] == 2 * len(picture)
        # The webhook has the same events without their pictures: it holds none of those bytes and drops nothing.
        assert h["channels"]["webhook"]["queued_bytes"] == 0 and h["channels"]["webhook"]["dropped"] == 0
        assert caplog.text.count("attachments over notify.queue_max_mb (0.1 MB)") == 1
        web.release.set()
        assert [r["json"]["track_id"] for r in web.wait_for(2)] == [1, 5]
        assert [r["json"]["track"] for r in other.wait_for(5)] == [1, 2, 3, 4, 5] and "jpeg" not in other.requests[0]["json"]
        wait_until(lambda: rig.health()["queued"] == 0, what="the outboxes empty")
        assert rig.health()["queued_bytes"] == 0
        # A picture larger than the whole bound is dropped at once, and counted.
        publish_person(rig.bus, 6, bytes(200_000))
        assert rig.health()["channels"]["alerts"]["dropped"] == 4 and rig.health()["queued_bytes"] == 0
    finally:
        other.close()


# --- another channel -----------------------------------------------------------------------------


class MemoryChannel(Channel):
    """A channel as small as MQTT's will be: it keeps what it is sent, failing as told."""

    name = "memory"

    def __init__(self, failures: list) -> None:
        self.failures = failures  # per attempt: None (success), a SendError, or another exception
        self.sent: list = []
        self.done = threading.Event()

    def enabled(self) -> bool:
        return True

    def destination(self, event):
        if event.data.get("broken_route"):
            raise KeyError("broken_route")
        return "memory"

    def describe(self, destination: str) -> str:
        return "in memory"

    def send(self, event, destination, timeout):
        outcome = self.failures.pop(0) if self.failures else None
        if outcome is not None:
            raise outcome
        self.sent.append(event)
        self.done.set()


def test_an_added_channel_gets_events_and_its_bugs_never_reach_the_publisher():
    channel = MemoryChannel([SendError("broker busy"), RuntimeError("channel bug")])
    values: dict[str, Any] = {"notify.retries": 3}
    rig = Rig(**values)
    rig.notifier.add_channel(channel)
    rig.notifier.start()
    try:
        assert rig.bus.publish("night.enter", broken_route=True).kind == "night.enter"
        last_error = rig.status.last_error
        assert rig.status.errors == 1 and last_error is not None and "cannot route night.enter" in last_error
        rig.bus.publish("motion.state", **STOPPED)  # busy (retried), then a bug (not retried)
        wait_until(lambda: rig.health()["failed"] == 1, what="the bug counted")
        assert "unexpected RuntimeError: channel bug" in rig.health()["channels"]["memory"]["last_error"]
        rig.bus.publish("motion.state", region="press1", old="STOPPED", new="RUNNING", duration_s=5.0)
        assert channel.done.wait(20)
        assert [e.data["new"] for e in channel.sent] == ["RUNNING"]
        wait_until(lambda: rig.status.ok, what="recovery after a success")
        assert rig.bus.errors == 0
    finally:
        rig.notifier.stop()
