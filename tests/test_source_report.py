"""The frame source is never hidden: a synthetic scene says so everywhere, a named camera that cannot open says why.

`camera.source: auto` falls back to the synthetic scene when no camera is found (a laptop); then the log,
`health` (its first line and `camera.synthetic`), `status`, the page's health badge and every frame of the stream
(`X-Source: synthetic`) name it. A named camera (what the installer writes) never falls back: when picamera2 cannot
be imported (a numpy other than the one it was built with prints a paragraph), `health` is degraded with that
error on one line. picamera2 is a real package here, put first on the daemon's PYTHONPATH, that fails to import.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_proc import Daemon, replies, wait_for
from stream_reader import split_parts, stream_bytes

from daemon.config import Config
from daemon.sources.base import SourceError
from daemon.sources.select import build_source
from daemon.web import __file__ as web_init

pytestmark = pytest.mark.timeout(120)

NUMPY_MISMATCH = (
    "\nA module that was compiled using NumPy 1.x cannot be run in\nNumPy 2.0.2 as it may crash. To support both 1.x "
    "and 2.x\nversions of NumPy, modules must be compiled with NumPy 2.0.\n\nnumpy.core.multiarray failed to import"
)
PAGE_JS = Path(web_init).parent / "page.js"


def broken_picamera2(folder: Path) -> Path:
    """A picamera2 package whose import fails the way a numpy mismatch makes it fail."""
    pkg = folder / "broken-site" / "picamera2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"raise ImportError({NUMPY_MISMATCH!r})\n")
    return pkg.parent


def test_auto_falling_back_to_the_synthetic_scene_says_so_everywhere(tmp_path):
    site = broken_picamera2(tmp_path)
    d = Daemon(tmp_path, {"camera.device": str(tmp_path / "no-camera")}, source="auto", env={"PYTHONPATH": str(site)}).start()
    try:
        head, _, body = replies(d.cmd("health"))[0].partition("\n")
        assert head.startswith("OK ") and "; synthetic scene (--source auto: picamera2 is installed but cannot be imported" in head
        assert f"{tmp_path / 'no-camera'} does not exist)" in head
        health = json.loads(body)
        assert health["camera"]["synthetic"] is True and health["camera"]["chosen"] == head.split("; ", 1)[1]
        assert health["camera"]["source"]["source"] == "synthetic"
        assert "camera ok (synthetic scene), " in replies(d.cmd("status"))[0].partition("\n")[0]
        status, headers, _ = d.http("/snapshot.jpg")
        assert status == 200 and headers["X-Source"] == "synthetic"
        assert json.loads(d.http("/meta")[2])["source"] == "synthetic"
        parts = split_parts(stream_bytes(d.http_port, 5))[:5]
        assert [head.get("x-source") for head, _ in parts] == ["synthetic"] * 5
        log = d.log()
        assert "WARNING picamd.app: source: synthetic scene (--source auto: picamera2 is installed but cannot be imported" in log
        if shutil.which("node"):  # the page's health badge, from this very report
            program = (
                f"const fs = require('fs'), vm = require('vm');\n"
                f"const page = vm.runInThisContext(fs.readFileSync({json.dumps(str(PAGE_JS))}, 'utf8') + '\\n;picamd;');\n"
                "console.log(JSON.stringify(page.healthSummary(JSON.parse(fs.readFileSync(0)))));\n"
            )
            got = subprocess.run(["node", "-e", program], input=body.encode(), capture_output=True, timeout=60)
            assert got.returncode == 0, got.stderr
            badge = json.loads(got.stdout)
            assert badge["text"].endswith("\u00b7 synthetic scene, not a camera") and badge["kind"] == "warn"
            assert health["camera"]["chosen"] in badge["title"]
    finally:
        d.stop()


def test_a_named_pi_camera_that_cannot_import_is_degraded_with_the_error_on_one_line(tmp_path):
    site = broken_picamera2(tmp_path)
    d = Daemon(tmp_path, source="picamera2", env={"PYTHONPATH": str(site)}).start(wait=False)
    try:

        def degraded() -> tuple[str, dict] | None:
            try:
                reply = replies(d.cmd("health"))[0]
            except (OSError, IndexError):
                return None
            head, _, body = reply.partition("\n")
            return (head, json.loads(body)) if head.startswith("OK degraded: camera") else None

        got = wait_for(degraded, timeout=30, interval=0.1)
        assert got, d.log()
        head, health = got
        state = health["camera"]["state"]
        assert state.startswith(
            "degraded (cannot open camera: picamera2 is installed but cannot be imported (ImportError: "
            "A module that was compiled using NumPy 1.x cannot be run in NumPy 2.0.2 as it may crash."
        )
        assert "numpy.core.multiarray failed to import" in state and "\n" not in state
        assert head == f"OK degraded: camera {state.removeprefix('degraded ')}" and "synthetic" not in head
        assert health["camera"]["synthetic"] is False and health["camera"]["chosen"] == "Pi camera through picamera2 (--source picamera2)"
        assert health["camera"]["frames"] == 0 and health["latest_frame"] is None
        assert d.http("/snapshot.jpg")[0] != 200  # no frame: nothing to show, and never a drawn one
    finally:
        d.stop()


def test_build_source_names_the_import_error_when_auto_passes_over_picamera2(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(broken_picamera2(tmp_path)))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    config = Config({"camera.device": str(tmp_path / "no-camera")})
    source, why = build_source(config, "auto")
    assert source.name == "synthetic"
    assert why.startswith("synthetic scene (--source auto: picamera2 is installed but cannot be imported (ImportError: A module")
    assert "\n" not in why
    with pytest.raises(SourceError, match="picamera2 is installed but cannot be imported"):
        build_source(config, "picamera2")[0].open()
