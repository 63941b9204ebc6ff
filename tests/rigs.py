"""The daemon's HTTP side on loopback, shared by the tests of the stream, the page and the live calibration.

`HttpRig` builds what the app builds for it (a ring, the full-frame slot, a
JpegFeed and an HttpServer, from a real `Config`) and feeds it with a
stand-in for the capture loop that commits a frame about every 50 ms. A test
chooses the frame size, what each frame shows and the metadata it carries.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from daemon_proc import wait_for

from daemon.capture.ring import FrameMeta, LatestSlot, Ring
from daemon.config import Config
from daemon.core.status import ComponentStatus
from daemon.net.http import HttpServer
from daemon.net.jpegfeed import JpegFeed


def plain_meta(fid: int) -> FrameMeta:
    return FrameMeta(frame_id=fid, ts=time.time(), mono=time.monotonic())


class HttpRig:
    def __init__(
        self,
        *,
        frame_size: tuple[int, int] = (640, 480),
        ring_size: tuple[int, int] = (160, 120),
        ring_slots: int = 32,
        frame: Callable[[int], np.ndarray] | None = None,
        meta: Callable[[int], FrameMeta] = plain_meta,
        first_id: int = 1,
        fps: float = 20.0,
        feed_frames: bool = True,
        values: dict[str, Any] | None = None,
        health: Callable[[], dict] | None = None,
        send_timeout_s: float = 10.0,
    ) -> None:
        self.frame_size, self.ring_size = frame_size, ring_size
        self.config = Config({"http.bind": "127.0.0.1", "http.port": 0, **(values or {})})
        self.ring = Ring(ring_slots, ring_size[1], ring_size[0])
        self.latest = LatestSlot()
        self.allow = ["127.0.0.0/8"]  # read live by the server: a test may change it
        self.feed_status = ComponentStatus("encoder")
        self.status = ComponentStatus("mjpeg")
        self.feed = JpegFeed(self.config.section("mjpeg"), self.ring, self.latest, self.feed_status)
        self.server = HttpServer(
            self.config.section("http"),
            self.config.section("mjpeg"),
            lambda: self.allow,
            self.feed,
            health or self.health,
            self.status,
            send_timeout_s=send_timeout_s,
        )
        self._frame = frame or self.moving_square
        self._meta = meta
        self.metas: dict[int, FrameMeta] = {}
        self.next_id = first_id
        self.feed_frames = feed_frames
        self.interval_s = 1.0 / fps
        self.running = threading.Event()  # cleared: no frames come (a stalled camera)
        self.running.set()
        width, height = frame_size
        # Texture, so the JPEGs have realistic sizes.
        self.background = np.random.default_rng(7).integers(40, 120, size=(height, width, 3), dtype=np.uint8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-feeder", daemon=True)

    def health(self) -> dict:
        """What the page and the tools read from /health, with the real figures of the feed and the server."""
        return {
            "status": "ok",
            "degraded": [],
            "camera": {"state": "ok", "frame_size": list(self.frame_size)},
            "ring": {"frame_size": list(self.ring_size)},
            "encoder": self.feed.health(),
            "mjpeg": self.server.health(),
        }

    def moving_square(self, fid: int) -> np.ndarray:
        """A white square moving across the texture."""
        width, height = self.frame_size
        side = height // 6
        frame = self.background.copy()
        x = (fid * 12) % (width - side)
        frame[height * 5 // 12 : height * 5 // 12 + side, x : x + side] = 255
        return frame

    def commit(self, frame: np.ndarray, fid: int) -> FrameMeta:
        """One frame as the capture loop hands it on: downscaled into the ring, full size into the slot."""
        meta = self._meta(fid)
        cv2.resize(frame, self.ring_size, dst=self.ring.next_slot(), interpolation=cv2.INTER_AREA)
        self.metas[fid] = meta
        self.ring.commit(meta)
        self.latest.put(frame, meta)
        return meta

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.running.is_set():
                fid = self.next_id
                self.next_id += 1
                self.commit(self._frame(fid), fid)
            self._stop.wait(self.interval_s)

    def start(self) -> HttpRig:
        if self.feed_frames:
            first = self.next_id
            self._thread.start()
            assert wait_for(lambda: self.ring.newest_id >= first + 2)
        self.feed.start()
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        self.feed.stop()
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    @property
    def port(self) -> int:
        port = self.server.port
        assert port is not None, "the server is not listening"
        return port

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def request(port: int, path: str, method: str = "GET", timeout: float = 15.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; the status, the headers (names in lower case) and the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()
