"""Where the files config keys name may be: path keys are confined to storage.allowed_roots."""

from __future__ import annotations

import os
from pathlib import Path

from daemon.config.keys import Key
from daemon.config.schema import KEYS

#: Where files may be when storage.allowed_roots is [] (besides the config file's folder and the working directory).
SYSTEM_ROOTS = ("/var/lib/picamd", "/var/log/picamd", "/etc/picamd")


def allowed_roots(configured: list[str], config_path: str | os.PathLike | None) -> list[Path]:
    """The folders files must lie in: storage.allowed_roots, or the defaults when it is []."""
    if configured:
        roots = [Path(r) for r in configured]
    else:
        roots = [Path.cwd(), *(Path(r) for r in SYSTEM_ROOTS)]
        if config_path is not None:
            roots.insert(0, Path(os.path.abspath(config_path)).parent)
    out: list[Path] = []
    for root in roots:
        real = Path(os.path.realpath(root))
        if real not in out:
            out.append(real)
    return out


def path_kind(key: Key) -> str:
    """ "dir" or "file" for a key naming a folder the daemon writes or a file it reads (also every *_dir and *_file key), else ""."""
    if key.path:
        return key.path
    leaf = key.name.rpartition(".")[2]
    return "dir" if leaf.endswith("_dir") else "file" if leaf.endswith("_file") else ""


def path_refusal(name: str, value: str, roots: list[Path]) -> str | None:
    """Why a path key may not have this value (None when it may). Relative paths are taken from the working directory."""
    key = KEYS[name]
    text = str(value)
    if not text.strip():
        return None if path_kind(key) == "file" else "must name a folder (empty would mean the working directory itself)"
    if text.startswith("~"):
        return "~ is not expanded: give the full path"
    if "\0" in text:
        return "contains a NUL character"
    resolved = Path(os.path.realpath(os.path.join(os.getcwd(), text)))
    for root in roots:
        if resolved == root or root in resolved.parents:
            return None
    shown = ", ".join(str(r) for r in roots)
    return (
        f"resolves to {resolved}, outside the allowed folders ({shown}); storage.allowed_roots in the config file can allow another folder"
    )
