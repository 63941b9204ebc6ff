"""The TCP command port: one command per line, like netcat expects.

    echo "health" | nc raspberrypi 9999        # one command, then the client half-closes
    nc raspberrypi 9999                         # interactive: type commands, read replies

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

One thread (`picamd-control`) accepts connections and never waits on a
client: peers outside `control.allow` get one `ERR` line written without
blocking, and the same thread drains and closes them a moment later (closing
a socket with unread input makes the kernel send a reset, which can destroy
the `ERR` line before the client reads it). When `control.max_clients` are
connected, a newcomer takes the place of the connection idle longest: first
one that never sent a command (once it is older than `control.grace_s`),
else the one whose last command is oldest; blank lines are no command. Only
when every connection is running a command, or is within its grace, is the
newcomer refused with `ERR too many connections`. Every accepted client gets
its own thread (`picamd-control-<n>`), so a slow command, a silent client or
one that never reads its replies only ever holds up itself: reads wake every
second to check the idle timeout, and a reply that cannot be sent within
`send_timeout_s` drops that client.

A wrong `token` costs time: the reply comes after a delay that doubles with
every failure of the connection or of its address (0.5 s, 1 s, 2 s, ... at
most `_MAX_TOKEN_DELAY_S`), the third failure on a connection closes it, and
failures are counted in `health` and logged once a minute per address.
"""

from __future__ import annotations

import functools
import logging
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from daemon.commands import Command, Registry, Reply, Session
from daemon.config import Section, redact_text
from daemon.core.repeat import RepeatedLog
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker
from daemon.net.allow import peer_allowed

log = logging.getLogger("picamd.control")

# How often a blocked read wakes up to look at the idle timeout and the stop flag.
_READ_POLL_S = 1.0
# How long a refused connection is drained before it is closed.
_LINGER_S = 1.0
# At most this many refused connections are drained at once; beyond that they are closed at once.
_MAX_LINGERING = 64
_RECV_BYTES = 65536
# A first command line this soon after connecting comes from a pipe, not from a person typing.
_SCRIPT_FIRST_LINE_S = 0.3
# Wrong tokens: the first costs this long, each further one twice as long, up to the maximum.
_TOKEN_DELAY_S = 0.5
_MAX_TOKEN_DELAY_S = 8.0
# A connection is closed at this many wrong tokens.
_MAX_TOKEN_FAILURES = 3
# An address's failures are remembered this long (so reconnecting does not reset the delay), for this many addresses.
_TOKEN_MEMORY_S = 600.0
_TOKEN_MEMORY_ADDRESSES = 1024


class _Client:
    """One accepted connection and the thread that serves it."""

    def __init__(self, number: int, sock: socket.socket, ip: str, port: int) -> None:
        self.number = number
        self.sock = sock
        self.ip = ip
        self.peer = f"{ip}:{port}"
        self.worker: Worker | None = None
        self.connected = time.monotonic()
        self.last_command: float | None = None  # when its last command (not a blank line) was answered
        self.busy = False  # running a command: never dropped for a newcomer
        self.penalised = False  # waiting out a wrong token: dropped first
        self.dropped = threading.Event()  # set when it was dropped to make room
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


class ControlServer:
    """The command port. `start()` binds `control.bind:control.port`; `port` is the bound port."""

    def __init__(self, cfg: Section, registry: Registry, status: ComponentStatus, *, send_timeout_s: float = 10.0) -> None:
        self._cfg = cfg
        self._registry = registry
        self._status = status
        self._send_timeout_s = send_timeout_s
        self._acceptor = Worker("control", self._serve, status=status, repeat=False)
        self._stop = self._acceptor.stopping
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._port: int | None = None
        self._clients: dict[int, _Client] = {}
        self._next_number = 0
        self._refusals = RepeatedLog(log, max_keys=1000)  # one line per address and reason a minute, then a count
        self._counts = {
            "connections_total": 0,
            "commands_served": 0,
            "refused_not_allowed": 0,
            "refused_too_many": 0,
            "lines_too_long": 0,
            "dropped_slow": 0,
            "idle_closed": 0,
            "stream_errors": 0,
            "dropped_for_newcomer": 0,
            "token_failures": 0,
            "token_disconnects": 0,
        }
        self._token_log = RepeatedLog(log, max_keys=_TOKEN_MEMORY_ADDRESSES)  # one line per address a minute, then a count
        self._ip_failures: dict[str, tuple[int, float]] = {}  # address -> (recent wrong tokens, monotonic time of the last)
        registry.register(
            Command(
                "stay",
                self._stay,
                "Keep this connection open until control.idle_timeout_s, "
                "for a program that sends its first command at once and holds the connection",
            )
        )

    # -- lifecycle
    @property
    def port(self) -> int | None:
        """The bound TCP port (useful when control.port is 0), or None while not listening."""
        return self._port

    def start(self) -> None:
        """Listen and start accepting. Raises OSError saying why when the port cannot be listened on (taken, a foreign address):
        the daemon then exits non-zero, so systemd restarts it and the journal says why."""
        if self._acceptor.alive:
            return
        failed = self._listen()
        if failed:
            raise OSError(failed)
        self._acceptor.start()
        self._stop = self._acceptor.stopping  # the client threads watch the same event as the acceptor

    def stop(self) -> None:
        """Stop accepting, close every client connection; returns within about 2 s."""
        if not self._acceptor.alive:
            return
        deadline = time.monotonic() + 1.8
        self._stop.set()
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            client.shutdown()
        self._acceptor.stop(max(0.0, deadline - time.monotonic()))
        for client in clients:
            if client.worker is not None:
                client.worker.stop(max(0.0, deadline - time.monotonic()))
        busy = [c.peer for c in clients if c.worker is not None and c.worker.alive]
        if busy:
            # A handler still running (a long save, say) keeps its daemon thread; its socket is already shut down.
            log.warning("command port stopped with %d command(s) still finishing (%s)", len(busy), ", ".join(busy))
        log.info("command port stopped")

    def health(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self._counts)
            clients = len(self._clients)
        return {
            "listening": self._port is not None,
            "port": self._port,
            "clients": clients,
            "max_clients": self._cfg.max_clients,
            **counts,
            "refused": counts["refused_not_allowed"] + counts["refused_too_many"],
        }

    # -- accepting
    def _listen(self) -> str | None:
        """Bind and listen; returns why it failed, or None."""
        bind, port = self._cfg.bind, self._cfg.port
        try:
            sock = listen_socket(bind, port)
        except OSError as exc:
            return f"command port cannot listen on {bind}:{port}: {exc.strerror or exc}"
        self._listener = sock
        self._port = sock.getsockname()[1]
        self._status.recover()
        log.info("command port listening on %s:%d", bind, self._port)
        return None

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        lingering: dict[socket.socket, float] = {}
        try:
            while not self._stop.is_set():
                try:
                    if self._listener is None:
                        break  # start() only runs this loop with a listening socket
                    if not _registered(selector, self._listener):
                        selector.register(self._listener, selectors.EVENT_READ)
                    for key, _ in selector.select(timeout=0.25):
                        if key.fileobj is self._listener:
                            self._accept(selector, lingering)
                        else:
                            _drain(selector, lingering, key.fileobj)  # type: ignore[arg-type]
                    now = time.monotonic()
                    for sock in [s for s, until in lingering.items() if until <= now]:
                        _forget(selector, lingering, sock)
                except Exception as exc:  # the accept loop must outlive anything one connection does
                    self._status.error("command port accept loop failed", exc)
                    self._stop.wait(0.5)
        finally:
            for sock in list(lingering):
                _forget(selector, lingering, sock)
            if self._listener is not None:
                try:
                    selector.unregister(self._listener)
                except (KeyError, ValueError):
                    pass
                self._listener.close()
                self._listener = None
            self._port = None
            selector.close()

    def _accept(self, selector: selectors.BaseSelector, lingering: dict[socket.socket, float]) -> None:
        if self._listener is None:
            return
        try:
            sock, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            # Out of file descriptors and the like: say so, back off a little, keep the port.
            self._status.degrade(f"cannot accept connections: {exc.strerror or exc}")
            self._stop.wait(0.5)
            return
        if not self._status.ok and self._listener is not None:
            self._status.recover()
        ip, port = addr[0], addr[1]
        if not peer_allowed(ip, self._cfg.allow):
            self._refuse(selector, lingering, sock, ip, f"not allowed from {ip}", "refused_not_allowed")
            return
        victim: _Client | None = None
        with self._lock:
            over = len(self._clients) >= self._cfg.max_clients
            if over:
                victim = self._victim()
                if victim is not None:
                    victim.dropped.set()  # from now on its own thread never writes to it again
                    self._clients.pop(victim.number, None)
                    self._counts["dropped_for_newcomer"] += 1
                    over = False
            if not over:
                self._next_number += 1
                client = _Client(self._next_number, sock, ip, port)
                self._clients[client.number] = client
                self._counts["connections_total"] += 1
        if victim is not None:
            self._drop_for_newcomer(victim, ip)
        if over:
            self._refuse(selector, lingering, sock, ip, "too many connections", "refused_too_many")
            return
        client.worker = Worker(f"control-{client.number}", lambda: self._serve_client(client), repeat=False)
        try:
            client.worker.start()
        except RuntimeError as exc:  # the system is out of threads
            with self._lock:
                self._clients.pop(client.number, None)
            self._status.error(f"cannot start a thread for {client.peer}", exc)
            client.close()

    def _victim(self) -> _Client | None:
        """The connection to drop for a newcomer (call with the lock held): one waiting out a wrong token, then the oldest
        that never sent a command (past its grace), then the one whose last command is oldest; never one running a command."""
        now = time.monotonic()
        grace = self._cfg.grace_s
        best: tuple[tuple[int, float], _Client] | None = None
        for c in self._clients.values():
            if c.penalised:
                rank = (0, c.connected)
            elif c.busy:
                continue
            elif c.last_command is None:
                if now - c.connected < grace:
                    continue
                rank = (1, c.connected)
            else:
                rank = (2, c.last_command)
            if best is None or rank < best[0]:
                best = (rank, c)
        return best[1] if best is not None else None

    def _drop_for_newcomer(self, victim: _Client, newcomer: str) -> None:
        since = victim.last_command if victim.last_command is not None else victim.connected
        idle = time.monotonic() - since
        self._refusals.log(
            logging.INFO,
            f"drop {victim.ip}",
            "command port full: dropped the connection from %s (%s for %.0f s) to make room for %s",
            victim.peer,
            "silent" if victim.last_command is None else "idle",
            idle,
            newcomer,
        )
        try:
            # A few bytes into a send buffer nobody else writes to any more: never blocks.
            victim.sock.send(
                Reply.error("dropped: the command port is full and this connection was idle longest").encode(), socket.MSG_DONTWAIT
            )
        except OSError:
            pass
        victim.shutdown()

    def _refuse(
        self,
        selector: selectors.BaseSelector,
        lingering: dict[socket.socket, float],
        sock: socket.socket,
        ip: str,
        reason: str,
        counter: str,
    ) -> None:
        with self._lock:
            self._counts[counter] += 1
        self._log_refusal(ip, reason)
        try:
            sock.setblocking(False)
            sock.send(Reply.error(reason).encode())  # a few bytes into an empty send buffer: never blocks
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if len(lingering) >= _MAX_LINGERING:
            sock.close()
            return
        lingering[sock] = time.monotonic() + _LINGER_S
        selector.register(sock, selectors.EVENT_READ)

    def _log_refusal(self, ip: str, reason: str) -> None:
        self._refusals.log(logging.INFO, f"{ip} {reason}", "refused a command connection from %s: %s", ip, reason)

    # -- one client
    def _serve_client(self, client: _Client) -> None:
        log.debug("command connection %d from %s", client.number, client.peer)
        why = "closed by the client"
        try:
            why = self._converse(client)
        except Exception as exc:  # a bug here must cost one connection, never the port
            why = "internal error"
            self._status.error(f"command connection from {client.peer} failed", exc)
        finally:
            client.close()
            with self._lock:
                self._clients.pop(client.number, None)
            log.debug("command connection %d from %s ended: %s", client.number, client.peer, why)

    def _converse(self, client: _Client) -> str:
        """Read lines and answer them until the client leaves. Returns why the conversation ended."""
        sock = client.sock
        session = Session(peer=client.peer, connected=functools.partial(_peer_connected, sock))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        pending = bytearray()
        discarding = False  # inside an over-long line: drop bytes until its newline
        connected = last_activity = time.monotonic()
        scripted: bool | None = None  # decided by when the first line arrives
        while not self._stop.is_set():
            limit = self._cfg.idle_timeout_s
            script_answered = scripted and not session.data.get("stay") and self._cfg.script_linger_s > 0 and not pending
            if script_answered:
                limit = min(limit, self._cfg.script_linger_s)
            idle_left = limit - (time.monotonic() - last_activity)
            if idle_left <= 0:
                if script_answered:
                    return "script answered"
                with self._lock:
                    self._counts["idle_closed"] += 1
                return f"idle for {self._cfg.idle_timeout_s:g} s"
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
                if pending and not discarding and not self._stop.is_set():
                    self._run_line(client, session, bytes(pending))
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
                if self._stop.is_set():
                    return "server stopping"
                if not line.strip():
                    continue  # a blank line is no command and no activity (an interactive user pressing enter)
                if scripted is None:
                    scripted = time.monotonic() - connected <= _SCRIPT_FIRST_LINE_S
                end = self._run_line(client, session, line)
                if end:
                    return end
                last_activity = time.monotonic()
            max_line = self._cfg.max_line_bytes
            if discarding:
                pending.clear()
            elif len(pending) > max_line + 1:  # +1: room for the \r of a \r\n line
                pending.clear()
                discarding = True
                end = self._busy(client, functools.partial(self._too_long, client, max_line))
                if end:
                    return end
        return "server stopping"

    @staticmethod
    def _stay(args: list[str], session: Session) -> Reply:
        session.data["stay"] = True
        return Reply(True, "this connection stays open until it is idle for control.idle_timeout_s")

    def _too_long(self, client: _Client, max_line: int) -> str | None:
        with self._lock:
            self._counts["lines_too_long"] += 1
        log.debug("%s sent a line over %d bytes", client.peer, max_line)
        return self._send(client, Reply.error(f"line too long (max {max_line} bytes)"))

    def _run_line(self, client: _Client, session: Session, raw: bytes) -> str | None:
        """Answer one line as a busy connection (never dropped for a newcomer meanwhile). Returns a reason to end."""
        return self._busy(client, lambda: self._answer(client, session, raw))

    def _busy(self, client: _Client, work: Callable[[], str | None]) -> str | None:
        """Run `work` (which answers the client) unless the client was dropped; meanwhile it is never dropped, so
        only one thread ever writes to its socket."""
        with self._lock:
            if client.dropped.is_set():
                return "dropped to make room for a newcomer"
            client.busy = True
        try:
            return work()
        finally:
            with self._lock:
                client.busy = False
                client.last_command = time.monotonic()

    def _answer(self, client: _Client, session: Session, raw: bytes) -> str | None:
        """Run one line and send its reply. Returns a reason when the connection must end."""
        raw = raw.rstrip(b"\r")
        max_line = self._cfg.max_line_bytes
        if len(raw) > max_line:
            return self._too_long(client, max_line)
        if not raw.strip():
            return None  # a blank line is no command (an interactive user pressing enter)
        line: str | None = None  # stays None for a line that is not UTF-8
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            reply = Reply.error("command is not valid UTF-8 text")
        else:
            line = text
            failures, authorized = session.auth_failures, session.authorized
            reply = self._registry.dispatch(text, session)
            if session.auth_failures > failures:
                end = self._wrong_token(client, session)
                if end:
                    if not client.dropped.is_set():
                        self._send(client, Reply.error(f"wrong token; closing this connection after {session.auth_failures} wrong tokens"))
                    return end
            elif session.authorized and not authorized:
                with self._lock:
                    self._ip_failures.pop(client.ip, None)
        with self._lock:
            self._counts["commands_served"] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s -> %s", client.peer, _loggable(line), reply.first_line()[:120])
        return self._send(client, reply)

    def _wrong_token(self, client: _Client, session: Session) -> str | None:
        """Count, log and wait out a wrong token. Returns a reason when the connection must end."""
        now = time.monotonic()
        with self._lock:
            self._counts["token_failures"] += 1
            count, last = self._ip_failures.get(client.ip, (0, now))
            count = 1 if now - last > _TOKEN_MEMORY_S else count + 1
            self._ip_failures[client.ip] = (count, now)
            if len(self._ip_failures) > _TOKEN_MEMORY_ADDRESSES:
                del self._ip_failures[min(self._ip_failures, key=lambda ip: self._ip_failures[ip][1])]
            client.penalised = True
        self._token_log.log(
            logging.WARNING,
            f"token {client.ip}",
            "wrong token from %s (%d on this connection, %d from %s in the last %.0f s)",
            client.peer,
            session.auth_failures,
            count,
            client.ip,
            _TOKEN_MEMORY_S,
        )
        n = min(max(session.auth_failures, count), 16)
        deadline = now + min(_TOKEN_DELAY_S * 2 ** (n - 1), _MAX_TOKEN_DELAY_S)
        try:
            while not self._stop.is_set() and not client.dropped.is_set() and (left := deadline - time.monotonic()) > 0:
                client.dropped.wait(min(left, 0.25))
        finally:
            with self._lock:
                client.penalised = False
        if client.dropped.is_set():
            return "dropped to make room for a newcomer"
        if self._stop.is_set():
            return "server stopping"
        if session.auth_failures >= _MAX_TOKEN_FAILURES:
            with self._lock:
                self._counts["token_disconnects"] += 1
            return f"{session.auth_failures} wrong tokens"
        return None

    def _send(self, client: _Client, reply: Reply) -> str | None:
        """Write a reply (and its stream, if any). Returns a reason when the connection must end."""
        try:
            head = reply.encode()
        except Exception as exc:  # a body json cannot encode (a handler bug): still answer
            self._status.error(f"reply to {client.peer} could not be encoded", exc)
            _close_stream(reply.stream)
            reply = Reply.error("internal error: the reply could not be encoded")
            head = reply.encode()
        try:
            client.sock.settimeout(self._send_timeout_s)
            client.sock.sendall(head)
        except TimeoutError:
            _close_stream(reply.stream)
            return self._dropped_slow(client)
        except OSError as exc:
            _close_stream(reply.stream)
            return f"write failed: {exc.strerror or exc}"
        if reply.stream is not None:
            return self._send_stream(client, reply.stream)
        return None

    def _send_stream(self, client: _Client, stream: Iterator[bytes]) -> str | None:
        chunks = iter(stream)
        try:
            while True:
                if self._stop.is_set():
                    return "server stopping"
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return None
                except Exception as exc:
                    # Mid-stream there is no way to say ERR in the binary framing; closing tells the client.
                    with self._lock:
                        self._counts["stream_errors"] += 1
                    self._status.error(f"stream to {client.peer} failed", exc)
                    return "stream failed"
                try:
                    client.sock.sendall(chunk)
                except TimeoutError:
                    return self._dropped_slow(client)
                except OSError as exc:
                    return f"write failed: {exc.strerror or exc}"
        finally:
            _close_stream(stream)

    def _dropped_slow(self, client: _Client) -> str:
        with self._lock:
            self._counts["dropped_slow"] += 1
        log.info("dropped command connection from %s: it did not read its reply within %g s", client.peer, self._send_timeout_s)
        return "not reading its replies"


# -- helpers of the accept loop


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


def _registered(selector: selectors.BaseSelector, sock: socket.socket) -> bool:
    try:
        selector.get_key(sock)
        return True
    except KeyError:
        return False


def _drain(selector: selectors.BaseSelector, lingering: dict[socket.socket, float], sock: socket.socket) -> None:
    try:
        if sock.recv(_RECV_BYTES):
            return  # more input to swallow; wait for EOF or the deadline
    except BlockingIOError:
        return
    except OSError:
        pass
    _forget(selector, lingering, sock)


def _forget(selector: selectors.BaseSelector, lingering: dict[socket.socket, float], sock: socket.socket) -> None:
    lingering.pop(sock, None)
    try:
        selector.unregister(sock)
    except (KeyError, ValueError):
        pass
    sock.close()


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


def listen_socket(bind: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on bind:port (IPv4 or IPv6 as the address is). Raises OSError."""
    infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
