"""Ring buffer: preallocation, queries by count/time, copies, and readers never seeing torn frames."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from daemon.capture.ring import FrameMeta, LatestSlot, Ring, plan_capacity


def fill(ring: Ring, n: int, start_ts: float = 1000.0, dt: float = 0.1, first_id: int = 1):
    for k in range(n):
        slot = ring.next_slot()
        slot[:] = (first_id + k) % 256
        ring.commit(FrameMeta(frame_id=first_id + k, ts=start_ts + k * dt, mono=k * dt, dark_score=float(k)))


def test_wraps_and_keeps_newest_in_order():
    ring = Ring(5, 4, 6)
    fill(ring, 12)
    frames, metas = ring.last_n(5)
    assert [m.frame_id for m in metas] == [8, 9, 10, 11, 12]
    assert [int(f[0, 0, 0]) for f in frames] == [8, 9, 10, 11, 12]
    assert ring.fill == 5 and ring.newest_id == 12


def test_readers_get_copies():
    ring = Ring(3, 2, 2)
    fill(ring, 1)
    latest = ring.latest()
    assert latest is not None
    frame, meta = latest
    frame[:] = 99
    again = ring.latest()
    assert again is not None and int(again[0][0, 0, 0]) == 1


def test_last_seconds_uses_timestamps_not_frame_rate():
    ring = Ring(50, 2, 2)
    ts = [0.0, 0.1, 0.2, 5.0, 5.05, 9.0, 9.5, 10.0]
    for k, t in enumerate(ts, 1):
        ring.next_slot()[:] = k
        ring.commit(FrameMeta(frame_id=k, ts=1000 + t, mono=t))
    _, metas = ring.last_seconds(1.0)
    assert [m.frame_id for m in metas] == [6, 7, 8]
    _, metas = ring.last_seconds(100.0, limit=3)
    assert [m.frame_id for m in metas] == [6, 7, 8]
    nearest = ring.nearest(1005.04)
    assert nearest is not None and nearest[1].frame_id == 5


def test_last_seconds_ignores_a_wall_clock_step():
    ring = Ring(50, 2, 2)
    for k in range(1, 11):  # 10 frames, 0.5 s apart; the wall clock steps back an hour after frame 5
        ring.next_slot()[:] = k
        wall = 5000.0 + 0.5 * k - (3600.0 if k > 5 else 0.0)
        ring.commit(FrameMeta(frame_id=k, ts=wall, mono=100.0 + 0.5 * k))
    _, metas = ring.last_seconds(2.0)
    assert [m.frame_id for m in metas] == [6, 7, 8, 9, 10]


def test_empty_ring_queries():
    ring = Ring(4, 2, 2)
    assert ring.latest() is None and ring.nearest(1.0) is None
    frames, metas = ring.last_seconds(5)
    assert frames.shape[0] == 0 and metas == []
    assert ring.wait_newer(0, timeout=0.05) is None


def test_no_torn_frames_under_concurrent_writes():
    """Each frame is filled with one value; a reader must never see two values in one copy."""
    ring = Ring(4, 64, 64)
    stop = threading.Event()
    torn = []

    def writer():
        k = 1
        while not stop.is_set():
            slot = ring.next_slot()
            slot[:32] = k % 256
            slot[32:] = k % 256
            ring.commit(FrameMeta(frame_id=k, ts=float(k), mono=float(k)))
            k += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(3000):
            got = ring.latest()
            if got is not None:
                f, m = got
                if f.min() != f.max() or int(f[0, 0, 0]) != m.frame_id % 256:
                    torn.append(m.frame_id)
            frames, metas = ring.last_n(4)
            for f, m in zip(frames, metas, strict=False):
                if f.min() != f.max() or int(f[0, 0, 0]) != m.frame_id % 256:
                    torn.append(m.frame_id)
    finally:
        stop.set()
        t.join()
    assert torn == []


def test_wait_newer_wakes_on_commit():
    ring = Ring(4, 2, 2)
    fill(ring, 1)
    got = []
    t = threading.Thread(target=lambda: got.append(ring.wait_newer(1, timeout=10)))
    t.start()
    fill(ring, 1, first_id=2)
    t.join(10)
    assert got and got[0] is not None and got[0][1].frame_id == 2


def test_latest_slot():
    slot = LatestSlot()
    assert slot.get() is None and slot.wait_newer(0, 0.01) is None
    a = np.zeros((2, 2, 3), np.uint8)
    slot.put(a, FrameMeta(frame_id=3, ts=1.0, mono=1.0))
    newer = slot.wait_newer(2, 0.01)
    assert newer is not None and newer[1].frame_id == 3
    assert slot.wait_newer(3, 0.01) is None


def test_plan_capacity_clamps_to_ram_budget_and_explains():
    n, why = plan_capacity(300, 256 * 192 * 3, 136 * 2**20, 0.25)
    assert n == (136 * 2**20 // 4) // (256 * 192 * 3)
    assert "clamped" in why and "136 MiB" in why
    n, why = plan_capacity(300, 256 * 192 * 3, 4000 * 2**20, 0.25)
    assert n == 300 and "clamped" not in why


def test_ring_refuses_capacity_below_two():
    with pytest.raises(ValueError):
        Ring(1, 2, 2)
