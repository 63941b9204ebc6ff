"""Saving images: file names, atomic writes, sidecar metadata, retention, a full disk.

Every capture is written as `<base_dir>/YYYY-MM-DD/YYYYMMDD-HHMMSS.mmm_f<frame_id>_<kind>.<ext>`,
named after the wall-clock time of its (newest) frame in the daemon's local
time zone (the TZ of the service, usually the Pi's /etc/localtime), plus an
optional `<same name>.json` sidecar with the frame metadata and how the image
was made. Kinds: `save` (one frame on request), `stack` (pastStack, stack),
`auto` and `autostack` (the auto-saver), `detect` (an annotated frame from
`detect save`). Files appear under their final name
only when complete (`atomicfile.write_atomic`), so rsync and scp never copy
half an image.

Retention keeps the captures folder under `max_disk_mb` and at least
`min_free_mb` free on its filesystem: the oldest auto-saves go first, other
captures only when that is not enough, and nothing is deleted if even deleting
everything would not reach the limits (captures are never destroyed in vain).
A save that cannot get room fails with `disk full: ...`, degrades the status
and publishes `disk.full` once; the next save that succeeds recovers.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from daemon.storage.atomicfile import write_atomic
from daemon.core.bus import EventBus
from daemon.commands import Command, Registry, Reply, Session
from daemon.config import Section
from daemon.capture.ring import FrameMeta, LatestSlot, Ring
from daemon.image.stacking import METHODS, MeanAccumulator, available_memory_bytes, stack
from daemon.core.status import ComponentStatus

log = logging.getLogger("picamd.export")

FORMATS = ("jpg", "png", "npy")
KINDS = ("save", "stack", "auto", "autostack", "detect")
AUTO_KINDS = ("auto", "autostack")
MAX_STACK = 1000

_CAPTURE_NAME = re.compile(
    r"^(?P<stamp>\d{8}-\d{6}\.\d{3})_f(?P<frame>-?\d+)_(?P<kind>save|stack|autostack|auto|detect)(?:-(?P<dup>\d+))?"
    r"\.(?P<ext>jpg|png|npy|json)$"
)
_DAY_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TEMP_NAME = re.compile(r"^\..+\.tmp\.(jpg|png|npy|json)$")
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_STALE_TEMP_S = 600.0  # a temp file this old is left over from a crash or power cut
_HEALTH_SCAN_MAX_AGE_S = 30.0
_WAIT_SLICE_S = 0.25  # how often a waiting stack looks at its cancel events


class ExportError(Exception):
    """A save failed; the message is the reason a user reads after `ERR `."""


class FormatError(ExportError, ValueError):
    pass


class NoFrameError(ExportError):
    pass


class DiskFullError(ExportError):
    pass


class StorageError(ExportError):
    """Writing failed for another reason than space (read-only or failing SD card, permissions)."""


class ExportCancelled(ExportError):
    pass


def normalize_formats(formats: list[str] | tuple[str, ...]) -> list[str]:
    """Lower-case, 'jpeg' -> 'jpg', duplicates dropped; unknown formats raise FormatError naming them."""
    out: list[str] = []
    for item in formats:
        f = str(item).strip().lower().lstrip(".")
        f = "jpg" if f == "jpeg" else f
        if f not in FORMATS:
            raise FormatError(f"unknown format {str(item)[:20]!r} (use {', '.join(FORMATS)})")
        if f not in out:
            out.append(f)
    if not out:
        raise FormatError(f"no format given (use {', '.join(FORMATS)})")
    return out


def capture_stamp(ts: float) -> tuple[str, str]:
    """('YYYY-MM-DD', 'YYYYMMDD-HHMMSS.mmm') of a wall-clock time, in local time."""
    whole, millis = divmod(round(ts * 1000), 1000)  # rounded: 0.123 stored as 0.12299999 still names .123
    lt = time.localtime(whole)
    return time.strftime("%Y-%m-%d", lt), time.strftime("%Y%m%d-%H%M%S", lt) + f".{millis:03d}"


def _local_iso(ts: float) -> str:
    # rounded like the file name, so both show the same millisecond
    return datetime.fromtimestamp(round(ts, 3)).astimezone().isoformat(timespec="milliseconds")


_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")


def _sidecar_json(doc: dict[str, Any]) -> bytes:
    """Indented JSON with lists of numbers (frame ids, sizes) kept on one line."""
    text = json.dumps(doc, indent=2, default=str)
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    return (text + "\n").encode()


def _stamp_iso(stamp: str) -> str:
    # '20250101-120000.123' -> '2025-01-01T12:00:00.123' (local time, as in the name)
    return f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:]}"


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


@dataclass
class _Capture:
    """One capture on disk: its images and sidecar, deleted together by retention."""

    key: str  # day/stem
    stamp: str
    kind: str
    dup: int  # 1, or N of a '-N' name: the same frame saved again later
    files: list[Path] = field(default_factory=list)
    size: int = 0


@dataclass
class _Scan:
    captures: list[_Capture]
    total_bytes: int
    image_files: int
    all_files: int
    at: float  # monotonic time of the scan


@dataclass
class _Encoded:
    ext: str
    data: bytes | Callable[[str], None]
    size: int


class Exporter:
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
        self._scan_cache: _Scan | None = None
        self._saves = 0
        self._failed = 0
        self._deleted = 0
        self._last_save: dict[str, Any] | None = None

    # -- lifecycle
    def start(self) -> None:
        """Create the captures folder, clear temp files left by a crash, apply retention. Never raises."""
        self._closing.clear()
        base = self.base_dir
        try:
            base.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temps(base)
            with self._write_lock:
                self._enforce_retention(protect=set(), incoming=0, reason="start")
            log.info("captures in %s (keep under %g MB, at least %g MB free)", base.resolve(),
                     self._cfg.max_disk_mb, self._cfg.min_free_mb)
        except DiskFullError as exc:
            self._failed_write(exc, count=False)
        except OSError as exc:
            self._failed_write(StorageError(f"disk error: cannot use {base}: {exc.strerror or exc}"), count=False)

    def stop(self) -> None:
        """Abandon stacks waiting for frames (they raise ExportCancelled)."""
        self._closing.set()

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
        self._check_kind(kind)
        got = self._latest.get()
        if got is None:
            raise NoFrameError("no frame yet")
        frame, meta = got
        how = self._describe(kind, "single", [meta], frame, source="full")
        return self._write(frame, meta, kind, fmts, how), how

    def save_image(self, image: np.ndarray, meta: FrameMeta, kind: str, how: dict[str, Any],
                   formats: list[str] | None = None, *, sidecar: bool | None = None) -> list[Path]:
        """Write an image made elsewhere (an annotated frame, say) as a capture of `meta`'s frame: same names,
        atomic writes, retention and sidecar as save(); `how` becomes the sidecar's `capture` part and must
        hold at least `kind`, `method` and `frames`. `sidecar` overrides export.sidecar for this capture."""
        fmts = self._formats(formats)
        self._check_kind(kind)
        missing = [k for k in ("kind", "method", "frames") if k not in how]
        if missing:
            raise ExportError(f"capture description lacks {', '.join(missing)}")
        return self._write(image, meta, kind, fmts, how, sidecar=sidecar)

    def past_stack(self, formats: list[str] | None = None) -> list[Path]:
        """Stack the ring frames of the last save_before_s seconds (by timestamp), at most stack_count."""
        paths, _ = self.past_stack_info(formats)
        return paths

    def past_stack_info(self, formats: list[str] | None = None) -> tuple[list[Path], dict[str, Any]]:
        fmts = self._formats(formats)
        method, sigma = self._method()
        frames, metas = self._ring.last_seconds(float(self._cfg.save_before_s), limit=int(self._cfg.stack_count))
        if not metas:
            raise NoFrameError("no frame yet")
        if method == "sigma_clip" and len(metas) < 3:
            method = "mean"  # too few samples to call any of them an outlier
        image = stack(frames, method, sigma)
        how = self._describe("stack", method, metas, frames[0], source="ring", sigma=sigma)
        how["window_s"] = float(self._cfg.save_before_s)
        return self._write(image, metas[-1], "stack", fmts, how), how

    def stack_next(self, n: int, formats: list[str] | None = None, kind: str = "stack",
                   timeout: float | None = None, cancel: threading.Event | None = None) -> list[Path]:
        """Stack the next `n` full-resolution frames as they arrive.

        `timeout` is the longest wait for each next frame (default: 15 s, or more
        for long night exposures). If the camera stops delivering after some
        frames, what arrived is saved and the sidecar says so. `cancel` (or
        `stop()`) abandons the stack with ExportCancelled.
        """
        paths, _ = self.stack_next_info(n, formats, kind, timeout, cancel)
        return paths

    def stack_next_info(self, n: int, formats: list[str] | None = None, kind: str = "stack",
                        timeout: float | None = None, cancel: threading.Event | None = None
                        ) -> tuple[list[Path], dict[str, Any]]:
        fmts = self._formats(formats)
        self._check_kind(kind)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_STACK:
            raise ExportError(f"frame count must be 1..{MAX_STACK}, not {n!r}")
        n = int(n)
        method, sigma = self._method()
        current = self._latest.get()
        if current is None:
            raise NoFrameError("no frame yet")
        after, last_meta = current[1].frame_id, current[1]
        interval = self._recent_frame_interval()
        acc: MeanAccumulator | None = None
        held: np.ndarray | None = None  # the frames themselves, for sigma clipping
        metas: list[FrameMeta] = []
        first_frame: np.ndarray | None = None
        notes: list[str] = []
        while len(metas) < n:
            wait_s = timeout if timeout is not None else self._frame_wait(last_meta, interval)
            got = self._wait_frame(after, wait_s, cancel)
            if got is None:
                if not metas:
                    raise NoFrameError(f"no new frame within {wait_s:g} s")
                notes.append(f"the camera delivered only {len(metas)} of {n} frames (no frame for {wait_s:g} s)")
                break
            frame, meta = got
            if meta.frame_id == last_meta.frame_id + 1:  # consecutive frames: their gap is the frame interval
                interval = max(interval, meta.mono - last_meta.mono)
            after, last_meta = meta.frame_id, meta
            if first_frame is None:
                first_frame = frame
                if method == "sigma_clip":
                    needed = n * frame.nbytes
                    avail = available_memory_bytes()
                    if avail is not None and needed > avail // 2:
                        notes.append(f"sigma_clip of {n} frames needs {_mb(needed)} and only {_mb(avail)} is "
                                     f"available; stacked with mean instead")
                        method = "mean"
                if method == "sigma_clip":
                    held = np.empty((n, *frame.shape), dtype=np.uint8)
                else:
                    acc = MeanAccumulator(frame.shape)
            elif frame.shape != first_frame.shape:
                notes.append(f"the frame size changed from {first_frame.shape[1]}x{first_frame.shape[0]} to "
                             f"{frame.shape[1]}x{frame.shape[0]} after {len(metas)} frames; stacked those")
                break
            if held is not None:
                held[len(metas)] = frame
            elif acc is not None:
                acc.add(frame)
            metas.append(meta)
        if first_frame is None:  # not reached: the loop ends with a frame or raises
            raise NoFrameError("no new frame")
        if held is not None:
            if len(metas) < 3:
                method = "mean"  # too few samples to call any of them an outlier
            image = stack(held[: len(metas)], method, sigma)
        elif acc is not None:
            image = acc.result()
        else:  # not reached: the first frame sets up one of the two
            raise ExportError("nothing was stacked")
        for note in notes:
            log.warning("stack: %s", note)
        how = self._describe(kind, method, metas, first_frame, source="full", sigma=sigma)
        if len(metas) < n:
            how["requested"] = n
        if notes:
            how["note"] = "; ".join(notes)
        return self._write(image, metas[-1], kind, fmts, how), how

    # -- listing and health
    def list_files(self, date: str | None = None) -> list[dict[str, Any]]:
        """Without a date: one entry per day folder (date, files, captures, bytes).

        With 'YYYY-MM-DD': the files of that day (name, size, time, kind, frame_id). Bad dates raise ValueError.
        """
        base = self.base_dir
        if date is None:
            days = []
            for day in self._day_dirs(base):
                files = captures = size = 0
                for entry in self._entries(day):
                    files += 1
                    size += entry[1]
                    m = _CAPTURE_NAME.match(entry[0].name)
                    if m and m["ext"] != "json":
                        captures += 1
                days.append({"date": day.name, "files": files, "images": captures, "bytes": size})
            return days
        if not isinstance(date, str) or not _DAY_DIR.match(date):
            raise ValueError(f"bad date {str(date)[:20]!r} (use YYYY-MM-DD)")
        try:
            datetime.strptime(date, "%Y-%m-%d")
        except ValueError:
            raise ValueError(f"bad date {date!r} (no such day)") from None
        out = []
        for path, size, mtime in self._entries(base / date):
            m = _CAPTURE_NAME.match(path.name)
            item: dict[str, Any] = {"name": path.name, "path": f"{date}/{path.name}", "size": size}
            if m:
                item.update(time=_stamp_iso(m["stamp"]), kind=m["kind"], frame_id=int(m["frame"]))
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
        free = self._free_bytes(self.base_dir)
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
        }

    # -- commands
    def register_commands(self, registry: Registry) -> None:
        registry.register(Command("save", self._cmd_save, "Save the newest full-resolution frame now",
                                  usage="[jpg|png|npy ...]", mutating=True, max_args=None))
        registry.register(Command("pastStack", self._cmd_past_stack,
                                  "Stack the ring frames of the last export.save_before_s seconds into one image",
                                  usage="[jpg|png|npy ...]", mutating=True, max_args=None))
        registry.register(Command("stack", self._cmd_stack,
                                  f"Stack the next N full-resolution frames (default export.stack_count, 1..{MAX_STACK})",
                                  usage="[N] [jpg|png|npy ...]", mutating=True, max_args=None))
        registry.register(Command("list", self._cmd_list,
                                  "Saved files: the days with counts, or the files of one day",
                                  usage="[YYYY-MM-DD]", max_args=1))

    def _reply(self, paths: list[Path], how: dict[str, Any]) -> Reply:
        if how["method"] == "single":
            detail = f"frame {how['last_frame_id']}"
        else:
            detail = f"{how['method']} of {how['frames']} frames (f{how['first_frame_id']}..f{how['last_frame_id']})"
            if how.get("requested"):
                detail += f", {how['requested']} requested"
        return Reply(True, f"saved {len(paths)} file(s): {detail}", body=[str(p) for p in paths])

    def _cmd_save(self, args: list[str], session: Session) -> Reply:
        try:
            return self._reply(*self.save_info(args or None))
        except ExportError as exc:
            return Reply.error(str(exc))

    def _cmd_past_stack(self, args: list[str], session: Session) -> Reply:
        try:
            return self._reply(*self.past_stack_info(args or None))
        except ExportError as exc:
            return Reply.error(str(exc))

    def _cmd_stack(self, args: list[str], session: Session) -> Reply:
        n = int(self._cfg.stack_count)
        if args and re.fullmatch(r"[+-]?\d+", args[0]):
            n = int(args[0])
            args = args[1:]
            if not 1 <= n <= MAX_STACK:
                return Reply.error(f"N must be 1..{MAX_STACK}, not {n}")
        try:
            fmts = self._formats(args or None)  # refuse bad formats before waiting for frames
            return self._reply(*self.stack_next_info(n, fmts))
        except ExportError as exc:
            return Reply.error(str(exc))

    def _cmd_list(self, args: list[str], session: Session) -> Reply:
        date = args[0] if args else None
        try:
            items = self.list_files(date)
        except ValueError as exc:
            return Reply.error(str(exc))
        if date is None:
            return Reply(True, f"{len(items)} day(s)", body=items)
        return Reply(True, f"{len(items)} file(s) on {date}", body=items)

    # -- internals: inputs
    def _formats(self, formats: list[str] | None) -> list[str]:
        return normalize_formats(list(formats) if formats else list(self._cfg.formats))

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise ExportError(f"unknown capture kind {kind!r} (use {', '.join(KINDS)})")

    def _method(self) -> tuple[str, float]:
        method = str(self._cfg.stack_method)
        if method not in METHODS:
            raise ExportError(f"unknown stacking method {method!r}")
        return method, float(self._cfg.stack_sigma)

    def _recent_frame_interval(self) -> float:
        """Mean time between the newest ring frames (0 when unknown)."""
        metas = self._ring.metas()[-8:]
        if len(metas) < 2:
            return 0.0
        return max(0.0, (metas[-1].mono - metas[0].mono) / (len(metas) - 1))

    @staticmethod
    def _frame_wait(meta: FrameMeta | None, interval: float) -> float:
        # long night exposures and slow frame rates (down to one frame in 20 s) need longer waits
        exposure_s = (meta.exposure_us or 0) / 1e6 if meta else 0.0
        return max(15.0, 3.0 * exposure_s + 5.0, 3.0 * interval + 5.0)

    def _wait_frame(self, after_id: int, wait_s: float, cancel: threading.Event | None
                    ) -> tuple[np.ndarray, FrameMeta] | None:
        deadline = time.monotonic() + wait_s
        while True:
            if self._closing.is_set() or (cancel is not None and cancel.is_set()):
                raise ExportCancelled("stack abandoned: the daemon is stopping")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            got = self._latest.wait_newer(after_id, min(_WAIT_SLICE_S, left))
            if got is not None:
                return got

    @staticmethod
    def _describe(kind: str, method: str, metas: list[FrameMeta], frame: np.ndarray, *, source: str,
                  sigma: float | None = None) -> dict[str, Any]:
        first, last = metas[0], metas[-1]
        how: dict[str, Any] = {
            "kind": kind,
            "method": method,
            "frames": len(metas),
            "first_frame_id": first.frame_id,
            "last_frame_id": last.frame_id,
            "first_ts": round(first.ts, 6),
            "last_ts": round(last.ts, 6),
            "source": source,  # full: camera frames; ring: the downscaled ring copies
            "source_size": [int(frame.shape[1]), int(frame.shape[0])],
        }
        if method == "sigma_clip":
            how["sigma"] = sigma
        if len(metas) > 1:
            how["frame_ids"] = [m.frame_id for m in metas]  # a live stack may skip frames the camera sent meanwhile
        exposures = [m.exposure_us for m in metas if m.exposure_us is not None]
        if len(metas) > 1 and len(exposures) == len(metas):
            how["total_exposure_us"] = int(sum(exposures))
        return how

    # -- internals: writing
    def _encode(self, image: np.ndarray, fmts: list[str]) -> list[_Encoded]:
        out = []
        for fmt in fmts:
            if fmt == "npy":
                header = 128  # numpy's .npy header is padded to a multiple of 64 bytes; 128 covers any (H, W, C)
                out.append(_Encoded("npy", lambda tmp: np.save(tmp, image, allow_pickle=False),
                                    image.nbytes + header))
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

    def _write(self, image: np.ndarray, meta: FrameMeta, kind: str, fmts: list[str], how: dict[str, Any],
               sidecar: bool | None = None) -> list[Path]:
        encoded = self._encode(image, fmts)  # outside the lock: encoding a full frame takes a while on a Pi
        day, stamp = capture_stamp(meta.ts)
        base_stem = f"{stamp}_f{meta.frame_id}_{kind}"
        with self._write_lock:
            base = self.base_dir
            day_dir = base / day
            stem = self._unique_stem(day_dir, base_stem)
            images = [day_dir / f"{stem}.{e.ext}" for e in encoded]
            sidecar_data = None
            if self._cfg.sidecar if sidecar is None else sidecar:
                sidecar_data = self._sidecar(meta, how, images, image, fmts)
            sizes = [e.size for e in encoded] + ([len(sidecar_data)] if sidecar_data is not None else [])
            written: list[Path] = []
            target = base
            try:
                base.mkdir(parents=True, exist_ok=True)
                self._enforce_retention(protect=set(), incoming=self._on_disk_bytes(base, sizes), reason="save")
                for enc, target in zip(encoded, images):
                    write_atomic(target, enc.data)
                    written.append(target)
                if sidecar_data is not None:
                    target = day_dir / f"{stem}.json"
                    write_atomic(target, sidecar_data)
                    written.append(target)
            except DiskFullError as exc:
                self._failed_write(exc)
                raise
            except OSError as exc:
                self._undo(written)
                err = self._classify(exc, target)
                self._failed_write(err)
                raise err from exc
            except Exception:
                self._undo(written)
                raise
            self._succeeded(images, kind, meta)
            try:
                self._enforce_retention(protect={f"{day}/{stem}"}, incoming=0, reason="after save")
            except DiskFullError as exc:
                # the save itself worked; the limits are still exceeded (something else fills the disk)
                self._failed_write(exc, count=False)
            except OSError as exc:
                self._status.error("retention failed", exc)
        log.info("saved %s (%s)", ", ".join(str(p) for p in images),
                 "frame" if how["method"] == "single" else f"{how['method']} of {how['frames']} frames")
        self._bus.publish("export.saved", capture_kind=kind, paths=[str(p) for p in images], frame_id=meta.frame_id,
                          frames=how["frames"])
        return images

    @staticmethod
    def _unique_stem(day_dir: Path, stem: str) -> str:
        # The same frame saved again (two quick `save`s) gets '-2', '-3', ... after the highest one there,
        # instead of replacing the first; names then still sort in the order the captures were made.
        taken = []
        try:
            with os.scandir(day_dir) as it:
                for entry in it:
                    name = entry.name.rpartition(".")[0]
                    if name == stem:
                        taken.append(1)
                    elif name.startswith(stem + "-") and name[len(stem) + 1:].isdigit():
                        taken.append(int(name[len(stem) + 1:]))
        except FileNotFoundError:
            pass
        return stem if not taken else f"{stem}-{max(taken) + 1}"

    def _sidecar(self, meta: FrameMeta, how: dict[str, Any], images: list[Path], image: np.ndarray,
                 fmts: list[str]) -> bytes:
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

    @staticmethod
    def _undo(written: list[Path]) -> None:
        # a capture is all or nothing: no image without its siblings and sidecar
        for path in written:
            try:
                path.unlink()
            except OSError:
                pass

    def _classify(self, exc: OSError, target: Path) -> ExportError:
        reason = exc.strerror or str(exc)
        if exc.errno in _DISK_FULL_ERRNOS:
            free = self._free_bytes(target)
            shown = "" if free is None else f", {_mb(free)} free"
            return DiskFullError(f"disk full: {reason} while writing {target}{shown}")
        return StorageError(f"disk error: {reason} while writing {target}")

    def _failed_write(self, err: ExportError, count: bool = True) -> None:
        if count:
            with self._stats_lock:
                self._failed += 1
        self._status.error(str(err))
        self._status.degrade(str(err) if len(str(err)) <= 160 else str(err)[:157] + "...")
        if isinstance(err, DiskFullError) and not self._disk_full_announced:
            self._disk_full_announced = True
            free = self._free_bytes(self.base_dir)
            self._bus.publish("disk.full", reason=str(err), base_dir=str(self.base_dir),
                              free_mb=None if free is None else round(free / 2**20, 1))

    def _succeeded(self, images: list[Path], kind: str, meta: FrameMeta) -> None:
        with self._stats_lock:
            self._saves += 1
            self._last_save = {"ts": round(time.time(), 3), "kind": kind, "frame_id": meta.frame_id,
                               "paths": [str(p) for p in images]}
        self._disk_full_announced = False
        self._status.recover()

    # -- internals: disk
    @staticmethod
    def _free_bytes(path: Path) -> int | None:
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            st = os.statvfs(probe)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    @staticmethod
    def _on_disk_bytes(base: Path, sizes: list[int]) -> int:
        # files take whole blocks: count what the filesystem will really use
        try:
            block = os.statvfs(base).f_frsize or 4096
        except OSError:
            block = 4096
        return sum(-(-s // block) * block for s in sizes)

    @staticmethod
    def _day_dirs(base: Path) -> list[Path]:
        try:
            with os.scandir(base) as it:
                days = [Path(e.path) for e in it if e.is_dir(follow_symlinks=False) and _DAY_DIR.match(e.name)]
        except FileNotFoundError:
            return []
        return sorted(days)

    @staticmethod
    def _entries(day: Path) -> list[tuple[Path, int, float]]:
        """Final files of a day folder (hidden temp files left out), sorted by name."""
        out = []
        try:
            with os.scandir(day) as it:
                for e in it:
                    if e.name.startswith(".") or not e.is_file(follow_symlinks=False):
                        continue
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    out.append((Path(e.path), st.st_size, st.st_mtime))
        except FileNotFoundError:
            return []
        return sorted(out)

    def _scan(self, base: Path) -> _Scan:
        captures: dict[str, _Capture] = {}
        total = images = files = 0
        for day in self._day_dirs(base):
            for path, size, _mtime in self._entries(day):
                total += size
                files += 1
                m = _CAPTURE_NAME.match(path.name)
                if not m:
                    continue  # not ours: counted, never deleted
                if m["ext"] != "json":
                    images += 1
                key = f"{day.name}/{path.name[: -len(m['ext']) - 1]}"
                cap = captures.get(key)
                if cap is None:
                    cap = captures[key] = _Capture(key, m["stamp"], m["kind"], int(m["dup"] or 1))
                cap.files.append(path)
                cap.size += size
        scan = _Scan(sorted(captures.values(), key=lambda c: (c.stamp, c.dup, c.key)), total, images, files, time.monotonic())
        self._scan_cache = scan
        return scan

    def _enforce_retention(self, protect: set[str], incoming: int, reason: str) -> None:
        """Delete the oldest captures (auto-saves first) until `incoming` more bytes fit the limits.

        Raises DiskFullError, deleting nothing, when even deleting every capture would not be enough.
        Called with the write lock held.
        """
        base = self.base_dir
        max_bytes = int(float(self._cfg.max_disk_mb) * 2**20)
        min_free = int(float(self._cfg.min_free_mb) * 2**20)
        scan = self._scan(base)
        free = self._free_bytes(base)
        over_quota = scan.total_bytes + incoming - max_bytes
        under_free = (min_free - (free - incoming)) if free is not None else 0
        need = max(over_quota, under_free)
        if need <= 0:
            return
        candidates = [c for c in scan.captures if c.kind in AUTO_KINDS and c.key not in protect]
        candidates += [c for c in scan.captures if c.kind not in AUTO_KINDS and c.key not in protect]
        plan, freed = [], 0
        for cap in candidates:
            if freed >= need:
                break
            plan.append(cap)
            freed += cap.size
        if freed < need:
            raise DiskFullError(self._full_reason(scan, free, incoming, max_bytes, min_free, freed))
        why = (f"captures {_mb(scan.total_bytes + incoming)} > max_disk_mb {self._cfg.max_disk_mb:g}"
               if over_quota > 0 else f"{_mb(free or 0)} free < min_free_mb {self._cfg.min_free_mb:g}")
        for cap in plan:
            self._delete_capture(cap, why, reason)
        self._remove_empty_days(base)
        self._scan(base)

    def _full_reason(self, scan: _Scan, free: int | None, incoming: int, max_bytes: int, min_free: int,
                     deletable: int) -> str:
        parts = []
        if incoming:
            parts.append(f"need {_mb(incoming)} for the new file(s)")
        if scan.total_bytes + incoming > max_bytes:
            parts.append(f"captures use {_mb(scan.total_bytes)} of max_disk_mb {self._cfg.max_disk_mb:g}")
        if free is not None and free - incoming < int(min_free):
            parts.append(f"{_mb(free)} free, min_free_mb {self._cfg.min_free_mb:g}")
        parts.append("deleting every older capture would not make room" if deletable else "nothing left to delete")
        return "disk full: " + "; ".join(parts)

    def _delete_capture(self, cap: _Capture, why: str, reason: str) -> None:
        removed = 0
        for path in cap.files:
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        with self._stats_lock:
            self._deleted += 1
        log.info("retention (%s): deleted %s%s [%s, %s; %s]", reason, cap.key,
                 f" ({removed} files)" if removed > 1 else "", cap.kind,
                 "oldest auto-save" if cap.kind in AUTO_KINDS else "oldest capture, no auto-save left", why)

    def _remove_empty_days(self, base: Path) -> None:
        for day in self._day_dirs(base):
            try:
                day.rmdir()  # only succeeds when empty
                log.info("retention: removed empty folder %s", day)
            except OSError:
                pass

    def _remove_stale_temps(self, base: Path) -> None:
        now = time.time()
        for day in self._day_dirs(base):
            try:
                with os.scandir(day) as it:
                    stale = [Path(e.path) for e in it if _TEMP_NAME.match(e.name)
                             and now - e.stat(follow_symlinks=False).st_mtime > _STALE_TEMP_S]
            except OSError:
                continue
            for path in stale:
                try:
                    path.unlink()
                    log.warning("removed %s, a partial file left by an interrupted write", path)
                except OSError:
                    pass
