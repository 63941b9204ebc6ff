"""On-device object detection: a small detector interface with one backend per runtime.

    from daemon.detect import DetectorOptions, builtin_labels, builtin_model, create_detector
    detector = create_detector("tflite", DetectorOptions(model=builtin_model(), labels=builtin_labels()))
    result = detector.detect(frame_bgr)      # DetectResult: detections in frame pixels, timings

Modules, each one thing: `base` (Detection, Detector, DetectorUnavailable,
the backend registry), `runtime` (LiteRT or tflite-runtime, kernel path),
`models` (input and output layout read from the model), `labels`,
`preprocess` (zone, letterbox, quantisation), `decode` (YOLO and SSD
outputs, NMS), `tflite` (the backend), `groups` (DBSCAN over people's foot
points), `tracker` (ids across frames). Importing this package loads neither
a runtime nor scikit-learn: a detector loads its runtime when it is created,
groups load scikit-learn the first time they are computed.

The built-in model (`models/`) is Google's Apache-2.0 SSD MobileNet v1 COCO;
see models/README.md.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    BackendRegistry,
    Detection,
    Detector,
    DetectorOptions,
    DetectorUnavailable,
    DetectResult,
    create_detector,
    default_registry,
)

MODELS_DIR = Path(__file__).resolve().parent / "models"


def builtin_model() -> Path:
    """The model that ships with picamd (SSD MobileNet v1 COCO, uint8, 300x300)."""
    return MODELS_DIR / "ssd_mobilenet_v1_coco_quant.tflite"


def builtin_labels() -> Path:
    """Its 91-line label map (line 0 is background: class c is line c + 1)."""
    return MODELS_DIR / "ssd_coco_labels.txt"


__all__ = [
    "BackendRegistry",
    "Detection",
    "DetectResult",
    "Detector",
    "DetectorOptions",
    "DetectorUnavailable",
    "MODELS_DIR",
    "builtin_labels",
    "builtin_model",
    "create_detector",
    "default_registry",
]
