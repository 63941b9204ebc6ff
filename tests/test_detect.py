"""Real inference: each shared model on real photos against MODELS.md, and the reasons detection cannot run.

The photos are scikit-image's astronaut (512x512, one person) and coffee
(600x400, a cup on a table, no person), plus blank grey and black frames.
MODELS.md (../shared/models) gives what each model finds there, for both
kernel paths: LiteRT's default XNNPACK and the built-in kernels (which
tflite-runtime 2.14 also uses). Each detector reports the path it really took,
and its detections must match that path's row: same labels, boxes within
2 pixels, scores within 0.01.

The YOLO files are AGPL-3.0 test data and live only in ../shared/models; the
SSD is the package's own built-in model. One interpreter per model and
kernel path serves every test of the module.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from daemon.detect import Detection, DetectorOptions, DetectorUnavailable, builtin_labels, builtin_model, create_detector
from daemon.detect.base import BackendRegistry, Detector, DetectResult
from daemon.detect.runtime import find_runtime

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
YOLO640 = "yolov8n_full_integer_quant.tflite"
YOLO320 = "yolov8n_full_integer_quant_320.tflite"
SSD = "ssd"  # the built-in model

BOX_TOL = 2.0
SCORE_TOL = 0.01

# MODELS.md, per model and kernel path: image -> [(label, score, box or None)], every detection above the threshold.
# Blank frames give nothing on every row.
EXPECTED: dict[str, dict[str, dict[str, list[tuple[str, float, tuple[float, float, float, float] | None]]]]] = {
    YOLO640: {
        "xnnpack": {
            "astronaut": [("person", 0.8477, (5.0, 15.0, 363.0, 512.0))],
            "coffee": [
                ("cup", 0.8477, (169.9, 19.0, 420.7, 321.3)),
                ("dining table", 0.7031, (0.0, 0.2, 576.6, 396.3)),
                ("bowl", 0.2969, (73.8, 1.4, 521.5, 390.5)),
            ],
        },
        "builtin": {  # MODELS.md gives the coffee scores of this path without boxes
            "astronaut": [("person", 0.8164, (2.0, 22.0, 362.0, 512.0))],
            "coffee": [("cup", 0.8477, None), ("dining table", 0.7031, None), ("bowl", 0.2969, None)],
        },
    },
    YOLO320: {
        "xnnpack": {
            "astronaut": [("person", 0.6879, (14.0, 14.0, 364.0, 510.0))],
            "coffee": [("cup", 0.8934, (172.4, 10.1, 421.5, 324.7)), ("dining table", 0.5663, (3.8, 5.1, 590.2, 390.1))],
        },
        "builtin": {
            "astronaut": [("person", 0.7424, (14.0, 18.3, 364.0, 510.0))],
            "coffee": [("cup", 0.8641, (172.4, 11.4, 421.5, 323.4)), ("dining table", 0.5663, (3.8, 1.3, 600.0, 378.8))],
        },
    },
    SSD: {  # MODELS.md lists the SSD's detections at >= 0.5
        "xnnpack": {
            "astronaut": [("person", 0.6445, (3.2, 8.4, 368.4, 500.4)), ("mouse", 0.5977, (267.7, 348.0, 502.8, 512.0))],
            "coffee": [("cup", 0.7773, (167.3, 16.8, 423.6, 314.0)), ("dining table", 0.5977, (13.6, 3.0, 582.7, 388.5))],
        },
        "builtin": {
            "astronaut": [("person", 0.6562, (12.1, 7.6, 389.2, 508.9)), ("mouse", 0.5977, (267.7, 348.0, 502.8, 512.0))],
            "coffee": [("cup", 0.7773, (167.3, 16.8, 423.6, 314.0)), ("dining table", 0.5977, (13.6, 3.0, 582.7, 388.5))],
        },
    },
}
#: The score threshold of MODELS.md's method for each model.
THRESHOLD = {YOLO640: 0.25, YOLO320: 0.25, SSD: 0.5}


def _runtime_reason() -> str | None:
    try:
        find_runtime()
    except DetectorUnavailable as exc:
        return exc.reason
    return None


RUNTIME_MISSING = _runtime_reason()
needs_runtime = pytest.mark.skipif(RUNTIME_MISSING is not None, reason=str(RUNTIME_MISSING))


def model_paths(model: str) -> tuple[Path, Path]:
    if model == SSD:
        return builtin_model(), builtin_labels()
    path = SHARED / model
    if not path.is_file():
        pytest.skip(f"test model {path} is missing (the YOLO test models live in ../shared/models, see MODELS.md)")
    return path, SHARED / "coco_labels.txt"


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photos")
    return {
        "astronaut": cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR),
        "coffee": cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR),
        "grey": np.full((480, 640, 3), 114, np.uint8),
        "black": np.zeros((480, 640, 3), np.uint8),
    }


@pytest.fixture(scope="module")
def detectors() -> Iterator[dict[tuple[str, str], Detector]]:
    """(model, kernels) -> a detector of every class at MODELS.md's threshold, made on first use."""
    cache: dict[tuple[str, str], Detector] = {}
    yield cache
    for d in cache.values():
        d.close()


def get_detector(cache: dict[tuple[str, str], Detector], model: str, kernels: str) -> Detector:
    if RUNTIME_MISSING is not None:
        pytest.skip(RUNTIME_MISSING)
    key = (model, kernels)
    if key not in cache:
        path, labels = model_paths(model)
        cache[key] = create_detector(
            "tflite", DetectorOptions(model=path, labels=labels, classes=(), score_threshold=THRESHOLD[model], kernels=kernels, threads=2)
        )
    return cache[key]


def assert_matches(found: list[Detection], expected: list[tuple[str, float, tuple[float, float, float, float] | None]], where: str) -> None:
    got = sorted(found, key=lambda d: -d.score)
    assert len(got) == len(expected), f"{where}: got {[d.to_dict() for d in got]}, expected {expected}"
    for det, (label, score, box) in zip(got, sorted(expected, key=lambda e: -e[1]), strict=True):
        assert det.label == label, f"{where}: got {det.to_dict()}, expected {label}"
        assert abs(det.score - score) <= SCORE_TOL, f"{where}: {label} score {det.score:.4f}, MODELS.md {score}"
        if box is not None:
            diff = max(abs(a - b) for a, b in zip(det.box, box, strict=True))
            assert diff <= BOX_TOL, f"{where}: {label} box {[round(v, 1) for v in det.box]}, MODELS.md {list(box)} ({diff:.1f} px off)"


# --- MODELS.md, model by model and kernel path by kernel path ------------------------------------------------


@needs_runtime
@pytest.mark.parametrize("kernels", ["default", "builtin"])
@pytest.mark.parametrize("model", [YOLO640, YOLO320, SSD])
def test_detections_match_models_md(detectors, photos, model, kernels):
    det = get_detector(detectors, model, kernels)
    path = det.describe()["kernels"]
    if kernels == "builtin":
        assert path == "builtin"
    elif det.describe()["runtime"].startswith("ai-edge-litert"):
        assert path == "xnnpack", "LiteRT applies XNNPACK by default"
    rows = EXPECTED[model][path]
    for image in ("astronaut", "coffee"):
        result = det.detect(photos[image])
        assert (result.frame_width, result.frame_height) == (photos[image].shape[1], photos[image].shape[0])
        assert_matches(result.detections, rows[image], f"{model} {path} {image}")
    for blank in ("grey", "black"):
        assert det.detect(photos[blank]).detections == [], f"{model} {path}: something found on a {blank} frame"


@needs_runtime
@pytest.mark.parametrize("model", [YOLO640, YOLO320, SSD])
def test_the_same_frame_twice_gives_the_same_detections(detectors, photos, model):
    det = get_detector(detectors, model, "default")
    first = det.detect(photos["astronaut"]).detections
    det.detect(photos["coffee"])  # a frame of another size in between: buffers are re-planned, not reused stale
    assert det.detect(photos["astronaut"]).detections == first


@needs_runtime
@pytest.mark.parametrize("model", [YOLO640, YOLO320, SSD])
def test_person_filter_finds_the_astronaut_and_no_one_in_the_coffee_photo(photos, model):
    path, labels = model_paths(model)
    det = create_detector("tflite", DetectorOptions(model=path, labels=labels, score_threshold=0.5, threads=1))
    try:
        found = det.detect(photos["astronaut"]).detections
        assert [d.label for d in found] == ["person"]
        assert found[0].class_id == 0
        x1, y1, x2, y2 = found[0].box
        assert x1 < 20 and y1 < 30 and 355 < x2 < 395 and y2 > 495  # the astronaut's outline
        for image in ("coffee", "grey", "black"):
            assert det.detect(photos[image]).detections == [], f"{model}: a person in the {image} photo"
    finally:
        det.close()


@needs_runtime
def test_zone_is_cropped_before_the_model_and_boxes_come_back_in_frame_pixels(photos):
    """The detections with a zone equal those on the cropped photo, shifted by the zone's corner."""
    path, labels = model_paths(YOLO320)
    frame = cv2.copyMakeBorder(photos["astronaut"], 100, 40, 300, 60, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    zone = (300, 100, 512, 512)
    zoned = create_detector("tflite", DetectorOptions(model=path, labels=labels, zone=zone, score_threshold=0.25, threads=1))
    plain = create_detector("tflite", DetectorOptions(model=path, labels=labels, score_threshold=0.25, threads=1))
    try:
        crop = frame[100:612, 300:812]
        expected = plain.detect(crop).detections
        got = zoned.detect(frame)
        assert (got.frame_width, got.frame_height) == (frame.shape[1], frame.shape[0])
        assert len(got.detections) == len(expected) == 1
        g, e = got.detections[0], expected[0]
        assert g.score == e.score and g.label == e.label == "person"
        assert np.allclose(g.box, (e.x1 + 300, e.y1 + 100, e.x2 + 300, e.y2 + 100), atol=1e-3)
        # The same zone in fractions of the frame.
        w, h = frame.shape[1], frame.shape[0]
        frac = create_detector(
            "tflite", DetectorOptions(model=path, labels=labels, score_threshold=0.25, threads=1, zone=(300 / w, 100 / h, 512 / w, 512 / h))
        )
        try:
            assert frac.detect(frame).detections == got.detections
        finally:
            frac.close()
    finally:
        zoned.close()
        plain.close()


@needs_runtime
def test_a_camera_sized_frame_keeps_the_detection(detectors, photos):
    """A 1920x1080 frame (the photo scaled into a wider canvas) still finds the astronaut where she is."""
    det = get_detector(detectors, YOLO320, "default")
    canvas = np.full((1080, 1920, 3), 90, np.uint8)
    canvas[28:1052, 448:1472] = cv2.resize(photos["astronaut"], (1024, 1024), interpolation=cv2.INTER_LINEAR)
    people = [d for d in det.detect(canvas).detections if d.label == "person"]
    assert len(people) == 1
    x1, y1, x2, y2 = people[0].box
    # The 512-pixel photo's person box (14, 14, 364, 510) doubled and shifted. One output step of this model is
    # 1.34 input pixels, 8 frame pixels here: 30 pixels (3% of her height) is a few steps; a wrong mapping is hundreds.
    expected = (448 + 28, 28 + 28, 448 + 728, 28 + 1020)
    assert max(abs(a - b) for a, b in zip((x1, y1, x2, y2), expected, strict=True)) < 30, people[0].to_dict()


# --- facts ---------------------------------------------------------------------------------------------------


@needs_runtime
def test_describe_reads_the_facts_from_the_model(detectors):
    d640 = get_detector(detectors, YOLO640, "default").describe()
    assert d640["input"] == {"width": 640, "height": 640, "dtype": "int8", "scale": pytest.approx(1 / 255), "zero_point": -128}
    assert d640["layout"] == "yolov8" and d640["classes"] == 80
    assert "[1, 84, 8400] channels first, boxes normalised" in d640["output"]
    assert d640["threads"] == 2 and d640["kernels"] in ("xnnpack", "builtin")
    assert d640["runtime"].split()[0] in ("ai-edge-litert", "tflite-runtime")
    assert "AGPL" in d640["license"]  # the Ultralytics export says so itself
    assert d640["preprocess"] == "letterbox, shift"
    d320 = get_detector(detectors, YOLO320, "builtin").describe()
    assert d320["input"]["width"] == 320 and "[1, 84, 2100]" in d320["output"] and d320["kernels"] == "builtin"
    ssd = get_detector(detectors, SSD, "default")
    dssd = ssd.describe()
    assert dssd["input"] == {"width": 300, "height": 300, "dtype": "uint8", "scale": 0.0078125, "zero_point": 128}
    assert dssd["layout"] == "ssd" and dssd["classes"] == 90 and dssd["preprocess"] == "stretch, copy"
    assert "ssd_mobilenet_v1_coco_quant.tflite" in ssd.summary()


@needs_runtime
def test_result_json_is_compact_and_rounded(detectors, photos):
    import json

    result: DetectResult = get_detector(detectors, YOLO320, "default").detect(photos["astronaut"])
    data = json.loads(json.dumps(result.to_dict()))
    det = data["detections"][0]
    assert det == {
        "label": "person",
        "class_id": 0,
        "score": round(result.detections[0].score, 4),
        "box": [round(v, 1) for v in result.detections[0].box],
    }
    assert data["frame"] == [512, 512]
    assert data["inference_ms"] > 0 and data["pre_ms"] >= 0 and data["post_ms"] >= 0


def test_builtin_model_is_the_documented_file():
    model, labels = builtin_model(), builtin_labels()
    assert hashlib.sha256(model.read_bytes()).hexdigest() == "e4b118e5e4531945de2e659742c7c590f7536f8d0ed26d135abcfe83b4779d13"
    assert hashlib.sha256(labels.read_bytes()).hexdigest() == "c7e79c855f73cbba9f33d649d60e1676eb0a974021a41696d1ac0d4b7f7e0211"
    readme = (model.parent / "README.md").read_text()
    assert "Apache-2.0" in readme and "e4b118e5e4531945de2e659742c7c590f7536f8d0ed26d135abcfe83b4779d13" in readme


def test_importing_the_package_loads_no_runtime_and_no_scikit_learn():
    code = (
        "import sys, daemon.detect, daemon.detect.tflite, daemon.detect.groups, daemon.detect.tracker; "
        "print(sorted(m for m in ('ai_edge_litert', 'tflite_runtime', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


# --- why detection cannot run --------------------------------------------------------------------------------


def reason_of(options: DetectorOptions, backend: str = "tflite") -> str:
    with pytest.raises(DetectorUnavailable) as err:
        create_detector(backend, options)
    reason = err.value.reason
    assert "\n" not in reason and reason == str(err.value)
    return reason


def test_missing_model_file(tmp_path):
    assert reason_of(DetectorOptions(model=tmp_path / "nope.tflite")) == f"model file not found: {tmp_path / 'nope.tflite'}"


@needs_runtime
def test_junk_bytes_are_not_a_model(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    reason = reason_of(DetectorOptions(model=junk))
    assert reason.startswith("not a TFLite model") and "junk.tflite" in reason
    text = tmp_path / "labels.tflite"
    text.write_text("person\nbicycle\n")
    assert reason_of(DetectorOptions(model=text)).startswith("not a TFLite model")


@needs_runtime
def test_a_real_classifier_model_is_not_a_detector(tmp_path):
    """A tiny real TFLite model (input image, output a score per class) built with the runtime's own schema."""
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated", reason="building a model needs LiteRT's schema module")
    flatbuffers = pytest.importorskip("flatbuffers")
    path = tmp_path / "classifier.tflite"
    write_reshape_model(schema, flatbuffers, path, (1, 16, 16, 3), (1, 768))
    reason = reason_of(DetectorOptions(model=path))
    assert reason == "not a detection model: its one output [1, 768] is a score per class (an image classifier)"


def write_reshape_model(s, flatbuffers, path: Path, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
    """One RESHAPE op from a float32 image input to `out_shape`: the smallest model a runtime really loads."""

    def tensor(shape, buf, name, ttype):
        t = s.TensorT()
        t.shape, t.type, t.buffer, t.name = list(shape), ttype, buf, name.encode()
        return t

    shape_buf = s.BufferT()
    shape_buf.data = list(np.asarray(out_shape, np.int32).tobytes())
    sg = s.SubGraphT()
    sg.tensors = [
        tensor(in_shape, 0, "image", s.TensorType.FLOAT32),
        tensor([len(out_shape)], 1, "shape", s.TensorType.INT32),
        tensor(out_shape, 0, "scores", s.TensorType.FLOAT32),
    ]
    sg.inputs, sg.outputs = [0], [2]
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    sg.operators = [op]
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.RESHAPE
    code.version = 1
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [sg], [s.BufferT(), shape_buf]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())


@needs_runtime
def test_unknown_class_and_missing_labels(tmp_path):
    assert reason_of(DetectorOptions(model=builtin_model(), labels=builtin_labels(), classes=("persn",))).startswith(
        "class 'persn' is not among the model's labels"
    )
    missing = tmp_path / "labels.txt"
    assert reason_of(DetectorOptions(model=builtin_model(), labels=missing)) == f"label file not found: {missing}"
    # The SSD names no classes itself: without its label file, a class name cannot be resolved ...
    assert "needs a label file" in reason_of(DetectorOptions(model=builtin_model()))
    # ... but class ids can (and any id goes: the op's outputs do not say how many classes there are).
    det = create_detector("tflite", DetectorOptions(model=builtin_model(), classes=(0, 46), threads=1))
    try:
        assert det.describe()["keep"] == ["class 0", "class 46"] and det.describe()["classes"] is None
    finally:
        det.close()
    with pytest.raises(DetectorUnavailable, match="the detector is closed"):
        det.detect(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(DetectorUnavailable, match=r"class ids \[95\] are outside the model's 90 classes"):
        create_detector("tflite", DetectorOptions(model=builtin_model(), labels=builtin_labels(), classes=(95,)))


def test_no_runtime_says_what_to_install():
    wanted = "tflite-runtime"
    try:
        find_runtime(wanted)
    except DetectorUnavailable as exc:
        assert exc.reason.startswith("no TFLite runtime: tflite-runtime ")
        assert "install ai-edge-litert (64-bit) or tflite-runtime (armv7l)" in exc.reason
    else:
        pytest.skip("tflite-runtime is installed here: its absence cannot be shown")
    assert reason_of(DetectorOptions(model=builtin_model(), runtime="tensorflow")).startswith("unknown TFLite runtime 'tensorflow'")


def test_unknown_backend_and_a_registered_one():
    assert reason_of(DetectorOptions(model=builtin_model()), backend="hailo") == "unknown detector backend 'hailo' (known: tflite)"

    class Fixed(Detector):
        name = "fixed"

        def __init__(self, options: DetectorOptions) -> None:
            self.options = options

        def describe(self) -> dict:
            return {"backend": self.name, "model": str(self.options.model)}

        def detect(self, frame_bgr: np.ndarray) -> DetectResult:
            h, w = frame_bgr.shape[:2]
            return DetectResult([Detection("person", 0, 0.9, 1, 2, 3, 4)], w, h, 1.0, 0.0, 0.0)

    registry = BackendRegistry()
    registry.register_backend("fixed", Fixed)
    det = create_detector("fixed", DetectorOptions(model=Path("x")), registry)
    assert det.detect(np.zeros((4, 6, 3), np.uint8)).to_dict()["detections"][0]["box"] == [1, 2, 3, 4]
    assert det.summary() == "backend fixed, model x"
    with pytest.raises(ValueError, match="already registered"):
        registry.register_backend("fixed", Fixed)


def test_bad_zone_is_refused_when_the_detector_is_made():
    reason = reason_of(DetectorOptions(model=builtin_model(), labels=builtin_labels(), zone=(0, 0, -5, 10)))
    assert reason == "bad zone: zone [0, 0, -5, 10]: x and y must be >= 0 and w, h > 0"


def test_bad_options_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="kernels must be one of default, builtin"):
        DetectorOptions(model=Path("m"), kernels="gpu")
    with pytest.raises(ValueError, match="score_threshold"):
        DetectorOptions(model=Path("m"), score_threshold=0)
    with pytest.raises(ValueError, match="threads"):
        DetectorOptions(model=Path("m"), threads=0)


@needs_runtime
def test_a_frame_that_is_not_bgr_uint8_is_refused(detectors):
    det = get_detector(detectors, SSD, "default")
    with pytest.raises(ValueError, match=r"frame must be a BGR uint8 array of shape \(h, w, 3\), not float32"):
        det.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="not uint8"):
        det.detect(np.zeros((10, 10), np.uint8))
