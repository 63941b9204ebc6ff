"""The capture loop: the heart of the daemon, and the ring's only writer.

Per frame it does only what is cheap and bounded: read from the source,
resize straight into the next ring slot (or copy the camera's own
downscaled frame there, `info["lores"]`), score the brightness, feed the
night controller, run motion on the small frame, commit, and hand the
full-resolution frame reference to the `LatestSlot`. Everything with I/O or a
cost that grows with clients (JPEG, saving, HTTP, SMTP) happens on other
threads that read the ring or the slot.

A source that raises, stalls or cannot be opened is closed and reopened with
exponential backoff; meanwhile the daemon keeps serving and `health` says
`camera: degraded (...)`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import cv2
import numpy as np

from daemon.capture.ring import FrameMeta, LatestSlot, Ring
from daemon.config import Section
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker
from daemon.image.night import NightController, dark_score
from daemon.sources.base import Source, SourceError

log = logging.getLogger("picamd.capture")


class FrameStage(Protocol):
    def process(self, ring_frame: np.ndarray, meta: FrameMeta, full_frame: np.ndarray | None = None) -> None: ...


class CaptureLoop:
    def __init__(
        self,
        camera: Section,
        night_cfg: Section,
        source_factory: Callable[[], Source],
        ring: Ring,
        latest: LatestSlot,
        night: NightController,
        bus: EventBus,
        status: ComponentStatus,
        stages: Sequence[FrameStage] | None = None,
        slowdown: Callable[[], float] = lambda: 1.0,
        first_source: Source | None = None,
    ) -> None:
        self._cfg = camera
        self._night_cfg = night_cfg
        self._factory = source_factory
        self._ring = ring
        self._latest = latest
        self._night = night
        self._bus = bus
        self.status = status
        self._stages = list(stages or [])
        self._slowdown = slowdown
        self._source: Source | None = first_source
        self._worker = Worker("capture", self._run, status=status, repeat=False)
        self._next_id = 1
        self._frames = 0
        self._dropped = 0  # frames the source says it replaced before the loop took one (info["dropped"])
        self._fps = 0.0
        self._last_frame_mono: float | None = None
        self._opened_mono = time.monotonic()
        self._reopens = 0
        self._pending_fps: float | None = None
        self._applied_interval: float | None = None  # what the camera says a frame takes after a mode switch
        self._source_lock = threading.Lock()  # guards the source against the command threads' dumps
        self._described: dict[str, Any] = first_source.describe() if first_source else {}
        self._ring_wh = (ring.shape[1], ring.shape[0])
        # How each ring frame was made: "isp" (the camera's lores stream), "copy" (same size) or "resize" (on the CPU).
        self.ring_from: collections.Counter[str] = collections.Counter()
        camera.config.on_change("camera.framerate", lambda _k, v: setattr(self, "_pending_fps", v))

    # -- lifecycle
    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        self._close_source()

    # -- what others may ask
    @property
    def frames(self) -> int:
        return self._frames

    @property
    def fps(self) -> float:
        return self._fps

    def last_frame_age(self) -> float | None:
        return None if self._last_frame_mono is None else time.monotonic() - self._last_frame_mono

    def flowing(self) -> bool:
        """True while frames arrive within the stall timeout (the systemd watchdog is only fed then)."""
        age = self.last_frame_age()
        limit = self._cfg.stall_timeout_s + self._frame_interval()
        return age is not None and age < limit

    def source_call(self, what: str) -> dict[str, Any]:
        """Run source.controls()/exposure() for a command thread, serialised with reconfiguration."""
        with self._source_lock:
            src = self._source
            if src is None:
                raise SourceError("camera is not open")
            return getattr(src, what)()

    def health(self) -> dict[str, Any]:
        age = self.last_frame_age()
        return {
            "state": self.status.state,
            "source": self._described,
            "frames": self._frames,
            "dropped": self._dropped,
            "ring_from": dict(self.ring_from),
            "fps": round(self._fps, 2),
            "last_frame_age_s": None if age is None else round(age, 3),
            "reopens": self._reopens,
        }

    # -- the loop
    def _frame_interval(self) -> float:
        if self._applied_interval is not None:
            return max(1.0 / self._cfg.framerate, self._applied_interval)
        if self._night.is_night and self._night_cfg.mode == "still":
            return max(1.0 / self._cfg.framerate, self._night_cfg.exposure_us / 1e6)
        return 1.0 / self._cfg.framerate

    def current_source(self) -> Source | None:
        return self._source

    def _run(self) -> None:
        stop = self._worker.stopping
        backoff = 0.5
        while not stop.is_set():
            src = self._source if self._source is not None else self._open_source()
            if src is None:
                stop.wait(backoff)
                backoff = min(backoff * 2, self._cfg.reopen_backoff_max_s)
                continue
            try:
                if self._pending_fps is not None:
                    fps, self._pending_fps = self._pending_fps, None
                    with self._source_lock:
                        src.set_framerate(fps)
                got = src.read(timeout=min(1.0, self._cfg.stall_timeout_s))
            except Exception as exc:
                self._fail(f"{self._described.get('source', 'source')} failed: {exc}")
                continue
            if got is None:
                started = max(self._last_frame_mono or 0.0, self._opened_mono)
                if time.monotonic() - started > self._cfg.stall_timeout_s + self._frame_interval():
                    self._fail(f"no frame for {time.monotonic() - started:.1f} s")
                continue
            backoff = 0.5
            try:
                self._ingest(*got)
            except Exception as exc:  # a bug in a stage must not stop the camera
                self.status.error("frame processing failed", exc)
            factor = self._slowdown()
            if factor > 1.0:
                # Swap guard: stretch the frame interval to let memory recover.
                stop.wait(self._frame_interval() * (factor - 1.0))

    def _open_source(self) -> Source | None:
        """Open a new source and make it current; None (and degraded) when it cannot be opened."""
        try:
            src = self._factory()
            src.open()
        except Exception as exc:
            self._degrade(f"cannot open camera: {exc}")
            return None
        with self._source_lock:
            self._source = src
        self._described = src.describe()
        self._opened_mono = time.monotonic()
        self._reopens += 1
        self._night.camera_reopened()  # a reopened camera comes back at day exposure
        log.info("camera opened: %s", self._described)
        return src

    def _close_source(self) -> None:
        with self._source_lock:
            src, self._source = self._source, None
        if src is not None:
            try:
                src.close()
            except Exception as exc:
                log.warning("closing the camera failed: %s", exc)

    def _fail(self, reason: str) -> None:
        self._close_source()
        self._degrade(reason)

    def _degrade(self, reason: str) -> None:
        was_ok = self.status.ok
        self.status.degrade(reason)
        if was_ok:
            self._bus.publish("camera.degraded", reason=reason)

    def apply_night(self, night: bool) -> dict[str, Any]:
        """The night controller's `apply_camera`: it runs on this thread (from `_ingest`), which owns the source."""
        src = self._source
        if src is None:
            return {"night": night, "applied": False, "note": "camera not open"}
        with self._source_lock:
            applied = src.apply_night(night, self._night_cfg.mode, self._night_cfg.exposure_us, self._night_cfg.gain)
        interval = applied.get("max_frame_interval_s") or applied.get("frame_interval_s")
        self._applied_interval = float(interval) if night and interval else None
        return applied

    def _ingest(self, frame: np.ndarray, info: dict[str, Any]) -> None:
        now_mono = time.monotonic()
        now_wall = time.time()
        slot = self._ring.next_slot()
        lores = info.get("lores")
        if lores is not None and lores.shape == slot.shape:
            np.copyto(slot, lores)  # the camera's ISP already downscaled it
            self.ring_from["isp"] += 1
        elif frame.shape[1::-1] == self._ring_wh:
            np.copyto(slot, frame)
            self.ring_from["copy"] += 1
        else:
            cv2.resize(frame, self._ring_wh, dst=slot, interpolation=cv2.INTER_AREA)
            self.ring_from["resize"] += 1
        score = dark_score(slot)
        meta = FrameMeta(
            frame_id=self._next_id,
            ts=now_wall,
            mono=now_mono,
            dark_score=score,
            night=self._night.is_night,
            exposure_us=info.get("exposure_us"),
            gain=info.get("gain"),
            extra={"source": self._described.get("source", "unknown")},  # X-Source: a synthetic frame says so everywhere
            source_ts_ns=info.get("sensor_ts_ns"),
        )
        self._night.update(score, meta.exposure_us, meta.gain, now_mono, now_wall)
        for stage in self._stages:
            stage.process(slot, meta, frame)
        self._ring.commit(meta)
        self._latest.put(frame, meta)
        self._next_id += 1
        self._frames += 1
        self._dropped += int(info.get("dropped", 0))
        if self._last_frame_mono is not None:
            dt = now_mono - self._last_frame_mono
            if dt > 0:
                self._fps = (1.0 / dt) if self._fps == 0 else 0.9 * self._fps + 0.1 / dt
        self._last_frame_mono = now_mono
        if not self.status.ok:
            self.status.recover()
            self._bus.publish("camera.recovered", source=self._described)
