"""Atomic file writes: a hidden temp name, fsync, then rename.

A reader and a crash in the middle of a write therefore only ever see the old
file or the whole new one under the final name, never half an image. The temp
file itself is a partial file while it is written, and `rsync -a` and
`scp -r` copy hidden files: a folder that is pulled (the captures) gives a
`tmp_dir` that pulls leave out, so the temp never sits among the files pulled.

`write_group` does the same for files that belong together (a capture's
images and sidecar): all are written before the first is renamed, so a crash
leaves either none of them, or a group whose unfinished part is still temp
files (`pending_stem` names the group a temp file belongs to).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(
    path: str | os.PathLike, data: bytes | Callable[[str], None], *, mode: int = 0o644, tmp_dir: str | os.PathLike | None = None
) -> Path:
    """Write `data` (bytes, or a callable that writes to the temp path it is given) to `path` atomically.

    The temp file is written in `tmp_dir` (created when missing) when it is on
    the same filesystem as `path` (a rename cannot cross filesystems), else
    beside `path`. Its name starts with a dot (hidden from `ls`, not from
    `rsync -a`) and ends in the real suffix so writers that pick the format
    from the name (cv2.imwrite, numpy.save) still do the right thing.
    """
    path = Path(path)
    fd, tmp = _temp_for(path, tmp_dir)
    try:
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as fh:
                fd = -1
                fh.write(data)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def _temp_for(path: Path, tmp_dir: str | os.PathLike | None) -> tuple[int, str]:
    """An open temp file for `path`: in `tmp_dir` when it is on the same filesystem (a rename must not cross one), else beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent
    if tmp_dir is not None:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
        if os.stat(tmp_dir).st_dev == os.stat(folder).st_dev:
            folder = Path(tmp_dir)
    return tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=folder)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable: it is only once the directory entry is on disk."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_group(
    items: list[tuple[Path, bytes | Callable[[str], None]]], *, mode: int = 0o644, tmp_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Write several files that belong together (a capture's images and sidecar) so that they appear together.

    Every file is first written and fsynced under a temp name (as `write_atomic`
    does), and only then are they renamed, in the order given: put last the
    file whose presence says the set is complete. A failure before the renames
    leaves no file of the group; one during them removes the names already
    given. A crash between two renames leaves final names next to temp files
    of the same stem: a reader treats a stem with a temp file as incomplete
    (`pending_stem`), and the next start removes both.
    """
    temps: list[tuple[str, Path]] = []
    renamed: list[Path] = []
    current: Path | None = None
    try:
        for path, data in items:
            path = current = Path(path)
            fd, tmp = _temp_for(path, tmp_dir)
            temps.append((tmp, path))
            if callable(data):
                os.close(fd)
                data(tmp)
            else:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
        for folder in {Path(tmp).parent for tmp, _ in temps}:
            fsync_dir(folder)  # every temp is on disk before the first final name appears
        for tmp, path in temps:
            current = path
            os.replace(tmp, path)
            renamed.append(path)
    except BaseException as exc:
        if isinstance(exc, OSError) and exc.filename is None and current is not None:
            exc.filename = str(current)  # a failed write() names no file: say which one it was
        for path in renamed:
            _unlink(path)
        for tmp, _ in temps:
            _unlink(Path(tmp))
        raise
    for folder in {p.parent for p in renamed}:
        fsync_dir(folder)
    return renamed


def pending_stem(name: str) -> str | None:
    """The final stem a temp file name of `write_atomic`/`write_group` belongs to ('.STEM.<random>.tmp.EXT'), or None."""
    if not name.startswith(".") or ".tmp." not in name:
        return None
    head = name[1:].rpartition(".tmp.")[0]  # 'STEM.<random>'
    stem, dot, _random = head.rpartition(".")
    return stem if dot and stem else None


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
