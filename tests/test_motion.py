"""Motion regions, machine state, resets, logs and commands, driven frame by frame.

Frames are generated with a known truth (a machine part that moves for known
intervals, with sensor noise and hiccups) and fed to `Motion.process` with
controlled timestamps, so minutes of scene run in a moment and nothing depends
on how fast this machine is.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from daemon.capture.ring import FrameMeta
from daemon.commands import Registry, Session
from daemon.config import Config, ConfigError
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.image.night import NightController
from daemon.motion import Motion, RegionMeter, check_regions, format_duration, parse_masks, parse_regions

FRAME = (640, 480)  # full frame w, h
RING = (160, 120)  # ring frame w, h: a quarter of each side
PRESS = {"name": "press1", "rect": [160, 120, 160, 120]}  # ring [40, 30, 40, 30]
T0_MONO = 1000.0
T0_WALL = 1_700_000_000.0


class Scene:
    """A textured wall with a machine part inside press1; sensor noise from a fixed bank."""

    def __init__(self, seed: int = 3, noise: float = 3.0, hiccups: bool = True) -> None:
        rng = np.random.default_rng(seed)
        coarse = rng.integers(40, 200, (12, 16, 3)).astype(np.uint8)
        self.base = cv2.resize(coarse, RING, interpolation=cv2.INTER_CUBIC).astype(np.int16)
        self.noise = [rng.normal(0, noise, (RING[1], RING[0], 3)).astype(np.int16) for _ in range(16)]
        self.rng = np.random.default_rng(seed + 1)
        self.hiccups = hiccups
        self.k = 0

    def ring(self, running: bool, brightness: float = 0.0, extra_noise: float = 1.0, part: bool = True) -> np.ndarray:
        self.k += 1
        img = self.base + (self.noise[self.k % len(self.noise)] * extra_noise).astype(np.int16) + int(round(brightness))
        if part:
            # The part moves along a sawtooth while running; hiccups on both sides keep the truth noisy.
            hiccup = self.rng.random() if self.hiccups else 0.5
            moves = (running and hiccup > 0.25) or (not running and hiccup < 0.05)
            x = 42 + (self.k * 7) % 25 if moves else 42
            img[35:47, x : x + 10] = 235 + int(round(brightness))
        return np.clip(img, 0, 255).astype(np.uint8)


def dark(frame: np.ndarray) -> float:
    return float(np.mean(cv2.mean(frame)[:3]))


def make(tmp_path: Path, regions: list | None = None, *, frame=FRAME, ring=RING, **motion_keys):
    values = {
        "motion.regions": [PRESS] if regions is None else regions,
        "motion.deep_sleep_s": 600.0,
        "motion.settle_s": 3.0,
        "motion.log_dir": str(tmp_path / "logs"),
    }
    log_queue_size = motion_keys.pop("log_queue_size", 20000)
    log_retry_s = motion_keys.pop("log_retry_s", 5.0)
    values.update({f"motion.{k}": v for k, v in motion_keys.items()})
    config = Config(values)
    bus = EventBus(history=1000)
    status = ComponentStatus("motion")
    motion = Motion(config.section("motion"), bus, status, frame, ring, log_queue_size=log_queue_size, log_retry_s=log_retry_s)
    events: list = []
    bus.subscribe("motion.", events.append)
    return motion, config, bus, status, events


def run(
    motion: Motion,
    scene: Scene,
    seconds: float,
    fps: float,
    truth,
    *,
    start: float = 0.0,
    first_id: int = 0,
    brightness=lambda t: 0.0,
    night=lambda t: False,
    noise=lambda t: 1.0,
) -> list[FrameMeta]:
    """Feed frames from `start` for `seconds`; `truth(t)` says whether the part runs at time t."""
    metas = []
    n = int(round(seconds * fps))
    for k in range(n):
        t = start + k / fps
        frame = scene.ring(truth(t), brightness(t), noise(t))
        meta = FrameMeta(frame_id=first_id + k, ts=T0_WALL + t, mono=T0_MONO + t, dark_score=dark(frame), night=night(t))
        motion.process(frame, meta)
        metas.append(meta)
    return metas


def states(events, kind: str = "motion.state") -> list[tuple[str, str, float]]:
    return [(e.data["old"], e.data["new"], e.data["ts"] - T0_WALL) for e in events if e.kind == kind]


def intervals(*spans):
    """truth(t) that is True inside any (start, end) span."""
    return lambda t: any(a <= t < b for a, b in spans)


# --- machine state -------------------------------------------------------------------------------


def test_running_and_stopped_follow_the_truth_within_one_window(tmp_path):
    motion, _, _, status, events = make(tmp_path)  # the default 30 s window
    truth = intervals((0, 120), (300, 400))
    run(motion, Scene(), 520, 5, truth)
    got = states(events)
    assert [(o, n) for o, n, _ in got] == [("UNKNOWN", "RUNNING"), ("RUNNING", "STOPPED"), ("STOPPED", "RUNNING"), ("RUNNING", "STOPPED")]
    window = 30.0
    assert window <= got[0][2] <= window + 1  # decided as soon as one whole window was judged
    assert 120 <= got[1][2] <= 120 + window
    assert 300 <= got[2][2] <= 300 + window
    assert 400 <= got[3][2] <= 400 + window
    resume = [e for e in events if e.kind == "motion.state"][2].data
    assert resume["idle_s"] == pytest.approx(180, abs=window / 2)
    assert resume["duration_s"] == pytest.approx(resume["idle_s"])
    last = [e for e in events if e.kind == "motion.state"][3].data
    assert last["duration_s"] == pytest.approx(100, abs=window / 2)
    assert last["idle_s"] is None
    assert last["region"] == "press1" and last["machine_id"] is None and "webhook" not in last
    assert status.ok and motion.measure_errors == 0


@pytest.mark.parametrize("fps", [5, 20])
def test_window_is_in_seconds_whatever_the_frame_rate(tmp_path, fps):
    motion, _, _, _, events = make(tmp_path)
    run(motion, Scene(), 200, fps, intervals((0, 120)))
    got = states(events)
    assert [(o, n) for o, n, _ in got] == [("UNKNOWN", "RUNNING"), ("RUNNING", "STOPPED")]
    assert 30 <= got[0][2] <= 31
    assert 120 <= got[1][2] <= 120 + 30
    health = motion.health()["regions"]["press1"]
    assert health["state"] == "STOPPED"
    assert health["window_frames"] == pytest.approx(30 * fps, rel=0.05)


def test_deep_sleep_and_wake_are_their_own_events(tmp_path):
    motion, _, _, _, events = make(tmp_path, window_s=5.0, deep_sleep_s=30.0)
    motion.start()
    try:
        run(motion, Scene(), 110, 5, intervals((0, 20), (80, 110)))
    finally:
        motion.stop()
    kinds = [(e.kind, e.data["old"], e.data["new"]) for e in events]
    assert kinds == [
        ("motion.state", "UNKNOWN", "RUNNING"),
        ("motion.state", "RUNNING", "STOPPED"),
        ("motion.deep_sleep", "STOPPED", "DEEP_SLEEP"),
        ("motion.state", "DEEP_SLEEP", "RUNNING"),
        ("motion.wake", "DEEP_SLEEP", "RUNNING"),
    ]
    stopped_at = events[1].data["ts"]
    sleep = events[2].data
    assert sleep["ts"] - stopped_at == pytest.approx(30, abs=0.3)
    assert sleep["duration_s"] == pytest.approx(30, abs=0.3) and sleep["idle_s"] == pytest.approx(30, abs=0.3)
    wake = events[4].data
    assert wake["idle_s"] == pytest.approx(60, abs=5)
    assert wake["duration_s"] == pytest.approx(wake["idle_s"] - 30, abs=0.3)
    assert events[3].data == wake
    lines = (tmp_path / "logs" / "deep_sleep.jsonl").read_text().splitlines()
    assert [json.loads(ln)["event"] for ln in lines] == ["motion.deep_sleep", "motion.wake"]
    changes = [json.loads(ln) for ln in (tmp_path / "logs" / "state_changes.jsonl").read_text().splitlines()]
    assert [(c["old"], c["new"]) for c in changes] == [("UNKNOWN", "RUNNING"), ("RUNNING", "STOPPED"), ("DEEP_SLEEP", "RUNNING")]


def test_state_change_log_lines_read_well(tmp_path, caplog):
    motion, _, _, _, _ = make(tmp_path, [dict(PRESS, machine_id=7)])
    with caplog.at_level(logging.INFO, logger="picamd.motion"):
        run(motion, Scene(), 100, 5, intervals((0, 40), (80, 100)))
    text = caplog.text
    assert re.search(r"press1 \(machine 7\): RUNNING -> STOPPED after \d+s running", text)
    assert re.search(r"press1 \(machine 7\): STOPPED -> RUNNING after \d+s idle", text)
    assert format_duration(723) == "12m03s" and format_duration(45) == "45s" and format_duration(10920) == "3h02m00s"


def test_camera_gap_longer_than_the_window_holds_the_state_until_it_refills(tmp_path):
    motion, _, _, _, events = make(tmp_path, window_s=10.0)
    scene = Scene()
    run(motion, scene, 30, 5, lambda t: True)
    assert states(events)[-1][1] == "RUNNING"
    # The camera was away for a minute; two still frames right after must not decide anything.
    run(motion, scene, 2, 5, lambda t: False, start=90, first_id=1000)
    assert states(events)[-1][1] == "RUNNING"
    run(motion, scene, 12, 5, lambda t: False, start=92, first_id=2000)
    assert states(events)[-1][:2] == ("RUNNING", "STOPPED")


# --- light changes and resets ----------------------------------------------------------------------


def test_flicker_is_not_motion(tmp_path):
    motion, _, _, _, events = make(tmp_path)
    # Mains flicker beating with the frame rate: +-6 grey levels from frame to frame.
    run(motion, Scene(hiccups=False), 60, 10, lambda t: False, brightness=lambda t: 6.0 if int(t * 10) % 2 else -6.0)
    assert [(o, n) for o, n, _ in states(events)] == [("UNKNOWN", "STOPPED")]
    assert motion.resets == 0
    assert motion.health()["regions"]["press1"]["window_moving"] == 0.0


def test_lightning_flash_resets_instead_of_moving(tmp_path, caplog):
    motion, _, _, _, events = make(tmp_path)
    with caplog.at_level(logging.INFO, logger="picamd.motion"):
        metas = run(motion, Scene(), 40, 5, lambda t: False, brightness=lambda t: 90.0 if 20 <= t < 20.2 else 0.0)
    assert [(o, n) for o, n, _ in states(events)] == [("UNKNOWN", "STOPPED")]
    assert motion.resets >= 1 and "brightness jump" in caplog.text
    flash = next(m for m in metas if m.mono - T0_MONO >= 20)
    assert flash.extra.get("motion_settling") is True


@pytest.mark.parametrize("running", [False, True])
def test_light_switched_on_raises_no_event_and_settles(tmp_path, caplog, running):
    motion, _, _, _, events = make(tmp_path)
    with caplog.at_level(logging.INFO, logger="picamd.motion"):
        metas = run(motion, Scene(hiccups=False), 60, 5, lambda t: running, brightness=lambda t: 0.0 if t < 30 else 60.0)
    expected = "RUNNING" if running else "STOPPED"
    assert [(o, n) for o, n, _ in states(events)] == [("UNKNOWN", expected)]
    assert "background reset (brightness jump" in caplog.text and "settled after brightness jump" in caplog.text
    after = [m for m in metas if 30 <= m.mono - T0_MONO < 33]
    assert after and all(m.extra.get("motion_settling") is True for m in after)
    assert all(m.extra["motion"].endswith(":SETTLING") for m in after)
    later = [m for m in metas if m.mono - T0_MONO >= 33.5]
    assert later and not any("motion_settling" in m.extra for m in later)
    if not running:
        assert all(m.extra["motion"] == "press1=0.0000:STOPPED" for m in later)


def test_auto_exposure_steps_raise_no_event(tmp_path):
    motion, _, _, _, events = make(tmp_path)

    # Four steps of 15 grey levels a second apart: each below brightness_jump (20) on its own.
    def steps(t: float) -> float:
        return 15.0 * max(0, min(4, int(t - 29))) if t >= 30 else 0.0

    metas = run(motion, Scene(hiccups=False), 60, 5, lambda t: False, brightness=steps)
    assert [(o, n) for o, n, _ in states(events)] == [("UNKNOWN", "STOPPED")]
    assert motion.resets >= 1  # the creeping exposure was caught against the slow average
    judged = [m for m in metas if m.mono - T0_MONO >= 30 and "motion_settling" not in m.extra]
    assert judged and max(float(m.extra["motion"].split("=")[1].split(":")[0]) for m in judged) < 0.05


def test_slow_light_change_fades_into_the_background(tmp_path):
    motion, _, _, _, events = make(tmp_path)
    metas = run(motion, Scene(hiccups=False), 120, 5, lambda t: False, brightness=lambda t: -40 + 80 * t / 120)
    assert [(o, n) for o, n, _ in states(events)] == [("UNKNOWN", "STOPPED")]
    assert motion.resets == 0
    fractions = [float(m.extra["motion"].split("=")[1].split(":")[0]) for m in metas[1:]]
    assert max(fractions) < 0.05


def test_night_switch_rebaselines_and_settles(tmp_path, caplog):
    """The one way a night switch reaches motion: the night controller's event on the bus. Driven as the capture
    loop drives them (the frame's meta, then the controller, then motion), with the real controller and bus."""
    motion, config, bus, _, events = make(tmp_path)
    scene = Scene()
    day = dark(scene.ring(False))
    config.set("night.bright_threshold", day + 30)
    config.set("night.dark_threshold", day - 7.5)  # the night scene below (15 grey levels darker) is dark at once
    config.set("night.min_dark_frames", 1)
    switched_to: list[bool] = []

    def apply_camera(on: bool) -> dict:
        switched_to.append(on)
        return {}

    night = NightController(config.section("night"), bus, apply_camera)
    metas = []
    # Night: darker, noisier; the switch itself must not look like motion.
    with caplog.at_level(logging.INFO, logger="picamd.motion"):
        for k in range(300):
            t = k / 5
            frame = scene.ring(False, -15.0 if t >= 30 else 0.0, 2.0 if t >= 30 else 1.0)
            meta = FrameMeta(frame_id=k, ts=T0_WALL + t, mono=T0_MONO + t, dark_score=dark(frame), night=night.is_night)
            night.update(meta.dark_score, None, None, meta.mono, meta.ts)
            motion.process(frame, meta)
            metas.append(meta)
    assert switched_to == [True] and [e.kind for e in bus.recent("night.")] == ["night.enter"]
    assert [(o, n) for o, n, _ in states(events)] == [("UNKNOWN", "STOPPED")]
    assert "background reset (night.enter)" in caplog.text
    assert motion.resets == 1 and motion.last_reset["reason"] == "night.enter"
    switched = [m for m in metas if 30 <= m.mono - T0_MONO < 33]
    assert switched and all(m.extra.get("motion_settling") is True for m in switched)
    assert all("motion_settling" not in m.extra for m in metas if m.mono - T0_MONO < 30 or m.mono - T0_MONO >= 33.5)
    # Leaving night is the other event; the frames' own night flag is not a reason on its own.
    night_scene = dict(night=lambda t: True, brightness=lambda t: -15.0, noise=lambda t: 2.0)
    bus.publish("night.exit", level=80.0)
    metas = run(motion, scene, 5, 5, lambda t: False, start=60, first_id=500, **night_scene)
    assert motion.resets == 2 and motion.last_reset["reason"] == "night.exit"
    assert metas[0].extra.get("motion_settling") is True and metas[0].extra["motion"] == "press1=0.0000:SETTLING"
    assert "motion_settling" not in metas[-1].extra
    run(motion, scene, 1, 5, lambda t: False, start=65, first_id=600, night=lambda t: False)
    # Other night.* events are not a reason to re-baseline.
    bus.publish("night.level", level=12.0)
    run(motion, scene, 1, 5, lambda t: False, start=70, first_id=700, **night_scene)
    assert motion.resets == 2


def test_reset_during_running_keeps_the_state(tmp_path):
    motion, _, _, _, events = make(tmp_path)
    scene = Scene()
    run(motion, scene, 30, 5, lambda t: True)
    motion.reset("night mode switch")
    metas = run(motion, scene, 30, 5, lambda t: True, start=30, first_id=150)
    assert metas[0].extra["motion_settling"] is True
    assert [(o, n) for o, n, _ in states(events)] == [("UNKNOWN", "RUNNING")]


# --- measure: masks, polygons, units ---------------------------------------------------------------


def moving_square(
    scene: Scene, k: int, rect_full: tuple[int, int, int, int], step: int = 8, toggle: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """A full frame with a bright square that moves `step` px a frame (or jumps back and forth), and its ring copy
    (INTER_AREA, like the capture loop makes it)."""
    full = cv2.resize(scene.base.astype(np.uint8), FRAME, interpolation=cv2.INTER_LINEAR)
    x, y, w, h = rect_full
    dx = (k % 2) * step if toggle else k * step
    full[y : y + h, x + dx : x + dx + w] = 250
    ring = cv2.resize(full, RING, interpolation=cv2.INTER_AREA)
    return full, ring


def feed_squares(motion: Motion, rect_full, frames: int = 6, full: bool = False, start: int = 0, toggle: bool = False) -> list[FrameMeta]:
    scene = Scene()
    metas = []
    for k in range(start, start + frames):
        f, r = moving_square(scene, k - start, rect_full, toggle=toggle)
        meta = FrameMeta(frame_id=k, ts=T0_WALL + k, mono=T0_MONO + k, dark_score=dark(r))
        motion.process(r, meta, f if full else None)
        metas.append(meta)
    return metas


def fraction_of(meta: FrameMeta, name: str) -> float:
    parts = dict(p.split("=") for p in meta.extra["motion"].split(";"))
    return float(parts[name].split(":")[0])


def test_masks_ignore_a_moving_area(tmp_path):
    region = {"name": "yard", "rect": [0, 0, 640, 480]}
    tree = [400, 40, 120, 120]  # full px; the square moves inside it
    unmasked, *_ = make(tmp_path / "a", [region], dilate=2)
    masked, *_ = make(tmp_path / "b", [region], dilate=2, masks=[{"name": "tree", "rect": [380, 20, 200, 180]}])
    a = feed_squares(unmasked, (tree[0], tree[1], 64, 64))
    b = feed_squares(masked, (tree[0], tree[1], 64, 64))
    assert min(fraction_of(m, "yard") for m in a[1:]) > 0.005
    assert max(fraction_of(m, "yard") for m in b[1:]) == 0.0
    assert masked.health()["regions"]["yard"]["moving"] is False


def test_polygon_region_counts_only_inside_the_polygon(tmp_path):
    # A triangle over the left half of its bounding box [0..320]x[0..320].
    triangle = {"name": "tri", "polygon": [[0, 0], [0, 320], [320, 320]], "min_fraction": 0.01}
    motion, *_ = make(tmp_path, [triangle], dilate=0)
    outside = feed_squares(motion, (230, 20, 48, 48))  # upper right: in the box, not in the triangle
    assert max(fraction_of(m, "tri") for m in outside[1:]) == 0.0
    motion2, *_ = make(tmp_path / "2", [triangle], dilate=0)
    inside = feed_squares(motion2, (20, 220, 48, 48))
    assert min(fraction_of(m, "tri") for m in inside[1:]) > 0.01
    assert motion2.health()["regions"]["tri"]["moving"] is True


def test_fractions_and_pixels_are_the_same_region(tmp_path):
    regions = [{"name": "px", "rect": [160, 120, 320, 240]}, {"name": "frac", "rect": [0.25, 0.25, 0.5, 0.5]}]
    motion, *_ = make(tmp_path, regions)
    metas = feed_squares(motion, (250, 200, 60, 60))
    for m in metas[1:]:
        assert fraction_of(m, "px") == fraction_of(m, "frac") > 0
    specs = parse_regions(regions, FRAME)
    assert specs[0].points == specs[1].points and specs[1].area_px == 320 * 240


def test_min_pixels_counts_at_full_frame_scale(tmp_path):
    # An 80x80 px square jumping by 80 px: 2 x 6400 changed full-frame pixels, 2 x 400 in the ring.
    regions = [
        {"name": "low", "rect": [0, 0, 640, 480], "min_pixels": 10000},
        {"name": "high", "rect": [0, 0, 640, 480], "min_pixels": 15000},
        {"name": "frac", "rect": [0, 0, 640, 480], "min_fraction": 0.05},
    ]
    motion, *_ = make(tmp_path, regions, dilate=0, blur=0)
    scene = Scene()
    for k in range(4):
        full = cv2.resize(scene.base.astype(np.uint8), FRAME, interpolation=cv2.INTER_LINEAR)
        x = 160 + (k % 2) * 80
        full[160:240, x : x + 80] = 250
        ring = cv2.resize(full, RING, interpolation=cv2.INTER_AREA)
        motion.process(ring, FrameMeta(frame_id=k, ts=T0_WALL + k, mono=T0_MONO + k, dark_score=dark(ring)))
    h = motion.health()["regions"]
    assert h["low"]["pixels"] == pytest.approx(12800, rel=0.05)
    assert h["low"]["moving"] is True and h["high"]["moving"] is False
    assert h["frac"]["fraction"] == pytest.approx(12800 / (640 * 480), rel=0.05)
    assert h["frac"]["moving"] is False


def test_small_region_is_measured_on_the_full_frame(tmp_path):
    motion, *_ = make(tmp_path, [{"name": "valve", "rect": [300, 200, 40, 40], "min_fraction": 0.02}], dilate=0, blur=0)
    reg = Registry()
    motion.register_commands(reg)
    active = reg.dispatch("regions").body["active"][0]
    assert active["measured_on"] == "full" and active["measured_size"] == [40, 40]
    metas = feed_squares(motion, (306, 206, 6, 6), full=True, toggle=True)
    # A 6x6 px detail that jumps 8 px: 72 changed pixels of 1600 at full resolution.
    assert fraction_of(metas[-1], "valve") == pytest.approx(72 / 1600, abs=0.002)
    assert motion.health()["regions"]["valve"]["pixels"] == 72
    # Without full frames it falls back to the stretched ring crop and keeps working.
    more = feed_squares(motion, (306, 206, 6, 6), frames=3, full=False, start=10, toggle=True)
    assert all("valve=" in m.extra["motion"] for m in more)
    assert motion.status.ok


def test_per_region_overrides(tmp_path):
    regions = [
        {"name": "normal", "rect": [0, 0, 640, 480], "min_fraction": 0.001},
        {"name": "deaf", "rect": [0, 0, 640, 480], "min_fraction": 0.001, "pixel_threshold": 255},
    ]
    motion, *_ = make(tmp_path, regions)
    feed_squares(motion, (200, 200, 40, 40))
    h = motion.health()["regions"]
    assert h["normal"]["moving"] is True and h["deaf"]["moving"] is False


def test_previous_frame_method(tmp_path):
    motion, *_ = make(tmp_path, method="previous", window_s=10.0)
    metas = run(motion, Scene(), 30, 5, lambda t: t < 15)
    assert motion.health()["regions"]["press1"]["state"] == "STOPPED"
    assert fraction_of(metas[-1], "press1") < 0.05


def test_x_motion_header_format(tmp_path):
    regions = [PRESS, {"name": "door", "rect": [0.0, 0.0, 0.25, 0.25]}, {"name": "Presse 2", "rect": [400, 300, 200, 150]}]
    motion, *_ = make(tmp_path, regions, window_s=10.0)
    metas = run(motion, Scene(), 12, 5, lambda t: True)
    value = metas[-1].extra["motion"]
    assert re.fullmatch(r"([^=;:]+=\d\.\d{4}:(UNKNOWN|RUNNING|STOPPED|DEEP_SLEEP|SETTLING))(;[^=;:]+=\d\.\d{4}:[A-Z_]+)*", value)
    parts = dict(p.split("=") for p in value.split(";"))
    assert list(parts) == ["press1", "door", "Presse 2"]
    assert parts["press1"].endswith(":RUNNING") and parts["door"].endswith(":STOPPED")
    assert metas[0].extra["motion"].count("UNKNOWN") == 3
    assert json.dumps(metas[-1].to_dict())  # stays JSON-able for /meta and the sidecars


# --- region parsing and config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "region, problem",
    [
        ({"name": "a", "rect": [600, 0, 100, 100]}, "outside the 640x480 frame"),
        ({"name": "a", "polygon": [[0, 0], [700, 0], [0, 100]]}, "outside the 640x480 frame"),
        ({"name": "a", "rect": [10, 10, 1, 50]}, "too small"),
        ({"name": "a", "rect": [0, 0, 10, 10], "min_pixels": 500}, "could never move"),
    ],
)
def test_parse_regions_needs_the_frame_for_bounds(region, problem):
    check_regions([region])  # the frame-free checks let it through
    with pytest.raises(ValueError, match=re.escape(problem)) as info:
        parse_regions([region], FRAME)
    assert "region 'a'" in str(info.value)


@pytest.mark.parametrize(
    "region, problem",
    [
        ({"name": "a"}, "needs rect"),
        ({"name": "a", "rect": [0, 0, 0, 10]}, "zero size"),
        ({"name": "a", "rect": [0, 0, 10]}, "rect must be [x, y, w, h]"),
        ({"name": "a", "rect": [-1, 0, 10, 10]}, "starts outside"),
        ({"name": "a", "rect": [0.5, 0, 0.6, 0.5]}, "reaches outside"),
        ({"name": "a", "rect": [0, 0, "ten", 10]}, "must be a number"),
        ({"name": "a", "rect": [0, 0, float("nan"), 10]}, "finite"),
        ({"name": "a", "rect": [0, 0, 10, 10], "polygon": [[0, 0], [1, 0], [0, 1]]}, "not both"),
        ({"name": "a", "polygon": [[0, 0], [10, 10]]}, "at least 3 points"),
        ({"name": "a", "polygon": [[0, 0], [10, 10], [20, 20]]}, "no area"),
        ({"name": "a", "rect": [0, 0, 10, 10], "min_fraction": 1.5}, "min_fraction"),
        ({"name": "a", "rect": [0, 0, 10, 10], "min_fraction": 0.1, "min_pixels": 5}, "not both"),
        ({"name": "a", "rect": [0, 0, 10, 10], "min_pixels": 2.5}, "whole number"),
        ({"name": "a", "rect": [0, 0, 10, 10], "threshold": 300}, "use min_pixels"),
        ({"name": "a", "rect": [0, 0, 10, 10], "color": "red"}, "unknown key 'color'"),
        ({"name": "a", "rect": [0, 0, 10, 10], "webhook": "ftp://x"}, "webhook"),
        ({"name": "a", "rect": [0, 0, 10, 10], "blur": 99}, "blur must be 0..51"),
        ({"name": "a", "rect": [0, 0, 10, 10], "machine_id": [1]}, "machine_id"),
        ({"name": "a=b", "rect": [0, 0, 10, 10]}, "names are"),
        ({"name": "", "rect": [0, 0, 10, 10]}, "needs a name"),
        ({"name": "a", "polygon": [[i, (i * 7) % 50] for i in range(257)]}, "polygon has 257 points; at most 256"),
        ({"name": "a", "rect": [0, 0, 10, 10], "webhook": "http://h/" + "x" * 2048}, "at most 2048"),
    ],
)
def test_bad_regions_are_refused_with_the_reason(region, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        check_regions([region])


def test_duplicate_names_and_clashing_log_files_are_refused():
    with pytest.raises(ValueError, match="used twice"):
        parse_regions([{"name": "a", "rect": [0, 0, 10, 10]}, {"name": "a", "rect": [5, 5, 10, 10]}], FRAME)
    with pytest.raises(ValueError, match="log file name would clash"):
        parse_regions([{"name": "Press 1", "rect": [0, 0, 10, 10]}, {"name": "Press_1", "rect": [5, 5, 10, 10]}], FRAME)


def test_regions_and_masks_are_bounded_in_number():
    """Each region is measured on every frame: a client on the LAN must not be able to add thousands."""
    many = [{"name": f"r{i}", "rect": [i, 0, 2, 2]} for i in range(65)]
    with pytest.raises(ValueError, match=re.escape("65 regions; at most 64 (each is measured on every frame)")):
        check_regions(many)
    assert len(check_regions(many[:64])) == 64
    with pytest.raises(ValueError, match=re.escape("65 masks; at most 64")):
        parse_masks([[i, 0, 2, 2] for i in range(65)], FRAME)


def test_masks_parse_as_rects_and_polygons():
    masks = parse_masks([[0, 0, 0.5, 0.5], {"polygon": [[0, 0], [10, 0], [0, 10]]}, {"name": "clock", "rect": [0, 0, 100, 20]}], FRAME)
    assert masks[0][2] == (320, 240) and masks[1][1] == (10, 0) and masks[2][2] == (100, 20)
    with pytest.raises(ValueError, match="mask #1"):
        parse_masks([{"rect": [0, 0, 0, 5]}], FRAME)


def test_config_refuses_deeply_bad_regions_and_changes_nothing():
    config = Config({"motion.regions": [PRESS]})
    for bad in (
        [{"name": "x", "rect": [0, 0, 10, 10], "failrate": "20%"}],
        [{"name": "x", "rect": [0, 0, 10, 10], "min_fraction": 0}],
        "[{name: x, rect: [0, 0, 10]}]",
    ):
        with pytest.raises(ConfigError, match="motion.regions"):
            config.set("motion.regions", bad)
        assert config.get("motion.regions") == [PRESS]
    with pytest.raises(ConfigError, match="motion.masks"):
        config.set("motion.masks", "[[1, 2]]")
    assert config.get("motion.masks") == []


def test_loading_a_config_with_regions_does_not_import_opencv(tmp_path):
    # The schema checks regions with daemon/motion/regions.py alone; OpenCV (about 0.5 s and 30 MiB) loads with Motion.
    path = tmp_path / "config.yaml"
    path.write_text(
        "motion:\n  regions:\n    - {name: press1, rect: [0.1, 0.1, 0.2, 0.2], min_pixels: 50}\n  masks:\n    - [0, 0, 100, 20]\n"
    )
    code = (
        "import sys\n"
        "from daemon.config import Config, ConfigError\n"
        f"cfg = Config.load({str(path)!r})\n"
        "assert cfg.get('motion.regions')[0]['name'] == 'press1'\n"
        "try:\n"
        "    cfg.set('motion.regions', [{'name': 'x', 'rect': [0, 0, 0, 5]}])\n"
        "except ConfigError as exc:\n"
        "    print('refused:', exc)\n"
        "from daemon.motion import check_regions, parse_regions\n"
        "print('loaded:', sorted(m for m in ('cv2', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "refused: motion.regions" in out and "zero size" in out
    assert "loaded: []" in out


def test_region_outside_the_real_frame_degrades_and_recovers(tmp_path):
    motion, config, _, status, _ = make(tmp_path)
    scene = Scene()
    run(motion, scene, 2, 5, lambda t: True)
    # Valid without a frame size, so config takes it; this camera's frame is smaller.
    config.set("motion.regions", [PRESS, {"name": "far", "rect": [1000, 600, 100, 100]}])
    run(motion, scene, 1, 5, lambda t: True, start=2, first_id=10)
    assert not status.ok and "far" in status.state
    health = motion.health()
    assert list(health["regions"]) == ["press1"] and "outside the 640x480 frame" in health["region_errors"][0]
    config.set("motion.regions", [PRESS])
    run(motion, scene, 1, 5, lambda t: True, start=3, first_id=20)
    assert status.ok and motion.health()["region_errors"] == []


# --- commands ----------------------------------------------------------------------------------------


def commands(motion: Motion) -> Registry:
    reg = Registry()
    motion.register_commands(reg)
    return reg


def test_motion_and_regions_commands(tmp_path):
    motion, *_ = make(tmp_path, [PRESS, {"name": "door", "rect": [0, 0, 0.25, 0.25], "machine_id": "D1"}], window_s=10.0)
    reg = commands(motion)
    run(motion, Scene(), 20, 5, lambda t: True)
    reply = reg.dispatch("motion")
    assert reply.ok and reply.first_line() == "OK press1 RUNNING, door STOPPED"
    body = json.loads(reply.encode().decode().split("\n", 1)[1])
    press = body["regions"][0]
    assert press["name"] == "press1" and press["state"] == "RUNNING" and press["idle_s"] is None
    assert press["in_state_s"] == pytest.approx(10, abs=1) and 0 <= press["fraction"] <= 1
    door = body["regions"][1]
    assert door["machine_id"] == "D1" and door["state"] == "STOPPED" and door["idle_s"] == pytest.approx(door["in_state_s"])
    one = reg.dispatch("motion door")
    assert one.ok and one.first_line() == "OK door STOPPED" and one.body["name"] == "door"
    unknown = reg.dispatch("motion nope")
    assert not unknown.ok and "unknown region 'nope'" in unknown.message and "press1" in unknown.message
    regions = reg.dispatch("regions")
    assert regions.ok and regions.body["regions"][1]["machine_id"] == "D1"
    assert regions.body["active"][0]["bbox"] == [160, 120, 160, 120]
    assert json.loads(regions.encode().decode().split("\n", 1)[1])["frame_size"] == [640, 480]


def test_region_add_and_del_apply_live(tmp_path):
    motion, config, _, _, events = make(tmp_path, window_s=10.0)
    reg = commands(motion)
    scene = Scene()
    run(motion, scene, 15, 5, lambda t: True)
    added = reg.dispatch("region add door 0 0 0.25 0.25 0.1")
    assert added.ok, added.message
    added2 = reg.dispatch("region add gate 400 300 200 150 300")
    assert added2.ok, added2.message
    pending = reg.dispatch("motion door")  # asked before the capture loop's next frame
    assert pending.ok and pending.first_line() == "OK door PENDING"
    assert config.get("motion.regions")[1:] == [
        {"name": "door", "rect": [0.0, 0.0, 0.25, 0.25], "min_fraction": 0.1},
        {"name": "gate", "rect": [400, 300, 200, 150], "min_pixels": 300},
    ]
    metas = run(motion, scene, 1, 5, lambda t: True, start=15, first_id=100)
    assert list(dict(p.split("=") for p in metas[-1].extra["motion"].split(";"))) == ["press1", "door", "gate"]
    # press1 kept its state: no second UNKNOWN -> RUNNING for it.
    assert [(e.data["region"], e.data["new"]) for e in events] == [("press1", "RUNNING")]
    assert reg.dispatch("motion gate").ok
    deleted = reg.dispatch("region del door")
    assert deleted.ok
    metas = run(motion, scene, 1, 5, lambda t: True, start=16, first_id=200)
    assert "door=" not in metas[-1].extra["motion"] and [r["name"] for r in config.get("motion.regions")] == ["press1", "gate"]


@pytest.mark.parametrize(
    "line, problem",
    [
        ("region add far 600 400 100 100", "outside the 640x480 frame"),
        ("region add flat 10 10 0 50", "zero size"),
        ("region add press1 0 0 50 50", "exists already"),
        ("region add x 0 0 ten 50", "W must be a number"),
        ("region add x 0 0 nan 50", "finite"),
        ("region add x 0 0 inf 50", "finite"),
        ("region add x -5 0 50 50", "starts outside"),
        ("region add x 0 0 50 50 0", "MIN must be above 0"),
        ("region add x 0 0 50 50 2.5", "whole number"),
        ("region add x 0 0 50 50 99999", "could never move"),
        ("region add x=y 0 0 50 50", "names are"),
        ("region add x 0 0 50", "usage"),
        ("region add", "usage"),
        ("region del nope", "unknown region 'nope'"),
        ("region move press1", "usage"),
        ("region add Press1 0 0 50 50 0.1 extra", "usage"),
    ],
)
def test_bad_region_commands_change_nothing(tmp_path, line, problem):
    motion, config, *_ = make(tmp_path)
    reg = commands(motion)
    before = json.dumps(config.get("motion.regions"))
    reply = reg.dispatch(line)
    assert not reply.ok and problem in reply.message, reply.message
    assert reply.first_line().startswith("ERR ")
    assert json.dumps(config.get("motion.regions")) == before
    run(motion, Scene(), 0.4, 5, lambda t: True)
    assert [r.spec.name for r in motion._regions] == ["press1"]


def test_region_add_beyond_the_bound_says_why(tmp_path):
    motion, config, *_ = make(tmp_path)
    reg = commands(motion)
    for i in range(63):
        assert reg.dispatch(f"region add q{i} {i * 8} 0 6 6").ok
    full = reg.dispatch("region add one_more 600 400 6 6")
    assert not full.ok and full.message == "64 regions already, at most 64 (region del one first)", full.message
    assert len(config.get("motion.regions")) == 64


def test_region_commands_need_the_token_when_one_is_set(tmp_path):
    motion, config, *_ = make(tmp_path)
    reg = Registry(token=lambda: "s3cret")
    motion.register_commands(reg)
    session = Session()
    refused = reg.dispatch("region add door 0 0 50 50", session)
    assert not refused.ok and "token" in refused.message
    assert reg.dispatch("motion", session).ok  # reading needs no token
    assert reg.dispatch("token s3cret", session).ok
    assert reg.dispatch("region add door 0 0 50 50", session).ok
    assert [r["name"] for r in config.get("motion.regions")] == ["press1", "door"]


# --- logs ------------------------------------------------------------------------------------------


def test_logs_are_json_lines_and_rotate(tmp_path):
    motion, *_ = make(
        tmp_path, [PRESS, {"name": "Presse 2/b", "rect": [0, 0, 0.25, 0.25]}], log_frames=True, log_frames_max_mb=0.01, log_frames_keep=2
    )
    motion.start()
    try:
        run(motion, Scene(), 60, 10, intervals((0, 30)))  # 600 frames, ~100 bytes a line: several rotations
    finally:
        motion.stop()
    logs = tmp_path / "logs"
    names = sorted(p.name for p in logs.iterdir())
    assert "motion_press1.jsonl" in names and "motion_press1.jsonl.1" in names and "motion_press1.jsonl.2" in names
    assert "motion_press1.jsonl.3" not in names
    assert "motion_Presse_2_b.jsonl" in names  # sanitised for the file system
    for name in names:
        path = logs / name
        assert path.stat().st_size <= 10 * 1024 * 1.05 + 200
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if name.startswith("motion_"):
                assert set(rec) >= {"ts", "frame_id", "region", "fraction", "pixels", "moving", "state"}
                assert rec["moving"] in (True, False, None)
    newest = [json.loads(ln) for ln in (logs / "motion_press1.jsonl").read_text().splitlines()]
    assert newest[-1]["frame_id"] == 599 and newest[-1]["region"] == "press1" and newest[-1]["state"] == "STOPPED"
    changes = [json.loads(ln) for ln in (logs / "state_changes.jsonl").read_text().splitlines()]
    assert [(c["region"], c["new"]) for c in changes if c["region"] == "press1"] == [("press1", "RUNNING"), ("press1", "STOPPED")]
    stats = motion.health()["log"]
    assert stats["rotations"] >= 2 and stats["dropped_queue_full"] == 0 and not stats["running"]


def test_full_log_queue_drops_and_counts_without_blocking(tmp_path):
    motion, *_ = make(tmp_path, log_queue_size=10)  # writer not started: the queue only fills
    run(motion, Scene(), 10, 5, lambda t: True)
    stats = motion.health()["log"]
    assert stats["queued"] == 10 and stats["dropped_queue_full"] == 50 - 10  # 50 frames, no state event yet
    assert motion.status.ok


def test_unwritable_log_folder_degrades_then_recovers(tmp_path):
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the log folder should be")
    motion, _, _, status, _ = make(tmp_path, log_retry_s=0.1)
    motion.start()
    scene = Scene()
    try:
        t = 0.0
        deadline = time.monotonic() + 20
        while status.ok and time.monotonic() < deadline:
            run(motion, scene, 0.2, 5, lambda _: True, start=t, first_id=int(t * 5))
            t += 0.2
            time.sleep(0.02)
        assert not status.ok and "cannot write motion log" in status.state
        assert motion.health()["log"]["dropped_unwritable"] > 0
        blocker.unlink()
        deadline = time.monotonic() + 20
        while not status.ok and time.monotonic() < deadline:
            run(motion, scene, 0.2, 5, lambda _: True, start=t, first_id=int(t * 5))
            t += 0.2
            time.sleep(0.02)
        assert status.ok
    finally:
        motion.stop()
    assert (tmp_path / "logs" / "summary_press1.jsonl").stat().st_size > 0


# --- robustness ---------------------------------------------------------------------------------------


def test_a_bad_frame_is_counted_and_never_raised(tmp_path):
    motion, _, _, status, _ = make(tmp_path)
    scene = Scene()
    run(motion, scene, 2, 5, lambda t: True)
    before = motion.health()["regions"]["press1"]
    meta = FrameMeta(frame_id=99, ts=T0_WALL + 2, mono=T0_MONO + 2, dark_score=100.0)
    motion.process(np.zeros((10, 10, 3), np.uint8), meta)
    motion.process(np.zeros((10, 10, 3), np.uint8), meta)
    assert status.errors == 1 and motion.measure_errors == 2  # the repeat is counted, not logged again
    assert not status.ok and "motion" not in meta.extra
    assert motion.health()["regions"]["press1"]["window_frames"] == before["window_frames"]
    run(motion, scene, 1, 5, lambda t: True, start=2.2, first_id=100)
    assert status.ok


def test_disabled_does_nothing_and_rebaselines_when_enabled_again(tmp_path):
    motion, config, *_ = make(tmp_path)
    scene = Scene()
    run(motion, scene, 2, 5, lambda t: False)
    config.set("motion.enabled", False)
    metas = run(motion, scene, 2, 5, lambda t: False, start=2, first_id=10, brightness=lambda t: 10.0)
    assert all("motion" not in m.extra for m in metas)
    config.set("motion.enabled", True)
    metas = run(motion, scene, 2, 5, lambda t: False, start=4, first_id=20, brightness=lambda t: 10.0)
    assert metas[0].extra["motion"] == "press1=0.0000:UNKNOWN"
    assert max(fraction_of(m, "press1") for m in metas) < 0.05


def test_live_settings_apply_on_the_next_frame(tmp_path):
    motion, config, *_ = make(tmp_path, [{"name": "all", "rect": [0, 0, 640, 480], "min_fraction": 0.001}])
    feed_squares(motion, (200, 200, 40, 40), frames=3)
    assert motion.health()["regions"]["all"]["moving"] is True
    config.set("motion.pixel_threshold", 255)
    feed_squares(motion, (200, 200, 40, 40), frames=3, start=10)
    assert motion.health()["regions"]["all"]["moving"] is False


def test_events_carry_machine_id_and_the_region_webhook(tmp_path):
    region = dict(PRESS, machine_id="M-7", webhook="https://hooks.example/press1?key=k")
    motion, *_, events = make(tmp_path, [region], window_s=5.0)
    run(motion, Scene(), 20, 5, intervals((0, 10)))
    data = [e.data for e in events if e.kind == "motion.state"]
    assert [d["new"] for d in data] == ["RUNNING", "STOPPED"]
    assert all(d["machine_id"] == "M-7" and d["webhook"] == "https://hooks.example/press1?key=k" for d in data)
    assert all(isinstance(d["frame_id"], int) and 0 <= d["window_moving"] <= 1 for d in data)


# --- the shared pass: what it computes, and that sharing changes nothing ------------------------------


def reference_counts(frames, rects, *, blur=5, threshold=25, dilate=2, alpha=0.05, method="background", masks=()):
    """The measure done the plain way on the whole ring frame, frame by frame: grey, blur, difference against the
    running background (or the previous frame), masks cut, threshold, `dilate` iterations of a 3x3 square, then
    the changed pixels counted inside each region's rect (ring pixels), masks cut again. None on the first frame."""
    keep = np.full((RING[1], RING[0]), 255, np.uint8)
    for mx, my, mw, mh in masks:  # full-frame pixels, as motion.masks; rasterised the way the daemon does
        corners = [(mx, my), (mx + mw, my), (mx + mw, my + mh), (mx, my + mh)]
        pts = np.array([[round(x * RING[0] / FRAME[0] * 16), round(y * RING[1] / FRAME[1] * 16)] for x, y in corners], np.int32)
        cv2.fillPoly(keep, [pts], 0, lineType=cv2.LINE_8, shift=4)
    out: list[list[int] | None] = []
    background: np.ndarray | None = None
    reference: np.ndarray | None = None
    for frame in frames:
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        if blur:
            grey = cv2.GaussianBlur(grey, (blur, blur), 0)
        if reference is None:
            background, reference = grey.astype(np.float32), grey.copy()
            out.append(None)
            continue
        diff = cv2.absdiff(grey, reference)
        if method == "background":
            assert background is not None  # set with the reference
            cv2.accumulateWeighted(grey, background, alpha)
            reference = cv2.convertScaleAbs(background)
        else:
            reference = grey
        changed: np.ndarray = np.where((diff >= threshold) & (keep > 0), 255, 0).astype(np.uint8)
        if dilate:
            changed = cv2.dilate(changed, np.ones((3, 3), np.uint8), iterations=dilate)
        changed &= keep
        out.append([int(np.count_nonzero(changed[y // 4 : (y + h) // 4, x // 4 : (x + w) // 4])) for x, y, w, h in rects])
    return out


# Overlapping, adjacent, at the frame's corner and on its bottom edge: all of them around the moving part.
SHARED_RECTS = [(160, 120, 160, 120), (200, 100, 120, 120), (320, 120, 100, 120), (0, 0, 160, 120), (120, 240, 200, 240)]


@pytest.mark.parametrize(
    "method, blur, dilate", [("background", 5, 2), ("previous", 5, 2), ("background", 0, 0), ("previous", 0, 3), ("background", 3, 1)]
)
def test_shared_pass_counts_what_the_whole_frame_gives(tmp_path, method, blur, dilate):
    masks = [(240, 160, 40, 40)]  # a mask inside "a" and "b", right where the part moves
    regions = [{"name": n, "rect": list(r), "min_pixels": 1} for n, r in zip("abcde", SHARED_RECTS, strict=True)]
    motion, *_ = make(tmp_path, regions, method=method, blur=blur, dilate=dilate, masks=[{"rect": list(m)} for m in masks])
    passes = commands(motion).dispatch("regions").body["passes"]
    assert len(passes) == 1 and passes[0]["regions"] == list("abcde")  # close together: one pass for all
    scene = Scene(hiccups=False)
    frames = [scene.ring(True) for _ in range(12)]
    expected = reference_counts(frames, SHARED_RECTS, blur=blur, dilate=dilate, method=method, masks=masks)
    for k, frame in enumerate(frames):
        motion.process(frame, FrameMeta(frame_id=k, ts=T0_WALL + k / 5, mono=T0_MONO + k / 5, dark_score=dark(frame)))
        h = motion.health()["regions"]
        if expected[k] is None:
            assert all(h[n]["moving"] is None for n in "abcde")
            continue
        # 16 full-frame pixels per ring pixel
        assert [h[n]["pixels"] for n in "abcde"] == [16 * c for c in expected[k]], k
    assert max(expected[-1]) > 0 and motion.status.ok


def test_sharing_a_pass_changes_no_region_figure(tmp_path):
    """Each region measured alone (RegionMeter) gives exactly what the daemon gives while it shares a pass with
    others: polygons, masks and full-frame crops included."""
    masks = [{"rect": [300, 150, 30, 30]}, {"polygon": [[100, 300], [180, 300], [140, 360]]}]
    regions: list[dict[str, Any]] = [
        dict(PRESS),
        {"name": "tri", "polygon": [[140, 100], [340, 140], [200, 300]]},  # overlaps press1's box
        {"name": "next", "rect": [320, 120, 100, 120]},
        {"name": "low", "polygon": [[60, 280], [260, 280], [260, 420], [60, 420]]},
        {"name": "valve", "rect": [290, 180, 40, 40]},  # small: full-frame crop
        {"name": "valve2", "rect": [250, 200, 40, 40]},  # small, next to it: shares the full-frame pass
    ]
    motion, *_ = make(tmp_path, regions, masks=masks)
    body = commands(motion).dispatch("regions").body
    by_name = {p_["regions"][0]: p_ for p_ in body["passes"]}
    assert by_name["press1"]["measured_on"] == "ring" and by_name["press1"]["regions"] == ["press1", "tri", "next", "low"]
    assert by_name["valve"]["measured_on"] == "full" and by_name["valve"]["regions"] == ["valve", "valve2"]
    meters = {r["name"]: RegionMeter(r, FRAME, RING, masks) for r in regions}
    scene = Scene()
    compared = 0
    for k in range(30):
        full, ring = moving_square(scene, k, (250, 190, 60, 40), step=5)
        ring = cv2.add(ring, scene.ring(True) // 8)  # the part's motion and noise on top
        full_arg = full if k < 20 else None  # then no full frame: the full-frame pass stretches the ring crop
        motion.process(ring, FrameMeta(frame_id=k, ts=T0_WALL + k, mono=T0_MONO + k, dark_score=dark(ring)), full_arg)
        h = motion.health()["regions"]
        for name, meter in meters.items():
            fraction = meter.measure(ring, full_arg)
            if fraction is None:
                assert h[name]["moving"] is None
                continue
            assert (round(fraction, 4), meter.pixels) == (h[name]["fraction"], h[name]["pixels"]), (k, name)
            compared += 1
    assert compared == 4 * 29 + 2 * 28  # baselines: the first frame, and for the full-frame pass when full frames stop
    assert max(m.pixels for m in meters.values()) > 0 and motion.status.ok


def test_regions_far_apart_or_measured_differently_get_their_own_pass(tmp_path):
    frame, ring = (1024, 768), (256, 192)
    regions = [
        {"name": "nw", "rect": [0, 0, 256, 192]},
        {"name": "nw2", "rect": [256, 0, 256, 192]},  # side by side with nw: shared
        {"name": "se", "rect": [768, 576, 256, 192]},  # the far corner: its own pass
        {"name": "soft", "rect": [0, 192, 256, 192], "blur": 9},  # next to nw, but blurred differently
    ]
    motion, config, *_ = make(tmp_path, regions, frame=frame, ring=ring)
    reg = commands(motion)
    passes = reg.dispatch("regions").body["passes"]
    assert sorted(p_["regions"] for p_ in passes) == [["nw", "nw2"], ["se"], ["soft"]]
    shared = next(p_ for p_ in passes if p_["regions"] == ["nw", "nw2"])
    # The union of both boxes, grown by blur radius 2 + dilation 2 and clipped to the frame.
    assert shared["box"] == [0, 0, 128 + 4, 48 + 4] and shared["blur"] == 5 and shared["dilate"] == 2
    assert next(p_ for p_ in passes if p_["regions"] == ["soft"])["blur"] == 9
    # A global setting that the overriding region does not use moves the others to a pass of their own settings.
    config.set("motion.blur", 9)
    scene_frame = np.zeros((192, 256, 3), np.uint8)
    motion.process(scene_frame, FrameMeta(frame_id=1, ts=T0_WALL, mono=T0_MONO, dark_score=0.0))
    passes = reg.dispatch("regions").body["passes"]
    assert sorted(p_["regions"] for p_ in passes) == [["nw", "nw2", "soft"], ["se"]]


def test_threshold_change_keeps_the_background_and_blur_change_rebuilds_it(tmp_path):
    motion, config, *_ = make(tmp_path, [{"name": "all", "rect": [0, 0, 640, 480], "min_fraction": 0.001}])
    scene = Scene()
    frame_no = iter(range(100))

    def moving_after(frames: int) -> bool | None:
        for _ in range(frames):
            k = next(frame_no)
            _, ring = moving_square(scene, k, (100, 200, 40, 40))  # keeps moving 8 px a frame throughout
            motion.process(ring, FrameMeta(frame_id=k, ts=T0_WALL + k, mono=T0_MONO + k, dark_score=dark(ring)))
        return motion.health()["regions"]["all"]["moving"]

    assert moving_after(3) is True
    config.set("motion.pixel_threshold", 40)
    assert moving_after(1) is True  # judged at once: same pass, same background
    config.set("motion.blur", 9)
    assert moving_after(1) is None  # another blur: the background starts again
    assert moving_after(1) is True
    assert motion.status.ok and motion.measure_errors == 0


def test_dilation_reaches_over_the_edge_but_never_out_of_a_mask(tmp_path):
    # The region ends at ring column 40; a part moves in columns 41..42 (full 164..171), just outside it.
    region = {"name": "r", "rect": [0, 0, 160, 480], "min_pixels": 1}
    near = (164, 200, 8, 40)

    def fraction(tmp, **keys) -> float:
        motion, *_ = make(tmp, [region], blur=0, **keys)
        metas = feed_squares(motion, near, frames=4, toggle=True)
        return max(fraction_of(m, "r") for m in metas[1:])

    assert fraction(tmp_path / "d0", dilate=0) == 0.0
    assert fraction(tmp_path / "d2", dilate=2) > 0  # two rows of dilation reach one column into the region
    assert fraction(tmp_path / "masked", dilate=2, masks=[{"rect": [162, 0, 40, 480]}]) == 0.0


def test_many_regions_share_the_log_queue_bound(tmp_path):
    regions = [{"name": f"r{i}", "rect": [i * 100, 0, 100, 100]} for i in range(5)]
    motion, *_ = make(tmp_path, regions, log_queue_size=10)  # writer not started: the queue only fills
    run(motion, Scene(), 2, 5, lambda t: True)  # 10 frames of 5 regions: 50 records
    stats = motion.health()["log"]
    assert stats["queued"] == 2 and stats["dropped_queue_full"] == 40  # two frames' records fit under 10
    assert motion.status.ok


def test_a_full_frame_of_another_size_falls_back_to_the_ring(tmp_path):
    motion, _, _, status, _ = make(tmp_path, [{"name": "valve", "rect": [300, 200, 40, 40], "min_fraction": 0.02}])
    scene = Scene()
    for k in range(6):
        full, ring = moving_square(scene, k, (306, 206, 12, 12), toggle=True)
        wrong = cv2.resize(full, (320, 240)) if k >= 3 else full  # the camera changed its size under us
        motion.process(ring, FrameMeta(frame_id=k, ts=T0_WALL + k, mono=T0_MONO + k, dark_score=dark(ring)), wrong)
    assert status.ok and motion.measure_errors == 0
    assert motion.health()["regions"]["valve"]["moving"] is not None  # measured again after the one re-baseline


def test_settling_frames_are_logged_as_not_judged(tmp_path):
    motion, _, bus, _, _ = make(tmp_path, log_frames=True)
    scene = Scene()
    motion.start()
    try:
        run(motion, scene, 5, 5, lambda t: True)
        bus.publish("night.enter")
        run(motion, scene, 5, 5, lambda t: True, start=5, first_id=25, night=lambda t: True)
    finally:
        motion.stop()
    records = [json.loads(ln) for ln in (tmp_path / "logs" / "motion_press1.jsonl").read_text().splitlines()]
    assert len(records) == 50
    settling = [r for r in records if r.get("settling")]
    assert len(settling) == 15 and all(r["moving"] is None and r["fraction"] == 0 for r in settling)
    assert records[0]["moving"] is None and records[1]["moving"] is True  # the first frame is the baseline


def test_even_blur_and_fractional_polygon(tmp_path):
    poly = {"name": "half", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]], "min_fraction": 0.001}
    motion, *_ = make(tmp_path, [poly], blur=4)
    feed_squares(motion, (100, 100, 40, 40))
    health = motion.health()
    assert health["regions"]["half"]["moving"] is True and motion.status.ok
    assert parse_regions([poly], FRAME)[0].area_px == pytest.approx(320 * 480)


def test_region_name_must_be_text():
    with pytest.raises(ValueError, match="must be text"):
        check_regions([{"name": 12, "rect": [0, 0, 10, 10]}])
