"""Class names of a model: from a label file, else from the names an Ultralytics export embeds.

Two label-file conventions exist, and a file says which it follows:
- one name per class in class order, no offset: the 80-line `coco_labels.txt`
  of the YOLO models (line 0 = person = class 0);
- the TF Object Detection API label map of the SSD models: line 0 is `???`
  (background) and line i is COCO category id i, with `???` for the ids that
  have no category (91 lines in all). The SSD post-process op reports class c
  0-based, so class c is line c + 1 (0 -> person, 46 -> cup, 66 -> dining table).
A file whose first line is `???` is read the second way: the offset is 1.

An Ultralytics TFLite export appends a zip member `metadata.json` to the
flatbuffer (`names`, `task`, `imgsz`, licence), which `zipfile` reads; it names
the classes when no label file is given.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import DetectorUnavailable

BACKGROUND = "???"


@dataclass(frozen=True)
class Labels:
    names: tuple[str, ...]  # by line (file) or by class id (embedded)
    offset: int  # class id c is names[c + offset]
    source: str  # the file, "embedded metadata" or "none"

    @property
    def count(self) -> int:
        """Classes the names cover (the SSD label map's background line is not a class)."""
        return len(self.names) - self.offset

    def name(self, class_id: int) -> str:
        i = class_id + self.offset
        if 0 <= i < len(self.names) and self.names[i] != BACKGROUND:
            return self.names[i]
        return f"class {class_id}"

    def class_ids(self, wanted: Sequence[str | int]) -> list[int]:
        """Class ids of names (or ids as they are); raises `DetectorUnavailable` for a name the labels lack."""
        ids: list[int] = []
        for item in wanted:
            if isinstance(item, int) or (isinstance(item, str) and item.strip().isdigit()):
                ids.append(int(item))
                continue
            name = str(item).strip()
            matches = [i - self.offset for i, n in enumerate(self.names) if n == name and n != BACKGROUND]
            if not matches:
                if self.source == "none":
                    raise DetectorUnavailable(
                        f"class {name!r} needs a label file: the model names no classes (give its labels, or class ids)"
                    )
                known = [n for n in self.names if n != BACKGROUND]
                hint = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
                raise DetectorUnavailable(f"class {name!r} is not among the model's labels ({self.source}: {hint})")
            ids.append(matches[0])
        return sorted(set(ids))


def read_labels(path: Path) -> Labels:
    """A label file, one name per line; raises `DetectorUnavailable` when it is missing or empty."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DetectorUnavailable(f"label file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DetectorUnavailable(f"label file unreadable: {path} ({exc})") from None
    names = tuple(line.strip() for line in text.splitlines())
    while names and not names[-1]:
        names = names[:-1]
    if not names:
        raise DetectorUnavailable(f"label file is empty: {path}")
    offset = 1 if names[0] == BACKGROUND else 0
    return Labels(names, offset, str(path))


def ultralytics_metadata(model: Path) -> dict[str, Any] | None:
    """The `metadata.json` an Ultralytics export appends to the model, or None."""
    try:
        if not zipfile.is_zipfile(model):
            return None
        with zipfile.ZipFile(model) as zf:
            data = json.loads(zf.read("metadata.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return data if isinstance(data, dict) else None


def embedded_labels(meta: dict[str, Any] | None) -> Labels | None:
    names = (meta or {}).get("names")
    if not isinstance(names, dict) or not names:
        return None
    try:
        by_id = {int(k): str(v) for k, v in names.items()}
    except ValueError:
        return None
    return Labels(tuple(by_id.get(i, f"class {i}") for i in range(max(by_id) + 1)), 0, "embedded metadata")


def no_labels(classes: int) -> Labels:
    return Labels(tuple(f"class {i}" for i in range(classes)), 0, "none")
