"""Day/night controller: brightness with hysteresis, judged at day exposure, optionally gated by the sun.

The capture loop calls `NightController.update` once per frame with the
frame's dark score (`dark_score`, the mean brightness of the downscaled ring
frame) and the exposure and gain the source reported for it. The rule:

- Enter night after `night.min_dark_frames` consecutive frames whose
  *day-equivalent* brightness is below `night.dark_threshold`; leave after
  `night.min_bright_frames` consecutive frames above `night.bright_threshold`.
- Day-equivalent: a long night exposure makes a dark scene look bright, so
  every frame is scaled back to what the day exposure would have made of it:
  `score * (day_exposure_us * day_gain) / (exposure_us * gain)`. The day
  reference is the last exposure and gain the source reported by day (by
  default 10000 us x 1.0 when it never reports any); at night a source that
  reports nothing is assumed to run at what the camera applied (or, failing
  that, `night.exposure_us` x `night.gain`). By day the reference is the
  current exposure, so the day-equivalent is the score itself.
- A saturated night frame (score >= 250) counts as bright: its day-equivalent
  is only a lower bound. Leaving night on saturation is a probe: if the day
  exposure then finds the scene still dark and night comes back, the next
  probe waits twice as long (up to 32 x `min_dwell_s`), so a dim dawn does
  not make the camera flip every `min_dwell_s`.
- No switch back within `night.min_dwell_s` of the last switch: the new
  exposure must settle, and it prevents flapping.
- With `night.sun.enabled`, the sun's altitude (computed locally, refreshed
  every 30 s) gates the rule: no night while the sun is above `altitude_deg +
  margin_deg` (a cloud or a hand over the lens at noon), no day while it is
  below `altitude_deg - margin_deg` (headlights at midnight); in between,
  brightness decides. A clock that is obviously unset (before 2020, a Pi
  without RTC before NTP) pauses the gating.

Switching calls `apply_camera(night)` on the capture thread (the caller owns
the source); commands only record a request that the next frame carries out.
Every key is read live from the config section.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np

from daemon.commands import Command, Handler, Registry, Reply, Session
from daemon.config import Section
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.image import sun

log = logging.getLogger("picamd.night")

# The day reference when the source never reports exposure and gain (a typical daylight exposure).
DEFAULT_DAY_EXPOSURE_US = 10_000
DEFAULT_DAY_GAIN = 1.0
# A night frame this bright is saturated: it says "at least this bright", so it counts as bright.
SATURATED_SCORE = 250.0
# The sun moves a quarter of a degree a minute at most; refreshing it this often is plenty.
SUN_REFRESH_S = 30.0
# Before this wall-clock time the clock is not set (no RTC, no NTP yet) and the sun cannot be trusted.
CLOCK_SANE_AFTER = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
# A camera that refused a switch is asked again after min_dwell_s, but never more often than this.
MIN_RETRY_S = 5.0
# Each failed saturation probe doubles the wait before the next, at most this many times (32 x min_dwell_s).
MAX_PROBE_DOUBLINGS = 5
# A day that lasted this long was a real day, not a failed probe.
PROBE_DAY_S = 3600.0

_USAGE = "[auto|day|night]"


def dark_score(frame: np.ndarray) -> float:
    """Mean brightness 0..255 of a frame (BGR or grey), averaged over its channels.

    Meant for the downscaled ring frame: one pass of cv2.mean, no allocation.
    Raises ValueError for an empty frame.
    """
    if frame.size == 0:
        raise ValueError("empty frame has no brightness")
    channels = 1 if frame.ndim == 2 else frame.shape[2]
    if frame.ndim not in (2, 3) or channels > 4:
        return float(frame.mean())
    try:
        means = cv2.mean(frame)
    except cv2.error:  # a layout or type OpenCV does not take; numpy still can
        return float(frame.mean())
    return float(sum(means[:channels]) / channels)


def _positive(value: Any) -> float | None:
    """A usable exposure or gain figure, or None for missing, zero, negative or junk values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _summary(applied: dict[str, Any]) -> str:
    """The parts of what the camera applied that a person reading the log wants; everything when none is known."""
    keys: list[str] = [k for k in ("mode", "exposure_us", "gain", "note") if k in applied] or list(applied)
    return ", ".join(f"{k}={applied[k]}" for k in keys)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class NightController:
    def __init__(
        self,
        cfg: Section,
        bus: EventBus,
        apply_camera: Callable[[bool], dict],
        status: ComponentStatus | None = None,
        command_wait_s: float = 3.0,
    ) -> None:
        """`cfg` is the live `night` section; `apply_camera(night)` switches the source and returns what it applied.

        `command_wait_s` is how long `night day|night` waits for the capture
        loop to carry out the switch before answering.
        """
        self._cfg = cfg
        self._sun_cfg = cfg.section("sun")
        self._bus = bus
        self._apply_camera = apply_camera
        self.status = status or ComponentStatus("night")
        self._command_wait_s = command_wait_s
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)

        self._night = False
        self._forced: bool | None = None  # None: automatic
        self._request_seq = 0  # bumped by `night ...`; the capture loop acknowledges it
        self._handled_seq = 0
        self._last_result: dict[str, Any] = {}
        self._reapply = False  # night settings changed while at night

        self._dark_run = 0
        self._bright_run = 0
        self._frames = 0
        self._ignored_frames = 0
        self._score: float | None = None
        self._day_eq: float | None = None
        self._exposure_us: float | None = None
        self._gain: float | None = None
        self._last_mono: float | None = None
        self._last_wall: float | None = None

        self._day_ref_exposure = float(DEFAULT_DAY_EXPOSURE_US)
        self._day_ref_gain = DEFAULT_DAY_GAIN
        self._day_ref_reported = False
        self._night_applied: dict[str, Any] = {}

        self._last_switch_mono: float | None = None
        self._last_switch_wall: float | None = None
        self._retry_at: float | None = None
        self._switches = 0
        self._apply_failures = 0
        self._last_apply_error: str | None = None

        self._probing = False  # day after leaving night on saturation, not yet confirmed bright
        self._probe_failures = 0

        self._sun_alt: float | None = None
        self._sun_checked_mono: float | None = None
        self._sun_place: tuple[float, float] | None = None
        self._sun_blocked_logged = False
        self._clock_warned = False

        cfg.on_change(self._on_config_change)

    # -- reading
    @property
    def is_night(self) -> bool:
        return self._night

    def _on_config_change(self, name: str, value: Any) -> None:
        # Runs on the thread of `set`; the capture loop re-applies on its next frame.
        if name in ("night.mode", "night.exposure_us", "night.gain"):
            with self._lock:
                if self._night:
                    self._reapply = True
                else:
                    self._night_applied = {}  # what the camera clamped last night no longer applies

    def camera_reopened(self) -> None:
        """The source was reopened and starts at day exposure: at night, apply night mode again on the next frame."""
        with self._lock:
            if self._night:
                self._reapply = True

    # -- the capture loop's entry point
    def update(self, score: float, exposure_us: int | None, gain: float | None, now_mono: float, now_wall: float) -> bool:
        """Feed one frame; returns whether the frame that follows is in night mode. Never raises."""
        try:
            return self._update(score, exposure_us, gain, now_mono, now_wall)
        except Exception as exc:  # the capture loop must never die of the night controller
            self.status.error("night controller failed on a frame", exc)
            return self._night

    def _update(self, score: float, exposure_us: int | None, gain: float | None, now_mono: float, now_wall: float) -> bool:
        cfg = self._cfg
        with self._lock:
            self._last_mono, self._last_wall = now_mono, now_wall
            try:
                score = float(score)
            except (TypeError, ValueError):
                score = math.nan
            if not math.isfinite(score) or score < 0:
                self._ignored_frames += 1  # no brightness to judge; counters stay as they are
                return self._night
            self._frames += 1
            exp, gn = _positive(exposure_us), _positive(gain)
            self._exposure_us, self._gain, self._score = exp, gn, score
            night = self._night
            if not night:
                self._note_day_reference(exp, gn)
            day_eq = self._day_equivalent(score, exp, gn, night)
            self._day_eq = day_eq

            dark_threshold = cfg.dark_threshold
            bright_threshold = cfg.bright_threshold
            saturated = night and score >= SATURATED_SCORE
            measured_bright = day_eq > bright_threshold
            self._dark_run = self._dark_run + 1 if (day_eq < dark_threshold and not saturated) else 0
            self._bright_run = self._bright_run + 1 if (measured_bright or saturated) else 0
            if not night and self._probing and measured_bright:
                self._probing, self._probe_failures = False, 0  # the probe found daylight
            if (self._bright_run if night else self._dark_run) == 0:
                self._sun_blocked_logged = False  # the episode the sun vetoed is over; log the next one again

            self._refresh_sun(now_mono, now_wall)
            target, reason = self._decide(night, now_mono, measured_bright)
            reapply = night and self._reapply and target is None and self._retry_ok(now_mono)
            request_seq = self._request_seq
            threshold = bright_threshold if night else dark_threshold

        if target is not None:
            self._switch(target, reason, score, day_eq, threshold, now_mono, now_wall)
        elif reapply:
            self._reapply_night(now_mono)
        with self._lock:
            if request_seq > self._handled_seq:
                self._handled_seq = request_seq
                self._done.notify_all()
            return self._night

    def _note_day_reference(self, exp: float | None, gn: float | None) -> None:
        """Remember a day frame's exposure and gain as the reference for judging night frames."""
        night_product = self._night_exposure() * self._night_gain()
        # Frames that still report the night exposure just after a switch (metadata lags a few
        # frames) are not taken, or the next night would be misjudged.
        if exp is not None and gn is not None and exp * gn < night_product:
            self._day_ref_exposure, self._day_ref_gain = exp, gn
            self._day_ref_reported = True
        elif exp is not None and gn is None and exp * self._day_ref_gain < night_product:
            self._day_ref_exposure = exp
            self._day_ref_reported = True

    def _day_equivalent(self, score: float, exp: float | None, gn: float | None, night: bool) -> float:
        """What the day exposure would have measured. By day the reference is the current exposure: the score itself."""
        if not night:
            return score
        ref = self._day_ref_exposure * self._day_ref_gain
        current = (exp if exp is not None else self._night_exposure()) * (gn if gn is not None else self._night_gain())
        return score * ref / current

    def _night_exposure(self) -> float:
        applied = _positive(self._night_applied.get("exposure_us"))
        return applied if applied is not None else float(self._cfg.exposure_us)

    def _night_gain(self) -> float:
        applied = _positive(self._night_applied.get("gain"))
        return applied if applied is not None else float(self._cfg.gain)

    def _retry_ok(self, now_mono: float) -> bool:
        return self._retry_at is None or now_mono >= self._retry_at

    def _dwell_left(self, now_mono: float, dwell: float) -> float:
        if self._last_switch_mono is None:
            return 0.0
        return max(0.0, dwell - (now_mono - self._last_switch_mono))

    def _decide(self, night: bool, now_mono: float, measured_bright: bool) -> tuple[bool | None, str]:
        """The mode to switch to now and why, or (None, "") to stay."""
        cfg = self._cfg
        if self._forced is not None:
            if self._forced != night and self._retry_ok(now_mono):
                return self._forced, "forced"
            return None, ""
        if not cfg.enabled:
            if night and self._retry_ok(now_mono):
                return False, "disabled"
            return None, ""
        if not self._retry_ok(now_mono):
            return None, ""
        dwell = cfg.min_dwell_s
        if not night:
            if self._dark_run < cfg.min_dark_frames or self._dwell_left(now_mono, dwell) > 0:
                return None, ""
            gate = self._sun_gate()
            if gate == "day":
                if not self._sun_blocked_logged:
                    self._sun_blocked_logged = True
                    log.info(
                        "dark for %d frames, but the sun is %.1f° up (night needs it below %.1f°): staying in day mode; "
                        "is something covering the lens?",
                        self._dark_run,
                        self._sun_alt or 0.0,
                        self._sun_cfg.altitude_deg + self._sun_cfg.margin_deg,
                    )
                return None, ""
            self._sun_blocked_logged = False
            return True, "dark"
        if self._bright_run < cfg.min_bright_frames:
            return None, ""
        reason = "bright" if measured_bright else "saturated"
        if reason == "saturated" and self._probe_failures:
            dwell *= 2 ** min(self._probe_failures, MAX_PROBE_DOUBLINGS)
        if self._dwell_left(now_mono, dwell) > 0:
            return None, ""
        gate = self._sun_gate()
        if gate == "night":
            if not self._sun_blocked_logged:
                self._sun_blocked_logged = True
                log.info(
                    "bright for %d frames, but the sun is %.1f° down (day needs it above %.1f°): staying in night mode; "
                    "lights shining into the camera?",
                    self._bright_run,
                    self._sun_alt or 0.0,
                    self._sun_cfg.altitude_deg - self._sun_cfg.margin_deg,
                )
            return None, ""
        self._sun_blocked_logged = False
        return False, reason

    # -- the sun
    def _refresh_sun(self, now_mono: float, now_wall: float) -> None:
        sc = self._sun_cfg
        if not sc.enabled:
            self._sun_alt = None
            self._sun_checked_mono = None
            return
        place = (sc.latitude, sc.longitude)
        if self._sun_checked_mono is not None and place == self._sun_place and now_mono - self._sun_checked_mono < SUN_REFRESH_S:
            return
        self._sun_checked_mono, self._sun_place = now_mono, place
        if now_wall < CLOCK_SANE_AFTER:
            if not self._clock_warned:
                self._clock_warned = True
                log.warning(
                    "the clock says %s, which cannot be right (no RTC, NTP not synced yet?): sun gating paused until the clock is set",
                    _iso(now_wall),
                )
            self._sun_alt = None
            return
        if self._clock_warned:
            self._clock_warned = False
            log.info("the clock is set (%s): sun gating resumes", _iso(now_wall))
        self._sun_alt = sun.sun_altitude(place[0], place[1], now_wall)

    def _sun_gate(self) -> str:
        """'day' (too high for night), 'night' (too low for day) or 'free' (brightness decides)."""
        if self._sun_alt is None or not self._sun_cfg.enabled:
            return "free"
        sc = self._sun_cfg
        if self._sun_alt > sc.altitude_deg + sc.margin_deg:
            return "day"
        if self._sun_alt < sc.altitude_deg - sc.margin_deg:
            return "night"
        return "free"

    # -- switching (capture thread, no lock held while the camera works)
    def _call_camera(self, night: bool) -> dict[str, Any]:
        applied = self._apply_camera(night)
        if applied is None:
            return {}
        return dict(applied) if isinstance(applied, dict) else {"result": applied}

    def _camera_failed(self, night: bool, exc: Exception, now_mono: float) -> None:
        wait = max(self._cfg.min_dwell_s, MIN_RETRY_S)
        word = "night" if night else "day"
        with self._lock:
            self._apply_failures += 1
            self._last_apply_error = f"{type(exc).__name__}: {exc}"
            self._retry_at = now_mono + wait
            self._last_result = {"ok": False, "error": self._last_apply_error, "retry_in_s": wait}
        self.status.error(
            f"the camera refused {word} mode (staying in {'night' if self._night else 'day'} mode, retrying in {wait:.0f} s)", exc
        )
        self.status.degrade(f"camera refused {word} mode: {exc}")

    def _switch(self, night: bool, reason: str, score: float, day_eq: float, threshold: float, now_mono: float, now_wall: float) -> None:
        try:
            applied = self._call_camera(night)
        except Exception as exc:
            self._camera_failed(night, exc, now_mono)
            return
        with self._lock:
            dark_frames, bright_frames = self._dark_run, self._bright_run
            self._night = night
            self._switches += 1
            if night:
                self._night_applied = applied
                self._reapply = False
                if self._probing:
                    since_exit = now_mono - (self._last_switch_mono or now_mono)
                    self._probe_failures = self._probe_failures + 1 if since_exit < PROBE_DAY_S else 0
                self._probing = False
            else:
                self._probing = reason == "saturated"
            self._last_switch_mono, self._last_switch_wall = now_mono, now_wall
            self._retry_at = None
            self._dark_run = self._bright_run = 0
            self._last_result = {"ok": True, "applied": applied}
            sun_alt = self._sun_alt
            probe_wait = self._cfg.min_dwell_s * 2 ** min(self._probe_failures, MAX_PROBE_DOUBLINGS)
        self.status.recover()
        data: dict[str, Any] = {
            "score": round(score, 3),
            "day_equivalent": round(day_eq, 3),
            "threshold": threshold,
            "applied": applied,
            "reason": reason,
        }
        if sun_alt is not None:
            data["sun_altitude"] = round(sun_alt, 2)
        self._bus.publish("night.enter" if night else "night.exit", **data)
        log.info(
            "%s", self._describe_switch(night, reason, score, day_eq, threshold, dark_frames, bright_frames, applied, sun_alt, probe_wait)
        )

    def _describe_switch(
        self,
        night: bool,
        reason: str,
        score: float,
        day_eq: float,
        threshold: float,
        dark_frames: int,
        bright_frames: int,
        applied: dict,
        sun_alt: float | None,
        probe_wait: float,
    ) -> str:
        head = "night mode on" if night else "night mode off"
        if reason == "dark":
            why = f"day-equivalent brightness {day_eq:.1f} stayed below {threshold:g} for {dark_frames} frames"
        elif reason == "bright":
            why = f"day-equivalent brightness {day_eq:.1f} stayed above {threshold:g} for {bright_frames} frames"
        elif reason == "saturated":
            why = f"night frames saturated (score {score:.0f}) for {bright_frames} frames; checking the light at day exposure"
        elif reason == "forced":
            why = "forced by command (automatic switching is off until 'night auto')"
        else:
            why = "night mode is disabled (night.enabled is false)"
        if night and self._probe_failures and reason == "dark":
            why += f"; still dark at day exposure, next saturation check after {probe_wait:.0f} s"
        if sun_alt is not None:
            why += f"; sun at {sun_alt:.1f}°"
        if applied:
            why += "; camera: " + _summary(applied)
        return f"{head}: {why}"

    def _reapply_night(self, now_mono: float) -> None:
        try:
            applied = self._call_camera(True)
        except Exception as exc:
            self._camera_failed(True, exc, now_mono)
            return
        with self._lock:
            self._night_applied = applied
            self._reapply = False
            self._retry_at = None
        self.status.recover()
        log.info("night settings changed: camera re-applied (%s)", _summary(applied) or "no details")

    # -- figures
    def level(self) -> dict[str, Any]:
        """Everything `night_level` shows, as JSON-able values."""
        cfg, sc = self._cfg, self._sun_cfg
        with self._lock:
            night = self._night
            now_mono = self._last_mono
            since = None if self._last_switch_mono is None or now_mono is None else now_mono - self._last_switch_mono
            dwell_left = 0.0 if now_mono is None else self._dwell_left(now_mono, cfg.min_dwell_s)
            out: dict[str, Any] = {
                "state": "NIGHT" if night else "DAY",
                "mode": "auto" if self._forced is None else ("forced night" if self._forced else "forced day"),
                "enabled": cfg.enabled,
                "score": None if self._score is None else round(self._score, 3),
                "day_equivalent": None if self._day_eq is None else round(self._day_eq, 3),
                "threshold": cfg.bright_threshold if night else cfg.dark_threshold,
                "dark_threshold": cfg.dark_threshold,
                "bright_threshold": cfg.bright_threshold,
                "dark_frames": self._dark_run,
                "bright_frames": self._bright_run,
                "min_dark_frames": cfg.min_dark_frames,
                "min_bright_frames": cfg.min_bright_frames,
                "since_switch_s": None if since is None else round(since, 1),
                "dwell_left_s": round(dwell_left, 1),
                "exposure_us": None if self._exposure_us is None else round(self._exposure_us),
                "gain": None if self._gain is None else round(self._gain, 3),
                "day_reference": {
                    "exposure_us": round(self._day_ref_exposure),
                    "gain": round(self._day_ref_gain, 3),
                    "from": "camera" if self._day_ref_reported else "default",
                },
                "night_camera": {
                    "mode": cfg.mode,
                    "exposure_us": cfg.exposure_us,
                    "gain": cfg.gain,
                    "applied": self._night_applied or None,
                },
                "frames": self._frames,
                "switches": self._switches,
                "apply_failures": self._apply_failures,
            }
            if self._probe_failures:
                out["saturation_probe_failures"] = self._probe_failures
            sun_alt, wall = self._sun_alt, self._last_wall
        if sc.enabled:
            out["sun"] = self._sun_figures(sun_alt, wall)
        return out

    def _sun_figures(self, sun_alt: float | None, wall: float | None) -> dict[str, Any]:
        sc = self._sun_cfg
        lat, lon = sc.latitude, sc.longitude
        when = wall if wall is not None else time.time()
        figures: dict[str, Any] = {
            "latitude": lat,
            "longitude": lon,
            "altitude_deg": None if sun_alt is None else round(sun_alt, 2),
            "night_allowed_below_deg": sc.altitude_deg + sc.margin_deg,
            "day_allowed_above_deg": sc.altitude_deg - sc.margin_deg,
            "gate": self._sun_gate() if sun_alt is not None else "free (clock not set or no frame yet)",
        }
        if when >= CLOCK_SANE_AFTER:
            crossing = sun.next_crossing(lat, lon, when, sc.altitude_deg)
            if crossing is not None:
                ts, direction = crossing
                figures["next"] = {"crossing_deg": sc.altitude_deg, "direction": direction, "at": _iso(ts), "in_s": round(ts - when)}
            else:
                figures["next"] = None  # polar day or night for the next two days
        return figures

    def health(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                "state": "NIGHT" if self._night else "DAY",
                "mode": "auto" if self._forced is None else ("forced night" if self._forced else "forced day"),
                "enabled": self._cfg.enabled,
                "score": None if self._score is None else round(self._score, 2),
                "day_equivalent": None if self._day_eq is None else round(self._day_eq, 2),
                "switches": self._switches,
                "last_switch": None if self._last_switch_wall is None else _iso(self._last_switch_wall),
                "apply_failures": self._apply_failures,
                "last_apply_error": self._last_apply_error,
                "ignored_frames": self._ignored_frames,
                "status": self.status.snapshot(),
            }
            if self._sun_cfg.enabled:
                out["sun_altitude_deg"] = None if self._sun_alt is None else round(self._sun_alt, 2)
        return out

    # -- commands
    def register_commands(self, registry: Registry) -> None:
        registry.register(
            Command(
                "night_level",
                self._cmd_level,
                "Day or night, the day-equivalent brightness and the threshold that matters now; JSON details follow",
            )
        )
        registry.register(Command("night", self._cmd_night, "Show the mode: DAY or NIGHT, automatic or forced"))
        for choice, what in (
            ("auto", "Give the decision back to the brightness rule"),
            ("day", "Force day mode (automatic switching off until 'night auto')"),
            ("night", "Force night mode (automatic switching off until 'night auto')"),
        ):
            registry.register(Command("night", self._force_handler(choice), what, mutating=True, sub=choice))

    def _force_handler(self, choice: str) -> Handler:
        """The handler of 'night <choice>' (a function of its own, so each sub-command keeps its choice)."""
        return lambda _args, session: self._cmd_night([choice], session)

    def _cmd_level(self, args: list[str], session: Session) -> Reply:
        body = self.level()
        level = body["day_equivalent"]
        shown = "none" if level is None else f"{level:.1f}"
        return Reply(True, f"{body['state']} level={shown} threshold={body['threshold']:.1f}", body=body)

    def _cmd_night(self, args: list[str], session: Session) -> Reply:
        if not args:
            with self._lock:
                state = "NIGHT" if self._night else "DAY"
                mode = "auto" if self._forced is None else ("forced night" if self._forced else "forced day")
            return Reply(True, f"{state} mode={mode.replace(' ', '_')}")
        choice = args[0].lower()
        if choice not in ("auto", "day", "night"):
            return Reply.error(f"usage: night {_USAGE}")
        if choice == "auto":
            with self._lock:
                was = self._forced
                self._forced = None
                if was is not None:
                    self._retry_at = None
                    self._dark_run = self._bright_run = 0  # what happened while forced does not count
                state = "NIGHT" if self._night else "DAY"
            if was is not None:
                log.info("night mode back to automatic (now %s) by command from %s", state, session.peer)
            return Reply(True, f"automatic; now {state}; the brightness rule decides from the next frame")
        want = choice == "night"
        word = choice.upper()
        with self._lock:
            self._forced = want
            self._retry_at = None  # a fresh request deserves a fresh try
            self._request_seq += 1
            seq = self._request_seq
            if self._night == want:
                self._handled_seq = max(self._handled_seq, seq)
                log.info("%s mode held by command from %s (automatic switching off until 'night auto')", choice, session.peer)
                return Reply(True, f"{word} forced; already in {choice} mode; held until 'night auto'")
            log.info("%s mode requested by command from %s", choice, session.peer)
            done = self._done.wait_for(lambda: self._handled_seq >= seq, timeout=self._command_wait_s)
            result = dict(self._last_result)
            now_night = self._night
        if not done:
            return Reply(True, f"{word} forced; no frame for {self._command_wait_s:g} s, it applies with the next frame")
        if now_night == want:
            return Reply(True, f"{word} forced; held until 'night auto'", body={"applied": result.get("applied", {})})
        return Reply(
            True,
            f"{word} forced, but the camera refused it ({result.get('error', 'unknown error')}); "
            f"retrying every {result.get('retry_in_s', MIN_RETRY_S):g} s",
            body=result,
        )
