"""Builds the components from the config, starts and stops their threads, owns health.

The app is the only place that knows every component; components know only
their collaborators, which are passed in here. The app also declares the core
commands that are about the daemon as a whole (health, status, config,
camera dumps).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.storage.autosave import AutoSaver
from daemon.core.bus import EventBus
from daemon.capture.loop import CaptureLoop
from daemon.commands import Command, Registry, Reply, Session
from daemon.config import Config, ConfigError, parse_downscale
from daemon.net.control import ControlServer
from daemon.storage.export import Exporter
from daemon.system.health import SwapGuard, SystemHealth
from daemon.net.http import HttpServer
from daemon.net.jpegfeed import JpegFeed
from daemon.motion import Motion
from daemon.image.night import NightController
from daemon.notify import Notifier
from daemon.capture.ring import LatestSlot, Ring, plan_capacity
from daemon.sources.base import Source
from daemon.sources.select import build_source, list_cameras
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker
from daemon.system.systemd import SystemdNotifier

log = logging.getLogger("picamd.app")


def _mem_available_bytes(meminfo: str = "/proc/meminfo") -> int:
    try:
        with open(meminfo) as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 512 * 2**20  # not Linux: assume a small Pi rather than a large machine


def _probe_size(source: Source, camera) -> tuple[int, int]:
    """Open the source and read one frame to learn its real size; fall back to the configured size.

    The ring is sized from what the camera really delivers (a USB camera may
    ignore the requested size); a camera that is dead at boot must not stop
    the daemon, so failure here only means the configured size is used and the
    capture loop keeps trying to open it.
    """
    try:
        source.open()
        got = source.read(timeout=camera.stall_timeout_s)
        if got is not None:
            h, w = got[0].shape[:2]
            return w, h
        log.warning("camera gave no frame within %.1f s at start; assuming %dx%d", camera.stall_timeout_s, camera.width, camera.height)
    except Exception as exc:
        log.warning("camera failed at start (%s); the daemon runs degraded and keeps retrying", exc)
        try:
            source.close()
        except Exception:
            pass
        raise
    return camera.width, camera.height


class App:
    def __init__(self, config: Config, source_override: str | None = None) -> None:
        self.config = config
        self.started = time.time()
        self.bus = EventBus()
        self.statuses: dict[str, ComponentStatus] = {
            name: ComponentStatus(name) for name in ("camera", "night", "motion", "export", "autosave", "encoder", "mjpeg", "control", "notify")
        }
        cam = config.section("camera")

        source, why = build_source(config, source_override)
        log.info("source: %s", why)
        first_source: Source | None = source
        try:
            frame_w, frame_h = _probe_size(source, cam)
        except Exception:
            first_source = None
            frame_w, frame_h = cam.width, cam.height

        def reopen() -> Source:
            # The same object is reopened: the synthetic scene keeps its clock and a Pi camera is not re-probed.
            return source

        kind, a, b = parse_downscale(config.get("ring.downscale"))
        if kind == "size":
            ring_w, ring_h = int(a), int(b)
        else:
            ring_w, ring_h = max(16, round(frame_w * a)), max(16, round(frame_h * b))
        capacity, arithmetic = plan_capacity(
            config.get("ring.size"), ring_w * ring_h * 3, _mem_available_bytes(), config.get("ring.max_ram_fraction")
        )
        log.info(arithmetic)
        self.frame_size = (frame_w, frame_h)
        self.ring = Ring(capacity, ring_h, ring_w)
        self.latest = LatestSlot()

        self.night = NightController(
            config.section("night"), self.bus, apply_camera=lambda night: self.capture.apply_night(night), status=self.statuses["night"]
        )
        self.motion = Motion(config.section("motion"), self.bus, self.statuses["motion"], (frame_w, frame_h), (ring_w, ring_h))
        self.swap_guard = SwapGuard(config.section("health"))
        self.system = SystemHealth(lambda: config.get("export.base_dir"))
        self.capture = CaptureLoop(
            cam, config.section("night"), reopen, self.ring, self.latest, self.night, self.bus, self.statuses["camera"],
            stages=[self.motion], slowdown=self.swap_guard.factor, first_source=first_source,
        )
        self.exporter = Exporter(config.section("export"), self.ring, self.latest, self.bus, self.statuses["export"])
        self.autosaver = AutoSaver(config.section("export"), self.exporter, lambda: self.night.is_night, self.statuses["autosave"])
        self.feed = JpegFeed(config.section("mjpeg"), self.ring, self.latest, self.statuses["encoder"])
        self.mjpeg = HttpServer(config.section("http"), config.section("mjpeg"), lambda: config.get("control.allow"), self.feed,
                                self.health, self.statuses["mjpeg"])
        self.notifier = Notifier(config.section("notify"), self.bus, self.statuses["notify"])

        self.registry = Registry(token=lambda: config.get("control.token"))
        self._register_commands()
        for component in (self.night, self.motion, self.exporter, self.feed, self.notifier):
            component.register_commands(self.registry)
        self.control = ControlServer(config.section("control"), self.registry, self.statuses["control"])

        self.systemd = SystemdNotifier()
        interval = self.systemd.watchdog_interval()
        self._watchdog = Worker("watchdog", self._feed_watchdog, interval_s=min(5.0, interval / 2) if interval else 5.0)
        config.on_change("logging.level", lambda _k, v: logging.getLogger("picamd").setLevel(v))
        self.bus.subscribe("", self._log_event)

    # -- lifecycle
    def start(self) -> None:
        # Consumers first, so nothing the capture loop produces is missed; servers last.
        self.notifier.start()
        self.exporter.start()
        self.motion.start()
        self.capture.start()
        self.feed.start()
        self.mjpeg.start()
        self.control.start()
        self.autosaver.start()
        self._watchdog.start()
        self.systemd.ready()
        log.info(
            "picamd %s running: commands on %s:%s, stream on http://%s:%s/stream, %s",
            __version__, self.config.get("control.bind"), self.control.port,
            self.config.get("http.bind"), self.mjpeg.port, self.capture.health()["source"],
        )

    def stop(self) -> None:
        self.systemd.stopping()
        self._watchdog.stop()
        # Servers first so no new work arrives, then the producers, then the consumers.
        for component in (self.control, self.mjpeg, self.autosaver, self.exporter, self.feed, self.capture, self.motion, self.notifier):
            try:
                component.stop()
            except Exception:
                log.exception("stopping %s failed", type(component).__name__)
        log.info("picamd stopped")

    def _feed_watchdog(self) -> None:
        """Feed systemd's watchdog only while frames flow, so a stuck camera gets the service restarted."""
        if self.capture.flowing():
            self.systemd.watchdog()
        self.systemd.status(self._one_line_status())

    def _log_event(self, event) -> None:
        if event.kind.startswith(("night.", "camera.", "disk.")):
            log.info("event %s %s", event.kind, json.dumps(event.data, default=str)[:300])

    # -- health and status
    def health(self) -> dict[str, Any]:
        meta = self.ring.latest_meta()
        figures = self.system.health()
        degraded = sorted(n for n, s in self.statuses.items() if not s.ok)
        return {
            "status": "degraded" if degraded else "ok",
            "degraded": degraded,
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 1),
            "camera": {**self.capture.health(), "frame_size": list(self.frame_size)},
            "ring": {
                "capacity": self.ring.capacity,
                "fill": self.ring.fill,
                "frame_size": [self.ring.shape[1], self.ring.shape[0]],
                "bytes": self.ring.nbytes,
                "newest_frame_id": self.ring.newest_id,
            },
            "night": self.night.health(),
            "latest_frame": meta.to_dict() if meta else None,
            "system": figures,
            "swap_guard": self.swap_guard.health(),
            "clients": {"control": self.control.health(), "mjpeg": self.mjpeg.health()},
            "encoder": self.feed.health(),
            "export": self.exporter.health(),
            "autosave": self.autosaver.health(),
            "motion": self.motion.health(),
            "notify": self.notifier.health(),
            "components": {n: s.snapshot() for n, s in self.statuses.items()},
        }

    def _one_line_status(self) -> str:
        cam = self.capture.health()
        return (
            f"camera {self.statuses['camera'].state}, {cam['fps']:.1f} fps, "
            f"{'NIGHT' if self.night.is_night else 'DAY'}, ring {self.ring.fill}/{self.ring.capacity}, "
            f"{self.mjpeg.health().get('viewers', 0)} viewers"
        )

    # -- core commands
    def _register_commands(self) -> None:
        r = self.registry
        r.register(Command("health", self._cmd_health, "Health of the daemon and the Pi (camera, ring, memory, temperature, disk, clients, errors)"))
        r.register(Command("status", self._cmd_status, "One-line status with the newest frame's metadata"))
        r.register(Command("get", self._cmd_get, "Show a config value", usage="KEY", min_args=1, max_args=1))
        r.register(Command("set", self._cmd_set, "Change a config value (live where possible)", usage="KEY VALUE", mutating=True, min_args=2, max_args=2, raw_tail=True))
        r.register(Command("dump_config", self._cmd_dump_config, "The whole config as JSON (secrets hidden)"))
        r.register(Command("overwrite_config", self._cmd_overwrite_config, "Write the running config to the config file (backup kept as .bak)", mutating=True))
        r.register(Command("dump_cam_controls", lambda a, s: self._cmd_camera("controls"), "The camera's controls and their limits"))
        r.register(Command("dump_cam_exposure", lambda a, s: self._cmd_camera("exposure"), "The camera's current exposure metadata"))
        r.register(Command("cameras", self._cmd_cameras, "List the cameras that can be found (Pi cameras with sensor modes, V4L2 devices)"))

    def _cmd_health(self, args: list[str], session: Session) -> Reply:
        h = self.health()
        head = "healthy" if h["status"] == "ok" else "degraded: " + ", ".join(
            f"{n} {self.statuses[n].state.removeprefix('degraded ')}" for n in h["degraded"]
        )
        return Reply(True, head, body=h)

    def _cmd_status(self, args: list[str], session: Session) -> Reply:
        meta = self.ring.latest_meta()
        return Reply(True, self._one_line_status(), body=meta.to_dict() if meta else None)

    def _cmd_get(self, args: list[str], session: Session) -> Reply:
        try:
            value = self.config.get(args[0])
        except ConfigError as exc:
            return Reply.error(str(exc))
        from daemon.config import KEYS

        if KEYS[args[0]].secret and value:
            value = "***"
        return Reply(True, f"{args[0]}={json.dumps(value)}")

    def _cmd_set(self, args: list[str], session: Session) -> Reply:
        key, value = args
        try:
            live = self.config.set(key, value)
        except ConfigError as exc:
            return Reply.error(str(exc))
        shown = self.config.dump(redact=True)
        for part in key.split("."):
            shown = shown[part]
        note = "applied" if live else "stored; takes effect after a restart (overwrite_config to keep it)"
        log.info("config %s set to %s by %s (%s)", key, json.dumps(shown), session.peer, note)
        return Reply(True, f"{key}={json.dumps(shown)} ({note})")

    def _cmd_dump_config(self, args: list[str], session: Session) -> Reply:
        return Reply(True, "config", body=self.config.dump(redact=True))

    def _cmd_overwrite_config(self, args: list[str], session: Session) -> Reply:
        try:
            path = self.config.save()
        except OSError as exc:
            return Reply.error(f"cannot write the config: {exc}")
        log.info("config written to %s by %s", path, session.peer)
        return Reply(True, f"wrote {path} (previous version kept as {Path(path).name}.bak)")

    def _cmd_camera(self, what: str) -> Reply:
        try:
            data = self.capture.source_call(what)
        except Exception as exc:
            return Reply.error(f"camera: {exc}")
        return Reply(True, f"camera {what}", body=data)

    def _cmd_cameras(self, args: list[str], session: Session) -> Reply:
        return Reply(True, "cameras", body=list_cameras(active=self.capture.current_source()))
