"""Detection against the capture loop: does the loop keep its configured frame rate while detection runs flat out?

Two daemons run side by side, started together, with the same config
(synthetic 1024x768 source at `camera.framerate` 15, ring 256x192): one with
detection off, one with detection on in `detect on` mode (`detect.gate:
always`, `detect.max_fps` 30), so the detector takes every new frame it can,
one inference after the other. The frames each capture loop delivers are
counted over the same windows (health `camera.frames`), the medians compared:

    ratio = frames per second with detection / frames per second without

Target: at least 0.95. Each model in turn (the built-in SSD, and the shared
YOLOv8n int8 at 320 and 640 when ../shared/models has them); also shown: the
inferences per second detection reached, its share of one core busy
(inference time x inferences per second), each daemon's CPU, and the RSS the
detecting daemon carries over the other: runtime, model, interpreter and its
tensors, the detection thread, and scikit-learn once groups have been
computed (health `detect.groups` "ok": the synthetic scene's walkers are seen
as people, two at a time); bench/detect.py splits these up.

    .venv/bin/python bench/detect_loop.py [--fps 15] [--windows 5] [--window-s 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Any

import benchlib as bl

from daemon.detect import DetectorUnavailable  # noqa: E402
from daemon.detect.runtime import find_runtime  # noqa: E402

TARGET = 0.95
MiB = 2**20
SHARED = bl.ROOT.parent / "shared" / "models"


def models() -> list[tuple[str, dict[str, Any]]]:
    """(short name, detect.* settings) of every model there is to run."""
    out: list[tuple[str, dict[str, Any]]] = [("ssd-mobilenet-v1 (built in)", {})]
    shared = (("yolov8n-320 int8", "yolov8n_full_integer_quant_320.tflite"), ("yolov8n-640 int8", "yolov8n_full_integer_quant.tflite"))
    for short, name in shared:
        if (SHARED / name).is_file() and (SHARED / "coco_labels.txt").is_file():
            out.append(
                (
                    short,
                    {"detect.model": str(SHARED / name), "detect.labels": str(SHARED / "coco_labels.txt"), "detect.score_threshold": 0.25},
                )
            )
        else:
            print(f"({name} not found in {SHARED}: skipped)")
    return out


def snapshot(d: bl.DaemonProcess) -> dict[str, float]:
    h = d.health()
    det = h.get("detect") or {}
    return {
        "t": time.monotonic(),
        "frames": float(h["camera"]["frames"]),
        "cpu": bl.cpu_seconds(d.pid),
        "inferences": float(det.get("inferences") or 0),
        "rss": float(bl.rss_bytes(d.pid)),
        "inference_ms": float(((det.get("last") or {}).get("inference_ms")) or 0.0),
    }


def run_pair(short: str, settings: dict[str, Any], fps: float, windows: int, window_s: float, threads: int) -> dict[str, Any]:
    common = {"camera.framerate": fps, "ring.size": 100, "storage.allowed_roots": [tempfile.gettempdir(), str(bl.ROOT), str(SHARED)]}
    off = bl.DaemonProcess({**common, "detect.enabled": False}, name="detection off")
    on = bl.DaemonProcess(
        {**common, "detect.enabled": True, "detect.gate": "always", "detect.max_fps": 30.0, "detect.threads": threads, **settings},
        name=f"detection on ({short})",
    )
    try:
        for d in (off, on):
            d.start()
        for d in (off, on):
            d.wait_ready()
        # Until the model is loaded and has run a few times (XNNPACK packs the weights on the first run).
        if not bl.wait_for(lambda: (on.health()["detect"].get("inferences") or 0) >= 5, 60):
            raise RuntimeError(f"detection did not run: {on.health()['detect'].get('reason')}\n{on.log_tail()}")
        time.sleep(1.0)
        rates: dict[str, list[float]] = {"off": [], "on": [], "inf": [], "cpu_off": [], "cpu_on": [], "ms": []}
        for _ in range(windows):
            a_off, a_on = snapshot(off), snapshot(on)
            time.sleep(window_s)
            b_off, b_on = snapshot(off), snapshot(on)
            rates["off"].append((b_off["frames"] - a_off["frames"]) / (b_off["t"] - a_off["t"]))
            rates["on"].append((b_on["frames"] - a_on["frames"]) / (b_on["t"] - a_on["t"]))
            rates["inf"].append((b_on["inferences"] - a_on["inferences"]) / (b_on["t"] - a_on["t"]))
            rates["cpu_off"].append((b_off["cpu"] - a_off["cpu"]) / (b_off["t"] - a_off["t"]))
            rates["cpu_on"].append((b_on["cpu"] - a_on["cpu"]) / (b_on["t"] - a_on["t"]))
            rates["ms"].append(b_on["inference_ms"])
        end_off, end_on = snapshot(off), snapshot(on)
        det = on.health()["detect"]
        med = {k: bl.median(v) for k, v in rates.items()}
        return {
            "model": short,
            "fps_off": med["off"],
            "fps_on": med["on"],
            "ratio": med["on"] / med["off"] if med["off"] else 0.0,
            "to_configured": med["on"] / fps,
            "inferences": med["inf"],
            "inference_ms": med["ms"],
            "busy": med["inf"] * med["ms"] / 1e3,
            "cpu_off": med["cpu_off"],
            "cpu_on": med["cpu_on"],
            "rss_off": end_off["rss"],
            "rss_on": end_on["rss"],
            "groups": det.get("groups"),
            "kernels": (det.get("detector") or {}).get("kernels"),
        }
    finally:
        for d in (off, on):
            d.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=float, default=15.0, help="camera.framerate of both daemons")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window-s", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2, help="detect.threads")
    args = parser.parse_args()
    try:
        runtime = find_runtime()
    except DetectorUnavailable as exc:
        print(bl.verdict("detect_loop", False, f"not measured: {exc.reason}"))
        return 0
    results = []
    for short, settings in models():
        print(f"  {short}: two daemons side by side, {args.windows} windows of {args.window_s:g} s ...", file=sys.stderr, flush=True)
        results.append(run_pair(short, settings, args.fps, args.windows, args.window_s, args.threads))
    print(
        bl.table(
            f"Capture loop at camera.framerate {args.fps:g} with and without detection running flat out ({runtime.label}, "
            f"{args.threads} interpreter threads; two daemons side by side, medians of {args.windows} windows of {args.window_s:g} s)",
            [
                "model",
                "fps off",
                "fps on",
                "on/off",
                "inferences/s",
                "inference ms",
                "core busy",
                "CPU off",
                "CPU on",
                "RSS off MiB",
                "RSS on MiB",
                "+RSS MiB",
            ],
            [
                [
                    r["model"],
                    r["fps_off"],
                    r["fps_on"],
                    f"{r['ratio']:.3f}x",
                    r["inferences"],
                    r["inference_ms"],
                    f"{r['busy']:.0%}",
                    f"{r['cpu_off']:.0%}",
                    f"{r['cpu_on']:.0%}",
                    r["rss_off"] / MiB,
                    r["rss_on"] / MiB,
                    (r["rss_on"] - r["rss_off"]) / MiB,
                ]
                for r in results
            ],
        )
    )
    print(
        f"(detect.groups per model: {', '.join(str(r['groups']) for r in results)}, where ok means scikit-learn is loaded and "
        f"in the +RSS; kernels: {', '.join(str(r['kernels']) for r in results)})"
    )
    worst = min(results, key=lambda r: r["ratio"])
    print(
        bl.verdict(
            "detect_loop",
            worst["ratio"] >= TARGET,
            f"capture at {worst['ratio']:.3f}x of its rate without detection at worst ({worst['model']}: "
            f"{worst['fps_on']:.2f} vs {worst['fps_off']:.2f} fps, configured {args.fps:g}, detection at "
            f"{worst['inferences']:.1f} inferences/s); target >= {TARGET}x",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
