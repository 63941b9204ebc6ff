"""What the detector's answers mean for people: tracks across frames, the `detect.*` events and their evidence.

The detection worker (`service.py`) decides when the model runs; every
result it computes on the live view comes here, on its thread. A tracker
gives people ids across frames and the events `detect.person` (a new track
after `detect.dwell_s`), `detect.count` (the count changed) and
`detect.clear` (no one for `detect.clear_s`). Tracks also end by the clock:
one not seen for `detect.clear_s` is dropped in the worker's own step, so a
scene gone still (no inference runs) still ends its tracks, the count falls
to zero and `detect.clear` follows.

A `detect.person` carries what an alert needs: the frame's detections,
groups and the count, and the annotated full-resolution JPEG as an event
attachment (encoded here, on the detection thread: the capture loop never
waits for it), which only the alerts channel keeps. With `detect.evidence`
the same picture (kind `autodetect`) and a clip of the ring from
`detect.clip_pre_s` before to `detect.clip_post_s` after go into the captures,
written by the clip recorder's thread; one clip at a time, so a person found
while a clip is being written gets the picture only.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from daemon.capture.ring import FrameMeta
from daemon.config import Section
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.storage.clips import ClipBusy, ClipError, ClipJob

from .annotate import draw_detections
from .base import Detection
from .result import DetectionResult
from .tracker import Tracker, TrackUpdate

if TYPE_CHECKING:
    from daemon.storage.clips import ClipRecorder

log = logging.getLogger("picamd.detect")

#: The attachment key of the annotated JPEG on `detect.person` (notify/alerts.py reads it).
IMAGE_ATTACHMENT = "jpeg"


class PeopleEvents:
    """The person tracks of the live view and the events they make.

    Fed by the detection worker's thread only; `tracked`, `recent` and `counts` may be read from any thread.
    `on_empty` is called when the clock ends the last track, before the count reads zero anywhere.
    """

    def __init__(
        self,
        cfg: Section,
        bus: EventBus,
        status: ComponentStatus,
        clips: ClipRecorder | None,
        on_empty: Callable[[], None],
    ) -> None:
        self._cfg = cfg
        self._bus = bus
        self._status = status
        self._clips = clips
        self._on_empty = on_empty
        self._tracker = Tracker(dwell_s=float(cfg.dwell_s))
        self._zero_since: float | None = None  # monotonic time the tracked count fell to zero
        self._tracked = 0  # confirmed live tracks now (the worker sets it; anyone reads it)
        self._lock = threading.Lock()
        self._event_counts: collections.Counter[str] = collections.Counter()
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=int(cfg.events_keep))

    @property
    def tracked(self) -> int:
        return self._tracked

    def track(self, detections: Sequence[Detection], mono: float) -> TrackUpdate:
        """Match one inference's detections to the tracks, with the dwell detect.dwell_s has now."""
        self._tracker.dwell_s = float(self._cfg.dwell_s)
        return self._tracker.update(detections, mono)

    def announce(self, update: TrackUpdate, result: DetectionResult, frame: np.ndarray, meta: FrameMeta) -> None:
        """The events of one result: a `detect.person` per new track (with its evidence), `detect.count` if it changed."""
        new, count, previous = update.new, update.count, update.previous_count
        self._tracked = count
        where: dict[str, Any] = {"frame_id": result.frame_id, "frame_ts": round(result.ts, 3)}
        if new:
            jpeg = self._annotated_jpeg(frame, result)
            attachments = {IMAGE_ATTACHMENT: jpeg} if jpeg else {}
            seen = {
                "detections": [{k: d[k] for k in ("label", "score", "box", "track")} for d in result.detections],
                "groups": None if result.groups is None else {k: v for k, v in result.groups.items() if k != "members"},
                "frame_size": list(result.frame_size),
            }
            for track in new:
                self._event(
                    "detect.person",
                    attachments,
                    track=track.id,
                    label=track.label,
                    score=round(track.score, 4),
                    box=[round(v, 1) for v in track.box],
                    people=count,
                    **where,
                    **seen,
                )
                log.info("person detected (track %d, score %.2f) on frame %d; %d tracked", track.id, track.score, result.frame_id, count)
            self._keep_evidence(jpeg, result, meta, [t.id for t in new])
        if count != previous:
            self._event("detect.count", count=count, previous=previous, people=result.people, **where)
        if count > 0:
            self._zero_since = None
        elif previous > 0:
            self._zero_since = result.mono

    def _annotated_jpeg(self, frame: np.ndarray, result: DetectionResult) -> bytes:
        """The full-resolution frame with the boxes drawn, as a JPEG at export.jpeg_quality (b"" if it cannot be encoded)."""
        image = draw_detections(frame, result.detections, result.frame_size)
        quality = int(self._cfg.config.get("export.jpeg_quality"))  # the pictures the captures hold, so alerts match them
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            self._status.error(f"cannot encode the annotated frame {result.frame_id} as JPEG")
            return b""
        return buf.tobytes()

    def _keep_evidence(self, jpeg: bytes, result: DetectionResult, meta: FrameMeta, tracks: list[int]) -> None:
        """With detect.evidence: the annotated picture and a clip of the ring, handed to the clip recorder's thread."""
        if not self._cfg.evidence or self._clips is None:
            return
        detection = result.to_dict()
        if jpeg:
            self._clips.save_still(
                jpeg,
                meta,
                {
                    "kind": "autodetect",
                    "method": "annotated",
                    "frames": 1,
                    "frame_id": meta.frame_id,
                    "source": "full",
                    "source_size": list(result.frame_size),
                    "trigger": "detect.person",
                    "tracks": tracks,
                    "detection": detection,
                },
            )
        job = ClipJob(
            meta, float(self._cfg.clip_pre_s), float(self._cfg.clip_post_s), "detect.person", {"tracks": tracks, "detection": detection}
        )
        try:
            self._clips.submit(job)
        except ClipBusy:
            log.info("no clip for track(s) %s: a clip is being written (the picture is saved)", ", ".join(map(str, tracks)))
        except ClipError as exc:
            log.warning("no clip for track(s) %s: %s", ", ".join(map(str, tracks)), exc)

    def age(self) -> None:
        """End the tracks not seen for detect.clear_s, by the clock: a still scene runs no inference to end them.

        Never sooner than the tracker's own rule would in a moving scene (max_missed updates at detect.max_fps),
        so a person in view between two inferences keeps their track."""
        if not self._tracker.tracks:
            return
        age = max(float(self._cfg.clear_s), (self._tracker.max_missed + 1) / float(self._cfg.max_fps))
        now = time.monotonic()
        ended = self._tracker.expire(now, age)
        previous, count = self._tracked, self._tracker.count
        if not ended or count == previous:
            return
        if count == 0:
            self._on_empty()  # first, so nothing that reads the count as 0 can still see boxes on new frames
        self._tracked = count
        last_seen = max(t.last_seen for t in ended)
        self._event("detect.count", count=count, previous=previous, ended=[t.id for t in ended], unseen_s=round(now - last_seen, 1))
        log.info("track(s) %s not seen for %.0f s: ended; %d tracked", ", ".join(str(t.id) for t in ended), age, count)
        if count == 0:
            self._zero_since = last_seen  # quiet since the last sighting, so detect.clear follows at once

    def check_clear(self) -> None:
        """`detect.clear` once no one has been tracked for detect.clear_s."""
        since = self._zero_since
        if since is None:
            return
        # Frame times and the clock are both monotonic: the quiet time counts even while the gate stays shut.
        if time.monotonic() - since >= float(self._cfg.clear_s):
            self._zero_since = None
            self._event("detect.clear", quiet_s=round(time.monotonic() - since, 1))
            log.info("no one detected for %.0f s", self._cfg.clear_s)

    def _event(self, kind: str, attachments: dict[str, bytes] | None = None, **data: Any) -> None:
        event = self._bus.publish(kind, attachments, **data)
        with self._lock:
            keep = int(self._cfg.events_keep)
            if self._events.maxlen != keep:
                self._events = collections.deque(self._events, maxlen=keep)
            self._events.append(event.to_dict())
            self._event_counts[kind.removeprefix("detect.")] += 1

    # -- what commands, HTTP and health read (any thread)
    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` events kept (detect.events_keep of them at most)."""
        with self._lock:
            return list(self._events)[-limit:] if limit > 0 else []

    def counts(self) -> dict[str, int]:
        """Events published so far, by kind without the `detect.` prefix."""
        with self._lock:
            return dict(self._event_counts)
