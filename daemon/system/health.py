"""System health figures (memory, swap, temperature, throttling, disk) and the swap guard.

Everything is read from /proc, /sys and `vcgencmd`; each path is a
constructor argument so tests can point them at fake files. A figure that
cannot be read is None, never an exception: health must answer on any
machine, Pi or not.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.config import Section

log = logging.getLogger("picamd.health")

# Bits of `vcgencmd get_throttled` (documented in the Raspberry Pi firmware docs):
# bits 0-3 describe now, bits 16-19 the same conditions since boot.
THROTTLE_BITS = (
    (0, "under_voltage"),
    (1, "arm_freq_capped"),
    (2, "throttled"),
    (3, "soft_temp_limit"),
)
_THROTTLE_WORDS = {
    "under_voltage": "under-voltage",
    "arm_freq_capped": "arm frequency capped",
    "throttled": "throttled",
    "soft_temp_limit": "soft temperature limit",
}
# Newer Pi kernels also publish the same word in sysfs, without the cost of a subprocess.
SYSFS_THROTTLED = "/sys/devices/platform/soc/soc:firmware/get_throttled"


def decode_throttled(value: int) -> dict[str, Any]:
    """Decode the get_throttled word into flags now and since boot, plus readable problem phrases."""
    now = {name: bool(value >> bit & 1) for bit, name in THROTTLE_BITS}
    since_boot = {name: bool(value >> (bit + 16) & 1) for bit, name in THROTTLE_BITS}
    problems = [f"{_THROTTLE_WORDS[n]} now" for n, on in now.items() if on]
    problems += [f"{_THROTTLE_WORDS[n]} since boot" for n, on in since_boot.items() if on and not now[n]]
    return {"raw": f"0x{value:x}", "now": now, "since_boot": since_boot, "problems": problems}


def parse_throttled(text: str) -> int:
    """'throttled=0x50005' (vcgencmd) or '50005' (sysfs) -> 0x50005. Raises ValueError on anything else."""
    word = text.strip().rpartition("=")[2].strip()
    try:
        return int(word, 16)
    except ValueError:
        raise ValueError(f"unexpected get_throttled output {text.strip()[:60]!r}") from None


def _read_kv_kb(path: Path, wanted: tuple[str, ...]) -> dict[str, int]:
    """'Key:   1234 kB' lines -> {'Key': 1234} (kB) for the wanted keys that are present."""
    out: dict[str, int] = {}
    with open(path, encoding="ascii", errors="replace") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in wanted:
                fields = rest.split()
                if fields:
                    try:
                        out[key] = int(fields[0])
                    except ValueError:
                        pass
    return out


def _mb(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024.0, 1)


def read_meminfo(path: str | os.PathLike = "/proc/meminfo") -> dict[str, float | None]:
    """Memory and swap in MiB from a meminfo file; values that cannot be read are None."""
    try:
        kv = _read_kv_kb(Path(path), ("MemTotal", "MemAvailable", "MemFree", "Buffers", "Cached", "SwapTotal", "SwapFree"))
    except OSError:
        kv = {}
    available = kv.get("MemAvailable")
    if available is None and "MemFree" in kv:  # kernels before 3.14 have no MemAvailable
        available = kv["MemFree"] + kv.get("Buffers", 0) + kv.get("Cached", 0)
    swap_used = kv["SwapTotal"] - kv["SwapFree"] if "SwapTotal" in kv and "SwapFree" in kv else None
    return {
        "mem_total_mb": _mb(kv.get("MemTotal")),
        "mem_available_mb": _mb(available),
        "swap_total_mb": _mb(kv.get("SwapTotal")),
        "swap_used_mb": _mb(swap_used),
    }


class SystemHealth:
    """The machine's figures for `health`. Cheap reads each call; vcgencmd at most every `throttle_every_s`."""

    def __init__(
        self,
        disk_path: str | os.PathLike | Callable[[], str | os.PathLike] = ".",
        *,
        proc_dir: str | os.PathLike = "/proc",
        thermal_path: str | os.PathLike = "/sys/class/thermal/thermal_zone0/temp",
        throttled_sysfs_path: str | os.PathLike = SYSFS_THROTTLED,
        vcgencmd: str = "vcgencmd",
        vcgencmd_timeout_s: float = 2.0,
        throttle_every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._disk_path = disk_path
        self._proc = Path(proc_dir)
        self._thermal = Path(thermal_path)
        self._throttled_sysfs = Path(throttled_sysfs_path)
        self._vcgencmd = vcgencmd
        self._vcgencmd_timeout_s = vcgencmd_timeout_s
        self._throttle_every_s = throttle_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._throttle_at: float | None = None
        self._throttle: tuple[dict[str, Any] | None, str | None] = (None, None)
        self._last_raw: int | None = None
        self._last_throttle_error: str | None = None

    def health(self) -> dict[str, Any]:
        path = self._disk_path() if callable(self._disk_path) else self._disk_path
        return self.figures(path)

    def figures(self, disk_path: str | os.PathLike) -> dict[str, Any]:
        out: dict[str, Any] = {"rss_mb": self._rss_mb()}
        out.update(read_meminfo(self._proc / "meminfo"))
        out["cpu_temp_c"] = self._cpu_temp()
        throttling, error = self._throttling()
        out["throttling"] = throttling
        out["throttling_error"] = error
        out.update(_disk(disk_path))
        out["load_avg"] = self._load_avg()
        out["cpu_count"] = os.cpu_count()
        return out

    # -- the parts
    def _rss_mb(self) -> float | None:
        try:
            kv = _read_kv_kb(self._proc / "self" / "status", ("VmRSS",))
        except OSError:
            return None
        return _mb(kv.get("VmRSS"))

    def _cpu_temp(self) -> float | None:
        try:
            millideg = int(self._thermal.read_text().strip())
        except (OSError, ValueError):
            return None
        return round(millideg / 1000.0, 1)

    def _load_avg(self) -> list[float] | None:
        try:
            fields = (self._proc / "loadavg").read_text().split()
            return [float(f) for f in fields[:3]]
        except (OSError, ValueError):
            return None

    def _throttling(self) -> tuple[dict[str, Any] | None, str | None]:
        with self._lock:
            now = self._clock()
            if self._throttle_at is not None and now - self._throttle_at < self._throttle_every_s:
                return self._throttle
            self._throttle_at = now
            self._throttle = self._read_throttling()
            return self._throttle

    def _read_throttling(self) -> tuple[dict[str, Any] | None, str | None]:
        """(decoded flags, None), or (None, why) when the Pi says nothing; (None, None) off the Pi."""
        binary = shutil.which(self._vcgencmd)
        try:
            if binary is not None:
                returncode, stdout, stderr = _run_with_timeout([binary, "get_throttled"], self._vcgencmd_timeout_s)
                if returncode != 0:
                    why = (stderr or stdout).strip().splitlines()
                    # Typically the daemon's user is not in the video group (no access to /dev/vchiq).
                    raise ValueError(f"vcgencmd get_throttled exited {returncode}" + (f": {why[0][:120]}" if why else ""))
                value = parse_throttled(stdout)
            elif self._throttled_sysfs.exists():
                value = parse_throttled(self._throttled_sysfs.read_text())
            else:
                return None, None
        except subprocess.TimeoutExpired:
            return self._throttle_failed(f"vcgencmd get_throttled gave no answer within {self._vcgencmd_timeout_s:g} s")
        except (OSError, ValueError) as exc:
            return self._throttle_failed(str(exc))
        self._last_throttle_error = None
        decoded = decode_throttled(value)
        if value != self._last_raw:
            self._last_raw = value
            if any(decoded["now"].values()):
                log.warning(
                    "the Pi reports %s (get_throttled %s): check the power supply and cooling",
                    ", ".join(decoded["problems"]),
                    decoded["raw"],
                )
            elif decoded["problems"]:
                log.info("the Pi reports %s (get_throttled %s)", ", ".join(decoded["problems"]), decoded["raw"])
        return decoded, None

    def _throttle_failed(self, why: str) -> tuple[None, str]:
        if why != self._last_throttle_error:  # once per distinct reason, not every 30 s
            log.warning("cannot read throttling: %s", why)
            self._last_throttle_error = why
        return None, why


def _run_with_timeout(argv: list[str], timeout: float) -> tuple[int, str, str]:
    """Run a command; on timeout kill its whole process group, so a hung helper it started cannot hold us either."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.communicate()
        raise
    return proc.returncode, stdout, stderr


def _disk(path: str | os.PathLike) -> dict[str, float | None]:
    """Free and total MiB of the filesystem holding `path` (or its nearest existing parent: the folder may not exist yet)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return {"disk_free_mb": None, "disk_total_mb": None}
    return {
        "disk_free_mb": round(st.f_bavail * st.f_frsize / 2**20, 1),  # what an unprivileged writer can still use
        "disk_total_mb": round(st.f_blocks * st.f_frsize / 2**20, 1),
    }


def system_figures(disk_path: str | os.PathLike, probe: SystemHealth | None = None) -> dict[str, Any]:
    """The machine's figures for `disk_path`. Pass the daemon's long-lived `probe` so vcgencmd
    runs at most every 30 s; without one, every call reads everything afresh."""
    return (probe or SystemHealth()).figures(disk_path)


class SwapGuard:
    """The seed's swap guard: while swap in use exceeds `health.swap_guard_mb`, the capture runs slower.

    `factor()` is called by the capture loop on every frame, so it only re-reads
    meminfo every `refresh_s`. The loop multiplies its frame interval by the
    factor. It turns off again once swap use falls below 90% of the threshold,
    so a value hovering at the threshold does not flap on and off.
    """

    _OFF_RATIO = 0.9

    def __init__(
        self,
        cfg: Section,
        *,
        meminfo_path: str | os.PathLike = "/proc/meminfo",
        refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._meminfo = Path(meminfo_path)
        self._refresh_s = refresh_s
        self._clock = clock
        self._next_read: float | None = None
        self._active = False
        self._swap_used_mb: float | None = None
        self._engaged_count = 0
        self._read_failed = False

    @property
    def active(self) -> bool:
        return self._active

    def factor(self) -> float:
        now = self._clock()
        if self._next_read is None or now >= self._next_read:
            self._next_read = now + self._refresh_s
            self._update()
        return float(self._cfg.swap_guard_factor) if self._active else 1.0

    def _update(self) -> None:
        used = read_meminfo(self._meminfo)["swap_used_mb"]
        if used is None:
            if not self._read_failed:
                log.warning("swap guard cannot read %s; it stays off", self._meminfo)
                self._read_failed = True
            self._swap_used_mb = None
            self._set_active(False, None)
            return
        self._read_failed = False
        self._swap_used_mb = used
        threshold = float(self._cfg.swap_guard_mb)
        if self._active:
            self._set_active(used > threshold * self._OFF_RATIO, used)
        else:
            self._set_active(used > threshold, used)

    def _set_active(self, active: bool, used: float | None) -> None:
        if active == self._active:
            return
        self._active = active
        threshold = self._cfg.swap_guard_mb
        if active:
            self._engaged_count += 1
            log.warning(
                "swap guard on: %.0f MiB of swap in use (limit %g MiB); capture slows down %gx to let memory recover",
                used,
                threshold,
                self._cfg.swap_guard_factor,
            )
        elif used is None:
            log.info("swap guard off")
        else:
            log.info("swap guard off: swap in use down to %.0f MiB (limit %g MiB); capture back to full speed", used, threshold)

    def health(self) -> dict[str, Any]:
        return {
            "active": self._active,
            "swap_used_mb": self._swap_used_mb,
            "limit_mb": self._cfg.swap_guard_mb,
            "factor": float(self._cfg.swap_guard_factor) if self._active else 1.0,
            "engaged_count": self._engaged_count,
        }
