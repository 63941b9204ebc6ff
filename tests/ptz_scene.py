"""What a PTZ camera sees in the tests and the bench: a real photo per preset, served the ways picamd reads pictures.

Preset 1 shows `skimage.data.astronaut()` (one person), 2 `coffee()` (no one),
3 `camera()` (one person, the cameraman), 4 `chelsea()` (a cat), then round
again; every photo at 640x480. While the simulated camera moves, the picture
is a different shift of the photo at every look (what a panning camera
shows), so a sweep that took its picture before the camera settled would be
caught.

- `SnapshotServer`: the camera's HTTP snapshot on loopback (`/snapshot.jpg`),
  optionally behind basic auth, answering with the photo of the preset the
  `ViscaCamera` stands at;
- `FrameFeeder`: picamd's own frames in-process (a `Ring` and a `LatestSlot`
  fed like the capture loop does), showing the same.
"""

from __future__ import annotations

import base64
import functools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
from visca_sim import ViscaCamera

from daemon.capture.ring import FrameMeta, LatestSlot, Ring

SIZE = (640, 480)
PHOTOS = ("astronaut", "coffee", "camera", "chelsea")
PEOPLE = {"astronaut": 1, "coffee": 0, "camera": 1, "chelsea": 0}


@functools.cache
def photo(name: str) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    out = cv2.resize(img, SIZE, interpolation=cv2.INTER_AREA)
    out.setflags(write=False)
    return out


def photo_of(preset: int | None) -> str:
    return PHOTOS[(max(1, preset or 1) - 1) % len(PHOTOS)]


class View:
    """The picture of the camera now: its preset's photo, or a shifting one while it moves and for `wobble_s` after
    it stopped (a head that sways before it stands still)."""

    def __init__(self, camera: ViscaCamera, wobble_s: float = 0.0) -> None:
        self.camera = camera
        self.wobble_s = wobble_s
        self._looks = 0

    def frame(self) -> np.ndarray:
        preset, moving, arrived = self.camera.view()
        if moving or preset is None or time.monotonic() - arrived < self.wobble_s:
            self._looks += 1
            shift = 40 + 37 * (self._looks % 9)
            return np.ascontiguousarray(np.roll(photo(photo_of(preset or self._looks % 4 + 1)), shift, axis=1))
        return photo(photo_of(preset))


class SnapshotServer:
    def __init__(self, camera: ViscaCamera, user: str = "", password: str = "") -> None:
        self.view = View(camera)
        self.requests = 0
        self.refused = 0
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() if user else None
        scene = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                scene.requests += 1
                if expected is not None and self.headers.get("Authorization") != expected:
                    scene.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                ok, buf = cv2.imencode(".jpg", scene.view.frame(), [cv2.IMWRITE_JPEG_QUALITY, 90])
                body = buf.tobytes()
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="snapshot-server", daemon=True).start()

    def url(self, credentials: str = "") -> str:
        at = f"{credentials}@" if credentials else ""
        return f"http://{at}127.0.0.1:{self.httpd.server_address[1]}/snapshot.jpg"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FrameFeeder:
    """A stand-in for the capture loop: every `1/fps` s the camera's view, downscaled into the ring, full size into the slot."""

    def __init__(self, camera: ViscaCamera, fps: float = 30.0, ring_size: tuple[int, int] = (160, 120)) -> None:
        self.view = View(camera)
        self.stages: list = []  # called like the capture loop's stages: stage.process(ring_frame, meta)
        self.metas: list[FrameMeta] = []
        self.ring = Ring(16, ring_size[1], ring_size[0])
        self.latest = LatestSlot()
        self.interval = 1.0 / fps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-frames", daemon=True)
        self.next_id = 1

    def start(self) -> FrameFeeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        size = (self.ring.shape[1], self.ring.shape[0])
        while not self._stop.is_set():
            frame = self.view.frame()
            meta = FrameMeta(frame_id=self.next_id, ts=time.time(), mono=time.monotonic())
            self.next_id += 1
            slot = self.ring.next_slot()
            cv2.resize(frame, size, dst=slot, interpolation=cv2.INTER_AREA)
            for stage in self.stages:
                stage.process(slot, meta)
            self.metas.append(meta)
            self.latest.put(frame, meta)
            self.ring.commit(meta)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
