"""The stream's JPEGs from the Pi's hardware MJPEG encoder (Pi 4 and older), through picamera2.

picamera2's `MJPEGEncoder` hands each camera frame to the VideoCore's codec
(V4L2 memory-to-memory, `/dev/video11`), which returns one JPEG per frame on
its own thread to an `Output`; ours keeps the last few with the frame's sensor
timestamp, so the stream can pair each JPEG with the metadata the capture
loop made for the same frame. The Pi 5 has no such codec (picamera2's
`MJPEGEncoder` is a software encoder there), so this reports itself
unavailable and the stream encodes on the CPU as everywhere else.

Every call into the camera (`start_encoder`, `stop_encoder`) is made by the
source's reader thread between two frames (`apply`, `stop`); the stream's
encoder thread only states what it wants (`want`) and takes JPEGs
(`jpeg_for`).

The codec takes a bitrate, not a JPEG quality. picamera2 derives its own
from the frame size and a nominal frame rate (at most 30 fps); this does the
same from mjpeg.quality, with the bits per pixel that OpenCV's encoder spends
at that quality on a camera-like scene, so a quality change moves the
hardware JPEGs in the same direction and by about as much.
"""

from __future__ import annotations

import collections
import importlib
import logging
import threading
import time
from typing import Any

log = logging.getLogger("picamd.picamera2")

#: JPEG quality -> bits per pixel of OpenCV's encoder on the synthetic scene at 1024x768 (bench/cpu_budget.py prints them).
BITS_PER_PIXEL = ((10, 0.22), (30, 0.39), (50, 0.59), (60, 0.70), (70, 0.89), (80, 1.20), (85, 1.51), (90, 2.09), (95, 3.25), (100, 6.97))
#: picamera2 gives its encoders this frame rate at most when it works out a bitrate.
NOMINAL_FPS_MAX = 30.0
#: JPEGs kept for pairing with frames: the stream asks for a frame's JPEG a few milliseconds after the codec made it.
KEEP = 8
#: Sensor timestamps pair within this many microseconds (picamera2 turns nanoseconds into microseconds through a float).
MATCH_US = 2


def bits_per_pixel(quality: int) -> float:
    """Bits per pixel for a JPEG quality, interpolated in BITS_PER_PIXEL."""
    q = min(100.0, max(10.0, float(quality)))
    for (q0, b0), (q1, b1) in zip(BITS_PER_PIXEL, BITS_PER_PIXEL[1:], strict=False):
        if q <= q1:
            return b0 + (b1 - b0) * (q - q0) / (q1 - q0)
    return BITS_PER_PIXEL[-1][1]


def bitrate_for(quality: int, width: int, height: int, nominal_fps: float) -> int:
    """The codec bitrate (bit/s) that gives JPEGs of about the size OpenCV makes at `quality`."""
    return int(bits_per_pixel(quality) * width * height * max(1.0, nominal_fps))


def _submodule(module: Any, name: str) -> Any:
    got = getattr(module, name, None)
    if got is None:
        got = importlib.import_module(f"{module.__name__}.{name}")
    return got


class Picamera2Jpeg:
    """The `CameraJpeg` of a Picamera2Source: one object for the source's life, across reopens."""

    def __init__(self, camera: Any) -> None:
        self._cfg = camera
        self._cond = threading.Condition()
        self._encoders: Any = None  # picamera2.encoders, once a camera is open
        self._output_base: Any = None  # picamera2.outputs.Output
        self._reason: str | None = "camera not open"  # why the codec cannot be used, None when it can
        self._wanted: int | None = None  # quality the stream asks for; None: stopped
        self._encoder: Any = None  # the running MJPEGEncoder
        self._quality: int | None = None  # quality it runs at
        self._bitrate: int | None = None
        self._size: tuple[int, int] | None = None
        self._recent: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=KEEP)
        self._frames = 0
        self._starts = 0

    # -- the source's side (its reader thread, and open/close)

    def attach(self, module: Any) -> None:
        """A camera opened through `module` (picamera2 or its stand-in): find out whether it has the codec."""
        try:
            encoders = _submodule(module, "encoders")
            outputs = _submodule(module, "outputs")
        except Exception as exc:
            self._set_reason(f"picamera2's encoders cannot be imported ({type(exc).__name__}: {exc})")
            return
        hardware = getattr(encoders, "_hw_encoder_available", None)
        if hardware is None:  # an older picamera2: only the VC4 Pis (4 and older) existed
            hardware = getattr(getattr(module.Picamera2, "platform", None), "name", "VC4") == "VC4"
        if not hardware:
            self._set_reason("this Pi has no hardware JPEG encoder (the Pi 5's MJPEGEncoder encodes in software)")
            return
        self._encoders, self._output_base = encoders, outputs.Output
        self._set_reason(None)

    def detach(self, cam: Any) -> None:
        """The camera is closing: stop the codec and refuse requests until the next attach."""
        self.stop(cam)
        self._set_reason("camera not open")

    def apply(self, cam: Any) -> None:
        """Start, restart (another quality) or stop the codec as the stream wants; between two frames."""
        with self._cond:
            wanted = self._wanted if self._unavailable() is None else None
        if wanted == self._quality and (wanted is None) == (self._encoder is None):
            return
        self.stop(cam)
        if wanted is None:
            return
        try:
            self._start(cam, wanted)
        except Exception as exc:  # e.g. /dev/video11 busy or missing: the CPU encodes the stream instead
            with self._cond:
                self._encoder = None
            self._set_reason(f"the hardware JPEG encoder did not start ({type(exc).__name__}: {exc})")
            log.warning("%s; the stream is encoded on the CPU", self._reason)

    def _start(self, cam: Any, quality: int) -> None:
        stream = (cam.camera_configuration() or {})["main"]
        width, height = (int(v) for v in stream["size"])
        frame_limits = dict(cam.camera_controls).get("FrameDurationLimits") or (33333, None, None)
        nominal_fps = min(NOMINAL_FPS_MAX, 1e6 / max(1.0, float(frame_limits[0] or 33333)))
        bitrate = bitrate_for(quality, width, height, nominal_fps)
        encoder = self._encoders.MJPEGEncoder(bitrate=bitrate)
        sink = self._sink_for(encoder)
        with self._cond:
            # Set before start_encoder: the codec may deliver its first JPEG before the call returns.
            self._encoder, self._quality, self._bitrate, self._size = encoder, quality, bitrate, (width, height)
        cam.start_encoder(encoder, sink, name="main")
        self._starts += 1
        log.info(
            "hardware JPEG encoder on for the stream: %dx%d, quality %d (%.1f Mbit/s at %.0f fps nominal)",
            width,
            height,
            quality,
            bitrate / 1e6,
            nominal_fps,
        )

    def stop(self, cam: Any) -> None:
        """Stop the codec if it runs (before the camera is reconfigured or closed); between two frames."""
        with self._cond:
            encoder, self._encoder = self._encoder, None
            self._quality = self._size = None
            self._recent.clear()
            self._cond.notify_all()
        if encoder is None:
            return
        try:
            cam.stop_encoder(encoder)
        except Exception as exc:
            log.warning("stopping the hardware JPEG encoder: %s", exc)

    def _sink_for(self, encoder: Any) -> Any:
        received = self._received

        class StreamOutput(self._output_base):  # type: ignore[name-defined]
            """Takes each JPEG the codec makes (picamera2 calls outputframe on the codec's thread)."""

            def outputframe(
                self, frame: Any, keyframe: bool = True, timestamp: int | None = None, packet: Any = None, audio: bool = False
            ) -> None:
                if not audio:
                    received(encoder, frame, timestamp)

        return StreamOutput()

    def _received(self, encoder: Any, frame: Any, timestamp: int | None) -> None:
        if frame is None or timestamp is None:
            return
        # picamera2 gives the time since the encoder's first frame; its first frame's sensor time makes it absolute again.
        first = getattr(encoder, "firsttimestamp", None) or 0
        data = bytes(frame)
        with self._cond:
            if encoder is not self._encoder:
                return  # a JPEG of an encoder already stopped
            self._recent.append((int(first) + int(timestamp), data))
            self._frames += 1
            self._cond.notify_all()

    # -- the stream's side (CameraJpeg)

    def want(self, quality: int | None) -> bool:
        with self._cond:
            if quality is None or self._unavailable() is not None:
                self._wanted = None
                return False
            self._wanted = int(quality)
            return True

    def size(self) -> tuple[int, int] | None:
        with self._cond:
            return self._size if self._encoder is not None else None

    def jpeg_for(self, sensor_ts_ns: int, timeout: float) -> bytes | None:
        key = int(sensor_ts_ns) // 1000
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:
                for ts, jpeg in reversed(self._recent):
                    if abs(ts - key) <= MATCH_US:
                        return jpeg
                if self._encoder is None:
                    return None
                if self._recent and self._recent[-1][0] > key + MATCH_US:
                    return None  # the codec is past this frame: it started after it, or skipped it
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def describe(self) -> dict[str, Any]:
        with self._cond:
            reason = self._unavailable()
            running = self._encoder is not None
            return {
                "state": "on" if running else ("unavailable" if reason else "off"),
                "reason": reason,
                "quality": self._quality,
                "bitrate": self._bitrate,
                "size": list(self._size) if self._size else None,
                "frames": self._frames,
                "starts": self._starts,
            }

    # -- helpers

    def _unavailable(self) -> str | None:
        if self._cfg.hw_encoder == "off":
            return "camera.hw_encoder is off"
        return self._reason

    def _set_reason(self, reason: str | None) -> None:
        with self._cond:
            self._reason = reason
            if reason is not None:
                self._wanted = None
