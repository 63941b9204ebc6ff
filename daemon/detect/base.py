"""The detector interface: what a detection is, what a backend promises, and the registry of backends.

A backend (one file per runtime, as `tflite.py`) turns a full-resolution BGR
frame into `Detection`s in that frame's pixels. Everything a caller needs to
know about it (runtime, kernels, model facts) comes from `describe()`, so the
log, `health` and the tests read the same facts. A backend that cannot run
raises `DetectorUnavailable` with one line a person can act on; the daemon
then runs without detection and shows that line.

Backends are found by name in a `BackendRegistry`. The registry is an object
the caller owns (no module-level table to mutate): `default_registry()` gives
one with the built-in backends, and an IMX500 or Hailo backend is one more
`register_backend(name, factory)` call. A factory takes `DetectorOptions` and
returns a `Detector`; it imports its runtime only when called, so importing
`daemon.detect` costs nothing.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is only needed by the backends; the interface stays import-free
    import numpy as np


class DetectorUnavailable(Exception):
    """Detection cannot run; `reason` is one line saying why (runtime missing, model file missing, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Detection:
    """One detected object; the box is x1, y1, x2, y2 in pixels of the frame given to `detect()`."""

    label: str
    class_id: int
    score: float
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def foot(self) -> tuple[float, float]:
        """The bottom centre of the box: where a standing person touches the ground."""
        return ((self.x1 + self.x2) / 2.0, self.y2)

    def to_dict(self) -> dict[str, Any]:
        # One decimal of a pixel and four of a score: what a quantised model can tell apart, and compact JSON.
        return {
            "label": self.label,
            "class_id": self.class_id,
            "score": round(self.score, 4),
            "box": [round(self.x1, 1), round(self.y1, 1), round(self.x2, 1), round(self.y2, 1)],
        }


@dataclass(frozen=True)
class DetectResult:
    """The detections of one frame and what they cost: preprocessing, inference and decoding in milliseconds."""

    detections: list[Detection]
    frame_width: int
    frame_height: int
    inference_ms: float
    pre_ms: float
    post_ms: float
    candidates: int = 0  # boxes above the score threshold before NMS

    @property
    def total_ms(self) -> float:
        return self.pre_ms + self.inference_ms + self.post_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "detections": [d.to_dict() for d in self.detections],
            "frame": [self.frame_width, self.frame_height],
            "inference_ms": round(self.inference_ms, 2),
            "pre_ms": round(self.pre_ms, 2),
            "post_ms": round(self.post_ms, 2),
        }


#: The kernel paths a backend may be asked for: the runtime's default (LiteRT applies XNNPACK) or its built-in kernels.
KERNELS = ("default", "builtin")


@dataclass(frozen=True)
class DetectorOptions:
    """What every backend is configured with (the daemon fills it from the `detect` config section).

    `classes` are label names or class ids to keep (empty: every class);
    `zone` is x, y, w, h of the full frame in pixels, or in fractions of it
    when every number is <= 1, cropped before the model sees the frame.
    """

    model: Path
    labels: Path | None = None
    classes: Sequence[str | int] = ("person",)
    score_threshold: float = 0.5
    iou_threshold: float = 0.45
    threads: int = 2
    kernels: str = "default"
    zone: Sequence[float] | None = None
    runtime: str = "auto"  # "auto", "ai-edge-litert" or "tflite-runtime"
    max_detections: int = 100
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific settings

    def __post_init__(self) -> None:
        if not 0.0 < self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in (0, 1], not {self.score_threshold!r}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], not {self.iou_threshold!r}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, not {self.threads!r}")
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, not {self.kernels!r}")
        if self.max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, not {self.max_detections!r}")


class Detector(abc.ABC):
    """One loaded model on one runtime. Not thread-safe by nature (an interpreter is not): one thread uses it."""

    name: str = "detector"

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """The facts for the log and `health`: runtime, kernel path, model, input size and dtype, layout, classes, threads."""

    @abc.abstractmethod
    def detect(self, frame_bgr: np.ndarray) -> DetectResult:
        """Detections on one full-resolution BGR uint8 frame, boxes in its pixels."""

    def summary(self) -> str:
        """One line for the log."""
        facts = self.describe()
        return ", ".join(f"{k} {v}" for k, v in facts.items() if not isinstance(v, (dict, list)))

    def close(self) -> None:  # noqa: B027 - a backend with nothing to release need not override it
        """Release the model (the default does nothing)."""


DetectorFactory = Callable[[DetectorOptions], Detector]


class BackendRegistry:
    """Backends by name. Owned by whoever builds detectors, so adding one never changes a shared table."""

    def __init__(self) -> None:
        self._factories: dict[str, DetectorFactory] = {}

    def register_backend(self, name: str, factory: DetectorFactory) -> None:
        if not name or name != name.strip().lower():
            raise ValueError(f"backend name must be a lower-case word, not {name!r}")
        if name in self._factories:
            raise ValueError(f"backend {name!r} is already registered")
        self._factories[name] = factory

    @property
    def names(self) -> list[str]:
        return sorted(self._factories)

    def create_detector(self, name: str, options: DetectorOptions) -> Detector:
        factory = self._factories.get(name)
        if factory is None:
            raise DetectorUnavailable(f"unknown detector backend {name!r} (known: {', '.join(self.names) or 'none'})")
        return factory(options)


def _tflite_factory(options: DetectorOptions) -> Detector:
    from .tflite import TFLiteDetector  # here, so the registry costs nothing until a detector is made

    return TFLiteDetector(options)


def default_registry() -> BackendRegistry:
    """A registry holding the built-in backends: `tflite` (LiteRT, else tflite-runtime)."""
    registry = BackendRegistry()
    registry.register_backend("tflite", _tflite_factory)
    return registry


def create_detector(name: str, options: DetectorOptions, registry: BackendRegistry | None = None) -> Detector:
    """A detector of backend `name`; raises `DetectorUnavailable` with one line when it cannot run."""
    return (registry or default_registry()).create_detector(name, options)
