"""The HTTP server: /stream (MJPEG with per-frame metadata), /snapshot.jpg, /meta, /health, /detections, /regions and the page.

Requests are read by one thread (`picamd-http`, a `Worker`) that waits with
non-blocking sockets on the listening socket and on every connection still
sending its request, so a slow or silent client costs no thread. A client
must send its whole request line and headers within `http.header_timeout_s`;
at most `http.max_pending` connections may be at that stage, and a newcomer
beyond that replaces the one that has waited longest (a refused address or an
idle kept-alive connection first, else the oldest of the address holding the
most), so a few dozen slowloris sockets cannot lock an operator out. The same
thread keeps retrying when the port cannot be bound yet (an address that
appears only once the network is up at boot), reporting the server as
degraded meanwhile; a wake-up socket ends it at once.

A complete request gets a thread from one of two pools: `/stream` takes a
viewer slot (`http.max_clients`), everything else (the page, /health,
/metrics, /snapshot.jpg, /meta, /detections, /regions) a short-request slot
(`http.max_requests`), so viewers holding every viewer slot never keep the
operator from /health. A full pool answers 503 with Retry-After. A short
answer may keep the connection alive (HTTP/1.1) for `http.keepalive_s`: it
goes back to the reading thread and holds no slot while it idles. Optional
login (`http.users`, `http.tokens`) is checked per request: daemon/net/httpauth.py.

The page (daemon/web) is read once when the server is built and served from
memory.

Every viewer waits on the shared JpegFeed for the newest frame; there is no
per-viewer queue. A viewer that reads slowly skips frames for itself only, and
one whose socket stays blocked longer than the send timeout is dropped.
Between frames it waits in slices of at most `poll_s` while watching its
socket, so a viewer that leaves frees its slot within a slice whatever its
`?fps=` (raised to at least MIN_FPS).

The stream answers HTTP/1.0 with `Connection: close`: every client (VLC,
browsers, ffmpeg, OpenCV, the Python client) reads the multipart body until
the connection ends.

Part headers: Content-Type, Content-Length, X-Frame-Id, X-Timestamp (wall
clock, seconds with six decimals), X-Dark-Score, X-Night (1 at night, 0 by
day), X-Exposure-Us and X-Gain when the source knows them, and one X-<Key> per
item of the frame's `extra` (`source` -> X-Source, `motion` -> X-Motion, `detections` -> X-Detections,
`people` -> X-People): text as it is, anything
else as compact JSON, control characters replaced by spaces.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import math
import re
import select
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from daemon import __version__
from daemon.capture.ring import FrameMeta
from daemon.config import Section
from daemon.core.repeat import RepeatedLog
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker
from daemon.net.allow import peer_allowed
from daemon.net.httpauth import REALM, HttpAuth
from daemon.net.jpegfeed import JpegFeed
from daemon.net.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from daemon.web import Page, load_page

__all__ = ["HttpServer", "meta_headers"]

log = logging.getLogger("picamd.http")

BOUNDARY = "frame"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_MAX_HEADER_VALUE = 8192  # longer extras are left out of the headers (they stay in /meta)
_STANDARD_HEADERS = {"X-Frame-Id", "X-Timestamp", "X-Dark-Score", "X-Night", "X-Exposure-Us", "X-Gain"}
#: Paths whose answer lasts as long as the client watches: they take a viewer slot (http.max_clients).
_STREAM_PATHS = frozenset({"/stream"})
#: A viewer asking for less (?fps=0.001, 1e-300) gets this: one frame every 10 s. Slower is what /snapshot.jpg is for.
MIN_FPS = 0.1
_MAX_REQUEST_LINE = 65536  # as BaseHTTPRequestHandler: longer is 414
_MAX_HEAD_BYTES = 65536 + 16384  # request line and headers; beyond it 431
_HEAD_END = re.compile(rb"\r?\n\r?\n")


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


def _wait_readable(sock: socket.socket, wait_s: float) -> bool:
    """Wait up to `wait_s` for `sock` to be readable (data, end of file or an error). poll(), not select(): any fd number."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(max(0, int(wait_s * 1000))))


def _listen(bind: str, port: int, backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _plain_answer(code: int, text: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole HTTP/1.0 answer that closes the connection: what the reading thread sends without a handler."""
    body = text.encode("utf-8", "replace")
    lines = [
        f"HTTP/1.0 {code} {HTTPStatus(code).phrase}",
        f"Server: picamd/{__version__}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)  # a FIN after what was sent, rather than only the close
    except OSError:
        pass
    sock.close()


@dataclass(eq=False)
class _Conn:
    """A connection whose request is being read (or, between requests, a kept-alive one)."""

    sock: socket.socket
    address: Any  # as accept() gives it; [0] is the peer's address
    allowed: bool  # in the allowed networks: a refused one still sends its request, then gets its 403
    since: float  # monotonic time it began waiting for this request
    deadline: float  # it is closed if the request is not complete by then
    idle: bool = False  # kept alive and not yet sending its next request
    buf: bytearray = field(default_factory=bytearray)
    head: bytes = b""  # request line and headers of the request being answered

    @property
    def peer(self) -> str:
        return str(self.address[0])


class _Handler(BaseHTTPRequestHandler):
    """Answers one request whose request line and headers the reading thread has already received."""

    server_version = f"picamd/{__version__}"
    sys_version = ""
    # 1.1 so that parse_request honours keep-alive; an answer that closes the connection says 1.0 (see _send).
    protocol_version = "HTTP/1.1"
    timeout = None  # the socket's timeout is set by HttpServer (the send timeout)

    def __init__(self, conn: _Conn, owner: HttpServer, kind: str) -> None:
        # BaseRequestHandler.__init__ wants a socketserver; this does what it does, with the owner instead.
        self.owner = owner
        self.conn = conn
        self.kind = kind  # "viewer" or "request": the pool whose slot this request holds
        self.keep_alive = False  # set when the answer left the connection open for another request
        self._sent_keep_alive = False  # only _send's answers (with a Content-Length) may leave it open
        self.request = conn.sock
        self.client_address = conn.address
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = io.BytesIO(self.conn.head)  # the head was read already; GET and HEAD have no body

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        self.keep_alive = self._sent_keep_alive and not self.close_connection

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        self.close_connection = True
        self.protocol_version = "HTTP/1.0"
        super().send_error(code, message, explain)

    # -- methods
    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def _refuse_method(self) -> None:
        if not self._authorized(urlsplit(self.path).path):
            return
        self._send(405, b"method not allowed: use GET or HEAD\n", "text/plain; charset=utf-8", [("Allow", "GET, HEAD")])

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    # -- routing
    def _authorized(self, path: str) -> bool:
        verdict = self.owner.auth.check(path, self.headers.get("Authorization"), self.client_address[0])
        if verdict.ok:
            return True
        extra = [("WWW-Authenticate", f'Basic realm="{REALM}"')] if verdict.code == 401 else []
        if verdict.retry_after_s:
            extra.append(("Retry-After", str(verdict.retry_after_s)))
        self._send(verdict.code, verdict.message.encode(), "text/plain; charset=utf-8", extra)
        return False

    def _route(self) -> None:
        url = urlsplit(self.path)
        if not self._authorized(url.path):
            return
        route = _ROUTES.get(url.path)
        if route is None:
            text = f"not found: {url.path[:200]}\ntry /, /stream, /snapshot.jpg, /meta, /detections, /regions or /health\n"
            self._send(404, text.encode("utf-8", "replace"), "text/plain; charset=utf-8")
            return
        route(self, url.query)

    def _keep_alive_allowed(self) -> bool:
        """A short answer to a GET or HEAD without a body, while the client wants it and the server allows it."""
        if self.close_connection or self.kind != "request" or self.command not in ("GET", "HEAD"):
            return False
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers:
            return False  # a body nobody read would be taken for the next request
        return self.owner._keepalive_s() > 0

    def _send(self, code: int, body: bytes, content_type: str, extra: list[tuple[str, str]] | None = None) -> None:
        keep = self._sent_keep_alive = self._keep_alive_allowed()
        if not keep:
            self.close_connection = True
            self.protocol_version = "HTTP/1.0"
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "keep-alive" if keep else "close")
        for name, value in extra or []:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, code: int, data: Any) -> None:
        self._send(code, (json.dumps(data, indent=1, default=str) + "\n").encode(), "application/json")

    # -- routes
    def _page(self, query: str) -> None:
        page = self.owner.page
        self._send(200, page.body, page.content_type, list(page.headers))

    def _health(self, query: str) -> None:
        self._send_json(*self.owner._health_payload())

    def _meta(self, query: str) -> None:
        meta = self.owner.feed.latest_meta()
        if meta is None:
            self._send_json(503, {"error": "no frame yet"})
        else:
            self._send_json(200, meta.to_dict())

    def _detections(self, query: str) -> None:
        self._send_json(*self.owner._detections_payload())

    def _regions(self, query: str) -> None:
        self._send_json(*self.owner._regions_payload())

    def _snapshot(self, query: str) -> None:
        got = self.owner.feed.snapshot()
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
        self.close_connection = True
        self.protocol_version = "HTTP/1.0"  # the body ends with the connection
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache, no-store, must-revalidate")
        self.send_header("Pragma", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        self.owner._serve_viewer(self.wfile, self.connection, self.client_address[0], requested)

    def _metrics(self, query: str) -> None:
        # The Prometheus text format (daemon/net/metrics.py); a short request, and it needs the login like the rest.
        code, text = self.owner._metrics_payload()
        self._send(code, text.encode("utf-8"), METRICS_CONTENT_TYPE if code == 200 else "text/plain; charset=utf-8")

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
    return max(fps, MIN_FPS)


_ROUTES: dict[str, Callable[[_Handler, str], None]] = {
    "/": _Handler._page,
    "/index.html": _Handler._page,
    "/stream": _Handler._stream,
    "/snapshot.jpg": _Handler._snapshot,
    "/health": _Handler._health,
    "/metrics": _Handler._metrics,
    "/meta": _Handler._meta,
    "/meta.json": _Handler._meta,
    "/detections": _Handler._detections,
    "/regions": _Handler._regions,
}


class HttpServer:
    #: Server-side send buffer of a viewer: bounds the kernel memory a stalled viewer can pin
    #: (autotuning would grow it to megabytes each) and lets a stall be noticed promptly.
    viewer_sndbuf_bytes = 256 * 1024
    #: Longest a viewer waits (on the feed, or between frames under a low ?fps=) before checking for stop and a closed socket.
    poll_s = 0.5
    #: Longest wait between attempts to bind the port.
    bind_backoff_max_s = 30.0
    #: Connections the kernel holds before the reading thread accepts them.
    listen_backlog = 128
    #: A viewer that sends this much after its request is not a viewer: it is dropped.
    viewer_max_junk_bytes = 64 * 1024

    def __init__(
        self,
        cfg: Section,
        stream_cfg: Section,
        allow: Callable[[], list[str]],
        feed: JpegFeed,
        health: Callable[[], dict],
        status: ComponentStatus,
        *,
        send_timeout_s: float = 10.0,
        detections: Callable[[], tuple[int, Any]] | None = None,
        metrics: Callable[[], str] | None = None,
        regions: Callable[[], tuple[int, Any]] | None = None,
    ) -> None:
        """`cfg` is the server's section (`http`: bind, port, the limits and the login), `stream_cfg` the stream's (`mjpeg`: max_fps);
        `detections` answers GET /detections (status code and JSON), `metrics` GET /metrics (the exposition text), `regions`
        GET /regions (the motion regions' outlines in full-frame pixels, which the page draws)."""
        self._cfg = cfg
        self._stream_cfg = stream_cfg
        self._allow = allow
        self.feed = feed
        self._health_source = health
        self._detections_source = detections
        self._regions_source = regions
        self._metrics_source = metrics
        self._status = status
        self._send_timeout_s = send_timeout_s
        self.page: Page = load_page()
        self.auth = HttpAuth(cfg)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)  # a wake-up never blocks a handler; one byte waiting is enough
        self._worker = Worker("http", self._step, status=status, error_pause_s=0.5, on_stop=self._wake)
        self._backoff_s = 1.0
        self._listener: socket.socket | None = None
        self._port: int | None = None
        self._lock = threading.Condition()
        self._active = {"viewer": 0, "request": 0}  # slots held, per pool
        # Connections being read, oldest first; touched by the reading thread only.
        self._pending: dict[_Conn, None] = {}
        self._returned: collections.deque[_Conn] = collections.deque()  # kept-alive connections handed back by handlers
        self._header_timeouts = 0
        self._evicted = 0
        self._idle_closed = 0
        self._requests = 0
        self._viewers: dict[int, dict[str, Any]] = {}
        self._viewer_socks: dict[int, socket.socket] = {}
        self._next_viewer = 0
        self._bytes_sent = 0
        self._frames_sent = 0
        self._dropped_slow = 0
        self._rejected = {403: 0, 503: 0}
        # A scanner, a reloading crowd or a slowloris is counted always and logged at most every 10 s per kind.
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
        if not self._try_bind():
            # A server that cannot listen at start is a failure: the daemon exits non-zero and systemd restarts it.
            raise OSError("HTTP server " + self._status.state.removeprefix("degraded (").removesuffix(")"))
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        listener, self._listener, self._port = self._listener, None, None
        if listener is not None:
            listener.close()
        self._close_returned()
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
            listener = _listen(bind, port, self.listen_backlog)
        except OSError as exc:
            self._status.degrade(f"cannot listen on {bind}:{port}: {exc.strerror or exc}")
            return False
        self._listener = listener
        self._port = int(listener.getsockname()[1])
        log.info("HTTP server listening on %s:%d (/stream, /snapshot.jpg, /meta, /detections, /regions, /health, /)", bind, self._port)
        if not self._status.ok:
            self._status.recover()
        return True

    def _step(self) -> None:
        # The worker counts and logs what this raises and calls it again: the accept loop outlives
        # anything a connection does.
        listener = self._listener
        if listener is not None:
            self._read_until_stopped(listener)
        elif not self._worker.wait(self._backoff_s):
            self._backoff_s = 1.0 if self._try_bind() else min(self._backoff_s * 2, self.bind_backoff_max_s)

    # -- the reading thread: accepts, reads request heads, hands complete requests to handler threads
    def _read_until_stopped(self, listener: socket.socket) -> None:
        # Waiting on the listening socket, the wake-up socket and the connections (instead of polling)
        # lets stop() end the loop at once and costs no wake-ups while idle.
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            try:
                while not self._stopping:
                    for key, _ in sel.select(timeout=self._next_deadline_in()):
                        if self._stopping:
                            break
                        if key.fileobj is self._wake_r:
                            self._drain_wake()
                        elif key.fileobj is listener:
                            self._accept(listener, sel)
                        else:
                            self._read(key.data, sel)
                    self._take_returned(sel)
                    self._expire(sel)
            finally:
                for conn in list(self._pending):
                    self._drop(conn, sel)

    def _next_deadline_in(self) -> float:
        if not self._pending:
            return 5.0
        soonest = min(conn.deadline for conn in self._pending)
        return min(1.0, max(0.0, soonest - time.monotonic()))

    def _accept(self, listener: socket.socket, sel: selectors.BaseSelector) -> None:
        for _ in range(64):  # then the other sockets get their turn
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: the backlog waits for the next round
                self._rejection_log.warning(f"accept {exc.errno}", "accepting an HTTP connection failed: %s", exc)
                return
            sock.setblocking(False)
            now = time.monotonic()
            conn = _Conn(sock, address, self._peer_allowed(str(address[0])), now, now + self._cfg.header_timeout_s)
            while len(self._pending) >= max(1, self._cfg.max_pending):
                self._evict_one(sel)
            self._pending[conn] = None
            sel.register(sock, selectors.EVENT_READ, conn)

    def _evict_one(self, sel: selectors.BaseSelector) -> None:
        """Make room for a newcomer: a refused address first, then an idle kept-alive connection, then the
        oldest connection of the address that holds the most (an operator's single request outlives a flood)."""
        pending = list(self._pending)
        victims = [c for c in pending if not c.allowed] or [c for c in pending if c.idle]
        if not victims:
            counts = collections.Counter(c.peer for c in pending)
            greediest = max(counts, key=counts.__getitem__)
            victims = [c for c in pending if c.peer == greediest]
        victim = victims[0]  # the dict keeps arrival order: the one that has waited longest
        if not victim.idle:
            with self._lock:
                self._evicted += 1
            self._rejection_log.warning(
                "evicted",
                "HTTP: %d connections are sending their request (http.max_pending); dropped the longest-waiting one, from %s",
                len(pending),
                victim.peer,
            )
        self._drop(victim, sel)

    def _read(self, conn: _Conn, sel: selectors.BaseSelector) -> None:
        try:
            data = conn.sock.recv(16384)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn, sel)
            return
        if not data:
            self._drop(conn, sel)
            return
        if conn.idle:  # the next request on a kept-alive connection: it has the header timeout from now
            conn.idle = False
            conn.since = time.monotonic()
            conn.deadline = conn.since + self._cfg.header_timeout_s
        conn.buf += data
        self._dispatch(conn, sel)

    def _dispatch(self, conn: _Conn, sel: selectors.BaseSelector) -> None:
        """Once the head is complete: answer a refusal here, or start a handler thread with a pool's slot."""
        end = _HEAD_END.search(conn.buf)
        if end is None:
            if conn.buf.find(b"\n", 0, _MAX_REQUEST_LINE + 1) < 0 and len(conn.buf) > _MAX_REQUEST_LINE:
                self._answer_and_drop(conn, sel, _plain_answer(414, "request line too long\n"))
            elif len(conn.buf) > _MAX_HEAD_BYTES:
                self._answer_and_drop(conn, sel, _plain_answer(431, "request headers too large\n"))
            return
        conn.head, conn.buf = bytes(conn.buf[: end.end()]), conn.buf[end.end() :]
        words = conn.head.split(b"\n", 1)[0].split()
        method = words[0].decode("latin-1") if words else ""
        path = urlsplit(words[1].decode("latin-1")).path if len(words) > 1 else ""
        if not conn.allowed:
            self._note_rejection(403, conn.peer, "")
            self._answer_and_drop(conn, sel, _plain_answer(403, "forbidden: your address is not in the allowed client networks\n"))
            return
        kind = "viewer" if method == "GET" and path in _STREAM_PATHS else "request"
        if not self._admit(kind):
            self._note_rejection(503, conn.peer, kind)
            busy = "too many viewers" if kind == "viewer" else "too many requests at once"
            self._answer_and_drop(conn, sel, _plain_answer(503, f"{busy}; try again later\n", (("Retry-After", "5"),)))
            return
        sel.unregister(conn.sock)
        del self._pending[conn]
        thread = threading.Thread(target=self._handle, args=(conn, kind), name="picamd-http-client", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had: the process is at its limit
            self._release(kind)
            self._rejection_log.warning("thread", "HTTP: cannot start a handler thread: %s", exc)
            self._send_quietly(conn.sock, _plain_answer(503, "server busy; try again later\n", (("Retry-After", "5"),)))
            _close(conn.sock)

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for conn in [c for c in self._pending if c.deadline <= now]:
            if conn.idle:
                with self._lock:
                    self._idle_closed += 1
                self._drop(conn, sel)
                continue
            with self._lock:
                self._header_timeouts += 1
            if conn.buf:
                self._rejection_log.warning(
                    "header timeout",
                    "HTTP client %s sent no complete request within %g s (http.header_timeout_s)",
                    conn.peer,
                    self._cfg.header_timeout_s,
                )
                self._answer_and_drop(conn, sel, _plain_answer(408, "request not complete in time\n"))
            else:
                # Browsers open spare connections they may never use: counted, not worth a warning.
                log.debug("HTTP client %s sent nothing within %g s; closed", conn.peer, self._cfg.header_timeout_s)
                self._drop(conn, sel)

    def _take_returned(self, sel: selectors.BaseSelector) -> None:
        while self._returned:
            conn = self._returned.popleft()
            while len(self._pending) >= max(1, self._cfg.max_pending):
                self._evict_one(sel)
            self._pending[conn] = None
            sel.register(conn.sock, selectors.EVENT_READ, conn)
            if conn.buf:  # the client sent its next request already (pipelining)
                conn.idle, conn.deadline = False, time.monotonic() + self._cfg.header_timeout_s
                self._dispatch(conn, sel)

    def _answer_and_drop(self, conn: _Conn, sel: selectors.BaseSelector, answer: bytes) -> None:
        self._send_quietly(conn.sock, answer)
        self._drop(conn, sel)

    @staticmethod
    def _send_quietly(sock: socket.socket, data: bytes) -> None:
        # A short answer fits in the empty send buffer of a non-blocking socket; a client that does not read it loses it.
        try:
            sock.send(data)
        except OSError:
            pass

    def _drop(self, conn: _Conn, sel: selectors.BaseSelector) -> None:
        self._pending.pop(conn, None)
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        _close(conn.sock)

    # -- one request, on its own thread
    def _handle(self, conn: _Conn, kind: str) -> None:
        keep = False
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(self._send_timeout_s)
            with self._lock:
                self._requests += 1
            keep = _Handler(conn, self, kind).keep_alive
        except Exception:
            self._handler_failed(conn.address)
        finally:
            self._release(kind)
            if keep and not self._stopping:
                self._hand_back(conn)
            else:
                _close(conn.sock)

    def _hand_back(self, conn: _Conn) -> None:
        """A kept-alive connection goes back to the reading thread to wait for its next request, holding no slot."""
        try:
            conn.sock.setblocking(False)
        except OSError:
            conn.sock.close()
            return
        now = time.monotonic()
        conn.idle, conn.since, conn.deadline, conn.head = True, now, now + self._keepalive_s(), b""
        self._returned.append(conn)
        self._wake()
        if self._stopping:  # the reading thread may have ended before it could take it
            self._close_returned()

    def _close_returned(self) -> None:
        while True:
            try:
                conn = self._returned.popleft()
            except IndexError:
                return
            conn.sock.close()

    def _keepalive_s(self) -> float:
        return float(self._cfg.keepalive_s)

    # -- connection bookkeeping (called from the handler threads)
    def _peer_allowed(self, address: str) -> bool:
        try:
            networks = self._allow()
        except Exception as exc:
            self._status.error("reading the allowed networks failed", exc)
            return False
        return peer_allowed(address, networks)

    def _admit(self, kind: str) -> bool:
        limit = self._cfg.max_clients if kind == "viewer" else self._cfg.max_requests
        with self._lock:
            if self._active[kind] >= limit:
                return False
            self._active[kind] += 1
            return True

    def _release(self, kind: str) -> None:
        with self._lock:
            self._active[kind] -= 1

    def _note_rejection(self, code: int, peer: str, kind: str) -> None:
        with self._lock:
            self._rejected[code] += 1
        if code == 403:
            why = "not in the allowed networks"
        elif kind == "viewer":
            why = f"already {self._cfg.max_clients} viewers (http.max_clients)"
        else:
            why = f"already {self._cfg.max_requests} requests being answered (http.max_requests)"
        self._rejection_log.warning(f"{code} {kind}", "refused HTTP client %s with %d: %s", peer, code, why)

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

    def _detections_payload(self) -> tuple[int, Any]:
        if self._detections_source is None:
            return 404, {"error": "this daemon has no detector"}
        try:
            return self._detections_source()
        except Exception as exc:
            self._status.error("building /detections failed", exc)
            return 500, {"error": f"detections failed: {exc}"}

    def _regions_payload(self) -> tuple[int, Any]:
        if self._regions_source is None:
            return 200, {"frame": None, "regions": [], "errors": []}  # no motion here: nothing to outline
        try:
            return self._regions_source()
        except Exception as exc:
            self._status.error("building /regions failed", exc)
            return 500, {"error": f"regions failed: {exc}"}

    def _metrics_payload(self) -> tuple[int, str]:
        if self._metrics_source is None:
            return 404, "this daemon serves no metrics\n"
        try:
            return 200, self._metrics_source()
        except Exception as exc:
            self._status.error("building /metrics failed", exc)
            return 500, f"metrics failed: {exc}\n"

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
            info: dict[str, Any] = {"peer": peer, "fps_cap": requested_fps, "frames": 0, "started": started, "bytes_in": 0}
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
                    interval = 1.0 / max(cap, MIN_FPS)
                    delay = next_due - time.monotonic()
                    if delay > 0:
                        # The pause before the next frame, in slices spent watching the socket: a viewer
                        # that leaves during a long pause (a low ?fps=) frees its slot at once.
                        gone = self._viewer_gone(sock, min(delay, self.poll_s), info)
                        if gone:
                            reason = gone
                            break
                        continue
                    got = self.feed.wait_newer(last_id, self.poll_s)
                    if got is None:
                        gone = self._viewer_gone(sock, 0, info)
                        if gone:
                            reason = gone
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
        if self._stopping:
            reason = "server stopping"
        log.info("viewer %s left after %.0f s and %d frames: %s", peer, time.monotonic() - started, info["frames"], reason)

    def _viewer_gone(self, sock: socket.socket, wait_s: float, info: dict[str, Any]) -> str:
        """Why the viewer is gone, waiting up to `wait_s` for it to close; "" while it stays. What it sends is read and dropped."""
        try:
            if not _wait_readable(sock, wait_s):
                return ""
            data = sock.recv(4096)
        except (OSError, ValueError):
            return "viewer disconnected"
        if not data:
            return "viewer closed the connection"
        info["bytes_in"] += len(data)
        if info["bytes_in"] > self.viewer_max_junk_bytes:
            return f"dropped: it sent {info['bytes_in']} bytes after its request"
        return ""

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
                "connections": self._active["viewer"] + self._active["request"],
                "max_clients": self._cfg.max_clients,
                "requests_active": self._active["request"],
                "max_requests": self._cfg.max_requests,
                "requests": self._requests,
                "reading": len(self._pending),
                "max_pending": self._cfg.max_pending,
                "header_timeouts": self._header_timeouts,
                "evicted_while_reading": self._evicted,
                "idle_keepalive_closed": self._idle_closed,
                "max_fps": self._stream_cfg.max_fps,
                "bytes_sent": self._bytes_sent,
                "frames_sent": self._frames_sent,
                "dropped_for_slow_clients": self._dropped_slow,
                "rejected_forbidden": self._rejected[403],
                "rejected_busy": self._rejected[503],
                "auth": self.auth.health(),
                "viewer_list": viewers,
            }
