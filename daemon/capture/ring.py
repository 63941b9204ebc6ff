"""Preallocated ring buffer of downscaled frames with their metadata.

One writer (the capture loop), many readers. The pixel storage is a single
numpy array allocated once; the writer resizes each camera frame straight into
the next slot (`next_slot()` then `commit()`), so nothing is allocated per
frame. Readers always get copies, and they never hold a lock while copying:
every slot carries the id of the frame in it, set to -1 while the writer is
filling it, and a reader that sees the id change during its copy drops that
copy (a seqlock). So nothing a reader does can slow the writer.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daemon.core.latest import Latest

log = logging.getLogger("picamd.ring")


@dataclass
class FrameMeta:
    frame_id: int
    ts: float  # wall clock, for names and metadata
    mono: float  # time.monotonic(), for intervals
    dark_score: float = 0.0  # mean brightness of the downscaled frame, 0..255
    night: bool = False
    exposure_us: int | None = None
    gain: float | None = None
    # Per-frame results of later stages (motion, detections): small JSON-able values.
    extra: dict[str, Any] = field(default_factory=dict)
    # The source's own timestamp of the frame (picamera2's SensorTimestamp), to pair it with a JPEG the camera encoded; not sent.
    source_ts_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "frame_id": self.frame_id,
            "ts": round(self.ts, 6),
            "dark_score": round(float(self.dark_score), 3),
            "night": bool(self.night),
            "exposure_us": self.exposure_us,
            "gain": None if self.gain is None else round(float(self.gain), 3),
        }
        d.update(self.extra)
        return d


def plan_capacity(requested: int, frame_bytes: int, available_bytes: int, fraction: float) -> tuple[int, str]:
    """How many frames fit: the requested count, clamped to `fraction` of available memory.

    Returns the count and the arithmetic as a sentence for the log.
    """
    budget = int(available_bytes * fraction)
    fits = max(2, budget // max(1, frame_bytes))
    n = min(requested, fits)
    why = (
        f"ring: {requested} frames x {frame_bytes / 1024:.1f} KiB = {requested * frame_bytes / 2**20:.1f} MiB requested; "
        f"budget {fraction:.0%} of {available_bytes / 2**20:.0f} MiB available = {budget / 2**20:.1f} MiB -> "
        f"{n} frames ({n * frame_bytes / 2**20:.1f} MiB)" + ("" if n == requested else " (clamped)")
    )
    return n, why


class Ring:
    def __init__(self, capacity: int, height: int, width: int, channels: int = 3) -> None:
        if capacity < 2:
            raise ValueError("ring capacity must be at least 2")
        self.capacity = capacity
        self.shape = (height, width, channels)
        self._frames = np.zeros((capacity, height, width, channels), dtype=np.uint8)
        self._ids = np.full(capacity, -1, dtype=np.int64)  # -1: empty or being written
        self._metas: list[FrameMeta | None] = [None] * capacity
        self._ts = np.zeros(capacity, dtype=np.float64)
        self._mono = np.zeros(capacity, dtype=np.float64)
        self._head = 0  # next slot to write
        self._count = 0
        self._newest = Latest[int]()  # readers wait here for a commit; the version is the frame id

    # -- writer side (the capture loop only)
    def next_slot(self) -> np.ndarray:
        """The slot the writer fills next. Its old frame is invalid from now on."""
        i = self._head
        self._ids[i] = -1
        return self._frames[i]

    def commit(self, meta: FrameMeta) -> None:
        i = self._head
        self._metas[i] = meta
        self._ts[i] = meta.ts
        self._mono[i] = meta.mono
        self._ids[i] = meta.frame_id
        self._head = (i + 1) % self.capacity
        self._count = min(self._count + 1, self.capacity)
        self._newest.put(meta.frame_id, version=meta.frame_id)

    # -- reader side
    @property
    def newest_id(self) -> int:
        got = self._newest.get()
        return -1 if got is None else got[0]

    @property
    def fill(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self._frames.nbytes

    def _order(self) -> list[int]:
        """Slot indices from oldest to newest."""
        head, count, cap = self._head, self._count, self.capacity
        start = (head - count) % cap
        return [(start + k) % cap for k in range(count)]

    def _copy(self, i: int) -> tuple[np.ndarray, FrameMeta] | None:
        fid = self._ids[i]
        if fid < 0:
            return None
        meta = self._metas[i]
        frame = self._frames[i].copy()
        if self._ids[i] != fid or meta is None or meta.frame_id != fid:
            return None  # overwritten while we copied
        return frame, meta

    def latest(self) -> tuple[np.ndarray, FrameMeta] | None:
        for _ in range(3):
            order = self._order()
            if not order:
                return None
            got = self._copy(order[-1])
            if got is not None:
                return got
        return None

    def latest_meta(self) -> FrameMeta | None:
        order = self._order()
        return self._metas[order[-1]] if order else None

    def wait_newer(self, after_id: int, timeout: float) -> tuple[np.ndarray, FrameMeta] | None:
        """Wait until the newest frame is not `after_id` (or the timeout passes); returns a copy of the newest."""
        if self._newest.wait_newer(after_id, timeout) is None:
            return None
        return self.latest()

    def get(self, frame_id: int) -> tuple[np.ndarray, FrameMeta] | None:
        """A copy of the frame `frame_id`, or None once it has been overwritten (a clip reads frames one at a time)."""
        slots = np.flatnonzero(self._ids == frame_id)
        return self._copy(int(slots[0])) if slots.size else None

    def metas(self) -> list[FrameMeta]:
        """Metadata of every frame held, oldest first (no pixels copied)."""
        return [m for i in self._order() if (m := self._metas[i]) is not None and self._ids[i] >= 0]

    def _collect(self, slots: list[int]) -> tuple[np.ndarray, list[FrameMeta]]:
        frames = np.empty((len(slots), *self.shape), dtype=np.uint8)
        metas: list[FrameMeta] = []
        n = 0
        for i in slots:
            fid = self._ids[i]
            meta = self._metas[i]
            if fid < 0 or meta is None:
                continue
            np.copyto(frames[n], self._frames[i])
            if self._ids[i] != fid:
                continue
            metas.append(meta)
            n += 1
        return frames[:n], metas

    def last_n(self, n: int) -> tuple[np.ndarray, list[FrameMeta]]:
        """Copies of the newest `n` frames (oldest first) as one (n, H, W, C) array, with their metadata."""
        order = self._order()
        return self._collect(order[-n:] if n > 0 else [])

    def last_seconds(self, seconds: float, limit: int | None = None, now: float | None = None) -> tuple[np.ndarray, list[FrameMeta]]:
        """Frames taken in the last `seconds` (judged by their monotonic times, not by frame rate, so a step of the
        wall clock cannot pick the wrong frames); `now` is a `time.monotonic()` value, default the newest frame's."""
        order = self._order()
        if not order:
            return self._collect([])
        newest = self._mono[order[-1]] if now is None else now
        since = newest - seconds
        ts = [self._mono[i] for i in order]
        start = bisect.bisect_left(ts, since)
        slots = order[start:]
        if limit is not None:
            slots = slots[-limit:]
        return self._collect(slots)

    def nearest(self, ts: float) -> tuple[np.ndarray, FrameMeta] | None:
        """The frame whose timestamp is closest to `ts`."""
        order = self._order()
        if not order:
            return None
        times = [self._ts[i] for i in order]
        k = bisect.bisect_left(times, ts)
        candidates = [c for c in (k - 1, k) if 0 <= c < len(order)]
        best = min(candidates, key=lambda c: abs(times[c] - ts))
        return self._copy(order[best])


class LatestSlot:
    """The newest full-resolution frame, overwritten rather than queued (a `Latest` keyed by frame id).

    The capture loop `put`s each frame reference (the source returns a fresh
    array per frame, so no copy is needed); readers `wait_newer` and must not
    modify what they get.
    """

    def __init__(self) -> None:
        self._latest = Latest[tuple[np.ndarray, FrameMeta]]()

    def put(self, frame: np.ndarray, meta: FrameMeta) -> None:
        self._latest.put((frame, meta), version=meta.frame_id)

    def get(self) -> tuple[np.ndarray, FrameMeta] | None:
        got = self._latest.get()
        return None if got is None else got[1]

    def wait_newer(self, after_id: int, timeout: float) -> tuple[np.ndarray, FrameMeta] | None:
        """The newest frame once its id is not `after_id`; None when `timeout` passes first."""
        got = self._latest.wait_newer(after_id, timeout)
        return None if got is None else got[1]
