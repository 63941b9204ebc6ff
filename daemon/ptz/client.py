"""The VISCA client: requests with timeouts and bounded retries, replies matched, a broken link reconnected.

One reader thread (`picamd-ptz-link`) takes everything the camera sends and
hands each reply to the request it answers; callers wait on their request
with a timeout, so nothing here can hang on a silent camera.

Matching. Over IP (`visca-udp`) a reply carries the sequence number of its
request. Over TCP it carries none, so requests are sent one at a time up to
their first reply (the send lock): an ACK (`90 4y FF`) or an error without a
busy socket then belongs to the one request waiting for its first reply, and a
completion or error naming socket y to the request acknowledged on socket y.
A command's completion may still be outstanding while the next request goes
out (`ptz stop` during a preset recall): the camera has two sockets for that.

Failures, each naming the command and the camera:
- no first reply within `timeout_s`: the request is sent again (over IP with
  the same sequence number, which a camera that did get it answers without
  doing it twice), up to `retries` times, then `NoReply`; the next request
  reconnects (over IP: resets the sequence numbers);
- `command buffer full`: sent again after a short pause, within the retries;
- any other error reply (`syntax error`, `command not executable`, ...):
  `CameraRefused` with the error's name, not retried (it would fail the same);
- a completion that does not come within the move timeout: `NoReply`;
- the connection closing or bytes that are no VISCA (TCP): every waiting
  request fails with `LinkError` at once, and the next request reconnects.
  Over IP a garbled datagram fails the request it names (or, when it names
  none, is counted and the request times out) and the sequence is reset.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.core.repeat import RepeatedLog
from daemon.core.worker import Worker

from .transport import MESSAGE_ERROR, RESET_PAYLOAD, SEQUENCE_ERROR, SEQUENCE_MAX, Incoming, LinkDown, Transport, make_transport
from .visca import ACK, BUFFER_FULL, COMPLETION, ERROR, Message, Reply, ViscaProtocolError, parse_reply

log = logging.getLogger("picamd.ptz")

#: How long a reader waits in one receive: the bound on how late it notices a closed transport.
RECEIVE_SLICE_S = 0.25


class PtzError(Exception):
    """A request failed; the message is one line naming the command, the camera and why."""


class NoReply(PtzError):
    """The camera did not answer (no ACK, or no completion) in time."""


class CameraRefused(PtzError):
    """The camera answered with an error reply; `code` and `name` say which."""

    def __init__(self, message: str, code: int, name: str) -> None:
        super().__init__(message)
        self.code = code
        self.name = name


class LinkError(PtzError):
    """The connection failed, closed, or carried bytes that are not VISCA."""


class Cancelled(PtzError):
    """The caller gave up waiting (a sweep was cancelled)."""


@dataclass(frozen=True)
class LinkSettings:
    protocol: str
    host: str
    port: int
    address: int
    timeout_s: float
    move_timeout_s: float
    retries: int

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.protocol, self.host, self.port, self.address)


@dataclass(eq=False)
class Request:
    """One command or inquiry on its way; `wait` for its end, then read it through `ViscaClient.complete`."""

    message: Message
    seq: int | None
    gen: int
    acked: bool = False
    socket: int | None = None
    reply: Reply | None = None
    error: PtzError | None = None
    completed_mono: float | None = None
    first: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float) -> bool:
        """True once completed or failed."""
        return self.done.wait(max(0.0, timeout))


class ViscaClient:
    def __init__(
        self, settings: Callable[[], LinkSettings], *, transport_factory: Callable[[str, str, int], Transport] = make_transport
    ) -> None:
        """`settings` is read at each request, so a changed host or port takes effect on the next one (a reconnect)."""
        self._settings = settings
        self._factory = transport_factory
        self._lock = threading.Lock()  # the transport, the pending requests, the figures
        self._send_lock = threading.Lock()  # one request waiting for its first reply at a time
        self._transport: Transport | None = None
        self._key: tuple[str, str, int, int] | None = None
        self._gen = 0  # increases with every connection: a reader's error on an old one is ignored
        self._suspect = False  # the last request got no answer at all: reconnect before the next
        self._pending: list[Request] = []
        self._seq = 0
        self._reset_seen = threading.Event()
        self._wake = threading.Event()
        self._reader = Worker("ptz-link", self._read_step, on_stop=self._wake.set, join_timeout_s=1.0)
        self._errlog = RepeatedLog(log)
        self.figures: dict[str, int] = {
            k: 0 for k in ("requests", "replies", "retries", "timeouts", "refused", "garbage", "unmatched", "connects", "link_failures")
        }
        self.last_error: str | None = None
        self.last_error_ts: float | None = None
        self.last_garbage: str | None = None

    # -- what callers use
    def where(self, s: LinkSettings | None = None) -> str:
        s = s or self._settings()
        port = s.port or {"visca-tcp": 5678, "visca-udp": 52381}.get(s.protocol, 0)
        host = f"[{s.host}]" if ":" in s.host else s.host
        return f"camera {host or '(no host)'}:{port} ({s.protocol}, address {self._address(s)})"

    def run(self, message: Message, timeout: float | None = None) -> Reply:
        """Send and wait for the completion."""
        return self.complete(self.start(message), timeout)

    def inquire(self, message: Message) -> bytes:
        """An inquiry's answer data (between `90 50` and FF)."""
        reply = self.complete(self.start(message))
        return reply.data

    def start(self, message: Message) -> Request:
        """Send `message` and return once the camera acknowledged it (or answered, for an inquiry or an
        instant command). Raises NoReply, CameraRefused or LinkError."""
        s = self._settings()
        attempts = max(1, int(s.retries) + 1)
        last: PtzError | None = None
        garbage_before = self.figures["garbage"]
        with self._send_lock:
            seq: int | None = None
            seq_gen = -1
            for attempt in range(1, attempts + 1):
                if attempt > 1:
                    self._count("retries")
                try:
                    transport, gen = self._ensure_open(s)
                except PtzError as exc:
                    last = exc
                    if attempt < attempts:
                        time.sleep(min(0.5, float(s.timeout_s) / 2))  # a camera that is rebooting gets a moment
                    continue
                if transport.by_sequence and (seq is None or seq_gen != gen):
                    # A resend keeps its number (a camera that got it answers again without acting twice);
                    # a new connection or a reset sequence gets a new one.
                    seq, seq_gen = self._next_seq(), gen
                req = Request(message, seq if transport.by_sequence else None, gen)
                with self._lock:
                    self._pending.append(req)
                    self.figures["requests"] += 1
                try:
                    transport.send(message.packet(self._address(s)), inquiry=message.inquiry, seq=req.seq)
                except LinkDown as exc:
                    self._forget(req)
                    self._link_failed(gen, str(exc))
                    last = LinkError(f"{message.name}: {exc}")
                    continue
                if not req.first.wait(float(s.timeout_s)):
                    self._forget(req)
                    self._count("timeouts")
                    last = NoReply(f"no reply from {self.where(s)} to {message.name} within {float(s.timeout_s):g} s")
                    continue
                if req.error is None:
                    return req
                if isinstance(req.error, LinkError):
                    last = req.error
                    continue
                if isinstance(req.error, CameraRefused) and req.error.code == BUFFER_FULL:
                    last = req.error
                    seq = None  # answered, so not a resend: a new number (the same one would get the same answer)
                    time.sleep(min(0.5, float(s.timeout_s) / 4))  # the camera finishes what fills its buffer
                    continue
                self._note_error(str(req.error))
                raise req.error
        assert last is not None
        if isinstance(last, NoReply):
            self._suspect = True
            garbled = self.figures["garbage"] - garbage_before
            also = f"; {garbled} unreadable answer(s), the last: {self.last_garbage}" if garbled and self.last_garbage else ""
            last = NoReply(f"{last} ({attempts} attempt{'s' if attempts > 1 else ''}{also})")
        self._note_error(str(last))
        raise last

    def complete(self, req: Request, timeout: float | None = None, *, tick: Callable[[], bool] | None = None, tick_s: float = 0.5) -> Reply:
        """Wait for `req`'s completion (at most `timeout`, by default the move timeout for a movement and
        `timeout_s` otherwise); `tick` is called every `tick_s` meanwhile and returns False to give up."""
        s = self._settings()
        limit = float(timeout if timeout is not None else (s.move_timeout_s if req.message.waits else s.timeout_s))
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if req.wait(min(left, tick_s) if tick is not None else left):
                break
            if tick is not None and not tick():
                self._forget(req)
                raise Cancelled(f"{req.message.name}: cancelled while waiting for {self.where(s)}")
            if time.monotonic() >= deadline:
                self._forget(req)
                self._count("timeouts")
                where = f" (acknowledged on socket {req.socket})" if req.acked else ""
                err = NoReply(f"no completion from {self.where(s)} for {req.message.name} within {limit:g} s{where}")
                self._note_error(str(err))
                raise err
        if req.error is not None:
            self._note_error(str(req.error))
            raise req.error
        assert req.reply is not None
        return req.reply

    def close(self) -> None:
        with self._lock:
            transport, self._transport = self._transport, None
            self._gen += 1
            pending, self._pending = self._pending, []
        for req in pending:
            self._fail(req, LinkError(f"{req.message.name}: the PTZ link was closed"))
        if transport is not None:
            transport.close()
        self._reader.stop()

    @property
    def connected(self) -> bool:
        return self._transport is not None

    def health(self) -> dict[str, Any]:
        with self._lock:
            figures = dict(self.figures)
            pending = len(self._pending)
        return {
            "link": self.where(),
            "connected": self.connected,
            "pending": pending,
            **figures,
            "last_error": self.last_error,
            "last_error_ts": self.last_error_ts,
        }

    # -- the connection
    @staticmethod
    def _address(s: LinkSettings) -> int:
        return 1 if s.protocol == "visca-udp" else int(s.address)  # over IP the camera is always address 1

    def _ensure_open(self, s: LinkSettings) -> tuple[Transport, int]:
        with self._lock:
            current = self._transport
            if current is not None and self._key == s.key and not self._suspect:
                return current, self._gen
            self._transport = None
            self._gen += 1
            stale, self._pending = self._pending, []
        for req in stale:
            self._fail(req, LinkError(f"{req.message.name}: the PTZ link was reopened"))
        if current is not None:
            current.close()
        try:
            transport = self._factory(s.protocol, s.host, s.port)
        except ValueError as exc:
            raise LinkError(f"PTZ: {exc}") from None
        try:
            transport.open(float(s.timeout_s))
        except LinkDown as exc:
            raise LinkError(str(exc)) from None
        with self._lock:
            self._transport = transport
            self._key = s.key
            self._gen += 1
            gen = self._gen
            self._suspect = False
            self.figures["connects"] += 1
        self._wake.set()
        self._reader.start()
        if transport.by_sequence:
            self._reset_sequence(transport, float(s.timeout_s))
        log.info("PTZ: connected to %s", self.where(s))
        return transport, gen

    def _reset_sequence(self, transport: Transport, timeout: float) -> None:
        self._reset_seen.clear()
        try:
            transport.send_reset(0)
        except LinkDown as exc:
            raise LinkError(f"sequence reset: {exc}") from None
        if not self._reset_seen.wait(timeout):
            # Some cameras do not answer a reset; their sequence check then decides, and its error resets again.
            log.debug("PTZ: no answer to the sequence reset from %s", transport.describe())
        with self._lock:
            self._seq = 0

    def _next_seq(self) -> int:
        with self._lock:
            self._seq = (self._seq + 1) & SEQUENCE_MAX
            return self._seq

    def _link_failed(self, gen: int, reason: str) -> None:
        with self._lock:
            if gen != self._gen or self._transport is None:
                return  # an old connection's last words
            transport, self._transport = self._transport, None
            self._gen += 1
            pending, self._pending = self._pending, []
            self.figures["link_failures"] += 1
        transport.close()
        if pending:
            self._note_error(reason)
            self._errlog.log(
                logging.WARNING, reason.split(":")[0], "PTZ: %s; %d request(s) failed, reconnecting on the next one", reason, len(pending)
            )
        else:
            log.info("PTZ: %s (reconnecting on the next request)", reason)
        for req in pending:
            self._fail(req, LinkError(f"{req.message.name}: {reason}"))

    # -- the reader
    def _read_step(self) -> None:
        with self._lock:
            transport, gen = self._transport, self._gen
        if transport is None:
            self._wake.wait(1.0)
            self._wake.clear()
            return
        try:
            items = transport.receive(RECEIVE_SLICE_S)
        except LinkDown as exc:
            self._link_failed(gen, str(exc))
            return
        except OSError as exc:  # a socket closed under us by close(): only an error for the current connection
            self._link_failed(gen, f"{transport.describe()}: {exc.strerror or exc}")
            return
        except ViscaProtocolError as exc:
            self._count("garbage")
            if transport.by_sequence:
                self._garbled_datagram(gen, f"garbage from {transport.describe()}: {exc}")
            else:
                self._link_failed(gen, f"garbage from {transport.describe()}: {exc}")
            return
        for item in items:
            self._dispatch(item, gen, transport)

    def _garbled_datagram(self, gen: int, reason: str) -> None:
        self.last_garbage = reason
        self._note_error(reason)
        self._errlog.log(logging.WARNING, "garbage", "PTZ: %s", reason)
        with self._lock:
            if gen == self._gen:
                self._suspect = True  # reset the sequence before the next request

    def _dispatch(self, item: Incoming, gen: int, transport: Transport) -> None:
        if item.control:
            if item.payload == RESET_PAYLOAD:
                self._reset_seen.set()
                return
            what = {SEQUENCE_ERROR: "a sequence number error", MESSAGE_ERROR: "a message it could not read"}.get(
                item.payload, f"control message {item.payload.hex(' ')}"
            )
            self._fail_seq(gen, item.seq, f"the camera reports {what}")
            return
        try:
            reply = parse_reply(item.payload)
        except ViscaProtocolError as exc:
            self._count("garbage")
            if transport.by_sequence:
                self._fail_seq(gen, item.seq, f"garbage from {transport.describe()}: {exc}")
            else:
                self._link_failed(gen, f"garbage from {transport.describe()}: {exc}")
            return
        s = self._settings()
        if reply.address != self._address(s):
            self._count("unmatched")
            log.debug("PTZ: reply from camera address %d ignored (expecting %d): %s", reply.address, self._address(s), reply.raw.hex(" "))
            return
        with self._lock:
            if gen != self._gen:
                return
            req = self._match(reply, item.seq, transport.by_sequence)
            if req is None:
                self.figures["unmatched"] += 1
            else:
                self.figures["replies"] += 1
                self._apply(req, reply, s)
        if req is None:
            log.debug("PTZ: reply %s matches no request (a late answer to one given up on)", reply.raw.hex(" "))

    def _match(self, reply: Reply, seq: int | None, by_sequence: bool) -> Request | None:
        """The pending request `reply` answers (the lock is held)."""
        if by_sequence:
            return next((r for r in self._pending if r.seq == seq), None)
        waiting = next((r for r in self._pending if not r.acked), None)
        if reply.kind == ACK:
            return waiting if waiting is not None and not waiting.message.inquiry else None
        if reply.socket:
            owner = next((r for r in self._pending if r.acked and r.socket == reply.socket), None)
            if owner is not None:
                return owner
        return waiting

    def _apply(self, req: Request, reply: Reply, s: LinkSettings) -> None:
        """Record `reply` on `req` (the lock is held)."""
        if reply.kind == ACK:
            req.acked, req.socket = True, reply.socket
            req.first.set()
            return
        if req in self._pending:
            self._pending.remove(req)
        if reply.kind == COMPLETION:
            req.reply = reply
            req.completed_mono = time.monotonic()
        elif reply.kind == ERROR:
            assert reply.code is not None
            self.figures["refused"] += 1
            req.error = CameraRefused(f"{self.where(s)} refused {req.message.name}: {reply.error_name}", reply.code, reply.error_name)
        req.first.set()
        req.done.set()

    def _fail_seq(self, gen: int, seq: int | None, reason: str) -> None:
        with self._lock:
            if gen != self._gen:
                return
            self._suspect = True
            req = next((r for r in self._pending if r.seq == seq), None)
            if req is not None:
                self._pending.remove(req)
        self._note_error(reason)
        if req is not None:
            self._fail(req, LinkError(f"{req.message.name}: {reason}"))
        else:
            self._errlog.log(logging.WARNING, "unmatched control", "PTZ: %s (sequence %s, no request waiting)", reason, seq)

    @staticmethod
    def _fail(req: Request, error: PtzError) -> None:
        req.error = error
        req.first.set()
        req.done.set()

    def _forget(self, req: Request) -> None:
        with self._lock:
            if req in self._pending:
                self._pending.remove(req)

    def _count(self, name: str) -> None:
        with self._lock:
            self.figures[name] += 1

    def _note_error(self, reason: str) -> None:
        self.last_error = reason
        self.last_error_ts = time.time()
