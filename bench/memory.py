"""Memory: RSS of the daemon with a full 300-frame ring against the ring's own bytes, and the Pi memory table.

Two daemons run side by side with the same config except `ring.size` (2 and
300, ring 256x192, synthetic 1024x768). Once each ring is full (health
`ring.fill`), VmRSS is sampled a few times and the medians are compared:

    overhead = (RSS(300) - RSS(2)) - 298 x frame bytes

is what the ring costs beyond its pixels (metadata objects, the timestamp
array, allocator slack). Target: under 10% of the ring's bytes. RSS(2) is the
interpreter's baseline with everything else the daemon loads (numpy, OpenCV,
the threads and their buffers).

Then the Pi memory table: how many 256x192 frames fit in the ring on each
Pi, with `ring.max_ram_fraction` 0.25 of the memory available, computed with
the daemon's own `plan_capacity`, and what the daemon would use in total
(measured baseline + ring + the measured overhead per frame).

    .venv/bin/python bench/memory.py [--framerate 30] [--samples 5]
"""

from __future__ import annotations

import argparse
import sys
import time

import benchlib as bl

from daemon.capture.ring import plan_capacity  # noqa: E402

TARGET = 0.10
SMALL, LARGE = 2, 300
MiB = 2**20

#: Memory available to programs after the OS has booted (headless Raspberry Pi OS Lite), roughly.
PIS = [
    ("Pi 1B+ (512 MB)", 136 * MiB),
    ("Pi Zero / Zero 2 W (512 MB)", 400 * MiB),
    ("Pi 3 (1 GB)", 800 * MiB),
    ("Pi 4/5 (2 GB)", 1800 * MiB),
    ("Pi 4/5 (4 GB)", 3700 * MiB),
]
FRACTION = 0.25


def measure(framerate: float, samples: int) -> dict[int, dict]:
    daemons = {
        size: bl.DaemonProcess({"ring.size": size, "camera.framerate": framerate}, name=f"ring.size {size}") for size in (SMALL, LARGE)
    }
    try:
        for d in daemons.values():
            d.start()
        for d in daemons.values():
            d.wait_ready()
        out = {}
        for size, d in daemons.items():
            health = d.health()
            capacity = health["ring"]["capacity"]
            if capacity != size:
                raise RuntimeError(f"ring.size {size} was clamped to {capacity} by the RAM budget; this machine has too little memory free")
            deadline_s = 30 + 2 * size / framerate
            if not bl.wait_for(lambda: d.health()["ring"]["fill"] >= capacity, deadline_s, poll=0.25):
                raise TimeoutError(f"{d.name}: ring not full within {deadline_s:.0f} s")
        time.sleep(1.0)  # a second more of frames: every thread has run its steady-state path
        rss: dict[int, list[int]] = {size: [] for size in daemons}
        for _ in range(samples):
            for size, d in daemons.items():
                rss[size].append(bl.rss_bytes(d.pid))
            time.sleep(0.3)
        for size, d in daemons.items():
            health = d.health()
            out[size] = {
                "rss": bl.median(rss[size]),
                "rss_min": min(rss[size]),
                "rss_max": max(rss[size]),
                "ring_bytes": health["ring"]["bytes"],
                "fill": health["ring"]["fill"],
                "frame_bytes": health["ring"]["bytes"] // health["ring"]["capacity"],
            }
        return out
    finally:
        for d in daemons.values():
            d.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description="RSS with a full ring against the ring's own bytes; Pi memory table")
    parser.add_argument("--framerate", type=float, default=30.0, help="camera frame rate (higher fills the ring sooner)")
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()

    m = measure(args.framerate, args.samples)
    frame_bytes = m[LARGE]["frame_bytes"]
    extra_frames = LARGE - SMALL
    ring_extra = extra_frames * frame_bytes
    growth = m[LARGE]["rss"] - m[SMALL]["rss"]
    overhead = growth - ring_extra
    share = overhead / ring_extra
    baseline = m[SMALL]["rss"]
    rows = [
        [
            f"ring.size {size}",
            m[size]["fill"],
            m[size]["ring_bytes"] / MiB,
            m[size]["rss"] / MiB,
            m[size]["rss_min"] / MiB,
            m[size]["rss_max"] / MiB,
        ]
        for size in (SMALL, LARGE)
    ]
    print(
        bl.table(
            f"Daemon RSS with a full ring ({bl.RING_W}x{bl.RING_H} frames of {frame_bytes / 1024:.0f} KiB, "
            f"synthetic {bl.FRAME_W}x{bl.FRAME_H}, {args.samples} samples)",
            ["daemon", "frames held", "ring MiB", "RSS MiB (median)", "min", "max"],
            rows,
        )
    )
    print(
        bl.table(
            "Ring cost",
            ["figure", "MiB"],
            [
                ["interpreter + daemon baseline (RSS with ring.size 2)", baseline / MiB],
                [f"RSS growth from {SMALL} to {LARGE} frames", growth / MiB],
                [f"pixels of {extra_frames} frames", ring_extra / MiB],
                [f"overhead beyond the pixels ({share:+.1%} of them)", overhead / MiB],
            ],
        )
    )

    per_frame_cost = frame_bytes + max(0.0, overhead / extra_frames)
    pi_rows = []
    for name, available in PIS:
        fits, _why = plan_capacity(10**9, frame_bytes, available, FRACTION)
        default, _ = plan_capacity(300, frame_bytes, available, FRACTION)
        total = baseline + default * per_frame_cost
        pi_rows.append(
            [name, available / MiB, available * FRACTION / MiB, fits, fits / 10 / 60, default, total / MiB, (available - total) / MiB]
        )
    print(
        bl.table(
            f"Pi memory table: {bl.RING_W}x{bl.RING_H} ring frames ({frame_bytes / 1024:.0f} KiB each), ring.max_ram_fraction {FRACTION}, "
            f"daemon baseline {baseline / MiB:.0f} MiB as measured on this machine",
            [
                "Pi",
                "available MiB",
                "ring budget MiB",
                "max frames",
                "minutes at 10 fps",
                "ring.size 300 gives",
                "daemon total MiB",
                "left MiB",
            ],
            pi_rows,
        )
    )
    print(
        bl.verdict(
            "memory",
            share < TARGET,
            f"ring overhead {overhead / MiB:.2f} MiB = {share:.1%} of the ring's {ring_extra / MiB:.1f} MiB (target < {TARGET:.0%}); "
            f"baseline RSS {baseline / MiB:.0f} MiB",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
