"""Helpers shared by the benchmark scripts: the daemon as a subprocess, clients, process figures, tables.

The benchmarks print figures; they assert nothing. Everything runs on
loopback with free ports, and every figure that is compared is measured in
the same run, side by side, repeated, with the median taken: the machine may
be shared and noisy, so ratios measured together mean more than absolute
times.

Run as a script, this module is the viewer process of the other benchmarks:

    python bench/benchlib.py viewers --port 8080 --count 4 --seconds 20

attaches COUNT MJPEG viewers to /stream and prints one JSON line with the
frames each received when the time is up (or when stdin closes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the scripts run as `python bench/x.py`: make the daemon package importable
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from daemon.config import nest  # noqa: E402

#: The scene of every benchmark, as the issue asks: synthetic source at 1024x768, ring 256x192.
FRAME_W, FRAME_H = 1024, 768
RING_W, RING_H = 256, 192
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- numbers and tables ---------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return float(ordered[rank - 1])


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain text table, columns right-aligned except the first."""
    cells = [[str(h) for h in header]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title]
    for n, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=False)]
        lines.append("  " + "  ".join(parts).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return "-" if value is None else str(value)


def verdict(name: str, met: bool, text: str) -> str:
    """The one-line verdict every script ends with; run_all.py collects these lines."""
    return f"VERDICT {name}: {'MET' if met else 'MISSED'} - {text}"


# --- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        data = fh.read()
    # The command name (field 2) may hold spaces and parentheses; the fields after its last ')' are fixed.
    fields = data[data.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """VmRSS of a process."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def nc(port: int, line: str, timeout: float = 20.0) -> str:
    """What `echo LINE | nc 127.0.0.1 PORT` does: connect, send, half-close, read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(line.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def http_json(port: int, path: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
        return json.loads(resp.read())


class DaemonProcess:
    """`python -m daemon --source synthetic` with a temporary config on free loopback ports."""

    def __init__(self, overrides: dict[str, Any] | None = None, name: str = "picamd") -> None:
        self.name = name
        self._tmp = tempfile.TemporaryDirectory(prefix="picamd-bench-")
        work = Path(self._tmp.name)
        self.control_port = free_port()
        self.http_port = free_port()
        values = {
            "camera.width": FRAME_W,
            "camera.height": FRAME_H,
            "camera.framerate": 10.0,
            "ring.size": 300,
            "ring.downscale": f"{RING_W}x{RING_H}",
            "control.bind": "127.0.0.1",
            "control.port": self.control_port,
            "http.bind": "127.0.0.1",
            "http.port": self.http_port,
            "export.base_dir": str(work / "captures"),
            "export.auto_save_interval_s": 0,
            "motion.log_dir": str(work / "logs"),
            "logging.level": "WARNING",
        }
        values.update(overrides or {})
        self.config_path = work / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(nest(values)))
        self.log_path = work / "daemon.log"
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> DaemonProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "--config", str(self.config_path), "--source", "synthetic"],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the daemon answers `status` with a frame."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                out = nc(self.control_port, "status", timeout=2)
                if out.startswith("OK") and '"frame_id"' in out:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready within {timeout:g} s:\n{self.log_tail()}")

    def health(self) -> dict[str, Any]:
        return http_json(self.http_port, "/health")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()
        self._tmp.cleanup()

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --- MJPEG viewers ---------------------------------------------------------------------------------


class Viewer:
    """One /stream client on its own thread: parses the multipart parts and counts them.

    Reads whole parts (headers, Content-Length bytes of JPEG), so it consumes
    the stream the way VLC or OpenCV would; it does not decode the JPEGs.
    """

    def __init__(self, port: int, path: str = "/stream") -> None:
        self.port = port
        self.path = path
        self.frames = 0
        self.ids: set[int] = set()
        self.bytes = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bench-viewer", daemon=True)

    def start(self) -> Viewer:
        self._thread.start()
        return self

    def counts(self) -> tuple[int, int]:
        """(parts received, distinct frame ids received) so far."""
        with self._lock:
            return self.frames, len(self.ids)

    def stop(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=15)
            self._sock = sock
            sock.sendall(f"GET {self.path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            stream = sock.makefile("rb", buffering=256 * 1024)
            status = stream.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"stream answered {status!r}")
            while stream.readline() not in (b"\r\n", b""):
                pass  # response headers
            while not self._stop.is_set():
                length, frame_id = -1, None
                while True:
                    line = stream.readline()
                    if not line:
                        return
                    if line == b"\r\n":
                        if length >= 0:
                            break
                        continue  # the CRLF that ends the previous part
                    name, _, value = line.partition(b":")
                    lname = name.strip().lower()
                    if lname == b"content-length":
                        length = int(value)
                    elif lname == b"x-frame-id":
                        frame_id = int(value)
                body = stream.read(length)
                if len(body) < length:
                    return
                with self._lock:
                    self.frames += 1
                    self.bytes += length
                    if frame_id is not None:
                        self.ids.add(frame_id)
        except (OSError, ValueError, RuntimeError) as exc:
            if not self._stop.is_set():
                self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if self._sock is not None:
                self._sock.close()


def wait_for(condition: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return condition()


def viewers_process(port: int, count: int, seconds: float) -> subprocess.Popen:
    """COUNT viewers in their own process, so their reading never competes with the caller's threads for the GIL."""
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "viewers", "--port", str(port), "--count", str(count), "--seconds", str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _viewers_main(port: int, count: int, seconds: float) -> None:
    viewers = [Viewer(port).start() for _ in range(count)]
    wait_for(lambda: all(v.frames > 0 or v.error for v in viewers), 15)
    print(json.dumps({"ready": True}), flush=True)
    done = threading.Event()

    def end_with_stdin() -> None:
        sys.stdin.read()  # the parent closes stdin to end early
        done.set()

    threading.Thread(target=end_with_stdin, daemon=True).start()
    done.wait(seconds)
    for v in viewers:
        v.stop()
    print(json.dumps({"frames": [v.frames for v in viewers], "errors": [v.error for v in viewers if v.error]}), flush=True)


# --- synthetic frames ------------------------------------------------------------------------------


def synthetic_frames(count: int, *, fps: float = 10.0, noise: float | None = None, start_phase: float = 0.5, seed: int = 1):
    """`count` consecutive 1024x768 frames of the synthetic scene at noon (fresh arrays, as a camera delivers)."""
    from daemon.config import Config
    from daemon.sources.synthetic import SyntheticSource

    values: dict[str, Any] = {
        "camera.width": FRAME_W,
        "camera.height": FRAME_H,
        "camera.framerate": fps,
        "synthetic.start_phase": start_phase,
        "synthetic.seed": seed,
    }
    if noise is not None:
        values["synthetic.noise"] = noise
    config = Config(values)
    source = SyntheticSource(config.section("camera"), config.section("synthetic"))
    source.open()
    try:
        return [source.frame_at(k / fps, k) for k in range(count)], source.machine_rect()
    finally:
        source.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("viewers")
    v.add_argument("--port", type=int, required=True)
    v.add_argument("--count", type=int, required=True)
    v.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    if args.cmd == "viewers":
        _viewers_main(args.port, args.count, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
