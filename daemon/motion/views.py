"""Which regions Motion measures, and the ones the camera moved away from.

`motion.regions`, unless a PTZ camera is at a preset that has regions of its
own: the PTZ component publishes `ptz.view` after every move (the preset,
with its `regions` and `masks`, or none after `home`, an absolute move, a
zoom or a failed move), and while the camera shows such a preset its regions
are the ones measured. `motion.masks` apply everywhere (a burnt-in clock does
not move with the camera); a preset's `masks` add to them while it is shown. Motion keeps a region's
machine state by name across a change. One that leaves the picture because
the camera moved stays listed (`Motion.region_states`, `motion`, health,
MQTT) with state UNKNOWN and `watched: false`, so a dashboard keeps its
machines; it starts UNKNOWN when it comes back, since nobody watched it
meanwhile. One removed from its preset or from `motion.regions` is gone.

`Views` holds that state for one `Motion`: the last view heard (on the
thread that published it), the source of the regions installed now and the
unwatched regions (written by the capture thread when it installs regions,
and by the config thread when `motion.regions` changes). Readers on other
threads take one reference of a dict that is replaced whole, never changed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

VIEW_EVENT = "ptz.view"  # a PTZ camera arrived somewhere: {preset, name, regions, masks}; regions None: motion.regions
CONFIGURED = "motion.regions"  # the source name of the config's own regions


class Views:
    def __init__(self) -> None:
        self._view: dict[str, Any] = {"preset": None, "name": None, "regions": None, "masks": None}
        self._lock = threading.Lock()
        self.installed = CONFIGURED  # where the regions measured now come from: "motion.regions" or "preset N"
        self._unwatched: dict[str, dict[str, Any]] = {}

    def take(self, data: Mapping[str, Any]) -> bool:
        """A `ptz.view` event's data; True when where the camera looks changed (the regions are to be compiled again)."""
        regions, masks = data.get("regions"), data.get("masks")
        view = {
            "preset": data.get("preset"),
            "name": data.get("name"),
            "regions": list(regions) if isinstance(regions, list) else None,
            "masks": list(masks) if isinstance(masks, list) else None,
        }
        with self._lock:
            same = view == self._view
            self._view = view
        return not same

    def watched(self, configured_regions: Any, configured_masks: Any) -> tuple[Any, Any, str]:
        """The regions, masks and the regions' source name for where the camera looks now."""
        view = self._view
        masks = [*configured_masks, *(view["masks"] or [])]
        if view["regions"] is None:
            return configured_regions, masks, CONFIGURED
        return view["regions"], masks, f"preset {view['preset']}"

    def moved(self, source: str) -> bool:
        """Whether installing regions of `source` means the camera looks elsewhere than the installed ones'."""
        return source != self.installed

    def install(self, source: str, dropped: Iterable[dict[str, Any]], active: Iterable[str]) -> None:
        """The capture thread installed the regions of `source` (named `active`): park the statuses of the regions the
        camera moved away from (`dropped`, empty when it did not move), and forget the parked ones `source` lists
        itself (they are active now, or its own config no longer has them)."""
        names = set(active)
        with self._lock:
            parked = {n: st for n, st in self._unwatched.items() if n not in names and st["watched_from"] != source}
            for status in dropped:
                parked[status["name"]] = {
                    **status,
                    "state": "UNKNOWN",
                    "fraction": 0.0,
                    "pixels": 0,
                    "moving": None,
                    "settling": False,
                    "in_state_s": None,
                    "idle_s": None,
                    "window_moving": None,
                    "window_frames": 0,
                    "watched": False,
                    "watched_from": self.installed,
                }
            self._unwatched = parked
            self.installed = source

    def configured(self, names: set[Any]) -> None:
        """`motion.regions` now names `names`: the parked regions of it that are gone are forgotten."""
        with self._lock:
            self._unwatched = {n: st for n, st in self._unwatched.items() if st["watched_from"] != CONFIGURED or n in names}

    def unwatched(self) -> list[dict[str, Any]]:
        return list(self._unwatched.values())

    def describe(self) -> dict[str, Any]:
        """`from` is where the measured regions come from, with the preset the camera was last seen arriving at (None:
        not at a preset, or never moved by picamd)."""
        view = self._view
        return {"from": self.installed, "preset": view["preset"], "preset_name": view["name"]}
