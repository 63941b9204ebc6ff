"""Counting people on a sweep's picture: the small callable the sweeper is given.

`PeopleCounter` is `count(frame) -> Count(people, groups, detections)`, with
detections as dicts (`label`, `score`, `box` x1, y1, x2, y2 in the frame's
pixels). The sweeper knows nothing else about detection, so the app decides
where the model runs.

`ServiceCounter` counts on the live detection service's worker (the one
thread that owns its interpreter) while live detection is on, and otherwise
on a `DetectorCounter`.

`DetectorCounter` runs a detector built from the `detect` config (model,
labels, classes, thresholds, threads) and groups people with DBSCAN like the
live detection does. It loads the model on first use and `close()` releases
it (the sweeper calls it when a sweep ends, so the memory is only taken while
sweeping); one lock keeps the interpreter to one thread at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from daemon.detect import builtin_labels, builtin_model
from daemon.detect.base import BackendRegistry, Detector, DetectorOptions, DetectorUnavailable, DetectResult, default_registry
from daemon.detect.groups import GroupFinder


class Count(NamedTuple):
    people: int
    groups: int
    detections: list[dict[str, Any]]


PeopleCounter = Callable[[np.ndarray], Count]


class CountError(Exception):
    """People could not be counted (no runtime, no model, a failed inference); one line."""


def detector_options(cfg: Any) -> DetectorOptions:
    """DetectorOptions from the `detect` config section (the whole frame: a preset has its own zone)."""
    model_text, labels_text = str(cfg.model).strip(), str(cfg.labels).strip()
    if not model_text:
        model, labels = builtin_model(), Path(labels_text) if labels_text else builtin_labels()
    else:
        model = Path(model_text)
        if labels_text:
            labels = Path(labels_text)
        else:
            beside = [p for p in (model.with_suffix(".txt"), model.parent / "labels.txt") if p.is_file()]
            labels = beside[0] if beside else None  # type: ignore[assignment]
    return DetectorOptions(
        model=model,
        labels=labels,
        classes=tuple(cfg.classes),
        score_threshold=float(cfg.score_threshold),
        iou_threshold=float(cfg.iou_threshold),
        threads=int(cfg.threads),
    )


class DetectorCounter:
    def __init__(self, cfg: Any, registry: BackendRegistry | None = None) -> None:
        """`cfg` is the `detect` config section (read when the model is loaded)."""
        self._cfg = cfg
        self._registry = registry or default_registry()
        self._lock = threading.Lock()
        self._detector: Detector | None = None
        self._groups: GroupFinder | None = None
        self.facts: dict[str, Any] | None = None

    def __call__(self, frame: np.ndarray) -> Count:
        with self._lock:
            if self._detector is None:
                self._load()
            detector = self._detector
            assert detector is not None
            try:
                found = detector.detect(frame)
            except Exception as exc:
                raise CountError(f"detection failed: {type(exc).__name__}: {exc}") from None
            people = [d for d in found.detections if d.label == "person"]
            groups = len(self._groups.find(found.detections).groups) if self._groups is not None else 0
            return Count(len(people), groups, [d.to_dict() for d in found.detections])

    def _load(self) -> None:
        try:
            self._detector = self._registry.create_detector(str(self._cfg.backend), detector_options(self._cfg))
        except DetectorUnavailable as exc:
            raise CountError(f"detection unavailable: {exc.reason}") from None
        except ValueError as exc:
            raise CountError(f"bad detect settings: {exc}") from None
        self.facts = self._detector.describe()
        self._groups = GroupFinder(float(self._cfg.group_eps), int(self._cfg.group_min_samples)) if self._cfg.groups else None

    def close(self) -> None:
        with self._lock:
            detector, self._detector = self._detector, None
            if detector is not None:
                detector.close()


class LiveDetector(Protocol):
    @property
    def mode(self) -> str: ...

    def detect_frame(self, frame: np.ndarray, timeout: float = 30.0) -> tuple[DetectResult, int]: ...


class ServiceCounter:
    """Counts on the detection service's worker while live detection runs; on its own interpreter while it is off."""

    def __init__(self, service: LiveDetector, fallback: DetectorCounter, timeout_s: float = 30.0) -> None:
        self._service = service
        self._fallback = fallback
        self._timeout_s = timeout_s

    def __call__(self, frame: np.ndarray) -> Count:
        if self._service.mode == "off":
            return self._fallback(frame)
        try:
            found, groups = self._service.detect_frame(frame, self._timeout_s)
        except (DetectorUnavailable, TimeoutError) as exc:
            raise CountError(f"detection failed: {exc}") from None
        people = sum(1 for d in found.detections if d.label == "person")
        return Count(people, groups, [d.to_dict() for d in found.detections])

    def close(self) -> None:
        self._fallback.close()
