"""The detection component: one worker thread runs the detector on the newest full-resolution frame.

The worker (`picamd-detect`) waits on the `LatestSlot` for the newest frame
(never a queue of stale ones), at most `detect.max_fps` times a second, and
runs the model only while the gate is open:
- `motion`: the ring frame (or `detect.zone` of it) changed since the last
  inference by at least `detect.gate_threshold` (see `gate.py`);
- `regions`: one of Motion's named regions is moving;
- `always`.
`detect on` runs it always, `detect auto` follows `detect.gate`, `detect off`
stops it (and frees the model); `set detect.enabled` hands control back to
the config. Every decision is counted: inferences run, and frames skipped by
reason, so a still scene is seen to cost nothing.

The detector (an interpreter, not thread-safe) is used by this thread only:
the `detect` command puts a request in a one-place slot, the worker serves it
between frames and the command waits with a timeout. A missing runtime or
model leaves the daemon running without detection: one log line, and
`health` says why (degraded only while detection is wanted).

Results (`result.py`) carry the id and time of the frame they were computed
on. The newest is a `Latest`; the capture loop's cheap `process` stage
copies its compact form into each frame's `meta.extra` (`detections`,
`people`), which is how the MJPEG parts get `X-Detections` and `X-People`
and /meta and sidecars get them too, with boxes already in the stream's
pixels; groups in them come from DBSCAN over foot points (`groups.py`).
What the results mean for people (tracks, the `detect.person`,
`detect.count` and `detect.clear` events, the evidence kept) is
`events.py`'s: the worker feeds it every live result and lets it age the
tracks by the clock in each step.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from daemon.capture.ring import FrameMeta, LatestSlot, Ring
from daemon.config import Section
from daemon.core.bus import EventBus
from daemon.core.histogram import Histogram
from daemon.core.latest import Latest
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker

from . import builtin_labels, builtin_model
from .annotate import draw_detections
from .base import BackendRegistry, Detector, DetectorOptions, DetectorUnavailable, DetectResult, default_registry
from .events import PeopleEvents
from .gate import ChangeGate, zone_fractions
from .groups import GroupFinder
from .result import DetectionResult

if TYPE_CHECKING:
    from daemon.commands import Registry
    from daemon.storage.clips import ClipRecorder
    from daemon.storage.export import Exporter

log = logging.getLogger("picamd.detect")

MODES = ("on", "off", "auto")
#: Keys whose change needs a new detector (the options are fixed when a model is loaded).
RELOAD_KEYS = (
    "detect.backend",
    "detect.model",
    "detect.labels",
    "detect.classes",
    "detect.score_threshold",
    "detect.iou_threshold",
    "detect.threads",
    "detect.zone",
)
GROUP_KEYS = ("detect.groups", "detect.group_eps", "detect.group_min_samples")


class RegionStates(Protocol):
    """What the regions gate reads from Motion."""

    def region_states(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class _Tag:
    """What the capture stage copies into each frame's metadata: built once per result."""

    full: dict[str, Any]
    ring: dict[str, Any]
    people: int


class _Request:
    """One `detect` command waiting for the worker, or a picture of someone else's (`given`) to look at."""

    def __init__(self, given: np.ndarray | None = None) -> None:
        self.given = given
        self.found: DetectResult | None = None
        self.group_count = 0
        self.done = threading.Event()
        self.result: DetectionResult | None = None
        self.frame: np.ndarray | None = None
        self.meta: FrameMeta | None = None
        self.error: str | None = None


class Detection:
    #: How long the worker waits for a frame before looking at requests and settings again.
    poll_s = 0.2

    def __init__(
        self,
        cfg: Section,
        ring: Ring,
        latest: LatestSlot,
        motion: RegionStates | None,
        bus: EventBus,
        status: ComponentStatus,
        *,
        full_size: tuple[int, int],
        stream_resolution: Callable[[], str] = lambda: "full",
        saver: Exporter | None = None,
        clips: ClipRecorder | None = None,
        registry: BackendRegistry | None = None,
    ) -> None:
        self._cfg = cfg
        self._ring = ring
        self._latest = latest
        self._motion = motion
        self._bus = bus
        self.status = status
        self.full_size = (int(full_size[0]), int(full_size[1]))
        self._stream_resolution = stream_resolution
        self.saver = saver
        self._registry = registry or default_registry()
        self._wake = threading.Event()
        self._worker = Worker("detect", self._step, status=status, error_pause_s=1.0, on_stop=self._wake.set)
        self._mode: str | None = None  # set by `detect on|off|auto`; None follows detect.enabled
        self._reload = True
        self._regroup = True
        self._detector: Detector | None = None
        self._facts: dict[str, Any] | None = None
        self._reason: str | None = None  # why detection cannot run, until a change of settings
        self._groups: GroupFinder | None = None
        self._change = ChangeGate()
        self._results = Latest[DetectionResult]()
        self._tag: _Tag | None = None
        self._last_seen_id = -1
        self._next_due = 0.0
        self._request_lock = threading.Lock()  # one `detect` command at a time
        self._pending: _Request | None = None
        self._stats_lock = threading.Lock()
        self._runs = 0
        self._on_demand = 0
        self._skipped: collections.Counter[str] = collections.Counter()
        self._errors = 0
        self._inference_s = Histogram()  # for /metrics: how long the model takes, run after run
        self._people = PeopleEvents(cfg, bus, status, clips, on_empty=self._drop_tag)
        cfg.on_change(self._on_config)

    # -- lifecycle
    def start(self) -> None:
        log.info("detection %s (gate %s, at most %g inferences/s)", self.mode, self._cfg.gate, self._cfg.max_fps)
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        self._close_detector()

    def register_commands(self, registry: Registry) -> None:
        from .commands import DetectCommands  # the commands import the registry; the service stays light to import

        DetectCommands(self, self.saver).register(registry)

    # -- settings
    @property
    def mode(self) -> str:
        """on, off or auto: the command's choice, else auto while detect.enabled, else off."""
        if self._mode is not None:
            return self._mode
        return "auto" if self._cfg.enabled else "off"

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self._mode = mode
        if mode != "off" and self._reason is not None:
            self._reload = True  # asked again: try again (a runtime may have been installed meanwhile)
        log.info("detection %s by command", mode)
        self._wake.set()

    def _on_config(self, name: str, _value: Any) -> None:
        if name == "detect.enabled":
            self._mode = None  # the config speaks again
        elif name in RELOAD_KEYS:
            self._reload = True
        elif name in GROUP_KEYS:
            self._regroup = True
        self._wake.set()

    def _model_paths(self) -> tuple[Path, Path | None]:
        model, labels = str(self._cfg.model).strip(), str(self._cfg.labels).strip()
        if not model:
            return builtin_model(), Path(labels).expanduser() if labels else builtin_labels()
        path = Path(model).expanduser()
        if labels:
            return path, Path(labels).expanduser()
        if path.resolve() == builtin_model():
            return path, builtin_labels()  # the built-in model named by its path
        beside = [p for p in (path.with_suffix(".txt"), path.parent / "labels.txt") if p.is_file()]
        return path, beside[0] if beside else None

    def _options(self) -> DetectorOptions:
        model, labels = self._model_paths()
        zone = list(self._cfg.zone) or None
        return DetectorOptions(
            model=model,
            labels=labels,
            classes=tuple(self._cfg.classes),
            score_threshold=float(self._cfg.score_threshold),
            iou_threshold=float(self._cfg.iou_threshold),
            threads=int(self._cfg.threads),
            zone=zone,
        )

    # -- the worker
    def _step(self) -> None:
        self._serve_request()
        mode = self.mode
        if mode == "off":
            self._go_idle()
            return
        if self._reload or self._detector is None and self._reason is None:
            self._load()
        if self._regroup:
            self._regroup = False
            self._groups = GroupFinder(float(self._cfg.group_eps), int(self._cfg.group_min_samples)) if self._cfg.groups else None
        self._refresh_status(mode)
        self._people.age()
        self._people.check_clear()
        if self._detector is None:
            self._wait(0.5)
            return
        now = time.monotonic()
        if now < self._next_due:
            self._wait(self._next_due - now)
            return
        got = self._latest.wait_newer(self._last_seen_id, self.poll_s)
        if got is None:
            return
        frame, meta = got
        self._last_seen_id = meta.frame_id
        self._next_due = time.monotonic() + 1.0 / float(self._cfg.max_fps)
        skip = self._gate(mode)
        if skip is not None:
            with self._stats_lock:
                self._skipped[skip] += 1
            return
        self._infer(frame, meta, "on" if mode == "on" else str(self._cfg.gate))
        with self._stats_lock:
            self._runs += 1

    def _wait(self, seconds: float) -> None:
        if self._wake.wait(min(max(seconds, 0.0), 0.5)):
            self._wake.clear()

    def _go_idle(self) -> None:
        if self._detector is not None:
            self._close_detector()
            log.info("detection off: model released")
            self._reload = True
        self._tag = None
        self._reason = None  # nothing is wanted, so nothing is missing
        self._refresh_status("off")
        self._wait(0.5)

    def _load(self) -> None:
        self._reload = False
        self._close_detector()
        self._tag = None
        try:
            detector = self._registry.create_detector(str(self._cfg.backend), self._options())
        except DetectorUnavailable as exc:
            self._unavailable(exc.reason)
            return
        except ValueError as exc:  # options the detector refuses (a zone it cannot use, say)
            self._unavailable(f"bad detect settings: {exc}")
            return
        except Exception as exc:  # a backend failing in a way it did not foresee: still one line, never a crash
            self._unavailable(f"detector failed to load ({type(exc).__name__}: {exc})")
            return
        self._detector = detector
        self._facts = detector.describe()
        self._reason = None
        self._change.reset()
        self._refresh_status(self.mode)
        log.info("detection ready: %s", detector.summary())

    def _unavailable(self, reason: str) -> None:
        self._facts = None
        if self.mode != "off":  # the status first: whoever sees the reason sees the degraded status too
            self.status.degrade(f"detection unavailable: {reason}")
        self._reason = reason
        log.warning("detection unavailable, the daemon runs without it: %s", reason)

    def _close_detector(self) -> None:
        detector, self._detector = self._detector, None
        if detector is not None:
            try:
                detector.close()
            except Exception as exc:
                log.warning("closing the detector failed: %s", exc)

    def _refresh_status(self, mode: str) -> None:
        if mode != "off" and self._reason is not None:
            self.status.degrade(f"detection unavailable: {self._reason}")
        elif not self.status.ok:
            self.status.recover()

    def _gate(self, mode: str) -> str | None:
        """None when the model should run on this frame, else why not (the skip's reason)."""
        gate = self._cfg.gate
        if mode == "on" or gate == "always":
            return None
        if gate == "regions":
            states = self._motion.region_states() if self._motion is not None else []
            if not states:
                return "no_regions"
            return None if any(s.get("moving") for s in states) else "no_region_motion"
        got = self._ring.latest()
        if got is None:
            return "no_ring_frame"
        fraction = self._change.measure(got[0], zone_fractions(list(self._cfg.zone), self.full_size))
        if fraction is None or fraction < float(self._cfg.gate_threshold):
            return "no_motion"
        self._change.accept()
        return None

    def _serve_request(self) -> None:
        req, self._pending = self._pending, None
        if req is None:
            return
        try:
            if self.mode == "off":
                req.error = "detection is off (detect on|auto, or set detect.enabled true)"
                return
            if self._reload or self._detector is None and self._reason is None:
                self._load()
            if self._detector is None:
                req.error = f"detection unavailable: {self._reason}"
                return
            if req.given is not None:
                # Someone else's picture (a PTZ preset): no tracks, results or events of the live view change.
                req.found = self._detector.detect(req.given)
                req.group_count = len(self._groups.find(req.found.detections).groups) if self._groups is not None else 0
                with self._stats_lock:
                    self._on_demand += 1
                return
            got = self._latest.get()
            if got is None:
                req.error = "no frame yet"
                return
            frame, meta = got
            req.result = self._infer(frame, meta, "request")
            req.frame, req.meta = frame, meta
            with self._stats_lock:
                self._on_demand += 1
        except Exception as exc:
            req.error = f"detection failed: {type(exc).__name__}: {exc}"
            self.status.error("detection on request failed", exc)
        finally:
            req.done.set()

    def _infer(self, frame: np.ndarray, meta: FrameMeta, trigger: str) -> DetectionResult:
        detector = self._detector
        assert detector is not None
        started = time.perf_counter()
        try:
            found = detector.detect(frame)
        except Exception:
            with self._stats_lock:
                self._errors += 1
            raise
        self._inference_s.observe(found.inference_ms / 1e3)
        update = self._people.track(found.detections, float(meta.mono))
        groups = self._groups.find(found.detections).to_dict() if self._groups is not None else None
        dets = []
        for det, track in zip(found.detections, update.ids, strict=True):
            d = det.to_dict()
            d["track"] = track
            dets.append(d)
        people = sum(1 for d in found.detections if d.label == "person")
        result = DetectionResult(
            frame_id=meta.frame_id,
            ts=float(meta.ts),
            mono=float(meta.mono),
            frame_size=(found.frame_width, found.frame_height),
            detections=dets,
            people=people,
            tracked=update.count,
            groups=groups,
            inference_ms=found.inference_ms,
            total_ms=(time.perf_counter() - started) * 1e3,
            trigger=trigger,
        )
        self._results.put(result)
        ring_size = (self._ring.shape[1], self._ring.shape[0])
        self._tag = _Tag(result.compact(result.frame_size), result.compact(ring_size), people)
        self._people.announce(update, result, frame, meta)
        return result

    def _drop_tag(self) -> None:
        self._tag = None

    # -- the capture loop's stage (cheap: two dict references)
    def process(self, ring_frame: np.ndarray, meta: FrameMeta, full_frame: np.ndarray | None = None) -> None:
        tag = self._tag
        if tag is None:
            return
        meta.extra["detections"] = tag.ring if self._stream_resolution() == "ring" else tag.full
        meta.extra["people"] = tag.people

    # -- the stream's encoder hook
    def overlay(self, frame: np.ndarray, meta: FrameMeta) -> np.ndarray:
        """With detect.draw_boxes, a copy of `frame` with the newest boxes drawn (scaled to it); else `frame` itself."""
        if not self._cfg.draw_boxes or self._tag is None:
            return frame
        got = self._results.get()
        if got is None or not got[1].detections:
            return frame
        result = got[1]
        return draw_detections(frame, result.detections, result.frame_size)

    # -- what commands, HTTP and health read (any thread)
    def request(self, timeout: float = 15.0) -> tuple[DetectionResult, np.ndarray, FrameMeta]:
        """Run the detector now on the newest frame, on the worker; raises DetectorUnavailable or TimeoutError."""
        req = self._submit(_Request(), timeout)
        if req.result is None or req.frame is None or req.meta is None:
            raise DetectorUnavailable("no result")
        return req.result, req.frame, req.meta

    def detect_frame(self, frame: np.ndarray, timeout: float = 30.0) -> tuple[DetectResult, int]:
        """Detections and the number of groups on a given frame, on the worker (the interpreter's one thread).

        For pictures that are not the live view (a PTZ preset's): tracks, results and events stay as they are.
        Raises DetectorUnavailable or TimeoutError.
        """
        req = self._submit(_Request(frame), timeout)
        if req.found is None:
            raise DetectorUnavailable("no result")
        return req.found, req.group_count

    def _submit(self, req: _Request, timeout: float) -> _Request:
        if not self._worker.alive:
            raise DetectorUnavailable("the detection worker is not running")
        deadline = time.monotonic() + timeout
        if not self._request_lock.acquire(timeout=timeout):
            raise TimeoutError(f"another detect request is still running after {timeout:g} s")
        try:
            self._pending = req
            self._wake.set()
            if not req.done.wait(max(0.0, deadline - time.monotonic())):
                if self._pending is req:
                    self._pending = None
                raise TimeoutError(f"the detector did not answer within {timeout:g} s")
        finally:
            self._request_lock.release()
        if req.error is not None:
            raise DetectorUnavailable(req.error)
        return req

    def newest(self) -> DetectionResult | None:
        got = self._results.get()
        return None if got is None else got[1]

    def events(self, limit: int) -> list[dict[str, Any]]:
        return self._people.recent(limit)

    def counts(self) -> dict[str, Any]:
        with self._stats_lock:
            return {
                "inferences": self._runs,
                "on_demand": self._on_demand,
                "skipped": dict(self._skipped),
                "errors": self._errors,
                "events": self._people.counts(),
            }

    @property
    def state(self) -> str:
        if self.mode == "off":
            return "off"
        if self._reason is not None:
            return "unavailable"
        return "running" if self._detector is not None else "loading"

    def payload(self) -> tuple[int, dict[str, Any]]:
        """GET /detections: the newest result flattened, with the counts."""
        result = self.newest()
        body: dict[str, Any] = {"state": self.state, "mode": self.mode, "reason": self._reason}
        if result is None:
            body.update(frame_id=None, ts=None, people=None, detections=[], groups=None, inference_ms=None)
        else:
            body.update(result.to_dict())
            body["age_s"] = round(max(0.0, time.time() - result.ts), 3)
        body["tracked"] = self._people.tracked  # now: tracks end by the clock too, after the newest result
        body["counts"] = self.counts()
        return 200, body

    def health(self) -> dict[str, Any]:
        result = self.newest()
        last = None
        if result is not None:
            last = {
                "frame_id": result.frame_id,
                "ts": round(result.ts, 3),
                "age_s": round(max(0.0, time.time() - result.ts), 1),
                "people": result.people,
                "tracked": result.tracked,
                "inference_ms": round(result.inference_ms, 2),
                "total_ms": round(result.total_ms, 2),
                "trigger": result.trigger,
            }
        groups = self._groups
        return {
            "state": self.state,
            "enabled": bool(self._cfg.enabled),
            "mode": self.mode,
            "mode_from": "command" if self._mode is not None else "config",
            "reason": self._reason,
            "detector": self._facts,
            "gate": self._cfg.gate,
            "gate_threshold": self._cfg.gate_threshold,
            "last_change_fraction": None if self._change.last_fraction is None else round(self._change.last_fraction, 5),
            "max_fps": self._cfg.max_fps,
            "tracked": self._people.tracked,
            "evidence": bool(self._cfg.evidence),
            **self.counts(),
            "last": last,
            "groups": "off" if not self._cfg.groups else (groups.status if groups is not None else "not loaded"),
            "worker_alive": self._worker.alive,
            "inference_histogram": self._inference_s.snapshot(),
        }
