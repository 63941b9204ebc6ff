"""The picture at a preset: wait until the image has settled, then take the full-resolution frame.

Settling is measured, not slept: after the camera's completion reply, the
first frame taken after it is the baseline, and each next frame is compared
with the one before by the daemon's own motion measure (`RegionMeter` over
the whole picture, previous-frame method, with the motion blur, pixel
threshold and dilation); once the changed fraction is below
`ptz.settle_threshold` the picture has settled. `settle_s` (the preset's, else
`ptz.settle_s`) bounds the wait, counted from the completion: when it runs
out the picture is taken anyway and marked as not settled.

Two sources, chosen by `ptz.snapshot_url`:
- `CameraPictures`: picamd's own frames (the PTZ camera's RTSP stream as
  `camera.device`, or a Pi camera on a pan-tilt head): settling on the ring
  frames, the picture from the `LatestSlot` (a frame at least as new as the
  settled one);
- `SnapshotPictures`: the camera's HTTP snapshot (basic or digest auth, from
  the URL's `user:password@`), fetched with a timeout and retries; each fetch
  is a frame, the last one is the picture.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

import cv2
import numpy as np

from daemon.capture.ring import LatestSlot, Ring
from daemon.motion.measure import RegionMeter

if TYPE_CHECKING:
    from requests.auth import AuthBase

#: Width the snapshots are measured at (the ring's order of size: the measure's cost does not grow with the camera).
SNAPSHOT_MEASURE_WIDTH = 192
#: Beyond settle_s, how long a camera may take to deliver any frame at all before the preset fails.
FRAME_GRACE_S = 5.0


class PictureError(Exception):
    """No picture could be taken; one line naming the source and why."""


class PictureCancelled(Exception):
    """The sweep was cancelled while waiting for the picture."""


@dataclass(frozen=True)
class MeasureSettings:
    """The motion measure's settings (motion.blur, pixel_threshold, dilate), read when a picture is taken."""

    blur: int = 5
    pixel_threshold: int = 25
    dilate: int = 2


@dataclass(frozen=True)
class Picture:
    frame: np.ndarray  # full resolution, BGR; never modified by the sweep
    ts: float  # wall clock of the frame
    settle_s: float  # from the completion to the settled frame
    settled: bool  # False: settle_s ran out first
    change: float | None  # the last frame-to-frame changed fraction
    frames: int  # frames compared
    source: str  # "camera" or "snapshot"
    frame_id: int | None = None


class PictureSource(ABC):
    name = ""

    @abstractmethod
    def take(self, after_mono: float, threshold: float, max_s: float, keep_going: Callable[[], bool]) -> Picture:
        """The settled picture after the completion at `after_mono` (monotonic); `keep_going` is called often and
        returns False to give up (raises PictureCancelled). Raises PictureError when no picture can be had."""

    def describe(self) -> str:
        return self.name


def _meter(size: tuple[int, int], m: MeasureSettings) -> RegionMeter:
    return RegionMeter(
        {"name": "view", "rect": [0, 0, 1, 1]},
        size,
        size,
        method="previous",
        blur=m.blur,
        pixel_threshold=m.pixel_threshold,
        dilate=m.dilate,
    )


class CameraPictures(PictureSource):
    name = "camera"

    def __init__(self, ring: Ring, latest: LatestSlot, measure: Callable[[], MeasureSettings]) -> None:
        self._ring = ring
        self._latest = latest
        self._measure = measure

    def take(self, after_mono: float, threshold: float, max_s: float, keep_going: Callable[[], bool]) -> Picture:
        ring_size = (self._ring.shape[1], self._ring.shape[0])
        meter = _meter(ring_size, self._measure())
        deadline = after_mono + max_s
        last_id = self._ring.newest_id
        frames, change, settled, settled_id = 0, None, False, -1
        while True:
            if not keep_going():
                raise PictureCancelled()
            now = time.monotonic()
            if frames and now >= deadline:
                break
            if not frames and now >= deadline + FRAME_GRACE_S:
                raise PictureError(f"no new frame from the camera within {max_s + FRAME_GRACE_S:g} s after the move")
            got = self._ring.wait_newer(last_id, 0.25)
            if got is None:
                continue
            ring_frame, meta = got
            last_id = meta.frame_id
            if meta.mono <= after_mono:
                continue  # taken while the camera was still moving
            frames += 1
            settled_id = meta.frame_id
            change = meter.measure(ring_frame)
            if change is not None and change < threshold:
                settled = True
                break
        settle_s = max(0.0, time.monotonic() - after_mono)
        full = self._latest.get()
        deadline = time.monotonic() + FRAME_GRACE_S
        while full is None or full[1].frame_id < settled_id:
            if time.monotonic() > deadline:
                raise PictureError("the camera's full-resolution frame did not follow its ring frame")
            full = self._latest.wait_newer(full[1].frame_id if full is not None else -1, 0.25)
        frame, meta = full
        return Picture(frame, float(meta.ts), settle_s, settled, change, frames, self.name, meta.frame_id)


class SnapshotPictures(PictureSource):
    name = "snapshot"

    def __init__(
        self, url: str, auth: str, timeout_s: Callable[[], float], retries: Callable[[], int], measure: Callable[[], MeasureSettings]
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("ptz.snapshot_url must be an http:// or https:// URL")
        user = unquote(parts.username) if parts.username else ""
        password = unquote(parts.password) if parts.password else ""
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        self._url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        self._shown = f"{parts.scheme}://{netloc}"
        # requests (about 5 MiB) is imported only by a configured snapshot URL, not by every daemon.
        import requests
        from requests.auth import HTTPBasicAuth, HTTPDigestAuth

        self._auth: AuthBase | None = None
        if user:
            self._auth = HTTPDigestAuth(user, password) if auth == "digest" else HTTPBasicAuth(user, password)
        self._timeout_s = timeout_s
        self._retries = retries
        self._measure = measure
        self._session = requests.Session()
        self._session.trust_env = False  # a camera on the LAN, never through a proxy from the environment

    def describe(self) -> str:
        return f"snapshot {self._shown}"

    def close(self) -> None:
        self._session.close()

    def fetch(self) -> np.ndarray:
        """One snapshot, decoded; PictureError after the retries (the reason never holds the credentials)."""
        import requests  # loaded already by __init__

        attempts = max(1, int(self._retries()) + 1)
        reason = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(1.0, 0.2 * attempt))
            try:
                resp = self._session.get(self._url, auth=self._auth, timeout=float(self._timeout_s()))
            except requests.Timeout:
                reason = f"no answer within {float(self._timeout_s()):g} s"
                continue
            except requests.RequestException as exc:
                reason = f"cannot connect ({type(exc).__name__})"
                continue
            if resp.status_code in (401, 403):
                raise PictureError(
                    f"{self.describe()}: HTTP {resp.status_code}: the camera refused the login "
                    "(check the user and password in ptz.snapshot_url and ptz.snapshot_auth)"
                )
            if resp.status_code != 200:
                reason = f"HTTP {resp.status_code}"
                continue
            frame = cv2.imdecode(np.frombuffer(resp.content, np.uint8), cv2.IMREAD_COLOR)
            if frame is None:
                reason = f"the answer ({len(resp.content)} bytes, {resp.headers.get('Content-Type', 'no type')}) is not an image"
                continue
            return frame
        raise PictureError(f"{self.describe()}: {reason} ({attempts} attempt{'s' if attempts > 1 else ''})")

    def take(self, after_mono: float, threshold: float, max_s: float, keep_going: Callable[[], bool]) -> Picture:
        deadline = after_mono + max_s
        settings = self._measure()
        meter: RegionMeter | None = None
        size: tuple[int, int] | None = None
        frames, change, settled = 0, None, False
        frame = None
        while True:
            if not keep_going():
                raise PictureCancelled()
            frame = self.fetch()
            frames += 1
            h, w = frame.shape[:2]
            small_size = (SNAPSHOT_MEASURE_WIDTH, max(16, round(h * SNAPSHOT_MEASURE_WIDTH / max(1, w))))
            if meter is None or small_size != size:
                meter, size = _meter(small_size, settings), small_size
            change = meter.measure(cv2.resize(frame, small_size, interpolation=cv2.INTER_AREA))
            if change is not None and change < threshold:
                settled = True
                break
            if time.monotonic() >= deadline:
                break
        return Picture(frame, time.time(), max(0.0, time.monotonic() - after_mono), settled, change, frames, self.name)
