"""Runs the real daemon as a subprocess on free loopback ports and talks to it like netcat and curl do."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.02):
    """Poll `predicate` until it is truthy or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def send(port: int, *lines: str | bytes, timeout: float = 20.0) -> str:
    """Send lines on one connection, half-close, and read everything (what `printf ... | nc` does)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for line in lines:
            sock.sendall(line if isinstance(line, bytes) else line.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def replies(text: str) -> list[str]:
    """Split a connection's output into replies (each ends with an empty line)."""
    return [r for r in text.split("\n\n") if r.strip()]


def reply_json(reply: str) -> Any:
    _first, _, body = reply.partition("\n")
    return json.loads(body)


class Daemon:
    def __init__(
        self,
        workdir: Path,
        overrides: dict[str, Any] | None = None,
        source: str = "synthetic",
        env: dict[str, str] | None = None,
        control_port: int | None = None,
        http_port: int | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.args = args or []  # more command-line arguments (--http-port 8081, ...)
        self.control_port = control_port or free_port()
        self.http_port = http_port or free_port()
        self.source = source
        self.env = env or {}
        base: dict[str, Any] = {
            "camera": {"width": 640, "height": 480, "framerate": 15.0, "stall_timeout_s": 2.0, "reopen_backoff_max_s": 1.0},
            "ring": {"size": 60, "downscale": "160x120"},
            "control": {"bind": "127.0.0.1", "port": self.control_port},
            "http": {"bind": "127.0.0.1", "port": self.http_port},
            "export": {"base_dir": str(workdir / "captures"), "auto_save_interval_s": 0},
            "motion": {"log_dir": str(workdir / "logs")},
            "logging": {"level": "DEBUG"},
        }
        for dotted, value in (overrides or {}).items():
            node: dict[str, Any] = base
            *parents, leaf = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(base))
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "daemon.log"

    def start(self, wait: bool = True) -> Daemon:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "--config", str(self.config_path), "--source", self.source, *self.args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                out = send(self.control_port, "status", timeout=2)
                if out.startswith("OK") and '"frame_id"' in out:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"daemon not ready in {timeout} s:\n{self.log()}")

    def cmd(self, *lines: str | bytes) -> str:
        return send(self.control_port, *lines)

    def http(self, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> float:
        """SIGTERM and wait; returns how long the exit took."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._log.close()
        return time.monotonic() - t0
