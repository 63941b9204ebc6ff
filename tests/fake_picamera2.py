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
  `light * exposure * gain`, plus a little sensor noise that differs from
  frame to frame (seeded by the frame's number, so runs repeat), and the
  image honours the hflip/vflip transform.
  Metadata carries ExposureTime, AnalogueGain, DigitalGain, FrameDuration,
  Lux, ColourTemperature, ColourGains, AeLocked and SensorTimestamp.

* The Pi it runs on (`make_module(pi_generation=...)`): 1 to 4 are the VC4
  Pis, whose ISP gives the `lores` stream in YUV 4:2:0 only and which have the
  VideoCore's hardware codec (`picamera2.encoders._hw_encoder_available`);
  5 is the Pi 5 (PiSP: lores in RGB too, no hardware codec, and
  `encoders.MJPEGEncoder` is the software FFmpeg one). `Picamera2.platform`
  is `platform.Platform.VC4` or `.PISP` as in picamera2.
* `configure` checks the streams as picamera2 does (`check_camera_config`):
  lores no larger than main ("lores stream dimensions may not exceed main
  stream") and, on VC4, YUV ("lores stream must be YUV"), raising
  RuntimeError. A YUV420 lores comes from `make_array("lores")` as one
  (height * 3/2, stride) plane with the stride aligned to 64 bytes, as
  libcamera lays it out; the image is the same scene, downscaled.
* Encoders: `start_encoder(encoder, output, pts, quality, name)` and
  `stop_encoder(encoders)` as in picamera2 (the output must be an
  `outputs.Output`, the stream must exist). `encoders.MJPEGEncoder(bitrate)`
  behaves like the V4L2 one: it takes each frame's request as the frame
  completes (holding its buffer), encodes on its own thread and calls
  `output.outputframe(jpeg, keyframe, timestamp)` with the time since its
  first frame in microseconds; its rate control picks the JPEG quality whose
  size is closest to bitrate / (width * height * framerate) bits per pixel.

Test controls that are not API: `module.cameras[n].light` (scene light,
1.0 = daylight), `.stalled` (the sensor stops delivering, as with a loose
ribbon cable), `module.time_scale`, `module.log` (every configure,
set_controls, start, stop, close, start_encoder and stop_encoder, in order)
and `module.encoded` (the JPEGs the codec made, with their sensor times).

One deliberate difference: capturing before `start()` raises RuntimeError
here; the real camera would wait forever for a frame that never comes.
"""

from __future__ import annotations

import collections
import copy
import enum
import queue
import threading
import time
import types
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any

import cv2
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
    def Sycc() -> ColorSpace:
        return ColorSpace("sYCC")

    @staticmethod
    def Smpte170m() -> ColorSpace:
        return ColorSpace("SMPTE170M")

    @staticmethod
    def Rec709() -> ColorSpace:
        return ColorSpace("Rec709")

    @staticmethod
    def Raw() -> ColorSpace:
        return ColorSpace("RAW")


_AeExposureModeEnum = types.SimpleNamespace(Normal=0, Short=1, Long=2, Custom=3)
_NoiseReductionModeEnum = types.SimpleNamespace(Off=0, Fast=1, HighQuality=2, Minimal=3, ZSL=4)
libcamera = types.SimpleNamespace(
    Transform=Transform,
    ColorSpace=ColorSpace,
    controls=types.SimpleNamespace(
        AeExposureModeEnum=_AeExposureModeEnum, draft=types.SimpleNamespace(NoiseReductionModeEnum=_NoiseReductionModeEnum)
    ),
)


# --- picamera2.platform, picamera2.outputs, picamera2.encoders ------------------------------------


class Platform(enum.Enum):
    VC4 = 0  # Pi 4 and older: ISP lores in YUV only, hardware codec at /dev/video11
    PISP = 1  # Pi 5


class Quality(enum.Enum):
    VERY_LOW = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    VERY_HIGH = 4


class Output:
    """Like picamera2.outputs.Output: encoders call outputframe with each encoded frame."""

    def __init__(self, pts: Any = None) -> None:
        self.recording = False
        self.ptsoutput = pts

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(self, frame: Any, keyframe: bool = True, timestamp: int | None = None, packet: Any = None, audio: bool = False) -> None:
        pass


class Encoder:
    """Like picamera2.encoders.Encoder: the stream's geometry is set by start_encoder, then start(quality)."""

    def __init__(self) -> None:
        self.width = self.height = self.stride = 0
        self.format: str | None = None
        self.name: str | None = None
        self._output: list[Output] = []
        self._running = False
        self.firsttimestamp: int | None = None
        self.framerate: float | None = None
        self._fake_cam: FakePicamera2Base | None = None  # set by start_encoder, for the module's records

    @property
    def running(self) -> bool:
        return self._running

    @property
    def output(self) -> Any:
        return self._output[0] if len(self._output) == 1 else self._output

    @output.setter
    def output(self, value: Any) -> None:
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, Output) for v in values):
            raise RuntimeError("Must pass Output")
        self._output = values

    def start(self, quality: Quality | None = None) -> None:
        if self._running:
            raise RuntimeError("Encoder already running")
        self._setup(quality)
        self._running = True
        self.firsttimestamp = None
        for out in self._output:
            out.start()
        self._start()

    def stop(self) -> None:
        if not self._running:
            raise RuntimeError("Encoder already stopped")
        self._running = False
        self._stop()
        for out in self._output:
            out.stop()

    def encode(self, stream: str, request: FakeRequest) -> None:
        self._encode(stream, request)

    def outputframe(self, frame: Any, keyframe: bool = True, timestamp: int | None = None) -> None:
        for out in self._output:
            out.outputframe(frame, keyframe, timestamp, None, False)

    def _timestamp(self, request: FakeRequest) -> int:
        ts = int(request.get_metadata()["SensorTimestamp"] / 1000)  # ns to us, through a float as picamera2 does
        if self.firsttimestamp is None:
            self.firsttimestamp = ts
        return ts - self.firsttimestamp

    def _setup(self, quality: Quality | None) -> None:
        pass

    def _start(self) -> None:
        pass

    def _stop(self) -> None:
        pass

    def _encode(self, stream: str, request: FakeRequest) -> None:
        raise NotImplementedError


#: What the V4L2 codec takes as input (picamera2's V4L2Encoder FORMAT_TABLE).
_V4L2_INPUT_FORMATS = ("RGB888", "BGR888", "XBGR8888", "XRGB8888", "YUV420")
#: JPEG qualities the stand-in codec's rate control chooses from.
_CODEC_QUALITIES = tuple(range(10, 100, 5))


class MJPEGEncoder(Encoder):
    """The VideoCore's MJPEG codec through V4L2: frames queue on submission, JPEGs come back on the codec's thread."""

    def __init__(self, bitrate: int | None = None) -> None:
        super().__init__()
        self.bitrate = bitrate
        self.jpeg_quality: int | None = None  # what the rate control settled on
        self.frames = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def _setup(self, quality: Quality | None) -> None:
        if quality is not None or self.bitrate is None:
            mbps = {Quality.VERY_LOW: 16, Quality.LOW: 20, Quality.MEDIUM: 30, Quality.HIGH: 40, Quality.VERY_HIGH: 50}
            q = Quality.MEDIUM if quality is None else quality
            self.bitrate = int(mbps[q] * 1e6 * self.width * self.height * (self.framerate or 30) / (1920 * 1080 * 30))

    def _start(self) -> None:
        if self.format not in _V4L2_INPUT_FORMATS:
            raise RuntimeError("Unrecognised format", self.format, "for V4L2")
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._poll, name="fake-v4l2-codec", daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(5)

    def _encode(self, stream: str, request: FakeRequest) -> None:
        request.acquire()  # the codec holds the camera buffer until the frame is encoded
        self._queue.put((stream, request, self._timestamp(request)))

    def _poll(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            stream, request, timestamp = item
            try:
                image = _to_bgr(request._pixels[stream], self.format or "", self.width, self.height)
            finally:
                request.release()
            jpeg = self._compress(image)
            self.frames += 1
            cam = self._fake_cam
            if cam is not None:
                cam._module.encoded.append((int(self.firsttimestamp or 0) + timestamp, jpeg))
            self.outputframe(jpeg, True, timestamp)

    def _compress(self, image: np.ndarray) -> bytes:
        if self.jpeg_quality is None:
            budget = (self.bitrate or 0) / max(1.0, self.framerate or 30.0) / 8.0  # bytes per frame
            sizes = {q: len(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])[1]) for q in _CODEC_QUALITIES}
            self.jpeg_quality = min(sizes, key=lambda q: abs(sizes[q] - budget))
        return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])[1].tobytes()


class LibavMjpegEncoder(MJPEGEncoder):
    """The Pi 5's `picamera2.encoders.MJPEGEncoder`: FFmpeg's encoder, on the CPU (the stand-in encodes the same way)."""

    def _start(self) -> None:
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._poll, name="fake-libav-mjpeg", daemon=True)
        self._thread.start()


def _to_bgr(pixels: np.ndarray, fmt: str, width: int, height: int) -> np.ndarray:
    """A stream's buffer as BGR (what the stand-in codec compresses)."""
    if fmt in _YUV_FORMATS:
        code = cv2.COLOR_YUV2BGR_I420 if fmt == "YUV420" else cv2.COLOR_YUV2BGR_YV12
        return np.ascontiguousarray(cv2.cvtColor(pixels, code)[:height, :width])
    if fmt == "BGR888":
        return np.ascontiguousarray(pixels[..., ::-1])
    return np.ascontiguousarray(pixels[..., :3])


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
    model="imx219",
    camera_id="/base/soc/i2c0mux/i2c@1/imx219@10",
    resolution=(3280, 2464),
    raw_format="SRGGB10_CSI2P",
    bit_depth=10,
    modes=(
        ((640, 480), 103.33, (1000, 752, 1280, 960)),
        ((1640, 1232), 41.85, (0, 0, 3280, 2464)),
        ((1920, 1080), 47.57, (680, 692, 1920, 1080)),
        ((3280, 2464), 21.19, (0, 0, 3280, 2464)),
    ),
    exposure_limits=(75, 11766829),
    gain_limits=(1.0, 10.666666984558105),
    frame_duration_max=11767556,
    unit_cell=(1120, 1120),
)
OV5647 = SensorSpec(
    model="ov5647",
    camera_id="/base/soc/i2c0mux/i2c@1/ov5647@36",
    resolution=(2592, 1944),
    raw_format="SGBRG10_CSI2P",
    bit_depth=10,
    modes=(
        ((640, 480), 58.92, (16, 0, 2560, 1920)),
        ((1296, 972), 46.34, (0, 0, 2592, 1944)),
        ((1920, 1080), 32.81, (348, 434, 1928, 1080)),
        ((2592, 1944), 15.63, (0, 0, 2592, 1944)),
    ),
    exposure_limits=(130, 969249),
    gain_limits=(1.0, 63.9375),
    frame_duration_max=1000000,
    unit_cell=(1400, 1400),
)
IMX708 = SensorSpec(
    model="imx708",
    camera_id="/base/soc/i2c0mux/i2c@1/imx708@1a",
    resolution=(4608, 2592),
    raw_format="SRGGB10_CSI2P",
    bit_depth=10,
    modes=(
        ((1536, 864), 120.13, (768, 432, 3072, 1728)),
        ((2304, 1296), 56.03, (0, 0, 4608, 2592)),
        ((4608, 2592), 14.35, (0, 0, 4608, 2592)),
    ),
    exposure_limits=(26, 112015443),
    gain_limits=(1.1228070259094238, 16.0),
    frame_duration_max=112016470,
    unit_cell=(1400, 1400),
)
SENSORS = {s.model: s for s in (IMX219, OV5647, IMX708)}

#: AE shutter limits of the stock tuning's exposure modes (microseconds).
AE_MODE_SHUTTER_LIMIT = {
    _AeExposureModeEnum.Normal: 66666,
    _AeExposureModeEnum.Short: 33333,
    _AeExposureModeEnum.Long: 120000,
    _AeExposureModeEnum.Custom: 66666,
}
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

    def __init__(self, cam: FakePicamera2Base, config: dict, pixels: dict[str, np.ndarray], metadata: dict) -> None:
        self._cam = cam
        self.config = config
        self._pixels = pixels  # stream name -> its buffer as make_array gives it
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
        if name not in self._pixels:
            raise RuntimeError(f"Stream {name!r} is not defined")

    def make_array(self, name: str = "main") -> np.ndarray:
        self._check(name)
        return self._pixels[name].copy()

    def make_buffer(self, name: str = "main") -> np.ndarray:
        self._check(name)
        return self._pixels[name].reshape(-1).copy()

    def get_metadata(self) -> dict:
        if self.ref_count <= 0:
            raise RuntimeError("request used after release")
        return dict(self._metadata)


_RGB_FORMATS = {"RGB888": 3, "BGR888": 3, "XBGR8888": 4, "XRGB8888": 4}
_YUV_FORMATS = {"YUV420", "YVU420"}


class FakePicamera2Base:
    """The Picamera2 class of one stand-in module (the subclass made by `make_module` binds the module)."""

    _module: FakePicamera2Module
    platform: Platform = Platform.VC4

    @classmethod
    def global_camera_info(cls) -> list[dict]:
        return [
            {"Model": c.spec.model, "Location": c.location, "Rotation": c.rotation, "Id": c.spec.camera_id, "Num": c.num}
            for c in cls._module.cameras
        ]

    def __init__(self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None) -> None:
        mod = self._module
        self.is_open = False
        self.started = False
        self.camera_config: dict | None = None
        with mod.lock:
            if not (0 <= camera_num < len(mod.cameras)) or mod.cameras[camera_num].in_use:
                # The real class turns IndexError / "Device or resource busy" into this.
                raise RuntimeError("Camera __init__ sequence did not complete.")
            self._slot: CameraSlot = mod.cameras[camera_num]
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
        self._state = {
            "AeEnable": True,
            "AwbEnable": True,
            "AeExposureMode": _AeExposureModeEnum.Normal,
            "ExposureTime": None,
            "AnalogueGain": None,
            "FrameDurationLimits": (33333, 33333),
            "ColourGains": None,
        }
        self._last_exposure = (10000, 1.0)
        self._colour_temperature = 4800
        self._sensor_thread: threading.Thread | None = None
        self._sensor_stop = threading.Event()
        self._sensor_modes: list[dict] | None = None
        self._configured_mode = spec.modes[-1]
        self._encoders: set[Encoder] = set()
        self._sequence = 0  # frames made, for the noise seed
        mod.instances.append(self)

    # -- what the camera is ---------------------------------------------------------------------

    @property
    def camera_properties(self) -> dict:
        if not self.is_open:
            return {}
        s = self._slot.spec
        return {
            "Model": s.model,
            "UnitCellSize": s.unit_cell,
            "Location": self._slot.location,
            "Rotation": self._slot.rotation,
            "PixelArraySize": s.resolution,
            "PixelArrayActiveAreas": [(8, 8, s.resolution[0], s.resolution[1])],
            "ScalerCropMaximum": self._configured_mode[2],
            "ColorFilterArrangement": 0,
            "SystemDevices": (20749, 20737, 20738, 20739),
        }

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
            modes.append(
                {
                    "format": s.raw_format,
                    "unpacked": s.raw_format.replace("_CSI2P", ""),
                    "bit_depth": s.bit_depth,
                    "size": size,
                    "fps": fps,
                    "crop_limits": crop,
                    "exposure_limits": (s.exposure_limits[0], s.exposure_limits[1], None),
                }
            )
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

    def _make_config(
        self,
        use_case: str,
        main: dict,
        lores: dict | None,
        raw: dict | None,
        transform: Transform | None,
        colour_space: ColorSpace | None,
        buffer_count: int,
        controls: dict,
        display: str | None,
        encode: str | None,
        queue: bool,
        main_default: dict,
        default_controls: dict,
    ) -> dict:
        self._require_open()
        main_s = self._stream(main_default, main)
        assert main_s is not None, "the main stream is always configured"
        lores_s = self._stream({"format": "YUV420", "size": main_s["size"]}, lores)
        raw_s = self._stream(
            {"format": self.sensor_format, "size": main_s["size"]}, raw, ("bit_depth", "crop_limits", "exposure_limits", "fps", "unpacked")
        )
        return {
            "use_case": use_case,
            "transform": transform if transform is not None else Transform(),
            "colour_space": colour_space,
            "buffer_count": buffer_count,
            "queue": queue,
            "main": main_s,
            "lores": lores_s,
            "raw": raw_s,
            "controls": {**default_controls, **controls},
            "display": display,
            "encode": encode,
        }

    # The signatures are picamera2's, dict defaults included; they are only read, never changed.
    def create_preview_configuration(
        self,
        main={},
        lores=None,
        raw={},
        transform=None,
        colour_space=None,
        buffer_count=4,
        controls={},
        display="main",
        encode="main",
        queue=True,
    ) -> dict:  # noqa: B006
        return self._make_config(
            "preview",
            main,
            lores,
            raw,
            transform,
            colour_space or ColorSpace.Sycc(),
            buffer_count,
            controls,
            display,
            encode,
            queue,
            {"format": "XBGR8888", "size": (640, 480)},
            {"NoiseReductionMode": _NoiseReductionModeEnum.Minimal, "FrameDurationLimits": (100, 83333)},
        )

    def create_still_configuration(
        self,
        main={},
        lores=None,
        raw={},
        transform=None,
        colour_space=None,
        buffer_count=1,
        controls={},
        display=None,
        encode=None,
        queue=True,
    ) -> dict:  # noqa: B006
        return self._make_config(
            "still",
            main,
            lores,
            raw,
            transform,
            colour_space or ColorSpace.Sycc(),
            buffer_count,
            controls,
            display,
            encode,
            queue,
            {"format": "BGR888", "size": self.sensor_resolution},
            {"NoiseReductionMode": _NoiseReductionModeEnum.HighQuality, "FrameDurationLimits": (100, 1000000 * 1000)},
        )

    def create_video_configuration(
        self,
        main={},
        lores=None,
        raw={},
        transform=None,
        colour_space=None,
        buffer_count=6,
        controls={},
        display="main",
        encode="main",
        queue=True,
    ) -> dict:  # noqa: B006
        main_s = self._stream({"format": "XBGR8888", "size": (1280, 720)}, main)
        assert main_s is not None, "the main stream is always configured"
        size = main_s["size"]
        cs = colour_space or (ColorSpace.Smpte170m() if size[0] < 1280 or size[1] < 720 else ColorSpace.Rec709())
        return self._make_config(
            "video",
            main,
            lores,
            raw,
            transform,
            cs,
            buffer_count,
            controls,
            display,
            encode,
            queue,
            {"format": "XBGR8888", "size": (1280, 720)},
            {"NoiseReductionMode": _NoiseReductionModeEnum.Fast, "FrameDurationLimits": (33333, 33333)},
        )

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
        _check_stream(main, "main")
        size = main["size"]
        lores = camera_config["lores"]
        if lores is not None:
            # picamera2's check_camera_config, where the Pi's limits show.
            _check_stream(lores, "lores")
            if lores["size"][0] > size[0] or lores["size"][1] > size[1]:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if self.platform == Platform.VC4 and lores["format"] not in _YUV_FORMATS:
                raise RuntimeError("lores stream must be YUV")
        if camera_config["transform"].transpose:
            raise RuntimeError("Invalid camera configuration: transpose is not supported by this sensor")
        config = dict(camera_config)
        config["main"] = _with_layout(main)
        if lores is not None:
            config["lores"] = _with_layout(lores)
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
                assert config is not None, "a started camera is configured"
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
                self._sequence += 1
                pixels = _render(config, self._slot.light * exposure * gain / FULL_LIGHT_PRODUCT, self._sequence)
                request = FakeRequest(self, config, pixels, metadata)
                # As picamera2's event loop: running encoders get the request before anyone captures it.
                for encoder in list(self._encoders):
                    if encoder.running and encoder.name in pixels:
                        encoder.encode(encoder.name, request)
                self._completed.append(request)
                self._run_jobs()
                # Like the real event loop: keep at most one completed request unclaimed, recycle the rest.
                keep = 1 if (config.get("queue", True) and self._buffer_count > 1) else 0
                while len(self._completed) > keep:
                    self._completed.pop(0).release()

    def start_encoder(
        self, encoder: Encoder | None = None, output: Any = None, pts: Any = None, quality: Quality | None = None, name: str | None = None
    ) -> None:
        self._require_open()
        if encoder is None:
            raise RuntimeError("No encoder specified")
        if output is not None:
            encoder.output = output
        streams = self.camera_configuration() or {}
        if name is None:
            name = streams.get("encode") or "main"
        if streams.get(name) is None:
            raise RuntimeError(f"Encode stream {name} was not defined")
        encoder.name = name
        encoder.width, encoder.height = streams[name]["size"]
        encoder.format = streams[name]["format"]
        encoder.stride = streams[name]["stride"]
        if encoder.framerate is None:  # picamera2 gives encoders a nominal rate of at most 30 fps
            encoder.framerate = 1e6 / max(self.camera_controls["FrameDurationLimits"][0], 33333)
        encoder._fake_cam = self
        encoder.start(quality=quality)
        with self._lock:
            self._encoders.add(encoder)
        self._module.log.append(
            (
                "start_encoder",
                {
                    "encoder": type(encoder).__name__,
                    "stream": name,
                    "size": (encoder.width, encoder.height),
                    "format": encoder.format,
                    "bitrate": getattr(encoder, "bitrate", None),
                    "quality": quality,
                },
            )
        )

    def stop_encoder(self, encoders: Any = None) -> None:
        with self._lock:
            if encoders is None:
                chosen = list(self._encoders)
            elif isinstance(encoders, Encoder):
                chosen = [encoders]
            else:
                chosen = list(encoders)
        for encoder in chosen:
            encoder.stop()
            with self._lock:
                self._encoders.discard(encoder)
            self._module.log.append(("stop_encoder", {"encoder": type(encoder).__name__, "frames": getattr(encoder, "frames", None)}))

    @property
    def encoders(self) -> set[Encoder]:
        return self._encoders

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

    def __enter__(self) -> FakePicamera2Base:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --- frames --------------------------------------------------------------------------------------


def _pattern(h: int, w: int) -> np.ndarray:
    """A test chart: left-to-right grey ramp, a coloured bar and a bright marker in the top-left corner."""
    ramp = np.linspace(30, 220, w, dtype=np.float32)[None, :, None]
    img = np.repeat(np.repeat(ramp, h, axis=0), 3, axis=2)
    img[h // 2 : h // 2 + max(1, h // 10), :, :] = (200.0, 80.0, 40.0)
    img[: max(2, h // 8), : max(2, w // 8), :] = 250.0
    return img


_PATTERN_MEAN = float(_pattern(48, 64).mean())
_pattern_cache: dict[tuple[int, int], np.ndarray] = {}
_pattern_lock = threading.Lock()


#: Standard deviation of the stand-in's sensor noise, in grey levels.
NOISE_SIGMA = 1.0


def _render(config: dict, brightness: float, sequence: int = 0) -> dict[str, np.ndarray]:
    """Every configured stream of one frame: the same scene, each at its own size and in its own format."""
    rng = np.random.default_rng(sequence)
    out = {"main": _render_stream(config["main"], config["transform"], brightness, rng)}
    if config.get("lores") is not None:
        out["lores"] = _render_stream(config["lores"], config["transform"], brightness, rng)
    return out


def _render_stream(stream: dict, t: Transform, brightness: float, rng: np.random.Generator) -> np.ndarray:
    w, h = stream["size"]
    with _pattern_lock:
        base = _pattern_cache.get((h, w))
        if base is None:
            base = _pattern_cache[(h, w)] = _pattern(h, w)
    noise = rng.standard_normal(base.shape, dtype=np.float32) * NOISE_SIGMA
    img = np.clip(base * brightness + noise, 0, 255).astype(np.uint8)
    if t.hflip:
        img = img[:, ::-1]
    if t.vflip:
        img = img[::-1]
    fmt = stream["format"]
    if fmt == "BGR888":  # the other byte order: RGB in memory
        img = img[..., ::-1]
    if fmt in ("XBGR8888", "XRGB8888"):
        img = np.concatenate([img, np.full((h, w, 1), 255, np.uint8)], axis=2)
    if fmt in _YUV_FORMATS:
        return _yuv420_plane(np.ascontiguousarray(img), stream["stride"], swap_uv=fmt == "YVU420")
    return np.ascontiguousarray(img)


def _yuv420_plane(bgr: np.ndarray, stride: int, swap_uv: bool) -> np.ndarray:
    """BGR as libcamera's YUV 4:2:0 buffer, as picamera2's make_array gives it: (h * 3/2, stride), chroma rows at half stride."""
    h, w = bgr.shape[:2]
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).reshape(-1)
    cw, ch = w // 2, h // 2
    planes = [i420[: w * h].reshape(h, w), i420[w * h : w * h + cw * ch].reshape(ch, cw), i420[w * h + cw * ch :].reshape(ch, cw)]
    if swap_uv:
        planes[1], planes[2] = planes[2], planes[1]
    out = np.zeros(stride * h * 3 // 2, np.uint8)
    out[: stride * h].reshape(h, stride)[:, :w] = planes[0]
    half = stride // 2
    out[stride * h : stride * h + half * ch].reshape(ch, half)[:, :cw] = planes[1]
    out[stride * h + half * ch :].reshape(ch, half)[:, :cw] = planes[2]
    return out.reshape(h * 3 // 2, stride)


def _check_stream(stream: Any, name: str) -> None:
    """picamera2's check_stream_config, for the parts the stand-in models."""
    if not isinstance(stream, dict) or "format" not in stream or "size" not in stream:
        raise RuntimeError(f"{name} stream should be a dictionary with format and size")
    if stream["format"] not in _RGB_FORMATS and stream["format"] not in _YUV_FORMATS:
        raise RuntimeError("Bad format " + str(stream["format"]) + " in stream " + name)
    size = stream["size"]
    if type(size) is not tuple or len(size) != 2:
        raise RuntimeError(f"size in {name} stream should be (width, height)")
    if size[0] % 2 or size[1] % 2:
        raise RuntimeError("width and height should be even")


def _with_layout(stream: dict) -> dict:
    """The stream as libcamera fills it in: stride (YUV420 rows aligned to 64 bytes on the Pi) and frame size."""
    w, h = stream["size"]
    if stream["format"] in _YUV_FORMATS:
        stride = -(-w // 64) * 64
        return dict(stream, stride=stride, framesize=stride * h * 3 // 2)
    stride = w * _RGB_FORMATS[stream["format"]]
    return dict(stream, stride=stride, framesize=stride * h)


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
    pi_generation: int = 4
    platform: Any = None  # picamera2.platform
    encoders: Any = None  # picamera2.encoders
    outputs: Any = None  # picamera2.outputs
    encoded: collections.deque = field(default_factory=lambda: collections.deque(maxlen=500))  # (sensor time us, JPEG)

    def configurations(self, use_case: str | None = None) -> list[dict]:
        return [e[1] for e in self.log if e[0] == "configure" and (use_case is None or e[1]["use_case"] == use_case)]

    def controls_set(self) -> list[dict]:
        return [e[1] for e in self.log if e[0] == "set_controls"]

    def encoder_calls(self) -> list[tuple]:
        return [e for e in self.log if e[0] in ("start_encoder", "stop_encoder")]


def make_module(sensors: tuple[str, ...] = ("imx219",), time_scale: float = 1.0, pi_generation: int = 4) -> FakePicamera2Module:
    """A stand-in picamera2 module with these sensors attached (none: a Pi without a camera), on a Pi of this generation (1-5)."""
    if pi_generation not in (1, 2, 3, 4, 5):
        raise ValueError(f"pi_generation must be 1..5, not {pi_generation!r}")
    mod = FakePicamera2Module(
        cameras=[CameraSlot(SENSORS[name], i) for i, name in enumerate(sensors)], time_scale=time_scale, pi_generation=pi_generation
    )
    pisp = pi_generation >= 5
    mod.platform = types.SimpleNamespace(Platform=Platform, get_platform=lambda: Platform.PISP if pisp else Platform.VC4)
    mod.outputs = types.SimpleNamespace(Output=Output)
    # As picamera2.encoders: the V4L2 MJPEGEncoder where /dev/video11 is the VideoCore codec, else FFmpeg's software one.
    mod.encoders = types.SimpleNamespace(
        Encoder=Encoder, Quality=Quality, _hw_encoder_available=not pisp, MJPEGEncoder=LibavMjpegEncoder if pisp else MJPEGEncoder
    )
    mod.Picamera2 = type("Picamera2", (FakePicamera2Base,), {"_module": mod, "platform": Platform.PISP if pisp else Platform.VC4})
    return mod
