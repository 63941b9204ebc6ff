"""Disk writes: what the daemon writes a day at the shipped settings (the SD card's budget).

Runs the real daemon (`python -m daemon --source synthetic`) on `config.yaml`
as shipped (its one motion region on the synthetic machine, motion logs at
their defaults), changed only so that it listens on loopback ports and
writes its logs and captures into a temporary folder; auto-save is off for
the run and measured apart. After a warm-up, `/proc/PID/io` is read at the
start and the end of `--minutes` and nothing talks to the daemon in
between:

- `wchar`: bytes the daemon passed to write() (files, and its log output on
  stdout, which journald stores on a Pi),
- `write_bytes`: bytes it caused to be written to storage (the kernel counts
  a whole page each time a clean page of the page cache is dirtied, so this
  is what a small append really costs the disk before the file system's own
  journal),
- the growth of the motion log files and of the log output,

each extrapolated to a day. Auto-saves (hourly by default) are then measured
from real saves: `save` (what an auto-save writes by day: one JPEG and its
sidecar) and `stack` (by night: a stack of `export.stack_count` frames), their
`/proc/PID/io` deltas and file sizes, counted 12 of each a day.

    .venv/bin/python bench/disk_writes.py [--minutes 5] [--dir /var/tmp] [--set motion.log_frames=true]

Run it on the Pi's SD card (`--dir` on it) for that card's figure; the
synthetic scene's day lasts 10 minutes (`synthetic.day_length_s`), so its night
switches and machine stops come far more often than a real day's: the log
output and state changes are an upper bound.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib as bl
import yaml

DAY = 86400.0
SAVES_A_DAY = 24  # export.auto_save_interval_s 3600
NIGHT_SHARE = 0.5  # of the auto-saves, the night ones (a stack)
WARMUP_S = 10.0


def io(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/io") as fh:
        return {k: int(v) for k, v in (line.split(": ") for line in fh)}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def config(work: Path, control: int, http: int, changes: list[str] | None = None) -> dict[str, Any]:
    tree = yaml.safe_load((bl.ROOT / "config.yaml").read_text()) or {}
    for change in changes or []:
        key, _, value = change.partition("=")
        *parents, leaf = key.strip().split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    tree.setdefault("control", {}).update({"bind": "127.0.0.1", "port": control})
    tree.setdefault("http", {}).update({"bind": "127.0.0.1", "port": http})
    tree.setdefault("export", {}).update({"base_dir": str(work / "captures"), "auto_save_interval_s": 0})
    tree.setdefault("motion", {})["log_dir"] = str(work / "logs")
    for section in ("mqtt", "metrics"):  # nothing else may talk to the daemon during the run
        if isinstance(tree.get(section), dict) and "enabled" in tree[section]:
            tree[section]["enabled"] = False
    return tree


def command(port: int, line: str, timeout: float = 60.0) -> dict[str, Any]:
    """One command on a connection kept open until its reply (a `stack` is cancelled when the client leaves)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n\n") and (chunk := sock.recv(65536)):
            data += chunk
    status, _, body = data.decode(errors="replace").partition("\n")
    if not status.startswith("OK"):
        raise RuntimeError(f"{line!r} answered {status}")
    return json.loads(body) if body.strip() else {}


def measure(minutes: float, base: str | None, changes: list[str] | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="picamd-disk-", dir=base) as tmp:
        work = Path(tmp)
        control, http = bl.free_port(), bl.free_port()
        tree = config(work, control, http, changes)
        (work / "config.yaml").write_text(yaml.safe_dump(tree))
        out_path = work / "daemon.out"
        with open(out_path, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--config", str(work / "config.yaml"), "--source", "synthetic"],
                cwd=work,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                return _run(proc, work, control, minutes, tree, out_path)
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()


def _run(proc: subprocess.Popen, work: Path, control: int, minutes: float, tree: dict[str, Any], out_path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited:\n{out_path.read_text(errors='replace')[-3000:]}")
        try:
            if bl.nc(control, "status", 2).startswith("OK"):
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the daemon did not answer within 60 s")
        time.sleep(0.2)
    time.sleep(WARMUP_S)
    logs = work / "logs"
    health = command(control, "health")
    frames0 = int(health.get("motion", {}).get("frames", 0))
    before, logs0, out0, t0 = io(proc.pid), folder_bytes(logs), out_path.stat().st_size, time.monotonic()
    time.sleep(minutes * 60)
    after, logs1, out1, t1 = io(proc.pid), folder_bytes(logs), out_path.stat().st_size, time.monotonic()
    health = command(control, "health")
    motion = health.get("motion", {})
    log_files = sorted(p.name for p in logs.iterdir()) if logs.exists() else []
    elapsed = t1 - t0

    # Real saves, each with its own io delta: one frame (a day's auto-save) and a stack (a night's).
    saves = {}
    for kind, line in (("frame", "save"), ("stack", "stack")):
        captures0 = folder_bytes(work / "captures")
        io0 = io(proc.pid)
        command(control, line, timeout=120)
        io1 = io(proc.pid)
        saves[kind] = {
            "file_bytes": folder_bytes(work / "captures") - captures0,
            "wchar": io1["wchar"] - io0["wchar"],
            "write_bytes": io1["write_bytes"] - io0["write_bytes"],
        }

    scale = DAY / elapsed
    per_day_saves = {k: SAVES_A_DAY * (NIGHT_SHARE if k == "stack" else 1 - NIGHT_SHARE) for k in saves}
    saves_day = {field: sum(saves[k][field] * n for k, n in per_day_saves.items()) for field in ("file_bytes", "wchar", "write_bytes")}
    regions = tree.get("motion", {}).get("regions", [])
    return {
        "minutes": elapsed / 60,
        "frames": int(motion.get("frames", 0)) - frames0,
        "regions": len(regions),
        "log_files": log_files,
        "summaries": motion.get("log", {}).get("summaries"),
        "day": {
            "wchar": (after["wchar"] - before["wchar"]) * scale,
            "write_bytes": (after["write_bytes"] - before["write_bytes"]) * scale,
            "motion_logs": (logs1 - logs0) * scale,
            "log_output": (out1 - out0) * scale,
            "saves_files": saves_day["file_bytes"],
            "saves_wchar": saves_day["wchar"],
            "saves_write_bytes": saves_day["write_bytes"],
        },
        "saves": saves,
        "stack_count": tree.get("export", {}).get("stack_count", 16),
    }


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def main() -> int:
    ap = argparse.ArgumentParser(description="What picamd writes to disk a day at the shipped settings")
    ap.add_argument("--minutes", type=float, default=5.0, help="how long to measure (default 5)")
    ap.add_argument("--dir", help="where the daemon writes during the run (default: the system's temp folder)")
    ap.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="change a key of config.yaml for the run, e.g. --set motion.log_frames=true (repeatable)",
    )
    args = ap.parse_args()
    if not args.minutes > 0:
        ap.error("--minutes must be positive")
    bad = [c for c in args.set if "=" not in c or not c.partition("=")[0].strip()]
    if bad:
        ap.error(f"--set takes KEY=VALUE, not {bad[0]!r}")
    r = measure(args.minutes, args.dir, args.set)
    d = r["day"]
    fps = r["frames"] / (r["minutes"] * 60)
    changed = f" with {', '.join(args.set)}" if args.set else ""
    print(
        f"config.yaml as shipped{changed}, synthetic source, {r['regions']} motion region(s), {r['minutes']:.1f} min measured "
        f"({r['frames']} frames, {fps:.1f} fps); files in the log folder: {', '.join(r['log_files']) or 'none'}"
    )
    rows = [
        ("motion logs (file growth)", mb(d["motion_logs"])),
        ("log output on stdout (file growth; journald on a Pi)", mb(d["log_output"])),
        ("all write() calls (wchar)", mb(d["wchar"])),
        ("pages dirtied for storage (write_bytes)", mb(d["write_bytes"])),
        (f"auto-saves: 12 frames + 12 stacks of {r['stack_count']} (file sizes)", mb(d["saves_files"])),
        ("auto-saves (write_bytes)", mb(d["saves_write_bytes"])),
        ("total a day: write_bytes of the run + auto-saves", mb(d["write_bytes"] + d["saves_write_bytes"])),
    ]
    print(bl.table("Extrapolated to a day", ("what", "a day"), rows))
    s = r["saves"]
    print(
        f"one save by day: {mb(s['frame']['file_bytes'])} of files, write_bytes {mb(s['frame']['write_bytes'])}; "
        f"one stack by night: {mb(s['stack']['file_bytes'])}, write_bytes {mb(s['stack']['write_bytes'])}"
    )
    print(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
