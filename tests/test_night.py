"""Night controller: hysteresis, day-equivalent brightness, dwell, sun gating, failures and commands.

A small camera model stands in for the source: it renders real frames whose
brightness is the scene's light times the exposure it currently runs at (as a
sensor does), clipped at 255, and switches exposure when the controller asks.
Scores come from `dark_score` on those frames, as in the capture loop.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from daemon.commands import Command, Registry, Reply, Session
from daemon.config import Config, ConfigError
from daemon.core.bus import Event, EventBus
from daemon.image import sun
from daemon.image.night import DEFAULT_DAY_EXPOSURE_US, NightController, dark_score

GREENWICH = (51.4769, 0.0)


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Camera:
    """Exposure model: a frame's level is light x (exposure x gain) / (10000 us x 1.0), clipped to 0..255."""

    def __init__(self, day=(10_000, 1.0), night=(40_000, 1.0), report=True, failures=0, applied_extra=None):
        self.day, self.night_exposure = day, night
        self.report = report
        self.failures_left = failures
        self.applied_extra = applied_extra
        self.night = False
        self.calls: list[bool] = []
        self._noise = np.random.default_rng(7).normal(0.0, 2.0, (48, 64, 3))

    def apply(self, night: bool) -> dict:
        self.calls.append(night)
        if self.failures_left > 0:
            self.failures_left -= 1
            raise RuntimeError("camera busy")
        self.night = night
        if self.applied_extra is not None:
            return dict(self.applied_extra)
        exposure, gain = self.night_exposure if night else self.day
        return {"night": night, "exposure_us": exposure, "gain": gain}

    def capture(self, light: float) -> tuple[np.ndarray, int | None, float | None]:
        exposure, gain = self.night_exposure if self.night else self.day
        level = light * exposure * gain / (DEFAULT_DAY_EXPOSURE_US * 1.0)
        frame = np.clip(np.rint(level + self._noise), 0, 255).astype(np.uint8)
        if not self.report:
            return frame, None, None
        return frame, exposure, gain


class Rig:
    def __init__(
        self,
        camera: Camera | None = None,
        wall: float = utc("2024-06-21T12:00:00"),
        dt: float = 0.1,
        command_wait_s: float = 5.0,
        token: str = "",
        **night_keys,
    ):
        values = {"night.min_dwell_s": 0.0}
        values.update({f"night.{k.replace('__', '.')}": v for k, v in night_keys.items()})
        self.config = Config(values)
        self.bus = EventBus()
        self.events: list[Event] = []
        self.bus.subscribe("night.", self.events.append)
        self.camera = camera or Camera()
        self.ctl = NightController(self.config.section("night"), self.bus, self.camera.apply, command_wait_s=command_wait_s)
        self.registry = Registry(token=lambda: token)
        self.ctl.register_commands(self.registry)
        self.mono, self.wall, self.dt = 1000.0, wall, dt
        self.switch_times: list[tuple[float, bool]] = []

    def step(self, light: float) -> bool:
        frame, exposure, gain = self.camera.capture(light)
        before = self.ctl.is_night
        night = self.ctl.update(dark_score(frame), exposure, gain, self.mono, self.wall)
        if night != before:
            self.switch_times.append((self.mono, night))
        self.mono += self.dt
        self.wall += self.dt
        return night

    def run(self, lights) -> list[bool]:
        return [self.step(light) for light in lights]

    def command(self, line: str, session: Session | None = None) -> tuple[str, Any]:
        reply = self.registry.dispatch(line, session or Session())
        return parse(reply)


def parse(reply: Reply) -> tuple[str, Any]:
    """Decode a reply as a netcat client sees it: the first line, then the JSON body if any."""
    text = reply.encode().decode()
    assert text.endswith("\n\n")
    first, _, rest = text.partition("\n")
    rest = rest.strip()
    return first, (json.loads(rest) if rest else None)


def flips(flags: list[bool]) -> list[int]:
    return [i for i in range(1, len(flags)) if flags[i] != flags[i - 1]]


# -- dark_score -----------------------------------------------------------------------------------


def test_dark_score_is_the_mean_over_pixels_and_channels():
    assert dark_score(np.full((48, 64, 3), 77, np.uint8)) == pytest.approx(77.0)
    bgr = np.zeros((48, 64, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 60
    assert dark_score(bgr) == pytest.approx(30.0)
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (192, 256, 3), dtype=np.uint8)
    assert dark_score(frame) == pytest.approx(float(frame.mean()), abs=1e-6)
    assert dark_score(frame[:, :, 1]) == pytest.approx(float(frame[:, :, 1].mean()), abs=1e-6)  # grey
    view = frame[::3, 5:200:2]  # a non-contiguous view, as a crop would be
    assert dark_score(view) == pytest.approx(float(view.mean()), abs=1e-6)


def test_dark_score_refuses_an_empty_frame():
    with pytest.raises(ValueError):
        dark_score(np.zeros((0, 64, 3), np.uint8))


# -- the brightness rule ---------------------------------------------------------------------------


def test_light_ramp_down_then_up_switches_once_each_way_at_the_right_frames():
    rig = Rig(min_dark_frames=10, min_bright_frames=10, min_dwell_s=5.0)
    down = [120.5 - i for i in range(121)]  # light < 40 from frame 81 on
    low = [0.5] * 100
    up = [0.5 + j for j in range(151)]  # light > 60 from j = 60 on
    flags = rig.run(down + low + up)

    assert flips(flags) == [90, len(down) + len(low) + 69]  # the tenth frame past each threshold
    assert not any(flags[:90]) and all(flags[90 : len(down) + len(low) + 69])
    assert rig.camera.calls == [True, False]
    enter, leave = rig.events
    assert enter.kind == "night.enter" and leave.kind == "night.exit"
    assert set(enter.data) == {"score", "day_equivalent", "threshold", "applied", "reason"}
    assert enter.data["reason"] == "dark" and enter.data["threshold"] == 40.0
    assert enter.data["day_equivalent"] == pytest.approx(120.5 - 90, abs=0.3)
    assert enter.data["applied"] == {"night": True, "exposure_us": 40_000, "gain": 1.0}
    assert leave.data["reason"] == "bright" and leave.data["threshold"] == 60.0
    # At night the sensor sees four times the light; the rule judges what the day exposure would see.
    assert leave.data["score"] > 250 and leave.data["day_equivalent"] > 60
    assert leave.data["applied"]["night"] is False


def test_flicker_never_switches():
    rig = Rig(min_dark_frames=10, min_bright_frames=10)
    assert not any(rig.run([10.5, 200.5] * 200))
    assert not any(rig.run(([10.5] * 9 + [200.5]) * 40))  # dark bursts one frame short
    assert rig.camera.calls == [] and rig.events == []
    assert rig.run([10.5] * 10)[-1] is True  # the tenth consecutive dark frame does switch
    assert rig.ctl.is_night
    daylight = 100.5
    assert all(rig.run(([daylight] * 9 + [5.5]) * 40))  # bright bursts one frame short at night
    assert all(rig.run([daylight, 5.5] * 200))
    assert rig.camera.calls == [True] and len(rig.events) == 1


def test_min_dwell_prevents_flapping_when_thresholds_are_crossed_repeatedly():
    pattern = ([10.5] * 15 + [100.5] * 15) * 100  # each burst beats min frames; 300 s at 10 frames/s
    free = Rig(min_dark_frames=10, min_bright_frames=10, min_dwell_s=0.0)
    free.run(pattern)
    rig = Rig(min_dark_frames=10, min_bright_frames=10, min_dwell_s=30.0)
    rig.run(pattern)

    assert len(free.switch_times) > 150  # without dwell every burst switches
    times = [t for t, _ in rig.switch_times]
    assert 2 <= len(times) <= 300 / 30 + 1
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(gap >= 30.0 - 1e-9 for gap in gaps)
    assert [n for _, n in rig.switch_times] == [i % 2 == 0 for i in range(len(times))]  # strictly alternating


def test_long_night_exposure_with_high_raw_score_does_not_leave_night_but_daylight_does():
    rig = Rig(Camera(night=(1_000_000, 8.0)), min_dark_frames=10, min_bright_frames=10)
    assert rig.run([5.5] * 10)[-1] is True
    starlight = 0.2  # 800 x brighter at night exposure: raw score 160, far above bright_threshold 60
    assert all(rig.run([starlight] * 300))
    level = rig.ctl.level()
    assert level["score"] == pytest.approx(160, abs=1)
    assert level["day_equivalent"] == pytest.approx(0.2, abs=0.01)
    assert rig.camera.calls == [True]

    flags = rig.run([100.5] * 20)  # daylight saturates the night exposure
    assert flips([True] + flags) == [10]
    leave = rig.events[-1]
    assert leave.kind == "night.exit" and leave.data["reason"] == "saturated"
    assert leave.data["score"] >= 250
    assert rig.ctl.level()["day_equivalent"] == pytest.approx(100.5, abs=0.3)  # by day: the score itself


def test_unsaturated_night_frames_leave_on_measured_daylight():
    rig = Rig(Camera(night=(20_000, 1.0)), min_dark_frames=10, min_bright_frames=10)
    rig.run([5.5] * 10)
    assert all(rig.run([45.5] * 50))  # raw 91 > 60, day-equivalent 45.5: stays night
    flags = rig.run([80.5] * 10)
    assert flags[-1] is False and all(flags[:-1])
    assert rig.events[-1].data["reason"] == "bright"
    assert rig.events[-1].data["day_equivalent"] == pytest.approx(80.5, abs=0.3)


def test_failed_saturation_probes_back_off_and_real_daylight_resets_them():
    # A dim dawn: the night exposure saturates but the day exposure still finds the scene dark.
    rig = Rig(Camera(night=(1_000_000, 8.0)), min_dark_frames=10, min_bright_frames=10, min_dwell_s=10.0)
    rig.run([0.1] * 10)
    assert rig.ctl.is_night
    rig.run([1.0] * 2000)  # 200 s of dim dawn
    times = [t for t, _ in rig.switch_times]
    nights = [n for _, n in rig.switch_times]
    assert nights[:5] == [True, False, True, False, True]
    # Exits come after 10 s of dwell, then 20 s, then 40 s...; re-entries after the usual 10 s.
    exit_waits = [times[i] - times[i - 1] for i in range(1, len(times)) if not nights[i]]
    assert exit_waits[:3] == [pytest.approx(10.0, abs=0.15), pytest.approx(20.0, abs=0.15), pytest.approx(40.0, abs=0.15)]
    enter_waits = [times[i] - times[i - 1] for i in range(2, len(times)) if nights[i]]
    assert all(w == pytest.approx(10.0, abs=0.15) for w in enter_waits)
    assert rig.ctl.level()["saturation_probe_failures"] >= 3

    rig.run([100.5] * 2000)  # real daylight: the next probe confirms day and the backoff resets
    assert not rig.ctl.is_night
    assert "saturation_probe_failures" not in rig.ctl.level()
    rig.run([0.1] * 200)  # dusk
    assert rig.ctl.is_night
    before = len(rig.switch_times)
    rig.run([1.0] * 105)
    assert len(rig.switch_times) == before + 1  # first probe of the next dawn after plain min_dwell_s


def test_day_equivalent_without_exposure_reports_uses_what_the_camera_applied_or_the_config():
    clamped = Camera(night=(200_000, 2.0), report=False, applied_extra={"exposure_us": 200_000, "gain": 2.0, "note": "clamped"})
    rig = Rig(clamped, min_dark_frames=5)
    rig.run([0.5] * 5)
    assert rig.ctl.is_night
    rig.run([1.0] * 3)  # the sensor sees 40 x the light: raw 40
    level = rig.ctl.level()
    assert level["score"] == pytest.approx(40, abs=0.5)
    assert level["day_equivalent"] == pytest.approx(1.0, abs=0.02)
    assert level["day_reference"] == {"exposure_us": 10_000, "gain": 1.0, "from": "default"}
    assert level["night_camera"]["applied"]["note"] == "clamped"

    silent = Camera(night=(200_000, 2.0), report=False, applied_extra={})
    rig = Rig(silent, min_dark_frames=5)  # config default night exposure 1 s x 8: ratio 800
    rig.run([0.5] * 5)
    rig.run([1.0] * 3)
    assert rig.ctl.level()["day_equivalent"] == pytest.approx(40 / 800, abs=0.001)


def test_day_reference_comes_from_day_frames_but_not_from_lagging_night_metadata():
    rig = Rig(min_dark_frames=3, min_bright_frames=3)
    ctl, t = rig.ctl, [0.0]

    def feed(score, exposure, gain):
        t[0] += 0.1
        return ctl.update(score, exposure, gain, t[0], utc("2024-06-21T12:00:00") + t[0])

    for _ in range(3):
        feed(20.0, 20_000, 2.0)  # dusk, auto exposure at 20 ms x 2
    assert ctl.is_night
    assert ctl.level()["day_reference"] == {"exposure_us": 20_000, "gain": 2.0, "from": "camera"}
    feed(200.0, 1_000_000, 8.0)
    assert ctl.level()["day_equivalent"] == pytest.approx(200 * 40_000 / 8_000_000)
    for _ in range(3):
        feed(255.0, 1_000_000, 8.0)  # saturated: exits
    assert not ctl.is_night
    feed(255.0, 1_000_000, 8.0)  # a day frame still reporting the night exposure
    assert ctl.level()["day_reference"]["exposure_us"] == 20_000
    feed(120.0, 5_000, 1.0)
    assert ctl.level()["day_reference"] == {"exposure_us": 5_000, "gain": 1.0, "from": "camera"}


def test_bad_frame_figures_are_ignored_and_never_raise():
    rig = Rig(min_dark_frames=3)
    rig.run([5.5, 5.5])
    before = rig.ctl.level()
    # Deliberately ill-typed, as a driver might hand them over.
    scores: tuple[Any, ...] = (math.nan, math.inf, -1.0, "junk", None)
    for score in scores:
        assert rig.ctl.update(score, 10_000, 1.0, rig.mono, rig.wall) is False
    after = rig.ctl.level()
    assert after["dark_frames"] == before["dark_frames"] == 2
    assert after["frames"] == before["frames"] and after["score"] == before["score"]
    assert rig.ctl.health()["ignored_frames"] == 5
    # Unusable exposure figures count as "not reported"; the frame itself still counts.
    figures: tuple[tuple[Any, Any], ...] = ((0, 0.0), (-5, -2.0), ("x", True), (math.nan, math.inf), (None, "1.5x"))
    for exposure, gain in figures:
        rig.ctl.update(50.0, exposure, gain, rig.mono, rig.wall)
        assert rig.ctl.level()["exposure_us"] is None and rig.ctl.level()["gain"] is None
    assert rig.ctl.level()["frames"] == before["frames"] + 5
    assert rig.ctl.level()["day_reference"] == before["day_reference"]


# -- live config ------------------------------------------------------------------------------------


def test_live_threshold_changes_apply_on_the_next_frame():
    rig = Rig(Camera(night=(20_000, 1.0)), min_dark_frames=10, min_bright_frames=10)
    assert not any(rig.run([50.5] * 100))  # between the thresholds: nothing happens
    rig.config.set("night.dark_threshold", 55)
    flags = rig.run([50.5] * 10)
    assert flags == [False] * 9 + [True]
    assert rig.events[-1].data["threshold"] == 55.0
    rig.config.set("night.min_bright_frames", 3)
    rig.config.set("night.bright_threshold", 70)
    assert all(rig.run([65.5] * 50))  # raw 131 at the night exposure, day-equivalent 65.5 < 70
    rig.config.set("night.bright_threshold", 62)
    assert rig.run([65.5] * 3) == [True, True, False]
    assert rig.events[-1].data["threshold"] == 62.0


def test_refused_config_change_leaves_the_rule_alone():
    rig = Rig(min_dark_frames=5)
    with pytest.raises(ConfigError):
        rig.config.set("night.dark_threshold", 80)  # above bright_threshold 60
    with pytest.raises(ConfigError):
        rig.config.set("night.min_dark_frames", 0)
    assert rig.run([45.5] * 20) == [False] * 20  # still judged against 40
    assert rig.ctl.level()["dark_threshold"] == 40.0


def test_disabling_night_mode_returns_to_day_and_stops_entering():
    rig = Rig(min_dark_frames=5)
    rig.run([5.5] * 5)
    assert rig.ctl.is_night
    rig.config.set("night.enabled", "false")
    assert rig.step(5.5) is False
    assert rig.events[-1].kind == "night.exit" and rig.events[-1].data["reason"] == "disabled"
    assert not any(rig.run([5.5] * 50))
    rig.config.set("night.enabled", "true")
    assert rig.step(5.5) is True  # the dark run kept counting


def test_changing_night_exposure_at_night_reapplies_the_camera():
    rig = Rig(min_dark_frames=5)
    rig.run([5.5] * 5)
    assert rig.camera.calls == [True]
    rig.config.set("night.exposure_us", 500_000)
    rig.step(5.5)
    assert rig.camera.calls == [True, True]
    assert rig.ctl.is_night and len(rig.events) == 1  # a re-apply is not a new night
    rig.run([5.5] * 5)
    assert rig.camera.calls == [True, True]


# -- the sun ------------------------------------------------------------------------------------------


def sun_rig(wall: float, **keys) -> Rig:
    lat, lon = GREENWICH
    return Rig(wall=wall, min_dark_frames=10, min_bright_frames=10, sun__enabled=True, sun__latitude=lat, sun__longitude=lon, **keys)


def test_sun_high_at_noon_blocks_night_when_the_lens_is_covered():
    noon = utc("2024-06-21T12:00:00")
    assert sun.sun_altitude(*GREENWICH, noon) > 60
    rig = sun_rig(noon)
    assert not any(rig.run([2.5] * 300))  # a hand over the lens for 30 s
    assert rig.camera.calls == []
    first, body = rig.command("night_level")
    assert first.startswith("OK DAY level=2.")
    assert body["sun"]["altitude_deg"] == pytest.approx(61.96, abs=0.5)
    assert body["sun"]["gate"] == "day"
    assert body["dark_frames"] == 300


def test_sun_low_at_midnight_keeps_night_when_headlights_shine_in():
    midnight = utc("2024-12-21T00:00:00")
    assert sun.sun_altitude(*GREENWICH, midnight) < -60
    rig = sun_rig(midnight)
    assert rig.run([2.5] * 10)[-1] is True  # dark at midnight: night as usual
    assert rig.events[-1].data["sun_altitude"] == pytest.approx(-61.96, abs=0.5)
    assert all(rig.run([150.5] * 300))  # headlights, bright well past min_bright_frames
    assert rig.camera.calls == [True]
    assert rig.ctl.level()["sun"]["gate"] == "night"


def test_within_the_margin_band_brightness_decides():
    # Find when the sun sets through -8 degrees at Greenwich: inside the band -12..0 of altitude -6 margin 6.
    crossing = sun.next_crossing(*GREENWICH, utc("2024-12-21T12:00:00"), -8.0)
    assert crossing is not None and crossing[1] == "setting"
    rig = sun_rig(crossing[0])
    assert rig.run([2.5] * 10)[-1] is True
    assert rig.run([100.5] * 10)[-1] is False
    body = rig.ctl.level()
    assert body["sun"]["gate"] == "free"
    assert body["sun"]["next"]["direction"] == "rising" and body["sun"]["next"]["crossing_deg"] == -6.0


def test_sun_altitude_is_refreshed_every_30_s_and_at_once_when_the_place_changes():
    noon = utc("2024-06-21T12:00:00")
    rig = sun_rig(noon)
    rig.run([2.5] * 10)
    assert not rig.ctl.is_night
    rig.wall = utc("2024-06-21T23:59:00")  # the clock steps (NTP), monotonic time runs on
    flags = rig.run([2.5] * 400)
    switch = flags.index(True)
    assert 280 <= switch <= 300  # within 30 s of the last sun check, never before
    # Moving the camera to the other hemisphere takes effect on the next frame.
    rig2 = sun_rig(noon)
    rig2.run([2.5] * 20)
    assert not rig2.ctl.is_night
    rig2.config.set("night.sun.latitude", -89.0)  # the south pole in June: the sun is 23 degrees down
    assert rig2.step(2.5) is True


def test_an_unset_clock_pauses_sun_gating(caplog):
    caplog.set_level(logging.INFO, logger="picamd.night")
    noon_1970 = utc("1970-06-21T12:00:00")  # a Pi without RTC before NTP
    assert sun.sun_altitude(*GREENWICH, noon_1970) > 50
    rig = sun_rig(noon_1970)
    assert rig.run([2.5] * 10)[-1] is True
    assert "sun gating paused" in caplog.text
    assert rig.ctl.level()["sun"]["altitude_deg"] is None


def test_sun_gating_off_means_no_sun_figures():
    rig = Rig()
    rig.run([50.5] * 3)
    assert "sun" not in rig.ctl.level()
    assert "sun_altitude_deg" not in rig.ctl.health()


# -- failures -----------------------------------------------------------------------------------------


def test_camera_refusing_a_switch_is_survived_counted_and_retried_after_dwell(caplog):
    caplog.set_level(logging.INFO, logger="picamd.night")
    rig = Rig(Camera(failures=2), min_dark_frames=10, min_dwell_s=10.0)
    flags = rig.run([5.5] * 400)  # 40 s of darkness
    assert len(rig.camera.calls) == 3
    assert flags[:209] == [False] * 209  # attempts at frames 9 (fails), 109 (fails), 209 (works)
    assert all(flags[209:])
    health = rig.ctl.health()
    assert health["apply_failures"] == 2 and "camera busy" in health["last_apply_error"]
    assert health["status"]["errors"] == 2 and health["status"]["state"] == "ok"  # recovered
    assert [e.kind for e in rig.events] == ["night.enter"]
    assert "the camera refused night mode" in caplog.text
    assert "night mode on: day-equivalent brightness" in caplog.text
    json.dumps(health)


def test_camera_failure_state_shows_as_degraded_until_it_works():
    rig = Rig(Camera(failures=1), min_dark_frames=3, min_dwell_s=0.0)
    rig.run([5.5] * 3)
    assert not rig.ctl.is_night
    assert rig.ctl.health()["status"]["state"].startswith("degraded (camera refused night mode")
    assert rig.ctl.level()["apply_failures"] == 1
    rig.run([5.5] * 30)  # 3 s: the retry waits at least 5 s even with min_dwell_s 0
    assert len(rig.camera.calls) == 1
    rig.run([5.5] * 25)
    assert rig.ctl.is_night and rig.ctl.health()["status"]["state"] == "ok"


def test_odd_camera_answers_and_broken_subscribers_do_not_hurt():
    bus_rig = Rig(min_dark_frames=2)

    # Camera callbacks answer with whatever the driver returns: typed Any, as odd answers are the point here.
    def no_answer(night: bool) -> Any:
        return None

    def broken(event: Event) -> None:
        raise ZeroDivisionError("a broken subscriber")

    bus_rig.ctl._apply_camera = no_answer
    bus_rig.bus.subscribe("night.", broken)
    assert bus_rig.run([5.5] * 2)[-1] is True
    assert bus_rig.events[-1].data["applied"] == {}
    assert bus_rig.bus.errors == 1
    odd = Rig(min_dark_frames=2)

    def odd_answer(night: bool) -> Any:
        return "switched"

    odd.ctl._apply_camera = odd_answer
    assert odd.run([5.5] * 2)[-1] is True
    assert odd.events[-1].data["applied"] == {"result": "switched"}


# -- commands --------------------------------------------------------------------------------------

LEVEL_LINE = re.compile(r"^OK (DAY|NIGHT) level=(\d+\.\d) threshold=(\d+\.\d)$")


def test_night_level_before_any_frame():
    rig = Rig()
    first, body = rig.command("night_level")
    assert first == "OK DAY level=none threshold=40.0"
    assert body["score"] is None and body["since_switch_s"] is None and body["frames"] == 0


def test_night_level_line_and_json():
    rig = Rig(Camera(night=(1_000_000, 8.0)), min_dark_frames=10, min_dwell_s=60.0)
    rig.run([30.5] * 5)
    first, body = rig.command("night_level")
    m = LEVEL_LINE.match(first)
    assert m and m.group(1) == "DAY" and float(m.group(2)) == pytest.approx(30.5, abs=0.2) and m.group(3) == "40.0"
    assert body["dark_frames"] == 5 and body["bright_frames"] == 0
    rig.run([0.05] * 5 + [0.2] * 30)  # night; raw score 160 at the night exposure
    first, body = rig.command("night_level")
    m = LEVEL_LINE.match(first)
    assert m and m.group(1) == "NIGHT" and m.group(2) == "0.2" and m.group(3) == "60.0"
    assert body["state"] == "NIGHT" and body["mode"] == "auto"
    assert body["score"] == pytest.approx(160, abs=1) and body["day_equivalent"] == pytest.approx(0.2, abs=0.01)
    assert body["threshold"] == 60.0 and body["dark_threshold"] == 40.0 and body["bright_threshold"] == 60.0
    assert body["dark_frames"] == 30 and body["bright_frames"] == 0
    assert body["since_switch_s"] == pytest.approx(3.0, abs=0.15)
    assert body["dwell_left_s"] == pytest.approx(57.0, abs=0.15)
    assert body["exposure_us"] == 1_000_000 and body["gain"] == 8.0
    assert body["switches"] == 1 and body["apply_failures"] == 0


def test_forcing_night_and_returning_to_auto_with_the_capture_loop_running():
    rig = Rig(min_dark_frames=10, min_bright_frames=10)
    light = [100.5]
    stop = threading.Event()

    def capture_loop():
        while not stop.is_set():
            rig.step(light[0])
            stop.wait(0.002)

    loop = threading.Thread(target=capture_loop, name="picamd-capture-test", daemon=True)
    loop.start()
    try:
        first, body = rig.command("night night")
        assert first == "OK NIGHT forced; held until 'night auto'"
        assert body["applied"] == {"night": True, "exposure_us": 40_000, "gain": 1.0}
        assert rig.ctl.is_night
        assert rig.command("night")[0] == "OK NIGHT mode=forced_night"
        assert rig.command("night_level")[1]["mode"] == "forced night"
        first, _ = rig.command("night NIGHT")
        assert first == "OK NIGHT forced; already in night mode; held until 'night auto'"
    finally:
        stop.set()
        loop.join(5)
    rig.run([100.5] * 100)  # daylight, but forced
    assert rig.ctl.is_night and rig.camera.calls == [True]
    assert rig.events[-1].data["reason"] == "forced"
    first, _ = rig.command("night auto")
    assert first.startswith("OK automatic; now NIGHT")
    assert rig.run([100.5] * 10)[-1] is False
    assert rig.events[-1].data["reason"] == "bright"
    assert rig.command("night")[0] == "OK DAY mode=auto"


def test_forcing_day_with_no_frames_applies_on_the_next_frame():
    rig = Rig(min_dark_frames=3, command_wait_s=0.2)
    rig.run([5.5] * 3)
    assert rig.ctl.is_night
    first, _ = rig.command("night day")
    assert first == "OK DAY forced; no frame for 0.2 s, it applies with the next frame"
    assert rig.ctl.is_night  # nothing touched the camera off the capture thread
    assert rig.step(5.5) is False
    assert not any(rig.run([5.5] * 50))  # held in day despite the darkness
    assert rig.camera.calls == [True, False]


def test_forced_switch_the_camera_refuses_is_reported_and_retried():
    rig = Rig(Camera(failures=1), min_dwell_s=8.0)
    stop = threading.Event()

    def capture_loop():
        while not stop.is_set():
            rig.step(100.5)
            stop.wait(0.002)

    loop = threading.Thread(target=capture_loop, name="picamd-capture-test", daemon=True)
    loop.start()
    try:
        first, body = rig.command("night night")
    finally:
        stop.set()
        loop.join(5)
    assert first.startswith("OK NIGHT forced, but the camera refused it (RuntimeError: camera busy); retrying every 8 s")
    assert body["ok"] is False
    assert not rig.ctl.is_night
    rig.run([100.5] * 85)
    assert rig.ctl.is_night and rig.camera.calls == [True, True]


@pytest.mark.parametrize("line", ["night sideways", "night day now", "night 1", "night_level now", "night_level DAY x"])
def test_bad_arguments_answer_err_and_change_nothing(line):
    rig = Rig(min_dark_frames=3)
    rig.run([5.5] * 3)
    before = rig.ctl.level()
    first, body = rig.command(line)
    assert first.startswith("ERR usage: night")
    assert body is None
    assert rig.ctl.level() == before
    assert rig.camera.calls == [True]
    assert rig.run([100.5] * 10)[-1] is False  # still automatic


def test_forcing_needs_the_token_when_one_is_set():
    rig = Rig(token="s3cret", min_dark_frames=3)
    rig.run([50.5] * 3)
    stranger = Session(peer="192.168.1.50")
    first, _ = rig.command("night night", stranger)
    assert first.startswith("ERR night night changes state and needs 'token SECRET'")
    assert rig.ctl.level()["mode"] == "auto" and rig.camera.calls == []
    assert rig.command("night_level", stranger)[0].startswith("OK DAY level=50.")  # reading is open
    assert rig.command("night", stranger)[0] == "OK DAY mode=auto"  # showing the mode is reading too
    assert rig.command("night bogus", stranger)[0].startswith("ERR usage: night")
    assert rig.command("token s3cret", stranger)[0] == "OK authorised"
    rig.ctl._command_wait_s = 0.0
    assert rig.command("night night", stranger)[0].startswith("OK NIGHT forced")
    assert rig.ctl.level()["mode"] == "forced night"


def test_commands_are_listed_in_help():
    rig = Rig()
    reply = rig.registry.dispatch("help")
    text = reply.text
    assert reply.ok and text is not None
    assert "night_level" in text and "night day" in text and "night auto" in text
    # Reading is open, changing state needs the token: each (command, subcommand) has its own rule.

    def command(name: str, sub: str = "") -> Command:
        found = rig.registry.get(name, sub)
        assert found is not None, (name, sub)
        return found

    assert not command("night").mutating and not command("night_level").mutating
    assert all(command("night", sub).mutating for sub in ("auto", "day", "night"))


def test_night_auto_when_already_automatic_keeps_the_running_count():
    rig = Rig(min_dark_frames=10)
    rig.run([5.5] * 5)
    assert rig.command("night auto")[0] == "OK automatic; now DAY; the brightness rule decides from the next frame"
    assert rig.run([5.5] * 5) == [False] * 4 + [True]


def test_a_reopened_camera_gets_night_mode_again():
    rig = Rig(min_dark_frames=3)
    rig.ctl.camera_reopened()  # by day: nothing to do
    rig.step(5.5)
    assert rig.camera.calls == []
    rig.run([5.5] * 2)
    assert rig.camera.calls == [True]
    rig.camera.night = False  # the source came back at its day exposure
    rig.ctl.camera_reopened()
    rig.step(5.5)
    assert rig.camera.calls == [True, True] and rig.camera.night
    assert len(rig.events) == 1
