"""The installer's dependency handling, for real: apt's numpy and OpenCV stay, as python3-picamera2 needs.

Debian 12's python3-numpy 1.24, python3-opencv 4.6 and python3-sklearn 1.2 for /usr/bin/python3 3.11 are the
packages of Raspberry Pi OS bookworm. Running as root, the test installs them with apt when they are missing
(otherwise it is skipped, saying why); it runs the installer's venv step with detection (`tools/install.sh venv
PREFIX --detect`: the code copied, a venv over /usr/bin/python3, pip held to apt's builds) into a scratch prefix,
checks that the venv imports the system's numpy, cv2 and sklearn, runs part of the unit tests in that venv (the
code must work on OpenCV 4.6 with numpy 1.24, the detector on LiteRT with that numpy), writes the installed config
(`tools/install.sh config`) and starts the installed daemon with it.
A dry run of pip for 64-bit (aarch64) and 32-bit (armv7l) Pi OS checks that the `detect` extra resolves to
wheels with apt's numpy held.

The prefix stays under the temp folder between runs, keyed by a hash of what the venv depends on (install.sh, the
project's requirements, the system's packages): a rerun goes through the installer's upgrade path (seconds) instead
of building the venv again: about 45 s on 2 cores; a first run builds the venv and fetches the wheels (about a
minute), and installing the apt packages on a machine without them takes a minute more.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_proc import ROOT, free_port, replies, reply_json, send, wait_for

pytestmark = pytest.mark.timeout(600)  # a first run installs apt packages and builds the venv

SYSTEM_PYTHON = "/usr/bin/python3"
APT_PACKAGES = ("python3-venv", "python3-numpy", "python3-opencv", "python3-sklearn")
SYSTEM_SITE = "/usr/lib/python3/dist-packages/"
INSTALL_SH = ROOT / "tools" / "install.sh"
#: Unit tests that exercise numpy and OpenCV the most without starting daemons, and the detector.
UNIT_TESTS = ("test_ring.py", "test_stacking.py", "test_night.py", "test_motion.py", "test_export.py", "test_detect.py")
#: What those tests need beyond the daemon (scikit-image: the photos the detector is checked on).
TEST_REQUIREMENTS = ("pytest", "pytest-timeout", "scikit-image")
#: Raspberry Pi OS bookworm's glibc: wheels up to manylinux_2_36 install there.
BOOKWORM_GLIBC_MINOR = 36
CACHE_PREFIX = "picamd-install-test-"
_NETWORK_TROUBLE = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|Network is unreachable|"
    r"ConnectTimeout|ReadTimeout|ProxyError|SSLError|No route to host|Connection refused"
)

_PROBE = """
import json, sys
out = {"python": "%d.%d" % sys.version_info[:2]}
for module in ("numpy", "cv2", "sklearn", "ensurepip"):
    try:
        m = __import__(module)
    except ImportError as exc:
        out[module] = {"error": str(exc)}
    else:
        out[module] = {"file": m.__file__, "version": getattr(m, "__version__", None)}
print(json.dumps(out))
"""


def run(cmd: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def probe(python: str) -> dict[str, Any]:
    got = run([python, "-c", _PROBE], 60)
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


def missing(found: dict[str, Any]) -> list[str]:
    return [m for m in ("numpy", "cv2", "sklearn", "ensurepip") if "error" in found[m]]


@pytest.fixture(scope="module")
def apt_python() -> dict[str, Any]:
    """What /usr/bin/python3 imports from apt: installed with apt-get when missing and root, else a skip."""
    if not Path(SYSTEM_PYTHON).is_file():
        pytest.skip(f"{SYSTEM_PYTHON} does not exist: not a Debian-like system")
    found = probe(SYSTEM_PYTHON)
    if found["python"] != "3.11":
        pytest.skip(f"{SYSTEM_PYTHON} is Python {found['python']}: Raspberry Pi OS bookworm's (and Debian 12's) is 3.11")
    if missing(found):
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(f"{SYSTEM_PYTHON} lacks {', '.join(missing(found))}: run as root (apt-get install {' '.join(APT_PACKAGES)})")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES]
        if run(install, 900, env=env).returncode != 0:
            run(["apt-get", "update", "-q"], 300, env=env)
            got = run(install, 900, env=env)
            if got.returncode != 0:
                pytest.skip(f"apt-get install {' '.join(APT_PACKAGES)} failed: {got.stderr.strip()[-300:]}")
        found = probe(SYSTEM_PYTHON)
        assert not missing(found), found
    if not (found["numpy"]["version"].startswith("1.24.") and found["cv2"]["version"].startswith("4.6.")):
        pytest.skip(
            f"{SYSTEM_PYTHON} has numpy {found['numpy']['version']} and OpenCV {found['cv2']['version']}, "
            "not Raspberry Pi OS bookworm's 1.24 and 4.6"
        )
    return found


def _cache_key(apt: dict[str, Any]) -> str:
    """What the venv depends on: the installer, the project's requirements, the system's Python and apt packages."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    digest = hashlib.sha256(INSTALL_SH.read_bytes())
    digest.update(json.dumps([project["dependencies"], project.get("optional-dependencies", {})], sort_keys=True).encode())
    digest.update(json.dumps([apt["python"]] + [apt[m]["version"] for m in ("numpy", "cv2", "sklearn")]).encode())
    return digest.hexdigest()[:16]


def install_venv(prefix: Path) -> subprocess.CompletedProcess[str]:
    return run(["bash", str(INSTALL_SH), "venv", str(prefix), "--detect"], 600, env={**os.environ, "PICAMD_PYTHON": SYSTEM_PYTHON})


@pytest.fixture(scope="module")
def prefix(apt_python: dict[str, Any]) -> Iterator[Path]:
    """The installer's venv step run into a cached scratch prefix (a rerun takes the upgrade path)."""
    tmp = Path(tempfile.gettempdir())
    path = tmp / f"{CACHE_PREFIX}{_cache_key(apt_python)}"
    with open(tmp / f"{CACHE_PREFIX}lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once share the cache one after the other
        for old in tmp.glob(f"{CACHE_PREFIX}*"):
            if old != path and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)  # made for another pyproject.toml or install.sh
        got = install_venv(path)
        if got.returncode != 0 and path.exists():
            shutil.rmtree(path)  # a run interrupted while building it: build it again, once
            got = install_venv(path)
        assert got.returncode == 0, f"tools/install.sh venv failed:\n{got.stdout}\n{got.stderr}"
        assert "venv in " in got.stdout
        yield path


def venv_python(prefix: Path) -> str:
    return str(prefix / ".venv" / "bin" / "python")


def test_the_venv_imports_apts_numpy_and_opencv_and_pip_added_no_wheel_of_them(prefix: Path, apt_python: dict[str, Any]) -> None:
    found = probe(venv_python(prefix))
    for module in ("numpy", "cv2", "sklearn"):
        assert found[module]["file"] == apt_python[module]["file"], (module, found[module])
        assert found[module]["file"].startswith(SYSTEM_SITE)
    assert found["numpy"]["version"].startswith("1.24.") and found["cv2"]["version"].startswith("4.6.")
    listed = run([venv_python(prefix), "-m", "pip", "list", "--format", "json"], 120)
    assert listed.returncode == 0, listed.stderr
    versions = {p["name"].lower(): p["version"] for p in json.loads(listed.stdout)}
    assert versions["numpy"] == apt_python["numpy"]["version"]
    assert not [name for name in versions if name.startswith("opencv")]
    assert "picamd" in versions and versions["scikit-learn"] == apt_python["sklearn"]["version"]
    assert "ai-edge-litert" in versions or "tflite-runtime" in versions  # the detect extra, on apt's numpy
    pins = (prefix / "constraints.txt").read_text().splitlines()
    assert f"numpy=={apt_python['numpy']['version']}" in pins and "opencv-python-headless<0" in pins
    # the console script `install.sh` links to /usr/local/bin/picamd
    version = run([str(prefix / ".venv" / "bin" / "picamd"), "--version"], 60)
    assert version.returncode == 0 and version.stdout.startswith("picamd "), version.stderr


def test_unit_tests_pass_on_opencv_4_6_and_numpy_1_24(prefix: Path, apt_python: dict[str, Any]) -> None:
    python = venv_python(prefix)
    if run([python, "-c", "import pytest, pytest_timeout, skimage"], 60).returncode != 0:
        got = run([python, "-m", "pip", "install", "--quiet", "--constraint", str(prefix / "constraints.txt"), *TEST_REQUIREMENTS], 300)
        assert got.returncode == 0, got.stderr
    # From the prefix, `daemon` is the installed copy; the test files are this checkout's.
    where = run([python, "-c", "import daemon; print(daemon.__file__)"], 60, cwd=prefix)
    assert where.stdout.strip() == str(prefix / "daemon" / "__init__.py")
    tests = [str(ROOT / "tests" / name) for name in UNIT_TESTS]
    got = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], 300, cwd=prefix)
    assert got.returncode == 0, got.stdout[-4000:] + got.stderr[-2000:]
    assert re.search(r"\d+ passed", got.stdout)
    assert probe(python)["numpy"]["file"] == apt_python["numpy"]["file"]  # the test requirements left it too


def test_the_installed_config_names_a_camera_and_the_daemon_says_why_it_cannot_open(prefix: Path, tmp_path: Path) -> None:
    out = tmp_path / "installed.yaml"
    got = run(["bash", str(INSTALL_SH), "config", str(prefix), str(out)], 120, env={**os.environ, "PICAMD_PYTHON": SYSTEM_PYTHON})
    assert got.returncode == 0, got.stderr
    config = yaml.safe_load(out.read_text())
    camera = config["camera"]
    assert camera["source"] in ("picamera2", "opencv"), camera  # never auto, which could fall back to the synthetic scene
    assert config["export"]["base_dir"] == "/var/lib/picamd/captures" and config["motion"]["regions"] == []
    # Run the installed daemon on it, with scratch folders and loopback ports instead of the system's.
    config["export"]["base_dir"] = str(tmp_path / "captures")
    config["motion"]["log_dir"] = str(tmp_path / "logs")
    out.write_text(yaml.safe_dump(config))
    control, http = free_port(), free_port()
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(prefix / ".venv" / "bin" / "picamd"),
                "--config",
                str(out),
                "--bind",
                "127.0.0.1",
                "--control-port",
                str(control),
                "--http-port",
                str(http),
            ],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def health() -> dict[str, Any] | None:
            try:
                reply = replies(send(control, "health", timeout=5))[0]
            except (OSError, IndexError):
                return None
            return reply_json(reply) if reply.startswith("OK") else None

        first = wait_for(health, timeout=60, interval=0.2)
        assert first is not None, log_path.read_text()
        described = first["camera"]["source"]
        assert described.get("source") != "synthetic" and first["camera"]["synthetic"] is False
        if camera["source"] == "opencv" and not Path(camera["device"]).exists():
            # no camera here: health names the device and why, and keeps saying so
            def degraded() -> dict[str, Any] | None:
                h = health()
                return h if h is not None and "degraded" in h["camera"]["state"] else None

            state = wait_for(degraded, timeout=30, interval=0.2)
            assert state, health()
            assert "cannot open camera" in state["camera"]["state"] and camera["device"] in state["camera"]["state"]
            assert state["status"] == "degraded" and "camera" in state["degraded"] and state["camera"]["frames"] == 0
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, log_path.read_text()


def _target_requirements(arch: str, python: str) -> list[str]:
    """The base dependencies and the detect extra as pip would see them on Pi OS bookworm for `arch`, markers applied."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = {
        "platform_machine": arch,
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "python_version": python,
        "python_full_version": f"{python}.2",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "detect",
    }
    out = []
    for text in [*project["dependencies"], *project["optional-dependencies"]["detect"]]:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            out.append(f"{req.name}{req.specifier}")
    return out


@pytest.mark.parametrize("arch", ["aarch64", "armv7l"])
def test_the_detect_extra_resolves_for_pi_os_with_apts_numpy_held(prefix: Path, apt_python: dict[str, Any], arch: str) -> None:
    import pip

    if tuple(int(p) for p in pip.__version__.split(".")[:2]) < (23, 1):
        pytest.skip(f"pip {pip.__version__} cannot dry-run for another platform without --target (pip 23.1 can)")
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(17, BOOKWORM_GLIBC_MINOR + 1)]
    platforms += [f"manylinux2014_{arch}", f"linux_{arch}"]
    requirements = _target_requirements(arch, apt_python["python"])
    # This pip resolves for a bare venv over the system Python, as the installer's is before pip adds anything:
    # apt's numpy and scikit-learn are installed there, as on the Pi.
    bare = prefix / "bare-venv"
    if not (bare / "bin" / "python").exists():
        made = run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", "--without-pip", str(bare)], 120)
        assert made.returncode == 0, made.stderr
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(bare / "bin" / "python"),
        "install",
        "--dry-run",
        "--quiet",
        "--report",
        "-",
        "--only-binary=:all:",
        "--constraint",
        str(prefix / "constraints.txt"),
        "--timeout",
        "20",
        "--retries",
        "1",
    ]
    for platform in platforms:
        cmd += ["--platform", platform]
    got = run(cmd + requirements, 300)
    if got.returncode != 0 and _NETWORK_TROUBLE.search(got.stderr):
        pytest.skip(f"the package registry is unreachable: {_NETWORK_TROUBLE.search(got.stderr).group(0)}")  # type: ignore[union-attr]
    assert got.returncode == 0, f"{' '.join(requirements)} does not resolve for {arch}:\n{got.stderr[-3000:]}"
    report = json.loads(got.stdout)
    chosen = {item["metadata"]["name"].lower().replace("_", "-"): item for item in report["install"]}
    assert "numpy" not in chosen, f"pip would replace apt's numpy with {chosen['numpy']['metadata']['version']}"
    assert not [name for name in chosen if name.startswith("opencv")]
    assert "scikit-learn" not in chosen and "scipy" not in chosen  # apt's python3-sklearn serves (and PyPI has no armv7l one)
    runtime = "ai-edge-litert" if arch == "aarch64" else "tflite-runtime"
    assert runtime in chosen, sorted(chosen)
    wheel = chosen[runtime]["download_info"]["url"].rsplit("/", 1)[-1]
    assert f"cp{apt_python['python'].replace('.', '')}" in wheel and arch in wheel, wheel
