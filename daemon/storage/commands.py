"""The capture commands: `save`, `pastStack`, `stack [N] [FORMATS] [bg]` and `list [YYYY-MM-DD]`.

The handlers only parse, call the Exporter and word its answer: every check (formats, frame counts, the stack
memory budget, the disk) is the Exporter's, so a command refuses exactly what the Python interface refuses, with
the same `ERR ...` reason. A plain `stack` is tied to its connection (`Session.is_connected`), `stack ... bg` is not.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.commands import Command, Registry, Reply, Session
from daemon.storage.errors import ExportError, os_reason
from daemon.storage.layout import normalize_formats
from daemon.storage.stacker import MAX_STACK

if TYPE_CHECKING:
    from daemon.config import Section
    from daemon.storage.export import Exporter


class ExportCommands:
    """The command handlers of one Exporter; `register` adds them to a registry."""

    def __init__(self, exporter: Exporter, cfg: Section) -> None:
        self._exporter = exporter
        self._cfg = cfg

    def register(self, registry: Registry) -> None:
        registry.register(
            Command(
                "save", self._cmd_save, "Save the newest full-resolution frame now", usage="[jpg|png|npy ...]", mutating=True, max_args=None
            )
        )
        registry.register(
            Command(
                "pastStack",
                self._cmd_past_stack,
                "Stack the ring frames of the last export.save_before_s seconds into one image",
                usage="[jpg|png|npy ...]",
                mutating=True,
                max_args=None,
            )
        )
        registry.register(
            Command(
                "stack",
                self._cmd_stack,
                f"Stack the next N full-resolution frames (default export.stack_count, 1..{MAX_STACK}); "
                "cancelled if this connection closes first, unless `bg` (answer now, finish in the background)",
                usage="[N] [jpg|png|npy ...] [bg]",
                mutating=True,
                max_args=None,
            )
        )
        registry.register(
            Command("list", self._cmd_list, "Saved files: the days with counts, or the files of one day", usage="[YYYY-MM-DD]", max_args=1)
        )

    def _reply(self, paths: list[Path], how: dict[str, Any]) -> Reply:
        if how["method"] == "single":
            detail = f"frame {how['last_frame_id']}"
        else:
            detail = f"{how['method']} of {how['frames']} frames (f{how['first_frame_id']}..f{how['last_frame_id']})"
            if how.get("requested"):
                detail += f", {how['requested']} requested"
            if how.get("note"):
                detail += f" ({how['note']})"
        return Reply(True, f"saved {len(paths)} file(s): {detail}", body=[str(p) for p in paths])

    def _cmd_save(self, args: list[str], session: Session) -> Reply:
        try:
            return self._reply(*self._exporter.save_info(args or None))
        except ExportError as exc:
            return Reply.error(str(exc))

    def _cmd_past_stack(self, args: list[str], session: Session) -> Reply:
        try:
            return self._reply(*self._exporter.past_stack_info(args or None))
        except ExportError as exc:
            return Reply.error(str(exc))

    def _cmd_stack(self, args: list[str], session: Session) -> Reply:
        n = int(self._cfg.stack_count)
        background = bool(args) and args[-1].lower() == "bg"
        if background:
            args = args[:-1]
        if args and re.fullmatch(r"[+-]?\d+", args[0]):
            n = int(args[0])
            args = args[1:]
            if not 1 <= n <= MAX_STACK:
                return Reply.error(f"N must be 1..{MAX_STACK}, not {n}")
        try:
            fmts = normalize_formats(list(args) if args else list(self._cfg.formats))  # refuse bad formats before waiting for frames
            if background:
                job = self._exporter.start_background_stack(n, fmts, who=session.peer)
                took = f" in about {job['expected_s']:g} s" if job.get("expected_s") else ""
                return Reply(
                    True,
                    f"stacking {job['frames']} frames in the background ({job['method']}): "
                    f"{', '.join(job['formats'])} into {job['folder']}{took}; `health` shows it",
                    body=job,
                )
            return self._reply(*self._exporter.stack_next_info(n, fmts, wanted=session.is_connected, who=session.peer))
        except ExportError as exc:
            return Reply.error(str(exc))

    def _cmd_list(self, args: list[str], session: Session) -> Reply:
        date = args[0] if args else None
        try:
            items = self._exporter.list_files(date)
        except ValueError as exc:
            return Reply.error(str(exc))
        except OSError as exc:
            return Reply.error(f"cannot list the captures: {os_reason(exc, self._exporter.base_dir)}")
        if date is None:
            return Reply(True, f"{len(items)} day(s)", body=items)
        return Reply(True, f"{len(items)} file(s) on {date}", body=items)
