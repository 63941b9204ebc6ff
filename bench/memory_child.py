"""The instrumented run of bench/memory.py: `python -X importtime bench/memory_child.py REPORT DAEMON-ARGS...`.

It runs the daemon as `python -m daemon DAEMON-ARGS` does (daemon.__main__.main), with VmRSS read around every
import the daemon's own code makes and at each stage, and once the ring is full writes REPORT (JSON): the
stages, the imports, the buffers each component holds, the threads, which modules stayed unloaded and what
the optional ones add; then it stops the daemon with SIGTERM, as a user would. Kept small and apart from
bench/memory.py: this script is compiled at every start, and its own memory counts in what it measures.
"""

from __future__ import annotations

import os
import sys
from typing import Any

SETTLE_S = 3.0
#: Modules a daemon with the shipped config must not load: each belongs to a feature that is off.
UNUSED = {
    "requests": "notify.webhook.url, notify.alerts.url, ptz.snapshot_url or a PTZ report URL",
    "urllib3": "the same, through requests",
    "paho": "mqtt.host",
    "ai_edge_litert": "detect.enabled",
    "tflite_runtime": "detect.enabled",
    "sklearn": "detect.groups, once two people are seen",
    "skimage": "nothing in the daemon",
    "scipy": "scikit-learn",
    "prometheus_client": "nothing (daemon/net/metrics.py writes /metrics)",
}
#: What each would add to a running daemon, imported last in the instrumented run: (module, feature).
OPTIONAL = [
    ("requests", "webhooks, alerts, PTZ snapshots and reports"),
    ("paho.mqtt.client", "MQTT (mqtt.host)"),
    ("ai_edge_litert.interpreter", "detection's runtime (detect.enabled)"),
    ("sklearn.cluster", "detection's groups (DBSCAN)"),
]


def status_kib(pid: int | str = "self") -> dict[str, int]:
    """The kB figures of /proc/PID/status (VmRSS, VmHWM, RssAnon, RssFile, Threads...)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    return out


def rss_bytes(pid: int | str = "self") -> int:
    return status_kib(pid)["VmRSS"] * 1024


def child_main(argv: list[str]) -> int:
    """REPORT DAEMON-ARGS...: run the daemon as `python -m daemon` does, with VmRSS read around every import."""
    import builtins
    import json
    import signal
    import threading
    import time

    report_path, daemon_args = argv[0], argv[1:]
    stages: list[tuple[str, int, int]] = []  # (stage, VmRSS, RssAnon) in bytes

    def mark(stage: str) -> None:
        st = status_kib()
        stages.append((stage, st["VmRSS"] * 1024, st["RssAnon"] * 1024))

    mark("interpreter")
    imports: list[dict[str, Any]] = []  # each import made by the daemon's own code (or the pre-imports) of a module not yet loaded
    in_progress: list[str] = []
    phase = ["import"]
    real_import = builtins.__import__

    def hooked(name, globals=None, locals=None, fromlist=(), level=0):
        if level or name in sys.modules:
            return real_import(name, globals, locals, fromlist, level)
        by_daemon = all(m == "daemon" or m.startswith("daemon.") for m in in_progress)
        before, started, found = rss_bytes(), time.perf_counter(), False
        in_progress.append(name)
        try:
            module = real_import(name, globals, locals, fromlist, level)
            found = True
            return module
        finally:
            in_progress.pop()
            if by_daemon and not (name == "daemon" or name.startswith("daemon.")):
                imports.append(
                    {"module": name, "bytes": rss_bytes() - before, "s": time.perf_counter() - started, "phase": phase[0], "found": found}
                )

    builtins.__import__ = hooked
    for name in ("numpy", "cv2", "yaml"):  # the three dependencies first, each measured alone
        __import__(name)
        mark(f"import {name}")
    import daemon.__main__ as cli
    import daemon.app

    mark("import daemon (picamd run's imports)")
    phase[0] = "first use"
    apps: list = []
    App = daemon.app.App
    real_init, real_start = App.__init__, App.start

    def init(self, *args, **kwargs):
        mark("App() begins: config loaded, logging set")
        real_init(self, *args, **kwargs)
        mark("App() built: source open, first frame, ring planned")
        apps.append(self)

    def start(self):
        real_start(self)
        mark("started: every thread running")

    App.__init__, App.start = init, start  # type: ignore[method-assign]

    def watch() -> None:
        while not apps or apps[0].ring.fill < apps[0].ring.capacity:
            time.sleep(0.5)
        app = apps[0]
        mark("ring full")
        time.sleep(SETTLE_S)
        samples = []
        for _ in range(5):
            st = status_kib()
            samples.append((st["VmRSS"] * 1024, st["RssAnon"] * 1024))
            time.sleep(1.0)
        samples.sort()
        stages.append(("ring full, settled (median of 5)", *samples[2]))
        phase[0] = "optional"
        data = {
            "stages": stages,
            "imports": imports,
            "components": _component_buffers(app),
            "ring": {"capacity": app.ring.capacity, "bytes": app.ring.nbytes, "shape": list(app.ring.shape)},
            "threads": sorted(t.name for t in threading.enumerate() if t is not threading.current_thread()),
            "tasks": len(os.listdir("/proc/self/task")) - 1,  # without this watcher
            "unused": sorted(m for m in UNUSED if m not in sys.modules),
            "loaded": sorted(m for m in UNUSED if m in sys.modules),
            "synthetic": bool(getattr(app, "synthetic", False)),
            "dont_write_bytecode": sys.dont_write_bytecode,
        }
        optional: list[dict[str, Any]] = []
        for module, feature in OPTIONAL:
            before = rss_bytes()
            try:
                __import__(module)
            except Exception as exc:  # not installed here: say so instead of a figure
                optional.append({"module": module, "feature": feature, "error": f"{type(exc).__name__}: {exc}"[:120]})
                continue
            optional.append({"module": module, "feature": feature, "bytes": rss_bytes() - before})
        data["optional"] = optional
        with open(report_path, "w") as fh:
            json.dump(data, fh)
        os.kill(os.getpid(), signal.SIGTERM)  # picamd's own handler stops the daemon

    threading.Thread(target=watch, name="bench-watch", daemon=True).start()
    return cli.main(daemon_args)


def _component_buffers(app: Any) -> list[tuple[str, int]]:
    """The bytes of numpy arrays and byte strings (64 KiB or more) each component holds, each buffer counted once."""
    import collections

    import numpy as np

    seen: set[int] = set()

    def held(root: object) -> int:
        total = 0
        todo: list[tuple[object, int]] = [(root, 0)]
        while todo:
            obj, depth = todo.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, np.ndarray):
                base = obj
                while isinstance(base.base, np.ndarray):
                    base = base.base
                if id(base) != id(obj):
                    if id(base) in seen:
                        continue
                    seen.add(id(base))
                total += base.nbytes
                continue
            if isinstance(obj, (bytes, bytearray)):
                total += len(obj) if len(obj) >= 65536 else 0
                continue
            if depth >= 6:
                continue
            children: list[object] = []
            if isinstance(obj, dict):
                children = list(obj.values())
            elif isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
                children = list(obj)
            elif type(obj).__module__.startswith("daemon"):
                children = list(getattr(obj, "__dict__", {}).values())
                children += [getattr(obj, s) for s in getattr(type(obj), "__slots__", ()) if hasattr(obj, s)]
            todo.extend((c, depth + 1) for c in children)
        return total

    parts = [
        ("ring", app.ring),
        ("newest full frame", app.latest),
        ("camera source", app.capture),
        ("motion", app.motion),
        ("night", app.night),
        ("JPEG feed", app.feed),
        ("export", app.exporter),
        ("detection", app.detection),
        ("clips", app.clips),
        ("notify", app.notifier),
        ("HTTP server", app.mjpeg),
        ("command port", app.control),
        ("PTZ", app.ptz),
        ("the rest of the app", app),
    ]
    return [(name, held(obj)) for name, obj in parts]


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
