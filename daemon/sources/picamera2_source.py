"""The Raspberry Pi camera through Picamera2 (libcamera): `Picamera2Source`.

`picamera2` is imported only when this source opens (`picamera2_info.py`
says why and describes what the camera reports); tests pass a stand-in
module instead.

One reader thread (`picamd-picamera2-reader`) owns the camera: it captures
requests, copies the main stream out, reads the metadata, releases the
request and keeps only the newest frame; it also performs every
reconfiguration (day/night, frame rate, full-resolution stills) between two
frames, so no other thread ever calls into the camera while a capture is in
flight. `read(timeout)` waits on a condition and is bounded whatever the
camera does; a stalled camera gives None until the capture loop's stall
timeout closes and reopens it.

Modes: day, and at night `still` or `slow_video`; the controls of each, and
the clamping to the sensor's limits, are `picamera2_modes.py`'s. A change of
mode reconfigures the camera on the reader thread; new values in the same
night mode are set live.

What the Pi does for free (`camera.lores`, `camera.hw_encoder`):

* The ISP makes the ring-size frame as a second stream, `lores`, at the size
  ring.downscale gives for the main stream, so the capture loop copies it into
  the ring instead of resizing on the CPU (`info["lores"]`). libcamera wants it
  no larger than main and, on the Pi 4 and older (VC4), in YUV420: the reader
  turns that into BGR (cheap at ring size); the Pi 5 gives RGB888 directly.
  When libcamera refuses it (or changes its size) the camera runs without it
  and the loop resizes as before; `describe()` says which.
* The stream's JPEGs from the hardware MJPEG encoder (`picamera2_jpeg`),
  started and stopped by the reader thread between frames as the stream asks.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import CancelledError
from typing import Any

import cv2
import numpy as np

from daemon.config import ring_frame_size
from daemon.core.latest import HandoffFailed, Latest
from daemon.core.worker import Worker

from .base import CameraJpeg, Source, SourceError, night_applied
from .picamera2_info import describe_controls, describe_sensor_modes, frame_info, jsonable, load_picamera2
from .picamera2_jpeg import Picamera2Jpeg
from .picamera2_modes import ae_long_mode, clamp_to_sensor, day_frame_us, limit, mode_controls, night_frame_limits

log = logging.getLogger("picamd.picamera2")

#: The reader waits for a frame in slices this long, so it notices close() promptly.
POLL_S = 0.25
#: How long close() waits for the reader thread to stop the camera and release it.
CLOSE_WAIT_S = 2.0
#: Frame buffers: few, because each full frame lives in scarce CMA memory on a Pi.
DAY_BUFFERS = 4
STILL_BUFFERS = 2

#: libcamera's YUV 4:2:0 formats and the OpenCV conversion of each to BGR (the U and V planes in either order).
YUV_TO_BGR = {"YUV420": cv2.COLOR_YUV2BGR_I420, "YVU420": cv2.COLOR_YUV2BGR_YV12}


class _FullCapture:
    """A request for a full-resolution still, handed to the reader thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: tuple[np.ndarray, dict[str, Any]] | None = None
        self.error: str | None = None


class Picamera2Source(Source):
    name = "picamera2"

    def __init__(self, camera: Any, night: Any, picamera2_module: Any = None, camera_num: int = 0) -> None:
        self._cfg = camera
        self._night_cfg = night
        self._given_module = picamera2_module
        self._num = int(camera_num)
        self._fps = float(camera.framerate)
        self._cond = threading.Condition()
        self._reader_worker = Worker("picamera2-reader", lambda: None, repeat=False, join_timeout_s=CLOSE_WAIT_S)
        self._open = False
        self._released = threading.Event()
        self._released.set()
        self._cam: Any = None
        self._module: Any = None
        # what the camera should be doing: ("day",) or (mode, exposure_us, gain) after clamping
        self._wanted: tuple = ("day",)
        self._applied: tuple = ("closed",)  # what the running camera is configured for
        self._reconfigure = False
        self._pending_controls: dict[str, Any] = {}
        self._full_requests: list[_FullCapture] = []
        self._mode = "closed"
        self._frames = Latest[tuple[np.ndarray, dict[str, Any]]]()  # the reader thread's newest frame, or its failure
        self._returned = 0  # version of the frame read() returned last
        self._metadata: dict[str, Any] = {}
        self._limits: dict[str, Any] = {}
        self._sensor_modes: list[dict[str, Any]] | None = None
        self._info: dict[str, Any] = {}
        self._properties: dict[str, Any] = {}
        self._configured_size: tuple[int, int] | None = None
        self._colour_gains: tuple[float, float] | None = None
        self._lores: tuple[tuple[int, int], str] | None = None  # (size, format) of the lores stream while configured
        self._lores_note = "not configured yet"
        self._lores_refused: str | None = None  # libcamera refused it once: not asked again by this source
        self._jpeg = Picamera2Jpeg(camera)

    @property
    def camera_num(self) -> int:
        return self._num

    @property
    def is_open(self) -> bool:
        return self._open

    # -- configurations --------------------------------------------------------------------

    def _transform(self) -> Any:
        module = getattr(self._module, "libcamera", None)
        if module is None:
            import libcamera  # noqa: PLC0415 - ships with picamera2 on the Pi

            module = libcamera
        return module.Transform(hflip=int(bool(self._cfg.hflip)), vflip=int(bool(self._cfg.vflip)))

    def _size(self) -> tuple[int, int]:
        # Picamera2 wants even sizes; it would round them down the same way.
        w, h = int(self._cfg.width), int(self._cfg.height)
        return w - w % 2, h - h % 2

    def _day_frame_us(self) -> int:
        return day_frame_us(self._fps)

    def _limit(self, name: str, fallback: tuple) -> tuple:
        return limit(self._limits, name, fallback)

    def _controls_for(self, wanted: tuple) -> dict[str, Any]:
        long_mode = ae_long_mode(self._module)
        return mode_controls(wanted, day_us=self._day_frame_us(), limits=self._limits, colour_gains=self._colour_gains, long_mode=long_mode)

    def _build_config(self, cam: Any, wanted: tuple, lores: tuple[tuple[int, int], str] | None = None) -> dict:
        main = {"size": self._size(), "format": "RGB888"}
        controls = self._controls_for(wanted)
        streams: dict[str, Any] = {"main": main}
        if lores is not None:
            streams["lores"] = {"size": lores[0], "format": lores[1]}
        if wanted[0] == "still":
            return cam.create_still_configuration(**streams, transform=self._transform(), buffer_count=STILL_BUFFERS, controls=controls)
        return cam.create_video_configuration(**streams, transform=self._transform(), buffer_count=DAY_BUFFERS, controls=controls)

    def _lores_plan(self) -> tuple[tuple[int, int], str] | None:
        """The lores stream to ask for: the ring's size, in the format this Pi's ISP gives it; None when not wanted."""
        if self._cfg.lores == "off":
            self._lores_note = "off (camera.lores); the ring is resized on the CPU"
            return None
        if self._lores_refused:
            self._lores_note = f"{self._lores_refused}; the ring is resized on the CPU"
            return None
        main = self._size()
        ring = ring_frame_size(self._cfg.config.get("ring.downscale"), *main)
        if ring == main:
            self._lores_note = "not needed: the ring is full size"
            return None
        # Only the Pi 5's ISP (PiSP) gives lores in RGB; the older ones (VC4) only in YUV420. RGB888 is B, G, R in memory.
        pisp = getattr(getattr(self._module.Picamera2, "platform", None), "name", "VC4") == "PISP"
        return ring, ("RGB888" if pisp else "YUV420")

    def _configure(self, cam: Any, wanted: tuple) -> None:
        """Configure the stopped camera for `wanted`, with the lores stream where libcamera takes it."""
        plan = self._lores_plan()
        if plan is not None:
            (w, h), fmt = plan
            try:
                cam.configure(self._build_config(cam, wanted, plan))
                got = ((cam.camera_configuration() or {}).get("lores") or {}).get("size")
                if got is not None and tuple(got) == plan[0]:
                    self._lores = plan
                    self._lores_note = f"{w}x{h} {fmt} from the ISP"
                    self._limits = dict(cam.camera_controls)
                    return
                reason = f"libcamera made the {w}x{h} lores stream {got}"
            except Exception as exc:  # picamera2 and libcamera refuse a bad configuration with RuntimeError
                reason = f"libcamera refused a {w}x{h} {fmt} lores stream ({' '.join(str(exc).split())})"
            self._lores_refused = reason
            self._lores_note = f"{reason}; the ring is resized on the CPU"
            log.warning("Pi camera %d: %s; the ring is resized on the CPU", self._num, reason)
        self._lores = None
        cam.configure(self._build_config(cam, wanted))
        self._limits = dict(cam.camera_controls)

    # -- opening -----------------------------------------------------------------------------

    def open(self) -> None:
        if self._open and self._reader_worker.alive:
            return
        if not self._released.wait(CLOSE_WAIT_S):
            raise SourceError("the Pi camera is still being released by the previous capture")
        started = time.monotonic()
        self._module = load_picamera2(self._given_module)
        Picamera2 = self._module.Picamera2
        try:
            cameras = list(Picamera2.global_camera_info())
        except Exception as exc:
            raise SourceError(f"libcamera cannot list cameras: {exc}") from exc
        if self._num >= len(cameras):
            raise SourceError(f"no Pi camera {self._num} (libcamera sees {len(cameras)} camera(s))")
        self._info = dict(cameras[self._num])
        try:
            cam = Picamera2(self._num)
        except Exception as exc:
            raise SourceError(f"cannot open Pi camera {self._num} ({self._info.get('Model', '?')}): {exc}") from exc
        try:
            if self._sensor_modes is None:
                # Reading sensor_modes reconfigures the camera once per mode, so it is done once, before our own configure.
                try:
                    self._sensor_modes = describe_sensor_modes(cam.sensor_modes)
                except Exception as exc:
                    log.warning("could not read the sensor modes of camera %d: %s", self._num, exc)
                    self._sensor_modes = []
            self._properties = {k: jsonable(v) for k, v in dict(cam.camera_properties).items()}
            self._limits = dict(cam.camera_controls)
            if self._wanted[0] != "day":
                # Night was asked for before the sensor's limits were known: clamp now.
                exp, g, notes = self._clamp(self._wanted[1], self._wanted[2])
                self._wanted = (self._wanted[0], exp, g)
                for n in notes:
                    log.warning("Pi camera %d: %s", self._num, n)
            self._configure(cam, self._wanted)
            self._configured_size = tuple(cam.camera_configuration()["main"]["size"])
            self._jpeg.attach(self._module)
            cam.start()
        except Exception as exc:
            try:
                cam.close()
            except Exception as close_exc:
                log.debug("closing after a failed open: %s", close_exc)
            raise SourceError(f"cannot start Pi camera {self._num}: {exc}") from exc
        self._cam = cam
        self._mode = self._wanted[0]
        self._applied = self._wanted
        self._frames = Latest()
        self._returned = 0
        with self._cond:
            self._reconfigure = False
        self._released.clear()
        self._open = True
        self._reader_worker.start(lambda: self._reader(cam))
        exp_max = self._limit("ExposureTime", (None, None))[1]
        log.info(
            "opened Pi camera %d (%s) at %dx%d, %s mode, %.3g fps; exposure up to %s us; ring frames: %s; in %.2f s",
            self._num,
            self._info.get("Model", "?"),
            *self._configured_size,
            self._mode,
            self._fps,
            exp_max,
            self._lores_note,
            time.monotonic() - started,
        )

    # -- the reader thread ---------------------------------------------------------------------

    def _reader(self, cam: Any) -> None:
        try:
            while not self._reader_worker.stopping.is_set():
                self._between_frames(cam)
                request = self._next_request(cam)
                if request is None:
                    return  # stopping
                try:
                    array = request.make_array("main")
                    lores = request.make_array("lores") if self._lores is not None else None
                    metadata = request.get_metadata()
                finally:
                    request.release()
                self._publish(self._to_bgr(array), metadata, self._lores_to_bgr(lores))
        except Exception as exc:  # libcamera errors end this capture; the capture loop reopens the source
            log.debug("reader failed", exc_info=exc)
            self._fail(f"camera failed: {type(exc).__name__}: {exc}")
        finally:
            self._teardown(cam)

    def _next_request(self, cam: Any) -> Any:
        """The next completed request, or None when asked to stop (a pending capture is then cancelled)."""
        job = cam.capture_request(wait=False)
        while True:
            try:
                return cam.wait(job, timeout=POLL_S)
            except TimeoutError:
                if self._reader_worker.stopping.is_set():
                    return None
            except CancelledError:
                return None

    def _between_frames(self, cam: Any) -> None:
        with self._cond:
            reconfigure, self._reconfigure = self._reconfigure, False
            wanted = self._wanted
            controls, self._pending_controls = self._pending_controls, {}
            full, self._full_requests = self._full_requests, []
        if reconfigure:
            self._switch(cam, wanted)
        elif controls:
            cam.set_controls(controls)
        for req in full:
            self._capture_full_now(cam, req)
        self._jpeg.apply(cam)  # start, restart or stop the hardware JPEG encoder as the stream wants

    def _switch(self, cam: Any, wanted: tuple) -> None:
        if wanted == self._applied:
            return
        if wanted[0] == self._applied[0] and wanted[0] != "day":
            # Same night mode with new values: the controls change live, no restart of the camera.
            cam.set_controls(self._controls_for(wanted))
            self._applied = wanted
            log.info("night %s mode now exposure %d us, gain %g", wanted[0], wanted[1], wanted[2])
            return
        self._jpeg.stop(cam)  # the next frame starts it again on the new configuration
        cam.stop()
        self._configure(cam, wanted)
        cam.start()
        self._mode = wanted[0]
        self._applied = wanted
        log.info(
            "camera now in %s mode (%s)",
            wanted[0],
            "video, AE/AWB on" if wanted[0] == "day" else f"exposure {wanted[1]} us, gain {wanted[2]:g}",
        )

    def _capture_full_now(self, cam: Any, req: _FullCapture) -> None:
        current = cam.camera_configuration()
        try:
            still = cam.create_still_configuration(
                main={"size": tuple(cam.sensor_resolution), "format": "RGB888"},
                transform=self._transform(),
                buffer_count=1,
                controls=dict(current.get("controls") or {}) if self._mode != "day" else {},
            )
            self._jpeg.stop(cam)
            cam.stop()
            cam.configure(still)
            cam.start()
            request = cam.wait(cam.capture_request(wait=False), timeout=max(5.0, self._wanted_exposure_s() * 3 + 5))
            try:
                frame = self._to_bgr(request.make_array("main"))
                metadata = request.get_metadata()
            finally:
                request.release()
            req.result = (frame, self._info_from(metadata))
        except Exception as exc:
            req.error = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                cam.stop()
                self._configure(cam, self._applied)
                cam.start()
            finally:
                req.done.set()

    def _wanted_exposure_s(self) -> float:
        return self._applied[1] / 1e6 if self._applied[0] in ("still", "slow_video") else 0.1

    @staticmethod
    def _to_bgr(array: np.ndarray) -> np.ndarray:
        if array.ndim == 3 and array.shape[2] == 4:  # XBGR8888 is B, G, R, X in memory
            array = array[..., :3]
        return np.ascontiguousarray(array)

    def _lores_to_bgr(self, array: np.ndarray | None) -> np.ndarray | None:
        """The lores stream's array as a BGR ring frame; None when there is none or it is not what was configured."""
        if array is None or self._lores is None:
            return None
        (w, h), fmt = self._lores
        code = YUV_TO_BGR.get(fmt)
        if code is not None:
            # picamera2 gives YUV420 as one (h * 3/2, stride) plane; the columns past the width are padding.
            if array.ndim != 2 or array.shape[0] != h * 3 // 2 or array.shape[1] < w:
                return None
            array = cv2.cvtColor(array, code)
        elif array.ndim != 3 or array.shape[2] < 3:
            return None
        if array.shape[0] < h or array.shape[1] < w:
            return None
        return np.ascontiguousarray(array[:h, :w, :3])

    def _info_from(self, metadata: dict) -> dict[str, Any]:
        return frame_info(metadata, self._mode)

    def _publish(self, frame: np.ndarray, metadata: dict, lores: np.ndarray | None = None) -> None:
        info = self._info_from(metadata)
        if lores is not None:
            info["lores"] = lores
        if metadata.get("SensorTimestamp") is not None:
            info["sensor_ts_ns"] = int(metadata["SensorTimestamp"])
        with self._cond:
            self._metadata = {k: jsonable(v) for k, v in metadata.items()}
            gains = metadata.get("ColourGains")
            if self._mode == "day" and gains and len(gains) == 2:  # (red, blue); anything else could not be set back
                self._colour_gains = (float(gains[0]), float(gains[1]))
        self._frames.put((frame, info))

    def _fail(self, reason: str) -> None:
        self._frames.fail(reason)
        log.warning("Pi camera %d: %s", self._num, reason)

    def _teardown(self, cam: Any) -> None:
        self._jpeg.detach(cam)
        try:
            cancel = getattr(cam, "cancel_all_and_flush", None)
            if cancel is not None:
                cancel()  # a capture still waiting for a frame would otherwise hold up stop()
            cam.stop()
        except Exception as exc:
            log.warning("stopping Pi camera %d: %s", self._num, exc)
        try:
            cam.close()
        except Exception as exc:
            log.warning("closing Pi camera %d: %s", self._num, exc)
        finally:
            self._released.set()
            with self._cond:
                for req in self._full_requests:
                    req.error = "camera closed"
                    req.done.set()
                self._full_requests = []

    # -- Source interface --------------------------------------------------------------------

    def read(self, timeout: float) -> tuple[np.ndarray, dict[str, Any]] | None:
        if not self._open:
            raise SourceError("Pi camera is not open")
        try:
            got = self._frames.wait_newer(self._returned, max(0.0, timeout))
        except HandoffFailed as exc:
            raise SourceError(f"Pi camera {self._num}: {exc}") from None
        if got is None:
            return None
        self._returned, (frame, info) = got
        return frame, dict(info)

    def close(self) -> None:
        self._frames.fail("closed")
        was_open, self._open = self._open, False
        if was_open and not self._reader_worker.stop():
            log.warning("Pi camera %d: still finishing a frame; it is released when the frame completes", self._num)
        self._cam = None
        self._mode = "closed"
        self._frames.clear()

    def set_framerate(self, fps: float) -> None:
        if not fps or fps <= 0 or not math.isfinite(fps):
            raise ValueError(f"frame rate must be positive, not {fps!r}")
        with self._cond:
            self._fps = float(fps)
            if self._wanted[0] == "day":
                us = self._day_frame_us()
                self._pending_controls["FrameDurationLimits"] = (us, us)
            else:
                # At night the shortest frame duration follows the day frame rate: send the night controls again.
                self._pending_controls.update(self._controls_for(self._wanted))

    def apply_night(self, night: bool, mode: str, exposure_us: int, gain: float) -> dict[str, Any]:
        if night and mode not in ("still", "slow_video"):
            raise ValueError(f"night mode must be still or slow_video, not {mode!r}")
        if not night:
            with self._cond:
                self._wanted = ("day",)
                self._reconfigure = True
            log.info("Pi camera %d: switching to day (video, AE/AWB on, %.3g fps)", self._num, self._fps)
            return {
                "night": False,
                "applied": True,
                "mode": "day",
                "frame_interval_s": round(1.0 / self._fps, 6),
                "note": "auto-exposure and auto white balance on",
            }
        exp, g, notes = self._clamp(int(exposure_us), float(gain))
        with self._cond:
            self._wanted = (mode, exp, g)
            self._reconfigure = True
        frame_lo, frame_hi = night_frame_limits(mode, exp, self._day_frame_us(), self._limit("FrameDurationLimits", (None, None))[1])
        if mode == "still":
            note = "AE/AWB off, fixed exposure and gain, frame duration widened to the exposure"
        else:
            note = "AE on (Long mode) with frame durations up to the exposure"
        for n in notes:
            log.warning("Pi camera %d: %s", self._num, n)
        log.info("Pi camera %d: switching to night %s mode, exposure %d us, gain %g", self._num, mode, exp, g)
        return night_applied(
            mode,
            exp,
            g,
            requested=(exposure_us, gain),
            notes=notes,
            note=note,
            frame_duration_limits_us=[frame_lo, frame_hi],
            frame_interval_s=max(1.0 / self._fps, exp / 1e6) if mode == "still" else None,
            max_frame_interval_s=frame_hi / 1e6,
        )

    def _clamp(self, exposure_us: int, gain: float) -> tuple[int, float, list[str]]:
        return clamp_to_sensor(exposure_us, gain, self._limits, self._info.get("Model") or "sensor")

    def capture_full(self, timeout: float = 30.0) -> tuple[np.ndarray, dict[str, Any]]:
        """One still at the full sensor resolution, in the current exposure mode.

        Blocks for a camera reconfiguration (about a second, plus the exposure)
        and pauses the stream meanwhile: call it from a command or export
        thread, never from the capture loop. Raises SourceError on failure.
        """
        if not self._open:
            raise SourceError("Pi camera is not open")
        req = _FullCapture()
        with self._cond:
            self._full_requests.append(req)
        if not req.done.wait(timeout):
            raise SourceError(f"no full-resolution frame within {timeout:g} s")
        if req.result is None:
            raise SourceError(f"full-resolution capture failed: {req.error}")
        return req.result

    def controls(self) -> dict[str, Any]:
        return describe_controls(self._limits)

    def exposure(self) -> dict[str, Any]:
        with self._cond:
            out = dict(self._metadata)
        out["mode"] = self._mode
        return out

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "source": self.name,
            "camera_num": self._num,
            "model": self._info.get("Model"),
            "id": self._info.get("Id"),
            "mode": self._mode,
            "framerate": self._fps,
        }
        if self._configured_size:
            d["width"], d["height"] = self._configured_size
        if self._properties.get("PixelArraySize"):
            d["sensor_resolution"] = self._properties["PixelArraySize"]
        exp = self._limits.get("ExposureTime")
        if exp:
            d["exposure_limits_us"] = jsonable(exp[:2])
        if self._sensor_modes:
            d["sensor_modes"] = self._sensor_modes
        d["ring_frames"] = self._lores_note
        return d

    def camera_jpeg(self) -> CameraJpeg:
        return self._jpeg
