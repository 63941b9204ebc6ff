"""What a Pi does for free, checked on the picamera2 stand-in: the ISP's lores stream feeds the ring, the
hardware MJPEG encoder feeds the stream.

The stand-in enforces libcamera's constraints as picamera2 reports them (lores
no larger than main, YUV lores on the VC4 Pis) and records every
configuration and encoder call. The rig wires the real Picamera2Source,
CaptureLoop, Ring, JpegFeed and HttpServer as the app does; viewers read the
stream over loopback.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fake_picamera2  # noqa: E402
from daemon_proc import wait_for  # noqa: E402
from images import decode_jpeg

from daemon.capture.loop import CaptureLoop  # noqa: E402
from daemon.capture.ring import FrameMeta, LatestSlot, Ring  # noqa: E402
from daemon.config import Config, ring_frame_size  # noqa: E402
from daemon.core.bus import EventBus  # noqa: E402
from daemon.core.status import ComponentStatus  # noqa: E402
from daemon.image.night import NightController  # noqa: E402
from daemon.net.http import HttpServer  # noqa: E402
from daemon.net.jpegfeed import JpegFeed  # noqa: E402
from daemon.sources.picamera2_source import Picamera2Source  # noqa: E402

pytestmark = pytest.mark.timeout(60)

W, H = 320, 240


class Recorder:
    """A capture stage that keeps every frame's metadata by id, as the stream's headers were made from it."""

    def __init__(self) -> None:
        self.metas: dict[int, FrameMeta] = {}

    def process(self, ring_frame: np.ndarray, meta: FrameMeta, full_frame: np.ndarray | None = None) -> None:
        self.metas[meta.frame_id] = meta


class PiRig:
    """A Pi camera on a Pi of one generation, wired as the app wires it: source, capture loop, ring, stream, HTTP."""

    def __init__(self, generation: int = 4, overlay: Any = None, **values: Any) -> None:
        self.mod = fake_picamera2.make_module(time_scale=0.2, pi_generation=generation)
        self.config = Config(
            {
                "camera.width": W,
                "camera.height": H,
                "camera.framerate": 10.0,
                "ring.downscale": "160x120",
                "night.enabled": False,
                "night.exposure_us": 200_000,
                "mjpeg.max_fps": 60.0,
                "http.bind": "127.0.0.1",
                "http.port": 0,
                **values,
            }
        )
        cam = self.config.section("camera")
        self.source = Picamera2Source(cam, self.config.section("night"), picamera2_module=self.mod)
        ring_w, ring_h = ring_frame_size(self.config.get("ring.downscale"), W, H)
        self.ring = Ring(16, ring_h, ring_w)
        self.latest = LatestSlot()
        self.recorder = Recorder()
        bus = EventBus()
        self.night = NightController(
            self.config.section("night"), bus, apply_camera=lambda n: self.loop.apply_night(n), status=ComponentStatus("night")
        )
        self.loop = CaptureLoop(
            cam,
            self.config.section("night"),
            lambda: self.source,
            self.ring,
            self.latest,
            self.night,
            bus,
            ComponentStatus("camera"),
            stages=[self.recorder],
        )
        self.feed = JpegFeed(
            self.config.section("mjpeg"),
            self.ring,
            self.latest,
            ComponentStatus("encoder"),
            overlay=overlay,
            camera_jpeg=self.source.camera_jpeg(),
        )
        self.server = HttpServer(
            self.config.section("http"),
            self.config.section("mjpeg"),
            lambda: ["127.0.0.0/8"],
            self.feed,
            lambda: {},
            ComponentStatus("mjpeg"),
        )

    def start(self) -> PiRig:
        self.loop.start()
        self.feed.start()
        self.server.start()
        assert wait_for(lambda: self.loop.frames >= 2, 10)
        return self

    def stop(self) -> None:
        self.server.stop()
        self.feed.stop()
        self.loop.stop()

    @property
    def port(self) -> int:
        port = self.server.port
        assert port is not None
        return port

    def encoded(self) -> dict[bytes, int]:
        """The JPEGs the hardware codec made, with the sensor time (us) of their frames."""
        return {jpeg: ts for ts, jpeg in list(self.mod.encoded)}

    def calls(self, kind: str) -> list[dict]:
        return [c[1] for c in self.mod.encoder_calls() if c[0] == kind]


class StreamReader:
    """One MJPEG viewer on a raw socket: the parts' headers and JPEGs."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.fp = self.sock.makefile("rb")
        assert b" 200 " in self.fp.readline()
        while self.fp.readline() not in (b"\r\n", b""):
            pass

    def part(self) -> tuple[dict[str, str], bytes]:
        assert self.fp.readline() == b"--frame\r\n"
        headers = {}
        while (line := self.fp.readline()) != b"\r\n":
            name, _, value = line.decode("ascii").rstrip("\r\n").partition(": ")
            headers[name] = value
        body = self.fp.read(int(headers["Content-Length"]))
        assert self.fp.read(2) == b"\r\n"
        return headers, body

    def parts(self, n: int) -> list[tuple[dict[str, str], bytes]]:
        return [self.part() for _ in range(n)]

    def close(self) -> None:
        self.fp.close()
        self.sock.close()


def read_until(reader: StreamReader, predicate: Any, limit: int = 400) -> list[tuple[dict[str, str], bytes]]:
    """Parts until `predicate()` holds (checked after each part), at most `limit` of them."""
    got = []
    for _ in range(limit):
        got.append(reader.part())
        if predicate():
            return got
    raise AssertionError(f"condition not met within {limit} parts")


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- the stand-in enforces what libcamera enforces ---------------------------------------------------


@pytest.mark.parametrize("generation", [4, 5])
def test_stand_in_refuses_what_picamera2_refuses(generation):
    mod = fake_picamera2.make_module(pi_generation=generation)
    cam = mod.Picamera2(0)
    try:
        with pytest.raises(RuntimeError, match="lores stream dimensions may not exceed main stream"):
            cam.configure(cam.create_video_configuration(main={"size": (320, 240)}, lores={"size": (640, 480)}))
        rgb = cam.create_video_configuration(main={"size": (320, 240)}, lores={"size": (160, 120), "format": "RGB888"})
        if generation < 5:
            with pytest.raises(RuntimeError, match="lores stream must be YUV"):
                cam.configure(rgb)
        else:
            cam.configure(rgb)  # the Pi 5's ISP gives RGB
        cam.configure(cam.create_video_configuration(main={"size": (320, 240)}, lores={"size": (200, 150), "format": "YUV420"}))
        lores = cam.camera_configuration()["lores"]
        assert lores["stride"] == 256  # YUV420 rows aligned to 64 bytes
        cam.start()
        array = cam.capture_array("lores")
        assert array.shape == (150 * 3 // 2, 256)
    finally:
        cam.close()
    assert len(mod.configurations()) == (1 if generation < 5 else 2)  # a refused configuration never took effect


# --- lores: the ISP makes the ring frame ------------------------------------------------------------


@pytest.mark.parametrize("generation, fmt", [(3, "YUV420"), (4, "YUV420"), (5, "RGB888")])
def test_lores_at_the_ring_size_in_the_format_of_each_pi(generation, fmt):
    mod = fake_picamera2.make_module(time_scale=0.2, pi_generation=generation)
    cfg = Config({"camera.width": W, "camera.height": H, "camera.framerate": 10.0, "ring.downscale": "200x150"})
    src = Picamera2Source(cfg.section("camera"), cfg.section("night"), picamera2_module=mod)
    src.open()
    try:
        lores = mod.configurations("video")[-1]["lores"]
        assert lores["size"] == (200, 150) and lores["format"] == fmt
        assert src.describe()["ring_frames"] == f"200x150 {fmt} from the ISP"
        for _ in range(3):
            got = src.read(5.0)
            assert got is not None
            frame, info = got
            small = info["lores"]
            assert small.shape == (150, 200, 3) and small.dtype == np.uint8 and small.flags.c_contiguous
            # The same scene as the CPU would make it (the stride's padding columns are gone, colours survive YUV).
            assert mean_abs_diff(small, cv2.resize(frame, (200, 150), interpolation=cv2.INTER_AREA)) < 4.0
            assert isinstance(info["sensor_ts_ns"], int)
    finally:
        src.close()


def test_the_ring_gets_the_isp_frame_and_the_cpu_resizes_nothing(monkeypatch):
    resizes = []
    real_resize = cv2.resize

    def counting_resize(*args: Any, **kwargs: Any) -> Any:
        resizes.append(threading.current_thread().name)
        return real_resize(*args, **kwargs)

    monkeypatch.setattr(cv2, "resize", counting_resize)
    rig = PiRig(4).start()
    try:
        assert wait_for(lambda: rig.loop.frames >= 15, 10)
        assert set(rig.loop.ring_from) == {"isp"} and rig.loop.health()["ring_from"]["isp"] >= 15
        assert resizes == []
        latest = rig.latest.get()
        assert latest is not None
        full, meta = latest
        ring = rig.ring.get(meta.frame_id)
        assert ring is not None
        assert mean_abs_diff(ring[0], real_resize(full, (160, 120), interpolation=cv2.INTER_AREA)) < 4.0
        assert ring[1].dark_score == pytest.approx(meta.dark_score)
    finally:
        rig.stop()


@pytest.mark.parametrize(
    "values, expected_note, path",
    [
        (
            {"ring.downscale": "640x480"},
            "libcamera refused a 640x480 YUV420 lores stream (lores stream dimensions may not exceed main stream)",
            "resize",
        ),
        ({"ring.downscale": "255x191"}, "libcamera made the 255x191 lores stream (254, 190)", "resize"),
        ({"camera.lores": "off"}, "off (camera.lores)", "resize"),
        ({"ring.downscale": "1"}, "not needed: the ring is full size", "copy"),
    ],
)
def test_without_lores_the_ring_is_made_on_the_cpu(values, expected_note, path):
    rig = PiRig(4, **values).start()
    try:
        assert wait_for(lambda: rig.loop.frames >= 5, 10)
        assert rig.source.describe()["ring_frames"].startswith(expected_note)
        assert set(rig.loop.ring_from) == {path}
        assert rig.mod.configurations()[-1]["lores"] is None
    finally:
        rig.stop()
    # Refused once, not asked again when the camera is reopened.
    configured = len(rig.mod.configurations())
    rig.source.open()
    rig.source.close()
    assert len(rig.mod.configurations()) == configured + 1


# --- the hardware MJPEG encoder ---------------------------------------------------------------------


def test_stream_jpegs_come_from_the_hardware_encoder_with_their_own_headers():
    rig = PiRig(4).start()
    try:
        viewer = StreamReader(rig.port)
        parts = viewer.parts(3) + read_until(viewer, lambda: rig.feed.camera_jpegs >= 12)
        viewer.close()
        encoded = rig.encoded()
        from_codec = 0
        for headers, body in parts:
            meta = rig.recorder.metas[int(headers["X-Frame-Id"])]
            assert headers["X-Exposure-Us"] == str(meta.exposure_us)
            assert headers["X-Timestamp"] == f"{meta.ts:.6f}"
            sensor_us = encoded.get(body)
            if sensor_us is not None:
                from_codec += 1
                assert meta.source_ts_ns is not None and abs(sensor_us - meta.source_ts_ns // 1000) <= 2  # the JPEG is that frame's
            assert decode_jpeg(body).shape == (H, W, 3)
        assert from_codec >= 12
        start = rig.calls("start_encoder")
        assert len(start) == 1
        assert start[0]["encoder"] == "MJPEGEncoder" and start[0]["stream"] == "main" and start[0]["size"] == (W, H)
        assert start[0]["format"] == "RGB888" and start[0]["bitrate"] > 0

        # Nobody watches: the codec stops, and makes nothing more.
        assert wait_for(lambda: len(rig.calls("stop_encoder")) == 1, 5)
        made = len(rig.mod.encoded)
        time.sleep(0.3)
        assert len(rig.mod.encoded) == made

        # Two viewers: one JPEG per frame for both (the same bytes for the same frame).
        first, second = StreamReader(rig.port), StreamReader(rig.port)
        a = {h["X-Frame-Id"]: b for h, b in first.parts(15)}
        b = {h["X-Frame-Id"]: b for h, b in second.parts(15)}
        first.close()
        second.close()
        shared = set(a) & set(b)
        assert shared and all(a[k] == b[k] for k in shared)
        assert len(rig.calls("start_encoder")) == 2
        health = rig.feed.health()
        assert health["camera_encoder"]["state"] in ("on", "off") and health["camera_jpegs"] >= from_codec
    finally:
        rig.stop()
    assert len(rig.calls("start_encoder")) == len(rig.calls("stop_encoder"))  # closing the camera stops the codec


def test_hardware_encoder_only_while_nothing_is_drawn():
    drawing = threading.Event()
    drawing.set()

    def overlay(frame: np.ndarray, meta: FrameMeta) -> np.ndarray:
        if not drawing.is_set():
            return frame
        out = frame.copy()
        cv2.rectangle(out, (10, 10), (60, 60), (0, 0, 255), -1)
        return out

    rig = PiRig(4, overlay=overlay)
    rig.feed.camera_rearm_s = 0.5
    rig.start()
    try:
        viewer = StreamReader(rig.port)
        drawn = viewer.parts(10)
        assert rig.calls("start_encoder") == [] and rig.feed.camera_jpegs == 0
        for _, body in drawn:
            img = decode_jpeg(body)
            assert img[35, 35, 2] > 200 and img[35, 35, 0] < 60  # the box is on every frame

        drawing.clear()
        read_until(viewer, lambda: rig.feed.camera_jpegs >= 3)
        assert len(rig.calls("start_encoder")) == 1

        drawing.set()
        read_until(viewer, lambda: len(rig.calls("stop_encoder")) == 1)
        cpu_before = rig.feed.encodes
        later = viewer.parts(5)
        viewer.close()
        encoded = rig.encoded()
        assert all(body not in encoded for _, body in later) and rig.feed.encodes >= cpu_before + 5
    finally:
        rig.stop()


def test_a_quality_change_restarts_the_hardware_encoder():
    rig = PiRig(4, **{"mjpeg.quality": 90}).start()
    try:
        viewer = StreamReader(rig.port)
        read_until(viewer, lambda: rig.feed.camera_jpegs >= 5)
        parts = viewer.parts(8)
        high = [len(b) for _, b in parts if b in rig.encoded()]
        rig.config.set("mjpeg.quality", 30)
        read_until(viewer, lambda: len(rig.calls("start_encoder")) == 2)
        restarted_at = rig.feed.camera_jpegs
        read_until(viewer, lambda: rig.feed.camera_jpegs >= restarted_at + 10)
        parts = viewer.parts(8)
        low = [len(b) for _, b in parts if b in rig.encoded()]
        viewer.close()
        kinds = [c[0] for c in rig.mod.encoder_calls()]
        assert kinds[:3] == ["start_encoder", "stop_encoder", "start_encoder"]
        first, second = rig.calls("start_encoder")[:2]
        assert second["bitrate"] < first["bitrate"] / 2
        assert high and low and np.mean(low) < np.mean(high) * 0.8  # the codec spends what it is given
        assert rig.feed.health()["camera_encoder"]["quality"] == 30
    finally:
        rig.stop()


def test_night_switch_restarts_the_encoder_on_the_new_configuration():
    rig = PiRig(4).start()
    try:
        viewer = StreamReader(rig.port)
        read_until(viewer, lambda: rig.feed.camera_jpegs >= 3)
        rig.loop.apply_night(True)
        read_until(viewer, lambda: len(rig.calls("start_encoder")) == 2)
        at = rig.feed.camera_jpegs
        read_until(viewer, lambda: rig.feed.camera_jpegs >= at + 3)
        viewer.close()
        log = list(rig.mod.log)
        stopped = next(i for i, e in enumerate(log) if e[0] == "stop_encoder")
        still = next(i for i, e in enumerate(log) if e[0] == "configure" and e[1]["use_case"] == "still")
        restarted = [i for i, e in enumerate(log) if e[0] == "start_encoder"][1]
        assert stopped < still < restarted  # stopped before the camera was reconfigured, started again on the new one
        assert rig.mod.configurations("still")[-1]["lores"]["size"] == (160, 120)  # the ISP still makes the ring frame
        assert set(rig.loop.ring_from) == {"isp"}
    finally:
        rig.stop()


@pytest.mark.parametrize(
    "generation, values, state, reason",
    [
        (5, {}, "unavailable", "no hardware JPEG encoder"),
        (4, {"camera.hw_encoder": "off"}, "unavailable", "camera.hw_encoder is off"),
        (4, {"mjpeg.resolution": "ring"}, "off", None),
    ],
)
def test_the_cpu_encodes_where_the_hardware_path_does_not_apply(generation, values, state, reason):
    rig = PiRig(generation, **values).start()
    try:
        viewer = StreamReader(rig.port)
        parts = viewer.parts(8)
        viewer.close()
        assert rig.calls("start_encoder") == [] and len(rig.mod.encoded) == 0
        assert rig.feed.encodes >= 8 and rig.feed.camera_jpegs == 0
        size = (120, 160) if values.get("mjpeg.resolution") == "ring" else (H, W)
        assert all(decode_jpeg(b).shape[:2] == size for _, b in parts)
        described = rig.feed.health()["camera_encoder"]
        assert described["state"] == state
        assert (reason is None and described["reason"] is None) or reason in described["reason"]
    finally:
        rig.stop()
