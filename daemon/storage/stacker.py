"""Stacks: a pastStack of the ring, and stacks of the next N full-resolution frames, in the foreground or the background.

Every stack reserves its memory from the shared `StackBudget` before it starts. A sigma clip whose N frames cannot
fit the whole budget is stacked with the mean instead, with a note in the reply, the log and the sidecar. A `stack`
runs for the client that asked: when `wanted` says the client has gone (it closed the connection, or its sending
side, as `nc -N` and `nc -q0` do: TCP cannot tell those apart from a client that has gone without writing to it)
the stack is cancelled within a quarter of a second and nothing is written. A background stack finishes whatever
the client does; one runs at a time, and `health` shows its progress and result. The Stacker makes the image; the
Exporter, through `write`, names and stores it like every other capture.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.capture.ring import FrameMeta, LatestSlot, Ring
from daemon.config import Section
from daemon.core.repeat import RepeatedLog
from daemon.core.worker import Worker
from daemon.image.stacking import CLIP_BAND_BYTES, MEAN_BAND_BYTES, METHODS, MeanAccumulator, available_memory_bytes, stack
from daemon.storage.budget import Reservation, StackBudget
from daemon.storage.errors import BusyError, ExportCancelled, ExportError, NoFrameError, TooLargeError, mb
from daemon.storage.layout import capture_stamp, check_kind

log = logging.getLogger("picamd.export")

MAX_STACK = 1000
_WAIT_SLICE_S = 0.25  # how often a waiting stack looks at its cancel events and at its client
_BACKGROUND_JOIN_S = 1.0  # stop() waits this long for a background stack to notice it is cancelled

#: what stores a finished image as a capture: (image, meta of its newest frame, kind, formats, how it was made) -> paths
WriteFn = Callable[[np.ndarray, FrameMeta, str, list[str], dict[str, Any]], list[Path]]


@dataclass
class StackPlan:
    """A stack of the next frames, checked and with its memory reserved, before the first frame is waited for."""

    n: int
    kind: str
    method: str
    sigma: float
    notes: list[str]
    reservation: Reservation
    frame_shape: tuple[int, ...]


def describe(
    kind: str, method: str, metas: list[FrameMeta], frame: np.ndarray, *, source: str, sigma: float | None = None
) -> dict[str, Any]:
    """How an image was made from these frames: the sidecar's `capture` part."""
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


class Stacker:
    """The stacks of one Exporter: they share `budget`, end when `closing` is set, and are stored through `write`."""

    def __init__(
        self,
        cfg: Section,
        ring: Ring,
        latest: LatestSlot,
        budget: StackBudget,
        closing: threading.Event,
        write: WriteFn,
        base_dir: Callable[[], Path],
    ) -> None:
        self._cfg = cfg
        self._ring = ring
        self._latest = latest
        self._budget = budget
        self._closing = closing
        self._write = write
        self._base_dir = base_dir
        self._notes = RepeatedLog(log)  # stack notes and refusals: one line per kind a minute, then a count
        self._stats_lock = threading.Lock()
        self._cancelled = 0
        self._refused = 0
        self._job: dict[str, Any] | None = None  # the background stack: running, or how the last one ended
        self._job_lock = threading.Lock()
        self._job_worker: Worker | None = None

    def stop(self) -> None:
        """Wait a little for a background stack to notice `closing` (set by the caller) and end."""
        worker = self._job_worker
        if worker is not None:
            worker.stop(_BACKGROUND_JOIN_S)

    def health(self) -> dict[str, Any]:
        with self._stats_lock:
            cancelled, refused = self._cancelled, self._refused
        with self._job_lock:
            job = dict(self._job) if self._job else None
        held, holders = self._budget.snapshot()
        return {
            "running": holders,
            "memory_mb": round(held / 2**20, 1),
            "memory_limit_mb": self._cfg.stack_memory_mb,
            "cancelled": cancelled,
            "refused": refused,
            "background": job,
        }

    def past_stack(self, fmts: list[str]) -> tuple[list[Path], dict[str, Any]]:
        """Stack the ring frames of the last save_before_s seconds (by timestamp), at most stack_count."""
        method, sigma = self._method()
        limit = int(self._cfg.stack_count)
        frame_bytes = int(np.prod(self._ring.shape))
        upto = max(1, min(limit, self._ring.fill))
        scratch = (CLIP_BAND_BYTES if method == "sigma_clip" else MEAN_BAND_BYTES) + frame_bytes  # a band and the result

        def fits(free: int) -> str:
            most = (free - scratch) // frame_bytes
            return f" (at most {most} ring frames fit: lower export.stack_count)" if most >= 1 else ""

        with self._reserve(upto * frame_bytes + scratch, f"pastStack of {upto} ring frames", fits):
            frames, metas = self._ring.last_seconds(float(self._cfg.save_before_s), limit=limit)
            if not metas:
                raise NoFrameError("no frame yet")
            if method == "sigma_clip" and len(metas) < 3:
                method = "mean"  # too few samples to call any of them an outlier
            image = stack(frames, method, sigma)
            del frames
            how = describe("stack", method, metas, image, source="ring", sigma=sigma)
            how["window_s"] = float(self._cfg.save_before_s)
            return self._write(image, metas[-1], "stack", fmts, how), how

    def plan(self, n: int, kind: str, what: str) -> StackPlan:
        """Check a stack of the next n frames and reserve its memory, choosing sigma_clip only where its frames fit."""
        check_kind(kind)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_STACK:
            raise ExportError(f"frame count must be 1..{MAX_STACK}, not {n!r}")
        n = int(n)
        method, sigma = self._method()
        current = self._latest.get()
        if current is None:
            raise NoFrameError("no frame yet")
        frame = current[0]
        frame_bytes = int(frame.nbytes)
        size = f"{frame.shape[1]}x{frame.shape[0]}"
        notes: list[str] = []
        if method == "sigma_clip" and n < 3:
            method = "mean"  # too few samples to call any of them an outlier
        if method == "sigma_clip":
            need = n * frame_bytes + CLIP_BAND_BYTES + frame_bytes  # the frames, one band of scratch, the result
            limit = self._budget.limit
            avail = available_memory_bytes()
            if need > limit:
                most = (limit - CLIP_BAND_BYTES - frame_bytes) // frame_bytes
                notes.append(
                    f"sigma_clip of {n} frames of {size} needs {mb(need)}, more than export.stack_memory_mb "
                    f"{limit / 2**20:g}" + (f" (up to {most} frames fit)" if most >= 3 else "") + "; stacked with mean"
                )
                method = "mean"
            elif avail is not None and need > avail // 2:
                notes.append(f"sigma_clip of {n} frames of {size} needs {mb(need)} and only {mb(avail)} is available; stacked with mean")
                method = "mean"
        if method == "sigma_clip":

            def fits(free: int) -> str:
                most = (free - CLIP_BAND_BYTES - frame_bytes) // frame_bytes
                return f"; sigma_clip of up to {most} frames would fit now" if most >= 3 else ""
        else:
            need = 5 * frame_bytes  # the float32 sum and the result

            def fits(free: int) -> str:
                return ""

        reservation = self._reserve(need, f"{what} ({method}, {size})", fits)
        for note in notes:
            self._notes.warning(f"{kind} {' '.join(note.split()[:2])}", "%s: %s", what, note)
        return StackPlan(n, kind, method, sigma, notes, reservation, tuple(frame.shape))

    def _reserve(self, nbytes: int, what: str, hint: Callable[[int], str]) -> Reservation:
        try:
            return self._budget.reserve(nbytes, what, hint)
        except (BusyError, TooLargeError) as exc:
            with self._stats_lock:
                self._refused += 1
            self._notes.log(logging.INFO, exc.summary, "refused %s", exc)
            raise

    def run(
        self,
        plan: StackPlan,
        fmts: list[str],
        timeout: float | None,
        cancel: threading.Event | None,
        wanted: Callable[[], bool] | None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[list[Path], dict[str, Any]]:
        """Wait for, stack and save the plan's frames; releases its memory however it ends."""
        try:
            return self._stack_frames(plan, fmts, timeout, cancel, wanted, progress)
        except ExportCancelled:
            with self._stats_lock:
                self._cancelled += 1
            raise
        finally:
            plan.reservation.release()

    def _stack_frames(
        self,
        plan: StackPlan,
        fmts: list[str],
        timeout: float | None,
        cancel: threading.Event | None,
        wanted: Callable[[], bool] | None,
        progress: Callable[[int], None] | None,
    ) -> tuple[list[Path], dict[str, Any]]:
        n, kind, method, sigma = plan.n, plan.kind, plan.method, plan.sigma
        notes: list[str] = []  # what happened while stacking (the plan's notes were logged when it was made)
        current = self._latest.get()
        if current is None:
            raise NoFrameError("no frame yet")
        after, last_meta = current[1].frame_id, current[1]
        interval = self._recent_frame_interval()
        acc: MeanAccumulator | None = None
        held: np.ndarray | None = None  # the frames themselves, for sigma clipping
        metas: list[FrameMeta] = []
        first_frame: np.ndarray | None = None
        while len(metas) < n:
            wait_s = timeout if timeout is not None else self._frame_wait(last_meta, interval)
            got = self._wait_frame(after, wait_s, cancel, wanted)
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
                if frame.shape != plan.frame_shape and frame.nbytes > int(np.prod(plan.frame_shape)):
                    raise ExportError(
                        f"the frame size changed to {frame.shape[1]}x{frame.shape[0]} as the stack started; try again"
                    )  # its memory was reserved for the smaller frames
                first_frame = frame
                if method == "sigma_clip":
                    held = np.empty((n, *frame.shape), dtype=np.uint8)
                else:
                    acc = MeanAccumulator(frame.shape)
            elif frame.shape != first_frame.shape:
                notes.append(
                    f"the frame size changed from {first_frame.shape[1]}x{first_frame.shape[0]} to "
                    f"{frame.shape[1]}x{frame.shape[0]} after {len(metas)} frames; stacked those"
                )
                break
            if held is not None:
                held[len(metas)] = frame
            elif acc is not None:
                acc.add(frame)
            metas.append(meta)
            if progress is not None:
                progress(len(metas))
        if first_frame is None:  # not reached: the loop ends with a frame or raises
            raise NoFrameError("no new frame")
        if held is not None:
            if len(metas) < 3:
                method = "mean"  # too few samples to call any of them an outlier
            image = stack(held[: len(metas)], method, sigma)
            held = None
        elif acc is not None:
            image = acc.result()
            acc = None
        else:  # not reached: the first frame sets up one of the two
            raise ExportError("nothing was stacked")
        if wanted is not None and not wanted():
            raise ExportCancelled("stack cancelled: the client closed the connection")  # nobody to give the file to
        for note in notes:
            self._notes.warning(f"{kind} {' '.join(note.split()[:2])}", "%s: %s", kind, note)
        how = describe(kind, method, metas, first_frame, source="full", sigma=sigma)
        if len(metas) < n:
            how["requested"] = n
        if plan.notes or notes:
            how["note"] = "; ".join(plan.notes + notes)
        return self._write(image, metas[-1], kind, fmts, how), how

    def start_background(self, n: int, fmts: list[str], who: str = "") -> dict[str, Any]:
        """Start stacking the next n frames on a thread of its own, to finish whatever the asker does.

        Checks and reserves at once (ExportError, BusyError, TooLargeError) and returns what will be written.
        One background stack at a time: another is refused with BusyError while one runs."""
        with self._job_lock:
            job = self._job
            if job is not None and job["state"] == "running":
                started = time.time() - job["started"]
                raise BusyError(
                    f"busy: a background stack is running ({job['done']} of {job['frames']} frames, started "
                    f"{started:.0f} s ago); one at a time",
                    summary="busy",
                )
            plan = self.plan(n, "stack", f"background stack {n}" + (f" for {who}" if who else ""))
            newest = self._latest.get()
            interval = self._recent_frame_interval()
            day, stamp = capture_stamp(newest[1].ts if newest else time.time())
            job = {
                "state": "running",
                "frames": plan.n,
                "done": 0,
                "method": plan.method,
                "formats": fmts,
                "for": who or None,
                "started": round(time.time(), 3),
                "expected_s": round(plan.n * interval, 1) if interval > 0 else None,
                "folder": str(self._base_dir() / day),
                "name": f"YYYYMMDD-HHMMSS.mmm_f<id>_stack.{'|'.join(fmts)} (time and id of the last frame, now {stamp})",
            }
            if plan.notes:
                job["note"] = "; ".join(plan.notes)
            self._job = job
            worker = Worker("stack-bg", lambda: self._background(plan, fmts, job), repeat=False)
            self._job_worker = worker
        try:
            worker.start()
        except RuntimeError as exc:  # out of threads
            plan.reservation.release()
            with self._job_lock:
                job.update(state="failed", error=f"cannot start a thread: {exc}")
            raise ExportError(f"cannot start the background stack: {exc}") from None
        log.info("background stack of %d frames (%s) started%s", plan.n, plan.method, f" for {who}" if who else "")
        return dict(job)

    def _background(self, plan: StackPlan, fmts: list[str], job: dict[str, Any]) -> None:
        def progress(done: int) -> None:
            job["done"] = done

        try:
            paths, how = self.run(plan, fmts, None, None, None, progress)
        except ExportCancelled as exc:
            outcome: dict[str, Any] = {"state": "cancelled", "error": str(exc)}
        except ExportError as exc:
            outcome = {"state": "failed", "error": str(exc)}
            self._notes.warning("background " + type(exc).__name__, "background stack failed: %s", exc)
        else:
            outcome = {"state": "saved", "paths": [str(p) for p in paths], "done": how["frames"]}
        outcome["finished"] = round(time.time(), 3)
        with self._job_lock:
            job.update(outcome)

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

    def _wait_frame(
        self, after_id: int, wait_s: float, cancel: threading.Event | None, wanted: Callable[[], bool] | None = None
    ) -> tuple[np.ndarray, FrameMeta] | None:
        deadline = time.monotonic() + wait_s
        while True:
            if self._closing.is_set() or (cancel is not None and cancel.is_set()):
                raise ExportCancelled("stack abandoned: the daemon is stopping")
            if wanted is not None and not wanted():
                raise ExportCancelled("stack cancelled: the client closed the connection")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            got = self._latest.wait_newer(after_id, min(_WAIT_SLICE_S, left))
            if got is not None:
                return got
