"""Choosing the frame source, and listing the cameras this machine has.

`build_source` turns `camera.source` (or the CLI's `--source`) into a source
object and a sentence for the log that says what was chosen and why. The
source is returned closed: the capture loop opens it (and reopens it with
backoff when it fails).

`auto` tries, in order: a Pi camera (picamera2 imports and libcamera lists a
camera), then `camera.device` (by default /dev/video0) if OpenCV opens it
and it gives a frame, then the synthetic scene.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import cv2

from daemon.config import Config

from .base import Source, SourceError
from .opencv_source import OpenCVSource, classify_device, redact_url
from .picamera2_info import Picamera2Missing, describe_controls, describe_sensor_modes, jsonable, load_picamera2
from .picamera2_source import Picamera2Source
from .synthetic import SyntheticSource

log = logging.getLogger("picamd.sources")

SOURCE_NAMES = ("auto", "synthetic", "picamera2", "opencv")
#: How long probing one OpenCV device may take (a V4L2 read can otherwise block for 10 s).
PROBE_TIMEOUT_S = 5.0
#: V4L2 nodes that are the Pi's own camera pipeline, codecs or ISP: not cameras OpenCV should open.
PI_INTERNAL_NODES = ("bcm2835-codec", "bcm2835-isp", "rpi-hevc-dec", "pispbe", "rp1-cfe", "unicam", "bcm2835-jpeg", "rpivid")


def build_source(config: Config, override: str | None = None, *, picamera2_module: Any = None) -> tuple[Source, str]:
    """The source to use and why. `override` is the CLI --source: a source name, or a device, URL or video file.

    Raises SourceError for an override that names nothing usable (a file that does not exist).
    """
    camera = config.section("camera")
    choice = (override if override not in (None, "") else camera.source).strip()
    shown = redact_url(choice)  # stream passwords stay out of the log
    origin = f"--source {shown}" if override not in (None, "") else f"camera.source={shown}"
    lowered = choice.lower()
    if lowered == "synthetic":
        return _synthetic(config), f"synthetic scene ({origin})"
    if lowered == "picamera2":
        source = Picamera2Source(camera, config.section("night"), picamera2_module=picamera2_module)
        return source, f"Pi camera through picamera2 ({origin})"
    if lowered == "opencv":
        src = OpenCVSource(camera)
        return src, f"OpenCV on {src.shown_device} ({origin}, camera.device)"
    if lowered == "auto":
        return _auto(config, origin, picamera2_module)
    # Anything else names a device, stream or file for the OpenCV source.
    kind, device = classify_device(choice)
    if kind == "file" and not Path(str(device)).is_file():
        raise SourceError(f"--source {shown!r} is not one of {', '.join(SOURCE_NAMES)}, and no such video file, device or URL exists")
    src = OpenCVSource(camera, device=choice)
    return src, f"OpenCV on {kind} {src.shown_device} (--source)"


def _synthetic(config: Config) -> SyntheticSource:
    return SyntheticSource(config.section("camera"), config.section("synthetic"))


def _auto(config: Config, origin: str, picamera2_module: Any) -> tuple[Source, str]:
    camera = config.section("camera")
    tried = []
    try:
        module = load_picamera2(picamera2_module)
        cameras = list(module.Picamera2.global_camera_info())
    except Picamera2Missing:
        tried.append("picamera2 is not installed")
    except SourceError as exc:
        tried.append(str(exc))
    except Exception as exc:
        tried.append(f"libcamera cannot list cameras ({exc})")
    else:
        if cameras:
            model = cameras[0].get("Model", "unknown sensor")
            return (
                Picamera2Source(camera, config.section("night"), picamera2_module=module),
                f"Pi camera 0 ({model}) through picamera2 ({origin}: libcamera lists {len(cameras)} camera(s))",
            )
        tried.append("libcamera lists no Pi camera")
    device = camera.device
    shown = redact_url(device) if classify_device(device)[0] == "url" else device
    probe = probe_opencv(device)
    if probe.get("opens") and probe.get("frame"):
        size = f"{probe['width']}x{probe['height']}"
        return OpenCVSource(camera), f"OpenCV on {shown} ({origin}: {'; '.join(tried)}; {shown} gives {size} frames)"
    tried.append(f"{shown} {probe.get('error', 'gives no frame')}")
    return _synthetic(config), f"synthetic scene ({origin}: {'; '.join(tried)})"


def probe_opencv(device: str | int, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Open a device/stream/file with OpenCV, read one frame and release it, within `timeout` seconds.

    {"opens": bool, "frame": bool, "width", "height", "error"}.
    """
    try:
        kind, dev = classify_device(device)
    except SourceError as exc:
        return {"opens": False, "frame": False, "error": str(exc)}
    if kind in ("v4l2", "file") and not os.path.exists(str(dev)):
        return {"opens": False, "frame": False, "error": "does not exist"}
    result: dict[str, Any] = {"opens": False, "frame": False}
    done = threading.Event()

    def run() -> None:
        cap = None
        try:
            if kind == "url":
                cap = cv2.VideoCapture(
                    str(dev),
                    cv2.CAP_FFMPEG,
                    [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(timeout * 1000), cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(timeout * 1000)],
                )
            elif kind == "file":
                cap = cv2.VideoCapture(str(dev), cv2.CAP_FFMPEG)
            else:
                cap = cv2.VideoCapture(dev, cv2.CAP_V4L2)
            result["opens"] = bool(cap.isOpened())
            if result["opens"]:
                ok, frame = cap.read()
                if ok and frame is not None:
                    result.update(frame=True, width=int(frame.shape[1]), height=int(frame.shape[0]))
                else:
                    result["error"] = "opens but gives no frame"
            else:
                result["error"] = "does not open"
        except Exception as exc:  # a broken driver must not break the listing
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if cap is not None:
                cap.release()
            done.set()

    threading.Thread(target=run, name="picamd-camera-probe", daemon=True).start()
    if not done.wait(timeout):
        return {"opens": result["opens"], "frame": False, "error": f"no answer within {timeout:g} s"}
    return dict(result)


def _v4l2_name(path: str) -> str | None:
    name_file = Path("/sys/class/video4linux") / Path(path).name / "name"
    try:
        return name_file.read_text().strip()
    except OSError:
        return None


def list_cameras(picamera2_module: Any = None, active: Source | None = None, *, dev_glob: str = "/dev/video*") -> dict[str, Any]:
    """What cameras this machine has: Pi cameras with sensor modes and exposure limits, and V4L2 devices.

    `active` is the source the daemon is running: a camera it holds cannot be
    opened a second time, so its details come from the source instead.
    """
    return {"picamera2": _list_pi_cameras(picamera2_module, active), "v4l2": _list_v4l2(active, dev_glob)}


def _list_pi_cameras(picamera2_module: Any, active: Source | None) -> dict[str, Any]:
    try:
        module = load_picamera2(picamera2_module)
    except SourceError as exc:
        return {"available": False, "note": str(exc), "cameras": []}
    try:
        infos = list(module.Picamera2.global_camera_info())
    except Exception as exc:
        return {"available": False, "note": f"libcamera cannot list cameras: {exc}", "cameras": []}
    cameras = []
    for num, info in enumerate(infos):
        entry: dict[str, Any] = {
            "num": num,
            "model": info.get("Model"),
            "id": info.get("Id"),
            "location": jsonable(info.get("Location")),
            "rotation": jsonable(info.get("Rotation")),
        }
        if isinstance(active, Picamera2Source) and active.camera_num == num and active.is_open:
            d = active.describe()
            controls = active.controls()
            entry.update(
                in_use_by_picamd=True,
                sensor_modes=d.get("sensor_modes", []),
                sensor_resolution=d.get("sensor_resolution"),
                exposure_time_us=controls.get("ExposureTime"),
                analogue_gain=controls.get("AnalogueGain"),
            )
            cameras.append(entry)
            continue
        cam = None
        try:
            cam = module.Picamera2(num)
            modes = describe_sensor_modes(cam.sensor_modes)
            controls = describe_controls(cam.camera_controls)
            entry.update(
                opens=True,
                sensor_modes=modes,
                sensor_resolution=jsonable(getattr(cam, "sensor_resolution", None)),
                exposure_time_us=controls.get("ExposureTime"),
                analogue_gain=controls.get("AnalogueGain"),
            )
        except Exception as exc:
            entry.update(opens=False, error=f"{exc} (in use by another program?)")
        finally:
            if cam is not None:
                try:
                    cam.close()
                except Exception as exc:
                    log.debug("closing camera %d after listing it: %s", num, exc)
        cameras.append(entry)
    return {"available": True, "cameras": cameras}


def _video_index(path: str) -> int:
    m = re.search(r"(\d+)$", path)
    return int(m.group(1)) if m else 1 << 30


def _list_v4l2(active: Source | None, dev_glob: str) -> list[dict[str, Any]]:
    out = []
    in_use = active if isinstance(active, OpenCVSource) and active.is_open else None
    active_device = None if in_use is None else os.path.realpath(str(in_use.device))
    for path in sorted(glob.glob(dev_glob), key=_video_index):
        entry: dict[str, Any] = {"device": path, "name": _v4l2_name(path)}
        name = (entry["name"] or "").lower()
        if any(name.startswith(n) for n in PI_INTERNAL_NODES):
            entry.update(opens=None, note="Pi camera pipeline, codec or ISP node (not a camera for OpenCV)")
        elif in_use is not None and os.path.realpath(path) == active_device:
            d = in_use.describe()
            entry.update(opens=True, in_use_by_picamd=True, width=d.get("width"), height=d.get("height"))
        else:
            probe = probe_opencv(path)
            entry.update(opens=bool(probe.get("opens") and probe.get("frame")))
            if probe.get("frame"):
                entry.update(width=probe["width"], height=probe["height"])
            else:
                entry["error"] = probe.get("error")
        out.append(entry)
    return out
