"""Frame sources: synthetic scene, OpenCV (file, HTTP MJPEG), Picamera2 (against the stand-in), source choice."""

from __future__ import annotations

import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from daemon.config import Config
from daemon.sources.base import SourceError
from daemon.sources.opencv_source import OpenCVSource, classify_device, redact_url
from daemon.sources.picamera2_source import Picamera2Source
from daemon.sources.scene import MACHINE_RECT_FRAC, MACHINE_RUN_S, MACHINE_STOP_S, NIGHT_LIGHT, machine_running_at, scene_light
from daemon.sources.select import build_source, list_cameras, probe_opencv
from daemon.sources.synthetic import DAY_EXPOSURE_US, MAX_EXPOSURE_US, MAX_GAIN, SyntheticSource

sys.path.insert(0, str(Path(__file__).parent))
import fake_picamera2  # noqa: E402


def synthetic(**values) -> tuple[SyntheticSource, Config]:
    base = {"camera.width": 320, "camera.height": 240, "camera.framerate": 100.0, "synthetic.start_phase": 0.5}
    base.update(values)
    cfg = Config(base)
    src = SyntheticSource(cfg.section("camera"), cfg.section("synthetic"))
    src.open()
    return src, cfg


def read_frames(src, n: int, timeout: float = 5.0) -> list[tuple[np.ndarray, dict]]:
    out: list[tuple[np.ndarray, dict]] = []
    while len(out) < n:
        got = src.read(timeout)
        assert got is not None, "source gave no frame within the timeout"
        out.append(got)
    return out


def rect_slice(rect):
    x, y, w, h = rect
    return slice(y, y + h), slice(x, x + w)


# --- synthetic scene ---------------------------------------------------------------------------


def test_synthetic_same_seed_same_frames_and_different_seed_differs():
    a, _ = synthetic(**{"synthetic.seed": 7})
    b, _ = synthetic(**{"synthetic.seed": 7})
    c, _ = synthetic(**{"synthetic.seed": 8})
    try:
        fa = read_frames(a, 4)
        fb = read_frames(b, 4)
        fc = read_frames(c, 4)
        for (x, ix), (y, iy) in zip(fa, fb, strict=False):
            assert np.array_equal(x, y)
            assert ix == iy
        assert not np.array_equal(fa[2][0], fc[2][0])
        # consecutive frames differ (noise, movement) and are fresh arrays that later frames never overwrite
        first_copy = fa[0][0].copy()
        assert not np.array_equal(fa[0][0], fa[1][0])
        assert not np.shares_memory(fa[0][0], fa[1][0])
        read_frames(a, 2)
        assert np.array_equal(fa[0][0], first_copy)
        assert fa[0][0].dtype == np.uint8 and fa[0][0].shape == (240, 320, 3)
    finally:
        a.close()
        b.close()
        c.close()


def test_synthetic_paces_to_the_frame_rate_and_honours_the_timeout():
    src, _ = synthetic(**{"camera.framerate": 20.0})
    try:
        read_frames(src, 1)
        started = time.monotonic()
        frames = read_frames(src, 10)
        elapsed = time.monotonic() - started
        assert elapsed >= 10 * 0.05 * 0.8  # never faster than 20 fps (loose)
        steps = np.diff([info["scene_t"] for _, info in frames])
        assert np.allclose(steps, 0.05)  # scene time = k / framerate

        src.set_framerate(0.5)  # one frame every 2 s
        read_frames(src, 1)
        assert src.read(0.1) is None  # the next one is not due yet
        with pytest.raises(ValueError):
            src.set_framerate(0)
        with pytest.raises(ValueError):
            src.set_framerate(float("nan"))
        assert src.describe()["framerate"] == 0.5  # refused values changed nothing

        # a read waiting for its frame returns as soon as the source is closed
        result: dict[str, tuple[np.ndarray, dict[str, Any]] | None] = {}
        t = threading.Thread(target=lambda: result.setdefault("r", src.read(30.0)))
        t.start()
        time.sleep(0.1)
        src.close()
        t.join(5)
        assert not t.is_alive() and result["r"] is None
        with pytest.raises(SourceError):
            src.read(0.1)
    finally:
        src.close()


def test_light_cycle_is_smooth_with_a_realistic_range():
    assert scene_light(0.5) == pytest.approx(1.0)
    assert scene_light(0.0) == pytest.approx(NIGHT_LIGHT)
    phases = np.linspace(0.0, 0.5, 2001)
    levels = np.array([scene_light(p) for p in phases])
    assert np.all(np.diff(levels) >= 0)  # brightens all morning
    assert np.max(levels[1:] / levels[:-1]) < 1.05  # no jumps, even through twilight
    assert 1e-3 < scene_light(0.25) < 0.5  # dawn is in between
    assert scene_light(0.2) == pytest.approx(scene_light(0.8))  # the evening mirrors the morning


def test_night_frames_are_dark_until_night_exposure_and_day_equivalent_matches():
    noon, _ = synthetic(**{"synthetic.noise": 0.0, "synthetic.people": 0})
    night, _ = synthetic(**{"synthetic.noise": 0.0, "synthetic.people": 0, "synthetic.start_phase": 0.0})
    try:
        day_frame, day_info = read_frames(noon, 1)[0]
        dark_frame, dark_info = read_frames(night, 1)[0]
        assert day_info["exposure_us"] == DAY_EXPOSURE_US and day_info["gain"] == 1.0
        assert day_frame.mean() > 80
        assert dark_frame.mean() < 1.0  # 3e-4 of daylight at the day exposure: black
        before = night.exposure()

        applied = night.apply_night(True, "still", 1_000_000, 8.0)
        assert applied["applied"] and applied["exposure_us"] == 1_000_000 and applied["gain"] == 8.0
        assert not applied["clamped"]
        lit_frame, lit_info = night.frame_at(0.0)
        assert lit_info["exposure_us"] == 1_000_000 and lit_info["gain"] == 8.0
        assert lit_frame.mean() > 20 * max(dark_frame.mean(), 0.5)
        day_equivalent = lit_frame.mean() * DAY_EXPOSURE_US * 1.0 / (1_000_000 * 8.0)
        assert day_equivalent == pytest.approx(day_frame.mean() * NIGHT_LIGHT, rel=0.1)

        # bad requests are refused and change nothing
        with pytest.raises(ValueError):
            noon.apply_night(True, "sideways", 1_000_000, 8.0)
        assert noon.exposure()["mode"] == "day"
        assert before["mode"] == "day"

        clamped = night.apply_night(True, "still", 60_000_000, 100.0)
        assert clamped["exposure_us"] == MAX_EXPOSURE_US and clamped["gain"] == MAX_GAIN and clamped["clamped"]
        assert "clamped" in clamped["note"]

        back = night.apply_night(False, "still", 0, 1.0)
        assert back["night"] is False and back["exposure_us"] == DAY_EXPOSURE_US
        assert night.frame_at(0.0)[1]["exposure_us"] == DAY_EXPOSURE_US
    finally:
        noon.close()
        night.close()


def test_still_night_mode_slows_frames_to_the_exposure_and_slow_video_auto_exposes():
    src, _ = synthetic(**{"camera.framerate": 20.0, "synthetic.start_phase": 0.0})
    try:
        read_frames(src, 1)
        src.apply_night(True, "still", 200_000, 4.0)  # 0.2 s exposures at 20 fps: one frame per 0.2 s
        frames = read_frames(src, 4)
        steps = np.diff([info["scene_t"] for _, info in frames])
        assert np.allclose(steps, 0.2)
        assert src.exposure()["frame_interval_s"] == pytest.approx(0.2)

        src.apply_night(True, "slow_video", 2_000_000, 8.0)
        _, info = src.frame_at(0.0)  # midnight: AE uses all it is allowed
        assert info["exposure_us"] == 2_000_000 and info["gain"] == 8.0
        _, info = src.frame_at(0.5 * 600)  # noon with the same settings: AE picks a short exposure
        assert info["exposure_us"] < 2_000_000 and info["gain"] == 1.0
    finally:
        src.close()


def test_machine_moves_in_its_rectangle_only_while_running():
    src, _ = synthetic(**{"synthetic.people": 0, "camera.width": 400, "camera.height": 300, "synthetic.day_length_s": 86400})
    try:
        rect = src.machine_rect()
        fx, fy, fw, fh = MACHINE_RECT_FRAC
        assert rect == (round(fx * 400), round(fy * 300), round(fw * 400), round(fh * 300))
        assert machine_running_at(0.0) and machine_running_at(MACHINE_RUN_S - 0.1)
        assert not machine_running_at(MACHINE_RUN_S) and not machine_running_at(MACHINE_RUN_S + MACHINE_STOP_S - 0.1)
        assert machine_running_at(MACHINE_RUN_S + MACHINE_STOP_S)

        def changed_fraction(t0: float, t1: float, k: int) -> float:
            a, ia = src.frame_at(t0, k)
            b, _ = src.frame_at(t1, k + 1)
            assert ia["machine_running"] == src.truth(t0)["machine_running"]
            diff = cv2.absdiff(a[rect_slice(rect)], b[rect_slice(rect)]).max(axis=2)
            return float((diff > 40).mean())

        for t in (3.0, 20.0, 44.0, 93.0):  # running
            assert src.truth(t)["machine_running"]
            assert changed_fraction(t, t + 0.1, int(t * 10)) > 0.01
        for t in (46.0, 70.0, 89.0, 140.0):  # stopped: only noise changes
            assert not src.truth(t)["machine_running"]
            assert changed_fraction(t, t + 0.1, int(t * 10)) < 0.001
        # the stopped wheel stays where it stopped
        a, _ = src.frame_at(50.0, 1)
        b, _ = src.frame_at(85.0, 2)
        assert float((cv2.absdiff(a[rect_slice(rect)], b[rect_slice(rect)]).max(axis=2) > 40).mean()) < 0.001
    finally:
        src.close()


def test_people_boxes_cover_what_is_drawn():
    people, _ = synthetic(**{"synthetic.people": 4, "synthetic.noise": 0.0, "camera.width": 400, "camera.height": 300, "synthetic.seed": 3})
    empty, _ = synthetic(**{"synthetic.people": 0, "synthetic.noise": 0.0, "camera.width": 400, "camera.height": 300, "synthetic.seed": 3})
    try:
        seen_people = 0
        for t in (0.0, 7.5, 31.0, 64.0):
            boxes = people.truth(t)["people_boxes"]
            seen_people += len(boxes)
            with_people, _ = people.frame_at(t)
            without, _ = empty.frame_at(t)
            drawn = cv2.absdiff(with_people, without).max(axis=2) > 0
            covered = np.zeros_like(drawn)
            for x, y, w, h in boxes:
                assert 0 <= x and 0 <= y and x + w <= 400 and y + h <= 300 and w > 0 and h > 0
                if x > 0 and x + w < 400:
                    assert drawn[y : y + h, x : x + w].mean() > 0.2  # a whole figure fills a good part of its box
                else:
                    assert drawn[y : y + h, x : x + w].any()  # one leaving the frame shows at least a part
                covered[y : y + h, x : x + w] = True
                # people stay out of the machine's rectangle
                mx, my, mw, mh = people.machine_rect()
                assert x + w <= mx or y + h <= my or y >= my + mh
            assert not (drawn & ~covered).any()  # nothing of a person is drawn outside the boxes
        assert seen_people >= 4
    finally:
        people.close()
        empty.close()


def test_hflip_vflip_mirror_the_frame_and_the_truth():
    plain, _ = synthetic(**{"synthetic.noise": 0.0, "synthetic.people": 3})
    flipped, _ = synthetic(**{"synthetic.noise": 0.0, "synthetic.people": 3, "camera.hflip": True, "camera.vflip": True})
    try:
        a, _ = plain.frame_at(12.0)
        b, _ = flipped.frame_at(12.0)
        assert np.array_equal(b, a[::-1, ::-1])
        x, y, w, h = plain.machine_rect()
        assert flipped.machine_rect() == (320 - x - w, 240 - y - h, w, h)
        for (x, y, w, h), fb in zip(plain.truth(12.0)["people_boxes"], flipped.truth(12.0)["people_boxes"], strict=False):
            assert fb == (320 - x - w, 240 - y - h, w, h)
    finally:
        plain.close()
        flipped.close()


# --- OpenCV: video files -----------------------------------------------------------------------


def write_video(path: Path, frames: int = 24, fps: float = 40.0, size=(160, 120)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        img = np.full((size[1], size[0], 3), 10 + i * 9, np.uint8)
        cv2.putText(img, str(i), (10, 80), cv2.FONT_HERSHEY_SIMPLEX, 2, (0, 0, 255), 3)
        writer.write(img)
    writer.release()
    return path


def opencv_source(device, **values) -> OpenCVSource:
    cfg = Config({"camera.framerate": 100.0, **values})
    return OpenCVSource(cfg.section("camera"), device=str(device))


def test_opencv_video_file_plays_to_the_end(tmp_path):
    video = write_video(tmp_path / "clip.avi")
    src = opencv_source(video, **{"camera.loop_video": False})
    with pytest.raises(SourceError):
        src.read(0.1)  # not open yet
    src.open()
    try:
        assert src.describe()["width"] == 160 and src.describe()["file_fps"] == pytest.approx(40.0)
        assert src.controls()["kind"] == "file" and src.controls()["backend"] == "FFMPEG"
        assert "note" in src.exposure()
        levels, frames = [], []
        with pytest.raises(SourceError, match="end of video"):
            for _ in range(200):
                got = src.read(2.0)
                if got is not None:
                    frames.append(got[0])
                    levels.append(float(got[0][:, :, 0].mean()))
        assert len(levels) >= 18  # all or nearly all 24 frames, in order
        assert all(b > a for a, b in zip(levels, levels[1:], strict=False))
        assert not np.shares_memory(frames[0], frames[1])
        with pytest.raises(SourceError):
            src.read(0.1)  # stays finished until reopened
    finally:
        src.close()


def test_opencv_video_file_loops(tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=12)
    src = opencv_source(video, **{"camera.loop_video": True})
    src.open()
    try:
        levels: list[float] = []
        loops: list[int] = []
        deadline = time.monotonic() + 20
        while len(levels) < 30 and time.monotonic() < deadline:
            got = src.read(2.0)
            if got is not None:
                levels.append(float(got[0][:, :, 0].mean()))
                loops.append(got[1]["video_loops"])
        assert len(levels) == 30
        assert max(loops) >= 1
        assert any(b < a - 40 for a, b in zip(levels, levels[1:], strict=False))  # back to the dark first frame
    finally:
        src.close()


def test_opencv_bad_inputs(tmp_path):
    with pytest.raises(SourceError, match="no such video file"):
        opencv_source(tmp_path / "missing.avi").open()
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError):
        opencv_source(junk).open()
    with pytest.raises(SourceError):
        OpenCVSource(Config().section("camera"), device="  ")
    with pytest.raises(SourceError, match="cannot open"):
        opencv_source("/dev/video-picamd-test-absent").open()
    assert classify_device("0") == ("index", 0)
    assert classify_device("/dev/video2") == ("v4l2", "/dev/video2")
    assert classify_device("rtsp://cam/1")[0] == "url"
    assert classify_device("clip.mp4") == ("file", "clip.mp4")
    assert redact_url("rtsp://admin:hunter2@10.0.0.5/stream") == "rtsp://admin:***@10.0.0.5/stream"
    video = write_video(tmp_path / "clip.avi", frames=4)
    src = opencv_source(video)
    src.open()
    try:
        with pytest.raises(ValueError):
            src.set_framerate(-1)
        assert src.describe()["framerate"] == 100.0
    finally:
        src.close()


# --- OpenCV: an HTTP MJPEG stream that dies or hangs --------------------------------------------


class MjpegServer:
    """A small multipart/x-mixed-replace server, like another picamd's /stream."""

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.stop = threading.Event()
        self.sockets: list[socket.socket] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.sockets.append(self.connection)
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                while not server.stop.is_set():
                    if server.hang.is_set():
                        server.stop.wait(0.05)  # connection open, nothing sent
                        continue
                    img = np.full((96, 128, 3), (i * 13) % 256, np.uint8)
                    ok, jpg = cv2.imencode(".jpg", img)
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg))
                        self.wfile.write(jpg.tobytes() + b"\r\n")
                    except OSError:
                        return
                    i += 1
                    server.stop.wait(0.03)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream"

    def kill(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_opencv_http_stream_that_dies_raises_without_hanging():
    server = MjpegServer()
    src = opencv_source(server.url, **{"camera.framerate": 10.0})
    try:
        src.open()
        frames = read_frames(src, 3)
        assert frames[0][0].shape == (96, 128, 3)
        server.kill()
        deadline = time.monotonic() + 20
        with pytest.raises(SourceError):
            while time.monotonic() < deadline:
                started = time.monotonic()
                src.read(1.0)
                assert time.monotonic() - started < 3.0  # every read is bounded
    finally:
        src.close()
        server.kill()


def test_opencv_http_stream_that_hangs_gives_none_within_the_timeout():
    server = MjpegServer()
    src = opencv_source(server.url, **{"camera.framerate": 10.0})
    try:
        src.open()
        read_frames(src, 2)
        server.hang.set()
        time.sleep(0.2)  # let frames already in flight arrive
        while src.read(0.3) is not None:
            pass
        started = time.monotonic()
        assert src.read(0.5) is None
        assert time.monotonic() - started < 2.5
        started = time.monotonic()
        src.close()  # the reader is stuck in FFmpeg; close must not wait for it
        assert time.monotonic() - started < 4.0
    finally:
        src.close()
        server.kill()


# --- Picamera2 against the stand-in ----------------------------------------------------------------


def picam(mod, **values) -> tuple[Picamera2Source, Config]:
    cfg = Config({"camera.width": 320, "camera.height": 240, "camera.framerate": 10.0, **values})
    return Picamera2Source(cfg.section("camera"), cfg.section("night"), picamera2_module=mod), cfg


def read_until(src, predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = src.read(1.0)
        if got is not None and predicate(got[1]):
            return got
    raise AssertionError("no frame matched in time")


def test_picamera2_day_configuration_and_frames():
    mod = fake_picamera2.make_module(time_scale=0.2)
    src, _ = picam(mod, **{"camera.hflip": True})
    src.open()
    try:
        day = mod.configurations("video")[-1]
        assert day["main"]["size"] == (320, 240) and day["main"]["format"] == "RGB888"
        assert day["controls"]["FrameDurationLimits"] == (100000, 100000)
        assert day["controls"]["AeEnable"] is True and day["controls"]["AwbEnable"] is True
        assert day["transform"] == fake_picamera2.Transform(hflip=1)
        (f1, i1), (f2, i2) = read_frames(src, 2)
        assert f1.shape == (240, 320, 3) and f1.dtype == np.uint8 and f1.flags.c_contiguous
        assert not np.shares_memory(f1, f2)
        assert i1["mode"] == "day" and i1["exposure_us"] > 0 and i1["gain"] >= 1.0
        assert "Lux" in i1 and "ColourTemperature" in i1
        # hflip: the stand-in's chart has its bright marker top-left, so mirrored it is top-right
        assert f1[5, -5].mean() > f1[5, 5].mean()
        exposure = src.exposure()
        assert exposure["ExposureTime"] > 0 and exposure["AnalogueGain"] >= 1.0 and exposure["mode"] == "day"
        controls = src.controls()
        assert controls["ExposureTime"]["max"] == 11766829
        assert src.describe()["model"] == "imx219"
        assert [m["size"] for m in src.describe()["sensor_modes"]][0] == [640, 480]

        src.set_framerate(5.0)
        read_until(src, lambda i: i.get("FrameDuration") == 200000)
        assert {"FrameDurationLimits": (200000, 200000)} in mod.controls_set()
        set_calls = len(mod.controls_set())
        with pytest.raises(ValueError):
            src.set_framerate(0)
        read_frames(src, 2)
        assert src.describe()["framerate"] == 5.0 and len(mod.controls_set()) == set_calls
    finally:
        src.close()
    assert ("close",) in mod.log and not mod.cameras[0].in_use


def test_picamera2_night_still_clamps_and_widens_frame_duration_then_day_restores_ae():
    mod = fake_picamera2.make_module(time_scale=0.005)  # an 11.8 s exposure takes 60 ms here
    mod.cameras[0].light = 0.001
    src, _ = picam(mod)
    src.open()
    try:
        day_frame, day_info = read_frames(src, 1)[0]
        assert day_info["exposure_us"] <= 66666  # AE in daylight mode cannot go long
        result = src.apply_night(True, "still", 30_000_000, 16.0)
        assert result["exposure_us"] == 11766829 and result["gain"] == pytest.approx(10.666666984558105)
        assert result["clamped"] and "clamped" in result["note"]
        assert result["frame_duration_limits_us"][1] >= 11766829

        frame, info = read_until(src, lambda i: i["mode"] == "still")
        still = mod.configurations("still")[-1]
        c = still["controls"]
        assert c["AeEnable"] is False and c["AwbEnable"] is False
        assert c["ExposureTime"] == 11766829 and c["AnalogueGain"] == pytest.approx(10.666666984558105)
        assert c["FrameDurationLimits"][1] >= c["ExposureTime"]
        assert still["main"]["size"] == (320, 240) and still["main"]["format"] == "RGB888"
        # the camera really exposed that long (not capped by a narrow frame duration)
        assert info["exposure_us"] == 11766829 and info["gain"] == pytest.approx(10.6667, abs=1e-3)
        assert frame.mean() > 50 and frame.mean() > 5 * day_frame.mean()  # the long exposure lights the scene

        back = src.apply_night(False, "still", 0, 1.0)
        assert back["night"] is False
        _, info = read_until(src, lambda i: i["mode"] == "day")
        day = mod.configurations("video")[-1]
        assert day["controls"]["AeEnable"] is True and day["controls"]["AwbEnable"] is True
        assert day["controls"]["ExposureTime"] == 0 and day["controls"]["AnalogueGain"] == 0  # handed back to AE
        _, info = read_until(src, lambda i: i["mode"] == "day" and i["exposure_us"] <= 100000)
        assert info["exposure_us"] < 11766829

        with pytest.raises(ValueError):
            src.apply_night(True, "moonlight", 1_000_000, 2.0)
        configured = len(mod.configurations())
        read_frames(src, 2)
        assert len(mod.configurations()) == configured  # the refused request changed nothing
    finally:
        src.close()


def test_picamera2_slow_video_lets_ae_use_long_frames():
    mod = fake_picamera2.make_module(time_scale=0.02)
    mod.cameras[0].light = 0.01
    src, _ = picam(mod)
    src.open()
    try:
        read_frames(src, 1)
        result = src.apply_night(True, "slow_video", 500_000, 8.0)
        assert result["mode"] == "slow_video" and not result["clamped"]
        _, info = read_until(src, lambda i: i["mode"] == "slow_video")
        video = mod.configurations("video")[-1]
        assert video["controls"]["AeEnable"] is True
        assert video["controls"]["FrameDurationLimits"] == (100000, 500000)
        assert video["controls"]["AeExposureMode"] == fake_picamera2.libcamera.controls.AeExposureModeEnum.Long
    finally:
        src.close()


def test_picamera2_new_night_values_apply_live_and_repeats_change_nothing():
    mod = fake_picamera2.make_module(time_scale=0.02)
    mod.cameras[0].light = 0.001
    src, _ = picam(mod)
    src.open()
    try:
        read_frames(src, 1)
        src.apply_night(True, "still", 2_000_000, 4.0)
        read_until(src, lambda i: i["mode"] == "still" and i["exposure_us"] == 2_000_000)
        configured = len(mod.configurations())
        src.apply_night(True, "still", 1_000_000, 2.0)  # e.g. `set night.exposure_us 1000000`
        _, info = read_until(src, lambda i: i["exposure_us"] == 1_000_000)
        assert info["gain"] == 2.0
        assert len(mod.configurations()) == configured  # no restart of the camera for new values
        assert mod.controls_set()[-1]["ExposureTime"] == 1_000_000
        src.apply_night(False, "still", 0, 1.0)
        src.apply_night(False, "still", 0, 1.0)
        read_until(src, lambda i: i["mode"] == "day")
        read_frames(src, 2)
        assert len(mod.configurations()) == configured + 1  # one switch to day, however often it is asked
    finally:
        src.close()


def test_stand_in_caps_exposure_at_the_frame_duration_like_the_real_camera():
    mod = fake_picamera2.make_module(time_scale=0.05)
    cam = mod.Picamera2(0)
    try:
        with pytest.raises(RuntimeError):
            cam.capture_request()  # before start
        config = cam.create_video_configuration(
            main={"size": (320, 240), "format": "RGB888"}, controls={"AeEnable": False, "ExposureTime": 1_000_000}
        )
        cam.configure(config)
        cam.start()
        with pytest.raises(RuntimeError, match="stopped before configuring"):
            cam.configure(config)
        with pytest.raises(RuntimeError, match="not advertised"):
            cam.set_controls({"Warp": 9})
        request = cam.capture_request(wait=5)
        md = request.get_metadata()
        request.release()
        with pytest.raises(RuntimeError):
            request.release()
        assert md["ExposureTime"] <= 33333  # video default FrameDurationLimits (33333, 33333) caps it
    finally:
        cam.close()
    with pytest.raises(RuntimeError):
        mod.Picamera2(1)  # no such camera


def test_picamera2_stall_is_bounded_and_reopen_works():
    mod = fake_picamera2.make_module(time_scale=0.2)
    src, _ = picam(mod)
    src.open()
    try:
        read_frames(src, 1)
        mod.cameras[0].stalled = True
        time.sleep(0.05)
        while src.read(0.3) is not None:
            pass
        started = time.monotonic()
        assert src.read(0.4) is None
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        src.close()
        assert time.monotonic() - started < 3.5
        assert not mod.cameras[0].in_use  # released even though a capture was waiting
        mod.cameras[0].stalled = False
        src.open()
        assert read_frames(src, 1)[0][0].shape == (240, 320, 3)
    finally:
        src.close()


def test_picamera2_open_failures(monkeypatch):
    src, _ = picam(fake_picamera2.make_module(sensors=()))
    with pytest.raises(SourceError, match="no Pi camera"):
        src.open()
    mod = fake_picamera2.make_module(time_scale=0.2)
    first, _ = picam(mod)
    second, _ = picam(mod)
    first.open()
    try:
        with pytest.raises(SourceError, match="cannot open"):
            second.open()  # the camera is held by the first
        assert read_frames(first, 1)  # and the first is unaffected
    finally:
        first.close()
    monkeypatch.setitem(sys.modules, "picamera2", None)  # as on a machine without picamera2
    missing, _ = picam(None)
    with pytest.raises(SourceError, match="python3-picamera2"):
        missing.open()


def test_picamera2_full_resolution_capture_then_stream_continues():
    mod = fake_picamera2.make_module(time_scale=0.05)
    src, _ = picam(mod)
    src.open()
    try:
        read_frames(src, 1)
        frame, info = src.capture_full(timeout=20)
        assert frame.shape == (2464, 3280, 3) and "exposure_us" in info
        assert mod.configurations("still")[-1]["main"]["size"] == (3280, 2464)
        assert read_frames(src, 2)[-1][0].shape == (240, 320, 3)
        assert mod.configurations()[-1]["use_case"] == "video"
    finally:
        src.close()
    with pytest.raises(SourceError):
        src.capture_full(timeout=1)


# --- choosing the source and listing cameras -------------------------------------------------------


def test_build_source_for_each_override(tmp_path):
    cfg = Config({"camera.device": str(tmp_path / "absent-video0")})
    src, why = build_source(cfg, "synthetic")
    assert isinstance(src, SyntheticSource) and "--source synthetic" in why
    mod = fake_picamera2.make_module()
    src, why = build_source(cfg, "picamera2", picamera2_module=mod)
    assert isinstance(src, Picamera2Source)
    src, why = build_source(cfg, "opencv")
    assert isinstance(src, OpenCVSource) and src.device == str(tmp_path / "absent-video0")
    video = write_video(tmp_path / "clip.avi", frames=4)
    src, why = build_source(cfg, str(video))
    assert isinstance(src, OpenCVSource) and src.device == str(video) and "file" in why
    src, why = build_source(cfg, "rtsp://admin:hunter2@10.0.0.5/live")
    assert isinstance(src, OpenCVSource) and "hunter2" not in why and "***" in why
    src, why = build_source(cfg, "2")
    assert isinstance(src, OpenCVSource) and src.device == 2
    with pytest.raises(SourceError, match="no such"):
        build_source(cfg, str(tmp_path / "nothing.mp4"))
    # camera.source from the config when there is no override
    src, why = build_source(Config({"camera.source": "synthetic"}))
    assert isinstance(src, SyntheticSource) and "camera.source=synthetic" in why


def test_build_source_auto_prefers_pi_camera_then_device_then_synthetic(tmp_path):
    cfg = Config({"camera.device": str(tmp_path / "absent-video0")})
    src, why = build_source(cfg, "auto", picamera2_module=fake_picamera2.make_module())
    assert isinstance(src, Picamera2Source) and "imx219" in why

    no_pi = fake_picamera2.make_module(sensors=())
    src, why = build_source(cfg, None, picamera2_module=no_pi)
    assert isinstance(src, SyntheticSource)
    assert "no Pi camera" in why and "absent-video0" in why

    video = write_video(tmp_path / "clip.avi", frames=4)
    cfg_dev = Config({"camera.device": str(video)})
    src, why = build_source(cfg_dev, "auto", picamera2_module=no_pi)
    assert isinstance(src, OpenCVSource) and "160x120" in why


def test_list_cameras_with_the_stand_in(tmp_path):
    mod = fake_picamera2.make_module(sensors=("imx219", "ov5647"), time_scale=0.2)
    (tmp_path / "video0").write_bytes(b"")  # a node that does not open
    found = list_cameras(mod, dev_glob=str(tmp_path / "video*"))
    pis = found["picamera2"]["cameras"]
    assert [c["model"] for c in pis] == ["imx219", "ov5647"]
    assert pis[0]["exposure_time_us"]["max"] == 11766829 and pis[1]["exposure_time_us"]["max"] == 969249
    assert {"size": [1640, 1232], "bit_depth": 10, "fps": 41.85}.items() <= pis[0]["sensor_modes"][1].items()
    assert all(c["opens"] for c in pis) and not any(c.in_use for c in mod.cameras)
    assert found["v4l2"] == [{"device": str(tmp_path / "video0"), "name": None, "opens": False, "error": found["v4l2"][0]["error"]}]

    # the camera the daemon holds is described from the running source, not reopened
    src, _ = picam(mod)
    src.open()
    try:
        found = list_cameras(mod, active=src, dev_glob=str(tmp_path / "none*"))
        assert found["picamera2"]["cameras"][0]["in_use_by_picamd"] is True
        assert found["picamera2"]["cameras"][0]["sensor_modes"]
        assert read_frames(src, 1)  # still streaming
    finally:
        src.close()


def test_list_cameras_without_picamera2(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    found = list_cameras(dev_glob=str(tmp_path / "video*"))
    assert found["picamera2"]["available"] is False and "python3-picamera2" in found["picamera2"]["note"]
    assert found["v4l2"] == []
    assert probe_opencv(str(tmp_path / "absent.avi"))["opens"] is False
