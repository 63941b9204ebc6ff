"""Sweeps: the camera through its presets, a settled picture at each, people counted, a report.

One sweep at a time, on its own worker (`picamd-sweep`), so the stream,
motion and every command carry on. For each preset:
1. `ptz.moving` is published (Motion re-baselines and stops judging, see
   `daemon/motion/component.py`), the preset is recalled and the sweep waits
   for the camera's completion reply, publishing `ptz.moving` again at least
   every half `motion.settle_s` meanwhile;
2. the picture is taken once the image has settled (`pictures.py`: a frame
   newer than the completion, then frame-to-frame change below
   `ptz.settle_threshold`, at most `settle_s`), and `ptz.moving` says
   `stopped`; on arrival the component is told (`on_view`), which publishes
   `ptz.view` with the preset's own motion regions;
3. the picture goes to the counting worker (`picamd-sweep-count`), which
   writes the raw image, counts people (the `PeopleCounter` the app gives),
   draws the annotated image, while the sweep already moves to the next
   preset: a sweep costs about its moves, plus one detection at the end.
A preset that fails (an error reply, no completion, no picture, a failed
count) becomes a row with its error and the sweep goes on; `sweep cancel`
stops the camera, lets the counting finish what was captured and writes a
consistent partial report (the presets not reached say so). The report is
`report.py`'s; `ptz.sweep.done` (or `ptz.sweep.failed` when no preset
succeeded or the report could not be written) goes on the bus for the
notifications and the report's delivery.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.core.timefmt import format_duration
from daemon.core.worker import Worker

from . import visca
from .client import Cancelled, PtzError, ViscaClient
from .counting import CountError, PeopleCounter
from .pictures import Picture, PictureCancelled, PictureError, PictureSource
from .presets import Preset
from .report import CSV_NAME, RunFolder, annotate, image_name, prune_runs

log = logging.getLogger("picamd.ptz")

MOVING = "ptz.moving"
SWEEP_DONE = "ptz.sweep.done"
SWEEP_FAILED = "ptz.sweep.failed"
SWEEP_EVENTS = (SWEEP_DONE, SWEEP_FAILED)
#: How often the waits of a move look at the cancel flag and the heartbeat.
TICK_S = 0.1
#: A row's error when its sweep was cut short, by the row's state at that moment.
CUT_SHORT = {
    "moving": "while moving to this preset",
    "settling": "while settling at this preset, before its picture",
    "counting": "while counting this preset",
}
#: How long the end of a sweep waits for the counting worker to finish what was captured.
COUNT_DRAIN_S = 120.0


class Busy(Exception):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"sweep {run_id} running")
        self.run_id = run_id


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class PresetRow:
    preset: Preset
    state: str = "waiting"  # waiting, moving, settling, counting, done, failed, cancelled
    people: int | None = None
    groups: int | None = None
    detections: list[dict[str, Any]] = field(default_factory=list)
    ts: float | None = None  # wall clock of the picture
    started_mono: float | None = None  # the move to this preset began
    move_s: float | None = None
    settle_s: float | None = None
    settled: bool | None = None
    change: float | None = None
    count_ms: float | None = None  # the detector's part
    process_ms: float | None = None  # the counting worker's whole part: raw image, count, annotated image
    error: str | None = None
    raw: str | None = None
    annotated: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "done" and self.error is None

    def csv_row(self) -> dict[str, Any]:
        return {
            "preset": self.preset.number,
            "name": self.preset.name,
            "people": self.people,
            "groups": self.groups,
            "time": _iso(self.ts),
            "settle_s": _r(self.settle_s),
            "error": self.error,
        }

    def to_dict(self, detections: bool = False) -> dict[str, Any]:
        out = {
            "preset": self.preset.number,
            "name": self.preset.name,
            "state": self.state,
            "people": self.people,
            "groups": self.groups,
            "time": _iso(self.ts),
            "move_s": _r(self.move_s),
            "settle_s": _r(self.settle_s),
            "settled": self.settled,
            "change": _r(self.change, 5),
            "count_ms": _r(self.count_ms, 1),
            "process_ms": _r(self.process_ms, 1),
            "error": self.error,
            "raw_image": self.raw,
            "annotated_image": self.annotated,
        }
        if detections:
            out["detections"] = self.detections
        return out


@dataclass
class SweepRun:
    folder: RunFolder
    rows: list[PresetRow]
    trigger: str  # command or schedule
    peer: str
    started: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    status: str = "running"  # running, done, partial, cancelled, failed
    finished_mono: float | None = None
    counted_mono: float | None = None  # the counting worker finished the last preset
    report_s: float | None = None  # from then to the report in place: the part no move can hide
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)  # the report is written and the event out
    cancelled_by: str | None = None

    @property
    def id(self) -> str:
        return self.folder.name

    @property
    def running(self) -> bool:
        return self.status == "running"

    def elapsed_s(self) -> float:
        return (self.finished_mono or time.monotonic()) - self.started_mono

    def eta_s(self) -> float | None:
        """Seconds left, from the presets done so far (None before the first one is reached)."""
        if not self.running:
            return 0.0
        timed = [r.move_s + (r.settle_s or 0.0) for r in self.rows if r.move_s is not None]
        if not timed:
            return None
        left = sum(1 for r in self.rows if r.state in ("waiting", "moving", "settling"))
        counts = [r.process_ms / 1e3 for r in self.rows if r.process_ms is not None]
        return round(left * sum(timed) / len(timed) + (sum(counts) / len(counts) if counts else 0.0), 1)

    def progress(self) -> dict[str, Any]:
        done = sum(1 for r in self.rows if r.state in ("done", "failed"))  # a cancelled preset was not done
        return {
            "run": self.id,
            "status": self.status,
            "trigger": self.trigger,
            "started": _iso(self.started),
            "elapsed_s": round(self.elapsed_s(), 1),
            "eta_s": self.eta_s(),
            "presets_done": done,
            "presets": len(self.rows),
            "people": sum(r.people or 0 for r in self.rows),
            "folder": str(self.folder.folder),
            "error": self.error,
            "rows": [r.to_dict() for r in self.rows],
        }


class Sweeper:
    def __init__(
        self,
        cfg: Any,
        client: ViscaClient,
        pictures: Callable[[], PictureSource],
        count_people: PeopleCounter | None,
        bus: EventBus,
        status: ComponentStatus,
        *,
        base_dir: Callable[[], Path],
        motion_settle_s: Callable[[], float] = lambda: 5.0,
        jpeg_quality: Callable[[], int] = lambda: 90,
        min_free_mb: Callable[[], float] = lambda: 0.0,
        on_view: Callable[[Preset | None], None] = lambda preset: None,
    ) -> None:
        """`cfg` is the `ptz` config section; `pictures` builds the picture source at the start of each sweep;
        `base_dir` is the captures folder (runs go to its `sweeps/`); `min_free_mb` the disk space retention keeps free;
        `on_view` hears where each move ended (the preset, or None when the move failed)."""
        self._cfg = cfg
        self._on_view = on_view
        self._client = client
        self._pictures = pictures
        self._count = count_people
        self._bus = bus
        self._status = status
        self._base_dir = base_dir
        self._motion_settle_s = motion_settle_s
        self._jpeg_quality = jpeg_quality
        self._min_free_mb = min_free_mb
        self._lock = threading.Lock()
        self._current: SweepRun | None = None
        self._last: SweepRun | None = None
        self._worker = Worker("sweep", lambda: None, status=status, repeat=False, join_timeout_s=5.0)
        self._counter = Worker("sweep-count", lambda: None, repeat=False, join_timeout_s=5.0)
        self.runs = 0

    @property
    def folder(self) -> Path:
        return Path(self._base_dir()) / "sweeps"

    # -- what commands and the schedule call
    def start(self, presets: Sequence[Preset], trigger: str = "command", peer: str = "local") -> SweepRun:
        """Start a sweep in the background and return its run at once; raises Busy, or ValueError/OSError."""
        if not presets:
            raise ValueError("no presets to sweep (set ptz.presets or ptz.presets_file)")
        with self._lock:
            current = self._current
            if current is not None and current.running:
                raise Busy(current.id)
            folder = RunFolder(self.folder, time.time())
            folder.create()
            run = SweepRun(folder, [PresetRow(p) for p in presets], trigger, peer)
            self._current = run
        log.info("sweep %s started by %s (%s): presets %s", run.id, peer, trigger, ", ".join(str(p.number) for p in presets))
        if self._worker.alive:
            self._worker.stop(2.0)  # the last sweep's thread, past its end: a running worker would ignore the start
        self._worker.start(lambda: self._run(run))
        return run

    def cancel(self, by: str = "local") -> SweepRun | None:
        with self._lock:
            run = self._current
        if run is None or not run.running:
            return None
        run.cancelled_by = by
        run.cancel.set()
        log.info("sweep %s cancel asked by %s", run.id, by)
        return run

    def current(self) -> SweepRun | None:
        """The running sweep, else the last one."""
        with self._lock:
            return self._current

    def wait(self, timeout: float) -> bool:
        """Wait until no sweep runs (for tests and the bench); True when none does."""
        run = self.current()
        return run is None or run.ended.wait(timeout)

    def stop(self) -> None:
        self.cancel("shutdown")
        self._worker.stop()
        self._counter.stop()

    # -- the sweep worker
    def _run(self, run: SweepRun) -> None:
        items: queue.Queue[tuple[PresetRow, Picture] | None] = queue.Queue()
        drained = threading.Event()
        self._counter.start(lambda: self._count_all(run, items, drained))
        try:
            source = self._pictures()
        except Exception as exc:
            source = None
            run.error = f"no picture source: {exc}"
        try:
            if source is not None:
                for row in run.rows:
                    if run.cancel.is_set():
                        break
                    picture = self._visit(run, row, source)
                    if picture is not None:
                        items.put((row, picture))
        except Exception as exc:  # a bug must not leave the sweep "running" for ever
            run.error = f"sweep failed: {type(exc).__name__}: {exc}"
            self._status.error(f"sweep {run.id} failed", exc)
        finally:
            items.put(None)
            if run.cancel.is_set():
                self._stop_camera(run)
            if not drained.wait(COUNT_DRAIN_S):
                run.error = run.error or f"counting did not finish within {COUNT_DRAIN_S:g} s"
            run.counted_mono = time.monotonic()
            self._counter.stop()
            # The model's memory is only taken while sweeping; the snapshot session is closed with the sweep.
            for owner in (self._count, source):
                close = getattr(owner, "close", None)
                if callable(close):
                    try:
                        close()
                    except Exception as exc:
                        log.warning("sweep %s: closing %s failed: %s", run.id, type(owner).__name__, exc)
            try:
                self._finish(run)
            except Exception as exc:  # never leave the sweep "running": a new one could not start
                run.error = run.error or f"report failed: {type(exc).__name__}: {exc}"
                self._status.error(f"sweep {run.id}: report", exc)
                run.status = "failed"
            finally:
                run.ended.set()

    def _heartbeat(self, run: SweepRun, row: PresetRow) -> Callable[[], bool]:
        """A tick for the waits (called every `TICK_S` or so): publishes `ptz.moving` every half motion.settle_s, so a
        reset never runs out while the camera moves; False once cancelled."""
        settle = float(self._motion_settle_s())
        interval = max(TICK_S, settle / 2) if settle > 0 else 1.0
        last = [time.monotonic()]

        def tick() -> bool:
            now = time.monotonic()
            if now - last[0] >= interval:
                last[0] = now
                self._moving("moving", run, row)
            return not run.cancel.is_set()

        return tick

    def _moving(self, phase: str, run: SweepRun, row: PresetRow) -> None:
        self._bus.publish(MOVING, phase=phase, run=run.id, preset=row.preset.number, name=row.preset.name)

    def _visit(self, run: SweepRun, row: PresetRow, source: PictureSource) -> Picture | None:
        """Move to the preset and take its settled picture (None when the preset failed or the sweep was cancelled)."""
        preset = row.preset
        row.state = "moving"
        started = row.started_mono = time.monotonic()
        tick = self._heartbeat(run, row)
        self._moving("start", run, row)
        at_preset = False
        try:
            req = self._client.start(visca.recall_preset(preset.number))
            self._client.complete(req, tick=tick, tick_s=TICK_S)
            at_preset = True
            self._on_view(preset)
            arrived = req.completed_mono or time.monotonic()
            row.move_s = arrived - started
            row.state = "settling"
            settle_max = preset.settle_s if preset.settle_s is not None else float(self._cfg.settle_s)
            picture = source.take(arrived, float(self._cfg.settle_threshold), settle_max, tick)
        except (Cancelled, PictureCancelled):
            row.state, row.error = "cancelled", f"cancelled {CUT_SHORT[row.state]}"
            return None
        except (PtzError, PictureError) as exc:
            row.state, row.error = "failed", str(exc)
            log.warning("sweep %s: preset %d (%s) failed: %s", run.id, preset.number, preset.name, exc)
            return None
        finally:
            if not at_preset:
                self._on_view(None)  # stopped somewhere on the way, or where is not known
            self._moving("stopped", run, row)
        row.settle_s, row.settled, row.change, row.ts = picture.settle_s, picture.settled, picture.change, picture.ts
        row.state = "counting"
        if not picture.settled:
            log.info(
                "sweep %s: preset %d taken unsettled after %.1f s (change %.4f)",
                run.id,
                preset.number,
                picture.settle_s,
                picture.change or 0.0,
            )
        return picture

    # -- the counting worker
    def _count_all(self, run: SweepRun, items: queue.Queue[tuple[PresetRow, Picture] | None], drained: threading.Event) -> None:
        try:
            while True:
                item = items.get()
                if item is None:
                    return
                row, picture = item
                try:
                    self._count_one(run, row, picture)
                except Exception as exc:
                    row.state, row.error = "failed", f"report of this preset failed: {type(exc).__name__}: {exc}"
                    self._status.error(f"sweep {run.id}: preset {row.preset.number}", exc)
        finally:
            drained.set()

    def _count_one(self, run: SweepRun, row: PresetRow, picture: Picture) -> None:
        began = time.perf_counter()
        frame = picture.frame
        h, w = frame.shape[:2]
        name = image_name(row.preset.number, row.preset.name)
        quality = int(self._jpeg_quality())
        row.raw = run.folder.write_jpeg(f"raw_images/{name}", frame, quality)
        try:
            zone = row.preset.zone_pixels(w, h)
        except ValueError as exc:
            zone, row.error = None, str(exc)
        if row.error is None and self._count is not None:
            x0, y0 = (zone[0], zone[1]) if zone is not None else (0, 0)
            view = frame if zone is None else np.ascontiguousarray(frame[zone[1] : zone[3], zone[0] : zone[2]])
            started = time.perf_counter()
            try:
                counted = self._count(view)
            except CountError as exc:
                row.error = str(exc)
            else:
                row.people, row.groups = counted.people, counted.groups
                row.detections = [_shifted(d, x0, y0) for d in counted.detections]
            row.count_ms = (time.perf_counter() - started) * 1e3
        elif self._count is None:
            row.error = "no people counter (detection is not available)"
        title = f"{row.preset.number} {row.preset.name}"
        if row.people is not None:
            title += f": {row.people} {'person' if row.people == 1 else 'people'}, {row.groups or 0} group{'s' if row.groups != 1 else ''}"
        lines = [f"{_iso(picture.ts)}  {run.id}"]
        if row.error:
            lines.append(row.error[:120])
        row.annotated = run.folder.write_jpeg(f"annotated_images/{name}", annotate(frame, row.detections, title, lines, zone), quality)
        run.folder.add_to_zip(row.raw)
        run.folder.add_to_zip(row.annotated)
        row.process_ms = (time.perf_counter() - began) * 1e3
        row.state = "failed" if row.error else "done"

    # -- the end
    def _stop_camera(self, run: SweepRun) -> None:
        try:
            self._client.run(visca.stop())
        except PtzError as exc:
            log.warning("sweep %s: stopping the camera after the cancel failed: %s", run.id, exc)

    def _finish(self, run: SweepRun) -> None:
        for row in run.rows:
            if row.state in ("waiting", "moving", "settling", "counting"):
                cancelled = run.cancel.is_set()
                if row.state == "waiting":
                    why = "not reached: the sweep was cancelled" if cancelled else "not reached"
                else:
                    why = f"{'cancelled' if cancelled else 'the sweep stopped'} {CUT_SHORT[row.state]}"
                row.state = "cancelled" if cancelled else "failed"
                row.error = row.error or why
        ok = sum(1 for r in run.rows if r.ok)
        if run.cancel.is_set():
            status = "cancelled"
        elif run.error is not None or ok == 0:
            status = "failed"
        else:
            status = "done" if ok == len(run.rows) else "partial"
        run.finished_mono = time.monotonic()
        folder = run.folder
        paths: dict[str, str] = {}
        try:
            folder.write_csv([r.csv_row() for r in run.rows])
            folder.write_summary(self._summary(run, status))
            zip_name = folder.write_zip()
            final = folder.publish()
            run.report_s = time.monotonic() - (run.counted_mono or run.finished_mono)
            paths = {
                "folder": str(final),
                "zip": str(final / zip_name),
                "csv": str(final / "results" / CSV_NAME),
                "summary": str(final / "summary.json"),
            }
        except OSError as exc:
            status = "failed"
            run.error = f"cannot write the report: {exc.strerror or exc}"
            self._status.error(f"sweep {run.id}: report", exc)
        self.runs += 1
        try:
            prune_runs(
                self.folder,
                int(self._cfg.keep_runs),
                float(self._cfg.max_disk_mb),
                protect=[run.id],
                min_free_mb=float(self._min_free_mb()),
            )
        except OSError as exc:
            log.warning("sweep retention failed: %s", exc)
        people = sum(r.people or 0 for r in run.rows)
        failed = [r for r in run.rows if not r.ok]
        text = (
            f"sweep {run.id} {status}: {people} {'person' if people == 1 else 'people'} at {ok} of {len(run.rows)} presets"
            + (f", {len(failed)} failed" if failed and not run.cancel.is_set() else "")
            + f" in {format_duration(run.elapsed_s())}"
            + (f" ({run.error})" if run.error else "")
        )
        kind = SWEEP_FAILED if status == "failed" else SWEEP_DONE
        data: dict[str, Any] = {
            "run": run.id,
            "status": status,
            "text": text,
            "people": people,
            "presets": len(run.rows),
            "ok": ok,
            "failed": len(failed),
            "trigger": run.trigger,
            "duration_s": round(run.elapsed_s(), 1),
            **paths,
        }
        self._bus.publish(kind, **data)
        (log.warning if status == "failed" else log.info)("%s", text)
        run.status = status  # last: whoever waits for the end finds the report written and the event out
        run.ended.set()

    def _summary(self, run: SweepRun, status: str) -> dict[str, Any]:
        counts = [r.count_ms for r in run.rows if r.count_ms is not None]
        processed = [r.process_ms for r in run.rows if r.process_ms is not None]
        moves = [r.move_s for r in run.rows if r.move_s is not None]
        return {
            "run": run.id,
            "status": status,
            "trigger": run.trigger,
            "started_by": run.peer,
            "cancelled_by": run.cancelled_by,
            "started": _iso(run.started),
            "duration_s": round(run.elapsed_s(), 3),
            "camera": self._client.where(),
            "pictures": self._pictures_name(),
            "people": sum(r.people or 0 for r in run.rows),
            "groups": sum(r.groups or 0 for r in run.rows),
            "presets": len(run.rows),
            "ok": sum(1 for r in run.rows if r.ok),
            "moves_s": round(sum(moves), 3),
            "count_ms_mean": round(sum(counts) / len(counts), 1) if counts else None,
            "process_ms_mean": round(sum(processed) / len(processed), 1) if processed else None,
            "error": run.error,
            "results": [r.to_dict(detections=True) for r in run.rows],
        }

    def _pictures_name(self) -> str:
        return "snapshot" if str(self._cfg.snapshot_url).strip() else "camera"


def _shifted(det: dict[str, Any], dx: int, dy: int) -> dict[str, Any]:
    if not dx and not dy:
        return det
    x1, y1, x2, y2 = det["box"]
    return {**det, "box": [x1 + dx, y1 + dy, x2 + dx, y2 + dy]}
