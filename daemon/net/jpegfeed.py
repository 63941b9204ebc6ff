"""One JPEG encode per frame, shared by every consumer of the stream.

The encoder thread (`picamd-encoder`) waits for each new frame, encodes it
once with the configured quality and keeps the result in a "latest value"
slot; MJPEG viewers and `shortstream` wait on that slot for the next frame.
Nothing queues per consumer, so a slow consumer only skips frames for itself,
and the capture loop never waits for anyone.

While nobody watches (no `with feed.watch():` open), nothing is encoded.
`snapshot()` encodes the newest frame on demand when the slot does not
already hold it.

An optional `overlay(frame, meta)` (the detector's boxes with
detect.draw_boxes) returns the image to encode: a drawn copy, or the frame
itself. It runs once per encoded frame, on the encoder thread, and never
changes the frame it is given, so the ring and saved frames stay raw.

With a `camera_jpeg` (the Pi's hardware MJPEG encoder, Pi 4 and older) the
JPEGs come from the camera instead, under the same rules: one per frame for
every consumer, only while someone watches (the camera's encoder is stopped
otherwise), each paired with its frame's metadata by the frame's sensor
timestamp. That applies while nothing is drawn on the image and
mjpeg.resolution is `full` (what the camera encodes); a frame with a drawing,
a frame the camera has no JPEG for, and `snapshot()` are encoded on the CPU
as before. A change of mjpeg.quality reaches the camera, which restarts its
encoder at the new quality.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from daemon.capture.ring import FrameMeta, LatestSlot, Ring
from daemon.commands import Command, Registry, Reply, Session
from daemon.config import Section
from daemon.core.latest import HandoffFailed, Latest
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker
from daemon.sources.base import CameraJpeg

log = logging.getLogger("picamd.encoder")

SHORTSTREAM_MAX = 1000
_RATE_WINDOW_S = 5.0


class JpegFeed:
    #: How long a consumer waits for the next frame before giving up (a stalled camera).
    frame_wait_s = 10.0
    #: How long the encoder waits for a frame before re-checking its settings and the stop flag.
    poll_s = 0.5
    #: How long the encoder waits for the camera's JPEG of a frame before encoding that frame itself.
    camera_wait_s = 0.25
    #: After a frame had a drawing on it, the camera's encoder stays off this long (boxes come and go; each restart costs).
    camera_rearm_s = 10.0

    def __init__(
        self,
        cfg: Section,
        ring: Ring,
        latest: LatestSlot,
        status: ComponentStatus,
        *,
        overlay: Callable[[np.ndarray, FrameMeta], np.ndarray] | None = None,
        camera_jpeg: CameraJpeg | None = None,
    ) -> None:
        self._cfg = cfg
        self._overlay = overlay
        self._camera_jpeg = camera_jpeg
        self._camera_on = False  # whether the camera was asked to encode (only the encoder thread changes it)
        self._camera_jpegs = 0  # frames whose JPEG came from the camera
        self._drawn_mono: float | None = None  # when a frame last had a drawing on it
        self._ring = ring
        self._latest = latest
        self._status = status
        self._out = Latest[tuple[bytes, FrameMeta]]()  # the shared encoded frame; version = frame id
        self._watch_cond = threading.Condition()
        self._watchers = 0
        self._worker = Worker("encoder", self._step, status=status, on_stop=self._wake_all)
        self._stats_lock = threading.Lock()
        self._encodes = 0
        self._encode_times: collections.deque[float] = collections.deque(maxlen=4096)
        self._last_encode_ms = 0.0
        self._shortstreams = 0
        self._attempted_id = -1  # last frame the encoder took, encoded or not (a broken frame is not retried)

    # -- lifecycle
    def start(self) -> None:
        log.info("encoder running (quality %d, %s resolution); idle until someone watches", self._cfg.quality, self._cfg.resolution)
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        self._camera_off()
        log.info("encoder stopped after %d encodes (and %d JPEGs from the camera)", self._encodes, self._camera_jpegs)

    def _wake_all(self) -> None:
        self._out.fail("the encoder stopped")  # consumers blocked in wait_newer end now
        with self._watch_cond:
            self._watch_cond.notify_all()

    # -- consumers
    @contextlib.contextmanager
    def watch(self) -> Iterator[JpegFeed]:
        """Register as a consumer for the duration of the block; the encoder runs while anyone watches."""
        with self._watch_cond:
            self._watchers += 1
            self._watch_cond.notify_all()
        try:
            yield self
        finally:
            with self._watch_cond:
                self._watchers -= 1

    @property
    def watchers(self) -> int:
        return self._watchers

    @property
    def encodes(self) -> int:
        """JPEGs encoded on the CPU."""
        return self._encodes

    @property
    def camera_jpegs(self) -> int:
        """Frames whose JPEG came from the camera's encoder."""
        return self._camera_jpegs

    @property
    def newest_id(self) -> int:
        """Id of the frame in the shared slot (-1 if none). Consumers start from it, so they
        never get a frame encoded long before they came."""
        got = self._out.get()
        return got[0] if got is not None else -1

    def wait_newer(self, after_id: int, timeout: float) -> tuple[bytes, FrameMeta] | None:
        """The newest encoded frame whose id differs from `after_id`, waiting up to `timeout` seconds.

        "Differs" rather than "is greater": the slot only moves forward, except
        when the capture restarts its frame counter, and then a consumer must
        take the new frames instead of waiting for ids it will never see.
        Only frames encoded while someone watches arrive here, so call it from
        inside `watch()`, starting with `after_id = feed.newest_id`.
        Returns None on timeout or when the feed stops.
        """
        if self._worker.stopping.is_set():
            return None
        try:
            got = self._out.wait_newer(after_id, timeout)
        except HandoffFailed:
            return None
        return None if got is None else got[1]

    def snapshot(self) -> tuple[bytes, FrameMeta] | None:
        """A JPEG of the newest frame: the shared one when it is current, else encoded now. None if no frame yet."""
        source = self._newest_source_frame()
        held = self._out.get()
        cached = held[1] if held is not None else None
        if source is None:
            return cached
        frame, meta = source
        if cached is not None and cached[1].frame_id == meta.frame_id:
            return cached
        try:
            jpeg = self._encode(self._overlaid(frame, meta))
        except Exception as exc:
            self._status.error("snapshot encode failed", exc)
            return cached
        self._publish(jpeg, meta, only_if_newer=True)
        return jpeg, meta

    def latest_meta(self) -> FrameMeta | None:
        """Metadata of the newest captured frame (encoded or not)."""
        got = self._latest.get()
        ring_meta = self._ring.latest_meta()
        if got is None:
            return ring_meta
        if ring_meta is not None and ring_meta.frame_id > got[1].frame_id:
            return ring_meta
        return got[1]

    # -- the encoder thread
    def _step(self) -> None:
        with self._watch_cond:
            idle = self._watchers == 0
        if idle:
            self._camera_off()  # nobody watches: the camera's encoder stops as well
            with self._watch_cond:
                if self._watchers == 0:
                    self._watch_cond.wait(1.0)
            return
        try:
            self._encode_next()
        except Exception as exc:
            self._status.degrade("encoding fails: " + " ".join(str(exc).split())[:200])
            raise  # the worker counts it, logs it once per kind and pauses

    def _encode_next(self) -> None:
        cached_id = self.newest_id
        after_id = max(cached_id, self._attempted_id)
        got = self._wait_source_frame(after_id, self.poll_s)
        if got is None:
            self._check_counter_restart(after_id)
            return
        if self._watchers == 0:
            return  # the last watcher left while we waited: nobody wants this frame
        frame, meta = got
        self._attempted_id = meta.frame_id
        image = self._overlaid(frame, meta)
        jpeg = self._from_camera(image, frame, meta)
        if jpeg is None:
            jpeg = self._encode(image)
        self._publish(jpeg, meta, only_if_newer=False)
        if not self._status.ok:
            self._status.recover()

    def _check_counter_restart(self, after_id: int) -> None:
        # The frame counter only goes backwards if the capture was rebuilt; without this the
        # encoder would wait for an id that will never come.
        newest = self._newest_source_id()
        if 0 <= newest < after_id:
            log.info("frame counter restarted (%d after %d); following the new frames", newest, after_id)
            self._attempted_id = -1
            self._out.clear()

    def _use_ring(self) -> bool:
        # 'full' falls back to the ring while the full-resolution slot is empty, so the
        # stream still works with a capture loop that only fills the ring.
        return self._cfg.resolution == "ring" or (self._latest.get() is None and self._ring.fill > 0)

    def _wait_source_frame(self, after_id: int, timeout: float) -> tuple[np.ndarray, FrameMeta] | None:
        if self._use_ring():
            return self._ring.wait_newer(after_id, timeout)
        return self._latest.wait_newer(after_id, timeout)

    def _newest_source_frame(self) -> tuple[np.ndarray, FrameMeta] | None:
        if self._use_ring():
            return self._ring.latest()
        return self._latest.get()

    def _newest_source_id(self) -> int:
        if self._use_ring():
            return self._ring.newest_id
        got = self._latest.get()
        return got[1].frame_id if got is not None else -1

    def _overlaid(self, frame: np.ndarray, meta: FrameMeta) -> np.ndarray:
        if self._overlay is None:
            return frame
        try:
            return self._overlay(frame, meta)
        except Exception as exc:  # a broken overlay costs the drawing, never the stream
            self._status.error("stream overlay failed", exc)
            return frame

    def _from_camera(self, image: np.ndarray, frame: np.ndarray, meta: FrameMeta) -> bytes | None:
        """The camera's own JPEG of this frame where that path applies; None to encode `image` here."""
        cam = self._camera_jpeg
        if cam is None:
            return None
        now = time.monotonic()
        if image is not frame:
            self._drawn_mono = now
        sensor_ts = meta.source_ts_ns
        applies = (
            image is frame
            and sensor_ts is not None
            and self._cfg.resolution == "full"
            and not self._use_ring()
            and (self._drawn_mono is None or now - self._drawn_mono >= self.camera_rearm_s)
        )
        if not applies or sensor_ts is None:
            self._camera_off()
            return None
        self._camera_on = cam.want(int(self._cfg.quality))
        if not self._camera_on or cam.size() != (frame.shape[1], frame.shape[0]):
            return None  # not running (yet), or encoding another size than the stream's frames
        jpeg = cam.jpeg_for(sensor_ts, self.camera_wait_s)
        if jpeg is not None:
            with self._stats_lock:
                self._camera_jpegs += 1
        return jpeg

    def _camera_off(self) -> None:
        if self._camera_on and self._camera_jpeg is not None:
            self._camera_jpeg.want(None)
        self._camera_on = False

    def _encode(self, frame: np.ndarray) -> bytes:
        started = time.monotonic()
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(self._cfg.quality)])
        if not ok:
            raise RuntimeError(f"cv2.imencode refused a frame of shape {frame.shape} and type {frame.dtype}")
        done = time.monotonic()
        with self._stats_lock:
            self._encodes += 1
            self._encode_times.append(done)
            self._last_encode_ms = (done - started) * 1000.0
        return buf.tobytes()

    def _publish(self, jpeg: bytes, meta: FrameMeta, *, only_if_newer: bool) -> None:
        if only_if_newer and meta.frame_id <= self.newest_id:
            return
        self._out.put((jpeg, meta), version=meta.frame_id)

    # -- figures
    def encodes_per_s(self) -> float:
        """Encodes in the last few seconds, per second (0 while nobody watches)."""
        now = time.monotonic()
        with self._stats_lock:
            recent = sum(1 for t in self._encode_times if now - t <= _RATE_WINDOW_S)
        return recent / _RATE_WINDOW_S

    def health(self) -> dict:
        held = self._out.get()
        jpeg, meta = held[1] if held is not None else (None, None)
        return {
            "watchers": self._watchers,
            "shortstreams": self._shortstreams,
            "encodes": self._encodes,
            "encodes_per_s": round(self.encodes_per_s(), 2),
            "last_encode_ms": round(self._last_encode_ms, 2),
            "last_frame_id": meta.frame_id if meta is not None else None,
            "last_jpeg_bytes": len(jpeg) if jpeg is not None else 0,
            "quality": self._cfg.quality,
            "resolution": self._cfg.resolution,
            "camera_jpegs": self._camera_jpegs,
            "camera_encoder": self._camera_jpeg.describe() if self._camera_jpeg is not None else None,
        }

    # -- commands
    def register_commands(self, registry: Registry) -> None:
        registry.register(
            Command(
                "shortstream",
                self._cmd_shortstream,
                f"Send the next N frames (1..{SHORTSTREAM_MAX}) as JPEGs, each after a 4-byte big-endian length; a zero length ends",
                usage="N",
                min_args=1,
                max_args=1,
            )
        )

    def _cmd_shortstream(self, args: list[str], session: Session) -> Reply:
        try:
            count = int(args[0])
        except ValueError:
            count = 0
        if not 1 <= count <= SHORTSTREAM_MAX:
            return Reply.error(f"usage: shortstream N (N is a whole number 1..{SHORTSTREAM_MAX})")
        return Reply(True, f"shortstream {count}", stream=self._shortstream(count, session.peer))

    def _shortstream(self, count: int, peer: str) -> Iterator[bytes]:
        """Length-prefixed JPEGs of the next `count` frames, then a zero length.

        The watch is only taken once the caller starts iterating and is
        released when the generator ends or is closed (client gone).
        """
        sent = 0
        with self.watch():
            with self._stats_lock:
                self._shortstreams += 1
            try:
                last_id = self.newest_id
                while sent < count and not self._worker.stopping.is_set():
                    got = self.wait_newer(last_id, self.frame_wait_s)
                    if got is None:
                        log.warning(
                            "shortstream to %s ended after %d of %d frames: no new frame within %.0f s",
                            peer,
                            sent,
                            count,
                            self.frame_wait_s,
                        )
                        break
                    jpeg, meta = got
                    last_id = meta.frame_id
                    sent += 1
                    yield struct.pack(">I", len(jpeg)) + jpeg
                yield struct.pack(">I", 0)
            finally:
                with self._stats_lock:
                    self._shortstreams -= 1
                log.info("shortstream to %s: %d of %d frames sent", peer, sent, count)
