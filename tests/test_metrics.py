"""GET /metrics: the Prometheus text format written by daemon/net/metrics.py, read back with prometheus_client's own parser.

The writer's escaping, value formats and histograms are checked by parsing
what it writes; the route against a real daemon whose source is a video file
played faster than `camera.framerate`, so frames are really dropped, with a
motion region, the detector and an HTTP token.
"""

from __future__ import annotations

import math
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from daemon_proc import Daemon, wait_for

from daemon.core.histogram import Histogram
from daemon.net.metrics import CONTENT_TYPE, MOTION_STATES, Exposition, format_value, render

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus_client is in the test extra: pip install -e '.[test]'")

pytestmark = pytest.mark.timeout(90)

TOKEN = "metrics-scraper-token-0123456789"


def families(text: str) -> dict[str, Any]:
    """Every family by the name its TYPE line gives (a counter's `_total` included), through the real parser."""
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        out[name] = fam
    return out


def samples(fam) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}


# -- the writer


def test_label_values_and_help_text_survive_the_parser() -> None:
    nasty = 'door "A"\\back\nslash ü'
    exp = Exposition()
    exp.gauge("picamd_test_ratio", 'Help with a \\ backslash,\na line feed and "quotes"', 0.25, {"region": nasty})
    text = exp.text()
    assert text.endswith("\n") and "\nslash" not in text.replace("\\n", "")  # the line feed is escaped, not written
    fam = families(text)["picamd_test_ratio"]
    assert fam.documentation == 'Help with a \\ backslash,\na line feed and "quotes"'
    assert fam.type == "gauge"
    assert [(s.labels, s.value) for s in fam.samples] == [({"region": nasty}, 0.25)]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "1"),
        (False, "0"),
        (7, "7"),
        (0.1, "0.1"),
        (1e-05, "1e-05"),
        (-2.5, "-2.5"),
        (123456789.125, "123456789.125"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_values_are_written_as_the_format_reads_them(value: float, text: str) -> None:
    assert format_value(value) == text
    exp = Exposition()
    exp.gauge("picamd_value", "a value", value)
    parsed = families(exp.text())["picamd_value"].samples[0].value
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(parsed)
    else:
        assert parsed == float(value)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: e.gauge("picamd bad name", "x", 1), "not a valid metric name"),
        (lambda e: e.counter("picamd_frames", "x", 1), "must end in _total"),
        (lambda e: e.gauge("picamd_x", "x", 1, {"__reserved": "a"}), "not a valid label name"),
        (lambda e: e.gauge("picamd_x", "x", 1, {"1st": "a"}), "not a valid label name"),
        (lambda e: e.family("picamd_x", "enum", "x", [({}, 1)]), "not a metric type"),
        (lambda e: e.histogram("picamd_h", "x", [(1.0, 3), (0.5, 4)], 1.0, 4), "buckets must rise"),
        (lambda e: e.histogram("picamd_h", "x", [(1.0, 3), (2.0, 2)], 1.0, 4), "cumulative"),
    ],
)
def test_a_malformed_family_is_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(Exposition())


def test_a_name_is_written_once_and_empty_families_are_left_out() -> None:
    exp = Exposition()
    exp.gauge("picamd_x", "x", 1)
    with pytest.raises(ValueError, match="added twice"):
        exp.gauge("picamd_x", "x", 2)
    exp.gauge("picamd_missing", "a figure the health dict does not have", None)
    assert "picamd_missing" not in exp.text()


def test_the_inference_histogram_renders_as_a_prometheus_histogram() -> None:
    hist = Histogram()
    observed = [0.003, 0.02, 0.02, 0.3, 20.0, math.nan]
    for v in observed:
        hist.observe(v)
    snap = hist.snapshot()
    assert snap["count"] == 5 and snap["counts"][-1] == 4  # NaN ignored; 20 s is only in +Inf
    fam = families(render({"detect": {"state": "running", "inferences": 5, "inference_histogram": snap}}))
    got = samples(fam["picamd_detect_inference_duration_seconds"])
    name = "picamd_detect_inference_duration_seconds"
    assert got[(name + "_bucket", (("le", "0.005"),))] == 1
    assert got[(name + "_bucket", (("le", "0.025"),))] == 3
    assert got[(name + "_bucket", (("le", "0.5"),))] == 4
    assert got[(name + "_bucket", (("le", "+Inf"),))] == 5
    assert got[(name + "_count", ())] == 5
    assert got[(name + "_sum", ())] == pytest.approx(20.343)
    with pytest.raises(ValueError, match="strictly rising"):
        Histogram([0.1, 0.1])


def test_a_region_state_is_one_hot_and_odd_names_are_escaped() -> None:
    health = {
        "version": "1.2.3",
        "camera": {"name": "shed", "frames": 10, "fps": 9.5, "source": {"source": "opencv"}},
        "motion": {
            "regions": {
                'press "1"': {"state": "RUNNING", "fraction": 0.12, "in_state_s": 65.2, "idle_s": None},
                "door\\2": {"state": "SETTLING_NEW", "fraction": 0.0, "in_state_s": 3},
            }
        },
        "notify": {"channels": {"webhook": {"sent": 3, "failed": 1, "dropped": 0, "queued": 0, "enabled": True}}},
        "system": {
            "cpu_temp_c": 51.5,
            "disk_free_mb": 1.5,
            "throttling": {"now": {"under_voltage": True}, "since_boot": {"throttled": False}},
        },
    }
    fam = families(render(health))
    states = samples(fam["picamd_motion_region_state"])
    press = {dict(k[1])["state"]: v for k, v in states.items() if dict(k[1])["region"] == 'press "1"'}
    assert press == {"UNKNOWN": 0, "RUNNING": 1, "STOPPED": 0, "DEEP_SLEEP": 0}
    door = {dict(k[1])["state"]: v for k, v in states.items() if dict(k[1])["region"] == "door\\2"}
    assert set(door) == {*MOTION_STATES, "SETTLING_NEW"} and sum(door.values()) == 1 and door["SETTLING_NEW"] == 1
    assert samples(fam["picamd_motion_region_state_seconds"])[("picamd_motion_region_state_seconds", (("region", 'press "1"'),))] == 65.2
    assert "picamd_motion_region_idle_seconds" not in fam  # no region has an idle time: the family is left out
    assert samples(fam["picamd_notifications_failed_total"]) == {("picamd_notifications_failed_total", (("channel", "webhook"),)): 1}
    assert samples(fam["picamd_disk_free_bytes"])[("picamd_disk_free_bytes", ())] == int(1.5 * 2**20)
    assert samples(fam["picamd_throttling"])[("picamd_throttling", (("flag", "under_voltage"), ("when", "now")))] == 1
    info = fam["picamd_info"].samples[0].labels
    assert info == {"version": "1.2.3", "camera": "shed", "source": "opencv"}
    assert "picamd_people" not in fam and "picamd_detect_inferences_total" not in fam  # no detector: left out
    assert render({}).startswith("# HELP picamd_info ")


# -- the route, on a real daemon


def write_video(path: Path, frames: int = 90, fps: float = 30.0) -> Path:
    """A square that crosses a textured background in the first half and stands still in the second, MJPG in AVI at `fps`
    (the daemon reads it at a third of that); the detector's motion gate runs in one half and skips in the other."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (320, 240))
    assert writer.isOpened()
    rng = np.random.default_rng(3)
    background = rng.integers(60, 120, size=(240, 320, 3), dtype=np.uint8)
    for i in range(frames):
        frame = background.copy()
        x = min(i, frames // 2) * 5
        frame[90:150, x : x + 60] = 240
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    work = tmp_path_factory.mktemp("metrics")
    video = write_video(work / "square.avi")
    d = Daemon(
        work,
        source=str(video),
        overrides={
            "camera.name": "bench-1",
            "camera.width": 320,
            "camera.height": 240,
            "camera.framerate": 10.0,
            "ring.downscale": "160x120",
            "motion.regions": [{"name": "belt", "rect": [0.0, 0.3, 1.0, 0.35], "min_fraction": 0.02}],
            "detect.enabled": True,
            "detect.gate": "motion",
            "detect.max_fps": 4.0,
            "http.tokens": [TOKEN],
            "http.health_open": True,
        },
    )
    d.start()
    yield d
    d.stop()


def scrape(d: Daemon, token: str | None = TOKEN) -> tuple[int, str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{d.http_port}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_metrics_need_the_login_when_it_is_on(daemon: Daemon) -> None:
    code, _, text = scrape(daemon, token=None)
    assert code == 401 and "login required" in text
    code, _, _ = scrape(daemon, token="wrong-token-0123456789")
    assert code == 401


def test_a_real_daemon_exposes_every_family_and_they_parse(daemon: Daemon) -> None:
    # Wait until the detector has run and skipped, and a frame was dropped, so those families have their values.
    def ready() -> dict | None:
        fam = families(scrape(daemon)[2])
        ok = (
            "picamd_people" in fam
            and ("picamd_detect_inferences_skipped_total", (("reason", "no_motion"),))
            in samples(fam.get("picamd_detect_inferences_skipped_total", fam["picamd_info"]))
            and samples(fam["picamd_frames_dropped_total"])[("picamd_frames_dropped_total", ())] > 0
        )
        return fam if ok else None

    fam = wait_for(ready, timeout=30, interval=0.3)
    assert fam, daemon.log()
    code, content_type, text = scrape(daemon)
    assert code == 200 and content_type == CONTENT_TYPE
    fam = families(text)
    for name, kind in {
        "picamd_info": "gauge",
        "picamd_healthy": "gauge",
        "picamd_frames_captured_total": "counter",
        "picamd_frames_dropped_total": "counter",
        "picamd_capture_frames_per_second": "gauge",
        "picamd_ring_fill_ratio": "gauge",
        "picamd_jpeg_encodes_total": "counter",
        "picamd_stream_clients": "gauge",
        "picamd_command_clients": "gauge",
        "picamd_motion_region_changed_ratio": "gauge",
        "picamd_motion_region_state": "gauge",
        "picamd_motion_region_state_seconds": "gauge",
        "picamd_detect_inferences_total": "counter",
        "picamd_detect_inferences_skipped_total": "counter",
        "picamd_people": "gauge",
        "picamd_notifications_sent_total": "counter",
        "picamd_notifications_failed_total": "counter",
        "picamd_memory_rss_bytes": "gauge",
        "picamd_disk_free_bytes": "gauge",
        "picamd_night": "gauge",
    }.items():
        assert name in fam, f"{name} missing from:\n{text}"
        assert fam[name].type == kind, name
    assert all(name.startswith("picamd_") for name in fam)
    values = {name: samples(f) for name, f in fam.items()}
    assert values["picamd_frames_captured_total"][("picamd_frames_captured_total", ())] > 0
    # Read at 10 fps from a file that plays at 30: about two frames in three are replaced before the loop takes them.
    assert values["picamd_frames_dropped_total"][("picamd_frames_dropped_total", ())] > 0
    assert 0 < values["picamd_ring_fill_ratio"][("picamd_ring_fill_ratio", ())] <= 1
    assert values["picamd_memory_rss_bytes"][("picamd_memory_rss_bytes", ())] > 20 * 2**20
    states = {dict(k[1])["state"]: v for k, v in values["picamd_motion_region_state"].items()}
    assert set(states) == set(MOTION_STATES) and sum(states.values()) == 1
    ratio = values["picamd_motion_region_changed_ratio"][("picamd_motion_region_changed_ratio", (("region", "belt"),))]
    assert 0 <= ratio <= 1
    assert values["picamd_detect_inferences_total"][("picamd_detect_inferences_total", ())] >= 1
    skipped = values["picamd_detect_inferences_skipped_total"]
    assert skipped[("picamd_detect_inferences_skipped_total", (("reason", "no_motion"),))] >= 1  # the square stood still
    assert values["picamd_people"][("picamd_people", ())] == 0  # a square is nobody
    assert fam["picamd_info"].samples[0].labels["camera"] == "bench-1"
    assert fam["picamd_info"].samples[0].labels["source"] == "opencv"
    channels = {dict(k[1])["channel"] for k in values["picamd_notifications_sent_total"]}
    assert channels >= {"webhook", "email"}
