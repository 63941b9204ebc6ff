"""What a failed save is: the ExportError family, and an OSError read as a reason a user can act on.

Kept apart from the Exporter so that every storage module (retention, the stack budget, the clips) raises the same
errors without importing the Exporter. Every failed save reads as `disk full: ...` (no room, whatever retention
could delete) or `disk error: ...` (the captures folder replaced by a file, permissions, a read-only or failing
card), never as a traceback. `summary` leaves out what changes from one attempt to the next (file names, sizes): it
is the degraded reason in `health` and the key that rate-limits the log, so a full disk under load logs one line,
then one a minute with the count of those in between.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
IN_THE_WAY = " is a file where a folder is needed"


class ExportError(Exception):
    """A save failed; the message is the reason a user reads after `ERR `.

    `summary` names the kind of failure without what changes from one attempt to the next (file names, sizes):
    it is the degraded reason in `health` and the key that rate-limits the log.
    """

    def __init__(self, message: str, summary: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary or message


class FormatError(ExportError, ValueError):
    pass


class NoFrameError(ExportError):
    pass


class DiskFullError(ExportError):
    pass


class StorageError(ExportError):
    """Writing failed for another reason than space (read-only or failing SD card, permissions)."""


class ExportCancelled(ExportError):
    pass


class BusyError(ExportError):
    """Refused for now: the stacks in progress hold the memory budget (`ERR busy: ...`)."""


class TooLargeError(ExportError):
    """Refused: more than the whole memory budget (`ERR too large: ...`)."""


def mb(n: float) -> str:
    """A byte count as the messages show it: '1.5 MB'."""
    return f"{n / 2**20:.1f} MB"


def os_reason(exc: OSError, base: Path) -> str:
    """What went wrong, without the file name that changes from one save to the next (but naming a file that
    stands where a folder must be: the captures folder, or a day folder, replaced by a file)."""
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        path = Path(exc.filename) if exc.filename else base
        for p in reversed([path, *path.parents]):
            if os.path.lexists(p) and not p.is_dir():
                return f"{p}{IN_THE_WAY}"
    return f"{exc.strerror or exc} in {base}"


def classify(exc: OSError, base: Path, free: int | None) -> ExportError:
    """The ExportError of an OSError met while writing in `base` (`free`: bytes free there, None when unknown)."""
    target = exc.filename if exc.filename else base
    reason = exc.strerror or str(exc)
    if exc.errno in DISK_FULL_ERRNOS:
        shown = "" if free is None else f", {mb(free)} free"
        return DiskFullError(f"disk full: {reason} while writing {target}{shown}", summary=f"disk full: {reason} in {base}")
    why = os_reason(exc, base)
    if why.endswith(IN_THE_WAY):
        return StorageError(f"disk error: {why}", summary=f"disk error: {why}")
    return StorageError(f"disk error: {reason} while writing {target}", summary=f"disk error: {why}")
