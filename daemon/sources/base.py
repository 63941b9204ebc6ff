"""The interface every frame source implements.

Frames are BGR uint8 arrays of shape (height, width, 3) (OpenCV's order; the
picamera2 format RGB888 is laid out the same way). `read` returns a fresh
array for every frame, never one it will reuse, so the capture loop can hand
the reference on to readers without copying.

Two optional items of a frame's info let a camera do work the CPU would
otherwise do: `info["lores"]`, the frame already downscaled to the ring's
size by the camera's ISP (BGR uint8 (h, w, 3), a fresh array; the capture
loop copies it into the ring instead of resizing the frame, and resizes as
before when it is absent or of another size), and `info["sensor_ts_ns"]`,
the camera's own timestamp of the frame, which pairs the frame with a JPEG
the camera encoded itself (`camera_jpeg()`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

import numpy as np


class SourceError(RuntimeError):
    """The source failed; the capture loop closes it and reopens it with backoff."""


class CameraJpeg(Protocol):
    """A camera that encodes the stream's JPEGs itself (the Pi's hardware MJPEG encoder).

    The stream's encoder thread asks for it with `want` while someone watches and
    nothing is drawn on the image, and takes each frame's JPEG by the frame's
    `sensor_ts_ns`; whenever this gives None it encodes the frame on the CPU.
    """

    def want(self, quality: int | None) -> bool:
        """Run the encoder at this JPEG quality (None: stop it). False when it cannot run; idempotent."""
        ...

    def size(self) -> tuple[int, int] | None:
        """(width, height) of the JPEGs while the encoder runs, else None."""
        ...

    def jpeg_for(self, sensor_ts_ns: int, timeout: float) -> bytes | None:
        """The JPEG of the frame with this timestamp, waiting up to `timeout` s; None when the encoder has none for it."""
        ...

    def describe(self) -> dict[str, Any]:
        """State for health: whether it runs, at what quality, frames encoded, why not."""
        ...


def night_applied(
    mode: str,
    exposure_us: int,
    gain: float,
    *,
    requested: tuple[int, float],
    notes: list[str],
    note: str,
    frame_interval_s: float | None,
    max_frame_interval_s: float,
    frame_duration_limits_us: list[int] | None = None,
) -> dict[str, Any]:
    """What `apply_night` returns once a camera switched to night: what it applied, what was asked (`requested`:
    exposure and gain), whether and why (`notes`) it clamped; `note` says how the camera exposes in `mode`."""
    result: dict[str, Any] = {
        "night": True,
        "applied": True,
        "mode": mode,
        "exposure_us": exposure_us,
        "gain": gain,
        "requested_exposure_us": int(requested[0]),
        "requested_gain": float(requested[1]),
        "clamped": bool(notes),
    }
    if frame_duration_limits_us is not None:
        result["frame_duration_limits_us"] = frame_duration_limits_us
    result["frame_interval_s"] = None if frame_interval_s is None else round(frame_interval_s, 6)
    result["max_frame_interval_s"] = round(max_frame_interval_s, 6)
    result["note"] = "; ".join([note] + notes)
    return result


class Source(ABC):
    #: short name shown in logs and health ("synthetic", "picamera2", "opencv")
    name: str = "source"

    @abstractmethod
    def open(self) -> None:
        """Open the device. Raises SourceError when it cannot."""

    @abstractmethod
    def read(self, timeout: float) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The next frame and what the source knows of it (`exposure_us`, `gain`, ...).

        Paces itself to the configured frame rate. Returns None if no frame came
        within `timeout` seconds; raises SourceError when the source is broken.
        Must return within about `timeout` seconds whatever the device does.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the device. Safe to call twice or after a failed open."""

    def set_framerate(self, fps: float) -> None:
        """Apply a new day frame rate live (no-op where the source cannot)."""
        return None

    def apply_night(self, night: bool, mode: str, exposure_us: int, gain: float) -> dict[str, Any]:
        """Switch to (or back from) night exposure. Returns what was really applied (clamped values, notes)."""
        return {"night": night, "applied": False, "note": f"{self.name} has no exposure controls"}

    def controls(self) -> dict[str, Any]:
        """The camera's controls with their limits (dump_cam_controls)."""
        return {}

    def exposure(self) -> dict[str, Any]:
        """The current exposure metadata (dump_cam_exposure)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What this source is (for logs, health and `cameras`)."""
        return {"source": self.name}

    def camera_jpeg(self) -> CameraJpeg | None:
        """The camera's own JPEG encoder for the stream, if it has one (the same object across reopens)."""
        return None
