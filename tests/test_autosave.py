"""Auto-save: wall-clock alignment, day and night kinds, live interval, missed slots, clock steps, errors, the thread."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from daemon.capture.ring import FrameMeta, LatestSlot, Ring
from daemon.config import Config
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.storage.autosave import AutoSaver, slot_at_or_after, slot_at_or_before, steady_clock
from daemon.storage.export import Exporter


def local(y, mo, d, h, mi, s=0.0) -> float:
    return time.mktime((y, mo, d, h, mi, int(s), 0, 0, -1)) + (s - int(s))


class Clock:
    """The wall clock a test sets, and a steady clock that moves with it (time passing) except across step()."""

    def __init__(self, t: float) -> None:
        self.t = t
        self._stepped = 0.0

    def __call__(self) -> float:
        return self.t

    def steady(self) -> float:
        return self.t - self._stepped

    def step(self, by: float) -> None:
        """The wall clock is set (network time arriving, a person): it moves, the steady clock does not."""
        self.t += by
        self._stepped += by


class Rig:
    def __init__(self, tmp_path: Path, clock=time.time, night: bool = False, **values) -> None:
        settings = {"export.base_dir": str(tmp_path / "captures"), "export.min_free_mb": 0, "export.auto_save_interval_s": 3600}
        settings.update({f"export.{k}": v for k, v in values.items()})
        self.config = Config(settings)
        self.latest = LatestSlot()
        self.bus = EventBus()
        self.night = night
        self.base = tmp_path / "captures"
        self.exporter = Exporter(self.config.section("export"), Ring(4, 30, 40), self.latest, self.bus, ComponentStatus("export"))
        self.exporter.start()
        self.status = ComponentStatus("autosave")
        self.saver = AutoSaver(
            self.config.section("export"),
            self.exporter,
            lambda: self.night,
            self.status,
            clock=clock,
            steady=clock.steady if isinstance(clock, Clock) else steady_clock,
        )
        self.next_id = 1

    def frame(self, ts: float) -> None:
        img = np.full((48, 64, 3), self.next_id % 200, dtype=np.uint8)
        self.latest.put(img, FrameMeta(frame_id=self.next_id, ts=ts, mono=time.monotonic()))
        self.next_id += 1

    def files(self) -> list[Path]:
        return sorted(p for p in self.base.rglob("*") if p.is_file() and p.suffix != ".json" and p.name != ".picamd.lock")


def test_slot_boundaries_follow_the_local_clock():
    t = local(2024, 6, 1, 12, 7, 30.5)
    assert slot_at_or_before(t, 3600) == local(2024, 6, 1, 12, 0)
    assert slot_at_or_after(t, 3600) == local(2024, 6, 1, 13, 0)
    assert slot_at_or_after(t, 900) == local(2024, 6, 1, 12, 15)
    assert slot_at_or_after(t, 86400) == local(2024, 6, 2, 0, 0)
    on = local(2024, 6, 1, 12, 0)
    assert slot_at_or_after(on, 3600) == on == slot_at_or_before(on, 3600)


def test_alignment_in_a_half_hour_time_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+5:30: the local hour starts at :30 UTC
    time.tzset()
    try:
        utc_1210 = 1717243800.0  # 2024-06-01 12:10:00 UTC = 17:40 in India
        due = slot_at_or_after(utc_1210, 3600)
        assert due == 1717245000.0  # 18:00 India = 12:30 UTC
        assert time.strftime("%H:%M:%S", time.localtime(due)) == "18:00:00"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_daily_slots_stay_at_local_midnight_across_daylight_saving(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        # spring forward and fall back happen at 02:00/03:00 on these days
        for (y, mo, d), next_day in (((2024, 3, 31), (2024, 4, 1)), ((2024, 10, 27), (2024, 10, 28))):
            before_switch = local(y, mo, d, 1, 0)
            after = slot_at_or_after(before_switch, 86400)
            assert time.localtime(after)[:6] == (*next_day, 0, 0, 0)
            assert time.localtime(slot_at_or_before(after + 7200, 86400))[:6] == (*next_day, 0, 0, 0)
            assert time.localtime(slot_at_or_before(local(y, mo, d, 12, 0), 86400))[:6] == (y, mo, d, 0, 0, 0)
            assert time.localtime(slot_at_or_after(local(y, mo, d, 4, 10), 3600))[3:5] == (5, 0)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_day_slot_saves_one_frame_on_the_hour(tmp_path):
    clock = Clock(local(2024, 6, 1, 11, 59, 0))
    rig = Rig(tmp_path, clock)
    rig.frame(clock.t)
    assert rig.saver.tick() == pytest.approx(60.0)
    assert rig.saver.next_due() == local(2024, 6, 1, 12, 0) and rig.files() == []
    clock.t = local(2024, 6, 1, 12, 0, 0.2)
    rig.frame(clock.t - 0.1)
    wait = rig.saver.tick()
    files = rig.files()
    assert [p.name for p in files] == ["20240601-120000.100_f2_auto.jpg"]  # auto_save_format jpg
    assert wait == pytest.approx(3600 - 0.2) and rig.saver.next_due() == local(2024, 6, 1, 13, 0)
    clock.t += 1
    rig.saver.tick()
    assert len(rig.files()) == 1  # one save per slot
    health = rig.saver.health()
    assert health["saved"] == 1 and health["last"]["ok"] and health["last"]["kind"] == "auto"
    assert health["next_due_local"] == "2024-06-01 13:00:00" and health["state"] == "ok"


def test_quarter_hour_slots_and_live_interval_change(tmp_path):
    clock = Clock(local(2024, 6, 1, 12, 5, 0))
    rig = Rig(tmp_path, clock)
    rig.saver.tick()
    assert rig.saver.next_due() == local(2024, 6, 1, 13, 0)
    rig.config.set("export.auto_save_interval_s", 900)  # takes effect at the next look, without a restart
    assert rig.saver.tick() == pytest.approx(600.0)
    assert rig.saver.next_due() == local(2024, 6, 1, 12, 15)
    for minute in (15, 30, 45):
        clock.t = local(2024, 6, 1, 12, minute, 1.0)
        rig.frame(clock.t)
        rig.saver.tick()
    assert [p.name[9:15] for p in rig.files()] == ["121501", "123001", "124501"]
    assert rig.saver.next_due() == local(2024, 6, 1, 13, 0)


def test_night_saves_a_stack_or_one_frame(tmp_path):
    clock = Clock(local(2024, 6, 1, 22, 59, 59))
    rig = Rig(tmp_path, clock, night=True, stack_count=4, auto_save_format="png")
    rig.frame(clock.t)
    rig.saver.tick()
    clock.t = local(2024, 6, 1, 23, 0, 0)
    stop = threading.Event()

    def camera():
        while not stop.wait(0.01):
            rig.frame(clock.t)

    feeder = threading.Thread(target=camera, daemon=True)
    feeder.start()
    try:
        rig.saver.tick()
    finally:
        stop.set()
        feeder.join(5)
    (stacked,) = rig.files()
    assert stacked.name.endswith("_autostack.png")
    cap = json.loads(stacked.with_suffix(".json").read_text())["capture"]
    assert cap["kind"] == "autostack" and cap["frames"] == 4 and cap["method"] == "mean"
    rig.config.set("export.night_auto_save", "frame")
    clock.t = local(2024, 6, 2, 0, 0, 0)
    rig.frame(clock.t)
    rig.saver.tick()
    assert [p.name.rsplit("_", 1)[1] for p in rig.files()] == ["autostack.png", "auto.png"]
    assert rig.saver.health()["saved"] == 2


def test_missed_slots_are_skipped_not_back_filled(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="picamd.autosave")
    clock = Clock(local(2024, 6, 1, 12, 30))
    rig = Rig(tmp_path, clock)
    rig.saver.tick()  # next at 13:00
    clock.t = local(2024, 6, 1, 14, 30)  # suspended from 12:30 to 14:30: 13:00 and 14:00 passed
    rig.frame(clock.t)
    assert rig.saver.tick() == pytest.approx(1800.0)
    assert rig.files() == [] and rig.saver.next_due() == local(2024, 6, 1, 15, 0)
    assert rig.saver.health()["skipped"] == 2
    assert "2024-06-01 13:00:00 .. 2024-06-01 14:00:00 (2 slots) skipped" in caplog.text
    assert "not back-filled" in caplog.text
    # woke 20 s after 16:00 with 15:00 missed: 15:00 is skipped, 16:00 is still fresh enough to save
    clock.t = local(2024, 6, 1, 16, 0, 20)
    rig.frame(clock.t)
    rig.saver.tick()
    assert [p.name[9:15] for p in rig.files()] == ["160020"]
    assert rig.saver.health()["skipped"] == 3
    # 30 s late is within the grace of min(60 s, interval / 2): saved
    clock.t = local(2024, 6, 1, 17, 0, 30)
    rig.frame(clock.t)
    rig.saver.tick()
    assert len(rig.files()) == 2 and rig.saver.health()["saved"] == 2


def test_clock_going_back_reschedules(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="picamd.autosave")
    clock = Clock(local(2024, 6, 1, 12, 30))
    rig = Rig(tmp_path, clock)
    rig.saver.tick()
    clock.step(local(2024, 6, 1, 9, 10) - clock.t)  # NTP stepped the clock back
    rig.saver.tick()
    assert rig.saver.next_due() == local(2024, 6, 1, 10, 0)
    assert "the wall clock stepped back by 03:20:00" in caplog.text
    assert rig.saver.health()["clock_steps"] == 1 and rig.saver.health()["skipped"] == 0


def test_no_clock_at_boot_then_network_time_realigns_without_back_filling(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="picamd.autosave")
    clock = Clock(86400.0 * 3 + 600)  # a Pi without a real-time clock boots in January 1970
    rig = Rig(tmp_path, clock)
    rig.frame(clock.t)
    rig.saver.tick()
    assert rig.saver.next_due() == slot_at_or_after(clock.t, 3600)
    clock.t += 30
    clock.step(local(2024, 6, 1, 12, 20) - clock.t)  # network time arrives: 54 years forward
    rig.frame(clock.t)
    for _ in range(3):  # the step is logged once, not on every look
        rig.saver.tick()
        clock.t += 1
    health = rig.saver.health()
    assert rig.files() == [] and rig.saver.next_due() == local(2024, 6, 1, 13, 0)
    assert health["skipped"] == 0 and health["clock_steps"] == 1 and health["last_clock_step"]["by_s"] > 54 * 365 * 86400
    assert caplog.text.count("the wall clock stepped forward") == 1
    assert caplog.text.count("re-aligned to the new time: next at 2024-06-01 13:00:00") == 1
    clock.t = local(2024, 6, 1, 13, 0, 0.5)  # then time passes as usual
    rig.frame(clock.t)
    rig.saver.tick()
    assert [p.name[9:15] for p in rig.files()] == ["130000"] and rig.saver.health()["saved"] == 1


def test_a_step_forward_onto_a_slot_saves_it_with_a_frame_of_now(tmp_path):
    clock = Clock(local(2024, 6, 1, 8, 0, 30))
    rig = Rig(tmp_path, clock)
    rig.saver.tick()  # next at 09:00
    clock.step(local(2024, 6, 1, 13, 0, 20) - clock.t)  # corrected to 20 s after 13:00: a fresh frame is that slot's image
    rig.frame(clock.t)
    rig.saver.tick()
    assert [p.name[9:15] for p in rig.files()] == ["130020"]
    assert rig.saver.health()["skipped"] == 0 and rig.saver.next_due() == local(2024, 6, 1, 14, 0)


def test_a_step_back_over_the_slot_just_saved_does_not_save_it_again(tmp_path):
    clock = Clock(local(2024, 6, 1, 12, 59, 50))
    rig = Rig(tmp_path, clock)
    rig.saver.tick()
    clock.t = local(2024, 6, 1, 13, 0, 0.2)
    rig.frame(clock.t)
    rig.saver.tick()
    assert len(rig.files()) == 1
    clock.t += 30
    clock.step(-40.0)  # 12:59:50.2 again
    rig.saver.tick()
    assert rig.saver.next_due() == local(2024, 6, 1, 14, 0)
    clock.t = local(2024, 6, 1, 13, 0, 5)  # 13:00 comes round a second time: already saved
    rig.frame(clock.t)
    rig.saver.tick()
    assert len(rig.files()) == 1 and rig.saver.health()["saved"] == 1
    clock.t = local(2024, 6, 1, 14, 0, 0.1)
    rig.frame(clock.t)
    rig.saver.tick()
    assert len(rig.files()) == 2 and rig.saver.health()["clock_steps"] == 1


def test_small_corrections_are_not_steps(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="picamd.autosave")
    clock = Clock(local(2024, 6, 1, 12, 59, 58))
    rig = Rig(tmp_path, clock)
    rig.saver.tick()
    clock.step(3.0)  # a few seconds: the slot at 13:00 is kept and saved
    rig.frame(clock.t)
    rig.saver.tick()
    assert len(rig.files()) == 1 and rig.saver.health()["clock_steps"] == 0 and "stepped" not in caplog.text


def test_zero_turns_auto_save_off_and_back_on(tmp_path):
    clock = Clock(local(2024, 6, 1, 12, 30))
    rig = Rig(tmp_path, clock)
    rig.saver.tick()
    rig.config.set("export.auto_save_interval_s", 0)
    rig.saver.tick()
    assert rig.saver.next_due() is None
    for hour in (13, 14, 15):
        clock.t = local(2024, 6, 1, hour, 0)
        rig.frame(clock.t)
        rig.saver.tick()
    assert rig.files() == []
    health = rig.saver.health()
    assert health["enabled"] is False and health["next_due"] is None and health["saved"] == 0
    rig.config.set("export.auto_save_interval_s", 1800)
    rig.saver.tick()
    assert rig.saver.next_due() == local(2024, 6, 1, 15, 30)


def test_failures_are_recorded_and_recover(tmp_path):
    clock = Clock(local(2024, 6, 1, 11, 30))
    rig = Rig(tmp_path, clock)
    rig.saver.tick()
    clock.t = local(2024, 6, 1, 12, 0)
    rig.saver.tick()  # no frame at all yet
    assert rig.saver.health()["last"]["error"] == "no frame yet"
    clock.t = local(2024, 6, 1, 13, 0)
    rig.frame(clock.t - 7200)  # the camera stalled two hours ago: its last frame is not this slot's image
    rig.saver.tick()
    assert "the newest frame is 7200 s old" in rig.saver.health()["last"]["error"]
    clock.t = local(2024, 6, 1, 14, 0)
    rig.frame(clock.t)
    rig.config.set("export.min_free_mb", 10_000_000)
    rig.saver.tick()  # a full disk is recorded, the loop goes on
    health = rig.saver.health()
    assert health["failed"] == 3 and health["last"]["error"].startswith("disk full")
    assert rig.status.state.startswith("degraded (last auto-save failed: disk full")
    assert rig.files() == []
    rig.config.set("export.min_free_mb", 0)
    clock.t = local(2024, 6, 1, 15, 0)
    rig.frame(clock.t)
    rig.saver.tick()
    assert len(rig.files()) == 1 and rig.status.ok and rig.saver.health()["saved"] == 1


def test_the_thread_saves_on_the_real_clock_and_stops(tmp_path):
    rig = Rig(tmp_path, auto_save_interval_s=0)
    saved = threading.Event()
    rig.bus.subscribe("export.saved", lambda e: saved.set())
    stop = threading.Event()

    def camera():
        while not stop.wait(0.02):
            rig.frame(time.time())

    feeder = threading.Thread(target=camera, daemon=True)
    feeder.start()
    rig.saver.start()
    try:
        assert rig.saver.next_due() is None
        rig.config.set("export.auto_save_interval_s", 1)  # wakes the idle thread: slots on every second
        assert saved.wait(20), rig.saver.health()
    finally:
        rig.saver.stop()
        stop.set()
        feeder.join(5)
    assert not [t for t in threading.enumerate() if t.name == "picamd-autosave"]
    assert all(p.name.endswith("_auto.jpg") for p in rig.files()) and rig.files()


def test_stop_abandons_a_night_stack_waiting_for_frames(tmp_path, monkeypatch):
    rig = Rig(tmp_path, night=True, auto_save_interval_s=1)
    rig.frame(time.time())
    started = threading.Event()
    real_stack_next = rig.exporter.stack_next

    def watched_stack_next(*args, **kwargs):
        started.set()
        return real_stack_next(*args, **kwargs)

    monkeypatch.setattr(rig.exporter, "stack_next", watched_stack_next)
    rig.saver.start()
    assert started.wait(20)  # the slot came and the stack waits for frames that never arrive
    rig.saver.stop()
    assert not [t for t in threading.enumerate() if t.name == "picamd-autosave"]
    assert rig.files() == [] and rig.saver.health()["failed"] == 0
