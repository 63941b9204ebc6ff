"""Groups of people: DBSCAN (scikit-learn) over their foot points, with distances in body heights.

A person's foot point is the bottom centre of the box, where they stand. In a
camera's perspective, a metre near the camera spans many more pixels than a
metre far away, and so does a person: dividing the pixel distance of two feet
by the mean height of the two boxes measures it in body heights, which is
about the same for a pair standing together near the camera or far from it.
`eps` is in those units (two people within `eps` heights are neighbours) and
`min_samples` is the smallest group, a person counting themself.

scikit-learn is imported the first time a group has to be computed (fewer
people than `min_samples` never need it): the import alone costs about
100 MiB of RSS and a couple of seconds on a Pi, which nobody should pay who
does not use groups. Without scikit-learn, `find()` answers with no groups
and the reason ("groups unavailable: scikit-learn is not installed") instead
of failing.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import Detection

UNAVAILABLE = "groups unavailable: scikit-learn is not installed"


@dataclass(frozen=True)
class GroupResult:
    """Groups as lists of indices into the detections given, with the count they were computed from."""

    people: int
    groups: list[list[int]] = field(default_factory=list)
    available: bool = True
    reason: str | None = None

    @property
    def grouped(self) -> int:
        return sum(len(g) for g in self.groups)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "people": self.people,
            "groups": len(self.groups),
            "sizes": [len(g) for g in self.groups],
            "alone": self.people - self.grouped,
        }
        if not self.available:
            out["reason"] = self.reason
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "members": self.groups}


def foot_distances(detections: Sequence[Detection]) -> np.ndarray:
    """Pairwise distances of the foot points, each divided by the mean height of the two boxes."""
    if not detections:
        return np.zeros((0, 0), np.float64)
    boxes = np.asarray([d.box for d in detections], np.float64)
    feet = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2.0, boxes[:, 3]], axis=1)
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    pixels = np.linalg.norm(feet[:, None, :] - feet[None, :, :], axis=2)
    scale = (heights[:, None] + heights[None, :]) / 2.0
    return pixels / scale


class GroupFinder:
    """DBSCAN over foot points; one instance per caller (it keeps the lazily imported class)."""

    def __init__(self, eps: float = 1.0, min_samples: int = 2, labels: Sequence[str] | None = ("person",)) -> None:
        if eps <= 0:
            raise ValueError(f"eps must be > 0 (body heights), not {eps!r}")
        if min_samples < 2:
            raise ValueError(f"min_samples must be at least 2 (a group of one is no group), not {min_samples!r}")
        self.eps = float(eps)
        self.min_samples = int(min_samples)
        self.labels = None if labels is None else frozenset(labels)
        self._lock = threading.Lock()
        self._dbscan: Any = None
        self._reason: str | None = None
        self._loaded = False

    @property
    def status(self) -> str:
        """ "ok", "not loaded" (scikit-learn not yet needed) or why groups are unavailable."""
        if self._reason is not None:
            return self._reason
        return "ok" if self._loaded else "not loaded"

    def _load(self) -> Any:
        with self._lock:
            if not self._loaded and self._reason is None:
                try:
                    self._dbscan = importlib.import_module("sklearn.cluster").DBSCAN
                    self._loaded = True
                except ImportError:
                    self._reason = UNAVAILABLE
                except Exception as exc:  # a broken install: say what broke, once
                    self._reason = f"groups unavailable: scikit-learn does not load ({type(exc).__name__}: {exc})"
            return self._dbscan

    def find(self, detections: Sequence[Detection]) -> GroupResult:
        """Groups among the detections of the wanted labels; indices refer to `detections`."""
        index = [i for i, d in enumerate(detections) if self.labels is None or d.label in self.labels]
        people = len(index)
        if people < self.min_samples:
            return GroupResult(people, [], self._reason is None, self._reason)
        dbscan = self._load()
        if dbscan is None:
            return GroupResult(people, [], False, self._reason)
        distances = foot_distances([detections[i] for i in index])
        labels = dbscan(eps=self.eps, min_samples=self.min_samples, metric="precomputed").fit_predict(distances)
        groups: dict[int, list[int]] = {}
        for member, label in zip(index, labels.tolist(), strict=True):
            if label >= 0:
                groups.setdefault(label, []).append(member)
        ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0]))
        return GroupResult(people, ordered)
