"""Motion: cost per frame per region against one cv2.absdiff of the same region, and the loop's frame rate with 8 regions.

Part 1. The real `daemon.motion.Motion` stage measures consecutive 1024x768
synthetic frames (ring 256x192, the default settings: background method,
blur 5, threshold 25, dilate 2; the per-frame log records queued, their
writer thread's work timed apart) with N regions of one size, for several sizes (full-frame pixels, around the
synthetic machine, which is running):
- N = 1: one region centred on the machine;
- N = 8 on the machine: eight regions of that size, each shifted by 1/8 of
  its size from the last (a machine watched as a whole and in parts; they
  overlap, so they share most of one pass);
- N = 8 side by side: a 4x2 grid of adjacent regions centred on the machine
  (a row of machines; their union is eight regions' worth of pixels), for the
  sizes where eight fit in the frame.
The cost per region is (time of `Motion.process` with the N regions - time
with none) / N: what every frame costs anyway (brightness-jump check, settle
logic) is taken out. The baseline is one `cv2.absdiff` of two consecutive
BGR crops of one region, at the size the region is measured at (regions
under 24 ring pixels a side are measured on the full frame); the ratio to a
grayscale absdiff of the same crop is shown next to it. Blocks alternate
between the cases; the ratio is the median of the ratios of blocks measured
next to each other. Target: <= 3x for 8 regions.

Part 2. `CaptureLoop._ingest` (resize into the ring, dark score, night,
motion, commit, latest slot) driven as fast as it goes on prerendered
frames, with 0 regions and with 8 regions: the frame rate the capture
thread could sustain, rendering aside.

Part 3. Where the time goes: the OpenCV calls of one pass (`daemon.motion.measure.Pass.run`)
timed one by one on the box one region of that size is measured in (its
crop grown by the blur and dilation margin), then the one call per region
(`Pass.count`), against the per-region figure of part 1 for N = 1; the
remainder is the Python around them (machine state, header text, log
record) and what the calls lose run one after another on fresh frames
(caches, OpenCV's worker threads) against each repeated on its own.

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

from daemon.capture.ring import FrameMeta  # noqa: E402
from daemon.config import Config  # noqa: E402
from daemon.core.bus import EventBus  # noqa: E402
from daemon.core.status import ComponentStatus  # noqa: E402
from daemon.image.night import dark_score  # noqa: E402
from daemon.motion import SMALL_REGION_PX, Motion  # noqa: E402

TARGET = 3.0
#: Region sizes in full-frame pixels (w, h).
SIZES = [(64, 48), (128, 96), (256, 192), (512, 384), (1024, 768)]
FRAME_DT = 0.1  # seconds between frames as the motion stage sees them (10 fps)
LAYOUTS = ("1", "8 on the machine", "8 side by side")


def region_at(name: str, centre: tuple[float, float], size: tuple[int, int]) -> dict:
    w, h = size
    x = int(min(max(0, centre[0] - w / 2), bl.FRAME_W - w))
    y = int(min(max(0, centre[1] - h / 2), bl.FRAME_H - h))
    return {"name": name, "rect": [x, y, w, h]}


def layout(kind: str, centre: tuple[float, float], size: tuple[int, int]) -> list[dict] | None:
    """The regions of one case, or None when they do not fit in the frame."""
    w, h = size
    if kind == "1":
        return [region_at("r0", centre, size)]
    if kind == "8 on the machine":
        # Each shifted by 1/8 of the region from the previous one, in a 4x2 pattern.
        return [region_at(f"r{i}", (centre[0] + (i % 4 - 1.5) * w / 8, centre[1] + (i // 4 - 0.5) * h / 8), size) for i in range(8)]
    if 4 * w > bl.FRAME_W or 2 * h > bl.FRAME_H:
        return None
    x0 = int(min(max(0, centre[0] - 2 * w), bl.FRAME_W - 4 * w))
    y0 = int(min(max(0, centre[1] - h), bl.FRAME_H - 2 * h))
    return [{"name": f"r{i}", "rect": [x0 + (i % 4) * w, y0 + (i // 4) * h, w, h]} for i in range(8)]


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
            out.append(
                (self.rings[j], FrameMeta(frame_id=self.k + 1, ts=1.7e9 + mono, mono=mono, dark_score=self.scores[j]), self.fulls[j])
            )
            self.k += 1
        return out


def make_motion(config: Config) -> Motion:
    """The motion stage as the app builds it, but with its log writer thread not started: in the daemon that thread
    formats and writes the records on its own, and here it would land in whichever case is being timed. The records
    are queued (the capture thread's part, timed) and the writer's work is timed apart, in `writer_cost`."""
    return Motion(
        config.section("motion"),
        EventBus(),
        ComponentStatus("motion"),
        (bl.FRAME_W, bl.FRAME_H),
        (bl.RING_W, bl.RING_H),
        log_queue_size=10**6,
    )


def writer_cost(motion: Motion) -> float:
    """Seconds per record for the log writer to format and append what `motion` queued (run here, synchronously)."""
    log = motion.log
    records = sum(len(payload) if kind == "frames" else 1 for kind, _, payload in log._queue)
    t0 = time.perf_counter()
    log.flush()
    elapsed = time.perf_counter() - t0
    log.stop()  # the thread was never started: this closes the files
    return elapsed / max(1, records)


def part1(reps: int, block: int, fulls, rings, scores, centre, tmp: str) -> tuple[list[list], dict[str, list[float]], float]:
    cases: dict[tuple, tuple[Motion, Feed, int]] = {}
    base_config = Config({"motion.log_dir": f"{tmp}/none"})
    cases[("0",)] = (make_motion(base_config), Feed(fulls, rings, scores), 0)
    for size in SIZES:
        for kind in LAYOUTS:
            regions = layout(kind, centre, size)
            if regions is None:
                continue
            config = Config({"motion.log_dir": f"{tmp}/{size[0]}x{size[1]}-{kind.replace(' ', '_')}", "motion.regions": regions})
            cases[(size, kind)] = (make_motion(config), Feed(fulls, rings, scores), len(regions))

    # absdiff baselines: one region's crop (BGR, and grayscale for comparison) of the measured size, consecutive frames
    grays_full = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in fulls]
    grays_ring = [cv2.cvtColor(r, cv2.COLOR_BGR2GRAY) for r in rings]
    absdiff_cases = {}
    for size in SIZES:
        mw, mh = measured_size(size)
        on_full = (mw, mh) == size
        x, y, _, _ = region_at("r", centre, size)["rect"]
        if not on_full:
            x, y = min(round(x * bl.RING_W / bl.FRAME_W), bl.RING_W - mw), min(round(y * bl.RING_H / bl.FRAME_H), bl.RING_H - mh)
        for colour, frames in (("bgr", fulls if on_full else rings), ("gray", grays_full if on_full else grays_ring)):
            crops = [f[y : y + mh, x : x + mw] for f in frames]  # views, as the daemon's crops are
            absdiff_cases[(size, colour)] = (crops, np.empty(crops[0].shape, np.uint8))

    def run_motion(case: tuple) -> float:
        motion, feed, _ = cases[case]
        batch = feed.metas(block)
        t0 = time.perf_counter()
        for ring, meta, full in batch:
            motion.process(ring, meta, full)
        return (time.perf_counter() - t0) / block

    def run_absdiff(case: tuple, k: int) -> float:
        crops, dst = absdiff_cases[case]
        n = len(crops)
        t0 = time.perf_counter()
        for i in range(block):
            cv2.absdiff(crops[(k + i) % n], crops[(k + i + 1) % n], dst=dst)
        return (time.perf_counter() - t0) / block

    # Warm-up: a whole motion window (so regions reach RUNNING/STOPPED and the window logic runs its steady state).
    for case in cases:
        for _ in range(int(35 / FRAME_DT) // block + 1):
            run_motion(case)
    times: dict[tuple, list[float]] = {case: [] for case in cases}
    diffs: dict[tuple, list[float]] = {case: [] for case in absdiff_cases}
    for rep in range(reps):
        for case in cases:
            times[case].append(run_motion(case))
        for case in absdiff_cases:
            diffs[case].append(run_absdiff(case, rep * block))
    errors = {str(case): m.measure_errors for case, (m, _, _) in cases.items()}
    writer = writer_cost(cases[(SIZES[2], LAYOUTS[-1])][0])
    summary = {}
    for case, (motion, _, _) in cases.items():
        h = motion.health()
        states = sorted({r["state"] for r in h["regions"].values()})
        fractions = [r["fraction"] for r in h["regions"].values()]
        passes = getattr(motion, "_passes", None)  # how many passes the regions took (a figure of this version)
        summary[case] = ("/".join(states) or "-", max(fractions) if fractions else None, "-" if passes is None else len(passes))
    if any(errors.values()):
        raise RuntimeError(f"motion measure failed during the benchmark: {errors}")

    fixed = times[("0",)]
    rows = [["0 regions (fixed cost per frame)", "-", "-", "-", bl.median(fixed) * 1e6, None, None, None, None, None, "-"]]
    ratios: dict[str, list[float]] = {kind: [] for kind in LAYOUTS}
    for size in SIZES:
        mw, mh = measured_size(size)
        where = "full" if (mw, mh) == size else "ring"
        for kind in LAYOUTS:
            case = (size, kind)
            if case not in cases:
                rows.append([f"{size[0]}x{size[1]}", f"{mw}x{mh} {where}", kind, "-", None, None, None, None, None, None, "does not fit"])
                continue
            n = cases[case][2]
            per_region = [(t - f) / n for t, f in zip(times[case], fixed, strict=False)]
            bgr = bl.median(r / d for r, d in zip(per_region, diffs[(size, "bgr")], strict=False))
            gray = bl.median(r / d for r, d in zip(per_region, diffs[(size, "gray")], strict=False))
            ratios[kind].append(bgr)
            shown_states, fraction, passes = summary[case]
            rows.append(
                [
                    f"{size[0]}x{size[1]}",
                    f"{mw}x{mh} {where}",
                    kind,
                    passes,
                    bl.median(times[case]) * 1e6,
                    bl.median(per_region) * 1e6,
                    bl.median(diffs[(size, "bgr")]) * 1e6,
                    bgr,
                    bl.median(diffs[(size, "gray")]) * 1e6,
                    gray,
                    f"{shown_states} {fraction:.2f}",
                ]
            )
    return rows, ratios, writer


def part2(reps: int, block: int, fulls, centre, tmp: str, ingest_module) -> list[list]:
    grid = []
    for i in range(8):  # a 4x2 grid of 192x144 regions over the frame, one of them on the machine
        cx = bl.FRAME_W * (i % 4 + 0.5) / 4
        cy = bl.FRAME_H * (0.35 if i < 4 else 0.75)
        grid.append(region_at(f"g{i}", (cx, cy), (192, 144)))
    small = [region_at(f"s{i}", (centre[0] - 180 + 50 * i, centre[1]), (48, 40)) for i in range(8)]
    sets = {"0 regions": [], "8 regions 192x144 (ring crops)": grid, "8 regions 48x40 (full-frame crops)": small}
    loops: dict[str, tuple] = {}
    for name, regions in sets.items():
        config = Config(
            {
                "camera.width": bl.FRAME_W,
                "camera.height": bl.FRAME_H,
                "ring.size": 300,
                "ring.downscale": f"{bl.RING_W}x{bl.RING_H}",
                "motion.log_dir": f"{tmp}/loop{len(loops)}",
                "motion.regions": regions,
            }
        )
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
        rows.append([name, bl.median(t) * 1e3, 1.0 / bl.median(t), bl.median(x / b for x, b in zip(t, base, strict=False))])
    return rows


def step_times(reps: int, rings, centre, size: tuple[int, int]) -> dict[str, float]:
    """The OpenCV calls of one pass over the box of one ring-measured region of `size` full-frame pixels (us each)."""
    x, y, w, h = region_at("r", centre, size)["rect"]
    sx, sy = bl.RING_W / bl.FRAME_W, bl.RING_H / bl.FRAME_H
    pad = 5 // 2 + 2  # blur 5, dilate 2: the margin the pass adds around the region
    rx0, ry0 = max(0, round(x * sx) - pad), max(0, round(y * sy) - pad)
    rx1, ry1 = min(bl.RING_W, round((x + w) * sx) + pad), min(bl.RING_H, round((y + h) * sy) + pad)
    shape = (ry1 - ry0, rx1 - rx0)
    gray, blurred, reference, diff, changed, dilated = (np.empty(shape, np.uint8) for _ in range(6))
    background = np.zeros(shape, np.float32)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (5, 5))
    crops = [r[ry0:ry1, rx0:rx1] for r in rings]
    cv2.cvtColor(crops[0], cv2.COLOR_BGR2GRAY, dst=gray)
    cv2.GaussianBlur(gray, (5, 5), 0, dst=blurred)
    background[:] = blurred
    np.copyto(reference, blurred)
    cv2.threshold(cv2.absdiff(cv2.cvtColor(crops[1], cv2.COLOR_BGR2GRAY), reference), 24, 255, cv2.THRESH_BINARY, dst=changed)
    cv2.dilate(changed, kernel, dst=dilated)
    view = dilated[pad : shape[0] - pad, pad : shape[1] - pad]
    steps = {
        f"cvtColor BGR->gray ({shape[1]}x{shape[0]} box)": lambda k: cv2.cvtColor(crops[k % len(crops)], cv2.COLOR_BGR2GRAY, dst=gray),
        "GaussianBlur 5x5": lambda k: cv2.GaussianBlur(gray, (5, 5), 0, dst=blurred),
        "absdiff": lambda k: cv2.absdiff(blurred, reference, dst=diff),
        "accumulateWeighted": lambda k: cv2.accumulateWeighted(blurred, background, 0.05),
        "convertScaleAbs": lambda k: cv2.convertScaleAbs(background, dst=reference),
        "threshold": lambda k: cv2.threshold(diff, 24, 255, cv2.THRESH_BINARY, dst=changed),
        # OpenCV 4.7+; apt's 4.6 (Pi OS bookworm) answers with countNonZero, as daemon/motion/measure.py does
        "hasNonZero": (lambda k: cv2.hasNonZero(changed)) if hasattr(cv2, "hasNonZero") else (lambda k: cv2.countNonZero(changed) > 0),
        "dilate 5x5 (= 3x3 twice)": lambda k: cv2.dilate(changed, kernel, dst=dilated),
        "per region: countNonZero of its view": lambda k: cv2.countNonZero(view),
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


def part3(reps: int, rings, centre, per_region: dict[tuple[int, int], float]) -> tuple[list[list], list[str]]:
    sizes = [(256, 192), (1024, 768)]
    columns = [step_times(reps, rings, centre, size) for size in sizes]
    names = [list(c) for c in columns]
    rows = [[names[0][i].split(" (")[0] if i == 0 else names[0][i]] + [list(c.values())[i] for c in columns] for i in range(len(names[0]))]
    boxes = [n[0].split("(")[1].rstrip(")") for n in names]
    totals = [sum(c.values()) for c in columns]
    rows.append(["sum of the OpenCV calls"] + totals)
    measured = [per_region[size] for size in sizes]
    rows.append(["per region in Motion.process (part 1, N = 1)"] + measured)
    rows.append(["remainder: Python around them; the calls slower in sequence"] + [m - t for m, t in zip(measured, totals, strict=False)])
    header = ["call, us per frame"] + [
        f"{w}x{h} ({measured_size((w, h))[0]}x{measured_size((w, h))[1]} ring, {b})" for (w, h), b in zip(sizes, boxes, strict=False)
    ]
    return rows, header


def span(values: list[float]) -> str:
    return f"{min(values):.1f}x..{max(values):.1f}x" if values else "-"


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
        rows1, ratios, writer = part1(args.reps, args.block, fulls, rings, scores, centre, tmp)
        rows2 = part2(args.reps, args.block, fulls, centre, tmp, ingest)

    print(
        bl.table(
            f"Motion per region, N regions around the running machine ({args.reps} blocks of {args.block} frames; us = microseconds)",
            [
                "region (full px)",
                "measured on",
                "N",
                "passes",
                "process us",
                "per region us",
                "absdiff BGR us",
                "x BGR",
                "absdiff grey us",
                "x grey",
                "states, max fraction",
            ],
            rows1,
        )
    )
    print(
        f"  The log writer thread, apart: {writer * 1e6:.1f} us per region and frame to format and append its line "
        f"(at 10 fps, 8 regions cost it {writer * 80 * 100:.2f}% of one core)."
    )
    print(
        bl.table(
            f"Capture loop (_ingest of a {bl.FRAME_W}x{bl.FRAME_H} frame) as fast as it goes, without rendering",
            ["motion regions", "ms/frame", "frames/s", "x 0 regions"],
            rows2,
        )
    )
    one = {}
    for row in rows1[1:]:
        if row[2] == "1":
            w, h = row[0].split("x")
            one[(int(w), int(h))] = row[5]
    rows3, header3 = part3(args.reps, rings, centre, one)
    print(bl.table("Where a region's time goes: the calls of one pass over the box of one region, timed one by one", header3, rows3))
    eight = ratios["8 on the machine"] + ratios["8 side by side"]
    print(
        bl.verdict(
            "motion",
            max(eight) <= TARGET,
            f"per region against one cv2.absdiff of its BGR crop (target <= {TARGET}x with 8 regions): "
            f"8 on the machine {span(ratios['8 on the machine'])}, 8 side by side {span(ratios['8 side by side'])}, "
            f"1 region {span(ratios['1'])}; loop {rows2[0][2]:.0f} frames/s with 0 regions, "
            f"{rows2[1][2]:.0f} with 8 ring regions, {rows2[2][2]:.0f} with 8 small ones",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
