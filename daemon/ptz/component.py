"""The `Ptz` component: the camera's link, its presets, manual moves, sweeps and their schedule.

It owns the VISCA client (`client.py`, connected on the first request and
reconnected after a failure), the `Sweeper` (`sweep.py`) and the scheduler
worker (`picamd-ptz-schedule`, once a second: is a new slot of
`ptz.sweep_every_min` or `ptz.sweep_at` due?). Every move, manual or in a
sweep, publishes `ptz.moving` (start, at least every half `motion.settle_s`
while it lasts, stopped), which pauses motion judgement through Motion's one
reset path. Every move that ends also publishes `ptz.view` (`presets.VIEW`):
the preset the camera now shows, with its own motion regions, or none (home,
an absolute move, a zoom, a failed move), so Motion watches the regions of
what is in the picture; changing `ptz.presets` while the camera is at one
publishes it again. Settings are read when used: `set ptz.host ...` takes
effect on the next request. The commands are in `commands.py`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker

from . import visca
from .client import LinkSettings, PtzError, ViscaClient
from .counting import PeopleCounter
from .pictures import MeasureSettings, PictureSource, SnapshotPictures
from .presets import VIEW, Preset, merged_presets, view_event
from .report import recover_partials
from .schedule import last_slot, next_slot
from .sweep import MOVING, Sweeper, SweepRun

if TYPE_CHECKING:
    from daemon.commands import Registry
    from daemon.config import Section

log = logging.getLogger("picamd.ptz")

#: A scheduled slot more than this late (the daemon was busy or down) is skipped, not run late.
SLOT_LATE_S = 60.0


class PtzOff(Exception):
    """PTZ is not configured or turned off; the message says which key to set."""


class Ptz:
    def __init__(
        self,
        cfg: Section,
        bus: EventBus,
        status: ComponentStatus,
        *,
        camera_pictures: PictureSource,
        count_people: PeopleCounter | None,
        base_dir: Callable[[], Path],
        motion_settle_s: Callable[[], float] = lambda: 5.0,
        measure: Callable[[], MeasureSettings] = MeasureSettings,
        jpeg_quality: Callable[[], int] = lambda: 90,
        min_free_mb: Callable[[], float] = lambda: 0.0,
        client: ViscaClient | None = None,
    ) -> None:
        self._cfg = cfg
        self._bus = bus
        self.status = status
        self._camera_pictures = camera_pictures
        self._measure = measure
        self._motion_settle_s = motion_settle_s
        self.client = client or ViscaClient(self.link_settings)
        self.sweeper = Sweeper(
            cfg,
            self.client,
            self._picture_source,
            count_people,
            bus,
            status,
            base_dir=base_dir,
            motion_settle_s=motion_settle_s,
            jpeg_quality=jpeg_quality,
            min_free_mb=min_free_mb,
            on_view=self.arrived,
        )
        self._scheduler = Worker("ptz-schedule", self._schedule_step, status=status, interval_s=1.0)
        self._armed_at = time.time()  # slots that began before this are not run
        self._last_slot: float | None = None
        self._move_lock = threading.Lock()  # one manual move at a time
        self.position: dict[str, Any] | None = None  # the last answer to the inquiries
        self.view: Preset | None = None  # the preset the camera is at, as far as picamd moved it
        self.state = "idle"
        self.scheduled_runs = 0
        self.skipped_slots = 0
        cfg.on_change(self._on_config)

    # -- lifecycle
    def start(self) -> None:
        try:
            recover_partials(self.sweeper.folder)
        except OSError as exc:
            log.warning("sweep: cannot look for interrupted runs in %s: %s", self.sweeper.folder, exc)
        self._armed_at = time.time()
        self._scheduler.start()
        if self._cfg.enabled:
            log.info(
                "PTZ on %s; %d preset(s); pictures from %s",
                self.client.where(),
                len(self._presets_or_empty()),
                "the snapshot URL" if str(self._cfg.snapshot_url).strip() else "the camera's frames",
            )

    def stop(self) -> None:
        self._scheduler.stop()
        self.sweeper.stop()
        self.client.close()

    def register_commands(self, registry: Registry) -> None:
        from .commands import PtzCommands  # the commands import the registry; the component stays light to import

        PtzCommands(self).register(registry)

    # -- settings
    def link_settings(self) -> LinkSettings:
        c = self._cfg
        return LinkSettings(
            str(c.protocol),
            str(c.host).strip(),
            int(c.port),
            int(c.camera_address),
            float(c.timeout_s),
            float(c.move_timeout_s),
            int(c.retries),
        )

    def check_on(self) -> None:
        if not self._cfg.enabled:
            raise PtzOff("PTZ is off (set ptz.enabled true, with ptz.host)")
        if not str(self._cfg.host).strip():
            raise PtzOff("no PTZ camera: set ptz.host")

    def presets(self) -> list[Preset]:
        """The configured presets (ptz.presets over ptz.presets_file); ValueError names a bad file."""
        return merged_presets(list(self._cfg.presets), str(self._cfg.presets_file))

    def _presets_or_empty(self) -> list[Preset]:
        try:
            return self.presets()
        except ValueError:
            return []

    def select(self, numbers: list[int] | None) -> list[Preset]:
        """The presets of a sweep: all, or the numbers given (one not configured is swept under its number)."""
        known = {p.number: p for p in self.presets()}
        if not numbers:
            return list(known.values())
        return [known.get(n, Preset(n, f"preset {n}")) for n in numbers]

    def preset(self, number: int) -> Preset:
        """The configured preset of this number (one not configured: a bare preset under its number)."""
        return next((p for p in self._presets_or_empty() if p.number == number), Preset(number, f"preset {number}"))

    def arrived(self, preset: Preset | None) -> None:
        """A move ended: at `preset`, or not at a preset (None). Publishes `ptz.view` for Motion."""
        self.view = preset
        self._bus.publish(VIEW, **view_event(preset))

    def _on_config(self, name: str, _value: Any) -> None:
        view = self.view
        if name in ("ptz.presets", "ptz.presets_file") and view is not None:
            self.arrived(self.preset(view.number))  # the preset's regions may have changed

    def _picture_source(self) -> PictureSource:
        url = str(self._cfg.snapshot_url).strip()
        if not url:
            return self._camera_pictures
        return SnapshotPictures(
            url, str(self._cfg.snapshot_auth), lambda: float(self._cfg.snapshot_timeout_s), lambda: int(self._cfg.retries), self._measure
        )

    # -- manual moves (commands)
    def busy_with(self) -> SweepRun | None:
        run = self.sweeper.current()
        return run if run is not None and run.running else None

    def move(self, message: visca.Message, preset: int | None = None) -> float:
        """Run one movement (preset recall, home, absolute position, zoom) to its completion, pausing motion meanwhile;
        returns the seconds it took. `preset`: the preset the move recalls. Raises PtzOff or PtzError."""
        self.check_on()
        if not self._move_lock.acquire(timeout=0.1):
            raise PtzError("another move is still running")
        started = time.monotonic()
        arrived = False
        try:
            self.state = "moving"
            self._bus.publish(MOVING, phase="start", command=message.name)
            interval = max(0.25, float(self._motion_settle_s()) / 2)
            last = [started]

            def tick() -> bool:
                if time.monotonic() - last[0] >= interval:
                    last[0] = time.monotonic()
                    self._bus.publish(MOVING, phase="moving", command=message.name)
                return True

            self.client.complete(self.client.start(message), tick=tick, tick_s=0.2)
            arrived = True
        finally:
            self.arrived(self.preset(preset) if arrived and preset is not None else None)
            self._bus.publish(MOVING, phase="stopped", command=message.name)
            self.state = "idle"
            self._move_lock.release()
        return time.monotonic() - started

    def command(self, message: visca.Message) -> None:
        """An instant command (preset set, stop)."""
        self.check_on()
        self.client.run(message)

    def read_position(self) -> dict[str, Any]:
        """Ask the camera where it is (pan, tilt, zoom); raises PtzError."""
        self.check_on()
        pan, tilt = visca.parse_pan_tilt(self.client.inquire(visca.pan_tilt_inquiry()))
        zoom = visca.parse_zoom(self.client.inquire(visca.zoom_inquiry()))
        self.position = {"pan": pan, "tilt": tilt, "zoom": zoom, "ts": round(time.time(), 3)}
        return self.position

    # -- the schedule
    def _schedule_step(self) -> None:
        self.tick(time.time())

    def tick(self, now: float) -> None:
        """Start a scheduled sweep when a new slot has begun at wall-clock time `now` (the scheduler calls it once a second)."""
        every, at = float(self._cfg.sweep_every_min), list(self._cfg.sweep_at)
        if not self._cfg.enabled or (every <= 0 and not at):
            return
        slot = last_slot(now, every, at)
        if slot is None or slot < self._armed_at or slot == self._last_slot:
            return
        self._last_slot = slot
        if now - slot > SLOT_LATE_S:
            self.skipped_slots += 1
            log.info("scheduled sweep of %s skipped: %.0f s late", time.strftime("%H:%M", time.localtime(slot)), now - slot)
            return
        busy = self.busy_with()
        if busy is not None:
            self.skipped_slots += 1
            log.info("scheduled sweep skipped: sweep %s is still running", busy.id)
            return
        try:
            self.check_on()
            self.sweeper.start(self.select(None), trigger="schedule", peer="schedule")
            self.scheduled_runs += 1
        except (PtzOff, ValueError, OSError, PtzError) as exc:
            self.status.error("scheduled sweep not started", exc)

    def next_sweep(self) -> float | None:
        return next_slot(time.time(), float(self._cfg.sweep_every_min), list(self._cfg.sweep_at))

    # -- figures
    def health(self) -> dict[str, Any]:
        run = self.sweeper.current()
        nxt = self.next_sweep() if self._cfg.enabled else None
        return {
            "enabled": bool(self._cfg.enabled),
            "state": "sweeping" if self.busy_with() is not None else self.state,
            "link": self.client.health(),
            "position": self.position,
            "view": None if self.view is None else {"preset": self.view.number, "name": self.view.name},
            "sweep": None if run is None else {k: v for k, v in run.progress().items() if k != "rows"},
            "sweeps": self.sweeper.runs,
            "next_scheduled": None if nxt is None else time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(nxt)),
            "scheduled_runs": self.scheduled_runs,
            "skipped_slots": self.skipped_slots,
        }
