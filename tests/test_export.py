"""Exporter: names, sidecars, atomic writes, stacks, retention, a full disk, and the commands."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from images import read_image

from daemon.capture.ring import FrameMeta, LatestSlot, Ring
from daemon.commands import Registry, Session
from daemon.config import Config
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.image.stacking import stack_mean, stack_sigma_clip
from daemon.storage.export import (
    LOCK_NAME,
    TEMP_DIR,
    DiskFullError,
    ExportCancelled,
    Exporter,
    ExportError,
    FormatError,
    NoFrameError,
    StorageError,
    capture_stamp,
)

FULL_W, FULL_H = 320, 240
RING_W, RING_H = 80, 60
# 2024-03-05 14:07:09.123 local time
T0 = time.mktime((2024, 3, 5, 14, 7, 9, 0, 0, -1)) + 0.123


@dataclass
class Env:
    config: Config
    exporter: Exporter
    ring: Ring
    latest: LatestSlot
    bus: EventBus
    status: ComponentStatus
    base: Path
    events: list


def make_env(tmp_path: Path, base: Path | None = None, ring_size: int = 32, start: bool = True, **values) -> Env:
    base = base or tmp_path / "captures"
    settings = {"export.base_dir": str(base), "export.min_free_mb": 0}
    settings.update({f"export.{k}": v for k, v in values.items()})
    config = Config(settings)
    ring = Ring(ring_size, RING_H, RING_W)
    latest = LatestSlot()
    bus = EventBus()
    events: list = []
    bus.subscribe("", events.append)
    status = ComponentStatus("export")
    exporter = Exporter(config.section("export"), ring, latest, bus, status)
    if start:
        exporter.start()
    return Env(config, exporter, ring, latest, bus, status, base, events)


def scene(seed: int, w: int = FULL_W, h: int = FULL_H) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frame = np.zeros((h, w, 3), dtype=np.uint8)
    frame[:] = (40 + seed % 50, 90, 160)
    cv2.rectangle(frame, (w // 5, h // 4), (w // 2, h // 2), (20, 200, 60), -1)
    return np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)


def feed(env: Env, frame_id: int, ts: float, frame: np.ndarray | None = None, ring: bool = True, **meta) -> FrameMeta:
    frame = scene(frame_id) if frame is None else frame
    mono = meta.pop("mono", time.monotonic())
    m = FrameMeta(frame_id=frame_id, ts=ts, mono=mono, dark_score=float(frame.mean()), **meta)
    if ring:
        cv2.resize(frame, (RING_W, RING_H), dst=env.ring.next_slot(), interpolation=cv2.INTER_AREA)
        env.ring.commit(m)
    env.latest.put(frame, m)
    return m


def final_files(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))


def hidden_files(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob(".*") if p.is_file() and p.name != LOCK_NAME)  # temp files: the lock is no file in progress


def run(registry: Registry, line: str) -> tuple[str, Any]:
    """Dispatch like the TCP port does and parse the wire format back: first line, JSON body."""
    wire = registry.dispatch(line, Session()).encode().decode()
    first, _, rest = wire.partition("\n")
    rest = rest.strip()
    return first, (json.loads(rest) if rest.startswith(("[", "{")) else rest)


def sidecar_of(image: Path) -> dict:
    return json.loads(image.with_suffix(".json").read_text())


# --- names, formats, sidecars ------------------------------------------------------------------------


def test_save_writes_named_files_that_decode_with_a_sidecar(tmp_path):
    env = make_env(tmp_path)
    frame = scene(1)
    feed(env, 42, T0, frame, exposure_us=20000, gain=1.5, extra={"motion": {"door": 0.12}})
    paths = env.exporter.save(["jpg", "png", "npy"])
    assert [p.name for p in paths] == [f"20240305-140709.123_f42_save.{e}" for e in ("jpg", "png", "npy")]
    assert all(p.parent == env.base / "2024-03-05" for p in paths)
    jpg = read_image(paths[0])
    assert jpg.shape == (FULL_H, FULL_W, 3)
    assert cv2.PSNR(jpg, frame) > 30  # quality 92 on a noisy frame
    assert np.array_equal(read_image(paths[1]), frame)  # png is lossless
    assert np.array_equal(np.load(paths[2]), frame)  # npy holds the raw BGR array
    side = sidecar_of(paths[0])
    assert side["frame_id"] == 42 and side["ts"] == pytest.approx(T0)
    assert side["exposure_us"] == 20000 and side["gain"] == 1.5
    assert side["motion"] == {"door": 0.12}
    assert side["time_local"].startswith("2024-03-05T14:07:09.123")
    cap = side["capture"]
    assert cap["kind"] == "save" and cap["method"] == "single" and cap["frames"] == 1
    assert cap["first_frame_id"] == cap["last_frame_id"] == 42
    assert cap["source"] == "full" and cap["source_size"] == [FULL_W, FULL_H] and cap["image_size"] == [FULL_W, FULL_H]
    assert cap["files"] == [p.name for p in paths] and cap["jpeg_quality"] == 92
    assert sorted(p.name for p in final_files(env.base)) == sorted([p.name for p in paths] + [paths[0].stem + ".json"])
    assert hidden_files(env.base) == []
    saved = [e for e in env.events if e.kind == "export.saved"]
    assert len(saved) == 1 and saved[0].data["paths"] == [str(p) for p in paths]


def test_default_formats_quality_and_no_sidecar(tmp_path):
    env = make_env(tmp_path, formats=["png"], sidecar=False)
    feed(env, 1, T0)
    paths = env.exporter.save()
    assert [p.suffix for p in paths] == [".png"]
    assert not paths[0].with_suffix(".json").exists()
    env.config.set("export.formats", "jpg")
    env.config.set("export.jpeg_quality", 10)
    low = env.exporter.save()[0]
    env.config.set("export.jpeg_quality", 100)
    feed(env, 2, T0 + 1, scene(1))
    high = env.exporter.save()[0]
    assert low.stat().st_size < high.stat().st_size  # the quality setting reaches the encoder


def test_saving_the_same_frame_twice_keeps_both(tmp_path):
    env = make_env(tmp_path)
    feed(env, 7, T0)
    first = env.exporter.save(["jpg"])[0]
    second = env.exporter.save(["jpg"])[0]
    assert first.name == "20240305-140709.123_f7_save.jpg"
    assert second.name == "20240305-140709.123_f7_save-2.jpg"
    assert first.exists() and second.exists() and second.with_suffix(".json").exists()
    first.unlink()
    first.with_suffix(".json").unlink()
    # numbering continues after the highest name, so names keep sorting in the order of the saves
    assert env.exporter.save(["jpg"])[0].name == "20240305-140709.123_f7_save-3.jpg"


def test_concurrent_saves_never_collide(tmp_path):
    env = make_env(tmp_path)
    feed(env, 9, T0)
    results, errors = [], []

    def worker():
        try:
            for _ in range(4):
                results.extend(env.exporter.save(["jpg"]))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(set(results)) == 16 and all(p.exists() for p in results)
    assert len([p for p in final_files(env.base) if p.suffix == ".json"]) == 16


def test_names_use_local_time(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        ts = 1700000000.5  # 2023-11-14 22:13:20 UTC = 2023-11-15 03:43:20 in India
        assert capture_stamp(ts) == ("2023-11-15", "20231115-034320.500")
        env = make_env(tmp_path)
        feed(env, 3, ts)
        path = env.exporter.save(["jpg"])[0]
        assert path.relative_to(env.base).as_posix() == "2023-11-15/20231115-034320.500_f3_save.jpg"
        assert sidecar_of(path)["time_local"] == "2023-11-15T03:43:20.500+05:30"
    finally:
        monkeypatch.undo()
        time.tzset()


# --- atomicity -----------------------------------------------------------------------------------------


def test_final_name_appears_only_when_complete(tmp_path, monkeypatch):
    env = make_env(tmp_path)
    frame = scene(5)
    feed(env, 5, T0, frame)
    seen_while_writing = []
    real_save = np.save

    def watching_save(path, arr, **kw):
        day_folder = env.base / time.strftime("%Y-%m-%d", time.localtime(T0))
        assert Path(path).name.startswith(".") and Path(path).parent == env.base / TEMP_DIR  # a temp name, out of the day folder
        real_save(path, arr, **kw)
        seen_while_writing.append(sorted(p.name for p in day_folder.iterdir() if p.suffix == ".npy"))

    monkeypatch.setattr(np, "save", watching_save)
    paths = env.exporter.save(["jpg", "npy"])
    assert seen_while_writing == [[]]  # the temp file was complete and the final name did not exist yet
    assert np.array_equal(np.load(paths[1]), frame)
    assert hidden_files(env.base) == []


def test_writer_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    env = make_env(tmp_path)
    feed(env, 5, T0)
    env.exporter.save(["png"])  # an earlier capture that must survive
    before = final_files(env.base)

    def failing_save(path, arr, **kw):
        with open(path, "wb") as fh:
            fh.write(b"\x93NUMPY" + b"\0" * 1000)  # half a file, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", failing_save)
    feed(env, 6, T0 + 1)
    with pytest.raises(DiskFullError, match="^disk full: No space left on device while writing .*_f6_save.npy"):
        env.exporter.save(["jpg", "npy"])
    assert final_files(env.base) == before  # the jpg of the failed capture was removed too: all or nothing
    assert hidden_files(env.base) == []
    assert not env.status.ok
    monkeypatch.undo()
    env.exporter.save(["jpg", "npy"])
    assert env.status.ok


def test_other_write_errors_say_disk_error(tmp_path, monkeypatch):
    env = make_env(tmp_path)
    feed(env, 5, T0)

    def read_only(path, arr, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(np, "save", read_only)
    with pytest.raises(StorageError, match="^disk error: Read-only file system while writing"):
        env.exporter.save(["npy"])
    assert env.status.state.startswith("degraded (disk error")
    assert not [e for e in env.events if e.kind == "disk.full"]
    assert final_files(env.base) == [] and hidden_files(env.base) == []


# --- stacks ----------------------------------------------------------------------------------------------


def test_past_stack_selects_frames_by_timestamp(tmp_path):
    env = make_env(tmp_path, save_before_s=3.0, stack_count=16, formats=["png"])
    offsets = [0.0, 0.5, 3.0, 3.2, 7.0, 7.1, 7.15, 9.0, 9.9, 10.0]  # irregular frame spacing
    for i, off in enumerate(offsets, start=1):
        feed(env, i, T0 + off, np.full((FULL_H, FULL_W, 3), 10 * i, dtype=np.uint8), mono=100.0 + off)
    path = env.exporter.past_stack()[0]
    cap = sidecar_of(path)["capture"]
    assert cap["frame_ids"] == [5, 6, 7, 8, 9, 10]  # ts >= newest - 3 s
    assert cap["kind"] == "stack" and cap["method"] == "mean" and cap["source"] == "ring"
    assert cap["source_size"] == [RING_W, RING_H] and cap["window_s"] == 3.0
    assert path.name.endswith("_f10_stack.png")  # named after the newest frame
    img = read_image(path)
    assert img.shape == (RING_H, RING_W, 3)
    assert np.all(img == round((50 + 60 + 70 + 80 + 90 + 100) / 6))
    env.config.set("export.stack_count", 4)
    cap = sidecar_of(env.exporter.past_stack()[0])["capture"]
    assert cap["frame_ids"] == [7, 8, 9, 10] and cap["first_ts"] == pytest.approx(T0 + 7.15)


def test_past_stack_sigma_clip_drops_a_flash(tmp_path):
    env = make_env(tmp_path, save_before_s=60, stack_method="sigma_clip", formats=["png"])
    frames = []
    for i in range(12):
        frame = scene(100, RING_W, RING_H)
        if i == 4:
            frame[10:20, 10:20] = 255  # a flash in one frame
        frames.append(frame)
        feed(env, i, T0 + i, cv2.resize(frame, (FULL_W, FULL_H), interpolation=cv2.INTER_NEAREST))
    path = env.exporter.past_stack()[0]
    ring_frames, _ = env.ring.last_n(12)
    image = read_image(path)
    assert np.array_equal(image, stack_sigma_clip(ring_frames, 3.0))
    assert sidecar_of(path)["capture"]["method"] == "sigma_clip"
    without_flash = stack_mean(np.delete(ring_frames, 4, axis=0)).astype(int)
    with_flash = stack_mean(ring_frames).astype(int)
    assert np.abs(with_flash[11:19, 11:19] - without_flash[11:19, 11:19]).mean() > 8  # the mean keeps the flash
    assert np.abs(image[11:19, 11:19].astype(int) - without_flash[11:19, 11:19]).max() <= 3


class Feeder(threading.Thread):
    """Puts frames into the LatestSlot like the capture loop does, and remembers them by id."""

    def __init__(self, env: Env, count: int, spacing: float = 0.01, first_id: int = 100, special=None) -> None:
        super().__init__(daemon=True)
        self.env, self.count, self.spacing, self.first_id = env, count, spacing, first_id
        self.special = special or {}
        self.frames: dict[int, np.ndarray] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        for k in range(self.count):
            if self.halt.wait(self.spacing):
                return
            fid = self.first_id + k
            frame = self.special.get(k, scene(fid))
            self.frames[fid] = frame
            feed(self.env, fid, T0 + k * 0.1, frame, ring=False, exposure_us=100000)


def test_stack_next_stacks_the_next_frames_as_they_arrive(tmp_path):
    env = make_env(tmp_path, formats=["png"])
    feed(env, 1, T0)  # the frame present before the call is not part of the stack
    feeder = Feeder(env, 400)
    feeder.start()
    try:
        path = env.exporter.stack_next(8, ["png", "npy"])[0]
    finally:
        feeder.halt.set()
        feeder.join(5)
    cap = sidecar_of(path)["capture"]
    ids = cap["frame_ids"]
    assert len(ids) == 8 and ids == sorted(set(ids)) and ids[0] >= 100
    expected = stack_mean(np.stack([feeder.frames[i] for i in ids]))
    assert np.array_equal(read_image(path), expected)
    assert np.array_equal(np.load(path.with_suffix(".npy")), expected)
    assert cap["kind"] == "stack" and cap["method"] == "mean" and cap["source"] == "full"
    assert cap["source_size"] == [FULL_W, FULL_H] and cap["total_exposure_us"] == 800000
    assert path.name.endswith(f"_f{ids[-1]}_stack.png")


def test_stack_next_sigma_clip_and_a_partial_stack(tmp_path):
    env = make_env(tmp_path, formats=["png"], stack_method="sigma_clip")
    feed(env, 1, T0)
    hot = scene(999)
    hot[5, 5] = 255
    feeder = Feeder(env, 12, special={k: scene(50) if k != 3 else hot for k in range(12)})
    feeder.start()
    path = env.exporter.stack_next(12, kind="autostack", timeout=10)[0]
    feeder.join(5)
    cap = sidecar_of(path)["capture"]
    ids = cap["frame_ids"]
    assert cap["method"] == "sigma_clip" and cap["kind"] == "autostack" and "_autostack" in path.name
    assert np.array_equal(read_image(path), stack_sigma_clip(np.stack([feeder.frames[i] for i in ids]), 3.0))
    # the camera stops after 3 frames: what arrived is saved, and the sidecar says so
    env.config.set("export.stack_method", "mean")
    feeder = Feeder(env, 3, first_id=500)
    feeder.start()
    path = env.exporter.stack_next(5, timeout=1.0)[0]
    cap = sidecar_of(path)["capture"]
    assert cap["frames"] == len(cap["frame_ids"]) <= 3 and cap["requested"] == 5
    assert "delivered only" in cap["note"]


def test_stack_next_refusals_and_cancel(tmp_path):
    env = make_env(tmp_path)
    with pytest.raises(NoFrameError, match="no frame yet"):
        env.exporter.stack_next(4)
    feed(env, 1, T0)
    with pytest.raises(FormatError, match="'tiff'"):
        env.exporter.stack_next(4, ["tiff"])
    bad_counts: tuple[Any, ...] = (0, 1001, -3, 2.5, True)  # deliberately not all ints
    for bad in bad_counts:
        with pytest.raises(ExportError, match="frame count"):
            env.exporter.stack_next(bad)
    with pytest.raises(NoFrameError, match="no new frame within 0.3 s"):
        env.exporter.stack_next(4, timeout=0.3)
    outcome = []
    waiting = threading.Thread(target=lambda: outcome.append(_catch(lambda: env.exporter.stack_next(4, timeout=60))))
    waiting.start()
    env.exporter.stop()  # the daemon stops: a stack waiting for frames gives up
    waiting.join(5)
    assert not waiting.is_alive() and isinstance(outcome[0], ExportCancelled)
    assert final_files(env.base) == []


def _catch(fn):
    try:
        return fn()
    except Exception as exc:  # returned for the assertion
        return exc


# --- retention -------------------------------------------------------------------------------------------


def npy_frame(fid: int) -> np.ndarray:
    return np.full((200, 200, 3), fid % 256, dtype=np.uint8)  # 120,128 bytes as .npy


def test_retention_deletes_oldest_auto_saves_first(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="picamd.export")
    env = make_env(tmp_path, max_disk_mb=1, formats=["npy"])
    day = 86400.0
    plan = [("save", T0 - day)] + [("save", T0 + k) for k in (1, 2)] + [("auto", T0 + k) for k in range(3, 8)]
    for fid, (kind, ts) in enumerate(plan):
        feed(env, fid, ts, npy_frame(fid), ring=False)
        env.exporter.save(kind=kind)
    assert len(final_files(env.base)) == 16 and env.exporter.health()["deleted_by_retention"] == 0

    def remaining():
        return sorted(p.stem for p in final_files(env.base) if p.suffix == ".npy")

    names = remaining()
    feed(env, 8, T0 + 8, npy_frame(8), ring=False)
    env.exporter.save()
    oldest_auto = [n for n in names if n.endswith("_auto")][0]
    assert oldest_auto not in remaining() and oldest_auto.endswith("_f3_auto")
    assert not list(env.base.rglob(oldest_auto + ".json"))  # the sidecar went with it
    assert [n for n in names if n.endswith("_save")] == [n for n in remaining() if n.endswith("_save")][:3]
    assert "deleted 2024-03-05/" + oldest_auto in caplog.text and "oldest auto-save" in caplog.text
    for fid in range(9, 13):  # manual captures push the remaining auto-saves out, one each
        feed(env, fid, T0 + fid, npy_frame(fid), ring=False)
        env.exporter.save()
    assert not [n for n in remaining() if n.endswith("_auto")]
    assert len(remaining()) == 8 and remaining()[0].endswith("_f0_save")
    feed(env, 13, T0 + 13, npy_frame(13), ring=False)
    env.exporter.save()  # no auto-save left: the oldest capture goes, and its day folder with it
    assert "_f0_save" not in " ".join(remaining()) and len(remaining()) == 8
    assert sorted(p.name for p in env.base.iterdir() if p.name not in (TEMP_DIR, LOCK_NAME)) == ["2024-03-05"]
    assert "no auto-save left" in caplog.text
    health = env.exporter.health()
    assert health["deleted_by_retention"] == 6 and health["bytes"] <= 2**20 and health["state"] == "ok"
    assert hidden_files(env.base) == []


def test_retention_at_start_temp_files_and_incomplete_captures(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="picamd.export")
    env = make_env(tmp_path, formats=["npy"])
    for fid in range(6):  # f0 save, f1 auto, f2 save, f3 auto, f4 save, f5 auto: about 121 KB each
        feed(env, fid, T0 + fid, npy_frame(fid), ring=False)
        env.exporter.save(kind="auto" if fid % 2 else "save")
    day = env.base / "2024-03-05"
    np.save(day / "20240305-000000.000_f99_save.npy", np.ones((400, 400, 3), dtype=np.uint8))  # 480 KB, oldest
    temps = env.base / TEMP_DIR
    old_temp = day / ".20240305-000000.000_f1_save.abcd1234.tmp.jpg"  # where older versions wrote temps
    fresh_temp = temps / ".20240305-000001.000_f2_save.efgh5678.tmp.jpg"  # seconds old: age does not matter
    old_temp.write_bytes(b"partial")
    fresh_temp.write_bytes(b"being written when the daemon was killed")
    os.utime(old_temp, (time.time() - 3600, time.time() - 3600))
    # killed between the renames of a capture: its png is final, its npy and sidecar still temp files
    (day / "20240305-140720.000_f7_save.png").write_bytes(b"png")
    (temps / ".20240305-140720.000_f7_save.ijkl9012.tmp.npy").write_bytes(b"npy")
    (temps / ".20240305-140720.000_f7_save.mnop3456.tmp.json").write_bytes(b"{}")
    (day / "notes.txt").write_text("the user's own file")
    assert "20240305-140720.000_f7_save.png" not in [f["name"] for f in env.exporter.list_files("2024-03-05")]  # incomplete
    env.exporter.stop()  # the daemon ends: its lock on the folder goes
    # the daemon restarts with a 1 MB quota: about 1.2 MB are there, so two captures must go
    env2 = make_env(tmp_path, base=env.base, max_disk_mb=1, formats=["npy"])
    left = sorted(p.name.split("_", 1)[1] for p in final_files(env.base) if p.suffix == ".npy")
    assert left == ["f0_save.npy", "f2_save.npy", "f4_save.npy", "f5_auto.npy", "f99_save.npy"]
    assert not list(day.glob("*_f1_auto.json")) and not list(day.glob("*_f3_auto.json"))
    assert hidden_files(env.base) == [] and not (day / "20240305-140720.000_f7_save.png").exists()
    assert (day / "notes.txt").exists()
    assert "partial files left by an interrupted write" in caplog.text
    assert "removed the incomplete capture 2024-03-05/20240305-140720.000_f7_save (20240305-140720.000_f7_save.png)" in caplog.text
    assert env2.exporter.health()["bytes"] <= 2**20 and env2.status.ok
    assert env2.exporter.health()["folder_lock"] == "held"


def test_a_second_daemon_on_the_folder_cleans_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="picamd.export")
    first = make_env(tmp_path, formats=["npy"])
    feed(first, 1, T0, npy_frame(1), ring=False)
    first.exporter.save()
    in_progress = first.base / TEMP_DIR / ".20240305-140709.500_f2_save.qrst1234.tmp.npy"
    in_progress.write_bytes(b"the first daemon is writing this")
    second = make_env(tmp_path, base=first.base, formats=["npy"])
    assert in_progress.exists()  # not the second daemon's to remove
    assert second.exporter.health()["folder_lock"].startswith(f"held by another process (pid {os.getpid()})")
    assert f"another process (pid {os.getpid()}) holds {first.base / LOCK_NAME}" in caplog.text
    feed(second, 3, T0 + 1, npy_frame(3), ring=False)
    assert second.exporter.save()[0].exists()  # it still saves
    first.exporter.stop()
    third = make_env(tmp_path, base=first.base, formats=["npy"])  # the first has gone: now it is clear
    assert not in_progress.exists() and third.exporter.health()["folder_lock"] == "held"


def test_capture_larger_than_the_quota_fails_and_deletes_nothing(tmp_path):
    env = make_env(tmp_path, max_disk_mb=1, formats=["npy"])
    for fid in range(3):
        feed(env, fid, T0 + fid, npy_frame(fid), ring=False)
        env.exporter.save(kind="auto")
    before = final_files(env.base)
    feed(env, 9, T0 + 9, np.zeros((700, 600, 3), dtype=np.uint8), ring=False)  # 1.26 MB
    with pytest.raises(DiskFullError, match="deleting every older capture would not make room"):
        env.exporter.save()
    assert final_files(env.base) == before and hidden_files(env.base) == []


# --- a full disk -----------------------------------------------------------------------------------------


def test_quota_full_disk_command_health_event_and_recovery(tmp_path):
    env = make_env(tmp_path, formats=["jpg"])
    registry = Registry()
    env.exporter.register_commands(registry)
    feed(env, 1, T0)
    first, body = run(registry, "save")
    assert first == "OK saved 1 file(s): frame 1"
    env.config.set("export.save_before_s", 1)
    feed(env, 2, T0 + 0.5)
    before = final_files(env.base)
    env.config.set("export.max_disk_mb", 1)
    env.config.set("export.min_free_mb", 10_000_000)  # more free space than any test machine has
    for line in ("save", "save png", "pastStack"):
        first, _ = run(registry, line)
        assert first.startswith("ERR disk full: "), first
        assert "min_free_mb 1e+07" in first or "min_free_mb 10000000" in first
    assert final_files(env.base) == before and hidden_files(env.base) == []  # nothing deleted in vain
    health = env.exporter.health()
    assert health["state"].startswith("degraded (disk full") and health["disk_full"] is True
    assert health["failed_saves"] == 3 and health["last_error"].startswith("disk full")
    json.dumps(health)
    full_events = [e for e in env.events if e.kind == "disk.full"]
    assert len(full_events) == 1 and full_events[0].data["reason"].startswith("disk full")
    env.config.set("export.min_free_mb", 0)  # space was freed
    first, body = run(registry, "save png")
    assert first.startswith("OK saved 1 file(s)") and Path(body[0]).exists()
    assert env.status.ok and env.exporter.health()["disk_full"] is False
    env.config.set("export.min_free_mb", 10_000_000)
    assert run(registry, "save")[0].startswith("ERR disk full")
    assert len([e for e in env.events if e.kind == "disk.full"]) == 2  # once per episode


@pytest.fixture
def small_fs(tmp_path):
    """A real 1 MB filesystem (tmpfs) with few inodes; skipped where mounting is not permitted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=64", "tmpfs", str(mnt)], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=20)


def test_real_small_filesystem_full_by_bytes(small_fs):
    env = make_env(small_fs, base=small_fs / "captures", formats=["png"])
    registry = Registry()
    env.exporter.register_commands(registry)
    feed(env, 1, T0)  # noisy 320x240: a png of about 200 KB, a jpg of about 30 KB
    assert run(registry, "save jpg")[0].startswith("OK")  # deleting it could not make room for a png
    filler = small_fs / "other-program.dat"  # not ours: never deleted by retention
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    feed(env, 2, T0 + 1)
    first, _ = run(registry, "save")
    assert first.startswith("ERR disk full: ") and "free" in first
    assert hidden_files(small_fs) == [] and len(final_files(env.base)) == 2
    assert env.exporter.health()["state"].startswith("degraded (disk full")
    filler.unlink()
    first, body = run(registry, "save")
    assert first.startswith("OK saved 1 file(s)") and read_image(body[0]).shape == (FULL_H, FULL_W, 3)
    assert env.status.ok and len([e for e in env.events if e.kind == "disk.full"]) == 1


def test_real_small_filesystem_enospc_while_writing(small_fs):
    env = make_env(small_fs, base=small_fs / "captures", formats=["jpg"])
    feed(env, 1, T0)
    env.exporter.save()  # creates the day folder
    fillers: list[Path] = []
    try:
        while True:  # use up the inodes: creating the temp file then fails with ENOSPC although bytes are free
            path = small_fs / f"f{len(fillers)}"
            path.touch()
            fillers.append(path)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    feed(env, 2, T0 + 1)
    with pytest.raises(DiskFullError, match="^disk full: No space left on device while writing"):
        env.exporter.save()
    assert hidden_files(small_fs) == [] and len(final_files(env.base)) == 2
    assert not env.status.ok
    for path in fillers:
        path.unlink()
    path = env.exporter.save()[0]
    assert read_image(path).shape == (FULL_H, FULL_W, 3) and env.status.ok


# --- commands ---------------------------------------------------------------------------------------------


def test_commands_refuse_bad_input_and_change_nothing(tmp_path):
    env = make_env(tmp_path)
    registry = Registry()
    env.exporter.register_commands(registry)
    assert run(registry, "save")[0] == "ERR no frame yet"
    assert run(registry, "pastStack")[0] == "ERR no frame yet"
    assert run(registry, "stack 4")[0] == "ERR no frame yet"
    feed(env, 1, T0)
    for line, reason in [
        ("save gif", "ERR unknown format 'gif'"),
        ("save jpg tiff", "ERR unknown format 'tiff'"),
        ("pastStack bmp", "ERR unknown format 'bmp'"),
        ("stack 0", "ERR N must be 1..1000"),
        ("stack 1001", "ERR N must be 1..1000"),
        ("stack -2", "ERR N must be 1..1000"),
        ("stack 4 webp", "ERR unknown format 'webp'"),
        ("stack abc", "ERR unknown format 'abc'"),
        ("list 2024-13-01", "ERR bad date '2024-13-01'"),
        ("list 2024-02-30", "ERR bad date '2024-02-30'"),
        ("list yesterday", "ERR bad date 'yesterday'"),
        ("list 2024-01-01 2024-01-02", "ERR usage: list"),
    ]:
        first, _ = run(registry, line)
        assert first.startswith(reason), (line, first)
    assert final_files(env.base) == [] and hidden_files(env.base) == []
    assert env.status.ok  # bad input is not a fault of the exporter


def test_commands_save_stack_and_list(tmp_path):
    env = make_env(tmp_path)
    registry = Registry()
    env.exporter.register_commands(registry)
    commands = [registry.get(n) for n in ("save", "pastStack", "stack", "list")]
    assert [c.mutating if c is not None else None for c in commands] == [True, True, True, False]
    feed(env, 1, T0)
    first, body = run(registry, "save JPEG png")
    assert first == "OK saved 2 file(s): frame 1"
    assert [Path(p).suffix for p in body] == [".jpg", ".png"] and all(Path(p).exists() for p in body)
    feed(env, 2, T0 + 1)
    first, body = run(registry, "pastStack png")
    assert first == "OK saved 1 file(s): mean of 2 frames (f1..f2)" and body[0].endswith("_f2_stack.png")
    feeder = Feeder(env, 300, first_id=10)
    feeder.start()
    try:
        first, body = run(registry, "stack 3 npy")
    finally:
        feeder.halt.set()
        feeder.join(5)
    assert first.startswith("OK saved 1 file(s): mean of 3 frames (f") and body[0].endswith("_stack.npy")
    first, days = run(registry, "list")
    assert first == "OK 1 day(s)"
    assert days == [{"date": "2024-03-05", "files": 7, "images": 4, "bytes": days[0]["bytes"]}]
    first, files = run(registry, "list 2024-03-05")
    assert first == "OK 7 file(s) on 2024-03-05"
    item = next(f for f in files if f["name"] == "20240305-140709.123_f1_save.jpg")
    assert item["size"] == (env.base / item["path"]).stat().st_size
    assert item["time"] == "2024-03-05T14:07:09.123" and item["kind"] == "save" and item["frame_id"] == 1
    assert run(registry, "list 2030-01-01")[0] == "OK 0 file(s) on 2030-01-01"
    health = env.exporter.health()
    assert health["images"] == 4 and health["files"] == 7 and health["saves"] == 3
    assert health["last_save"]["kind"] == "stack" and health["disk_free_mb"] > 0
    json.dumps(health)


# --- one memory budget for every stack, cancelled and background stacks ----------------------------------


def test_stacks_share_one_memory_budget(tmp_path):
    # 320x240 BGR: 230,400 bytes a frame; a mean stack holds its float32 sum and result (5 x 225 KiB = 1.1 MB)
    env = make_env(tmp_path, formats=["png"], stack_memory_mb=2.5)
    feed(env, 1, T0)
    frame_bytes = FULL_W * FULL_H * 3
    registry = Registry()
    env.exporter.register_commands(registry)
    held = []
    held.append(env.exporter._plan_stack(500, "stack", "stack 500 for a"))
    held.append(env.exporter._plan_stack(500, "stack", "stack 500 for b"))
    running = env.exporter.health()["stacks"]
    assert running["running"] == ["stack 500 for a (mean, 320x240)", "stack 500 for b (mean, 320x240)"]
    assert running["memory_mb"] == round(2 * 5 * frame_bytes / 2**20, 1) and running["memory_limit_mb"] == 2.5
    first, _ = run(registry, "stack 500")
    assert first.startswith(
        "ERR busy: stack 500 for local (mean, 320x240) needs 1.1 MB; stacks in progress hold 2.2 MB of "
        "export.stack_memory_mb 2.5 (stack 500 for a (mean, 320x240), stack 500 for b (mean, 320x240)), "
        "0.3 MB is free; try again when one ends"
    ), first
    env.config.set("export.stack_memory_mb", 1)
    first, _ = run(registry, "stack 3")
    assert first == "ERR too large: stack 3 for local (mean, 320x240) needs 1.1 MB, more than export.stack_memory_mb 1", first
    for plan in held:
        plan.reservation.release()
    health = env.exporter.health()["stacks"]
    assert health["running"] == [] and health["memory_mb"] == 0 and health["refused"] == 2
    assert final_files(env.base) == [] and env.status.ok  # a refusal is no failure of the exporter


def test_sigma_clip_holds_its_frames_only_within_the_budget(tmp_path):
    env = make_env(tmp_path, formats=["png"], stack_method="sigma_clip", stack_memory_mb=8)
    feed(env, 1, T0)
    # 12 frames of 225 KiB + 4 MiB of band scratch + the result fit in 8 MB: an exact clip
    hot = scene(7)
    hot[5, 5] = 255
    feeder = Feeder(env, 12, special={k: scene(7) if k != 4 else hot for k in range(12)})
    feeder.start()
    path = env.exporter.stack_next(12, timeout=10)[0]
    feeder.join(5)
    cap = sidecar_of(path)["capture"]
    assert cap["method"] == "sigma_clip" and "note" not in cap
    assert np.array_equal(read_image(path)[5, 5], scene(7)[5, 5])
    # 500 frames would need 110 MB: stacked with the mean instead, and every place says why
    plan = env.exporter._plan_stack(500, "stack", "stack 500")
    assert plan.method == "mean" and plan.notes == [
        "sigma_clip of 500 frames of 320x240 needs 114.1 MB, more than export.stack_memory_mb 8 (up to 17 frames fit); stacked with mean"
    ]
    plan.reservation.release()
    feeder = Feeder(env, 40, first_id=300)
    feeder.start()
    try:
        path = env.exporter.stack_next(30, timeout=10)[0]
    finally:
        feeder.halt.set()
        feeder.join(5)
    cap = sidecar_of(path)["capture"]
    assert cap["method"] == "mean" and cap["frames"] == 30 and "(up to 17 frames fit); stacked with mean" in cap["note"]
    # while 6 MB are held, a sigma clip of 12 frames is busy, and the refusal says how many would fit now
    holder = env.exporter._budget.reserve(int(2.2 * 2**20), "another stack")
    try:
        with pytest.raises(ExportError, match=r"^busy: .*; sigma_clip of up to 7 frames would fit now; try again"):
            env.exporter.stack_next(12, timeout=1)
    finally:
        holder.release()


def test_a_stack_whose_client_has_gone_is_cancelled_and_writes_nothing(tmp_path):
    env = make_env(tmp_path, formats=["png"])
    feed(env, 1, T0)
    feeder = Feeder(env, 400, spacing=0.02)
    feeder.start()
    here = threading.Event()
    here.set()
    outcome = []
    try:
        waiting = threading.Thread(
            target=lambda: outcome.append(_catch(lambda: env.exporter.stack_next_info(300, wanted=here.is_set, who="127.0.0.1:5555")))
        )
        waiting.start()
        assert wait_until(lambda: feeder.frames and env.exporter.health()["stacks"]["running"])
        here.clear()  # the client hangs up
        waiting.join(5)
    finally:
        feeder.halt.set()
        feeder.join(5)
    assert not waiting.is_alive() and isinstance(outcome[0], ExportCancelled)
    assert str(outcome[0]) == "stack cancelled: the client closed the connection"
    stacks = env.exporter.health()["stacks"]
    assert stacks["cancelled"] == 1 and stacks["running"] == [] and stacks["memory_mb"] == 0
    assert final_files(env.base) == [] and env.status.ok


def test_background_stack_finishes_alone_one_at_a_time(tmp_path):
    env = make_env(tmp_path, formats=["png"])
    registry = Registry()
    env.exporter.register_commands(registry)
    feed(env, 1, T0)
    feeder = Feeder(env, 300, spacing=0.01)
    first, job = run(registry, "stack 6 npy bg")  # answered before a single frame arrived
    assert first.startswith(f"OK stacking 6 frames in the background (mean): npy into {env.base / '2024-03-05'}"), first
    assert job["state"] == "running" and job["done"] == 0 and job["formats"] == ["npy"] and job["for"] == "local"
    assert run(registry, "stack 3 bg")[0].startswith("ERR busy: a background stack is running (0 of 6 frames")
    feeder.start()
    try:
        assert wait_until(lambda: env.exporter.health()["stacks"]["background"]["state"] != "running")
    finally:
        feeder.halt.set()
        feeder.join(5)
    done = env.exporter.health()["stacks"]["background"]
    assert done["state"] == "saved" and done["done"] == 6 and done["paths"][0].endswith("_stack.npy")
    assert np.load(done["paths"][0]).shape == (FULL_H, FULL_W, 3)
    # the daemon stopping cancels a background stack still waiting for frames
    assert run(registry, "stack 50 bg")[0].startswith("OK stacking 50 frames")
    env.exporter.stop()
    assert env.exporter.health()["stacks"]["background"]["state"] == "cancelled"
    assert env.exporter.health()["stacks"]["memory_mb"] == 0


def wait_until(predicate, timeout: float = 10.0):
    """Poll a condition the code under test makes true (never a timed assertion: the timeout only bounds a failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    return predicate()


# --- every failed save counts; expected errors are no tracebacks; one log line, then a count -------------


def test_captures_folder_replaced_by_a_file_fails_counted_and_recovers(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="picamd")
    env = make_env(tmp_path, formats=["jpg"])
    registry = Registry()
    env.exporter.register_commands(registry)
    feed(env, 1, T0)
    assert run(registry, "save")[0].startswith("OK")
    env.base.rename(tmp_path / "moved")
    env.base.write_bytes(b"a file where the folder was")
    for line in ("save", "save png", "pastStack"):
        first, _ = run(registry, line)
        assert first == f"ERR disk error: {env.base} is a file where a folder is needed", first
    first, _ = run(registry, "list")
    assert first == f"ERR cannot list the captures: {env.base} is a file where a folder is needed", first
    health = env.exporter.health()
    assert health["failed_saves"] == 3 and health["saves"] == 1 and health["errors"] == 3
    assert health["state"] == f"degraded (disk error: {env.base} is a file where a folder is needed)"
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    # a day folder replaced by a file is named as well
    env.base.unlink()
    (tmp_path / "moved").rename(env.base)
    shutil.rmtree(env.base / "2024-03-05")
    (env.base / "2024-03-05").write_bytes(b"")
    first, _ = run(registry, "save")
    assert first == f"ERR disk error: {env.base / '2024-03-05'} is a file where a folder is needed", first
    (env.base / "2024-03-05").unlink()
    assert run(registry, "save")[0].startswith("OK saved 1 file(s)")
    health = env.exporter.health()
    assert health["state"] == "ok" and health["failed_saves"] == 4 and health["saves"] == 2


def test_permission_and_read_only_errors_count_without_traceback(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="picamd")
    env = make_env(tmp_path, formats=["npy"])
    feed(env, 5, T0)
    for code, text in ((errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only file system")):

        def failing(path, arr, code=code, text=text, **kw):
            raise OSError(code, text)

        monkeypatch.setattr(np, "save", failing)
        with pytest.raises(StorageError, match=f"^disk error: {text} while writing .*_f5_save.npy$"):
            env.exporter.save()
        assert env.status.state == f"degraded (disk error: {text} in {env.base})"
    assert env.exporter.health()["failed_saves"] == 2
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    monkeypatch.undo()
    env.exporter.save()
    assert env.status.ok and hidden_files(env.base) == []


def test_an_unexpected_failure_counts_too(tmp_path, monkeypatch):
    env = make_env(tmp_path, formats=["npy"])
    feed(env, 5, T0)

    def broken(path, arr, **kw):
        raise RuntimeError("a bug in an encoder")

    monkeypatch.setattr(np, "save", broken)
    with pytest.raises(ExportError, match="^save failed: RuntimeError: a bug in an encoder$"):
        env.exporter.save()
    assert env.exporter.health()["failed_saves"] == 1 and env.status.state == "degraded (save failed: RuntimeError)"
    assert final_files(env.base) == [] and hidden_files(env.base) == []


def test_five_hundred_saves_on_a_full_disk_log_a_few_lines_and_count_all(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="picamd")
    env = make_env(tmp_path, formats=["jpg"], min_free_mb=10_000_000)
    registry = Registry()
    env.exporter.register_commands(registry)
    for i in range(500):
        feed(env, i, T0 + i * 0.1, npy_frame(i), ring=False)  # a new frame each time: the names differ
        assert run(registry, "save")[0].startswith("ERR disk full: ")
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(noisy) <= 3, [r.getMessage() for r in noisy]
    health = env.exporter.health()
    assert health["failed_saves"] == 500 and health["errors"] == 501  # and the check at start, which was no save
    assert health["state"] == "degraded (disk full: less than export.min_free_mb 1e+07 free)"
    assert len([e for e in env.events if e.kind == "disk.full"]) == 1


def test_saves_failing_with_enospc_log_once_and_count_all(small_fs, caplog):
    caplog.set_level(logging.DEBUG, logger="picamd")
    env = make_env(small_fs, base=small_fs / "captures", formats=["jpg"])
    feed(env, 1, T0, ring=False)
    env.exporter.save()  # creates the day folder and the temp folder
    fillers: list[Path] = []
    try:
        while True:  # use up the inodes: every temp file now fails with ENOSPC although bytes are free
            path = small_fs / f"f{len(fillers)}"
            path.touch()
            fillers.append(path)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    caplog.clear()
    for i in range(200):
        feed(env, 2 + i, T0 + 1 + i * 0.1, npy_frame(i), ring=False)
        with pytest.raises(DiskFullError, match="^disk full: No space left on device while writing"):
            env.exporter.save()
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(noisy) <= 2, [r.getMessage() for r in noisy]
    assert env.exporter.health()["failed_saves"] == 200
    assert env.status.state == f"degraded (disk full: No space left on device in {env.base})"
    for path in fillers:
        path.unlink()
    env.exporter.save()
    assert env.status.ok and hidden_files(small_fs) == []
