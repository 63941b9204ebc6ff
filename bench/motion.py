"""Motion: cost per frame per region against one cv2.absdiff of the same region, and the loop's frame rate with 8 regions.

Part 1. For a few region sizes (full-frame pixels, centred on the synthetic
machine, which is running), the real `daemon.motion.Motion` stage with that
one region measures consecutive 1024x768 synthetic frames (ring 256x192, the
default settings: background method, blur 5, threshold 25, dilate 2, the
per-frame log writer running). Its cost per region is the time of
`Motion.process` with the region minus the time with no region (what every
frame costs anyway: brightness-jump check, settle logic). The baseline is one
`cv2.absdiff` of two grayscale crops of the size the region is measured at
(regions under 24 ring pixels a side are measured on the full frame).
Blocks alternate between the cases; medians of the blocks. Target: <= 3x.

Part 2. `CaptureLoop._ingest` (resize into the ring, dark score, night,
motion, commit, latest slot) driven as fast as it goes on prerendered
frames, with 0 regions and with 8 regions: the frame rate the capture
thread could sustain, rendering aside.

Part 3. Where a region's time goes: the steps of the measure timed one by
one on the same buffers (the OpenCV calls `_Region.current`/`compare` make),
and the remainder (the Python around them: state machine, header text, log
record).

    .venv/bin/python bench/motion.py [--reps 15] [--block 40]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import benchlib as bl

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from daemon.bus import EventBus  # noqa: E402
from daemon.config import Config  # noqa: E402
from daemon.motion import SMALL_REGION_PX, Motion  # noqa: E402
from daemon.night import dark_score  # noqa: E402
from daemon.ring import FrameMeta  # noqa: E402
from daemon.status import ComponentStatus  # noqa: E402

TARGET = 3.0
#: Region sizes in full-frame pixels (w, h).
SIZES = [(64, 48), (128, 96), (256, 192), (512, 384), (1024, 768)]
FRAME_DT = 0.1  # seconds between frames as the motion stage sees them (10 fps)


def region_at(name: str, centre: tuple[float, float], size: tuple[int, int]) -> dict:
    w, h = size
    x = int(min(max(0, centre[0] - w / 2), bl.FRAME_W - w))
    y = int(min(max(0, centre[1] - h / 2), bl.FRAME_H - h))
    return {"name": name, "rect": [x, y, w, h]}


def measured_size(size: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of the crop a region of `size` full-frame pixels is measured on (ring, or full frame when small)."""
    rw, rh = round(size[0] * bl.RING_W / bl.FRAME_W), round(size[1] * bl.RING_H / bl.FRAME_H)
    if rw < SMALL_REGION_PX or rh < SMALL_REGION_PX:
        return size
    return rw, rh


class Feed:
    """Frames for one Motion instance: its own monotonic clock, so every instance sees time move forward."""

    def __init__(self, fulls: list[np.ndarray], rings: list[np.ndarray], scores: list[float]) -> None:
        self.fulls, self.rings, self.scores = fulls, rings, scores
        self.k = 0

    def metas(self, count: int) -> list[tuple[np.ndarray, FrameMeta, np.ndarray]]:
        out = []
        for _ in range(count):
            j = self.k % len(self.fulls)
            mono = 1000.0 + self.k * FRAME_DT
            out.append((self.rings[j], FrameMeta(frame_id=self.k + 1, ts=1.7e9 + mono, mono=mono, dark_score=self.scores[j]), self.fulls[j]))
            self.k += 1
        return out


def make_motion(config: Config) -> Motion:
    motion = Motion(config.section("motion"), EventBus(), ComponentStatus("motion"), (bl.FRAME_W, bl.FRAME_H), (bl.RING_W, bl.RING_H))
    motion.start()
    return motion


def part1(reps: int, block: int, fulls, rings, scores, centre, tmp: str) -> tuple[list[list], float]:
    cases: dict[str, tuple[Motion, Feed]] = {}
    base_config = Config({"motion.log_dir": f"{tmp}/none"})
    cases["0 regions"] = (make_motion(base_config), Feed(fulls, rings, scores))
    for size in SIZES:
        config = Config({"motion.log_dir": f"{tmp}/{size[0]}x{size[1]}", "motion.regions": [region_at("r", centre, size)]})
        cases[f"{size[0]}x{size[1]}"] = (make_motion(config), Feed(fulls, rings, scores))

    # absdiff baselines: grayscale crops of the measured size, consecutive frames
    grays_full = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in fulls]
    grays_ring = [cv2.cvtColor(r, cv2.COLOR_BGR2GRAY) for r in rings]
    absdiff_cases = {}
    for size in SIZES:
        mw, mh = measured_size(size)
        src = grays_full if (mw, mh) == size else grays_ring
        crops = [np.ascontiguousarray(g[:mh, :mw]) for g in src]
        absdiff_cases[f"{size[0]}x{size[1]}"] = (crops, np.empty((mh, mw), np.uint8))

    def run_motion(name: str) -> float:
        motion, feed = cases[name]
        batch = feed.metas(block)
        t0 = time.perf_counter()
        for ring, meta, full in batch:
            motion.process(ring, meta, full)
        return (time.perf_counter() - t0) / block

    def run_absdiff(name: str, k: int) -> float:
        crops, dst = absdiff_cases[name]
        n = len(crops)
        t0 = time.perf_counter()
        for i in range(block):
            cv2.absdiff(crops[(k + i) % n], crops[(k + i + 1) % n], dst=dst)
        return (time.perf_counter() - t0) / block

    # Warm-up: a whole motion window (so regions reach RUNNING/STOPPED and the window logic runs its steady state).
    for name in cases:
        for _ in range(int(35 / FRAME_DT) // block + 1):
            run_motion(name)
    times: dict[str, list[float]] = {name: [] for name in cases}
    diffs: dict[str, list[float]] = {name: [] for name in absdiff_cases}
    for rep in range(reps):
        for name in cases:
            times[name].append(run_motion(name))
        for name in absdiff_cases:
            diffs[name].append(run_absdiff(name, rep * block))
    errors = {name: m.measure_errors for name, (m, _) in cases.items()}
    states = {name: m.health()["regions"].get("r", {}).get("state") for name, (m, _) in cases.items()}
    fractions = {name: m.health()["regions"].get("r", {}).get("fraction") for name, (m, _) in cases.items()}
    for motion, _ in cases.values():
        motion.stop()
    if any(errors.values()):
        raise RuntimeError(f"motion measure failed during the benchmark: {errors}")

    fixed = times["0 regions"]
    rows = [["0 regions (fixed cost per frame)", "-", bl.median(fixed) * 1e6, None, None, None, None, None]]
    worst = 0.0
    for size in SIZES:
        name = f"{size[0]}x{size[1]}"
        mw, mh = measured_size(size)
        where = "full" if (mw, mh) == size else "ring"
        per_region = [t - f for t, f in zip(times[name], fixed)]
        ratio = bl.median(r / d for r, d in zip(per_region, diffs[name]))
        worst = max(worst, ratio)
        rows.append([name, f"{mw}x{mh} {where}", bl.median(times[name]) * 1e6, bl.median(per_region) * 1e6,
                     bl.median(diffs[name]) * 1e6, ratio, states[name], fractions[name]])
    return rows, worst


def part2(reps: int, block: int, fulls, centre, tmp: str, ingest_module) -> list[list]:
    grid = []
    for i in range(8):  # a 4x2 grid of 192x144 regions over the frame, one of them on the machine
        cx = bl.FRAME_W * (i % 4 + 0.5) / 4
        cy = bl.FRAME_H * (0.35 if i < 4 else 0.75)
        grid.append(region_at(f"g{i}", (cx, cy), (192, 144)))
    small = [region_at(f"s{i}", (centre[0] - 180 + 50 * i, centre[1]), (48, 40)) for i in range(8)]
    sets = {"0 regions": [], "8 regions 192x144 (ring crops)": grid, "8 regions 48x40 (full-frame crops)": small}
    loops = {}
    for name, regions in sets.items():
        config = Config({"camera.width": bl.FRAME_W, "camera.height": bl.FRAME_H, "ring.size": 300,
                         "ring.downscale": f"{bl.RING_W}x{bl.RING_H}", "motion.log_dir": f"{tmp}/loop{len(loops)}",
                         "motion.regions": regions})
        loops[name] = ingest_module.build_loop(config, with_motion=True)
    infos = {"exposure_us": 10000, "gain": 1.0}

    def run(name: str, k: int) -> float:
        loop = loops[name][0]
        n = len(fulls)
        t0 = time.perf_counter()
        for i in range(block):
            loop._ingest(fulls[(k + i) % n], infos)
        return (time.perf_counter() - t0) / block

    for name in loops:
        run(name, 0)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for rep in range(reps):
        for name in loops:
            times[name].append(run(name, rep * block))
    for _, motion in loops.values():
        motion.stop()
    base = times["0 regions"]
    rows = []
    for name, t in times.items():
        rows.append([name, bl.median(t) * 1e3, 1.0 / bl.median(t), bl.median(x / b for x, b in zip(t, base))])
    return rows


def step_times(reps: int, rings, centre, size: tuple[int, int]) -> dict[str, float]:
    """The OpenCV steps of one ring-measured region of `size` full-frame pixels, as `_Region` makes them (us each)."""
    x, y, w, h = region_at("r", centre, size)["rect"]
    sx, sy = bl.RING_W / bl.FRAME_W, bl.RING_H / bl.FRAME_H
    rx, ry, rw, rh = round(x * sx), round(y * sy), round(w * sx), round(h * sy)
    gray = np.empty((rh, rw), np.uint8)
    blurred = np.empty_like(gray)
    reference = np.empty_like(gray)
    background = np.zeros((rh, rw), np.float32)
    diff = np.empty_like(gray)
    changed = np.empty_like(gray)
    dilated = np.empty_like(gray)
    crops = [r[ry:ry + rh, rx:rx + rw] for r in rings]
    cv2.cvtColor(crops[0], cv2.COLOR_BGR2GRAY, dst=gray)
    cv2.GaussianBlur(gray, (5, 5), 0, dst=blurred)
    background[:] = blurred
    np.copyto(reference, blurred)
    steps = {
        "cvtColor BGR->gray": lambda k: cv2.cvtColor(crops[k % len(crops)], cv2.COLOR_BGR2GRAY, dst=gray),
        "GaussianBlur 5x5": lambda k: cv2.GaussianBlur(gray, (5, 5), 0, dst=blurred),
        "absdiff": lambda k: cv2.absdiff(blurred, reference, dst=diff),
        "accumulateWeighted": lambda k: cv2.accumulateWeighted(blurred, background, 0.05),
        "convertScaleAbs": lambda k: cv2.convertScaleAbs(background, dst=reference),
        "threshold": lambda k: cv2.threshold(diff, 24, 255, cv2.THRESH_BINARY, dst=changed),
        "countNonZero": lambda k: cv2.countNonZero(changed),
        "dilate x2": lambda k: cv2.dilate(changed, None, dst=dilated, iterations=2),
        "countNonZero (dilated)": lambda k: cv2.countNonZero(dilated),
    }
    n = 200
    out = {}
    for name, fn in steps.items():
        samples = []
        for _rep in range(reps):
            t0 = time.perf_counter()
            for k in range(n):
                fn(k)
            samples.append((time.perf_counter() - t0) / n)
        out[name] = bl.median(samples) * 1e6
    return out


def part3(reps: int, rings, centre, per_region: dict[str, float]) -> tuple[list[list], list[str]]:
    sizes = [(256, 192), (1024, 768)]
    columns = [step_times(reps, rings, centre, size) for size in sizes]
    rows = [[name] + [c[name] for c in columns] for name in columns[0]]
    totals = [sum(c.values()) for c in columns]
    rows.append(["sum of the OpenCV steps"] + totals)
    measured = [per_region[f"{w}x{h}"] for w, h in sizes]
    rows.append(["per region in Motion.process (part 1)"] + measured)
    rows.append(["remainder: Python around them (a difference of medians)"] + [m - t for m, t in zip(measured, totals)])
    header = ["step, us per frame"] + [f"{w}x{h} ({measured_size((w, h))[0]}x{measured_size((w, h))[1]} ring)" for w, h in sizes]
    return rows, header


def main() -> int:
    parser = argparse.ArgumentParser(description="Motion cost per region against cv2.absdiff; loop frame rate with 8 regions")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--block", type=int, default=40)
    args = parser.parse_args()

    import ingest  # the capture loop wired as the app wires it

    frames, machine = bl.synthetic_frames(32)
    fulls = [f for f, _info in frames]
    rings = [cv2.resize(f, (bl.RING_W, bl.RING_H), interpolation=cv2.INTER_AREA) for f in fulls]
    scores = [dark_score(r) for r in rings]
    mx, my, mw, mh = machine
    centre = (mx + mw / 2, my + mh / 2)

    with tempfile.TemporaryDirectory(prefix="picamd-bench-") as tmp:
        rows1, worst = part1(args.reps, args.block, fulls, rings, scores, centre, tmp)
        rows2 = part2(args.reps, args.block, fulls, centre, tmp, ingest)

    print(bl.table(
        f"Motion per region, one region centred on the running machine ({args.reps} blocks of {args.block} frames; us = microseconds)",
        ["region (full px)", "measured on", "process us", "per region us", "absdiff us", "x absdiff", "state", "fraction"], rows1,
    ))
    print(bl.table(
        f"Capture loop (_ingest of a {bl.FRAME_W}x{bl.FRAME_H} frame) as fast as it goes, without rendering",
        ["motion regions", "ms/frame", "frames/s", "x 0 regions"], rows2,
    ))
    rows3, header3 = part3(args.reps, rings, centre, {r[0]: r[3] for r in rows1[1:]})
    print(bl.table("Where a region's time goes: the steps of the measure timed one by one on the same crop", header3, rows3))
    print(bl.verdict("motion", worst <= TARGET,
                     f"per region {min(r[5] for r in rows1[1:]):.1f}x..{worst:.1f}x one cv2.absdiff of the measured crop (target <= {TARGET}x); "
                     f"loop {rows2[0][2]:.0f} frames/s with 0 regions, {rows2[1][2]:.0f} with 8 ring regions, {rows2[2][2]:.0f} with 8 small ones"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
