"""The hardening cases of saving and stacking, against the real daemon through its command port.

Stacks that outgrow the memory budget or whose clients hang up, a stack finished in the background, the
captures folder replaced by a file, and 500 saves on a full disk. One daemon serves the whole file; each
test puts back what it changed.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from daemon_proc import Daemon, replies, reply_json, send, wait_for

FRAME_BYTES = 640 * 480 * 3  # the daemon's synthetic camera: a mean stack holds 5 of these (4.4 MiB)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("faults"), overrides={"control.token": "", "export.stack_method": "sigma_clip"}).start()
    yield d
    d.stop()


def health(d: Daemon) -> dict:
    return reply_json(replies(d.cmd("health"))[0])


def stack_files(d: Daemon) -> list[Path]:
    return sorted((d.workdir / "captures").rglob("*_stack.*"))


def log_lines(d: Daemon, level_pattern: str, text: str) -> list[str]:
    return [
        ln for ln in d.log_path.read_text(errors="replace").splitlines() if re.match(rf"^\S+ \S+ ({level_pattern}) ", ln) and text in ln
    ]


def peak_rss_mb(d: Daemon) -> float:
    assert d.proc is not None
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def open_client(d: Daemon, line: str) -> socket.socket:
    """A client that sends one command and keeps its side open, as a program waiting for the answer does."""
    sock = socket.create_connection(("127.0.0.1", d.control_port), timeout=10)
    sock.sendall(line.encode() + b"\n")
    return sock


def test_stacks_beyond_the_budget_are_refused_and_hung_up_ones_cancelled(daemon):
    """Four `stack 500` with sigma_clip from clients that hang up: 2 GB and minutes of a core for nobody, before."""
    assert replies(daemon.cmd("set export.stack_memory_mb 10"))[0].startswith("OK")
    before = stack_files(daemon)
    peak_before = peak_rss_mb(daemon)
    a = open_client(daemon, "stack 500")
    b = open_client(daemon, "stack 500")
    try:
        # 500 frames for sigma_clip would be 440 MB: each is a mean stack (4.4 MB) instead; two fit in 10 MB
        running = wait_for(
            lambda: len(health(daemon)["export"]["stacks"]["running"]) == 2 and health(daemon)["export"]["stacks"]["running"]
        )
        assert running and all("(mean, 640x480)" in what for what in running), running
        refused = replies(daemon.cmd("stack 500"))[0]
        assert (
            refused.startswith("ERR busy: stack 500 for 127.0.0.1:")
            and "needs 4.4 MB; stacks in progress hold 8.8 MB of export.stack_memory_mb 10 (" in refused
        ), refused
        assert replies(daemon.cmd("set export.stack_memory_mb 3"))[0].startswith("OK")
        too_large = replies(daemon.cmd("stack 5"))[0]
        assert re.match(
            r"^ERR too large: stack 5 for 127\.0\.0\.1:\d+ \(mean, 640x480\) needs 4\.4 MB, more than "
            r"export\.stack_memory_mb 3$",
            too_large,
        ), too_large
    finally:
        a.close()  # the clients hang up
        b.close()
        daemon.cmd("set export.stack_memory_mb 64")
    stacks = wait_for(lambda: (s := health(daemon)["export"]["stacks"])["cancelled"] >= 2 and not s["running"] and s)
    assert stacks and stacks["memory_mb"] == 0 and stacks["refused"] >= 2, stacks
    assert stack_files(daemon) == before  # nothing written for nobody
    assert peak_rss_mb(daemon) - peak_before < 64  # not 500 frames held per stack
    assert log_lines(daemon, "WARNING", "sigma_clip of 500 frames of 640x480 needs")  # the fallback to mean is said


def test_a_client_that_closes_its_side_cancels_its_stack(daemon):
    # `echo "stack 5" | nc -N` closes its sending side at once: the stack is cancelled, and the reply says why
    first = replies(send(daemon.control_port, "stack 5"))[0]
    assert first == "ERR stack cancelled: the client closed the connection", first


def test_a_background_stack_finishes_for_a_client_that_left(daemon):
    out = replies(send(daemon.control_port, "stack 8 png bg", "stack 4 bg"))
    assert out[0].startswith("OK stacking 8 frames in the background (sigma_clip): png into "), out[0]
    job = reply_json(out[0])
    assert job["state"] == "running" and job["frames"] == 8 and job["formats"] == ["png"]
    assert out[1].startswith("ERR busy: a background stack is running"), out[1]
    done = wait_for(lambda: (bg := health(daemon)["export"]["stacks"]["background"])["state"] != "running" and bg)
    assert done["state"] == "saved" and done["done"] == 8, done
    side = json.loads(Path(done["paths"][0]).with_suffix(".json").read_text())["capture"]
    assert side["method"] == "sigma_clip" and side["frames"] == 8 and Path(done["paths"][0]).stat().st_size > 0


def test_captures_folder_replaced_by_a_file(daemon):
    base = daemon.workdir / "captures"
    failed = health(daemon)["export"]["failed_saves"]
    assert replies(daemon.cmd("save"))[0].startswith("OK")
    moved = daemon.workdir / "captures.moved"
    base.rename(moved)
    base.write_text("not a folder")
    try:
        out = replies(daemon.cmd("save", "save png", "list", "health"))
        for reply in out[:2]:
            assert reply == f"ERR disk error: {base} is a file where a folder is needed", reply
        assert out[2] == f"ERR cannot list the captures: {base} is a file where a folder is needed", out[2]
        assert out[3].startswith(f"OK degraded: export (disk error: {base} is a file where a folder is needed)"), out[3]
        export = reply_json(out[3])["export"]
        assert export["failed_saves"] == failed + 2 and export["last_error"].startswith("disk error: ")
    finally:
        base.unlink()
        moved.rename(base)
    assert replies(daemon.cmd("save"))[0].startswith("OK")
    assert "export" not in health(daemon)["degraded"]
    assert "Traceback" not in daemon.log_path.read_text(errors="replace")


def test_five_hundred_saves_on_a_full_disk_log_a_few_lines(daemon):
    failed = health(daemon)["export"]["failed_saves"]
    assert replies(daemon.cmd("set export.min_free_mb 10000000"))[0].startswith("OK")
    try:
        out = replies(send(daemon.control_port, *["save"] * 500, timeout=120))
        assert len(out) == 500 and all(r.startswith("ERR disk full: ") for r in out), out[:2]
        export = health(daemon)["export"]
        assert export["failed_saves"] == failed + 500 and export["disk_full"] is True
    finally:
        assert replies(daemon.cmd("set export.min_free_mb 1"))[0].startswith("OK")
    lines = log_lines(daemon, "WARNING|ERROR|CRITICAL", "disk full")
    assert 1 <= len(lines) <= 3, lines  # one error, one 'degraded'; the other 499 are counted, not logged
    assert replies(daemon.cmd("save"))[0].startswith("OK")
    assert "export" not in health(daemon)["degraded"]
