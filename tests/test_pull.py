"""What a pull of the captures (the README's rsync and scp lines) sees while the daemon saves.

`rsync -a` copies hidden files, so a temp file among the captures would arrive as a partial file and stay on
the receiving side. Saves are written in `<base_dir>/.picamd-tmp/` and every rsync line of the README excludes
hidden files; a pull of one day folder never meets a temp file at all. Checked with the real rsync, with the
README's own lines (the Pi's path replaced by a local one), in the middle of a real save.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_proc import ROOT

from daemon.capture.ring import FrameMeta, LatestSlot, Ring
from daemon.config import Config
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.storage.export import TEMP_DIR, Exporter

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed (apt install rsync)")

PI_CAPTURES = "pi@raspberrypi:/var/lib/picamd/captures/"


def readme_rsync_lines() -> list[list[str]]:
    """Every rsync command in the README's shell blocks, as argument lists (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    return [shlex.split(line, comments=True) for block in blocks for line in block.splitlines() if line.startswith("rsync ")]


def pull(line: list[str], source: Path, dest: Path) -> None:
    """Run a README rsync line with the Pi's captures replaced by `source` and ./captures/ by `dest`."""
    args = [f"{source}/" if a == PI_CAPTURES else f"{dest}/" if a == "./captures/" else a for a in line]
    assert f"{source}/" in args and f"{dest}/" in args, line
    got = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_every_readme_rsync_line_excludes_hidden_files():
    lines = readme_rsync_lines()
    assert len(lines) >= 2
    for line in lines:
        assert "--exclude" in line and line[line.index("--exclude") + 1] == ".*", line
        assert PI_CAPTURES in line and "./captures/" in line, line


def test_a_pull_in_the_middle_of_a_save_copies_no_partial_file(tmp_path, monkeypatch):
    base = tmp_path / "captures"
    config = Config({"export.base_dir": str(base), "export.min_free_mb": 0, "export.formats": ["npy"]})
    latest = LatestSlot()
    exporter = Exporter(config.section("export"), Ring(2, 30, 40), latest, EventBus(), ComponentStatus("export"))
    exporter.start()
    image = np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    latest.put(image, FrameMeta(frame_id=1, ts=time.time() - 1, mono=time.monotonic()))
    earlier = exporter.save()[0]  # a capture already complete
    day = earlier.parent
    latest.put(image, FrameMeta(frame_id=2, ts=time.time(), mono=time.monotonic()))

    lines = readme_rsync_lines()
    seen: dict[str, list[str]] = {}
    real_save = np.save

    def slow_save(path, arr, **kw):
        # the save is half written (an SD card's fsync takes that long) when the pulls run
        real_save(path, arr, **kw)
        full = Path(path).read_bytes()
        Path(path).write_bytes(full[: len(full) // 2])
        for k, line in enumerate(lines):
            pull(line, base, tmp_path / f"readme{k}")
            seen[f"readme{k}"] = files(tmp_path / f"readme{k}")
        subprocess.run(["rsync", "-a", f"{base}/", f"{tmp_path / 'plain'}/"], check=True, timeout=60)
        seen["plain"] = files(tmp_path / "plain")
        subprocess.run(["rsync", "-a", f"{day}/", f"{tmp_path / 'day'}/"], check=True, timeout=60)  # as scp -rp DAY
        seen["day"] = files(tmp_path / "day")
        Path(path).write_bytes(full)

    monkeypatch.setattr(np, "save", slow_save)
    saved = exporter.save()[0]
    before = sorted(str(p.relative_to(base)) for p in (earlier, earlier.with_suffix(".json")))
    for k in range(len(lines)):
        assert seen[f"readme{k}"] == before  # the complete capture only: nothing of the save in progress
    assert seen["day"] == [Path(p).name for p in before]
    # without the exclude, rsync -a does copy the hidden temp file: half an image, under .picamd-tmp/
    partial = [p for p in seen["plain"] if p.startswith(f"{TEMP_DIR}/")]
    assert len(partial) == 1 and (tmp_path / "plain" / partial[0]).stat().st_size < saved.stat().st_size

    pull(lines[0], base, tmp_path / "readme0")  # the next pull brings the finished capture, whole
    got = tmp_path / "readme0" / saved.relative_to(base)
    assert np.array_equal(np.load(got), image) and got.with_suffix(".json").is_file()
    assert not [p for p in files(tmp_path / "readme0") if "/." in f"/{p}"]
