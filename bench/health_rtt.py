"""`health` round trips on the command port: 20 concurrent netcat-style clients, with 4 viewers and with none.

Each client does what `echo health | nc host 9999` does, over and over:
connect, send "health\\n", half-close, read to EOF, and times the whole
exchange. 20 such clients run at once against the daemon (synthetic
1024x768, 10 fps), first with no MJPEG viewer, then while 4 viewers stream
/stream from a separate process (so their reading never competes with the
clients' threads here); the two alternate, repeated, and the percentiles are
taken over all exchanges of a scenario.

    .venv/bin/python bench/health_rtt.py [--clients 20] [--requests 20] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import benchlib as bl

VIEWERS = 4


def burst(port: int, clients: int, requests: int) -> tuple[list[float], list[str]]:
    """`clients` threads, each doing `requests` exchanges back to back; all start together."""
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client() -> None:
        start.wait()
        for _ in range(requests):
            t0 = time.perf_counter()
            try:
                reply = bl.nc(port, "health", timeout=30)
            except OSError as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            dt = time.perf_counter() - t0
            with lock:
                if reply.startswith("OK"):
                    times.append(dt)
                else:
                    errors.append(reply.splitlines()[0][:120] if reply else "empty reply")

    threads = [threading.Thread(target=client, name=f"bench-nc-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, errors


def main() -> int:
    parser = argparse.ArgumentParser(description="health round trip with 20 concurrent netcat-style clients")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=100, help="exchanges per client per repeat")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    samples: dict[int, list[float]] = {0: [], VIEWERS: []}
    errors: dict[int, list[str]] = {0: [], VIEWERS: []}
    viewer_frames: list[int] = []
    viewer_errors: list[str] = []
    with bl.DaemonProcess({"camera.framerate": 10.0}, name="picamd") as daemon:
        daemon.wait_ready()
        bl.nc(daemon.control_port, "health")  # first call warms up (imports, the system figures' first read)
        serial, serial_errors = burst(daemon.control_port, 1, 100)  # one client alone: the floor
        for _rep in range(args.reps):
            for viewers in (0, VIEWERS):
                proc = None
                if viewers:
                    proc = bl.viewers_process(daemon.http_port, viewers, seconds=600)
                    ready = proc.stdout.readline() if proc.stdout is not None else ""
                    if not ready.strip():
                        raise RuntimeError("the viewers process ended before its viewers got a frame")
                try:
                    times, errs = burst(daemon.control_port, args.clients, args.requests)
                finally:
                    if proc is not None:
                        out, _ = proc.communicate(input="", timeout=30)  # closing stdin ends the viewers
                        result = json.loads(out.strip().splitlines()[-1])
                        viewer_frames.extend(result["frames"])
                        viewer_errors.extend(result["errors"])
                samples[viewers].extend(times)
                errors[viewers].extend(errs)
        health = daemon.health()

    rows = [
        [
            "1 client alone, 0 viewers",
            len(serial),
            len(serial_errors),
            bl.percentile(serial, 50) * 1e3,
            bl.percentile(serial, 90) * 1e3,
            bl.percentile(serial, 99) * 1e3,
            max(serial) * 1e3,
        ]
    ]
    for viewers in (0, VIEWERS):
        t = samples[viewers]
        rows.append(
            [
                f"{args.clients} clients, {viewers} viewers",
                len(t),
                len(errors[viewers]),
                bl.percentile(t, 50) * 1e3,
                bl.percentile(t, 90) * 1e3,
                bl.percentile(t, 99) * 1e3,
                max(t) * 1e3,
            ]
        )
    print(
        bl.table(
            f"health round trip, {args.clients} concurrent clients x {args.requests} exchanges x {args.reps} repeats "
            f"(connect, send, half-close, read to EOF)",
            ["scenario", "exchanges", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"],
            rows,
        )
    )
    print(
        f"  viewers received {min(viewer_frames)}..{max(viewer_frames)} frames each per repeat"
        f"{'; viewer errors: ' + viewer_errors[0] if viewer_errors else ''}; "
        f"camera {health['camera']['fps']:.1f} fps at the end, {health['encoder']['encodes']} encodes in all"
    )
    p99_quiet = bl.percentile(samples[0], 99)
    p99_busy = bl.percentile(samples[VIEWERS], 99)
    ok = not errors[0] and not errors[VIEWERS] and not viewer_errors
    print(
        bl.verdict(
            "health_rtt",
            ok,
            f"p50 {bl.percentile(samples[VIEWERS], 50) * 1e3:.1f} ms, p99 {p99_busy * 1e3:.1f} ms with {VIEWERS} viewers "
            f"(p99 {p99_quiet * 1e3:.1f} ms with none, {p99_busy / p99_quiet:.2f}x; "
            f"one client alone p50 {bl.percentile(serial, 50) * 1e3:.1f} ms); "
            f"{len(errors[0]) + len(errors[VIEWERS])} failed exchanges "
            "(target: every exchange answered OK; the issue sets no latency figure)",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
