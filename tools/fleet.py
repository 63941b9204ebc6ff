#!/usr/bin/env python3
"""Many picamds at a glance: a table in the terminal, or a page with every camera's live stream in a grid.

    python tools/fleet.py status shed:8080 gate:8080 http://alice:secret@yard:8080   # one line per camera
    python tools/fleet.py status --file cameras.txt --json
    python tools/fleet.py status --mqtt broker.lan              # the picamds that announce themselves over MQTT
    python tools/fleet.py serve shed:8080 gate:8080 --port 8000 # then open http://this-machine:8000/

A camera is HOST:PORT or a URL of its HTTP port (`http://[user:password@]host:8080`);
a file has one a line, optionally preceded by a name (`shed http://10.0.0.7:8080`),
`#` starting a comment. With `--mqtt HOST[:PORT]` (and paho-mqtt installed) the
cameras are also found through their retained `picamd/<camera>/available`
(`online`) and `picamd/<camera>/info` topics, whose JSON gives the HTTP URL
(`http_url`, `http` or `url`).

Everything is read from the daemons' own endpoints: `/health` (health, fps,
night, machine states, people) and `/detections` when the daemon has a
detector (the newest detections). With HTTP login on (`http.users`,
`http.tokens`) give `--user NAME[:PASSWORD]` (password from
PICAMD_HTTP_PASSWORD or a prompt), `--token` (or PICAMD_HTTP_TOKEN), or
user:password@ in a camera's URL.

`serve` answers the page and `/api/status` (every camera's summary, fetched
in parallel and shared by every open page for half the poll interval). The
page polls that; it shows each live stream with an `<img>` pointing at the
daemon's own `/stream`, so frames go from each daemon to the browser and never
through this tool, and the credentials stay here: the daemons' JSON is not
opened to other web pages (no CORS header on them), and no password reaches
the browser. With login on, the browser needs the daemon's login itself to
show the stream, so such a card waits for a click: log in on the daemon's own
page (linked) in the same browser, then show the stream (remembered by the
browser for the next visit).

`status` exits 0 when every camera answered and is healthy, 1 otherwise.
Standard library only (paho-mqtt for --mqtt).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import getpass
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().with_name("fleet.html")
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2
MACHINE_STATES = ("RUNNING", "STOPPED", "DEEP_SLEEP", "UNKNOWN")


class UsageError(ValueError):
    """A camera address, a file or an option that cannot be used; the message says which and why."""


@dataclass
class Camera:
    """One picamd: where its HTTP port is (without credentials) and the Authorization header for it."""

    base: str  # http://host:port
    name: str | None = None  # given (file, MQTT); else the daemon's camera.name once known
    auth: str | None = field(default=None, repr=False)
    source: str = "given"  # given or mqtt

    @property
    def label(self) -> str:
        return self.name or urllib.parse.urlsplit(self.base).netloc


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def parse_camera(text: str, name: str | None = None, default_auth: str | None = None) -> Camera:
    """`host:8080`, `http://host:8080/`, `http://user:pw@host:8080` (the path, if any, is ignored)."""
    raw = text.strip()
    if not raw:
        raise UsageError("an empty camera address")
    url = urllib.parse.urlsplit(raw if "://" in raw else f"http://{raw}")
    if url.scheme not in ("http", "https"):
        raise UsageError(f"{raw}: only http:// and https:// addresses of a picamd's HTTP port")
    try:
        port = url.port
    except ValueError:
        raise UsageError(f"{raw}: the port is not a number") from None
    if not url.hostname:
        raise UsageError(f"{raw}: no host")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    base = f"{url.scheme}://{host}:{port or (443 if url.scheme == 'https' else 8080)}"
    auth = default_auth
    if url.username is not None:
        auth = basic(urllib.parse.unquote(url.username), urllib.parse.unquote(url.password or ""))
    return Camera(base=base, name=name, auth=auth)


def read_camera_file(path: str, default_auth: str | None) -> list[Camera]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    cameras = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 2:
            raise UsageError(f"{path}:{number}: one camera a line: [NAME] HOST:PORT or URL")
        try:
            cameras.append(parse_camera(words[-1], words[0] if len(words) == 2 else None, default_auth))
        except UsageError as exc:
            raise UsageError(f"{path}:{number}: {exc}") from None
    return cameras


def info_url(payload: bytes) -> str | None:
    """The HTTP URL in a retained `picamd/<camera>/info` message, or None."""
    try:
        info = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(info, dict):
        return None
    for key in ("http_url", "http", "url"):
        value = info.get(key)
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return value
    return None


class MqttFinder:
    """The picamds that are `online` on a broker, from their retained `available` and `info` topics (paho-mqtt)."""

    def __init__(self, address: str, prefix: str = "picamd", username: str | None = None, password: str | None = None) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise UsageError("--mqtt needs paho-mqtt: pip install paho-mqtt") from None
        host, _, port = address.rpartition(":") if address.count(":") == 1 else (address, "", "")
        self.host, self.port = host or address, int(port) if port.isdigit() else 1883
        self.prefix = prefix
        self._lock = threading.Lock()
        self._available: dict[str, bool] = {}
        self._urls: dict[str, str] = {}
        self._connected = threading.Event()
        self._error: str | None = None
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"picamd-fleet-{os.getpid()}")
        if username:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            self._error = f"the broker refused the connection: {reason}"
            return
        client.subscribe([(f"{self.prefix}/+/available", 1), (f"{self.prefix}/+/info", 1)])
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        # PREFIX/<camera>/available or /info; the prefix (mqtt.topic_prefix) may have levels of its own
        parts = message.topic.removeprefix(self.prefix + "/").split("/")
        if len(parts) != 2:
            return
        camera, kind = parts
        with self._lock:
            if kind == "available":
                self._available[camera] = message.payload.strip().lower() == b"online"
            elif kind == "info":
                url = info_url(message.payload)
                if url:
                    self._urls[camera] = url

    def start(self, timeout: float = 5.0) -> None:
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise UsageError(f"--mqtt {self.host}:{self.port}: {exc.strerror or exc}") from None
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self.stop()
            raise UsageError(f"--mqtt {self.host}:{self.port}: {self._error or 'no answer from the broker'}")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def cameras(self, default_auth: str | None) -> list[Camera]:
        with self._lock:
            found = [(name, self._urls[name]) for name, online in sorted(self._available.items()) if online and name in self._urls]
        cameras = []
        for name, url in found:
            try:
                camera = parse_camera(url, name, default_auth)
            except UsageError:
                continue
            camera.source = "mqtt"
            cameras.append(camera)
        return cameras


# -- reading one daemon


def fetch_json(camera: Camera, path: str, timeout: float) -> tuple[int, Any]:
    """(status, JSON) of GET base+path; raises OSError (with a short reason) when the daemon cannot be reached."""
    request = urllib.request.Request(camera.base + path, headers={"Accept": "application/json"})
    if camera.auth:
        request.add_header("Authorization", camera.auth)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        try:
            body = json.loads(err.read())
        except ValueError:
            body = None
        return err.code, body
    except urllib.error.URLError as err:
        reason = err.reason
        raise OSError(getattr(reason, "strerror", None) or str(reason)) from None
    except ValueError as exc:  # not JSON: not a picamd
        raise OSError(f"not a picamd answer: {exc}") from None


def _state_word(code: int) -> str:
    if code == 401:
        return "login needed (give --user, --token or user:password@)"
    if code == 403:
        return "forbidden (this address is not in the daemon's control.allow)"
    if code == 429:
        return "locked out after failed logins"
    try:
        return f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:  # a code the standard library does not name
        return f"HTTP {code}"


def summarize(camera: Camera, health: dict[str, Any] | None, detections: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
    """What the table and the page show of one camera."""
    out: dict[str, Any] = {
        "name": camera.label,
        "url": camera.base,
        "stream": camera.base + "/stream",
        "source": camera.source,
        "reachable": health is not None,
        "error": error,
    }
    if health is None:
        out.update(
            health="down",
            fps=None,
            night=None,
            machines=[],
            people=None,
            detections=None,
            version=None,
            login=error is not None and error.startswith("login"),
        )
        return out
    # With login on, the page does not load the stream by itself: the browser has no login for it yet.
    out["login"] = bool(((health.get("clients") or {}).get("mjpeg") or {}).get("auth", {}).get("enabled"))
    cam = health.get("camera") or {}
    if not camera.name and cam.get("name"):
        out["name"] = cam["name"]
    degraded = health.get("degraded") or []
    out["health"] = "ok" if health.get("status") == "ok" else "degraded: " + ", ".join(map(str, degraded))
    out["version"] = health.get("version")
    out["fps"] = cam.get("fps")
    night = health.get("night") or {}
    out["night"] = night.get("state")
    out["night_mode"] = night.get("mode")
    regions = (health.get("motion") or {}).get("regions") or {}
    out["machines"] = [
        {"region": name, "state": r.get("state"), "in_state_s": r.get("in_state_s"), "idle_s": r.get("idle_s")}
        for name, r in regions.items()
        if isinstance(r, dict)
    ]
    det = health.get("detect") or {}
    last = det.get("last") or {}
    out["detector"] = det.get("state")
    out["people"] = last.get("people") if det.get("state") == "running" or last else None
    out["detections"] = detection_summary(detections)
    return out


def detection_summary(body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The newest detection result as counts per label, with its scores and age; None without a detector."""
    if not isinstance(body, dict) or body.get("frame_id") is None:
        return None
    counts: dict[str, int] = {}
    scores = []
    for d in body.get("detections") or []:
        if isinstance(d, dict):
            label, score = str(d.get("label", "?")), d.get("score")
        elif isinstance(d, list) and len(d) >= 6:
            label, score = str(d[5]), d[4]
        else:
            continue
        counts[label] = counts.get(label, 0) + 1
        if isinstance(score, (int, float)):
            scores.append(round(float(score), 2))
    return {
        "frame_id": body.get("frame_id"),
        "ts": body.get("ts"),
        "age_s": body.get("age_s"),
        "counts": counts,
        "scores": scores,
        "people": body.get("people"),
    }


def poll(camera: Camera, timeout: float) -> dict[str, Any]:
    try:
        code, health = fetch_json(camera, "/health", timeout)
    except OSError as exc:
        return summarize(camera, None, None, str(exc))
    if code != 200 or not isinstance(health, dict):
        return summarize(camera, None, None, _state_word(code))
    detections = None
    if isinstance(health.get("detect"), dict):
        try:
            code, body = fetch_json(camera, "/detections", timeout)
            detections = body if code == 200 else None
        except OSError:
            pass
    return summarize(camera, health, detections, None)


def poll_all(cameras: list[Camera], timeout: float) -> list[dict[str, Any]]:
    if not cameras:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(cameras))) as pool:
        return list(pool.map(lambda c: poll(c, timeout), cameras))


# -- the table


def duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def detection_text(det: dict[str, Any] | None) -> str:
    if det is None:
        return "-"
    what = ", ".join(f"{n} {label}" for label, n in sorted(det["counts"].items())) or "nobody"
    return f"{what} ({duration(det.get('age_s'))} ago)" if det.get("age_s") is not None else what


def table(rows: list[dict[str, Any]]) -> str:
    header = ["NAME", "URL", "HEALTH", "FPS", "NIGHT", "MACHINES", "PEOPLE", "LAST DETECTION"]
    lines = []
    for r in rows:
        health = r["health"] if r["reachable"] else f"DOWN: {r['error']}"
        machines = ", ".join(f"{m['region']} {m['state']} {duration(m['in_state_s'])}" for m in r["machines"]) or "-"
        lines.append(
            [
                r["name"],
                r["url"],
                health,
                "-" if r["fps"] is None else f"{r['fps']:.1f}",
                r["night"] or "-",
                machines,
                "-" if r["people"] is None else str(r["people"]),
                detection_text(r["detections"]),
            ]
        )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *lines])


# -- the page


class Fleet:
    """The cameras (given, and found over MQTT) and their summaries, polled at most once per `fresh_s` whoever asks."""

    def __init__(self, cameras: list[Camera], finder: MqttFinder | None, default_auth: str | None, timeout: float, fresh_s: float) -> None:
        self._given = cameras
        self._finder = finder
        self._default_auth = default_auth
        self._timeout = timeout
        self._fresh_s = fresh_s
        self._lock = threading.Lock()
        self._cached: tuple[float, list[dict[str, Any]]] | None = None

    def cameras(self) -> list[Camera]:
        found = self._finder.cameras(self._default_auth) if self._finder else []
        known = {c.base for c in self._given}
        return self._given + [c for c in found if c.base not in known]

    def status(self) -> list[dict[str, Any]]:
        with self._lock:  # one poll at a time: every page waiting shares its answer
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self._fresh_s:
                self._cached = (time.monotonic(), poll_all(self.cameras(), self._timeout))
            return self._cached[1]


class _PageHandler(BaseHTTPRequestHandler):
    server_version = "picamd-fleet"
    fleet: Fleet
    page: bytes
    settings: dict[str, Any]

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        path = urllib.parse.urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, self.page, "text/html; charset=utf-8")
        elif path == "/api/status":
            body = {"cameras": self.fleet.status(), "time": time.time(), **self.settings}
            self._send(200, json.dumps(body).encode(), "application/json")
        else:
            self._send(404, b"not found: try / or /api/status\n", "text/plain; charset=utf-8")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # a page polling every two seconds would fill the terminal


def make_server(fleet: Fleet, bind: str, port: int, fps: float, poll_s: float) -> ThreadingHTTPServer:
    handler = type("Handler", (_PageHandler,), {"fleet": fleet, "page": PAGE.read_bytes(), "settings": {"fps": fps, "poll_s": poll_s}})
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True
    return server


# -- the command line


def default_auth(args: argparse.Namespace) -> str | None:
    if args.token:
        return f"Bearer {args.token}"
    if args.user:
        user, colon, password = args.user.partition(":")
        if not colon:
            password = os.environ.get("PICAMD_HTTP_PASSWORD") or getpass.getpass(f"password of {user}: ")
        return basic(user, password)
    return None


def gather(args: argparse.Namespace, auth: str | None) -> tuple[list[Camera], MqttFinder | None]:
    cameras = [parse_camera(c, default_auth=auth) for c in args.cameras]
    for path in args.file or []:
        cameras += read_camera_file(path, auth)
    finder = None
    if args.mqtt:
        finder = MqttFinder(args.mqtt, args.mqtt_prefix, args.mqtt_user, os.environ.get("PICAMD_MQTT_PASSWORD"))
        finder.start()
        time.sleep(args.mqtt_wait)  # the retained messages arrive just after subscribing
    if not cameras and finder is None:
        raise UsageError("no cameras: give HOST:PORT or URLs, --file FILE or --mqtt BROKER")
    return cameras, finder


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("cameras", nargs="*", metavar="CAMERA", help="HOST:PORT or http://[user:password@]host:port of a picamd")
    common.add_argument("--file", action="append", help="a file of cameras, one a line: [NAME] HOST:PORT or URL")
    common.add_argument("--mqtt", metavar="HOST[:PORT]", help="also find the cameras online on this MQTT broker (paho-mqtt)")
    common.add_argument("--mqtt-prefix", default="picamd", help="topic prefix of the cameras (default: picamd)")
    common.add_argument("--mqtt-user", help="broker user; the password from PICAMD_MQTT_PASSWORD")
    common.add_argument("--mqtt-wait", type=float, default=1.5, help="seconds to collect the retained announcements (default 1.5)")
    common.add_argument(
        "--user",
        metavar="NAME[:PASSWORD]",
        help="HTTP login for every camera (password from PICAMD_HTTP_PASSWORD or a prompt when not given)",
    )
    common.add_argument("--token", default=os.environ.get("PICAMD_HTTP_TOKEN") or None, help="HTTP token (default: $PICAMD_HTTP_TOKEN)")
    common.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for one daemon (default 3)")
    parser = argparse.ArgumentParser(description="Many picamds at a glance: a table, or a page with every live stream")
    sub = parser.add_subparsers(dest="cmd", required=True)
    status = sub.add_parser("status", parents=[common], help="one line per camera")
    status.add_argument("--json", action="store_true", help="the summaries as JSON instead of the table")
    serve = sub.add_parser("serve", parents=[common], help="serve the page with every camera's stream")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for the LAN)")
    serve.add_argument("--fps", type=float, default=5.0, help="frame rate asked of each stream (default 5)")
    serve.add_argument("--poll", type=float, default=2.0, help="seconds between status updates of the page (default 2)")
    args = parser.parse_args(argv)
    try:
        auth = default_auth(args)
        cameras, finder = gather(args, auth)
    except UsageError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        fleet = Fleet(cameras, finder, auth, args.timeout, fresh_s=max(0.2, args.poll / 2) if args.cmd == "serve" else 0.0)
        if args.cmd == "status":
            rows = fleet.status()
            print(json.dumps(rows, indent=1) if args.json else table(rows))
            return 0 if rows and all(r["health"] == "ok" for r in rows) else EXIT_UNHEALTHY
        try:
            server = make_server(fleet, args.bind, args.port, args.fps, args.poll)
        except OSError as exc:
            print(f"fleet: cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"fleet page on http://{args.bind}:{server.server_address[1]}/ ({len(fleet.cameras())} cameras)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return 0
    finally:
        if finder is not None:
            finder.stop()


if __name__ == "__main__":
    sys.exit(main())
