"""One picamd per remote camera: the installer's instance step in a scratch root, the units checked by systemd, and
an instance config that really runs a picamd on another picamd's /stream.

`tools/install.sh --instance NAME --source URL --root DIR` writes DIR/etc/picamd/NAME.yaml (from the daemon's own
example config, with the instance's keys), the instance's folders and the template unit, and calls no systemctl.
`systemd-analyze verify` (when installed) checks both units in a scratch root that holds the installed files, a
stand-in for /opt/picamd/.venv/bin/python and a copy of the system's unit library.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from daemon_proc import ROOT, Daemon, free_port, wait_for

from daemon.config import Config

pytestmark = pytest.mark.timeout(90)

INSTALL_SH = ROOT / "tools" / "install.sh"
UNIT_LIBRARY = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if (p / "sysinit.target").exists()), None)


def install(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PICAMD_PYTHON": sys.executable}
    return subprocess.run(["bash", str(INSTALL_SH), *args, "--root", str(root)], capture_output=True, text=True, env=env, timeout=60)


def test_the_instance_step_writes_config_folders_and_the_template_unit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = install(root, "--instance", "shed", "--source", "http://10.0.0.7:8080/stream", "--set", "detect.enabled=true")
    assert done.returncode == 0, done.stderr
    assert "not calling systemctl (--root" in done.stdout
    path = root / "etc/picamd/shed.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # a stream password may be in camera.device
    text = path.read_text()
    assert text.startswith("# picamd@shed:") and "# Name of this camera in alerts" in text  # the example config's doc lines
    config = Config.load(path)  # the daemon's own loading: every value valid, the folders inside the allowed roots
    assert config.get("camera.name") == "shed"
    assert config.get("camera.source") == "opencv"
    assert config.get("camera.device") == "http://10.0.0.7:8080/stream"
    assert (config.get("http.port"), config.get("control.port")) == (8081, 10000)
    assert config.get("export.base_dir") == "/var/lib/picamd/shed/captures"
    assert config.get("motion.log_dir") == "/var/log/picamd/shed"
    assert config.get("detect.enabled") is True
    assert (root / "var/lib/picamd/shed/captures").is_dir() and (root / "var/log/picamd/shed").is_dir()
    assert (root / "etc/systemd/system/picamd@.service").read_bytes() == (ROOT / "systemd/picamd@.service").read_bytes()

    # The next instance takes the next free ports; the machine's own config.yaml keeps 8080 and 9999.
    (root / "etc/picamd/config.yaml").write_text(yaml.safe_dump({"http": {"port": 8082}}))
    done = install(root, "--instance", "gate", "--source", "rtsp://cam:secret@10.0.0.8/live")
    assert done.returncode == 0, done.stderr
    gate = Config.load(root / "etc/picamd/gate.yaml")
    assert (gate.get("http.port"), gate.get("control.port")) == (8083, 10001)

    # What is refused, and the file left as it was.
    before = path.read_bytes()
    for args, why in (
        (("--instance", "shed", "--source", "http://x:8080/stream"), "exists already; --force replaces it"),
        (("--instance", "bad/name", "--source", "http://x:8080/stream"), "use 1 to 64 letters"),
        (("--instance", "yard", "--source", "http://x/stream", "--http-port", "8081"), "port 8081 is already used"),
        (
            ("--instance", "yard", "--source", "http://x/stream", "--set", "camera.framerate=lots"),
            "camera.framerate: lots: must be a number",
        ),
        (("--instance", "yard", "--source", "http://x/stream", "--bogus"), "unknown option --bogus"),
        (("--instance", "yard"), "usage:"),
    ):
        done = install(root, *args)
        assert done.returncode != 0 and why in done.stderr, (args, done.stderr)
    assert path.read_bytes() == before
    assert not (root / "etc/picamd/yard.yaml").exists()
    done = install(root, "--instance", "shed", "--source", "http://10.0.0.9:8080/stream", "--force")
    assert done.returncode == 0 and Config.load(path).get("camera.device") == "http://10.0.0.9:8080/stream"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.skipif(UNIT_LIBRARY is None, reason="no systemd unit library (sysinit.target) on this machine")
def test_systemd_accepts_both_units(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert install(root, "--instance", "shed", "--source", "http://10.0.0.7:8080/stream").returncode == 0
    shutil.copy(ROOT / "systemd/picamd.service", root / "etc/systemd/system/picamd.service")
    assert UNIT_LIBRARY is not None
    shutil.copytree(UNIT_LIBRARY, root / "usr/lib/systemd/system", symlinks=True)
    python = root / "opt/picamd/.venv/bin/python"  # ExecStart must name an executable inside the root
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)

    def verify(*units: str) -> subprocess.CompletedProcess:
        return subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units], capture_output=True, text=True, timeout=60)

    done = verify("picamd.service", "picamd@shed.service")
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr
    # The check can fail: a unit systemd cannot read is reported (verify warns with exit status 0, so the output is what counts).
    broken = (ROOT / "systemd/picamd@.service").read_text().replace("WatchdogSec=60", "WatchdogSec=sixty")
    (root / "etc/systemd/system/picamd@.service").write_text(broken)
    done = verify("picamd@shed.service")
    assert "WatchdogSec" in done.stderr or "sixty" in done.stderr, done.stdout + done.stderr


def http_json(port: int, path: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def test_an_instance_config_runs_a_picamd_on_another_picamds_stream(tmp_path: Path) -> None:
    """The Pi's picamd (synthetic here) and, beside it, an instance whose camera is that picamd's /stream."""
    (tmp_path / "pi").mkdir()
    pi = Daemon(tmp_path / "pi", overrides={"camera.name": "pi", "mjpeg.max_fps": 10.0}).start()
    root = tmp_path / "root"
    http_port, control_port = free_port(), free_port()
    try:
        done = install(
            root,
            "--instance",
            "pi-remote",
            "--source",
            f"http://127.0.0.1:{pi.http_port}/stream?fps=5",
            "--http-port",
            str(http_port),
            "--control-port",
            str(control_port),
            "--set",
            "http.bind=127.0.0.1",
            "--set",
            "control.bind=127.0.0.1",
            "--set",
            f"storage.allowed_roots=[{root}]",
            "--set",
            f"export.base_dir={root}/var/lib/picamd/pi-remote/captures",
            "--set",
            f"motion.log_dir={root}/var/log/picamd/pi-remote",
            "--set",
            "camera.framerate=5",
        )
        assert done.returncode == 0, done.stderr
        log = open(tmp_path / "instance.log", "wb")
        # What picamd@pi-remote runs (ExecStart), from its working directory.
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "--config", str(root / "etc/picamd/pi-remote.yaml")],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            health = wait_for(lambda: (h := http_json(http_port, "/health")) and h["camera"]["frames"] >= 5 and h, timeout=40, interval=0.2)
            assert health, (tmp_path / "instance.log").read_text()[-3000:]
            assert health["camera"]["name"] == "pi-remote"
            assert health["camera"]["source"]["source"] == "opencv"
            assert health["camera"]["frame_size"] == [640, 480]  # the Pi picamd's full frames
            # The Pi's picamd counts the instance as one of its viewers.
            assert json.loads(pi.http("/health")[2])["clients"]["mjpeg"]["viewers"] == 1
        finally:
            proc.terminate()
            proc.wait(timeout=15)
            log.close()
    finally:
        pi.stop()
