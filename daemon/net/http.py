"""The HTTP server: its socket, the thread that reads requests, the two pools of handler threads, start and stop.

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
operator from /health. A full pool answers 503 with Retry-After. A viewer's
thread sends the stream itself and holds its slot while it watches. A short
request holds its slot only while its answer is written to memory: the
reading thread sends it without blocking, and reads no further request on
that connection until the client has taken the answer (the kernel holds
less than `_UNSENT_LOW_WATER` of it unsent). So clients that pipeline
requests and never read the answers hold no slot and have no further request
read; one that takes nothing more for the send timeout (10 s; a slow one
that still takes some is waited for) is dropped and counted
(`unread_answers_dropped`). A short answer may keep the connection alive
(HTTP/1.1) for `http.keepalive_s`; it holds no slot while it idles. What
each path answers: daemon/net/httphandler.py; the stream's viewers:
daemon/net/mjpeg.py.

The page (daemon/web) is read once when the server is built and served from
memory.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import re
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from daemon import __version__
from daemon.config import Section
from daemon.core.repeat import RepeatedLog
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker
from daemon.net.allow import peer_allowed
from daemon.net.httpauth import HttpAuth
from daemon.net.httphandler import STREAM_PATHS, RequestHandler
from daemon.net.jpegfeed import JpegFeed
from daemon.net.mjpeg import Viewers
from daemon.web import Page, load_page

__all__ = ["HttpServer"]

log = logging.getLogger("picamd.http")

_MAX_REQUEST_LINE = 65536  # as BaseHTTPRequestHandler: longer is 414
_MAX_HEAD_BYTES = 65536 + 16384  # request line and headers; beyond it 431
_HEAD_END = re.compile(rb"\r?\n\r?\n")
#: A connection is writable (has taken its answer) once the kernel holds less than this of it unsent (TCP_NOTSENT_LOWAT);
#: a client with a tiny receive window that does not read keeps it above this, and gets no next request read.
_UNSENT_LOW_WATER = 16384
_SIOCOUTQNSD = 0x894B  # Linux: the bytes of a TCP socket's send queue not sent yet


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


def _abort(sock: socket.socket) -> None:
    """Close with a reset: what the client did not take is thrown away at once instead of kept by the kernel."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _unsent_bytes(sock: socket.socket) -> int | None:
    """What the kernel holds of this socket's answer unsent (SIOCOUTQNSD), or None where it cannot tell."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQNSD, b"\0\0\0\0"))[0])
    except OSError:
        return None


def _unsent_low_water(sock: socket.socket, limit: int) -> None:
    """TCP_NOTSENT_LOWAT (Linux): writable only while less than `limit` is unsent; 0 restores the system's default."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_NOTSENT_LOWAT", 25), limit)
    except OSError:
        pass  # without it a connection counts as having taken its answer once the send buffer has room again


@dataclass(eq=False)
class _Conn:
    """A connection whose request is being read (or, between requests, a kept-alive one), or whose short answer is being sent."""

    sock: socket.socket
    address: Any  # as accept() gives it; [0] is the peer's address
    allowed: bool  # in the allowed networks: a refused one still sends its request, then gets its 403
    since: float  # monotonic time it began waiting for this request
    deadline: float  # it is closed if the request is not complete by then
    idle: bool = False  # kept alive and not yet sending its next request
    buf: bytearray = field(default_factory=bytearray)
    head: bytes = b""  # request line and headers of the request being answered
    # A short answer the reading thread is sending: None while none is, empty once the kernel holds all of it.
    out: list[memoryview] | None = None
    keep: bool = False  # after that answer the connection waits for its next request (else it is closed)
    unsent: int | None = None  # what the kernel held unsent at the last look: a slow client still takes some

    @property
    def peer(self) -> str:
        return str(self.address[0])


class HttpServer:
    #: Longest wait between attempts to bind the port.
    bind_backoff_max_s = 30.0
    #: Connections the kernel holds before the reading thread accepts them.
    listen_backlog = 128

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
        self._allow = allow
        self.feed = feed
        self._health_source = health
        self._detections_source = detections
        self._regions_source = regions
        self._metrics_source = metrics
        self._status = status
        self._send_timeout_s = send_timeout_s
        self.viewers = Viewers(feed, stream_cfg, send_timeout_s, lambda: self._stopping)
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
        # Connections being read or sent their short answer, oldest first; touched by the reading thread only.
        self._pending: dict[_Conn, None] = {}
        self._returned: collections.deque[_Conn] = collections.deque()  # connections with an answer to send, from the handlers
        self._header_timeouts = 0
        self._evicted = 0
        self._unsent_dropped = 0
        self._idle_closed = 0
        self._requests = 0
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
        self.viewers.disconnect_all()
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
                        elif key.data in self._pending:  # else dropped earlier in this round (evicted for a newcomer)
                            self._serve_event(key.data, sel)
                    self._take_returned(sel)
                    self._expire(sel)
            finally:
                for conn in list(self._pending):
                    self._drop(conn, sel)

    def _serve_event(self, conn: _Conn, sel: selectors.BaseSelector) -> None:
        try:
            if conn.out is not None:
                self._write(conn, sel)
            else:
                self._read(conn, sel)
        except Exception as exc:  # a bug on one connection must not drop all the others with the loop
            self._status.error(f"HTTP connection from {conn.peer}", exc)
            self._drop(conn, sel, abort=True)

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
            _unsent_low_water(sock, _UNSENT_LOW_WATER)
            now = time.monotonic()
            conn = _Conn(sock, address, self._peer_allowed(str(address[0])), now, now + self._cfg.header_timeout_s)
            while len(self._pending) >= max(1, self._cfg.max_pending):
                self._evict_one(sel)
            self._pending[conn] = None
            sel.register(sock, selectors.EVENT_READ, conn)

    def _evict_one(self, sel: selectors.BaseSelector) -> None:
        """Make room for a newcomer: a refused address first, then an idle kept-alive connection, then one of the
        addresses that hold the most (an operator's single request outlives a flood from one address); of those, the
        one nearest its deadline: the longest waiting for its request, or the one whose client took nothing for the
        longest (a client taking its answer pushes its deadline on, so a download that is moving is spared)."""
        pending = list(self._pending)
        victims = [c for c in pending if not c.allowed] or [c for c in pending if c.idle]
        if not victims:
            counts = collections.Counter(c.peer for c in pending)
            most = max(counts.values())
            victims = [c for c in pending if counts[c.peer] == most]
        victim = min(victims, key=lambda c: c.deadline)
        if victim.out is not None:
            self._drop_unsent(victim, sel, f"had not taken its answer when a newcomer needed the room (http.max_pending {len(pending)})")
            return
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
        kind = "viewer" if method == "GET" and path in STREAM_PATHS else "request"
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
            if conn.out is not None:
                unsent = _unsent_bytes(conn.sock)
                if unsent is not None and conn.unsent is not None and unsent < conn.unsent:  # slow, but it takes the answer
                    conn.unsent, conn.deadline = unsent, now + self._send_timeout_s
                else:
                    self._drop_unsent(conn, sel, f"took nothing more of its answer for {self._send_timeout_s:g} s")
                continue
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
            conn.deadline, conn.unsent = time.monotonic() + self._send_timeout_s, None
            sel.register(conn.sock, selectors.EVENT_WRITE, conn)
            self._write(conn, sel)

    def _write(self, conn: _Conn, sel: selectors.BaseSelector) -> None:
        """Send what the socket takes of a short answer. Once the kernel holds all of it, the next time the socket is
        writable (less than _UNSENT_LOW_WATER still unsent: the client is taking it) the answer is done."""
        out = conn.out
        if not out:
            self._answered(conn, sel)
            return
        try:
            sent = conn.sock.sendmsg(out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the client went away
            self._drop(conn, sel)
            return
        conn.deadline = time.monotonic() + self._send_timeout_s  # it took some: the send timeout starts again
        conn.unsent = _unsent_bytes(conn.sock)
        while sent:
            if sent >= len(out[0]):
                sent -= len(out.pop(0))
            else:
                out[0], sent = out[0][sent:], 0

    def _answered(self, conn: _Conn, sel: selectors.BaseSelector) -> None:
        """Close the connection, or let it wait for its next request holding no slot (its pipelined one is read now)."""
        conn.out = None
        if not conn.keep:
            self._drop(conn, sel)
            return
        now = time.monotonic()
        conn.idle, conn.since, conn.deadline, conn.head = True, now, now + self.keepalive_s(), b""
        sel.modify(conn.sock, selectors.EVENT_READ, conn)
        if conn.buf:  # the client sent its next request already (pipelining)
            conn.idle, conn.deadline = False, now + self._cfg.header_timeout_s
            self._dispatch(conn, sel)

    def _drop_unsent(self, conn: _Conn, sel: selectors.BaseSelector, why: str) -> None:
        with self._lock:
            self._unsent_dropped += 1
        self._rejection_log.warning("unsent", "HTTP client %s %s; dropped", conn.peer, why)
        self._drop(conn, sel, abort=True)

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

    def _drop(self, conn: _Conn, sel: selectors.BaseSelector, *, abort: bool = False) -> None:
        self._pending.pop(conn, None)
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        (_abort if abort else _close)(conn.sock)

    # -- one request, on its own thread
    def _handle(self, conn: _Conn, kind: str) -> None:
        if kind == "viewer":
            self._serve_viewer(conn)
        else:
            self._compose(conn)

    def _serve_viewer(self, conn: _Conn) -> None:
        """The stream is sent on this thread, with blocking sends and the send timeout, as long as the viewer watches."""
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(self._send_timeout_s)
            _unsent_low_water(conn.sock, 0)  # the stream fills the send buffer as usual
            with self._lock:
                self._requests += 1
            RequestHandler(conn.sock, conn.address, conn.head, self, "viewer")
        except Exception:
            self._handler_failed(conn.address)
        finally:
            self._release("viewer")
            _close(conn.sock)

    def _compose(self, conn: _Conn) -> None:
        """A short answer is written to memory here, then the slot is free: the reading thread sends it (_write)."""
        answer: list[bytes] | None = None
        try:
            with self._lock:
                self._requests += 1
            handler = RequestHandler(conn.sock, conn.address, conn.head, self, "request")
            answer, conn.keep = handler.answer, handler.keep_alive
        except Exception:
            self._handler_failed(conn.address)
        finally:
            self._release("request")
        if answer is None or self._stopping:
            _close(conn.sock)
            return
        conn.out = [memoryview(piece) for piece in answer]
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

    def keepalive_s(self) -> float:
        """How long a kept-alive connection may idle before its next request (`http.keepalive_s`); 0: none is kept alive."""
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

    # -- what /health, /detections, /regions and /metrics answer (called from the handler threads)
    def health_payload(self) -> tuple[int, Any]:
        try:
            return 200, self._health_source()
        except Exception as exc:
            self._status.error("building /health failed", exc)
            return 500, {"error": f"health failed: {exc}"}

    def detections_payload(self) -> tuple[int, Any]:
        if self._detections_source is None:
            return 404, {"error": "this daemon has no detector"}
        try:
            return self._detections_source()
        except Exception as exc:
            self._status.error("building /detections failed", exc)
            return 500, {"error": f"detections failed: {exc}"}

    def regions_payload(self) -> tuple[int, Any]:
        if self._regions_source is None:
            return 200, {"frame": None, "regions": [], "errors": []}  # no motion here: nothing to outline
        try:
            return self._regions_source()
        except Exception as exc:
            self._status.error("building /regions failed", exc)
            return 500, {"error": f"regions failed: {exc}"}

    def metrics_payload(self) -> tuple[int, str]:
        if self._metrics_source is None:
            return 404, "this daemon serves no metrics\n"
        try:
            return 200, self._metrics_source()
        except Exception as exc:
            self._status.error("building /metrics failed", exc)
            return 500, f"metrics failed: {exc}\n"

    # -- figures
    def health(self) -> dict:
        viewers = self.viewers.health()
        with self._lock:
            return {
                "listening": self._port is not None,
                "bind": self._cfg.bind,
                "port": self._port,
                "viewers": viewers["viewers"],
                "connections": self._active["viewer"] + self._active["request"],
                "max_clients": self._cfg.max_clients,
                "requests_active": self._active["request"],
                "max_requests": self._cfg.max_requests,
                "requests": self._requests,
                "reading": len(self._pending),
                "max_pending": self._cfg.max_pending,
                "header_timeouts": self._header_timeouts,
                "evicted_while_reading": self._evicted,
                "unread_answers_dropped": self._unsent_dropped,
                "idle_keepalive_closed": self._idle_closed,
                "max_fps": viewers["max_fps"],
                "bytes_sent": viewers["bytes_sent"],
                "frames_sent": viewers["frames_sent"],
                "dropped_for_slow_clients": viewers["dropped_for_slow_clients"],
                "rejected_forbidden": self._rejected[403],
                "rejected_busy": self._rejected[503],
                "auth": self.auth.health(),
                "viewer_list": viewers["viewer_list"],
            }
