"""The MJPEG stream of /stream: its multipart parts with each frame's metadata as headers, and the loop that serves one viewer.

Every viewer waits on the shared JpegFeed for the newest frame; there is no
per-viewer queue. A viewer that reads slowly skips frames for itself only, and
one whose socket stays blocked longer than the send timeout is dropped.
Between frames it waits in slices of at most `poll_s` while watching its
socket, so a viewer that leaves frees its slot within a slice whatever its
`?fps=` (raised to at least MIN_FPS).

The stream answers HTTP/1.0 with `Connection: close`: every client (VLC,
browsers, ffmpeg, OpenCV, the Python client) reads the multipart body until
the connection ends.

Part headers: Content-Type, Content-Length, X-Frame-Id, X-Timestamp (wall
clock, seconds with six decimals), X-Dark-Score, X-Night (1 at night, 0 by
day), X-Exposure-Us and X-Gain when the source knows them, and one X-<Key> per
item of the frame's `extra` (`source` -> X-Source, `motion` -> X-Motion, `detections` -> X-Detections,
`people` -> X-People): text as it is, anything
else as compact JSON, control characters replaced by spaces. /snapshot.jpg
carries the same X- headers.
"""

from __future__ import annotations

import json
import logging
import math
import re
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from daemon.capture.ring import FrameMeta
from daemon.config import Section
from daemon.net.jpegfeed import JpegFeed

__all__ = ["BOUNDARY", "MIN_FPS", "Viewers", "meta_headers", "parse_fps"]

log = logging.getLogger("picamd.http")

BOUNDARY = "frame"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_MAX_HEADER_VALUE = 8192  # longer extras are left out of the headers (they stay in /meta)
_STANDARD_HEADERS = {"X-Frame-Id", "X-Timestamp", "X-Dark-Score", "X-Night", "X-Exposure-Us", "X-Gain"}
#: A viewer asking for less (?fps=0.001, 1e-300) gets this: one frame every 10 s. Slower is what /snapshot.jpg is for.
MIN_FPS = 0.1


def header_name(key: str) -> str | None:
    """`motion` -> `X-Motion`, `ptz_pos` -> `X-Ptz-Pos`; None when nothing usable is left."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", str(key)) if p]
    if not parts:
        return None
    return "X-" + "-".join(p[:1].upper() + p[1:].lower() for p in parts)


def header_value(value: Any) -> str | None:
    """Text as it is, anything else compact JSON; never a CR/LF that could end the header block early."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, separators=(",", ":"), default=str)
        except (TypeError, ValueError):
            text = str(value)
    text = _CONTROL_CHARS.sub(" ", text).encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= _MAX_HEADER_VALUE else None


def meta_headers(meta: FrameMeta) -> list[tuple[str, str]]:
    """The X- headers of one frame, in a stable order."""
    headers = [
        ("X-Frame-Id", str(meta.frame_id)),
        ("X-Timestamp", f"{meta.ts:.6f}"),
        ("X-Dark-Score", f"{float(meta.dark_score):.3f}"),
        ("X-Night", "1" if meta.night else "0"),
    ]
    if meta.exposure_us is not None:
        headers.append(("X-Exposure-Us", str(int(meta.exposure_us))))
    if meta.gain is not None:
        headers.append(("X-Gain", f"{float(meta.gain):.3f}"))
    for key, value in list(meta.extra.items()):  # list(): a later stage may add keys meanwhile
        name = header_name(key)
        if name is None or name in _STANDARD_HEADERS:
            continue
        text = header_value(value)
        if text is not None:
            headers.append((name, text))
    return headers


def _part(jpeg: bytes, meta: FrameMeta) -> bytes:
    lines = [f"--{BOUNDARY}", "Content-Type: image/jpeg", f"Content-Length: {len(jpeg)}"]
    lines += [f"{k}: {v}" for k, v in meta_headers(meta)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + jpeg + b"\r\n"


def parse_fps(query: str) -> float | None:
    """The viewer's `?fps=` (at least MIN_FPS), None when it asks for none; ValueError when it is not a positive number."""
    values = parse_qs(query, keep_blank_values=True).get("fps")
    if not values:
        return None
    try:
        fps = float(values[-1])
    except ValueError:
        raise ValueError(f"fps must be a number, not {values[-1][:40]!r}") from None
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError("fps must be a positive number")
    return max(fps, MIN_FPS)


def _wait_readable(sock: socket.socket, wait_s: float) -> bool:
    """Wait up to `wait_s` for `sock` to be readable (data, end of file or an error). poll(), not select(): any fd number."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(max(0, int(wait_s * 1000))))


class Viewers:
    """The stream's viewers: each one's loop, on the handler thread of its request, and what /health shows of them."""

    #: Server-side send buffer of a viewer: bounds the kernel memory a stalled viewer can pin
    #: (autotuning would grow it to megabytes each) and lets a stall be noticed promptly.
    sndbuf_bytes = 256 * 1024
    #: Longest a viewer waits (on the feed, or between frames under a low ?fps=) before checking for stop and a closed socket.
    poll_s = 0.5
    #: A viewer that sends this much after its request is not a viewer: it is dropped.
    max_junk_bytes = 64 * 1024

    def __init__(self, feed: JpegFeed, stream_cfg: Section, send_timeout_s: float, stopping: Callable[[], bool]) -> None:
        """`stream_cfg` is the stream's section (`mjpeg`: max_fps); `stopping` says when the server is stopping."""
        self._feed = feed
        self._cfg = stream_cfg
        self._send_timeout_s = send_timeout_s
        self._stopping = stopping
        self._lock = threading.Condition()
        self._viewers: dict[int, dict[str, Any]] = {}
        self._socks: dict[int, socket.socket] = {}
        self._next_id = 0
        self._bytes_sent = 0
        self._frames_sent = 0
        self._dropped_slow = 0

    def serve(self, wfile: Any, sock: socket.socket, peer: str, requested_fps: float | None) -> None:
        """Send the multipart body until the viewer leaves, stalls or the server stops; the answer's head is sent already."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf_bytes)
        except OSError:
            pass
        sock.settimeout(self._send_timeout_s)
        started = time.monotonic()
        with self._lock:
            vid = self._next_id
            self._next_id += 1
            info: dict[str, Any] = {"peer": peer, "fps_cap": requested_fps, "frames": 0, "started": started, "bytes_in": 0}
            self._viewers[vid] = info
            self._socks[vid] = sock
        log.info("viewer %s connected (%s)", peer, f"fps <= {requested_fps:g}" if requested_fps else "fps <= mjpeg.max_fps")
        reason = "server stopping"
        try:
            with self._feed.watch():
                last_id = self._feed.newest_id
                next_due = time.monotonic()
                while not self._stopping():
                    max_fps = self._cfg.max_fps
                    cap = max_fps if requested_fps is None else min(requested_fps, max_fps)
                    interval = 1.0 / max(cap, MIN_FPS)
                    delay = next_due - time.monotonic()
                    if delay > 0:
                        # The pause before the next frame, in slices spent watching the socket: a viewer
                        # that leaves during a long pause (a low ?fps=) frees its slot at once.
                        gone = self._gone(sock, min(delay, self.poll_s), info)
                        if gone:
                            reason = gone
                            break
                        continue
                    got = self._feed.wait_newer(last_id, self.poll_s)
                    if got is None:
                        gone = self._gone(sock, 0, info)
                        if gone:
                            reason = gone
                            break
                        continue
                    jpeg, meta = got
                    fetched = time.monotonic()
                    data = _part(jpeg, meta)
                    wfile.write(data)
                    last_id = meta.frame_id
                    with self._lock:
                        info["frames"] += 1
                        self._frames_sent += 1
                        self._bytes_sent += len(data)
                    # Average rate stays under the cap; a frame that arrives a little late does not
                    # make the next one wait a whole interval.
                    next_due = max(next_due + interval, fetched + interval / 2)
        except TimeoutError:
            reason = f"dropped: its socket stayed blocked for {self._send_timeout_s:g} s"
            with self._lock:
                self._dropped_slow += 1
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            reason = "viewer disconnected"
        except OSError as exc:
            reason = "server stopping" if self._stopping() else f"socket error: {exc}"
        finally:
            with self._lock:
                self._viewers.pop(vid, None)
                self._socks.pop(vid, None)
                self._lock.notify_all()
        if self._stopping():
            reason = "server stopping"
        log.info("viewer %s left after %.0f s and %d frames: %s", peer, time.monotonic() - started, info["frames"], reason)

    def _gone(self, sock: socket.socket, wait_s: float, info: dict[str, Any]) -> str:
        """Why the viewer is gone, waiting up to `wait_s` for it to close; "" while it stays. What it sends is read and dropped."""
        try:
            if not _wait_readable(sock, wait_s):
                return ""
            data = sock.recv(4096)
        except (OSError, ValueError):
            return "viewer disconnected"
        if not data:
            return "viewer closed the connection"
        info["bytes_in"] += len(data)
        if info["bytes_in"] > self.max_junk_bytes:
            return f"dropped: it sent {info['bytes_in']} bytes after its request"
        return ""

    def disconnect_all(self) -> None:
        """At stop: shut every viewer's socket and wait briefly for their loops to end."""
        with self._lock:
            socks = list(self._socks.values())
        for sock in socks:  # breaks a send blocked on a stalled viewer at once
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            self._lock.wait_for(lambda: not self._viewers, timeout=0.6)

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            viewers = [
                {"peer": v["peer"], "fps_cap": v["fps_cap"], "frames": v["frames"], "connected_s": round(now - v["started"], 1)}
                for v in self._viewers.values()
            ]
            return {
                "viewers": len(viewers),
                "max_fps": self._cfg.max_fps,
                "bytes_sent": self._bytes_sent,
                "frames_sent": self._frames_sent,
                "dropped_for_slow_clients": self._dropped_slow,
                "viewer_list": viewers,
            }
