"""`Histogram`: counts of observed values in fixed buckets, for a Prometheus histogram on /metrics.

A component that times something (an inference, say) calls `observe(seconds)`
from its own thread and puts `snapshot()` into its `health()`; daemon/net/metrics.py
renders it. Buckets are fixed when it is made, so memory stays a few numbers
however long the daemon runs.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["INFERENCE_BUCKETS_S", "Histogram"]

#: From a Coral's few milliseconds to a Pi Zero's seconds per inference.
INFERENCE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    def __init__(self, bounds: Sequence[float] = INFERENCE_BUCKETS_S) -> None:
        self._bounds = [float(b) for b in bounds]
        if not self._bounds or any(not math.isfinite(b) for b in self._bounds) or self._bounds != sorted(set(self._bounds)):
            raise ValueError(f"histogram bounds must be finite and strictly rising: {list(bounds)}")
        self._counts = [0] * len(self._bounds)  # per bucket, not cumulative: observe() touches one
        self._count = 0
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Count one value (a NaN is ignored: it belongs to no bucket)."""
        if math.isnan(value):
            return
        at = bisect.bisect_left(self._bounds, value)  # the first bound >= value: buckets are "less or equal"
        with self._lock:
            if at < len(self._counts):
                self._counts[at] += 1
            self._count += 1
            self._sum += value

    def snapshot(self) -> dict[str, Any]:
        """{"le": bounds, "counts": cumulative counts per bound, "sum", "count"}; the +Inf bucket is `count`. JSON-able."""
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        cumulative, running = [], 0
        for n in counts:
            running += n
            cumulative.append(running)
        return {"le": list(self._bounds), "counts": cumulative, "sum": round(total, 6), "count": count}
