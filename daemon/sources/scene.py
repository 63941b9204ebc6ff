"""The synthetic scene itself: a small workshop with walking people and a machine, and how to draw it.

What `SyntheticSource` (`synthetic.py`) films; this module knows nothing of
exposure, noise, frame pacing or flips.

* **Room.** A prerendered background (wall with texture, a window, shelves
  with boxes, a floor with tiles and a safety line), drawn once per size and
  seed as reflectance (255 = white at noon with the day exposure).
* **People.** Up to `MAX_PEOPLE` walking figures (head, body, arms, legs;
  each its own colours, size and deterministic back-and-forth path in the
  left part of the room), `synthetic.people` of them shown. Each person's
  outline is known as well as drawn, which gives the ground-truth boxes.
* **Machine.** A flywheel with a crank driving a piston that always sits in
  `MACHINE_RECT_FRAC` of the scene. People never enter that rectangle, so
  motion inside it means the machine is running. It runs for `MACHINE_RUN_S`
  seconds, then stands still for `MACHINE_STOP_S` seconds, repeating,
  starting to run at scene time 0.
* **Light.** The scene light of a day phase (0 midnight, 0.25 dawn, 0.5
  noon, 0.75 dusk) goes from 1.0 at noon to `NIGHT_LIGHT` (3e-4) at night,
  with a smooth twilight in between (see `scene_light`).

Everything here is a function of the seed and the scene time. Drawing is
cheap enough for a Pi: the background once, the moving parts a handful of
OpenCV primitives per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

#: The machine's moving parts stay inside this rectangle of the scene: (x, y, w, h) as fractions of the
#: frame width and height, before any hflip/vflip (`SyntheticSource.machine_rect()` gives the pixels as delivered).
MACHINE_RECT_FRAC = (0.64, 0.30, 0.30, 0.26)
#: The machine runs for MACHINE_RUN_S seconds of scene time, then stops for MACHINE_STOP_S, starting at scene time 0.
MACHINE_RUN_S = 45.0
MACHINE_STOP_S = 45.0
#: Flywheel speed in revolutions per second; not a simple fraction, so no frame rate freezes it by aliasing.
MACHINE_REV_PER_S = 0.37

#: Scene light at noon and at night (relative to noon).
NOON_LIGHT = 1.0
NIGHT_LIGHT = 3e-4
#: The twilight spans sun heights (-cos of the day phase) from -TWILIGHT_HALF_WIDTH to +TWILIGHT_HALF_WIDTH.
TWILIGHT_HALF_WIDTH = 0.2
#: People walk (centre of the body) within this horizontal range of the frame, left of the machine.
PEOPLE_X_RANGE = (-0.16, 0.52)
MAX_PEOPLE = 20


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


def make_people(seed: int) -> list[_Person]:
    """All MAX_PEOPLE figures of a seed (the scene shows the first `synthetic.people`)."""
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


class Scene:
    """The workshop at one frame size and seed: the background, and the people and machine at any scene time."""

    def __init__(self, width: int, height: int, seed: int) -> None:
        self._width = int(width)
        self._height = int(height)
        self._seed = int(seed)
        self._people = make_people(self._seed)

    def machine_rect(self) -> tuple[int, int, int, int]:
        """The machine rectangle in scene pixels (before any flip)."""
        fx, fy, fw, fh = MACHINE_RECT_FRAC
        W, H = self._width, self._height
        return int(round(fx * W)), int(round(fy * H)), int(round(fw * W)), int(round(fh * H))

    def person_shapes(self, p: _Person, scene_t: float) -> tuple[list[tuple], tuple[int, int, int, int]] | None:
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

    def visible_people(self, scene_t: float, count: int) -> list[tuple[_Person, list[tuple], tuple[int, int, int, int]]]:
        """The first `count` people that are in view at `scene_t`, far ones first: each with its shapes and box in scene pixels."""
        n = max(0, min(MAX_PEOPLE, int(count)))
        out = []
        for p in sorted(self._people[:n], key=lambda q: q.feet_y):  # far ones first, near ones drawn over them
            got = self.person_shapes(p, scene_t)
            if got is not None:
                out.append((p, got[0], got[1]))
        return out

    def draw_moving(self, img: np.ndarray, scene_t: float, people: int, machine: bool, running: bool) -> None:
        """Draw the machine (when there is one) and the people in view at `scene_t` onto `img`, in scene pixels."""
        if machine:
            self.draw_machine(img, scene_t, running)
        for _person, shapes, _box in self.visible_people(scene_t, people):
            self.draw_person(img, shapes)

    def render_background(self) -> np.ndarray:
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
        mx, my, mw, mh = self.machine_rect()
        cv2.rectangle(img, (mx - W // 60, my - H // 25), (mx + mw + W // 80, wall_bottom + H // 30), (95, 105, 80), -1)
        cv2.rectangle(img, (mx - W // 60, my - H // 25), (mx + mw + W // 80, wall_bottom + H // 30), (40, 45, 35), 2)
        cv2.rectangle(img, (mx, my), (mx + mw, my + mh), (185, 190, 180), -1)
        cyl_y = my + mh // 2
        cv2.rectangle(img, (mx + int(0.62 * mw), cyl_y - mh // 7), (mx + int(0.985 * mw), cyl_y + mh // 7), (120, 120, 125), -1)
        cv2.rectangle(img, (mx + int(0.62 * mw), cyl_y - mh // 7), (mx + int(0.985 * mw), cyl_y + mh // 7), (50, 50, 50), 2)
        return img

    def draw_person(self, img: np.ndarray, shapes: list[tuple]) -> None:
        for s in shapes:
            if s[0] == "line":
                cv2.line(img, _pt(s[1]), _pt(s[2]), s[3], int(s[4]), cv2.LINE_AA)
            elif s[0] == "poly":
                cv2.fillConvexPoly(img, np.array([_pt(q) for q in s[1]], np.int32), s[2], cv2.LINE_AA)
            else:
                cv2.circle(img, _pt(s[1]), int(s[2]), s[3], -1, cv2.LINE_AA)

    def draw_machine(self, img: np.ndarray, scene_t: float, running: bool) -> None:
        mx, my, mw, mh = self.machine_rect()
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


def _pt(p: tuple[float, float]) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))
