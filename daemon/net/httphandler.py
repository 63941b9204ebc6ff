"""The HTTP request handler and its routes: /stream, /snapshot.jpg, /meta, /health, /metrics, /detections, /regions and the page.

The server's reading thread (daemon/net/http.py) receives a request's line and
headers and starts a thread for it; the handler answers that one request on
it. A short request's answer is written to memory (`Answer`) and sent by the
reading thread without blocking, so a client that does not read it holds no
thread and no slot; /stream's is sent here, on the handler's thread. Optional
login (`http.users`, `http.tokens`) is checked per request, before the path
is looked up: daemon/net/httpauth.py. Methods other than GET and HEAD get
405. A short answer to a GET or HEAD without a body may keep the connection
alive (HTTP/1.1) when the client asks for it and `http.keepalive_s` is above
0; any other answer is HTTP/1.0 and closes the connection. /stream's body is
sent by daemon/net/mjpeg.py.
"""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from daemon import __version__
from daemon.net.httpauth import REALM, HttpAuth
from daemon.net.jpegfeed import JpegFeed
from daemon.net.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from daemon.net.mjpeg import BOUNDARY, Viewers, meta_headers, parse_fps
from daemon.web import Page

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["STREAM_PATHS", "Answer", "Owner", "RequestHandler"]

log = logging.getLogger("picamd.http")

#: Paths whose answer lasts as long as the client watches: they take a viewer slot (http.max_clients).
STREAM_PATHS = frozenset({"/stream"})


class Owner(Protocol):
    """What a handler uses of the server that started it (HttpServer)."""

    page: Page
    auth: HttpAuth
    feed: JpegFeed
    viewers: Viewers

    def keepalive_s(self) -> float: ...
    def health_payload(self) -> tuple[int, Any]: ...
    def detections_payload(self) -> tuple[int, Any]: ...
    def regions_payload(self) -> tuple[int, Any]: ...
    def metrics_payload(self) -> tuple[int, str]: ...


class Answer(io.BufferedIOBase):
    """A short request's answer as the handler writes it: the pieces as they come (a snapshot's bytes are not copied)."""

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        piece = data if isinstance(data, bytes) else bytes(data)
        if piece:
            self.pieces.append(piece)
        return len(piece)


class RequestHandler(BaseHTTPRequestHandler):
    """Answers one request whose request line and headers the reading thread has already received."""

    server_version = f"picamd/{__version__}"
    # 1.1 so that parse_request honours keep-alive; an answer that closes the connection says 1.0 (see _send).
    protocol_version = "HTTP/1.1"
    timeout = None  # the socket's timeout is set by HttpServer (the send timeout)

    def __init__(self, sock: socket.socket, address: Any, head: bytes, owner: Owner, kind: str) -> None:
        # BaseRequestHandler.__init__ wants a socketserver; this does what it does, with the owner instead.
        self.owner = owner
        self._head = head
        self.kind = kind  # "viewer" or "request": the pool whose slot this request holds
        self.keep_alive = False  # set when the answer left the connection open for another request
        self.answer: list[bytes] | None = None  # a short request's answer, for the server to send; None for /stream
        self._sent_keep_alive = False  # only _send's answers (with a Content-Length) may leave it open
        self.request = sock
        self.client_address = address
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def version_string(self) -> str:
        # The base class's answer is server_version + " " + sys_version (the Python version): the Server header is ours alone.
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = io.BytesIO(self._head)  # the head was read already; GET and HEAD have no body
        if self.kind == "request":  # the socket is the reading thread's again as soon as the answer is written
            answer = Answer()
            self.wfile, self.answer = answer, answer.pieces

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
            text = f"not found: {url.path[:200]}\ntry {_served_paths()}\n"
            self._send(404, text.encode("utf-8", "replace"), "text/plain; charset=utf-8")
            return
        route(self, url.query)

    def _keep_alive_allowed(self) -> bool:
        """A short answer to a GET or HEAD without a body, while the client wants it and the server allows it."""
        if self.close_connection or self.kind != "request" or self.command not in ("GET", "HEAD"):
            return False
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers:
            return False  # a body nobody read would be taken for the next request
        return self.owner.keepalive_s() > 0

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
        self._send_json(*self.owner.health_payload())

    def _meta(self, query: str) -> None:
        meta = self.owner.feed.latest_meta()
        if meta is None:
            self._send_json(503, {"error": "no frame yet"})
        else:
            self._send_json(200, meta.to_dict())

    def _detections(self, query: str) -> None:
        self._send_json(*self.owner.detections_payload())

    def _regions(self, query: str) -> None:
        self._send_json(*self.owner.regions_payload())

    def _snapshot(self, query: str) -> None:
        got = self.owner.feed.snapshot()
        if got is None:
            self._send(503, b"no frame yet; the camera has not delivered one\n", "text/plain; charset=utf-8", [("Retry-After", "2")])
            return
        jpeg, meta = got
        self._send(200, jpeg, "image/jpeg", meta_headers(meta))

    def _stream(self, query: str) -> None:
        try:
            requested = parse_fps(query)
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
        self.owner.viewers.serve(self.wfile, self.connection, self.client_address[0], requested)

    def _metrics(self, query: str) -> None:
        # The Prometheus text format (daemon/net/metrics.py); a short request, and it needs the login like the rest.
        code, text = self.owner.metrics_payload()
        self._send(code, text.encode("utf-8"), METRICS_CONTENT_TYPE if code == 200 else "text/plain; charset=utf-8")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)


_ROUTES: dict[str, Callable[[RequestHandler, str], None]] = {
    "/": RequestHandler._page,
    "/index.html": RequestHandler._page,
    "/stream": RequestHandler._stream,
    "/snapshot.jpg": RequestHandler._snapshot,
    "/health": RequestHandler._health,
    "/metrics": RequestHandler._metrics,
    "/meta": RequestHandler._meta,
    "/meta.json": RequestHandler._meta,
    "/detections": RequestHandler._detections,
    "/regions": RequestHandler._regions,
}


def _served_paths() -> str:
    """Every path in the route table, for the 404 text (read from the table so the list cannot drift from it)."""
    paths = list(_ROUTES)
    return ", ".join(paths[:-1]) + " or " + paths[-1]
