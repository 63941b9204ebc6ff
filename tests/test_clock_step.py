"""Captures across a step of the wall clock (a Pi without a real-time clock gets the network time after boot).

No name collides and no file is replaced when a restart (frame ids from 1 again) and a step back give a frame
the name of one saved before; retention does not take a name the clock could not have given for the capture's
age: what was named while the clock ran ahead goes before what is made after it stepped back, and what was
named before the clock was set (1970) is not taken for the oldest.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from daemon.capture.ring import FrameMeta, LatestSlot, Ring
from daemon.config import Config
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.storage.export import TEMP_DIR, Exporter

DAY = 86400.0
# 280x300 BGR npy: 252 KB, 62 blocks of 4 KiB; four fit in max_disk_mb 1, a fifth makes retention delete one.
SHAPE = (280, 300, 3)


class Rig:
    def __init__(self, base: Path, **values: object) -> None:
        self.config = Config(
            {
                "export.base_dir": str(base),
                "export.min_free_mb": 0,
                "export.sidecar": False,
                "export.formats": ["npy"],
                **{f"export.{k}": v for k, v in values.items()},
            }
        )
        self.latest = LatestSlot()
        self.status = ComponentStatus("export")
        self.exporter = Exporter(self.config.section("export"), Ring(2, 30, 40), self.latest, EventBus(), self.status)
        self.exporter.start()

    def shoot(self, frame_id: int, ts: float, kind: str = "auto", value: int | None = None) -> Path:
        image = np.full(SHAPE, frame_id % 250 if value is None else value, dtype=np.uint8)
        self.latest.put(image, FrameMeta(frame_id=frame_id, ts=ts, mono=time.monotonic()))
        return self.exporter.save(kind=kind)[0]


def names(base: Path) -> list[str]:
    return sorted(p.stem for p in base.rglob("*.npy") if TEMP_DIR not in p.parts)


def test_a_restart_and_a_step_back_onto_a_saved_name_keep_both_files(tmp_path):
    base = tmp_path / "captures"
    ts = time.time()
    first = Rig(base, sidecar=True).shoot(1, ts, kind="save", value=10)
    # the daemon restarts (frame ids count from 1 again) and the clock is stepped back onto the same millisecond
    second = Rig(base, sidecar=True).shoot(1, ts, kind="save", value=20)
    assert first != second and second.name == first.name.replace("_save.npy", "_save-2.npy")
    assert int(np.load(first)[0, 0, 0]) == 10 and int(np.load(second)[0, 0, 0]) == 20  # the first was not replaced
    for image in (first, second):
        sidecar = json.loads(image.with_suffix(".json").read_text())
        assert sidecar["capture"]["files"] == [image.name]


def test_after_a_step_back_what_was_named_ahead_goes_before_what_is_made_now(tmp_path):
    rig = Rig(tmp_path / "captures", max_disk_mb=1)
    now = time.time()
    older = rig.shoot(1, now - 2 * DAY).stem  # a right clock, two days ago
    ahead = [rig.shoot(2 + k, now + 30 * DAY + k).stem for k in range(2)]  # the clock ran a month ahead
    made_now = [rig.shoot(4, now).stem]  # then it was stepped back to the right time
    assert names(rig.exporter.base_dir) == sorted([older, *ahead, *made_now])
    for k in range(1, 4):
        made_now.append(rig.shoot(4 + k, now + k).stem)
    # three deletions: the two named ahead (older than anything since the step, whatever their names say), then
    # the oldest right name; every capture made after the step is kept
    assert names(rig.exporter.base_dir) == sorted(made_now)
    assert rig.exporter.health()["deleted_by_retention"] == 3


def test_a_capture_made_before_the_clock_was_set_is_not_taken_for_the_oldest(tmp_path):
    rig = Rig(tmp_path / "captures", max_disk_mb=1)
    now = time.time()
    before = [rig.shoot(1 + k, now - DAY + k).stem for k in range(2)]  # yesterday, right clock
    unset = rig.shoot(1, 3 * DAY + 600).stem  # after a reboot, before network time: January 1970
    assert unset.startswith("19700104-")
    made_now = [rig.shoot(2, now).stem]
    for k in range(1, 4):
        made_now.append(rig.shoot(2 + k, now + k).stem)
    # yesterday's two, then the oldest of today's; the 1970 name may be the newest capture and goes last
    assert names(rig.exporter.base_dir) == sorted([unset, *made_now[1:]])
    assert not any(b in names(rig.exporter.base_dir) for b in before)


def test_temp_files_of_a_clock_that_stepped_are_cleared_at_start(tmp_path):
    base = tmp_path / "captures"
    tmp = base / TEMP_DIR
    tmp.mkdir(parents=True)
    now = time.time()
    ahead = tmp / ".20270101-000000.000_f1_auto.x1.tmp.npy"  # left by a power cut while the clock ran a year ahead
    unset = tmp / ".19700104-001000.000_f1_auto.x2.tmp.npy"  # left by one before the clock was set
    for path, mtime in ((ahead, now + 365 * DAY), (unset, 3 * DAY + 600)):
        path.write_bytes(b"partial")
        os.utime(path, (mtime, mtime))
    kept = Rig(base).shoot(1, now)
    Rig(base)  # the next start: no mtime, however wrong, keeps a temp file, and no capture goes with them
    assert not ahead.exists() and not unset.exists() and kept.exists()
