"""What a detection model is, read from the model itself: its input, and the layout of its outputs.

Input: NHWC `[1, H, W, 3]` of any size, dtype int8, uint8, float16 or float32,
with its quantisation scale and zero point.

Outputs, recognised by shape (the anchor count gives the family away: a YOLO
head at strides 8, 16 and 32 has N = sum of ceil(H/s) * ceil(W/s) anchors,
8400 at 640, and YOLOv5 has three boxes per cell, 3N):
- Ultralytics YOLOv8 / YOLO11: one tensor `(1, 4+C, N)` (channels first, as
  exported) or `(1, N, 4+C)`: cx, cy, w, h, then C sigmoid class scores;
- YOLOv5: one tensor `(1, N', 5+C)` (or transposed) with an objectness score
  after the box; a class's score is objectness times the class score;
- SSD with the TFLite detection post-process op: four float tensors, boxes
  `(1, K, 4)` (ymin, xmin, ymax, xmax normalised), classes `(1, K)` (0-based,
  as floats), scores `(1, K)` and the count `(1,)`. The TF1 export names them
  `TFLite_Detection_PostProcess`, `:1` (classes), `:2` (scores), `:3`; the TF2
  export (`StatefulPartitionedCall:N`) puts the scores before the classes.
When the anchor count matches no stride set (a P6 model, an odd export), the
label count decides: C + 4 channels is YOLOv8, C + 5 is YOLOv5.

YOLO boxes are normalised to 0..1 of the input (Ultralytics' TFLite export) or
in input pixels (other converters). A quantised output whose whole range lies
below 2 can only hold normalised boxes; otherwise the decoder looks at the
largest cx over all anchors of each frame, which spans the grid whatever the
scene: below 2 it is normalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import DetectorUnavailable

INPUT_DTYPES = (np.int8, np.uint8, np.float16, np.float32)
YOLO_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor as the interpreter describes it."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> TensorSpec:
        scale, zero_point = details.get("quantization", (0.0, 0)) or (0.0, 0)
        return cls(
            index=int(details["index"]),
            name=str(details.get("name", "")),
            shape=tuple(int(d) for d in details["shape"]),
            dtype=np.dtype(details["dtype"]),
            scale=float(scale),
            zero_point=int(zero_point),
        )

    @property
    def quantised(self) -> bool:
        return self.dtype.kind in "iu" and self.scale > 0

    def dequantise(self, values: np.ndarray) -> np.ndarray:
        """Real values as float32 (a float tensor is only converted)."""
        if self.quantised:
            return (values.astype(np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)
        return values.astype(np.float32, copy=False)

    @property
    def real_max(self) -> float:
        """The largest value the tensor can hold (inf for a float tensor)."""
        if not self.quantised:
            return float("inf")
        return (float(np.iinfo(self.dtype).max) - self.zero_point) * self.scale


@dataclass(frozen=True)
class InputSpec:
    index: int
    height: int
    width: int
    dtype: np.dtype
    scale: float
    zero_point: int

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"width": self.width, "height": self.height, "dtype": self.dtype.name}
        if self.dtype.kind in "iu":
            out.update(scale=self.scale, zero_point=self.zero_point)
        return out


def read_input(details: Sequence[Mapping[str, Any]]) -> InputSpec:
    """The one image input; raises `DetectorUnavailable` for anything but NHWC RGB of a known dtype."""
    if len(details) != 1:
        raise DetectorUnavailable(f"not a detection model: it has {len(details)} inputs, a detector has one image input")
    spec = TensorSpec.from_details(details[0])
    shape = spec.shape
    if len(shape) != 4 or shape[0] != 1:
        raise DetectorUnavailable(f"not an image model: input shape {list(shape)}, expected [1, height, width, 3]")
    if shape[3] != 3:
        layout = "NCHW" if shape[1] == 3 else "not RGB"
        raise DetectorUnavailable(f"unsupported input shape {list(shape)} ({layout}); expected NHWC [1, height, width, 3]")
    if spec.dtype.type not in INPUT_DTYPES:
        raise DetectorUnavailable(f"unsupported input dtype {spec.dtype.name} (known: int8, uint8, float16, float32)")
    return InputSpec(spec.index, shape[1], shape[2], spec.dtype, spec.scale, spec.zero_point)


@dataclass(frozen=True)
class OutputLayout:
    """How to decode a model's outputs.

    kind: "yolov8" (also YOLO11), "yolov5" or "ssd". For YOLO, `tensors` is the
    one output, `channels_first` tells (1, 4+C, N) from (1, N, 4+C), and
    `boxes` is "normalised", "pixels" or "auto" (decided per frame). For SSD,
    `tensors` are boxes, classes, scores and count, in that order.
    """

    kind: str
    classes: int | None
    anchors: int
    tensors: tuple[TensorSpec, ...]
    channels_first: bool = False
    boxes: str = "normalised"

    def describe(self) -> str:
        if self.kind == "ssd":
            return f"ssd with TFLite post-process ({self.anchors} boxes out)"
        shape = list(self.tensors[0].shape)
        order = "channels first" if self.channels_first else "channels last"
        return f"{self.kind} {shape} {order}, boxes {self.boxes}"


def yolo_anchors(height: int, width: int, strides: Sequence[int] = YOLO_STRIDES) -> int:
    """Anchors of a YOLO head over an input (8400 at 640x640, 2100 at 320x320)."""
    return sum(-(-height // s) * -(-width // s) for s in strides)


def classify_outputs(
    inp: InputSpec,
    outputs: Sequence[TensorSpec],
    *,
    label_count: int | None = None,
    task: str | None = None,
) -> OutputLayout:
    """The layout of a model's outputs, or `DetectorUnavailable` saying why it is not a detector picamd can decode.

    `label_count` (classes named by the labels) settles a YOLO tensor whose
    anchor count is unusual; `task` is what an Ultralytics export says it is.
    """
    if task is not None and task != "detect":
        raise DetectorUnavailable(f"not a detection model: its Ultralytics metadata says task {task!r}")
    shapes = [list(t.shape) for t in outputs]
    if len(outputs) == 4:
        return _ssd(outputs, shapes)
    if len(outputs) != 1:
        raise DetectorUnavailable(f"unknown output layout: {len(outputs)} outputs {shapes} (a detector has 1 YOLO output or 4 SSD outputs)")
    out = outputs[0]
    shape = out.shape
    if (len(shape) == 2 and shape[0] == 1) or (len(shape) == 4 and shape[0] == shape[1] == shape[2] == 1):
        raise DetectorUnavailable(f"not a detection model: its one output {list(shape)} is a score per class (an image classifier)")
    if len(shape) != 3 or shape[0] != 1:
        raise DetectorUnavailable(f"unknown output layout {list(shape)} (expected YOLO [1, 4+C, N] or [1, N, 4+C])")
    a, b = shape[1], shape[2]
    n = yolo_anchors(inp.height, inp.width)
    for kind, anchors, extra in (("yolov8", n, 4), ("yolov5", 3 * n, 5)):
        if b == anchors and a > extra:
            return _yolo(kind, out, a - extra, anchors, channels_first=True)
        if a == anchors and b > extra:
            return _yolo(kind, out, b - extra, anchors, channels_first=False)
    if label_count is not None:
        channels, anchors_dim = (a, b) if a < b else (b, a)
        if channels == label_count + 4:
            return _yolo("yolov8", out, label_count, anchors_dim, channels_first=a < b)
        if channels == label_count + 5:
            return _yolo("yolov5", out, label_count, anchors_dim, channels_first=a < b)
    if min(a, b) in (6, 7):
        raise DetectorUnavailable(
            f"unknown output layout {list(shape)}: it looks like a YOLO export with NMS inside (box, score, class per row); "
            "export it without NMS (Ultralytics: nms=False)"
        )
    raise DetectorUnavailable(
        f"unknown output layout {list(shape)} for a {inp.width}x{inp.height} input: neither YOLOv8/11 (N = {n} anchors, "
        f"4 + C channels) nor YOLOv5 (N = {3 * n}, 5 + C channels)"
        + ("" if label_count is None else f", nor 4 or 5 + {label_count} labels")
    )


def _yolo(kind: str, out: TensorSpec, classes: int, anchors: int, *, channels_first: bool) -> OutputLayout:
    if out.dtype.kind not in "iuf":
        raise DetectorUnavailable(f"unsupported output dtype {out.dtype.name}")
    # A quantised output that cannot reach 2 cannot hold pixel coordinates of any input worth the name.
    boxes = "normalised" if out.real_max <= 2.0 else "auto"
    return OutputLayout(kind, classes, anchors, (out,), channels_first=channels_first, boxes=boxes)


def _ssd(outputs: Sequence[TensorSpec], shapes: list[list[int]]) -> OutputLayout:
    boxes = [t for t in outputs if len(t.shape) == 3 and t.shape[0] == 1 and t.shape[2] == 4]
    count = [t for t in outputs if len(t.shape) == 1 and t.shape[0] == 1]
    rows = [t for t in outputs if len(t.shape) == 2 and t.shape[0] == 1]
    shaped = len(boxes) == 1 and len(count) == 1 and len(rows) == 2
    if not shaped or rows[0].shape != rows[1].shape or rows[0].shape[1] != boxes[0].shape[1]:
        raise DetectorUnavailable(
            f"unknown output layout: 4 outputs {shapes}, but not an SSD post-process "
            "(boxes [1, K, 4], classes [1, K], scores [1, K], count [1])"
        )
    if any(t.dtype != np.float32 for t in outputs):
        dtypes = [t.dtype.name for t in outputs]
        raise DetectorUnavailable(f"unknown output layout: SSD post-process outputs should be float32, not {dtypes}")
    first, second = rows  # in output order
    if any("StatefulPartitionedCall" in t.name for t in outputs):
        scores, classes = first, second  # TF2 export: scores come before classes
    else:
        classes, scores = first, second  # TF1 export: `:1` classes, `:2` scores
    return OutputLayout("ssd", None, boxes[0].shape[1], (boxes[0], classes, scores, count[0]))
