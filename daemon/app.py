"""Builds the components from the config, starts and stops their threads, owns health.

The app is the only place that knows every component; components know only
their collaborators, which are passed in here. The app also declares the core
commands that are about the daemon as a whole (health, status, config,
camera dumps).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.capture.loop import CaptureLoop
from daemon.capture.ring import LatestSlot, Ring, plan_capacity
from daemon.commands import Command, Registry, Reply, Session
from daemon.config import KEYS, Config, ConfigError, load_value, ring_frame_size
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker
from daemon.detect.service import Detection
from daemon.image.night import NightController
from daemon.motion import Motion
from daemon.mqtt.bridge import MqttBridge
from daemon.net.allow import peer_allowed
from daemon.net.control import ControlServer
from daemon.net.http import HttpServer
from daemon.net.jpegfeed import JpegFeed
from daemon.net.metrics import render as render_metrics
from daemon.notify import Notifier
from daemon.ptz.component import Ptz
from daemon.ptz.counting import DetectorCounter, ServiceCounter
from daemon.ptz.delivery import report_channels
from daemon.ptz.pictures import CameraPictures, MeasureSettings
from daemon.sources.base import Source
from daemon.sources.select import build_source, list_cameras
from daemon.storage.autosave import AutoSaver
from daemon.storage.clips import ClipRecorder
from daemon.storage.export import Exporter
from daemon.system.health import SwapGuard, SystemHealth
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


def _set_value(key: str, text: str) -> Any:
    """The value `set KEY TEXT` means: `""` (or `''`) clears, and a quoted text is taken without its quotes."""
    text = text.strip()
    if text in ('""', "''"):
        kind = KEYS[key].kind if key in KEYS else str
        return [] if kind is list else {} if kind is dict else ""
    spec = KEYS.get(key)
    if spec is not None and spec.kind is str and len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        try:
            unquoted = load_value(text)
        except ValueError:
            return text
        if isinstance(unquoted, str):
            return unquoted
    return text


def _peer_ip(session: Session) -> str | None:
    """The client's address of a session on the command port ("192.168.1.5:40112"), None for a local caller."""
    host, sep, port = session.peer.rpartition(":")
    return host.strip("[]") if sep and port.isdigit() and host else None


def _keeps_client_in(session: Session, networks: list[str]) -> None:
    """An allow-list that excludes the client setting it would lock its owner out (after a restart too, once saved)."""
    ip = _peer_ip(session)
    if ip is not None and not peer_allowed(ip, networks):
        raise ConfigError(
            f"control.allow: {json.dumps(networks)}: would shut out {ip}, the client making this change; "
            "include its address (or make the change from an address that stays allowed)"
        )


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
        self._started_mono = time.monotonic()  # uptime survives the wall clock being stepped (no clock at boot)
        self.bus = EventBus()
        self.statuses: dict[str, ComponentStatus] = {
            name: ComponentStatus(name)
            for name in ("camera", "night", "motion", "export", "autosave", "encoder", "mjpeg", "control", "notify", "detect")
        }
        cam = config.section("camera")

        source, why = build_source(config, source_override)
        # A synthetic scene must never pass for a camera: health, status, the page and every frame (X-Source) say it.
        self.source_choice, self.synthetic = why, source.name == "synthetic"
        picked_by_auto = self.synthetic and (source_override or cam.source).strip().lower() != "synthetic"
        log.log(logging.WARNING if picked_by_auto else logging.INFO, "source: %s", why)
        first_source: Source | None = source
        try:
            frame_w, frame_h = _probe_size(source, cam)
        except Exception:
            first_source = None
            frame_w, frame_h = cam.width, cam.height

        def reopen() -> Source:
            # The same object is reopened: the synthetic scene keeps its clock and a Pi camera is not re-probed.
            return source

        ring_w, ring_h = ring_frame_size(config.get("ring.downscale"), frame_w, frame_h)  # the Pi camera's lores stream uses the same
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
        self.exporter = Exporter(config.section("export"), self.ring, self.latest, self.bus, self.statuses["export"])
        # Clips of the ring (the `clip` command, detect.person) are written on their own thread, one at a time.
        self.statuses["clips"] = ComponentStatus("clips")
        self.clips = ClipRecorder(self.ring, self.exporter, self.statuses["clips"])
        # The detector runs on its own thread; its capture stage only copies the newest result into the frame's metadata.
        self.detection = Detection(
            config.section("detect"),
            self.ring,
            self.latest,
            self.motion,
            self.bus,
            self.statuses["detect"],
            full_size=(frame_w, frame_h),
            stream_resolution=lambda: config.get("mjpeg.resolution"),
            saver=self.exporter,
            clips=self.clips,
        )
        self.capture = CaptureLoop(
            cam,
            config.section("night"),
            reopen,
            self.ring,
            self.latest,
            self.night,
            self.bus,
            self.statuses["camera"],
            stages=[self.motion, self.detection],
            slowdown=self.swap_guard.factor,
            first_source=first_source,
        )
        self.autosaver = AutoSaver(config.section("export"), self.exporter, lambda: self.night.is_night, self.statuses["autosave"])
        self.feed = JpegFeed(
            config.section("mjpeg"),
            self.ring,
            self.latest,
            self.statuses["encoder"],
            overlay=self.detection.overlay,
            camera_jpeg=source.camera_jpeg(),
        )  # the Pi's hardware MJPEG encoder, where there is one
        self.mjpeg = HttpServer(
            config.section("http"),
            config.section("mjpeg"),
            lambda: config.get("control.allow"),
            self.feed,
            self.health,
            self.statuses["mjpeg"],
            detections=self.detection.payload,
            regions=self._regions_payload,
            metrics=lambda: render_metrics(self.health()),
        )
        self.notifier = Notifier(config.section("notify"), self.bus, self.statuses["notify"])
        # PTZ sweeps count people on the detection worker (the interpreter's one thread) while live detection is on; while it
        # is off, a sweep loads its own interpreter for the length of the sweep.
        self.statuses["ptz"] = ComponentStatus("ptz")
        motion_cfg = config.section("motion")
        self.ptz = Ptz(
            config.section("ptz"),
            self.bus,
            self.statuses["ptz"],
            camera_pictures=CameraPictures(
                self.ring,
                self.latest,
                lambda: MeasureSettings(int(motion_cfg.blur), int(motion_cfg.pixel_threshold), int(motion_cfg.dilate)),
            ),
            count_people=ServiceCounter(self.detection, DetectorCounter(config.section("detect"))),
            base_dir=lambda: Path(config.get("export.base_dir")),
            motion_settle_s=lambda: float(motion_cfg.settle_s),
            jpeg_quality=lambda: int(config.get("export.jpeg_quality")),
            min_free_mb=lambda: float(config.get("export.min_free_mb")),
        )
        for channel in report_channels(
            config.section("ptz").section("report"), config.section("notify").section("email"), config.get("camera.name"), os.environ
        ):
            self.notifier.add_channel(channel)
            if problem := channel.problem():
                log.warning("%s", problem)

        self.registry = Registry(token=lambda: config.get("control.token"))
        self._register_commands()
        for component in (self.night, self.motion, self.exporter, self.clips, self.feed, self.notifier, self.detection, self.ptz):
            component.register_commands(self.registry)
        self.control = ControlServer(config.section("control"), self.registry, self.statuses["control"])
        # MQTT only when a broker is set (paho is imported when the bridge starts); it reads the daemon through these views.
        self.mqtt: MqttBridge | None = None
        if config.get("mqtt.host"):
            self.statuses["mqtt"] = ComponentStatus("mqtt")
            self.mqtt = MqttBridge(
                config.section("mqtt"),
                camera=config.get("camera.name"),
                version=__version__,
                bus=self.bus,
                registry=self.registry,
                status=self.statuses["mqtt"],
                token=lambda: config.get("control.token"),
                health=self.health,
                snapshot=self.feed.snapshot,
                motion=self.motion,
                night=self.night,
                detection=self.detection,
                max_line=lambda: config.get("control.max_line_bytes"),
                endpoints=lambda: {
                    "http_bind": config.get("http.bind"),
                    "http_port": self.mjpeg.port,
                    "control_bind": config.get("control.bind"),
                    "control_port": self.control.port,
                },
            )

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
        self.clips.start()
        self.motion.start()
        self.detection.start()
        self.capture.start()
        self.feed.start()
        self.mjpeg.start()
        self.ptz.start()
        self.control.start()
        if self.mqtt is not None:
            self.mqtt.start()
        self.autosaver.start()
        self._watchdog.start()
        self.systemd.ready()
        log.info(
            "picamd %s running: commands on %s:%s, stream on http://%s:%s/stream, %s",
            __version__,
            self.config.get("control.bind"),
            self.control.port,
            self.config.get("http.bind"),
            self.mjpeg.port,
            self.capture.health()["source"],
        )

    def stop(self) -> None:
        self.systemd.stopping()
        self._watchdog.stop()
        # Servers first so no new work arrives, then the producers, then the consumers.
        if self.mqtt is not None:
            try:
                self.mqtt.stop()  # first: it says offline while the rest still runs
            except Exception:
                log.exception("stopping MqttBridge failed")
        for component in (
            self.control,
            self.mjpeg,
            self.autosaver,
            self.ptz,
            self.clips,
            self.exporter,
            self.feed,
            self.detection,
            self.capture,
            self.motion,
            self.notifier,
        ):
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
            "uptime_s": round(time.monotonic() - self._started_mono, 1),
            "camera": {
                "name": self.config.get("camera.name"),
                **self.capture.health(),
                "frame_size": list(self.frame_size),
                "chosen": self.source_choice,
                "synthetic": self.synthetic,
            },
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
            "clips": self.clips.health(),
            "autosave": self.autosaver.health(),
            "motion": self.motion.health(),
            "detect": self.detection.health(),
            "notify": self.notifier.health(),
            "ptz": self.ptz.health(),
            "mqtt": self.mqtt.health() if self.mqtt is not None else {"state": "off (mqtt.host is not set)"},
            "components": {n: s.snapshot() for n, s in self.statuses.items()},
        }

    def _regions_payload(self) -> tuple[int, Any]:
        """GET /regions: each motion region's outline in full-frame pixels and its state, for the page to draw over the image."""
        layout = self.motion.layout()
        states = {s["name"]: s for s in self.motion.region_states()}
        regions = [
            {
                "name": g["name"],
                "points": g.get("points"),
                "bbox": g["bbox"],
                "state": states.get(g["name"], {}).get("state"),
                "moving": states.get(g["name"], {}).get("moving"),
            }
            for g in layout["active"]
        ]
        return 200, {"frame": list(self.frame_size), "regions": regions, "errors": layout["errors"]}

    def _one_line_status(self) -> str:
        cam = self.capture.health()
        return (
            f"camera {self.statuses['camera'].state}{' (synthetic scene)' if self.synthetic else ''}, {cam['fps']:.1f} fps, "
            f"{'NIGHT' if self.night.is_night else 'DAY'}, ring {self.ring.fill}/{self.ring.capacity}, "
            f"{self.mjpeg.health().get('viewers', 0)} viewers"
        )

    # -- core commands
    def _register_commands(self) -> None:
        r = self.registry
        r.register(
            Command(
                "health", self._cmd_health, "Health of the daemon and the Pi (camera, ring, memory, temperature, disk, clients, errors)"
            )
        )
        r.register(Command("status", self._cmd_status, "One-line status with the newest frame's metadata"))
        r.register(Command("get", self._cmd_get, "Show a config value", usage="KEY", min_args=1, max_args=1))
        r.register(
            Command(
                "set",
                self._cmd_set,
                'Change a config value (live where possible; "" clears a text)',
                usage="KEY VALUE",
                mutating=True,
                min_args=2,
                max_args=2,
                raw_tail=True,
            )
        )
        r.register(
            Command(
                "reset",
                self._cmd_reset,
                "Give a config key its default value again (live where possible)",
                usage="KEY",
                mutating=True,
                min_args=1,
                max_args=1,
            )
        )
        r.register(Command("dump_config", self._cmd_dump_config, "The whole config as JSON (secrets hidden)"))
        r.register(
            Command(
                "overwrite_config",
                self._cmd_overwrite_config,
                "Write the keys changed with set/reset into the config file (its comments, order, mode and owner kept; "
                "backup kept as .bak)",
                mutating=True,
            )
        )
        r.register(Command("dump_cam_controls", lambda a, s: self._cmd_camera("controls"), "The camera's controls and their limits"))
        r.register(Command("dump_cam_exposure", lambda a, s: self._cmd_camera("exposure"), "The camera's current exposure metadata"))
        r.register(Command("cameras", self._cmd_cameras, "List the cameras that can be found (Pi cameras with sensor modes, V4L2 devices)"))

    def _cmd_health(self, args: list[str], session: Session) -> Reply:
        h = self.health()
        head = (
            "healthy"
            if h["status"] == "ok"
            else "degraded: " + ", ".join(f"{n} {self.statuses[n].state.removeprefix('degraded ')}" for n in h["degraded"])
        )
        if self.synthetic:
            head += f"; {self.source_choice}"
        return Reply(True, head, body=h)

    def _cmd_status(self, args: list[str], session: Session) -> Reply:
        meta = self.ring.latest_meta()
        return Reply(True, self._one_line_status(), body=meta.to_dict() if meta else None)

    def _cmd_get(self, args: list[str], session: Session) -> Reply:
        try:
            value = self.config.shown(args[0])
        except ConfigError as exc:
            return Reply.error(str(exc))
        return Reply(True, f"{args[0]}={json.dumps(value)}")

    def _cmd_set(self, args: list[str], session: Session) -> Reply:
        key, text = args
        return self._change(key, _set_value(key, text), session, "set")

    def _cmd_reset(self, args: list[str], session: Session) -> Reply:
        key = args[0]
        spec = KEYS.get(key)
        if spec is None:
            try:
                self.config.get(key)  # raises the error that names the key
            except ConfigError as exc:
                return Reply.error(str(exc))
            return Reply.error(f"{key}: unknown key")
        return self._change(key, copy.deepcopy(spec.default), session, "reset")

    def _change(self, key: str, value: Any, session: Session, verb: str) -> Reply:
        """Apply a set or reset from a client; refuse keys only the file may set and an allow-list that shuts the client out."""
        spec = KEYS.get(key)
        if spec is not None and spec.file_only:
            return Reply.error(f"{key}: can only be set in the config file, not from the command port")
        try:
            if key == "control.allow":
                _keeps_client_in(session, KEYS[key].validate(value))
            live = self.config.set(key, value)
        except ConfigError as exc:
            return Reply.error(str(exc))
        shown = json.dumps(self.config.shown(key))
        note = "applied" if live else "stored; takes effect after a restart (overwrite_config to keep it)"
        log.info("config %s %s to %s by %s (%s)", key, verb, shown, session.peer, note)
        return Reply(True, f"{key}={shown} ({note})")

    def _cmd_dump_config(self, args: list[str], session: Session) -> Reply:
        return Reply(True, "config", body=self.config.dump(redact=True))

    def _cmd_overwrite_config(self, args: list[str], session: Session) -> Reply:
        try:
            path, written = self.config.save()
        except ConfigError as exc:
            return Reply.error(str(exc))
        except OSError as exc:
            return Reply.error(f"cannot write the config: {exc.strerror or exc}")
        if not written:
            return Reply(
                True,
                f"nothing to write: no key was changed with set or reset since the start or the last overwrite_config; {path} is unchanged",
            )
        log.info("config written to %s by %s: %s", path, session.peer, ", ".join(written))
        return Reply(
            True, f"wrote {len(written)} changed key(s) to {path} (previous version kept as {Path(path).name}.bak)", body={"keys": written}
        )

    def _cmd_camera(self, what: str) -> Reply:
        try:
            data = self.capture.source_call(what)
        except Exception as exc:
            return Reply.error(f"camera: {exc}")
        return Reply(True, f"camera {what}", body=data)

    def _cmd_cameras(self, args: list[str], session: Session) -> Reply:
        return Reply(True, "cameras", body=list_cameras(active=self.capture.current_source()))
