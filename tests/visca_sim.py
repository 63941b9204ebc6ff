"""A VISCA PTZ camera on loopback, for the tests and the bench: raw VISCA over TCP and Sony's VISCA over IP (UDP).

Written from the protocol, not from picamd's client (it shares no code with
daemon/ptz), and checked against an independent client (the PyPI
`visca-over-ip` library) in tests/test_ptz_visca.py.

Behaviour, byte for byte:
- a command is acknowledged `90 4y FF` on a free socket y (1 or 2) and, for a
  movement (preset recall, absolute pan-tilt, home, zoom), completed
  `90 5y FF` after `move_time_s`; instant commands (preset set, stop) are
  acknowledged and completed at once; IF_Clear is completed without an ACK;
- a new movement cancels the one in progress (`90 6y 04 FF` on its socket);
  pan-tilt stop does too; both sockets busy answers `90 60 03 FF`;
- inquiries are answered at once: Pan-tiltPosInq `90 50 0p 0p 0p 0p 0q 0q 0q 0q FF`,
  CAM_ZoomPosInq `90 50 0p 0q 0r 0s FF`;
- an unknown packet or a preset above `preset_max` is a syntax error `90 60 02 FF`;
- over IP every reply carries the request's sequence number in a 0x0111
  datagram; a control RESET (0x0200, payload 01) is answered 0x0201 01; a
  request repeating the last sequence number is answered again from memory
  (not acted on twice); a lower one gets the control error 0F 01.

Faults a test switches on (`Faults`): an error reply for chosen presets
(instead of the ACK, or after it), silence, no completion, garbage instead of
a reply, a dropped TCP connection, wrong sequence numbers, lost replies.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field

NOT_EXECUTABLE = 0x41
SYNTAX = 0x02
BUFFER_FULL = 0x03
CANCELLED = 0x04
NO_SOCKET = 0x05


@dataclass
class Faults:
    preset_errors: dict[int, int] = field(default_factory=dict)  # recall of preset -> error code
    error_after_ack: bool = False  # the error comes in place of the completion (else in place of the ACK)
    silent: bool = False  # nothing is answered
    no_completion: bool = False  # movements are acknowledged and never completed
    garbage: int = 0  # this many next replies are replaced by garbage
    drop_connection: int = 0  # this many next TCP commands close the connection instead of an answer
    wrong_sequence: bool = False  # over IP: replies carry a sequence number off by 7
    lose_replies: int = 0  # this many next requests get no reply (but are acted on)
    buffer_full: int = 0  # this many next commands are answered `90 60 03 FF` (command buffer full)


@dataclass
class _Move:
    socket: int
    reply_to: object  # a TCP handler, or ("udp", address, seq)
    target: tuple[int, int, int]
    preset: int | None
    timer: threading.Timer | None = None
    done: bool = False


class ViscaCamera:
    """The camera's state, shared by both transports."""

    def __init__(self, move_time_s: float = 0.3, preset_max: int = 254, address: int = 1) -> None:
        self.move_time_s = move_time_s
        self.preset_max = preset_max
        self.address = address
        self.faults = Faults()
        self.lock = threading.RLock()
        self.pan = self.tilt = self.zoom = 0
        self.presets: dict[int, tuple[int, int, int]] = {}
        self.preset: int | None = None  # the preset the camera stands at (None: elsewhere, or moving)
        self.moving = False
        self.arrived_mono = time.monotonic()  # when the camera last stopped
        self.moves: list[_Move | None] = [None, None, None]  # index = socket number (1, 2)
        self.log: list[tuple[str, bytes]] = []  # (transport, packet) of every request
        self.executed: list[str] = []  # what was acted on: "recall 3", "set 2", ...
        self.changed = threading.Condition(self.lock)
        self.tcp = _TcpServer(self)
        self.udp = _UdpServer(self)

    # -- lifecycle
    def start(self, host: str = "127.0.0.1", tcp_port: int = 0, udp_port: int = 0, reuse_udp: bool = False) -> ViscaCamera:
        self.tcp.start(host, tcp_port)
        self.udp.start(host, udp_port, reuse_udp)
        return self

    def stop(self) -> None:
        with self.lock:
            for move in self.moves:
                if move is not None and move.timer is not None:
                    move.timer.cancel()
        self.tcp.stop()
        self.udp.stop()

    @property
    def tcp_port(self) -> int:
        return self.tcp.port

    @property
    def udp_port(self) -> int:
        return self.udp.port

    def view(self) -> tuple[int | None, bool, float]:
        """(the preset the camera shows, whether it is moving, monotonic time it last stopped)."""
        with self.lock:
            return self.preset, self.moving, self.arrived_mono

    def wait_executed(self, what: str, timeout: float = 5.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: what in self.executed, timeout)

    # -- replies
    def _reply_byte(self) -> int:
        return (self.address + 8) << 4

    def ack(self, sock: int) -> bytes:
        return bytes([self._reply_byte(), 0x40 | sock, 0xFF])

    def completion(self, sock: int, data: bytes = b"") -> bytes:
        return bytes([self._reply_byte(), 0x50 | sock]) + data + b"\xff"

    def error(self, sock: int, code: int) -> bytes:
        return bytes([self._reply_byte(), 0x60 | sock, code, 0xFF])

    # -- one request: returns the replies to send now; later ones go through `send_later`
    def handle(self, transport: str, packet: bytes, reply_to: object) -> list[bytes]:
        with self.lock:
            self.log.append((transport, packet))
            f = self.faults
            if f.silent:
                return []
            if len(packet) < 3 or packet[-1] != 0xFF or packet[0] >> 4 != 8:
                return [self.error(0, SYNTAX)]
            if packet[0] & 0x0F != self.address and packet[0] != 0x88:
                return []  # for another camera on the chain
            body = packet[1:-1]
            if f.buffer_full > 0 and body[:1] == b"\x01":
                f.buffer_full -= 1
                return [self.error(0, BUFFER_FULL)]
            return self._execute(body, reply_to)

    def _execute(self, body: bytes, reply_to: object) -> list[bytes]:
        if len(body) == 1 and body[0] >> 4 == 2:  # cancel socket y
            y = body[0] & 0x0F
            move = self.moves[y] if y in (1, 2) else None
            if move is None or move.done:
                return [self.error(y, NO_SOCKET)]
            self._cancel(move)
            return []
        if body == b"\x01\x00\x01":
            self.executed.append("if_clear")
            return [self.completion(0)]
        if body == b"\x09\x06\x12":
            return [self.completion(0, _nibbles(self.pan) + _nibbles(self.tilt))]
        if body == b"\x09\x04\x47":
            return [self.completion(0, _nibbles(self.zoom))]
        if len(body) == 5 and body[:3] == b"\x01\x04\x3f" and body[3] in (1, 2):
            number = body[4]
            if number > self.preset_max:
                return [self.error(0, SYNTAX)]
            if body[3] == 1:
                self.presets[number] = (self.pan, self.tilt, self.zoom)
                self.preset = number
                self._note(f"set {number}")
                return self._instant()
            code = self.faults.preset_errors.get(number)
            if code is not None and not self.faults.error_after_ack:
                self._note(f"refused {number}")
                return [self.error(1, code)]
            target = self.presets.get(number, (number * 1000, -number * 100, number * 500))
            return self._start_move(target, number, reply_to, error=code)
        if len(body) == 13 and body[:3] == b"\x01\x06\x02" and all(b <= 0x0F for b in body[5:]):
            pan, tilt = _from_nibbles(body[5:9]), _from_nibbles(body[9:13])
            return self._start_move((pan, tilt, self.zoom), None, reply_to)
        if body == b"\x01\x06\x04":
            return self._start_move((0, 0, self.zoom), None, reply_to)
        if len(body) == 7 and body[:3] == b"\x01\x06\x01" and body[5:] == b"\x03\x03":
            for move in self.moves:
                if move is not None and not move.done:
                    self._cancel(move)
            self._note("stop")
            return self._instant()
        if len(body) == 7 and body[:3] == b"\x01\x04\x47" and all(b <= 0x0F for b in body[3:]):
            return self._start_move((self.pan, self.tilt, _from_nibbles(body[3:], signed=False)), None, reply_to)
        return [self.error(0, SYNTAX)]

    def _free_socket(self) -> int | None:
        return next((y for y in (1, 2) if self.moves[y] is None or self.moves[y].done), None)  # type: ignore[union-attr]

    def _instant(self) -> list[bytes]:
        y = self._free_socket()
        if y is None:
            return [self.error(0, BUFFER_FULL)]
        return [self.ack(y), self.completion(y)]

    def _start_move(self, target: tuple[int, int, int], preset: int | None, reply_to: object, error: int | None = None) -> list[bytes]:
        for move in self.moves:  # a new movement replaces the one in progress
            if move is not None and not move.done:
                self._cancel(move)
        y = self._free_socket()
        if y is None:
            return [self.error(0, BUFFER_FULL)]
        move = _Move(y, reply_to, target, preset)
        self.moves[y] = move
        self.moving = True
        self.preset = None
        self._note(f"move {preset if preset is not None else target}")
        if not self.faults.no_completion:
            move.timer = threading.Timer(self.move_time_s, self._arrive, args=(move, error))
            move.timer.daemon = True
            move.timer.start()
        return [self.ack(y)]

    def _arrive(self, move: _Move, error: int | None) -> None:
        with self.lock:
            if move.done:
                return
            move.done = True
            self.moving = False
            self.arrived_mono = time.monotonic()
            if error is not None:
                self._note(f"refused {move.preset}")
                reply = self.error(move.socket, error)
            else:
                self.pan, self.tilt, self.zoom = move.target
                self.preset = move.preset
                self._note(f"recall {move.preset}" if move.preset is not None else f"at {move.target}")
                reply = self.completion(move.socket)
        self.send_later(move.reply_to, reply)

    def _cancel(self, move: _Move) -> None:
        move.done = True
        if move.timer is not None:
            move.timer.cancel()
        self.moving = False
        self.arrived_mono = time.monotonic()
        self.send_later(move.reply_to, self.error(move.socket, CANCELLED))

    def _note(self, what: str) -> None:
        self.executed.append(what)
        self.changed.notify_all()

    def send_later(self, reply_to: object, packet: bytes) -> None:
        if isinstance(reply_to, _TcpHandler):
            reply_to.send([packet])
        elif isinstance(reply_to, tuple):
            _, address, seq = reply_to
            self.udp.send(address, seq, [packet])


def _nibbles(value: int, count: int = 4) -> bytes:
    value &= (1 << (4 * count)) - 1
    return bytes((value >> (4 * k)) & 0xF for k in reversed(range(count)))


def _from_nibbles(data: bytes, signed: bool = True) -> int:
    value = 0
    for b in data:
        value = value * 16 + b
    if signed and value >= 1 << (4 * len(data) - 1):
        value -= 1 << (4 * len(data))
    return value


def _take_fault(camera: ViscaCamera, name: str) -> bool:
    with camera.lock:
        left = getattr(camera.faults, name)
        if left > 0:
            setattr(camera.faults, name, left - 1)
            return True
        return False


GARBAGE = bytes(range(0x10, 0x24))  # 20 bytes, no terminator: no VISCA reply looks like this


# --- TCP ----------------------------------------------------------------------------------------


class _TcpHandler(socketserver.BaseRequestHandler):
    camera: ViscaCamera

    def setup(self) -> None:
        self.send_lock = threading.Lock()
        self.closed = False
        self.server.handlers.append(self)  # type: ignore[attr-defined]

    def send(self, packets: list[bytes]) -> None:
        cam = self.server.camera  # type: ignore[attr-defined]
        with self.send_lock:
            if self.closed:
                return
            for packet in packets:
                out = GARBAGE if _take_fault(cam, "garbage") else packet
                try:
                    self.request.sendall(out)
                except OSError:
                    self.closed = True
                    return

    def handle(self) -> None:
        cam: ViscaCamera = self.server.camera  # type: ignore[attr-defined]
        buf = bytearray()
        while True:
            try:
                data = self.request.recv(1024)
            except OSError:
                break
            if not data:
                break
            buf += data
            while (end := buf.find(0xFF)) >= 0:
                packet = bytes(buf[: end + 1])
                del buf[: end + 1]
                if _take_fault(cam, "drop_connection"):
                    cam.log.append(("tcp", packet))
                    self._drop()
                    return
                replies = cam.handle("tcp", packet, self)
                if _take_fault(cam, "lose_replies"):
                    continue
                self.send(replies)

    def _drop(self) -> None:
        with self.send_lock:
            self.closed = True
            try:
                self.request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def finish(self) -> None:
        with self.send_lock:
            self.closed = True


class _TcpServer:
    def __init__(self, camera: ViscaCamera) -> None:
        self.camera = camera
        self.server: socketserver.ThreadingTCPServer | None = None
        self.port = 0

    def start(self, host: str, port: int) -> None:
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer((host, port), _TcpHandler, bind_and_activate=True)
        server.daemon_threads = True
        server.camera = self.camera  # type: ignore[attr-defined]
        server.handlers = []  # type: ignore[attr-defined]
        self.server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="visca-sim-tcp", daemon=True).start()

    def drop_all(self) -> None:
        """Close every open connection (the camera rebooting)."""
        if self.server is not None:
            for handler in list(self.server.handlers):  # type: ignore[attr-defined]
                handler._drop()

    def stop(self) -> None:
        if self.server is not None:
            self.drop_all()
            self.server.shutdown()
            self.server.server_close()


# --- UDP (VISCA over IP) ------------------------------------------------------------------------


class _UdpServer:
    def __init__(self, camera: ViscaCamera) -> None:
        self.camera = camera
        self.sock: socket.socket | None = None
        self.port = 0
        self.last_seq: int | None = None
        self.answers: dict[int, list[bytes]] = {}  # sequence number -> replies sent for it (for resends)
        self._stop = threading.Event()

    def start(self, host: str, port: int, reuse: bool) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.settimeout(0.1)
        self.sock = sock
        self.port = sock.getsockname()[1]
        threading.Thread(target=self._run, name="visca-sim-udp", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self.sock is not None:
            self.sock.close()

    def send(self, address: tuple[str, int], seq: int, packets: list[bytes], ptype: int = 0x0111) -> None:
        cam = self.camera
        sock = self.sock
        if sock is None:
            return
        for packet in packets:
            if ptype == 0x0111:
                self.answers.setdefault(seq, []).append(packet)
            if _take_fault(cam, "garbage"):
                datagram = b"\x99\x99" + GARBAGE
            else:
                shown_seq = (seq + 7) & 0xFFFFFFFF if cam.faults.wrong_sequence else seq
                datagram = ptype.to_bytes(2, "big") + len(packet).to_bytes(2, "big") + shown_seq.to_bytes(4, "big") + packet
            try:
                sock.sendto(datagram, address)
            except OSError:
                return

    def _run(self) -> None:
        cam = self.camera
        while not self._stop.is_set():
            try:
                datagram, address = self.sock.recvfrom(2048)  # type: ignore[union-attr]
            except TimeoutError:
                continue
            except OSError:
                return
            if len(datagram) < 9:
                continue
            ptype = int.from_bytes(datagram[0:2], "big")
            length = int.from_bytes(datagram[2:4], "big")
            seq = int.from_bytes(datagram[4:8], "big")
            payload = datagram[8:]
            if cam.faults.silent:
                cam.log.append(("udp-ignored", payload))
                continue
            if length != len(payload):
                self.send(address, seq, [b"\x0f\x02"], ptype=0x0200)
                continue
            if ptype == 0x0200:
                cam.log.append(("udp-control", payload))
                if payload == b"\x01":
                    self.last_seq = None
                    self.answers.clear()
                    self.send(address, seq, [b"\x01"], ptype=0x0201)
                continue
            if ptype not in (0x0100, 0x0110):
                self.send(address, seq, [b"\x0f\x02"], ptype=0x0200)
                continue
            if self.last_seq is not None and seq == self.last_seq and seq in self.answers:
                cam.log.append(("udp-resend", payload))
                self.send(address, seq, list(self.answers.pop(seq)))  # answered again, not acted on twice
                continue
            if self.last_seq is not None and seq < self.last_seq:
                cam.log.append(("udp-stale", payload))
                self.send(address, seq, [b"\x0f\x01"], ptype=0x0200)
                continue
            self.last_seq = seq
            self.answers.pop(seq, None)
            replies = cam.handle("udp", payload, ("udp", address, seq))
            if _take_fault(cam, "lose_replies"):
                for packet in replies:
                    self.answers.setdefault(seq, []).append(packet)
                continue
            self.send(address, seq, replies)
