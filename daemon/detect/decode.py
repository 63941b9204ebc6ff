"""Decoding model outputs into boxes, scores and classes, and class-aware NMS; all vectorised.

Every decoder (`YoloDecoder`, made once per model; `decode_ssd`) returns
boxes x1, y1, x2, y2 in input pixels (float32, (K, 4)),
scores (float32, (K,)) and class ids (int64, (K,)), for the boxes whose score
is above the threshold and whose class is kept. The threshold is applied
before anything else is dequantised: the best class of every anchor is found
on the raw integers (dequantising is monotonic), so only the few candidates
are turned into floats.

YOLOv8/11: an anchor's class is its best class over all C classes (as
Ultralytics' NMS does with multi_label off), and only then is the class
filter applied: an anchor that scores 0.3 for person but 0.6 for chair is a
chair. YOLOv5: score = objectness x class score. SSD: the op has done its own
NMS (at its IoU, 0.6 for the COCO model) and reports each box under one class;
its boxes can fall slightly outside 0..1 and are clipped.

NMS: greedy, per class (boxes of different classes never suppress each
other: each class's boxes are shifted by class id x (coordinate range + 1)
so they cannot overlap), a box is dropped when its IoU with a kept box of
higher score is above the threshold. Among equal scores the later anchor goes first.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .models import OutputLayout, TensorSpec

#: Candidates above the threshold that NMS looks at, best first (a bound on its cost; Ultralytics uses 30000).
MAX_CANDIDATES = 3000


class Boxes(NamedTuple):
    boxes: np.ndarray  # (K, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (K,) float32
    classes: np.ndarray  # (K,) int64

    @property
    def size(self) -> int:
        return int(self.scores.shape[0])


def empty() -> Boxes:
    return Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def _keep_mask(classes: np.ndarray, keep: np.ndarray | None) -> np.ndarray | None:
    if keep is None:
        return None
    if keep.size == 1:  # the usual "person": one comparison instead of np.isin's sorting
        return classes == keep[0]
    return np.isin(classes, keep)


def raw_threshold(spec: TensorSpec, threshold: float) -> int:
    """The lowest raw value of a quantised tensor that dequantises above `threshold`.

    The answer lies next to the real-number one; dequantising the few raw values around it in float32, as
    `spec.dequantise` does, settles the rounding exactly.
    """
    if not spec.quantised:
        raise ValueError(f"{spec.name}: a float tensor has no raw threshold")
    info = np.iinfo(spec.dtype)
    q = math.floor(threshold / spec.scale + spec.zero_point)
    near = np.arange(q - 1, q + 3)
    hits = np.flatnonzero(spec.dequantise(near) > threshold)
    first = int(near[hits[0]]) if hits.size else q + 3
    return min(max(first, info.min), info.max + 1)


def above(spec: TensorSpec, values: np.ndarray, threshold: float) -> np.ndarray:
    """`dequantise(values) > threshold`; for a quantised tensor compared on the raw values (the same answer)."""
    if not spec.quantised:
        return spec.dequantise(values) > threshold  # float16 too is compared in float32, as its scores are
    return values >= raw_threshold(spec, threshold)


def boxes_normalised(layout: OutputLayout, channels: np.ndarray) -> bool:
    """Whether a YOLO output's boxes are 0..1 (`channels` is the (4+C, N) view; only the cx row is read)."""
    if layout.boxes != "auto":
        return layout.boxes == "normalised"
    spec = layout.tensors[0]
    cx_max = float(spec.dequantise(np.asarray(channels[0].max())))
    return cx_max <= 2.0


class YoloDecoder:
    """YOLOv8/11 or YOLOv5 output (1, 4+C, N), (1, N, 4+C), (1, 5+C, N) or (1, N, 5+C) -> boxes in input pixels.

    Made once per model: the raw threshold and the box scale are worked out here, so a frame costs a
    handful of numpy calls (after an inference every call runs on cold caches, and each one counts).
    """

    def __init__(self, layout: OutputLayout, *, input_w: int, input_h: int, score_threshold: float, keep: np.ndarray | None = None) -> None:
        if layout.kind not in ("yolov8", "yolov5"):
            raise ValueError(f"not a YOLO layout: {layout.kind}")
        self.layout = layout
        self.spec: TensorSpec = layout.tensors[0]
        self.v5 = layout.kind == "yolov5"
        self.threshold = score_threshold
        self.keep = keep
        # The v8 gate is on the best class score, the v5 gate on objectness (it bounds every class's score).
        self.first = raw_threshold(self.spec, score_threshold) if self.spec.quantised else None
        self.scale = np.array([input_w, input_h, input_w, input_h], np.float32)[:, None]
        self.keep_one = int(keep[0]) if keep is not None and keep.size == 1 else None

    def _gate(self, values: np.ndarray) -> np.ndarray:
        if self.first is None:
            return self.spec.dequantise(values) > self.threshold
        return values >= self.first

    def __call__(self, raw: np.ndarray) -> Boxes:
        spec = self.spec
        # Channels first: rows are channels, so a reduction over classes is a row-wise max of contiguous rows.
        channels = raw[0] if self.layout.channels_first else raw[0].T
        if self.v5:
            idx = np.flatnonzero(self._gate(channels[4]))
            if idx.size == 0:
                return empty()
            cand = spec.dequantise(channels[:, idx])  # (5+C, K) floats, K small
            cls_scores = cand[5:] * cand[4]
            classes = cls_scores.argmax(axis=0)
            scores = cls_scores[classes, np.arange(idx.size)]
            mask = scores > self.threshold
            km = _keep_mask(classes, self.keep)
            if km is not None:
                mask &= km
            if not mask.any():
                return empty()
            scores, classes, box = scores[mask], classes[mask], cand[:4, mask]
        else:
            # Dequantising is monotonic: the best class and the threshold are found on the raw values, and
            # only the candidates' boxes and scores become floats.
            # (After an inference every numpy call runs on cold caches: this path is kept to a few calls.)
            best = channels[4:].max(axis=0)
            idx = np.flatnonzero(self._gate(best))
            if idx.size == 0:
                return empty()
            cand = channels[:, idx]  # (4+C, K) raw, K small
            classes = cand[4:].argmax(axis=0)
            km = (classes == self.keep_one) if self.keep_one is not None else _keep_mask(classes, self.keep)
            if km is not None and not km.all():
                idx, cand, classes = idx[km], cand[:, km], classes[km]
                if idx.size == 0:
                    return empty()
            real = spec.dequantise(np.vstack((cand[:4], best[idx][None])))  # cx, cy, w, h, score
            box, scores = real[:4], real[4]
        if boxes_normalised(self.layout, channels):
            box = box * self.scale
        xyxy = np.empty((box.shape[1], 4), np.float32)
        half = box[2:] * 0.5
        np.subtract(box[:2], half, out=xyxy[:, :2].T)
        np.add(box[:2], half, out=xyxy[:, 2:].T)
        return Boxes(xyxy, scores.astype(np.float32, copy=False), classes.astype(np.int64, copy=False))


def decode_yolo(
    raw: np.ndarray,
    layout: OutputLayout,
    *,
    input_w: int,
    input_h: int,
    score_threshold: float,
    keep: np.ndarray | None = None,
) -> Boxes:
    """One YOLO output decoded (a `YoloDecoder` made for the call)."""
    return YoloDecoder(layout, input_w=input_w, input_h=input_h, score_threshold=score_threshold, keep=keep)(raw)


def decode_ssd(
    boxes: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
    count: np.ndarray,
    *,
    input_w: int,
    input_h: int,
    score_threshold: float,
    keep: np.ndarray | None = None,
) -> Boxes:
    """The TFLite detection post-process outputs -> boxes in input pixels (clipped to the input)."""
    n = int(np.clip(np.rint(float(np.asarray(count).reshape(-1)[0])), 0, scores.reshape(-1).shape[0]))
    sc = scores.reshape(-1)[:n].astype(np.float32)
    cl = np.rint(classes.reshape(-1)[:n]).astype(np.int64)
    bx = boxes.reshape(-1, 4)[:n].astype(np.float32)
    mask = sc > score_threshold
    km = _keep_mask(cl, keep)
    if km is not None:
        mask &= km
    if not mask.any():
        return empty()
    sc, cl, bx = sc[mask], cl[mask], np.clip(bx[mask], 0.0, 1.0)
    out = np.empty_like(bx)
    out[:, 0] = bx[:, 1] * input_w  # ymin, xmin, ymax, xmax -> x1, y1, x2, y2
    out[:, 1] = bx[:, 0] * input_h
    out[:, 2] = bx[:, 3] * input_w
    out[:, 3] = bx[:, 2] * input_h
    return Boxes(out, sc, cl)


def nms(found: Boxes, iou_threshold: float, max_detections: int = 100) -> np.ndarray:
    """Indices of the boxes kept by class-aware greedy NMS, best score first."""
    n = found.size
    if n <= 1:  # the common case of one person: nothing to suppress
        return np.arange(n, dtype=np.int64)
    # Best first; among equal scores (common: a quantised score moves in steps of 1/256) the later anchor first,
    # which is what the usual numpy NMS, `argsort()[::-1]`, does and what MODELS.md's figures were made with.
    order = np.argsort(found.scores, kind="stable")[::-1][:MAX_CANDIDATES]
    boxes = found.boxes
    if found.classes.max() != found.classes.min():
        # Shift each class into its own region of the plane, so one pass is a per-class NMS (in float64, so
        # the shifted coordinates keep their fractions).
        boxes = boxes.astype(np.float64)
        span = float(boxes.max() - boxes.min()) + 1.0
        boxes = boxes + (found.classes.astype(np.float64) * span)[:, None]
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep: list[int] = []
    while order.size and len(keep) < max_detections:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if rest.size == 0:
            break
        iw = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
        ih = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
        inter = np.maximum(iw, 0) * np.maximum(ih, 0)
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (M, 4) with every box of `b` (N, 4), x1, y1, x2, y2."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area_a = np.maximum(a[:, 2] - a[:, 0], 0) * np.maximum(a[:, 3] - a[:, 1], 0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
