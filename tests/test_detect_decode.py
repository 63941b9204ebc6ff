"""Decoding, NMS, letterbox, quantisation, zones, labels and the layout classifier, on hand-built data with known answers.

No runtime is needed: the tensors are built here the way each model family
lays them out, so every layout (YOLOv8/11 in both orientations with
normalised and pixel boxes, int8 and float, YOLOv5 with objectness, the SSD
post-process) is decoded against boxes and scores chosen beforehand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from daemon.detect import DetectorUnavailable, builtin_labels
from daemon.detect.decode import Boxes, above, decode_ssd, decode_yolo, iou_matrix, nms
from daemon.detect.labels import embedded_labels, read_labels, ultralytics_metadata
from daemon.detect.models import InputSpec, OutputLayout, TensorSpec, classify_outputs, read_input, yolo_anchors
from daemon.detect.preprocess import Preprocessor, letterbox_geometry, quantisation_table, resolve_zone, stretch_geometry

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
S = 320
N = yolo_anchors(S, S)  # 2100
C = 3  # classes: 0 person, 1 bicycle, 2 car

# Anchors with known content: (anchor, class scores, box cx, cy, w, h in input pixels).
#   10: a person, 0.9, box (120, 80)-(200, 240)
#   11: the same person at 0.7, shifted 4 px: NMS drops it
#   12: a car 0.6 overlapping the person: another class, kept
#   13: person 0.3 but bicycle 0.45: it is a bicycle (best class), and below 0.5 anyway
#   14: a second person 0.55, far away
KNOWN = [
    (10, (0.9, 0.0, 0.0), (160.0, 160.0, 80.0, 160.0)),
    (11, (0.7, 0.0, 0.0), (164.0, 160.0, 80.0, 160.0)),
    (12, (0.0, 0.0, 0.6), (170.0, 170.0, 80.0, 150.0)),
    (13, (0.3, 0.45, 0.0), (40.0, 40.0, 20.0, 20.0)),
    (14, (0.55, 0.0, 0.0), (280.0, 60.0, 30.0, 80.0)),
]
PERSON = (120.0, 80.0, 200.0, 240.0)
CAR = (130.0, 95.0, 210.0, 245.0)
FAR_PERSON = (265.0, 20.0, 295.0, 100.0)


def yolo_rows(classes: int = C, objectness: bool = False, anchors: int = N) -> np.ndarray:
    """(anchors, 4[+1]+C) float32 rows in input pixels; every anchor gets a plausible small box on the grid."""
    extra = 5 if objectness else 4
    rows = np.zeros((anchors, extra + classes), np.float32)
    # The grid: cx, cy span the input whatever the scene (this is how "normalised or pixels" is told apart).
    rows[:, 0] = np.linspace(4, S - 4, anchors)
    rows[:, 1] = np.linspace(S - 4, 4, anchors)
    rows[:, 2:4] = 8.0
    rows[:, extra:] = 0.01
    for anchor, scores, box in KNOWN:
        rows[anchor, :4] = box
        rows[anchor, extra : extra + 3] = scores
        if objectness:
            rows[anchor, 4] = 1.0
    return rows


def layout_for(raw: np.ndarray, kind: str = "yolov8", channels_first: bool = True, scale: float = 0.0, zp: int = 0) -> OutputLayout:
    spec = TensorSpec(0, "out", tuple(raw.shape), raw.dtype, scale, zp)
    inp = InputSpec(0, S, S, np.dtype(np.int8), 1 / 255, -128)
    layout = classify_outputs(inp, [spec])
    assert (layout.kind, layout.channels_first) == (kind, channels_first)
    return layout


def decoded(raw: np.ndarray, layout: OutputLayout, keep=None, threshold: float = 0.5) -> list[tuple[int, float, tuple]]:
    found = decode_yolo(raw, layout, input_w=S, input_h=S, score_threshold=threshold, keep=None if keep is None else np.asarray(keep))
    kept = nms(found, 0.45)
    return [(int(found.classes[i]), float(found.scores[i]), tuple(float(v) for v in found.boxes[i])) for i in kept]


def check(result, expected, box_tol=1e-3, score_tol=1e-5):
    assert len(result) == len(expected), result
    for (c, s, b), (ec, es, eb) in zip(result, expected, strict=True):
        assert c == ec and abs(s - es) <= score_tol and max(abs(x - y) for x, y in zip(b, eb, strict=True)) <= box_tol, (result, expected)


EXPECTED_ALL = [(0, 0.9, PERSON), (2, 0.6, CAR), (0, 0.55, FAR_PERSON)]
EXPECTED_PEOPLE = [(0, 0.9, PERSON), (0, 0.55, FAR_PERSON)]


# --- YOLOv8 / YOLO11 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_first", [True, False])
@pytest.mark.parametrize("boxes", ["pixels", "normalised"])
def test_yolov8_float_both_orientations_both_box_units(channels_first, boxes):
    rows = yolo_rows()
    if boxes == "normalised":
        rows[:, :4] /= S
    raw = (rows.T if channels_first else rows)[None].copy()
    layout = layout_for(raw, channels_first=channels_first)
    assert layout.boxes == "auto" and layout.classes == C  # a float output: decided from the frame's own cx row
    check(decoded(raw, layout), EXPECTED_ALL)
    check(decoded(raw, layout, keep=[0]), EXPECTED_PEOPLE)
    check(decoded(raw, layout, keep=[1]), [])  # the bicycle is below 0.5 ...
    check(decoded(raw, layout, keep=[1], threshold=0.4), [(1, 0.45, (30.0, 30.0, 50.0, 50.0))])  # ... and found under it
    assert decoded(raw, layout, keep=[0], threshold=0.25)[:1][0][0] == 0
    # The 0.3 person score of anchor 13 never makes it a person: its best class is the bicycle.
    assert all(b != (30.0, 30.0, 50.0, 50.0) for _, _, b in decoded(raw, layout, keep=[0], threshold=0.25))


def test_yolov8_float16_output():
    rows = yolo_rows()
    rows[:, :4] /= S
    raw = rows.T[None].astype(np.float16)
    layout = layout_for(raw)
    check(decoded(raw, layout), EXPECTED_ALL, box_tol=0.2, score_tol=1e-3)


def test_yolov8_int8_like_the_ultralytics_export():
    """int8 output, normalised boxes, scale about 1/256 and zero point -128: decoded within one quantisation step."""
    rows = yolo_rows()
    rows[:, :4] /= S
    scale, zp = 0.003906319383531809, -128
    q = np.clip(np.rint(rows / scale + zp), -128, 127).astype(np.int8)
    raw = q.T[None].copy()
    layout = layout_for(raw, scale=scale, zp=zp)
    assert layout.boxes == "normalised"  # an output that cannot exceed 0.9961 can only hold normalised boxes
    check(decoded(raw, layout), EXPECTED_ALL, box_tol=S * scale, score_tol=scale)


def test_yolo_pixel_boxes_in_a_quantised_output():
    """A quantised output with a wide range (pixel boxes) is decided per frame, from the cx row."""
    rows = yolo_rows()
    scale, zp = 2.0, 0
    q = np.clip(np.rint(rows / scale + zp), 0, 255).astype(np.uint8)
    q[:, 4:] = 0
    q[10, 4] = 1  # 2.0 after dequantising: a score above any threshold
    raw = q.T[None].copy()
    layout = layout_for(raw, scale=scale, zp=zp)
    assert layout.boxes == "auto"
    ((c, s, b),) = decoded(raw, layout)
    assert c == 0 and np.allclose(b, PERSON, atol=2.0)


def test_threshold_on_raw_values_equals_the_threshold_on_dequantised_ones():
    for dtype, scale, zp in [
        (np.int8, 0.003906319383531809, -128),
        (np.int8, 0.004194467328488827, -128),
        (np.uint8, 1 / 256, 0),
        (np.int8, 0.05, 3),
    ]:
        tensor = TensorSpec(0, "out", (256,), np.dtype(dtype), scale, zp)
        info = np.iinfo(dtype)
        values = np.arange(info.min, info.max + 1).astype(dtype)
        for threshold in (0.0, 0.25, 0.5, 0.2969, float(tensor.dequantise(values)[200]), 0.999, 7.0):
            assert np.array_equal(above(tensor, values, threshold), tensor.dequantise(values) > threshold), (dtype, scale, zp, threshold)


# --- YOLOv5 ----------------------------------------------------------------------------------------------------


def test_yolov5_objectness_times_class_score():
    rows = yolo_rows(objectness=True, anchors=3 * N)
    rows[:, 4] = 0.02
    rows[10, 4], rows[10, 5] = 0.9, 0.8  # 0.72: kept
    rows[11, 4], rows[11, 5] = 0.9, 0.7  # the same person, 0.63: NMS drops it
    rows[12, 4], rows[12, 7] = 0.5, 0.99  # car 0.495: under 0.5
    rows[14, 4], rows[14, 5] = 0.3, 1.0  # 0.3: under
    raw = rows[None].copy()
    layout = layout_for(raw, kind="yolov5", channels_first=False)
    assert layout.classes == C and layout.anchors == 3 * N
    check(decoded(raw, layout), [(0, 0.72, PERSON)])
    check(decoded(raw, layout, threshold=0.25), [(0, 0.72, PERSON), (2, 0.495, CAR), (0, 0.3, FAR_PERSON)])
    raw_cf = rows.T[None].copy()
    check(decoded(raw_cf, layout_for(raw_cf, kind="yolov5", channels_first=True)), [(0, 0.72, PERSON)])


# --- SSD -------------------------------------------------------------------------------------------------------


def ssd_outputs():
    boxes = np.zeros((1, 10, 4), np.float32)
    classes = np.zeros((1, 10), np.float32)
    scores = np.zeros((1, 10), np.float32)
    boxes[0, 0] = (-0.016, 0.1, 0.5, 0.4)  # ymin, xmin, ymax, xmax: a person reaching over the top edge
    classes[0, 0], scores[0, 0] = 0, 0.8
    boxes[0, 1] = (0.6, 0.5, 1.137, 0.9)  # a cup over the bottom edge
    classes[0, 1], scores[0, 1] = 46, 0.7
    boxes[0, 2] = (0.1, 0.6, 0.3, 0.7)  # a person under the threshold
    classes[0, 2], scores[0, 2] = 0, 0.2
    boxes[0, 3] = (0.2, 0.2, 0.4, 0.4)  # past the count: ignored
    classes[0, 3], scores[0, 3] = 0, 0.99
    return boxes, classes, scores, np.array([3.0], np.float32)


def test_ssd_post_process_outputs_are_clipped_filtered_and_counted():
    b, c, s, n = ssd_outputs()
    found = decode_ssd(b, c, s, n, input_w=300, input_h=300, score_threshold=0.5)
    assert found.size == 2
    assert found.classes.tolist() == [0, 46]
    assert np.allclose(found.boxes, [[30, 0, 120, 150], [150, 180, 270, 300]], atol=1e-4)
    people = decode_ssd(b, c, s, n, input_w=300, input_h=300, score_threshold=0.1, keep=np.array([0]))
    assert people.classes.tolist() == [0, 0] and np.allclose(people.scores, [0.8, 0.2])
    # Mapped back by the stretch geometry of a 640x480 frame: x * 640/300, y * 480/300.
    frame = stretch_geometry(640, 480, 300, 300).to_frame(found.boxes)
    assert np.allclose(frame[0], [64, 0, 256, 240], atol=1e-3)


# --- NMS -------------------------------------------------------------------------------------------------------


def test_nms_is_greedy_and_class_aware():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10.0]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.95], np.float32)
    classes = np.array([0, 0, 1, 0, 2])
    kept = nms(Boxes(boxes, scores, classes), 0.5)
    assert kept.tolist() == [4, 0, 2, 3]  # box 1 (IoU 0.82 with box 0, same class) goes; other classes stay
    assert nms(Boxes(boxes, scores, np.zeros(5, np.int64)), 0.5).tolist() == [4, 3]
    assert nms(Boxes(boxes, scores, classes), 0.5, max_detections=2).tolist() == [4, 0]


def test_nms_threshold_is_strict_and_ties_take_the_later_anchor():
    # IoU of these two is exactly 1/3: kept at a threshold of 1/3 (only "above" suppresses), dropped below it.
    boxes = np.array([[0, 0, 2, 1], [1, 0, 3, 1]], np.float32)
    found = Boxes(boxes, np.array([0.9, 0.8], np.float32), np.zeros(2, np.int64))
    assert np.isclose(iou_matrix(boxes[:1], boxes[1:])[0, 0], 1 / 3)
    assert nms(found, 1 / 3 + 1e-6).tolist() == [0, 1]
    assert nms(found, 0.3).tolist() == [0]
    tie = Boxes(np.array([[0, 0, 10, 10], [0, 0, 10, 11], [0, 0, 11, 10]], np.float32), np.full(3, 0.5, np.float32), np.zeros(3, np.int64))
    assert nms(tie, 0.45).tolist() == [2]
    assert nms(Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)), 0.45).size == 0


# --- letterbox and its inverse, quantisation, zones -------------------------------------------------------------


def test_letterbox_geometry_is_ultralytics():
    astro = letterbox_geometry(512, 512, 640, 640)
    assert (astro.sx, astro.new_w, astro.new_h, astro.pad_x, astro.pad_y) == (1.25, 640, 640, 0, 0)
    coffee = letterbox_geometry(600, 400, 640, 640)  # MODELS.md: r = 1.0667, pad_y 106
    assert (coffee.new_w, coffee.new_h, coffee.pad_x, coffee.pad_y) == (640, 427, 0, 106)
    small = letterbox_geometry(600, 400, 320, 320)  # 53 on top, 54 below
    assert (small.new_w, small.new_h, small.pad_y, 320 - small.new_h - small.pad_y) == (320, 213, 53, 54)
    tall = letterbox_geometry(1080, 1920, 416, 416)
    assert (tall.new_w, tall.new_h, tall.pad_x, tall.pad_y) == (234, 416, 91, 0)


@pytest.mark.parametrize("size", [(512, 512), (600, 400), (1920, 1080), (480, 640), (333, 777)])
def test_letterbox_inverse_round_trip(size):
    w, h = size
    rng = np.random.default_rng(w * h)
    xy = rng.uniform(0, 1, (50, 4)) * [w, h, w, h]
    boxes = np.concatenate([np.minimum(xy[:, :2], xy[:, 2:]), np.maximum(xy[:, :2], xy[:, 2:])], axis=1).astype(np.float32)
    for g in (letterbox_geometry(w, h, 640, 640), letterbox_geometry(w, h, 320, 320), stretch_geometry(w, h, 300, 300)):
        there = g.to_input(boxes)
        # Inside the resized image (up to the half pixel by which its size was rounded).
        assert there.min() >= -1e-3 and there[:, 0::2].max() <= g.pad_x + g.new_w + 0.5 and there[:, 1::2].max() <= g.pad_y + g.new_h + 0.5
        assert np.allclose(g.to_frame(there), boxes, atol=1e-3)
    # Boxes past the image (into the padding) are clipped to it.
    g = letterbox_geometry(600, 400, 640, 640)
    assert np.allclose(g.to_frame(np.array([[-5, 0, 700, 640]], np.float32)), [[0, 0, 600, 400]])


def int8_input(scale=1 / 255, zp=-128, size=320, dtype=np.int8) -> InputSpec:
    return InputSpec(0, size, size, np.dtype(dtype), scale, zp)


def test_preprocess_letterboxes_converts_and_quantises_into_the_tensor():
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (400, 600, 3), dtype=np.uint8)
    pre = Preprocessor(int8_input())
    tensor = np.zeros((1, 320, 320, 3), np.int8)
    g = pre.run(frame, tensor)
    assert (g.new_w, g.new_h, g.pad_y) == (320, 213, 53)
    rgb = cv2.cvtColor(cv2.resize(frame, (320, 213), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    expected = np.full((320, 320, 3), 114, np.uint8)
    expected[53:266] = rgb
    assert np.array_equal(tensor[0], (expected.astype(np.int16) - 128).astype(np.int8))  # MODELS.md: q = pixel - 128 exactly
    assert pre.method == "shift"
    # Another frame size in between, then the first again: no stale image in the padding.
    pre.run(rng.integers(0, 256, (600, 400, 3), dtype=np.uint8), tensor)
    pre.run(frame, tensor)
    assert np.array_equal(tensor[0], (expected.astype(np.int16) - 128).astype(np.int8))


def test_quantisation_follows_the_model_scale_and_zero_point():
    pixels = np.arange(256, dtype=np.float64)
    assert quantisation_table(int8_input(), "unit")[0] == "shift"
    # The SSD's uint8 (1/128, 128) input is raw pixels.
    assert quantisation_table(int8_input(1 / 128, 128, dtype=np.uint8), "signed")[0] == "copy"
    # A badly calibrated int8 input (MODELS.md's sangho007 model) uses the general formula.
    method, table = quantisation_table(int8_input(0.018658, -14), "unit")
    assert method == "lut" and table is not None and table.dtype == np.int8
    assert np.array_equal(table, np.clip(np.rint(pixels / 255 / 0.018658 - 14), -128, 127).astype(np.int8))
    assert table.min() == -14 and table.max() == 40
    method, table = quantisation_table(int8_input(0.0, 0, dtype=np.float32), "unit")
    assert method == "lut" and table is not None and np.allclose(table, pixels / 255)
    # Through the preprocessor, for each dtype: the tensor equals the table applied to the RGB letterbox.
    frame = np.random.default_rng(2).integers(0, 256, (320, 320, 3), dtype=np.uint8)
    rgb = frame[..., ::-1]
    for spec, norm, expect in [
        (int8_input(0.018658, -14), "unit", np.clip(np.rint(rgb / 255 / 0.018658 - 14), -128, 127)),
        (int8_input(0.0, 0, dtype=np.float32), "unit", rgb / 255),
        (int8_input(0.0, 0, dtype=np.float16), "unit", rgb / 255),
        (int8_input(0.0, 0, dtype=np.float32), "signed", rgb / 127.5 - 1),
        (int8_input(1 / 128, 128, dtype=np.uint8), "signed", rgb),
    ]:
        tensor = np.zeros((1, 320, 320, 3), spec.dtype)
        Preprocessor(spec, normalisation=norm).run(frame, tensor)
        assert np.allclose(tensor[0].astype(np.float64), expect, atol=1e-3), (spec, norm)


def test_zone_resolves_pixels_and_fractions_and_refuses_nonsense():
    assert resolve_zone(None, 640, 480) is None
    assert resolve_zone([0, 0, 1, 1], 640, 480) is None  # the whole frame is no zone
    z = resolve_zone([0.25, 0.5, 0.5, 0.5], 640, 480)
    assert z is not None and (z.x0, z.y0, z.x1, z.y1) == (160, 240, 480, 480)
    z = resolve_zone([100, 50, 1000, 100], 640, 480)  # clipped to the frame
    assert z is not None and z.as_list() == [100, 50, 540, 100]
    cases: list[tuple[list[Any], str]] = [
        ([1, 2, 3], r"\[x, y, w, h\]"),
        ([0, 0, 0, 10], "w, h > 0"),
        ([-1, 0, 5, 5], "x and y must be >= 0"),
        ([700, 0, 50, 50], "outside the 640x480 frame"),
        (["a", 0, 1, 1], "four numbers"),
    ]
    for bad, why in cases:
        with pytest.raises(ValueError, match=why):
            resolve_zone(bad, 640, 480)


def test_zone_crop_reaches_the_tensor_and_maps_boxes_back():
    rng = np.random.default_rng(9)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    pre = Preprocessor(int8_input())
    zoned, plain = np.zeros((1, 320, 320, 3), np.int8), np.zeros((1, 320, 320, 3), np.int8)
    g = pre.run(frame, zoned, (200, 100, 400, 300))
    Preprocessor(int8_input()).run(np.ascontiguousarray(frame[100:400, 200:600]), plain)
    assert np.array_equal(zoned, plain)
    assert (g.off_x, g.off_y, g.src_w, g.src_h) == (200, 100, 400, 300)
    # The crop's own box (0, 0)-(400, 300) in the input is the zone's rectangle in the frame.
    assert np.allclose(g.to_frame(g.to_input(np.array([[200, 100, 600, 400]], np.float32))), [[200, 100, 600, 400]], atol=1e-3)
    assert np.allclose(g.to_frame(np.array([[0, 0, 320, 320]], np.float32)), [[200, 100, 600, 400]])


# --- layouts and inputs the classifier refuses, with their reasons ----------------------------------------------


def spec(shape, dtype=np.float32, name="out", index=0) -> TensorSpec:
    return TensorSpec(index, name, tuple(shape), np.dtype(dtype), 0.0, 0)


INPUT640 = InputSpec(0, 640, 640, np.dtype(np.int8), 1 / 255, -128)


def test_layouts_recognised_by_anchor_count():
    assert yolo_anchors(640, 640) == 8400 and yolo_anchors(320, 320) == 2100 and yolo_anchors(416, 416) == 3549
    v8 = classify_outputs(INPUT640, [spec((1, 84, 8400))])
    assert (v8.kind, v8.classes, v8.anchors, v8.channels_first) == ("yolov8", 80, 8400, True)
    v8t = classify_outputs(INPUT640, [spec((1, 8400, 84))])
    assert (v8t.kind, v8t.channels_first) == ("yolov8", False)
    v5 = classify_outputs(INPUT640, [spec((1, 25200, 85))])
    assert (v5.kind, v5.classes, v5.channels_first) == ("yolov5", 80, False)
    one = classify_outputs(INPUT640, [spec((1, 5, 8400))])  # a person-only YOLOv8
    assert (one.kind, one.classes) == ("yolov8", 1)
    # A P6 head (strides up to 64) does not match the count; the labels settle it.
    p6 = classify_outputs(INPUT640, [spec((1, 84, 8500))], label_count=80)
    assert (p6.kind, p6.classes, p6.anchors) == ("yolov8", 80, 8500)
    assert classify_outputs(INPUT640, [spec((1, 8500, 85))], label_count=80).kind == "yolov5"


def test_ssd_outputs_by_name_order():
    tf1 = [
        spec((1, 10, 4), name="TFLite_Detection_PostProcess", index=1),
        spec((1, 10), name="TFLite_Detection_PostProcess:1", index=2),
        spec((1, 10), name="TFLite_Detection_PostProcess:2", index=3),
        spec((1,), name="TFLite_Detection_PostProcess:3", index=4),
    ]
    layout = classify_outputs(INPUT640, tf1)
    assert layout.kind == "ssd" and [t.index for t in layout.tensors] == [1, 2, 3, 4]
    tf2 = [
        spec((1, 10), name="StatefulPartitionedCall:1", index=1),
        spec((1, 10, 4), name="StatefulPartitionedCall:3", index=2),
        spec((1,), name="StatefulPartitionedCall:0", index=3),
        spec((1, 10), name="StatefulPartitionedCall:2", index=4),
    ]
    layout = classify_outputs(INPUT640, tf2)
    assert [t.index for t in layout.tensors] == [2, 4, 1, 3]  # boxes, classes, scores, count


@pytest.mark.parametrize(
    "outputs, why",
    [
        ([spec((1, 1001))], "not a detection model: its one output [1, 1001] is a score per class (an image classifier)"),
        ([spec((1, 1, 1, 1001))], "not a detection model"),
        ([spec((1, 10, 10))], "unknown output layout [1, 10, 10] for a 640x640 input: neither YOLOv8/11 (N = 8400 anchors"),
        ([spec((1, 300, 6))], "looks like a YOLO export with NMS inside"),
        ([spec((1, 10, 4)), spec((1, 10)), spec((1, 10)), spec((1, 11))], "not an SSD post-process"),
        ([spec((1, 10, 4)), spec((1, 10)), spec((1, 10)), spec((1,), np.uint8)], "should be float32"),
        ([spec((1, 84, 8400)), spec((1, 32, 160, 160))], "unknown output layout: 2 outputs"),
        ([spec((84, 8400))], "unknown output layout [84, 8400]"),
        ([spec((1, 2, 84, 8400))], "unknown output layout [1, 2, 84, 8400]"),
    ],
)
def test_layouts_refused_with_a_reason(outputs, why):
    with pytest.raises(DetectorUnavailable) as err:
        classify_outputs(INPUT640, outputs)
    assert why in err.value.reason


def test_ultralytics_task_other_than_detect_is_refused():
    with pytest.raises(DetectorUnavailable, match="its Ultralytics metadata says task 'segment'"):
        classify_outputs(INPUT640, [spec((1, 116, 8400))], task="segment")


@pytest.mark.parametrize(
    "details, why",
    [
        ([{"index": 0, "shape": [1, 3, 640, 640], "dtype": np.float32}], "(NCHW)"),
        ([{"index": 0, "shape": [1, 640, 640, 1], "dtype": np.uint8}], "not RGB"),
        ([{"index": 0, "shape": [640, 640, 3], "dtype": np.uint8}], "not an image model"),
        ([{"index": 0, "shape": [1, 64, 64, 3], "dtype": np.int32}], "unsupported input dtype int32"),
        ([{"index": 0, "shape": [1, 64, 64, 3], "dtype": np.uint8}] * 2, "it has 2 inputs"),
    ],
)
def test_inputs_refused_with_a_reason(details, why):
    with pytest.raises(DetectorUnavailable) as err:
        read_input(details)
    assert why in err.value.reason


def test_input_read_with_its_quantisation():
    inp = read_input([{"index": 7, "shape": np.array([1, 416, 416, 3]), "dtype": np.int8, "quantization": (0.00392, -128)}])
    assert (inp.index, inp.width, inp.height, inp.dtype, inp.scale, inp.zero_point) == (7, 416, 416, np.int8, 0.00392, -128)


# --- labels ----------------------------------------------------------------------------------------------------


def test_ssd_label_map_has_an_offset_of_one():
    labels = read_labels(builtin_labels())
    assert labels.offset == 1 and len(labels.names) == 91 and labels.count == 90
    assert (labels.name(0), labels.name(46), labels.name(66)) == ("person", "cup", "dining table")
    assert labels.name(11) == "class 11"  # a COCO id with no category ('???')
    assert labels.class_ids(["person", "cup", 3]) == [0, 3, 46]


def test_eighty_line_labels_have_no_offset(tmp_path):
    path = SHARED / "coco_labels.txt"
    if not path.is_file():
        path = tmp_path / "labels.txt"
        path.write_text("person\nbicycle\ncar\n")
    labels = read_labels(path)
    assert labels.offset == 0 and labels.name(0) == "person" and labels.class_ids(["person"]) == [0]
    if len(labels.names) == 80:
        assert (labels.name(41), labels.name(60), labels.name(79)) == ("cup", "dining table", "toothbrush")
    with pytest.raises(DetectorUnavailable, match="class 'unicorn' is not among the model's labels"):
        labels.class_ids(["unicorn"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DetectorUnavailable, match="label file is empty"):
        read_labels(empty)


def test_names_embedded_by_an_ultralytics_export():
    path = SHARED / "yolov8n_full_integer_quant_320.tflite"
    if not path.is_file():
        pytest.skip(f"test model {path} is missing")
    meta = ultralytics_metadata(path)
    assert meta is not None and meta["task"] == "detect" and meta["imgsz"] == [320, 320]
    labels = embedded_labels(meta)
    assert labels is not None and len(labels.names) == 80 and labels.name(0) == "person" and labels.name(41) == "cup"
    assert ultralytics_metadata(builtin_labels()) is None
