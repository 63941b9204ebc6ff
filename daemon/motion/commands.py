"""The motion commands: `motion [REGION]`, `regions`, `region add NAME X Y W H [MIN]`, `region del NAME`.

Reading (`motion`, `regions`) is open; `region` changes the config and needs
the token when one is set. `region add` checks the new region exactly as the
component will measure it (`Motion.compile`, the same path as a config
change), so what it accepts is what the capture loop takes on with its next
frame. Both edits go through `config.set`, so `overwrite_config` keeps them.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING, Any

from daemon.commands import Command, Registry, Reply, Session
from daemon.motion.machine import SETTLING
from daemon.motion.regions import MAX_REGIONS

if TYPE_CHECKING:
    from daemon.config import Section
    from daemon.motion.component import Motion

log = logging.getLogger("picamd.motion")

_DELETE_WORDS = ("del", "delete")


class MotionCommands:
    """The command handlers of one `Motion` component; `register` adds them to a registry."""

    def __init__(self, motion: Motion, cfg: Section) -> None:
        self._motion = motion
        self._cfg = cfg
        self._edit_lock = threading.Lock()  # region add/del: read-modify-write of motion.regions

    def register(self, registry: Registry) -> None:
        registry.register(
            Command(
                "motion",
                self._cmd_motion,
                "Machine state, changed fraction and time in state of every region, or of one",
                usage="[REGION]",
                max_args=1,
                raw_tail=True,
            )
        )
        registry.register(Command("regions", self._cmd_regions, "The configured motion regions and masks, and how each is measured"))
        add_help = (
            "Add a rectangular motion region (pixels of the full frame, or fractions 0..1; MIN: fraction of the "
            "region <= 1 or changed pixels > 1); applies from the next frame"
        )
        registry.register(
            Command(
                "region",
                lambda a, s: self._region_add(a),
                add_help,
                usage="NAME X Y W H [MIN]",
                mutating=True,
                min_args=5,
                max_args=6,
                sub="add",
            )
        )
        for word in _DELETE_WORDS:
            registry.register(
                Command(
                    "region",
                    lambda a, s: self._region_del(" ".join(a)),
                    "Delete a motion region; applies from the next frame" + ("" if word == "del" else " (same as del)"),
                    usage="NAME",
                    mutating=True,
                    min_args=1,
                    max_args=None,
                    sub=word,
                )
            )

    def _cmd_motion(self, args: list[str], session: Session) -> Reply:
        motion = self._motion
        states = motion.region_states()
        if args:
            name = args[0].strip()
            for st in states:
                if st["name"] == name and not st["watched"]:
                    return Reply(True, f"{name} {st['state']} (not in the picture since the camera left {st['watched_from']})", body=st)
                if st["name"] == name:
                    return Reply(True, f"{name} {SETTLING if st['settling'] else st['state']}", body=st)
            if motion.pending(name):
                # Just added: the capture loop takes it on with its next frame.
                return Reply(True, f"{name} PENDING", body={"name": name, "state": "PENDING"})
            known = ", ".join(st["name"] for st in states) or "none configured"
            return Reply.error(f"unknown region {name[:64]!r} (known: {known})")
        body = {"enabled": motion.enabled, "settling": motion.settling, "regions": states}
        if not states:
            return Reply(True, "no regions configured (region add NAME X Y W H)", body=body)
        return Reply(True, ", ".join(f"{st['name']} {st['state']}" for st in states), body=body)

    def _cmd_regions(self, args: list[str], session: Session) -> Reply:
        motion = self._motion
        layout = motion.layout()
        regions, masks, _source = motion.watched()
        body = {
            "frame_size": list(motion.frame_size),
            "ring_size": list(motion.ring_size),
            "regions": self._cfg.regions,
            "masks": self._cfg.masks,
            "in_use": {"regions": regions, "masks": masks},  # a PTZ preset's own regions, and its masks added
            **layout,
        }
        refused, active = len(layout["errors"]), len(layout["active"])
        text = f"{active} region{'' if active == 1 else 's'} active" + (f", {refused} refused" if refused else "")
        if layout["from"] != "motion.regions":
            text += f" (the PTZ camera's {layout['from']} has its own; motion.regions apply elsewhere)"
        return Reply(True, text, body=body)

    def _elsewhere(self) -> str:
        """What a region edit adds when a PTZ preset's own regions are measured now (the edit is to motion.regions)."""
        source = self._motion.watching()["from"]
        if source == "motion.regions":
            return ""
        return f"; the camera is at {source}, whose own regions are measured until it moves"

    def _region_add(self, args: list[str]) -> Reply:
        if len(args) not in (5, 6):
            return Reply.error("usage: region add NAME X Y W H [MIN]")
        name = args[0]
        numbers: list[float] = []
        for label, text in zip(("X", "Y", "W", "H", "MIN"), args[1:], strict=False):
            try:
                v = float(text)
            except ValueError:
                return Reply.error(f"{label} must be a number, not {text[:32]!r}")
            if not math.isfinite(v):
                return Reply.error(f"{label} must be a finite number, not {text[:32]!r}")
            numbers.append(v)
        rect: list[float | int] = list(numbers[:4])
        if max(rect) > 1 and all(v.is_integer() for v in numbers[:4]):
            rect = [int(v) for v in rect]  # pixels: keep the config tidy
        entry: dict[str, Any] = {"name": name, "rect": rect}
        if len(numbers) == 5:
            limit = numbers[4]
            if limit <= 0:
                return Reply.error(f"MIN must be above 0, not {args[5][:32]!r}")
            if limit <= 1:
                entry["min_fraction"] = float(limit)
            elif float(limit).is_integer():
                entry["min_pixels"] = int(limit)
            else:
                return Reply.error(f"MIN above 1 counts changed pixels and must be a whole number, not {args[5][:32]!r}")
        with self._edit_lock:
            current = list(self._cfg.regions)
            if any(isinstance(r, dict) and r.get("name") == name for r in current):
                return Reply.error(f"region {name!r} exists already (region del {name} first)")
            if len(current) >= MAX_REGIONS:
                return Reply.error(f"{len(current)} regions already, at most {MAX_REGIONS} (region del one first)")
            # Checked with the regions already there (an already refused one is reported in `regions` and does not
            # block this one) and the masks, as the capture loop will take it on.
            compiled = self._motion.compile([*current, entry], self._cfg.masks)
            problem = compiled.reason(len(current))
            if problem is not None:
                return Reply.error(problem)
            geometry = next((g for g in compiled.geometries if g.spec.name == name), None)
            if geometry is None:  # the list as a whole was refused
                return Reply.error("; ".join(compiled.errors()) or f"region {name!r} was refused")
            try:
                self._cfg.config.set("motion.regions", [*current, entry])
            except ValueError as exc:
                return Reply.error(str(exc))
        log.info("motion: region %s added by command: %s", name, entry)
        return Reply(
            True,
            f"region {name} added, measured on the {geometry.source} frame; applies from the next frame (overwrite_config keeps it)"
            + self._elsewhere(),
            body={"region": entry, "measured": geometry.describe()},
        )

    def _region_del(self, name: str) -> Reply:
        if not name:
            return Reply.error("usage: region del NAME")
        with self._edit_lock:
            current = list(self._cfg.regions)
            kept = [r for r in current if not (isinstance(r, dict) and r.get("name") == name)]
            if len(kept) == len(current):
                known = ", ".join(str(r.get("name")) for r in current if isinstance(r, dict)) or "none configured"
                return Reply.error(f"unknown region {name[:64]!r} (known: {known})")
            try:
                self._cfg.config.set("motion.regions", kept)
            except ValueError as exc:
                return Reply.error(str(exc))
        log.info("motion: region %s deleted by command", name)
        return Reply(True, f"region {name} deleted; applies from the next frame (overwrite_config keeps it)" + self._elsewhere())
