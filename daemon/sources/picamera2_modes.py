"""The Pi camera's day and night modes as libcamera controls, within what the sensor allows.

* day: a video configuration at `camera.width` x `camera.height`, RGB888
  (BGR in memory), `FrameDurationLimits` fixed at 1/`camera.framerate`,
  auto-exposure and auto white balance on.
* night `still`: a still configuration at the same size with AE and AWB off,
  fixed `ExposureTime` and `AnalogueGain`, and `FrameDurationLimits` widened
  to cover the exposure (without that, libcamera silently caps the exposure
  at the frame duration: about 33 ms in video, 83 ms in preview). The
  exposure is clamped to the sensor's `ExposureTime` maximum (about 1 s on
  the OV5647, 11.8 s on the IMX219, 112 s on the IMX708, 670 s on the
  IMX477) and the gain to its `AnalogueGain` range; the clamping is logged and
  returned. White balance is frozen at the gains AWB last chose.
* night `slow_video`: the video configuration with `FrameDurationLimits` up
  to the long exposure and AE on in its Long exposure mode, so the frame rate
  drops as the light fades. How long AE really exposes is also bounded by the
  camera tuning's exposure profile; use `still` for fixed long exposures.

These are pure functions of the wanted mode and the sensor's limits (its
`camera_controls`), kept apart from the source's threads so the rules are in
one place: the controls sent and what `apply_night` reports are computed by
the same code. A wanted mode is ("day",) or (mode, exposure_us, gain) after
clamping.
"""

from __future__ import annotations

from typing import Any

#: Headroom between the exposure and the longest frame duration we allow (sensor blanking).
FRAME_DURATION_MARGIN_US = 20_000


def limit(limits: dict[str, Any], name: str, fallback: tuple) -> tuple:
    """(min, max) of a control from the sensor's camera_controls, or `fallback` when it does not report it."""
    got = limits.get(name)
    if not got:
        return fallback
    return got[0], got[1]


def day_frame_us(fps: float) -> int:
    # libcamera clamps this to what the chosen sensor mode can do.
    return int(round(1e6 / max(0.05, fps)))


def night_frame_limits(mode: str, exposure_us: int, day_us: int, longest_us: Any) -> tuple[int, int]:
    """FrameDurationLimits (lo, hi) of a night mode: from the day frame duration up to the exposure.

    `still` adds the blanking margin so the fixed exposure fits in a frame; `slow_video` lets AE stretch
    frames up to the exposure. Both stay within the sensor's longest frame duration (`longest_us`) when known.
    """
    lo = min(day_us, exposure_us)
    cap = exposure_us + FRAME_DURATION_MARGIN_US if mode == "still" else int(exposure_us)
    hi = cap if not longest_us else min(int(longest_us), cap)
    return lo, max(lo, hi)


def ae_long_mode(module: Any) -> Any:
    """libcamera's AeExposureModeEnum.Long from the picamera2 module given, or None where it has none."""
    libcamera = getattr(module, "libcamera", None)
    enum = getattr(getattr(getattr(libcamera, "controls", None), "AeExposureModeEnum", None), "Long", None)
    return enum


def mode_controls(
    wanted: tuple, *, day_us: int, limits: dict[str, Any], colour_gains: tuple[float, float] | None, long_mode: Any
) -> dict[str, Any]:
    """The controls for `wanted`: ("day",) or (mode, exposure_us, gain) already clamped to the sensor."""
    if wanted[0] == "day":
        # ExposureTime/AnalogueGain 0 hand both back to AE: libcamera keeps a fixed value set at night across reconfigurations.
        return {"FrameDurationLimits": (day_us, day_us), "AeEnable": True, "AwbEnable": True, "ExposureTime": 0, "AnalogueGain": 0}
    mode, exposure_us, gain = wanted
    lo, hi = night_frame_limits(mode, exposure_us, day_us, limit(limits, "FrameDurationLimits", (None, None))[1])
    if mode == "still":
        controls = {
            "AeEnable": False,
            "AwbEnable": False,
            "ExposureTime": int(exposure_us),
            "AnalogueGain": float(gain),
            "FrameDurationLimits": (lo, hi),
        }
        if colour_gains and "ColourGains" in limits:
            controls["ColourGains"] = colour_gains  # keep the colours AWB had, rather than a default
        return controls
    controls = {"AeEnable": True, "AwbEnable": True, "FrameDurationLimits": (lo, hi), "ExposureTime": 0, "AnalogueGain": 0}
    if long_mode is not None and "AeExposureMode" in limits:
        controls["AeExposureMode"] = long_mode
    return controls


def clamp_to_sensor(exposure_us: int, gain: float, limits: dict[str, Any], model: str) -> tuple[int, float, list[str]]:
    """Exposure and gain within what the sensor reports (once it has been opened), with notes on what was cut."""
    exp_lo, exp_hi = limit(limits, "ExposureTime", (None, None))
    gain_lo, gain_hi = limit(limits, "AnalogueGain", (None, None))
    exp, g, notes = int(exposure_us), float(gain), []
    if exp_hi and exp > int(exp_hi):
        notes.append(f"exposure {exp} us clamped to the {model} maximum {int(exp_hi)} us")
        exp = int(exp_hi)
    if exp_lo and exp < int(exp_lo):
        exp = int(exp_lo)
    if gain_hi and g > float(gain_hi):
        notes.append(f"gain {g:g} clamped to the {model} maximum {float(gain_hi):.3g}")
        g = float(gain_hi)
    if gain_lo and g < float(gain_lo):
        g = float(gain_lo)
    return exp, g, notes
