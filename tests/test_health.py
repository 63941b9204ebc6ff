"""System figures, the swap guard and systemd notifications, against the real /proc, fake files and real sockets."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import uuid
from pathlib import Path

import pytest

from daemon.config import Config
from daemon.system.health import SwapGuard, SystemHealth, decode_throttled, parse_throttled, system_figures
from daemon.system.systemd import SystemdNotifier

pytestmark = pytest.mark.timeout(60)

NO_VCGENCMD = "picamd-test-no-such-vcgencmd"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_meminfo(path: Path, *, total_kb=948_304, available_kb=512_000, swap_total_kb=102_396, swap_free_kb=102_396) -> None:
    path.write_text(
        f"MemTotal:       {total_kb} kB\n"
        f"MemFree:         40000 kB\n"
        f"MemAvailable:   {available_kb} kB\n"
        f"Buffers:         12000 kB\n"
        f"Cached:         300000 kB\n"
        f"SwapCached:          0 kB\n"
        f"SwapTotal:      {swap_total_kb} kB\n"
        f"SwapFree:       {swap_free_kb} kB\n"
    )


@pytest.fixture
def fake_proc(tmp_path):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "status").write_text("Name:\tpython3\nVmPeak:\t  300000 kB\nVmRSS:\t   81920 kB\nThreads:\t9\n")
    write_meminfo(proc / "meminfo", swap_free_kb=102_396 - 20_480)
    (proc / "loadavg").write_text("0.52 0.31 0.20 2/211 4242\n")
    thermal = tmp_path / "temp"
    thermal.write_text("48312\n")
    return proc, thermal


def fake_vcgencmd(bin_dir: Path, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "vcgencmd"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


# -- figures ----------------------------------------------------------------------------------------


def test_figures_from_the_real_proc(tmp_path):
    figures = SystemHealth(tmp_path, vcgencmd=NO_VCGENCMD, throttled_sysfs_path=tmp_path / "absent").health()
    assert figures["rss_mb"] > 1
    assert 0 < figures["mem_available_mb"] <= figures["mem_total_mb"]
    assert 0 <= figures["swap_used_mb"] <= figures["swap_total_mb"]
    usage = shutil.disk_usage(tmp_path)
    assert figures["disk_total_mb"] == round(usage.total / 2**20, 1)
    assert figures["disk_free_mb"] == pytest.approx(usage.free / 2**20, rel=0.02, abs=64)
    assert len(figures["load_avg"]) == 3 and all(x >= 0 for x in figures["load_avg"])
    assert figures["cpu_count"] == os.cpu_count()
    assert figures["cpu_temp_c"] is None or 0 < figures["cpu_temp_c"] < 120
    assert figures["throttling"] is None and figures["throttling_error"] is None  # not a Pi
    assert set(system_figures(str(tmp_path))) == set(figures)


def test_figures_from_fake_files(fake_proc, tmp_path):
    proc, thermal = fake_proc
    figures = SystemHealth(
        tmp_path, proc_dir=proc, thermal_path=thermal, vcgencmd=NO_VCGENCMD, throttled_sysfs_path=tmp_path / "absent"
    ).health()
    assert figures["rss_mb"] == 80.0
    assert figures["mem_total_mb"] == 926.1
    assert figures["mem_available_mb"] == 500.0
    assert figures["swap_total_mb"] == 100.0
    assert figures["swap_used_mb"] == 20.0
    assert figures["cpu_temp_c"] == 48.3
    assert figures["load_avg"] == [0.52, 0.31, 0.2]


def test_missing_or_broken_files_give_none_not_errors(tmp_path):
    proc = tmp_path / "empty-proc"
    proc.mkdir()
    (tmp_path / "temp").write_text("not a number\n")
    figures = SystemHealth(
        tmp_path / "captures" / "2024-06-01",
        proc_dir=proc,
        thermal_path=tmp_path / "temp",
        vcgencmd=NO_VCGENCMD,
        throttled_sysfs_path=tmp_path / "absent",
    ).health()
    for key in ("rss_mb", "mem_total_mb", "mem_available_mb", "swap_total_mb", "swap_used_mb", "cpu_temp_c", "load_avg"):
        assert figures[key] is None, key
    # The captures folder does not exist yet: the figures are those of the filesystem it will be on.
    assert figures["disk_total_mb"] == round(shutil.disk_usage(tmp_path).total / 2**20, 1)


def test_meminfo_without_memavailable_falls_back_to_free_plus_caches(tmp_path, fake_proc):
    proc, _ = fake_proc
    (proc / "meminfo").write_text("MemTotal: 500000 kB\nMemFree: 10240 kB\nBuffers: 10240 kB\nCached: 20480 kB\n")
    figures = SystemHealth(tmp_path, proc_dir=proc, vcgencmd=NO_VCGENCMD, throttled_sysfs_path=tmp_path / "absent").health()
    assert figures["mem_available_mb"] == 40.0
    assert figures["swap_used_mb"] is None


# -- throttling -------------------------------------------------------------------------------------


def test_decode_throttled_bits():
    clean = decode_throttled(0)
    assert clean["raw"] == "0x0" and clean["problems"] == []
    assert not any(clean["now"].values()) and not any(clean["since_boot"].values())

    d = decode_throttled(0x50005)
    assert d["now"] == {"under_voltage": True, "arm_freq_capped": False, "throttled": True, "soft_temp_limit": False}
    assert d["since_boot"] == {"under_voltage": True, "arm_freq_capped": False, "throttled": True, "soft_temp_limit": False}
    assert d["problems"] == ["under-voltage now", "throttled now"]  # since-boot repeats of what is on now are not listed twice

    past = decode_throttled(0xA0008)
    assert past["now"]["soft_temp_limit"] and not past["now"]["arm_freq_capped"]
    assert past["since_boot"]["arm_freq_capped"] and past["since_boot"]["soft_temp_limit"]
    assert past["problems"] == ["soft temperature limit now", "arm frequency capped since boot"]

    assert parse_throttled("throttled=0x50005\n") == 0x50005
    assert parse_throttled("50000\n") == 0x50000
    for bad in ("", "throttled=", "throttled=zz"):
        with pytest.raises(ValueError):
            parse_throttled(bad)


def test_vcgencmd_is_decoded_and_run_at_most_every_30_s(tmp_path, monkeypatch, caplog):
    runs = tmp_path / "runs"
    answer = tmp_path / "answer"
    answer.write_text("throttled=0x50005\n")
    fake_vcgencmd(tmp_path / "bin", f'echo run >> "{runs}"\n[ "$1" = get_throttled ] || exit 2\ncat "{answer}"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    clock = FakeClock()
    probe = SystemHealth(tmp_path, clock=clock)
    with caplog.at_level(logging.INFO, logger="picamd.health"):
        first = probe.health()["throttling"]
    assert first["now"]["under_voltage"] and first["now"]["throttled"] and first["since_boot"]["under_voltage"]
    assert any("under-voltage now" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)

    answer.write_text("throttled=0x0\n")
    clock.now += 10
    assert probe.health()["throttling"]["raw"] == "0x50005"  # cached
    assert runs.read_text().count("run") == 1
    clock.now += 25
    second = probe.health()
    assert second["throttling"]["raw"] == "0x0" and second["throttling_error"] is None
    assert runs.read_text().count("run") == 2


def test_vcgencmd_failures_give_none_with_a_reason(tmp_path, monkeypatch, caplog):
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    clock = FakeClock()

    fake_vcgencmd(bin_dir, 'echo "VCHI initialization failed" >&2\nexit 255\n')
    probe = SystemHealth(tmp_path, clock=clock)
    with caplog.at_level(logging.WARNING, logger="picamd.health"):
        figures = probe.health()
    assert figures["throttling"] is None
    assert figures["throttling_error"] == "vcgencmd get_throttled exited 255: VCHI initialization failed"
    assert any("cannot read throttling" in r.getMessage() for r in caplog.records)

    fake_vcgencmd(bin_dir, "echo 'something else entirely'\n")
    clock.now += 31
    figures = probe.health()
    assert figures["throttling"] is None and "unexpected get_throttled output" in figures["throttling_error"]

    # A hung vcgencmd (and anything it started) is killed after the timeout.
    fake_vcgencmd(bin_dir, "sleep 30 &\nsleep 30\n")
    hung = SystemHealth(tmp_path, vcgencmd_timeout_s=0.5, clock=clock)
    figures = hung.health()
    assert figures["throttling"] is None and figures["throttling_error"] == "vcgencmd get_throttled gave no answer within 0.5 s"


def test_sysfs_throttled_is_used_without_vcgencmd(tmp_path):
    sysfs = tmp_path / "get_throttled"
    sysfs.write_text("50000\n")
    throttling = SystemHealth(tmp_path, vcgencmd=NO_VCGENCMD, throttled_sysfs_path=sysfs).health()["throttling"]
    assert not any(throttling["now"].values())
    assert throttling["since_boot"]["under_voltage"] and throttling["since_boot"]["throttled"]
    assert throttling["problems"] == ["under-voltage since boot", "throttled since boot"]


# -- swap guard -------------------------------------------------------------------------------------


def _mb_kb(mb: float) -> int:
    return int(mb * 1024)


def test_swap_guard_engages_and_disengages(tmp_path, caplog):
    config = Config()
    config.set("health.swap_guard_mb", 64)
    config.set("health.swap_guard_factor", 2)
    meminfo = tmp_path / "meminfo"
    swap_total = _mb_kb(1024)

    def swap_used(mb: float) -> None:
        write_meminfo(meminfo, swap_total_kb=swap_total, swap_free_kb=swap_total - _mb_kb(mb))

    swap_used(10)
    clock = FakeClock()
    guard = SwapGuard(config.section("health"), meminfo_path=meminfo, clock=clock)
    assert guard.factor() == 1.0 and not guard.active

    swap_used(100)
    clock.now += 1
    assert guard.factor() == 1.0  # meminfo is read at most every 5 s
    caplog.set_level(logging.INFO, logger="picamd.health")
    clock.now += 5
    assert guard.factor() == 2.0 and guard.active
    assert any("swap guard on: 100 MiB" in r.getMessage() for r in caplog.records)
    assert guard.health() == {"active": True, "swap_used_mb": 100.0, "limit_mb": 64.0, "factor": 2.0, "engaged_count": 1}

    config.set("health.swap_guard_factor", 3)  # applies live
    assert guard.factor() == 3.0

    swap_used(60)  # below the limit but within its 10% margin: stays on, no flapping
    clock.now += 5
    assert guard.factor() == 3.0 and guard.active

    swap_used(20)
    clock.now += 5
    assert guard.factor() == 1.0 and not guard.active
    assert any("swap guard off: swap in use down to 20 MiB" in r.getMessage() for r in caplog.records)

    swap_used(100)
    meminfo.unlink()  # unreadable: the guard stays off rather than guessing
    clock.now += 5
    assert guard.factor() == 1.0 and not guard.active and guard.health()["swap_used_mb"] is None


def test_swap_guard_against_the_real_proc():
    config = Config()
    config.set("health.swap_guard_mb", 1_000_000)  # far above any real swap use
    guard = SwapGuard(config.section("health"))
    assert guard.factor() == 1.0 and not guard.active
    assert guard.health()["swap_used_mb"] is not None


# -- systemd notifications --------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    if len(str(path)) >= 100:  # AF_UNIX paths are limited to 107 bytes
        path = Path("/tmp") / f"picamd-notify-{uuid.uuid4().hex[:12]}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, str(path)
    sock.close()
    path.unlink(missing_ok=True)


def test_notifier_sends_datagrams(notify_socket):
    sock, path = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready()
    assert sock.recv(4096) == b"READY=1"
    assert notifier.status("camera ok,\n12.0 fps")
    assert sock.recv(4096) == b"STATUS=camera ok, 12.0 fps"  # one line, whatever the caller passes
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_notifier_abstract_socket():
    name = f"picamd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("\0" + name)
    except OSError as exc:
        sock.close()
        pytest.skip(f"abstract unix sockets are not supported here: {exc}")
    try:
        sock.settimeout(10)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_notifier_is_a_silent_no_op_outside_systemd(tmp_path, caplog):
    off = SystemdNotifier({})
    assert not off.enabled
    assert not off.ready() and not off.watchdog() and not off.status("x") and not off.stopping()
    assert off.watchdog_interval() is None

    # A socket that has gone away: False, one warning, never an exception.
    gone = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.WARNING, logger="picamd.systemd"):
        assert gone.enabled
        assert not gone.ready()
        assert not gone.watchdog()
    assert sum("cannot notify systemd" in r.getMessage() for r in caplog.records) == 1

    assert not SystemdNotifier({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_notifier_recovers_when_the_socket_comes_back(tmp_path):
    path = tmp_path / "n.sock"
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
    assert not notifier.watchdog()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        sock.settimeout(10)
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_watchdog_interval():
    me = str(os.getpid())
    assert SystemdNotifier({"WATCHDOG_USEC": "4000000"}).watchdog_interval() == 4.0
    assert SystemdNotifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": me}).watchdog_interval() == 4.0
    assert SystemdNotifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval() is None
    assert SystemdNotifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "x"}).watchdog_interval() is None
    for bad in ("0", "-5", "soon", ""):
        assert SystemdNotifier({"WATCHDOG_USEC": bad}).watchdog_interval() is None
