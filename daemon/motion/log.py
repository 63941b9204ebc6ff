"""Background writer of the motion logs (JSON lines, rotated by size).

The capture loop only appends to a bounded deque (`frames`: one entry per
frame holding every region's record; `event`: no lock, no wake-up, a fraction
of a microsecond); the thread `picamd-motionlog` collects the entries a few
times a second, formats them, appends them to their files under the log folder
and rotates a file when it would grow past the size cap: `motion_press1.jsonl`
becomes `motion_press1.jsonl.1`, `.1` becomes `.2` and so on, keeping `keep`
old files. The bound (`queue_size`) counts records whatever the number of
regions; `stats()["queued"]` counts entries. When the queue is full (a very
slow SD card) records are dropped and counted, never waited for. When the
folder cannot be written (disk full, permissions) the records of the next few
seconds are dropped and counted, the problem is reported through `on_problem`,
and writing is tried again every `retry_s`; `on_problem(None)` says it works
again.

The line formats are described in `daemon/motion.py`.
"""
from __future__ import annotations

import collections
import glob
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

log = logging.getLogger("picamd.motion")

STATE_LOG = "state_changes.jsonl"
DEEP_SLEEP_LOG = "deep_sleep.jsonl"

_BATCH = 2048  # records written between flushes when the queue is busy
_POLL_S = 0.25  # how often the writer collects what the capture loop queued
_MAX_OPEN = 64  # more open files than this (regions come and go) closes them all; they reopen on demand


def motion_log_name(file_stem: str) -> str:
    return f"motion_{file_stem}.jsonl"


class _OpenLog:
    __slots__ = ("fh", "size")

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.size = size


class MotionLog:
    def __init__(
        self,
        log_dir: str | os.PathLike,
        *,
        max_bytes: Callable[[], int],
        keep: Callable[[], int],
        on_problem: Callable[[str | None], None],
        queue_size: int = 20000,
        retry_s: float = 5.0,
    ) -> None:
        self.dir = Path(log_dir)
        self._max_bytes = max_bytes
        self._keep = keep
        self._on_problem = on_problem
        # deque.append/popleft are atomic: one producer (the capture loop) and one consumer need no lock.
        self._queue: collections.deque[tuple[str, str, Any]] = collections.deque()
        self._capacity = max(1, queue_size)
        self._retry_s = retry_s
        self._files: dict[str, _OpenLog] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: str | None = None
        self._retry_at = 0.0
        # Counters (each written by one thread only).
        self.written = 0
        self.dropped_full = 0  # the queue was full
        self.dropped_io = 0  # the folder could not be written
        self.write_errors = 0
        self.rotations = 0

    # -- producer side (the capture loop): never blocks
    def frames(self, records: list[tuple]) -> None:
        """One frame's measures of every region, as one queue entry: each record is
        (file name from `motion_log_name`, ts, frame_id, region, fraction, pixels, moving, state, settling).

        The queue bound counts records, so many regions cannot make it hold more lines than one region would.
        """
        n = len(records)
        if (len(self._queue) + 1) * n > self._capacity and self._queue:
            self.dropped_full += n
        else:
            self._queue.append(("frames", "", records))

    def event(self, file_name: str, record: dict[str, Any]) -> None:
        self._put(("event", file_name, record))

    def close_file(self, file_stem: str) -> None:
        """A region went away: release its file handle."""
        self._put(("close", motion_log_name(file_stem), None))

    def _put(self, item: tuple[str, str, Any]) -> None:
        if len(self._queue) >= self._capacity:
            self.dropped_full += 1
        else:
            self._queue.append(item)

    # -- lifecycle
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="picamd-motionlog", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.8) -> None:
        """Write what is queued (for at most about a second), close the files, and end the thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("motion log writer did not stop within %.1f s", timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir),
            "running": self.running,
            "queued": len(self._queue),
            "written": self.written,
            "dropped_queue_full": self.dropped_full,
            "dropped_unwritable": self.dropped_io,
            "write_errors": self.write_errors,
            "rotations": self.rotations,
            "problem": self._failing,
        }

    # -- the writer thread
    def _run(self) -> None:
        pending = self._queue
        try:
            while not self._stop.wait(_POLL_S):
                self._drain(pending, deadline=None)
            self._drain(pending, deadline=time.monotonic() + 1.0)  # what was queued before stop, within reason
        finally:
            self._close_all()

    def _drain(self, pending: collections.deque, deadline: float | None) -> None:
        while pending:
            if deadline is not None and time.monotonic() > deadline:
                return
            batch = []
            while pending and len(batch) < _BATCH:
                batch.append(pending.popleft())
            try:
                self._write_batch(batch)
            except Exception as exc:  # a bug here must not end the logs for good
                self.write_errors += 1
                log.exception("motion log writer failed on a batch: %s", exc)

    def _write_batch(self, batch: list[tuple[str, str, Any]]) -> None:
        lines: dict[str, list[bytes]] = {}
        for kind, name, payload in batch:
            if kind == "close":
                self._close(name)
                continue
            if kind == "frames":
                for record in payload:
                    lines.setdefault(record[0], []).append(_line(_frame_record(record[1:])))
                continue
            lines.setdefault(name, []).append(_line(payload))
        if not lines:
            return
        if self._failing is not None and time.monotonic() < self._retry_at:
            self.dropped_io += sum(len(v) for v in lines.values())
            return
        max_bytes = max(1, int(self._max_bytes()))
        total = sum(len(v) for v in lines.values())
        written_before = self.written
        for name, chunk in lines.items():
            try:
                self._append(name, chunk, max_bytes)
            except OSError as exc:
                # The folder is likely unwritable as a whole: drop the rest of the batch instead of
                # hammering it file by file, and try again after retry_s.
                self._fail(name, exc)
                self.dropped_io += total - (self.written - written_before)
                return
        if self._failing is not None:
            log.info("motion logs: writing to %s again (was: %s)", self.dir, self._failing)
            self._failing = None
            self._on_problem(None)

    def _append(self, name: str, chunk: list[bytes], max_bytes: int) -> None:
        handle = self._open(name)
        for line in chunk:
            if handle.size > 0 and handle.size + len(line) > max_bytes:
                self._rotate(name)
                handle = self._open(name)
            handle.fh.write(line)
            handle.size += len(line)
            self.written += 1
        handle.fh.flush()

    def _open(self, name: str) -> _OpenLog:
        handle = self._files.get(name)
        if handle is not None:
            return handle
        if len(self._files) >= _MAX_OPEN:
            self._close_all()
        self.dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.dir / name, "ab")
        handle = _OpenLog(fh, fh.tell())
        self._files[name] = handle
        return handle

    def _rotate(self, name: str) -> None:
        self._close(name)
        path = self.dir / name
        keep = max(0, int(self._keep()))
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
        if self._failing != reason:
            self._failing = reason
            log.error("%s; dropping log lines, retrying every %.0f s", reason, self._retry_s)
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
