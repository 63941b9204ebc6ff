"""MJPEG with 1 and 8 viewers: the seed's approach against ours.

Two servers run side by side, each in its own process, on the same synthetic
1024x768 scene at the same frame rate and JPEG quality:
- ours: `python -m daemon --source synthetic` (one JPEG encode per frame in
  the encoder thread, shared by every viewer; full-resolution stream);
- the seed's: bench/seed_like.py (a deque of fresh frame copies, one thread
  per viewer that encodes every frame it sends, sleep-paced loops).

Measurement windows alternate between the servers and the viewer counts
(0, 1, 8), repeated; the viewers read /stream from this process. Per window:
JPEG encodes per captured frame (each server's /health counters), frames each
viewer received, and the server process's CPU seconds (utime + stime from
/proc/PID/stat, all threads) over the window. Ratios compare windows measured
next to each other; the table shows medians over the repeats.

Targets: ours 1 encode per frame; CPU with 8 viewers <= 1.5x CPU with 1 viewer.

    .venv/bin/python bench/mjpeg_clients.py [--reps 3] [--window 4] [--fps 10] [--quality 80]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import benchlib as bl

CPU_TARGET = 1.5
VIEWER_COUNTS = (0, 1, 8)


class Server:
    def __init__(self, name: str, pid: int, http_port: int) -> None:
        self.name = name
        self.pid = pid
        self.http_port = http_port

    def counters(self) -> tuple[float, int, int]:
        """(cpu seconds, frames captured, JPEG encodes)."""
        health = bl.http_json(self.http_port, "/health")
        return bl.cpu_seconds(self.pid), int(health["camera"]["frames"]), int(health["encoder"]["encodes"])


def start_seed(fps: float, quality: int) -> tuple[subprocess.Popen, int]:
    port = bl.free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("seed_like.py")), "--port", str(port), "--fps", str(fps), "--quality", str(quality)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr is not None else ""
            raise RuntimeError(f"seed_like.py exited: {err}")
        try:
            return bl.http_json(port, "/health", timeout=2)["camera"]["frames"] > 0
        except OSError:
            return False

    if not bl.wait_for(ready, 60):
        raise TimeoutError("seed_like.py did not start")
    return proc, port


def window(server: Server, viewers: int, seconds: float) -> dict:
    clients = [bl.Viewer(server.http_port).start() for _ in range(viewers)]
    try:
        if clients and not bl.wait_for(lambda: all(c.frames > 0 or c.error for c in clients), 20):
            raise TimeoutError(f"{server.name}: viewers got no frame within 20 s")
        errors = [c.error for c in clients if c.error]
        if errors:
            raise RuntimeError(f"{server.name}: viewer failed: {errors[0]}")
        time.sleep(0.5)  # past the start of every stream
        cpu0, frames0, enc0 = server.counters()
        got0 = [c.counts() for c in clients]
        t0 = time.monotonic()
        time.sleep(seconds)
        cpu1, frames1, enc1 = server.counters()
        got1 = [c.counts() for c in clients]
        elapsed = time.monotonic() - t0
    finally:
        for c in clients:
            c.stop()
    frames = frames1 - frames0
    per_client = [b[0] - a[0] for a, b in zip(got0, got1, strict=False)]
    distinct = [b[1] - a[1] for a, b in zip(got0, got1, strict=False)]
    return {
        "elapsed": elapsed,
        "cpu": cpu1 - cpu0,
        "cpu_per_s": (cpu1 - cpu0) / elapsed,
        "frames": frames,
        "fps": frames / elapsed,
        "encodes": enc1 - enc0,
        "encodes_per_frame": (enc1 - enc0) / frames if frames else float("nan"),
        "per_client": [c / elapsed for c in per_client],
        "distinct": [c / elapsed for c in distinct],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="MJPEG with 1 and 8 viewers: the seed's approach against ours")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--window", type=float, default=4.0, help="seconds per measurement window")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--quality", type=int, default=80)
    args = parser.parse_args()

    ours = bl.DaemonProcess(
        {"camera.framerate": args.fps, "mjpeg.quality": args.quality, "mjpeg.resolution": "full", "mjpeg.max_fps": max(15.0, args.fps)},
        name="ours",
    ).start()
    seed_proc = None
    try:
        ours.wait_ready()
        seed_proc, seed_port = start_seed(args.fps, args.quality)
        servers = [Server("ours", ours.pid, ours.http_port), Server("seed-like", seed_proc.pid, seed_port)]
        results: dict[tuple[str, int], list[dict]] = {(s.name, n): [] for s in servers for n in VIEWER_COUNTS}
        for _rep in range(args.reps):
            for server in servers:
                for n in VIEWER_COUNTS:
                    results[(server.name, n)].append(window(server, n, args.window))
    finally:
        ours.stop()
        if seed_proc is not None:
            seed_proc.terminate()
            try:
                seed_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                seed_proc.kill()

    rows = []
    ratio_8_1: dict[str, float] = {}
    for name in ("ours", "seed-like"):
        one = results[(name, 1)]
        eight = results[(name, 8)]
        # The windows of one repeat ran back to back: compare them pairwise, then take the median.
        ratio_8_1[name] = bl.median(e["cpu"] / o["cpu"] for o, e in zip(one, eight, strict=False))
        for n in VIEWER_COUNTS:
            ws = results[(name, n)]
            per_client = [c for w in ws for c in w["per_client"]]
            distinct = [c for w in ws for c in w["distinct"]]
            rows.append(
                [
                    name,
                    n,
                    bl.median(w["fps"] for w in ws),
                    bl.median(w["encodes_per_frame"] for w in ws) if n else bl.median(w["encodes"] for w in ws),
                    bl.median(per_client) if per_client else None,
                    bl.median(distinct) if distinct else None,
                    bl.median(w["cpu_per_s"] for w in ws) * 100,
                    bl.median(w["cpu"] for w in ws),
                    bl.median(w["cpu"] / o["cpu"] for w, o in zip(ws, one, strict=False)),
                ]
            )
    print(
        bl.table(
            f"MJPEG /stream, {bl.FRAME_W}x{bl.FRAME_H} synthetic at {args.fps:g} fps, JPEG quality {args.quality}, "
            f"{args.reps} windows of {args.window:g} s per row (medians)",
            [
                "server",
                "viewers",
                "capture fps",
                "encodes/frame",
                "frames/s per viewer",
                "distinct/s per viewer",
                "CPU % of a core",
                "CPU s per window",
                "CPU x 1 viewer",
            ],
            rows,
        )
    )
    print("  (with 0 viewers the encodes/frame column shows the encodes in the window: ours encodes nothing then)")
    ours_epf = bl.median(w["encodes_per_frame"] for n in (1, 8) for w in results[("ours", n)])
    met = ours_epf <= 1.05 and ratio_8_1["ours"] <= CPU_TARGET
    print(
        bl.verdict(
            "mjpeg_clients",
            met,
            f"ours {ours_epf:.2f} encodes/frame, CPU 8 viewers = {ratio_8_1['ours']:.2f}x 1 viewer (target 1 and <= {CPU_TARGET}x); "
            f"seed-like {ratio_8_1['seed-like']:.2f}x",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
