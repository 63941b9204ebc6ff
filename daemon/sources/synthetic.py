"""The built-in synthetic scene: a small workshop with walking people, a machine and a day/night cycle.

It is the source used when no camera is attached, and in every test, so it
behaves like a camera where that matters:

* **Scene.** A prerendered background (wall with texture, a window, shelves
  with boxes, a floor with tiles and a safety line), `synthetic.people`
  walking figures (head, body, arms, legs; each its own colours, size and
  deterministic back-and-forth path in the left part of the room), and a
  machine (a flywheel with a crank driving a piston) that always sits in
  `MACHINE_RECT_FRAC` of the scene. People never enter that rectangle, so
  motion inside it means the machine is running.
* **Machine schedule.** It runs for `MACHINE_RUN_S` seconds, then stands still
  for `MACHINE_STOP_S` seconds, repeating, starting to run at scene time 0.
* **Light.** One day lasts `synthetic.day_length_s` of scene time and starts at
  `synthetic.start_phase` (0 midnight, 0.25 dawn, 0.5 noon, 0.75 dusk). The
  scene light goes from 1.0 at noon to `NIGHT_LIGHT` (3e-4) at night, with a
  smooth twilight in between (see `scene_light`).
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
* **Determinism.** Frame k depends only on the seed, k (through the scene
  time) and the exposure settings: same seed, same frames.

Rendering is cheap enough for a Pi: the background is drawn once, moving
parts are a handful of OpenCV primitives, and the noise comes from a small
bank of prerendered Gaussian fields picked with a per-frame offset (white
noise shifted by a pixel is uncorrelated, so consecutive frames get
independent noise, which stacking relies on).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .base import Source, SourceError, night_applied

log = logging.getLogger("picamd.synthetic")

#: The machine's moving parts stay inside this rectangle of the scene: (x, y, w, h) as fractions of the
#: frame width and height, before any hflip/vflip (`SyntheticSource.machine_rect()` gives the pixels as delivered).
MACHINE_RECT_FRAC = (0.64, 0.30, 0.30, 0.26)
#: The machine runs for MACHINE_RUN_S seconds of scene time, then stops for MACHINE_STOP_S, starting at scene time 0.
MACHINE_RUN_S = 45.0
MACHINE_STOP_S = 45.0
#: Flywheel speed in revolutions per second; not a simple fraction, so no frame rate freezes it by aliasing.
MACHINE_REV_PER_S = 0.37

#: Exposure used by day (microseconds) and the gain; the synthetic sensor does no auto-exposure by day.
DAY_EXPOSURE_US = 10_000
DAY_GAIN = 1.0
#: The longest exposure and the highest gain the synthetic sensor accepts (requests are clamped).
MIN_EXPOSURE_US = 100
MAX_EXPOSURE_US = 10_000_000
MAX_GAIN = 16.0

#: Scene light at noon and at night (relative to noon).
NOON_LIGHT = 1.0
NIGHT_LIGHT = 3e-4
#: The twilight spans sun heights (-cos of the day phase) from -TWILIGHT_HALF_WIDTH to +TWILIGHT_HALF_WIDTH.
TWILIGHT_HALF_WIDTH = 0.2
#: Mean grey level the simulated auto-exposure of night `slow_video` mode aims for.
SLOW_VIDEO_TARGET_LEVEL = 110.0

#: People walk (centre of the body) within this horizontal range of the frame, left of the machine.
PEOPLE_X_RANGE = (-0.16, 0.52)
MAX_PEOPLE = 20
#: Noise bank: this many prerendered fields, each this many pixels larger than the frame in both directions.
#: One field with a 96-pixel margin gives 9216 distinct offsets in 2.8 MiB at 1024x768 (two with 64 held 5.2 MiB for 8192).
NOISE_BANKS = 1
NOISE_PAD = 96
#: Rows of the noise field drawn at a time: its float32 draft never costs more than this slice.
NOISE_CHUNK_ROWS = 64
NOISE_SCALE = 16.0  # the bank stores N(0, 1) * NOISE_SCALE as int8


def scene_light(phase: float) -> float:
    """Scene light (1.0 at noon) for a day phase (0 midnight, 0.5 noon).

    Interpolated in log space between the night level and a daylight level
    that rises from 0.3 at the horizon to 1.0 at noon, so twilight is smooth
    and the dynamic range (about 3300:1) is like a real dusk.
    """
    sun = -math.cos(2.0 * math.pi * phase)  # -1 at midnight, +1 at noon
    daylight = NOON_LIGHT * (0.3 + 0.7 * max(sun, 0.0))
    x = min(1.0, max(0.0, (sun + TWILIGHT_HALF_WIDTH) / (2.0 * TWILIGHT_HALF_WIDTH)))
    f = x * x * (3.0 - 2.0 * x)  # smoothstep
    return math.exp((1.0 - f) * math.log(NIGHT_LIGHT) + f * math.log(daylight))


def machine_running_at(scene_t: float) -> bool:
    return (scene_t % (MACHINE_RUN_S + MACHINE_STOP_S)) < MACHINE_RUN_S


def machine_run_time(scene_t: float) -> float:
    """Seconds the machine has been running up to `scene_t` (its angle freezes while it stands still)."""
    period = MACHINE_RUN_S + MACHINE_STOP_S
    cycles, rest = divmod(max(0.0, scene_t), period)
    return cycles * MACHINE_RUN_S + min(rest, MACHINE_RUN_S)


@dataclass(frozen=True)
class _Person:
    feet_y: float  # fraction of the height
    height: float  # fraction of the height
    x_a: float  # path ends, fractions of the width
    x_b: float
    speed: float  # fractions of the width per second
    offset: float  # seconds into the path at scene time 0
    shirt: tuple[int, int, int]  # BGR reflectance
    trousers: tuple[int, int, int]
    skin: tuple[int, int, int]


_SHIRTS = [
    (30, 120, 245),
    (200, 90, 40),
    (60, 160, 60),
    (40, 40, 200),
    (225, 225, 225),
    (40, 200, 230),
    (120, 60, 140),
    (150, 150, 150),
    (20, 90, 180),
]
_TROUSERS = [(70, 50, 40), (40, 40, 40), (110, 80, 50), (90, 90, 95), (60, 40, 100)]
_SKINS = [(120, 160, 210), (90, 130, 180), (60, 90, 130), (150, 180, 225)]


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
        self._people = self._make_people(self._seed)
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

    @staticmethod
    def _make_people(seed: int) -> list[_Person]:
        rng = np.random.default_rng([seed, 0x5EED])
        people = []
        lo, hi = PEOPLE_X_RANGE
        for _ in range(MAX_PEOPLE):
            feet_y = float(rng.uniform(0.72, 0.96))
            depth = (feet_y - 0.72) / 0.24  # 0 far .. 1 near
            height = 0.42 * (0.62 + 0.38 * depth) * float(rng.uniform(0.9, 1.08))
            span = float(rng.uniform(0.25, hi - lo))
            x_a = float(rng.uniform(lo, hi - span))
            people.append(
                _Person(
                    feet_y=feet_y,
                    height=height,
                    x_a=x_a,
                    x_b=x_a + span,
                    speed=float(rng.uniform(0.035, 0.09)),
                    offset=float(rng.uniform(0, 200)),
                    shirt=_SHIRTS[int(rng.integers(len(_SHIRTS)))],
                    trousers=_TROUSERS[int(rng.integers(len(_TROUSERS)))],
                    skin=_SKINS[int(rng.integers(len(_SKINS)))],
                )
            )
        return people

    @property
    def is_open(self) -> bool:
        return self._open

    def machine_rect(self) -> tuple[int, int, int, int]:
        """The machine rectangle in pixels of the delivered frame (flips applied)."""
        x, y, w, h = self._machine_rect_scene()
        if self._cam.hflip:
            x = self._width - x - w
        if self._cam.vflip:
            y = self._height - y - h
        return x, y, w, h

    def _machine_rect_scene(self) -> tuple[int, int, int, int]:
        fx, fy, fw, fh = MACHINE_RECT_FRAC
        W, H = self._width, self._height
        return int(round(fx * W)), int(round(fy * H)), int(round(fw * W)), int(round(fh * H))

    def _person_shapes(self, p: _Person, scene_t: float) -> tuple[list[tuple], tuple[int, int, int, int]] | None:
        """The primitives of one person at `scene_t` and their bounding box (x, y, w, h), in scene pixels."""
        W, H = self._width, self._height
        span = p.x_b - p.x_a
        travelled = (scene_t + p.offset) * p.speed
        leg = travelled % (2 * span)
        x_frac = p.x_a + (leg if leg < span else 2 * span - leg)
        h = p.height * H
        cx = x_frac * W
        feet = p.feet_y * H
        stride = 0.55 * h
        swing = math.sin(2 * math.pi * travelled * W / stride)
        limb = max(2, int(round(0.075 * h)))
        hip_y = feet - 0.47 * h
        shoulder_y = feet - 0.80 * h
        head_r = max(2, int(round(0.075 * h)))
        head_c = (cx, feet - 0.895 * h)
        half_w = 0.13 * h
        foot_dx = 0.13 * h * swing
        hand_dx = 0.12 * h * swing
        shapes: list[tuple] = [
            ("line", (cx, hip_y), (cx + foot_dx, feet - limb / 2), p.trousers, limb),
            ("line", (cx, hip_y), (cx - foot_dx, feet - limb / 2), p.trousers, limb),
            (
                "poly",
                [
                    (cx - half_w, shoulder_y),
                    (cx + half_w, shoulder_y),
                    (cx + 0.85 * half_w, hip_y + 0.04 * h),
                    (cx - 0.85 * half_w, hip_y + 0.04 * h),
                ],
                p.shirt,
            ),
            (
                "line",
                (cx - 0.8 * half_w, shoulder_y + limb / 2),
                (cx - 0.8 * half_w - hand_dx, feet - 0.50 * h),
                p.shirt,
                max(2, limb * 3 // 4),
            ),
            (
                "line",
                (cx + 0.8 * half_w, shoulder_y + limb / 2),
                (cx + 0.8 * half_w + hand_dx, feet - 0.50 * h),
                p.shirt,
                max(2, limb * 3 // 4),
            ),
            ("circle", head_c, head_r, p.skin),
        ]
        xs: list[float] = []
        ys: list[float] = []
        for s in shapes:
            if s[0] == "line":
                r = s[4] / 2
                for px, py in (s[1], s[2]):
                    xs += [px - r, px + r]
                    ys += [py - r, py + r]
            elif s[0] == "poly":
                xs += [q[0] for q in s[1]]
                ys += [q[1] for q in s[1]]
            else:
                xs += [s[1][0] - s[2], s[1][0] + s[2]]
                ys += [s[1][1] - s[2], s[1][1] + s[2]]
        if max(xs) < 0 or min(xs) > W - 1 or max(ys) < 0 or min(ys) > H - 1:
            return None  # off screen
        pad = 2  # anti-aliased edges and rounding reach a pixel or two past the exact outline
        x0 = max(0, int(math.floor(min(xs))) - pad)
        y0 = max(0, int(math.floor(min(ys))) - pad)
        x1 = min(W, int(math.ceil(max(xs))) + 1 + pad)
        y1 = min(H, int(math.ceil(max(ys))) + 1 + pad)
        return shapes, (x0, y0, x1 - x0, y1 - y0)

    def _visible_people(self, scene_t: float) -> list[tuple[_Person, list[tuple], tuple[int, int, int, int]]]:
        n = max(0, min(MAX_PEOPLE, int(self._syn.people)))
        out = []
        for p in sorted(self._people[:n], key=lambda q: q.feet_y):  # far ones first, near ones drawn over them
            got = self._person_shapes(p, scene_t)
            if got is not None:
                out.append((p, got[0], got[1]))
        return out

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
            "people_boxes": [self._flip_box(box) for _, _, box in self._visible_people(scene_t)],
            "light": self._light(scene_t),
        }

    def _light(self, scene_t: float) -> float:
        phase = (float(self._syn.start_phase) + scene_t / float(self._syn.day_length_s)) % 1.0
        return scene_light(phase)

    # -- prerendering ------------------------------------------------------------------------

    def _render_background(self) -> np.ndarray:
        """The static scene as reflectance (255 = white at noon with the day exposure)."""
        W, H = self._width, self._height
        rng = np.random.default_rng([self._seed, 0xBAC])
        img = np.empty((H, W, 3), np.uint8)
        wall_bottom = int(0.64 * H)

        def blotches(h: int, w: int, cells: int, amp: float) -> np.ndarray:
            small = rng.standard_normal((max(2, h * cells // max(h, w)), max(2, w * cells // max(h, w)))).astype(np.float32)
            return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * amp

        # wall: painted concrete, stained, with panel joints
        wall = np.float32(150) + blotches(wall_bottom, W, 24, 9.0) + rng.normal(0, 4, (wall_bottom, W)).astype(np.float32)
        img[:wall_bottom] = np.clip(wall, 0, 255).astype(np.uint8)[..., None] * np.array([1.0, 1.0, 0.96], np.float32)
        for x in range(0, W, max(8, W // 8)):
            cv2.line(img, (x, 0), (x, wall_bottom), (118, 118, 114), max(1, W // 400))
        # window high on the wall: the brightest thing in the room
        wx0, wy0, wx1, wy1 = int(0.36 * W), int(0.06 * H), int(0.58 * W), int(0.24 * H)
        cv2.rectangle(img, (wx0, wy0), (wx1, wy1), (235, 228, 215), -1)
        cv2.rectangle(img, (wx0, wy0), (wx1, wy1), (70, 70, 70), max(2, W // 200))
        cv2.line(img, ((wx0 + wx1) // 2, wy0), ((wx0 + wx1) // 2, wy1), (70, 70, 70), max(2, W // 250))
        cv2.line(img, (wx0, (wy0 + wy1) // 2), (wx1, (wy0 + wy1) // 2), (70, 70, 70), max(2, W // 250))
        # floor: grey concrete with tiles in perspective and a yellow safety line
        floor_h = H - wall_bottom
        floor = np.float32(105) + blotches(floor_h, W, 20, 7.0) + rng.normal(0, 5, (floor_h, W)).astype(np.float32)
        img[wall_bottom:] = np.clip(floor, 0, 255).astype(np.uint8)[..., None]
        vanish = (W // 2, int(0.2 * H))
        for k in range(-6, 15):
            x_bottom = int(k * W / 8)
            top_x = int(vanish[0] + (x_bottom - vanish[0]) * (wall_bottom - vanish[1]) / (H - vanish[1]))
            cv2.line(img, (top_x, wall_bottom), (x_bottom, H), (88, 88, 88), 1, cv2.LINE_AA)
        for frac in (0.05, 0.14, 0.27, 0.45, 0.7):
            y = wall_bottom + int(frac * floor_h)
            cv2.line(img, (0, y), (W, y), (88, 88, 88), 1, cv2.LINE_AA)
        cv2.line(img, (0, wall_bottom + int(0.08 * floor_h)), (W, wall_bottom + int(0.08 * floor_h)), (30, 190, 215), max(2, H // 120))
        cv2.line(img, (0, wall_bottom), (W, wall_bottom), (60, 60, 60), max(2, H // 300))
        # shelves with boxes on the left
        sx0, sx1 = int(0.03 * W), int(0.31 * W)
        levels = [0.14, 0.29, 0.44, 0.59]
        for xs in (sx0, sx1):
            cv2.rectangle(img, (xs - W // 200, int(0.10 * H)), (xs + W // 200, wall_bottom), (60, 70, 150), -1)
        for lv in levels:
            y = int(lv * H)
            cv2.rectangle(img, (sx0, y), (sx1, y + max(3, H // 120)), (50, 120, 200), -1)
            x = sx0 + W // 100
            while x < sx1 - W // 30:
                bw = int(rng.uniform(0.025, 0.06) * W)
                bh = int(rng.uniform(0.05, 0.11) * H)
                if x + bw > sx1 - W // 100:
                    break
                shade = rng.uniform(0.7, 1.15)
                colour = tuple(int(min(255, c * shade)) for c in ((60, 120, 170) if rng.random() < 0.7 else (170, 160, 150)))
                cv2.rectangle(img, (x, y - bh), (x + bw, y - 1), colour, -1)
                cv2.rectangle(img, (x, y - bh), (x + bw, y - 1), (40, 70, 100), 1)
                if bw > 12 and bh > 12:  # a label
                    cv2.rectangle(img, (x + bw // 4, y - bh * 2 // 3), (x + bw * 3 // 4, y - bh // 3), (225, 225, 225), -1)
                x += bw + int(rng.uniform(0.003, 0.02) * W)
        # machine: a cabinet around the rectangle, the panel inside it, the cylinder of the piston
        mx, my, mw, mh = self._machine_rect_scene()
        cv2.rectangle(img, (mx - W // 60, my - H // 25), (mx + mw + W // 80, wall_bottom + H // 30), (95, 105, 80), -1)
        cv2.rectangle(img, (mx - W // 60, my - H // 25), (mx + mw + W // 80, wall_bottom + H // 30), (40, 45, 35), 2)
        cv2.rectangle(img, (mx, my), (mx + mw, my + mh), (185, 190, 180), -1)
        cyl_y = my + mh // 2
        cv2.rectangle(img, (mx + int(0.62 * mw), cyl_y - mh // 7), (mx + int(0.985 * mw), cyl_y + mh // 7), (120, 120, 125), -1)
        cv2.rectangle(img, (mx + int(0.62 * mw), cyl_y - mh // 7), (mx + int(0.985 * mw), cyl_y + mh // 7), (50, 50, 50), 2)
        return img

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
                self._background = self._render_background()
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
        if machine:
            self._draw_machine(canvas, scene_t, running)
        for _person, shapes, _box in self._visible_people(scene_t):
            self._draw_person(canvas, shapes)
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

    def _draw_person(self, img: np.ndarray, shapes: list[tuple]) -> None:
        for s in shapes:
            if s[0] == "line":
                cv2.line(img, _pt(s[1]), _pt(s[2]), s[3], int(s[4]), cv2.LINE_AA)
            elif s[0] == "poly":
                cv2.fillConvexPoly(img, np.array([_pt(q) for q in s[1]], np.int32), s[2], cv2.LINE_AA)
            else:
                cv2.circle(img, _pt(s[1]), int(s[2]), s[3], -1, cv2.LINE_AA)

    def _draw_machine(self, img: np.ndarray, scene_t: float, running: bool) -> None:
        mx, my, mw, mh = self._machine_rect_scene()
        angle = 2 * math.pi * MACHINE_REV_PER_S * machine_run_time(scene_t)
        R = min(0.26 * mw, 0.42 * mh)
        cx, cy = mx + 0.30 * mw, my + 0.5 * mh
        rim = max(2, int(R * 0.12))
        cv2.circle(img, _pt((cx, cy)), int(R), (55, 55, 60), rim, cv2.LINE_AA)
        for i in range(5):  # five spokes against a one-pin crank: no symmetry a frame rate could freeze
            a = angle + i * 2 * math.pi / 5
            cv2.line(img, _pt((cx, cy)), _pt((cx + R * math.cos(a), cy + R * math.sin(a))), (45, 45, 50), max(2, rim // 2), cv2.LINE_AA)
        cv2.circle(
            img,
            _pt((cx + 0.85 * R * math.cos(angle), cy + 0.85 * R * math.sin(angle))),
            max(3, int(R * 0.14)),
            (30, 40, 210),
            -1,
            cv2.LINE_AA,
        )
        cv2.circle(img, _pt((cx, cy)), max(3, int(R * 0.15)), (140, 140, 145), -1, cv2.LINE_AA)
        # crank and connecting rod driving the piston in its cylinder
        r = 0.62 * R
        rod = 1.6 * R
        pin = (cx + r * math.cos(angle), cy + r * math.sin(angle))
        piston_x = pin[0] + math.sqrt(max(0.0, rod * rod - (r * math.sin(angle)) ** 2))
        pw, ph = 0.10 * mw, mh / 7
        cv2.line(img, _pt(pin), _pt((piston_x, cy)), (35, 35, 35), max(2, rim // 2), cv2.LINE_AA)
        cv2.rectangle(img, _pt((piston_x - pw / 2, cy - ph * 0.9)), _pt((piston_x + pw / 2, cy + ph * 0.9)), (200, 200, 210), -1)
        cv2.rectangle(img, _pt((piston_x - pw / 2, cy - ph * 0.9)), _pt((piston_x + pw / 2, cy + ph * 0.9)), (30, 30, 30), 2)
        cv2.circle(img, _pt(pin), max(2, int(R * 0.08)), (20, 20, 20), -1, cv2.LINE_AA)
        # status lamp above the rectangle (outside it): green running, red stopped
        lamp = (mx + mw - max(6, mw // 12), my - max(6, img.shape[0] // 50))
        cv2.circle(img, lamp, max(3, mw // 30), (40, 200, 40) if running else (40, 40, 210), -1, cv2.LINE_AA)

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


def _pt(p: tuple[float, float]) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))
