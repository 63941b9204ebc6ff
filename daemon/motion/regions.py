"""Regions and masks: what they may look like, checked in one place.

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

This module is the one validation of both. The config schema runs it without
a frame size (`check_regions`, `check_masks`: everything but the bounds), the
component and `region add` run it against the camera's frame
(`read_regions`, which skips a bad region and says why), and tools run it
strictly (`parse_regions`, which raises on the first problem). It imports
neither OpenCV nor numpy, so loading a config stays light.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

DEFAULT_MIN_FRACTION = 0.05
MIN_REGION_PX = 2  # smallest region side, in full-frame pixels
EPS = 1e-9
MAX_REGIONS = 64  # regions in one list: each is measured on every frame
MAX_POLYGON_POINTS = 256
_MAX_NAME = 64
_NAME_FORBIDDEN = frozenset('=;:,"\\')  # would break the X-Motion header or the command line
_REGION_KEYS = (
    "name",
    "rect",
    "polygon",
    "min_fraction",
    "min_pixels",
    "machine_id",
    "webhook",
    "pixel_threshold",
    "blur",
    "dilate",
    "running_fraction",
)
_SEED_HINTS = {
    "threshold": "use min_pixels (changed pixels at full-frame scale) or min_fraction",
    "failrate": "use running_fraction (share of moving frames in the window that means RUNNING)",
    "machineid": "use machine_id",
    "ix": "use rect: [x, y, w, h]",
}

Point = tuple[float, float]

# Every problem is a ValueError, a wrong type included: the config turns it into a ConfigError naming the key.


@dataclass(frozen=True)
class RegionSpec:
    """One validated region, its shape in full-frame pixels (given units when checked without a frame size)."""

    name: str
    points: tuple[Point, ...]  # polygon corners (a rect's four corners)
    is_rect: bool
    area_px: float  # full-frame pixels; 0 when checked without a frame size
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


def _shape(item: Any, where: str) -> tuple[bool, list[Point], bool]:
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
        x, y, w, h = (_number(v, f"{where}: rect {k}") for v, k in zip(rect, "xywh", strict=True))
        if w <= 0 or h <= 0:
            raise ValueError(f"{where}: rect has zero size (w={w:g}, h={h:g})")
        if x < 0 or y < 0:
            raise ValueError(f"{where}: rect starts outside the frame (x={x:g}, y={y:g})")
        fractional = max(x, y, w, h) <= 1.0
        if fractional and (x + w > 1 + EPS or y + h > 1 + EPS):
            raise ValueError(f"{where}: rect {list(rect)} reaches outside the frame (x+w and y+h must be <= 1 as fractions)")
        return True, [(x, y), (x + w, y), (x + w, y + h), (x, y + h)], fractional
    if not isinstance(poly, (list, tuple)) or len(poly) < 3:
        raise ValueError(f"{where}: polygon needs at least 3 points [[x, y], ...]")
    if len(poly) > MAX_POLYGON_POINTS:
        raise ValueError(f"{where}: polygon has {len(poly)} points; at most {MAX_POLYGON_POINTS}")
    points = []
    for i, p in enumerate(poly):
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise ValueError(f"{where}: polygon point {i + 1} must be [x, y], not {p!r}")
        px, py = _number(p[0], f"{where}: polygon point {i + 1} x"), _number(p[1], f"{where}: polygon point {i + 1} y")
        if px < 0 or py < 0:
            raise ValueError(f"{where}: polygon point {i + 1} [{px:g}, {py:g}] is outside the frame")
        points.append((px, py))
    if polygon_area(points) <= 0:
        raise ValueError(f"{where}: polygon has no area (its points lie on a line)")
    fractional = max(max(p) for p in points) <= 1.0
    return False, points, fractional


def polygon_area(points: Iterable[Point]) -> float:
    pts = list(points)
    s = 0.0
    for (x0, y0), (x1, y1) in zip(pts, [*pts[1:], pts[0]], strict=True):
        s += x0 * y1 - x1 * y0
    return abs(s) / 2


def _to_pixels(points: list[Point], fractional: bool, frame_size: tuple[int, int]) -> list[Point]:
    if not fractional:
        return points
    fw, fh = frame_size
    return [(x * fw, y * fh) for x, y in points]


def _check_inside(points: list[Point], frame_size: tuple[int, int], where: str) -> None:
    fw, fh = frame_size
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if max(xs) > fw + EPS or max(ys) > fh + EPS:
        raise ValueError(f"{where}: reaches outside the {fw}x{fh} frame (to x={max(xs):g}, y={max(ys):g})")


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
        raise ValueError(f'{where}: names are 1..{_MAX_NAME} printable characters without = ; : , " \\ or surrounding spaces')
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
    if webhook is not None and (not isinstance(webhook, str) or not re.match(r"^https?://\S+$", webhook)):
        raise ValueError(f"{where}: webhook must be an http:// or https:// URL without spaces")
    if webhook is not None and len(webhook) > 2048:
        raise ValueError(f"{where}: webhook is {len(webhook)} characters long; at most 2048")
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
        area_px = polygon_area(points)
        if min_pixels is not None and min_pixels > area_px:
            raise ValueError(f"{where}: min_pixels {min_pixels} is more than the region's {area_px:.0f} pixels, so it could never move")
    return RegionSpec(
        name=name,
        points=tuple(points),
        is_rect=is_rect,
        area_px=area_px,
        min_fraction=min_fraction,
        min_pixels=min_pixels,
        machine_id=machine_id,
        webhook=webhook,
        pixel_threshold=pixel_threshold,
        blur=blur,
        dilate=dilate,
        running_fraction=running_fraction,
        file_stem=file_stem(name),
    )


def read_regions(raw: Any, frame_size: tuple[int, int] | None) -> tuple[list[tuple[int, RegionSpec]], list[tuple[int, str]]]:
    """(index, region) of the valid regions of `raw` in order, and (index, reason) of each one refused.

    Each region is checked on its own first, then the valid ones against each
    other in order (a later one whose name or log file name is taken is
    refused). The reasons come in that order too: a region's own problems
    before any clash. Without frame_size the bounds are not checked.
    """
    if not isinstance(raw, list):
        raise ValueError("motion.regions must be a list of regions")
    if len(raw) > MAX_REGIONS:
        raise ValueError(f"{len(raw)} regions; at most {MAX_REGIONS} (each is measured on every frame)")
    parsed: list[RegionSpec | None] = []
    refused: list[tuple[int, str]] = []
    for i, item in enumerate(raw):
        try:
            parsed.append(_parse_region(item, frame_size, i))
        except ValueError as exc:
            parsed.append(None)
            refused.append((i, str(exc)))
    accepted: list[tuple[int, RegionSpec]] = []
    names: set[str] = set()
    stems: dict[str, str] = {}  # lower-cased file stem -> region name (file systems may ignore case)
    for i, spec in enumerate(parsed):
        if spec is None:
            continue
        other = stems.get(spec.file_stem.lower())
        if spec.name in names:
            refused.append((i, f"region {spec.name!r}: the name is used twice"))
        elif other is not None:
            refused.append((i, f"region {spec.name!r}: its log file name would clash with region {other!r}; rename one"))
        else:
            names.add(spec.name)
            stems[spec.file_stem.lower()] = spec.name
            accepted.append((i, spec))
    return accepted, refused


def parse_regions(raw: Any, frame_size: tuple[int, int]) -> list[RegionSpec]:
    """Validate `motion.regions` against a frame of `frame_size` (w, h); ValueError names the region and the problem."""
    accepted, refused = read_regions(raw, frame_size)
    if refused:
        raise ValueError(refused[0][1])
    return [spec for _, spec in accepted]


def check_regions(raw: list) -> list:
    """The frame-size-independent checks of `motion.regions`, for the config schema; returns the list unchanged."""
    _, refused = read_regions(raw, None)
    if refused:
        raise ValueError(refused[0][1])
    return raw


def parse_masks(raw: Any, frame_size: tuple[int, int] | None) -> list[list[Point]]:
    """`motion.masks` as polygons in full-frame pixels (or just checked, without frame_size).

    Each mask is a mapping with rect or polygon (and an optional name), or a bare
    list: four numbers are a rect, a list of [x, y] points a polygon. Masks may
    reach past the frame's edges; what lies outside is ignored.
    """
    if not isinstance(raw, list):
        raise ValueError("motion.masks must be a list of rects or polygons")
    if len(raw) > MAX_REGIONS:
        raise ValueError(f"{len(raw)} masks; at most {MAX_REGIONS}")
    out = []
    for i, item in enumerate(raw):
        where = f"mask #{i + 1}"
        if isinstance(item, dict):
            extra = set(item) - {"name", "rect", "polygon"}
            if extra:
                raise ValueError(f"{where}: unknown key {min(extra)!r} (masks have rect or polygon, and a name)")
            if item.get("name") is not None:
                where = f"mask {item['name']!r}"
        _, points, fractional = _shape(item, where)
        out.append(_to_pixels(points, fractional, frame_size) if frame_size is not None else points)
    return out


def check_masks(raw: list) -> list:
    """The frame-size-independent checks of `motion.masks`, for the config schema."""
    parse_masks(raw, None)
    return raw
