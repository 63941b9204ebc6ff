"""Throwaway TLS certificates for the tests' servers on loopback, made with the openssl command."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

OPENSSL = shutil.which("openssl")


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run([str(OPENSSL), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def self_signed(key: Path, cert: Path, subject: str, *extensions: str) -> None:
    """A new RSA key at `key` and a certificate for it at `cert`, signed by itself, valid two days, with `extensions`."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        "2",
        "-subj",
        subject,
        *(arg for ext in extensions for arg in ("-addext", ext)),
        cwd=key.parent,
    )
