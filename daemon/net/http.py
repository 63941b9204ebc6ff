"""The HTTP server: /stream (MJPEG with per-frame metadata), /snapshot.jpg, /meta, /health and a small page.

Built on the standard library's ThreadingHTTPServer (one daemon thread per
connection): viewers are few (cfg.max_clients), each spends its life blocked
on a socket or on the feed's condition variable, and a thread per viewer keeps
every viewer independent without an event loop. The accept loop runs on its
own thread (`picamd-mjpeg`) with a short poll, so `stop()` never hangs, and it
keeps retrying when the port cannot be bound yet (an address that appears only
once the network is up at boot), reporting the server as degraded meanwhile.

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

import base64
import hashlib
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from daemon import __version__
from daemon.config import Section
from daemon.net.jpegfeed import JpegFeed
from daemon.net.allow import peer_allowed
from daemon.capture.ring import FrameMeta
from daemon.core.status import ComponentStatus

__all__ = ["JpegFeed", "MjpegServer", "meta_headers"]

log = logging.getLogger("picamd.mjpeg")

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

    def __init__(self, address: tuple[str, int], owner: "MjpegServer") -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can hang for
        # seconds on a Pi without DNS; nothing here needs the name.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request, client_address) -> None:
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address), name="picamd-http", daemon=True)
        t.start()

    def handle_error(self, request, client_address) -> None:
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
        self._send(200, _PAGE_BODY, "text/html; charset=utf-8", list(_PAGE_HEADERS))

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


class MjpegServer:
    #: Server-side send buffer of a viewer: bounds the kernel memory a stalled viewer can pin
    #: (autotuning would grow it to megabytes each) and lets a stall be noticed promptly.
    viewer_sndbuf_bytes = 256 * 1024
    #: How long a viewer waits on the feed before checking for stop and for a closed socket.
    poll_s = 0.5
    #: Longest wait between attempts to bind the port.
    bind_backoff_max_s = 30.0

    def __init__(self, cfg: Section, allow: Callable[[], list[str]], feed: JpegFeed, health: Callable[[], dict],
                 status: ComponentStatus, *, send_timeout_s: float = 10.0) -> None:
        self._cfg = cfg
        self._allow = allow
        self.feed = feed
        self._health_source = health
        self._status = status
        self._send_timeout_s = send_timeout_s
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
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
        self._rejection_logged = {403: 0.0, 503: 0.0}
        self._rejection_unlogged = {403: 0, 503: 0}

    # -- lifecycle
    @property
    def port(self) -> int | None:
        """The bound port (useful when cfg.port is 0), or None while not listening."""
        return self._port

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._drain_wake()
        self._try_bind()  # now, so .port is known when start() returns in the normal case
        self._thread = threading.Thread(target=self._run, name="picamd-mjpeg", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
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

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            httpd = self._httpd
            if httpd is None:
                if self._stop.wait(backoff):
                    break
                if self._try_bind():
                    backoff = 1.0
                else:
                    backoff = min(backoff * 2, self.bind_backoff_max_s)
                continue
            try:
                self._accept_until_stopped(httpd)
            except Exception as exc:  # the accept loop must outlive anything a connection does
                self._status.error("HTTP accept loop failed", exc)
                self._stop.wait(0.5)

    def _accept_until_stopped(self, httpd: _Server) -> None:
        # Waiting on the listening socket and a wake-up socket (instead of polling) lets stop()
        # end the loop at once and costs no wake-ups while idle.
        with selectors.DefaultSelector() as sel:
            sel.register(httpd.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=5.0):
                    if key.fileobj is self._wake_r:
                        self._drain_wake()
                    elif not self._stop.is_set():
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
        # Counted always, logged at most every 10 s per kind so a scanner cannot flood the journal.
        now = time.monotonic()
        with self._lock:
            self._rejected[code] += 1
            if now - self._rejection_logged[code] < 10.0:
                self._rejection_unlogged[code] += 1
                return
            self._rejection_logged[code] = now
            skipped, self._rejection_unlogged[code] = self._rejection_unlogged[code], 0
        why = "not in the allowed networks" if code == 403 else f"already {self._cfg.max_clients} connections (mjpeg.max_clients)"
        more = f" (and {skipped} more since the last message)" if skipped else ""
        log.warning("refused HTTP client %s with %d: %s%s", peer, code, why, more)

    def _handler_failed(self, client_address) -> None:
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
    def _serve_viewer(self, wfile, sock: socket.socket, peer: str, requested_fps: float | None) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.viewer_sndbuf_bytes)
        except OSError:
            pass
        sock.settimeout(self._send_timeout_s)
        started = time.monotonic()
        with self._lock:
            vid = self._next_viewer
            self._next_viewer += 1
            info = {"peer": peer, "fps_cap": requested_fps, "frames": 0, "started": started}
            self._viewers[vid] = info
            self._viewer_socks[vid] = sock
        log.info("viewer %s connected (%s)", peer, f"fps <= {requested_fps:g}" if requested_fps else "fps <= mjpeg.max_fps")
        reason = "server stopping"
        try:
            with self.feed.watch():
                last_id = self.feed.newest_id
                next_due = time.monotonic()
                while not self._stop.is_set():
                    cap = self._cfg.max_fps if requested_fps is None else min(requested_fps, self._cfg.max_fps)
                    interval = 1.0 / cap
                    delay = next_due - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
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
            reason = "server stopping" if self._stop.is_set() else f"socket error: {exc}"
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
                "max_fps": self._cfg.max_fps,
                "bytes_sent": self._bytes_sent,
                "frames_sent": self._frames_sent,
                "dropped_for_slow_clients": self._dropped_slow,
                "rejected_forbidden": self._rejected[403],
                "rejected_busy": self._rejected[503],
                "viewer_list": viewers,
            }


_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="dark">
<link rel="icon" href="data:,">
<title>picamd</title>
<style>
  :root { --line: #333; --dim: #9a9a9a; --ok: #8d8; --warn: #fc6; --bad: #f88; --link: #8cf; }
  * { box-sizing: border-box; }
  html { scrollbar-gutter: stable; }  /* a scroll bar appearing must not resize the image under the pointer */
  body { margin: 0; font: 15px/1.4 system-ui, sans-serif; background: #111; color: #ddd; }
  header { display: flex; flex-wrap: wrap; align-items: center; gap: .4em 1em; padding: .5em 1em;
           background: #1d1d1d; border-bottom: 1px solid var(--line); }
  header h1 { font-size: 1.1em; margin: 0; white-space: nowrap; }
  #host { color: var(--dim); font-weight: normal; }
  nav { display: flex; gap: 1em; margin-left: auto; }
  a { color: var(--link); }
  .pill { padding: .05em .65em; border-radius: 1em; background: #333; max-width: 100%;
          overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .ok { color: var(--ok); } .warn { color: var(--warn); } .bad { color: var(--bad); }
  .pill.ok { background: #1c331c; } .pill.warn { background: #3a3116; } .pill.bad { background: #431b1b; }
  main { display: grid; gap: 1em; padding: 1em; align-items: start;
         grid-template-columns: minmax(0, 1fr) 23rem; grid-template-rows: auto 1fr;
         grid-template-areas: "view panel" "view tool"; }
  #view { grid-area: view; position: relative; justify-self: center; align-self: start; background: #000; outline: 1px solid var(--line);
          aspect-ratio: var(--ar, 1.3333); cursor: crosshair; user-select: none; -webkit-user-select: none; overflow: hidden;
          width: min(100%, max(16rem, calc((100vh - 6rem) * var(--ar, 1.3333))));
          width: min(100%, max(16rem, calc((100svh - 6rem) * var(--ar, 1.3333)))); }
  #view.drawing { touch-action: none; outline: 2px solid #ff0; }
  #stream { display: block; width: 100%; height: 100%; }
  #stream.empty { visibility: hidden; }
  #view.down #stream { opacity: .35; filter: grayscale(1); }
  #overlay { position: absolute; inset: 0; display: none; padding: .8em; pointer-events: none;
             align-items: center; justify-content: center; text-align: center; }
  #overlay span { background: rgba(0, 0, 0, .78); border-radius: .4em; padding: .6em 1em; max-width: 32em; line-height: 1.4; }
  #view.down #overlay, #view.waiting #overlay, #view.connecting #overlay { display: flex; }
  #view.waiting #overlay { align-items: flex-start; }
  #view.down #overlay span { color: var(--bad); }
  #view.waiting #overlay span { color: var(--warn); }
  #sel { position: absolute; display: none; border: 2px dashed #ff0; background: rgba(255, 255, 0, .12); pointer-events: none; }
  #panel { grid-area: panel; min-width: 0; }  /* fixed column: text changing beside the image never resizes it */
  #tool { grid-area: tool; max-width: 48rem; min-width: 0; }
  h2 { font-size: 1em; margin: 0 0 .4em; color: #bbb; }
  section + section, #panel h2 + table + h2 { margin-top: 1.2em; }
  table { border-collapse: collapse; width: 100%; }
  td, th { padding: .25em .5em; border-bottom: 1px solid var(--line); vertical-align: top; text-align: left; overflow-wrap: anywhere; }
  th { color: var(--dim); font-weight: normal; }
  #frame td:first-child, #tool td:first-child { color: var(--dim); width: 7.5em; }
  #panel.stale td { color: #777; }
  .num { font-variant-numeric: tabular-nums; }
  .state { font-weight: 600; }
  .RUNNING { color: var(--ok); } .STOPPED { color: #ccc; } .DEEP_SLEEP { color: #9bf; }
  .SETTLING { color: var(--warn); } .UNKNOWN { color: var(--dim); }
  .NIGHT { color: #9bf; font-weight: 600; } .DAY { color: #fe9; font-weight: 600; }
  pre { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; font-size: .9em; }
  input { background: #000; color: #ddd; border: 1px solid #555; padding: .3em .4em; font: .95em monospace; max-width: 100%; }
  button { background: #333; color: #ddd; border: 1px solid #666; border-radius: .25em; padding: .3em .9em; cursor: pointer; font: inherit; }
  button[aria-pressed="true"] { background: #554d10; border-color: #ff0; }
  .buttons { display: flex; gap: .5em; margin: .4em 0; }
  .cmdrow { display: flex; flex-wrap: wrap; gap: .5em; margin-top: .3em; }
  #cmd { flex: 1 1 24em; min-width: 0; }
  code { font-size: .9em; overflow-wrap: anywhere; }
  .hint { color: var(--dim); font-size: .92em; margin: .4em 0; }
  .hint.bad { color: var(--bad); }
  @media not (any-pointer: coarse) { #draw { display: none; } }
  @media (max-width: 52rem) {
    main { grid-template-columns: minmax(0, 1fr); grid-template-areas: "view" "panel" "tool"; padding: .6em; }
    nav { margin-left: 0; }
  }
</style>
</head>
<body>
<header>
  <h1>picamd <span id="host"></span></h1>
  <span id="state" class="pill">starting</span>
  <span id="health" class="pill" title="">health: -</span>
  <nav><a href="snapshot.jpg" target="_blank" rel="noopener">snapshot</a><a href="health" target="_blank" rel="noopener">health</a><a href="meta" target="_blank" rel="noopener">meta</a></nav>
</header>
<noscript><p class="hint bad">JavaScript is off: below is the plain stream; the metadata, the status and the region tool need JavaScript.</p><img src="stream" alt="live stream" width="640"></noscript>
<main>
  <div id="view" class="connecting">
    <img id="stream" class="empty" alt="live camera image" draggable="false">
    <div id="sel"></div>
    <div id="overlay"><span id="overlay-text">connecting to the camera</span></div>
  </div>

  <section id="panel">
    <h2>Newest frame</h2>
    <table id="frame">
      <tr><td>frame</td><td id="frame_id" class="num">-</td></tr>
      <tr><td>time</td><td id="time" class="num">-</td></tr>
      <tr><td title="mean brightness 0-255 of the downscaled frame">dark score</td><td id="dark_score" class="num">-</td></tr>
      <tr><td>mode</td><td id="night">-</td></tr>
      <tr><td>exposure</td><td id="exposure" class="num">-</td></tr>
      <tr id="other-row" hidden><td>other</td><td><pre id="other"></pre></td></tr>
    </table>
    <h2>Motion</h2>
    <table id="motion">
      <thead><tr><th>region</th><th>state</th><th>changed</th><th>for</th></tr></thead>
      <tbody id="motion-rows"><tr><td colspan="4" class="hint">-</td></tr></tbody>
    </table>
  </section>

  <section id="tool">
    <h2>Mark a motion region</h2>
    <p class="hint" id="howto">Drag a rectangle over the image. This page only works out the command line; nothing changes until you send it to the command port.</p>
    <div class="buttons"><button id="draw" type="button" aria-pressed="false">Draw</button><button id="clear" type="button">Clear</button></div>
    <table>
      <tr><td><label for="rname">name</label></td><td><input type="text" id="rname" value="region1" maxlength="64" spellcheck="false" autocapitalize="off" autocomplete="off"></td></tr>
      <tr><td><label for="rmin">min change</label></td><td><input type="text" id="rmin" inputmode="decimal" placeholder="optional" size="8" spellcheck="false" autocomplete="off"> <span class="hint">up to 1: fraction of the region; above 1: changed pixels</span></td></tr>
      <tr><td>frame pixels</td><td id="rpx" class="num">-</td></tr>
      <tr><td>fractions</td><td id="rfrac" class="num">-</td></tr>
    </table>
    <div class="cmdrow"><input type="text" id="cmd" readonly placeholder="region add NAME X Y W H [MIN]" aria-label="command line"><button id="copy" type="button">Copy</button></div>
    <p class="hint" id="rnote"></p>
    <p class="hint" id="rcal-row" hidden>To tune the thresholds for it: <code id="rcal"></code></p>
  </section>
</main>
<script id="picamd-lib">
"use strict";
// The page's pure helpers, with no DOM access: reading the multipart stream, frame metadata,
// the X-Motion value, the region command line, and what to do when frames stop coming.
const picamd = (() => {
  const MAX_HEADER_BYTES = 65536;
  const MAX_PART_BYTES = 64 * 1024 * 1024;
  const STANDARD_HEADERS = ["content-type", "content-length", "x-frame-id", "x-timestamp", "x-dark-score",
                            "x-night", "x-exposure-us", "x-gain", "x-motion"];
  const META_KEYS = ["frame_id", "ts", "dark_score", "night", "exposure_us", "gain", "motion"];
  const NAME_FORBIDDEN = '=;:,"' + String.fromCharCode(92);

  function boundaryOf(contentType) {
    const m = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType || "");
    return m ? (m[1] || m[2]) : null;
  }

  function headerEnd(buf) {
    for (let i = 0; i + 3 < buf.length; i++) {
      if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) { return i; }
    }
    return -1;
  }

  function ascii(bytes) {
    let text = "";
    for (let i = 0; i < bytes.length; i++) { text += String.fromCharCode(bytes[i]); }
    return text;
  }

  // Splits multipart/x-mixed-replace bytes, fed in chunks of any size, into parts with
  // lower-cased headers and a body of exactly Content-Length bytes.
  class MultipartReader {
    constructor(boundary) {
      this.delimiter = "--" + boundary;
      this.buf = new Uint8Array(0);
      this.part = null;
    }

    push(chunk) {
      if (this.buf.length === 0) {
        this.buf = chunk;
      } else {
        const joined = new Uint8Array(this.buf.length + chunk.length);
        joined.set(this.buf);
        joined.set(chunk, this.buf.length);
        this.buf = joined;
      }
      const parts = [];
      for (;;) {
        if (this.part === null) {
          const end = headerEnd(this.buf);
          if (end < 0) {
            if (this.buf.length > MAX_HEADER_BYTES) { throw new Error("part headers too long"); }
            break;
          }
          this.part = this.parseHeaders(this.buf.subarray(0, end));
          this.buf = this.buf.subarray(end + 4);
        }
        if (this.buf.length < this.part.length) { break; }
        parts.push({headers: this.part.headers, body: this.buf.slice(0, this.part.length)});
        this.buf = this.buf.subarray(this.part.length);
        this.part = null;
      }
      return parts;
    }

    parseHeaders(bytes) {
      const lines = ascii(bytes).split("\r\n");
      const at = lines.findIndex((line) => line.trim() === this.delimiter);
      if (at < 0) { throw new Error("unexpected data in the stream (no boundary line)"); }
      const headers = {};
      for (const line of lines.slice(at + 1)) {
        const colon = line.indexOf(":");
        if (colon > 0) { headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim(); }
      }
      const length = Number(headers["content-length"]);
      if (!Number.isInteger(length) || length < 0 || length > MAX_PART_BYTES) {
        throw new Error("a stream part without a usable Content-Length");
      }
      return {headers, length};
    }
  }

  function number(value) {
    if (value === undefined || value === null || value === "") { return null; }
    const n = Number(value);
    return Number.isFinite(n) ? n : null;
  }

  // The same fields from a stream part's X- headers or from /meta.
  function frameFromHeaders(h) {
    const other = {};
    for (const [key, value] of Object.entries(h)) {
      if (key.startsWith("x-") && !STANDARD_HEADERS.includes(key)) { other[key.slice(2)] = value; }
    }
    return {frame_id: number(h["x-frame-id"]), ts: number(h["x-timestamp"]), dark_score: number(h["x-dark-score"]),
            night: h["x-night"] === "1", exposure_us: number(h["x-exposure-us"]), gain: number(h["x-gain"]),
            motion: h["x-motion"] === undefined ? null : h["x-motion"], other};
  }

  function frameFromMeta(m) {
    const other = {};
    for (const [key, value] of Object.entries(m)) {
      if (!META_KEYS.includes(key)) {
        other[key.replace(/_/g, "-")] = typeof value === "string" ? value : JSON.stringify(value);
      }
    }
    return {frame_id: number(m.frame_id), ts: number(m.ts), dark_score: number(m.dark_score), night: Boolean(m.night),
            exposure_us: number(m.exposure_us), gain: number(m.gain), motion: m.motion === undefined ? null : m.motion, other};
  }

  // "press1=0.1234:RUNNING;door=0.0000:STOPPED" -> [{name, fraction, state}]; null when it is not that form.
  function parseMotion(value) {
    if (typeof value !== "string" || value.trim() === "") { return null; }
    const regions = [];
    for (const item of value.split(";")) {
      const m = /^(.+)=(-?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?):([A-Za-z_]+)$/.exec(item.trim());
      if (!m) { return null; }
      regions.push({name: m[1], fraction: Number(m[2]), state: m[3].toUpperCase()});
    }
    return regions;
  }

  function nameProblem(name, takenNames) {
    if (!name) { return "give the region a name"; }
    if ([...name].length > 64) { return "the name is longer than 64 characters"; }
    if (/[\p{C}\p{Z}]/u.test(name) || [...name].some((c) => NAME_FORBIDDEN.includes(c))) {
      return "the name cannot contain spaces, = ; : , quotes or backslashes";
    }
    if ((takenNames || []).includes(name)) {
      return "a region named " + name + " exists already: pick another name (or send region del " + name + " first)";
    }
    return "";
  }

  // The rectangle `rect` ([x0, y0, x1, y1] as fractions of the image) in camera frame pixels, and the
  // `region add` line for it; `error` says what is missing, and then there is no command.
  function regionCommand(rect, frameSize, name, minText, takenNames, origin) {
    const [x0, y0, x1, y1] = rect;
    const result = {fractions: [x0, y0, x1 - x0, y1 - y0].map((v) => v.toFixed(4)).join(" "),
                    pixels: null, command: "", calibrate: "", error: ""};
    const [fw, fh] = frameSize || [0, 0];
    if (!(fw > 0 && fh > 0)) {
      result.error = "waiting for the first frame to learn the frame size";
      return result;
    }
    const x = Math.round(x0 * fw), y = Math.round(y0 * fh);
    const w = Math.round(x1 * fw) - x, h = Math.round(y1 * fh) - y;
    result.pixels = {x, y, w, h, frameWidth: fw, frameHeight: fh};
    if (w < 2 || h < 2) {
      result.error = "drag a larger rectangle (at least 2 x 2 frame pixels)";
      return result;
    }
    const cleanName = String(name).trim();
    result.error = nameProblem(cleanName, takenNames);
    if (result.error) { return result; }
    let minPart = "";
    const minClean = String(minText || "").trim();
    if (minClean !== "") {
      const v = Number(minClean);
      if (!/^[0-9.eE+-]+$/.test(minClean) || !Number.isFinite(v) || v <= 0) {
        result.error = "min change must be a number above 0: up to 1 a fraction of the region, above 1 a number of pixels";
        return result;
      }
      if (v > 1 && !Number.isInteger(v)) {
        result.error = "min change above 1 counts changed pixels and must be a whole number";
        return result;
      }
      minPart = " " + String(v);
    }
    const rectText = x + " " + y + " " + w + " " + h;
    result.command = "region add " + cleanName + " " + rectText + minPart;
    result.calibrate = "python tools/calibrate.py --url " + (origin || "URL") + " --name " + cleanName + " --rect " + rectText;
    return result;
  }

  // What to do when no frame has arrived for `silentS` seconds while frames normally come every
  // `intervalS`. `probe` is null until /meta has been asked, else {reachable, frameId}; `baselineId`
  // is the daemon's newest frame when the silence began (the last frame shown, or the first probe's).
  //   live: nothing unusual; probe: ask /meta; down: the daemon does not answer;
  //   reconnect: the daemon has new frames this connection never delivered; waiting: the camera has none.
  function stallAction(silentS, intervalS, probe, baselineId) {
    const interval = intervalS > 0 ? intervalS : 0;
    if (silentS <= Math.max(4, 2.5 * interval)) { return "live"; }
    if (!probe) { return "probe"; }
    if (!probe.reachable) { return "down"; }
    const moved = probe.frameId !== null && probe.frameId !== undefined && baselineId !== null &&
                  baselineId !== undefined && probe.frameId !== baselineId;
    if (moved && silentS > Math.max(12, 3 * interval)) { return "reconnect"; }
    return "waiting";
  }

  function formatDuration(seconds) {
    if (!Number.isFinite(seconds) || seconds < 0) { return "-"; }
    const s = Math.floor(seconds);
    const pad = (v) => String(v).padStart(2, "0");
    if (s < 60) { return s + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " min " + pad(s % 60) + " s"; }
    if (s < 86400) { return Math.floor(s / 3600) + " h " + pad(Math.floor((s % 3600) / 60)) + " min"; }
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function formatExposure(us) {
    if (us === null || us === undefined) { return null; }
    if (us >= 1e6) { return (us / 1e6).toFixed(us >= 1e7 ? 0 : 2) + " s"; }
    if (us >= 1000) { return (us / 1000).toFixed(us >= 1e5 ? 0 : 1) + " ms"; }
    return Math.round(us) + " \u00b5s";
  }

  return {boundaryOf, MultipartReader, frameFromHeaders, frameFromMeta, parseMotion, nameProblem,
          regionCommand, stallAction, formatDuration, formatExposure};
})();
</script>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const view = $("view"), img = $("stream"), sel = $("sel"), stateEl = $("state"), healthEl = $("health");
const PROBE_EVERY_MS = 5000, DOWN_RETRY_MS = 3000, HIDDEN_PAUSE_MS = 10000;

$("host").textContent = location.host;
document.title = "picamd " + location.host;

// ---- status: one line in the header, and a message over the image when it is not live
function setState(kind, text, overlay) {
  stateEl.textContent = text;
  stateEl.className = "pill " + kind;
  view.classList.toggle("connecting", kind === "" && overlay !== undefined);
  view.classList.toggle("waiting", kind === "warn" && overlay !== undefined);
  view.classList.toggle("down", kind === "bad");
  $("panel").classList.toggle("stale", kind === "bad");
  $("overlay-text").textContent = overlay || text;
}

// ---- /health, every 10 s: the camera frame size, the command port, region names and times, overall state
let health = null, healthAt = 0;
async function refreshHealth() {
  try {
    const r = await fetch("health", {cache: "no-store"});
    const h = await r.json();
    if (!h || typeof h !== "object") { throw new Error("not JSON"); }
    health = h;
    healthAt = performance.now();
    const bad = (h.degraded || []).map((n) => n + " " + String(((h.components || {})[n] || {}).state || "").replace(/^degraded /, ""));
    healthEl.textContent = h.status === "ok" ? "healthy" : "degraded: " + bad.join(", ");
    healthEl.title = bad.join("\n");
    healthEl.className = "pill " + (h.status === "ok" ? "ok" : "warn");
    showRegion();
  } catch (e) {
    healthEl.textContent = "health: no answer";
    healthEl.className = "pill";
  }
}
function frameSize() {
  const size = health && health.camera && health.camera.frame_size;
  if (Array.isArray(size) && size.length === 2 && size[0] > 0 && size[1] > 0) { return size; }
  return img.naturalWidth ? [img.naturalWidth, img.naturalHeight] : null;
}
function regionNames() {
  return Object.keys((health && health.motion && health.motion.regions) || {});
}
function controlPort() {
  const port = health && health.clients && health.clients.control && health.clients.control.port;
  return Number.isInteger(port) && port > 0 ? port : 9999;
}

// ---- the metadata panel, updated with the frame that is on screen
function show(id, text) { $(id).textContent = text; }
function localTime(ts) {
  const d = new Date(ts * 1000);
  const p = (v, n = 2) => String(v).padStart(n, "0");
  return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " + p(d.getHours()) + ":" +
         p(d.getMinutes()) + ":" + p(d.getSeconds()) + "." + p(d.getMilliseconds(), 3);
}
function showFrame(f) {
  show("frame_id", f.frame_id === null ? "-" : f.frame_id);
  show("time", f.ts === null ? "-" : localTime(f.ts));
  $("time").title = f.ts === null ? "" : new Date(f.ts * 1000).toISOString() + " (UTC)";
  show("dark_score", f.dark_score === null ? "-" : f.dark_score.toFixed(1));
  const forced = health && health.night && health.night.mode && health.night.mode !== "auto" ? " (forced)" : "";
  show("night", (f.night ? "NIGHT" : "DAY") + forced);
  $("night").className = f.night ? "NIGHT" : "DAY";
  const exposure = picamd.formatExposure(f.exposure_us);
  show("exposure", (exposure || "-") + (f.gain === null ? "" : ", gain " + f.gain.toFixed(1)));
  const other = Object.entries(f.other || {});
  $("other-row").hidden = other.length === 0;
  show("other", other.map(([k, v]) => k + ": " + v).join("\n"));
  showMotion(f.motion);
}
const STATE_HELP = {
  UNKNOWN: "not judged yet: the time window (motion.window_s) has not filled since the start or a change",
  RUNNING: "more than motion.running_fraction of the frames in the window moved",
  STOPPED: "too few frames in the window moved",
  DEEP_SLEEP: "stopped for longer than motion.deep_sleep_s",
  SETTLING: "judgement paused after a light change or a night switch (motion.settle_s)",
};
function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) { td.className = className; }
  return td;
}
function showMotion(value) {
  const body = $("motion-rows");
  body.replaceChildren();
  const regions = picamd.parseMotion(value);
  if (regions === null) {
    const row = body.insertRow();
    const empty = value === null || value === "";
    const td = cell(row, empty ? "no regions (draw one below)" : String(value), empty ? "hint" : "");
    td.colSpan = 4;
    return;
  }
  const known = (health && health.motion && health.motion.regions) || {};
  const elapsed = (performance.now() - healthAt) / 1000;
  for (const r of regions) {
    const row = body.insertRow();
    cell(row, r.name);
    cell(row, r.state, "state " + r.state).title = STATE_HELP[r.state] || "";
    cell(row, (r.fraction * 100).toFixed(1) + " %", "num");
    const h = known[r.name];
    const same = h && (h.state === r.state || r.state === "SETTLING");
    cell(row, same ? picamd.formatDuration(h.in_state_s + elapsed) : "-", "num");
  }
}

// ---- the live image: /stream read with fetch, each JPEG shown in the <img> with its own headers
const stream = {controller: null, openedAt: 0, lastAt: 0, lastId: null, interval: 0, arrivals: [],
                failures: 0, retry: null, probing: false, probedAt: 0, baseline: null, everShown: false};
let shownUrl = null, decoding = false, pending = null, lastExposureS = 0;

function present(blob, fields) {
  if (decoding) { pending = {blob, fields}; return; }  // the browser is behind: show the newest frame next
  decoding = true;
  const url = URL.createObjectURL(blob);
  img.onload = () => {
    if (shownUrl) { URL.revokeObjectURL(shownUrl); }
    shownUrl = url;
    decoding = false;
    img.classList.remove("empty");
    view.style.setProperty("--ar", String(img.naturalWidth / img.naturalHeight));
    if (!stream.everShown) { stream.everShown = true; showRegion(); }
    showFrame(fields);
    if (pending) { const next = pending; pending = null; present(next.blob, next.fields); }
  };
  img.onerror = () => {
    URL.revokeObjectURL(url);
    decoding = false;
    if (pending) { const next = pending; pending = null; present(next.blob, next.fields); }
  };
  img.src = url;
}

function onPart(part) {
  if (!String(part.headers["content-type"] || "").startsWith("image/jpeg")) { return; }
  const now = performance.now();
  if (stream.lastAt) {
    const gap = (now - stream.lastAt) / 1000;
    stream.interval = stream.interval ? stream.interval * 0.8 + gap * 0.2 : gap;
  }
  stream.lastAt = now;
  stream.failures = 0;
  stream.probedAt = 0;
  stream.baseline = null;
  stream.arrivals.push(now);
  while (stream.arrivals.length > 2 && now - stream.arrivals[0] > 3000) { stream.arrivals.shift(); }
  const fields = picamd.frameFromHeaders(part.headers);
  if (fields.frame_id !== null) { stream.lastId = fields.frame_id; }
  lastExposureS = (fields.exposure_us || 0) / 1e6;
  present(new Blob([part.body], {type: "image/jpeg"}), fields);
  if (!stateEl.classList.contains("ok")) { refreshHealth(); }  // back from a problem: show the health that goes with it
  const n = stream.arrivals.length;
  const span = n > 1 ? stream.arrivals[n - 1] - stream.arrivals[0] : 0;
  const fps = span > 0 ? (n - 1) * 1000 / span : 0;  // frames in one burst (a paused tab) give no rate
  setState("ok", fps > 0 ? "live, " + (fps >= 1 ? fps.toFixed(1) : fps.toFixed(2)) + " frames/s" : "live");
}

// The newest frame at once, while the stream waits for the next one (which takes a whole exposure at night).
async function showSnapshot() {
  const openedAt = stream.openedAt;
  try {
    const r = await fetch("snapshot.jpg", {cache: "no-store"});
    if (!r.ok) { return; }
    const headers = {};
    r.headers.forEach((value, key) => { headers[key.toLowerCase()] = value; });
    const fields = picamd.frameFromHeaders(headers);
    const blob = await r.blob();
    if (stream.openedAt === openedAt && !stream.lastAt && fields.frame_id !== stream.lastId) {
      stream.lastId = fields.frame_id;
      stream.baseline = fields.frame_id;
      lastExposureS = (fields.exposure_us || 0) / 1e6;
      present(blob, fields);
    }
  } catch (e) {
    // the stream and the watchdog report a daemon that does not answer
  }
}

function expectedIntervalS() {
  return Math.max(stream.interval || 0, lastExposureS);
}

function closeStream() {
  clearTimeout(stream.retry);
  stream.retry = null;
  const controller = stream.controller;
  stream.controller = null;
  if (controller) { controller.abort(); }
}

async function openStream() {
  closeStream();
  if (document.hidden) { setState("", "paused while the tab is hidden"); return; }
  const controller = new AbortController();
  stream.controller = controller;
  stream.openedAt = performance.now();
  stream.lastAt = 0;
  stream.probedAt = 0;
  stream.baseline = stream.lastId;
  if (!stream.everShown) { setState("", "connecting", "connecting to the camera"); }
  showSnapshot();
  let reason = "the stream ended";
  try {
    const r = await fetch("stream", {cache: "no-store", signal: controller.signal});
    if (!r.ok) {
      throw new Error("the server answered " + r.status + ": " + (await r.text()).trim().slice(0, 200));
    }
    const boundary = picamd.boundaryOf(r.headers.get("Content-Type"));
    if (!boundary || !r.body) { throw new Error("the answer is not an MJPEG stream"); }
    const reader = r.body.getReader();
    const parts = new picamd.MultipartReader(boundary);
    for (;;) {
      const {value, done} = await reader.read();
      if (done) { break; }
      for (const part of parts.push(value)) { onPart(part); }
    }
  } catch (e) {
    reason = e.message || String(e);
  }
  if (stream.controller !== controller) { return; }  // closed on purpose; whoever closed it decides what is next
  stream.controller = null;
  streamLost(reason);
}

async function probeMeta() {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 5000);
  try {
    const r = await fetch("meta", {cache: "no-store", signal: controller.signal});
    const m = await r.json().catch(() => ({}));
    return {reachable: true, frameId: r.ok && Number.isInteger(m.frame_id) ? m.frame_id : null};
  } catch (e) {
    return {reachable: false, why: controller.signal.aborted ? "no answer within 5 s" : "cannot connect"};
  } finally {
    clearTimeout(timer);
  }
}

let downSince = null;
function markDown(why) {
  if (downSince === null) { downSince = new Date(); }
  const at = downSince.toLocaleTimeString();
  setState("bad", "daemon unreachable since " + at,
           "The camera daemon does not answer (" + why + ") since " + at + ". Retrying every " + DOWN_RETRY_MS / 1000 +
           " s; " + (stream.everShown ? "the image is the last one received." : "no image yet."));
}

async function streamLost(reason) {
  const probe = await probeMeta();
  if (stream.controller || document.hidden) { return; }
  if (!probe.reachable) {
    markDown(probe.why);
    stream.retry = setTimeout(retryWhileDown, DOWN_RETRY_MS);
    return;
  }
  downSince = null;
  stream.failures += 1;
  const wait = Math.min(10000, 1000 * 2 ** Math.min(stream.failures - 1, 4));
  setState("warn", "reconnecting", "The stream was interrupted (" + reason + "); reconnecting in " + wait / 1000 + " s.");
  stream.retry = setTimeout(openStream, wait);
}

async function retryWhileDown() {
  stream.retry = null;
  if (document.hidden) { return; }
  const probe = await probeMeta();
  if (stream.controller || stream.retry || document.hidden) { return; }
  if (probe.reachable) {
    downSince = null;
    refreshHealth();
    openStream();
  } else {
    markDown(probe.why);
    stream.retry = setTimeout(retryWhileDown, DOWN_RETRY_MS);
  }
}

// Once a second: a connection that delivers nothing is either a camera without new frames (say so and
// wait), a connection that died quietly (reconnect), or a daemon that is gone (say so and retry).
async function watchdog() {
  if (!stream.controller || stream.probing || document.hidden) { return; }
  const now = performance.now();
  const silentS = (now - (stream.lastAt || stream.openedAt)) / 1000;
  if (picamd.stallAction(silentS, expectedIntervalS(), null, stream.baseline) === "live") { return; }
  if (now - stream.probedAt < PROBE_EVERY_MS) {
    if (view.classList.contains("waiting")) { showWaiting(silentS); }
    return;
  }
  stream.probing = true;
  const probe = await probeMeta();
  stream.probing = false;
  stream.probedAt = performance.now();
  const controller = stream.controller;
  if (!controller) { return; }
  if (stream.baseline === null && probe.reachable) { stream.baseline = probe.frameId; }
  const action = picamd.stallAction(silentS, expectedIntervalS(), probe, stream.baseline);
  if (action === "down") {
    closeStream();
    markDown(probe.why);
    stream.retry = setTimeout(retryWhileDown, DOWN_RETRY_MS);
  } else if (action === "reconnect") {
    openStream();
  } else if (action === "waiting") {
    downSince = null;
    refreshHealth().then(() => { if (stream.controller === controller && view.classList.contains("waiting")) { showWaiting(silentS); } });
    showWaiting(silentS);
  }
}
function showWaiting(silentS) {
  const camera = health && health.camera && health.camera.state;
  const age = picamd.formatDuration(silentS);
  setState("warn", "no new frame for " + age, "No new frame from the camera for " + age + "." +
           (camera && camera !== "ok" ? " The daemon says: camera " + camera + "." : "") +
           " The image comes back by itself when frames flow again.");
}

// A hidden tab stops watching after a while, so a forgotten tab does not keep the Pi encoding.
let hiddenTimer = null;
document.addEventListener("visibilitychange", () => {
  clearTimeout(hiddenTimer);
  if (document.hidden) {
    hiddenTimer = setTimeout(() => { if (document.hidden) { closeStream(); setState("", "paused while the tab is hidden"); } }, HIDDEN_PAUSE_MS);
  } else if (!stream.controller && !stream.retry) {
    refreshHealth();
    openStream();
  }
});

// Browsers that cannot read a fetch body as a stream get the plain MJPEG <img> and /meta once a second.
function legacyViewer() {
  let wasDown = false;
  img.onload = () => {
    img.classList.remove("empty");
    view.style.setProperty("--ar", String(img.naturalWidth / img.naturalHeight));
    stream.everShown = true;
  };
  img.src = "stream";
  setInterval(async () => {
    try {
      const r = await fetch("meta", {cache: "no-store"});
      const m = await r.json();
      if (!r.ok) { throw new Error(m.error || String(r.status)); }
      showFrame(picamd.frameFromMeta(m));
      if (wasDown) { img.src = "stream?t=" + Date.now(); wasDown = false; downSince = null; }
      setState("ok", "live");
    } catch (e) {
      wasDown = true;
      markDown(e.message || "cannot connect");
    }
  }, 1000);
}

// ---- the region tool: a rectangle dragged over the image, in camera frame pixels and fractions,
// and the command line that adds it. It only computes text; it sends nothing to the daemon.
const nameInput = $("rname"), minInput = $("rmin"), cmd = $("cmd"), note = $("rnote"), drawButton = $("draw");
let region = null;  // [x0, y0, x1, y1] as fractions of the image
let dragFrom = null;
const coarse = window.matchMedia && window.matchMedia("(any-pointer: coarse)").matches;
if (coarse) {
  $("howto").textContent = "Tap Draw, then drag a rectangle over the image with one finger. " +
    "This page only works out the command line; nothing changes until you send it to the command port.";
}
function fractionAt(ev) {
  const box = view.getBoundingClientRect();
  const clamp = (v) => Math.min(1, Math.max(0, v));
  return [clamp((ev.clientX - box.left) / box.width), clamp((ev.clientY - box.top) / box.height)];
}
function showRegion() {
  if (!region) {
    sel.style.display = "none";
    cmd.value = "";
    show("rpx", "-");
    show("rfrac", "-");
    $("rcal-row").hidden = true;
    note.textContent = "";
    return;
  }
  const [x0, y0, x1, y1] = region;
  Object.assign(sel.style, {display: "block", left: x0 * 100 + "%", top: y0 * 100 + "%",
                            width: (x1 - x0) * 100 + "%", height: (y1 - y0) * 100 + "%"});
  const size = frameSize();
  const out = picamd.regionCommand(region, size, nameInput.value, minInput.value, regionNames(), location.origin);
  show("rfrac", out.fractions);
  const p = out.pixels;
  show("rpx", p ? "x " + p.x + ", y " + p.y + ", w " + p.w + ", h " + p.h + " (of " + p.frameWidth + " x " + p.frameHeight + ")" : "-");
  cmd.value = out.command;
  $("rcal-row").hidden = !out.calibrate;
  show("rcal", out.calibrate);
  if (out.error) {
    note.textContent = out.error;
    note.className = "hint bad";
    return;
  }
  const host = location.hostname || "HOST";
  note.textContent = 'Send it to the command port: echo "' + out.command + '" | nc ' + host + " " + controlPort() +
    " (with control.token set, send token SECRET on the same connection first)." +
    (health && health.camera && health.camera.frame_size ? "" : " The camera frame size is not known yet: these are stream pixels.");
  note.className = "hint";
}
view.addEventListener("pointerdown", (ev) => {
  if (ev.button !== 0) { return; }
  if (ev.pointerType !== "mouse" && !view.classList.contains("drawing")) { return; }  // let a finger scroll
  ev.preventDefault();
  view.setPointerCapture(ev.pointerId);
  dragFrom = fractionAt(ev);
  region = [...dragFrom, ...dragFrom];
  showRegion();
});
view.addEventListener("pointermove", (ev) => {
  if (!dragFrom) { return; }
  const to = fractionAt(ev);
  region = [Math.min(dragFrom[0], to[0]), Math.min(dragFrom[1], to[1]), Math.max(dragFrom[0], to[0]), Math.max(dragFrom[1], to[1])];
  showRegion();
});
view.addEventListener("pointerup", (ev) => {
  if (dragFrom && ev.pointerType !== "mouse") { setDrawing(false); }  // one rectangle per tap on Draw: then a finger scrolls again
  dragFrom = null;
});
view.addEventListener("pointercancel", () => { dragFrom = null; });
function clearRegion() { region = null; dragFrom = null; showRegion(); }
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") { clearRegion(); } });
$("clear").addEventListener("click", clearRegion);
function setDrawing(on) {
  view.classList.toggle("drawing", on);
  drawButton.setAttribute("aria-pressed", String(on));
  drawButton.textContent = on ? "Now drag over the image" : "Draw";
}
drawButton.addEventListener("click", () => setDrawing(!view.classList.contains("drawing")));
nameInput.addEventListener("input", showRegion);
minInput.addEventListener("input", showRegion);
const copyButton = $("copy");
let copyTimer = null;
copyButton.addEventListener("click", async () => {
  if (!cmd.value) {
    note.textContent = "Drag a rectangle over the image first.";
    note.className = "hint bad";
    return;
  }
  let copied = false;
  try {
    await navigator.clipboard.writeText(cmd.value);  // only on https or localhost
    copied = true;
  } catch (e) {
    cmd.focus();
    cmd.select();
    try { copied = document.execCommand("copy"); } catch (e2) { copied = false; }
  }
  copyButton.textContent = copied ? "Copied" : "Select and copy";
  clearTimeout(copyTimer);
  copyTimer = setTimeout(() => { copyButton.textContent = "Copy"; }, 2000);
});

// ---- start
const nameFree = () => {
  const taken = regionNames();
  if (!taken.includes(nameInput.value)) { return; }
  for (let i = 1; ; i++) { if (!taken.includes("region" + i)) { nameInput.value = "region" + i; return; } }
};
refreshHealth().then(nameFree);
setInterval(() => { if (!document.hidden) { refreshHealth(); } }, 10000);
if (typeof ReadableStream === "function" && typeof Response === "function" && "body" in Response.prototype) {
  openStream();
  setInterval(watchdog, 1000);
} else {
  legacyViewer();
}
</script>
</body>
</html>
"""


def _page_headers(page: str) -> tuple[tuple[str, str], ...]:
    """The page's security headers: its own inline scripts and style (by hash) and requests to this server only."""
    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"

    scripts = " ".join(digest(t) for t in re.findall(r"<script[^>]*>(.*?)</script>", page, re.S))
    styles = " ".join(digest(t) for t in re.findall(r"<style[^>]*>(.*?)</style>", page, re.S))
    policy = (f"default-src 'none'; script-src {scripts}; style-src {styles}; img-src 'self' blob:; "
              "connect-src 'self'; base-uri 'none'; form-action 'none'")
    return (("Content-Security-Policy", policy), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))


_PAGE_BODY = _PAGE.encode("utf-8")
_PAGE_HEADERS = _page_headers(_PAGE)
