"""From a camera frame to a model's input tensor, and from the model's boxes back to the frame.

- Zone: an optional rectangle of the full frame (x, y, w, h in pixels, or in
  fractions of the frame when every number is <= 1) is cropped first, so a
  small model spends its pixels where people can be. The crop is a view.
- Letterbox (YOLO), the Ultralytics way: r = min(S_h/h, S_w/w), resize to
  (round(w r), round(h r)) with INTER_LINEAR, pad with grey 114, centred with
  the odd pixel of padding at the bottom/right (`round(pad - 0.1)` on the
  top/left, as Ultralytics' LetterBox). `Geometry.to_frame` is its exact inverse
  (subtract the pad, divide by r, clip to the crop, add the zone's offset).
- Stretch (SSD): resize to the input size ignoring the aspect ratio, as the
  TF Object Detection API's SSD configs were trained.
- BGR to RGB, then quantisation with the model's own scale and zero point:
  q = clip(round(real / scale + zero_point)), real = pixel / 255 for YOLO and
  pixel / 127.5 - 1 for SSD, done once per model into a 256-entry table and
  applied with `cv2.LUT`. Where that table is within one level of the raw
  pixels (uint8: q = p) or their int8 shift (q = p - 128), the model was
  quantised for raw pixels and the exact shift is used: the YOLO int8 input
  (1/255, -128) gives q = p - 128 exactly, and the SSD uint8 input (1/128, 128)
  is the TFLite convention of raw pixels that Google's own examples feed.

Buffers are allocated once per frame size; every step writes into them with
OpenCV's `dst=` (ROIs included), so a frame costs no allocation but the
resize of a changed size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from .models import InputSpec

PAD_VALUE = 114
NORMALISATIONS = ("unit", "signed")


@dataclass(frozen=True)
class Zone:
    """A rectangle of the frame in pixels: x0, y0 inclusive, x1, y1 exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.width, self.height]


def resolve_zone(spec: Sequence[float] | None, frame_w: int, frame_h: int) -> Zone | None:
    """The zone `[x, y, w, h]` (pixels, or fractions when every number is <= 1) on a frame; clipped to it.

    None for no zone (or one covering the whole frame); `ValueError` naming the problem otherwise.
    """
    if spec is None:
        return None
    values = list(spec)
    if len(values) != 4:
        raise ValueError(f"zone must be [x, y, w, h], not {values!r}")
    try:
        x, y, w, h = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"zone must be four numbers [x, y, w, h], not {values!r}") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise ValueError(f"zone {values!r}: x and y must be >= 0 and w, h > 0")
    if max(x, y, w, h) <= 1.0:
        x, w = x * frame_w, w * frame_w
        y, h = y * frame_h, h * frame_h
    x0, y0 = int(round(x)), int(round(y))
    x1, y1 = min(frame_w, int(round(x + w))), min(frame_h, int(round(y + h)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"zone {values!r} lies outside the {frame_w}x{frame_h} frame")
    if (x0, y0, x1, y1) == (0, 0, frame_w, frame_h):
        return None
    return Zone(x0, y0, x1, y1)


@dataclass(frozen=True)
class Geometry:
    """How a crop of the frame maps onto the model input, and back.

    A source pixel (u, v) of the crop lands at (u * sx + pad_x, v * sy + pad_y)
    in the input; the crop starts at (off_x, off_y) in the frame.
    """

    src_w: int
    src_h: int
    new_w: int
    new_h: int
    sx: float
    sy: float
    pad_x: int
    pad_y: int
    off_x: int = 0
    off_y: int = 0
    _inverse: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Per-column constants of the inverse, made once (a frame's boxes then cost three numpy calls).
        four = np.empty((4, 4), np.float32)
        four[0] = (self.pad_x, self.pad_y, self.pad_x, self.pad_y)
        four[1] = (self.sx, self.sy, self.sx, self.sy)
        four[2] = (self.src_w, self.src_h, self.src_w, self.src_h)
        four[3] = (self.off_x, self.off_y, self.off_x, self.off_y)
        four.flags.writeable = False
        object.__setattr__(self, "_inverse", four)

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """(K, 4) x1, y1, x2, y2 in input pixels -> frame pixels, clipped to the crop."""
        pad, scale, limit, offset = self._inverse
        out = np.clip((np.asarray(boxes, np.float32) - pad) / scale, 0, limit)
        if self.off_x or self.off_y:
            out += offset
        return out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """(K, 4) frame pixels -> input pixels (the forward map, for checks)."""
        out = np.empty(boxes.shape, np.float32)
        out[:, 0::2] = (boxes[:, 0::2] - self.off_x) * self.sx + self.pad_x
        out[:, 1::2] = (boxes[:, 1::2] - self.off_y) * self.sy + self.pad_y
        return out


def letterbox_geometry(src_w: int, src_h: int, dst_w: int, dst_h: int) -> Geometry:
    """Ultralytics' LetterBox(auto=False, center=True) arithmetic, Python's round() included."""
    r = min(dst_h / src_h, dst_w / src_w)
    new_w, new_h = int(round(src_w * r)), int(round(src_h * r))
    dw, dh = (dst_w - new_w) / 2, (dst_h - new_h) / 2
    return Geometry(src_w, src_h, new_w, new_h, r, r, int(round(dw - 0.1)), int(round(dh - 0.1)))


def stretch_geometry(src_w: int, src_h: int, dst_w: int, dst_h: int) -> Geometry:
    return Geometry(src_w, src_h, dst_w, dst_h, dst_w / src_w, dst_h / src_h, 0, 0)


def quantisation_table(inp: InputSpec, normalisation: str) -> tuple[str, np.ndarray | None]:
    """How to turn RGB uint8 pixels into the input dtype: ("copy" | "shift" | "lut", table or None)."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, not {normalisation!r}")
    pixels = np.arange(256, dtype=np.float64)
    real = pixels / 255.0 if normalisation == "unit" else pixels / 127.5 - 1.0
    if inp.dtype.kind == "f":
        return "lut", real.astype(np.float32)
    info = np.iinfo(inp.dtype)
    scale = inp.scale if inp.scale > 0 else 1.0 / 255.0
    q = np.clip(np.rint(real / scale + inp.zero_point), info.min, info.max)
    raw = pixels if inp.dtype == np.uint8 else pixels - 128
    if np.abs(q - raw).max() <= 1.0:
        return ("copy" if inp.dtype == np.uint8 else "shift"), None
    return "lut", q.astype(inp.dtype)


class Preprocessor:
    """Fills a model's input tensor from a BGR frame; one per model, used by one thread."""

    def __init__(self, inp: InputSpec, *, mode: str = "letterbox", normalisation: str = "unit", pad: int = PAD_VALUE) -> None:
        if mode not in ("letterbox", "stretch"):
            raise ValueError(f"mode must be letterbox or stretch, not {mode!r}")
        self.inp = inp
        self.mode = mode
        self.normalisation = normalisation
        self.pad = pad
        self.method, self._table = quantisation_table(inp, normalisation)
        if self._table is not None and self._table.dtype == np.float16:
            self._table = self._table.astype(np.float32)  # cv2.LUT of older OpenCV has no float16; cast after
        self._canvas = np.full((inp.height, inp.width, 3), pad, np.uint8)  # RGB, letterboxed
        self._float = np.empty((inp.height, inp.width, 3), np.float32) if inp.dtype == np.float16 else None
        self._geometry: Geometry | None = None
        self._resized: np.ndarray | None = None
        self._zone_key: tuple[Sequence[float] | None, int, int] | None = None
        self._zone: Zone | None = None

    def zone_for(self, spec: Sequence[float] | None, frame_w: int, frame_h: int) -> Zone | None:
        key = (tuple(spec) if spec is not None else None, frame_w, frame_h)
        if key != self._zone_key:
            self._zone = resolve_zone(spec, frame_w, frame_h)
            self._zone_key = key
        return self._zone

    def geometry(self, src_w: int, src_h: int, zone: Zone | None) -> Geometry:
        off_x, off_y = (zone.x0, zone.y0) if zone is not None else (0, 0)
        g = self._geometry
        if g is not None and (g.src_w, g.src_h, g.off_x, g.off_y) == (src_w, src_h, off_x, off_y):
            return g
        build = letterbox_geometry if self.mode == "letterbox" else stretch_geometry
        base = build(src_w, src_h, self.inp.width, self.inp.height)
        g = Geometry(base.src_w, base.src_h, base.new_w, base.new_h, base.sx, base.sy, base.pad_x, base.pad_y, off_x, off_y)
        self._canvas.fill(self.pad)  # a new placement: the old image may lie where padding now is
        self._resized = np.empty((g.new_h, g.new_w, 3), np.uint8)
        self._geometry = g
        return g

    def run(self, frame_bgr: np.ndarray, out: np.ndarray, zone_spec: Sequence[float] | None = None) -> Geometry:
        """Letterbox or stretch `frame_bgr` (cropped to the zone) into `out` (the [1, H, W, 3] input tensor)."""
        if not isinstance(frame_bgr, np.ndarray) or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            got = f"{frame_bgr.dtype} {frame_bgr.shape}" if isinstance(frame_bgr, np.ndarray) else type(frame_bgr).__name__
            raise ValueError(f"frame must be a BGR uint8 array of shape (h, w, 3), not {got}")
        frame_h, frame_w = frame_bgr.shape[:2]
        zone = self.zone_for(zone_spec, frame_w, frame_h)
        src = frame_bgr if zone is None else frame_bgr[zone.y0 : zone.y1, zone.x0 : zone.x1]
        g = self.geometry(src.shape[1], src.shape[0], zone)
        assert self._resized is not None
        if (g.new_w, g.new_h) == (g.src_w, g.src_h):
            resized = src  # Ultralytics skips the resize at the input's own size; so do we (it would be a copy)
        else:
            resized = cv2.resize(src, (g.new_w, g.new_h), dst=self._resized, interpolation=cv2.INTER_LINEAR)
        roi = self._canvas[g.pad_y : g.pad_y + g.new_h, g.pad_x : g.pad_x + g.new_w]
        cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=roi)
        self._quantise(out[0])
        return g

    def _quantise(self, dst: np.ndarray) -> None:
        canvas = self._canvas
        if self.method == "copy":
            np.copyto(dst, canvas)
        elif self.method == "shift":
            # p - 128 as int8 is p with its top bit flipped: one pass, no widening.
            np.bitwise_xor(canvas, 0x80, out=dst.view(np.uint8))
        else:
            assert self._table is not None  # "lut" always comes with its table
            if self._float is not None:
                cv2.LUT(canvas, self._table, dst=self._float)
                np.copyto(dst, self._float, casting="same_kind")
            else:
                cv2.LUT(canvas, self._table, dst=dst)
