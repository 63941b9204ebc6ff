"""Stacking: residual noise of a 16-frame stack against the sigma/4 limit, and the time per stack.

The clean synthetic scene at 1024x768 (no sensor noise) is the truth. 16
frames are made from it with independent Gaussian noise (sigma 8 grey
levels, rounded and clipped to uint8 like a sensor's output) and stacked
with `daemon.image.stacking` (mean, and sigma_clip at export.stack_sigma 3). The
residual noise is the standard deviation of (stack - truth) over the pixels
far enough from 0 and 255 that clipping plays no part; the limit for 16
frames is sigma/sqrt(16) = sigma/4 (plus the 0.29 grey levels that rounding
the result to uint8 adds). Target: within 10% of sigma/4.

A second set has one frame crossed by a bright satellite-like streak: the
mean keeps 1/16 of it, sigma_clip should reject it.

Time: milliseconds per stack of 16 full 1024x768 frames for each method
(the two alternate, median of the repeats), and sigma_clip's time as a
multiple of the mean's, measured side by side in the same run. Target: at
most 5x (the float implementation it replaced took about 90x).

    .venv/bin/python bench/stacking.py [--sigma 8] [--frames 16] [--reps 5]
"""

from __future__ import annotations

import argparse
import sys
import time

import benchlib as bl
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from daemon.image.stacking import stack_mean, stack_sigma_clip  # noqa: E402

TARGET = 1.10
CLIP_SIGMA = 3.0
SPEED_TARGET = 5.0  # sigma_clip at most this many times the mean's time


def noisy_stack(truth: np.ndarray, n: int, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = np.empty((n, *truth.shape), np.uint8)
    base = truth.astype(np.float32)
    for i in range(n):
        noisy = base + rng.normal(0.0, sigma, truth.shape).astype(np.float32)
        np.rint(noisy, out=noisy)
        np.clip(noisy, 0, 255, out=noisy)
        frames[i] = noisy
    return frames


def residual(result: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    diff = result.astype(np.float32) - truth.astype(np.float32)
    return float(diff[mask].std())


def main() -> int:
    parser = argparse.ArgumentParser(description="Residual noise of a stack against sigma/sqrt(N), and ms per stack")
    parser.add_argument("--sigma", type=float, default=8.0)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    n, sigma = args.frames, args.sigma
    limit = sigma / np.sqrt(n)

    (frame_info,), _rect = bl.synthetic_frames(1, noise=0.0)
    truth = frame_info[0]
    margin = 4 * sigma
    mask = (truth > margin) & (truth < 255 - margin)  # clipping would shrink the noise there
    frames = noisy_stack(truth, n, sigma, seed=7)

    # The same frames with a streak (an aircraft or satellite) across the first one.
    streaked = frames.copy()
    streak = np.zeros(truth.shape[:2], np.uint8)
    cv2.line(streak, (0, bl.FRAME_H // 5), (bl.FRAME_W - 1, bl.FRAME_H * 3 // 5), 255, 3)
    streaked[0][streak > 0] = 255
    on_streak = (streak > 0)[..., None] & mask

    results = {"mean": stack_mean(frames), "sigma_clip": stack_sigma_clip(frames, CLIP_SIGMA)}
    streak_results = {"mean": stack_mean(streaked), "sigma_clip": stack_sigma_clip(streaked, CLIP_SIGMA)}
    single = residual(frames[0], truth, mask)

    timings: dict[str, list[float]] = {"mean": [], "sigma_clip": []}
    for _ in range(args.reps):
        t0 = time.perf_counter()
        stack_mean(frames)
        timings["mean"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        stack_sigma_clip(frames, CLIP_SIGMA)
        timings["sigma_clip"].append(time.perf_counter() - t0)

    rows = [["one frame", single, single / limit, None, None, None]]
    ratios = {}
    for method in ("mean", "sigma_clip"):
        r = residual(results[method], truth, mask)
        ratios[method] = r / limit
        streak_error = float(np.abs(streak_results[method].astype(np.float32) - truth.astype(np.float32))[on_streak].mean())
        rows.append([f"{n}-frame {method}", r, r / limit, streak_error, bl.median(timings[method]) * 1e3, min(timings[method]) * 1e3])
    print(
        bl.table(
            f"Stacking {n} frames of {bl.FRAME_W}x{bl.FRAME_H}x3 with Gaussian noise sigma {sigma:g} "
            f"(limit sigma/sqrt({n}) = {limit:.2f}; sigma_clip at {CLIP_SIGMA:g} sigma; {args.reps} timed repeats)",
            ["result", "residual noise", "x limit", "error on a streak in 1 frame", "median ms/stack", "best ms/stack"],
            rows,
        )
    )
    mean_ms, clip_ms = bl.median(timings["mean"]) * 1e3, bl.median(timings["sigma_clip"]) * 1e3
    speed = clip_ms / mean_ms
    print(
        f"sigma_clip / mean time: {speed:.2f}x ({clip_ms:.0f} ms vs {mean_ms:.1f} ms median; "
        f"best {min(timings['sigma_clip']) / min(timings['mean']):.2f}x)"
    )
    met = all(r <= TARGET for r in ratios.values())
    print(
        bl.verdict(
            "stacking",
            met,
            f"residual noise {ratios['mean']:.2f}x sigma/4 (mean), {ratios['sigma_clip']:.2f}x (sigma_clip) "
            f"(target <= {TARGET}x); "
            f"{mean_ms:.0f} ms and {clip_ms:.0f} ms per stack of {n}",
        )
    )
    print(
        bl.verdict(
            "sigma_clip speed",
            speed <= SPEED_TARGET,
            f"sigma_clip takes {speed:.2f}x the mean's time side by side (target <= {SPEED_TARGET:g}x)",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
