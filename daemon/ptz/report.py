"""A sweep's files: images, the CSV, summary.json and the zip, written atomically; retention of old runs.

A run is built in a hidden folder `<sweeps>/.run_YYYYMMDD_HHMMSS.partial/`
(every file in it written atomically) and renamed to `run_YYYYMMDD_HHMMSS/`
when the report is complete, so `rsync` and `ls` only ever see whole runs:

    run_YYYYMMDD_HHMMSS/
      raw_images/p001_entrance.jpg        the full-resolution picture
      annotated_images/p001_entrance.jpg  boxes, the count and the preset's name drawn on a copy
      results/count_results.csv           preset, name, people, groups, time, settle_s, error
      summary.json                        the run: status, times, every preset's figures
      ptz_capture_results_YYYYMMDD_HHMMSS.zip   all of the above

Retention keeps the newest `ptz.keep_runs` runs, their total under
`ptz.max_disk_mb` and `export.min_free_mb` free on the disk (as auto-saves
do), deleting the oldest first and never the run just written. A partial folder
left by a crash is renamed to its run name at the next start (its files are
whole; its summary says what is missing).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from daemon.storage.atomicfile import fsync_dir, write_atomic

log = logging.getLogger("picamd.ptz")

RUN_PREFIX = "run_"
PARTIAL_SUFFIX = ".partial"
ZIP_PREFIX = "ptz_capture_results_"
CSV_NAME = "count_results.csv"
CSV_FIELDS = ("preset", "name", "people", "groups", "time", "settle_s", "error")
_RUN_NAME = re.compile(r"^run_\d{8}_\d{6}(_\d+)?$")


def run_stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y%m%d_%H%M%S")


def slug(text: str) -> str:
    """A file-name-safe form of a preset name."""
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return s[:40] or "preset"


def image_name(number: int, name: str) -> str:
    return f"p{number:03d}_{slug(name)}.jpg"


class RunFolder:
    def __init__(self, base: Path, started: float) -> None:
        self.base = Path(base)
        stamp = run_stamp(started)
        name, n = f"{RUN_PREFIX}{stamp}", 1
        while (self.base / name).exists() or (self.base / f".{name}{PARTIAL_SUFFIX}").exists():
            n += 1
            name = f"{RUN_PREFIX}{stamp}_{n}"
        self.name = name
        self.stamp = stamp
        self.final = self.base / name
        self.work = self.base / f".{name}{PARTIAL_SUFFIX}"
        self.zip_name = f"{ZIP_PREFIX}{stamp}.zip"
        self.published = False
        self._zip_lock = threading.Lock()
        self._zip: zipfile.ZipFile | None = None  # built as the sweep goes, in a hidden file of the run folder
        self._zipped: set[str] = set()
        self._zip_broken = False

    @property
    def folder(self) -> Path:
        return self.final if self.published else self.work

    def create(self) -> None:
        for sub in ("raw_images", "annotated_images", "results"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)

    def write_jpeg(self, rel: str, image: np.ndarray, quality: int) -> str:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise OSError(f"JPEG encoding of {rel} failed")
        write_atomic(self.work / rel, buf.tobytes())
        return rel

    def write_csv(self, rows: Sequence[dict[str, Any]]) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_FIELDS})
        rel = f"results/{CSV_NAME}"
        write_atomic(self.work / rel, out.getvalue().encode())
        return rel

    def write_summary(self, summary: dict[str, Any]) -> str:
        write_atomic(self.work / "summary.json", (json.dumps(summary, indent=2, default=str) + "\n").encode())
        return "summary.json"

    @property
    def _building(self) -> Path:
        return self.work / f".{self.zip_name}.building"

    def _add(self, zf: zipfile.ZipFile, rel: str) -> None:
        # JPEGs do not compress: stored, which saves the Pi the work.
        kind = zipfile.ZIP_STORED if rel.lower().endswith(".jpg") else zipfile.ZIP_DEFLATED
        zf.write(self.work / rel, f"{self.name}/{rel}", compress_type=kind)
        self._zipped.add(rel)

    def add_to_zip(self, rel: str) -> None:
        """Put a finished file into the zip while the sweep goes on (its cost hidden behind the moves). A failure here
        only means `write_zip` builds the zip whole at the end."""
        with self._zip_lock:
            if self._zip_broken:
                return
            try:
                if self._zip is None:
                    self._zip = zipfile.ZipFile(self._building, "w", compression=zipfile.ZIP_DEFLATED)
                self._add(self._zip, rel)
            except (OSError, ValueError) as exc:
                log.warning("sweep %s: adding %s to the zip failed (%s); it is built at the end", self.name, rel, exc)
                self._zip_broken = True

    def write_zip(self) -> str:
        """The zip of everything in the run folder (paths relative to the run), put in place atomically."""
        files = sorted(
            p.relative_to(self.work).as_posix()
            for p in self.work.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.name != self.zip_name
        )
        with self._zip_lock:
            zf, self._zip = self._zip, None
            if zf is not None and self._zip_broken:
                _close_quietly(zf)
                zf = None
            if zf is None:
                self._zipped.clear()
                zf = zipfile.ZipFile(self._building, "w", compression=zipfile.ZIP_DEFLATED)
            try:
                for rel in files:
                    if rel not in self._zipped:
                        self._add(zf, rel)
            finally:
                zf.close()
        # The built file becomes write_atomic's temp file: fsynced and renamed into place like every other file.
        write_atomic(self.work / self.zip_name, lambda tmp: os.replace(self._building, tmp))
        return self.zip_name

    def publish(self) -> Path:
        """Rename the finished run to its final name (one rename: the whole run appears at once)."""
        os.replace(self.work, self.final)
        fsync_dir(self.base)
        self.published = True
        return self.final


def _close_quietly(zf: zipfile.ZipFile) -> None:
    try:
        zf.close()
    except (OSError, ValueError):
        pass


def _size(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def runs(base: Path) -> list[Path]:
    """The finished runs, oldest first (the names sort by time)."""
    try:
        return sorted(p for p in Path(base).iterdir() if p.is_dir() and _RUN_NAME.match(p.name))
    except FileNotFoundError:
        return []


def _free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def prune_runs(base: Path, keep: int, max_mb: float, protect: Sequence[str] = (), min_free_mb: float = 0.0) -> list[str]:
    """Delete the oldest runs beyond `keep`, while the runs take more than `max_mb` and while the disk has less than
    `min_free_mb` free (export.min_free_mb, as auto-saves keep it); never a protected one. Returns the names deleted."""
    existing = runs(base)
    sizes = {p.name: _size(p) for p in existing}
    total = sum(sizes.values())
    limit = int(max_mb * 2**20)
    min_free = int(min_free_mb * 2**20)
    deleted: list[str] = []
    candidates = [p for p in existing if p.name not in protect]
    count = len(existing)
    for p in candidates:
        free = _free_bytes(Path(base)) if min_free else None
        if count <= keep and total <= limit and (free is None or free >= min_free):
            break
        try:
            shutil.rmtree(p)
        except OSError as exc:
            log.warning("sweep retention: cannot delete %s: %s", p, exc.strerror or exc)
            continue
        deleted.append(p.name)
        count -= 1
        total -= sizes[p.name]
    if deleted:
        log.info("sweep retention: deleted %d old run(s) (%s); %d kept, %.1f MiB", len(deleted), ", ".join(deleted), count, total / 2**20)
    return deleted


def recover_partials(base: Path) -> list[str]:
    """Rename runs a crash left hidden to their run names (their files are whole); returns the names."""
    out: list[str] = []
    try:
        entries = list(Path(base).iterdir())
    except FileNotFoundError:
        return out
    for p in entries:
        if not (p.is_dir() and p.name.startswith(".") and p.name.endswith(PARTIAL_SUFFIX)):
            continue
        name = p.name[1 : -len(PARTIAL_SUFFIX)]
        if not _RUN_NAME.match(name) or (p.parent / name).exists():
            continue
        try:
            summary = p / "summary.json"
            if not summary.exists():
                write_atomic(
                    summary,
                    (
                        json.dumps(
                            {
                                "run": name,
                                "status": "interrupted",
                                "note": "the daemon stopped during this sweep; the report is incomplete",
                                "recovered_ts": time.time(),
                            },
                            indent=2,
                        )
                        + "\n"
                    ).encode(),
                )
            os.replace(p, p.parent / name)
            out.append(name)
        except OSError as exc:
            log.warning("sweep: cannot recover %s: %s", p, exc.strerror or exc)
    if out:
        log.warning("sweep: kept the files of %d interrupted sweep(s): %s", len(out), ", ".join(out))
    return out


def annotate(
    frame: np.ndarray, detections: Sequence[dict[str, Any]], title: str, lines: Sequence[str], zone: tuple[int, int, int, int] | None
) -> np.ndarray:
    """A copy of `frame` with the boxes, the zone and a banner (`title` and `lines`) on top."""
    from daemon.detect.annotate import draw_detections  # with OpenCV, only when a report is drawn

    h, w = frame.shape[:2]
    out = draw_detections(frame, list(detections), (w, h))
    if zone is not None:
        x0, y0, x1, y1 = zone
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), max(1, round(min(w, h) / 360)), cv2.LINE_AA)
    scale = max(0.45, min(w, h) / 700)
    thick = max(1, round(scale * 1.5))
    texts = [title, *lines]
    line_h = int(cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][1] * 1.8) + 2
    width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for t in texts) + 12
    top = max(0, h - line_h * len(texts) - 8)  # at the bottom: the boxes' labels sit at their tops
    band = out[top:h, 0 : min(w, width)]
    band[:] = (band * 0.35).astype(np.uint8)  # darkened, so the text reads on any picture
    for i, text in enumerate(texts):
        y = top + 4 + line_h * (i + 1) - line_h // 4
        cv2.putText(out, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out
