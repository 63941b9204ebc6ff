"""Ingest cost per frame against cv2.resize alone.

The capture loop's real per-frame path, `CaptureLoop._ingest`: resize the
1024x768 camera frame straight into the ring slot (INTER_AREA), dark score,
night controller update, motion stage (wired as the app wires it, with no
regions configured), ring commit, LatestSlot.put. Compared with
`cv2.resize` of the same frame to 256x192 with the same interpolation into a
preallocated buffer, i.e. the least any downscaling ring could do.

Both are timed in alternating blocks on the same 16 prerendered synthetic
frames (distinct arrays, so neither runs on a cache-hot frame), and the
medians of the blocks are compared. Target: ingest <= 1.5x the resize.

    .venv/bin/python bench/ingest.py [--reps 15] [--block 40]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import benchlib as bl
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from daemon.capture.loop import CaptureLoop  # noqa: E402
from daemon.capture.ring import LatestSlot, Ring  # noqa: E402
from daemon.config import Config  # noqa: E402
from daemon.core.bus import EventBus  # noqa: E402
from daemon.core.status import ComponentStatus  # noqa: E402
from daemon.image.night import NightController  # noqa: E402
from daemon.motion import Motion  # noqa: E402
from daemon.sources.base import SourceError  # noqa: E402

TARGET = 1.5


def _no_source():
    raise SourceError("the benchmark feeds frames itself")


def build_loop(config: Config, with_motion: bool) -> tuple[CaptureLoop, Motion | None]:
    """A capture loop wired like the app's (ring, latest slot, night controller, motion), never started."""
    bus = EventBus()
    ring = Ring(config.get("ring.size"), bl.RING_H, bl.RING_W)
    latest = LatestSlot()
    holder: dict[str, CaptureLoop] = {}
    night = NightController(
        config.section("night"), bus, apply_camera=lambda n: holder["loop"].apply_night(n), status=ComponentStatus("night")
    )
    motion = None
    stages = []
    if with_motion:
        motion = Motion(config.section("motion"), bus, ComponentStatus("motion"), (bl.FRAME_W, bl.FRAME_H), (bl.RING_W, bl.RING_H))
        motion.start()
        stages.append(motion)
    loop = CaptureLoop(
        config.section("camera"), config.section("night"), _no_source, ring, latest, night, bus, ComponentStatus("camera"), stages=stages
    )
    holder["loop"] = loop
    return loop, motion


def measure(reps: int, block: int) -> dict[str, list[float]]:
    frames = [f for f, _info in bl.synthetic_frames(16)[0]]
    infos = [{"exposure_us": 10000, "gain": 1.0}] * len(frames)
    with tempfile.TemporaryDirectory(prefix="picamd-bench-") as tmp:
        config = Config(
            {
                "camera.width": bl.FRAME_W,
                "camera.height": bl.FRAME_H,
                "ring.size": 300,
                "ring.downscale": f"{bl.RING_W}x{bl.RING_H}",
                "motion.log_dir": tmp,
            }
        )
        bare, _ = build_loop(config, with_motion=False)
        wired, motion = build_loop(config, with_motion=True)
        dst = np.empty((bl.RING_H, bl.RING_W, 3), np.uint8)
        size = (bl.RING_W, bl.RING_H)

        def run_resize(k: int) -> None:
            for i in range(block):
                cv2.resize(frames[(k + i) % len(frames)], size, dst=dst, interpolation=cv2.INTER_AREA)

        def run_bare(k: int) -> None:
            for i in range(block):
                j = (k + i) % len(frames)
                bare._ingest(frames[j], infos[j])

        def run_wired(k: int) -> None:
            for i in range(block):
                j = (k + i) % len(frames)
                wired._ingest(frames[j], infos[j])

        cases = {"cv2.resize alone": run_resize, "ingest, no stages": run_bare, "ingest as wired (motion, 0 regions)": run_wired}
        for fn in cases.values():  # warm-up: first calls allocate OpenCV's buffers and fill the ring once
            fn(0)
        per_frame: dict[str, list[float]] = {name: [] for name in cases}
        for rep in range(reps):
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn(rep * block)
                per_frame[name].append((time.perf_counter() - t0) / block)
        if motion is not None:
            motion.stop()
    return per_frame


def main() -> int:
    parser = argparse.ArgumentParser(description="Ingest cost per frame against cv2.resize alone")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--block", type=int, default=40)
    args = parser.parse_args()
    per_frame = measure(args.reps, args.block)
    base = per_frame["cv2.resize alone"]
    rows = []
    ratios = {}
    for name, times in per_frame.items():
        # Ratio of each block to the resize block measured next to it, then the median: robust to drifts in load.
        ratio = bl.median(t / b for t, b in zip(times, base, strict=False))
        ratios[name] = ratio
        rows.append([name, bl.median(times) * 1e3, min(times) * 1e3, ratio])
    print(
        bl.table(
            f"Ingest of a {bl.FRAME_W}x{bl.FRAME_H} frame into a {bl.RING_W}x{bl.RING_H} ring "
            f"({args.reps} blocks of {args.block} frames, OpenCV threads {cv2.getNumThreads()})",
            ["path", "median ms/frame", "best ms/frame", "x resize"],
            rows,
        )
    )
    ratio = ratios["ingest as wired (motion, 0 regions)"]
    print(bl.verdict("ingest", ratio <= TARGET, f"ingest {ratio:.2f}x cv2.resize alone (target <= {TARGET}x)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
