"""PTZ presets: what `ptz.presets` and a preset file hold, validated in one place (the schema uses `check_presets`).

A preset is `{number, name, settle_s, zone, regions, masks}`: the camera's
memory slot (0..254), a name for the report, the longest wait for the picture
to settle after the camera arrives (empty: `ptz.settle_s`), the part of the
picture where people are counted (`[x, y, w, h]` in pixels of the full frame,
or fractions 0..1; empty: all of it), and the motion regions and masks of
this view, written as `motion.regions` and `motion.masks` are. With
`regions` (even an empty list) the preset's own regions replace
`motion.regions` while the camera is there; its `masks` add to `motion.masks`
(a burnt-in clock stays where it is whatever the camera looks at; a tree is
this view's). `view_event` carries them to Motion. The seed's JSON file
(`{"presets": [{"number": 1, "name": "Entrance"}, ...]}`, or a bare list) is
accepted through `ptz.presets_file`; presets in the config win over the file's
of the same number.

No OpenCV or numpy here: the config schema imports this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.motion.regions import check_masks, check_regions

PRESET_MAX = 254
NAME_MAX = 64
_KNOWN = {"number", "name", "settle_s", "zone", "regions", "masks"}
#: The bus event of where the camera looks after a move: Motion takes the preset's own regions from it.
VIEW = "ptz.view"


@dataclass(frozen=True)
class Preset:
    number: int
    name: str
    settle_s: float | None = None  # None: ptz.settle_s
    zone: tuple[float, float, float, float] | None = None
    regions: list[Any] | None = None  # None: motion.regions apply at this preset
    masks: list[Any] | None = None  # added to motion.masks at this preset

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"number": self.number, "name": self.name}
        if self.settle_s is not None:
            out["settle_s"] = self.settle_s
        if self.zone is not None:
            out["zone"] = list(self.zone)
        if self.regions is not None:
            out["regions"] = self.regions
        if self.masks is not None:
            out["masks"] = self.masks
        return out

    def zone_pixels(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        """The zone as x0, y0, x1, y1 pixels of a `width` x `height` frame (None: the whole frame)."""
        if self.zone is None:
            return None
        x, y, w, h = self.zone
        if all(v <= 1 for v in self.zone):
            x, y, w, h = x * width, y * height, w * width, h * height
        x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
        x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
        if x1 - x0 < 8 or y1 - y0 < 8:
            raise ValueError(f"preset {self.number}: zone {list(self.zone)} leaves less than 8x8 pixels of a {width}x{height} frame")
        return x0, y0, x1, y1


def _number(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"number {value!r} is not a whole number")
    try:
        n = int(value) if not isinstance(value, float) or value.is_integer() else None
    except ValueError:
        n = None
    if n is None:
        raise ValueError(f"number {value!r} is not a whole number")
    if not 0 <= n <= PRESET_MAX:
        raise ValueError(f"number {n} is not 0..{PRESET_MAX}")
    return n


def _zone(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value in (None, [], ""):
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"{where}: zone must be [x, y, w, h] (pixels of the full frame, or fractions 0..1)")
    try:
        nums = tuple(float(v) for v in value if not isinstance(v, bool))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: zone {value!r}: x, y, w, h must be numbers") from None
    if len(nums) != 4 or not all(math.isfinite(v) for v in nums):
        raise ValueError(f"{where}: zone {value!r}: x, y, w, h must be finite numbers")
    x, y, w, h = nums
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ValueError(f"{where}: zone {value!r}: x and y must be >= 0, w and h > 0")
    if all(v <= 1 for v in nums) and (x + w > 1.0001 or y + h > 1.0001):
        raise ValueError(f"{where}: zone {value!r}: as fractions, x + w and y + h must be <= 1")
    return (x, y, w, h)


def parse_preset(item: Any, index: int) -> Preset:
    """One preset from a config or file entry; ValueError names the entry and the problem."""
    where = f"preset #{index + 1}"
    if isinstance(item, (int, str)) and not isinstance(item, bool):
        item = {"number": item}
    if not isinstance(item, dict):
        raise ValueError(f"{where}: must be a mapping like {{number: 1, name: Entrance}}")
    unknown = sorted(set(item) - _KNOWN)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(map(str, unknown))} (known: {', '.join(sorted(_KNOWN))})")
    if "number" not in item:
        raise ValueError(f"{where}: no number")
    number = _number(item["number"])
    where = f"preset {number}"
    name = " ".join(str(item.get("name") or f"preset {number}").split())
    if len(name) > NAME_MAX:
        raise ValueError(f"{where}: name is longer than {NAME_MAX} characters")
    settle = item.get("settle_s")
    settle_s: float | None = None
    if settle not in (None, ""):
        try:
            settle_s = float(settle)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: settle_s {settle!r} is not a number") from None
        if not math.isfinite(settle_s) or not 0 <= settle_s <= 600:
            raise ValueError(f"{where}: settle_s {settle_s:g} is not 0..600")
    regions, masks = _motion_part(item, "regions", check_regions, where), _motion_part(item, "masks", check_masks, where)
    return Preset(number, name, settle_s, _zone(item.get("zone"), where), regions, masks)


def _motion_part(item: dict, key: str, check: Any, where: str) -> list[Any] | None:
    """A preset's own motion regions or masks, checked as `motion.regions`/`motion.masks` are (the frame's bounds are
    checked when the camera gets there, as for motion.regions)."""
    if key not in item or item[key] is None:
        return None
    value = item[key]
    if not isinstance(value, list):
        raise ValueError(f"{where}: {key} must be a list, written as motion.{key} is")
    try:
        return list(check(value))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def view_event(preset: Preset | None) -> dict[str, Any]:
    """The data of a `ptz.view` event: where the camera now looks (`preset` None: not at a preset, or unknown after a
    failed move), the motion regions that apply there (None: motion.regions) and the masks it adds to motion.masks."""
    if preset is None:
        return {"preset": None, "name": None, "regions": None, "masks": None}
    return {"preset": preset.number, "name": preset.name, "regions": preset.regions, "masks": preset.masks}


def parse_presets(raw: Any) -> list[Preset]:
    if not isinstance(raw, list):
        raise ValueError("presets must be a list")
    out: list[Preset] = []
    seen: set[int] = set()
    for i, item in enumerate(raw):
        preset = parse_preset(item, i)
        if preset.number in seen:
            raise ValueError(f"preset {preset.number} is listed twice")
        seen.add(preset.number)
        out.append(preset)
    return out


def check_presets(value: list) -> list:
    """The schema's check of `ptz.presets`: the normalised list."""
    return [p.to_dict() for p in parse_presets(value)]


def load_presets_file(path: str | Path) -> list[Preset]:
    """The seed's preset file: `{"presets": [...]}` or a bare list; ValueError names the file and the problem."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ValueError(f"{p}: cannot read ({exc.strerror or exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from None
    raw = doc.get("presets") if isinstance(doc, dict) else doc
    if not isinstance(raw, list):
        raise ValueError(f'{p}: expected {{"presets": [...]}} or a list of presets')
    try:
        return parse_presets(raw)
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None


def merged_presets(configured: list, presets_file: str) -> list[Preset]:
    """The presets of the file (if any) and of the config, config entries replacing the file's of the same number,
    in order of preset number."""
    by_number: dict[int, Preset] = {}
    if presets_file.strip():
        for p in load_presets_file(presets_file.strip()):
            by_number[p.number] = p
    for p in parse_presets(configured):
        by_number[p.number] = p
    return [by_number[n] for n in sorted(by_number)]


def parse_selection(text: str) -> list[int]:
    """'1,3,5' or '1 3 5' or '2-4' -> preset numbers in the order given (duplicates refused)."""
    out: list[int] = []
    for part in text.replace(",", " ").split():
        lo, sep, hi = part.partition("-")
        if sep and lo and hi:
            a, b = _number(lo), _number(hi)
            if b < a:
                raise ValueError(f"range {part} runs backwards")
            numbers = list(range(a, b + 1))
        else:
            numbers = [_number(part)]
        for n in numbers:
            if n in out:
                raise ValueError(f"preset {n} is listed twice")
            out.append(n)
    if not out:
        raise ValueError("no preset numbers")
    return out
