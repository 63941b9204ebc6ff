"""Stacking: noise reduction against the 1/sqrt(N) limit, outlier rejection, banded memory use."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from daemon.image.stacking import MeanAccumulator, available_memory_bytes, stack, stack_mean, stack_sigma_clip

H, W = 240, 320


def clean_scene() -> np.ndarray:
    """A smooth float scene well inside 0..255, so noise is never clipped."""
    ramp = np.linspace(60, 190, W, dtype=np.float32)
    rows = np.linspace(-15, 15, H, dtype=np.float32)[:, None]
    gray = ramp[None, :] + rows
    return np.stack([gray, gray * 0.9 + 10, gray * 0.8 + 20], axis=-1)


def noisy_frames(clean: np.ndarray, n: int, sigma: float, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = np.empty((n, *clean.shape), dtype=np.uint8)
    for i in range(n):
        frames[i] = np.clip(np.rint(clean + rng.normal(0.0, sigma, clean.shape)), 0, 255)
    return frames


def residual_noise(image: np.ndarray, clean: np.ndarray) -> float:
    return float((image.astype(np.float64) - clean).std())


@pytest.mark.parametrize("method", ["mean", "sigma_clip"])
def test_sixteen_frame_stack_reaches_the_sqrt_n_limit(method):
    sigma = 8.0
    clean = clean_scene()
    frames = noisy_frames(clean, 16, sigma)
    single = residual_noise(frames[0], clean)
    stacked = residual_noise(stack(frames, method, 3.0), clean)
    limit = sigma / 4
    assert abs(single - sigma) / sigma < 0.05  # the test frames really carry the noise we think
    assert abs(stacked - limit) / limit < 0.15, f"{method}: residual {stacked:.3f} vs limit {limit:.3f}"


def test_mean_equals_exact_mean_whatever_the_band_size():
    frames = noisy_frames(clean_scene(), 9, 20.0, seed=3)
    exact = np.rint(frames.astype(np.float64).mean(axis=0)).astype(np.uint8)
    assert np.array_equal(stack_mean(frames), exact)
    # a band of one row (tiny budget) and a band of 7 rows (not dividing the height) give the same answer
    assert np.array_equal(stack_mean(frames, max_band_bytes=1), exact)
    assert np.array_equal(stack_mean(frames, max_band_bytes=W * 3 * 4 * 7), exact)


def test_sigma_clip_result_does_not_depend_on_the_band_size():
    frames = noisy_frames(clean_scene(), 12, 6.0, seed=4)
    whole = stack_sigma_clip(frames, 3.0)
    assert np.array_equal(stack_sigma_clip(frames, 3.0, max_band_bytes=1), whole)
    assert np.array_equal(stack_sigma_clip(frames, 3.0, max_band_bytes=12 * W * 3 * 4 * 4 * 5), whole)


def test_sigma_clip_rejects_hot_pixel_and_streak_that_mean_keeps():
    noise = 3.0
    clean = clean_scene()
    frames = noisy_frames(clean, 16, noise, seed=11)
    frames[5, 40, 50] = 255  # a hot pixel in one frame
    cv2.line(frames[9], (0, 120), (W - 1, 150), (255, 255, 255), 2)  # an aircraft crossing in one frame
    streak = np.zeros((H, W), dtype=np.uint8)
    cv2.line(streak, (0, 120), (W - 1, 150), 255, 2)
    on_streak = streak > 0
    mean = stack_mean(frames).astype(np.float64) - clean
    clipped = stack_sigma_clip(frames, 3.0).astype(np.float64) - clean
    # the mean keeps a visible trace (about (255 - value) / 16)
    assert mean[40, 50].min() > 5
    assert mean[on_streak].mean() > 5
    # sigma clipping removes them down to the noise of a clean stack
    assert np.abs(clipped[40, 50]).max() < 3
    assert abs(clipped[on_streak].mean()) < 1.0
    assert np.abs(clipped[on_streak]).max() < 4


def test_sigma_clip_keeps_a_constant_image_and_handles_tiny_sigma():
    flat = np.full((10, 20, 30, 3), 77, dtype=np.uint8)
    assert np.array_equal(stack_sigma_clip(flat, 3.0), flat[0])
    # two-valued pixels: a tiny sigma would reject every sample; the pixel falls back to its mean
    two = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    two[2:] = 100
    assert np.array_equal(stack_sigma_clip(two, 0.5), np.full((8, 8, 3), 50, dtype=np.uint8))


def test_accumulator_matches_stack_mean_and_refuses_wrong_frames():
    frames = noisy_frames(clean_scene(), 16, 10.0, seed=5)
    acc = MeanAccumulator(frames.shape[1:])
    assert acc.nbytes == frames[0].size * 4  # one float32 sum, not the frames
    for i, frame in enumerate(frames):
        acc.add(frame)
        if i == 7:
            assert np.array_equal(acc.result(), stack_mean(frames[:8]))  # result() does not end the stack
    assert acc.count == 16
    assert np.array_equal(acc.result(), stack_mean(frames))
    assert np.array_equal(acc.result(max_band_bytes=1), stack_mean(frames))
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros((10, 10, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        acc.add(frames[0].astype(np.float32))
    assert acc.count == 16
    with pytest.raises(ValueError, match="no frames"):
        MeanAccumulator((4, 4, 3)).result()


def test_bad_inputs_are_refused():
    good = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="unknown stacking method"):
        stack(good, "median")
    with pytest.raises(ValueError, match="uint8"):
        stack_mean(good.astype(np.float32))
    with pytest.raises(ValueError, match="zero frames"):
        stack_mean(np.zeros((0, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        stack_mean(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(TypeError):
        stack_mean([good[0], good[1]])
    with pytest.raises(ValueError, match="sigma"):
        stack_sigma_clip(good, 0.0)


def test_single_frame_and_grayscale_stacks():
    frames = noisy_frames(clean_scene(), 1, 5.0)
    assert np.array_equal(stack_mean(frames), frames[0])
    assert np.array_equal(stack_sigma_clip(frames, 3.0), frames[0])
    gray = frames[..., 0].repeat(4, axis=0)
    assert stack_mean(gray).shape == (H, W)


def test_available_memory_is_known_on_linux():
    avail = available_memory_bytes()
    assert isinstance(avail, int) and avail > 2**20
