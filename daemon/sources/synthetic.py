"""The built-in synthetic source: `SyntheticSource` films the synthetic workshop like a camera would.

It is the source used when no camera is attached, and in every test, so it
behaves like a camera where that matters. What it films (the room, people,
machine and the light of the day) is `scene.py`'s; this is the camera:

* **Light.** One day lasts `synthetic.day_length_s` of scene time and starts at
  `synthetic.start_phase` (0 midnight, 0.25 dawn, 0.5 noon, 0.75 dusk); the
  scene light of that day phase is `scene_light`.
* **Exposure.** A pixel is `reflectance * light * (exposure_us * gain) /
  (DAY_EXPOSURE_US * DAY_GAIN)`, clipped to 255, plus Gaussian noise of
  `synthetic.noise * sqrt(gain)` grey levels. By day the exposure is fixed at
  `DAY_EXPOSURE_US` and gain `DAY_GAIN` (deliberately no auto-exposure, so
  dusk really gets dark); after `apply_night(True, ...)` the requested
  exposure and gain are used, clamped to `MAX_EXPOSURE_US` and `MAX_GAIN`.
  The day-equivalent brightness of a frame is therefore
  `measured * DAY_EXPOSURE_US * DAY_GAIN / (exposure_us * gain)`.
* **Timing.** Scene time advances by one frame interval per frame: `1 /
  camera.framerate` by day, `max(1 / framerate, exposure)` in night `still`
  mode (like a real camera). At a steady frame rate it follows real time.
* **Flips.** `camera.hflip` and `camera.vflip` flip the delivered frame, and
  `machine_rect()` and `truth()` give pixels of the frame as delivered.
* **Determinism.** Frame k depends only on the seed, k (through the scene
  time) and the exposure settings: same seed, same frames.

Rendering is cheap enough for a Pi: the scene's background is drawn once
when the source opens, and the noise comes from a small bank of prerendered
Gaussian fields picked with a per-frame offset (white noise shifted by a
pixel is uncorrelated, so consecutive frames get independent noise, which
stacking relies on).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import cv2
import numpy as np

from .base import Source, SourceError, night_applied
from .scene import MACHINE_RUN_S, MACHINE_STOP_S, Scene, machine_running_at, scene_light

log = logging.getLogger("picamd.synthetic")

#: Exposure used by day (microseconds) and the gain; the synthetic sensor does no auto-exposure by day.
DAY_EXPOSURE_US = 10_000
DAY_GAIN = 1.0
#: The longest exposure and the highest gain the synthetic sensor accepts (requests are clamped).
MIN_EXPOSURE_US = 100
MAX_EXPOSURE_US = 10_000_000
MAX_GAIN = 16.0

#: Mean grey level the simulated auto-exposure of night `slow_video` mode aims for.
SLOW_VIDEO_TARGET_LEVEL = 110.0

#: Noise bank: this many prerendered fields, each this many pixels larger than the frame in both directions.
#: One field with a 96-pixel margin gives 9216 distinct offsets in 2.8 MiB at 1024x768 (two with 64 held 5.2 MiB for 8192).
NOISE_BANKS = 1
NOISE_PAD = 96
#: Rows of the noise field drawn at a time: its float32 draft never costs more than this slice.
NOISE_CHUNK_ROWS = 64
NOISE_SCALE = 16.0  # the bank stores N(0, 1) * NOISE_SCALE as int8


class SyntheticSource(Source):
    name = "synthetic"

    def __init__(self, camera: Any, synthetic: Any) -> None:
        self._cam = camera
        self._syn = synthetic
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._open = False
        self._width = int(camera.width)
        self._height = int(camera.height)
        self._seed = int(synthetic.seed)
        self._fps = float(camera.framerate)
        self._scene = Scene(self._width, self._height, self._seed)
        self._background: np.ndarray | None = None
        self._background_mean = 128.0
        self._noise: list[np.ndarray] = []
        # exposure state
        self._night = False
        self._mode = "day"
        self._exposure_us = DAY_EXPOSURE_US
        self._gain = DAY_GAIN
        self._exposure_cap_us = DAY_EXPOSURE_US  # slow_video: the AE limit
        self._gain_cap = DAY_GAIN
        # timing
        self._frame_index = 0
        self._scene_t = 0.0
        self._next_due: float | None = None
        self._last_exposure = (DAY_EXPOSURE_US, DAY_GAIN)

    # -- scene description -------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._open

    def machine_rect(self) -> tuple[int, int, int, int]:
        """The machine rectangle in pixels of the delivered frame (flips applied)."""
        x, y, w, h = self._scene.machine_rect()
        if self._cam.hflip:
            x = self._width - x - w
        if self._cam.vflip:
            y = self._height - y - h
        return x, y, w, h

    def _flip_box(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x, y, w, h = box
        if self._cam.hflip:
            x = self._width - x - w
        if self._cam.vflip:
            y = self._height - y - h
        return x, y, w, h

    def truth(self, scene_t: float) -> dict[str, Any]:
        """What the scene holds at `scene_t`: for testing motion and detection against ground truth.

        `people_boxes` are (x, y, w, h) in pixels of the delivered frame, clipped to it.
        """
        machine = bool(self._syn.machine)
        return {
            "machine_running": machine and machine_running_at(scene_t),
            "machine_rect": self.machine_rect() if machine else None,
            "people_boxes": [self._flip_box(box) for _, _, box in self._scene.visible_people(scene_t, int(self._syn.people))],
            "light": self._light(scene_t),
        }

    def _light(self, scene_t: float) -> float:
        phase = (float(self._syn.start_phase) + scene_t / float(self._syn.day_length_s)) % 1.0
        return scene_light(phase)

    # -- prerendering ------------------------------------------------------------------------

    def _make_noise_bank(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self._seed, 0x401])
        shape = (self._height + NOISE_PAD, self._width + NOISE_PAD, 3)
        bank = []
        for _ in range(NOISE_BANKS):
            field = np.empty(shape, np.int8)
            for top in range(0, shape[0], NOISE_CHUNK_ROWS):  # the same values as one draw, without a 4x float32 copy
                rows = rng.standard_normal((min(NOISE_CHUNK_ROWS, shape[0] - top), *shape[1:]), dtype=np.float32)
                rows *= NOISE_SCALE
                np.clip(rows, -127, 127, out=rows)
                field[top : top + len(rows)] = rows
            bank.append(field)
        return bank

    # -- Source interface --------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._open:
                return
            started = time.monotonic()
            try:
                self._background = self._scene.render_background()
                self._background_mean = float(self._background[::4, ::4].mean())
                self._noise = self._make_noise_bank()
            except (MemoryError, cv2.error) as exc:
                raise SourceError(f"cannot prepare the synthetic scene: {exc}") from exc
            self._closing.clear()
            self._next_due = None
            self._open = True
        log.info(
            "synthetic scene %dx%d ready (seed %d, %d people, machine %s) in %.2f s",
            self._width,
            self._height,
            self._seed,
            int(self._syn.people),
            "on" if self._syn.machine else "off",
            time.monotonic() - started,
        )

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            self._open = False
            self._background = None
            self._noise = []

    def set_framerate(self, fps: float) -> None:
        if not fps or fps <= 0 or not math.isfinite(fps):
            raise ValueError(f"frame rate must be positive, not {fps!r}")
        with self._lock:
            self._fps = float(fps)

    def _frame_interval(self) -> float:
        interval = 1.0 / self._fps
        if self._night:
            interval = max(interval, self._last_exposure[0] / 1e6)
        return interval

    def apply_night(self, night: bool, mode: str, exposure_us: int, gain: float) -> dict[str, Any]:
        if night and mode not in ("still", "slow_video"):
            raise ValueError(f"night mode must be still or slow_video, not {mode!r}")
        with self._lock:
            if not night:
                self._night, self._mode = False, "day"
                self._exposure_us, self._gain = DAY_EXPOSURE_US, DAY_GAIN
                self._exposure_cap_us, self._gain_cap = DAY_EXPOSURE_US, DAY_GAIN
                self._last_exposure = (DAY_EXPOSURE_US, DAY_GAIN)
                result = {
                    "night": False,
                    "applied": True,
                    "mode": "day",
                    "exposure_us": DAY_EXPOSURE_US,
                    "gain": DAY_GAIN,
                    "frame_interval_s": round(1.0 / self._fps, 6),
                    "note": "fixed day exposure",
                }
                log.info("synthetic camera back to day exposure (%d us, gain %.1f)", DAY_EXPOSURE_US, DAY_GAIN)
                return result
            exp = int(min(MAX_EXPOSURE_US, max(MIN_EXPOSURE_US, int(exposure_us))))
            g = float(min(MAX_GAIN, max(1.0, float(gain))))
            notes = []
            if exp != int(exposure_us):
                notes.append(
                    f"exposure {int(exposure_us)} us clamped to {exp} us (synthetic sensor range {MIN_EXPOSURE_US}..{MAX_EXPOSURE_US})"
                )
            if g != float(gain):
                notes.append(f"gain {float(gain):g} clamped to {g:g} (synthetic sensor range 1..{MAX_GAIN:g})")
            self._night, self._mode = True, mode
            if mode == "still":
                self._exposure_us, self._gain = exp, g
                self._last_exposure = (exp, g)
                note = "fixed long exposure"
            else:
                self._exposure_cap_us, self._gain_cap = exp, g
                note = "auto-exposure up to the long exposure"
            result = night_applied(
                mode,
                exp,
                g,
                requested=(exposure_us, gain),
                notes=notes,
                note=note,
                frame_interval_s=max(1.0 / self._fps, exp / 1e6) if mode == "still" else None,
                max_frame_interval_s=max(1.0 / self._fps, exp / 1e6),
            )
        for n in notes:
            log.warning("synthetic camera: %s", n)
        log.info("synthetic camera night %s mode: exposure %d us, gain %.1f", mode, exp, g)
        return result

    def _auto_exposure(self, light: float) -> tuple[int, float]:
        """slow_video: the exposure a simple AE would pick for this light, up to the night limits."""
        mean_reflectance = self._background_mean
        needed = SLOW_VIDEO_TARGET_LEVEL / max(1e-9, mean_reflectance * light) * DAY_EXPOSURE_US * DAY_GAIN
        exp = int(min(self._exposure_cap_us, max(MIN_EXPOSURE_US, needed)))
        gain = float(min(self._gain_cap, max(1.0, needed / exp)))
        return exp, round(gain, 3)

    def read(self, timeout: float) -> tuple[np.ndarray, dict[str, Any]] | None:
        if not self._open:
            raise SourceError("synthetic source is not open")
        now = time.monotonic()
        with self._lock:
            due = now if self._next_due is None else self._next_due
        wait = due - now
        if wait > 0:
            if wait > timeout:
                self._closing.wait(max(0.0, timeout))
                return None
            if self._closing.wait(wait):
                return None
        with self._lock:
            if not self._open:
                raise SourceError("synthetic source was closed")
            frame, info = self._render_next()
            interval = self._frame_interval()
            now = time.monotonic()
            # Keep a steady cadence, but never try to catch up on frames missed while nobody read.
            self._next_due = due + interval if now - due < interval else now + interval
        return frame, info

    def frame_at(self, scene_t: float, frame_index: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
        """Render the frame of scene time `scene_t` with the current exposure settings, without pacing.

        The stream itself does not move on: this is for tests, benchmarks and
        tools that need the scene at a given moment. `frame_index` picks the
        noise, as the k-th frame of the stream would.
        """
        with self._lock:
            if not self._open:
                raise SourceError("synthetic source is not open")
            light = self._light(scene_t)
            exp, gain = self._exposure_for(light)
            return self._render(scene_t, frame_index, exp, gain, light)

    def _exposure_for(self, light: float) -> tuple[int, float]:
        if self._night and self._mode == "slow_video":
            return self._auto_exposure(light)
        return self._exposure_us, self._gain

    def _render_next(self) -> tuple[np.ndarray, dict[str, Any]]:
        scene_t = self._scene_t
        light = self._light(scene_t)
        exp, gain = self._exposure_for(light)
        self._last_exposure = (exp, gain)
        out = self._render(scene_t, self._frame_index, exp, gain, light)
        self._frame_index += 1
        self._scene_t = scene_t + self._frame_interval()
        return out

    def _render(self, scene_t: float, k: int, exp: int, gain: float, light: float) -> tuple[np.ndarray, dict[str, Any]]:
        assert self._background is not None

        # The frame itself is the canvas: drawn on, then exposed and noised in place (no full-size scratch kept).
        canvas = self._background.copy()
        machine = bool(self._syn.machine)
        running = machine and machine_running_at(scene_t)
        self._scene.draw_moving(canvas, scene_t, int(self._syn.people), machine, running)
        flip = {(True, False): 1, (False, True): 0, (True, True): -1}.get((bool(self._cam.hflip), bool(self._cam.vflip)))
        if flip is not None:
            canvas = cv2.flip(canvas, flip)

        scale = light * (exp * gain) / (DAY_EXPOSURE_US * DAY_GAIN)
        sigma = float(self._syn.noise) * math.sqrt(gain)
        if sigma > 0:
            pick = np.random.default_rng([self._seed, k, 0x7])
            bank = self._noise[int(pick.integers(len(self._noise)))]
            dy, dx = (int(v) for v in pick.integers(0, NOISE_PAD, size=2))
            noise = bank[dy : dy + self._height, dx : dx + self._width]
            frame = cv2.addWeighted(canvas, scale, noise, sigma / NOISE_SCALE, 0.0, dst=canvas, dtype=cv2.CV_8U)
        else:
            frame = cv2.convertScaleAbs(canvas, dst=canvas, alpha=scale)
        info = {
            "exposure_us": int(exp),
            "gain": float(gain),
            "scene_t": round(scene_t, 6),
            "light": light,
            "machine_running": running,
            "frame_index": k,
        }
        return frame, info

    def controls(self) -> dict[str, Any]:
        return {
            "ExposureTime": {"min": MIN_EXPOSURE_US, "max": MAX_EXPOSURE_US, "default": DAY_EXPOSURE_US},
            "AnalogueGain": {"min": 1.0, "max": MAX_GAIN, "default": DAY_GAIN},
            "FrameRate": {"min": 0.05, "max": 120.0, "value": self._fps},
        }

    def exposure(self) -> dict[str, Any]:
        with self._lock:
            exp, gain = self._last_exposure
            return {
                "mode": self._mode,
                "night": self._night,
                "exposure_us": int(exp),
                "gain": float(gain),
                "scene_t": round(self._scene_t, 3),
                "light": self._light(self._scene_t),
                "frame_interval_s": round(self._frame_interval(), 6),
            }

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "width": self._width,
            "height": self._height,
            "seed": self._seed,
            "framerate": self._fps,
            "people": int(self._syn.people),
            "machine": bool(self._syn.machine),
            "machine_rect": list(self.machine_rect()),
            "machine_schedule": f"runs {MACHINE_RUN_S:g} s, stops {MACHINE_STOP_S:g} s, from scene time 0",
            "day_length_s": float(self._syn.day_length_s),
        }
