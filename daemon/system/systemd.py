"""sd_notify without libsystemd: readiness, status text and watchdog pings for `Type=notify`.

systemd passes the socket in NOTIFY_SOCKET (a path, or an abstract socket
name starting with '@'); each message is one datagram of `KEY=value` lines.
Outside systemd every call is a silent no-op, and no call ever raises: a
notification that cannot be sent must not take the daemon down.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger("picamd.systemd")


class SystemdNotifier:
    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._failed_once = False

    @property
    def enabled(self) -> bool:
        """True when started by systemd with a notify socket."""
        return self._address is not None

    def ready(self) -> bool:
        """Startup is done: systemd considers the service started (Type=notify)."""
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """One line shown by `systemctl status picamd`."""
        return self.notify("STATUS=" + " ".join(str(text).split()))

    def watchdog(self) -> bool:
        """Keep-alive ping; send it at least every `watchdog_interval() / 2` seconds."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds when systemd expects pings from this process, else None."""
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None  # the variables were meant for another process (our parent, say)
            except ValueError:
                return None
        return usec / 1_000_000

    def notify(self, message: str) -> bool:
        """Send one datagram. Returns whether it was sent; never raises."""
        if self._address is None:
            return False
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(message.encode("utf-8", "replace"), self._address)
            except OSError as exc:
                self._drop_socket()
                if not self._failed_once:
                    log.warning("cannot notify systemd at %r: %s", self._address, exc)
                    self._failed_once = True
                return False
            if self._failed_once:
                log.info("notifying systemd works again")
                self._failed_once = False
            return True

    def close(self) -> None:
        with self._lock:
            self._drop_socket()

    def _drop_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None


def _socket_address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    log.warning("ignoring NOTIFY_SOCKET %r: neither a path nor an abstract socket name", value)
    return None
