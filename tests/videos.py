"""Reading videos back in tests: what ffprobe makes of them (it decodes the whole file to count the frames)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

FFPROBE = shutil.which("ffprobe")
needs_ffprobe = pytest.mark.skipif(FFPROBE is None, reason="ffprobe is not installed (apt-get install ffmpeg)")


def ffprobe(path: Path) -> dict[str, Any]:
    """Codec, size and the frames ffprobe decodes of the first video stream."""
    out = subprocess.run(
        [
            FFPROBE or "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)["streams"][0]


def ffprobe_frames(path: Path) -> int:
    """How many frames ffprobe decodes of the first video stream."""
    return int(ffprobe(path)["nb_read_frames"])
