"""Memory: a daemon with the shipped config loads nothing for features that are off; large freed blocks go back to the system."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_proc import ROOT

#: Modules of features the shipped config leaves off (see bench/memory.py for what each costs).
OFF = ["requests", "urllib3", "paho", "ai_edge_litert", "tflite_runtime", "sklearn", "skimage", "scipy", "prometheus_client"]


def run_python(code: str, cwd: Path, env: dict[str, str] | None = None) -> dict:
    import os

    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_daemon_started_with_the_shipped_config_loads_no_module_of_a_feature_that_is_off(tmp_path):
    # The shipped file itself, beside its own captures/ and logs/; only the ports and the address change, as on the command line.
    shutil.copyfile(ROOT / "config.yaml", tmp_path / "config.yaml")
    code = (
        "import json, sys, time\n"
        "from daemon.config import Config\n"
        "config = Config.load('config.yaml')\n"
        "for key, value in {'control.port': 0, 'http.port': 0, 'control.bind': '127.0.0.1', 'http.bind': '127.0.0.1'}.items():\n"
        "    config.set(key, value, persist=False)\n"
        "from daemon.app import App\n"
        "app = App(config, source_override='synthetic')\n"
        "app.start()\n"
        "try:\n"
        "    deadline = time.monotonic() + 60\n"
        "    while app.ring.fill < 3 and time.monotonic() < deadline:\n"
        "        time.sleep(0.05)\n"
        "    fill = app.ring.fill\n"
        "    health = app.health()\n"
        "finally:\n"
        "    app.stop()\n"
        f"print(json.dumps({{'fill': fill, 'status': health['status'], 'loaded': sorted(m for m in {OFF!r} if m in sys.modules)}}))\n"
    )
    got = run_python(code, tmp_path)
    assert got["fill"] >= 3, got  # it really ran: frames went through the ring
    assert got["loaded"] == [], f"loaded although their feature is off: {got['loaded']}"


def test_a_webhook_url_loads_requests_when_it_sends(tmp_path):
    # The other side of the lazy import: the channel still works once a URL is set (tests/test_notify.py sends for real).
    code = (
        "import json, sys\n"
        "from daemon.config import Config\n"
        "from daemon.notify.webhook import WebhookChannel\n"
        "from daemon.notify.sender import SendError\n"
        "from daemon.core.bus import Event\n"
        "cfg = Config({'notify.webhook.url': 'http://127.0.0.1:9/hook'})\n"
        "channel = WebhookChannel(cfg.section('notify').section('webhook'), 'cam')\n"
        "before = 'requests' in sys.modules\n"
        "try:\n"
        "    channel.send(Event('night.on', {}), 'configured', 2.0)\n"
        "    outcome = 'sent'\n"
        "except SendError as exc:\n"
        "    outcome = str(exc)\n"
        "print(json.dumps({'before': before, 'after': 'requests' in sys.modules, 'outcome': outcome}))\n"
    )
    got = run_python(code, tmp_path)
    assert got["before"] is False and got["after"] is True
    assert got["outcome"].startswith("cannot connect"), got  # port 9 on loopback: nothing listens


GLIBC = platform.libc_ver()[0] == "glibc"

# Frees four 8 MiB blocks while a smaller block allocated after them (above them in the heap) stays in use, after a 16 MiB block was freed
# (which raises glibc's own threshold to 16 MiB): what the process still holds afterwards.
RETAINED = (
    "import json, sys\n"
    "import numpy as np\n"
    "from daemon.system.allocator import fix_mmap_threshold\n"
    "msg = fix_mmap_threshold() if sys.argv[1:] == ['fixed'] else 'glibc'\n"
    "def rss():\n"
    "    with open('/proc/self/status') as fh:\n"
    "        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith('VmRSS:'))\n"
    "big = np.ones(16 << 20, np.uint8)\n"
    "del big\n"
    "before = rss()\n"
    "blocks = [np.ones(8 << 20, np.uint8) for _ in range(4)]\n"
    "pin = np.ones(600_000, np.uint8)\n"
    "del blocks\n"
    "print(json.dumps({'msg': msg, 'retained_mib': (rss() - before) / 2**20}))\n"
)


def run_retained(tmp_path: Path, mode: str, env: dict[str, str] | None = None) -> dict:
    script = tmp_path / "retained.py"
    script.write_text(RETAINED)
    import os

    out = subprocess.run(
        [sys.executable, str(script), mode],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the allocator policy is glibc's mallopt; other C libraries are left as they are")
def test_the_fixed_mmap_threshold_gives_freed_large_blocks_back(tmp_path):
    glibc = run_retained(tmp_path, "glibc")
    fixed = run_retained(tmp_path, "fixed")
    # glibc's own policy keeps the 32 MiB freed below the pinned block; the daemon's gives it back.
    assert glibc["retained_mib"] >= 24, glibc
    assert fixed["retained_mib"] < 4, fixed
    assert fixed["msg"].startswith("allocator: blocks of 1024 KiB and more go back to the system"), fixed


@pytest.mark.skipif(not GLIBC, reason="the allocator policy is glibc's mallopt")
def test_malloc_mmap_threshold_in_the_environment_wins(tmp_path):
    got = run_retained(tmp_path, "fixed", env={"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert got["msg"] == "allocator: MALLOC_MMAP_THRESHOLD_=131072 from the environment"
    assert got["retained_mib"] < 4, got  # glibc took the variable itself: the same fixed policy
