"""The auto-saver: an image every `export.auto_save_interval_s`, aligned to the local wall clock.

Slots fall on whole multiples of the interval counted from local midnight
(from the local epoch when the interval does not divide a day): 3600 saves on
the hour, 900 at :00 :15 :30 :45, 86400 at local midnight. By day a slot saves
the newest frame (kind `auto`); by night a stack of `stack_count` fresh
full-resolution frames (kind `autostack`), or one long-exposure frame when
`night_auto_save` is `frame`.

A slot is only honoured close to its time: when the loop wakes more than a
grace of min(60 s, interval / 2) after it (the daemon was down or paused, the
machine suspended), the slot is skipped and logged rather than filled with a
frame taken at another time. The interval is read live; a
`set export.auto_save_interval_s` takes effect at once.

A Pi without a real-time clock starts with a wrong time and steps it when the
network time arrives. A step (the wall clock moving more than _CLOCK_STEP_S
more or less than the steady clock between two looks) re-aligns the schedule
to the new time: the next slot is the first one at or after now (minus the
grace), never a slot the step jumped over and never the slot just saved once
more; it is logged once and counted in `health`. The steady clock is
CLOCK_BOOTTIME, which counts through a suspend, so a suspend is a missed slot
and not a step.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from daemon.config import Section
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker
from daemon.storage.export import ExportCancelled, Exporter, ExportError, NoFrameError

log = logging.getLogger("picamd.autosave")

_MAX_SLEEP_S = 5.0  # re-read the wall clock at least this often: clock steps and suspends do not wake a timed wait
_IDLE_S = 60.0  # when off; a config change wakes the thread anyway
_STALE_FRAME_MIN_S = 30.0
_CLOCK_STEP_S = 10.0  # the wall clock moving this much more (or less) than the steady clock between two looks is a step


def steady_clock() -> float:
    """Seconds that never jump: CLOCK_BOOTTIME where there is one (it counts through a suspend), else monotonic."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


def _local_offset(t: float) -> float:
    return float(time.localtime(t).tm_gmtoff)


def slot_at_or_before(t: float, interval: float) -> float:
    """The latest slot boundary <= t, aligned to the local wall clock."""
    return _aligned(t, interval, -1)


def slot_at_or_after(t: float, interval: float) -> float:
    """The earliest slot boundary >= t, aligned to the local wall clock."""
    return _aligned(t, interval, +1)


def _aligned(t: float, interval: float, direction: int) -> float:
    # A boundary is a whole multiple of the interval in local time. Across a daylight-saving change the
    # offset at the boundary differs from the one at t, so try both and keep the nearest boundary that
    # really falls on the multiple in the offset in force there.
    rounding = math.ceil if direction > 0 else math.floor
    best = None
    for off in {_local_offset(t), _local_offset(t + direction * interval)}:
        k = rounding((t + off) / interval)
        for step in (0, direction):
            slot = (k + step) * interval - off
            if (slot - t) * direction >= 0 and _local_offset(slot) == off:
                if best is None or (slot - best) * direction < 0:
                    best = slot
                break
    if best is None:  # the boundary does not exist in local time (skipped by a clock change): use t's offset
        off = _local_offset(t)
        best = rounding((t + off) / interval) * interval - off
    return best


def _fmt(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _span(seconds: float) -> str:
    s = round(abs(seconds))
    days, s = divmod(s, 86400)
    return (f"{days}d " if days else "") + f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class AutoSaver:
    def __init__(
        self,
        cfg: Section,
        exporter: Exporter,
        is_night: Callable[[], bool],
        status: ComponentStatus,
        clock: Callable[[], float] = time.time,
        steady: Callable[[], float] = steady_clock,
    ) -> None:
        self._cfg = cfg
        self._exporter = exporter
        self._is_night = is_night
        self._status = status
        self._clock = clock
        self._steady = steady
        self._last_look: tuple[float, float] | None = None  # (wall, steady) at the previous tick
        self._last_slot: float | None = None  # the slot most recently run, never run twice after a step back
        self._steps = 0
        self._last_step: dict[str, Any] | None = None
        self._wake = threading.Event()
        self._worker = Worker("autosave", self._step, status=status, error_pause_s=_MAX_SLEEP_S, on_stop=self._wake.set)
        self._lock = threading.Lock()
        self._interval: float | None = None  # the interval next_due was computed for
        self._next_due: float | None = None
        self._saved = self._failed = self._skipped = 0
        self._last: dict[str, Any] | None = None
        cfg.on_change(self._config_changed)

    # -- lifecycle
    def start(self) -> None:
        log.info("auto-save thread started")
        self._worker.start()

    def stop(self) -> None:
        """Stops within 2 s; a night stack in progress is abandoned."""
        self._worker.stop()
        log.info("auto-save thread stopped")

    def _config_changed(self, name: str, value: Any) -> None:
        if name.endswith(".auto_save_interval_s"):
            self._wake.set()

    def _step(self) -> None:
        wait = self.tick()  # a failing slot is counted by the worker, which waits _MAX_SLEEP_S before the next look
        if self._worker.stopping.is_set():
            return
        self._wake.wait(max(0.0, min(wait, _MAX_SLEEP_S)))
        self._wake.clear()

    # -- the schedule
    def next_due(self) -> float | None:
        """Wall time of the next slot, or None when auto-save is off."""
        interval = float(self._cfg.auto_save_interval_s)
        if interval <= 0:
            return None
        with self._lock:
            if self._interval == interval and self._next_due is not None:
                return self._next_due
        return slot_at_or_after(self._clock(), interval)

    def tick(self) -> float:
        """Run the slot that is due, if any. Returns the seconds until the next look (the thread's wait)."""
        now = self._clock()
        step = self._clock_step(now)
        interval = float(self._cfg.auto_save_interval_s)
        if interval <= 0:
            with self._lock:
                changed = self._interval != 0.0
                self._interval, self._next_due = 0.0, None
            if changed:
                log.info("auto-save is off (export.auto_save_interval_s = 0)")
            return _IDLE_S
        grace = min(60.0, interval / 2)
        with self._lock:
            if self._interval != interval or self._next_due is None:
                self._interval = interval
                self._next_due = slot_at_or_after(now, interval)
                log.info("auto-save every %g s, aligned to the local clock; next at %s", interval, _fmt(self._next_due))
            elif step:
                self._next_due = slot_at_or_after(now - grace, interval)
                if self._next_due == self._last_slot:  # stepped back over the slot just saved: not again
                    self._next_due = slot_at_or_after(self._next_due + interval, interval)
                log.warning(
                    "auto-save re-aligned to the new time: next at %s; slots the step passed over are not back-filled", _fmt(self._next_due)
                )
            elif self._next_due - now > interval + grace:
                self._next_due = slot_at_or_after(now, interval)
                log.warning("the clock went back; next auto-save at %s", _fmt(self._next_due))
            due = self._next_due
        if now < due:
            return due - now
        slot = max(due, slot_at_or_before(now, interval))
        passed = max(0, round((slot - due) / interval))  # whole slots between the due one and the latest
        if now - slot > grace:
            self._record_skip(due, slot, passed + 1, now - slot)
            with self._lock:
                self._next_due = slot_at_or_after(slot + interval, interval)
            return max(0.0, self._next_due - now)
        if passed:
            self._record_skip(due, slot - interval, passed, now - due)
        with self._lock:
            self._last_slot = slot
        self._run_slot(slot, grace)
        with self._lock:
            if self._interval == interval:
                self._next_due = slot_at_or_after(slot + interval, interval)
            next_due = self._next_due
        return 0.0 if next_due is None else max(0.0, next_due - self._clock())

    def _clock_step(self, now: float) -> float:
        """How far the wall clock stepped since the previous look (0.0 when it kept pace with the steady clock)."""
        steady = self._steady()
        last, self._last_look = self._last_look, (now, steady)
        if last is None:
            return 0.0
        step = (now - last[0]) - (steady - last[1])
        if abs(step) < _CLOCK_STEP_S:
            return 0.0
        with self._lock:
            self._steps += 1
            self._last_step = {"at": round(now, 3), "at_local": _fmt(now), "by_s": round(step, 3)}
        log.warning(
            "the wall clock stepped %s by %s (network time at boot on a Pi without a clock, or set by hand); "
            "captures keep their names and none is deleted for it",
            "forward" if step > 0 else "back",
            _span(step),
        )
        return step

    def _record_skip(self, first: float, last: float, count: int, late: float) -> None:
        with self._lock:
            self._skipped += count
        which = _fmt(first) if count == 1 else f"{_fmt(first)} .. {_fmt(last)} ({count} slots)"
        log.warning(
            "auto-save slot %s skipped: %.0f s late (daemon down or paused, machine suspended or clock "
            "stepped); not back-filled with a frame from another time",
            which,
            late,
        )

    def _run_slot(self, slot: float, grace: float) -> None:
        try:
            night = bool(self._is_night())
        except Exception as exc:
            self._status.error("auto-save could not tell day from night; saving a day frame", exc)
            night = False
        fmt = str(self._cfg.auto_save_format)
        stacked = night and self._cfg.night_auto_save == "stack"
        kind = "autostack" if stacked else "auto"
        try:
            if stacked:
                paths = self._exporter.stack_next(int(self._cfg.stack_count), [fmt], kind="autostack", cancel=self._worker.stopping)
            else:
                self._check_fresh(slot, grace)
                paths = self._exporter.save([fmt], kind="auto")
        except ExportCancelled:
            log.info("auto-save of %s abandoned: stopping", _fmt(slot))
            return
        except Exception as exc:
            reason = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._failed += 1
                self._last = {"slot": slot, "slot_local": _fmt(slot), "kind": kind, "ok": False, "error": reason}
            self._status.error(f"auto-save {_fmt(slot)} failed: {reason}", None if isinstance(exc, ExportError) else exc)
            self._status.degrade(f"last auto-save failed: {reason}"[:160])
            return
        with self._lock:
            self._saved += 1
            self._last = {"slot": slot, "slot_local": _fmt(slot), "kind": kind, "ok": True, "paths": [str(p) for p in paths]}
        self._status.recover()

    def _check_fresh(self, slot: float, grace: float) -> None:
        # a camera that stalled an hour ago must not fill this slot with its last frame
        meta = self._exporter.newest_meta()
        if meta is None:
            raise NoFrameError("no frame yet")
        age = self._clock() - meta.ts
        limit = max(_STALE_FRAME_MIN_S, grace) + (meta.exposure_us or 0) / 1e6
        if age > limit:
            raise NoFrameError(f"the newest frame is {age:.0f} s old (camera stalled?); not saved as the {_fmt(slot)} auto-save")

    def health(self) -> dict[str, Any]:
        interval = float(self._cfg.auto_save_interval_s)
        due = self.next_due()
        with self._lock:
            last = dict(self._last) if self._last else None
            saved, failed, skipped = self._saved, self._failed, self._skipped
            steps, last_step = self._steps, dict(self._last_step) if self._last_step else None
        snap = self._status.snapshot()
        return {
            "state": snap["state"],
            "enabled": interval > 0,
            "interval_s": interval,
            "next_due": due,
            "next_due_local": None if due is None else _fmt(due),
            "last": last,
            "saved": saved,
            "failed": failed,
            "skipped": skipped,
            "clock_steps": steps,
            "last_clock_step": last_step,
            "errors": snap["errors"],
            "last_error": snap["last_error"],
        }
