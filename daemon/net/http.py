"""The HTTP server: /stream (MJPEG with per-frame metadata), /snapshot.jpg, /meta, /health and the page.

Built on the standard library's ThreadingHTTPServer (one daemon thread per
connection): viewers are few (`http.max_clients`), each spends its life blocked
on a socket or on the feed's condition variable, and a thread per viewer keeps
every viewer independent without an event loop. The accept loop runs in a
`Worker` (`picamd-http`) that a wake-up socket ends at once, and it keeps
retrying when the port cannot be bound yet (an address that appears only once
the network is up at boot), reporting the server as degraded meanwhile.

The page (daemon/web) is read once when the server is built and served from
memory.

Every viewer waits on the shared JpegFeed for the newest frame; there is no
per-viewer queue. A viewer that reads slowly skips frames for itself only, and
one whose socket stays blocked longer than the send timeout is dropped.

The stream answers HTTP/1.0 with `Connection: close`: every client (VLC,
browsers, ffmpeg, OpenCV, the Python client) reads the multipart body until
the connection ends, and no idle keep-alive connection occupies a client slot.

Part headers: Content-Type, Content-Length, X-Frame-Id, X-Timestamp (wall
clock, seconds with six decimals), X-Dark-Score, X-Night (1 at night, 0 by
day), X-Exposure-Us and X-Gain when the source knows them, and one X-<Key> per
item of the frame's `extra` (`motion` -> X-Motion): text as it is, anything
else as compact JSON, control characters replaced by spaces.
"""
from __future__ import annotations

import json
import logging
import math
import re
import select
import selectors
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from daemon import __version__
from daemon.capture.ring import FrameMeta
from daemon.config import Section
from daemon.core.repeat import RepeatedLog
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker
from daemon.net.allow import peer_allowed
from daemon.net.jpegfeed import JpegFeed
from daemon.web import Page, load_page

__all__ = ["HttpServer", "meta_headers"]

log = logging.getLogger("picamd.http")

BOUNDARY = "frame"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_MAX_HEADER_VALUE = 8192  # longer extras are left out of the headers (they stay in /meta)
_STANDARD_HEADERS = {"X-Frame-Id", "X-Timestamp", "X-Dark-Score", "X-Night", "X-Exposure-Us", "X-Gain"}


def header_name(key: str) -> str | None:
    """`motion` -> `X-Motion`, `ptz_pos` -> `X-Ptz-Pos`; None when nothing usable is left."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", str(key)) if p]
    if not parts:
        return None
    return "X-" + "-".join(p[:1].upper() + p[1:].lower() for p in parts)


def header_value(value: Any) -> str | None:
    """Text as it is, anything else compact JSON; never a CR/LF that could end the header block early."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, separators=(",", ":"), default=str)
        except (TypeError, ValueError):
            text = str(value)
    text = _CONTROL_CHARS.sub(" ", text).encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= _MAX_HEADER_VALUE else None


def meta_headers(meta: FrameMeta) -> list[tuple[str, str]]:
    """The X- headers of one frame, in a stable order."""
    headers = [
        ("X-Frame-Id", str(meta.frame_id)),
        ("X-Timestamp", f"{meta.ts:.6f}"),
        ("X-Dark-Score", f"{float(meta.dark_score):.3f}"),
        ("X-Night", "1" if meta.night else "0"),
    ]
    if meta.exposure_us is not None:
        headers.append(("X-Exposure-Us", str(int(meta.exposure_us))))
    if meta.gain is not None:
        headers.append(("X-Gain", f"{float(meta.gain):.3f}"))
    for key, value in list(meta.extra.items()):  # list(): a later stage may add keys meanwhile
        name = header_name(key)
        if name is None or name in _STANDARD_HEADERS:
            continue
        text = header_value(value)
        if text is not None:
            headers.append((name, text))
    return headers


def _part(jpeg: bytes, meta: FrameMeta) -> bytes:
    lines = [f"--{BOUNDARY}", "Content-Type: image/jpeg", f"Content-Length: {len(jpeg)}"]
    lines += [f"{k}: {v}" for k, v in meta_headers(meta)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + jpeg + b"\r\n"


def _peer_closed(sock: socket.socket) -> bool:
    """True if the viewer has closed its end (checked while no frames flow)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    timeout = 0.5  # bounds handle_request() if the waiting connection vanished before accept()

    def __init__(self, address: tuple[str, int], owner: HttpServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can hang for
        # seconds on a Pi without DNS; nothing here needs the name.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address), name="picamd-http-client", daemon=True)
        t.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.owner._handler_failed(client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = f"picamd/{__version__}"
    sys_version = ""
    protocol_version = "HTTP/1.0"
    timeout = 10  # for reading the request; a client that sends nothing is closed
    rejected_timeout = 2

    def handle(self) -> None:
        owner = self.server.owner
        self.rejection: tuple[int, str] | None = None
        admitted = False
        if not owner._peer_allowed(self.client_address[0]):
            self.rejection = (403, "forbidden: your address is not in the allowed client networks\n")
        elif not owner._admit():
            self.rejection = (503, "too many clients; try again later\n")
        else:
            admitted = True
        if self.rejection is not None:
            self.connection.settimeout(self.rejected_timeout)
        try:
            super().handle()
        finally:
            if admitted:
                owner._release()

    # -- methods
    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def _refuse_method(self) -> None:
        if self._refuse_rejected():
            return
        self._send(405, b"method not allowed: use GET or HEAD\n", "text/plain; charset=utf-8", [("Allow", "GET, HEAD")])

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    # -- routing
    def _refuse_rejected(self) -> bool:
        if self.rejection is None:
            return False
        code, text = self.rejection
        self.server.owner._note_rejection(code, self.client_address[0])
        self._send(code, text.encode(), "text/plain; charset=utf-8", [("Retry-After", "5")] if code == 503 else [])
        return True

    def _route(self) -> None:
        if self._refuse_rejected():
            return
        url = urlsplit(self.path)
        route = _ROUTES.get(url.path)
        if route is None:
            self._send(404, f"not found: {url.path[:200]}\ntry /, /stream, /snapshot.jpg, /meta or /health\n".encode("utf-8", "replace"),
                       "text/plain; charset=utf-8")
            return
        route(self, url.query)

    def _send(self, code: int, body: bytes, content_type: str, extra: list[tuple[str, str]] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        for name, value in extra or []:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, code: int, data: Any) -> None:
        self._send(code, (json.dumps(data, indent=1, default=str) + "\n").encode(), "application/json")

    # -- routes
    def _page(self, query: str) -> None:
        page = self.server.owner.page
        self._send(200, page.body, page.content_type, list(page.headers))

    def _health(self, query: str) -> None:
        self._send_json(*self.server.owner._health_payload())

    def _meta(self, query: str) -> None:
        meta = self.server.owner.feed.latest_meta()
        if meta is None:
            self._send_json(503, {"error": "no frame yet"})
        else:
            self._send_json(200, meta.to_dict())

    def _snapshot(self, query: str) -> None:
        got = self.server.owner.feed.snapshot()
        if got is None:
            self._send(503, b"no frame yet; the camera has not delivered one\n", "text/plain; charset=utf-8", [("Retry-After", "2")])
            return
        jpeg, meta = got
        self._send(200, jpeg, "image/jpeg", meta_headers(meta))

    def _stream(self, query: str) -> None:
        try:
            requested = _parse_fps(query)
        except ValueError as exc:
            self._send(400, f"bad request: {exc}\n".encode(), "text/plain; charset=utf-8")
            return
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache, no-store, must-revalidate")
        self.send_header("Pragma", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        self.server.owner._serve_viewer(self.wfile, self.connection, self.client_address[0], requested)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)


def _parse_fps(query: str) -> float | None:
    values = parse_qs(query, keep_blank_values=True).get("fps")
    if not values:
        return None
    try:
        fps = float(values[-1])
    except ValueError:
        raise ValueError(f"fps must be a number, not {values[-1][:40]!r}") from None
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError("fps must be a positive number")
    return fps


_ROUTES: dict[str, Callable[[_Handler, str], None]] = {
    "/": _Handler._page,
    "/index.html": _Handler._page,
    "/stream": _Handler._stream,
    "/snapshot.jpg": _Handler._snapshot,
    "/health": _Handler._health,
    "/meta": _Handler._meta,
    "/meta.json": _Handler._meta,
}


class HttpServer:
    #: Server-side send buffer of a viewer: bounds the kernel memory a stalled viewer can pin
    #: (autotuning would grow it to megabytes each) and lets a stall be noticed promptly.
    viewer_sndbuf_bytes = 256 * 1024
    #: How long a viewer waits on the feed before checking for stop and for a closed socket.
    poll_s = 0.5
    #: Longest wait between attempts to bind the port.
    bind_backoff_max_s = 30.0

    def __init__(self, cfg: Section, stream_cfg: Section, allow: Callable[[], list[str]], feed: JpegFeed,
                 health: Callable[[], dict], status: ComponentStatus, *, send_timeout_s: float = 10.0) -> None:
        """`cfg` is the server's section (`http`: bind, port, max_clients), `stream_cfg` the stream's (`mjpeg`: max_fps)."""
        self._cfg = cfg
        self._stream_cfg = stream_cfg
        self._allow = allow
        self.feed = feed
        self._health_source = health
        self._status = status
        self._send_timeout_s = send_timeout_s
        self.page: Page = load_page()
        self._wake_r, self._wake_w = socket.socketpair()
        self._worker = Worker("http", self._step, status=status, error_pause_s=0.5, on_stop=self._wake)
        self._backoff_s = 1.0
        self._httpd: _Server | None = None
        self._port: int | None = None
        self._lock = threading.Condition()
        self._connections = 0
        self._viewers: dict[int, dict[str, Any]] = {}
        self._viewer_socks: dict[int, socket.socket] = {}
        self._next_viewer = 0
        self._bytes_sent = 0
        self._frames_sent = 0
        self._dropped_slow = 0
        self._rejected = {403: 0, 503: 0}
        # A scanner or a reloading crowd is counted always and logged at most every 10 s per kind.
        self._rejection_log = RepeatedLog(log, every_s=10.0)

    # -- lifecycle
    @property
    def port(self) -> int | None:
        """The bound port (useful when cfg.port is 0), or None while not listening."""
        return self._port

    def start(self) -> None:
        if self._worker.alive:
            return
        self._drain_wake()
        self._backoff_s = 1.0
        self._try_bind()  # now, so .port is known when start() returns in the normal case
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        httpd, self._httpd, self._port = self._httpd, None, None
        if httpd is not None:
            httpd.server_close()
        with self._lock:
            socks = list(self._viewer_socks.values())
        for sock in socks:  # breaks a send blocked on a stalled viewer at once
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            self._lock.wait_for(lambda: not self._viewers, timeout=0.6)
        log.info("HTTP server stopped")

    @property
    def _stopping(self) -> bool:
        return self._worker.stopping.is_set()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _drain_wake(self) -> None:
        self._wake_r.setblocking(False)
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass

    def _try_bind(self) -> bool:
        bind, port = self._cfg.bind, self._cfg.port
        try:
            httpd = _Server((bind, port), self)
        except OSError as exc:
            self._status.degrade(f"cannot listen on {bind}:{port}: {exc.strerror or exc}")
            return False
        self._httpd = httpd
        self._port = httpd.server_address[1]
        log.info("HTTP server listening on %s:%d (/stream, /snapshot.jpg, /meta, /health, /)", bind, self._port)
        if not self._status.ok:
            self._status.recover()
        return True

    def _step(self) -> None:
        # The worker counts and logs what this raises and calls it again: the accept loop outlives
        # anything a connection does.
        httpd = self._httpd
        if httpd is not None:
            self._accept_until_stopped(httpd)
        elif not self._worker.wait(self._backoff_s):
            self._backoff_s = 1.0 if self._try_bind() else min(self._backoff_s * 2, self.bind_backoff_max_s)

    def _accept_until_stopped(self, httpd: _Server) -> None:
        # Waiting on the listening socket and a wake-up socket (instead of polling) lets stop()
        # end the loop at once and costs no wake-ups while idle.
        with selectors.DefaultSelector() as sel:
            sel.register(httpd.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in sel.select(timeout=5.0):
                    if key.fileobj is self._wake_r:
                        self._drain_wake()
                    elif not self._stopping:
                        httpd.handle_request()  # returns at once: a connection is waiting

    # -- connection bookkeeping (called from the handler threads)
    def _peer_allowed(self, address: str) -> bool:
        try:
            networks = self._allow()
        except Exception as exc:
            self._status.error("reading the allowed networks failed", exc)
            return False
        return peer_allowed(address, networks)

    def _admit(self) -> bool:
        with self._lock:
            if self._connections >= self._cfg.max_clients:
                return False
            self._connections += 1
            return True

    def _release(self) -> None:
        with self._lock:
            self._connections -= 1

    def _note_rejection(self, code: int, peer: str) -> None:
        with self._lock:
            self._rejected[code] += 1
        why = "not in the allowed networks" if code == 403 else f"already {self._cfg.max_clients} connections (http.max_clients)"
        self._rejection_log.warning(str(code), "refused HTTP client %s with %d: %s", peer, code, why)

    def _handler_failed(self, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)):
            log.debug("HTTP client %s went away: %s", client_address[0], exc)
            return
        self._status.error(f"HTTP request from {client_address[0]} failed", exc)

    def _health_payload(self) -> tuple[int, Any]:
        try:
            return 200, self._health_source()
        except Exception as exc:
            self._status.error("building /health failed", exc)
            return 500, {"error": f"health failed: {exc}"}

    # -- one viewer
    def _serve_viewer(self, wfile: Any, sock: socket.socket, peer: str, requested_fps: float | None) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.viewer_sndbuf_bytes)
        except OSError:
            pass
        sock.settimeout(self._send_timeout_s)
        started = time.monotonic()
        with self._lock:
            vid = self._next_viewer
            self._next_viewer += 1
            info: dict[str, Any] = {"peer": peer, "fps_cap": requested_fps, "frames": 0, "started": started}
            self._viewers[vid] = info
            self._viewer_socks[vid] = sock
        log.info("viewer %s connected (%s)", peer, f"fps <= {requested_fps:g}" if requested_fps else "fps <= mjpeg.max_fps")
        reason = "server stopping"
        try:
            with self.feed.watch():
                last_id = self.feed.newest_id
                next_due = time.monotonic()
                while not self._stopping:
                    max_fps = self._stream_cfg.max_fps
                    cap = max_fps if requested_fps is None else min(requested_fps, max_fps)
                    interval = 1.0 / cap
                    delay = next_due - time.monotonic()
                    if delay > 0 and self._worker.wait(delay):
                        break
                    got = self.feed.wait_newer(last_id, self.poll_s)
                    if got is None:
                        if _peer_closed(sock):
                            reason = "viewer closed the connection"
                            break
                        continue
                    jpeg, meta = got
                    fetched = time.monotonic()
                    data = _part(jpeg, meta)
                    wfile.write(data)
                    last_id = meta.frame_id
                    with self._lock:
                        info["frames"] += 1
                        self._frames_sent += 1
                        self._bytes_sent += len(data)
                    # Average rate stays under the cap; a frame that arrives a little late does not
                    # make the next one wait a whole interval.
                    next_due = max(next_due + interval, fetched + interval / 2)
        except TimeoutError:
            reason = f"dropped: its socket stayed blocked for {self._send_timeout_s:g} s"
            with self._lock:
                self._dropped_slow += 1
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            reason = "viewer disconnected"
        except OSError as exc:
            reason = "server stopping" if self._stopping else f"socket error: {exc}"
        finally:
            with self._lock:
                self._viewers.pop(vid, None)
                self._viewer_socks.pop(vid, None)
                self._lock.notify_all()
        log.info("viewer %s left after %.0f s and %d frames: %s", peer, time.monotonic() - started, info["frames"], reason)

    # -- figures
    def health(self) -> dict:
        now = time.monotonic()
        with self._lock:
            viewers = [
                {"peer": v["peer"], "fps_cap": v["fps_cap"], "frames": v["frames"], "connected_s": round(now - v["started"], 1)}
                for v in self._viewers.values()
            ]
            return {
                "listening": self._port is not None,
                "bind": self._cfg.bind,
                "port": self._port,
                "viewers": len(viewers),
                "connections": self._connections,
                "max_clients": self._cfg.max_clients,
                "max_fps": self._stream_cfg.max_fps,
                "bytes_sent": self._bytes_sent,
                "frames_sent": self._frames_sent,
                "dropped_for_slow_clients": self._dropped_slow,
                "rejected_forbidden": self._rejected[403],
                "rejected_busy": self._rejected[503],
                "viewer_list": viewers,
            }
