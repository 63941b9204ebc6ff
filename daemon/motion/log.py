"""Background writer of the motion logs (JSON lines, rotated by size), and their format.

The capture loop only appends to a bounded deque (`frames`: one entry per
frame holding every region's record; `event`: no lock, no wake-up, a fraction
of a microsecond); the worker thread `picamd-motionlog` collects the entries a
few times a second, sums each region's frames up per interval, formats the
lines, appends them to their files under the log folder and rotates a file
when it would grow past its size cap: `summary_press1.jsonl` becomes
`summary_press1.jsonl.1`, `.1` becomes `.2` and so on, keeping `keep` old
files. The bound (`queue_size`) counts records whatever the number of regions;
`stats()["queued"]` counts entries. When the queue is full (a very slow SD
card) records are dropped and counted, never waited for. When the folder
cannot be written (disk full, permissions) the lines of the next few seconds
are dropped and counted, the problem is reported through `on_problem`, and
writing is tried again every `retry_s`; `on_problem(None)` says it works
again. `stop()` writes what is still queued (for at most about a second), the
intervals still open, and closes the files.

The files, under `motion.log_dir` (the region name with anything but letters,
digits, `_`, `.` and `-` replaced by `_`):
- `summary_<region>.jsonl` (always), one line per region and interval of
  `motion.log_interval_s` seconds of the wall clock (60: each minute):
  `{"ts": 1716200040.05, "end": 1716200099.95, "region": "press1", "frames": 600,
  "judged": 598, "moving_frames": 312, "mean_fraction": 0.0123, "max_fraction": 0.2345,
  "state": "RUNNING"}`; ts and end are the first and last frame of the interval
  (seconds since the epoch), frames how many were measured, judged how many of
  them were judged (not settling, not a fresh baseline), moving_frames how many
  of those moved, mean_fraction and max_fraction the changed fraction of the
  region over the judged frames (0 when none was), state the state after the
  last frame. An interval is written when a frame of the next one arrives, a
  few seconds after it ends when no frame does (a stalled camera), when its
  region goes away and at stop. Rotated at `motion.log_max_mb`, keeping
  `motion.log_keep`.
- `motion_<region>.jsonl`, one line per frame, only with `motion.log_frames`:
  `{"ts": 1716200000.123, "frame_id": 4711, "region": "press1", "fraction": 0.0123,
  "pixels": 812, "moving": true, "state": "RUNNING"}`; ts in seconds since
  the epoch, fraction of the region changed, pixels changed at full-frame
  scale, state after this frame. Frames not judged (settling, a fresh
  baseline) have `"moving": null`, and `"settling": true` while settling.
  Rotated at `motion.log_frames_max_mb`, keeping `motion.log_frames_keep`.
- `state_changes.jsonl` (`STATE_LOG`): every `motion.state` event, as
  `{"event": "motion.state", "ts": ..., "region": ..., "machine_id": ..., "old": ...,
  "new": ..., "frame_id": ..., "duration_s": ..., "idle_s": ..., "window_moving": ...}`.
- `deep_sleep.jsonl` (`DEEP_SLEEP_LOG`): every `motion.deep_sleep` and
  `motion.wake` event, same fields. These two rotate like the summaries.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from daemon.core.repeat import RepeatedLog
from daemon.core.worker import Worker

log = logging.getLogger("picamd.motion")

STATE_LOG = "state_changes.jsonl"
DEEP_SLEEP_LOG = "deep_sleep.jsonl"
FRAME_PREFIX = "motion_"
SUMMARY_PREFIX = "summary_"

_BATCH = 2048  # records written between flushes when the queue is busy
_POLL_S = 0.25  # how often the writer collects what the capture loop queued
_MAX_OPEN = 64  # more open files than this (regions come and go) closes them all; they reopen on demand
_FINAL_S = 1.0  # how long stop() goes on writing what is still queued
_LATE_S = 3.0  # an interval no frame has closed is written this long after its end (frames still queued get in first)


def motion_log_name(file_stem: str) -> str:
    """The per-frame log of a region."""
    return f"{FRAME_PREFIX}{file_stem}.jsonl"


def summary_log_name(file_stem: str) -> str:
    """The per-interval summary log of a region."""
    return f"{SUMMARY_PREFIX}{file_stem}.jsonl"


class _OpenLog:
    __slots__ = ("fh", "size")

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.size = size


class _Interval:
    """One region's open interval on the writer thread: its frames summed up."""

    __slots__ = ("due", "end_at", "first", "frames", "judged", "last", "moving", "peak", "region", "start_at", "state", "total")

    def __init__(self, start_at: float, end_at: float, region: str) -> None:
        self.start_at, self.end_at, self.region = start_at, end_at, region
        self.first = self.last = 0.0
        self.frames = self.judged = self.moving = 0
        self.total = self.peak = 0.0
        self.state = ""
        self.due = math.inf  # monotonic time after which no frame of it can still come: written then

    def add(self, ts: float, fraction: float, moving: bool | None, state: str) -> None:
        if not self.frames:
            self.first = ts
        self.frames += 1
        self.last = ts
        self.state = state
        if moving is not None:
            self.judged += 1
            self.moving += moving
            self.total += fraction
            if fraction > self.peak:
                self.peak = fraction

    def record(self) -> dict[str, Any]:
        return {
            "ts": round(self.first, 3),
            "end": round(self.last, 3),
            "region": self.region,
            "frames": self.frames,
            "judged": self.judged,
            "moving_frames": self.moving,
            "mean_fraction": round(self.total / self.judged, 4) if self.judged else 0.0,
            "max_fraction": round(self.peak, 4),
            "state": self.state,
        }


class MotionLog:
    def __init__(
        self,
        log_dir: str | os.PathLike,
        *,
        max_bytes: Callable[[], int],
        keep: Callable[[], int],
        on_problem: Callable[[str | None], None],
        interval_s: Callable[[], float] = lambda: 60.0,
        frames_max_bytes: Callable[[], int] | None = None,
        frames_keep: Callable[[], int] | None = None,
        queue_size: int = 20000,
        retry_s: float = 5.0,
    ) -> None:
        self.dir = Path(log_dir)
        self._max_bytes = max_bytes
        self._keep = keep
        self._interval_s = interval_s
        self._frames_max_bytes = frames_max_bytes or max_bytes
        self._frames_keep = frames_keep or keep
        self._on_problem = on_problem
        # deque.append/popleft are atomic: one producer (the capture loop) and one consumer need no lock.
        self._queue: collections.deque[tuple[str, str, Any]] = collections.deque()
        self._capacity = max(1, queue_size)
        self._retry_s = retry_s
        self._files: dict[str, _OpenLog] = {}
        self._open: dict[str, _Interval] = {}  # file stem -> open interval (writer thread only)
        self._worker = Worker("motionlog", self._step, interval_s=_POLL_S)
        self._errlog = RepeatedLog(log)
        self._failing: str | None = None
        self._retry_at = 0.0
        # Counters (each written by one thread only).
        self.written = 0
        self.summaries = 0
        self.dropped_full = 0  # the queue was full
        self.dropped_io = 0  # the folder could not be written
        self.write_errors = 0
        self.rotations = 0

    # -- producer side (the capture loop): never blocks
    def frames(self, records: list[tuple], per_frame: bool = False) -> None:
        """One frame's measures of every region, as one queue entry: each record is
        (the region's file stem, ts, frame_id, region, fraction, pixels, moving, state, settling).
        They are summed up per interval, and with `per_frame` also logged line by line.

        The queue bound counts records, so many regions cannot make it hold more lines than one region would.
        """
        n = len(records)
        if (len(self._queue) + 1) * n > self._capacity and self._queue:
            self.dropped_full += n
        else:
            self._queue.append(("frames+lines" if per_frame else "frames", "", records))

    def event(self, file_name: str, record: dict[str, Any]) -> None:
        self._put(("event", file_name, record))

    def close_file(self, file_stem: str) -> None:
        """A region went away: write its open interval and release its file handles."""
        self._put(("close", file_stem, None))

    def _put(self, item: tuple[str, str, Any]) -> None:
        if len(self._queue) >= self._capacity:
            self.dropped_full += 1
        else:
            self._queue.append(item)

    # -- lifecycle
    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 0.8) -> None:
        """End the thread, then write what is still queued (for at most about a second) and the open intervals, and close the files."""
        if not self._worker.stop(timeout):
            return  # still inside a write (a hung disk): the thread keeps its files; it is a daemon thread
        self.flush(deadline=time.monotonic() + _FINAL_S)
        self._end_intervals(None)
        self._close_all()

    @property
    def running(self) -> bool:
        return self._worker.alive

    def stats(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir),
            "running": self.running,
            "interval_s": float(self._interval_s()),
            "queued": len(self._queue),
            "written": self.written,
            "summaries": self.summaries,
            "dropped_queue_full": self.dropped_full,
            "dropped_unwritable": self.dropped_io,
            "write_errors": self.write_errors,
            "rotations": self.rotations,
            "problem": self._failing,
        }

    # -- the writer thread
    def _step(self) -> None:
        self.flush(stopping=self._worker.stopping)
        self._end_intervals(time.monotonic())

    def flush(self, deadline: float | None = None, stopping: threading.Event | None = None) -> None:
        """Format and write what is queued, in batches, until the queue is empty, the monotonic `deadline` has
        passed or `stopping` is set. On the writer thread, or on the caller's while that thread is not running."""
        pending = self._queue
        while pending:
            if (deadline is not None and time.monotonic() > deadline) or (stopping is not None and stopping.is_set()):
                return
            batch: list[tuple[str, str, Any]] = []
            while pending and len(batch) < _BATCH:
                batch.append(pending.popleft())
            try:
                self._write_batch(batch)
            except Exception as exc:  # a bug here must not end the logs for good
                self.write_errors += 1
                self._errlog.log(logging.ERROR, type(exc).__name__, "motion log writer failed on a batch: %s", exc, exc_info=exc)

    def _end_intervals(self, now: float | None) -> None:
        """Write the open intervals due by the monotonic time `now` (all of them with None)."""
        lines: dict[str, list[bytes]] = {}
        for stem, interval in list(self._open.items()):
            if now is None or interval.due <= now:
                del self._open[stem]
                lines.setdefault(summary_log_name(stem), []).append(_line(interval.record()))
        if lines:
            self._write_lines(lines)

    def _write_batch(self, batch: list[tuple[str, str, Any]]) -> None:
        lines: dict[str, list[bytes]] = {}
        closing: list[str] = []
        interval_s = max(1.0, float(self._interval_s()))
        opened = self._open
        # By frame time an interval ends at end_at: written when no frame has come that much later (a stalled
        # camera), timed by the monotonic clock so that a wall clock stepping does not write it early or never.
        mono = time.monotonic() + _LATE_S
        for kind, name, payload in batch:
            if kind == "close":
                interval = opened.pop(name, None)
                if interval is not None:
                    lines.setdefault(summary_log_name(name), []).append(_line(interval.record()))
                closing += [motion_log_name(name), summary_log_name(name)]
                continue
            if kind.startswith("frames"):
                per_frame = kind == "frames+lines"
                for record in payload:
                    stem, ts, _frame_id, region, fraction, _pixels, moving, state, _settling = record
                    interval = opened.get(stem)
                    if interval is None or not interval.start_at <= ts < interval.end_at:
                        # A frame of another interval (the next one, or any other after a clock step) ends this one.
                        if interval is not None:
                            lines.setdefault(summary_log_name(stem), []).append(_line(interval.record()))
                        start_at = math.floor(ts / interval_s) * interval_s
                        interval = opened[stem] = _Interval(start_at, start_at + interval_s, region)
                    interval.add(ts, fraction, moving, state)
                    interval.due = mono + (interval.end_at - ts)
                    if per_frame:
                        lines.setdefault(motion_log_name(stem), []).append(_line(_frame_record(record[1:])))
                continue
            lines.setdefault(name, []).append(_line(payload))
        if lines:
            self._write_lines(lines)
        for name in closing:
            self._close(name)

    def _write_lines(self, lines: dict[str, list[bytes]]) -> None:
        if self._failing is not None and time.monotonic() < self._retry_at:
            self.dropped_io += sum(len(v) for v in lines.values())
            return
        total = sum(len(v) for v in lines.values())
        written_before = self.written
        for name, chunk in lines.items():
            try:
                self._append(name, chunk)
            except OSError as exc:
                # The folder is likely unwritable as a whole: drop the rest of the batch instead of
                # hammering it file by file, and try again after retry_s.
                self._fail(name, exc)
                self.dropped_io += total - (self.written - written_before)
                return
            if name.startswith(SUMMARY_PREFIX):
                self.summaries += len(chunk)
        if self._failing is not None:
            log.info("motion logs: writing to %s again (was: %s)", self.dir, self._failing)
            self._failing = None
            self._on_problem(None)

    def _limits(self, name: str) -> tuple[int, int]:
        """(size cap in bytes, rotated files kept) of a log file: the per-frame logs have their own."""
        if name.startswith(FRAME_PREFIX):
            return max(1, int(self._frames_max_bytes())), max(0, int(self._frames_keep()))
        return max(1, int(self._max_bytes())), max(0, int(self._keep()))

    def _append(self, name: str, chunk: list[bytes]) -> None:
        max_bytes, keep = self._limits(name)
        handle = self._open_file(name)
        for line in chunk:
            if handle.size > 0 and handle.size + len(line) > max_bytes:
                self._rotate(name, keep)
                handle = self._open_file(name)
            handle.fh.write(line)
            handle.size += len(line)
            self.written += 1
        handle.fh.flush()

    def _open_file(self, name: str) -> _OpenLog:
        handle = self._files.get(name)
        if handle is not None:
            return handle
        if len(self._files) >= _MAX_OPEN:
            self._close_all()
        self.dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.dir / name, "ab")  # kept open across batches, closed by _close
        handle = _OpenLog(fh, fh.tell())
        self._files[name] = handle
        return handle

    def _rotate(self, name: str, keep: int) -> None:
        self._close(name)
        path = self.dir / name
        if keep == 0:
            path.unlink(missing_ok=True)
        else:
            for i in range(keep - 1, 0, -1):
                older = self.dir / f"{name}.{i}"
                if older.exists():
                    os.replace(older, self.dir / f"{name}.{i + 1}")
            os.replace(path, self.dir / f"{name}.1")
        # `keep` may have been lowered live: old files beyond it go now.
        for extra in glob.glob(os.path.join(glob.escape(str(self.dir)), glob.escape(name) + ".*")):
            suffix = extra.rsplit(".", 1)[-1]
            if suffix.isdigit() and int(suffix) > keep:
                try:
                    os.unlink(extra)
                except FileNotFoundError:
                    pass
        self.rotations += 1

    def _fail(self, name: str, exc: OSError) -> None:
        self.write_errors += 1
        self._close_all()
        reason = f"cannot write motion log {self.dir / name}: {exc.strerror or exc}"
        self._retry_at = time.monotonic() + self._retry_s
        # Logged at once, then once a minute with a count while it goes on failing.
        self._errlog.error(reason, "%s; dropping log lines, retrying every %.0f s", reason, self._retry_s)
        if self._failing != reason:
            self._failing = reason
            self._on_problem(reason)

    def _close(self, name: str) -> None:
        handle = self._files.pop(name, None)
        if handle is not None:
            try:
                handle.fh.close()
            except OSError as exc:
                log.warning("closing motion log %s failed: %s", name, exc)

    def _close_all(self) -> None:
        for name in list(self._files):
            self._close(name)


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), default=str).encode() + b"\n"


def _frame_record(record: tuple) -> dict[str, Any]:
    ts, frame_id, region, fraction, pixels, moving, state, settling = record
    out: dict[str, Any] = {
        "ts": round(ts, 3),
        "frame_id": frame_id,
        "region": region,
        "fraction": round(fraction, 4),
        "pixels": pixels,
        "moving": moving,
        "state": state,
    }
    if settling:
        out["settling"] = True
    return out
