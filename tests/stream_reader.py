"""Reading /stream raw in tests: the body as it arrives, split into its parts by Content-Length (independently of
the daemon's writer and the page's reader)."""

from __future__ import annotations

import socket


def stream_bytes(port: int, parts: int = 4) -> bytes:
    """The raw body of /stream until `parts` whole parts have arrived (the response head removed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            assert chunk, "the stream ended early"
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and len(split_parts(body)) >= parts:
                assert head.startswith(b"HTTP/1.0 200") and b"boundary=frame" in head
                return body


def split_parts(body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Whole parts of a multipart/x-mixed-replace body: (headers with names in lower case, payload)."""
    parts: list[tuple[dict[str, str], bytes]] = []
    pos = 0
    while True:
        start = body.find(b"--frame\r\n", pos)
        end = body.find(b"\r\n\r\n", start)
        if start < 0 or end < 0:
            return parts
        headers: dict[str, str] = {}
        for line in body[start + 9 : end].decode("ascii").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        if len(body) < end + 4 + length:
            return parts
        parts.append((headers, body[end + 4 : end + 4 + length]))
        pos = end + 4 + length
