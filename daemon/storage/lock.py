"""The captures folder's writer lock, and the cleaning of what a killed daemon left, done only while holding it.

A capture's files appear together (`atomicfile.write_group`): its images and sidecar are all written and fsynced
under temp names first, then renamed, the sidecar last. A kill between two renames leaves final names next to temp
files of the same stem: such a capture is incomplete. At start the daemon takes an exclusive lock on
`<base_dir>/.picamd.lock` (flock, released by the kernel when the process ends, however it ends) and, holding it,
removes every temp file whatever its age and the final files of every incomplete capture; a second daemon on the
same folder finds the lock held, says so, and cleans nothing (the other one's writes in progress look the same).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from daemon.storage.atomicfile import pending_stem
from daemon.storage.layout import CAPTURE_NAME, LOCK_NAME, TEMP_DIR, day_dirs, entries, temp_files

log = logging.getLogger("picamd.export")


class FolderLock:
    """An exclusive flock on `<base>/.picamd.lock`, held for the daemon's life; `state` says how it stands."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None  # open file holding the flock
        self.base: Path | None = None
        self.state = "not taken"

    def take(self, base: Path) -> bool:
        """Hold the lock of `base` (releasing any other first). True when held; False when another process holds it
        (another daemon writes to the same folder)."""
        self.release()
        path = base / LOCK_NAME
        handle = open(path, "a+", encoding="ascii")  # held open for the daemon's life
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(32).strip() or "?"
            handle.close()
            self.base = base
            self.state = f"held by another process (pid {holder})"
            log.warning(
                "another process (pid %s) holds %s: two daemons write to %s; temp files and incomplete captures there are left alone",
                holder,
                path,
                base,
            )
            return False
        except OSError:
            handle.close()
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file, self.base, self.state = handle, base, "held"
        return True

    def release(self) -> None:
        handle, self._file = self._file, None
        self.base = None
        self.state = "not taken"
        if handle is not None:
            handle.close()  # closing the last descriptor releases the flock


def clean_interrupted(base: Path) -> None:
    """Holding the folder's lock, so no other writer is at work: remove every temp file, whatever its age, and
    the final files of every capture left incomplete (killed between the renames of its files)."""
    stems: set[str] = set()
    temps = 0
    for folder in [base / TEMP_DIR, *day_dirs(base)]:  # day folders: temps of older versions
        for path in temp_files(folder):
            if stem := pending_stem(path.name):
                stems.add(stem)
            try:
                path.unlink()
                temps += 1
                log.debug("removed %s, a partial file left by an interrupted write", path)
            except OSError as exc:
                log.warning("cannot remove %s, a partial file left by an interrupted write: %s", path, exc.strerror or exc)
    if temps:
        log.warning("removed %d temp file(s), partial files left by an interrupted write", temps)
    for stem in sorted(stems):
        m = CAPTURE_NAME.match(stem + ".json")
        if not m:
            continue
        s = m["stamp"]
        day = base / f"{s[0:4]}-{s[4:6]}-{s[6:8]}"
        removed = []
        for path, _size, _mtime in entries(day):
            if path.name.rpartition(".")[0] == stem:
                try:
                    path.unlink()
                    removed.append(path.name)
                except OSError as exc:
                    log.warning("cannot remove %s of an incomplete capture: %s", path, exc.strerror or exc)
        if removed:
            log.warning(
                "removed the incomplete capture %s/%s (%s): the daemon was stopped between the renames of its files",
                day.name,
                stem,
                ", ".join(removed),
            )
