"""Clips of the ring (storage/clips.py): real frames, real OpenCV video writers, real files that ffprobe reads.

A ring is filled with frames of a real photo (scikit-image's astronaut) at
15 frames a second of frame time; the recorder writes what is asked through
the real Exporter into a temp folder, and ffprobe counts the frames of the
result. Checked: the last seconds on demand (`clip`, with its token rule),
the sidecar against the frames, a clip that waits for its later frames as
they are committed, one clip at a time (`ERR busy`), the MJPEG AVI fallback,
and retention treating clips like auto-saves.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from images import read_image
from videos import ffprobe, needs_ffprobe

from daemon.capture.ring import FrameMeta, LatestSlot, Ring
from daemon.commands import Registry, Session
from daemon.config import Config
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.storage.clips import ClipBusy, ClipJob, ClipRecorder
from daemon.storage.export import TEMP_DIR, Exporter

skimage_data = pytest.importorskip("skimage.data")

RING_W, RING_H = 160, 120
FPS = 15.0
pytestmark = pytest.mark.timeout(120)


class Rig:
    def __init__(self, tmp_path: Path, codecs: tuple[tuple[str, str], ...] | None = None, **values: Any) -> None:
        self.base = tmp_path / "captures"
        self.config = Config({"export.base_dir": str(self.base), "export.min_free_mb": 0, **values})
        self.ring = Ring(120, RING_H, RING_W)  # 8 s at 15 fps
        self.bus = EventBus()
        self.exporter = Exporter(self.config.section("export"), self.ring, LatestSlot(), self.bus, ComponentStatus("export"))
        self.exporter.start()
        self.status = ComponentStatus("clips")
        self.clips = ClipRecorder(self.ring, self.exporter, self.status, **({"codecs": codecs} if codecs else {}))
        self.clips.start()
        self.registry = Registry(token=lambda: "s3cret")
        self.clips.register_commands(self.registry)
        photo = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
        self.photo = cv2.resize(photo, (RING_H, RING_H), interpolation=cv2.INTER_AREA)
        self.next_id = 1

    def frame(self, fid: int) -> np.ndarray:
        """The photo on grey, moving a pixel a frame: a real picture that changes."""
        frame = np.full((RING_H, RING_W, 3), 90, np.uint8)
        x = fid % (RING_W - RING_H)
        frame[:, x : x + RING_H] = self.photo
        return frame

    def commit(self, mono: float, ts: float) -> FrameMeta:
        fid = self.next_id
        self.next_id += 1
        self.ring.next_slot()[:] = self.frame(fid)
        meta = FrameMeta(fid, ts, mono)
        self.ring.commit(meta)
        return meta

    def fill(self, seconds: float) -> FrameMeta:
        """`seconds` of frames at 15 fps whose frame times end now; returns the newest."""
        now_mono, now_ts = time.monotonic(), time.time()
        count = int(seconds * FPS)
        meta = None
        for k in range(count, -1, -1):
            meta = self.commit(now_mono - k / FPS, now_ts - k / FPS)
        assert meta is not None
        return meta

    def cmd(self, line: str, session: Session | None = None) -> tuple[str, Any]:
        reply = self.registry.dispatch(line, session or Session("test"))
        return reply.first_line(), reply.body

    def stop(self) -> None:
        self.clips.stop()
        self.exporter.stop()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.stop()


def authorised() -> Session:
    return Session("test", authorized=True)


@needs_ffprobe
def test_clip_command_writes_the_last_seconds_as_an_mp4_that_ffprobe_reads(rig):
    newest = rig.fill(5.0)  # frames 1..76 over 5 s
    first, body = rig.cmd("clip 2")
    assert first.startswith("ERR") and "token" in first  # it writes files: the token first
    first, body = rig.cmd("clip 2", authorised())
    assert first.startswith("OK clip of 31 frames"), first  # 2 s at 15 fps, both ends included
    video, sidecar = (Path(p) for p in body["paths"])
    assert video.suffix == ".mp4" and video.name.endswith(f"_f{newest.frame_id}_clip.mp4") and sidecar == video.with_suffix(".json")
    doc = json.loads(sidecar.read_text())
    cap = doc["capture"]
    assert doc["frame_id"] == newest.frame_id and cap["kind"] == "clip" and cap["trigger"] == "command"
    assert cap["frames"] == 31 and cap["last_frame_id"] == newest.frame_id and cap["first_frame_id"] == newest.frame_id - 30
    assert cap["fps"] == pytest.approx(FPS, rel=0.01) and cap["duration_s"] == pytest.approx(2.0, abs=0.01)
    assert cap["codec"] == "mp4v" and cap["container"] == "mp4" and cap["size"] == [RING_W, RING_H] and cap["missed_frames"] == 0
    assert cap["last_ts"] - cap["first_ts"] == pytest.approx(2.0, abs=0.01)
    probe = ffprobe(video)
    assert probe["codec_name"] == "mpeg4" and (probe["width"], probe["height"]) == (RING_W, RING_H)
    assert int(probe["nb_read_frames"]) == cap["frames"]
    # What the video shows is the ring's frames: the middle one decodes close to the frame that went in.
    reader = cv2.VideoCapture(str(video))
    reader.set(cv2.CAP_PROP_POS_FRAMES, 15)
    ok, decoded = reader.read()
    reader.release()
    assert ok and np.abs(decoded.astype(int) - rig.frame(cap["first_frame_id"] + 15).astype(int)).mean() < 8
    # Atomic: nothing half-written is left, and the temp folder is empty.
    assert not list(rig.base.rglob("*.tmp.*"))
    assert [p.name for p in (rig.base / TEMP_DIR).iterdir()] == []
    listed = {item["name"]: item for item in rig.exporter.list_files(video.parent.name)}
    assert listed[video.name]["kind"] == "clip"
    saved = [e for e in rig.bus.recent("export.saved")]
    assert saved[-1].data["capture_kind"] == "clip" and saved[-1].data["frames"] == 31
    assert rig.clips.health()["clips"] == 1 and rig.status.ok


def test_clip_command_refuses_bad_seconds_and_an_empty_ring(rig):
    for line, why in [
        ("clip 0", "above 0"),
        ("clip -3", "above 0"),
        ("clip 601", "at most 600"),
        ("clip nan", "above 0"),
        ("clip lots", "usage: clip [SECONDS]"),
    ]:
        first, _ = rig.cmd(line, authorised())
        assert first.startswith("ERR") and why in first, (line, first)
    first, _ = rig.cmd("clip 2", authorised())
    assert first == "ERR no frame yet"
    assert not rig.base.exists() or not list(rig.base.rglob("*_clip.*"))


@needs_ffprobe
def test_a_clip_waits_for_its_later_frames_and_only_one_is_written_at_a_time(rig):
    anchor = rig.fill(2.0)  # 31 frames before the anchor, the anchor included
    request = rig.clips.submit(ClipJob(anchor, 1.0, 1.0, "detect.person", {"tracks": [4]}))
    # The clip now waits for the frames of the second after the anchor: another one is refused meanwhile.
    with pytest.raises(ClipBusy):
        rig.clips.submit(ClipJob(anchor, 1.0, 0.0, "detect.person"))
    first, _ = rig.cmd("clip 1", authorised())
    assert first.startswith("ERR busy"), first
    assert rig.clips.health()["busy"] and rig.clips.health()["refused_busy"] == 2
    # The capture loop goes on: 20 more frames, a frame time apart, as a camera delivers them.
    for k in range(1, 21):
        rig.commit(anchor.mono + k / FPS, anchor.ts + k / FPS)
        time.sleep(0.01)
    assert request.done.wait(30), "the clip was not finished"
    assert request.error is None, request.error
    cap = request.capture
    assert cap["frames"] == 31 and cap["first_frame_id"] == anchor.frame_id - 15 and cap["last_frame_id"] == anchor.frame_id + 15
    assert cap["trigger"] == "detect.person" and cap["tracks"] == [4] and "note" not in cap
    assert int(ffprobe(request.paths[0])["nb_read_frames"]) == 31
    assert not rig.clips.busy


@needs_ffprobe
def test_where_the_mp4_codec_is_missing_the_clip_is_mjpeg_in_avi(tmp_path):
    rig = Rig(tmp_path, codecs=(("ZZZZ", "mp4"), ("MJPG", "avi")))  # no writer has a ZZZZ codec
    try:
        rig.fill(1.0)
        first, body = rig.cmd("clip 1", authorised())
        assert first.startswith("OK clip of 16 frames"), first
        video = Path(body["paths"][0])
        assert video.suffix == ".avi" and body["clip"]["codec"] == "MJPG" and body["clip"]["codecs_missing"] == ["ZZZZ"]
        probe = ffprobe(video)
        assert probe["codec_name"] == "mjpeg" and int(probe["nb_read_frames"]) == 16
    finally:
        rig.stop()


def test_stopping_in_the_middle_keeps_the_frames_that_came(rig):
    anchor = rig.fill(1.0)
    request = rig.clips.submit(ClipJob(anchor, 1.0, 60.0, "detect.person"))  # a minute of frames that never come
    assert not request.done.wait(0.5)
    rig.clips.stop()
    assert request.done.is_set()
    assert request.error is None and request.capture["frames"] == 16
    assert "stopped before the clip's end" in request.capture["note"]


def test_retention_deletes_clips_and_detection_pictures_before_manual_saves(tmp_path):
    values: dict[str, Any] = {"export.max_disk_mb": 1, "export.formats": ["npy"]}
    rig = Rig(tmp_path, **values)
    try:
        day = 86400.0
        t0 = time.time() - 3 * day
        block = bytes(300_000)
        # Oldest first: a manual save, then a detection picture and a clip, each about 300 KB.
        rig.exporter.save_files(1, t0, "save", [("npy", block)])
        rig.exporter.save_files(2, t0 + 60, "autodetect", [("jpg", block), ("json", b"{}")])
        rig.exporter.save_files(3, t0 + 120, "clip", [("mp4", block), ("json", b"{}")])
        # A fourth needs room: the clip and the picture are auto-saves, so they go before the older manual save.
        rig.exporter.save_files(4, t0 + 180, "save", [("npy", block)])
        names = sorted(p.name for p in rig.base.glob("????-??-??/*"))  # the day folders: the captures
        assert [n.split("_", 1)[1] for n in names] == ["f1_save.npy", "f3_clip.json", "f3_clip.mp4", "f4_save.npy"]
        assert rig.exporter.health()["deleted_by_retention"] == 1
    finally:
        rig.stop()


def test_many_pictures_while_busy_are_bounded_and_written_after(rig):
    anchor = rig.fill(1.0)
    request = rig.clips.submit(ClipJob(anchor, 0.5, 0.0, "command"))
    assert request.done.wait(20) and request.error is None
    jpeg = cv2.imencode(".jpg", rig.frame(1))[1].tobytes()
    done = threading.Event()
    rig.bus.subscribe("export.saved", lambda e: done.set() if e.data["capture_kind"] == "autodetect" else None)
    rig.clips.save_still(jpeg, anchor, {"kind": "autodetect", "method": "annotated", "frames": 1})
    assert done.wait(20)
    pictures = list(rig.base.rglob("*_autodetect.jpg"))
    assert len(pictures) == 1 and read_image(pictures[0]).shape == (RING_H, RING_W, 3)
    doc = json.loads(pictures[0].with_suffix(".json").read_text())
    assert doc["frame_id"] == anchor.frame_id and doc["capture"]["kind"] == "autodetect"
    assert rig.clips.health()["pictures"] == 1
