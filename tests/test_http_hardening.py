"""The HTTP server against the attacks of the hardening issue, on the real daemon, and its optional login.

Viewers at a tiny ?fps= that leave free their slots at once; viewers holding every
viewer slot, slow senders (one byte at a time), silent sockets and clients that
pipeline requests without reading the answers never keep the operator from
/health; Basic and Bearer login work through requests, OpenCV, ffmpeg,
the project's own clients and a second picamd reading the first.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import cv2
import pytest
import requests
from daemon_proc import ROOT, Daemon, replies, wait_for
from images import read_image
from rigs import HttpRig

from daemon.config import Config, ConfigError
from daemon.net.httpauth import hash_password, verify_password

PASSWORD = "pass-word_123"
TOKEN = "t0ken-for-tests_0123456789abcdef"
CLIENT = [sys.executable, str(ROOT / "tools" / "client.py")]
HEADER_TIMEOUT_S = 2.0
KEEPALIVE_S = 1.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(
        tmp_path_factory.mktemp("http-attack"),
        overrides={
            "control.token": "",
            "http.header_timeout_s": HEADER_TIMEOUT_S,
            "http.max_pending": 16,
            "http.max_requests": 4,
            "http.keepalive_s": KEEPALIVE_S,
            "logging.level": "INFO",
        },
    ).start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """A daemon that wants a login (one user, one token); /health stays open."""
    d = Daemon(
        tmp_path_factory.mktemp("http-login"),
        overrides={
            "control.token": "",
            "http.users": {"alice": hash_password(PASSWORD)},
            "http.tokens": [TOKEN],
            "logging.level": "INFO",
        },
    ).start()
    yield d
    d.stop()


def get(port: int, path: str, timeout: float = 5.0, **kwargs) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=timeout, **kwargs)


def mjpeg_health(d: Daemon) -> dict:
    return json.loads(d.http("/health")[2])["clients"]["mjpeg"]


def open_viewer(port: int, path: str = "/stream") -> socket.socket:
    """A viewer as curl is one: the request, then the answer's head and the first part read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    got = b""
    while b"\r\n\r\n--frame" not in got and len(got) < 1 << 20:
        chunk = sock.recv(65536)
        assert chunk, got[:200]
        got += chunk
    assert got.startswith(b"HTTP/1.0 200"), got[:200]
    return sock


def read_answer(fp) -> tuple[int, dict[str, str], bytes]:
    """One answer with a Content-Length from a connection's file: status, headers (lower-case names), body; status 0 once it ended."""
    status = fp.readline()
    if not status:
        return 0, {}, b""
    assert status.startswith(b"HTTP/"), status
    head = {}
    while (line := fp.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        head[name.lower()] = value.strip()
    return int(status.split()[1]), head, fp.read(int(head["content-length"]))


def ended_by_server(sock: socket.socket, within_s: float) -> bytes | None:
    """What the server sent before closing `sock` (within `within_s`), or None if it stayed open."""
    sock.settimeout(within_s)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
    except TimeoutError:
        return None
    except OSError:
        pass  # reset: closed too
    return got


# --- 1. viewers that leave -----------------------------------------------------------------------------


def test_viewers_at_a_tiny_fps_free_their_slots_as_soon_as_they_leave(daemon):
    viewers = [open_viewer(daemon.http_port, "/stream?fps=0.001") for _ in range(16)]
    try:
        assert mjpeg_health(daemon)["viewers"] == 16
        assert daemon.http("/stream")[0] == 503  # every viewer slot (http.max_clients) is taken
        time.sleep(1.0)  # they watch for a second, as `curl -m1` does
    finally:
        for sock in viewers:
            sock.close()
    # Each waits ten seconds between frames (the floor of 0.1 fps), yet notices at once that its client left.
    assert wait_for(lambda: mjpeg_health(daemon)["viewers"] == 0, timeout=2.0), mjpeg_health(daemon)
    assert daemon.http("/health")[0] == 200
    viewer = open_viewer(daemon.http_port)
    viewer.close()
    assert "viewer closed the connection" in daemon.log()


def test_the_fps_floor_is_sane_and_bad_fps_is_refused(daemon):
    viewer = open_viewer(daemon.http_port, "/stream?fps=1e-300")  # raised to the floor: no time_t overflow
    try:
        fps_caps = [v["fps_cap"] for v in mjpeg_health(daemon)["viewer_list"]]
        assert fps_caps == [0.1]
    finally:
        viewer.close()
    for bad in ("0", "-1", "nan", "inf", "abc", "1e999"):
        status, _, body = daemon.http(f"/stream?fps={bad}")
        assert status == 400 and b"fps" in body, (bad, status, body)
    assert wait_for(lambda: mjpeg_health(daemon)["viewers"] == 0, timeout=2.0)
    log = daemon.log()
    assert "time_t" not in log and "OverflowError" not in log and "Traceback" not in log


# --- 2. busy viewers, slow senders, silent and idle sockets -------------------------------------------


def test_viewers_in_every_slot_leave_the_short_requests_reachable(daemon):
    assert replies(daemon.cmd("set http.max_clients 3"))[0].startswith("OK")
    viewers = [open_viewer(daemon.http_port) for _ in range(3)]
    try:
        status, headers, body = daemon.http("/stream")
        assert status == 503 and headers["Retry-After"] == "5" and b"viewers" in body
        for path in ("/health", "/snapshot.jpg", "/meta", "/"):
            assert daemon.http(path)[0] == 200, path
        assert daemon.http("/metrics")[0] in (200, 501)  # a short request like the others (501 until it is implemented)
    finally:
        for sock in viewers:
            sock.close()
        daemon.cmd("set http.max_clients 16")


def test_slow_senders_cannot_lock_out_the_operator(daemon):
    before = mjpeg_health(daemon)
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    slow = [socket.create_connection(("127.0.0.1", daemon.http_port), timeout=5) for _ in range(24)]  # more than http.max_pending
    try:
        for i in range(3):  # one byte each per second: never a complete request
            for sock in slow:
                try:
                    sock.sendall(request[i : i + 1])
                except OSError:
                    pass  # dropped already: that is the point
            started = time.monotonic()
            status, _, body = daemon.http("/health", timeout=5)
            assert status == 200 and json.loads(body)["status"] in ("ok", "degraded")
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        # Each is dropped: for the newcomers (the longest-waiting first) or at the header timeout, with a 408.
        ends = [ended_by_server(sock, HEADER_TIMEOUT_S + 3) for sock in slow]
        assert all(end is not None for end in ends)
        assert any(end.startswith(b"HTTP/1.0 408") for end in ends if end)
    finally:
        for sock in slow:
            sock.close()
    after = mjpeg_health(daemon)
    dropped = (after["header_timeouts"] - before["header_timeouts"]) + (after["evicted_while_reading"] - before["evicted_while_reading"])
    assert dropped >= 24 and after["reading"] <= 1


def test_silent_sockets_are_closed_after_the_header_timeout(daemon):
    silent = [socket.create_connection(("127.0.0.1", daemon.http_port), timeout=5) for _ in range(20)]
    try:
        assert daemon.http("/health")[0] == 200 and daemon.http("/snapshot.jpg")[0] == 200
        ends = [ended_by_server(sock, HEADER_TIMEOUT_S + 3) for sock in silent]
        assert ends == [b""] * 20  # closed without a word: they never began a request
    finally:
        for sock in silent:
            sock.close()


def test_a_kept_alive_connection_serves_several_requests_then_closes_when_idle(daemon):
    before = mjpeg_health(daemon)["idle_keepalive_closed"]
    with socket.create_connection(("127.0.0.1", daemon.http_port), timeout=5) as sock:
        fp = sock.makefile("rb")
        for path in ("/meta", "/health", "/meta"):
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            status, head, body = read_answer(fp)
            assert status == 200 and head["connection"] == "keep-alive"
            json.loads(body)
        assert ended_by_server(sock, KEEPALIVE_S + 3) == b""
    assert wait_for(lambda: mjpeg_health(daemon)["idle_keepalive_closed"] > before, timeout=5)
    with requests.Session() as session:  # the way programs keep a connection
        assert [session.get(f"http://127.0.0.1:{daemon.http_port}/meta", timeout=5).status_code for _ in range(3)] == [200] * 3


def pipeline_without_reading(port: int, stop: threading.Event) -> None:
    """Twenty snapshot requests at a time, again and again, never reading an answer (2 KiB receive buffer); reconnects when dropped."""
    batch = b"GET /snapshot.jpg HTTP/1.1\r\nHost: x\r\n\r\n" * 20
    while not stop.is_set():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.settimeout(3.0)  # longer than the server's send timeout: the server drops it first
        try:
            sock.connect(("127.0.0.1", port))
            while not stop.is_set():
                sock.sendall(batch)
        except OSError:
            pass
        finally:
            sock.close()


def status_http10(port: int, path: str) -> int:
    """The status of a plain HTTP/1.0 GET (one connection, read to its end), 0 when the connection failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
        return int(got.split(b" ", 2)[1])
    except (OSError, IndexError, ValueError):
        return 0


def pipelined(port: int, paths: tuple[str, ...]) -> list[int]:
    """An honest pipelining client: every request at once, then every answer read."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"".join(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() for path in paths))
        fp = sock.makefile("rb")
        return [read_answer(fp)[0] for _ in paths]


def test_clients_that_pipeline_without_reading_leave_the_operator_room():
    # As many attacking connections as short-request slots; a short send timeout so that their drops show within the test.
    rig = HttpRig(values={"http.max_requests": 8}, send_timeout_s=1.0).start()
    stop = threading.Event()
    attackers = [threading.Thread(target=pipeline_without_reading, args=(rig.port, stop), daemon=True) for _ in range(8)]
    codes: list[int] = []
    try:
        snapshot = requests.get(rig.url("/snapshot.jpg"), timeout=5)
        assert snapshot.status_code == 200 and len(snapshot.content) > 4 * 16384  # far more than a 2 KiB window takes
        for thread in attackers:
            thread.start()
        time.sleep(0.5)
        honest = pipelined(rig.port, ("/health", "/meta", "/health"))
        until = time.monotonic() + 5.0
        while time.monotonic() < until:
            codes.append(status_http10(rig.port, "/health"))
            time.sleep(0.1)
        honest_later = pipelined(rig.port, ("/meta", "/snapshot.jpg", "/health"))
        health = rig.server.health()
    finally:
        stop.set()
        for thread in attackers:
            thread.join(timeout=5)
        rig.stop()
    assert codes.count(200) >= 0.8 * len(codes), codes
    assert honest == [200, 200, 200] and honest_later == [200, 200, 200]
    # Each attacking connection got its first answer, took none of it, and was dropped after the send timeout; none held a slot.
    assert health["unread_answers_dropped"] >= 8, health
    assert health["requests_active"] <= 1, health


def test_a_flood_of_kept_alive_requests_evicted_for_newcomers_never_breaks_the_reading_loop():
    """Connections evicted for a newcomer while their answer is still in flight: an event of theirs in the same round
    must not reach a closed socket (it once ended the loop and dropped every connection with it)."""
    rig = HttpRig(values={"http.max_pending": 4}, feed_frames=False).start()
    stop = threading.Event()
    answered = [0]

    def keep_asking() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", rig.port), timeout=2) as sock:
                    for _ in range(20):
                        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                        if sock.recv(65536):
                            answered[0] += 1
            except OSError:
                pass  # evicted: a newcomer needed the room

    clients = [threading.Thread(target=keep_asking, daemon=True) for _ in range(24)]
    try:
        for thread in clients:
            thread.start()
        time.sleep(3.0)
        stop.set()
        for thread in clients:
            thread.join(timeout=5)
        health = rig.server.health()
        operator = status_http10(rig.port, "/health")
    finally:
        rig.stop()
    assert answered[0] > 50, answered
    assert health["evicted_while_reading"] + health["unread_answers_dropped"] + health["idle_keepalive_closed"] > 0, health
    assert rig.status.errors == 0, rig.status.state
    assert operator == 200


# --- 3. login ------------------------------------------------------------------------------------------


def test_requests_needs_the_login_and_health_stays_open(locked):
    port = locked.http_port
    for path in ("/", "/meta", "/snapshot.jpg", "/stream", "/metrics", "/nope"):
        r = get(port, path)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Basic realm="picamd"', path
    assert get(port, "/health").status_code == 200  # http.health_open
    for path in ("/", "/meta", "/snapshot.jpg"):
        assert get(port, path, auth=("alice", PASSWORD)).status_code == 200, path
        assert get(port, path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
    assert get(port, "/snapshot.jpg", auth=("alice", PASSWORD)).content[:2] == b"\xff\xd8"
    with get(port, "/stream", auth=("alice", PASSWORD), stream=True) as r:
        assert r.status_code == 200 and b"--frame" in next(r.iter_content(4096))
    assert get(port, "/meta", auth=("alice", "wrong")).status_code == 401
    assert get(port, "/meta", auth=("bob", PASSWORD)).status_code == 401
    assert get(port, "/meta", headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
    assert replies(locked.cmd("set http.health_open false"))[0].startswith("OK")
    try:
        assert get(port, "/health").status_code == 401
        health = get(port, "/health", auth=("alice", PASSWORD)).json()
        auth = health["clients"]["mjpeg"]["auth"]
        assert auth["enabled"] and auth["logins_failed"] >= 3 and auth["logins_ok"] >= 7
    finally:
        locked.cmd("set http.health_open true")
    assert PASSWORD not in locked.log() and TOKEN not in locked.log()


def test_opencv_reads_the_stream_through_a_url_with_credentials(locked):
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000]
    cap = cv2.VideoCapture(f"http://alice:{PASSWORD}@127.0.0.1:{locked.http_port}/stream", cv2.CAP_FFMPEG, params)
    try:
        ok, frame = cap.read()
        assert cap.isOpened() and ok and frame.shape == (480, 640, 3)
    finally:
        cap.release()
    cap = cv2.VideoCapture(f"http://127.0.0.1:{locked.http_port}/stream", cv2.CAP_FFMPEG, params)
    try:
        assert not cap.isOpened()
    finally:
        cap.release()


def test_ffmpeg_reads_the_stream_through_a_url_with_credentials(locked, tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (make setup-test installs it from apt when run as root)")
    out = tmp_path / "frame.jpg"
    base = ["ffmpeg", "-nostdin", "-loglevel", "error", "-rw_timeout", "5000000"]
    good = subprocess.run(
        base + ["-i", f"http://alice:{PASSWORD}@127.0.0.1:{locked.http_port}/stream", "-frames:v", "1", "-y", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert good.returncode == 0, good.stderr
    assert read_image(out).shape == (480, 640, 3)
    bad = subprocess.run(
        base + ["-i", f"http://127.0.0.1:{locked.http_port}/stream", "-frames:v", "1", "-y", str(tmp_path / "no.jpg")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode != 0 and "401" in bad.stderr


def test_the_stream_client_passes_credentials(locked):
    url = f"http://127.0.0.1:{locked.http_port}/stream"
    with_userinfo = f"http://alice:{PASSWORD}@127.0.0.1:{locked.http_port}/stream"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICAMD_HTTP_")}
    runs = {
        "userinfo": (CLIENT + [with_userinfo, "--count", "2"], env),
        "user": (CLIENT + [url, "--count", "2", "--user", "alice"], {**env, "PICAMD_HTTP_PASSWORD": PASSWORD}),
        "token": (CLIENT + [url, "--count", "2", "--token", TOKEN], env),
    }
    for name, (argv, run_env) in runs.items():
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=run_env)
        assert out.returncode == 0 and out.stdout.count("frame=") == 2, (name, out.stderr)
    refused = subprocess.run(CLIENT + [url, "--count", "1"], capture_output=True, text=True, timeout=30, env=env)
    assert refused.returncode == 1 and "401" in refused.stderr and "login required" in refused.stderr
    wrong = subprocess.run(
        CLIENT + [f"http://alice:wrong-{PASSWORD}@127.0.0.1:{locked.http_port}/stream", "--count", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert wrong.returncode == 1 and "wrong credentials" in wrong.stderr and PASSWORD not in wrong.stderr and "alice:***@" in wrong.stderr


def test_calibrate_reads_a_daemon_with_a_login(locked):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import calibrate
    finally:
        sys.path.remove(str(ROOT / "tools"))
    frames = calibrate.DaemonFrames(f"http://alice:{PASSWORD}@127.0.0.1:{locked.http_port}", 5.0, False)
    assert frames.first_image().shape == (480, 640, 3)
    assert PASSWORD not in frames.shown and "alice:***@" in frames.shown
    with pytest.raises(calibrate.CalibrationError, match="401"):
        calibrate.DaemonFrames(f"http://127.0.0.1:{locked.http_port}", 5.0, False).first_image()


def test_a_picamd_reads_another_through_its_login(locked, tmp_path):
    url = f"http://alice:{PASSWORD}@127.0.0.1:{locked.http_port}/stream"
    reader = Daemon(tmp_path, source=url, overrides={"control.token": "", "logging.level": "INFO"}).start()
    try:
        health = json.loads(replies(reader.cmd("health"))[0].partition("\n")[2])
        assert health["camera"]["frame_size"] == [640, 480]
        assert "alice:***@" in json.dumps(health["camera"])
    finally:
        reader.stop()
    assert PASSWORD not in reader.log()


# --- the pieces of the login ---------------------------------------------------------------------------


def test_hash_password_prints_a_line_for_the_config():
    out = subprocess.run(
        [sys.executable, "-m", "daemon", "hash-password", "--user", "alice"],
        input=f"{PASSWORD}\n",
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    name, _, line = out.stdout.strip().partition(": ")
    assert name == "alice" and line.startswith("scrypt$16384$8$1$") and PASSWORD not in out.stdout
    assert verify_password(PASSWORD, line) and not verify_password(PASSWORD + "x", line)
    assert Config({"http.users": {"alice": line}}).get("http.users") == {"alice": line}
    empty = subprocess.run(
        [sys.executable, "-m", "daemon", "hash-password"], input="\n", capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert empty.returncode == 2 and "empty" in empty.stderr


def test_users_and_tokens_are_checked_and_secret():
    with pytest.raises(ConfigError, match="hash-password") as err:
        Config({"http.users": {"alice": PASSWORD}})
    assert PASSWORD not in str(err.value)
    with pytest.raises(ConfigError, match="16..512"):
        Config({"http.tokens": ["short"]})
    with pytest.raises(ConfigError, match="without ':'"):
        Config({"http.users": {"a:b": hash_password("x")}})
    config = Config({"http.users": {"alice": hash_password("x")}, "http.tokens": [TOKEN]})
    assert config.dump()["http"]["users"] == "***" and config.dump()["http"]["tokens"] == "***"


def test_failed_logins_lock_the_address_out_for_a_while():
    rig = HttpRig(values={"http.users": {"alice": hash_password(PASSWORD)}}).start()
    try:
        limit = rig.server.auth.max_failures
        codes = [requests.get(rig.url("/meta"), auth=("alice", f"guess{i}"), timeout=5).status_code for i in range(limit)]
        assert codes == [401] * limit
        r = requests.get(rig.url("/meta"), auth=("alice", PASSWORD), timeout=5)  # even the right one, until the lockout ends
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
        auth = rig.server.health()["auth"]
        assert auth["logins_failed"] == limit and auth["lockouts"] == 1 and auth["locked_out_peers"] == 1
        assert requests.get(rig.url("/health"), timeout=5).status_code == 200  # the open /health needs no login
    finally:
        rig.stop()
