"""The captures folder on disk: how captures are named, where they are, which of them are complete.

Every capture is `<base_dir>/YYYY-MM-DD/YYYYMMDD-HHMMSS.mmm_f<frame_id>_<kind>[-N].<ext>`, named after the
wall-clock time of its (newest) frame in local time; files being written wait in `<base_dir>/.picamd-tmp/`
under temp names. The Exporter (naming, listing), retention (what to delete) and the start-up cleaning all read
the folder through these helpers, so they agree on what is a capture and what is still incomplete: a capture
with a temp file of its stem (in the temp folder, or in the day folder as older versions wrote them) is left out.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from daemon.storage.atomicfile import pending_stem
from daemon.storage.errors import ExportError, FormatError

FORMATS = ("jpg", "png", "npy")
KINDS = ("save", "stack", "auto", "autostack", "detect", "autodetect", "clip")
AUTO_KINDS = ("auto", "autostack", "autodetect", "clip")
TEMP_DIR = ".picamd-tmp"  # in base_dir: temp files of saves in progress
LOCK_NAME = ".picamd.lock"  # in base_dir: held by the daemon that writes there

CAPTURE_NAME = re.compile(
    r"^(?P<stamp>\d{8}-\d{6}\.\d{3})_f(?P<frame>-?\d+)_(?P<kind>save|stack|autostack|autodetect|auto|detect|clip)(?:-(?P<dup>\d+))?"
    r"\.(?P<ext>jpg|png|npy|json|mp4|avi)$"
)
DAY_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TEMP_NAME = re.compile(r"^\..+\.tmp\.(jpg|png|npy|json|mp4|avi)$")


def normalize_formats(formats: list[str] | tuple[str, ...]) -> list[str]:
    """Lower-case, 'jpeg' -> 'jpg', duplicates dropped; unknown formats raise FormatError naming them."""
    out: list[str] = []
    for item in formats:
        f = str(item).strip().lower().lstrip(".")
        f = "jpg" if f == "jpeg" else f
        if f not in FORMATS:
            raise FormatError(f"unknown format {str(item)[:20]!r} (use {', '.join(FORMATS)})")
        if f not in out:
            out.append(f)
    if not out:
        raise FormatError(f"no format given (use {', '.join(FORMATS)})")
    return out


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ExportError(f"unknown capture kind {kind!r} (use {', '.join(KINDS)})")


def capture_stamp(ts: float) -> tuple[str, str]:
    """('YYYY-MM-DD', 'YYYYMMDD-HHMMSS.mmm') of a wall-clock time, in local time."""
    whole, millis = divmod(round(ts * 1000), 1000)  # rounded: 0.123 stored as 0.12299999 still names .123
    lt = time.localtime(whole)
    return time.strftime("%Y-%m-%d", lt), time.strftime("%Y%m%d-%H%M%S", lt) + f".{millis:03d}"


def stamp_iso(stamp: str) -> str:
    """'20250101-120000.123' -> '2025-01-01T12:00:00.123' (local time, as in the name)."""
    return f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:]}"


def unique_stem(day_dir: Path, stem: str) -> str:
    """`stem`, or `stem-N` when taken: the same frame saved again (two quick `save`s) gets '-2', '-3', ... after
    the highest one there, instead of replacing the first; names then still sort in the order the captures were made."""
    taken = []
    try:
        with os.scandir(day_dir) as it:
            for entry in it:
                name = entry.name.rpartition(".")[0]
                if name == stem:
                    taken.append(1)
                elif name.startswith(stem + "-") and name[len(stem) + 1 :].isdigit():
                    taken.append(int(name[len(stem) + 1 :]))
    except FileNotFoundError:
        pass
    return stem if not taken else f"{stem}-{max(taken) + 1}"


def free_bytes(path: Path) -> int | None:
    """Bytes free for an unprivileged writer on the filesystem of `path` (or of its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def on_disk_bytes(base: Path, sizes: list[int]) -> int:
    """What files of these sizes really take: files take whole blocks."""
    try:
        block = os.statvfs(base).f_frsize or 4096
    except OSError:
        block = 4096
    return sum(-(-s // block) * block for s in sizes)


def day_dirs(base: Path) -> list[Path]:
    try:
        with os.scandir(base) as it:
            days = [Path(e.path) for e in it if e.is_dir(follow_symlinks=False) and DAY_DIR.match(e.name)]
    except FileNotFoundError:
        return []
    return sorted(days)


def temp_files(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return [Path(e.path) for e in it if _TEMP_NAME.match(e.name) and e.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def pending_stems(base: Path) -> set[str]:
    """Stems of the captures whose files are being written, or were when the daemon was killed (a temp file of
    that stem exists): such a capture is incomplete, and listing and retention leave it out."""
    return {stem for path in temp_files(base / TEMP_DIR) if (stem := pending_stem(path.name))}


def entries(day: Path, pending: set[str] | frozenset[str] = frozenset()) -> list[tuple[Path, int, float]]:
    """Final files of a day folder, sorted by name: hidden files and incomplete captures (a stem in `pending`,
    or with a temp file in the day folder itself, as older versions wrote them) left out."""
    out = []
    local: set[str] = set()
    try:
        with os.scandir(day) as it:
            for e in it:
                if e.name.startswith("."):
                    if (stem := pending_stem(e.name)) is not None:
                        local.add(stem)
                    continue
                if not e.is_file(follow_symlinks=False):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                out.append((Path(e.path), st.st_size, st.st_mtime))
    except FileNotFoundError:
        return []
    skip = pending | local
    if skip:
        out = [entry for entry in out if entry[0].name.rpartition(".")[0] not in skip]
    return sorted(out)
