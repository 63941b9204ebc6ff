"""The checks config keys use to refuse or normalise a value (`Key.check`): each returns the value or raises ValueError(reason)."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
from urllib.parse import urlsplit


def check_networks(value: list) -> list:
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_network(str(item), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not a network (like 192.168.0.0/16)") from None
    return out


def check_formats(value: list) -> list:
    allowed = ("jpg", "png", "npy")
    out = []
    for item in value:
        f = str(item).lower().lstrip(".")
        f = "jpg" if f == "jpeg" else f
        if f not in allowed:
            raise ValueError(f"format {item!r} is not one of {', '.join(allowed)}")
        out.append(f)
    if not out:
        raise ValueError("needs at least one format")
    return out


def parse_downscale(value: str) -> tuple[str, float, float]:
    """'256x192' -> ('size', 256, 192); '4' or '0.25' -> ('factor', f, f) with f the scale (0.25)."""
    text = str(value).strip().lower()
    if "x" in text:
        w, _, h = text.partition("x")
        try:
            wi, hi = int(w), int(h)
        except ValueError:
            raise ValueError("must be WIDTHxHEIGHT like 256x192, or a factor like 4 or 0.25") from None
        if not (16 <= wi <= 8192 and 16 <= hi <= 8192):
            raise ValueError("width and height must be 16..8192")
        return ("size", float(wi), float(hi))
    try:
        f = float(text)
    except ValueError:
        raise ValueError("must be WIDTHxHEIGHT like 256x192, or a factor like 4 or 0.25") from None
    if f <= 0 or not math.isfinite(f):
        raise ValueError("factor must be positive")
    scale = 1.0 / f if f >= 1 else f  # '4' means a quarter of the size; '0.25' means the same
    return ("factor", scale, scale)


def ring_frame_size(downscale: str, frame_w: int, frame_h: int) -> tuple[int, int]:
    """The ring's frame size (width, height) for `ring.downscale` and the camera's frame size."""
    kind, a, b = parse_downscale(downscale)
    if kind == "size":
        return int(a), int(b)
    return max(16, round(frame_w * a)), max(16, round(frame_h * b))


def check_downscale(value: str) -> str:
    parse_downscale(value)
    return str(value).strip().lower()


def check_camera_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise ValueError("must be 1 to 64 letters (a-z, A-Z), digits, - or _ (it becomes an MQTT topic level)")
    return value


def host_name() -> str:
    """The host name as a valid camera.name: its first label, other characters as -, picamd when none is left."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:64]
    return name if name.strip("-") else "picamd"


def check_detect_classes(value: list) -> list:
    out: list[str | int] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise ValueError(f"{item!r} is not a class name or id")
        if isinstance(item, int) or str(item).strip().isdigit():
            if int(item) < 0:
                raise ValueError(f"class id {item!r} must be >= 0")
            out.append(int(item))
        elif str(item).strip():
            out.append(str(item).strip())
        else:
            raise ValueError("an empty class name")
    return out


def check_detect_zone(value: list) -> list:
    """[] (the whole frame) or [x, y, w, h] in full-frame pixels, or fractions when every number is <= 1."""
    if not value:
        return []
    if len(value) != 4:
        raise ValueError("must be [] or [x, y, w, h] (pixels of the full frame, or fractions 0..1)")
    try:
        nums = [float(v) for v in value if not isinstance(v, bool)]
    except (TypeError, ValueError):
        raise ValueError("x, y, w, h must be numbers") from None
    if len(nums) != 4 or not all(math.isfinite(v) for v in nums):
        raise ValueError("x, y, w, h must be finite numbers")
    x, y, w, h = nums
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ValueError("x and y must be >= 0, w and h > 0")
    if all(v <= 1 for v in nums) and (x + w > 1.0001 or y + h > 1.0001):
        raise ValueError("as fractions, x + w and y + h must be <= 1")
    return [int(v) if v.is_integer() and v > 1 else v for v in nums]


def check_token(value: str) -> str:
    """A token is one word: `token SECRET` takes one, so a token with a space could never be given (and locks out)."""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must be one word of printable characters (no spaces): `token SECRET` takes one word")
    return value


def check_bind(value: str) -> str:
    """An IP address, or a name that resolves to one here (localhost, this host's name); never a made-up address."""
    text = value.strip()
    if not text:
        raise ValueError("must be an IP address to listen on (0.0.0.0 for every IPv4 address, 127.0.0.1 for this machine only)")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", text) or ":" in text:
        raise ValueError("is not an IP address")
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?", text):
        raise ValueError("is neither an IP address nor a host name")
    try:
        socket.getaddrinfo(text, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ValueError("is not an IP address and does not resolve to one on this machine") from None
    return text


def check_http_url(value: str) -> str:
    """ "" (off) or http(s)://host[:port]/...; anything else would fail on every event."""
    text = value.strip()
    if not text:
        return ""
    if len(text) > 2048:
        raise ValueError(f"is {len(text)} characters long; a URL may have at most 2048")
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or not port_ok or any(c.isspace() for c in text):
        raise ValueError('must be an http:// or https:// URL with a host (or "" to turn it off)')
    return text


def check_roots(value: list) -> list:
    out = []
    for item in value:
        text = str(item).strip()
        if not text or not os.path.isabs(text):
            raise ValueError(f"{item!r} is not an absolute folder (like /srv/picamd)")
        out.append(os.path.normpath(text))
    return out
