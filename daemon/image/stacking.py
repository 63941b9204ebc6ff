"""Mean and sigma-clipped stacking of frames.

A stack of N frames with independent noise cuts the noise by sqrt(N), which
is how a night sky or a dim room gets a clean image out of short, noisy
frames. Sigma clipping also drops what appears in only a few frames (hot
pixels, aircraft, satellites, a moth in front of the lens).

Memory matters on a Pi Zero (about 400 MB for everything), so nothing here
builds a list of float copies of the frames: the mean accumulates uint8 rows
into one float32 band at a time. Float32 sums of uint8 values are exact up to
65,000 frames, so the result does not depend on the band size.

Sigma clipping, exactly (`stack_sigma_clip`): per pixel and channel,

1. the first pass keeps the samples within `sigma` standard deviations of the
   median, the spread being the standard deviation of all N samples (an
   outlier cannot drag the median towards itself the way it drags the mean);
2. each later pass keeps, of those, the samples within `sigma` standard
   deviations of the mean of the kept samples, the spread being that of the
   kept samples (so a pass only ever removes samples);
3. a pass that would remove every sample of a pixel (a tiny sigma, a
   two-valued pixel) leaves that pixel as it was; the result is the mean of
   the samples kept, rounded to uint8.

A sample exactly on the boundary is kept. The decisions are made on integers
(see `_Clipper`), so they are exact but for the float rounding of
sigma * sqrt(...), about 1e-7 of it; the float implementation this replaced
(float copies of all samples, np.median, masks) rounded at about 1e-5 grey
levels, so the two can differ on the rare sample that sits within that of a
boundary.

With k equal outliers among n samples (p = k/n) the spread of all samples
grows to about their distance d times sqrt(p(1-p)), so the first pass rejects
them only when sigma < 1/sqrt(p(1-p)): one of 16 up to 4.1, two up to 3.0,
three up to 2.6. Several outliers at one pixel therefore need a smaller
`export.stack_sigma` (2 to 2.5) than a lone one.

How it is fast (about 4x the mean instead of 90x): the samples are uint8, so
each band of rows of the N frames is sorted per pixel by a Batcher odd-even
merge sorting network of numpy min/max operations over whole bands (each
comparator is two vectorised calls over cache-sized rows). The median is then
two of the sorted rows, and since a pass keeps an interval of values, its kept
samples are a contiguous run of the sorted rows: the rejected ones are found by
walking in from both ends only as far as any pixel of the band still rejects
(one or two rows for real data), and the kept sums are the totals minus the
rejected. Sums and sums of squares are integers held exactly in float32 (in
float64 beyond 258 frames); the spread is sqrt(n*sum(x^2) - sum(x)^2) / n.

The frames themselves must be held for this (an exact clip needs all N
samples of a pixel); the scratch is one band: N sorted copies of its rows plus
a dozen float rows, bounded by `max_band_bytes`. Callers that cannot afford N
frames stack with the mean instead (see `daemon.storage.export`).
"""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np

log = logging.getLogger("picamd.stacking")

METHODS = ("mean", "sigma_clip")

# A mean band this small stays in the CPU cache while every frame's rows are added to it.
MEAN_BAND_BYTES = 1 << 20
# Scratch of one sigma-clip band (N sorted uint8 copies of its rows and a dozen float rows): about 20 rows of
# 16 frames of 1024x768 BGR, small enough to stay in a 2-4 MB cache while the network works on it.
CLIP_BAND_BYTES = 4 << 20
_CLIP_FLOAT_ROWS = 11  # float rows per band: sums and squares (all, kept, rejected), counts, spread, scratch
_EXACT_FLOAT32_FRAMES = 258  # 258 * 255**2 < 2**24: sums of squares of up to this many uint8 frames are exact in float32


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


def stack_sigma_clip(frames: np.ndarray, sigma: float, iterations: int = 2, *, max_band_bytes: int = CLIP_BAND_BYTES) -> np.ndarray:
    """Per-pixel mean after rejecting samples further than `sigma` standard deviations from the centre.

    The first pass measures distances from the per-pixel median with the spread
    of all samples; later passes use the mean and spread of the samples still
    kept (see the module docstring for the exact rules). A lone outlier among N
    samples lies at most (N-1)/sqrt(N) standard deviations from the mean, so
    rejecting at sigma=3 needs about 10 frames or more; with fewer the result is
    close to the mean.
    """
    frames = _check_stack(frames)
    if not (sigma > 0 and np.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive number, not {sigma!r}")
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    n, height = frames.shape[0], frames.shape[1]
    if n < 3:  # nothing can be called an outlier among one or two samples
        return stack_mean(frames)
    width = int(np.prod(frames.shape[2:]))  # values in a row: pixels times channels
    out = np.empty(frames.shape[1:], dtype=np.uint8)
    flat_out = out.reshape(height, width)
    sums_type = np.float32 if n <= _EXACT_FLOAT32_FRAMES else np.float64
    row_bytes = width * ((n + 1) + _CLIP_FLOAT_ROWS * np.dtype(sums_type).itemsize)
    rows = min(height, _rows_per_band(row_bytes, max_band_bytes))
    clipper = _Clipper(n, rows, width, float(sigma), iterations, sums_type)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        clipper.band([frames[i, top:bottom].reshape(bottom - top, width) for i in range(n)], flat_out[top:bottom])
    return out


def sorting_network(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort for n wires as (low, high) comparators, in order.

    Built for the next power of two; comparators that touch a wire >= n are
    dropped, which is the same as padding with values larger than any sample.
    """
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = size // 2
    while p > 0:  # Knuth's merge exchange (TAOCP 5.2.2, algorithm M)
        q, r, d = size // 2, 0, p
        while True:
            pairs.extend((i, i + d) for i in range(size - d) if i & p == r and i + d < n)
            if q == p:
                break
            d, q, r = q - p, q // 2, p
        p //= 2
    return pairs


class _Clipper:
    """Scratch rows for one band shape and the passes of the clip; `band()` writes one band's result.

    Every decision is made on integers, so it is exact: a pass keeping |x - S/c| <= sigma * sqrt(c*Q - S^2) / c
    (S, Q: sum and sum of squares of the c samples kept so far) keeps |c*x - S| <= F with
    F = floor(sigma * sqrt(c*Q - S^2)), that is lo = ceil((S - F) / c) <= x <= hi = floor((S + F) / c).
    Those quotients are multiples of 1/c, so rounding them to nearest after a shift of 1/2 - 1/(4c) gives
    the ceiling and floor however float rounds them, in the same cv2 call that saturates to 0..255. The
    first pass is the same with twice the median and the count of all samples. The only rounding left is
    that of sigma * sqrt(...) before the floor.
    """

    def __init__(self, n: int, rows: int, width: int, sigma: float, iterations: int, sums_type: type) -> None:
        self.n = n
        self.sigma = sigma
        self.iterations = iterations
        self.network = sorting_network(n)
        shape = (rows, width)
        # sums and sums of squares: of all samples, of the kept ones, of the rejected ones; kept count; two scratch
        self._sums: list[np.ndarray] = [np.empty(shape, sums_type) for _ in range(9)]
        # c*Q - S^2 is exact in float32 up to 16 frames (16 * 16 * 255^2 < 2^24), in float64 beyond
        spread_type = np.float32 if n <= 16 else np.float64
        self._spread = np.empty(shape, spread_type)
        self._product = np.empty(shape, spread_type)
        self._bytes = [np.empty(shape, np.uint8) for _ in range(5)]
        # Rejected samples per value position: uint8 counts up to 255 frames (a 0/255 mask subtracted is +1 mod 256),
        # beyond that a float sum of the 0/255 masks.
        self._rejected_n: np.ndarray = np.empty(shape, np.uint8 if n <= 255 else sums_type)
        self._spare: list[np.ndarray] = []  # uint8 rows the network writes into, reused from band to band

    def band(self, samples: list[np.ndarray], out: np.ndarray) -> None:
        rows = samples[0].shape[0]
        total, squares, kept, kept_sq, rej, rej_sq, count, num, margin = (f[:rows] for f in self._sums)
        lo, hi, lo_next, hi_next, mask = (b[:rows] for b in self._bytes)
        rej_n = self._rejected_n[:rows]
        n = self.n
        depth = cv2.CV_32F if total.dtype == np.float32 else cv2.CV_64F
        wires, owned = self._sort(samples)

        cv2.add(wires[0], wires[1], dst=total, dtype=depth)
        cv2.multiply(wires[0], wires[0], dst=squares, dtype=depth)
        cv2.accumulateSquare(wires[1], squares)
        for w in wires[2:]:
            cv2.accumulate(w, total)
            cv2.accumulateSquare(w, squares)
        # Pass 1: |x - C/2| <= sigma * sqrt(n*Q - S^2) / n, C twice the median  <=>  |2n*x - n*C| <= F, with
        # F = floor(2 * sigma * sqrt(n*Q - S^2)): lo = ceil(C/2 - F/2n), hi = floor(C/2 + F/2n), multiples of 1/2n.
        cv2.add(wires[(n - 1) // 2], wires[n // 2], dst=num, dtype=depth)
        self._floor_spread(total, squares, float(n), 2.0 * self.sigma, margin, rows)
        cv2.addWeighted(num, 0.5, margin, -0.5 / n, 0.5 - 0.25 / n, dst=lo_next, dtype=cv2.CV_8U)
        cv2.addWeighted(num, 0.5, margin, 0.5 / n, -0.5 + 0.25 / n, dst=hi_next, dtype=cv2.CV_8U)
        for it in range(self.iterations):
            more = it + 1 < self.iterations
            if it > 0:
                # Later passes: lo = ceil((S - F) / c) = round((S - F + c/2 - 1/4) / c), hi likewise.
                self._floor_spread(kept, kept_sq, count, self.sigma, margin, rows)
                cv2.addWeighted(margin, 1.0, count, -0.5, 0.25, dst=margin)
                cv2.subtract(kept, margin, dst=num)
                cv2.divide(num, count, dst=lo_next, dtype=cv2.CV_8U)
                cv2.add(kept, margin, dst=num)
                cv2.divide(num, count, dst=hi_next, dtype=cv2.CV_8U)
                np.maximum(lo_next, lo, out=lo_next)  # a pass only ever removes samples
                np.minimum(hi_next, hi, out=hi_next)
            deepest = self._rejected(wires, lo_next, hi_next, rej, rej_sq if more else None, rej_n, mask)
            if rej_n.dtype != np.uint8:
                np.divide(rej_n, 255.0, out=rej_n)  # a sum of 0/255 masks; exact in float
            emptied = rej_n == n if deepest >= n else None  # only a walk that met itself can reject every sample
            if emptied is None or not emptied.any():
                np.subtract(n, rej_n, out=count)
                np.subtract(total, rej, out=kept)
                if more:
                    np.subtract(squares, rej_sq, out=kept_sq)
                lo, lo_next = lo_next, lo
                hi, hi_next = hi_next, hi
            elif it == 0:  # the pass would reject every sample of these pixels: they keep them all
                np.subtract(n, rej_n, out=count)
                np.subtract(total, rej, out=kept)
                if more:
                    np.subtract(squares, rej_sq, out=kept_sq)
                count[emptied] = n
                kept[emptied] = total[emptied]
                if more:
                    kept_sq[emptied] = squares[emptied]
                lo_next[emptied] = 0
                hi_next[emptied] = 255
                lo, lo_next = lo_next, lo
                hi, hi_next = hi_next, hi
            else:  # ... they keep what the previous pass kept
                changed = ~emptied
                np.subtract(n, rej_n, out=count, where=changed)
                np.subtract(total, rej, out=kept, where=changed)
                if more:
                    np.subtract(squares, rej_sq, out=kept_sq, where=changed)
                np.copyto(lo, lo_next, where=changed)
                np.copyto(hi, hi_next, where=changed)
        cv2.divide(kept, count, dst=out, dtype=cv2.CV_8U)  # rounds half to even, like np.rint
        self._spare.extend(w for w, mine in zip(wires, owned, strict=True) if mine)

    def _floor_spread(
        self, sums: np.ndarray, squares: np.ndarray, count: float | np.ndarray, scale: float, out: np.ndarray, rows: int
    ) -> None:
        """out = floor(scale * sqrt(count * squares - sums^2)), computed where that is exact."""
        spread, product = self._spread[:rows], self._product[:rows]
        kind = spread.dtype
        np.multiply(sums, sums, out=product, dtype=kind)
        if isinstance(count, float) and kind == sums.dtype:
            cv2.addWeighted(squares, count, product, -1.0, 0.0, dst=spread)  # integers below 2^24: exact
        else:
            np.multiply(squares, count, out=spread, dtype=kind)
            np.subtract(spread, product, out=spread)
        if kind != np.float32:
            np.maximum(spread, 0.0, out=spread)  # float32 sums beyond 16 frames may round below zero
        np.sqrt(spread, out=spread)
        np.multiply(spread, scale, out=spread)
        np.floor(spread, out=out, casting="unsafe")

    def _sort(self, samples: list[np.ndarray]) -> tuple[list[np.ndarray], list[bool]]:
        """Sort the samples of every value position: wire j holds the j-th smallest. The inputs are never written."""
        wires = list(samples)
        owned = [False] * len(wires)
        spare = self._spare
        if spare and spare[0].shape != wires[0].shape:
            spare.clear()  # the last, shorter band
        for a, b in self.network:
            x, y = wires[a], wires[b]
            low = spare.pop() if spare else np.empty_like(x)
            np.minimum(x, y, out=low)
            if owned[b]:
                np.maximum(x, y, out=y)
                high = y
                if owned[a]:
                    spare.append(x)
            elif owned[a]:
                np.maximum(x, y, out=x)
                high = x
            else:
                high = spare.pop() if spare else np.empty_like(x)
                np.maximum(x, y, out=high)
            wires[a], wires[b] = low, high
            owned[a] = owned[b] = True
        return wires, owned

    @staticmethod
    def _rejected(
        wires: list[np.ndarray],
        lo: np.ndarray,
        hi: np.ndarray,
        sums: np.ndarray,
        squares: np.ndarray | None,
        count: np.ndarray,
        mask: np.ndarray,
    ) -> int:
        """Sum, sum of squares and count (uint8, or 255 x count in float) of the samples outside [lo, hi].

        The wires are sorted, so the samples below `lo` are the first few wires and those above `hi` the last
        few: walk in from each end until no value position of the band rejects any more. Returns how many
        wires the two walks covered together.
        """
        sums.fill(0)
        count.fill(0)
        if squares is not None:
            squares.fill(0)
        n = len(wires)
        covered = 0
        for order, test, bound in ((range(n), cv2.CMP_LT, lo), (range(n - 1, -1, -1), cv2.CMP_GT, hi)):
            for j in order:
                cv2.compare(wires[j], bound, test, dst=mask)
                if not cv2.countNonZero(mask):
                    break
                covered += 1
                cv2.accumulate(wires[j], sums, mask)
                if squares is not None:
                    cv2.accumulateSquare(wires[j], squares, mask)
                if count.dtype == np.uint8:
                    np.subtract(count, mask, out=count)
                else:
                    cv2.accumulate(mask, count, mask)
        return covered


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
