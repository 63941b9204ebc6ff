"""The TCP command port: its listening socket, the thread that accepts connections, connection limits, start and stop.

    echo "health" | nc raspberrypi 9999        # one command, then the client half-closes
    nc raspberrypi 9999                         # interactive: type commands, read replies

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
its own thread (`picamd-control-<n>`); what it reads and answers, and when it
ends: daemon/net/controlclient.py.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from typing import Any

from daemon.commands import Command, Registry, Reply
from daemon.config import Section
from daemon.core.repeat import RepeatedLog
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker
from daemon.net.allow import peer_allowed
from daemon.net.controlclient import ControlClient, TokenMemory, stay

__all__ = ["ControlServer", "listen_socket"]

log = logging.getLogger("picamd.control")

# How long a refused connection is drained before it is closed.
_LINGER_S = 1.0
# At most this many refused connections are drained at once; beyond that they are closed at once.
_MAX_LINGERING = 64
# How much of a refused connection's input one read swallows.
_DRAIN_BYTES = 65536


class ControlServer:
    """The command port. `start()` binds `control.bind:control.port`; `port` is the bound port."""

    def __init__(self, cfg: Section, registry: Registry, status: ComponentStatus, *, send_timeout_s: float = 10.0) -> None:
        # cfg, registry, status, send_timeout_s, lock, counts, tokens and stopping are what every connection uses (Owner).
        self.cfg = cfg
        self.registry = registry
        self.status = status
        self.send_timeout_s = send_timeout_s
        self._acceptor = Worker("control", self._serve, status=status, repeat=False)
        self._stop = self._acceptor.stopping
        self.lock = threading.Lock()  # guards _clients, counts and every client's busy, penalised and last_command
        self._listener: socket.socket | None = None
        self._port: int | None = None
        self._clients: dict[int, ControlClient] = {}
        self._next_number = 0
        self._refusals = RepeatedLog(log, max_keys=1000)  # one line per address and reason a minute, then a count
        self.counts = {
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
            "token_refused_unheard": 0,
        }
        self.tokens = TokenMemory()
        registry.register(
            Command(
                "stay",
                stay,
                "Keep this connection open until control.idle_timeout_s, "
                "for a program that sends its first command at once and holds the connection",
            )
        )

    # -- lifecycle
    @property
    def port(self) -> int | None:
        """The bound TCP port (useful when control.port is 0), or None while not listening."""
        return self._port

    @property
    def stopping(self) -> threading.Event:
        """Set once the port stops: the acceptor and every client thread watch it."""
        return self._stop

    def client_ended(self, client: ControlClient) -> None:
        """A connection has ended: it no longer counts towards control.max_clients."""
        with self.lock:
            self._clients.pop(client.number, None)

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
        with self.lock:
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
        with self.lock:
            counts = dict(self.counts)
            clients = len(self._clients)
        return {
            "listening": self._port is not None,
            "port": self._port,
            "clients": clients,
            "max_clients": self.cfg.max_clients,
            **counts,
            "refused": counts["refused_not_allowed"] + counts["refused_too_many"],
        }

    # -- accepting
    def _listen(self) -> str | None:
        """Bind and listen; returns why it failed, or None."""
        bind, port = self.cfg.bind, self.cfg.port
        try:
            sock = listen_socket(bind, port)
        except OSError as exc:
            return f"command port cannot listen on {bind}:{port}: {exc.strerror or exc}"
        self._listener = sock
        self._port = sock.getsockname()[1]
        self.status.recover()
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
                    self.status.error("command port accept loop failed", exc)
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
            self.status.degrade(f"cannot accept connections: {exc.strerror or exc}")
            self._stop.wait(0.5)
            return
        if not self.status.ok and self._listener is not None:
            self.status.recover()
        ip, port = addr[0], addr[1]
        if not peer_allowed(ip, self.cfg.allow):
            self._refuse(selector, lingering, sock, ip, f"not allowed from {ip}", "refused_not_allowed")
            return
        victim: ControlClient | None = None
        with self.lock:
            over = len(self._clients) >= self.cfg.max_clients
            if over:
                victim = self._victim()
                if victim is not None:
                    victim.dropped.set()  # from now on its own thread never writes to it again
                    self._clients.pop(victim.number, None)
                    self.counts["dropped_for_newcomer"] += 1
                    over = False
            if not over:
                self._next_number += 1
                client = ControlClient(self._next_number, sock, ip, port, self)
                self._clients[client.number] = client
                self.counts["connections_total"] += 1
        if victim is not None:
            self._drop_for_newcomer(victim, ip)
        if over:
            self._refuse(selector, lingering, sock, ip, "too many connections", "refused_too_many")
            return
        client.worker = Worker(f"control-{client.number}", client.serve, repeat=False)
        try:
            client.worker.start()
        except RuntimeError as exc:  # the system is out of threads
            with self.lock:
                self._clients.pop(client.number, None)
            self.status.error(f"cannot start a thread for {client.peer}", exc)
            client.close()

    def _victim(self) -> ControlClient | None:
        """The connection to drop for a newcomer (call with the lock held): one waiting out a wrong token, then the oldest
        that never sent a command (past its grace), then the one whose last command is oldest; never one running a command."""
        now = time.monotonic()
        grace = self.cfg.grace_s
        best: tuple[tuple[int, float], ControlClient] | None = None
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

    def _drop_for_newcomer(self, victim: ControlClient, newcomer: str) -> None:
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
        with self.lock:
            self.counts[counter] += 1
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


# -- helpers of the accept loop


def _registered(selector: selectors.BaseSelector, sock: socket.socket) -> bool:
    try:
        selector.get_key(sock)
        return True
    except KeyError:
        return False


def _drain(selector: selectors.BaseSelector, lingering: dict[socket.socket, float], sock: socket.socket) -> None:
    try:
        if sock.recv(_DRAIN_BYTES):
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
