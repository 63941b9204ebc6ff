"""The motion gate of the detector: has the ring frame (or the zone) changed since the last inference?

Motion measures named regions only; the detector needs a whole-frame (or
zone) answer, asked at most `detect.max_fps` times a second by the detection
worker, never on the capture loop. It is cheap on purpose: the small ring
frame in grey, an absolute difference against the grey frame of the last
inference, a fixed pixel threshold and a count. Comparing with the last
inference (not the previous frame) means slow movement adds up until it
counts, and a still scene never opens the gate.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Grey-level difference that counts a pixel as changed (sensor noise and JPEG ringing stay below it).
PIXEL_THRESHOLD = 25


def zone_rect(zone: Sequence[float] | None, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A zone in fractions of the frame (x, y, w, h; see `zone_fractions`) as pixels x0, y0, x1, y1 of a
    `width` x `height` frame; None for the whole frame or a zone that leaves nothing."""
    if not zone:
        return None
    x, y, w, h = (float(v) for v in zone)
    x0, y0 = max(0, int(round(x * width))), max(0, int(round(y * height)))
    x1, y1 = min(width, int(round((x + w) * width))), min(height, int(round((y + h) * height)))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return x0, y0, x1, y1


def zone_fractions(zone: Sequence[float] | None, full_size: tuple[int, int]) -> list[float] | None:
    """The zone as fractions of the full frame (pixels are divided by its size); None for the whole frame."""
    if not zone:
        return None
    nums = [float(v) for v in zone]
    if all(v <= 1 for v in nums):
        return nums
    fw, fh = full_size
    return [nums[0] / fw, nums[1] / fh, nums[2] / fw, nums[3] / fh]


class ChangeGate:
    """Fraction of changed pixels between the newest ring frame and the reference (the last inference's)."""

    def __init__(self) -> None:
        self._reference: np.ndarray | None = None
        self._reference_key: tuple[object, ...] | None = None
        self._pending: np.ndarray | None = None  # the frame last measured, the reference once it is accepted
        self.last_fraction: float | None = None

    def reset(self) -> None:
        self._reference = self._pending = None
        self._reference_key = None

    def measure(self, ring_frame: np.ndarray, zone: list[float] | None) -> float | None:
        """The changed fraction against the reference; None when there is no comparable reference yet (the
        frame then becomes the reference)."""
        grey = self._grey(ring_frame, zone)
        key = (grey.shape, None if zone is None else tuple(zone))
        if self._reference is None or self._reference_key != key:
            self._reference, self._reference_key = grey, key
            self.last_fraction = None
            return None
        diff = cv2.absdiff(grey, self._reference)
        changed = cv2.countNonZero(cv2.threshold(diff, PIXEL_THRESHOLD, 255, cv2.THRESH_BINARY)[1])
        self.last_fraction = changed / float(grey.size)
        self._pending = grey
        return self.last_fraction

    def accept(self) -> None:
        """The frame last measured becomes the reference (an inference ran on it)."""
        if self._pending is not None:
            self._reference, self._pending = self._pending, None

    @staticmethod
    def _grey(ring_frame: np.ndarray, zone: list[float] | None) -> np.ndarray:
        h, w = ring_frame.shape[:2]
        rect = zone_rect(zone, w, h)
        if rect is not None:
            x0, y0, x1, y1 = rect
            ring_frame = ring_frame[y0:y1, x0:x1]
        if ring_frame.ndim == 3:
            return cv2.cvtColor(ring_frame, cv2.COLOR_BGR2GRAY)
        return np.ascontiguousarray(ring_frame)
