#!/usr/bin/env python3
"""Find the motion settings that best tell a machine RUNNING from STOPPED, and write them as config.

    # from a video with known intervals (seconds into the video)
    python tools/calibrate.py --video press.mp4 --rect 160 120 160 120 --name press1 \\
        --labels 0-60:running,60-120:stopped --out press1.yaml

    # live from a running picamd: it asks you to run, then stop the machine
    python tools/calibrate.py --url http://raspberrypi:8080 --rect 0.25 0.25 0.25 0.25 --name press1 \\
        --running-s 60 --stopped-s 60 --out press1.yaml

Frames come from a video file (`--video`) or a running picamd (`--url`: its
/stream, or /snapshot.jpg polled with `--snapshot`). The region is given in
pixels of the camera's full frame or as fractions 0..1 (`--rect X Y W H`,
`--polygon X,Y X,Y X,Y ...`), drawn in an OpenCV window (`--select`, needs a
display and an OpenCV with window support; opencv-python-headless has none),
or copied from the daemon's web page (`http://HOST:8080/`: drag a rectangle
over the image, it shows the `--rect` numbers).

A video's frames are timed by their timestamps (OpenCV's position of each
frame; ffprobe's when OpenCV gives none), not by the file's nominal frame
rate: ffmpeg and OpenCV call an MJPEG stream 25 fps whatever its real rate,
so a recording of a picamd stream keeps its real times only when made with
wall-clock timestamps, e.g.

    ffmpeg -use_wallclock_as_timestamps 1 -i http://raspberrypi:8080/stream -c copy rec.mkv

(a file without timestamps is timed by its nominal rate, with a warning, or
by `--video-fps`). `--labels` count seconds from the first frame. A label
with fewer than 30 frames of RUNNING or of STOPPED is too few to judge: the
scores are printed with that warning, never as a result.

Every frame is scaled to the daemon's ring size and measured with the
daemon's own code (`daemon.motion.RegionMeter`) once per candidate setting:
`--thresholds` (pixel_threshold) x `--blurs` x `--dilates` x `--methods`, plus
the current values of `--config` when given. Frames labelled RUNNING and
STOPPED give two sets of changed fractions per setting, scored as:

- efficiency: the balanced accuracy of the best min_fraction, i.e. the mean
  of the share of RUNNING frames that count as moving (fraction >=
  min_fraction) and the share of STOPPED frames that count as still. 1.0
  separates every frame; 0.5 is no better than a coin. Frames that rebuilt
  the background (the first of a recording) are left out.
- margin: how far the two moving shares lie from `running_fraction` (the
  daemon calls a window RUNNING when more than that share of its frames
  move): min(RUNNING moving share - running_fraction, running_fraction -
  STOPPED moving share). Positive means the daemon's majority rule gets both
  states right on this recording; the larger, the safer.
- tolerance: the factor by which min_fraction may be multiplied or divided
  and still reach the same efficiency. min_fraction is put in the geometric
  middle of the range of equally good thresholds (never below one measured
  pixel of the region).

Settings are ranked by efficiency, then margin, then tolerance. The best one
is written as a config snippet (`--out`, YAML, atomically) to merge into
config.yaml, and the command lines that apply it live are printed.

Exit status: 0 done, 1 an error (the message says what to fix), 2 bad usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import toolenv

toolenv.require(__file__, "cv2", "numpy", "yaml")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from client import StreamError, authorization, open_stream, read_parts, shown, stream_url  # noqa: E402

from daemon.config import Config, ConfigError, parse_downscale  # noqa: E402
from daemon.motion import RegionMeter, parse_regions  # noqa: E402
from daemon.storage.atomicfile import write_atomic  # noqa: E402

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
LABELS = ("running", "stopped")
DEFAULT_THRESHOLDS = (10, 15, 25, 40, 60)
DEFAULT_BLURS = (0, 5, 9, 15)
DEFAULT_DILATES = (0, 2, 4)
DEFAULT_METHODS = ("background", "previous")
HTTP_TIMEOUT_S = 10.0
DEFAULT_CONTROL_PORT = 9999  # the hint's command port when neither /health nor --config gives one (control.port 0: picked at start)
MIN_FRAMES = 30  # of each label: with fewer, a score says more about chance than about the setting


class CalibrationError(Exception):
    """Something the user can fix; the message says what."""


# --- parsing the command line ------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    start: float
    end: float
    label: str

    def __str__(self) -> str:
        return f"{self.start:g}-{self.end:g} s ({self.label})"


def parse_labels(text: str) -> list[Interval]:
    """'0-30:running,30-60:stopped' -> intervals [start, end) in seconds; both labels must appear."""
    intervals = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)\s*:\s*([A-Za-z]+)", part)
        if not m:
            raise ValueError(f"{part!r} is not START-END:LABEL (seconds, e.g. 0-30:running)")
        start, end, label = float(m.group(1)), float(m.group(2)), m.group(3).lower()
        if label not in LABELS:
            raise ValueError(f"{part!r}: the label must be running or stopped, not {m.group(3)!r}")
        if end <= start:
            raise ValueError(f"{part!r}: the end must be after the start")
        intervals.append(Interval(start, end, label))
    intervals.sort(key=lambda i: i.start)
    for a, b in zip(intervals, intervals[1:], strict=False):
        if b.start < a.end:
            raise ValueError(f"intervals {a} and {b} overlap")
    missing = [lab for lab in LABELS if not any(i.label == lab for i in intervals)]
    if missing:
        raise ValueError(f"needs at least one {' and one '.join(missing)} interval, e.g. 0-30:running,30-60:stopped")
    return intervals


def _number(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, not {text!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, not {text!r}")
    return v


def _tidy(values: list[float]) -> list[float | int]:
    # Pixels stay whole numbers in the snippet; fractions stay fractions.
    if max(values) > 1 and all(v.is_integer() for v in values):
        return [int(v) for v in values]
    return values


def region_entry(name: str, rect: list[str] | None, polygon: list[str] | None) -> dict[str, Any]:
    """The motion.regions entry (name and shape, in the units given) from --rect or --polygon."""
    if rect is not None:
        values = [_number(t, f"--rect {k}") for t, k in zip(rect, "XYWH", strict=True)]
        return {"name": name, "rect": _tidy(values)}
    assert polygon is not None
    flat = []
    for i, text in enumerate(polygon):
        xs, sep, ys = text.partition(",")
        if not sep:
            raise ValueError(f"--polygon point {i + 1} must be X,Y, not {text!r}")
        flat += [_number(xs, f"--polygon point {i + 1} x"), _number(ys, f"--polygon point {i + 1} y")]
    tidy = _tidy(flat)
    return {"name": name, "polygon": [tidy[i : i + 2] for i in range(0, len(tidy), 2)]}


def parse_int_list(text: str, what: str, lo: int, hi: int) -> list[int]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            v = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: {item!r} is not a whole number") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{what}: {v} is outside {lo}..{hi}")
        out.append(v)
    if not out:
        raise argparse.ArgumentTypeError(f"{what}: give at least one value")
    return sorted(set(out))


def ring_size_for(downscale: str, frame_size: tuple[int, int]) -> tuple[int, int]:
    """The ring frame size the daemon uses for `ring.downscale` (the same arithmetic as the app)."""
    kind, a, b = parse_downscale(downscale)
    if kind == "size":
        return int(a), int(b)
    return max(16, round(frame_size[0] * a)), max(16, round(frame_size[1] * b))


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text.lower())
    if not m or not (16 <= int(m.group(1)) <= 16384 and 16 <= int(m.group(2)) <= 16384):
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT like 1024x768")
    return int(m.group(1)), int(m.group(2))


# --- frame sources -----------------------------------------------------------------------------


@dataclass
class Frame:
    t: float  # seconds since the start of the recording (or of the video)
    image: np.ndarray


class VideoFrames:
    """Frames of a video file, timed by their timestamps in the file.

    The timestamps come from OpenCV (`CAP_PROP_POS_MSEC` of each frame), or from `ffprobe` when OpenCV gives none
    that make sense; without either (or with `--video-fps`) frames are timed by a frame rate. Times count from the
    first frame.
    """

    def __init__(self, path: str, fps: float | None) -> None:
        self.path = path
        if not Path(path).is_file():
            raise CalibrationError(f"cannot read video {path}: no such file")
        cap = self._open()
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise CalibrationError(f"cannot read video {path}: it has no frame OpenCV can decode")
        nominal = cap.get(cv2.CAP_PROP_FPS)
        self.nominal = float(nominal) if nominal and math.isfinite(nominal) and 0 < nominal <= 1000 else None
        self.size = (first.shape[1], first.shape[0])
        self._cap = cap
        self._first: np.ndarray | None = first
        self._first_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
        self.fps: float | None = fps
        self.times: list[float] | None = None  # from ffprobe
        self.backwards = 0
        self.frames_read = 0
        self._probe: list[float] = []  # OpenCV's positions of the first frames
        if fps:
            self.timing = f"{fps:g} frames a second (--video-fps)"
        elif self._opencv_times_usable():
            self.timing = "their timestamps (OpenCV)"
            self._note_even_rate()
        else:
            self.times = ffprobe_times(path)
            if self.times:
                self.timing = "their timestamps (ffprobe)"
            elif self.nominal is None:
                cap.release()
                raise CalibrationError(
                    f"video {path} has no timestamps OpenCV or ffprobe can read and does not say its frame rate; give it with --video-fps"
                )
            else:
                self.fps = self.nominal
                self.timing = f"the file's nominal {self.nominal:g} frames a second"
                print(
                    f"warning: no frame timestamps could be read from {path} (OpenCV gives none, and "
                    + ("ffprobe could not read them" if shutil.which("ffprobe") else "ffprobe, part of ffmpeg, is not installed")
                    + f"): timing frames by the nominal {self.nominal:g} fps, which for a recording of an MJPEG stream is "
                    "usually not the real rate; give the real one with --video-fps",
                    file=sys.stderr,
                )

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            raise CalibrationError(f"cannot read video {self.path}: OpenCV cannot open it (not a video, or a codec it lacks)")
        return cap

    def _opencv_times_usable(self, frames: int = 50) -> bool:
        """Whether OpenCV's position of the first frames is a timestamp: finite, from 0 up, rising frame by frame."""
        cap = self._open()
        try:
            stamps: list[float] = []
            while len(stamps) < frames:
                ok = cap.grab()
                if not ok:
                    break
                stamps.append(cap.get(cv2.CAP_PROP_POS_MSEC))
        finally:
            cap.release()
        self._probe = stamps
        if len(stamps) < 2:
            return bool(stamps) and math.isfinite(stamps[0]) and stamps[0] >= 0
        return all(math.isfinite(v) and v >= 0 for v in stamps) and all(b > a for a, b in zip(stamps, stamps[1:], strict=False))

    def _note_even_rate(self) -> None:
        steps = np.diff(self._probe)
        if len(steps) >= 10 and abs(float(steps.mean()) - 40.0) < 0.5 and float(np.ptp(steps)) < 1.0:
            print(
                f"note: the frames of {self.path} are evenly 1/25 s apart, the rate ffmpeg and OpenCV assume for an MJPEG "
                "stream: a recording of a picamd stream made without `-use_wallclock_as_timestamps 1` does not hold the "
                "real times (give the real rate with --video-fps, or record again as the README shows)",
                file=sys.stderr,
            )

    def first_image(self) -> np.ndarray:
        assert self._first is not None
        return self._first

    def _time(self, index: int, previous: float | None) -> float:
        if self.fps:
            return index / self.fps
        if self.times is not None:
            if index < len(self.times):
                return self.times[index] - self.times[0]
            step = 1.0 / (self.nominal or 25.0)
            return self.times[-1] - self.times[0] + (index - len(self.times) + 1) * step
        t = (self._cap.get(cv2.CAP_PROP_POS_MSEC) - self._first_ms) / 1000.0
        if previous is not None and not (math.isfinite(t) and t >= previous):
            self.backwards += 1  # a damaged timestamp: the frame keeps the previous one's time
            return previous
        return t

    def frames(self, until_s: float) -> Iterator[Frame]:
        index = 0
        previous: float | None = None
        try:
            image = self._first
            while image is not None:
                t = 0.0 if index == 0 else self._time(index, previous)
                if t >= until_s:
                    return
                yield Frame(t, image)
                self.frames_read = index + 1
                previous = t
                index += 1
                ok, image = self._cap.read()
                if not ok:
                    image = None
        finally:
            self._cap.release()

    def notes(self) -> list[str]:
        """What went wrong with the timing while reading, for the user."""
        out = []
        if self.backwards:
            out.append(f"{self.backwards} frames had a timestamp that went backwards or none; each kept the time of the frame before")
        if self.times is not None and self.frames_read > len(self.times):
            out.append(
                f"ffprobe gave {len(self.times)} timestamps for {self.frames_read} frames; the frames beyond them were "
                f"timed by the nominal {self.nominal or 25:g} fps"
            )
        return out


def ffprobe_times(path: str) -> list[float] | None:
    """The presentation times of the video's frames (seconds, sorted) as ffprobe reads them, or None without ffprobe or times."""
    exe = shutil.which("ffprobe")
    if exe is None:
        return None
    try:
        res = subprocess.run(
            [exe, "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time", "-of", "csv=p=0", path],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    times = []
    for line in res.stdout.split():
        try:
            v = float(line.strip().rstrip(","))
        except ValueError:
            continue  # N/A: a packet without a time
        if math.isfinite(v):
            times.append(v)
    # MJPEG frames come in order; a codec with B-frames stores them out of it, and OpenCV decodes in presentation order.
    return sorted(times) or None


class DaemonFrames:
    """Frames of a running picamd: its MJPEG /stream, or /snapshot.jpg polled."""

    def __init__(self, url: str, fps: float | None, snapshot: bool) -> None:
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CalibrationError(f"bad --url {url!r}: give the daemon's address like http://raspberrypi:8080")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise CalibrationError(f"bad --url {url!r}: the port is not a number") from None
        path = re.sub(r"/(stream|snapshot\.jpg|index\.html)?$", "", parts.path)
        self.base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        # A daemon with http.users takes the URL's user:password@; messages show the URL without the password.
        self.auth = authorization(parts)
        self.shown = shown(urllib.parse.urlsplit(self.base))
        self.host = parts.hostname
        self.fps = fps
        self.snapshot = snapshot
        self.undecodable = 0
        self._health: dict[str, Any] | None = None

    # -- plain HTTP
    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        url = urllib.parse.urlsplit(self.base + path)
        if not url.hostname:
            raise CalibrationError(f"no host in {self.shown + path}")
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        conn = cls(url.hostname, url.port, timeout=HTTP_TIMEOUT_S)
        try:
            headers = {"User-Agent": "picamd-calibrate"}
            if self.auth:
                headers["Authorization"] = self.auth
            conn.request("GET", url.path or "/", headers=headers)
            resp = conn.getresponse()
            body = resp.read(64 * 2**20)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        except OSError as exc:
            raise CalibrationError(f"cannot connect to {self.shown}: {exc.strerror or exc}") from None
        except http.client.HTTPException as exc:
            raise CalibrationError(f"{self.shown} did not answer HTTP: {exc!r}") from None
        finally:
            conn.close()

    def health(self) -> dict[str, Any]:
        """The daemon's /health (asked once), or {} when it does not answer it with a JSON object."""
        if self._health is None:
            status, _, body = self.get("/health")
            try:
                health = json.loads(body) if status == 200 else {}
            except ValueError:
                health = {}
            self._health = health if isinstance(health, dict) else {}
        return self._health

    def sizes(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """(camera frame size, ring frame size) from the daemon's /health, or None when it does not say."""
        health = self.health()
        try:
            frame = tuple(int(v) for v in health["camera"]["frame_size"])
            ring = tuple(int(v) for v in health["ring"]["frame_size"])
        except (ValueError, KeyError, TypeError):
            return None
        if len(frame) != 2 or len(ring) != 2 or min(frame + ring) < 1:
            return None
        return frame, ring

    def control_port(self) -> int | None:
        """The port the daemon's command port listens on, from its /health, or None when it does not say."""
        clients = self.health().get("clients")
        control = clients.get("control") if isinstance(clients, dict) else None
        port = control.get("port") if isinstance(control, dict) else None
        return port if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536 else None

    def first_image(self) -> np.ndarray:
        status, _, body = self.get("/snapshot.jpg")
        if status != 200:
            raise CalibrationError(f"{self.shown}/snapshot.jpg answered {status}: {body[:200].decode('utf-8', 'replace').strip()}")
        image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise CalibrationError(f"{self.shown}/snapshot.jpg is not a JPEG OpenCV can decode")
        return image

    def frames(self, until_s: float) -> Iterator[Frame]:
        """Frames for `until_s` seconds of frame time (X-Timestamp), counted from the first frame."""
        source = self._snapshots() if self.snapshot else self._stream()
        t0: float | None = None
        # A stalled daemon must not keep the tool waiting for ever.
        deadline = time.monotonic() + until_s + 30.0
        for ts, image in source:
            if t0 is None:
                t0 = ts
            t = ts - t0
            if t >= until_s:
                return
            yield Frame(t, image)
            if time.monotonic() > deadline:
                raise CalibrationError(f"{self.shown} delivered frames too slowly: {t:.0f} of {until_s:.0f} s recorded")

    def _decode(self, jpeg: bytes) -> np.ndarray | None:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            self.undecodable += 1
        return image

    def _stream(self) -> Iterator[tuple[float, np.ndarray]]:
        try:
            url = stream_url(self.base + "/stream", self.fps)
        except ValueError as exc:
            raise CalibrationError(f"bad --url: {exc}") from None
        try:
            conn, resp, boundary = open_stream(url, HTTP_TIMEOUT_S)
        except StreamError as exc:
            raise CalibrationError(str(exc)) from None
        try:
            for headers, jpeg in read_parts(resp, boundary):
                image = self._decode(jpeg)
                if image is not None:
                    yield _frame_time(headers), image
        except (OSError, http.client.HTTPException) as exc:
            raise CalibrationError(f"the stream from {self.shown} broke off: {exc}") from None
        finally:
            conn.close()
        raise CalibrationError(f"the stream from {self.shown} ended early (daemon stopped or restarted?)")

    def _snapshots(self) -> Iterator[tuple[float, np.ndarray]]:
        interval = 1.0 / (self.fps or 5.0)
        last_id = None
        next_at = time.monotonic()
        while True:
            status, headers, body = self.get("/snapshot.jpg")
            if status == 200 and headers.get("x-frame-id") != last_id:
                last_id = headers.get("x-frame-id")
                image = self._decode(body)
                if image is not None:
                    yield _frame_time(headers), image
            elif status != 200 and status != 503:  # 503: no frame yet, try again
                raise CalibrationError(f"{self.shown}/snapshot.jpg answered {status}")
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))


def _frame_time(headers: dict[str, str]) -> float:
    try:
        ts = float(headers.get("x-timestamp", ""))
        if math.isfinite(ts):
            return ts
    except ValueError:
        pass
    return time.time()  # a server without X-Timestamp: arrival time is the best there is


# --- region selection in a window ------------------------------------------------------------


def window_problem() -> str | None:
    """Why an OpenCV window cannot be shown here, or None when it can."""
    m = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    if m and m.group(1).upper() == "NONE":
        return "this OpenCV has no window support (opencv-python-headless; install opencv-python on a desktop for --select)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "there is no display (DISPLAY is not set: a console or an SSH session without -X)"
    return None


def select_region(image: np.ndarray, frame_size: tuple[int, int]) -> list[str]:
    problem = window_problem()
    if problem is not None:
        raise CalibrationError(
            f"cannot open a window to draw the region: {problem}. Give the region with --rect X Y W H "
            "(pixels of the full frame, or fractions 0..1) or --polygon X,Y X,Y X,Y ..., or open the daemon's "
            "page (http://HOST:8080/), drag a rectangle over the image and copy the --rect numbers it shows."
        )
    title = "picamd calibrate: drag the region, then Enter (c cancels)"
    try:
        x, y, w, h = cv2.selectROI(title, image, showCrosshair=True, fromCenter=False)
    except cv2.error as exc:
        raise CalibrationError(f"cannot open a window to draw the region: {exc}") from None
    finally:
        cv2.destroyAllWindows()
    if w <= 0 or h <= 0:
        raise CalibrationError("no region drawn (cancelled)")
    sx, sy = frame_size[0] / image.shape[1], frame_size[1] / image.shape[0]
    return [str(round(x * sx)), str(round(y * sy)), str(round(w * sx)), str(round(h * sy))]


# --- measuring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    method: str
    pixel_threshold: int
    blur: int
    dilate: int

    def label(self) -> str:
        return f"{self.method} thr={self.pixel_threshold} blur={self.blur} dilate={self.dilate}"


@dataclass
class Measured:
    setting: Setting
    meter: RegionMeter
    running: list[float] = field(default_factory=list)
    stopped: list[float] = field(default_factory=list)


class Recorder:
    """Scales each frame to the ring size and measures it once per setting, keeping the labelled fractions."""

    def __init__(
        self,
        region: dict[str, Any],
        frame_size: tuple[int, int],
        ring_size: tuple[int, int],
        masks: list,
        alpha: float,
        settings: list[Setting],
    ) -> None:
        self.frame_size = frame_size
        self.ring_size = ring_size
        self.measured = [
            Measured(
                s,
                RegionMeter(
                    region,
                    frame_size,
                    ring_size,
                    masks,
                    method=s.method,
                    alpha=alpha,
                    blur=s.blur,
                    pixel_threshold=s.pixel_threshold,
                    dilate=s.dilate,
                ),
            )
            for s in settings
        ]
        self._ring = np.empty((ring_size[1], ring_size[0], 3), np.uint8)
        self.frames = {lab: 0 for lab in LABELS}
        self.unlabelled = 0
        self.warned_size = False

    @property
    def measured_on(self) -> str:
        return self.measured[0].meter.source

    @property
    def quantum(self) -> float:
        """The changed fraction of one measured pixel: no threshold below it means anything."""
        return 1.0 / max(1, self.measured[0].meter.measured_pixels)

    def rebaseline(self) -> None:
        for m in self.measured:
            m.meter.rebaseline()

    def add(self, image: np.ndarray, label: str | None) -> None:
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        full = image if (image.shape[1], image.shape[0]) == self.frame_size else None
        if full is None and not self.warned_size:
            self.warned_size = True
            print(
                f"note: frames are {image.shape[1]}x{image.shape[0]}, the camera frame is "
                f"{self.frame_size[0]}x{self.frame_size[1]}; scaling them (coordinates stay in camera pixels)",
                file=sys.stderr,
            )
        cv2.resize(image, self.ring_size, dst=self._ring, interpolation=cv2.INTER_AREA)
        if label is None:
            self.unlabelled += 1
        else:
            self.frames[label] += 1
        for m in self.measured:
            fraction = m.meter.measure(self._ring, full)
            if fraction is None or label is None:
                continue
            (m.running if label == "running" else m.stopped).append(fraction)


# --- scoring ---------------------------------------------------------------------------------


@dataclass
class Score:
    setting: Setting
    min_fraction: float
    efficiency: float
    running_moving: float  # share of RUNNING frames counted as moving
    stopped_moving: float  # share of STOPPED frames counted as moving
    margin: float
    tolerance: float
    running_median: float
    stopped_p95: float
    current: bool = False

    def row(self) -> dict[str, Any]:
        return {
            "method": self.setting.method,
            "pixel_threshold": self.setting.pixel_threshold,
            "blur": self.setting.blur,
            "dilate": self.setting.dilate,
            "min_fraction": self.min_fraction,
            "efficiency": round(self.efficiency, 4),
            "running_moving": round(self.running_moving, 4),
            "stopped_moving": round(self.stopped_moving, 4),
            "margin": round(self.margin, 4),
            "tolerance": None if math.isinf(self.tolerance) else round(self.tolerance, 2),
            "running_median_fraction": round(self.running_median, 5),
            "stopped_p95_fraction": round(self.stopped_p95, 5),
            "current": self.current,
        }


def _round_within(value: float, lo: float, hi: float) -> float:
    """value rounded to as few significant digits as keep it inside (lo, hi]."""
    for digits in range(2, 12):
        r = float(f"{value:.{digits}g}")
        if lo < r <= hi:
            return r
    return value


def score(setting: Setting, running: list[float], stopped: list[float], quantum: float, running_fraction: float) -> Score:
    """The best min_fraction for one setting and how well it separates the two sets (see the module doc)."""
    run = np.sort(np.asarray(running, np.float64))
    stop = np.sort(np.asarray(stopped, np.float64))
    values = np.unique(np.concatenate([run, stop]))
    # Candidate k stands for any threshold in (lower[k], upper[k]]: a frame moves when fraction >= threshold,
    # so all of them classify alike. A last candidate above every value (nothing moves) while that stays <= 1.
    upper = np.append(values, 1.0) if values[-1] < 1.0 else values
    lower = np.concatenate([[0.0], values])[: len(upper)]
    keep = upper > 0  # min_fraction must be above 0
    upper, lower = upper[keep], lower[keep]
    run_moving = 1.0 - np.searchsorted(run, upper, side="left") / len(run)
    stop_moving = 1.0 - np.searchsorted(stop, upper, side="left") / len(stop)
    balanced = (run_moving + 1.0 - stop_moving) / 2.0
    best = float(balanced.max())
    good = balanced >= best - 1e-12
    # The widest run of equally good neighbours (log scale) leaves the most room for drift either way.
    best_span: tuple[float, int, int] | None = None
    k = 0
    n = len(good)
    while k < n:
        if not good[k]:
            k += 1
            continue
        j = k
        while j + 1 < n and good[j + 1]:
            j += 1
        lo, hi = max(lower[k], quantum), min(upper[j], 1.0)
        span = hi / lo if hi > lo else 1.0
        if best_span is None or span > best_span[0]:
            best_span = (span, k, j)
        k = j + 1
    assert best_span is not None
    span, k, j = best_span
    lo_raw, hi = float(lower[k]), float(min(upper[j], 1.0))
    lo = max(lo_raw, quantum)
    threshold = math.sqrt(lo * hi) if hi > lo else hi
    threshold = _round_within(threshold, lo_raw, hi)
    rm = float(np.count_nonzero(run >= threshold) / len(run))
    sm = float(np.count_nonzero(stop >= threshold) / len(stop))
    return Score(
        setting=setting,
        min_fraction=threshold,
        efficiency=(rm + 1.0 - sm) / 2.0,
        running_moving=rm,
        stopped_moving=sm,
        margin=min(rm - running_fraction, running_fraction - sm),
        tolerance=math.sqrt(span) if hi > lo else 1.0,
        running_median=float(np.median(run)),
        stopped_p95=float(np.percentile(stop, 95)),
    )


def rank(scores: list[Score]) -> list[Score]:
    # Efficiency to 3 decimals: a thousandth is noise, a wider margin or tolerance is not.
    return sorted(scores, key=lambda s: (-round(s.efficiency, 3), -round(s.margin, 3), -s.tolerance))


# --- output ----------------------------------------------------------------------------------


def table(scores: list[Score], top: int) -> str:
    head = (
        f"{'#':>3}  {'method':<10} {'thr':>4} {'blur':>4} {'dil':>3}  {'min_fraction':>12}  {'effic.':>6}  "
        f"{'RUN moving':>10}  {'STOP moving':>11}  {'margin':>7}  {'toler.':>7}  {'RUN median':>10}  {'STOP p95':>9}"
    )
    lines = [head, "-" * len(head)]
    for i, s in enumerate(scores[:top], 1):
        tol = "inf" if math.isinf(s.tolerance) else f"x{s.tolerance:.1f}"
        lines.append(
            f"{i:>3}  {s.setting.method:<10} {s.setting.pixel_threshold:>4} {s.setting.blur:>4} {s.setting.dilate:>3}  "
            f"{s.min_fraction:>12.5g}  {s.efficiency:>6.3f}  {s.running_moving:>10.1%}  {s.stopped_moving:>11.1%}  "
            f"{s.margin:>+7.3f}  {tol:>7}  {s.running_median:>10.4f}  {s.stopped_p95:>9.4f}" + ("  (current)" if s.current else "")
        )
    if len(scores) > top:
        lines.append(f"... and {len(scores) - top} more settings (--top to see them)")
    return "\n".join(lines)


def too_few(frames: dict[str, int]) -> str | None:
    """Why the counts of RUNNING and STOPPED frames are too few for a score to mean anything, or None."""
    if all(frames[lab] >= MIN_FRAMES for lab in LABELS):
        return None
    return (
        f"too few frames to judge: {frames['running']} RUNNING and {frames['stopped']} STOPPED frames "
        f"(at least {MIN_FRAMES} of each are needed)"
    )


def snippet_entry(region: dict[str, Any], best: Score) -> dict[str, Any]:
    entry = dict(region)
    entry.update(
        {
            "min_fraction": best.min_fraction,
            "pixel_threshold": best.setting.pixel_threshold,
            "blur": best.setting.blur,
            "dilate": best.setting.dilate,
        }
    )
    return entry


def snippet_text(entry: dict[str, Any], best: Score, info: dict[str, Any], running_fraction: float) -> str:
    comments = [
        f"Motion calibration of region {entry['name']}, written by tools/calibrate.py on {dt.datetime.now().isoformat(timespec='seconds')}",
        f"Source: {info['source']} ({info['frame_size'][0]}x{info['frame_size'][1]} camera frames, measured on the "
        f"{'ring' if info['measured_on'] == 'ring' else 'full'} frame, ring {info['ring_size'][0]}x{info['ring_size'][1]})",
        f"Recorded: {info['frames']['running']} RUNNING and {info['frames']['stopped']} STOPPED frames, timed by {info['timing']}",
        *([f"WARNING: {info['too_few_frames']}: the figures below mean little"] if info.get("too_few_frames") else []),
        f"Efficiency {best.efficiency:.3f}: {best.running_moving:.1%} of RUNNING frames move, "
        f"{best.stopped_moving:.1%} of STOPPED frames do",
        f"Margin {best.margin:+.3f} against running_fraction {running_fraction:g}; min_fraction may be off by "
        + ("any factor" if math.isinf(best.tolerance) else f"x{best.tolerance:.1f}")
        + " either way",
        "Merge into config.yaml; motion.method applies to every region.",
    ]
    body = yaml.safe_dump({"motion": {"method": best.setting.method, "regions": [entry]}}, sort_keys=False, default_flow_style=None)
    return "".join(f"# {c}\n" for c in comments) + body


def live_lines(entry: dict[str, Any], best: Score, host: str | None, port: int) -> str:
    s = best.setting
    how = f'echo "LINE" | nc {host or "HOST"} {port}'
    out = [
        f"# To apply it live, send these lines to the command port ({how}), then `overwrite_config` to keep them.",
        f"set motion.method {s.method}",
    ]
    if "rect" in entry:
        x, y, w, h = entry["rect"]
        out += [
            "# a) keeping the other regions: region add takes the region and its min_fraction; the pixel settings",
            f"#    become the global defaults (regions with their own values keep them). `region del {entry['name']}` first if it exists.",
            f"region add {entry['name']} {x} {y} {w} {h} {best.min_fraction:g}",
            f"set motion.pixel_threshold {s.pixel_threshold}",
            f"set motion.blur {s.blur}",
            f"set motion.dilate {s.dilate}",
            "# b) or, replacing every region with this one (its own pixel settings included):",
        ]
    else:
        out.append("# this replaces every region with this one (region add takes rectangles only):")
    out.append("set motion.regions " + json.dumps([entry], separators=(", ", ": ")))
    return "\n".join(out)


# --- the run ---------------------------------------------------------------------------------


def build_settings(args: argparse.Namespace, config: Config, with_current: bool) -> tuple[list[Setting], Setting | None]:
    thresholds, blurs, dilates = list(args.thresholds), list(args.blurs), list(args.dilates)
    current = None
    if with_current:
        current = Setting(
            config.get("motion.method"), config.get("motion.pixel_threshold"), config.get("motion.blur"), config.get("motion.dilate")
        )
    settings = [Setting(m, t, b, d) for m in args.methods for t in thresholds for b in blurs for d in dilates]
    if current is not None and current not in settings:
        settings.append(current)
    return settings, current


def record_labelled(source, recorder: Recorder, intervals: list[Interval]) -> dict[Interval, int]:
    """Feed every frame up to the last interval's end; count frames per interval."""
    counts = {i: 0 for i in intervals}
    end = max(i.end for i in intervals)
    last_t = None
    for frame in source.frames(end):
        label = None
        for i in intervals:
            if i.start <= frame.t < i.end:
                counts[i] += 1
                label = i.label
                break
        recorder.add(frame.image, label)
        last_t = frame.t
    empty = [i for i, n in counts.items() if n == 0]
    if empty:
        seen = "no frames at all" if last_t is None else f"frames from 0 to {last_t:.1f} s"
        raise CalibrationError(f"no frames in the labelled interval {empty[0]}: the source has {seen}")
    for interval, n in counts.items():
        if n < MIN_FRAMES:
            print(f"note: the labelled interval {interval} holds only {n} frames", file=sys.stderr)
    return counts


def record_prompted(source: DaemonFrames, recorder: Recorder, running_s: float, stopped_s: float) -> None:
    """Ask the user to run, then stop the machine, and record each phase."""
    phases = [
        ("running", running_s, "Make the machine RUN now and keep it running as it usually does."),
        ("stopped", stopped_s, "Now STOP the machine (leave lights and everything else as usual)."),
    ]
    for label, seconds, what in phases:
        print(f"\n{what}\nPress Enter to record {seconds:g} s of {label.upper()}.", flush=True)
        if not sys.stdin.readline():
            raise CalibrationError(
                "no answer on standard input: give the intervals with --labels instead, e.g. 0-60:running,60-120:stopped"
            )
        # The frames between the phases were not seen: start the background again.
        recorder.rebaseline()
        before = recorder.frames[label]
        shown = 0.0
        for frame in source.frames(seconds):
            recorder.add(frame.image, label)
            if frame.t - shown >= 10:
                shown = frame.t
                print(f"  {label}: {frame.t:.0f}/{seconds:g} s, {recorder.frames[label] - before} frames", file=sys.stderr, flush=True)
        got = recorder.frames[label] - before
        print(f"  recorded {got} {label.upper()} frames", flush=True)
        if got < 2:
            raise CalibrationError(f"no frames recorded while {label}: is the daemon delivering frames?")


def run(args: argparse.Namespace) -> int:
    if args.config and not Path(args.config).is_file():
        raise CalibrationError(f"--config {args.config}: no such file")
    try:
        config = Config.load(args.config) if args.config else Config()
    except (ConfigError, OSError) as exc:
        raise CalibrationError(f"cannot use --config {args.config}: {exc}") from None
    intervals = None
    if args.labels is not None:
        try:
            intervals = parse_labels(args.labels)
        except ValueError as exc:
            raise CalibrationError(f"bad --labels: {exc}") from None

    if args.video:
        if intervals is None:
            raise CalibrationError("--video needs --labels (which seconds of the video show the machine running and stopped)")
        video = VideoFrames(args.video, args.video_fps)
        source: VideoFrames | DaemonFrames = video
        frame_size = args.frame_size or video.size
        ring_size = ring_size_for(args.ring or config.get("ring.downscale"), frame_size)
        origin = Path(args.video).name
        host, port = None, config.get("control.port") or DEFAULT_CONTROL_PORT
    else:
        daemon = DaemonFrames(args.url, args.fps, args.snapshot)
        source = daemon
        sizes = daemon.sizes()
        if args.frame_size is not None:
            frame_size = args.frame_size
        elif sizes is not None:
            frame_size = sizes[0]
        else:
            image = daemon.first_image()
            frame_size = (image.shape[1], image.shape[0])
            print(
                f"note: {daemon.shown}/health does not give the frame sizes; taking {frame_size[0]}x{frame_size[1]} "
                "from a snapshot (give --frame-size and --ring if the stream is not the full frame)",
                file=sys.stderr,
            )
        if args.ring:
            ring_size = ring_size_for(args.ring, frame_size)
        elif sizes is not None:
            ring_size = sizes[1]
        else:
            ring_size = ring_size_for(config.get("ring.downscale"), frame_size)
        origin = daemon.shown
        # The command port the daemon reports; else the one --config gives, else the default.
        host, port = daemon.host, daemon.control_port() or config.get("control.port") or DEFAULT_CONTROL_PORT

    if args.rect is None and args.polygon is None:
        args.rect = select_region(source.first_image(), frame_size)
    try:
        region = region_entry(args.name, args.rect, args.polygon)
        parse_regions([region], frame_size)
    except ValueError as exc:
        raise CalibrationError(f"bad region: {exc}") from None

    settings, current = build_settings(args, config, with_current=bool(args.config))
    try:
        recorder = Recorder(region, frame_size, ring_size, config.get("motion.masks"), config.get("motion.background_alpha"), settings)
    except ValueError as exc:
        raise CalibrationError(f"bad region: {exc}") from None
    print(
        f"calibrating region {args.name} {region.get('rect', region.get('polygon'))} from {origin}: camera frame "
        f"{frame_size[0]}x{frame_size[1]}, ring {ring_size[0]}x{ring_size[1]}, measured on the {recorder.measured_on} frame; "
        f"{len(settings)} settings",
        flush=True,
    )
    if isinstance(source, VideoFrames):
        print(f"frames timed by {source.timing}", flush=True)

    if intervals is not None:
        record_labelled(source, recorder, intervals)
    elif isinstance(source, DaemonFrames):
        record_prompted(source, recorder, args.running_s, args.stopped_s)
    else:
        raise CalibrationError("--video needs --labels (which seconds of the video show the machine running and stopped)")
    if isinstance(source, DaemonFrames) and source.undecodable:
        print(f"note: {source.undecodable} frames could not be decoded and were skipped", file=sys.stderr)
    if isinstance(source, VideoFrames):
        for note in source.notes():
            print(f"note: {note}", file=sys.stderr)
    few = too_few(recorder.frames)
    if few:
        print(f"warning: {few}", file=sys.stderr)

    running_fraction = config.get("motion.running_fraction")
    scores = []
    for m in recorder.measured:
        if not m.running or not m.stopped:
            missing = "RUNNING" if not m.running else "STOPPED"
            raise CalibrationError(
                f"no {missing} frame could be measured (each recording's first frame only builds the background): record longer"
            )
        s = score(m.setting, m.running, m.stopped, recorder.quantum, running_fraction)
        s.current = m.setting == current
        scores.append(s)
    ranked = rank(scores)
    best = ranked[0]

    print(
        f"\n{recorder.frames['running']} RUNNING and {recorder.frames['stopped']} STOPPED frames"
        + (f" ({recorder.unlabelled} unlabelled frames measured, not scored)" if recorder.unlabelled else "")
    )
    print(
        "efficiency: mean of the share of RUNNING frames that move and the share of STOPPED frames that do not, "
        "at the best min_fraction (1 = perfect, 0.5 = a coin)"
    )
    print(
        f"margin: distance of both moving shares from running_fraction {running_fraction:g} (positive: the "
        "window majority calls both states right); tolerance: factor min_fraction may be off either way\n"
    )
    print(table(ranked, args.top))
    if current is not None:
        pos = next(i for i, s in enumerate(ranked, 1) if s.current)
        print(f"\nthe current setting ({current.label()}) ranks {pos} of {len(ranked)}")

    entry = snippet_entry(region, best)
    try:
        Config({"motion.method": best.setting.method, "motion.regions": [entry]})
        parse_regions([entry], frame_size)
    except (ConfigError, ValueError) as exc:  # a bug here must not write a snippet the daemon refuses
        raise CalibrationError(f"the best setting does not validate as config: {exc}") from None
    info = {
        "source": origin,
        "frame_size": list(frame_size),
        "ring_size": list(ring_size),
        "measured_on": recorder.measured_on,
        "frames": dict(recorder.frames),
        "timing": source.timing if isinstance(source, VideoFrames) else "X-Timestamp of each frame",
        "too_few_frames": few,
    }
    snippet = snippet_text(entry, best, info, running_fraction)
    print(
        f"\nbest: {best.setting.label()} min_fraction={best.min_fraction:g}: efficiency {best.efficiency:.3f}, "
        f"margin {best.margin:+.3f}" + (" (too few frames to judge: these figures mean little)" if few else "")
    )
    if few:
        print(
            "warning: too few frames to judge; record at least "
            f"{MIN_FRAMES} frames of each (longer intervals, or a higher frame rate) before trusting a setting",
            file=sys.stderr,
        )
    elif best.efficiency < 0.8 or best.margin <= 0:
        print(
            "warning: RUNNING and STOPPED are poorly separated; try a region that shows only the moving part, "
            "more contrast on it (a sticker), or a longer recording",
            file=sys.stderr,
        )
    if args.out:
        write_atomic(args.out, snippet.encode())
        print(f"config snippet written to {args.out}")
    print("\n" + snippet)
    print(live_lines(entry, best, host, port))
    if args.json:
        report = {
            **info,
            "definition": "efficiency = balanced accuracy at the best min_fraction; margin = "
            "min(RUN moving - running_fraction, running_fraction - STOP moving)",
            "running_fraction": running_fraction,
            "region": region,
            "best": best.row(),
            "results": [s.row() for s in ranked],
            "snippet": {"motion": {"method": best.setting.method, "regions": [entry]}},
        }
        write_atomic(args.json, (json.dumps(report, indent=1) + "\n").encode())
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description="Find the motion settings that best separate a machine's RUNNING from its STOPPED, "
        "and write them as a picamd config snippet.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  calibrate.py --video press.mp4 --rect 160 120 160 120 --name press1 --labels 0-60:running,60-120:stopped --out press1.yaml\n"
            "  calibrate.py --url http://raspberrypi:8080 --rect 0.2 0.3 0.1 0.1 --name press1 --out press1.yaml\n"
            "\nefficiency: the mean of the share of RUNNING frames seen moving and the share of STOPPED frames\n"
            "seen still, at the best min_fraction (1 = perfect, 0.5 = no better than a coin)."
        ),
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", metavar="FILE", help="a video file of the machine (use --labels)")
    src.add_argument("--url", metavar="URL", help="a running picamd's HTTP address, e.g. http://raspberrypi:8080")
    shape = ap.add_mutually_exclusive_group()
    shape.add_argument("--rect", nargs=4, metavar=("X", "Y", "W", "H"), help="the region: pixels of the full frame, or fractions 0..1")
    shape.add_argument("--polygon", nargs="+", metavar="X,Y", help="the region as a polygon of 3 or more X,Y points")
    shape.add_argument("--select", action="store_true", help="draw the region in a window (needs a display and OpenCV with GUI support)")
    ap.add_argument("--name", default="region1", help="the region's name in the config (default region1)")
    ap.add_argument(
        "--labels",
        metavar="SPEC",
        help="which seconds are RUNNING and STOPPED, e.g. 0-30:running,30-60:stopped "
        "(seconds into the video, or since the first frame of the stream); without it (--url) you are prompted",
    )
    ap.add_argument("--running-s", type=float, default=60.0, help="prompted recording: seconds of RUNNING (default 60)")
    ap.add_argument("--stopped-s", type=float, default=60.0, help="prompted recording: seconds of STOPPED (default 60)")
    ap.add_argument("--snapshot", action="store_true", help="poll /snapshot.jpg instead of reading /stream")
    ap.add_argument("--fps", type=float, help="with --url: frames per second to ask for (default: the stream's; 5 with --snapshot)")
    ap.add_argument(
        "--video-fps",
        type=float,
        help="time the video's frames by this rate instead of their timestamps "
        "(for a file without timestamps, or one whose timestamps are wrong)",
    )
    ap.add_argument(
        "--config",
        metavar="YAML",
        help="the daemon's config.yaml: its ring size, masks, background_alpha, "
        "running_fraction and current settings are used (the current settings are ranked too)",
    )
    ap.add_argument(
        "--ring", metavar="SIZE", help="the daemon's ring.downscale (WxH or a factor) when neither /health nor --config says it"
    )
    ap.add_argument(
        "--frame-size", type=parse_size, metavar="WxH", help="the camera's full frame size, when the frames are not full frames"
    )
    ap.add_argument(
        "--thresholds",
        type=lambda t: parse_int_list(t, "--thresholds", 1, 255),
        default=list(DEFAULT_THRESHOLDS),
        help="pixel_threshold values to try, comma-separated (default 10,15,25,40,60)",
    )
    ap.add_argument(
        "--blurs",
        type=lambda t: parse_int_list(t, "--blurs", 0, 51),
        default=list(DEFAULT_BLURS),
        help="blur kernel sizes to try (default 0,5,9,15)",
    )
    ap.add_argument(
        "--dilates",
        type=lambda t: parse_int_list(t, "--dilates", 0, 20),
        default=list(DEFAULT_DILATES),
        help="dilate iterations to try (default 0,2,4)",
    )
    ap.add_argument(
        "--methods",
        type=_methods,
        default=list(DEFAULT_METHODS),
        help="methods to try: background, previous or background,previous (default both)",
    )
    ap.add_argument("--top", type=int, default=15, help="rows of the table to print (default 15)")
    ap.add_argument("--out", metavar="YAML", help="write the best settings as a config snippet here (atomically)")
    ap.add_argument("--json", metavar="FILE", help="also write every setting's figures as JSON here")
    return ap


def _methods(text: str) -> list[str]:
    out = [m.strip().lower() for m in text.split(",") if m.strip()]
    bad = [m for m in out if m not in DEFAULT_METHODS]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"methods are background and previous, not {','.join(bad) or 'nothing'}")
    return list(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.polygon is not None and len(args.polygon) < 3:
        ap.error("--polygon needs at least 3 X,Y points")
    if args.running_s <= 0 or args.stopped_s <= 0 or not (math.isfinite(args.running_s) and math.isfinite(args.stopped_s)):
        ap.error("--running-s and --stopped-s must be positive")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        ap.error("--fps must be positive")
    if args.video_fps is not None and not (math.isfinite(args.video_fps) and args.video_fps > 0):
        ap.error("--video-fps must be positive")
    if args.top < 1:
        ap.error("--top must be at least 1")
    if args.ring is not None:
        try:
            parse_downscale(args.ring)
        except ValueError as exc:
            ap.error(f"--ring: {exc}")
    if args.select:
        args.rect = args.polygon = None
    try:
        return run(args)
    except CalibrationError as exc:
        print(f"calibrate: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("calibrate: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
