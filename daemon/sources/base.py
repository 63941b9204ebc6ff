"""The interface every frame source implements.

Frames are BGR uint8 arrays of shape (height, width, 3) (OpenCV's order; the
picamera2 format RGB888 is laid out the same way). `read` returns a fresh
array for every frame, never one it will reuse, so the capture loop can hand
the reference on to readers without copying.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class SourceError(RuntimeError):
    """The source failed; the capture loop closes it and reopens it with backoff."""


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
