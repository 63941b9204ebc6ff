"""A stand-in for the `picamera2` module, for exercising picamd's Pi camera code off the Pi.

It follows the real Picamera2 API (the parts picamd uses, with the same
names, signatures, defaults and failure modes) and models what the camera
does with what it is given:

* `Picamera2.global_camera_info()`, `Picamera2(camera_num)` (fails like the
  real one when there is no such camera or it is already in use),
  `camera_properties`, `sensor_resolution`, `sensor_modes` (which, like the
  real one, reconfigures the camera to measure each mode, so it fails while
  the camera runs and leaves the last probe configuration behind),
  `camera_controls` as `name -> (min, max, default)` with the limits of the
  sensor (IMX219 by default, `ExposureTime` (75, 11766829, None)).
* `create_preview/still/video_configuration` build the same dicts as the real
  ones (use_case, transform, colour_space, buffer_count, queue, main, lores,
  raw, controls, display, encode) with the same default controls merged in
  (video: FrameDurationLimits (33333, 33333); still: (100, 1e9)).
* `configure` refuses a running camera and bad streams; `start`, `stop`,
  `close`; `set_controls` refuses controls the camera does not advertise.
* Frames come from a sensor thread at the frame duration the controls give
  (optionally sped up by `time_scale` for tests), each one a request that
  must be released; unreleased requests hold buffers and, as on the real
  camera, starve the sensor once all `buffer_count` buffers are held.
  Jobs (`capture_request`, `capture_array`, `capture_metadata`, `stop` while
  a capture waits) run in order as frames arrive, `wait=False` returns a job
  for `wait(job, timeout)`, and `cancel_all_and_flush()` cancels them.
* Exposure: with `AeEnable` the stand-in's AE picks exposure and gain within
  the exposure-mode limit (Normal 66.7 ms, Long 120 ms as in the stock IMX219
  tuning) and the frame duration limit; with `AeEnable` False the
  `ExposureTime` is used but capped by the sensor maximum and by the
  `FrameDurationLimits` maximum (the silent ~83 ms / 33 ms cap users meet),
  and `AnalogueGain` is clamped to the sensor range. As in the Pi's IPA,
  a fixed ExposureTime or AnalogueGain stays in force (also across
  reconfigurations) until it is set to 0, which hands it back to AE. Pixel values follow
  `light * exposure * gain`, and the image honours the hflip/vflip transform.
  Metadata carries ExposureTime, AnalogueGain, DigitalGain, FrameDuration,
  Lux, ColourTemperature, ColourGains, AeLocked and SensorTimestamp.

Test controls that are not API: `module.cameras[n].light` (scene light,
1.0 = daylight), `.stalled` (the sensor stops delivering, as with a loose
ribbon cable), `module.time_scale`, and `module.log` (every configure,
set_controls, start, stop and close, in order).

One deliberate difference: capturing before `start()` raises RuntimeError
here; the real camera would wait forever for a frame that never comes.
"""
from __future__ import annotations

import copy
import threading
import time
import types
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


# --- the parts of libcamera the picamera2 package exposes (picamera2.libcamera) ---------------------

class Transform:
    def __init__(self, hflip: int = 0, vflip: int = 0, transpose: int = 0) -> None:
        self.hflip, self.vflip, self.transpose = int(bool(hflip)), int(bool(vflip)), int(bool(transpose))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transform) and (self.hflip, self.vflip, self.transpose) == (other.hflip, other.vflip, other.transpose)

    def __repr__(self) -> str:
        return f"<libcamera.Transform '{'h' if self.hflip else ''}{'v' if self.vflip else ''}{'t' if self.transpose else ''}' >"


class ColorSpace:
    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ColorSpace) and other.name == self.name

    def __repr__(self) -> str:
        return f"<libcamera.ColorSpace '{self.name}'>"

    @staticmethod
    def Sycc() -> "ColorSpace":
        return ColorSpace("sYCC")

    @staticmethod
    def Smpte170m() -> "ColorSpace":
        return ColorSpace("SMPTE170M")

    @staticmethod
    def Rec709() -> "ColorSpace":
        return ColorSpace("Rec709")

    @staticmethod
    def Raw() -> "ColorSpace":
        return ColorSpace("RAW")


_AeExposureModeEnum = types.SimpleNamespace(Normal=0, Short=1, Long=2, Custom=3)
_NoiseReductionModeEnum = types.SimpleNamespace(Off=0, Fast=1, HighQuality=2, Minimal=3, ZSL=4)
libcamera = types.SimpleNamespace(
    Transform=Transform,
    ColorSpace=ColorSpace,
    controls=types.SimpleNamespace(AeExposureModeEnum=_AeExposureModeEnum,
                                   draft=types.SimpleNamespace(NoiseReductionModeEnum=_NoiseReductionModeEnum)),
)


# --- sensors -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SensorSpec:
    model: str
    camera_id: str
    resolution: tuple[int, int]
    raw_format: str
    bit_depth: int
    # (size, fps, crop) per mode, as Picamera2.sensor_modes reports them
    modes: tuple[tuple[tuple[int, int], float, tuple[int, int, int, int]], ...]
    exposure_limits: tuple[int, int]
    gain_limits: tuple[float, float]
    frame_duration_max: int
    unit_cell: tuple[int, int]


IMX219 = SensorSpec(
    model="imx219", camera_id="/base/soc/i2c0mux/i2c@1/imx219@10", resolution=(3280, 2464),
    raw_format="SRGGB10_CSI2P", bit_depth=10,
    modes=(((640, 480), 103.33, (1000, 752, 1280, 960)),
           ((1640, 1232), 41.85, (0, 0, 3280, 2464)),
           ((1920, 1080), 47.57, (680, 692, 1920, 1080)),
           ((3280, 2464), 21.19, (0, 0, 3280, 2464))),
    exposure_limits=(75, 11766829), gain_limits=(1.0, 10.666666984558105),
    frame_duration_max=11767556, unit_cell=(1120, 1120),
)
OV5647 = SensorSpec(
    model="ov5647", camera_id="/base/soc/i2c0mux/i2c@1/ov5647@36", resolution=(2592, 1944),
    raw_format="SGBRG10_CSI2P", bit_depth=10,
    modes=(((640, 480), 58.92, (16, 0, 2560, 1920)),
           ((1296, 972), 46.34, (0, 0, 2592, 1944)),
           ((1920, 1080), 32.81, (348, 434, 1928, 1080)),
           ((2592, 1944), 15.63, (0, 0, 2592, 1944))),
    exposure_limits=(130, 969249), gain_limits=(1.0, 63.9375),
    frame_duration_max=1000000, unit_cell=(1400, 1400),
)
IMX708 = SensorSpec(
    model="imx708", camera_id="/base/soc/i2c0mux/i2c@1/imx708@1a", resolution=(4608, 2592),
    raw_format="SRGGB10_CSI2P", bit_depth=10,
    modes=(((1536, 864), 120.13, (768, 432, 3072, 1728)),
           ((2304, 1296), 56.03, (0, 0, 4608, 2592)),
           ((4608, 2592), 14.35, (0, 0, 4608, 2592))),
    exposure_limits=(26, 112015443), gain_limits=(1.1228070259094238, 16.0),
    frame_duration_max=112016470, unit_cell=(1400, 1400),
)
SENSORS = {s.model: s for s in (IMX219, OV5647, IMX708)}

#: AE shutter limits of the stock tuning's exposure modes (microseconds).
AE_MODE_SHUTTER_LIMIT = {_AeExposureModeEnum.Normal: 66666, _AeExposureModeEnum.Short: 33333,
                         _AeExposureModeEnum.Long: 120000, _AeExposureModeEnum.Custom: 66666}
AE_MAX_GAIN = 8.0
AE_TARGET = 110.0  # mean grey the stand-in's AE aims for
FULL_LIGHT_PRODUCT = 10000.0  # exposure_us * gain that renders daylight (light 1.0) at the pattern's own levels
LINE_TIME_MARGIN_US = 200  # exposure is at most the frame duration minus this (vertical blanking)


@dataclass
class CameraSlot:
    """One attached camera: what the hardware is and how it is doing (test controls)."""

    spec: SensorSpec
    num: int
    light: float = 1.0
    stalled: bool = False
    in_use: bool = False
    location: int = 2
    rotation: int = 180


class FakeJob:
    """Like picamera2.job.Job: functions run in order as frames arrive; the result is a Future."""

    def __init__(self, functions: list[Callable[[], tuple[bool, Any]]]) -> None:
        self._functions = functions
        self._future: Future = Future()
        self._future.set_running_or_notify_cancel()

    def execute(self) -> bool:
        try:
            while self._functions:
                done, result = self._functions[0]()
                if not done:
                    return False
                self._functions.pop(0)
            self._future.set_result(result)
        except Exception as exc:
            self._functions = []
            self._future.set_exception(exc)
        return True

    def get_result(self, timeout: float | None = None) -> Any:
        return self._future.result(timeout=timeout)

    def cancel(self) -> None:
        if not self._future.done():
            self._future.set_exception(CancelledError())


class FakeRequest:
    """Like picamera2.request.CompletedRequest."""

    def __init__(self, cam: "FakePicamera2Base", config: dict, pixels: np.ndarray, metadata: dict) -> None:
        self._cam = cam
        self.config = config
        self._pixels = pixels
        self._metadata = metadata
        self.ref_count = 1
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            if self.ref_count == 0:
                raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
            self.ref_count += 1

    def release(self) -> None:
        with self._lock:
            self.ref_count -= 1
            if self.ref_count < 0:
                raise RuntimeError("CompletedRequest: lock now has negative ref_count")
            if self.ref_count == 0:
                self._cam._buffer_returned()

    def _check(self, name: str) -> None:
        if self.ref_count <= 0:
            raise RuntimeError("request used after release")
        if name != "main":
            raise RuntimeError(f"Stream {name!r} is not defined")

    def make_array(self, name: str = "main") -> np.ndarray:
        self._check(name)
        return self._pixels.copy()

    def make_buffer(self, name: str = "main") -> np.ndarray:
        self._check(name)
        return self._pixels.reshape(-1).copy()

    def get_metadata(self) -> dict:
        if self.ref_count <= 0:
            raise RuntimeError("request used after release")
        return dict(self._metadata)


_RGB_FORMATS = {"RGB888": 3, "BGR888": 3, "XBGR8888": 4, "XRGB8888": 4}
_YUV_FORMATS = {"YUV420", "YVU420"}


class FakePicamera2Base:
    """The Picamera2 class of one stand-in module (the subclass made by `make_module` binds the module)."""

    _module: "FakePicamera2Module"

    @classmethod
    def global_camera_info(cls) -> list[dict]:
        return [{"Model": c.spec.model, "Location": c.location, "Rotation": c.rotation, "Id": c.spec.camera_id, "Num": c.num}
                for c in cls._module.cameras]

    def __init__(self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None) -> None:
        mod = self._module
        self.is_open = False
        self.started = False
        self.camera_config: dict | None = None
        self._slot: CameraSlot | None = None
        with mod.lock:
            if not (0 <= camera_num < len(mod.cameras)) or mod.cameras[camera_num].in_use:
                # The real class turns IndexError / "Device or resource busy" into this.
                raise RuntimeError("Camera __init__ sequence did not complete.")
            self._slot = mod.cameras[camera_num]
            self._slot.in_use = True
        self.camera_idx = camera_num
        spec = self._slot.spec
        self.sensor_resolution = spec.resolution
        self.sensor_format = spec.raw_format
        self.is_open = True
        self._lock = threading.RLock()
        self._jobs: list[FakeJob] = []
        self._completed: list[FakeRequest] = []
        self._buffers_free = 0
        self._pending_controls: dict[str, Any] = {}
        self._state = {"AeEnable": True, "AwbEnable": True, "AeExposureMode": _AeExposureModeEnum.Normal,
                       "ExposureTime": None, "AnalogueGain": None, "FrameDurationLimits": (33333, 33333),
                       "ColourGains": None}
        self._last_exposure = (10000, 1.0)
        self._colour_temperature = 4800
        self._sensor_thread: threading.Thread | None = None
        self._sensor_stop = threading.Event()
        self._sensor_modes: list[dict] | None = None
        self._configured_mode = spec.modes[-1]
        mod.instances.append(self)

    # -- what the camera is ---------------------------------------------------------------------

    @property
    def camera_properties(self) -> dict:
        if not self.is_open:
            return {}
        s = self._slot.spec
        return {"Model": s.model, "UnitCellSize": s.unit_cell, "Location": self._slot.location,
                "Rotation": self._slot.rotation, "PixelArraySize": s.resolution,
                "PixelArrayActiveAreas": [(8, 8, s.resolution[0], s.resolution[1])],
                "ScalerCropMaximum": self._configured_mode[2], "ColorFilterArrangement": 0, "SystemDevices": (20749, 20737, 20738, 20739)}

    def _fd_min(self) -> int:
        return int(round(1e6 / self._configured_mode[1]))

    @property
    def camera_controls(self) -> dict:
        s = self._slot.spec
        return {
            "AeEnable": (False, True, None),
            "AwbEnable": (False, True, None),
            "AeExposureMode": (0, 3, 0),
            "AeMeteringMode": (0, 3, 0),
            "AeConstraintMode": (0, 3, 0),
            "AwbMode": (0, 7, 0),
            "ExposureValue": (-8.0, 8.0, 0.0),
            "ExposureTime": (s.exposure_limits[0], s.exposure_limits[1], None),
            "AnalogueGain": (s.gain_limits[0], s.gain_limits[1], None),
            "FrameDurationLimits": (self._fd_min(), s.frame_duration_max, None),
            "ColourGains": (0.0, 32.0, None),
            "Brightness": (-1.0, 1.0, 0.0),
            "Contrast": (0.0, 32.0, 1.0),
            "Saturation": (0.0, 32.0, 1.0),
            "Sharpness": (0.0, 16.0, 1.0),
            "NoiseReductionMode": (0, 4, 0),
            "ScalerCrop": ((0, 0, 64, 64), (0, 0, s.resolution[0], s.resolution[1]), self._configured_mode[2]),
        }

    @property
    def sensor_modes(self) -> list[dict]:
        if self._sensor_modes is not None:
            return self._sensor_modes
        s = self._slot.spec
        modes = []
        for size, fps, crop in s.modes:
            # The real property configures the camera in each mode to measure it.
            self.configure(self.create_preview_configuration(raw={"format": s.raw_format, "size": size}))
            modes.append({"format": s.raw_format, "unpacked": s.raw_format.replace("_CSI2P", ""), "bit_depth": s.bit_depth,
                          "size": size, "fps": fps, "crop_limits": crop,
                          "exposure_limits": (s.exposure_limits[0], s.exposure_limits[1], None)})
        self._sensor_modes = modes
        return modes

    # -- configurations ---------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self.is_open:
            raise RuntimeError("Camera not opened")

    @staticmethod
    def _stream(defaults: dict, updates: dict | None, ignore: tuple = ()) -> dict | None:
        if updates is None:
            return None
        out = dict(defaults)
        for key, value in updates.items():
            if key in ("format", "size"):
                out[key] = value
            elif key not in ignore:
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are ('format', 'size')")
        if out.get("size") is not None:
            w, h = out["size"]
            out["size"] = (w - w % 2, h - h % 2)  # align_stream(optimal=False)
        return out

    def _make_config(self, use_case: str, main: dict, lores: dict | None, raw: dict | None, transform: Transform | None,
                     colour_space: ColorSpace | None, buffer_count: int, controls: dict, display: str | None,
                     encode: str | None, queue: bool, main_default: dict, default_controls: dict) -> dict:
        self._require_open()
        main_s = self._stream(main_default, main)
        lores_s = self._stream({"format": "YUV420", "size": main_s["size"]}, lores)
        raw_s = self._stream({"format": self.sensor_format, "size": main_s["size"]}, raw,
                             ("bit_depth", "crop_limits", "exposure_limits", "fps", "unpacked"))
        return {"use_case": use_case, "transform": transform if transform is not None else Transform(),
                "colour_space": colour_space, "buffer_count": buffer_count, "queue": queue,
                "main": main_s, "lores": lores_s, "raw": raw_s,
                "controls": {**default_controls, **controls}, "display": display, "encode": encode}

    def create_preview_configuration(self, main={}, lores=None, raw={}, transform=None, colour_space=None,
                                     buffer_count=4, controls={}, display="main", encode="main", queue=True) -> dict:
        return self._make_config("preview", main, lores, raw, transform, colour_space or ColorSpace.Sycc(), buffer_count,
                                 controls, display, encode, queue, {"format": "XBGR8888", "size": (640, 480)},
                                 {"NoiseReductionMode": _NoiseReductionModeEnum.Minimal, "FrameDurationLimits": (100, 83333)})

    def create_still_configuration(self, main={}, lores=None, raw={}, transform=None, colour_space=None,
                                   buffer_count=1, controls={}, display=None, encode=None, queue=True) -> dict:
        return self._make_config("still", main, lores, raw, transform, colour_space or ColorSpace.Sycc(), buffer_count,
                                 controls, display, encode, queue, {"format": "BGR888", "size": self.sensor_resolution},
                                 {"NoiseReductionMode": _NoiseReductionModeEnum.HighQuality, "FrameDurationLimits": (100, 1000000 * 1000)})

    def create_video_configuration(self, main={}, lores=None, raw={}, transform=None, colour_space=None,
                                   buffer_count=6, controls={}, display="main", encode="main", queue=True) -> dict:
        size = self._stream({"format": "XBGR8888", "size": (1280, 720)}, main)["size"]
        cs = colour_space or (ColorSpace.Smpte170m() if size[0] < 1280 or size[1] < 720 else ColorSpace.Rec709())
        return self._make_config("video", main, lores, raw, transform, cs, buffer_count, controls, display, encode, queue,
                                 {"format": "XBGR8888", "size": (1280, 720)},
                                 {"NoiseReductionMode": _NoiseReductionModeEnum.Fast, "FrameDurationLimits": (33333, 33333)})

    def configure(self, camera_config: dict | None = None) -> None:
        self._require_open()
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if camera_config is None:
            camera_config = self.create_preview_configuration()
        if not isinstance(camera_config, dict):
            raise RuntimeError("the stand-in only takes configuration dicts")
        for name in ("colour_space", "transform", "main", "lores", "raw"):
            if name not in camera_config:
                raise RuntimeError(f"{name!r} key expected in camera configuration")
        if not isinstance(camera_config["transform"], Transform):
            raise RuntimeError("Transform has incorrect type")
        main = camera_config["main"]
        if not isinstance(main, dict) or "format" not in main or "size" not in main:
            raise RuntimeError("main stream should be a dictionary with format and size")
        if main["format"] not in _RGB_FORMATS and main["format"] not in _YUV_FORMATS:
            raise RuntimeError("Bad format " + str(main["format"]) + " in stream main")
        size = main["size"]
        if type(size) is not tuple or len(size) != 2:
            raise RuntimeError("size in main stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")
        if camera_config["transform"].transpose:
            raise RuntimeError("Invalid camera configuration: transpose is not supported by this sensor")
        config = dict(camera_config)
        config["main"] = dict(main, stride=size[0] * _RGB_FORMATS.get(main["format"], 1), framesize=0)
        # libcamera picks the smallest sensor mode that covers the output size.
        spec = self._slot.spec
        raw = camera_config.get("raw") or {}
        wanted = raw.get("size") or size
        fitting = [m for m in spec.modes if m[0][0] >= wanted[0] and m[0][1] >= wanted[1]]
        self._configured_mode = fitting[0] if fitting else spec.modes[-1]
        self.camera_config = config
        self._buffer_count = int(config.get("buffer_count") or 1)
        self._pending_controls = {}
        self._state["FrameDurationLimits"] = (self._fd_min(), self._fd_min())
        self._apply_controls(dict(config.get("controls") or {}), record=False)
        self._module.log.append(("configure", copy.deepcopy(config)))

    def camera_configuration(self) -> dict | None:
        return self.camera_config

    # -- controls ---------------------------------------------------------------------------

    def set_controls(self, controls: dict) -> None:
        self._require_open()
        with self._lock:
            self._apply_controls(dict(controls), record=True)

    def _apply_controls(self, controls: dict, record: bool) -> None:
        advertised = self.camera_controls
        for key in controls:
            if key not in advertised:
                raise RuntimeError(f"Control {key} is not advertised by libcamera")
        if record:
            self._module.log.append(("set_controls", dict(controls)))
        for key, value in controls.items():
            self._state[key] = value

    def _exposure_for_frame(self) -> tuple[int, float, int]:
        """Exposure, gain and frame duration the sensor uses for the next frame under the current controls."""
        s = self._slot.spec
        lo, hi = (int(v) for v in self._state["FrameDurationLimits"])
        fd_min_mode = self._fd_min()
        lo, hi = max(lo, fd_min_mode), max(min(hi, s.frame_duration_max), fd_min_mode)
        lo = min(lo, hi)
        shutter_cap = min(s.exposure_limits[1], hi - LINE_TIME_MARGIN_US)
        gain_lo, gain_hi = s.gain_limits
        if self._state["AeEnable"]:
            mode_cap = AE_MODE_SHUTTER_LIMIT.get(int(self._state.get("AeExposureMode") or 0), 66666)
            needed = AE_TARGET / max(1e-9, _PATTERN_MEAN * max(self._slot.light, 1e-9)) * FULL_LIGHT_PRODUCT
            exposure = int(max(s.exposure_limits[0], min(needed, shutter_cap, mode_cap)))
            gain = float(min(AE_MAX_GAIN, gain_hi, max(gain_lo, needed / exposure)))
            if self._state.get("ExposureTime"):
                exposure = int(max(s.exposure_limits[0], min(int(self._state["ExposureTime"]), shutter_cap)))
            if self._state.get("AnalogueGain"):
                gain = float(min(gain_hi, max(gain_lo, float(self._state["AnalogueGain"]))))
        else:
            exp_req = self._state.get("ExposureTime") or self._last_exposure[0]
            exposure = int(max(s.exposure_limits[0], min(int(exp_req), shutter_cap)))
            gain_req = self._state.get("AnalogueGain") or self._last_exposure[1]
            gain = float(min(gain_hi, max(gain_lo, float(gain_req))))
        frame_duration = int(min(hi, max(lo, exposure + LINE_TIME_MARGIN_US)))
        return exposure, gain, frame_duration

    # -- running ----------------------------------------------------------------------------

    def start(self, config: dict | None = None, show_preview: bool | None = False) -> None:
        self._require_open()
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        with self._lock:
            if self.started:
                return
            self.started = True
            self._buffers_free = self._buffer_count
            self._completed = []
            self._sensor_stop = threading.Event()
            self._sensor_thread = threading.Thread(target=self._sensor, args=(self._sensor_stop,), name="fake-libcamera", daemon=True)
            self._module.log.append(("start",))
        self._sensor_thread.start()

    def _sensor(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._lock:
                exposure, gain, frame_duration = self._exposure_for_frame()
            if stop.wait(frame_duration / 1e6 * self._module.time_scale):
                return
            with self._lock:
                if stop.is_set() or self._slot.stalled or self._buffers_free <= 0:
                    continue
                self._buffers_free -= 1
                self._last_exposure = (exposure, gain)
                if self._state["AwbEnable"]:
                    self._colour_temperature = 4800 if self._slot.light > 0.05 else 3200
                config = self.camera_config
                metadata = {
                    "SensorTimestamp": time.monotonic_ns(),
                    "ExposureTime": exposure,
                    "AnalogueGain": gain,
                    "DigitalGain": 1.0,
                    "FrameDuration": frame_duration,
                    "Lux": round(400.0 * self._slot.light * 1.0, 4),
                    "ColourTemperature": self._colour_temperature,
                    "ColourGains": tuple(self._state["ColourGains"] or (1.86, 1.52)),
                    "AeLocked": not self._state["AeEnable"],
                    "SensorTemperature": 38.0,
                }
                pixels = _render(config, self._slot.light * exposure * gain / FULL_LIGHT_PRODUCT)
                request = FakeRequest(self, config, pixels, metadata)
                self._completed.append(request)
                self._run_jobs()
                # Like the real event loop: keep at most one completed request unclaimed, recycle the rest.
                keep = 1 if (config.get("queue", True) and self._buffer_count > 1) else 0
                while len(self._completed) > keep:
                    self._completed.pop(0).release()

    def _buffer_returned(self) -> None:
        with self._lock:
            self._buffers_free += 1

    def _run_jobs(self) -> None:
        while self._jobs:
            if not self._jobs[0].execute():
                return
            self._jobs.pop(0)

    def _dispatch(self, functions: list[Callable[[], tuple[bool, Any]]], wait: Any) -> Any:
        with self._lock:
            job = FakeJob(functions)
            self._jobs.append(job)
            self._run_jobs()  # a completed request may already be waiting
        if wait is False:
            return job
        timeout = None if wait in (None, True) else float(wait)
        return job.get_result(timeout=timeout)

    def _take_request(self) -> tuple[bool, Any]:
        if not self._completed:
            return False, None
        return True, self._completed.pop(0)

    def _require_started(self) -> None:
        if not self.started:
            raise RuntimeError("Camera is not started")

    def capture_request(self, wait: Any = None, signal_function: Any = None, flush: Any = None) -> Any:
        self._require_started()
        return self._dispatch([self._take_request], wait)

    def capture_array(self, name: str = "main", wait: Any = None, signal_function: Any = None) -> Any:
        self._require_started()

        def take() -> tuple[bool, Any]:
            done, req = self._take_request()
            if not done:
                return False, None
            try:
                return True, req.make_array(name)
            finally:
                req.release()

        return self._dispatch([take], wait)

    def capture_metadata(self, wait: Any = None, signal_function: Any = None) -> Any:
        self._require_started()

        def take() -> tuple[bool, Any]:
            done, req = self._take_request()
            if not done:
                return False, None
            try:
                return True, req.get_metadata()
            finally:
                req.release()

        return self._dispatch([take], wait)

    def wait(self, job: FakeJob, timeout: float | None = None) -> Any:
        return job.get_result(timeout=timeout)

    def cancel_all_and_flush(self) -> None:
        with self._lock:
            for job in self._jobs:
                job.cancel()
            self._jobs = []

    def stop(self) -> None:
        if not self.started:
            return

        def stop_() -> tuple[bool, Any]:
            self._sensor_stop.set()
            self.started = False
            for req in self._completed:
                req.release()
            self._completed = []
            self._module.log.append(("stop",))
            return True, None

        # As with the real event loop, the stop waits behind jobs already queued (a capture waiting for a frame).
        job = FakeJob([stop_])
        with self._lock:
            self._jobs.append(job)
            if len(self._jobs) == 1:
                self._run_jobs()
        job.get_result()
        thread = self._sensor_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def close(self) -> None:
        if not self.is_open:
            return
        self.stop()
        with self._module.lock:
            self._slot.in_use = False
        self.is_open = False
        self.camera_config = None
        self._module.log.append(("close",))

    def __enter__(self) -> "FakePicamera2Base":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --- frames --------------------------------------------------------------------------------------

def _pattern(h: int, w: int) -> np.ndarray:
    """A test chart: left-to-right grey ramp, a coloured bar and a bright marker in the top-left corner."""
    ramp = np.linspace(30, 220, w, dtype=np.float32)[None, :, None]
    img = np.repeat(np.repeat(ramp, h, axis=0), 3, axis=2)
    img[h // 2: h // 2 + max(1, h // 10), :, :] = (200.0, 80.0, 40.0)
    img[: max(2, h // 8), : max(2, w // 8), :] = 250.0
    return img


_PATTERN_MEAN = float(_pattern(48, 64).mean())
_pattern_cache: dict[tuple[int, int], np.ndarray] = {}
_pattern_lock = threading.Lock()


def _render(config: dict, brightness: float) -> np.ndarray:
    main = config["main"]
    w, h = main["size"]
    with _pattern_lock:
        base = _pattern_cache.get((h, w))
        if base is None:
            base = _pattern_cache[(h, w)] = _pattern(h, w)
    img = np.clip(base * brightness, 0, 255).astype(np.uint8)
    t = config["transform"]
    if t.hflip:
        img = img[:, ::-1]
    if t.vflip:
        img = img[::-1]
    fmt = main["format"]
    if fmt == "BGR888":  # the other byte order: RGB in memory
        img = img[..., ::-1]
    if fmt in ("XBGR8888", "XRGB8888"):
        img = np.concatenate([img, np.full((h, w, 1), 255, np.uint8)], axis=2)
    if fmt in _YUV_FORMATS:
        grey = img.mean(axis=2).astype(np.uint8)
        img = np.concatenate([grey, np.full((h // 2, w), 128, np.uint8)], axis=0)
    return np.ascontiguousarray(img)


# --- the module object -----------------------------------------------------------------------------

@dataclass
class FakePicamera2Module:
    """What `import picamera2` gives on a Pi, for the code under test: `Picamera2` and `libcamera`."""

    cameras: list[CameraSlot]
    time_scale: float = 1.0
    log: list[tuple] = field(default_factory=list)
    instances: list[FakePicamera2Base] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    libcamera: Any = field(default_factory=lambda: libcamera)
    Picamera2: type = FakePicamera2Base

    def configurations(self, use_case: str | None = None) -> list[dict]:
        return [e[1] for e in self.log if e[0] == "configure" and (use_case is None or e[1]["use_case"] == use_case)]

    def controls_set(self) -> list[dict]:
        return [e[1] for e in self.log if e[0] == "set_controls"]


def make_module(sensors: tuple[str, ...] = ("imx219",), time_scale: float = 1.0) -> FakePicamera2Module:
    """A stand-in picamera2 module with these sensors attached (none: a Pi without a camera)."""
    mod = FakePicamera2Module(cameras=[CameraSlot(SENSORS[name], i) for i, name in enumerate(sensors)], time_scale=time_scale)
    mod.Picamera2 = type("Picamera2", (FakePicamera2Base,), {"_module": mod})
    return mod
