"""Memory: what /metrics costs the daemon with daemon/net/metrics.py against prometheus_client.

A real daemon (synthetic source, one motion region) gives its /health once;
then each way of writing the exposition runs in fresh interpreters:

- `picamd`: import daemon/net/metrics.py, render the health dict 200 times;
- `prometheus_client`: import it, build the same families as its Metric
  objects behind a custom collector, `generate_latest()` 200 times.

Each runs twice: on top of `daemon.app` (what a scrape adds to the running
daemon, which has already loaded most of the standard library either needs,
and daemon/net/metrics.py itself) and in a bare interpreter (what the
module and its imports cost alone).

VmRSS is read before, after the import and after the renders, in 5 fresh
interpreters per case; the medians are printed, with the time per render.

    .venv/bin/python bench/metrics_memory.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib as bl

MiB = 2**20

CHILD = r"""
import json, sys
def rss():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
import time
health = json.load(open(sys.argv[2]))
if sys.argv[4] == "daemon":
    import daemon.app  # everything the daemon loads (daemon/net/metrics.py among it: its import shows as 0 here)
base = rss()
if sys.argv[1] == "picamd":
    from daemon.net.metrics import render
    imported = rss()
    t0 = time.perf_counter()
    for _ in range(200):
        text = render(health)
    took = (time.perf_counter() - t0) / 200
else:
    import prometheus_client
    from prometheus_client.core import CollectorRegistry
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families
    imported = rss()
    # The same families, as prometheus_client's own objects (re-made on every scrape, as a custom collector does).
    # Parsed once: the collector then does per scrape what a real one would (new Metric objects, their samples).
    families = [(f.name, f.documentation, f.type, [(s.name, s.labels, s.value) for s in f.samples])
                for f in text_string_to_metric_families(open(sys.argv[3]).read())]
    class Collector:
        def collect(self):
            for name, doc, kind, samples in families:
                metric = Metric(name, doc, kind)
                for sample_name, labels, value in samples:
                    metric.add_sample(sample_name, labels, value)
                yield metric
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    t0 = time.perf_counter()
    for _ in range(200):
        text = prometheus_client.generate_latest(registry).decode()
    took = (time.perf_counter() - t0) / 200
print(json.dumps({"base": base, "imported": imported, "rendered": rss(), "lines": text.count("\n"), "took": took}))
"""


def run(way: str, health_path: Path, text_path: Path, start: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, way, str(health_path), str(text_path), start], cwd=bl.ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        print("prometheus_client is not installed (pip install prometheus_client): nothing to compare")
        return 1
    from daemon.net.metrics import render

    region = [{"name": "machine", "rect": [0.64, 0.30, 0.30, 0.26], "min_fraction": 0.02}]
    with bl.DaemonProcess({"motion.regions": region}, name="picamd") as d, tempfile.TemporaryDirectory() as tmp:
        d.wait_ready()
        health = d.health()
        health_path, text_path = Path(tmp) / "health.json", Path(tmp) / "metrics.txt"
        health_path.write_text(json.dumps(health))
        text_path.write_text(render(health))
        results: dict[tuple[str, str], list[dict[str, float]]] = {
            (start, way): [] for start in ("daemon", "bare") for way in ("picamd", "prometheus_client")
        }
        for _ in range(args.runs):
            for (start, way), runs in results.items():
                runs.append(run(way, health_path, text_path, start))
    rows = []
    for (start, way), runs in results.items():
        imported = bl.median(r["imported"] - r["base"] for r in runs) / MiB
        rendered = bl.median(r["rendered"] - r["base"] for r in runs) / MiB
        base = bl.median(r["base"] for r in runs) / MiB
        took = bl.median(r["took"] for r in runs) * 1000
        rows.append(
            (
                way,
                "daemon.app imported" if start == "daemon" else "bare interpreter",
                f"{base:.1f} MiB",
                f"+{imported:.2f} MiB",
                f"+{rendered:.2f} MiB",
                f"{took:.2f} ms",
                int(runs[0]["lines"]),
            )
        )
    print(
        bl.table(
            f"/metrics: RSS each way adds (median of {args.runs} fresh interpreters each)",
            ["way", "on top of", "RSS before", "after import", "after 200 renders", "per render", "lines"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
