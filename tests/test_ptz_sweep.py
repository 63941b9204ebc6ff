"""Sweeps in-process: the real Ptz component against the VISCA simulator, real photos per preset, the real detector;
the report's files, errors, cancel, retention, the schedule, motion pausing, and the report's delivery."""

from __future__ import annotations

import base64
import csv
import email
import io
import json
import logging
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from aiosmtpd.controller import Controller
from daemon_proc import free_port, wait_for
from images import read_image
from ptz_scene import PEOPLE, FrameFeeder, SnapshotServer, photo, photo_of
from smtp_mailbox import Mailbox
from visca_sim import ViscaCamera

from daemon.capture.ring import FrameMeta
from daemon.commands import Registry
from daemon.config import Config
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.motion import Motion
from daemon.notify import Notifier
from daemon.ptz.client import PtzError
from daemon.ptz.component import Ptz, PtzOff
from daemon.ptz.counting import DetectorCounter
from daemon.ptz.delivery import report_channels
from daemon.ptz.pictures import CameraPictures, MeasureSettings
from daemon.ptz.presets import load_presets_file, merged_presets, parse_selection
from daemon.ptz.report import prune_runs, recover_partials, runs
from daemon.ptz.schedule import check_times, last_slot, next_slot
from daemon.ptz.sweep import Busy

PRESETS = [{"number": n, "name": name} for n, name in ((1, "Entrance"), (2, "Coffee bar"), (3, "Studio"), (4, "Cat corner"))]


@pytest.fixture(scope="module")
def camera():
    cam = ViscaCamera(move_time_s=0.2).start()
    yield cam
    cam.stop()


@pytest.fixture
def feeder(camera):
    camera.faults = type(camera.faults)()
    camera.move_time_s = 0.2
    f = FrameFeeder(camera, fps=30).start()
    yield f
    f.stop()


class Rig:
    def __init__(self, tmp_path: Path, camera: ViscaCamera, feeder: FrameFeeder, **values) -> None:
        base = {
            "ptz.enabled": True,
            "ptz.host": "127.0.0.1",
            "ptz.port": camera.tcp_port,
            "ptz.timeout_s": 0.5,
            "ptz.move_timeout_s": 5.0,
            "ptz.presets": PRESETS,
            "ptz.settle_s": 2.0,
            "motion.settle_s": 0.4,
        }
        base.update(values)
        self.config = Config(base)
        self.bus = EventBus(history=2000)
        self.status = ComponentStatus("ptz")
        self.events: list = []
        self.bus.subscribe("ptz.", self.events.append)
        self.tmp = tmp_path
        self.ptz = Ptz(
            self.config.section("ptz"),
            self.bus,
            self.status,
            camera_pictures=CameraPictures(feeder.ring, feeder.latest, MeasureSettings),
            count_people=DetectorCounter(self.config.section("detect")),
            base_dir=lambda: tmp_path,
            motion_settle_s=lambda: float(self.config.get("motion.settle_s")),
        )
        self.ptz.start()

    def sweep(self, numbers=None, timeout: float = 30.0):
        run = self.ptz.sweeper.start(self.ptz.select(numbers))
        assert self.ptz.sweeper.wait(timeout), "the sweep did not end"
        return run

    def done(self):
        return [e for e in self.events if e.kind.startswith("ptz.sweep.")]


@pytest.fixture
def rig_factory(tmp_path, camera, feeder):
    rigs = []

    def make(**values) -> Rig:
        rig = Rig(tmp_path, camera, feeder, **values)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.ptz.stop()


def read_csv(folder: Path) -> list[dict[str, str]]:
    with open(folder / "results" / "count_results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("protocol", ["visca-tcp", "visca-udp"])
def test_a_sweep_counts_the_people_of_each_preset_and_writes_the_whole_report(rig_factory, camera, protocol):
    port = camera.tcp_port if protocol == "visca-tcp" else camera.udp_port
    rig = rig_factory(**{"ptz.protocol": protocol, "ptz.port": port})
    run = rig.sweep()
    (event,) = rig.done()
    assert event.kind == "ptz.sweep.done" and event.data["status"] == "done" and event.data["ok"] == 4
    folder = Path(event.data["folder"])
    assert folder.name == run.id and folder.parent == rig.tmp / "sweeps" and not list(folder.parent.glob(".*"))
    rows = read_csv(folder)
    assert [r["preset"] for r in rows] == ["1", "2", "3", "4"] and rows[1]["name"] == "Coffee bar"
    assert [int(r["people"]) for r in rows] == [PEOPLE[photo_of(n)] for n in (1, 2, 3, 4)] == [1, 0, 1, 0]
    assert all(r["error"] == "" and r["time"] and float(r["settle_s"]) >= 0 for r in rows)
    for n, row in zip((1, 2, 3, 4), run.rows, strict=True):
        raw = read_image(folder / row.raw)
        assert raw.shape == (480, 640, 3)
        # The settled picture is the preset's photo, not a frame from the move (those are shifted copies).
        assert float(np.mean(cv2.absdiff(raw, photo(photo_of(n))))) < 4.0
        annotated = read_image(folder / row.annotated)
        assert annotated.shape == raw.shape and float(np.mean(cv2.absdiff(annotated, raw))) > 1.0
        assert row.settled and row.move_s is not None and row.move_s >= camera.move_time_s
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "done" and summary["people"] == 2 and summary["presets"] == 4
    assert summary["results"][0]["detections"][0]["label"] == "person"
    with zipfile.ZipFile(event.data["zip"]) as zf:
        names = set(zf.namelist())
        assert zf.testzip() is None
        assert zf.read(f"{run.id}/results/count_results.csv") == (folder / "results" / "count_results.csv").read_bytes()
    assert {f"{run.id}/raw_images/p002_coffee_bar.jpg", f"{run.id}/annotated_images/p004_cat_corner.jpg", f"{run.id}/summary.json"} <= names
    assert Path(event.data["zip"]).name == f"ptz_capture_results_{run.id.removeprefix('run_')}.zip"


def test_every_move_pauses_motion_through_its_reset_path(rig_factory, camera, feeder, tmp_path):
    """ptz.moving at the start of each move, again while it lasts and at the end; Motion, fed every frame like the capture
    loop feeds it, takes it as a reset: no frame of a move is judged."""
    camera.move_time_s = 1.5
    rig = rig_factory(
        **{
            "motion.settle_s": 1.0,
            "motion.log_dir": str(tmp_path / "logs"),
            "motion.regions": [{"name": "door", "rect": [0, 0, 0.5, 0.5], "min_fraction": 0.05}],
        }
    )
    motion = Motion(rig.config.section("motion"), rig.bus, ComponentStatus("motion"), (640, 480), (160, 120))
    feeder.stages.append(motion)
    rig.sweep([1, 2])
    feeder.stages.clear()
    moving = [e for e in rig.events if e.kind == "ptz.moving"]
    for preset in (1, 2):
        mine = [e for e in moving if e.data["preset"] == preset]
        phases = [e.data["phase"] for e in mine]
        assert phases[0] == "start" and phases[-1] == "stopped" and "moving" in phases
        during = [m for m in feeder.metas if mine[0].ts < m.ts <= mine[-1].ts]
        assert len(during) > 10 and all(m.extra.get("motion_settling") is True for m in during)
    assert motion.last_reset is not None and motion.last_reset["reason"] == "ptz.moving"


def test_each_preset_is_watched_with_its_own_motion_regions(rig_factory, feeder, tmp_path):
    """A preset with regions of its own is measured with them while the camera is there (an empty list: none), one
    without them with motion.regions; every move that ends says where the camera is (ptz.view)."""
    rig = rig_factory(
        **{
            "motion.settle_s": 0.2,
            "motion.log_dir": str(tmp_path / "logs"),
            "motion.regions": [{"name": "door", "rect": [0, 0, 0.5, 0.5]}],
            "ptz.presets": [
                {
                    "number": 1,
                    "name": "Entrance",
                    "regions": [{"name": "press1", "rect": [0.5, 0.5, 0.4, 0.4]}, {"name": "belt1", "rect": [0, 0, 0.2, 0.2]}],
                },
                {"number": 2, "name": "Coffee bar", "regions": []},
                {"number": 3, "name": "Studio"},
            ],
        }
    )
    motion = Motion(rig.config.section("motion"), rig.bus, ComponentStatus("motion"), (640, 480), (160, 120))
    feeder.stages.append(motion)
    rig.sweep([1, 2, 3])
    time.sleep(0.3)  # frames at preset 3
    feeder.stages.clear()
    views = [e for e in rig.events if e.kind == "ptz.view"]
    assert [(e.data["preset"], e.data["name"]) for e in views] == [(1, "Entrance"), (2, "Coffee bar"), (3, "Studio")]
    assert views[1].data["regions"] == [] and views[2].data["regions"] is None

    def headers(after: float, before: float) -> set[str]:
        # A frame is measured with the new regions from the first one after the event (0.05 s of margin for the swap).
        seen = [m.extra.get("motion", "") for m in feeder.metas if after + 0.05 < m.ts < before]
        return {";".join(part.split("=")[0] for part in header.split(";")) for header in seen}

    assert headers(views[0].ts, views[1].ts) == {"press1;belt1"}
    assert headers(views[1].ts, views[2].ts) == {""}  # preset 2: no regions at all
    assert headers(views[2].ts, time.time()) == {"door"}
    assert motion.watching() == {"from": "motion.regions", "preset": 3, "preset_name": "Studio"}
    assert rig.ptz.health()["view"] == {"preset": 3, "name": "Studio"}
    # The regions the camera moved away from stay listed (a dashboard keeps its machines), unwatched and UNKNOWN.
    listed = [(st["name"], st["watched"], st["watched_from"], st["state"]) for st in motion.region_states()]
    assert listed[0][:3] == ("door", True, "motion.regions")
    assert sorted(listed[1:]) == [("belt1", False, "preset 1", "UNKNOWN"), ("press1", False, "preset 1", "UNKNOWN")]
    # Back at preset 1 with one region fewer: the one its preset no longer has is forgotten, door waits unwatched.
    presets = rig.config.get("ptz.presets")
    rig.config.set("ptz.presets", [{**presets[0], "regions": presets[0]["regions"][:1]}, *presets[1:]])
    feeder.stages.append(motion)
    rig.sweep([1])
    time.sleep(0.3)
    feeder.stages.clear()
    again = [(st["name"], st["watched"], st["watched_from"]) for st in motion.region_states()]
    assert again == [("press1", True, "preset 1"), ("door", False, "motion.regions")]


def test_motion_masks_apply_at_every_preset_and_a_presets_masks_add_to_them(tmp_path):
    """A burnt-in clock (motion.masks) stays masked whatever the camera looks at; a preset's own masks (a tree in
    that view) are added while it is shown, to its own regions or to motion.regions."""
    config = Config(
        {
            "motion.log_dir": str(tmp_path / "logs"),
            "motion.regions": [{"name": "door", "rect": [0, 0, 320, 240]}],
            "motion.masks": [[0, 0, 640, 60]],  # the clock along the top
        }
    )
    bus = EventBus()
    motion = Motion(config.section("motion"), bus, ComponentStatus("motion"), (640, 480), (160, 120))
    frame = np.zeros((120, 160, 3), np.uint8)
    frame_id = [0]

    def measured() -> dict[str, int]:
        frame_id[0] += 1
        motion.process(frame, FrameMeta(frame_id=frame_id[0], ts=time.time(), mono=time.monotonic()))
        return {g["name"]: g["measured_pixels"] for g in motion.layout()["active"]}

    door = measured()["door"]  # 320x240 less the clock's 320x60, on the 160x120 ring: about 80 x 45 (the mask's edge row)
    assert abs(door - 80 * 45) <= 80
    bus.publish("ptz.view", preset=1, name="Press", regions=[{"name": "press", "rect": [0, 0, 320, 240]}], masks=None)
    assert measured() == {"press": door}  # its own region, the clock still masked
    bus.publish("ptz.view", preset=2, name="Yard", regions=None, masks=[[0, 60, 320, 60]])  # a tree under the clock
    with_tree = measured()["door"]
    assert abs(with_tree - 80 * 30) <= 160 and with_tree < door
    regions, masks, source = motion.watched()
    assert source == "motion.regions" and masks == [[0, 0, 640, 60], [0, 60, 320, 60]]
    bus.publish("ptz.view", preset=None, name=None, regions=None, masks=None)
    assert measured() == {"door": door}


def test_preset_regions_are_checked_like_motion_regions():
    from daemon.config import Config, ConfigError

    with pytest.raises(ValueError, match=r"preset 4: region 'a': .*"):
        merged_presets([{"number": 4, "regions": [{"name": "a", "rect": [0.5, 0.5, 0.8, 0.2]}]}], "")
    assert merged_presets([{"number": 4, "masks": [[0, 0, 10, 10]]}], "")[0].masks == [[0, 0, 10, 10]]  # added to motion.masks
    with pytest.raises(ValueError, match="preset 4: regions must be a list"):
        merged_presets([{"number": 4, "regions": "door"}], "")
    with pytest.raises(ConfigError, match=r"ptz\.presets: .*preset 4: region 'a'"):
        Config({"ptz.presets": [{"number": 4, "regions": [{"name": "a", "rect": [0.5, 0.5, 0.8, 0.2]}]}]})
    ok = merged_presets([{"number": 4, "regions": [{"name": "a", "rect": [0, 0, 10, 10]}], "masks": [[0, 0, 5, 5]]}], "")
    assert ok[0].to_dict()["regions"] == [{"name": "a", "rect": [0, 0, 10, 10]}] and ok[0].masks == [[0, 0, 5, 5]]


def test_the_picture_waits_until_the_image_stands_still(rig_factory, feeder):
    feeder.view.wobble_s = 0.5  # the head sways for half a second after the camera reports it arrived
    rig = rig_factory()
    run = rig.sweep([3])
    row = run.rows[0]
    assert row.settled and row.settle_s >= 0.5 and row.people == 1
    raw = read_image(Path(rig.done()[0].data["folder"]) / row.raw)
    assert float(np.mean(cv2.absdiff(raw, photo("camera")))) < 4.0
    feeder.view.wobble_s = 5.0  # longer than settle_s: the picture is taken anyway, marked unsettled
    rig.config.set("ptz.settle_s", 0.3)
    run = rig.sweep([2])
    assert run.rows[0].settled is False and run.rows[0].error is None and run.status == "done"


def test_a_failing_preset_is_one_error_row_and_the_report_is_complete(rig_factory, camera):
    camera.faults.preset_errors = {2: 0x41}
    rig = rig_factory()
    run = rig.sweep()
    (event,) = rig.done()
    assert event.kind == "ptz.sweep.done" and run.status == "partial" and event.data["failed"] == 1
    rows = read_csv(Path(event.data["folder"]))
    assert "refused recall preset 2: command not executable" in rows[1]["error"] and rows[1]["people"] == ""
    assert [r["people"] for r in rows] == ["1", "", "1", "0"] and [r["error"] for r in (rows[0], rows[2], rows[3])] == ["", "", ""]
    with zipfile.ZipFile(event.data["zip"]) as zf:
        raws = sorted(n for n in zf.namelist() if "/raw_images/" in n)
    assert [n.rsplit("/", 1)[1] for n in raws] == ["p001_entrance.jpg", "p003_studio.jpg", "p004_cat_corner.jpg"]
    camera.faults.preset_errors = {1: 0x41, 2: 0x41, 3: 0x41, 4: 0x41}
    rig.sweep()
    failed = rig.done()[-1]
    assert failed.kind == "ptz.sweep.failed" and failed.data["ok"] == 0 and Path(failed.data["csv"]).exists()


def test_cancel_leaves_a_consistent_partial_report(rig_factory, camera):
    camera.move_time_s = 0.8
    rig = rig_factory()
    run = rig.ptz.sweeper.start(rig.ptz.select(None))
    with pytest.raises(Busy, match=f"sweep {run.id} running"):
        rig.ptz.sweeper.start(rig.ptz.select([1]))
    assert wait_for(lambda: run.rows[1].state == "moving", timeout=10)
    assert rig.ptz.sweeper.cancel("tester") is run
    assert rig.ptz.sweeper.wait(10)
    (event,) = rig.done()
    assert run.status == "cancelled" and event.data["status"] == "cancelled"
    rows = read_csv(Path(event.data["folder"]))
    assert rows[0]["people"] == "1" and rows[0]["error"] == ""
    assert [r["error"] for r in rows[1:]] == [
        "cancelled while moving to this preset",
        "not reached: the sweep was cancelled",
        "not reached: the sweep was cancelled",
    ]
    summary = json.loads(Path(event.data["summary"]).read_text())
    assert summary["status"] == "cancelled" and summary["cancelled_by"] == "tester" and summary["ok"] == 1
    with zipfile.ZipFile(event.data["zip"]) as zf:
        assert zf.testzip() is None and any(n.endswith("raw_images/p001_entrance.jpg") for n in zf.namelist())
    assert "stop" in camera.executed  # the camera was stopped, not left moving to preset 2


def test_a_cancel_while_settling_says_so_and_counts_no_preset_done(rig_factory, camera):
    # Threshold 0: the picture never settles early, so the sweep stays settling at preset 1 for settle_s.
    rig = rig_factory(**{"ptz.settle_threshold": 0.0, "ptz.settle_s": 5.0})
    registry = Registry()
    rig.ptz.register_commands(registry)
    run = rig.ptz.sweeper.start(rig.ptz.select([1, 2, 3]))
    assert wait_for(lambda: run.rows[0].state == "settling", timeout=10)
    assert registry.dispatch("sweep cancel").ok
    assert rig.ptz.sweeper.wait(10)
    assert [(r.state, r.error) for r in run.rows] == [
        ("cancelled", "cancelled while settling at this preset, before its picture"),
        ("cancelled", "not reached: the sweep was cancelled"),
        ("cancelled", "not reached: the sweep was cancelled"),
    ]
    status = registry.dispatch("sweep status")
    assert status.first_line() == f"OK sweep {run.id} cancelled: 0 of 3 presets done, 0 people"
    assert status.body["presets_done"] == 0 and rig.ptz.health()["sweep"]["presets_done"] == 0
    (event,) = rig.done()
    assert event.data["text"].startswith(f"sweep {run.id} cancelled: 0 people at 0 of 3 presets")


def test_snapshot_pictures_with_basic_auth(rig_factory, camera):
    snap = SnapshotServer(camera, user="admin", password="s3cret-pw")
    try:
        rig = rig_factory(**{"ptz.snapshot_url": snap.url("admin:s3cret-pw")})
        run = rig.sweep([1, 2])
        assert [r.people for r in run.rows] == [1, 0] and run.status == "done"
        assert rig.ptz.health()["sweep"]["status"] == "done"
        rig.config.set("ptz.snapshot_url", snap.url("admin:wrong"))
        run = rig.sweep([1])
        assert "the camera refused the login" in run.rows[0].error and "wrong" not in run.rows[0].error
    finally:
        snap.close()


def test_scheduled_sweeps_start_when_a_slot_begins(rig_factory):
    rig = rig_factory(**{"ptz.sweep_every_min": 1.0})
    armed = time.time()
    slot = last_slot(armed + 60, 1.0, [])
    assert slot is not None
    rig.ptz.tick(slot + 1)  # the first slot after the component started
    assert rig.ptz.sweeper.wait(30) and rig.ptz.scheduled_runs == 1 and rig.done()[0].data["trigger"] == "schedule"
    rig.ptz.tick(slot + 2)  # the same slot again: nothing
    assert rig.ptz.scheduled_runs == 1 and rig.ptz.skipped_slots == 0
    rig.config.set("ptz.sweep_every_min", 0)
    later = slot + 3600
    rig.config.set("ptz.sweep_at", [time.strftime("%H:%M", time.localtime(later))])
    rig.ptz.tick(later + 90)  # a slot begun 90 s ago is skipped, not run late
    assert rig.ptz.scheduled_runs == 1 and rig.ptz.skipped_slots == 1


def test_schedule_slots_and_times():
    base = time.mktime((2026, 11, 30, 10, 7, 30, 0, 0, -1))
    assert last_slot(base, 15, []) == time.mktime((2026, 11, 30, 10, 0, 0, 0, 0, -1))
    assert next_slot(base, 15, []) == time.mktime((2026, 11, 30, 10, 15, 0, 0, 0, -1))
    assert next_slot(base, 0, ["06:30", "10:08"]) == time.mktime((2026, 11, 30, 10, 8, 0, 0, 0, -1))
    assert last_slot(base, 0, ["23:00"]) == time.mktime((2026, 11, 29, 23, 0, 0, 0, 0, -1))
    assert last_slot(base, 0, []) is None and next_slot(base, 0, []) is None
    assert check_times(["7:05", "06:00"]) == ["06:00", "07:05"]
    with pytest.raises(ValueError, match="'25:00' is not a local time"):
        check_times(["25:00"])


def test_presets_from_the_seed_file_and_the_config(tmp_path):
    path = tmp_path / "preset_config.json"
    path.write_text(json.dumps({"presets": [{"number": 1, "name": "Entrance"}, {"number": 2, "name": "Hallway"}]}))
    assert [(p.number, p.name) for p in load_presets_file(path)] == [(1, "Entrance"), (2, "Hallway")]
    merged = merged_presets([{"number": 2, "name": "Hall", "settle_s": 3, "zone": [0, 0.5, 1, 0.5]}, 7], str(path))
    assert [(p.number, p.name, p.settle_s) for p in merged] == [(1, "Entrance", None), (2, "Hall", 3.0), (7, "preset 7", None)]
    assert merged[1].zone_pixels(640, 480) == (0, 240, 640, 480)
    assert parse_selection("1,3 5-7") == [1, 3, 5, 6, 7]
    path.write_text("{not json")
    with pytest.raises(ValueError, match="preset_config.json: not valid JSON"):
        load_presets_file(path)
    with pytest.raises(ValueError, match="preset 3 is listed twice"):
        parse_selection("3,3")
    with pytest.raises(ValueError, match="number 255 is not 0..254"):
        merged_presets([255], "")


def test_retention_keeps_the_newest_runs_and_recovers_interrupted_ones(tmp_path):
    for k in range(5):
        folder = tmp_path / f"run_20261130_10000{k}"
        (folder / "raw_images").mkdir(parents=True)
        (folder / "raw_images" / "a.jpg").write_bytes(b"x" * 300_000)
    assert prune_runs(tmp_path, keep=3, max_mb=100, protect=["run_20261130_100000"]) == ["run_20261130_100001", "run_20261130_100002"]
    assert prune_runs(tmp_path, keep=50, max_mb=0.5) == ["run_20261130_100000", "run_20261130_100003"]
    assert [p.name for p in runs(tmp_path)] == ["run_20261130_100004"]
    partial = tmp_path / ".run_20261130_110000.partial"
    (partial / "raw_images").mkdir(parents=True)
    assert recover_partials(tmp_path) == ["run_20261130_110000"]
    assert json.loads((tmp_path / "run_20261130_110000" / "summary.json").read_text())["status"] == "interrupted"
    # A disk with less free than export.min_free_mb (here more than any disk has) loses its old runs, not the newest.
    assert prune_runs(tmp_path, keep=50, max_mb=100, protect=["run_20261130_110000"], min_free_mb=1e9) == ["run_20261130_100004"]
    assert [p.name for p in runs(tmp_path)] == ["run_20261130_110000"]


def test_moves_are_refused_while_off_and_a_camera_that_is_gone_is_an_error(rig_factory):
    rig = rig_factory(**{"ptz.enabled": False})
    with pytest.raises(PtzOff, match=r"PTZ is off \(set ptz.enabled true"):
        rig.ptz.check_on()
    rig.config.set("ptz.enabled", True)
    rig.config.set("ptz.port", free_port())
    with pytest.raises(PtzError, match="cannot connect to visca-tcp 127.0.0.1"):
        rig.ptz.read_position()


# --- delivery -----------------------------------------------------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.cond:  # type: ignore[attr-defined]
            self.server.got.append((self.path, dict(self.headers), json.loads(body)))  # type: ignore[attr-defined]
            self.server.cond.notify_all()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_report_goes_out_by_email_mail_api_and_webhook_without_showing_the_token(rig_factory, caplog):
    caplog.set_level(logging.DEBUG, logger="picamd")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    httpd.got, httpd.cond = [], threading.Condition()  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    box = Mailbox()
    smtp = Controller(box, hostname="127.0.0.1", port=free_port())
    smtp.start()
    token = "mt-token-0123456789abcdef"
    port = httpd.server_address[1]
    rig = rig_factory(
        **{
            "notify.email.smtp_host": "127.0.0.1",
            "notify.email.smtp_port": smtp.port,
            "notify.email.security": "none",
            "notify.email.recipients": ["ops@example.com"],
            "notify.backoff_s": 0.05,
            "ptz.report.email": True,
            "ptz.report.email_to": ["boss@example.com"],
            "ptz.report.mail_api_url": f"http://127.0.0.1:{port}/api/send",
            "ptz.report.mail_api_token": token,
            "ptz.report.webhook": f"http://127.0.0.1:{port}/hook",
        }
    )
    notifier = Notifier(rig.config.section("notify"), rig.bus, ComponentStatus("notify"), env={})
    for channel in report_channels(rig.config.section("ptz").section("report"), rig.config.section("notify").section("email"), "cam1", {}):
        notifier.add_channel(channel)
    notifier.start()
    try:
        rig.sweep([1, 2])
        event = rig.done()[0]
        zip_bytes = Path(event.data["zip"]).read_bytes()
        with box.cond:
            assert box.cond.wait_for(lambda: box.messages, 20)
        with httpd.cond:  # type: ignore[attr-defined]
            assert httpd.cond.wait_for(lambda: len(httpd.got) >= 2, 20)  # type: ignore[attr-defined]
        (envelope,) = box.messages  # notify.events does not list ptz: only the report's own mail
        assert envelope.rcpt_tos == ["boss@example.com"]
        mail = email.message_from_bytes(envelope.content)
        assert " ".join(mail["Subject"].split()).startswith(f"picamd cam1: sweep {event.data['run']} done: 1 person at 2 of 2 presets")
        parts = {p.get_filename(): p for p in mail.walk() if p.get_filename()}
        assert parts[Path(event.data["zip"]).name].get_payload(decode=True) == zip_bytes
        payload = next(p for p in mail.walk() if p.get_content_type() == "text/plain").get_payload(decode=True)
        assert isinstance(payload, bytes)
        text = payload.decode()
        assert "Entrance" in text and "Coffee bar" in text
        got = {path: (headers, body) for path, headers, body in httpd.got}  # type: ignore[attr-defined]
        headers, body = got["/api/send"]
        assert headers["Authorization"] == f"Bearer {token}" and body["to"] == [{"email": "boss@example.com"}]
        assert base64.b64decode(body["attachments"][0]["content"]) == zip_bytes
        assert body["attachments"][0]["filename"] == Path(event.data["zip"]).name
        _, hook = got["/hook"]
        assert hook["event"] == "ptz.sweep.done" and [r["people"] for r in hook["results"]] == ["1", "0"]
        assert list(csv.DictReader(io.StringIO(hook["csv"])))[1]["name"] == "Coffee bar"
        assert wait_for(lambda: notifier.health()["channels"]["ptz-mailapi"]["sent"] == 1)
        health = json.dumps(notifier.health())
        assert token not in health and token not in caplog.text and token not in json.dumps(rig.config.dump())
    finally:
        notifier.stop()
        smtp.stop()
        httpd.shutdown()
        httpd.server_close()
