"""The one config schema, and the live config built from it.

Every key is declared once below with its type, default, range or choices, a
line of doc, whether it applies live and whether it is a secret. The same
table drives loading config.yaml, `get`/`set`, `dump_config`,
`overwrite_config` and the README's config table (`picamd config-table`).

Components receive a `Section` view (`config.section("night")`) and read
values through it when they need them, so a live `set` takes effect on the
next frame without any copying; components that must act on a change (the
camera frame rate, say) subscribe with `config.on_change(prefix, callback)`.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import logging
import math
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from daemon.motion.regions import check_masks, check_regions
from daemon.storage.atomicfile import write_atomic

log = logging.getLogger("picamd.config")


class ConfigError(ValueError):
    """A value was refused. The message names the key, the value and why."""


@dataclass(frozen=True)
class Key:
    name: str
    kind: type
    default: Any
    doc: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    live: bool = True
    secret: bool = False
    # Extra validation/normalisation: returns the normalised value or raises ValueError(reason).
    check: Callable[[Any], Any] | None = None
    # How the README and the example config show a default that depends on the machine (the host name).
    shown_default: str | None = None

    def validate(self, value: Any) -> Any:
        """Coerce and validate a value from YAML or from `set`; raises ConfigError naming key, value and reason."""
        try:
            v = _coerce(self.kind, value)
            if self.choices is not None and v not in self.choices:
                raise ValueError(f"must be one of {', '.join(map(str, self.choices))}")
            if self.min is not None and v < self.min:
                raise ValueError(f"must be >= {self.min:g}")
            if self.max is not None and v > self.max:
                raise ValueError(f"must be <= {self.max:g}")
            if self.check is not None:
                v = self.check(v)
        except (ValueError, TypeError) as exc:
            shown = "***" if self.secret else _short(value)
            raise ConfigError(f"{self.name}: {shown}: {exc}") from None
        return v

    def describe_range(self) -> str:
        if self.choices is not None:
            return " \\| ".join(map(str, self.choices))
        if self.min is not None or self.max is not None:
            lo = "" if self.min is None else f"{self.min:g}"
            hi = "" if self.max is None else f"{self.max:g}"
            return f"{lo}..{hi}"
        return ""


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(kind: type, value: Any) -> Any:
    """Turn YAML values and `set` text into the key's type, refusing anything ambiguous."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("must be true or false")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError("must be a whole number")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError("must be a whole number")
    if kind is float:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        if isinstance(value, (int, float)):
            v = float(value)
        elif isinstance(value, str):
            try:
                v = float(value.strip())
            except ValueError:
                raise ValueError("must be a number") from None
        else:
            raise ValueError("must be a number")
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v
    if kind is str:
        if isinstance(value, (dict, list)):
            raise ValueError("must be text")
        if value is None:
            return ""
        return str(value)
    if kind is list:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = _parse_flow(text)
            else:  # `set export.formats jpg,png`
                value = [p.strip() for p in text.split(",") if p.strip()]
        if not isinstance(value, list):
            raise ValueError("must be a list")
        return value
    if kind is dict:
        if isinstance(value, str):
            value = _parse_flow(value.strip())
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("must be a mapping")
        return value
    raise TypeError(f"unsupported kind {kind}")


def _parse_flow(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML/JSON ({str(exc).splitlines()[0]})") from None


# --- checks shared by several keys -------------------------------------------------------------

def _check_networks(value: list) -> list:
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_network(str(item), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not a network (like 192.168.0.0/16)") from None
    return out


def _check_formats(value: list) -> list:
    allowed = ("jpg", "png", "npy")
    out = []
    for item in value:
        f = str(item).lower().lstrip(".")
        f = "jpg" if f == "jpeg" else f
        if f not in allowed:
            raise ValueError(f"format {item!r} is not one of {', '.join(allowed)}")
        out.append(f)
    if not out:
        raise ValueError("needs at least one format")
    return out


def parse_downscale(value: str) -> tuple[str, float, float]:
    """'256x192' -> ('size', 256, 192); '4' or '0.25' -> ('factor', f, f) with f the scale (0.25)."""
    text = str(value).strip().lower()
    if "x" in text:
        w, _, h = text.partition("x")
        try:
            wi, hi = int(w), int(h)
        except ValueError:
            raise ValueError("must be WIDTHxHEIGHT like 256x192, or a factor like 4 or 0.25") from None
        if not (16 <= wi <= 8192 and 16 <= hi <= 8192):
            raise ValueError("width and height must be 16..8192")
        return ("size", float(wi), float(hi))
    try:
        f = float(text)
    except ValueError:
        raise ValueError("must be WIDTHxHEIGHT like 256x192, or a factor like 4 or 0.25") from None
    if f <= 0 or not math.isfinite(f):
        raise ValueError("factor must be positive")
    scale = 1.0 / f if f >= 1 else f  # '4' means a quarter of the size; '0.25' means the same
    return ("factor", scale, scale)


def _check_downscale(value: str) -> str:
    parse_downscale(value)
    return str(value).strip().lower()


def _check_regions(value: list) -> list:
    # The one validation of regions (without the frame size: Motion checks the bounds against the real frame).
    return check_regions(value)


def _check_masks(value: list) -> list:
    return check_masks(value)


def _check_camera_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise ValueError("must be 1 to 64 letters (a-z, A-Z), digits, - or _ (it becomes an MQTT topic level)")
    return value


def _host_name() -> str:
    """The host name as a valid camera.name: its first label, other characters as -, picamd when none is left."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:64]
    return name if name.strip("-") else "picamd"


def _check_detect_classes(value: list) -> list:
    out: list[str | int] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise ValueError(f"{item!r} is not a class name or id")
        if isinstance(item, int) or str(item).strip().isdigit():
            if int(item) < 0:
                raise ValueError(f"class id {item!r} must be >= 0")
            out.append(int(item))
        elif str(item).strip():
            out.append(str(item).strip())
        else:
            raise ValueError("an empty class name")
    return out


def _check_detect_zone(value: list) -> list:
    """[] (the whole frame) or [x, y, w, h] in full-frame pixels, or fractions when every number is <= 1."""
    if not value:
        return []
    if len(value) != 4:
        raise ValueError("must be [] or [x, y, w, h] (pixels of the full frame, or fractions 0..1)")
    try:
        nums = [float(v) for v in value if not isinstance(v, bool)]
    except (TypeError, ValueError):
        raise ValueError("x, y, w, h must be numbers") from None
    if len(nums) != 4 or not all(math.isfinite(v) for v in nums):
        raise ValueError("x, y, w, h must be finite numbers")
    x, y, w, h = nums
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ValueError("x and y must be >= 0, w and h > 0")
    if all(v <= 1 for v in nums) and (x + w > 1.0001 or y + h > 1.0001):
        raise ValueError("as fractions, x + w and y + h must be <= 1")
    return [int(v) if v.is_integer() and v > 1 else v for v in nums]


PRIVATE_NETS = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "fc00::/7", "fe80::/10"]

# --- the schema ------------------------------------------------------------------------------------

SCHEMA: tuple[Key, ...] = (
    # camera
    Key("camera.name", str, _host_name(), "Name of this camera in alerts, MQTT topics and the fleet view", live=False,
        check=_check_camera_name, shown_default="the host name"),
    Key("camera.source", str, "auto", "Frame source: auto (Pi camera, else /dev/video0, else synthetic), picamera2, opencv or synthetic", choices=("auto", "picamera2", "opencv", "synthetic"), live=False),
    Key("camera.device", str, "/dev/video0", "For the opencv source: a USB camera index, a V4L2 path, an RTSP/HTTP URL or a video file", live=False),
    Key("camera.loop_video", bool, True, "For a video file: start again at the end instead of reporting the source as finished", live=False),
    Key("camera.width", int, 1024, "Capture width in pixels (full resolution, used by save)", min=64, max=8192, live=False),
    Key("camera.height", int, 768, "Capture height in pixels", min=48, max=8192, live=False),
    Key("camera.framerate", float, 10.0, "Frames per second by day (the source is asked for it; the loop never runs faster)", min=0.05, max=120),
    Key("camera.hflip", bool, False, "Mirror the image horizontally", live=False),
    Key("camera.vflip", bool, False, "Flip the image vertically", live=False),
    Key("camera.stall_timeout_s", float, 5.0, "A source that gives no frame for this long (beyond the frame interval) is reopened", min=0.5, max=600),
    Key("camera.reopen_backoff_max_s", float, 30.0, "Longest wait between attempts to reopen a failed source", min=0.5, max=3600),
    # synthetic scene
    Key("synthetic.seed", int, 1, "Random seed of the synthetic scene (same seed, same frames)", min=0, live=False),
    Key("synthetic.day_length_s", float, 600.0, "Length of one synthetic day/night cycle in seconds (86400 = real time)", min=10, max=86400 * 7),
    Key("synthetic.start_phase", float, 0.3, "Where in the cycle the scene starts: 0 midnight, 0.25 dawn, 0.5 noon, 0.75 dusk", min=0, max=1),
    Key("synthetic.people", int, 2, "Number of walking person-like figures", min=0, max=20),
    Key("synthetic.machine", bool, True, "Draw a machine part that runs and stops on a schedule", live=False),
    Key("synthetic.noise", float, 4.0, "Sensor noise standard deviation in grey levels (grows with gain at night)", min=0, max=64),
    # ring buffer
    Key("ring.size", int, 300, "Frames kept in the ring (clamped to the RAM budget)", min=2, max=100000, live=False),
    Key("ring.downscale", str, "256x192", "Size of ring frames: WIDTHxHEIGHT, or a factor (4 = a quarter of the width and height, 1 = full)", live=False, check=_check_downscale),
    Key("ring.max_ram_fraction", float, 0.25, "At most this fraction of available memory goes to the ring", min=0.01, max=0.9, live=False),
    # night mode
    Key("night.enabled", bool, True, "Switch to night exposure when the scene stays dark"),
    Key("night.dark_threshold", float, 40.0, "Enter night when the day-equivalent brightness (0-255) stays below this", min=0, max=255),
    Key("night.bright_threshold", float, 60.0, "Leave night when the day-equivalent brightness stays above this (must be above dark_threshold)", min=0, max=255),
    Key("night.min_dark_frames", int, 10, "Consecutive dark frames needed to enter night", min=1, max=100000),
    Key("night.min_bright_frames", int, 10, "Consecutive bright frames needed to leave night", min=1, max=100000),
    Key("night.min_dwell_s", float, 60.0, "After a switch, no switch back for this long (exposure settles, no flapping)", min=0, max=86400),
    Key("night.mode", str, "still", "Night camera mode: still (long exposure, AE/AWB off) or slow_video (low frame rate, long frame durations)", choices=("still", "slow_video")),
    Key("night.exposure_us", int, 1_000_000, "Night exposure time in microseconds (clamped to what the sensor allows)", min=100, max=700_000_000),
    Key("night.gain", float, 8.0, "Night analogue gain", min=1.0, max=64.0),
    Key("night.sun.enabled", bool, False, "Gate the brightness rule with the sun's altitude (no night at noon, no day at midnight)"),
    Key("night.sun.latitude", float, 0.0, "Latitude in degrees, north positive", min=-90, max=90),
    Key("night.sun.longitude", float, 0.0, "Longitude in degrees, east positive", min=-180, max=180),
    Key("night.sun.altitude_deg", float, -6.0, "Sun altitude that separates day and night (-6 civil, -12 nautical, -18 astronomical twilight)", min=-30, max=30),
    Key("night.sun.margin_deg", float, 6.0, "Brightness decides freely within this many degrees of altitude_deg", min=0, max=45),
    # export and auto-save
    Key("export.base_dir", str, "captures", "Folder for saved images (captures/YYYY-MM-DD/...); relative to the working directory"),
    Key("export.formats", list, ["jpg"], "Formats written by save/pastStack when none is given: jpg, png, npy", check=_check_formats),
    Key("export.jpeg_quality", int, 92, "JPEG quality of saved images", min=10, max=100),
    Key("export.sidecar", bool, True, "Write a .json sidecar with the frame metadata next to every image"),
    Key("export.save_before_s", float, 10.0, "pastStack stacks the frames of the last this many seconds", min=0.1, max=86400),
    Key("export.stack_count", int, 16, "Most frames in one stack", min=1, max=1000),
    Key("export.stack_method", str, "mean", "Stacking: mean, or sigma_clip (rejects hot pixels, planes, satellites)", choices=("mean", "sigma_clip")),
    Key("export.stack_sigma", float, 3.0, "Rejection threshold of sigma_clip, in standard deviations", min=0.5, max=10),
    Key("export.auto_save_interval_s", float, 3600.0, "Auto-save period, aligned to the wall clock (3600 = on the hour); 0 turns it off", min=0, max=86400 * 7),
    Key("export.auto_save_format", str, "jpg", "Format of auto-saved images", choices=("jpg", "png", "npy")),
    Key("export.night_auto_save", str, "stack", "At night auto-save a stack of stack_count full frames, or one (long-exposure) frame", choices=("stack", "frame")),
    Key("export.max_disk_mb", float, 2048.0, "Keep the captures folder under this size, deleting the oldest auto-saves first", min=1, max=10_000_000),
    Key("export.min_free_mb", float, 200.0, "Keep at least this much disk free, deleting the oldest auto-saves first", min=0, max=10_000_000),
    # command port
    Key("control.bind", str, "0.0.0.0", "Address the command port listens on", live=False),
    Key("control.port", int, 9999, "TCP command port (netcat)", min=0, max=65535, live=False),
    Key("control.allow", list, PRIVATE_NETS, "Client networks allowed to connect to the command port and the HTTP server", check=_check_networks),
    Key("control.token", str, "", "If set, commands that change state need `token SECRET` first on the connection", secret=True),
    Key("control.max_clients", int, 32, "Most command connections at once", min=1, max=1024),
    Key("control.idle_timeout_s", float, 300.0, "Close a command connection idle for this long", min=1, max=86400),
    Key("control.max_line_bytes", int, 4096, "Longest command line accepted", min=64, max=1_048_576),
    Key("control.script_linger_s", float, 1.0, "A client whose first command arrives at once after connecting (echo CMD | nc, which never closes its side) is disconnected once it has been answered and stays silent this long; 0 keeps every connection until idle_timeout_s", min=0, max=3600),
    # HTTP server
    Key("http.bind", str, "0.0.0.0", "Address the HTTP server listens on", live=False),
    Key("http.port", int, 8080, "HTTP port for /stream, /snapshot.jpg, /meta, /health and the page", min=0, max=65535, live=False),
    Key("http.max_clients", int, 16, "Most simultaneous HTTP connections", min=1, max=1024),
    # MJPEG stream
    Key("mjpeg.quality", int, 80, "JPEG quality of the stream", min=10, max=100),
    Key("mjpeg.max_fps", float, 15.0, "Highest frame rate sent to one viewer (a viewer may ask for less with ?fps=)", min=0.1, max=120),
    Key("mjpeg.resolution", str, "full", "Stream the full camera frame or the downscaled ring frame", choices=("full", "ring")),
    # health
    Key("health.swap_guard_mb", float, 64.0, "When swap in use exceeds this, the capture slows down to let memory recover", min=0, max=1_000_000),
    Key("health.swap_guard_factor", float, 2.0, "How much slower the capture runs while the swap guard is on", min=1, max=100),
    # motion (regions of interest, machine state)
    Key("motion.enabled", bool, True, "Measure motion in the regions on every ring frame"),
    Key("motion.method", str, "background", "Compare against a running background (slow light changes fade in) or the previous frame", choices=("background", "previous")),
    Key("motion.background_alpha", float, 0.05, "Weight of each new frame in the running background", min=0.001, max=1),
    Key("motion.blur", int, 5, "Gaussian blur kernel (odd pixels, 0 = none) before differencing", min=0, max=51),
    Key("motion.pixel_threshold", int, 25, "Grey-level difference that counts a pixel as changed", min=1, max=255),
    Key("motion.dilate", int, 2, "Dilation iterations on the changed-pixel mask", min=0, max=20),
    Key("motion.window_s", float, 30.0, "RUNNING/STOPPED is the majority over this many seconds", min=1, max=3600),
    Key("motion.running_fraction", float, 0.5, "More than this fraction of moving frames in the window means RUNNING", min=0.01, max=0.99),
    Key("motion.deep_sleep_s", float, 1200.0, "STOPPED for this long becomes DEEP_SLEEP", min=1, max=86400 * 30),
    Key("motion.brightness_jump", float, 20.0, "A global brightness change of this many grey levels between frames resets the background instead of counting as motion", min=1, max=255),
    Key("motion.settle_s", float, 5.0, "After a brightness jump or night switch, motion is not judged for this long", min=0, max=600),
    Key("motion.regions", list, [], "Regions: name, rect [x,y,w,h] or polygon [[x,y],...] (pixels of the full frame, or fractions 0..1), min_fraction or min_pixels, optional machine_id and webhook", check=_check_regions),
    Key("motion.masks", list, [], "Areas ignored everywhere (burnt-in timestamps, trees): rects or polygons like the regions", check=_check_masks),
    Key("motion.log_dir", str, "logs", "Folder of the motion, state-change and deep-sleep logs", live=False),
    Key("motion.log_max_mb", float, 10.0, "Rotate a motion log when it reaches this size", min=0.01, max=10000),
    Key("motion.log_keep", int, 5, "Rotated motion logs kept per region", min=0, max=1000),
    # notifications
    Key("notify.queue_size", int, 100, "Pending notifications kept; when full the oldest is dropped and counted", min=1, max=100000),
    Key("notify.timeout_s", float, 5.0, "Timeout of one send attempt", min=0.1, max=300),
    Key("notify.retries", int, 3, "Attempts after the first before a notification is given up", min=0, max=20),
    Key("notify.backoff_s", float, 2.0, "First wait between attempts; doubles each time", min=0, max=3600),
    Key("notify.events", list, ["motion.state", "motion.deep_sleep", "night"], "Event kinds (prefixes) that are sent"),
    Key("notify.webhook.url", str, "", "Webhook URL; empty turns webhooks off"),
    Key("notify.webhook.format", str, "json", "Body format: json (the whole event) or ifttt (value1..value3)", choices=("json", "ifttt")),
    Key("notify.webhook.headers", dict, {}, "Extra HTTP headers of webhook requests"),
    Key("notify.webhook.token", str, "", "Sent as 'Authorization: Bearer TOKEN' when set", secret=True),
    Key("notify.email.smtp_host", str, "", "SMTP server; empty turns email off"),
    Key("notify.email.smtp_port", int, 587, "SMTP port", min=1, max=65535),
    Key("notify.email.security", str, "starttls", "none, starttls or ssl", choices=("none", "starttls", "ssl")),
    Key("notify.email.sender", str, "picamd@localhost", "From address"),
    Key("notify.email.recipients", list, [], "To addresses"),
    Key("notify.email.username", str, "", "SMTP user; the password comes from the environment variable PICAMD_SMTP_PASSWORD"),
    Key("notify.email.ca_file", str, "", "PEM file of certificates to trust for the SMTP server's TLS (a local relay with its own certificate); empty: the system's"),
    # detection (on-device, off by default)
    Key("detect.enabled", bool, False, "Run the person detector on the newest full-resolution frame (costs memory and CPU; see the Pi memory table)"),
    Key("detect.backend", str, "tflite", "Detector backend (tflite: LiteRT, else tflite-runtime); a change reloads the detector", choices=("tflite",)),
    Key("detect.model", str, "", "Model file (.tflite: YOLOv8/YOLO11, YOLOv5 or SSD with post-process); empty: the built-in SSD MobileNet; a change reloads the detector"),
    Key("detect.labels", str, "", "Label file, one name per line; empty: the file beside the model (same name .txt, or labels.txt), the model's own names, or the built-in SSD's"),
    Key("detect.classes", list, ["person"], "Class names (or ids) to keep; [] keeps every class", check=_check_detect_classes),
    Key("detect.score_threshold", float, 0.5, "Lowest score of a detection", min=0.01, max=1),
    Key("detect.iou_threshold", float, 0.45, "Overlap above which NMS drops the weaker of two boxes", min=0.01, max=1),
    Key("detect.threads", int, 2, "Interpreter threads; a change reloads the detector", min=1, max=4),
    Key("detect.max_fps", float, 2.0, "Most inferences per second (the worker takes the newest frame, never a backlog)", min=0.05, max=30),
    Key("detect.gate", str, "motion", "When to run: motion (a change in detect.zone or the whole ring frame since the last inference), regions (a named motion region is moving) or always", choices=("motion", "regions", "always")),
    Key("detect.gate_threshold", float, 0.002, "Fraction of the ring frame (or zone) that must have changed since the last inference to open the motion gate", min=0, max=1),
    Key("detect.zone", list, [], "[] or [x, y, w, h] of the full frame (pixels, or fractions 0..1) cropped before the model; the motion gate looks there too", check=_check_detect_zone),
    Key("detect.draw_boxes", bool, False, "Draw the boxes on the stream's JPEGs (never on the ring or saved raw frames)"),
    Key("detect.events_keep", int, 100, "Recent detection events kept for 'detect events'", min=1, max=10000),
    Key("detect.dwell_s", float, 1.0, "A person is an event (detect.person) once tracked this long", min=0, max=3600),
    Key("detect.clear_s", float, 10.0, "detect.clear after no one has been tracked for this long", min=0, max=86400),
    Key("detect.groups", bool, True, "Group people with DBSCAN over their foot points (loads scikit-learn, about 100 MiB, the first time two people are seen)"),
    Key("detect.group_eps", float, 1.0, "Two people within this many body heights of each other are neighbours", min=0.05, max=20),
    Key("detect.group_min_samples", int, 2, "Fewest people in a group", min=2, max=100),
    # logging
    Key("logging.level", str, "INFO", "Log level", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
)

KEYS: dict[str, Key] = {k.name: k for k in SCHEMA}

#: Keys that moved: a config file with the old name still loads (with one log line); `set` and `get` name the new one.
RENAMED: dict[str, str] = {
    "mjpeg.bind": "http.bind",
    "mjpeg.port": "http.port",
    "mjpeg.max_clients": "http.max_clients",
}


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flat.items():
        node = out
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if name in KEYS:
            flat[name] = v
        elif isinstance(v, dict):
            flat.update(_flatten(v, name + "."))
        else:
            flat[name] = v  # unknown key: reported by the caller
    return flat


def _move_renamed(flat: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Old key names in a config file -> the new ones, with one log line saying what to rename."""
    moved = [(old, new) for old, new in RENAMED.items() if old in flat]
    if not moved:
        return flat
    out = dict(flat)
    for old, new in moved:
        if new in out:
            raise ConfigError(f"{path}: both {old} and {new} are set; {old} is the old name of {new}: keep only {new}")
        out[new] = out.pop(old)
    renames = ", ".join(f"{old} is now {new}" for old, new in moved)
    log.warning("config: %s; rename %s in %s", renames, "it" if len(moved) == 1 else "them", Path(path).name)
    return out


def _cross_check(values: dict[str, Any]) -> None:
    if values["night.bright_threshold"] <= values["night.dark_threshold"]:
        raise ConfigError(
            f"night.bright_threshold: {values['night.bright_threshold']:g}: must be above night.dark_threshold ({values['night.dark_threshold']:g}), or night mode would flap"
        )


class Config:
    """Live configuration: validated values keyed by dotted name, with change listeners."""

    def __init__(self, values: dict[str, Any] | None = None, path: str | os.PathLike | None = None) -> None:
        self._lock = threading.RLock()
        self._values = {k.name: copy.deepcopy(k.default) for k in SCHEMA}
        self._listeners: list[tuple[str, Callable[[str, Any], None]]] = []
        self.path = Path(path) if path else None
        if values:
            errors = []
            for name, value in values.items():
                try:
                    self._values[name] = self._validate(name, value)
                except ConfigError as exc:
                    errors.append(str(exc))
            if errors:
                raise ConfigError("; ".join(errors))
            _cross_check(self._values)

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> "Config":
        """Read config.yaml. A missing file means all defaults; any bad key or value is refused with all reasons at once."""
        if path is None or not Path(path).exists():
            if path is not None:
                log.warning("config file %s not found; using defaults", path)
            return cls(path=path)
        text = Path(path).read_text()
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        return cls(_move_renamed(_flatten(tree), path), path=path)

    @staticmethod
    def _validate(name: str, value: Any) -> Any:
        key = KEYS.get(name)
        if key is None:
            raise _unknown(name)
        return key.validate(value)

    # -- reading
    def get(self, name: str) -> Any:
        if name not in KEYS:
            raise _unknown(name)
        return self._values[name]

    def section(self, prefix: str) -> "Section":
        return Section(self, prefix)

    def dump(self, redact: bool = True) -> dict[str, Any]:
        """Nested dict of every value; secrets shown as '***' when set and redact is on."""
        with self._lock:
            flat = {
                n: ("***" if redact and KEYS[n].secret and v else copy.deepcopy(v))
                for n, v in self._values.items()
            }
        return _nest(flat)

    # -- changing
    def set(self, name: str, value: Any) -> bool:
        """Validate and apply one value. Returns True if it applies live, False if a restart is needed.

        Nothing changes when the value is refused.
        """
        with self._lock:
            v = self._validate(name, value)
            trial = dict(self._values)
            trial[name] = v
            _cross_check(trial)
            old = self._values[name]
            self._values[name] = v
            listeners = [cb for prefix, cb in self._listeners if name.startswith(prefix)]
        if v != old:
            for cb in listeners:
                try:
                    cb(name, v)
                except Exception:
                    log.exception("config listener for %s failed", name)
        return KEYS[name].live

    def on_change(self, prefix: str, callback: Callable[[str, Any], None]) -> None:
        with self._lock:
            self._listeners.append((prefix, callback))

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the current values as YAML atomically, keeping the previous file as .bak. Secrets are kept (this is the real config)."""
        target = Path(path or self.path or "config.yaml")
        if target.exists():
            write_atomic(target.with_name(target.name + ".bak"), target.read_bytes())
        body = "# written by picamd overwrite_config\n" + yaml.safe_dump(self.dump(redact=False), sort_keys=False)
        return write_atomic(target, body.encode())


def _unknown(name: str) -> ConfigError:
    if name in RENAMED:
        return ConfigError(f"{name}: this key is now {RENAMED[name]}; use {RENAMED[name]}")
    return ConfigError(f"{name}: unknown key (see dump_config for the known ones)")


class Section:
    """A live view of one section: `cfg.dark_threshold` reads `night.dark_threshold` now."""

    __slots__ = ("_config", "_prefix")

    def __init__(self, config: Config, prefix: str) -> None:
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, leaf: str) -> Any:
        try:
            return self._config.get(f"{self._prefix}.{leaf}")
        except ConfigError:
            raise AttributeError(f"{self._prefix}.{leaf}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("config sections are read-only; use Config.set")

    def section(self, sub: str) -> "Section":
        return Section(self._config, f"{self._prefix}.{sub}")

    def on_change(self, callback: Callable[[str, Any], None]) -> None:
        self._config.on_change(self._prefix + ".", callback)

    @property
    def config(self) -> Config:
        return self._config


def markdown_table() -> str:
    """The README's config table, generated from the schema."""
    rows = ["| key | default | range | live | description |", "| --- | --- | --- | --- | --- |"]
    for k in SCHEMA:
        default = json.dumps(k.default) if not isinstance(k.default, str) else (k.default or '""')
        if isinstance(k.default, list) and len(default) > 40:
            default = default[:37] + "..."
        default = f"`{default}`" if k.shown_default is None else k.shown_default
        rows.append(f"| `{k.name}` | {default} | {k.describe_range()} | {'yes' if k.live else 'restart'} | {k.doc} |")
    return "\n".join(rows)


def commented_yaml(values: dict[str, Any] | None = None) -> str:
    """A complete config.yaml with every key, its value and its doc line as a comment."""
    values = values or {}
    lines = ["# picamd configuration. Every key, with its default and what it does.",
             "# Change values live with `set KEY VALUE` on the command port; `overwrite_config` writes them here.", ""]
    open_path: list[str] = []
    for k in SCHEMA:
        *parents, leaf = k.name.split(".")
        common = 0
        while common < min(len(parents), len(open_path)) and parents[common] == open_path[common]:
            common += 1
        for depth in range(common, len(parents)):
            if depth == 0:
                lines.append("")
            lines.append("  " * depth + f"{parents[depth]}:")
        open_path = parents
        indent = "  " * len(parents)
        value = values.get(k.name, k.default)
        rendered = yaml.safe_dump({leaf: value}, default_flow_style=True, width=10_000).strip()[1:-1]
        rng = k.describe_range().replace(" \\| ", "|")
        lines.append(f"{indent}# {k.doc}" + (f" [{rng}]" if rng else "") + ("" if k.live else " (restart)"))
        if k.shown_default is not None and k.name not in values:
            # Left out, so a file copied to another machine does not carry this machine's value.
            rendered = f"# {leaf}: ({k.shown_default} when not set)"
        lines.append(f"{indent}{rendered}")
    return "\n".join(lines) + "\n"
