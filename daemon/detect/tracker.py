"""A simple IoU / centroid tracker: each person keeps an id across frames.

Why: a person standing in view is one event, not one per frame. Each update
matches the frame's detections to the live tracks of the same label, best
pairs first: a pair qualifies when the boxes overlap by at least
`iou_threshold`, or when their centres lie within `max_distance` body
heights (mean box height of the two), which keeps a walker's id at a low
detection rate, when consecutive boxes no longer overlap. An unmatched
detection starts a track.

Rules, all in plain return values (the daemon turns them into events):
- a track is *new* once it has been seen for `dwell_s` seconds (and at least
  `min_hits` times): a one-frame false detection never becomes an event;
- a track *ends* after more than `max_missed` consecutive updates without a
  match, or, with `max_age_s`, when it was last seen longer ago than that. The
  count of updates rather than time is the default rule because detection
  runs only while something moves: a person standing still in a still scene
  gets no updates, and must not be ended for it;
- the *count* is the number of confirmed live tracks (a track missed for a
  frame or two still counts, so the count does not flicker with the scores);
  `count_changed` and `cleared` (the count fell to zero) say when it moved.

Not thread-safe: one caller (the detection worker) updates it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import Detection
from .decode import iou_matrix


@dataclass
class Track:
    id: int
    label: str
    box: tuple[float, float, float, float]
    score: float
    first_seen: float
    last_seen: float
    hits: int = 1
    missed: int = 0
    confirmed: bool = False

    def age_s(self, now: float) -> float:
        return now - self.first_seen

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "label": self.label,
            "score": round(self.score, 4),
            "box": [round(v, 1) for v in self.box],
            "hits": self.hits,
            "missed": self.missed,
            "confirmed": self.confirmed,
        }
        if now is not None:
            out["age_s"] = round(self.age_s(now), 2)
        return out


@dataclass(frozen=True)
class TrackUpdate:
    """What one update found: the track id of each detection, and what changed."""

    ids: list[int]  # track id of each detection given, in order
    tracks: list[Track]  # confirmed live tracks after this update
    new: list[Track] = field(default_factory=list)  # confirmed in this update (dwell reached)
    ended: list[Track] = field(default_factory=list)  # confirmed tracks that ended in this update
    count: int = 0
    previous_count: int = 0

    @property
    def count_changed(self) -> bool:
        return self.count != self.previous_count

    @property
    def cleared(self) -> bool:
        return self.count == 0 and self.previous_count > 0


class Tracker:
    def __init__(
        self,
        *,
        iou_threshold: float = 0.3,
        max_distance: float = 0.5,
        max_missed: int = 5,
        max_age_s: float | None = None,
        dwell_s: float = 1.0,
        min_hits: int = 1,
        labels: Sequence[str] | None = ("person",),
    ) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], not {iou_threshold!r}")
        if max_distance < 0:
            raise ValueError(f"max_distance must be >= 0 (body heights), not {max_distance!r}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, not {max_missed!r}")
        if dwell_s < 0:
            raise ValueError(f"dwell_s must be >= 0, not {dwell_s!r}")
        if min_hits < 1:
            raise ValueError(f"min_hits must be at least 1, not {min_hits!r}")
        if max_age_s is not None and max_age_s <= 0:
            raise ValueError(f"max_age_s must be > 0 or None, not {max_age_s!r}")
        self.iou_threshold = iou_threshold
        self.max_distance = max_distance
        self.max_missed = max_missed
        self.max_age_s = max_age_s
        self.dwell_s = dwell_s
        self.min_hits = min_hits
        self.labels = None if labels is None else frozenset(labels)
        self._tracks: list[Track] = []
        self._next_id = 1

    @property
    def tracks(self) -> list[Track]:
        """Every live track, confirmed or not."""
        return list(self._tracks)

    @property
    def count(self) -> int:
        return sum(1 for t in self._tracks if t.confirmed)

    def reset(self) -> None:
        """Forget every track (ids keep counting up, so an id is never reused)."""
        self._tracks = []

    def expire(self, now: float, max_age_s: float) -> list[Track]:
        """Drop the tracks last seen more than `max_age_s` ago, with no update needed; returns the confirmed ones dropped.

        The detection worker calls it by the clock, so tracks end even when a
        scene gone still runs no inference (and the count falls to zero)."""
        if max_age_s < 0:
            raise ValueError(f"max_age_s must be >= 0, not {max_age_s!r}")
        stale = [t for t in self._tracks if now - t.last_seen > max_age_s]
        if stale:
            self._tracks = [t for t in self._tracks if now - t.last_seen <= max_age_s]
        return [t for t in stale if t.confirmed]

    def update(self, detections: Sequence[Detection], now: float) -> TrackUpdate:
        """Match one frame's detections (`now` in seconds, monotonic) to the tracks."""
        previous = self.count
        ended: list[Track] = []
        if self.max_age_s is not None:
            stale = [t for t in self._tracks if now - t.last_seen > self.max_age_s]
            ended += [t for t in stale if t.confirmed]
            self._tracks = [t for t in self._tracks if now - t.last_seen <= self.max_age_s]

        wanted = [i for i, d in enumerate(detections) if self.labels is None or d.label in self.labels]
        assigned = self._match([detections[i] for i in wanted])
        ids = [0] * len(detections)
        new: list[Track] = []
        matched_tracks: set[int] = set()
        for k, i in enumerate(wanted):
            det = detections[i]
            track = assigned[k]
            if track is None:
                track = Track(self._next_id, det.label, det.box, det.score, now, now)
                self._next_id += 1
                self._tracks.append(track)
            else:
                track.box, track.score, track.last_seen = det.box, det.score, now
                track.hits += 1
                track.missed = 0
            matched_tracks.add(track.id)
            ids[i] = track.id
            if not track.confirmed and track.hits >= self.min_hits and now - track.first_seen >= self.dwell_s:
                track.confirmed = True
                new.append(track)
        alive: list[Track] = []
        for t in self._tracks:
            if t.id not in matched_tracks:
                t.missed += 1
                if t.missed > self.max_missed:
                    if t.confirmed:
                        ended.append(t)
                    continue
            alive.append(t)
        self._tracks = alive
        confirmed = [t for t in alive if t.confirmed]
        return TrackUpdate(ids, confirmed, new, ended, len(confirmed), previous)

    def _match(self, detections: Sequence[Detection]) -> list[Track | None]:
        """The track of each detection, or None; greedy over qualifying pairs, best IoU then nearest first."""
        result: list[Track | None] = [None] * len(detections)
        tracks = self._tracks
        if not detections or not tracks:
            return result
        det_boxes = np.asarray([d.box for d in detections], np.float32)
        trk_boxes = np.asarray([t.box for t in tracks], np.float32)
        iou = iou_matrix(trk_boxes, det_boxes)  # (T, D)
        tc = np.stack([(trk_boxes[:, 0] + trk_boxes[:, 2]) / 2, (trk_boxes[:, 1] + trk_boxes[:, 3]) / 2], axis=1)
        dc = np.stack([(det_boxes[:, 0] + det_boxes[:, 2]) / 2, (det_boxes[:, 1] + det_boxes[:, 3]) / 2], axis=1)
        th = np.maximum(trk_boxes[:, 3] - trk_boxes[:, 1], 1.0)
        dh = np.maximum(det_boxes[:, 3] - det_boxes[:, 1], 1.0)
        dist = np.linalg.norm(tc[:, None, :] - dc[None, :, :], axis=2) / ((th[:, None] + dh[None, :]) / 2)
        same = np.asarray([[t.label == d.label for d in detections] for t in tracks], bool)
        ok = same & ((iou >= self.iou_threshold) | (dist <= self.max_distance))
        ti, di = np.nonzero(ok)
        order = np.lexsort((dist[ti, di], -iou[ti, di]))  # best IoU first, then the nearest
        used_t: set[int] = set()
        for k in order.tolist():
            t, d = int(ti[k]), int(di[k])
            if t in used_t or result[d] is not None:
                continue
            used_t.add(t)
            result[d] = tracks[t]
        return result
