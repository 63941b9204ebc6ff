"""CPU per frame by stage of the daemon's own work (the source's excluded), and what it adds up to on each kind of Pi.

Each stage is timed alone on prerendered 1024x768 synthetic frames with a
256x192 ring, as the capture loop and the stream's encoder run it:

- resize into the ring: `cv2.resize` (INTER_AREA) of the full frame into the
  ring slot, the CPU path (a USB camera, or camera.lores off);
- ISP lores instead, VC4: what replaces the resize with picamera2 on a Pi 4
  and older, the YUV420 lores frame (256x192, stride 256) turned into BGR and
  copied into the slot;
- ISP lores instead, Pi 5: the RGB888 lores frame copied into the slot;
- dark score, night controller, motion with one region (256x192 full-frame
  pixels on the synthetic machine, default settings), commit (ring commit and
  the full frame's hand-off);
- JPEG of the full frame and of the ring frame at mjpeg.quality: one encode
  per frame whoever watches, none while nobody does.

CPU time is the process's (`time.process_time`, so OpenCV's worker threads
count), per frame, the median of blocks; wall time is shown next to it. The
budgets add the stages up per path and mjpeg.resolution with someone
watching, as milliseconds per frame and as a share of one core at --fps. On a
Pi 4 and older the full-size JPEG comes from the hardware encoder (0 here)
unless something is drawn on the stream (detect.draw_boxes); the Pi 5 has no
hardware JPEG encoder. The JPEG sizes per quality printed last are the table
`daemon/sources/picamera2_jpeg.py` turns mjpeg.quality into a bitrate with.

Run it on the Pi to see its own budget:

    .venv/bin/python bench/cpu_budget.py [--fps 10] [--quality 80] [--reps 9] [--block 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable

import benchlib as bl
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from run_all import machine  # noqa: E402

from daemon.capture.ring import FrameMeta, LatestSlot, Ring  # noqa: E402
from daemon.config import Config  # noqa: E402
from daemon.core.bus import EventBus  # noqa: E402
from daemon.core.status import ComponentStatus  # noqa: E402
from daemon.image.night import NightController, dark_score  # noqa: E402
from daemon.motion import Motion  # noqa: E402

#: Target: with picamera2 on a Pi 4 or older, the daemon's own work per frame for a full-size stream at most this share of the
#: CPU path's (the ISP and the hardware encoder take the resize and the JPEG).
TARGET = 0.5
FRAMES = 16
QUALITIES = (10, 30, 50, 60, 70, 80, 85, 90, 95, 100)


def yuv420_lores(bgr: np.ndarray, stride: int) -> np.ndarray:
    """A BGR ring frame as the VC4 ISP's YUV420 lores buffer comes from picamera2: (h * 3/2, stride)."""
    h, w = bgr.shape[:2]
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).reshape(-1)
    out = np.zeros(stride * h * 3 // 2, np.uint8)
    out[: stride * h].reshape(h, stride)[:, :w] = i420[: w * h].reshape(h, w)
    half, cw, ch = stride // 2, w // 2, h // 2
    out[stride * h : stride * h + half * ch].reshape(ch, half)[:, :cw] = i420[w * h : w * h + cw * ch].reshape(ch, cw)
    out[stride * h + half * ch :].reshape(ch, half)[:, :cw] = i420[w * h + cw * ch :].reshape(ch, cw)
    return out.reshape(h * 3 // 2, stride)


def stages(quality: int, tmp: str) -> dict[str, Callable[[int], None]]:
    """name -> run(k): one frame of that stage on frame k (the frames cycle)."""
    (frames, machine_rect) = bl.synthetic_frames(FRAMES)
    fulls = [f for f, _info in frames]
    rings = [cv2.resize(f, (bl.RING_W, bl.RING_H), interpolation=cv2.INTER_AREA) for f in fulls]
    yuv = [yuv420_lores(r, -(-bl.RING_W // 64) * 64) for r in rings]
    ring = Ring(64, bl.RING_H, bl.RING_W)
    latest = LatestSlot()
    x, y, w, h = machine_rect
    cx, cy = x + w / 2, y + h / 2
    rw, rh = 256, 192
    left, top = int(min(max(0, cx - rw / 2), bl.FRAME_W - rw)), int(min(max(0, cy - rh / 2), bl.FRAME_H - rh))
    region = {"name": "machine", "rect": [left, top, rw, rh]}
    config = Config({"camera.width": bl.FRAME_W, "camera.height": bl.FRAME_H, "motion.log_dir": tmp, "motion.regions": [region]})
    motion = Motion(
        config.section("motion"),
        EventBus(),
        ComponentStatus("motion"),
        (bl.FRAME_W, bl.FRAME_H),
        (bl.RING_W, bl.RING_H),
        log_queue_size=10**7,
    )
    night = NightController(
        config.section("night"), EventBus(), apply_camera=lambda n: {"night": n, "applied": False}, status=ComponentStatus("night")
    )
    t0 = time.time()
    clock = {"id": 0}

    def meta(k: int) -> FrameMeta:
        clock["id"] += 1
        i = clock["id"]
        return FrameMeta(frame_id=i, ts=t0 + i * 0.1, mono=i * 0.1, dark_score=100.0, exposure_us=10000, gain=1.0)

    slot = np.empty((bl.RING_H, bl.RING_W, 3), np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]

    def resize(k: int) -> None:
        cv2.resize(fulls[k % FRAMES], (bl.RING_W, bl.RING_H), dst=slot, interpolation=cv2.INTER_AREA)

    def lores_yuv(k: int) -> None:
        bgr = cv2.cvtColor(yuv[k % FRAMES], cv2.COLOR_YUV2BGR_I420)
        np.copyto(slot, bgr[:, : bl.RING_W])

    def lores_rgb(k: int) -> None:
        np.copyto(slot, rings[k % FRAMES])

    def score(k: int) -> None:
        dark_score(rings[k % FRAMES])

    def night_update(k: int) -> None:
        m = meta(k)
        night.update(100.0, 10000, 1.0, m.mono, m.ts)

    def motion_one_region(k: int) -> None:
        motion.process(rings[k % FRAMES], meta(k), fulls[k % FRAMES])

    def commit(k: int) -> None:
        m = meta(k)
        np.copyto(ring.next_slot(), rings[k % FRAMES])
        ring.commit(m)
        latest.put(fulls[k % FRAMES], m)

    def jpeg_full(k: int) -> None:
        cv2.imencode(".jpg", fulls[k % FRAMES], params)

    def jpeg_ring(k: int) -> None:
        cv2.imencode(".jpg", rings[k % FRAMES], params)

    return {
        "resize into the ring (CPU path)": resize,
        "ISP lores instead, VC4 (YUV420 -> BGR, copy)": lores_yuv,
        "ISP lores instead, Pi 5 (RGB copy)": lores_rgb,
        "dark score": score,
        "night controller": night_update,
        "motion, one region": motion_one_region,
        "commit (ring + full-frame slot)": commit,
        f"JPEG full {bl.FRAME_W}x{bl.FRAME_H} (q{quality})": jpeg_full,
        f"JPEG ring {bl.RING_W}x{bl.RING_H} (q{quality})": jpeg_ring,
    }


def measure(runs: dict[str, Callable[[int], None]], reps: int, block: int) -> dict[str, tuple[float, float]]:
    """name -> (CPU s per frame, wall s per frame), medians over `reps` blocks of `block` frames, stages interleaved."""
    for run in runs.values():  # warm-up: OpenCV's first calls allocate, motion fills its window
        for k in range(2 * block):
            run(k)
    cpu: dict[str, list[float]] = {n: [] for n in runs}
    wall: dict[str, list[float]] = {n: [] for n in runs}
    for rep in range(reps):
        for name, run in runs.items():
            c0, w0 = time.process_time(), time.perf_counter()
            for i in range(block):
                run(rep * block + i)
            cpu[name].append((time.process_time() - c0) / block)
            wall[name].append((time.perf_counter() - w0) / block)
    return {n: (bl.median(cpu[n]), bl.median(wall[n])) for n in runs}


def jpeg_bits_per_pixel() -> list[list]:
    fulls = [f for f, _info in bl.synthetic_frames(4)[0]]
    rows = []
    for q in QUALITIES:
        size = sum(len(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, q])[1]) for f in fulls) / len(fulls)
        rows.append([q, size / 1024, size * 8 / (bl.FRAME_W * bl.FRAME_H)])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate the budgets are worked out at (camera.framerate)")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality (mjpeg.quality)")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--block", type=int, default=30)
    args = parser.parse_args()
    print(f"on {machine()}; OpenCV threads {cv2.getNumThreads()}\n")
    with tempfile.TemporaryDirectory(prefix="picamd-bench-") as tmp:
        runs = stages(args.quality, tmp)
        got = measure(runs, args.reps, args.block)
    names = list(got)
    print(
        bl.table(
            f"CPU per frame by stage ({args.reps} blocks of {args.block} frames, medians)",
            ["stage", "CPU ms", "wall ms"],
            [[n, got[n][0] * 1e3, got[n][1] * 1e3] for n in names],
        )
    )

    resize, lores_vc4, lores_pi5, score, night, motion, commit, jpeg_full, jpeg_ring = (got[n][0] for n in names)
    common = score + night + motion + commit
    paths = [
        ("CPU path (USB camera; or lores/hw_encoder off)", resize, jpeg_full, jpeg_ring),
        ("picamera2 on a Pi 4 and older (ISP lores, hardware JPEG)", lores_vc4, 0.0, jpeg_ring),
        ("  the same with boxes drawn on the stream", lores_vc4, jpeg_full, jpeg_ring),
        ("picamera2 on a Pi 5 (ISP lores, JPEG on the CPU)", lores_pi5, jpeg_full, jpeg_ring),
    ]
    rows = []
    for name, ring_cost, full_jpeg, ring_jpeg in paths:
        idle = ring_cost + common
        rows.append(
            [
                name,
                idle * 1e3,
                (idle + full_jpeg) * 1e3,
                (idle + ring_jpeg) * 1e3,
                (idle + full_jpeg) * args.fps * 100,
                (idle + ring_jpeg) * args.fps * 100,
            ]
        )
    print()
    print(
        bl.table(
            f"Budget per frame, the source's own work excluded; % of one core at {args.fps:g} fps with someone watching",
            ["path", "nobody watching ms", "stream full ms", "stream ring ms", "full % core", "ring % core"],
            rows,
        )
    )
    print()
    print(
        bl.table(
            "JPEG size of the synthetic 1024x768 scene by quality (the hardware encoder's bitrate table)",
            ["quality", "KiB", "bits/pixel"],
            jpeg_bits_per_pixel(),
        )
    )
    cpu_full = resize + common + jpeg_full
    pi_full = lores_vc4 + common
    ratio = pi_full / cpu_full
    print(
        bl.verdict(
            "cpu_budget",
            ratio <= TARGET,
            f"picamera2 on a Pi 4 or older: {pi_full * 1e3:.2f} ms per frame for a full-size stream, {ratio:.2f}x the "
            f"CPU path's {cpu_full * 1e3:.2f} ms (target <= {TARGET}x)",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
