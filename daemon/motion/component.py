"""The `Motion` component: per frame, every region's motion measure and machine state; events, logs, health.

A capture-loop stage: `process(ring_frame, meta, full_frame)` runs on the
capture thread for every frame, never raises and never does I/O. It measures
the regions (`measure.py`), steps each region's machine (`machine.py`),
publishes the changes of state on the bus, sets the X-Motion header and queues
the log records for the writer thread (`log.py`). Regions and masks are
validated (`regions.py`) and compiled on whatever thread changed the config
and installed by the capture thread on its next frame: one attribute swap, no
lock on the hot path. The commands are in `commands.py`.

Which regions: `motion.regions`, or a PTZ preset's own while the camera is
there, and `motion.masks` with the preset's masks added, as `views.py` tells
(from the `ptz.view` event); regions the camera moved away from stay listed
as unwatched.

Resets. Anything that changes the picture without the scene changing must
not read as motion: the background is re-baselined and judgement suppressed
for `settle_s` seconds. There are two ways in, and only two:
- a global brightness jump, seen in the frames themselves: the frame's mean
  (`meta.dark_score`) moving more than `brightness_jump` from the previous
  frame or from its slow average (lights switched on, an auto-exposure step,
  lightning);
- an event on the bus whose kind is in `RESET_EVENTS`: `night.enter` and
  `night.exit` (the night controller switched the camera's exposure; it
  publishes them on the capture thread, before the frame is measured) and
  `camera.recovered` (the camera was reopened). This is the one path for
  other components: they publish, Motion listens, nobody calls into it (the
  capture loop does not, and a frame's `meta.night` flag is not read). A
  PTZ mover joins the same way: it publishes when a move starts, again at
  least every `settle_s` while it lasts, and when the camera has stopped
  (`ptz.moving`, from daemon/ptz). The settling it causes is what pauses
  motion events, and a detector gated by motion with them.
`reset(reason)` queues a reset for the next frame (thread-safe); the bus
handler uses it. While settling, `meta.extra` carries `motion_settling: true`
and the regions show the state SETTLING in X-Motion. The night controller's
re-application of changed night settings while at night publishes no event
and so resets nothing; a change large enough to matter is a brightness jump.

Events on the bus (all carry region, machine_id, old, new, ts (wall clock of
the frame), frame_id, duration_s (how long the ended state lasted), idle_s,
window_moving (the moving fraction of the window), and webhook when the
region has one):
- `motion.state`: UNKNOWN -> RUNNING/STOPPED, RUNNING -> STOPPED,
  STOPPED -> RUNNING and DEEP_SLEEP -> RUNNING. idle_s is the whole time since
  the region stopped on a resume (including deep sleep), else null.
- `motion.deep_sleep`: STOPPED -> DEEP_SLEEP; idle_s is the time stopped.
- `motion.wake`: DEEP_SLEEP -> RUNNING, published next to its `motion.state`
  (subscribe to one of them for notifications, or you hear of it twice);
  duration_s is the deep sleep alone, idle_s the whole idle time.
Each is also appended to the motion logs (`log.py` describes the files).

The X-Motion header (`meta.extra["motion"]`): `name=FRACTION:STATE;...` with
the changed fraction of the last frame to 4 decimals and the state UNKNOWN,
RUNNING, STOPPED, DEEP_SLEEP, or SETTLING while judgement is suppressed,
e.g. `press1=0.1234:RUNNING;door=0.0000:STOPPED`.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from daemon.core.bus import Event, EventBus
from daemon.core.status import ComponentStatus
from daemon.core.timefmt import format_duration
from daemon.motion.commands import MotionCommands
from daemon.motion.log import DEEP_SLEEP_LOG, STATE_LOG, MotionLog
from daemon.motion.machine import DEEP_SLEEP, RUNNING, SETTLING, UNKNOWN, Machine, Transition
from daemon.motion.measure import Compiled, Geometry, Pass, PassPlan, PassSettings, build_passes, compile_regions, plan_passes
from daemon.motion.views import CONFIGURED, VIEW_EVENT, Views

if TYPE_CHECKING:
    from daemon.capture.ring import FrameMeta
    from daemon.commands import Registry
    from daemon.config import Section

log = logging.getLogger("picamd.motion")

RESET_EVENTS = ("night.enter", "night.exit", "camera.recovered", "ptz.moving")  # bus events that re-baseline and settle
_PLAN_KEYS = ("motion.method", "motion.blur", "motion.pixel_threshold", "motion.dilate")  # settings that shape the passes


@dataclass(frozen=True, slots=True)
class _Params:
    """The motion settings as one value, refreshed on every `set motion.*` (so the hot path reads one attribute)."""

    enabled: bool
    method: str
    alpha: float
    blur: int
    threshold: int
    dilate: int
    window_s: float
    running_fraction: float
    deep_sleep_s: float
    brightness_jump: float
    settle_s: float
    log_frames: bool

    @classmethod
    def read(cls, cfg: Section) -> _Params:
        return cls(
            enabled=bool(cfg.enabled),
            method=str(cfg.method),
            alpha=float(cfg.background_alpha),
            blur=int(cfg.blur),
            threshold=int(cfg.pixel_threshold),
            dilate=int(cfg.dilate),
            window_s=float(cfg.window_s),
            running_fraction=float(cfg.running_fraction),
            deep_sleep_s=float(cfg.deep_sleep_s),
            brightness_jump=float(cfg.brightness_jump),
            settle_s=float(cfg.settle_s),
            log_frames=bool(cfg.log_frames),
        )


@dataclass(frozen=True)
class _Layout:
    """What the config thread hands to the capture thread: the compiled regions and their passes."""

    version: int
    source: str  # where the regions come from: "motion.regions" or "preset N"
    compiled: Compiled
    plans: tuple[PassPlan, ...]
    where: tuple[tuple[int, int], ...]  # per geometry: (pass index, index within the pass)


class _Region:
    """One region on the capture thread: its geometry, its pass, its machine state and last measure."""

    __slots__ = (
        "area",
        "fraction",
        "geometry",
        "index",
        "label",
        "log_stem",
        "machine",
        "min_fraction",
        "min_pixels",
        "moving",
        "own_mask",
        "pas",
        "pixel_scale",
        "pixels",
        "running_fraction",
        "settling",
        "spec",
        "view",
    )

    def __init__(self, geometry: Geometry, machine: Machine, pas: Pass, index: int) -> None:
        self.machine = machine
        self.fraction = 0.0
        self.pixels = 0
        self.moving: bool | None = None
        self.settling = False
        self.bind(geometry)
        self.use(pas, index)

    def use(self, pas: Pass, index: int) -> None:
        """Count in `pas` as its region number `index` (the view and mask are looked up once, not per frame)."""
        self.pas, self.index = pas, index
        self.view, self.own_mask = pas.views[index], pas.own[index]

    def bind(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.spec = geometry.spec
        self.area = geometry.area
        self.pixel_scale = geometry.pixel_scale
        self.min_pixels = geometry.spec.min_pixels
        self.min_fraction = geometry.spec.min_fraction or 0.0  # set whenever min_pixels is not
        self.running_fraction = geometry.spec.running_fraction  # None: the global one
        self.label = geometry.spec.name + "="  # X-Motion: name=FRACTION:STATE
        self.log_stem = geometry.spec.file_stem  # its log files are named after it


class Motion:
    """Per-frame motion measure in the regions, machine states, events, logs and commands."""

    def __init__(
        self,
        cfg: Section,
        bus: EventBus,
        status: ComponentStatus,
        frame_size: tuple[int, int],
        ring_size: tuple[int, int],
        *,
        log_queue_size: int = 20000,
        log_retry_s: float = 5.0,
    ) -> None:
        self._cfg = cfg
        self._params = _Params.read(cfg)
        self._bus = bus
        self.status = status
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.ring_size = (int(ring_size[0]), int(ring_size[1]))
        self._ring_shape = (self.ring_size[1], self.ring_size[0], 3)
        self._problem_lock = threading.Lock()
        self._problems: dict[str, str] = {}
        self._compile_lock = threading.Lock()
        # Built on whatever thread changed the config, installed by the capture thread on its next frame
        # (which allocates the passes' buffers). One attribute swap, no lock on the hot path.
        self._incoming = _Layout(0, "motion.regions", Compiled((), [], None, ()), (), ())
        self._compiled = self._incoming.compiled
        self._source = CONFIGURED
        self._views = Views()
        self._installed_version = -1
        self._regions: tuple[_Region, ...] = ()
        self._passes: tuple[Pass, ...] = ()
        self._region_errors: tuple[str, ...] = ()
        self._reset_requests: collections.deque[str] = collections.deque(maxlen=16)  # bounded while disabled
        self._settle_until = -math.inf
        self._settle_reason: str | None = None
        self._settle_logged = False
        self._prev_dark: float | None = None
        self._dark_baseline = 0.0
        self._disabled = False
        self._last_mono: float | None = None
        self._last_frame_id: int | None = None
        self.frames = 0
        self.resets = 0
        self.last_reset: dict[str, Any] | None = None
        self.measure_errors = 0
        self._measure_failing = False
        self._last_error_text = ""
        self._last_error_logged = -math.inf
        self.log = MotionLog(
            cfg.log_dir,
            max_bytes=lambda: int(self._cfg.log_max_mb * 1024 * 1024),
            keep=lambda: self._cfg.log_keep,
            interval_s=lambda: self._cfg.log_interval_s,
            frames_max_bytes=lambda: int(self._cfg.log_frames_max_mb * 1024 * 1024),
            frames_keep=lambda: self._cfg.log_frames_keep,
            on_problem=lambda reason: self._set_problem("logs", reason),
            queue_size=log_queue_size,
            retry_s=log_retry_s,
        )
        self._prepare()
        self._install_pending()
        cfg.on_change(self._on_config)
        for kind in RESET_EVENTS:
            bus.subscribe(kind, self._on_reset_event)
        bus.subscribe(VIEW_EVENT, self._on_view)

    # -- lifecycle
    def start(self) -> None:
        self.log.start()
        names = ", ".join(r.spec.name for r in self._regions) or "none"
        log.info("motion: watching regions %s; logs in %s", names, self.log.dir)

    def stop(self) -> None:
        self.log.stop()

    def register_commands(self, registry: Registry) -> None:
        MotionCommands(self, self._cfg).register(registry)

    # -- configuration changes
    def _on_config(self, name: str, _value: Any) -> None:
        self._params = _Params.read(self._cfg)
        if name in ("motion.regions", "motion.masks"):
            self._prepare()
            if name == "motion.regions":
                self._views.configured({r.get("name") for r in self._cfg.regions if isinstance(r, dict)})
        elif name in _PLAN_KEYS:
            with self._compile_lock:
                self._publish_plan()

    def compile(self, raw_regions: Any, raw_masks: Any) -> Compiled:
        """Regions and masks as this camera would measure them, with what it would refuse and why."""
        return compile_regions(raw_regions, raw_masks, self.frame_size, self.ring_size)

    def _on_view(self, event: Event) -> None:
        if event.kind == VIEW_EVENT and self._views.take(event.data):
            self._prepare()

    def _prepare(self) -> None:
        """Validate and compile the watched regions (on the thread that changed them) for the capture thread to install."""
        with self._compile_lock:
            raw_regions, raw_masks, source = self._views.watched(self._cfg.regions, self._cfg.masks)
            compiled = self.compile(raw_regions, raw_masks)
            for err in compiled.errors():
                log.error("motion: %s%s", "" if source == CONFIGURED else f"{source}: ", err)
            self._compiled = compiled
            self._source = source
            self._publish_plan()

    def _publish_plan(self) -> None:
        """Plan the passes for the compiled regions and the current settings (caller holds _compile_lock)."""
        compiled = self._compiled
        geometries = list(compiled.geometries)
        p = _Params.read(self._cfg)
        settings = [PassSettings.of(g, p.method, p.blur, p.threshold, p.dilate) for g in geometries]
        plans, where = plan_passes(geometries, settings, compiled.masks, self.frame_size, self.ring_size)
        self._incoming = _Layout(self._incoming.version + 1, self._source, compiled, tuple(plans), tuple(where))

    def _install_pending(self) -> None:
        layout = self._incoming
        if layout.version == self._installed_version:
            return
        passes = build_passes(layout.plans, self._passes, self.frame_size, self.ring_size)
        old = {r.spec.name: r for r in self._regions}
        installed = []
        for g, (pass_index, member) in zip(layout.compiled.geometries, layout.where, strict=True):
            region = old.pop(g.spec.name, None)
            if region is None:
                region = _Region(g, Machine(), passes[pass_index], member)
            else:
                region.bind(g)  # the machine state stays with the name
                region.use(passes[pass_index], member)
            installed.append(region)
        for gone in old.values():
            self.log.close_file(gone.spec.file_stem)
        views = self._views
        moved = views.moved(layout.source)
        said = layout.source != CONFIGURED or moved  # say where they come from, and when back to the config's
        dropped = [self._region_status(r) for r in old.values()] if moved else []
        views.install(layout.source, dropped, [r.spec.name for r in installed])
        errors = layout.compiled.errors()
        self._passes = tuple(passes)
        self._regions = tuple(installed)
        self._region_errors = errors
        self._installed_version = layout.version
        if self._last_mono is not None:  # not on the first install, start() says it
            names = ", ".join(r.spec.name for r in installed) or "none"
            log.info("motion: regions now %s%s", names, f" (from {layout.source})" if said else "")
        self._set_problem("regions", "; ".join(errors) if errors else None)

    # -- resets
    def reset(self, reason: str) -> None:
        """Re-baseline the background and suppress judgement for settle_s, from the next frame on (any thread)."""
        self._reset_requests.append(str(reason))

    def _on_reset_event(self, event: Event) -> None:
        if event.kind in RESET_EVENTS:  # subscriptions match by prefix
            self.reset(event.kind)

    def _begin_settle(self, reason: str, mono: float) -> None:
        settle_s = self._params.settle_s
        already = mono < self._settle_until
        self._settle_until = max(self._settle_until, mono + settle_s)
        self.resets += 1
        self.last_reset = {"reason": reason, "ts": round(time.time(), 3)}
        for pas in self._passes:
            pas.rebaseline()
        if already:
            log.debug("motion: background reset again (%s) while settling", reason)
        else:
            self._settle_reason = reason
            self._settle_logged = True
            log.info("motion: background reset (%s); not judging motion for %.1f s", reason, settle_s)

    # -- the per-frame work (capture thread)
    def process(self, ring_frame: np.ndarray, meta: FrameMeta, full_frame: np.ndarray | None = None) -> None:
        """Measure every region on this frame and update the machine states. Never raises, never does I/O."""
        try:
            self._process(ring_frame, meta, full_frame)
        except Exception as exc:  # a bad frame or a bug must not stop the capture loop
            self._measure_failed(exc)
        else:
            if self._measure_failing:
                self._measure_failing = False
                self._set_problem("measure", None)

    def _process(self, ring_frame: np.ndarray, meta: FrameMeta, full_frame: np.ndarray | None) -> None:
        p = self._params
        if not p.enabled:
            self._disabled = True
            return
        if ring_frame.shape != self._ring_shape or ring_frame.dtype != np.uint8:
            raise ValueError(f"ring frame is {ring_frame.shape} {ring_frame.dtype}, expected {self._ring_shape} uint8")
        self._install_pending()
        mono = float(meta.mono)
        if self._last_mono is not None and mono < self._last_mono:
            raise ValueError(f"frame {meta.frame_id} is older than the previous one (mono {mono:.3f} < {self._last_mono:.3f})")
        if self._disabled:
            self._disabled = False
            for pas in self._passes:
                pas.rebaseline()  # the background is stale after a pause
        self._last_mono = mono
        self._last_frame_id = meta.frame_id
        self.frames += 1

        while self._reset_requests:
            self._begin_settle(self._reset_requests.popleft(), mono)
        dark = float(meta.dark_score)
        if self._prev_dark is None:
            self._dark_baseline = dark
        elif abs(dark - self._prev_dark) > p.brightness_jump or abs(dark - self._dark_baseline) > p.brightness_jump:
            # Compared with the slow average too, so an exposure that creeps in steps is caught as well.
            self._begin_settle(f"brightness jump {self._dark_baseline:.1f} -> {dark:.1f}", mono)
            self._dark_baseline = dark
        else:
            self._dark_baseline += p.alpha * (dark - self._dark_baseline)
        self._prev_dark = dark
        settling = mono < self._settle_until
        if not settling and self._settle_logged:
            self._settle_logged = False
            log.info("motion: settled after %s; judging motion again", self._settle_reason)

        regions = self._regions
        if not regions:
            meta.extra.pop("motion", None)
            return
        alpha = p.alpha
        for pas in self._passes:
            if settling:
                pas.needs_baseline = True
            pas.run(ring_frame, full_frame, alpha)
        # Per region only a count and the machine state: keep this loop lean, it runs regions x frames.
        parts = []
        records = []
        ts, frame_id = meta.ts, meta.frame_id
        window_s, running_fraction, deep_sleep_s = p.window_s, p.running_fraction, p.deep_sleep_s
        for region in regions:
            spec = region.spec
            pas = region.pas
            if pas.measured:
                if not pas.changes:
                    changed = 0
                elif region.own_mask is None:
                    changed = cv2.countNonZero(region.view)
                else:
                    changed = pas.count(region.index)
                fraction = changed / region.area
                pixels = round(changed * region.pixel_scale)
                min_pixels = region.min_pixels
                moving = pixels >= min_pixels if min_pixels is not None else fraction >= region.min_fraction
            else:
                fraction, pixels, moving = 0.0, 0, None
            region.fraction, region.pixels, region.moving, region.settling = fraction, pixels, moving, settling
            machine = region.machine
            changes = machine.step(mono, moving, window_s, region.running_fraction or running_fraction, deep_sleep_s)
            if changes:
                for change in changes:
                    self._announce(region, change, meta)
            state = machine.state
            parts.append(f"{region.label}{fraction:.4f}:{SETTLING if settling else state}")
            records.append((region.log_stem, ts, frame_id, spec.name, fraction, pixels, moving, state, settling))
        self.log.frames(records, p.log_frames)
        meta.extra["motion"] = ";".join(parts)
        if settling:
            meta.extra["motion_settling"] = True

    def _announce(self, region: _Region, change: Transition, meta: FrameMeta) -> None:
        """A region's machine changed state: log line, event on the bus, state log."""
        spec = region.spec
        old, new, duration, idle = change.old, change.new, change.duration_s, change.idle_s
        data: dict[str, Any] = {
            "region": spec.name,
            "machine_id": spec.machine_id,
            "old": old,
            "new": new,
            "ts": round(meta.ts, 3),
            "frame_id": meta.frame_id,
            "duration_s": round(duration, 3),
            "idle_s": None if idle is None else round(idle, 3),
            "window_moving": None if change.window_moving is None else round(change.window_moving, 3),
        }
        if spec.webhook:
            data["webhook"] = spec.webhook
        who = spec.name if spec.machine_id is None else f"{spec.name} (machine {spec.machine_id})"
        if old == UNKNOWN:
            log.info("%s: %s (first full window: %.0f%% of frames moving)", who, new, (change.window_moving or 0.0) * 100)
        elif new == DEEP_SLEEP:
            log.info("%s: STOPPED -> DEEP_SLEEP after %s stopped", who, format_duration(duration))
        elif old == DEEP_SLEEP:
            log.info("%s: DEEP_SLEEP -> RUNNING, woke after %s idle", who, format_duration(idle or 0.0))
        elif new == RUNNING:
            log.info("%s: %s -> RUNNING after %s idle", who, old, format_duration(idle if idle is not None else duration))
        else:
            log.info("%s: %s -> %s after %s %s", who, old, new, format_duration(duration), old.lower())
        if new == DEEP_SLEEP:
            self._publish("motion.deep_sleep", data, DEEP_SLEEP_LOG)
            return
        self._publish("motion.state", data, STATE_LOG)
        if old == DEEP_SLEEP:
            self._publish("motion.wake", data, DEEP_SLEEP_LOG)

    def _publish(self, kind: str, data: dict[str, Any], log_file: str) -> None:
        self.log.event(log_file, {"event": kind, **data})
        self._bus.publish(kind, **data)

    # -- errors and health
    def _measure_failed(self, exc: Exception) -> None:
        self.measure_errors += 1
        text = f"measuring motion failed: {type(exc).__name__}: {exc}"
        now = time.monotonic()
        # The same failure on every frame is one error to the status (whose RepeatedLog words the log line),
        # counted again once a minute; measure_errors counts every frame.
        if text != self._last_error_text or now - self._last_error_logged >= 60:
            self._last_error_text, self._last_error_logged = text, now
            self.status.error("measuring motion failed", exc)
        self._measure_failing = True
        self._set_problem("measure", text)

    def _set_problem(self, key: str, reason: str | None) -> None:
        with self._problem_lock:
            if reason is None:
                if self._problems.pop(key, None) is None:
                    return
            else:
                if self._problems.get(key) == reason:
                    return
                self._problems[key] = reason
            summary = "; ".join(self._problems[k] for k in sorted(self._problems))
            if summary:
                self.status.degrade(summary)
            else:
                self.status.recover()

    # -- what the commands and health read (any thread; figures as of the last frame measured)
    @property
    def enabled(self) -> bool:
        return bool(self._cfg.enabled)

    @property
    def settling(self) -> bool:
        return self._last_mono is not None and self._last_mono < self._settle_until

    def region_states(self) -> list[dict[str, Any]]:
        """Each measured region's state, fraction and times (times count by frame timestamps), then the regions out of
        the picture since the camera moved (`watched` false, state UNKNOWN)."""
        return [self._region_status(r) for r in self._regions] + self._views.unwatched()

    def pending(self, name: str) -> bool:
        """True while a region just configured waits for the capture loop's next frame to be taken on."""
        return any(g.spec.name == name for g in self._incoming.compiled.geometries)

    def layout(self) -> dict[str, Any]:
        """How the active regions are measured: each region's geometry, the passes, and the regions refused."""
        return {
            "from": self._views.installed,
            "active": [r.geometry.describe() for r in self._regions],
            "passes": [p.plan.describe() for p in self._passes],
            "errors": list(self._region_errors),
        }

    def watched(self) -> tuple[Any, Any, str]:
        """The regions and masks that apply where the camera looks now, and the regions' source (`views.py`)."""
        return self._views.watched(self._cfg.regions, self._cfg.masks)

    def watching(self) -> dict[str, Any]:
        """Where the measured regions come from: "motion.regions" or "preset N" (see `views.py`)."""
        return self._views.describe()

    def _region_status(self, region: _Region) -> dict[str, Any]:
        machine, spec = region.machine, region.spec
        now = self._last_mono
        in_state, idle = machine.in_state_s(now), machine.idle_s(now)
        share = machine.moving_share
        return {
            "name": spec.name,
            "machine_id": spec.machine_id,
            "state": machine.state,
            "fraction": round(region.fraction, 4),
            "pixels": region.pixels,
            "moving": region.moving,
            "settling": region.settling,
            "in_state_s": None if in_state is None else round(in_state, 3),
            "idle_s": None if idle is None else round(idle, 3),
            "window_moving": None if share is None else round(share, 3),
            "window_frames": machine.frames,
            "threshold": spec.threshold_text(),
            "watched": True,
            "watched_from": self._views.installed,
        }

    def health(self) -> dict[str, Any]:
        """Figures as of the last frame measured (times count by frame timestamps)."""
        return {
            "enabled": self.enabled,
            "frames": self.frames,
            "last_frame_id": self._last_frame_id,
            "settling": self.settling,
            "resets": self.resets,
            "last_reset": self.last_reset,
            "measure_errors": self.measure_errors,
            "regions": {s["name"]: s for s in self.region_states()},
            "region_errors": list(self._region_errors),
            "watching": self.watching(),
            "log": {**self.log.stats(), "per_frame": self._params.log_frames},
        }
