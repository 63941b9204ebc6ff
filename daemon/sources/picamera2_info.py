"""What picamera2 and the camera say about themselves, as plain values.

`picamera2` comes from apt on the Pi (`python3-picamera2`; the daemon's venv
is made with `--system-site-packages`), not from PyPI, so `load_picamera2`
imports it only when it is needed (a Pi camera source opening, a camera
listing) and turns each way of failing into one line. Tests pass a stand-in
module instead.

libcamera answers in its own types (tuples, enums, Rectangle, SensorFormat);
`jsonable` and the `describe_*` helpers make them plain JSON for health,
`source`, the camera listing and each frame's info. Both the source
(`picamera2_source.py`) and the camera listing (`select.py`) use them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import SourceError

INSTALL_HINT = (
    "picamera2 is not importable: on Raspberry Pi OS run `sudo apt install python3-picamera2` and make the venv with --system-site-packages"
)


class Picamera2Missing(SourceError):
    """picamera2 is not installed at all (as opposed to installed and failing to import)."""


def load_picamera2(module: Any = None) -> Any:
    """The picamera2 module (or the given stand-in).

    Raises Picamera2Missing with an install hint when it is not installed, and SourceError with the import
    error on one line when it is installed but fails (a numpy other than the one python3-picamera2 was built
    with prints a paragraph; health shows one line).
    """
    if module is not None:
        return module
    try:
        import picamera2  # noqa: PLC0415 - imported lazily: it exists only on a Pi
    except Exception as exc:  # ImportError, or libcamera failing to load off the Pi
        if isinstance(exc, ModuleNotFoundError) and exc.name == "picamera2":
            raise Picamera2Missing(f"{INSTALL_HINT} ({type(exc).__name__}: {exc})") from exc
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        if len(detail) > 240:
            detail = detail[:237] + "..."
        raise SourceError(
            f"picamera2 is installed but cannot be imported ({detail}); tools/install.sh keeps apt's numpy, which python3-picamera2 needs"
        ) from exc
    return picamera2


def jsonable(value: Any) -> Any:
    """libcamera values (tuples, enums, Rectangle, SensorFormat) as plain JSON values."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def describe_controls(camera_controls: dict) -> dict[str, Any]:
    """camera_controls (name -> (min, max, default)) as name -> {"min", "max", "default"}."""
    out = {}
    for name, limits in sorted(camera_controls.items()):
        try:
            lo, hi, default = limits
        except (TypeError, ValueError):
            out[name] = jsonable(limits)
            continue
        out[name] = {"min": jsonable(lo), "max": jsonable(hi), "default": jsonable(default)}
    return out


def describe_sensor_modes(modes: list[dict]) -> list[dict[str, Any]]:
    out = []
    for m in modes:
        out.append(
            {
                "size": jsonable(m.get("size")),
                "bit_depth": m.get("bit_depth"),
                "fps": m.get("fps"),
                "crop": jsonable(m.get("crop_limits")),
                "format": jsonable(m.get("format")),
                "exposure_limits_us": jsonable(m.get("exposure_limits")),
            }
        )
    return out


def frame_info(metadata: dict, mode: str) -> dict[str, Any]:
    """A frame's info from its request's metadata: exposure, gain and what else the camera reported, and the mode."""
    info: dict[str, Any] = {}
    if "ExposureTime" in metadata:
        info["exposure_us"] = int(metadata["ExposureTime"])
    if "AnalogueGain" in metadata:
        info["gain"] = round(float(metadata["AnalogueGain"]), 4)
    for key in ("Lux", "ColourTemperature", "FrameDuration", "DigitalGain", "SensorTemperature"):
        if key in metadata:
            info[key] = jsonable(metadata[key])
    info["mode"] = mode
    return info
