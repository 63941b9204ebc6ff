#!/usr/bin/env python3
"""Save a short burst of frames from a picamd command port into a folder.

    python tools/shortstream.py raspberrypi 50                 # 50 frames into ./shortstream-YYYYmmdd-HHMMSS/
    python tools/shortstream.py raspberrypi:9999 20 --out burst --token SECRET

It sends `shortstream N` (after `token SECRET` when given), expects an `OK ...`
line, then reads frames framed as a 4-byte big-endian length followed by that
many bytes of JPEG, until a zero length. Each frame is written as
DIR/frame_0001.jpg, ... under a hidden temporary name first and renamed, so
a folder being synced never holds half a frame. Only the standard library is
used, so the script can be copied to any machine with Python 3.

Exit status: 0 when every frame arrived, 1 on any error (printed on stderr).
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_PORT = 9999
MAX_FRAME_BYTES = 64 * 2**20  # far above any JPEG a Pi camera makes; anything larger means the framing is lost
MAX_LINE_BYTES = 64 * 1024


class ShortStreamError(Exception):
    """Something went wrong; the message is printed as it is."""


def parse_address(text: str) -> tuple[str, int]:
    """'host', 'host:port', '[v6addr]:port' or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ShortStreamError(f"no host in {text!r}")
    if not port_text:
        return host, DEFAULT_PORT
    try:
        port = int(port_text)
    except ValueError:
        raise ShortStreamError(f"port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ShortStreamError(f"port {port} is out of range")
    return host, port


class _Reader:
    """Exact-size reads and line reads over a socket, with clear errors on a short read."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")

    def line(self) -> str:
        raw = self._file.readline(MAX_LINE_BYTES)
        if not raw:
            raise ShortStreamError("the server closed the connection without answering")
        if not raw.endswith(b"\n"):
            raise ShortStreamError("the server's answer line was cut off")
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    def reply(self) -> tuple[str, list[str]]:
        """A whole non-stream reply: the first line and the body lines up to the empty line."""
        first = self.line()
        body: list[str] = []
        while True:
            try:
                ln = self.line()
            except ShortStreamError:
                break  # a refusal is followed by a close rather than an empty line
            if not ln:
                break
            body.append(ln)
        return first, body

    def exact(self, n: int, what: str) -> bytes:
        data = self._file.read(n)
        if data is None or len(data) < n:
            got = 0 if not data else len(data)
            raise ShortStreamError(f"the connection ended in the middle of {what} ({got} of {n} bytes)")
        return data


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def fetch(
    host: str, port: int, count: int, out_dir: Path, token: str | None = None, timeout: float = 15.0, log=print
) -> tuple[int, int, float]:
    """Receive `count` frames into `out_dir`. Returns (frames, bytes, seconds)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise ShortStreamError(f"cannot connect to {host}:{port}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise ShortStreamError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    frames = total = 0
    started = time.monotonic()
    try:
        reader = _Reader(sock)
        if token:
            sock.sendall(f"token {token}\n".encode())
            first, _ = reader.reply()
            if not first.startswith("OK"):
                raise ShortStreamError(f"token refused: {first}")
        sock.sendall(f"shortstream {count}\n".encode())
        first = reader.line()
        if not first.startswith("OK"):
            raise ShortStreamError(first or "empty answer from the server")
        log(first)
        out_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        while True:
            (length,) = struct.unpack(">I", reader.exact(4, f"the length of frame {frames + 1}"))
            if length == 0:
                break
            if length > MAX_FRAME_BYTES:
                raise ShortStreamError(f"frame {frames + 1} claims {length} bytes: the stream is out of step")
            data = reader.exact(length, f"frame {frames + 1}")
            if not data.startswith(b"\xff\xd8"):
                raise ShortStreamError(f"frame {frames + 1} is not a JPEG (starts with {data[:4].hex()})")
            frames += 1
            total += length
            _write_atomic(out_dir / f"frame_{frames:04d}.jpg", data)
    except TimeoutError:
        raise ShortStreamError(f"the server sent nothing for {timeout:g} s (after {frames} frames)") from None
    except OSError as exc:
        raise ShortStreamError(f"connection to {host}:{port} failed after {frames} frames: {exc.strerror or exc}") from None
    finally:
        sock.close()
    return frames, total, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Save N frames of picamd's `shortstream` command as JPEG files.")
    parser.add_argument("address", metavar="HOST[:PORT]", help=f"the picamd command port (default port {DEFAULT_PORT})")
    parser.add_argument("count", metavar="N", type=int, help="how many frames")
    parser.add_argument("--out", metavar="DIR", help="folder for the frames (default shortstream-YYYYmmdd-HHMMSS)")
    parser.add_argument("--token", metavar="T", help="send `token T` first (when the daemon has control.token set)")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the server at any point (default 15)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("N must be at least 1")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    out_dir = Path(args.out or time.strftime("shortstream-%Y%m%d-%H%M%S"))
    try:
        host, port = parse_address(args.address)
        frames, total, seconds = fetch(host, port, args.count, out_dir, args.token, args.timeout)
    except ShortStreamError as exc:
        print(f"shortstream: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("shortstream: interrupted", file=sys.stderr)
        return 1
    fps = frames / seconds if seconds > 0 else 0.0
    print(f"{frames} frames, {total} bytes ({total / 1024:.1f} KiB) in {seconds:.2f} s ({fps:.1f} fps) -> {out_dir}/")
    if frames < args.count:
        print(f"shortstream: the server ended the stream after {frames} of {args.count} frames", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
