"""Mean and sigma-clipped stacking of frames.

A stack of N frames with independent noise cuts the noise by sqrt(N), which
is how a night sky or a dim room gets a clean image out of short, noisy
frames. Sigma clipping also drops what appears in only a few frames (hot
pixels, aircraft, satellites, a moth in front of the lens).

Memory matters on a Pi Zero (about 400 MB for everything), so nothing here
builds a list of float copies of the frames: the mean accumulates uint8 rows
into one float32 band at a time, and the sigma clip converts one band of rows
of all frames at a time, sized to stay under `max_band_bytes`. Float32 sums of
uint8 values are exact up to 65,000 frames, so the result does not depend on
the band size.
"""
from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger("picamd.stacking")

METHODS = ("mean", "sigma_clip")

# A mean band this small stays in the CPU cache while every frame's rows are added to it.
MEAN_BAND_BYTES = 1 << 20
# A sigma-clip band holds float copies of all N frames' rows plus a few temporaries of that size.
CLIP_BAND_BYTES = 16 << 20
_CLIP_TEMPORARIES = 4  # samples, deviations, median scratch, mask and sums


def _check_stack(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise TypeError("frames must be a numpy array of shape (N, H, W[, C])")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, not {frames.dtype}")
    if frames.ndim not in (3, 4):
        raise ValueError(f"frames must have shape (N, H, W[, C]), not {frames.shape}")
    if frames.shape[0] < 1:
        raise ValueError("cannot stack zero frames")
    return frames


def _rows_per_band(row_bytes: int, budget: int) -> int:
    return max(1, budget // max(1, row_bytes))


def _to_uint8(values: np.ndarray, out: np.ndarray) -> None:
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    out[...] = values  # float -> uint8 cast into the caller's rows, no extra full-size copy


def stack_mean(frames: np.ndarray, *, max_band_bytes: int = MEAN_BAND_BYTES) -> np.ndarray:
    """Per-pixel mean of `frames` (N, H, W[, C]) uint8, rounded back to uint8."""
    frames = _check_stack(frames)
    n, height = frames.shape[0], frames.shape[1]
    out = np.empty(frames.shape[1:], dtype=np.uint8)
    row_values = int(np.prod(frames.shape[2:]))
    rows = _rows_per_band(row_values * 4, max_band_bytes)
    acc = np.empty((min(rows, height), *frames.shape[2:]), dtype=np.float32)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        band = acc[: bottom - top]
        band.fill(0.0)
        for i in range(n):
            # uint8 rows are converted chunk by chunk inside the ufunc: no float copy of the frame.
            np.add(band, frames[i, top:bottom], out=band)
        np.divide(band, n, out=band)
        _to_uint8(band, out[top:bottom])
    return out


def stack_sigma_clip(frames: np.ndarray, sigma: float, iterations: int = 2, *,
                     max_band_bytes: int = CLIP_BAND_BYTES) -> np.ndarray:
    """Per-pixel mean after rejecting samples further than `sigma` standard deviations from the centre.

    The first pass measures distances from the per-pixel median, which an
    outlier cannot drag towards itself the way it drags the mean; later passes
    use the mean of the samples still kept. The spread is always the standard
    deviation of the kept samples. A lone outlier among N samples lies at most
    (N-1)/sqrt(N) standard deviations from the mean, so rejecting at sigma=3
    needs about 10 frames or more; with fewer the result is close to the mean.
    """
    frames = _check_stack(frames)
    if not (sigma > 0 and np.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive number, not {sigma!r}")
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    n, height = frames.shape[0], frames.shape[1]
    out = np.empty(frames.shape[1:], dtype=np.uint8)
    if n < 3:  # nothing can be called an outlier among one or two samples
        return stack_mean(frames)
    row_values = int(np.prod(frames.shape[2:]))
    rows = _rows_per_band(n * row_values * 4 * _CLIP_TEMPORARIES, max_band_bytes)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        result = _clip_band(frames[:, top:bottom], float(sigma), iterations)
        _to_uint8(result, out[top:bottom])
    return out


def _clip_band(block: np.ndarray, sigma: float, iterations: int) -> np.ndarray:
    samples = block.astype(np.float32)
    n = samples.shape[0]
    keep = np.ones(samples.shape, dtype=bool)
    dev = np.empty_like(samples)
    count = np.full(samples.shape[1:], n, dtype=np.float32)
    mean = np.sum(samples, axis=0, dtype=np.float32) / n
    for it in range(iterations):
        # spread of the kept samples around their own mean
        np.subtract(samples, mean, out=dev)
        np.square(dev, out=dev)
        std = np.sqrt(np.sum(dev, axis=0, where=keep, dtype=np.float32) / count)
        centre = np.median(samples, axis=0) if it == 0 else mean
        np.subtract(samples, centre, out=dev)
        np.abs(dev, out=dev)
        new_keep = keep & (dev <= sigma * std)
        new_count = new_keep.sum(axis=0, dtype=np.float32)
        emptied = new_count == 0
        if emptied.any():
            # every sample of these pixels was rejected (small sigma, two-valued pixel): keep them as they were
            new_keep[:, emptied] = keep[:, emptied]
            new_count[emptied] = count[emptied]
        keep, count = new_keep, new_count
        mean = np.sum(samples, axis=0, where=keep, dtype=np.float32)
        np.divide(mean, count, out=mean)
    return mean


def stack(frames: np.ndarray, method: str = "mean", sigma: float = 3.0) -> np.ndarray:
    """Stack with the configured method: `mean` or `sigma_clip`."""
    if method == "mean":
        return stack_mean(frames)
    if method == "sigma_clip":
        return stack_sigma_clip(frames, sigma)
    raise ValueError(f"unknown stacking method {method!r} (use {' or '.join(METHODS)})")


class MeanAccumulator:
    """Running float32 sum of frames that arrive one by one (the full-resolution night stack).

    Holds one float32 array of the frame's shape (4 bytes per value), never the frames.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(s) for s in shape)
        self._sum = np.zeros(self.shape, dtype=np.float32)
        self.count = 0

    @property
    def nbytes(self) -> int:
        return self._sum.nbytes

    def add(self, frame: np.ndarray) -> None:
        if frame.shape != self.shape:
            raise ValueError(f"frame shape {frame.shape} does not match the stack's {self.shape}")
        if frame.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, not {frame.dtype}")
        np.add(self._sum, frame, out=self._sum)
        self.count += 1

    def result(self, *, max_band_bytes: int = MEAN_BAND_BYTES) -> np.ndarray:
        """The mean so far as uint8. The accumulator keeps its sum, so more frames can follow."""
        if self.count == 0:
            raise ValueError("no frames were added")
        out = np.empty(self.shape, dtype=np.uint8)
        height = self.shape[0]
        row_values = int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1
        rows = _rows_per_band(row_values * 4, max_band_bytes)
        scratch = np.empty((min(rows, height), *self.shape[1:]), dtype=np.float32)
        for top in range(0, height, rows):
            bottom = min(top + rows, height)
            band = scratch[: bottom - top]
            np.divide(self._sum[top:bottom], self.count, out=band)
            _to_uint8(band, out[top:bottom])
        return out


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
