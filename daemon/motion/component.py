"""Motion checks on regions of interest, and the machine state each region implies.

Regions (`motion.regions`) are named areas of the frame: a machine on a line,
a door, a bird feeder. Each is a rectangle `rect: [x, y, w, h]` or a polygon
`polygon: [[x, y], ...]` in pixels of the full camera frame, or in fractions of
it when every number of the shape is <= 1. A region moves when, in one frame,
at least `min_fraction` of its area changed (default 0.05), or at least
`min_pixels` changed pixels counted at full-frame scale (the seed's
`threshold=300`). Optional per region: `machine_id`, `webhook` (the URL the
notifier uses for this region's events), and overrides of `pixel_threshold`,
`blur`, `dilate` and `running_fraction` (the seed's `failrate`).
`motion.masks` (rects or polygons, same units) are cut out of every region.

Measure, per frame and region, on the downscaled ring frame (or on the
full-resolution crop when the region is under 24 ring pixels a side):
grayscale, Gaussian blur (`blur`, an even size taken as the next odd one),
difference against a running background (`cv2.accumulateWeighted`, so slow
light changes fade in) or the previous frame (`method`), threshold at
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

A global brightness jump (the frame's mean, `meta.dark_score`, moving more
than `brightness_jump` from the previous frame or from its slow average:
lights switched on, an auto-exposure step, lightning), a night-mode switch
(`meta.night` changing, or the bus events `night.enter`/`night.exit`) and a
camera reopen (`camera.recovered`) re-baseline the background and suppress
judgement for `settle_s` seconds. While settling, `meta.extra` carries
`motion_settling: true` and the regions show the state SETTLING in X-Motion.

Machine state, per region: a frame is moving or not; the region is RUNNING
when more than `running_fraction` of the judged frames of the last `window_s`
seconds moved (by frame timestamps, so the frame rate does not matter), else
STOPPED. A region starts UNKNOWN and gets its first state once it has been
judged for a whole window (after a restart nothing is claimed on a few frames);
the same holds after a gap longer than the window (a camera stall). STOPPED
for `deep_sleep_s` becomes DEEP_SLEEP; moving again wakes it (RUNNING). Times
in a state count from when the state was decided.

Events on the bus (all carry region, machine_id, old, new, ts (wall clock of
the frame), frame_id, duration_s (how long the ended state lasted), idle_s,
window_moving (the moving fraction of the window), and webhook when the
region has one):
- `motion.state`: UNKNOWN -> RUNNING/STOPPED, RUNNING -> STOPPED,
  STOPPED -> RUNNING and DEEP_SLEEP -> RUNNING. idle_s is the whole time since
  the region stopped on a resume (including deep sleep), else null.
- `motion.deep_sleep`: STOPPED -> DEEP_SLEEP; idle_s is the time stopped.
- `motion.wake`: DEEP_SLEEP -> RUNNING, published next to its `motion.state`
  (subscribe to one of them for notifications, or you hear of it twice);
  duration_s is the deep sleep alone, idle_s the whole idle time.

The X-Motion header (`meta.extra["motion"]`): `name=FRACTION:STATE;...` with
the changed fraction of the last frame to 4 decimals and the state UNKNOWN,
RUNNING, STOPPED, DEEP_SLEEP, or SETTLING while judgement is suppressed,
e.g. `press1=0.1234:RUNNING;door=0.0000:STOPPED`.

Logs, JSON lines under `motion.log_dir` (written by the thread
`picamd-motionlog`, see `motionlog.py`; each file rotates at `log_max_mb` to
`.1`, `.2`, ... keeping `log_keep`):
- `motion_<region>.jsonl`, one line per frame (the region name with anything
  but letters, digits, `_`, `.` and `-` replaced by `_`):
  `{"ts": 1716200000.123, "frame_id": 4711, "region": "press1", "fraction": 0.0123,
  "pixels": 812, "moving": true, "state": "RUNNING"}`; ts in seconds since
  the epoch, fraction of the region changed, pixels changed at full-frame
  scale, state after this frame. Frames not judged (settling, a fresh
  baseline) have `"moving": null`, and `"settling": true` while settling.
- `state_changes.jsonl`: every `motion.state` event, as
  `{"event": "motion.state", "ts": ..., "region": ..., "machine_id": ..., "old": ...,
  "new": ..., "frame_id": ..., "duration_s": ..., "idle_s": ..., "window_moving": ...}`.
- `deep_sleep.jsonl`: every `motion.deep_sleep` and `motion.wake` event, same fields.
"""
from __future__ import annotations

import collections
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import cv2
import numpy as np

from daemon.core.bus import Event, EventBus
from daemon.commands import Command, Registry, Reply, Session
from daemon.motion.log import DEEP_SLEEP_LOG, STATE_LOG, MotionLog, motion_log_name
from daemon.capture.ring import FrameMeta
from daemon.core.status import ComponentStatus
from daemon.core.timefmt import format_duration

if TYPE_CHECKING:
    from daemon.config import Section

log = logging.getLogger("picamd.motion")

UNKNOWN, RUNNING, STOPPED, DEEP_SLEEP, SETTLING = "UNKNOWN", "RUNNING", "STOPPED", "DEEP_SLEEP", "SETTLING"
DEFAULT_MIN_FRACTION = 0.05
SMALL_REGION_PX = 24  # below this many ring pixels a side, measure on the full frame when there is one
MIN_REGION_PX = 2  # smallest region side, in full-frame pixels
_WINDOW_BUCKETS = 64  # the sliding window keeps at most this many time buckets, whatever the frame rate
_MAX_NAME = 64
_NAME_FORBIDDEN = frozenset('=;:,"\\')  # would break the X-Motion header or the command line
_REGION_KEYS = (
    "name", "rect", "polygon", "min_fraction", "min_pixels", "machine_id", "webhook",
    "pixel_threshold", "blur", "dilate", "running_fraction",
)
_SEED_HINTS = {
    "threshold": "use min_pixels (changed pixels at full-frame scale) or min_fraction",
    "failrate": "use running_fraction (share of moving frames in the window that means RUNNING)",
    "machineid": "use machine_id",
    "ix": "use rect: [x, y, w, h]",
}
_EPS = 1e-9
_PLAN_KEYS = ("motion.method", "motion.blur", "motion.pixel_threshold", "motion.dilate")  # settings that shape the passes


# --- regions: parsing and validation ----------------------------------------------------------


@dataclass(frozen=True)
class RegionSpec:
    """One validated region, its shape in full-frame pixels."""

    name: str
    points: tuple[tuple[float, float], ...]  # polygon corners (a rect's four corners), full-frame pixels
    is_rect: bool
    area_px: float  # full-frame pixels
    min_fraction: float | None
    min_pixels: int | None
    machine_id: str | int | None
    webhook: str | None
    pixel_threshold: int | None
    blur: int | None
    dilate: int | None
    running_fraction: float | None
    file_stem: str

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        return min(xs), min(ys), max(xs), max(ys)

    def threshold_text(self) -> str:
        if self.min_pixels is not None:
            return f"{self.min_pixels} px"
        return f"{self.min_fraction:g} of the area"


def file_stem(name: str) -> str:
    """A region name as it appears in file names: letters, digits, `_`, `.` and `-` only."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return stem or "region"


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, not {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number")
    return v


def _whole(value: Any, what: str, lo: int, hi: int) -> int:
    v = _number(value, what)
    if not v.is_integer():
        raise ValueError(f"{what} must be a whole number, not {value!r}")
    if not lo <= v <= hi:
        raise ValueError(f"{what} must be {lo}..{hi}, not {int(v)}")
    return int(v)


def _shape(item: dict[str, Any] | list, where: str) -> tuple[bool, list[tuple[float, float]], bool]:
    """(is_rect, points in the given units, fractional) of a rect or polygon; raises ValueError."""
    if isinstance(item, dict):
        rect, poly = item.get("rect"), item.get("polygon")
        if rect is not None and poly is not None:
            raise ValueError(f"{where}: give rect or polygon, not both")
        if rect is None and poly is None:
            raise ValueError(f"{where}: needs rect: [x, y, w, h] or polygon: [[x, y], ...]")
    elif isinstance(item, list) and len(item) == 4 and all(not isinstance(v, (list, tuple)) for v in item):
        rect, poly = item, None
    elif isinstance(item, list):
        rect, poly = None, item
    else:
        raise ValueError(f"{where}: must be a mapping with rect or polygon, or a list")
    if rect is not None:
        if not isinstance(rect, (list, tuple)) or len(rect) != 4:
            raise ValueError(f"{where}: rect must be [x, y, w, h]")
        x, y, w, h = (_number(v, f"{where}: rect {k}") for v, k in zip(rect, "xywh"))
        if w <= 0 or h <= 0:
            raise ValueError(f"{where}: rect has zero size (w={w:g}, h={h:g})")
        if x < 0 or y < 0:
            raise ValueError(f"{where}: rect starts outside the frame (x={x:g}, y={y:g})")
        fractional = max(x, y, w, h) <= 1.0
        if fractional and (x + w > 1 + _EPS or y + h > 1 + _EPS):
            raise ValueError(f"{where}: rect {list(rect)} reaches outside the frame (x+w and y+h must be <= 1 as fractions)")
        return True, [(x, y), (x + w, y), (x + w, y + h), (x, y + h)], fractional
    if not isinstance(poly, (list, tuple)) or len(poly) < 3:
        raise ValueError(f"{where}: polygon needs at least 3 points [[x, y], ...]")
    points = []
    for i, p in enumerate(poly):
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise ValueError(f"{where}: polygon point {i + 1} must be [x, y], not {p!r}")
        px, py = _number(p[0], f"{where}: polygon point {i + 1} x"), _number(p[1], f"{where}: polygon point {i + 1} y")
        if px < 0 or py < 0:
            raise ValueError(f"{where}: polygon point {i + 1} [{px:g}, {py:g}] is outside the frame")
        points.append((px, py))
    if _area(points) <= 0:
        raise ValueError(f"{where}: polygon has no area (its points lie on a line)")
    fractional = max(max(p) for p in points) <= 1.0
    return False, points, fractional


def _area(points: list[tuple[float, float]] | tuple[tuple[float, float], ...]) -> float:
    s = 0.0
    for (x0, y0), (x1, y1) in zip(points, list(points[1:]) + [points[0]]):
        s += x0 * y1 - x1 * y0
    return abs(s) / 2


def _to_pixels(points: list[tuple[float, float]], fractional: bool, frame_size: tuple[int, int]) -> list[tuple[float, float]]:
    if not fractional:
        return points
    fw, fh = frame_size
    return [(x * fw, y * fh) for x, y in points]


def _check_inside(points: list[tuple[float, float]], frame_size: tuple[int, int], where: str) -> None:
    fw, fh = frame_size
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if max(xs) > fw + _EPS or max(ys) > fh + _EPS:
        raise ValueError(
            f"{where}: reaches outside the {fw}x{fh} frame (to x={max(xs):g}, y={max(ys):g})"
        )


def _parse_region(item: Any, frame_size: tuple[int, int] | None, index: int) -> RegionSpec:
    """Validate one region. Without frame_size the checks that need the frame's size are left out."""
    if not isinstance(item, dict):
        raise ValueError(f"region #{index + 1}: must be a mapping like {{name: press1, rect: [x, y, w, h]}}")
    name = item.get("name")
    if name is None or name == "":
        raise ValueError(f"region #{index + 1}: needs a name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"region #{index + 1}: the name must be text (quote it in YAML), not {name!r}")
    where = f"region {name!r}"
    if name != name.strip() or len(name) > _MAX_NAME or not name.isprintable() or _NAME_FORBIDDEN & set(name):
        raise ValueError(f"{where}: names are 1..{_MAX_NAME} printable characters without = ; : , \" \\ or surrounding spaces")
    for key in item:
        if key not in _REGION_KEYS:
            hint = _SEED_HINTS.get(str(key).lower())
            raise ValueError(f"{where}: unknown key {key!r}" + (f" ({hint})" if hint else f"; known keys: {', '.join(_REGION_KEYS)}"))
    is_rect, points, fractional = _shape(item, where)
    min_fraction = item.get("min_fraction")
    min_pixels = item.get("min_pixels")
    if min_fraction is not None and min_pixels is not None:
        raise ValueError(f"{where}: give min_fraction or min_pixels, not both")
    if min_fraction is not None:
        min_fraction = _number(min_fraction, f"{where}: min_fraction")
        if not 0 < min_fraction <= 1:
            raise ValueError(f"{where}: min_fraction must be above 0 and at most 1, not {min_fraction:g}")
    elif min_pixels is not None:
        min_pixels = _whole(min_pixels, f"{where}: min_pixels", 1, 10**9)
    else:
        min_fraction = DEFAULT_MIN_FRACTION
    machine_id = item.get("machine_id")
    if machine_id is not None and (isinstance(machine_id, bool) or not isinstance(machine_id, (str, int))):
        raise ValueError(f"{where}: machine_id must be text or a number")
    webhook = item.get("webhook")
    if webhook is not None:
        if not isinstance(webhook, str) or not re.match(r"^https?://\S+$", webhook):
            raise ValueError(f"{where}: webhook must be an http:// or https:// URL without spaces")
    pixel_threshold = None if item.get("pixel_threshold") is None else _whole(item["pixel_threshold"], f"{where}: pixel_threshold", 1, 255)
    blur = None if item.get("blur") is None else _whole(item["blur"], f"{where}: blur", 0, 51)
    dilate = None if item.get("dilate") is None else _whole(item["dilate"], f"{where}: dilate", 0, 20)
    running_fraction = None
    if item.get("running_fraction") is not None:
        running_fraction = _number(item["running_fraction"], f"{where}: running_fraction")
        if not 0.01 <= running_fraction <= 0.99:
            raise ValueError(f"{where}: running_fraction must be 0.01..0.99, not {running_fraction:g}")
    area_px = 0.0
    if frame_size is not None:
        points = _to_pixels(points, fractional, frame_size)
        _check_inside(points, frame_size, where)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if max(xs) - min(xs) < MIN_REGION_PX or max(ys) - min(ys) < MIN_REGION_PX:
            raise ValueError(f"{where}: too small (at least {MIN_REGION_PX}x{MIN_REGION_PX} pixels of the full frame)")
        area_px = _area(points)
        if min_pixels is not None and min_pixels > area_px:
            raise ValueError(f"{where}: min_pixels {min_pixels} is more than the region's {area_px:.0f} pixels, so it could never move")
    return RegionSpec(
        name=name, points=tuple(points), is_rect=is_rect, area_px=area_px,
        min_fraction=min_fraction, min_pixels=min_pixels, machine_id=machine_id, webhook=webhook,
        pixel_threshold=pixel_threshold, blur=blur, dilate=dilate, running_fraction=running_fraction,
        file_stem=file_stem(name),
    )


def _check_unique(specs: Iterable[RegionSpec]) -> None:
    names: set[str] = set()
    stems: dict[str, str] = {}
    for spec in specs:
        if spec.name in names:
            raise ValueError(f"region {spec.name!r}: the name is used twice")
        names.add(spec.name)
        other = stems.get(spec.file_stem.lower())
        if other is not None:
            raise ValueError(f"region {spec.name!r}: its log file name would clash with region {other!r}; rename one")
        stems[spec.file_stem.lower()] = spec.name


def parse_regions(raw: Any, frame_size: tuple[int, int]) -> list[RegionSpec]:
    """Validate `motion.regions` against a frame of `frame_size` (w, h); ValueError names the region and the problem."""
    if not isinstance(raw, list):
        raise ValueError("motion.regions must be a list of regions")
    specs = [_parse_region(item, frame_size, i) for i, item in enumerate(raw)]
    _check_unique(specs)
    return specs


def check_regions(raw: list) -> list:
    """The frame-size-independent checks of `motion.regions`, for the config schema; returns the list unchanged."""
    specs = [_parse_region(item, None, i) for i, item in enumerate(raw)]
    _check_unique(specs)
    return raw


def parse_masks(raw: Any, frame_size: tuple[int, int] | None) -> list[list[tuple[float, float]]]:
    """`motion.masks` as polygons in full-frame pixels (or just checked, without frame_size).

    Each mask is a mapping with rect or polygon (and an optional name), or a bare
    list: four numbers are a rect, a list of [x, y] points a polygon. Masks may
    reach past the frame's edges; what lies outside is ignored.
    """
    if not isinstance(raw, list):
        raise ValueError("motion.masks must be a list of rects or polygons")
    out = []
    for i, item in enumerate(raw):
        where = f"mask #{i + 1}"
        if isinstance(item, dict):
            extra = set(item) - {"name", "rect", "polygon"}
            if extra:
                raise ValueError(f"{where}: unknown key {sorted(extra)[0]!r} (masks have rect or polygon, and a name)")
            if item.get("name") is not None:
                where = f"mask {item['name']!r}"
        _, points, fractional = _shape(item, where)
        out.append(_to_pixels(points, fractional, frame_size) if frame_size is not None else points)
    return out


def check_masks(raw: list) -> list:
    """The frame-size-independent checks of `motion.masks`, for the config schema."""
    parse_masks(raw, None)
    return raw


# --- compiled geometry (built off the hot path, immutable) ------------------------------------


class _Geometry:
    """Where and how one region is measured: the source, the crop, the mask."""

    def __init__(self, spec: RegionSpec, masks: list[list[tuple[float, float]]],
                 frame_size: tuple[int, int], ring_size: tuple[int, int]) -> None:
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
        self.box = (x0, y0, x1, y1)
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
        self.mask = None if full_box else mask  # None: every pixel of the crop counts (no masking work per frame)

    def describe(self) -> dict[str, Any]:
        x0, y0, x1, y1 = self.spec.bbox
        return {
            "name": self.spec.name,
            "bbox": [round(x0, 1), round(y0, 1), round(x1 - x0, 1), round(y1 - y0, 1)],
            "area_px": round(self.spec.area_px),
            "measured_on": self.source,
            "measured_size": [self.width, self.height],
            "measured_pixels": self.area,
            "threshold": self.spec.threshold_text(),
        }


_SHIFT = 4  # fillPoly fixed-point bits: sub-pixel polygon corners


def _fixed_points(points: Iterable[tuple[float, float]], sx: float, sy: float, x0: int, y0: int) -> np.ndarray:
    scale = 1 << _SHIFT
    return np.array([[round((x * sx - x0) * scale), round((y * sy - y0) * scale)] for x, y in points], np.int32)


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, int(v)))


# --- per-region state on the capture thread ---------------------------------------------------


class _Window:
    """Moving/judged frame counts over the last window_s seconds, in at most ~64 time buckets."""

    __slots__ = ("buckets", "frames", "moving", "fill_start")

    def __init__(self) -> None:
        self.buckets: collections.deque[list[float]] = collections.deque()  # [start_mono, frames, moving]
        self.frames = 0
        self.moving = 0
        self.fill_start: float | None = None  # first judged frame since the window was last empty

    def expire(self, mono: float, window_s: float) -> None:
        cutoff = mono - window_s
        buckets = self.buckets
        while buckets and buckets[0][0] < cutoff:
            _, n, m = buckets.popleft()
            self.frames -= int(n)
            self.moving -= int(m)
        if not buckets:
            self.frames = self.moving = 0
            self.fill_start = None

    def step(self, mono: float, moving: bool | None, window_s: float, running_fraction: float) -> bool | None:
        """Take in one frame (moving None: not judged) and give the verdict: True RUNNING, False STOPPED,
        None while the window has not been judged for a whole window_s."""
        buckets = self.buckets
        if buckets and buckets[0][0] < mono - window_s:
            self.expire(mono, window_s)
        if moving is not None:
            if buckets and 0 <= mono - buckets[-1][0] < window_s / _WINDOW_BUCKETS:
                last = buckets[-1]
                last[1] += 1
                last[2] += moving
            else:
                buckets.append([mono, 1, int(moving)])
            self.frames += 1
            self.moving += int(moving)
            if self.fill_start is None:
                self.fill_start = mono
        fill_start = self.fill_start  # None exactly when the window holds no frame
        if fill_start is None or mono - fill_start < window_s - _EPS:
            return None
        return self.moving / self.frames > running_fraction

    @property
    def moving_share(self) -> float | None:
        return None if self.frames == 0 else self.moving / self.frames


class _Machine:
    """The machine state of one region; kept across geometry changes of the region."""

    __slots__ = ("state", "since", "stopped_since", "window")

    def __init__(self) -> None:
        self.state = UNKNOWN
        self.since: float | None = None  # mono when the state began (first frame for UNKNOWN)
        self.stopped_since: float | None = None  # mono when the region last stopped (kept through DEEP_SLEEP)
        self.window = _Window()


# --- the measure: one pass per frame over a box that regions with the same settings share -------


# A pass of its own costs about as much as this many more pixels in a shared one: about 10 us of calls against
# about 1 ns a pixel (bench/motion.py). Regions closer than that share a pass, farther ones keep their own.
_PASS_OVERHEAD_PX = 10000


@dataclass(frozen=True, slots=True)
class _Settings:
    """How a region is measured; regions with equal settings (and source) can share a pass."""

    source: str  # "ring" or "full"
    blur: int  # 0 (none) or an odd kernel size
    method: str
    threshold: int
    dilate: int

    @classmethod
    def of(cls, geometry: _Geometry, method: str, blur: int, threshold: int, dilate: int) -> "_Settings":
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


class _PassPlan:
    """Where one pass runs (a box of the ring or the full frame), with which settings, and who counts in it.

    Immutable; built on whatever thread changed the config. The box is the union
    of its regions' boxes, each grown by the settings' pad and clipped to the
    frame, so every pixel a region counts is computed exactly as if the whole
    frame were measured: which other regions share the pass changes nothing.
    """

    def __init__(self, settings: _Settings, box: tuple[int, int, int, int], geometries: list[_Geometry],
                 masks: list[list[tuple[float, float]]], frame_size: tuple[int, int], ring_size: tuple[int, int]) -> None:
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
            for g, (ox, oy) in zip(geometries, self.offsets):
                part = union[oy:oy + g.height, ox:ox + g.width]
                if g.mask is None:
                    part[:] = 255
                else:
                    cv2.bitwise_or(part, g.mask, dst=part)
            self.count_mask = union
            self.own_mask = tuple(
                g.mask is not None and not np.array_equal(union[oy:oy + g.height, ox:ox + g.width], g.mask)
                for g, (ox, oy) in zip(geometries, self.offsets)
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
    def reuse_key(self) -> tuple:
        """Passes with equal keys hold the same background: a change of threshold or regions keeps it."""
        s = self.settings
        return (s.source, s.blur, s.method, self.box)


def _padded_box(geometry: _Geometry, pad: int, frame_size: tuple[int, int], ring_size: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = frame_size if geometry.source == "full" else ring_size
    x0, y0, x1, y1 = geometry.box
    return max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)


def _cluster(boxes: list[tuple[int, int, int, int]]) -> list[list[int]]:
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
        i, j = np.unravel_index(int(np.argmax(saving)), saving.shape)
        if saving[i, j] < 0:
            break
        i, j = min(i, j), max(i, j)
        b[i] = (min(b[i, 0], b[j, 0]), min(b[i, 1], b[j, 1]), max(b[i, 2], b[j, 2]), max(b[i, 3], b[j, 3]))
        groups[i] += groups.pop(j)
        b = np.delete(b, j, axis=0)
    return [sorted(g) for g in groups]


def _plan_passes(geometries: list[_Geometry], settings: list[_Settings], masks: list[list[tuple[float, float]]],
                 frame_size: tuple[int, int], ring_size: tuple[int, int]) -> tuple[list[_PassPlan], list[tuple[int, int]]]:
    """The passes for these regions, and for each region (pass index, index within the pass)."""
    by_settings: dict[_Settings, list[int]] = {}
    for i, s in enumerate(settings):
        by_settings.setdefault(s, []).append(i)
    plans: list[_PassPlan] = []
    where: list[tuple[int, int]] = [(0, 0)] * len(geometries)
    for s, members in by_settings.items():
        boxes = [_padded_box(geometries[i], s.pad, frame_size, ring_size) for i in members]
        for group in _cluster(boxes):
            chosen = [members[k] for k in group]
            picked = [boxes[k] for k in group]
            box = (min(p[0] for p in picked), min(p[1] for p in picked), max(p[2] for p in picked), max(p[3] for p in picked))
            for n, i in enumerate(chosen):
                where[i] = (len(plans), n)
            plans.append(_PassPlan(s, box, [geometries[i] for i in chosen], masks, frame_size, ring_size))
    return plans, where


class _Pass:
    """The buffers and background of one pass, and its work per frame (capture thread only).

    Per frame: grayscale and blur of the box, difference against the
    background (or previous frame), masks cut, threshold, one dilation with a
    (2k+1)-square kernel (what k iterations of 3x3 give); then each region
    only counts the changed pixels in its part of the box.
    """

    def __init__(self, plan: _PassPlan, frame_size: tuple[int, int], ring_size: tuple[int, int],
                 previous: "_Pass | None" = None) -> None:
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
        if previous is not None and previous.plan.reuse_key == plan.reuse_key:
            # Same pixels, same blur and method: the background carries over, no frame goes unjudged.
            self.gray, self.blurred, self.reference = previous.gray, previous.blurred, previous.reference
            self.background, self.stretched = previous.background, previous.stretched
            self.needs_baseline, self.path = previous.needs_baseline, previous.path
        else:
            self.gray = np.empty((h, w), np.uint8)
            self.blurred = np.empty((h, w), np.uint8)
            self.reference = np.empty((h, w), np.uint8)  # background rounded to grey levels, or the previous frame
            self.background = np.empty((h, w), np.float32) if self.background_method else None
            self.stretched = np.empty((h, w, 3), np.uint8) if s.source == "full" else None
            self.needs_baseline = True
            self.path: str | None = None  # what the background was built from: ring, full or stretched
        self.diff = np.empty((h, w), np.uint8)
        self.changed = np.empty((h, w), np.uint8)
        self.kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * s.dilate + 1,) * 2) if s.dilate > 0 else None
        self.dilated = np.empty((h, w), np.uint8) if self.kernel is not None else self.changed
        x0, y0 = self.box[:2]
        self.views = tuple(self.dilated[oy:oy + g.height, ox:ox + g.width] for g, (ox, oy) in zip(plan.geometries, plan.offsets))
        self.own = tuple(
            (g.mask, np.empty_like(g.mask)) if own else None for g, own in zip(plan.geometries, plan.own_mask)
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
            cv2.warpAffine(ring_frame, self.stretch, (x1 - x0, y1 - y0), dst=self.stretched,
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
            crop, path = self.stretched, "stretched"
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
        self.changes = cv2.hasNonZero(self.changed)
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


class _Region:
    """One region on the capture thread: its geometry, its pass, its machine state and last measure."""

    __slots__ = ("geometry", "spec", "machine", "window", "pas", "index", "view", "own_mask", "area", "pixel_scale",
                 "running_fraction", "label", "log_name", "fraction", "pixels", "moving", "settling")

    def __init__(self, geometry: _Geometry, machine: _Machine) -> None:
        self.machine = machine
        self.window = machine.window
        self.pas: _Pass | None = None
        self.index = 0
        self.view: np.ndarray | None = None
        self.own_mask: tuple[np.ndarray, np.ndarray] | None = None
        self.fraction = 0.0
        self.pixels = 0
        self.moving: bool | None = None
        self.settling = False
        self.bind(geometry)

    def use(self, pas: _Pass, index: int) -> None:
        """Count in `pas` as its region number `index` (the view and mask are looked up once, not per frame)."""
        self.pas, self.index = pas, index
        self.view, self.own_mask = pas.views[index], pas.own[index]

    def bind(self, geometry: _Geometry) -> None:
        self.geometry = geometry
        self.spec = geometry.spec
        self.area = geometry.area
        self.pixel_scale = geometry.pixel_scale
        self.running_fraction = geometry.spec.running_fraction  # None: the global one
        self.label = geometry.spec.name + "="  # X-Motion: name=FRACTION:STATE
        self.log_name = motion_log_name(geometry.spec.file_stem)


def _build_passes(plans: list[_PassPlan], old: Iterable[_Pass], frame_size: tuple[int, int],
                  ring_size: tuple[int, int]) -> list[_Pass]:
    previous = {p.plan.reuse_key: p for p in old}
    return [_Pass(plan, frame_size, ring_size, previous.pop(plan.reuse_key, None)) for plan in plans]


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

    def __init__(self, region: dict[str, Any], frame_size: tuple[int, int], ring_size: tuple[int, int],
                 masks: list | None = None, *, method: str = "background", alpha: float = 0.05,
                 blur: int = 5, pixel_threshold: int = 25, dilate: int = 2) -> None:
        if method not in ("background", "previous"):
            raise ValueError(f"method must be background or previous, not {method!r}")
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.ring_size = (int(ring_size[0]), int(ring_size[1]))
        spec = parse_regions([region], self.frame_size)[0]
        parsed_masks = parse_masks(masks or [], self.frame_size)
        self._geometry = _Geometry(spec, parsed_masks, self.frame_size, self.ring_size)
        self.spec = spec
        self.method = method
        self.alpha = float(alpha)
        self.blur = int(blur if spec.blur is None else spec.blur)
        self.pixel_threshold = int(pixel_threshold if spec.pixel_threshold is None else spec.pixel_threshold)
        self.dilate = int(dilate if spec.dilate is None else spec.dilate)
        settings = _Settings.of(self._geometry, method, self.blur, self.pixel_threshold, self.dilate)
        plans, _ = _plan_passes([self._geometry], [settings], parsed_masks, self.frame_size, self.ring_size)
        self._pass = _Pass(plans[0], self.frame_size, self.ring_size)
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



# --- the component ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Params:
    """The motion settings as one value, refreshed on every `set motion.*` (so the hot path reads one attribute)."""

    enabled: bool
    method: str
    alpha: float
    blur: int
    threshold: int
    dilate: int
    window_s: float
    running_fraction: float
    deep_sleep_s: float
    brightness_jump: float
    settle_s: float

    @classmethod
    def read(cls, cfg: "Section") -> "_Params":
        return cls(
            enabled=bool(cfg.enabled), method=str(cfg.method), alpha=float(cfg.background_alpha),
            blur=int(cfg.blur), threshold=int(cfg.pixel_threshold), dilate=int(cfg.dilate),
            window_s=float(cfg.window_s), running_fraction=float(cfg.running_fraction),
            deep_sleep_s=float(cfg.deep_sleep_s), brightness_jump=float(cfg.brightness_jump), settle_s=float(cfg.settle_s),
        )


class Motion:
    """Per-frame motion measure in the regions, machine states, events, logs and commands."""

    def __init__(self, cfg: "Section", bus: EventBus, status: ComponentStatus,
                 frame_size: tuple[int, int], ring_size: tuple[int, int], *,
                 log_queue_size: int = 20000, log_retry_s: float = 5.0) -> None:
        self._cfg = cfg
        self._params = _Params.read(cfg)
        self._bus = bus
        self.status = status
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.ring_size = (int(ring_size[0]), int(ring_size[1]))
        self._ring_shape = (self.ring_size[1], self.ring_size[0], 3)
        self._problem_lock = threading.Lock()
        self._problems: dict[str, str] = {}
        self._edit_lock = threading.Lock()  # region add/del: read-modify-write of motion.regions
        self._compile_lock = threading.Lock()
        # Geometry handover: (version, geometries, errors, pass plans, each region's place in them) built on
        # whatever thread changed the config, installed by the capture thread on its next frame (which allocates
        # the passes' buffers). One attribute swap, no lock on the hot path.
        self._incoming: tuple[int, tuple[_Geometry, ...], tuple[str, ...], tuple[_PassPlan, ...], tuple[tuple[int, int], ...]] = (
            0, (), (), (), ())
        self._installed_version = -1
        self._regions: tuple[_Region, ...] = ()
        self._passes: tuple[_Pass, ...] = ()
        self._compiled: tuple[tuple[_Geometry, ...], list, tuple[str, ...]] = ((), [], ())
        self._region_errors: tuple[str, ...] = ()
        self._reset_requests: collections.deque[str] = collections.deque(maxlen=16)  # bounded while disabled
        self._settle_until = -math.inf
        self._settle_reason: str | None = None
        self._settle_logged = False
        self._last_night: bool | None = None
        self._prev_dark: float | None = None
        self._dark_baseline = 0.0
        self._disabled = False
        self._last_mono: float | None = None
        self._last_frame_id: int | None = None
        self.frames = 0
        self.resets = 0
        self.last_reset: dict[str, Any] | None = None
        self.measure_errors = 0
        self._measure_failing = False
        self._last_error_text = ""
        self._last_error_logged = -math.inf
        self.log = MotionLog(
            cfg.log_dir,
            max_bytes=lambda: int(self._cfg.log_max_mb * 1024 * 1024),
            keep=lambda: self._cfg.log_keep,
            on_problem=lambda reason: self._set_problem("logs", reason),
            queue_size=log_queue_size,
            retry_s=log_retry_s,
        )
        self._prepare(cfg.regions, cfg.masks)
        self._install_pending()
        cfg.on_change(self._on_config)
        bus.subscribe("night.", self._on_bus_event)
        bus.subscribe("camera.recovered", self._on_bus_event)

    # -- lifecycle
    def start(self) -> None:
        self.log.start()
        names = ", ".join(r.spec.name for r in self._regions) or "none"
        log.info("motion: watching regions %s; logs in %s", names, self.log.dir)

    def stop(self) -> None:
        self.log.stop()

    # -- configuration changes
    def _on_config(self, name: str, _value: Any) -> None:
        self._params = _Params.read(self._cfg)
        if name in ("motion.regions", "motion.masks"):
            self._prepare(self._cfg.regions, self._cfg.masks)
        elif name in _PLAN_KEYS:
            with self._compile_lock:
                self._publish_plan()

    def _prepare(self, raw_regions: Any, raw_masks: Any) -> None:
        """Validate and compile the regions (on the thread that changed the config) for the capture thread to install."""
        with self._compile_lock:
            errors: list[str] = []
            try:
                masks = parse_masks(raw_masks, self.frame_size)
            except ValueError as exc:
                errors.append(str(exc) + " (masks ignored)")
                masks = []
            geometries: list[_Geometry] = []
            specs: list[RegionSpec] = []
            for i, item in enumerate(raw_regions if isinstance(raw_regions, list) else []):
                try:
                    spec = _parse_region(item, self.frame_size, i)
                    _check_unique([*specs, spec])
                    geometries.append(_Geometry(spec, masks, self.frame_size, self.ring_size))
                    specs.append(spec)
                except ValueError as exc:
                    errors.append(f"{exc} (region skipped)")
            for err in errors:
                log.error("motion: %s", err)
            self._compiled = (tuple(geometries), masks, tuple(errors))
            self._publish_plan()

    def _publish_plan(self) -> None:
        """Plan the passes for the compiled regions and the current settings (caller holds _compile_lock)."""
        geometries, masks, errors = self._compiled
        p = _Params.read(self._cfg)
        settings = [_Settings.of(g, p.method, p.blur, p.threshold, p.dilate) for g in geometries]
        plans, where = _plan_passes(list(geometries), settings, masks, self.frame_size, self.ring_size)
        self._incoming = (self._incoming[0] + 1, geometries, errors, tuple(plans), tuple(where))

    def _install_pending(self) -> None:
        version, geometries, errors, plans, where = self._incoming
        if version == self._installed_version:
            return
        passes = _build_passes(list(plans), self._passes, self.frame_size, self.ring_size)
        old = {r.spec.name: r for r in self._regions}
        installed = []
        for g, (pass_index, member) in zip(geometries, where):
            region = old.pop(g.spec.name, None)
            if region is None:
                region = _Region(g, _Machine())
            else:
                region.bind(g)  # the machine state stays with the name
            region.use(passes[pass_index], member)
            installed.append(region)
        for gone in old.values():
            self.log.close_file(gone.spec.file_stem)
        self._passes = tuple(passes)
        self._regions = tuple(installed)
        self._region_errors = errors
        self._installed_version = version
        if self._last_mono is not None:  # not on the first install, start() says it
            log.info("motion: regions now %s", ", ".join(r.spec.name for r in installed) or "none")
        self._set_problem("regions", "; ".join(errors) if errors else None)

    # -- resets
    def reset(self, reason: str) -> None:
        """Re-baseline the background and suppress judgement for settle_s, from the next frame on."""
        self._reset_requests.append(str(reason))

    def _on_bus_event(self, event: Event) -> None:
        if event.kind in ("night.enter", "night.exit", "camera.recovered"):
            self.reset(event.kind)

    def _begin_settle(self, reason: str, mono: float) -> None:
        settle_s = self._params.settle_s
        already = mono < self._settle_until
        self._settle_until = max(self._settle_until, mono + settle_s)
        self.resets += 1
        self.last_reset = {"reason": reason, "ts": round(time.time(), 3)}
        for pas in self._passes:
            pas.rebaseline()
        if already:
            log.debug("motion: background reset again (%s) while settling", reason)
        else:
            self._settle_reason = reason
            self._settle_logged = True
            log.info("motion: background reset (%s); not judging motion for %.1f s", reason, settle_s)

    # -- the per-frame work (capture thread)
    def process(self, ring_frame: np.ndarray, meta: FrameMeta, full_frame: np.ndarray | None = None) -> None:
        """Measure every region on this frame and update the machine states. Never raises, never does I/O."""
        try:
            self._process(ring_frame, meta, full_frame)
        except Exception as exc:
            self._measure_failed(exc)
        else:
            if self._measure_failing:
                self._measure_failing = False
                self._set_problem("measure", None)

    def _process(self, ring_frame: np.ndarray, meta: FrameMeta, full_frame: np.ndarray | None) -> None:
        p = self._params
        if not p.enabled:
            self._disabled = True
            return
        if ring_frame.shape != self._ring_shape or ring_frame.dtype != np.uint8:
            raise ValueError(f"ring frame is {ring_frame.shape} {ring_frame.dtype}, expected {self._ring_shape} uint8")
        self._install_pending()
        mono = float(meta.mono)
        if self._last_mono is not None and mono < self._last_mono:
            raise ValueError(f"frame {meta.frame_id} is older than the previous one (mono {mono:.3f} < {self._last_mono:.3f})")
        if self._disabled:
            self._disabled = False
            for pas in self._passes:
                pas.rebaseline()  # the background is stale after a pause
        self._last_mono = mono
        self._last_frame_id = meta.frame_id
        self.frames += 1

        while self._reset_requests:
            self._begin_settle(self._reset_requests.popleft(), mono)
        night = bool(meta.night)
        if self._last_night is not None and night != self._last_night:
            self._begin_settle("night mode " + ("on" if night else "off"), mono)
        self._last_night = night
        dark = float(meta.dark_score)
        if self._prev_dark is None:
            self._dark_baseline = dark
        elif abs(dark - self._prev_dark) > p.brightness_jump or abs(dark - self._dark_baseline) > p.brightness_jump:
            # Compared with the slow average too, so an exposure that creeps in steps is caught as well.
            self._begin_settle(f"brightness jump {self._dark_baseline:.1f} -> {dark:.1f}", mono)
            self._dark_baseline = dark
        else:
            self._dark_baseline += p.alpha * (dark - self._dark_baseline)
        self._prev_dark = dark
        settling = mono < self._settle_until
        if not settling and self._settle_logged:
            self._settle_logged = False
            log.info("motion: settled after %s; judging motion again", self._settle_reason)

        regions = self._regions
        if not regions:
            meta.extra.pop("motion", None)
            return
        alpha = p.alpha
        for pas in self._passes:
            if settling:
                pas.needs_baseline = True
            pas.run(ring_frame, full_frame, alpha)
        # Per region only a count and the machine state: keep this loop lean, it runs regions x frames.
        parts = []
        records = []
        ts, frame_id = meta.ts, meta.frame_id
        window_s, running_fraction, deep_sleep_s = p.window_s, p.running_fraction, p.deep_sleep_s
        for region in regions:
            spec = region.spec
            pas = region.pas
            if pas.measured:
                if not pas.changes:
                    changed = 0
                elif region.own_mask is None:
                    changed = cv2.countNonZero(region.view)
                else:
                    changed = pas.count(region.index)
                fraction = changed / region.area
                pixels = round(changed * region.pixel_scale)
                moving = pixels >= spec.min_pixels if spec.min_pixels is not None else fraction >= spec.min_fraction
            else:
                fraction, pixels, moving = 0.0, 0, None
            region.fraction, region.pixels, region.moving, region.settling = fraction, pixels, moving, settling
            machine = region.machine
            if machine.since is None:
                machine.since = mono
            verdict = region.window.step(mono, moving, window_s, region.running_fraction or running_fraction)
            state = machine.state
            if verdict is True:
                if state != RUNNING:
                    state = self._change(region, RUNNING, meta, mono)
            elif verdict is False and (state == RUNNING or state == UNKNOWN):
                state = self._change(region, STOPPED, meta, mono)
            if state == STOPPED and mono - machine.stopped_since >= deep_sleep_s:
                state = self._change(region, DEEP_SLEEP, meta, mono)
            parts.append(f"{region.label}{fraction:.4f}:{SETTLING if settling else state}")
            records.append((region.log_name, ts, frame_id, spec.name, fraction, pixels, moving, state, settling))
        self.log.frames(records)
        meta.extra["motion"] = ";".join(parts)
        if settling:
            meta.extra["motion_settling"] = True

    def _change(self, region: _Region, new: str, meta: FrameMeta, mono: float) -> str:
        """Move the region's machine to `new`: log, event, state log. Returns `new`."""
        machine, spec = region.machine, region.spec
        old = machine.state
        duration = mono - (machine.since if machine.since is not None else mono)
        idle = None
        if old in (STOPPED, DEEP_SLEEP) and machine.stopped_since is not None:
            idle = mono - machine.stopped_since
        machine.state = new
        machine.since = mono
        if new == STOPPED:
            machine.stopped_since = mono
        elif new == RUNNING:
            machine.stopped_since = None
        data: dict[str, Any] = {
            "region": spec.name,
            "machine_id": spec.machine_id,
            "old": old,
            "new": new,
            "ts": round(meta.ts, 3),
            "frame_id": meta.frame_id,
            "duration_s": round(duration, 3),
            "idle_s": None if idle is None else round(idle, 3),
            "window_moving": None if machine.window.moving_share is None else round(machine.window.moving_share, 3),
        }
        if spec.webhook:
            data["webhook"] = spec.webhook
        who = spec.name if spec.machine_id is None else f"{spec.name} (machine {spec.machine_id})"
        if old == UNKNOWN:
            share = machine.window.moving_share or 0.0
            log.info("%s: %s (first full window: %.0f%% of frames moving)", who, new, share * 100)
        elif new == DEEP_SLEEP:
            log.info("%s: STOPPED -> DEEP_SLEEP after %s stopped", who, format_duration(duration))
        elif old == DEEP_SLEEP:
            log.info("%s: DEEP_SLEEP -> RUNNING, woke after %s idle", who, format_duration(idle or 0.0))
        elif new == RUNNING:
            log.info("%s: %s -> RUNNING after %s idle", who, old, format_duration(idle if idle is not None else duration))
        else:
            log.info("%s: %s -> %s after %s %s", who, old, new, format_duration(duration), old.lower())
        if new == DEEP_SLEEP:
            self._publish("motion.deep_sleep", data, DEEP_SLEEP_LOG)
            return new
        self._publish("motion.state", data, STATE_LOG)
        if old == DEEP_SLEEP:
            self._publish("motion.wake", data, DEEP_SLEEP_LOG)
        return new

    def _publish(self, kind: str, data: dict[str, Any], log_file: str) -> None:
        self.log.event(log_file, {"event": kind, **data})
        self._bus.publish(kind, **data)

    # -- errors and health
    def _measure_failed(self, exc: Exception) -> None:
        self.measure_errors += 1
        text = f"measuring motion failed: {type(exc).__name__}: {exc}"
        now = time.monotonic()
        # The same failure on every frame would flood the journal: say it once a minute.
        if text != self._last_error_text or now - self._last_error_logged >= 60:
            self._last_error_text, self._last_error_logged = text, now
            self.status.error("measuring motion failed", exc)
        self._measure_failing = True
        self._set_problem("measure", text)

    def _set_problem(self, key: str, reason: str | None) -> None:
        with self._problem_lock:
            if reason is None:
                if self._problems.pop(key, None) is None:
                    return
            else:
                if self._problems.get(key) == reason:
                    return
                self._problems[key] = reason
            summary = "; ".join(self._problems[k] for k in sorted(self._problems))
            if summary:
                self.status.degrade(summary)
            else:
                self.status.recover()

    def region_status(self, region: _Region) -> dict[str, Any]:
        machine, spec = region.machine, region.spec
        now = self._last_mono
        in_state = None if now is None or machine.since is None else round(now - machine.since, 3)
        idle = None
        if machine.state in (STOPPED, DEEP_SLEEP) and machine.stopped_since is not None and now is not None:
            idle = round(now - machine.stopped_since, 3)
        share = machine.window.moving_share
        out = {
            "name": spec.name,
            "machine_id": spec.machine_id,
            "state": machine.state,
            "fraction": round(region.fraction, 4),
            "pixels": region.pixels,
            "moving": region.moving,
            "settling": region.settling,
            "in_state_s": in_state,
            "idle_s": idle,
            "window_moving": None if share is None else round(share, 3),
            "window_frames": machine.window.frames,
            "threshold": spec.threshold_text(),
        }
        return out

    def health(self) -> dict[str, Any]:
        """Figures as of the last frame measured (times count by frame timestamps)."""
        regions = self._regions
        return {
            "enabled": bool(self._cfg.enabled),
            "frames": self.frames,
            "last_frame_id": self._last_frame_id,
            "settling": self._last_mono is not None and self._last_mono < self._settle_until,
            "resets": self.resets,
            "last_reset": self.last_reset,
            "measure_errors": self.measure_errors,
            "regions": {r.spec.name: self.region_status(r) for r in regions},
            "region_errors": list(self._region_errors),
            "log": self.log.stats(),
        }

    # -- commands
    def register_commands(self, registry: Registry) -> None:
        registry.register(Command(
            "motion", self._cmd_motion, "Machine state, changed fraction and time in state of every region, or of one",
            usage="[REGION]", max_args=1, raw_tail=True,
        ))
        registry.register(Command("regions", self._cmd_regions, "The configured motion regions and masks, and how each is measured"))
        registry.register(Command(
            "region", self._cmd_region,
            "Add a rectangular motion region (pixels of the full frame, or fractions 0..1; MIN: fraction of the "
            "region <= 1 or changed pixels > 1) or delete one; applies from the next frame",
            usage="add NAME X Y W H [MIN] | del NAME", mutating=True, min_args=2, max_args=7,
        ))

    def _cmd_motion(self, args: list[str], session: Session) -> Reply:
        regions = self._regions
        if args:
            name = args[0].strip()
            for region in regions:
                if region.spec.name == name:
                    st = self.region_status(region)
                    return Reply(True, f"{name} {SETTLING if st['settling'] else st['state']}", body=st)
            if any(g.spec.name == name for g in self._incoming[1]):
                # Just added: the capture loop takes it on with its next frame.
                return Reply(True, f"{name} PENDING", body={"name": name, "state": "PENDING"})
            known = ", ".join(r.spec.name for r in regions) or "none configured"
            return Reply.error(f"unknown region {name[:64]!r} (known: {known})")
        body = {
            "enabled": bool(self._cfg.enabled),
            "settling": self._last_mono is not None and self._last_mono < self._settle_until,
            "regions": [self.region_status(r) for r in regions],
        }
        if not regions:
            return Reply(True, "no regions configured (region add NAME X Y W H)", body=body)
        summary = ", ".join(f"{r.spec.name} {r.machine.state}" for r in regions)
        return Reply(True, summary, body=body)

    def _cmd_regions(self, args: list[str], session: Session) -> Reply:
        regions = self._regions
        body = {
            "frame_size": list(self.frame_size),
            "ring_size": list(self.ring_size),
            "regions": self._cfg.regions,
            "masks": self._cfg.masks,
            "active": [r.geometry.describe() for r in regions],
            "passes": [p.plan.describe() for p in self._passes],
            "errors": list(self._region_errors),
        }
        return Reply(True, f"{len(regions)} regions active" + (f", {len(self._region_errors)} refused" if self._region_errors else ""), body=body)

    def _cmd_region(self, args: list[str], session: Session) -> Reply:
        action = args[0].lower()
        if action == "add":
            return self._region_add(args[1:])
        if action in ("del", "delete", "rm", "remove"):
            return self._region_del(" ".join(args[1:]))
        return Reply.error("usage: region add NAME X Y W H [MIN] | region del NAME")

    def _region_add(self, args: list[str]) -> Reply:
        if len(args) not in (5, 6):
            return Reply.error("usage: region add NAME X Y W H [MIN]")
        name = args[0]
        numbers: list[float] = []
        for label, text in zip(("X", "Y", "W", "H", "MIN"), args[1:]):
            try:
                v = float(text)
            except ValueError:
                return Reply.error(f"{label} must be a number, not {text[:32]!r}")
            if not math.isfinite(v):
                return Reply.error(f"{label} must be a finite number, not {text[:32]!r}")
            numbers.append(v)
        rect: list[float | int] = list(numbers[:4])
        if max(rect) > 1 and all(v.is_integer() for v in numbers[:4]):
            rect = [int(v) for v in rect]  # pixels: keep the config tidy
        entry: dict[str, Any] = {"name": name, "rect": rect}
        if len(numbers) == 5:
            limit = numbers[4]
            if limit <= 0:
                return Reply.error(f"MIN must be above 0, not {args[5][:32]!r}")
            if limit <= 1:
                entry["min_fraction"] = float(limit)
            elif float(limit).is_integer():
                entry["min_pixels"] = int(limit)
            else:
                return Reply.error(f"MIN above 1 counts changed pixels and must be a whole number, not {args[5][:32]!r}")
        with self._edit_lock:
            current = list(self._cfg.regions)
            if any(isinstance(r, dict) and r.get("name") == name for r in current):
                return Reply.error(f"region {name!r} exists already (region del {name} first)")
            try:
                spec = _parse_region(entry, self.frame_size, len(current))
                others = []
                for i, r in enumerate(current):
                    try:
                        others.append(_parse_region(r, self.frame_size, i))
                    except ValueError:
                        continue  # an already refused region is reported in `regions`; it does not block this one
                _check_unique([*others, spec])
                masks = parse_masks(self._cfg.masks, self.frame_size)
                geometry = _Geometry(spec, masks, self.frame_size, self.ring_size)
            except ValueError as exc:
                return Reply.error(str(exc))
            try:
                self._cfg.config.set("motion.regions", current + [entry])
            except ValueError as exc:
                return Reply.error(str(exc))
        log.info("motion: region %s added by command: %s", name, entry)
        return Reply(
            True, f"region {name} added, measured on the {geometry.source} frame; applies from the next frame "
                  "(overwrite_config keeps it)",
            body={"region": entry, "measured": geometry.describe()},
        )

    def _region_del(self, name: str) -> Reply:
        if not name:
            return Reply.error("usage: region del NAME")
        with self._edit_lock:
            current = list(self._cfg.regions)
            kept = [r for r in current if not (isinstance(r, dict) and r.get("name") == name)]
            if len(kept) == len(current):
                known = ", ".join(str(r.get("name")) for r in current if isinstance(r, dict)) or "none configured"
                return Reply.error(f"unknown region {name[:64]!r} (known: {known})")
            try:
                self._cfg.config.set("motion.regions", kept)
            except ValueError as exc:
                return Reply.error(str(exc))
        log.info("motion: region %s deleted by command", name)
        return Reply(True, f"region {name} deleted; applies from the next frame (overwrite_config keeps it)")
