"""Retention: given the captures folder and its limits, which captures to delete, and deleting them.

Retention keeps the captures folder under `max_disk_mb` and at least `min_free_mb` free on its filesystem: the
oldest auto-saves go first, other captures only when that is not enough (clips and detection pictures count as
auto-saves), and nothing is deleted if even deleting everything would not reach the limits (captures are never
destroyed in vain): that raises DiskFullError, which the Exporter reports.

Names come from the wall clock, which a Pi without a real-time clock steps when the network time arrives.
Retention does not take a name for an age where the clock cannot have given it (`deletion_order`): a capture made
after a step back is not deleted for its name looking older than those made before, nor one made before the clock
was set for its name looking like 1970. A capture's images and sidecar are deleted together; incomplete captures
(see `layout.entries`) and files that are not captures are counted but never deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemon.storage.errors import DiskFullError, mb
from daemon.storage.layout import AUTO_KINDS, CAPTURE_NAME, capture_stamp, day_dirs, entries, pending_stems

log = logging.getLogger("picamd.export")

_CLOCK_FLOOR = 1735689600.0  # 2025-01-01 UTC: no capture is older; an older name comes from a clock not yet set
_FUTURE_SLACK_S = 86400.0  # names up to a day ahead are still plausible (a time zone changed meanwhile)


@dataclass
class Capture:
    """One capture on disk: its images and sidecar, deleted together by retention."""

    key: str  # day/stem
    stamp: str
    kind: str
    dup: int  # 1, or N of a '-N' name: the same frame saved again later
    files: list[Path] = field(default_factory=list)
    size: int = 0


@dataclass
class Scan:
    captures: list[Capture]
    total_bytes: int
    image_files: int
    all_files: int
    at: float  # monotonic time of the scan


def scan(base: Path) -> Scan:
    """The complete captures under `base`, sorted by name, with the bytes and files of everything in the day folders."""
    captures: dict[str, Capture] = {}
    total = images = files = 0
    pending = pending_stems(base)
    for day in day_dirs(base):
        for path, size, _mtime in entries(day, pending):
            total += size
            files += 1
            m = CAPTURE_NAME.match(path.name)
            if not m:
                continue  # not ours: counted, never deleted
            if m["ext"] != "json":
                images += 1
            key = f"{day.name}/{path.name[: -len(m['ext']) - 1]}"
            cap = captures.get(key)
            if cap is None:
                cap = captures[key] = Capture(key, m["stamp"], m["kind"], int(m["dup"] or 1))
            cap.files.append(path)
            cap.size += size
    return Scan(sorted(captures.values(), key=lambda c: (c.stamp, c.dup, c.key)), total, images, files, time.monotonic())


def deletion_order(captures: list[Capture], now: float) -> list[Capture]:
    """The order retention deletes in: auto-saves before other captures, each oldest name first, except names a
    wrong clock gave. A name after `now` (beyond a day) was given before the clock stepped back: that capture is
    older than every one made since, so it goes first (else each new capture, its name looking older, would go
    instead). A name before _CLOCK_FLOOR was given before the clock was set (a Pi without a real-time clock,
    before network time): its real age is unknown and it may be the newest, so it goes last.
    `captures` come sorted by name; the sort is stable."""
    lo, hi = capture_stamp(_CLOCK_FLOOR)[1], capture_stamp(now + _FUTURE_SLACK_S)[1]
    return sorted(captures, key=lambda c: (c.kind not in AUTO_KINDS, 0 if c.stamp > hi else 1 if c.stamp >= lo else 2))


def plan(
    found: Scan, free: int | None, incoming: int, max_disk_mb: float, min_free_mb: float, protect: set[str], now: float
) -> tuple[list[Capture], str]:
    """The captures to delete so that `incoming` more bytes fit the limits (none when they fit already), and why.

    Raises DiskFullError when even deleting every capture not in `protect` would not be enough."""
    max_bytes = int(float(max_disk_mb) * 2**20)
    min_free = int(float(min_free_mb) * 2**20)
    over_quota = found.total_bytes + incoming - max_bytes
    under_free = (min_free - (free - incoming)) if free is not None else 0
    need = max(over_quota, under_free)
    if need <= 0:
        return [], ""
    candidates = deletion_order([c for c in found.captures if c.key not in protect], now)
    chosen, freed = [], 0
    for cap in candidates:
        if freed >= need:
            break
        chosen.append(cap)
        freed += cap.size
    if freed < need:
        over = found.total_bytes + incoming > max_bytes
        summary = (
            f"disk full: captures over export.max_disk_mb {max_disk_mb:g}"
            if over
            else f"disk full: less than export.min_free_mb {min_free_mb:g} free"
        )
        raise DiskFullError(_full_reason(found, free, incoming, max_disk_mb, min_free_mb, freed), summary=summary)
    why = (
        f"captures {mb(found.total_bytes + incoming)} > max_disk_mb {max_disk_mb:g}"
        if over_quota > 0
        else f"{mb(free or 0)} free < min_free_mb {min_free_mb:g}"
    )
    return chosen, why


def _full_reason(found: Scan, free: int | None, incoming: int, max_disk_mb: float, min_free_mb: float, deletable: int) -> str:
    max_bytes = int(float(max_disk_mb) * 2**20)
    min_free = int(float(min_free_mb) * 2**20)
    parts = []
    if incoming:
        parts.append(f"need {mb(incoming)} for the new file(s)")
    if found.total_bytes + incoming > max_bytes:
        parts.append(f"captures use {mb(found.total_bytes)} of max_disk_mb {max_disk_mb:g}")
    if free is not None and free - incoming < int(min_free):
        parts.append(f"{mb(free)} free, min_free_mb {min_free_mb:g}")
    parts.append("deleting every older capture would not make room" if deletable else "nothing left to delete")
    return "disk full: " + "; ".join(parts)


def delete_capture(cap: Capture, why: str, reason: str) -> None:
    """Delete the files of one capture chosen by `plan` (`why`), logging it; `reason`: what asked for room."""
    removed = 0
    for path in cap.files:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    log.info(
        "retention (%s): deleted %s%s [%s, %s; %s]",
        reason,
        cap.key,
        f" ({removed} files)" if removed > 1 else "",
        cap.kind,
        "oldest auto-save" if cap.kind in AUTO_KINDS else "oldest capture, no auto-save left",
        why,
    )


def remove_empty_days(base: Path) -> None:
    for day in day_dirs(base):
        try:
            day.rmdir()  # only succeeds when empty
            log.info("retention: removed empty folder %s", day)
        except OSError:
            pass
