"""Saving images: the Exporter names, encodes and stores every capture, with its sidecar metadata.

Every capture is written as `<base_dir>/YYYY-MM-DD/YYYYMMDD-HHMMSS.mmm_f<frame_id>_<kind>.<ext>`,
named after the wall-clock time of its (newest) frame in the daemon's local
time zone (the TZ of the service, usually the Pi's /etc/localtime), plus an
optional `<same name>.json` sidecar with the frame metadata and how the image
was made. Kinds: `save` (one frame on request), `stack` (pastStack, stack),
`auto` and `autostack` (the auto-saver), `detect` (an annotated frame from
`detect save`), `autodetect` (the annotated frame of a `detect.person`) and
`clip` (a video from the ring, `.mp4` or `.avi`, written by
storage/clips.py through `save_files`). Files appear under their final name
only when complete (`atomicfile.write_atomic`), written meanwhile in
`<base_dir>/.picamd-tmp/`, where a pull never looks (scp of a day folder) or
is told not to (`rsync --exclude '.*'`): rsync and scp never copy half an image.

Names come from the wall clock, which a Pi without a real-time clock steps
when the network time arrives. A step never costs a capture: a name taken
already gets `-2`, `-3`, ... instead of replacing a file (`layout.unique_stem`).

Before a capture is written, retention (storage/retention.py) makes room for
it under `max_disk_mb` and `min_free_mb`. A save that cannot get room fails
with `disk full: ...`, degrades the status and publishes `disk.full` once;
the next save that succeeds recovers. Every failed save counts
(`failed_saves` in `health`) and degrades `export` with its reason
(storage/errors.py) until a save succeeds; errors are logged through a
`RepeatedLog` keyed by their summary.

A capture's files appear together (`atomicfile.write_group`), the sidecar
last; the folder's lock and the cleaning of what a kill left are in
storage/lock.py, the stacks and their shared memory budget in
storage/stacker.py and storage/budget.py, the commands in
storage/commands.py. The names those modules export that callers use are
re-exported here.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from daemon.capture.ring import FrameMeta, LatestSlot, Ring
from daemon.commands import Registry
from daemon.config import Section
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.storage import retention
from daemon.storage.atomicfile import write_group
from daemon.storage.budget import StackBudget
from daemon.storage.commands import ExportCommands
from daemon.storage.errors import (
    BusyError,
    DiskFullError,
    ExportCancelled,
    ExportError,
    FormatError,
    NoFrameError,
    StorageError,
    TooLargeError,
    classify,
    os_reason,
)
from daemon.storage.layout import (
    AUTO_KINDS,
    CAPTURE_NAME,
    DAY_DIR,
    FORMATS,
    KINDS,
    LOCK_NAME,
    TEMP_DIR,
    capture_stamp,
    check_kind,
    day_dirs,
    entries,
    free_bytes,
    normalize_formats,
    on_disk_bytes,
    pending_stems,
    stamp_iso,
    unique_stem,
)
from daemon.storage.lock import FolderLock, clean_interrupted
from daemon.storage.retention import deletion_order
from daemon.storage.stacker import MAX_STACK, Stacker, StackPlan, describe

__all__ = [  # what callers import from here, wherever it is defined
    "AUTO_KINDS",
    "FORMATS",
    "KINDS",
    "LOCK_NAME",
    "MAX_STACK",
    "TEMP_DIR",
    "BusyError",
    "DiskFullError",
    "ExportCancelled",
    "ExportError",
    "Exporter",
    "FormatError",
    "NoFrameError",
    "StackBudget",
    "StorageError",
    "TooLargeError",
    "capture_stamp",
    "deletion_order",
    "normalize_formats",
]

log = logging.getLogger("picamd.export")

_HEALTH_SCAN_MAX_AGE_S = 30.0


def _local_iso(ts: float) -> str:
    # rounded like the file name, so both show the same millisecond
    return datetime.fromtimestamp(round(ts, 3)).astimezone().isoformat(timespec="milliseconds")


_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")


def _sidecar_json(doc: dict[str, Any]) -> bytes:
    """Indented JSON with lists of numbers (frame ids, sizes) kept on one line."""
    text = json.dumps(doc, indent=2, default=str)
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    return (text + "\n").encode()


#: One file of a capture and what fills it (write_group's item): its bytes, or a writer of its temp file.
_Item = tuple[Path, bytes | Callable[[str], None]]


def _mover(src: Path) -> Callable[[str], None]:
    """What write_atomic calls to fill its temp file with a file finished elsewhere (a clip): a rename, no copy."""
    return lambda tmp: os.replace(src, tmp)


@dataclass
class _Encoded:
    ext: str
    data: bytes | Callable[[str], None]
    size: int


class Exporter:
    """Names, encodes and stores captures in the captures folder; see the module docstring."""

    def __init__(self, cfg: Section, ring: Ring, latest: LatestSlot, bus: EventBus, status: ComponentStatus) -> None:
        self._cfg = cfg
        self._ring = ring
        self._latest = latest
        self._bus = bus
        self._status = status
        self._write_lock = threading.Lock()  # one writer at a time: names, room-making and retention agree
        self._stats_lock = threading.Lock()
        self._closing = threading.Event()
        self._disk_full_announced = False
        self._scan_cache: retention.Scan | None = None
        self._saves = 0
        self._failed = 0
        self._deleted = 0
        self._last_save: dict[str, Any] | None = None
        self._budget = StackBudget(lambda: int(float(cfg.stack_memory_mb) * 2**20))
        self._stacker = Stacker(cfg, ring, latest, self._budget, self._closing, self._write, lambda: self.base_dir)
        self._lock = FolderLock()  # on <base_dir>/.picamd.lock

    # -- lifecycle
    def start(self) -> None:
        """Create the captures folder, take its lock and, holding it, clear what a crash left; apply retention.

        Never raises."""
        self._closing.clear()
        base = self.base_dir
        try:
            base.mkdir(parents=True, exist_ok=True)
            if self._lock.take(base):
                clean_interrupted(base)
            with self._write_lock:
                self._enforce_retention(protect=set(), incoming=0, reason="start")
            log.info("captures in %s (keep under %g MB, at least %g MB free)", base.resolve(), self._cfg.max_disk_mb, self._cfg.min_free_mb)
        except DiskFullError as exc:
            self._failed_write(exc, count=False)
        except OSError as exc:
            why = os_reason(exc, base)
            self._failed_write(
                StorageError(f"disk error: cannot use the captures folder: {why}", summary=f"disk error: {why}"), count=False
            )

    def stop(self) -> None:
        """Abandon stacks waiting for frames (they raise ExportCancelled) and release the folder's lock."""
        self._closing.set()
        self._stacker.stop()
        got = self._write_lock.acquire(timeout=1.0)  # a save in progress finishes first, if it is quick
        try:
            self._lock.release()
        finally:
            if got:
                self._write_lock.release()

    @property
    def base_dir(self) -> Path:
        return Path(os.path.expanduser(str(self._cfg.base_dir)))

    def newest_meta(self) -> FrameMeta | None:
        got = self._latest.get()
        return None if got is None else got[1]

    # -- captures
    def save(self, formats: list[str] | None = None, kind: str = "save") -> list[Path]:
        """Save the newest full-resolution frame. Returns the image paths (the sidecar shares their name)."""
        paths, _ = self.save_info(formats, kind)
        return paths

    def save_info(self, formats: list[str] | None = None, kind: str = "save") -> tuple[list[Path], dict[str, Any]]:
        """Like save(), also returning how the image was made (the sidecar's `capture` part)."""
        fmts = self._formats(formats)
        check_kind(kind)
        got = self._latest.get()
        if got is None:
            raise NoFrameError("no frame yet")
        frame, meta = got
        how = describe(kind, "single", [meta], frame, source="full")
        return self._write(frame, meta, kind, fmts, how), how

    def save_image(
        self,
        image: np.ndarray,
        meta: FrameMeta,
        kind: str,
        how: dict[str, Any],
        formats: list[str] | None = None,
        *,
        sidecar: bool | None = None,
    ) -> list[Path]:
        """Write an image made elsewhere (an annotated frame, say) as a capture of `meta`'s frame: same names,
        atomic writes, retention and sidecar as save(); `how` becomes the sidecar's `capture` part and must
        hold at least `kind`, `method` and `frames`. `sidecar` overrides export.sidecar for this capture."""
        fmts = self._formats(formats)
        check_kind(kind)
        missing = [k for k in ("kind", "method", "frames") if k not in how]
        if missing:
            raise ExportError(f"capture description lacks {', '.join(missing)}")
        return self._write(image, meta, kind, fmts, how, sidecar=sidecar)

    def save_files(self, frame_id: int, ts: float, kind: str, files: list[tuple[str, bytes | Path]], frames: int = 1) -> list[Path]:
        """Write a capture made elsewhere (a clip: its video and its sidecar) under the name of frame `frame_id` at
        `ts`, with the same names, atomic writes, retention and accounting as save(). Each item is (extension,
        bytes) or (extension, a finished temp file in `<base_dir>/.picamd-tmp`, which is moved into place). Returns
        the paths in the order given."""
        check_kind(kind)
        sizes = [len(data) if isinstance(data, bytes) else data.stat().st_size for _, data in files]
        day, stamp = capture_stamp(ts)
        meta = FrameMeta(frame_id, ts, time.monotonic())

        def group(day_dir: Path, stem: str) -> tuple[list[Path], list[_Item], list[int]]:
            paths = [day_dir / f"{stem}.{ext}" for ext, _ in files]
            # A temp file to move in already takes its room on the disk: the free-space check counts it twice, erring safe.
            return (
                paths,
                [(path, data if isinstance(data, bytes) else _mover(data)) for (_, data), path in zip(files, paths, strict=True)],
                sizes,
            )

        paths = self._save_group(day, f"{stamp}_f{frame_id}_{kind}", kind, meta, group)
        log.info("saved %s (%s)", ", ".join(str(p) for p in paths), kind)
        self._bus.publish("export.saved", capture_kind=kind, paths=[str(p) for p in paths], frame_id=frame_id, frames=frames)
        return paths

    def past_stack(self, formats: list[str] | None = None) -> list[Path]:
        """Stack the ring frames of the last save_before_s seconds (by timestamp), at most stack_count."""
        paths, _ = self.past_stack_info(formats)
        return paths

    def past_stack_info(self, formats: list[str] | None = None) -> tuple[list[Path], dict[str, Any]]:
        return self._stacker.past_stack(self._formats(formats))

    def stack_next(
        self,
        n: int,
        formats: list[str] | None = None,
        kind: str = "stack",
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Path]:
        """Stack the next `n` full-resolution frames as they arrive.

        `timeout` is the longest wait for each next frame (default: 15 s, or more
        for long night exposures). If the camera stops delivering after some
        frames, what arrived is saved and the sidecar says so. `cancel` (or
        `stop()`) abandons the stack with ExportCancelled.
        """
        paths, _ = self.stack_next_info(n, formats, kind, timeout, cancel)
        return paths

    def stack_next_info(
        self,
        n: int,
        formats: list[str] | None = None,
        kind: str = "stack",
        timeout: float | None = None,
        cancel: threading.Event | None = None,
        *,
        wanted: Callable[[], bool] | None = None,
        who: str = "",
    ) -> tuple[list[Path], dict[str, Any]]:
        """Like stack_next(); `wanted` is asked every frame and every quarter second whether the result is still
        wanted (the client is still connected): when it says no, the stack is cancelled and nothing is written.
        Raises BusyError or TooLargeError when the stack's memory does not fit export.stack_memory_mb."""
        fmts = self._formats(formats)
        plan = self._stacker.plan(n, kind, f"{kind} {n}" + (f" for {who}" if who else ""))
        return self._stacker.run(plan, fmts, timeout, cancel, wanted)

    def _plan_stack(self, n: int, kind: str, what: str) -> StackPlan:
        """Check a stack of the next n frames and reserve its memory (see Stacker.plan)."""
        return self._stacker.plan(n, kind, what)

    def start_background_stack(self, n: int, formats: list[str] | None = None, who: str = "") -> dict[str, Any]:
        """Start stacking the next n frames on a thread of its own, to finish whatever the asker does.

        Checks and reserves at once (ExportError, BusyError, TooLargeError) and returns what will be written.
        One background stack at a time: another is refused with BusyError while one runs."""
        return self._stacker.start_background(n, self._formats(formats), who)

    # -- listing and health
    def list_files(self, date: str | None = None) -> list[dict[str, Any]]:
        """Without a date: one entry per day folder (date, files, captures, bytes).

        With 'YYYY-MM-DD': the files of that day (name, size, time, kind, frame_id). Bad dates raise ValueError.
        """
        base = self.base_dir
        pending = pending_stems(base)
        if date is None:
            days = []
            for day in day_dirs(base):
                files = captures = size = 0
                for entry in entries(day, pending):
                    files += 1
                    size += entry[1]
                    m = CAPTURE_NAME.match(entry[0].name)
                    if m and m["ext"] != "json":
                        captures += 1
                days.append({"date": day.name, "files": files, "images": captures, "bytes": size})
            return days
        if not isinstance(date, str) or not DAY_DIR.match(date):
            raise ValueError(f"bad date {str(date)[:20]!r} (use YYYY-MM-DD)")
        try:
            datetime.strptime(date, "%Y-%m-%d")
        except ValueError:
            raise ValueError(f"bad date {date!r} (no such day)") from None
        out = []
        for path, size, mtime in entries(base / date, pending):
            m = CAPTURE_NAME.match(path.name)
            item: dict[str, Any] = {"name": path.name, "path": f"{date}/{path.name}", "size": size}
            if m:
                item.update(time=stamp_iso(m["stamp"]), kind=m["kind"], frame_id=int(m["frame"]))
            else:
                item.update(time=datetime.fromtimestamp(mtime).isoformat(timespec="milliseconds"))
            out.append(item)
        return out

    def health(self) -> dict[str, Any]:
        scan = self._scan_cache
        if scan is None or time.monotonic() - scan.at > _HEALTH_SCAN_MAX_AGE_S:
            try:
                scan = self._scan(self.base_dir)  # read-only: no need to wait for a save in progress
            except OSError as exc:
                scan = None
                log.debug("health scan failed: %s", exc)
        free = free_bytes(self.base_dir)
        with self._stats_lock:
            last = dict(self._last_save) if self._last_save else None
            saves, failed, deleted = self._saves, self._failed, self._deleted
        snap = self._status.snapshot()
        return {
            "state": snap["state"],
            "base_dir": str(self.base_dir.resolve()),
            "files": scan.all_files if scan else None,
            "images": scan.image_files if scan else None,
            "bytes": scan.total_bytes if scan else None,
            "disk_free_mb": None if free is None else round(free / 2**20, 1),
            "max_disk_mb": self._cfg.max_disk_mb,
            "min_free_mb": self._cfg.min_free_mb,
            "disk_full": self._disk_full_announced,
            "last_save": last,
            "saves": saves,
            "failed_saves": failed,
            "deleted_by_retention": deleted,
            "errors": snap["errors"],
            "last_error": snap["last_error"],
            "folder_lock": self._lock.state,
            "stacks": self._stacker.health(),
        }

    def register_commands(self, registry: Registry) -> None:
        ExportCommands(self, self._cfg).register(registry)

    # -- internals
    def _formats(self, formats: list[str] | None) -> list[str]:
        return normalize_formats(list(formats) if formats else list(self._cfg.formats))

    # -- internals: writing
    def _encode(self, image: np.ndarray, fmts: list[str]) -> list[_Encoded]:
        out = []
        for fmt in fmts:
            if fmt == "npy":
                header = 128  # numpy's .npy header is padded to a multiple of 64 bytes; 128 covers any (H, W, C)
                out.append(_Encoded("npy", lambda tmp: np.save(tmp, image, allow_pickle=False), image.nbytes + header))
                continue
            params = [cv2.IMWRITE_JPEG_QUALITY, int(self._cfg.jpeg_quality)] if fmt == "jpg" else []
            try:
                ok, buf = cv2.imencode(f".{fmt}", image, params)
            except cv2.error as exc:
                raise ExportError(f"cannot encode {fmt}: {exc}") from None
            if not ok:
                raise ExportError(f"cannot encode {fmt} from an image of shape {image.shape}")
            out.append(_Encoded(fmt, buf.tobytes(), int(buf.size)))
        return out

    def _write(
        self, image: np.ndarray, meta: FrameMeta, kind: str, fmts: list[str], how: dict[str, Any], sidecar: bool | None = None
    ) -> list[Path]:
        try:
            encoded = self._encode(image, fmts)  # outside the lock: encoding a full frame takes a while on a Pi
        except ExportError as exc:
            self._failed_write(exc)
            raise
        day, stamp = capture_stamp(meta.ts)

        def group(day_dir: Path, stem: str) -> tuple[list[Path], list[_Item], list[int]]:
            images = [day_dir / f"{stem}.{e.ext}" for e in encoded]
            items: list[_Item] = [(path, e.data) for path, e in zip(images, encoded, strict=True)]
            if self._cfg.sidecar if sidecar is None else sidecar:
                # last: once the sidecar is there, so is every image of the capture
                items.append((day_dir / f"{stem}.json", self._sidecar(meta, how, images, image, fmts)))
            sizes = [e.size for e in encoded] + [len(data) for _, data in items[len(encoded) :] if isinstance(data, bytes)]
            return images, items, sizes

        images = self._save_group(day, f"{stamp}_f{meta.frame_id}_{kind}", kind, meta, group)
        log.info(
            "saved %s (%s)",
            ", ".join(str(p) for p in images),
            "frame" if how["method"] == "single" else f"{how['method']} of {how['frames']} frames",
        )
        self._bus.publish("export.saved", capture_kind=kind, paths=[str(p) for p in images], frame_id=meta.frame_id, frames=how["frames"])
        return images

    def _save_group(
        self, day: str, base_stem: str, kind: str, meta: FrameMeta, group: Callable[[Path, str], tuple[list[Path], list[_Item], list[int]]]
    ) -> list[Path]:
        """Store one capture under the write lock: `group(day folder, free stem)` gives the paths it stands for, the
        files to write and their sizes. A failure is counted and degrades (ExportError); returns the paths."""
        with self._write_lock:
            base = self.base_dir
            day_dir = base / day
            try:
                stem = unique_stem(day_dir, base_stem)
                paths, items, sizes = group(day_dir, stem)
                self._store(base, items, sizes)
            except Exception as exc:
                err = self._save_failed(exc, base)
                if err is exc:
                    raise
                raise err from exc
            self._after_save(paths, kind, meta, f"{day}/{stem}")
        return paths

    def _after_save(self, paths: list[Path], kind: str, meta: FrameMeta, capture: str) -> None:
        """A capture is stored (under the write lock): count it, then keep the limits, never deleting `capture` itself."""
        self._succeeded(paths, kind, meta)
        try:
            self._enforce_retention(protect={capture}, incoming=0, reason="after save")
        except DiskFullError as exc:
            # the save itself worked; the limits are still exceeded (something else fills the disk)
            self._failed_write(exc, count=False)
        except OSError as exc:
            self._status.error("retention failed", exc)

    def _sidecar(self, meta: FrameMeta, how: dict[str, Any], images: list[Path], image: np.ndarray, fmts: list[str]) -> bytes:
        doc = meta.to_dict()
        doc["time_local"] = _local_iso(meta.ts)
        capture = dict(how)
        capture["image_size"] = [int(image.shape[1]), int(image.shape[0])]
        capture["files"] = [p.name for p in images]
        if "jpg" in fmts:
            capture["jpeg_quality"] = int(self._cfg.jpeg_quality)
        capture["saved_at"] = round(time.time(), 3)
        doc["capture"] = capture
        return _sidecar_json(doc)

    def _store(self, base: Path, items: list[_Item], sizes: list[int]) -> None:
        """Make room for a capture and write its files so that they appear together. Called with the write lock held."""
        base.mkdir(parents=True, exist_ok=True)
        if self._lock.base != base:
            self._lock.take(base)  # export.base_dir changed since the start
        self._enforce_retention(protect=set(), incoming=on_disk_bytes(base, sizes), reason="save")
        write_group(items, tmp_dir=base / TEMP_DIR)

    def _save_failed(self, exc: Exception, base: Path) -> ExportError:
        """Count a failed save and degrade with its reason; returns the ExportError to raise (`exc` itself if it is one)."""
        cause: BaseException | None = None
        if isinstance(exc, ExportError):
            err = exc
        elif isinstance(exc, OSError):
            err = classify(exc, base, free_bytes(base))
        else:  # a bug, not the disk: the traceback goes to the debug log
            err = ExportError(f"save failed: {type(exc).__name__}: {exc}", summary=f"save failed: {type(exc).__name__}")
            cause = exc
        self._failed_write(err, exc=cause)
        return err

    def _failed_write(self, err: ExportError, count: bool = True, exc: BaseException | None = None) -> None:
        if count:
            with self._stats_lock:
                self._failed += 1
        self._status.error(str(err), exc, key=err.summary)
        self._status.degrade(err.summary if len(err.summary) <= 160 else err.summary[:157] + "...")
        if isinstance(err, DiskFullError) and not self._disk_full_announced:
            self._disk_full_announced = True
            free = free_bytes(self.base_dir)
            self._bus.publish(
                "disk.full", reason=str(err), base_dir=str(self.base_dir), free_mb=None if free is None else round(free / 2**20, 1)
            )

    def _succeeded(self, images: list[Path], kind: str, meta: FrameMeta) -> None:
        with self._stats_lock:
            self._saves += 1
            self._last_save = {"ts": round(time.time(), 3), "kind": kind, "frame_id": meta.frame_id, "paths": [str(p) for p in images]}
        self._disk_full_announced = False
        self._status.recover()

    # -- internals: retention
    def _scan(self, base: Path) -> retention.Scan:
        scan = retention.scan(base)
        self._scan_cache = scan
        return scan

    def _enforce_retention(self, protect: set[str], incoming: int, reason: str) -> None:
        """Delete the oldest captures (auto-saves first) until `incoming` more bytes fit the limits.

        Raises DiskFullError, deleting nothing, when even deleting every capture would not be enough.
        Called with the write lock held.
        """
        base = self.base_dir
        scan = self._scan(base)
        doomed, why = retention.plan(scan, free_bytes(base), incoming, self._cfg.max_disk_mb, self._cfg.min_free_mb, protect, time.time())
        if not doomed:
            return
        for cap in doomed:
            retention.delete_capture(cap, why, reason)
            with self._stats_lock:
                self._deleted += 1
        retention.remove_empty_days(base)
        self._scan(base)
