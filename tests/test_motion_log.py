"""The motion logs as written: per-interval summaries always, per-frame lines only when asked.

The writer (`daemon.motion.log.MotionLog`) is fed a known sequence of frame
records and its summary lines are checked figure by figure; the motion
component and the real daemon are then run with their defaults to check that
they write summaries and no per-frame lines.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_proc import Daemon, replies, reply_json, wait_for

from daemon.capture.ring import FrameMeta
from daemon.config import Config
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.motion import Motion
from daemon.motion.log import MotionLog
from daemon.sources.scene import MACHINE_RECT_FRAC

pytestmark = pytest.mark.timeout(60)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def writer(log_dir: Path, *, interval_s: float = 10.0) -> MotionLog:
    return MotionLog(log_dir, max_bytes=lambda: 2 * 2**20, keep=lambda: 5, on_problem=lambda _reason: None, interval_s=lambda: interval_s)


def test_summaries_sum_up_each_interval_of_a_known_sequence(tmp_path):
    log = writer(tmp_path, interval_s=10.0)
    # press1, 2 frames a second from t=1000: the first two not judged (a fresh baseline, then settling),
    # then fraction k/100 for frame k, moving from 0.05 up; the state turns RUNNING at frame 10.
    frames = []
    for k in range(26):
        ts = 1000.0 + k * 0.5
        judged = k >= 2
        fraction = k / 100 if judged else 0.0
        moving = (fraction >= 0.05) if judged else None
        state = "RUNNING" if k >= 10 else "UNKNOWN"
        frames.append((ts, fraction, moving, state))
    # The camera stalls from 1012.5 to 1031; then the clock steps back by a minute.
    frames += [(1031.0, 0.2, True, "RUNNING"), (1032.0, 0.0, False, "RUNNING"), (971.0, 0.0, False, "STOPPED")]
    for i, (ts, fraction, moving, state) in enumerate(frames):
        log.frames(
            [
                ("press1", ts, i, "press1", fraction, round(fraction * 1000), moving, state, moving is None and i == 1),
                ("door", ts, i, "door", 0.5, 500, True, "RUNNING", False),  # a second region, summed up apart
            ]
        )
    log.flush()
    log.stop()  # writes the interval still open
    assert not list(tmp_path.glob("motion_*"))  # no per-frame log by default

    press = read(tmp_path / "summary_press1.jsonl")
    # [1000, 1010): frames 0..19; judged 2..19, fractions 0.02..0.19; moving 5..19.
    judged_fractions = [k / 100 for k in range(2, 20)]
    assert press[0] == {
        "ts": 1000.0,
        "end": 1009.5,
        "region": "press1",
        "frames": 20,
        "judged": 18,
        "moving_frames": 15,
        "mean_fraction": round(float(np.mean(judged_fractions)), 4),
        "max_fraction": 0.19,
        "state": "RUNNING",
    }
    # [1010, 1020): frames 20..25 before the stall.
    assert press[1] == {
        "ts": 1010.0,
        "end": 1012.5,
        "region": "press1",
        "frames": 6,
        "judged": 6,
        "moving_frames": 6,
        "mean_fraction": 0.225,
        "max_fraction": 0.25,
        "state": "RUNNING",
    }
    # Nothing for [1020, 1030): no frame came. [1030, 1040): two frames; then the step back opens [970, 980).
    assert press[2] == {
        "ts": 1031.0,
        "end": 1032.0,
        "region": "press1",
        "frames": 2,
        "judged": 2,
        "moving_frames": 1,
        "mean_fraction": 0.1,
        "max_fraction": 0.2,
        "state": "RUNNING",
    }
    assert press[3] == {
        "ts": 971.0,
        "end": 971.0,
        "region": "press1",
        "frames": 1,
        "judged": 1,
        "moving_frames": 0,
        "mean_fraction": 0.0,
        "max_fraction": 0.0,
        "state": "STOPPED",
    }
    assert len(press) == 4
    door = read(tmp_path / "summary_door.jsonl")
    assert [d["frames"] for d in door] == [20, 6, 2, 1] and all(d["mean_fraction"] == 0.5 == d["max_fraction"] for d in door)
    assert sum(d["frames"] for d in press) == len(frames)
    stats = log.stats()
    assert stats["summaries"] == 8 and stats["written"] == 8


def test_per_frame_lines_when_asked_and_an_interval_no_frame_ends_is_written_soon_after(tmp_path):
    log = writer(tmp_path, interval_s=1.0)
    log.start()
    try:
        start = float(np.floor(time.time())) + 0.25
        for k in range(3):
            log.frames([("press1", start + k * 0.1, k, "press1", 0.01, 10, False, "STOPPED", False)], per_frame=True)
        # No frame of the next second ever comes (the camera stalled): the writer closes it by itself.
        summary = tmp_path / "summary_press1.jsonl"
        assert wait_for(lambda: summary.exists() and summary.read_text().endswith("\n"), timeout=20)
        assert read(summary)[0]["frames"] == 3
        per_frame = read(tmp_path / "motion_press1.jsonl")
        assert [r["frame_id"] for r in per_frame] == [0, 1, 2] and per_frame[0]["fraction"] == 0.01
    finally:
        log.stop()
    assert len(read(tmp_path / "summary_press1.jsonl")) == 1  # stop() had nothing more to write


def test_the_motion_component_logs_summaries_by_default_and_frames_from_when_they_are_turned_on(tmp_path):
    config = Config({"motion.regions": [{"name": "press1", "rect": [0, 0, 0.5, 0.5]}], "motion.log_dir": str(tmp_path)})
    motion = Motion(config.section("motion"), EventBus(history=10), ComponentStatus("motion"), (320, 240), (160, 120))
    rng = np.random.default_rng(1)
    motion.start()
    try:
        t0 = 1_700_000_000.0  # a whole minute: the 150 frames fall into one interval
        for k in range(150):
            if k == 100:
                config.set("motion.log_frames", True)  # live: the next frames are logged one by one
            frame = rng.integers(0, 255, (120, 160, 3), np.uint8)
            motion.process(frame, FrameMeta(frame_id=k, ts=t0 + k * 0.2, mono=50.0 + k * 0.2, dark_score=float(frame.mean())))
    finally:
        motion.stop()
    summary = read(tmp_path / "summary_press1.jsonl")
    assert [(s["frames"], s["ts"], s["end"]) for s in summary] == [(150, t0, round(t0 + 149 * 0.2, 3))]
    assert summary[0]["judged"] == 149 and summary[0]["moving_frames"] == 149  # noise everywhere: every judged frame moves
    assert [r["frame_id"] for r in read(tmp_path / "motion_press1.jsonl")] == list(range(100, 150))


def test_the_daemon_writes_summaries_and_no_per_frame_lines_by_default(tmp_path):
    region = {"name": "machine", "rect": list(MACHINE_RECT_FRAC), "min_fraction": 0.02}
    d = Daemon(tmp_path, overrides={"motion.regions": [region], "camera.framerate": 10.0}).start()
    try:
        first = reply_json(replies(d.cmd("status"))[0])["frame_id"]
        assert wait_for(lambda: reply_json(replies(d.cmd("status"))[0])["frame_id"] >= first + 20, timeout=20), d.log()
        health = reply_json(replies(d.cmd("health"))[0])
        assert health["motion"]["log"]["per_frame"] is False and health["motion"]["log"]["interval_s"] == 60.0
    finally:
        d.stop()
    logs = tmp_path / "logs"
    assert not list(logs.glob("motion_*")), sorted(p.name for p in logs.iterdir())
    summary = read(logs / "summary_machine.jsonl")
    assert summary and all(s["region"] == "machine" and s["frames"] > 0 for s in summary)
    assert sum(s["frames"] for s in summary) >= 20
    assert all(s["ts"] <= s["end"] and s["end"] - s["ts"] < 60 for s in summary)
