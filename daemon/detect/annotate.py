"""Drawing detections on a copy of a frame (the stream's JPEG with detect.draw_boxes, `detect save`).

The frame given is never changed: the ring and the saved raw frames stay as
the camera gave them. Boxes come in the pixels of the frame they were
computed on and are scaled to the frame drawn on, so one result serves the
full-resolution frame and the ring-sized stream alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

PERSON_BGR = (0, 200, 255)
OTHER_BGR = (255, 160, 0)


def draw_detections(frame: np.ndarray, detections: Sequence[dict[str, Any]], source_size: Sequence[int]) -> np.ndarray:
    """A copy of `frame` with each detection's box and label (`label #track score`).

    `detections` are dicts with `box` (x1, y1, x2, y2 in pixels of a frame of
    `source_size` = width, height), `label`, `score` and optionally `track`.
    """
    out = frame.copy()
    h, w = out.shape[:2]
    sw, sh = max(1, int(source_size[0])), max(1, int(source_size[1]))
    sx, sy = w / sw, h / sh
    thick = max(1, round(min(w, h) / 240))
    font = max(0.35, min(w, h) / 900)
    for det in detections:
        x1, y1, x2, y2 = (float(v) for v in det["box"])
        p1 = (int(round(x1 * sx)), int(round(y1 * sy)))
        p2 = (int(round(x2 * sx)), int(round(y2 * sy)))
        colour = PERSON_BGR if det.get("label") == "person" else OTHER_BGR
        cv2.rectangle(out, p1, p2, colour, thick)
        track = det.get("track")
        text = f"{det.get('label', '?')}{f' #{track}' if track else ''} {float(det.get('score', 0.0)):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        ty = p1[1] - 3 if p1[1] - th - base - 3 >= 0 else p1[1] + th + 3
        cv2.rectangle(out, (p1[0], ty - th - 2), (p1[0] + tw + 2, ty + base - 1), colour, -1)
        cv2.putText(out, text, (p1[0] + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1, cv2.LINE_AA)
    return out
