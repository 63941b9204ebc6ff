"""One connection of the command port: the thread that reads its lines, answers them through the command registry and sends the replies.

Each line (ending in \\n or \\r\\n; a last line without newline before the
client half-closes counts too) is dispatched through the command registry and
answered with `Reply.encode()`: a first line `OK ...` or `ERR <reason>`, body
lines, and an empty line. A streaming reply (`shortstream N`) is its first
line followed by the raw chunks of the stream. Then the connection reads the
next command.

`echo CMD | nc host 9999` without `-N` never closes its side, so the server
cannot see that the script is done. A client whose first line arrives within
`_SCRIPT_FIRST_LINE_S` of connecting is taken for a script: once its lines are
answered and it stays silent for `control.script_linger_s`, the connection is
closed and `nc` returns. A person at an interactive `nc` types the first
command later than that, and keeps the connection until `idle_timeout_s`; a
program that holds one connection sends `stay` first.

Every connection has its own thread (the server in daemon/net/control.py
starts it), so a slow command, a silent client or one that never reads its
replies only ever holds up itself: reads wake every second to check the idle
timeout, and a reply that cannot be sent within `send_timeout_s` drops that
client. While it runs a command a connection is busy, and never dropped for a
newcomer; one that was dropped writes nothing more.

A wrong `token` shuts its address out for a while that doubles with every
recent failure of the address or the connection (0.5 s, 1 s, 2 s, ... at most
`_MAX_TOKEN_DELAY_S`): meanwhile every `token` line from that address, on any
connection, is refused at once without being compared, the right token too.
So the guesses one address can have judged are bounded by that schedule
however many connections it opens. The connection that sent the wrong token
gets its reply when the shut-out ends, so a token it sends next is heard (it
is answered at once when no further token can come: the client has closed
its side and nothing it sent is waiting). The third failure on a connection
closes it; failures and refusals are counted in `health`, and failures are
logged once a minute per address.
"""

from __future__ import annotations

import functools
import logging
import math
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from daemon.commands import Registry, Reply, Session
from daemon.config import Section, redact_text
from daemon.core.repeat import RepeatedLog
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker

__all__ = ["ControlClient", "Owner", "TokenMemory", "stay"]

log = logging.getLogger("picamd.control")

# How often a blocked read wakes up to look at the idle timeout and the stop flag.
_READ_POLL_S = 1.0
_RECV_BYTES = 65536
# A first command line this soon after connecting comes from a pipe, not from a person typing.
_SCRIPT_FIRST_LINE_S = 0.3
# Wrong tokens: the first shuts its address out this long, each further one twice as long, up to the maximum.
_TOKEN_DELAY_S = 0.5
_MAX_TOKEN_DELAY_S = 60.0
# A connection is closed at this many wrong tokens.
_MAX_TOKEN_FAILURES = 3
# An address's failures are remembered this long after its last (so reconnecting does not reset the delay; after
# that quiet time it starts afresh), for this many addresses.
_TOKEN_MEMORY_S = 600.0
_TOKEN_MEMORY_ADDRESSES = 1024


class TokenMemory:
    """The recent wrong tokens of every address, shared by all connections, and until when each address is shut out.

    `shut_out`, `failed` and `forgive` are called with `lock` held, from the shut-out check through the comparison of
    the token: one token line is judged at a time, so two connections cannot both be heard in one gap between penalties.
    At most `capacity` addresses are held one by one; when all of them are still shut out, the others share one entry."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._log = RepeatedLog(log, max_keys=_TOKEN_MEMORY_ADDRESSES)  # one line per address a minute, then a count
        # address -> (recent wrong tokens, monotonic time of the last, shut out until); in order of the last failure,
        # so the first is the address quiet longest.
        self._failures: dict[str, tuple[int, float, float]] = {}
        # When the table is full of addresses still shut out, the addresses beyond it share one entry: forgetting a
        # shut-out to make room would give a guesser with many source addresses (IPv6) a fresh 0.5 s on each.
        self._overflow: tuple[int, float, float] = (0, -math.inf, -math.inf)
        self.capacity = _TOKEN_MEMORY_ADDRESSES

    def _entry(self, ip: str) -> tuple[int, float, float] | None:
        entry = self._failures.get(ip)
        if entry is None and len(self._failures) >= self.capacity:
            return self._overflow
        return entry

    def shut_out(self, ip: str, now: float) -> float:
        """Seconds until a token from `ip` is heard again; 0 when it is heard now."""
        entry = self._entry(ip)
        return max(0.0, entry[2] - now) if entry is not None else 0.0

    def failed(self, ip: str, now: float, on_connection: int) -> tuple[int, float]:
        """Count a wrong token from `ip` (the `on_connection`th on its connection) and shut the address out. Returns its
        recent wrong tokens, this one included, and the monotonic time the shut-out ends."""
        if ip not in self._failures and len(self._failures) >= self.capacity:
            # Room from an address whose shut-out is over (the quiet longest first), else the shared entry.
            done = next((a for a, (_, _, until) in self._failures.items() if until <= now), None)
            if done is None:
                self._overflow = entry = self._next(self._overflow, now, on_connection)
                return entry[0], entry[2]
            del self._failures[done]
        entry = self._next(self._failures.pop(ip, (0, now, now)), now, on_connection)
        self._failures[ip] = entry  # inserted last again: the dict stays in order of the last failure
        return entry[0], entry[2]

    @staticmethod
    def _next(entry: tuple[int, float, float], now: float, on_connection: int) -> tuple[int, float, float]:
        count, last, _ = entry
        count = 1 if now - last > _TOKEN_MEMORY_S else count + 1
        n = min(max(count, on_connection), 16)
        return count, now, now + min(_TOKEN_DELAY_S * 2 ** (n - 1), _MAX_TOKEN_DELAY_S)

    def forgive(self, ip: str) -> None:
        """A right token: the address starts afresh."""
        self._failures.pop(ip, None)

    def warn(self, peer: str, ip: str, on_connection: int, count: int, shut_out_s: float) -> None:
        self._log.log(
            logging.WARNING,
            f"token {ip}",
            "wrong token from %s (%d on this connection, %d from %s in the last %.0f s); its tokens are refused unheard for %.1f s",
            peer,
            on_connection,
            count,
            ip,
            _TOKEN_MEMORY_S,
            shut_out_s,
        )


class Owner(Protocol):
    """What a connection uses of the server that accepted it (ControlServer)."""

    cfg: Section
    registry: Registry
    status: ComponentStatus
    send_timeout_s: float
    lock: threading.Lock  # guards counts, the server's clients and every client's busy, penalised and last_command
    counts: dict[str, int]
    tokens: TokenMemory  # has its own lock, never taken while `lock` is held

    @property
    def stopping(self) -> threading.Event: ...

    def client_ended(self, client: ControlClient) -> None: ...


def stay(args: list[str], session: Session) -> Reply:
    """The `stay` command: this connection is kept until control.idle_timeout_s even when it looks like a script."""
    session.data["stay"] = True
    return Reply(True, "this connection stays open until it is idle for control.idle_timeout_s")


class ControlClient:
    """One accepted connection and the thread that serves it."""

    def __init__(self, number: int, sock: socket.socket, ip: str, port: int, owner: Owner) -> None:
        self.number = number
        self.sock = sock
        self.ip = ip
        self.peer = f"{ip}:{port}"
        self.worker: Worker | None = None
        self.connected = time.monotonic()
        self.last_command: float | None = None  # when its last command (not a blank line) was answered
        self.busy = False  # running a command: never dropped for a newcomer
        self.penalised = False  # waiting out its address's shut-out before answering a wrong token: dropped first
        self.dropped = threading.Event()  # set when it was dropped to make room
        self._owner = owner
        self._lock = threading.Lock()
        self._closed = False

    def shutdown(self) -> None:
        """Wake the serving thread from a blocked recv/send (it then closes the socket itself)."""
        with self._lock:
            if self._closed:
                return
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def serve(self) -> None:
        """The connection's thread: converse until the client leaves, then close and leave the server's list."""
        log.debug("command connection %d from %s", self.number, self.peer)
        why = "closed by the client"
        try:
            why = self._converse()
        except Exception as exc:  # a bug here must cost one connection, never the port
            why = "internal error"
            self._owner.status.error(f"command connection from {self.peer} failed", exc)
        finally:
            self.close()
            self._owner.client_ended(self)
            log.debug("command connection %d from %s ended: %s", self.number, self.peer, why)

    def _converse(self) -> str:
        """Read lines and answer them until the client leaves. Returns why the conversation ended."""
        owner, cfg, sock = self._owner, self._owner.cfg, self.sock
        session = Session(peer=self.peer, connected=functools.partial(_peer_connected, sock))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        pending = bytearray()
        discarding = False  # inside an over-long line: drop bytes until its newline
        connected = last_activity = time.monotonic()
        scripted: bool | None = None  # decided by when the first line arrives
        while not owner.stopping.is_set():
            limit = cfg.idle_timeout_s
            script_answered = scripted and not session.data.get("stay") and cfg.script_linger_s > 0 and not pending
            if script_answered:
                limit = min(limit, cfg.script_linger_s)
            idle_left = limit - (time.monotonic() - last_activity)
            if idle_left <= 0:
                if script_answered:
                    return "script answered"
                with owner.lock:
                    owner.counts["idle_closed"] += 1
                return f"idle for {cfg.idle_timeout_s:g} s"
            try:
                sock.settimeout(min(_READ_POLL_S, idle_left))
                data = sock.recv(_RECV_BYTES)
            except TimeoutError:
                continue
            except OSError as exc:
                return f"read failed: {exc.strerror or exc}"
            # Only finished lines count as activity, so a client trickling bytes cannot hold a slot forever.
            if not data:
                # Half-close (echo cmd | nc -N): a last line without newline is still a command.
                if pending and not discarding and not owner.stopping.is_set():
                    self._run_line(session, bytes(pending), bytearray())
                return "closed by the client"
            pending += data
            while True:
                newline = pending.find(b"\n")
                if newline < 0:
                    break
                line = bytes(pending[:newline])
                del pending[: newline + 1]
                if discarding:
                    discarding = False  # this newline ends the over-long line already answered
                    continue
                if owner.stopping.is_set():
                    return "server stopping"
                if not line.strip():
                    continue  # a blank line is no command and no activity (an interactive user pressing enter)
                if scripted is None:
                    scripted = time.monotonic() - connected <= _SCRIPT_FIRST_LINE_S
                end = self._run_line(session, line, pending)
                if end:
                    return end
                last_activity = time.monotonic()
            max_line = cfg.max_line_bytes
            if discarding:
                pending.clear()
            elif len(pending) > max_line + 1:  # +1: room for the \r of a \r\n line
                pending.clear()
                discarding = True
                end = self._busy(functools.partial(self._too_long, max_line))
                if end:
                    return end
        return "server stopping"

    def _too_long(self, max_line: int) -> str | None:
        with self._owner.lock:
            self._owner.counts["lines_too_long"] += 1
        log.debug("%s sent a line over %d bytes", self.peer, max_line)
        return self._send(Reply.error(f"line too long (max {max_line} bytes)"))

    def _run_line(self, session: Session, raw: bytes, queued: bytearray) -> str | None:
        """Answer one line as a busy connection (never dropped for a newcomer meanwhile); `queued` is what the client sent
        after it, not yet answered. Returns a reason to end."""
        return self._busy(lambda: self._answer(session, raw, queued))

    def _busy(self, work: Callable[[], str | None]) -> str | None:
        """Run `work` (which answers the client) unless the client was dropped; meanwhile it is never dropped, so
        only one thread ever writes to its socket."""
        with self._owner.lock:
            if self.dropped.is_set():
                return "dropped to make room for a newcomer"
            self.busy = True
        try:
            return work()
        finally:
            with self._owner.lock:
                self.busy = False
                self.last_command = time.monotonic()

    def _answer(self, session: Session, raw: bytes, queued: bytearray) -> str | None:
        """Run one line and send its reply. Returns a reason when the connection must end."""
        owner = self._owner
        raw = raw.rstrip(b"\r")
        max_line = owner.cfg.max_line_bytes
        if len(raw) > max_line:
            return self._too_long(max_line)
        if not raw.strip():
            return None  # a blank line is no command (an interactive user pressing enter)
        line: str | None = None  # stays None for a line that is not UTF-8
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            reply = Reply.error("command is not valid UTF-8 text")
        else:
            line = text
            if _is_token_line(text):
                reply, end = self._token(session, text, queued)
                if end:
                    if not self.dropped.is_set():
                        self._send(Reply.error(f"wrong token; closing this connection after {session.auth_failures} wrong tokens"))
                    return end
            else:
                reply = owner.registry.dispatch(text, session)
        with owner.lock:
            owner.counts["commands_served"] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s -> %s", self.peer, _loggable(line), reply.first_line()[:120])
        return self._send(reply)

    def _token(self, session: Session, text: str, queued: bytearray) -> tuple[Reply, str | None]:
        """Judge a `token` line, or refuse it unheard while its address is shut out for a wrong token. Returns the reply
        and, when the connection must end, why."""
        owner, tokens = self._owner, self._owner.tokens
        failures = session.auth_failures
        wrong: tuple[int, float] | None = None  # the address's recent failures and the end of its shut-out
        with tokens.lock:
            now = time.monotonic()
            left = tokens.shut_out(self.ip, now)
            if left > 0:
                # Rounded up, so a client that waits as long as it is told is heard.
                reply = Reply.error(f"too many wrong tokens from {self.ip}: try again in {math.ceil(left * 10) / 10:.1f} s")
            else:
                reply = owner.registry.dispatch(text, session)
                if session.auth_failures > failures:
                    wrong = tokens.failed(self.ip, now, session.auth_failures)
                elif reply.ok:
                    tokens.forgive(self.ip)
        if left > 0:
            with owner.lock:
                owner.counts["token_refused_unheard"] += 1
            return reply, None
        if wrong is not None:
            return reply, self._wrong_token(session, *wrong, queued)
        return reply, None

    def _wrong_token(self, session: Session, count: int, until: float, queued: bytearray) -> str | None:
        """Count, log and wait out a wrong token (until its address's shut-out ends at `until`). Returns a reason when
        the connection must end."""
        owner = self._owner
        with owner.lock:
            owner.counts["token_failures"] += 1
            self.penalised = True
        owner.tokens.warn(self.peer, self.ip, session.auth_failures, count, until - time.monotonic())
        try:
            # Waiting only spares this connection's next token a refusal; a client that cannot send one has nothing to
            # wait for (one that guesses and hangs up must not hold a thread for the whole delay).
            while (
                not owner.stopping.is_set()
                and not self.dropped.is_set()
                and (left := until - time.monotonic()) > 0
                and _token_may_follow(self.sock, queued)
            ):
                self.dropped.wait(min(left, 0.25))
        finally:
            with owner.lock:
                self.penalised = False
        if self.dropped.is_set():
            return "dropped to make room for a newcomer"
        if owner.stopping.is_set():
            return "server stopping"
        if session.auth_failures >= _MAX_TOKEN_FAILURES:
            with owner.lock:
                owner.counts["token_disconnects"] += 1
            return f"{session.auth_failures} wrong tokens"
        return None

    def _send(self, reply: Reply) -> str | None:
        """Write a reply (and its stream, if any). Returns a reason when the connection must end."""
        try:
            head = reply.encode()
        except Exception as exc:  # a body json cannot encode (a handler bug): still answer
            self._owner.status.error(f"reply to {self.peer} could not be encoded", exc)
            _close_stream(reply.stream)
            reply = Reply.error("internal error: the reply could not be encoded")
            head = reply.encode()
        try:
            self.sock.settimeout(self._owner.send_timeout_s)
            self.sock.sendall(head)
        except TimeoutError:
            _close_stream(reply.stream)
            return self._dropped_slow()
        except OSError as exc:
            _close_stream(reply.stream)
            return f"write failed: {exc.strerror or exc}"
        if reply.stream is not None:
            return self._send_stream(reply.stream)
        return None

    def _send_stream(self, stream: Iterator[bytes]) -> str | None:
        owner = self._owner
        chunks = iter(stream)
        try:
            while True:
                if owner.stopping.is_set():
                    return "server stopping"
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return None
                except Exception as exc:
                    # Mid-stream there is no way to say ERR in the binary framing; closing tells the client.
                    with owner.lock:
                        owner.counts["stream_errors"] += 1
                    owner.status.error(f"stream to {self.peer} failed", exc)
                    return "stream failed"
                try:
                    self.sock.sendall(chunk)
                except TimeoutError:
                    return self._dropped_slow()
                except OSError as exc:
                    return f"write failed: {exc.strerror or exc}"
        finally:
            _close_stream(stream)

    def _dropped_slow(self) -> str:
        with self._owner.lock:
            self._owner.counts["dropped_slow"] += 1
        log.info("dropped command connection from %s: it did not read its reply within %g s", self.peer, self._owner.send_timeout_s)
        return "not reading its replies"


def _is_token_line(line: str) -> bool:
    """Whether a line names the `token` command, read exactly as Registry.dispatch reads a line's first word (a line it
    would take for `token` must never skip the shut-out)."""
    return line.strip().partition(" ")[0].lower() == "token"


def _token_may_follow(sock: socket.socket, queued: bytearray) -> bool:
    """Whether a `token` line may yet come on this connection: one waits in `queued` (what the client sent after the
    line being answered), or the client may send more (its sending side is open, or bytes wait unread)."""
    if any(_is_token_line(line.decode("utf-8", "replace")) for line in queued.split(b"\n")):
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return True  # nothing to read yet, and the client has not closed its side
    except (OSError, ValueError):  # the socket is closed already
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""  # b"": closed, nothing left unread
    except BlockingIOError:
        return True
    except OSError:
        return False


def _peer_connected(sock: socket.socket) -> bool:
    """Whether the client of a connection is still there, without reading its next command: False once it closed the
    connection or its sending side, or the connection broke. Asked by a long command (a stack) on the client's thread.

    A half-closed client (`nc -N`) may still read; TCP cannot tell it from one that has gone without writing to it,
    and a command the client cannot cancel must not run on for nobody, so both count as gone."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | getattr(select, "POLLRDHUP", 0))
        events = poller.poll(0)
    except (OSError, ValueError):  # the socket is closed already
        return False
    if not events:
        return True
    revents = events[0][1]
    if revents & (select.POLLERR | select.POLLHUP | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)):
        return False
    try:  # readable: the next command, or (where POLLRDHUP does not exist) the end of the stream
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def _close_stream(stream: Iterator[bytes] | None) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.debug("closing a reply stream failed", exc_info=True)


def _loggable(line: str | None) -> str:
    if line is None:
        return "<not UTF-8>"
    name, _, rest = line.strip().partition(" ")
    if name.lower() == "token":
        return "token ***"  # never write the secret to the journal
    if name.lower() == "set":
        key, _, value = rest.strip().partition(" ")
        return repr(f"{name} {key} {redact_text(key, value.strip())}"[:120])  # a token, a webhook key, a password
    return repr(line[:120])
