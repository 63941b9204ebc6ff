#!/usr/bin/env python3
"""Print the metadata of every frame of a picamd MJPEG stream, optionally saving the JPEGs.

    python tools/client.py http://raspberrypi:8080/stream
    python tools/client.py http://raspberrypi:8080/stream --count 100 --save frames/ --fps 2
    python tools/client.py http://alice:secret@raspberrypi:8080/stream        # with http.users set
    python tools/client.py http://raspberrypi:8080/stream --user alice        # asks for the password
    PICAMD_HTTP_TOKEN=... python tools/client.py http://raspberrypi:8080/stream   # or --token TOKEN

One line per frame, key=value pairs read from the part headers:

    frame=1234 time=2024-05-01T12:00:00.123 dark=87.21 night=0 exposure_us=10000 gain=1.000 motion={"door":...} bytes=48213

When the stream drops after it has started (daemon restarted, Wi-Fi gone) the
client reconnects with a growing pause and carries on; if the first connection
fails it exits with status 1 and says why. Standard library only; with
--decode, OpenCV (if installed) checks each JPEG and adds its size.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import getpass
import http.client
import os
import sys
import time
import urllib.parse
from pathlib import Path

EXIT_CONNECT = 1
EXIT_USAGE = 2
_FIRST = ("x-frame-id", "x-timestamp", "x-dark-score", "x-night", "x-exposure-us", "x-gain")


class StreamError(Exception):
    """The stream cannot be read; `retry` says whether trying again may help."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


def stream_url(url: str, fps: float | None) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http URL: {url}")
    if fps is not None:
        query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k != "fps"]
        query.append(("fps", f"{fps:g}"))
        parts = parts._replace(query=urllib.parse.urlencode(query))
    if not parts.path:
        parts = parts._replace(path="/stream")
    return parts


def authorization(
    url: urllib.parse.SplitResult, user: str | None = None, password: str | None = None, token: str | None = None
) -> str | None:
    """The Authorization header: a token (Bearer), else `user` (Basic), else the URL's user:password@; None without any."""
    if token:
        return f"Bearer {token}"
    if user is None and url.username is not None:
        user, password = urllib.parse.unquote(url.username), urllib.parse.unquote(url.password or "")
    if user is None:
        return None
    return "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")


def shown(url: urllib.parse.SplitResult) -> str:
    """The URL for messages: a password in it becomes ***."""
    if url.password is None:
        return url.geturl()
    host = url.netloc.rpartition("@")[2]
    return url._replace(netloc=f"{url.username}:***@{host}").geturl()


def open_stream(
    url: urllib.parse.SplitResult, timeout: float, auth: str | None = None
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, bytes]:
    """Connect and check the answer; returns the connection, the response and the multipart boundary.

    `auth` is the Authorization header; by default it comes from the URL's user:password@, if any.
    """
    if not url.hostname:
        raise StreamError(f"no host in {shown(url)}", retry=False)
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = cls(url.hostname, url.port, timeout=timeout)
    target = url.path + (f"?{url.query}" if url.query else "")
    headers = {"User-Agent": "picamd-client", "Accept": "multipart/x-mixed-replace"}
    credentials = auth if auth is not None else authorization(url)
    if credentials:
        headers["Authorization"] = credentials
    try:
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
    except OSError as exc:
        conn.close()
        raise StreamError(f"cannot connect to {shown(url)}: {exc.strerror or exc}") from None
    except http.client.HTTPException as exc:
        conn.close()
        raise StreamError(f"{shown(url)} did not answer HTTP: {exc!r}") from None
    if resp.status != 200:
        text = resp.read(500).decode("utf-8", "replace").strip()
        conn.close()
        if resp.status == 401:
            hint = "wrong credentials" if credentials else "login required: give user:password@ in the URL, --user or --token"
            raise StreamError(f"{shown(url)} answered 401 {resp.reason}: {hint}", retry=False)
        # 503 (busy) and 429 (too many failed logins, for a while) may pass; 403, 404 and 400 will not fix themselves.
        raise StreamError(f"{shown(url)} answered {resp.status} {resp.reason}: {text}", retry=resp.status in (429, 503))
    ctype = resp.getheader("Content-Type", "")
    if not ctype.lower().startswith("multipart/"):
        conn.close()
        raise StreamError(f"{shown(url)} is not an MJPEG stream (Content-Type: {ctype or 'none'})", retry=False)
    boundary = "frame"
    for param in ctype.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary" and value:
            boundary = value.strip('"')
    return conn, resp, boundary.encode()


def read_parts(resp: http.client.HTTPResponse, boundary: bytes):
    """Yield (headers, jpeg) for each part. Uses Content-Length when given, else scans for the boundary."""
    marker = b"--" + boundary
    at_part = False  # the boundary line of the next part was already consumed
    while True:
        if not at_part:
            line = resp.readline(65536)
            if not line:
                return
            if line.strip() == marker + b"--":
                return
            if line.strip() != marker:
                continue  # the CRLF after the previous body, or a preamble
        at_part = False
        headers: dict[str, str] = {}
        while True:
            h = resp.readline(65536)
            if not h:
                return
            h = h.strip()
            if not h:
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length", "")
        if length.isdigit():
            body = resp.read(int(length))
            if len(body) < int(length):
                return
        else:
            body, at_part = _read_until(resp, marker)
        yield headers, body


def _read_until(resp: http.client.HTTPResponse, marker: bytes) -> tuple[bytes, bool]:
    """For servers that send no Content-Length: the body is everything before the next boundary line.

    Returns the body and whether that boundary line was consumed.
    """
    chunks = []
    hit = False
    while True:
        line = resp.readline(1 << 20)
        if not line:
            break
        if line.strip() == marker:
            hit = True
            break
        chunks.append(line)
    body = b"".join(chunks)
    return (body[:-2] if body.endswith(b"\r\n") else body), hit


def describe(headers: dict[str, str], jpeg: bytes, size: str | None) -> str:
    parts = [f"frame={headers.get('x-frame-id', '?')}"]
    ts = headers.get("x-timestamp")
    if ts:
        try:
            parts.append("time=" + dt.datetime.fromtimestamp(float(ts)).isoformat(timespec="milliseconds"))
        except (ValueError, OverflowError, OSError):
            parts.append(f"time={ts}")
    for key, label in (("x-dark-score", "dark"), ("x-night", "night"), ("x-exposure-us", "exposure_us"), ("x-gain", "gain")):
        if key in headers:
            parts.append(f"{label}={headers[key]}")
    for key, value in headers.items():
        if key.startswith("x-") and key not in _FIRST:
            parts.append(f"{key[2:].replace('-', '_')}={value}")
    parts.append(f"bytes={len(jpeg)}")
    if size:
        parts.append(f"size={size}")
    return " ".join(parts)


def jpeg_size(jpeg: bytes) -> str:
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return "undecodable" if img is None else f"{img.shape[1]}x{img.shape[0]}"


def save_jpeg(folder: Path, headers: dict[str, str], jpeg: bytes, seq: int) -> None:
    fid = headers.get("x-frame-id", "")
    name = f"frame_{int(fid):08d}.jpg" if fid.isdigit() else f"part_{seq:08d}.jpg"
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(jpeg)
    os.replace(tmp, folder / name)  # never a half-written frame under the real name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Print per-frame metadata of a picamd MJPEG stream.")
    ap.add_argument("url", help="stream URL, e.g. http://raspberrypi:8080/stream")
    ap.add_argument("--count", type=int, default=0, help="stop after this many frames (default: run until interrupted)")
    ap.add_argument("--save", metavar="DIR", help="also save each JPEG into DIR as frame_<id>.jpg")
    ap.add_argument("--fps", type=float, help="ask the server for at most this many frames per second")
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds without data before reconnecting (default 15)")
    ap.add_argument("--retries", type=int, default=-1, help="reconnect attempts after a drop before giving up (default: forever)")
    ap.add_argument("--decode", action="store_true", help="decode each JPEG with OpenCV and print its size")
    ap.add_argument(
        "--user",
        metavar="NAME[:PASSWORD]",
        help="log in as NAME (http.users); without :PASSWORD it comes from "
        "PICAMD_HTTP_PASSWORD or a prompt. The URL's user:password@ works too",
    )
    ap.add_argument(
        "--token",
        default=os.environ.get("PICAMD_HTTP_TOKEN") or None,
        help="a token of http.tokens, sent as 'Authorization: Bearer TOKEN' (default: $PICAMD_HTTP_TOKEN)",
    )
    args = ap.parse_args(argv)
    if args.count < 0 or (args.fps is not None and not args.fps > 0) or args.timeout <= 0:
        ap.error("--count must be >= 0, --fps and --timeout > 0")
    try:
        url = stream_url(args.url, args.fps)
    except ValueError as exc:
        ap.error(str(exc))
    user = password = None
    if args.user:
        user, colon, password = args.user.partition(":")
        if not colon:
            password = os.environ.get("PICAMD_HTTP_PASSWORD")
            if password is None:
                password = getpass.getpass(f"password of {user}: ")
    auth = authorization(url, user, password, args.token)
    folder = None
    if args.save:
        folder = Path(args.save)
        folder.mkdir(parents=True, exist_ok=True)
    if args.decode:
        try:
            import cv2  # noqa: F401
        except ImportError:
            ap.error("--decode needs OpenCV (pip install opencv-python-headless)")

    received = 0
    connected_once = False
    failures = 0
    try:
        while True:
            try:
                conn, resp, boundary = open_stream(url, args.timeout, auth)
            except StreamError as exc:
                if not connected_once or not exc.retry:
                    print(f"error: {exc}", file=sys.stderr)
                    return EXIT_CONNECT
                failures += 1
                if 0 <= args.retries < failures:
                    print(f"error: giving up after {failures - 1} reconnect attempts: {exc}", file=sys.stderr)
                    return EXIT_CONNECT
                pause = min(30.0, 0.5 * 2 ** min(failures, 6))
                print(f"reconnect failed ({exc}); next try in {pause:.0f} s", file=sys.stderr, flush=True)
                time.sleep(pause)
                continue
            if connected_once:
                print(f"reconnected to {shown(url)}", file=sys.stderr, flush=True)
            connected_once = True
            try:
                for headers, jpeg in read_parts(resp, boundary):
                    failures = 0
                    received += 1
                    size = jpeg_size(jpeg) if args.decode else None
                    print(describe(headers, jpeg, size), flush=True)
                    if folder is not None:
                        save_jpeg(folder, headers, jpeg, received)
                    if args.count and received >= args.count:
                        return 0
                why = "the server ended the stream"
            except (OSError, http.client.HTTPException) as exc:
                why = f"{type(exc).__name__}: {exc}"
            finally:
                conn.close()
            failures += 1
            if 0 <= args.retries < failures:
                print(f"error: stream lost ({why}) and no retries left", file=sys.stderr)
                return EXIT_CONNECT
            print(f"stream lost ({why}); reconnecting", file=sys.stderr, flush=True)
            time.sleep(min(30.0, 0.5 * 2 ** min(failures - 1, 6)))
    except KeyboardInterrupt:
        print(f"\n{received} frames", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
