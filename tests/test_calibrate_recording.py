"""calibrate.py on a recording of a picamd stream made the way the README says.

A real daemon streams the synthetic scene at 5 fps; ffmpeg records its
/stream with `-use_wallclock_as_timestamps 1 -c copy` into a Matroska file,
whose nominal rate says 25 fps. calibrate.py must time the frames by their
timestamps: its labelled intervals then hold the frames that ffprobe dates
inside them, where the nominal rate would squeeze the whole recording into a
fifth of its length.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from daemon_proc import Daemon

ROOT = Path(__file__).resolve().parents[1]
CALIBRATE = ROOT / "tools" / "calibrate.py"
sys.path.insert(0, str(ROOT / "tools"))
import calibrate  # noqa: E402

pytestmark = pytest.mark.timeout(90)
RECORD_S = 8


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.skip("ffmpeg is not installed (make test installs it when run as root): no recording to calibrate from")
    work = tmp_path_factory.mktemp("recording")
    rec = work / "rec.mkv"
    d = Daemon(work, overrides={"camera.framerate": 5.0}).start()
    try:
        # The README's command, with -t to end it and -y/-loglevel to keep the test quiet.
        res = subprocess.run(
            [
                "ffmpeg",
                "-y",
                "-loglevel",
                "error",
                "-use_wallclock_as_timestamps",
                "1",
                "-i",
                f"http://127.0.0.1:{d.http_port}/stream",
                "-c",
                "copy",
                "-t",
                str(RECORD_S),
                str(rec),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    finally:
        d.stop()
    assert res.returncode == 0 and rec.stat().st_size > 0, res.stderr
    return rec


def calibrate_recording(recording: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """tools/calibrate.py on the recording, its first half labelled RUNNING and its second STOPPED, trying one setting."""
    half = RECORD_S / 2
    return subprocess.run(
        [
            sys.executable,
            str(CALIBRATE),
            "--video",
            str(recording),
            "--rect",
            "0.64",
            "0.3",
            "0.3",
            "0.26",
            "--labels",
            f"0-{half:g}:running,{half:g}-{RECORD_S}:stopped",
            "--thresholds",
            "25",
            "--blurs",
            "5",
            "--dilates",
            "2",
            "--methods",
            "background",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_opencv_and_ffprobe_read_the_same_real_timestamps_and_the_nominal_rate_is_25(recording):
    cap = cv2.VideoCapture(str(recording))
    assert cap.get(cv2.CAP_PROP_FPS) == 25.0  # what ffmpeg calls any MJPEG stream
    stamps = []
    while cap.grab():
        stamps.append(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000)
    cap.release()
    probed = calibrate.ffprobe_times(str(recording))
    assert probed is not None and len(probed) == len(stamps)
    assert all(abs((p - probed[0]) - (s - stamps[0])) < 0.002 for p, s in zip(probed, stamps, strict=True))
    # About 5 frames a second over the recording, not 25.
    span = probed[-1] - probed[0]
    assert span > RECORD_S - 2 and len(probed) / span < 8


def test_calibrate_times_the_recording_by_its_timestamps_and_says_when_frames_are_too_few(recording, tmp_path):
    report = tmp_path / "report.json"
    half = RECORD_S / 2
    res = calibrate_recording(recording, "--json", str(report))
    assert res.returncode == 0, res.stderr
    assert "frames timed by their timestamps (OpenCV)" in res.stdout
    data = json.loads(report.read_text())
    times = calibrate.ffprobe_times(str(recording))
    assert times is not None
    rel = [t - times[0] for t in times]
    assert data["frames"] == {"running": sum(t < half for t in rel), "stopped": sum(half <= t < RECORD_S for t in rel)}
    assert data["timing"] == "their timestamps (OpenCV)"

    # ~20 frames of each: too few to judge, and said so instead of presenting the score as a result.
    assert data["too_few_frames"] and "too few frames to judge" in res.stderr
    assert "(too few frames to judge: these figures mean little)" in res.stdout
    assert "poorly separated" not in res.stderr

    # Timed by the nominal 25 fps instead (what --video-fps 25 does), the recording ends before the STOPPED interval.
    res = calibrate_recording(recording, "--video-fps", "25")
    assert res.returncode == 1 and "no frames in the labelled interval" in res.stderr
