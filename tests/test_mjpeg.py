"""JpegFeed and HttpServer through their real interfaces: HTTP on loopback, OpenCV decoding, the command registry."""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from daemon_proc import wait_for
from rigs import HttpRig, request

from daemon import __version__
from daemon.capture.ring import FrameMeta
from daemon.commands import Registry

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(90)

W, H = 640, 480
RING_W, RING_H = 160, 120
NOTE = "line one\r\nInjected: yes"


def frame_meta(fid: int) -> FrameMeta:
    return FrameMeta(
        frame_id=fid,
        ts=time.time(),
        mono=time.monotonic(),
        dark_score=80.0 + fid % 7,
        night=fid % 2 == 1,
        exposure_us=20000 + fid,
        gain=2.5,
        extra={"motion": {"machine": {"fraction": round((fid % 10) / 10, 2), "state": "RUNNING"}}, "note": NOTE},
    )


def make_rig(**options: Any) -> HttpRig:
    """A full-size stream (ids from 100) whose every frame carries metadata of each kind."""
    return HttpRig(frame_size=(W, H), ring_size=(RING_W, RING_H), meta=frame_meta, first_id=100, **options)


@pytest.fixture
def rig():
    r = make_rig().start()
    yield r
    r.stop()


def read_head(fp) -> tuple[str, dict[str, str]]:
    status = fp.readline().decode("latin-1").rstrip("\r\n")
    headers: dict[str, str] = {}
    while True:
        line = fp.readline()
        if line in (b"\r\n", b""):
            return status, headers
        name, _, value = line.decode("latin-1").rstrip("\r\n").partition(":")
        headers[name.strip()] = value.strip()


class Viewer:
    """A strict MJPEG reader on a raw socket: checks the wire format part by part."""

    def __init__(
        self, port: int, path: str = "/stream", rcvbuf: int | None = None, timeout: float = 15.0, read_head_now: bool = True
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n".encode())
        self.fp = self.sock.makefile("rb")
        self.status: str | None = None
        self.headers: dict[str, str] | None = None
        if read_head_now:
            self.status, self.headers = read_head(self.fp)

    def part(self) -> tuple[dict[str, str], bytes]:
        line = self.fp.readline()
        if not line:
            raise EOFError("stream ended")
        assert line == b"--frame\r\n", line[:80]
        headers: dict[str, str] = {}
        while True:
            h = self.fp.readline()
            assert h.endswith(b"\r\n"), h[:80]
            if h == b"\r\n":
                break
            name, sep, value = h.decode("ascii").rstrip("\r\n").partition(": ")
            assert sep and name not in headers, h
            headers[name] = value
        body = self.fp.read(int(headers["Content-Length"]))
        assert self.fp.read(2) == b"\r\n"
        return headers, body

    def close(self) -> None:
        for closable in (self.fp, self.sock):
            try:
                closable.close()
            except OSError:
                pass


def decode(jpeg: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a decodable JPEG"
    return img


def drained_to_eof(sock: socket.socket, timeout: float = 15.0) -> bool:
    """Read and discard until the server closes the connection."""
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 16):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return True


# --- the stream --------------------------------------------------------------------------------------


def test_stream_parts_decode_and_carry_the_metadata(rig):
    v = Viewer(rig.port)
    try:
        assert v.status is not None and v.status.startswith("HTTP/1.0 200")
        assert v.headers is not None and v.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
        ids = []
        for _ in range(6):
            headers, jpeg = v.part()
            assert headers["Content-Type"] == "image/jpeg"
            assert int(headers["Content-Length"]) == len(jpeg)
            assert decode(jpeg).shape == (H, W, 3)
            fid = int(headers["X-Frame-Id"])
            meta = rig.metas[fid]
            assert float(headers["X-Timestamp"]) == pytest.approx(meta.ts, abs=1e-5)
            assert float(headers["X-Dark-Score"]) == pytest.approx(meta.dark_score, abs=1e-3)
            assert headers["X-Night"] == ("1" if meta.night else "0")
            assert int(headers["X-Exposure-Us"]) == meta.exposure_us
            assert float(headers["X-Gain"]) == pytest.approx(2.5)
            assert json.loads(headers["X-Motion"]) == meta.extra["motion"]
            # CR/LF in an extra value cannot inject a header of its own
            assert headers["X-Note"] == "line one  Injected: yes"
            assert "Injected" not in headers
            ids.append(fid)
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
    finally:
        v.close()


def test_opencv_videocapture_reads_the_stream(rig):
    cap = cv2.VideoCapture(rig.url("/stream"), cv2.CAP_FFMPEG)
    try:
        assert cap.isOpened()
        frames = []
        for _ in range(4):
            ok, frame = cap.read()
            assert ok
            frames.append(frame)
        assert all(f.shape == (H, W, 3) for f in frames)
        assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).max() > 100  # the square moved
    finally:
        cap.release()


def test_four_viewers_share_one_encode_per_frame(rig):
    rig.config.set("mjpeg.max_fps", 60)  # above the camera rate, so viewers skip no frame
    assert wait_for(lambda: rig.feed.watchers == 0)
    before = rig.feed.encodes
    seen: list[list[int]] = [[] for _ in range(4)]
    errors = []

    def watch(k: int) -> None:
        v = Viewer(rig.port)
        try:
            for _ in range(25):
                headers, jpeg = v.part()
                decode(jpeg)
                seen[k].append(int(headers["X-Frame-Id"]))
        except Exception as exc:  # reported below, with the viewer number
            errors.append((k, exc))
        finally:
            v.close()

    threads = [threading.Thread(target=watch, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert wait_for(lambda: rig.feed.watchers == 0)
    encodes = rig.feed.encodes - before
    distinct = set().union(*map(set, seen))
    assert all(len(s) == 25 for s in seen)
    # One encode per frame for everybody: every frame sent was encoded once, and at most a few
    # frames were encoded while a viewer was connecting or leaving; per-viewer encoding would be ~4x.
    assert len(distinct) <= encodes <= len(distinct) + 5, (encodes, len(distinct))
    assert encodes <= max(distinct) - min(distinct) + 1 + 5
    assert rig.server.health()["frames_sent"] >= 100


def test_fps_caps_a_viewer_and_max_fps_is_the_live_ceiling(rig):
    rig.config.set("mjpeg.max_fps", 3)
    counts: dict[str, tuple[int, float]] = {}

    def watch(name: str, path: str) -> None:
        v = Viewer(rig.port, path)
        try:
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < 3.0:
                v.part()
                n += 1
            counts[name] = (n, time.monotonic() - start)
        finally:
            v.close()

    asks = (("two", "/stream?fps=2"), ("asks_100", "/stream?fps=100"), ("default", "/stream"))
    threads = [threading.Thread(target=watch, args=a) for a in asks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(counts) == {"two", "asks_100", "default"}
    n, took = counts["two"]
    assert 1 <= n <= 2 * took + 2, counts
    for name in ("asks_100", "default"):
        n, took = counts[name]
        assert 1 <= n <= 3 * took + 2, counts  # 20 fps arrive; the ceiling is 3


@pytest.mark.parametrize("fps", ["abc", "0", "-2", "nan", "inf", ""])
def test_bad_fps_is_refused_and_starts_no_viewer(rig, fps):
    status, headers, body = request(rig.port, f"/stream?fps={fps}")
    assert status == 400 and b"fps" in body
    assert rig.server.health()["viewers"] == 0 and rig.feed.watchers == 0


def test_stalled_viewer_does_not_stop_the_others_and_is_dropped():
    rig = make_rig(send_timeout_s=1.0).start()
    stalled = Viewer(rig.port, rcvbuf=4096, read_head_now=False)  # sends its request, then never reads
    try:
        assert wait_for(lambda: rig.server.health()["viewers"] == 1)
        v = Viewer(rig.port)
        try:
            ids = [int(v.part()[0]["X-Frame-Id"]) for _ in range(30)]
            assert ids == sorted(ids) and len(set(ids)) == 30
        finally:
            v.close()
        assert wait_for(lambda: rig.server.health()["dropped_for_slow_clients"] == 1, timeout=30)
        assert drained_to_eof(stalled.sock)  # the server closed it
        assert wait_for(lambda: rig.server.health()["viewers"] == 0)
    finally:
        stalled.close()
        rig.stop()


def test_nothing_is_encoded_while_nobody_watches(rig):
    def frames_pass(n: int) -> None:
        target = rig.ring.newest_id + n
        assert wait_for(lambda: rig.ring.newest_id >= target)

    frames_pass(10)
    assert rig.feed.encodes == 0 and rig.feed.watchers == 0
    v = Viewer(rig.port)
    for _ in range(3):
        v.part()
    v.close()
    assert rig.feed.encodes >= 3
    assert wait_for(lambda: rig.feed.watchers == 0)
    frames_pass(2)  # an encode already under way when the last viewer left may still finish
    settled = rig.feed.encodes
    frames_pass(10)
    assert rig.feed.encodes == settled
    assert rig.feed.health()["watchers"] == 0


def test_frame_counter_restart_does_not_freeze_viewers(rig):
    v = Viewer(rig.port)
    try:
        before = [int(v.part()[0]["X-Frame-Id"]) for _ in range(3)]
        rig.next_id = 0  # the capture loop was rebuilt and counts from 0 again
        after = None
        for _ in range(100):
            fid = int(v.part()[0]["X-Frame-Id"])
            if fid < before[0]:
                after = fid
                break
        assert after is not None
        assert int(v.part()[0]["X-Frame-Id"]) > after  # and it follows the new counter
    finally:
        v.close()


def test_encode_failure_degrades_and_recovers(rig):
    v = Viewer(rig.port)
    try:
        v.part()
        rig.running.clear()
        time.sleep(0.2)  # let a commit in flight finish before the broken frame goes in
        broken = FrameMeta(frame_id=rig.next_id + 5, ts=time.time(), mono=time.monotonic())
        rig.latest.put(np.zeros((0, 0, 3), np.uint8), broken)
        assert wait_for(lambda: not rig.feed_status.ok)
        assert rig.feed_status.errors >= 1 and "encoding fails" in rig.feed_status.state
        errors = rig.feed_status.errors
        rig.next_id = broken.frame_id + 1
        rig.running.set()
        fid = int(v.part()[0]["X-Frame-Id"])
        while fid <= broken.frame_id:
            fid = int(v.part()[0]["X-Frame-Id"])
        assert wait_for(lambda: rig.feed_status.ok)
        assert rig.feed_status.errors == errors  # the broken frame was tried once, not again and again
    finally:
        v.close()


def test_resolution_ring_streams_the_ring_frames_live(rig):
    rig.config.set("mjpeg.resolution", "ring")
    status, headers, body = request(rig.port, "/snapshot.jpg")
    assert status == 200 and decode(body).shape == (RING_H, RING_W, 3)
    v = Viewer(rig.port)
    try:
        assert decode(v.part()[1]).shape == (RING_H, RING_W, 3)
        rig.config.set("mjpeg.resolution", "full")
        shapes = {decode(v.part()[1]).shape for _ in range(5)}
        assert (H, W, 3) in shapes
    finally:
        v.close()


def test_quality_is_read_live(rig):
    v = Viewer(rig.port)
    try:
        sizes_hi = [len(v.part()[1]) for _ in range(3)]
        rig.config.set("mjpeg.quality", 10)
        sizes = [len(v.part()[1]) for _ in range(6)]
        assert min(sizes) < min(sizes_hi) / 2
    finally:
        v.close()


# --- the other routes --------------------------------------------------------------------------------


def test_snapshot_meta_health_and_page(rig):
    status, headers, body = request(rig.port, "/snapshot.jpg")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert decode(body).shape == (H, W, 3)
    assert int(headers["x-frame-id"]) in rig.metas

    status, headers, body = request(rig.port, "/meta")
    assert status == 200 and headers["content-type"] == "application/json"
    meta = json.loads(body)
    assert meta["frame_id"] in rig.metas
    assert meta["motion"] == rig.metas[meta["frame_id"]].extra["motion"]
    assert json.loads(request(rig.port, "/meta.json")[2])["frame_id"] >= meta["frame_id"]

    status, headers, body = request(rig.port, "/health")
    health = json.loads(body)
    assert status == 200 and health["mjpeg"]["max_clients"] == 16 and "encodes_per_s" in health["encoder"]
    assert health["mjpeg"]["listening"] is True

    status, headers, body = request(rig.port, "/")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert 'src="stream"' in page and 'fetch("meta"' in page and 'href="health"' in page
    assert "http://" not in page and "https://" not in page  # self-contained: no external assets

    status, headers, body = request(rig.port, "/", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    status, headers, body = request(rig.port, "/stream", method="HEAD")
    assert status == 200 and headers["content-type"].startswith("multipart/x-mixed-replace") and body == b""


def test_no_frame_yet_answers_503():
    rig = make_rig(feed_frames=False).start()
    try:
        status, _, body = request(rig.port, "/snapshot.jpg")
        assert status == 503 and b"no frame" in body
        status, _, body = request(rig.port, "/meta")
        assert status == 503 and json.loads(body) == {"error": "no frame yet"}
    finally:
        rig.stop()


def test_snapshot_of_a_broken_frame_is_an_error_not_a_crash():
    rig = make_rig(feed_frames=False).start()
    try:
        rig.latest.put(np.zeros((0, 0, 3), np.uint8), FrameMeta(frame_id=1, ts=time.time(), mono=time.monotonic()))
        assert request(rig.port, "/snapshot.jpg")[0] == 503
        last_error = rig.feed_status.last_error
        assert rig.feed_status.errors == 1 and last_error is not None and "snapshot encode failed" in last_error
        rig.commit(rig.moving_square(2), 2)
        status, headers, body = request(rig.port, "/snapshot.jpg")
        assert status == 200 and headers["x-frame-id"] == "2" and decode(body).shape == (H, W, 3)
    finally:
        rig.stop()


def test_health_callable_failure_answers_500_and_server_goes_on():
    def broken() -> dict:
        raise RuntimeError("sensor file vanished")

    rig = make_rig(health=broken).start()
    try:
        status, _, body = request(rig.port, "/health")
        assert status == 500 and "sensor file vanished" in json.loads(body)["error"]
        assert rig.status.errors == 1
        assert request(rig.port, "/")[0] == 200
    finally:
        rig.stop()


def test_unknown_path_wrong_method_and_junk(rig):
    status, headers, body = request(rig.port, "/nope")
    assert status == 404 and headers["server"] == f"picamd/{__version__}"
    # The 404 names every path there is, /metrics among them.
    served = body.decode().splitlines()[1].removeprefix("try ").replace(" or ", ", ").split(", ")
    assert set(served) == {
        "/",
        "/index.html",
        "/stream",
        "/snapshot.jpg",
        "/health",
        "/metrics",
        "/meta",
        "/meta.json",
        "/detections",
        "/regions",
    }
    assert request(rig.port, "/stream/../etc/passwd")[0] == 404
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        status, headers, _ = request(rig.port, "/stream", method=method)
        assert status == 405 and headers["allow"] == "GET, HEAD"
    with socket.create_connection(("127.0.0.1", rig.port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")  # a TLS hello, say
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        assert b"400" in answer and b"Bad request" in answer
    with socket.create_connection(("127.0.0.1", rig.port), timeout=10) as s:
        s.sendall(b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.0 414")
    assert request(rig.port, "/")[0] == 200
    assert rig.server.health()["connections"] == 0 or wait_for(lambda: rig.server.health()["connections"] == 0)


def test_allow_list_is_read_live(rig):
    rig.allow = ["10.0.0.0/8"]
    status, _, body = request(rig.port, "/")
    assert status == 403 and b"allowed" in body
    assert request(rig.port, "/stream")[0] == 403
    assert request(rig.port, "/stream", method="POST")[0] == 403
    assert rig.server.health()["rejected_forbidden"] == 3 and rig.feed.watchers == 0
    rig.allow = ["127.0.0.1/32"]
    assert request(rig.port, "/")[0] == 200


def test_more_than_max_clients_get_503(rig):
    rig.config.set("http.max_clients", 2)
    viewers = [Viewer(rig.port) for _ in range(2)]
    try:
        for v in viewers:
            v.part()
        status, headers, body = request(rig.port, "/stream")
        assert status == 503 and headers["retry-after"] == "5" and b"viewers" in body
        assert rig.server.health()["rejected_busy"] == 1
        # Short requests have their own slots (http.max_requests): the page and /health stay reachable.
        assert request(rig.port, "/")[0] == 200 and request(rig.port, "/health")[0] == 200
        viewers.pop().close()
        assert wait_for(lambda: rig.server.health()["viewers"] < 2)
        viewers.append(Viewer(rig.port))
        assert viewers[-1].part()
    finally:
        for v in viewers:
            v.close()


# --- lifecycle ---------------------------------------------------------------------------------------


def test_stop_closes_viewers(rig):
    active = Viewer(rig.port)
    stalled = Viewer(rig.port, rcvbuf=4096, read_head_now=False)
    active.part()
    assert wait_for(lambda: rig.server.health()["viewers"] == 2)
    rig.server.stop()
    assert rig.server.port is None and rig.server.health()["listening"] is False
    assert drained_to_eof(active.sock) and drained_to_eof(stalled.sock)
    assert wait_for(lambda: rig.server.health()["viewers"] == 0)
    assert not [t for t in threading.enumerate() if t.name == "picamd-http"]
    rig.feed.stop()
    assert not [t for t in threading.enumerate() if t.name == "picamd-encoder"]
    active.close()
    stalled.close()


def test_a_port_in_use_fails_start_with_the_reason():
    # The daemon exits non-zero on it (systemd restarts it and the journal says why) instead of running on, unreachable.
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    rig = make_rig(values={"http.port": port})
    try:
        with pytest.raises(OSError, match=f"^HTTP server cannot listen on 127.0.0.1:{port}: Address already in use$"):
            rig.start()
        assert rig.server.port is None and rig.server.health()["listening"] is False
    finally:
        blocker.close()
        rig.stop()


# --- shortstream -------------------------------------------------------------------------------------


def parse_shortstream(data: bytes) -> list[bytes]:
    frames: list[bytes] = []
    pos = 0
    while True:
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        pos += 4
        if n == 0:
            assert pos == len(data), "bytes after the end marker"
            return frames
        frames.append(data[pos : pos + n])
        pos += n


def test_shortstream_sends_n_length_prefixed_frames_then_zero(rig):
    registry = Registry()
    rig.feed.register_commands(registry)
    reply = registry.dispatch("shortstream 5")
    assert reply.ok and reply.message == "shortstream 5"
    assert reply.encode() == b"OK shortstream 5\n"
    assert rig.feed.watchers == 0  # nothing is taken until the port starts sending
    assert reply.stream is not None
    frames = parse_shortstream(b"".join(reply.stream))
    assert len(frames) == 5
    assert all(decode(f).shape == (H, W, 3) for f in frames)
    assert len({f for f in frames}) == 5  # five different frames
    assert rig.feed.watchers == 0


def test_shortstream_closed_early_releases_the_watch(rig):
    registry = Registry()
    rig.feed.register_commands(registry)
    stream = registry.dispatch("shortstream 100").stream
    assert isinstance(stream, Generator)  # closed below, as the port does when the client goes away
    first = next(stream)
    assert struct.unpack(">I", first[:4])[0] == len(first) - 4
    assert rig.feed.watchers == 1
    stream.close()  # the client went away
    assert rig.feed.watchers == 0


@pytest.mark.parametrize(
    "line", ["shortstream 0", "shortstream 1001", "shortstream -3", "shortstream abc", "shortstream 2.5", "shortstream", "shortstream 1 2"]
)
def test_shortstream_bad_input_is_refused_and_changes_nothing(rig, line):
    registry = Registry()
    rig.feed.register_commands(registry)
    encodes = rig.feed.encodes
    reply = registry.dispatch(line)
    assert not reply.ok and reply.stream is None
    assert reply.first_line().startswith("ERR usage: shortstream N")
    assert rig.feed.watchers == 0 and rig.feed.encodes == encodes


def test_shortstream_without_frames_ends_with_zero_length():
    rig = make_rig(feed_frames=False).start()
    try:
        rig.feed.frame_wait_s = 0.5
        registry = Registry()
        rig.feed.register_commands(registry)
        stream = registry.dispatch("shortstream 3").stream
        assert stream is not None and b"".join(stream) == b"\x00\x00\x00\x00"
    finally:
        rig.stop()


# --- tools/client.py ---------------------------------------------------------------------------------

CLIENT = [sys.executable, str(ROOT / "tools" / "client.py")]
LINE = re.compile(
    r"^frame=(\d+) time=\d{4}-\d\d-\d\dT[\d:.]+ dark=[\d.]+ night=[01] exposure_us=\d+ gain=2\.500 "
    r"motion=(\{.*\}) note=line one  Injected: yes bytes=\d+ size=640x480$"
)


def test_client_prints_metadata_and_saves_frames(rig, tmp_path):
    out = subprocess.run(
        CLIENT + [rig.url("/stream"), "--count", "5", "--save", str(tmp_path), "--fps", "10", "--decode"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 5
    ids = []
    for line in lines:
        m = LINE.match(line)
        assert m, line
        ids.append(int(m.group(1)))
        assert json.loads(m.group(2)) == rig.metas[ids[-1]].extra["motion"]
    saved = sorted(tmp_path.glob("frame_*.jpg"))
    assert [int(p.stem.split("_")[1]) for p in saved] == sorted(ids)
    assert decode(saved[0].read_bytes()).shape == (H, W, 3)
    assert not list(tmp_path.glob(".*"))  # no temp files left


def test_client_exits_nonzero_when_it_cannot_connect(rig):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    out = subprocess.run(CLIENT + [f"http://127.0.0.1:{free}/stream", "--count", "1"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "cannot connect" in out.stderr and out.stdout == ""

    out = subprocess.run(CLIENT + [rig.url("/health"), "--count", "1"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "not an MJPEG stream" in out.stderr

    rig.allow = ["10.0.0.0/8"]
    out = subprocess.run(CLIENT + [rig.url("/stream"), "--count", "1"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "403" in out.stderr


def test_client_reconnects_after_the_server_restarts():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rig = make_rig(values={"http.port": port}).start()
    proc = subprocess.Popen(
        CLIENT + [rig.url("/stream"), "--count", "12", "--fps", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    try:
        first = [proc.stdout.readline() for _ in range(4)]
        assert all(line.startswith("frame=") for line in first), first
        rig.server.stop()
        rig.server.start()
        assert rig.server.port == port
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert len(first) + len(stdout.splitlines()) == 12
        assert "reconnected" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        rig.stop()
