"""Motion calibration and charts, run the way a user runs them.

tools/calibrate.py runs as a subprocess on generated videos with a known
truth (a machine part that moves for known intervals, with sensor noise, small
flicker, pauses and a person walking outside the region) and against a live
MJPEG server on loopback, answering its prompts like a user would. Its snippet
is then loaded as config and run through the real motion component.
tools/chart.py runs on logs written by the real motion component (rotated,
with a restart and with corrupted lines).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_proc import free_port
from rigs import HttpRig, request

from daemon.capture.ring import FrameMeta
from daemon.config import Config
from daemon.core.bus import Event, EventBus
from daemon.core.status import ComponentStatus
from daemon.motion import Motion, RegionMeter

ROOT = Path(__file__).resolve().parents[1]
CALIBRATE = ROOT / "tools" / "calibrate.py"
CHART = ROOT / "tools" / "chart.py"
pytestmark = pytest.mark.timeout(120)

VIDEO_SIZE = (320, 240)
VIDEO_FPS = 10
VIDEO_RECT = [120, 80, 90, 60]
VIDEO_RUNNING = [(0, 15), (30, 45)]  # seconds; stopped in between
VIDEO_S = 45
T0_WALL = 1_700_000_000.0
T0_MONO = 5000.0


def tool_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_tool(script: Path, *args: object, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=tool_env()
    )


class Scene:
    """A textured wall, sensor noise, a machine part inside `box` and a person walking outside it."""

    def __init__(self, size: tuple[int, int], box: list[int], seed: int = 11, noise: float = 4.0) -> None:
        w, h = size
        rng = np.random.default_rng(seed)
        self.base = cv2.resize(rng.integers(40, 200, (12, 16, 3)).astype(np.uint8), size, interpolation=cv2.INTER_CUBIC).astype(np.int16)
        self.noise = [rng.normal(0, noise, (h, w, 3)).astype(np.int16) for _ in range(12)]
        self.rng = np.random.default_rng(seed + 1)
        self.size, self.box = size, box
        self.k = 0

    def frame(self, running: bool) -> np.ndarray:
        self.k += 1
        w, h = self.size
        bx, by, bw, bh = self.box
        flicker = 2 if self.k % 2 else -2  # mains flicker, far below a brightness jump
        img = self.base + self.noise[self.k % len(self.noise)] + flicker
        # The part slides along a sawtooth while running, pausing now and then; stopped, it rests.
        moves = running and self.rng.random() > 0.05
        part_w, part_h = max(3, bw // 6), max(3, bh // 3)
        x = bx + 2 + ((self.k * 5) % (bw - part_w - 4) if moves else 0)
        y = by + bh // 3
        img[y : y + part_h, x : x + part_w] = 235
        # The person walks across the top of the picture, never into the box.
        px = (self.k * 3) % (w - 10)
        img[2 : max(4, by - 10), px : px + 8] = 25
        return np.clip(img, 0, 255).astype(np.uint8)


def truth(spans):
    return lambda t: any(a <= t < b for a, b in spans)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "press.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), VIDEO_FPS, VIDEO_SIZE)
    assert writer.isOpened()
    scene = Scene(VIDEO_SIZE, VIDEO_RECT)
    is_running = truth(VIDEO_RUNNING)
    for k in range(VIDEO_S * VIDEO_FPS):
        writer.write(scene.frame(is_running(k / VIDEO_FPS)))
    writer.release()
    return path


LABELS = "0-15:running,15-30:stopped,30-45:running"


# --- calibrate.py -------------------------------------------------------------------------------


def test_calibrate_finds_settings_the_daemon_then_judges_right(video, tmp_path):
    out, report = tmp_path / "snippet.yaml", tmp_path / "report.json"
    res = run_tool(
        CALIBRATE,
        "--video",
        video,
        "--rect",
        *VIDEO_RECT,
        "--name",
        "press1",
        "--labels",
        LABELS,
        "--ring",
        "160x120",
        "--out",
        out,
        "--json",
        report,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(report.read_text())
    best = data["best"]
    assert best["efficiency"] >= 0.9 and best["margin"] > 0.2
    assert data["frames"] == {"running": 300, "stopped": 150}
    assert data["timing"] == "their timestamps (OpenCV)" and data["too_few_frames"] is None and "too few" not in res.stderr
    assert len(data["results"]) == 5 * 4 * 3 * 2
    effs = [r["efficiency"] for r in data["results"]]
    assert round(effs[0], 3) == round(max(effs), 3)  # sorted best first
    assert min(effs) < best["efficiency"]  # the grid really differs: some settings are worse
    assert "efficiency" in res.stdout and "region add press1 120 80 90 60 " in res.stdout
    assert f"set motion.method {best['method']}" in res.stdout
    assert not list(tmp_path.glob(".*"))  # written atomically: no temp file left behind

    # The snippet is config the daemon accepts, for the region that was given.
    config = Config.load(out)
    region = config.get("motion.regions")[0]
    assert region["name"] == "press1" and region["rect"] == VIDEO_RECT
    assert region["min_fraction"] == best["min_fraction"] and 0 < region["min_fraction"] <= 1
    assert (region["pixel_threshold"], region["blur"], region["dilate"]) == (best["pixel_threshold"], best["blur"], best["dilate"])
    assert config.get("motion.method") == best["method"]

    # And the daemon's motion component, set up with it, calls the states right within one window.
    config.set("motion.window_s", 5.0)
    config.set("motion.log_dir", str(tmp_path / "logs"))
    bus = EventBus(history=100)
    events: list[Event] = []
    bus.subscribe("motion.state", events.append)
    motion = Motion(config.section("motion"), bus, ComponentStatus("motion"), VIDEO_SIZE, (160, 120))
    cap = cv2.VideoCapture(str(video))
    ring = np.empty((120, 160, 3), np.uint8)
    k = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        cv2.resize(frame, (160, 120), dst=ring, interpolation=cv2.INTER_AREA)
        t = k / VIDEO_FPS
        motion.process(ring, FrameMeta(k, T0_WALL + t, T0_MONO + t, dark_score=float(np.mean(ring))), frame)
        k += 1
    cap.release()
    got = [(e.data["old"], e.data["new"], e.data["ts"] - T0_WALL) for e in events]
    assert [(o, n) for o, n, _ in got] == [("UNKNOWN", "RUNNING"), ("RUNNING", "STOPPED"), ("STOPPED", "RUNNING")]
    assert 15 <= got[1][2] <= 15 + 5 + 0.5 and 30 <= got[2][2] <= 30 + 5 + 0.5


def test_calibrate_ranks_the_current_config_and_takes_fractions(video, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("ring:\n  downscale: '160x120'\nmotion:\n  pixel_threshold: 33\n  blur: 3\n  dilate: 1\n")
    report = tmp_path / "report.json"
    fractions = [VIDEO_RECT[0] / 320, VIDEO_RECT[1] / 240, VIDEO_RECT[2] / 320, VIDEO_RECT[3] / 240]
    res = run_tool(
        CALIBRATE,
        "--video",
        video,
        "--rect",
        *fractions,
        "--labels",
        LABELS,
        "--config",
        config,
        "--thresholds",
        "15,40",
        "--blurs",
        "5",
        "--dilates",
        "2",
        "--methods",
        "previous",
        "--json",
        report,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(report.read_text())
    assert data["ring_size"] == [160, 120]  # from --config
    assert data["region"]["rect"] == fractions and data["region"]["name"] == "region1"
    current = [r for r in data["results"] if r["current"]]
    assert len(current) == 1 and (current[0]["pixel_threshold"], current[0]["blur"], current[0]["dilate"]) == (33, 3, 1)
    assert len(data["results"]) == 3
    assert "the current setting" in res.stdout


@pytest.mark.parametrize("case", ["missing", "not_a_video", "outside", "empty_interval", "bad_labels", "no_region_headless"])
def test_calibrate_refuses_bad_input_clearly(video, tmp_path, case):
    out = tmp_path / "snippet.yaml"
    args = ["--video", video, "--rect", *VIDEO_RECT, "--labels", LABELS, "--out", out]
    expect = {
        "missing": "cannot read video",
        "not_a_video": "cannot read video",
        "outside": "outside the 320x240 frame",
        "empty_interval": "no frames in the labelled interval 50-60 s (stopped)",
        "bad_labels": "bad --labels",
        "no_region_headless": "--rect X Y W H",
    }[case]
    if case == "missing":
        args[1] = tmp_path / "nope.avi"
    elif case == "not_a_video":
        junk = tmp_path / "junk.avi"
        junk.write_bytes(b"this is not a video\n" * 100)
        args[1] = junk
    elif case == "outside":
        args[3:7] = ["300", "200", "50", "50"]
    elif case == "empty_interval":
        args[8] = "0-15:running,50-60:stopped"
    elif case == "bad_labels":
        args[8] = "0-15:running,10-20:sleeping"
    elif case == "no_region_headless":
        del args[2:7]
    res = run_tool(CALIBRATE, *args)
    assert res.returncode == 1, res.stdout
    assert expect in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_calibrate_bad_url_exits_with_the_reason(tmp_path):
    res = run_tool(
        CALIBRATE,
        "--url",
        f"http://127.0.0.1:{free_port()}",
        "--rect",
        "10",
        "10",
        "50",
        "50",
        "--labels",
        "0-2:running,2-4:stopped",
        "--out",
        tmp_path / "s.yaml",
    )
    assert res.returncode == 1 and "cannot connect to http://127.0.0.1:" in res.stderr
    res = run_tool(CALIBRATE, "--url", "ftp://127.0.0.1/x", "--rect", "10", "10", "50", "50")
    assert res.returncode == 1 and "bad --url" in res.stderr
    assert not (tmp_path / "s.yaml").exists()


# --- live from a daemon's HTTP server -------------------------------------------------------------


class LiveCamera(HttpRig):
    """The daemon's HTTP side on loopback, fed by a scene whose machine runs while `machine_running` is set."""

    FRAME = (320, 240)
    RING = (160, 120)

    def __init__(self) -> None:
        self.scene = Scene(self.FRAME, VIDEO_RECT)
        self.machine_running = threading.Event()
        self.control_port: int | None = None  # what /health reports as the command port; None: it says nothing of it
        super().__init__(
            frame_size=self.FRAME,
            ring_size=self.RING,
            ring_slots=8,
            values={"mjpeg.max_fps": 20.0},
            frame=lambda _fid: self.scene.frame(self.machine_running.is_set()),
            health=self.daemon_health,
        )

    def daemon_health(self) -> dict:
        health = self.health()
        if self.control_port is not None:
            health["clients"] = {"control": {"listening": True, "port": self.control_port, "clients": 0}}
        return health


@pytest.fixture(scope="module")
def camera():
    cam = LiveCamera().start()
    yield cam
    cam.stop()


def _wait_for_prompt(proc: subprocess.Popen[str], seen: list[str]) -> None:
    assert proc.stdout is not None and proc.stderr is not None
    for line in proc.stdout:
        seen.append(line)
        if "Press Enter to record" in line:
            return
    raise AssertionError("calibrate ended before prompting:\n" + "".join(seen) + proc.stderr.read())


@pytest.mark.parametrize("via", ["stream", "snapshot"])
def test_calibrate_live_prompts_for_running_then_stopped(camera, tmp_path, via):
    out, report = tmp_path / "live.yaml", tmp_path / "live.json"
    args = [
        sys.executable,
        str(CALIBRATE),
        "--url",
        camera.url("/"),
        "--rect",
        *map(str, VIDEO_RECT),
        "--name",
        "press1",
        "--running-s",
        "3",
        "--stopped-s",
        "3",
        "--thresholds",
        "15,25",
        "--blurs",
        "0,5",
        "--dilates",
        "2",
        "--out",
        str(out),
        "--json",
        str(report),
    ]
    if via == "snapshot":
        args += ["--snapshot", "--fps", "10"]
    else:
        camera.control_port = 27999  # a daemon whose command port is not the default; the snapshot run's says nothing of it
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=tool_env()
    )
    assert proc.stdin is not None
    seen: list[str] = []
    try:
        _wait_for_prompt(proc, seen)
        assert "RUN" in "".join(seen[-3:])
        camera.machine_running.set()  # the user starts the machine, then presses Enter
        proc.stdin.write("\n")
        proc.stdin.flush()
        _wait_for_prompt(proc, seen)
        assert "STOP" in "".join(seen[-3:])
        camera.machine_running.clear()
        proc.stdin.write("\n")
        proc.stdin.flush()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        camera.machine_running.clear()
        camera.control_port = None
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    data = json.loads(report.read_text())
    assert data["frame_size"] == [320, 240] and data["ring_size"] == [160, 120]  # read from /health
    assert data["frames"]["running"] >= 10 and data["frames"]["stopped"] >= 10
    assert data["best"]["efficiency"] >= 0.9
    assert Config.load(out).get("motion.regions")[0]["rect"] == VIDEO_RECT
    # The hint to apply it live names the daemon's host and the command port its /health reports (else the default).
    assert f'echo "LINE" | nc 127.0.0.1 {27999 if via == "stream" else 9999})' in stdout


def test_calibrate_without_an_answer_on_stdin_says_to_use_labels(camera, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(CALIBRATE), "--url", camera.url(), "--rect", *map(str, VIDEO_RECT), "--out", str(tmp_path / "s.yaml")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=tool_env(),
    )
    assert proc.returncode == 1 and "--labels" in proc.stderr
    assert not (tmp_path / "s.yaml").exists()


def test_page_has_the_region_tool_and_no_external_assets(camera):
    # The page's script itself is checked under node in test_page.py.
    status, _, body = request(camera.port, "/")
    page = body.decode()
    assert status == 200
    assert 'id="sel"' in page and 'id="cmd"' in page and "region add" in page and 'fetch("health"' in page
    assert "http://" not in page and "https://" not in page and ' src="page.js"' not in page


def assert_script_parses(script: str) -> None:
    """Syntax-check page JavaScript with node when it is installed (there is no browser here)."""
    node = shutil.which("node")
    if not node:
        return
    js = Path(os.environ.get("TMPDIR", "/tmp")) / f"picamd-script-{os.getpid()}-{threading.get_ident()}.js"
    js.write_text(script)
    try:
        check = subprocess.run([node, "--check", str(js)], capture_output=True, text=True, timeout=30)
    finally:
        js.unlink()
    assert check.returncode == 0, check.stderr


def test_region_meter_measures_like_the_motion_component(tmp_path):
    """The calibration's measure is the daemon's: same fractions frame by frame."""
    config = Config(
        {
            "motion.regions": [{"name": "press1", "rect": VIDEO_RECT}],
            "motion.log_dir": str(tmp_path / "logs"),
            "motion.method": "previous",
            "motion.pixel_threshold": 15,
            "motion.blur": 5,
            "motion.dilate": 2,
        }
    )
    motion = Motion(config.section("motion"), EventBus(), ComponentStatus("motion"), VIDEO_SIZE, (160, 120))
    meter = RegionMeter(
        {"name": "press1", "rect": VIDEO_RECT}, VIDEO_SIZE, (160, 120), method="previous", pixel_threshold=15, blur=5, dilate=2
    )
    scene = Scene(VIDEO_SIZE, VIDEO_RECT)
    ring = np.empty((120, 160, 3), np.uint8)
    compared = 0
    for k in range(40):
        frame = scene.frame(k >= 10)
        cv2.resize(frame, (160, 120), dst=ring, interpolation=cv2.INTER_AREA)
        meta = FrameMeta(k, T0_WALL + k / 10, T0_MONO + k / 10, dark_score=float(np.mean(ring)))
        motion.process(ring, meta, frame)
        ours = meter.measure(ring, frame)
        theirs = float(meta.extra["motion"].split("=")[1].split(":")[0])
        if ours is None:
            assert k == 0
            continue
        assert round(ours, 4) == theirs
        compared += 1
    assert compared == 39 and meter.source == "ring"
    with pytest.raises(ValueError, match="outside"):
        RegionMeter({"name": "x", "rect": [300, 200, 50, 50]}, VIDEO_SIZE, (160, 120))
    with pytest.raises(ValueError, match="ring frame"):
        meter.measure(np.zeros((10, 10, 3), np.uint8))


# --- chart.py -------------------------------------------------------------------------------------

CHART_FRAME, CHART_RING = (640, 480), (160, 120)
PRESS = {"name": "press1", "rect": [160, 120, 160, 120], "machine_id": 7}
DOOR = {"name": "door", "rect": [480, 320, 120, 120]}
CHART_RUNNING = [(0, 100), (250, 330)]  # first run 0..420 s; the daemon is then down until 600; second run 600..700 running


def _motion(log_dir: Path, log_frames: bool = True) -> tuple[Motion, list]:
    config = Config(
        {
            "motion.regions": [PRESS, DOOR],
            "motion.window_s": 10.0,
            "motion.deep_sleep_s": 60.0,
            "motion.log_dir": str(log_dir),
            "motion.log_frames": log_frames,
            "motion.log_frames_max_mb": 0.05,
            "motion.log_frames_keep": 10,
        }
    )
    bus = EventBus(history=100)
    events: list = []
    bus.subscribe("motion.", events.append)
    return Motion(config.section("motion"), bus, ComponentStatus("motion"), CHART_FRAME, CHART_RING), events


def _feed(motion: Motion, scene: Scene, start: float, seconds: float, running) -> float:
    fps = 5
    t = start
    for k in range(int(seconds * fps)):
        t = start + k / fps
        ring = scene.frame(running(t))
        motion.process(ring, FrameMeta(int(t * fps), T0_WALL + t, T0_MONO + t, dark_score=float(np.mean(ring))))
    return t


def write_logs(log_dir: Path, per_frame: tuple[bool, bool]) -> list:
    """Two runs of the real motion component (a restart in between), each with or without per-frame logs."""
    scene = Scene(CHART_RING, [40, 30, 40, 30], seed=5, noise=3.0)
    runs = []
    for (start, seconds, running), log_frames in zip(
        ((0.0, 420.0, truth(CHART_RUNNING)), (600.0, 100.0, lambda t: True)), per_frame, strict=True
    ):
        motion, events = _motion(log_dir, log_frames)
        motion.start()
        try:
            last = _feed(motion, scene, start, seconds, running)
        finally:
            motion.stop()
        assert motion.log.stats()["dropped_queue_full"] == 0
        runs.append(([e for e in events if e.kind in ("motion.state", "motion.deep_sleep")], T0_WALL + last))
    return runs


@pytest.fixture(scope="module")
def motion_logs(tmp_path_factory):
    """Per-frame logs (and the summaries) of two runs, rotated files."""
    log_dir = tmp_path_factory.mktemp("motionlogs") / "logs"
    return log_dir, write_logs(log_dir, (True, True))


def expected(runs, region: str, start: float = -1e18, end: float = 1e18):
    """Utilisation and idle periods worked out from the bus events (independently of chart.py)."""
    known: dict[str, float] = {}
    idle: list[list[float]] = []
    for events, last in runs:
        mine = [e.data for e in events if e.data["region"] == region]
        for i, ev in enumerate(mine):
            a = ev["ts"]
            b = mine[i + 1]["ts"] if i + 1 < len(mine) else last
            a, b = max(a, start), min(b, end)
            if b <= a:
                continue
            known[ev["new"]] = known.get(ev["new"], 0.0) + b - a
            if ev["new"] in ("STOPPED", "DEEP_SLEEP"):
                if idle and abs(idle[-1][1] - a) < 1e-6:
                    idle[-1][1] = b
                else:
                    idle.append([a, b])
    total = sum(known.values())
    return known.get("RUNNING", 0.0) / total, idle


def seconds_of(text: str) -> int:
    """'1h02m' / '2m25s' / '45s' -> seconds (format_duration's forms)."""
    m = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert m and text, text
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


def section(page: str, region: str) -> str:
    for part in page.split('<h2 id="r')[1:]:
        if re.match(rf'\d+">{re.escape(region)}[ :]', part):
            return part
    raise AssertionError(f"no section for {region}")


def shown_press1(page: str, runs, since: float = -1e18, until: float = 1e18) -> tuple[float, list[list[float]], str]:
    """press1's utilisation on the chart page agrees with the truth worked out from the bus events (to the 0.1 % shown);
    returns the truth's utilisation and idle periods, and press1's section of the page."""
    utilisation, idle = expected(runs, "press1", since, until)
    shown = re.search(r'data-region="press1">([\d.]+)%<', page)
    assert shown and abs(float(shown.group(1)) - utilisation * 100) <= 0.06
    return utilisation, idle, section(page, "press1")


def idle_rows(press: str, idle: list[list[float]]) -> list[tuple[str, str, str, str]]:
    """The idle periods in a region's table (begin, end, duration, deep sleep), two, each as long as the truth's to a
    second and beginning when it does."""
    rows = re.findall(r'<tr class="idle"><td>([^<]*)</td><td>([^<]*)</td><td class="num dur">([^<]*)</td><td>(yes|no)</td>', press)
    assert len(rows) == len(idle) == 2
    for (begin, _finish, duration, _deep), (a, b) in zip(rows, idle, strict=True):
        assert abs(seconds_of(duration) - (b - a)) <= 1
        assert begin == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(a)))
    return rows


def test_chart_draws_the_png_and_reports_utilisation_and_idle_periods(motion_logs, tmp_path):
    src, runs = motion_logs
    log_dir = tmp_path / "logs"
    shutil.copytree(src, log_dir)
    assert (log_dir / "motion_press1.jsonl.1").exists() and (log_dir / "motion_press1.jsonl.3").exists()
    # A power cut tears a line, a hand edit breaks others: they are skipped and counted.
    with open(log_dir / "state_changes.jsonl", "a") as fh:
        fh.write("garbage\n")
        fh.write('{"event": "motion.state", "ts": "soon", "region": "press1", "old": "RUNNING", "new": "STOPPED"}\n')
    with open(log_dir / "deep_sleep.jsonl", "a") as fh:
        fh.write("[1, 2]\n")
    with open(log_dir / "motion_press1.jsonl.1", "a") as fh:
        fh.write('{"ts": 17000')
    png, page_file = tmp_path / "out" / "motion.png", tmp_path / "out" / "motion.html"
    res = run_tool(CHART, log_dir, "--utc", "--png", png, "--html", page_file, "--width", "1200")
    assert res.returncode == 0, res.stderr
    assert "skipped 4 lines" in res.stderr

    img = cv2.imread(str(png))
    assert img is not None and img.shape[1] == 1200 and img.shape[0] > 2 * 200
    for bgr in ((80, 175, 76), (0, 152, 255), (181, 81, 63), (235, 235, 235)):  # RUNNING, STOPPED, DEEP_SLEEP, NO DATA bands
        assert np.all(img == bgr, axis=2).sum() > 100, bgr

    page = page_file.read_text()
    assert "http://" not in page and "https://" not in page and "<svg" in page
    assert "skipped 4 lines" in page
    utilisation, idle, press = shown_press1(page, runs)
    assert 0.4 < utilisation < 0.7  # and close to the truth: 280 s running of ~500 s known
    assert re.search(r'data-region="door">0\.0%<', page)
    rows = idle_rows(press, idle)
    assert rows[0][3] == "yes"  # 150 s stopped passes deep_sleep_s (60 s)
    first_stop, first_resume = idle[0][0] - T0_WALL, idle[0][1] - T0_WALL
    assert 100 <= first_stop <= 110 + 1 and 250 <= first_resume <= 260 + 1  # within one window of the truth
    assert press.count('<tr class="change">') == len([e for events, _ in runs for e in events if e.data["region"] == "press1"])
    assert "(machine 7)" in press
    assert_script_parses(page[page.rindex("<script>") + len("<script>") : page.rindex("</script>")])


def test_chart_period_and_region_filters(motion_logs, tmp_path):
    log_dir, runs = motion_logs
    since, until = T0_WALL + 200, T0_WALL + 380
    iso = lambda ts: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))  # noqa: E731
    page_file = tmp_path / "part.html"
    res = run_tool(CHART, log_dir, "--utc", "--region", "press1", "--since", iso(since), "--until", iso(until), "--html", page_file)
    assert res.returncode == 0, res.stderr
    page = page_file.read_text()
    assert 'data-region="door"' not in page
    _, idle, press = shown_press1(page, runs, since, until)
    rows = re.findall(r'<tr class="idle"><td>([^<]*)</td><td>([^<]*)</td>', press)
    assert len(rows) == len(idle) == 2
    assert rows[0][0].endswith("(or earlier)") and rows[1][1].endswith("(still idle)")
    assert "utilisation" in res.stdout and "press1" in res.stdout


def test_chart_with_empty_missing_or_bad_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_tool(CHART, empty, "--html", tmp_path / "x.html")
    assert res.returncode == 1 and "no motion logs in" in res.stderr and not (tmp_path / "x.html").exists()
    res = run_tool(CHART, tmp_path / "missing", "--html", tmp_path / "x.html")
    assert res.returncode == 1 and "is not a folder" in res.stderr
    res = run_tool(CHART, empty, "--since", "yesterday-ish")
    assert res.returncode == 2 and "not an ISO date" in res.stderr

    # Files that hold nothing usable: the charts are made and say so.
    (empty / "motion_press1.jsonl").write_text("")
    (empty / "state_changes.jsonl").write_text("\n{broken\n")
    png, page_file = tmp_path / "e.png", tmp_path / "e.html"
    res = run_tool(CHART, empty, "--png", png, "--html", page_file)
    assert res.returncode == 0, res.stderr
    assert "skipped 1 line that is not a valid record (state_changes.jsonl: 1)" in res.stderr
    assert "no motion records" in res.stderr
    assert cv2.imread(str(png)) is not None
    assert "No motion records in this period." in page_file.read_text()


@pytest.fixture(scope="module", params=["summaries", "mixed"])
def summary_logs(request, tmp_path_factory):
    """The same two runs logged the default way (summaries only), or the second one with per-frame logs too ("today")."""
    log_dir = tmp_path_factory.mktemp(f"logs-{request.param}") / "logs"
    return request.param, log_dir, write_logs(log_dir, (False, request.param == "mixed"))


def chart_data(page: str, region: str) -> dict:
    blob = re.search(r'<script type="application/json">(.*?)</script>', section(page, region), re.S)
    assert blob
    return json.loads(blob.group(1).replace("<\\/", "</"))


def test_chart_reads_the_summaries_alone_and_mixed_with_per_frame_logs(summary_logs, tmp_path):
    kind, log_dir, runs = summary_logs
    names = {p.name for p in log_dir.iterdir()}
    assert "summary_press1.jsonl" in names and "summary_door.jsonl" in names
    assert ("motion_press1.jsonl" in names) == (kind == "mixed")
    png, page_file = tmp_path / "motion.png", tmp_path / "motion.html"
    res = run_tool(CHART, log_dir, "--utc", "--png", png, "--html", page_file, "--width", "1200")
    assert res.returncode == 0, res.stderr
    assert "skipped" not in res.stderr

    page = page_file.read_text()
    _, idle, press = shown_press1(page, runs)
    idle_rows(press, idle)
    assert "No frame records or summaries" not in page

    # The fraction plot counts every frame once: 420 s and 100 s at 5 fps, from the summaries or the frame records.
    data = chart_data(page, "press1")
    count = np.array(data["count"])
    assert count.sum() == (420 + 100) * 5

    def columns(a: float, b: float) -> slice:
        return slice(
            int((a - data["start"]) / (data["end"] - data["start"]) * data["plot"]),
            int((b - data["start"]) / (data["end"] - data["start"]) * data["plot"]),
        )

    first_run, down, second_run = (
        count[columns(T0_WALL, T0_WALL + 415)],
        count[columns(T0_WALL + 425, T0_WALL + 595)],
        count[columns(T0_WALL + 605, T0_WALL + 695)],
    )
    assert first_run.all() and second_run.all() and not down.any()  # no column without frames while it ran, none while down
    peak, mean = np.array(data["peak"]), np.array(data["mean"])
    running_cols = columns(T0_WALL + 20, T0_WALL + 95)
    stopped_cols = columns(T0_WALL + 130, T0_WALL + 240)
    assert mean[running_cols].min() > mean[stopped_cols].max() and peak[running_cols].min() > 0

    img = cv2.imread(str(png))
    for bgr in ((80, 175, 76), (0, 152, 255), (181, 81, 63), (235, 235, 235), (140, 200, 140)):  # bands, and moving bars
        assert np.all(img == bgr, axis=2).sum() > 100, bgr


def test_chart_draws_a_sparse_summary_over_its_whole_minute_and_ends_idle_at_a_change_at_the_end(tmp_path):
    # A minute summarised from 145 frames (a slow camera) on a chart whose minute spans far more columns than that,
    # and the RUNNING change that ends the idle stretch is the last record of all: the period ends on it.
    minute = 1_716_200_040.0
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    summary = {"ts": minute + 0.05, "end": minute + 59.6, "region": "press1", "frames": 145, "judged": 145, "moving_frames": 0}
    summary |= {"mean_fraction": 0.001, "max_fraction": 0.002, "state": "STOPPED"}
    (log_dir / "summary_press1.jsonl").write_text(json.dumps(summary) + "\n")
    changes = [
        {"event": "motion.state", "ts": minute - 30.0, "region": "press1", "old": "RUNNING", "new": "STOPPED"},
        {"event": "motion.state", "ts": minute + 77.5, "region": "press1", "old": "STOPPED", "new": "RUNNING"},
    ]
    (log_dir / "state_changes.jsonl").write_text("".join(json.dumps(c) + "\n" for c in changes))
    page_file = tmp_path / "motion.html"
    res = run_tool(CHART, log_dir, "--utc", "--html", page_file)
    assert res.returncode == 0, res.stderr

    page = page_file.read_text()
    data = chart_data(page, "press1")
    assert data["start"] == minute - 30.0 and data["end"] == minute + 77.5
    count, covered = np.array(data["count"]), np.array(data["covered"])
    column = lambda ts: int((ts - data["start"]) / (data["end"] - data["start"]) * data["plot"])  # noqa: E731
    spanned = slice(column(summary["ts"]), column(summary["end"]) + 1)
    assert spanned.stop - spanned.start > 2 * 145  # fewer frames than columns
    assert covered[spanned].all() and covered.sum() == spanned.stop - spanned.start  # the whole minute, nothing else
    assert count.sum() == count[spanned].sum() == 145 and count.max() == 1
    assert count[column(minute + 55) : spanned.stop].any()  # whole frames spread to the minute's end too
    bars = re.findall(r"M([\d.]+) [\d.]+v-", section(page, "press1"))
    assert len(bars) == spanned.stop - spanned.start

    # The idle stretch ends at the change to RUNNING, though the period ends there too.
    rows = re.findall(r'<tr class="idle"><td>([^<]*)</td><td>([^<]*)</td>', section(page, "press1"))
    assert rows == [("2024-05-20 10:13:30 (or earlier)", "2024-05-20 10:15:17")]
    assert "still idle" not in res.stdout and "to 2024-05-20 10:15:17: 1m48s" in res.stdout
    # Ended earlier, the period ends while still idle, and says so.
    res = run_tool(CHART, log_dir, "--utc", "--until", "2024-05-20T10:15:10", "--html", page_file)
    assert res.returncode == 0, res.stderr
    assert "to 2024-05-20 10:15:10 (still idle)" in res.stdout
