"""End to end: motion on the synthetic machine, through the daemon, to a real webhook server that hangs."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from daemon_proc import Daemon, replies, reply_json

from daemon.sources.scene import MACHINE_RECT_FRAC


class HangingWebhook:
    """Records POSTs; holds the first one until `release` is set (a webhook that hangs)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.hanging = threading.Event()
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                hook.bodies.append(body)
                if len(hook.bodies) == 1:
                    hook.hanging.set()
                    hook.release.wait(60)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def webhook():
    hook = HangingWebhook()
    yield hook
    hook.close()


def frame_id(d: Daemon) -> int:
    return reply_json(replies(d.cmd("status"))[0])["frame_id"]


def test_machine_state_reaches_the_webhook_and_a_hanging_webhook_never_stops_the_frames(tmp_path, webhook):
    region = {"name": "machine", "rect": list(MACHINE_RECT_FRAC), "min_fraction": 0.02, "machine_id": 3}
    d = Daemon(
        tmp_path,
        overrides={
            "motion.regions": [region],
            "motion.window_s": 2.0,
            "motion.settle_s": 0.5,
            "notify.webhook.url": webhook.url,
            "notify.events": ["motion.state"],
            "notify.timeout_s": 60.0,
        },
    ).start()
    try:
        # The machine runs for the first 45 s of scene time: after one window the region is RUNNING.
        assert webhook.hanging.wait(30), d.log()
        event = webhook.bodies[0]
        assert event["event"] == "motion.state" and event["region"] == "machine"
        assert event["new"] == "RUNNING" and event["machine_id"] == 3

        # While the webhook holds the request, frames keep flowing and commands keep answering.
        first = frame_id(d)
        deadline = time.monotonic() + 20
        while frame_id(d) < first + 15 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert frame_id(d) >= first + 15, d.log()
        motion = reply_json(replies(d.cmd("motion"))[0])
        assert motion["regions"][0]["state"] == "RUNNING"

        # The X-Motion header on the stream carries the region's state.
        with socket.create_connection(("127.0.0.1", d.http_port), timeout=10) as s:
            s.sendall(b"GET /stream HTTP/1.0\r\n\r\n")
            buf = b""
            while b"X-Motion" not in buf:
                buf += s.recv(65536)
        line = next(ln for ln in buf.decode("latin-1").split("\r\n") if ln.startswith("X-Motion"))
        assert line.startswith("X-Motion: machine=") and ":RUNNING" in line

        webhook.release.set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            notify = reply_json(replies(d.cmd("notify"))[0])
            if notify["sent"] >= 1:
                break
            time.sleep(0.2)
        assert notify["sent"] >= 1 and notify["failed"] == 0, notify

        # The state change is in the machine-readable log too.
        log = (tmp_path / "logs" / "state_changes.jsonl").read_text().splitlines()
        assert json.loads(log[0])["new"] == "RUNNING"
    finally:
        d.stop()
