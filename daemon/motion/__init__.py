"""Motion checks on regions of interest, and the machine state each region implies.

One module per job:
- `regions.py`: what a region or mask may look like, checked in one place (the config schema uses it too; no OpenCV);
- `measure.py`: the measure (`RegionMeter` for tools, and the passes the daemon shares between regions);
- `machine.py`: the sliding window and the RUNNING/STOPPED/DEEP_SLEEP state machine;
- `component.py`: the `Motion` capture-loop stage (events, the X-Motion header, resets, health);
- `views.py`: which regions are measured (`motion.regions`, or a PTZ preset's own) and the ones out of view;
- `commands.py`: `motion`, `regions`, `region add|del`;
- `log.py`: the background writer of the motion logs, and their format.

`Motion`, `RegionMeter` and `SMALL_REGION_PX` import OpenCV, so they are loaded
on first use: importing this package for the region checks stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from daemon.core.timefmt import format_duration
from daemon.motion.regions import RegionSpec, check_masks, check_regions, parse_masks, parse_regions

if TYPE_CHECKING:
    from daemon.motion.component import Motion
    from daemon.motion.measure import SMALL_REGION_PX, RegionMeter

__all__ = [
    "SMALL_REGION_PX",
    "Motion",
    "RegionMeter",
    "RegionSpec",
    "check_masks",
    "check_regions",
    "format_duration",
    "parse_masks",
    "parse_regions",
]

_NEEDS_OPENCV = {"Motion": "daemon.motion.component", "RegionMeter": "daemon.motion.measure", "SMALL_REGION_PX": "daemon.motion.measure"}


def __getattr__(name: str) -> Any:
    module = _NEEDS_OPENCV.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
