"""VISCA messages and replies: the bytes a PTZ camera takes and what it answers, with no I/O.

A command packet is `8x <body> FF` with x the camera address (1..7); the
camera answers from `(x + 8) << 4` (`90` for camera 1, and always `90` over
IP). A command is acknowledged (`90 4y FF`, y the socket, 1 or 2, that now
holds it) and later completed (`90 5y FF`) once the camera has done it (the
preset reached, the zoom set); an inquiry is answered at once with a
completion that carries the data (`90 50 ... FF`). Errors are `90 6y ee FF`:
ee names what went wrong (`ERRORS`), y the socket it concerns (0 when none).

Numbers travel as nibbles, one per byte (`0p 0q 0r 0s`): `nibbles()` and
`from_nibbles()` convert them. Every builder validates its arguments and says
what is wrong in one line; a camera that takes fewer presets or a smaller
range answers with an error reply, which the client reports by name.
"""

from __future__ import annotations

from dataclasses import dataclass

TERMINATOR = 0xFF
MAX_PACKET = 16  # VISCA packets are 3..16 bytes

ACK = "ack"
COMPLETION = "completion"
ERROR = "error"

#: Error codes of `x0 6y ee FF` replies.
ERRORS: dict[int, str] = {
    0x01: "message length error",
    0x02: "syntax error",
    0x03: "command buffer full",
    0x04: "command cancelled",
    0x05: "no socket",
    0x41: "command not executable",
}
BUFFER_FULL = 0x03
CANCELLED = 0x04

PRESET_MAX = 254  # 0xFF is the terminator; many cameras take fewer (their error reply says so)
SPEED_MAX = 24  # pan speed 0x01..0x18; tilt speeds above the camera's limit are refused by the camera
POSITION_MIN, POSITION_MAX = -32768, 32767  # pan and tilt: signed 16 bits in four nibbles
ZOOM_MAX = 0xFFFF


class ViscaFormatError(ValueError):
    """An argument that no VISCA message can carry (a preset of 300, a speed of 0)."""


class ViscaProtocolError(Exception):
    """Bytes from the camera that are not a VISCA reply."""


def nibbles(value: int, count: int = 4) -> bytes:
    """`value` as `count` bytes of one nibble each, most significant first (two's complement when negative)."""
    value &= (1 << (4 * count)) - 1
    return bytes((value >> (4 * (count - 1 - i))) & 0x0F for i in range(count))


def from_nibbles(data: bytes, signed: bool = False) -> int:
    """The inverse of `nibbles`: bytes `0p 0q ...` (high nibbles must be 0) as an integer."""
    if any(b & 0xF0 for b in data):
        raise ViscaProtocolError(f"expected nibbles (0x00..0x0F), got {data.hex(' ')}")
    value = 0
    for b in data:
        value = (value << 4) | b
    bits = 4 * len(data)
    if signed and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


@dataclass(frozen=True)
class Message:
    """One command or inquiry: `name` for logs and errors, `body` between the address byte and FF."""

    name: str
    body: bytes
    inquiry: bool = False
    waits: bool = True  # a command whose completion comes after a movement (False: only the ACK matters)

    def packet(self, address: int) -> bytes:
        check_address(address)
        return bytes([0x80 | address]) + self.body + bytes([TERMINATOR])


def check_address(address: int) -> int:
    if not isinstance(address, int) or isinstance(address, bool) or not 1 <= address <= 7:
        raise ViscaFormatError(f"camera address must be 1..7, not {address!r}")
    return address


def _int_in(name: str, value: int, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ViscaFormatError(f"{name} must be a whole number, not {value!r}")
    if not lo <= value <= hi:
        raise ViscaFormatError(f"{name} must be {lo}..{hi}, not {value}")
    return value


# --- commands ----------------------------------------------------------------------------------


def recall_preset(number: int) -> Message:
    """CAM_Memory Recall: 8x 01 04 3F 02 pp FF (the camera moves to the stored position)."""
    n = _int_in("preset", number, 0, PRESET_MAX)
    return Message(f"recall preset {n}", bytes([0x01, 0x04, 0x3F, 0x02, n]))


def set_preset(number: int) -> Message:
    """CAM_Memory Set: 8x 01 04 3F 01 pp FF (stores the current position)."""
    n = _int_in("preset", number, 0, PRESET_MAX)
    return Message(f"set preset {n}", bytes([0x01, 0x04, 0x3F, 0x01, n]))


def pan_tilt_absolute(pan: int, tilt: int, speed: int = SPEED_MAX) -> Message:
    """Pan-tiltDrive AbsolutePosition: 8x 01 06 02 VV WW 0Y 0Y 0Y 0Y 0Z 0Z 0Z 0Z FF."""
    _int_in("pan", pan, POSITION_MIN, POSITION_MAX)
    _int_in("tilt", tilt, POSITION_MIN, POSITION_MAX)
    s = _int_in("speed", speed, 1, SPEED_MAX)
    return Message(f"pan_tilt {pan} {tilt} speed {s}", bytes([0x01, 0x06, 0x02, s, s]) + nibbles(pan) + nibbles(tilt))


def home() -> Message:
    """Pan-tiltDrive Home: 8x 01 06 04 FF."""
    return Message("home", bytes([0x01, 0x06, 0x04]))


def stop(speed: int = 1) -> Message:
    """Pan-tiltDrive Stop: 8x 01 06 01 VV WW 03 03 FF (ends a drive; the camera completes it at once)."""
    s = _int_in("speed", speed, 1, SPEED_MAX)
    return Message("stop", bytes([0x01, 0x06, 0x01, s, s, 0x03, 0x03]), waits=False)


def zoom_direct(position: int) -> Message:
    """CAM_Zoom Direct: 8x 01 04 47 0p 0q 0r 0s FF."""
    z = _int_in("zoom", position, 0, ZOOM_MAX)
    return Message(f"zoom {z}", bytes([0x01, 0x04, 0x47]) + nibbles(z))


def if_clear() -> Message:
    """IF_Clear: 8x 01 00 01 FF (empties the camera's command buffers; answered by a completion only)."""
    return Message("interface clear", bytes([0x01, 0x00, 0x01]), waits=False)


# --- inquiries ---------------------------------------------------------------------------------


def pan_tilt_inquiry() -> Message:
    """Pan-tiltPosInq: 8x 09 06 12 FF -> y0 50 0p 0p 0p 0p 0q 0q 0q 0q FF."""
    return Message("pan-tilt position inquiry", bytes([0x09, 0x06, 0x12]), inquiry=True)


def zoom_inquiry() -> Message:
    """CAM_ZoomPosInq: 8x 09 04 47 FF -> y0 50 0p 0q 0r 0s FF."""
    return Message("zoom position inquiry", bytes([0x09, 0x04, 0x47]), inquiry=True)


def parse_pan_tilt(data: bytes) -> tuple[int, int]:
    """The data of a Pan-tiltPosInq answer (8 nibbles) as signed pan and tilt."""
    if len(data) != 8:
        raise ViscaProtocolError(f"pan-tilt position answer has {len(data)} data bytes, expected 8: {data.hex(' ')}")
    return from_nibbles(data[:4], signed=True), from_nibbles(data[4:], signed=True)


def parse_zoom(data: bytes) -> int:
    if len(data) != 4:
        raise ViscaProtocolError(f"zoom position answer has {len(data)} data bytes, expected 4: {data.hex(' ')}")
    return from_nibbles(data)


# --- replies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One parsed reply packet."""

    kind: str  # ACK, COMPLETION or ERROR
    address: int  # the camera's address (1..7) from the first byte
    socket: int  # y: the command socket the reply concerns (0: none, an inquiry answer)
    data: bytes = b""  # an inquiry answer's data between 5y and FF
    code: int | None = None  # the error code of an ERROR
    raw: bytes = b""

    @property
    def error_name(self) -> str:
        if self.code is None:
            return ""
        return ERRORS.get(self.code, f"error 0x{self.code:02x}")

    def describe(self) -> str:
        if self.kind == ERROR:
            return f"{self.error_name} (socket {self.socket})"
        return f"{self.kind} (socket {self.socket})" + (f" data {self.data.hex(' ')}" if self.data else "")


def reply_address_byte(address: int) -> int:
    """The first byte of a reply from camera `address`: (address + 8) << 4."""
    return (check_address(address) + 8) << 4


def parse_reply(packet: bytes) -> Reply:
    """Parse one FF-terminated reply; raises ViscaProtocolError naming what is wrong."""
    raw = bytes(packet)
    shown = raw[:24].hex(" ") + (" ..." if len(raw) > 24 else "")
    if len(raw) < 3 or raw[-1] != TERMINATOR:
        raise ViscaProtocolError(f"not a VISCA reply (too short or no FF terminator): {shown}")
    if len(raw) > MAX_PACKET:
        raise ViscaProtocolError(f"not a VISCA reply ({len(raw)} bytes, at most {MAX_PACKET}): {shown}")
    first = raw[0]
    if first & 0x0F or not 0x9 <= first >> 4 <= 0xF:
        raise ViscaProtocolError(f"not a VISCA reply (first byte 0x{first:02x} is no reply address): {shown}")
    address = (first >> 4) - 8
    if TERMINATOR in raw[1:-1]:
        raise ViscaProtocolError(f"not a VISCA reply (FF inside the packet): {shown}")
    status, socket = raw[1] >> 4, raw[1] & 0x0F
    if status == 0x4 and len(raw) == 3:
        return Reply(ACK, address, socket, raw=raw)
    if status == 0x5:
        return Reply(COMPLETION, address, socket, data=raw[2:-1], raw=raw)
    if status == 0x6 and len(raw) == 4:
        return Reply(ERROR, address, socket, code=raw[2], raw=raw)
    raise ViscaProtocolError(f"not a VISCA reply (unknown status byte 0x{raw[1]:02x}): {shown}")


def split_packets(buffer: bytearray) -> list[bytes]:
    """Take the complete FF-terminated packets off the front of a byte stream (TCP), leaving any partial one.

    Raises ViscaProtocolError when the stream holds more than a packet's worth of bytes without a terminator.
    """
    out: list[bytes] = []
    while True:
        end = buffer.find(TERMINATOR)
        if end < 0:
            if len(buffer) >= MAX_PACKET:
                shown = bytes(buffer[:24]).hex(" ")
                raise ViscaProtocolError(f"{len(buffer)} bytes without a VISCA terminator: {shown}")
            return out
        out.append(bytes(buffer[: end + 1]))
        del buffer[: end + 1]
