"""The motion measure: how many pixels of each region changed in a frame, computed in shared passes.

Measure, per frame and region, on the downscaled ring frame (or on the
full-resolution crop when the region is under `SMALL_REGION_PX` ring pixels a
side): grayscale, Gaussian blur (`blur`, an even size taken as the next odd
one), difference against a running background (`cv2.accumulateWeighted`, so
slow light changes fade in) or the previous frame (`method`), threshold at
`pixel_threshold` grey levels, dilate (`dilate` iterations of a 3x3 square),
and count the changed pixels inside the region's mask. With the background
method a part that stops in a new place reads as changed until the background
has absorbed it (about 1/background_alpha frames); the previous-frame method
has no such lag but misses motion too slow to show between two frames.
`RegionMeter` runs this same measure for one region outside the daemon
(tools/calibrate.py), with the same results.

How it is computed, and why (figures from bench/motion.py on a 2-core x86;
a Pi is slower in absolute terms, the proportions hold): each OpenCV call
costs about 1 us however small its image, and per pixel the blur and the
grayscale conversion dominate (about 0.5 and 0.25 ns a pixel, against 0.06 ns
for an absdiff of the BGR crop). So the work is done once per frame for all regions
that can share it, and each region only counts:
- Regions measured on the same frame (ring or full) with the same method,
  blur, threshold and dilation form a group; within a group, regions whose
  boxes lie close together (the union costs less than separate passes, at
  about 10000 pixels' worth of fixed cost per pass) share one *pass*: one
  conversion, blur, difference, background update, threshold and dilation
  over the union of their boxes. Each region then costs one
  `cv2.countNonZero` on its view of the result (two calls for a polygon that
  overlaps another region's box), plus its machine state. Per region and
  frame, against one absdiff of the region's BGR crop: 8 regions on one
  machine (overlapping) 1.6-3.5x, 8 side by side 3.7-5.1x (with a pass per
  region they cost 5.3-9.5x); a region alone still pays a whole pass, 9-14x.
- Each region's box is grown by the blur radius plus the dilation (and
  clipped to the frame), so every pixel a region counts is exactly what a
  pass over the whole frame would give: sharing a pass never changes a
  region's figures, and `RegionMeter` (a pass of its own) equals the daemon.
  One consequence at the edges: motion within `dilate` pixels outside a
  region (inside no mask) spreads into its border by dilation, as it would
  in the whole frame. `motion.masks` are cut from the difference before the
  dilation, so masked motion never spreads into a region, and again from the
  count.
- `dilate` iterations of 3x3 are one dilation with a (2k+1)-square kernel
  (identical for a square kernel); a frame with no changed pixel at all
  (`cv2.hasNonZero`, the common case of a still scene) skips the dilation and
  the counts. The previous-frame method swaps buffers instead of copying.
- Kept on purpose: the Gaussian blur (a box blur would be about 2.5x cheaper
  but changes what `blur` means and how much noise it removes) and the float
  background (a uint8 running average cannot follow slow light changes at
  small background_alpha).
- Buffers are allocated when the regions or settings change, never per frame.
  A settings change that keeps a pass's box, blur and method (a threshold,
  the regions inside it) keeps its background; otherwise the pass starts a
  new background and its regions are not judged for that one frame.

Built off the hot path (on whatever thread changed the config): `Geometry`
(where one region is measured and its mask) and `PassPlan` (which regions
share which box), both immutable. On the capture thread: `Pass` (buffers,
background, the per-frame work).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from daemon.motion.regions import Point, RegionSpec, parse_masks, parse_regions, read_regions

#: cv2.hasNonZero came with OpenCV 4.7; Debian 12 and Raspberry Pi OS bookworm ship 4.6 (python3-opencv).
_CV2_HAS_NONZERO = hasattr(cv2, "hasNonZero")


def _has_nonzero(mask: np.ndarray) -> bool:
    return bool(cv2.hasNonZero(mask)) if _CV2_HAS_NONZERO else cv2.countNonZero(mask) > 0


SMALL_REGION_PX = 24  # below this many ring pixels a side, measure on the full frame when there is one
_SHIFT = 4  # fillPoly fixed-point bits: sub-pixel polygon corners
# A pass of its own costs about as much as this many more pixels in a shared one: about 10 us of calls against
# about 1 ns a pixel (bench/motion.py). Regions closer than that share a pass, farther ones keep their own.
_PASS_OVERHEAD_PX = 10000

Box = tuple[int, int, int, int]  # x0, y0, x1, y1
Size = tuple[int, int]  # w, h


def _fixed_points(points: Iterable[Point], sx: float, sy: float, x0: int, y0: int) -> np.ndarray:
    scale = 1 << _SHIFT
    return np.array([[round((x * sx - x0) * scale), round((y * sy - y0) * scale)] for x, y in points], np.int32)


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, int(v)))


class Geometry:
    """Where and how one region is measured: the source, the crop, the mask."""

    def __init__(self, spec: RegionSpec, masks: list[list[Point]], frame_size: Size, ring_size: Size) -> None:
        self.spec = spec
        fw, fh = frame_size
        rw, rh = ring_size
        sx, sy = rw / fw, rh / fh
        x0f, y0f, x1f, y1f = spec.bbox
        rx0, ry0 = _clamp(round(x0f * sx), 0, rw - 1), _clamp(round(y0f * sy), 0, rh - 1)
        rx1, ry1 = _clamp(max(round(x1f * sx), rx0 + 1), 1, rw), _clamp(max(round(y1f * sy), ry0 + 1), 1, rh)
        self.ring_box = (rx0, ry0, rx1, ry1)
        small = (rx1 - rx0 < SMALL_REGION_PX or ry1 - ry0 < SMALL_REGION_PX) and (sx < 1 or sy < 1)
        if small:
            # Too few ring pixels to see a small part move: measure a crop of the full frame instead.
            self.source = "full"
            x0, y0 = _clamp(math.floor(x0f), 0, fw - 1), _clamp(math.floor(y0f), 0, fh - 1)
            x1, y1 = _clamp(max(math.ceil(x1f), x0 + 1), 1, fw), _clamp(max(math.ceil(y1f), y0 + 1), 1, fh)
            scale_x = scale_y = 1.0
            self.pixel_scale = 1.0
        else:
            self.source = "ring"
            x0, y0, x1, y1 = rx0, ry0, rx1, ry1
            scale_x, scale_y = sx, sy
            self.pixel_scale = (fw / rw) * (fh / rh)  # full-frame pixels per measured pixel
        self.box: Box = (x0, y0, x1, y1)
        self.width, self.height = x1 - x0, y1 - y0
        mask = np.full((self.height, self.width), 255, np.uint8)
        full_box = True
        if not spec.is_rect:
            mask[:] = 0
            cv2.fillPoly(mask, [_fixed_points(spec.points, scale_x, scale_y, x0, y0)], 255, lineType=cv2.LINE_8, shift=_SHIFT)
            full_box = False
        for poly in masks:
            pts = _fixed_points(poly, scale_x, scale_y, x0, y0)
            before = cv2.countNonZero(mask)
            cv2.fillPoly(mask, [pts], 0, lineType=cv2.LINE_8, shift=_SHIFT)
            if cv2.countNonZero(mask) != before:
                full_box = False
        self.area = cv2.countNonZero(mask)
        if self.area == 0:
            raise ValueError(f"region {spec.name!r}: nothing of it is left once the masks are cut out")
        self.mask: np.ndarray | None = None if full_box else mask  # None: every pixel of the crop counts (no masking work per frame)

    def describe(self) -> dict[str, Any]:
        x0, y0, x1, y1 = self.spec.bbox
        return {
            "name": self.spec.name,
            "bbox": [round(x0, 1), round(y0, 1), round(x1 - x0, 1), round(y1 - y0, 1)],
            "points": [[round(x, 1), round(y, 1)] for x, y in self.spec.points],  # the outline in full-frame pixels (the page draws it)
            "area_px": round(self.spec.area_px),
            "measured_on": self.source,
            "measured_size": [self.width, self.height],
            "measured_pixels": self.area,
            "threshold": self.spec.threshold_text(),
        }


@dataclass(frozen=True)
class Compiled:
    """Regions and masks validated against the frame and turned into geometries, with what was refused and why."""

    geometries: tuple[Geometry, ...]
    masks: list[list[Point]]
    mask_error: str | None  # the masks could not be read and are ignored
    refused: tuple[tuple[int, str], ...]  # (index in motion.regions, reason), by index

    def reason(self, index: int) -> str | None:
        return next((why for i, why in self.refused if i == index), None)

    def errors(self) -> tuple[str, ...]:
        """What `regions` and the status report: the masks' problem first, then each refused region's."""
        out = [] if self.mask_error is None else [self.mask_error + " (masks ignored)"]
        return (*out, *(why + " (region skipped)" for _, why in self.refused))


def compile_regions(raw_regions: Any, raw_masks: Any, frame_size: Size, ring_size: Size) -> Compiled:
    """Validate `motion.regions` and `motion.masks` against the frame and build the geometries; a bad region is
    refused with its reason, the others go on (the component's regions and `region add` both come through here)."""
    mask_error = None
    try:
        masks = parse_masks(raw_masks, frame_size)
    except ValueError as exc:
        mask_error, masks = str(exc), []
    try:
        accepted, refused = read_regions(raw_regions, frame_size)
    except ValueError as exc:
        accepted, refused = [], [(0, str(exc))]
    geometries = []
    for i, spec in accepted:
        try:
            geometries.append(Geometry(spec, masks, frame_size, ring_size))
        except ValueError as exc:
            refused.append((i, str(exc)))
    return Compiled(tuple(geometries), masks, mask_error, tuple(sorted(refused, key=lambda r: r[0])))


@dataclass(frozen=True, slots=True)
class PassSettings:
    """How a region is measured; regions with equal settings (and source) can share a pass."""

    source: str  # "ring" or "full"
    blur: int  # 0 (none) or an odd kernel size
    method: str
    threshold: int
    dilate: int

    @classmethod
    def of(cls, geometry: Geometry, method: str, blur: int, threshold: int, dilate: int) -> PassSettings:
        spec = geometry.spec
        b = blur if spec.blur is None else spec.blur
        return cls(
            source=geometry.source,
            blur=0 if b <= 1 else b | 1,  # an even kernel is taken as the next odd one
            method=method,
            threshold=threshold if spec.pixel_threshold is None else spec.pixel_threshold,
            dilate=dilate if spec.dilate is None else spec.dilate,
        )

    @property
    def pad(self) -> int:
        """Margin around a region that its blurred, dilated pixels depend on."""
        return self.blur // 2 + self.dilate


class PassPlan:
    """Where one pass runs (a box of the ring or the full frame), with which settings, and who counts in it.

    Immutable; built on whatever thread changed the config. The box is the union
    of its regions' boxes, each grown by the settings' pad and clipped to the
    frame, so every pixel a region counts is computed exactly as if the whole
    frame were measured: which other regions share the pass changes nothing.
    """

    def __init__(
        self, settings: PassSettings, box: Box, geometries: list[Geometry], masks: list[list[Point]], frame_size: Size, ring_size: Size
    ) -> None:
        self.settings = settings
        self.box = box
        self.geometries = tuple(geometries)
        x0, y0, x1, y1 = box
        self.width, self.height = x1 - x0, y1 - y0
        self.offsets = tuple((g.box[0] - x0, g.box[1] - y0) for g in geometries)
        if settings.source == "full":
            sx = sy = 1.0
        else:
            sx, sy = ring_size[0] / frame_size[0], ring_size[1] / frame_size[1]
        # motion.masks are cut from the difference before dilation, so motion in them cannot spread into a region.
        block = np.full((self.height, self.width), 255, np.uint8)
        for poly in masks:
            cv2.fillPoly(block, [_fixed_points(poly, sx, sy, x0, y0)], 0, lineType=cv2.LINE_8, shift=_SHIFT)
        self.block_mask = None if cv2.countNonZero(block) == block.size else block
        # After dilation one AND with the union of the regions' masks makes most counts a single countNonZero;
        # a region whose box also holds another region's mask pixels needs its own mask as well.
        self.count_mask: np.ndarray | None = None
        self.own_mask: tuple[bool, ...] = (False,) * len(geometries)
        if any(g.mask is not None for g in geometries):
            union = np.zeros((self.height, self.width), np.uint8)
            for g, (ox, oy) in zip(geometries, self.offsets, strict=True):
                part = union[oy : oy + g.height, ox : ox + g.width]
                if g.mask is None:
                    part[:] = 255
                else:
                    cv2.bitwise_or(part, g.mask, dst=part)
            self.count_mask = union
            self.own_mask = tuple(
                g.mask is not None and not np.array_equal(union[oy : oy + g.height, ox : ox + g.width], g.mask)
                for g, (ox, oy) in zip(geometries, self.offsets, strict=True)
            )

    def describe(self) -> dict[str, Any]:
        s = self.settings
        x0, y0, _, _ = self.box
        return {
            "measured_on": s.source,
            "box": [x0, y0, self.width, self.height],  # pixels of the frame measured on, margin included
            "regions": [g.spec.name for g in self.geometries],
            "method": s.method,
            "blur": s.blur,
            "pixel_threshold": s.threshold,
            "dilate": s.dilate,
        }

    @property
    def reuse_key(self) -> tuple[str, int, str, Box]:
        """Passes with equal keys hold the same background: a change of threshold or regions keeps it."""
        s = self.settings
        return (s.source, s.blur, s.method, self.box)


def _padded_box(geometry: Geometry, pad: int, frame_size: Size, ring_size: Size) -> Box:
    w, h = frame_size if geometry.source == "full" else ring_size
    x0, y0, x1, y1 = geometry.box
    return max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)


def _cluster(boxes: list[Box]) -> list[list[int]]:
    """Group boxes into passes: greedily merge the pair that saves the most (union area against separate areas
    plus the fixed cost of a pass), while a merge saves anything. Regions far apart keep their own passes."""
    groups = [[i] for i in range(len(boxes))]
    b = np.array(boxes, np.int64).reshape(-1, 4)
    while len(groups) > 1:
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        ux = np.maximum.outer(b[:, 2], b[:, 2]) - np.minimum.outer(b[:, 0], b[:, 0])
        uy = np.maximum.outer(b[:, 3], b[:, 3]) - np.minimum.outer(b[:, 1], b[:, 1])
        saving = area[:, None] + area[None, :] + _PASS_OVERHEAD_PX - ux * uy
        np.fill_diagonal(saving, -1)
        i, j = (int(v) for v in np.unravel_index(int(np.argmax(saving)), saving.shape))
        if saving[i, j] < 0:
            break
        i, j = min(i, j), max(i, j)
        b[i] = (min(b[i, 0], b[j, 0]), min(b[i, 1], b[j, 1]), max(b[i, 2], b[j, 2]), max(b[i, 3], b[j, 3]))
        groups[i] += groups.pop(j)
        b = np.delete(b, j, axis=0)
    return [sorted(g) for g in groups]


def plan_passes(
    geometries: list[Geometry], settings: list[PassSettings], masks: list[list[Point]], frame_size: Size, ring_size: Size
) -> tuple[list[PassPlan], list[tuple[int, int]]]:
    """The passes for these regions, and for each region (pass index, index within the pass)."""
    by_settings: dict[PassSettings, list[int]] = {}
    for i, s in enumerate(settings):
        by_settings.setdefault(s, []).append(i)
    plans: list[PassPlan] = []
    where: list[tuple[int, int]] = [(0, 0)] * len(geometries)
    for s, members in by_settings.items():
        boxes = [_padded_box(geometries[i], s.pad, frame_size, ring_size) for i in members]
        for group in _cluster(boxes):
            chosen = [members[k] for k in group]
            picked = [boxes[k] for k in group]
            box = (min(p[0] for p in picked), min(p[1] for p in picked), max(p[2] for p in picked), max(p[3] for p in picked))
            for n, i in enumerate(chosen):
                where[i] = (len(plans), n)
            plans.append(PassPlan(s, box, [geometries[i] for i in chosen], masks, frame_size, ring_size))
    return plans, where


class Pass:
    """The buffers and background of one pass, and its work per frame (capture thread only).

    Per frame: grayscale and blur of the box, difference against the
    background (or previous frame), masks cut, threshold, one dilation with a
    (2k+1)-square kernel (what k iterations of 3x3 give); then each region
    only counts the changed pixels in its part of the box.
    """

    def __init__(self, plan: PassPlan, frame_size: Size, ring_size: Size, previous: Pass | None = None) -> None:
        self.plan = plan
        s = plan.settings
        self.box = plan.box
        self.source = s.source
        self.blur = s.blur
        self.background_method = s.method == "background"
        self.threshold = s.threshold
        self.frame_size = frame_size
        self.block_mask = plan.block_mask
        self.count_mask = plan.count_mask
        h, w = plan.height, plan.width
        self.gray: np.ndarray
        self.blurred: np.ndarray
        self.reference: np.ndarray  # background rounded to grey levels, or the previous frame
        self.background: np.ndarray | None
        self.stretched: np.ndarray | None
        self.needs_baseline: bool
        self.path: str | None  # what the background was built from: ring, full or stretched
        if previous is not None and previous.plan.reuse_key == plan.reuse_key:
            # Same pixels, same blur and method: the background carries over, no frame goes unjudged.
            self.gray, self.blurred, self.reference = previous.gray, previous.blurred, previous.reference
            self.background, self.stretched = previous.background, previous.stretched
            self.needs_baseline, self.path = previous.needs_baseline, previous.path
        else:
            self.gray = np.empty((h, w), np.uint8)
            self.blurred = np.empty((h, w), np.uint8)
            self.reference = np.empty((h, w), np.uint8)
            self.background = np.empty((h, w), np.float32) if self.background_method else None
            self.stretched = np.empty((h, w, 3), np.uint8) if s.source == "full" else None
            self.needs_baseline = True
            self.path = None
        self.diff = np.empty((h, w), np.uint8)
        self.changed = np.empty((h, w), np.uint8)
        self.kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * s.dilate + 1,) * 2) if s.dilate > 0 else None
        self.dilated = np.empty((h, w), np.uint8) if self.kernel is not None else self.changed
        x0, y0 = self.box[:2]
        self.views = tuple(
            self.dilated[oy : oy + g.height, ox : ox + g.width] for g, (ox, oy) in zip(plan.geometries, plan.offsets, strict=True)
        )
        # Per region: (its mask, a scratch buffer) when it must be masked on its own, else None.
        self.own: tuple[tuple[np.ndarray, np.ndarray] | None, ...] = tuple(
            (g.mask, np.empty_like(g.mask)) if own and g.mask is not None else None
            for g, own in zip(plan.geometries, plan.own_mask, strict=True)
        )
        if s.source == "full":
            # No full frame this time: sample the ring frame on the full frame's grid, pixel centre to pixel centre,
            # so the background built from full frames stays comparable.
            sx, sy = ring_size[0] / frame_size[0], ring_size[1] / frame_size[1]
            self.stretch = np.array([[sx, 0, sx * (x0 + 0.5) - 0.5], [0, sy, sy * (y0 + 0.5) - 0.5]], np.float64)
        self.measured = False  # this frame was compared (False: the background was (re)built instead)
        self.changes = False  # this frame has changed pixels anywhere in the box

    def run(self, ring_frame: np.ndarray, full_frame: np.ndarray | None, alpha: float) -> bool:
        x0, y0, x1, y1 = self.box
        if self.source == "ring":
            crop, path = ring_frame[y0:y1, x0:x1], "ring"
        elif full_frame is not None and full_frame.shape[1] == self.frame_size[0] and full_frame.shape[0] == self.frame_size[1]:
            crop, path = full_frame[y0:y1, x0:x1], "full"
        else:
            stretched = self.stretched
            assert stretched is not None  # every full-frame pass has one
            cv2.warpAffine(
                ring_frame,
                self.stretch,
                (x1 - x0, y1 - y0),
                dst=stretched,
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
            crop, path = stretched, "stretched"
        current = self.gray
        cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY, dst=current)
        if self.blur:
            cv2.GaussianBlur(current, (self.blur, self.blur), 0, dst=self.blurred)
            current = self.blurred
        if self.needs_baseline or path != self.path:
            if self.background is not None:
                self.background[:] = current
            np.copyto(self.reference, current)
            self.needs_baseline = False
            self.path = path
            self.measured = self.changes = False
            return False
        diff = self.diff
        cv2.absdiff(current, self.reference, dst=diff)
        if self.background is not None:
            cv2.accumulateWeighted(current, self.background, alpha)
            cv2.convertScaleAbs(self.background, dst=self.reference)
        elif self.blur:
            self.blurred, self.reference = self.reference, self.blurred  # this frame is the next one's reference
        else:
            self.gray, self.reference = self.reference, self.gray
        if self.block_mask is not None:
            cv2.bitwise_and(diff, self.block_mask, dst=diff)
        cv2.threshold(diff, self.threshold - 1, 255, cv2.THRESH_BINARY, dst=self.changed)
        self.measured = True
        self.changes = _has_nonzero(self.changed)
        if self.changes:  # a still scene, the common case, needs no dilation and no counting
            if self.kernel is not None:
                cv2.dilate(self.changed, self.kernel, dst=self.dilated)
            if self.count_mask is not None:
                cv2.bitwise_and(self.dilated, self.count_mask, dst=self.dilated)
        return True

    def count(self, index: int) -> int:
        """Changed pixels (after dilation, inside the region's mask) of the region at `index` in this frame."""
        if not self.changes:
            return 0
        own = self.own[index]
        if own is None:
            return cv2.countNonZero(self.views[index])
        mask, scratch = own
        cv2.bitwise_and(self.views[index], mask, dst=scratch)
        return cv2.countNonZero(scratch)

    def rebaseline(self) -> None:
        self.needs_baseline = True


def build_passes(plans: Iterable[PassPlan], old: Iterable[Pass], frame_size: Size, ring_size: Size) -> list[Pass]:
    """Passes for `plans`, each taking over the background of an old pass with the same reuse key."""
    previous = {p.plan.reuse_key: p for p in old}
    return [Pass(plan, frame_size, ring_size, previous.pop(plan.reuse_key, None)) for plan in plans]


class RegionMeter:
    """One region measured frame by frame exactly as `Motion` measures it, for tools outside the daemon.

    The calibration tool runs many of these side by side, one per candidate
    setting. `region` and `masks` are given as in `motion.regions` and
    `motion.masks` and validated the same way (ValueError names the problem);
    `frame_size` is the camera's full frame (w, h) and `ring_size` the ring
    frame's, which decide, as in the daemon, whether the region is measured on
    the ring frame or on a crop of the full frame. The region's own
    pixel_threshold, blur and dilate win over the arguments, as in the daemon.
    The fractions equal the daemon's whatever other regions it watches (a
    region's count does not depend on the pass it shares). There is no machine
    state and no brightness-jump handling here: feed frames in order and read
    the changed fraction.
    """

    def __init__(
        self,
        region: dict[str, Any],
        frame_size: Size,
        ring_size: Size,
        masks: list | None = None,
        *,
        method: str = "background",
        alpha: float = 0.05,
        blur: int = 5,
        pixel_threshold: int = 25,
        dilate: int = 2,
    ) -> None:
        if method not in ("background", "previous"):
            raise ValueError(f"method must be background or previous, not {method!r}")
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.ring_size = (int(ring_size[0]), int(ring_size[1]))
        spec = parse_regions([region], self.frame_size)[0]
        parsed_masks = parse_masks(masks or [], self.frame_size)
        self._geometry = Geometry(spec, parsed_masks, self.frame_size, self.ring_size)
        self.spec = spec
        self.method = method
        self.alpha = float(alpha)
        self.blur = int(blur if spec.blur is None else spec.blur)
        self.pixel_threshold = int(pixel_threshold if spec.pixel_threshold is None else spec.pixel_threshold)
        self.dilate = int(dilate if spec.dilate is None else spec.dilate)
        settings = PassSettings.of(self._geometry, method, self.blur, self.pixel_threshold, self.dilate)
        plans, _ = plan_passes([self._geometry], [settings], parsed_masks, self.frame_size, self.ring_size)
        self._pass = Pass(plans[0], self.frame_size, self.ring_size)
        self._pixels = 0
        self._ring_shape = (self.ring_size[1], self.ring_size[0], 3)

    @property
    def source(self) -> str:
        """'ring' or 'full': which frame the region is measured on."""
        return self._geometry.source

    @property
    def measured_pixels(self) -> int:
        """Pixels of the region in the measured frame: one changed pixel is 1/measured_pixels of the region."""
        return int(self._geometry.area)

    @property
    def pixels(self) -> int:
        """Changed pixels of the last frame, at full-frame scale (what min_pixels is compared with)."""
        return self._pixels

    def describe(self) -> dict[str, Any]:
        return self._geometry.describe()

    def measure(self, ring_frame: np.ndarray, full_frame: np.ndarray | None = None) -> float | None:
        """The changed fraction of the region in this frame, or None when the frame (re)built the background."""
        if ring_frame.shape != self._ring_shape or ring_frame.dtype != np.uint8:
            raise ValueError(f"ring frame is {ring_frame.shape} {ring_frame.dtype}, expected {self._ring_shape} uint8")
        if not self._pass.run(ring_frame, full_frame, self.alpha):
            self._pixels = 0
            return None
        changed = self._pass.count(0)
        self._pixels = round(changed * self._geometry.pixel_scale)
        return changed / self._geometry.area

    def rebaseline(self) -> None:
        """Start the background again from the next frame (after a gap in the frames)."""
        self._pass.rebaseline()
