"""A small server built the way the original project (the seed) streamed, for comparison only.

What it does, as the seed did:
- the capture loop takes a frame, appends fresh copies to a `collections.deque`
  ring (a new downscaled array per frame, plus a copy of the full frame as
  the newest), scores the brightness, and paces itself with `time.sleep(1/fps)`;
- the MJPEG server runs one thread per client, and each client thread takes
  the newest frame, encodes it with `cv2.imencode` itself, sends it with the
  same metadata headers, and sleeps `1/fps`.

Same synthetic frames as the daemon (the scene at 1024x768), same frame rate
and JPEG quality. `/health` reports the frames captured and the JPEG encodes
with the daemon's field names (`camera.frames`, `encoder.encodes`), so the
benchmark reads both servers the same way.

    python bench/seed_like.py --port 8090 [--fps 10] [--quality 80]
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import benchlib as bl
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from daemon.config import Config  # noqa: E402
from daemon.sources.synthetic import SyntheticSource  # noqa: E402


class SeedLikeCamera:
    def __init__(self, fps: float, ring_size: int, ring_wh: tuple[int, int]) -> None:
        self.fps = fps
        self.ring_wh = ring_wh
        self.ring: collections.deque = collections.deque(maxlen=ring_size)
        self.lock = threading.Lock()
        self.latest: tuple[np.ndarray, dict] | None = None
        self.frames = 0
        self.stop = threading.Event()
        config = Config({"camera.width": bl.FRAME_W, "camera.height": bl.FRAME_H, "camera.framerate": fps})
        self.source = SyntheticSource(config.section("camera"), config.section("synthetic"))
        self.source.open()

    def run(self) -> None:
        k = 0
        while not self.stop.is_set():
            frame, info = self.source.frame_at(k / self.fps, k)
            small = cv2.resize(frame, self.ring_wh)
            gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
            meta = {"frame_id": k + 1, "ts": time.time(), "dark_score": float(np.mean(gray)), "night": False}
            with self.lock:
                self.ring.append((small.copy(), meta))
                self.latest = (frame.copy(), meta)
                self.frames += 1
            k += 1
            time.sleep(1.0 / self.fps)


class SeedLikeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, camera: SeedLikeCamera, quality: int) -> None:
        self.camera = camera
        self.quality = quality
        self.encodes = 0
        self.count_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), SeedLikeHandler)


class SeedLikeHandler(BaseHTTPRequestHandler):
    server: SeedLikeServer
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        if self.path.startswith("/stream"):
            self._stream()
        elif self.path.startswith("/health"):
            cam = self.server.camera
            body = json.dumps({"camera": {"frames": cam.frames}, "encoder": {"encodes": self.server.encodes}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def _stream(self) -> None:
        cam, srv = self.server.camera, self.server
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            while not cam.stop.is_set():
                with cam.lock:
                    latest = cam.latest
                if latest is None:
                    time.sleep(0.05)
                    continue
                frame, meta = latest
                ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, srv.quality])
                with srv.count_lock:
                    srv.encodes += 1
                jpeg = buf.tobytes()
                head = (
                    "--frame\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\nX-Frame-Id: {meta['frame_id']}\r\nX-Timestamp: {meta['ts']:.6f}\r\n"
                    f"X-Dark-Score: {meta['dark_score']:.3f}\r\nX-Night: {int(meta['night'])}\r\n\r\n"
                )
                self.wfile.write(head.encode() + jpeg + b"\r\n")
                time.sleep(1.0 / cam.fps)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description="Seed-style MJPEG server (per-client encoding, sleep-paced capture)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--quality", type=int, default=80)
    parser.add_argument("--ring-size", type=int, default=300)
    args = parser.parse_args()
    camera = SeedLikeCamera(args.fps, args.ring_size, (bl.RING_W, bl.RING_H))
    server = SeedLikeServer(args.port, camera, args.quality)
    threading.Thread(target=camera.run, name="seed-capture", daemon=True).start()
    threading.Thread(target=server.serve_forever, name="seed-http", daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    camera.stop.set()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
