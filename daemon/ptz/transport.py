"""The two ways VISCA reaches a camera over a network: raw packets over TCP, and Sony's VISCA over IP (UDP).

`visca-tcp` (port 5678 by default, as PTZOptics-style cameras and serial
bridges use): the bare VISCA packets in a byte stream, one FF-terminated
packet after another; replies carry no sequence number, so the client matches
them by kind and socket.

`visca-udp` (port 52381, Sony's VISCA over IP): each datagram is an 8-byte
header and one VISCA packet. The header is the payload type (0x0100 command,
0x0110 inquiry, 0x0111 reply, 0x0200 control command, 0x0201 control reply),
the payload length and a sequence number that the camera copies into its
replies, which is how replies are matched to requests. A control command
with payload 0x01 resets the camera's sequence counter (answered by a control
reply 0x01); a control message 0x0F 0x01 from the camera reports a sequence
number it did not expect, 0x0F 0x02 a message it could not read.

A transport only moves bytes: `receive()` returns what arrived (or nothing
after its timeout) and raises `LinkDown` when the connection is gone and
`ViscaProtocolError` when the bytes cannot be VISCA. Retries, timeouts and
matching are the client's (`client.py`).
"""

from __future__ import annotations

import socket
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass

from .visca import ViscaProtocolError, split_packets

TCP_PORT = 5678
UDP_PORT = 52381

TYPE_COMMAND = 0x0100
TYPE_INQUIRY = 0x0110
TYPE_REPLY = 0x0111
TYPE_CONTROL = 0x0200
TYPE_CONTROL_REPLY = 0x0201
HEADER = struct.Struct(">HHI")  # payload type, payload length, sequence number
SEQUENCE_MAX = 0xFFFFFFFF
RESET_PAYLOAD = b"\x01"
SEQUENCE_ERROR = b"\x0f\x01"
MESSAGE_ERROR = b"\x0f\x02"


class LinkDown(ConnectionError):
    """The connection to the camera is gone (closed, reset, refused); the reason is one line."""


@dataclass(frozen=True)
class Incoming:
    """One thing the camera sent: a VISCA reply packet, or (over IP) a control payload."""

    payload: bytes
    seq: int | None = None  # over IP: the sequence number of the request this answers
    control: bool = False  # a control reply or control error (over IP only)


def pack_ip(payload_type: int, seq: int, payload: bytes) -> bytes:
    """One VISCA over IP datagram."""
    if not 1 <= len(payload) <= 16:
        raise ValueError(f"a VISCA over IP payload is 1..16 bytes, not {len(payload)}")
    return HEADER.pack(payload_type, len(payload), seq & SEQUENCE_MAX) + payload


def unpack_ip(datagram: bytes) -> tuple[int, int, bytes]:
    """(payload type, sequence number, payload) of a datagram; ViscaProtocolError when it is not VISCA over IP."""
    shown = datagram[:24].hex(" ")
    if len(datagram) < HEADER.size + 1:
        raise ViscaProtocolError(f"datagram of {len(datagram)} bytes is too short for VISCA over IP: {shown}")
    ptype, length, seq = HEADER.unpack_from(datagram)
    payload = datagram[HEADER.size :]
    if ptype not in (TYPE_COMMAND, TYPE_INQUIRY, TYPE_REPLY, TYPE_CONTROL, TYPE_CONTROL_REPLY, 0x0120):
        raise ViscaProtocolError(f"unknown VISCA over IP payload type 0x{ptype:04x}: {shown}")
    if length != len(payload):
        raise ViscaProtocolError(f"VISCA over IP header says {length} payload bytes, the datagram has {len(payload)}: {shown}")
    return ptype, seq, payload


class Transport(ABC):
    protocol = ""
    default_port = 0
    by_sequence = False  # replies carry the request's sequence number
    unopened = "not open"  # what sending or receiving says when there is no socket

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port or self.default_port
        self._sock: socket.socket | None = None

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol} {host}:{self.port}"

    @abstractmethod
    def open(self, timeout: float) -> None:
        """Connect; raises LinkDown with the reason."""

    @abstractmethod
    def close(self) -> None:
        """Close; wakes a `receive` in another thread soon."""

    @abstractmethod
    def send(self, packet: bytes, *, inquiry: bool = False, seq: int | None = None) -> None:
        """Send one VISCA packet (over IP wrapped with `seq`); raises LinkDown."""

    @abstractmethod
    def receive(self, timeout: float) -> list[Incoming]:
        """What arrived within `timeout` ([] when nothing); raises LinkDown or ViscaProtocolError."""

    def send_reset(self, seq: int) -> None:  # noqa: B027 - only the IP transport has something to do
        """Over IP: the control command that resets the camera's sequence counter. Nothing to do over TCP."""

    def _socket(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            raise LinkDown(f"{self.describe()}: {self.unopened}")
        return sock

    def _transmit(self, data: bytes) -> None:
        """All of `data` out of the socket (one datagram over UDP); raises LinkDown."""
        sock = self._socket()
        try:
            sock.sendall(data)
        except OSError as exc:
            raise LinkDown(f"{self.describe()}: sending failed: {_reason(exc)}") from None

    def _recv(self, size: int, timeout: float) -> bytes | None:
        """Up to `size` bytes, None when nothing came within `timeout`; raises LinkDown saying `_lost(exc)` when the socket fails."""
        sock = self._socket()
        try:
            sock.settimeout(timeout)
            return sock.recv(size)
        except TimeoutError:
            return None
        except OSError as exc:
            raise LinkDown(f"{self.describe()}: {self._lost(exc)}") from None

    def _lost(self, exc: OSError) -> str:
        return f"connection lost: {_reason(exc)}"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class TcpTransport(Transport):
    protocol = "visca-tcp"
    default_port = TCP_PORT
    unopened = "not connected"

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._buffer = bytearray()

    def open(self, timeout: float) -> None:
        self.close()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            raise LinkDown(f"cannot connect to {self.describe()}: {_reason(exc)}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._buffer.clear()
        self._sock = sock

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in recv at once
            except OSError:
                pass
            sock.close()

    def send(self, packet: bytes, *, inquiry: bool = False, seq: int | None = None) -> None:
        self._transmit(packet)

    def receive(self, timeout: float) -> list[Incoming]:
        data = self._recv(4096, timeout)
        if data is None:
            return []
        if not data:
            raise LinkDown(f"{self.describe()}: the camera closed the connection")
        self._buffer += data
        try:
            return [Incoming(p) for p in split_packets(self._buffer)]
        except ViscaProtocolError:
            self._buffer.clear()
            raise


class UdpTransport(Transport):
    protocol = "visca-udp"
    default_port = UDP_PORT
    by_sequence = True

    def open(self, timeout: float) -> None:
        self.close()
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
            family, _, _, _, address = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            # connect() on UDP: datagrams from anyone but the camera are dropped by the kernel, and an ICMP
            # "port unreachable" comes back as an error instead of silence.
            sock.connect(address)
        except OSError as exc:
            raise LinkDown(f"cannot reach {self.describe()}: {_reason(exc)}") from None
        self._sock = sock

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def send(self, packet: bytes, *, inquiry: bool = False, seq: int | None = None) -> None:
        self._transmit(pack_ip(TYPE_INQUIRY if inquiry else TYPE_COMMAND, seq or 0, packet))

    def send_reset(self, seq: int) -> None:
        self._transmit(pack_ip(TYPE_CONTROL, seq, RESET_PAYLOAD))

    def _lost(self, exc: OSError) -> str:
        if isinstance(exc, ConnectionRefusedError):
            return "nothing listens there (port unreachable)"
        return _reason(exc)

    def receive(self, timeout: float) -> list[Incoming]:
        datagram = self._recv(2048, timeout)
        if datagram is None:
            return []
        ptype, seq, payload = unpack_ip(datagram)
        if ptype in (TYPE_CONTROL, TYPE_CONTROL_REPLY):
            return [Incoming(payload, seq, control=True)]
        if ptype != TYPE_REPLY:
            raise ViscaProtocolError(f"the camera sent payload type 0x{ptype:04x}, expected a reply (0x0111)")
        return [Incoming(payload, seq)]


TRANSPORTS: dict[str, type[Transport]] = {t.protocol: t for t in (TcpTransport, UdpTransport)}


def make_transport(protocol: str, host: str, port: int) -> Transport:
    cls = TRANSPORTS.get(protocol)
    if cls is None:
        raise ValueError(f"unknown PTZ protocol {protocol!r} (known: {', '.join(TRANSPORTS)})")
    if not host.strip():
        raise ValueError("no camera host: set ptz.host")
    return cls(host.strip(), int(port))
