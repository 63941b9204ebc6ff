"""The daemon's page in headless Chromium, for the tests that check what it draws (skipped where Chromium is missing)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")


def page_dom(port: int, budget_ms: int = 6000) -> str:
    """The page's DOM after it has run for `budget_ms` of virtual time in headless Chromium (streaming frames meanwhile)."""
    proc = subprocess.run(
        [
            CHROMIUM or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout
