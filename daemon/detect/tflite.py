"""The TFLite backend: a detection model on LiteRT or tflite-runtime, from frame to `Detection`s.

It composes the pieces: `runtime` loads the interpreter, `models` reads the
model's input and output layout, `labels` names the classes, `preprocess`
fills the input tensor (in place, through the interpreter's own buffer) and
maps boxes back, `decode` turns the outputs into boxes and runs NMS.

One instance is one interpreter, which is not thread-safe: a lock makes a
second caller wait rather than corrupt a run (the daemon's worker is meant
to be the only caller).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .base import Detection, Detector, DetectorOptions, DetectorUnavailable, DetectResult
from .decode import Boxes, YoloDecoder, decode_ssd, nms
from .labels import Labels, embedded_labels, no_labels, read_labels, ultralytics_metadata
from .models import OutputLayout, TensorSpec, classify_outputs, read_input
from .preprocess import Preprocessor, resolve_zone
from .runtime import LoadedInterpreter, load_interpreter


class TFLiteDetector(Detector):
    name = "tflite"

    def __init__(self, options: DetectorOptions) -> None:
        self.options = options
        self.model_path = Path(options.model)
        if options.zone is not None:
            try:  # a malformed zone fails now, not on every frame (whether it fits a frame is known per frame)
                resolve_zone(options.zone, 1_000_000, 1_000_000)
            except ValueError as exc:
                raise DetectorUnavailable(f"bad zone: {exc}") from None
        self.loaded: LoadedInterpreter = load_interpreter(
            self.model_path, threads=options.threads, kernels=options.kernels, runtime=options.runtime
        )
        interp = self.loaded.interpreter
        self.input = read_input(interp.get_input_details())
        outputs = [TensorSpec.from_details(d) for d in interp.get_output_details()]
        meta = ultralytics_metadata(self.model_path)
        self.metadata = meta or {}
        file_labels = read_labels(Path(options.labels)) if options.labels is not None else None
        hint = file_labels.count if file_labels is not None else None
        task = meta.get("task") if meta else None
        self.layout: OutputLayout = classify_outputs(self.input, outputs, label_count=hint, task=task if isinstance(task, str) else None)
        self.labels: Labels = file_labels or embedded_labels(meta) or no_labels(self.layout.classes or 0)
        # A YOLO output says how many classes it has; the SSD op's outputs do not, so its label map tells (if given).
        self.classes: int | None = self.layout.classes
        if self.classes is None and self.labels.source != "none":
            self.classes = self.labels.count
        keep = self.labels.class_ids(options.classes) if options.classes else None
        if keep is not None and self.classes is not None:
            bad = [c for c in keep if not 0 <= c < self.classes]
            if bad:
                raise DetectorUnavailable(f"class ids {bad} are outside the model's {self.classes} classes")
        self.keep = np.asarray(keep, np.int64) if keep is not None else None
        ssd = self.layout.kind == "ssd"
        self.preprocessor = Preprocessor(self.input, mode="stretch" if ssd else "letterbox", normalisation="signed" if ssd else "unit")
        self.decoder = (
            None
            if ssd
            else YoloDecoder(
                self.layout, input_w=self.input.width, input_h=self.input.height, score_threshold=options.score_threshold, keep=self.keep
            )
        )
        self._lock = threading.Lock()

    # --- facts -------------------------------------------------------------------------------------

    @property
    def interpreter(self) -> Any:
        return self.loaded.interpreter

    def describe(self) -> dict[str, Any]:
        keep = None if self.keep is None else [self.labels.name(int(c)) for c in self.keep]
        facts: dict[str, Any] = {
            "backend": self.name,
            "runtime": self.loaded.runtime.label,
            "kernels": self.loaded.kernel_path,
            "threads": self.loaded.threads,
            "model": str(self.model_path),
            "input": self.input.describe(),
            "layout": self.layout.kind,
            "output": self.layout.describe(),
            "classes": self.classes,
            "labels": f"{self.labels.source} ({self.labels.count} names)",
            "keep": keep,
            "score_threshold": self.options.score_threshold,
            "iou_threshold": self.options.iou_threshold,
            "zone": None if self.options.zone is None else list(self.options.zone),
            "preprocess": f"{self.preprocessor.mode}, {self.preprocessor.method}",
        }
        if self.metadata.get("description"):
            meta = self.metadata
            facts["producer"] = f"{meta.get('description')} ({meta.get('author', '?')} {meta.get('version', '')})".strip()
        if self.metadata.get("license"):
            facts["license"] = self.metadata["license"]
        return facts

    def summary(self) -> str:
        i = self.input
        keep = "all classes" if self.keep is None else "keep " + ", ".join(self.labels.name(int(c)) for c in self.keep)
        return (
            f"{self.model_path.name}: {i.width}x{i.height} {i.dtype.name}, {self.layout.describe()}, {self.classes} classes; "
            f"{self.loaded.runtime.label}, {self.loaded.kernel_path} kernels, {self.loaded.threads} threads; {keep}"
        )

    # --- running -----------------------------------------------------------------------------------

    def invoke(self) -> None:
        """The interpreter alone, on whatever the input tensor holds (for benchmarks)."""
        with self._lock:
            if self.loaded.interpreter is None:
                raise DetectorUnavailable("the detector is closed")
            self.loaded.interpreter.invoke()

    def detect(self, frame_bgr: np.ndarray) -> DetectResult:
        with self._lock:
            return self._detect(frame_bgr)

    def _detect(self, frame_bgr: np.ndarray) -> DetectResult:
        interp = self.loaded.interpreter
        if interp is None:
            raise DetectorUnavailable("the detector is closed")
        t0 = time.perf_counter()
        tensor = interp.tensor(self.input.index)()  # the interpreter's own input buffer: no copy
        try:
            geometry = self.preprocessor.run(frame_bgr, tensor, self.options.zone)
        finally:
            del tensor  # invoke() refuses to run while a view of its buffers is alive
        t1 = time.perf_counter()
        interp.invoke()
        t2 = time.perf_counter()
        found = self._decode()
        kept = nms(found, self.options.iou_threshold, self.options.max_detections)
        boxes = geometry.to_frame(found.boxes[kept]) if kept.size else found.boxes[:0]
        scores, classes = found.scores[kept], found.classes[kept]
        detections = [
            Detection(self.labels.name(int(c)), int(c), float(s), float(b[0]), float(b[1]), float(b[2]), float(b[3]))
            for b, s, c in zip(boxes.tolist(), scores.tolist(), classes.tolist(), strict=True)
        ]
        t3 = time.perf_counter()
        h, w = frame_bgr.shape[:2]
        return DetectResult(detections, w, h, (t2 - t1) * 1e3, (t1 - t0) * 1e3, (t3 - t2) * 1e3, candidates=found.size)

    def _decode(self) -> Boxes:
        interp, layout, o = self.loaded.interpreter, self.layout, self.options
        if layout.kind == "ssd":
            b, c, s, n = (interp.get_tensor(t.index) for t in layout.tensors)
            return decode_ssd(
                b, c, s, n, input_w=self.input.width, input_h=self.input.height, score_threshold=o.score_threshold, keep=self.keep
            )
        assert self.decoder is not None
        return self.decoder(interp.get_tensor(layout.tensors[0].index))

    def close(self) -> None:
        with self._lock:
            self.loaded.interpreter = None
