"""One inference's answer on the live view: `DetectionResult`.

It carries the id and time of the frame it was computed on, so whoever reads
it later (the capture stage, /detections, the commands, the people events)
knows which picture the boxes belong to. Its compact form is what goes into a
frame's metadata and the MJPEG headers: boxes scaled to whole pixels of the
frame they travel with, at most `HEADER_MAX_DETECTIONS` of them. The worker
(`service.py`) makes it, `events.py` turns it into events, `commands.py`
reports it; it lives apart so none of them needs another to name it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

#: Most detections put in a frame's metadata (a header line stays short; /detections has them all).
HEADER_MAX_DETECTIONS = 50


@dataclass(frozen=True)
class DetectionResult:
    """The detections of one frame, with the frame's id and time and what the run cost."""

    frame_id: int
    ts: float  # wall clock of the frame
    mono: float  # monotonic time of the frame
    frame_size: tuple[int, int]  # width, height of the frame the boxes are in
    detections: list[dict[str, Any]]  # label, class_id, score, box, track (0: not tracked)
    people: int
    tracked: int  # confirmed person tracks after this frame
    groups: dict[str, Any] | None
    inference_ms: float
    total_ms: float
    trigger: str  # the gate that opened (motion, regions, always), on, or request
    computed_ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame_id": self.frame_id,
            "ts": round(self.ts, 6),
            "frame": list(self.frame_size),
            "people": self.people,
            "tracked": self.tracked,
            "detections": self.detections,
            "groups": self.groups,
            "inference_ms": round(self.inference_ms, 2),
            "total_ms": round(self.total_ms, 2),
            "trigger": self.trigger,
            "computed_ts": round(self.computed_ts, 3),
        }

    def compact(self, size: tuple[int, int]) -> dict[str, Any]:
        """The header form, boxes as whole pixels of a frame of `size`: f frame id, t time, s size,
        d [[x1, y1, x2, y2, score, label, track], ...], and with groups g, each a list of indices into d."""
        sx, sy = size[0] / max(1, self.frame_size[0]), size[1] / max(1, self.frame_size[1])
        boxes = []
        for d in self.detections[:HEADER_MAX_DETECTIONS]:
            x1, y1, x2, y2 = d["box"]
            boxes.append([round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy), round(d["score"], 2), d["label"], d["track"]])
        out = {"f": self.frame_id, "t": round(self.ts, 3), "s": [int(size[0]), int(size[1])], "d": boxes}
        if self.groups is not None:
            out["g"] = [[i for i in members if i < len(boxes)] for members in self.groups.get("members", [])]
        return out
