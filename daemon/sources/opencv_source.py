"""OpenCV frame source: a USB camera (index or V4L2 path), an RTSP/HTTP stream, or a video file.

All device reads happen on one reader thread (`picamd-opencv-reader`) that
owns the `cv2.VideoCapture`: it opens nothing twice, releases the device
itself when it stops, and keeps only the newest frame. `read(timeout)`
therefore waits on a condition and returns within `timeout` even when a
network stream hangs inside FFmpeg. A dropped stream, an unplugged camera
or the end of a non-looping video raises `SourceError` from `read`, so the
capture loop reopens the source with backoff.

Video files are played in real time (paced to the file's own frame rate,
or to `camera.framerate` when the file does not say), so a recorded scene
has the same timing as the live one; `read` never returns frames faster than
`camera.framerate`, whatever the device delivers.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from daemon.core.latest import HandoffFailed, Latest
from daemon.core.redact import is_url
from daemon.core.redact import redact_url as shared_redact_url
from daemon.core.worker import Worker

from .base import Source, SourceError

log = logging.getLogger("picamd.opencv")

#: How long FFmpeg may take to open a network stream, and to deliver one packet, before giving up.
NETWORK_OPEN_TIMEOUT_MS = 8000
NETWORK_READ_TIMEOUT_MS = 5000
#: A USB/V4L2 camera whose read fails this many times in a row is broken (one failed network read is enough).
MAX_CONSECUTIVE_FAILURES = 3
#: How long close() waits for the reader thread to release the device.
CLOSE_WAIT_S = 2.0
#: Frame rates outside this range in a file's header are treated as unknown.
SANE_FILE_FPS = (0.1, 240.0)

_URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


def classify_device(device: str | int) -> tuple[str, str | int]:
    """('index', 0), ('v4l2', '/dev/video0'), ('url', 'rtsp://...') or ('file', '/path/video.avi')."""
    if isinstance(device, int):
        return "index", device
    text = str(device).strip()
    if not text:
        raise SourceError("no camera device given (camera.device is empty)")
    if text.isdigit():
        return "index", int(text)
    if text.lower().startswith(_URL_SCHEMES):
        return "url", text
    if text.startswith("/dev/"):
        return "v4l2", text
    return "file", text


def redact_url(url: str) -> str:
    """rtsp://user:secret@host/... -> rtsp://user:***@host/... (stream passwords stay out of logs)."""
    return shared_redact_url(url) if is_url(url) else url


class OpenCVSource(Source):
    name = "opencv"

    def __init__(self, camera: Any, device: str | int | None = None) -> None:
        self._cam = camera
        raw = camera.device if device is None else device
        self._kind, self._device = classify_device(raw)
        self._fps = float(camera.framerate)
        self._reader_worker = Worker("opencv-reader", lambda: None, repeat=False, join_timeout_s=CLOSE_WAIT_S)
        self._open = False
        self._frames = Latest[tuple[np.ndarray, dict[str, Any]]]()  # the reader thread's newest frame, or its failure
        self._returned = 0  # version of the frame read() returned last
        self._next_due: float | None = None
        self._pending_fps: float | None = None
        self._props: dict[str, Any] = {}
        self._file_fps: float | None = None
        self._loops = 0
        self._released = threading.Event()
        self._released.set()

    @property
    def device(self) -> str | int:
        return self._device

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def shown_device(self) -> str:
        device = str(self._device)
        return redact_url(device) if self._kind == "url" else device

    # -- opening -----------------------------------------------------------------------------

    def _make_capture(self) -> cv2.VideoCapture:
        if self._kind == "url":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NETWORK_OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, NETWORK_READ_TIMEOUT_MS]
            return cv2.VideoCapture(self._device, cv2.CAP_FFMPEG, params)
        if self._kind == "file":
            return cv2.VideoCapture(self._device, cv2.CAP_FFMPEG)
        if self._kind == "index":
            return cv2.VideoCapture(int(self._device), cv2.CAP_V4L2)
        return cv2.VideoCapture(self._device, cv2.CAP_V4L2)

    def _configure_device(self, cap: cv2.VideoCapture) -> None:
        # USB cameras deliver full resolution at a useful rate only as MJPEG; a camera without it ignores the request.
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(self._cam.width))
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(self._cam.height))
        cap.set(cv2.CAP_PROP_FPS, float(self._fps))
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not one from a queue of old ones

    def open(self) -> None:
        if self._open and self._reader_worker.alive:
            return
        if not self._released.wait(CLOSE_WAIT_S):
            raise SourceError(f"{self.shown_device}: the previous capture has not released the device yet")
        if self._kind == "file" and not Path(str(self._device)).is_file():
            raise SourceError(f"no such video file: {self._device}")
        started = time.monotonic()
        try:
            cap = self._make_capture()
        except cv2.error as exc:
            raise SourceError(f"{self.shown_device}: {exc}") from exc
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self._kind} {self.shown_device}")
        if self._kind in ("index", "v4l2"):
            self._configure_device(cap)
        # The first frame proves the device really delivers (a V4L2 node can open and never stream).
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            raise SourceError(f"{self.shown_device} opened but gave no frame")
        self._file_fps = None
        if self._kind == "file":
            fps = cap.get(cv2.CAP_PROP_FPS)
            if SANE_FILE_FPS[0] <= fps <= SANE_FILE_FPS[1]:
                self._file_fps = float(fps)
        self._props = self._read_props(cap)
        self._props.update({"width": int(frame.shape[1]), "height": int(frame.shape[0])})
        self._frames = Latest()
        self._returned = 0
        self._next_due = None
        self._released.clear()
        self._loops = 0
        self._open = True
        self._reader_worker.start(lambda: self._reader(cap, frame))
        log.info(
            "opened %s %s: %dx%d%s in %.2f s",
            self._kind,
            self.shown_device,
            frame.shape[1],
            frame.shape[0],
            f", file at {self._file_fps:g} fps" if self._file_fps else "",
            time.monotonic() - started,
        )
        if (frame.shape[1], frame.shape[0]) != (int(self._cam.width), int(self._cam.height)) and self._kind in ("index", "v4l2"):
            log.info(
                "%s gives %dx%d instead of the configured %dx%d; using what it gives",
                self.shown_device,
                frame.shape[1],
                frame.shape[0],
                int(self._cam.width),
                int(self._cam.height),
            )

    @staticmethod
    def _read_props(cap: cv2.VideoCapture) -> dict[str, Any]:
        props: dict[str, Any] = {"backend": cap.getBackendName()}
        for key, prop in (
            ("fps", cv2.CAP_PROP_FPS),
            ("brightness", cv2.CAP_PROP_BRIGHTNESS),
            ("contrast", cv2.CAP_PROP_CONTRAST),
            ("saturation", cv2.CAP_PROP_SATURATION),
            ("gain", cv2.CAP_PROP_GAIN),
            ("exposure", cv2.CAP_PROP_EXPOSURE),
            ("auto_exposure", cv2.CAP_PROP_AUTO_EXPOSURE),
            ("auto_wb", cv2.CAP_PROP_AUTO_WB),
            ("frame_count", cv2.CAP_PROP_FRAME_COUNT),
        ):
            try:
                value = float(cap.get(prop))
            except cv2.error:
                continue
            # OpenCV answers 0 or -1 for properties a backend does not know.
            if math.isfinite(value) and value not in (0.0, -1.0):
                props[key] = value
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        if fourcc > 0:
            props["fourcc"] = "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00")
        return props

    # -- the reader thread -------------------------------------------------------------------

    def _reader(self, cap: cv2.VideoCapture, first: np.ndarray) -> None:
        failures = 0
        frames_since_rewind = 1
        frame: np.ndarray | None = first
        file_interval = 1.0 / self._file_fps if self._file_fps else None
        next_file_frame = time.monotonic()
        try:
            while not self._reader_worker.stopping.is_set():
                if frame is None:
                    pending = self._pending_fps
                    if pending is not None:
                        self._pending_fps = None
                        if self._kind in ("index", "v4l2"):
                            cap.set(cv2.CAP_PROP_FPS, pending)
                    ok, frame = cap.read()
                    if not ok or frame is None:
                        frame = None
                        if self._kind == "file":
                            if not self._cam.loop_video:
                                self._fail("end of video")
                                return
                            if frames_since_rewind == 0:
                                self._fail("no readable frame after rewinding the video")
                                return
                            cap = self._rewind(cap)
                            frames_since_rewind = 0
                            continue
                        failures += 1
                        # A network read that fails has already waited out FFmpeg's timeout: the stream is gone.
                        if self._kind == "url" or failures >= MAX_CONSECUTIVE_FAILURES:
                            self._fail("stream ended or stalled" if self._kind == "url" else "the camera stopped delivering frames")
                            return
                        continue
                    failures = 0
                    frames_since_rewind += 1
                if self._kind == "file":
                    # Play the file in real time: wait for this frame's moment.
                    interval = file_interval or 1.0 / max(0.05, self._fps)
                    delay = next_file_frame - time.monotonic()
                    if delay > 0 and self._reader_worker.stopping.wait(delay):
                        return
                    now = time.monotonic()
                    next_file_frame = next_file_frame + interval if now - next_file_frame < interval else now + interval
                    info = {"video_pos_ms": round(float(cap.get(cv2.CAP_PROP_POS_MSEC)), 3), "video_loops": self._loops}
                else:
                    info = {}
                self._publish(self._transform(frame), info)
                frame = None
        except Exception as exc:  # an OpenCV or FFmpeg error is a broken source, never a dead daemon
            log.debug("reader failed", exc_info=exc)
            self._fail(f"reader failed: {exc}")
        finally:
            cap.release()
            self._released.set()

    def _rewind(self, cap: cv2.VideoCapture) -> cv2.VideoCapture:
        """Back to the first frame of the video; reopens the file when the container cannot seek."""
        self._loops += 1
        log.debug("video %s: looping (%d)", self._device, self._loops)
        if cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
            return cap
        cap.release()
        return self._make_capture()

    def _transform(self, frame: np.ndarray) -> np.ndarray:
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        elif frame.shape[2] == 4:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        h, v = bool(self._cam.hflip), bool(self._cam.vflip)
        if h or v:
            frame = cv2.flip(frame, -1 if (h and v) else (1 if h else 0))
        return frame

    def _publish(self, frame: np.ndarray, info: dict[str, Any]) -> None:
        self._frames.put((frame, info))

    def _fail(self, reason: str) -> None:
        self._frames.fail(reason)
        log.warning("%s %s: %s", self._kind, self.shown_device, reason)

    # -- Source interface --------------------------------------------------------------------

    def read(self, timeout: float) -> tuple[np.ndarray, dict[str, Any]] | None:
        if not self._open:
            raise SourceError(f"{self.shown_device} is not open")
        deadline = time.monotonic() + max(0.0, timeout)
        # Never faster than the configured frame rate.
        if self._next_due is not None:
            wait = min(deadline, self._next_due) - time.monotonic()
            if wait > 0 and self._reader_worker.stopping.wait(wait):
                raise SourceError(f"{self.shown_device} was closed")
            if time.monotonic() < self._next_due:
                return None
        try:
            got = self._frames.wait_newer(self._returned, max(0.0, deadline - time.monotonic()))
        except HandoffFailed as exc:
            raise SourceError(f"{self.shown_device}: {exc}") from None
        if got is None:
            return None
        version, (frame, info) = got
        # Versions count the reader's frames: a gap is frames it replaced before this read took one.
        dropped = version - self._returned - 1
        self._returned = version
        now = time.monotonic()
        interval = 1.0 / max(0.05, self._fps)
        due = self._next_due if self._next_due is not None else now
        self._next_due = due + interval if now - due < interval else now + interval
        return frame, {**info, "dropped": dropped} if dropped > 0 else dict(info)

    def close(self) -> None:
        self._frames.fail("closed")
        was_open, self._open = self._open, False
        if was_open and not self._reader_worker.stop():
            # The thread is inside a blocking read; it releases the device as soon as that read returns.
            log.warning("%s: reader still blocked in a read; the device is released when it returns", self.shown_device)
        self._frames.clear()

    def set_framerate(self, fps: float) -> None:
        if not fps or fps <= 0 or not math.isfinite(fps):
            raise ValueError(f"frame rate must be positive, not {fps!r}")
        self._fps = float(fps)
        self._pending_fps = float(fps)  # applied by the reader thread, which owns the device

    def controls(self) -> dict[str, Any]:
        out = {"device": self.shown_device, "kind": self._kind}
        out.update(self._props)
        return out

    def exposure(self) -> dict[str, Any]:
        keys = ("exposure", "gain", "auto_exposure", "brightness")
        out = {k: self._props[k] for k in keys if k in self._props}
        out["note"] = "values as the OpenCV backend reports them (units depend on the driver), read when the device was opened"
        return out

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.name, "kind": self._kind, "device": self.shown_device, "framerate": self._fps}
        if "width" in self._props:
            d.update(width=self._props["width"], height=self._props["height"])
        if self._kind == "file":
            d["file_fps"] = self._file_fps
            d["loop"] = bool(self._cam.loop_video)
        return d
