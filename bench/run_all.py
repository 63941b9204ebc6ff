"""Runs every benchmark, one after the other, each in its own process, and sums up the verdicts.

    .venv/bin/python bench/run_all.py            # all of them (make bench), a few minutes
    .venv/bin/python bench/run_all.py ingest motion

Each script prints its tables and ends with a `VERDICT name: MET|MISSED - ...`
line; the summary repeats those lines. Missed targets are figures, not
failures: the exit status is non-zero only when a script could not run.
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["ingest", "stacking", "motion", "memory", "health_rtt", "mjpeg_clients", "detect", "detect_loop", "cpu_budget", "ptz_sweep"]


def machine() -> str:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep:
                    info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    # x86 names the CPU in "model name"; a Raspberry Pi names the board in "Model".
    model = info.get("model name") or info.get("Model") or platform.processor() or platform.machine()
    import cv2
    import numpy

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} CPUs, load average {load}; Python {platform.python_version()}, "
        f"numpy {numpy.__version__}, OpenCV {cv2.__version__}"
    )


def _about(name: str) -> str:
    """The first line of a benchmark script's docstring."""
    try:
        doc = ast.get_docstring(ast.parse((HERE / f"{name}.py").read_text()))
    except (OSError, SyntaxError):
        doc = None
    return (doc or "").split("\n", 1)[0]


def main(argv: list[str]) -> int:
    width = max(map(len, SCRIPTS))
    ap = argparse.ArgumentParser(
        prog="run_all.py",
        description="Run picamd's benchmarks, one after the other, each in its own process, and sum up their verdicts "
        "(missed targets are figures, not failures: the exit status is 1 only when a benchmark could not run).",
        epilog="benchmarks:\n" + "\n".join(f"  {name:<{width}}  {_about(name)}" for name in SCRIPTS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("names", nargs="*", metavar="NAME", help="the benchmarks to run, in this order (default: all of them)")
    wanted = ap.parse_args(argv).names or SCRIPTS
    unknown = [w for w in wanted if w not in SCRIPTS]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(SCRIPTS)}")
    print(f"picamd benchmarks on {machine()}\n", flush=True)
    verdicts: list[str] = []
    failed: list[str] = []
    started = time.monotonic()
    for name in wanted:
        t0 = time.monotonic()
        print(f"== {name} ==", flush=True)
        proc = subprocess.Popen([sys.executable, str(HERE / f"{name}.py")], stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
        assert proc.stdout is not None
        got_verdict = False
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("VERDICT "):
                verdicts.append(line.rstrip())
                got_verdict = True
        code = proc.wait()
        if code != 0 or not got_verdict:
            failed.append(name)
            verdicts.append(f"VERDICT {name}: DID NOT RUN (exit status {code})")
        print(f"({name}: {time.monotonic() - t0:.0f} s)\n", flush=True)
    print("== summary ==")
    for v in verdicts:
        print(v)
    print(f"total {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
