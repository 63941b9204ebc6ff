"""What the daemon's events and state look like on MQTT: the `events` topic's episodes, the health summary.

`Episodes` turns bus events into Frigate-style event messages on
`P/events`: every episode (a machine running, people in view, a night, the
camera degraded, a full disk) is one id with a `new` message when it
starts, `update` messages while it changes and an `end` message when it is
over, each `{"type": ..., "before": ..., "after": ...}` where `before` is the
episode as the previous message had it (null for `new`) and `after` is it
now. An episode's fields: id, camera, kind (machine, person, night, camera,
disk), label, region (machine episodes), start_time, end_time (null while
open), and data (the latest bus event's fields).

| bus event                                     | episode                                 |
| --------------------------------------------- | --------------------------------------- |
| motion.state to RUNNING                       | machine `new` (label: the region)       |
| motion.state from RUNNING                     | machine `end`                           |
| detect.person, detect.count                   | person `new`, then `update`             |
| detect.clear                                  | person `end`                            |
| night.enter / night.exit                      | night `new` / `end`                     |
| camera.degraded / camera.recovered            | camera `new` / `end`                    |
| disk.full                                     | disk `new` and at once `end` (one shot) |

`health_summary` is the flat JSON of `P/health` that Home Assistant's sensors
read with `value_json.<key>`: the keys are part of the interface.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from daemon.core.bus import Event

#: Keys of the `P/health` summary that Home Assistant's sensors read.
HEALTH_KEYS = ("status", "dark_score", "cpu_temp_c", "disk_free_mb", "fps", "night", "people")


class Episodes:
    """Open episodes and the `events` messages their bus events make (used by the MQTT worker only)."""

    def __init__(self, camera: str) -> None:
        self._camera = camera
        self._open: dict[tuple[str, str], dict[str, Any]] = {}  # (kind, label) -> the episode as last published

    def on_event(self, event: Event) -> list[dict[str, Any]]:
        """The `events` payloads this bus event makes (often none)."""
        kind, data = event.kind, event.data
        ts = float(data.get("ts") or event.ts)
        if kind == "motion.state":
            region = str(data.get("region", ""))
            if data.get("new") == "RUNNING":
                return self._start("machine", region, ts, data, region=region)
            if data.get("old") == "RUNNING":
                return self._end("machine", region, ts, data)
            return []
        if kind == "detect.person" or kind == "detect.count":
            if ("person", "person") in self._open:
                return self._update("person", "person", data)
            if kind == "detect.count" and int(data.get("count") or 0) <= 0:
                return []
            return self._start("person", "person", ts, data)
        if kind == "detect.clear":
            return self._end("person", "person", ts, data)
        if kind in ("night.enter", "night.exit"):
            return self._start("night", "night", ts, data) if kind == "night.enter" else self._end("night", "night", ts, data)
        if kind == "camera.degraded":
            if ("camera", "camera") in self._open:
                return self._update("camera", "camera", data)
            return self._start("camera", "camera", ts, data)
        if kind == "camera.recovered":
            return self._end("camera", "camera", ts, data)
        if kind == "disk.full":
            return self._start("disk", "disk_full", ts, data) + self._end("disk", "disk_full", ts, data)
        return []

    def open(self) -> list[dict[str, Any]]:
        """The episodes open now (copies)."""
        return [copy.deepcopy(e) for e in self._open.values()]

    def _start(self, kind: str, label: str, ts: float, data: dict[str, Any], region: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if (kind, label) in self._open:  # a new start of something open: the old one ends there
            out += self._end(kind, label, ts, data)
        episode: dict[str, Any] = {
            "id": f"{ts:.6f}-{kind}-{label}",
            "camera": self._camera,
            "kind": kind,
            "label": label,
            "start_time": round(ts, 3),
            "end_time": None,
            "data": _plain(data),
        }
        if region is not None:
            episode["region"] = region
        self._open[(kind, label)] = episode
        out.append({"type": "new", "before": None, "after": copy.deepcopy(episode)})
        return out

    def _update(self, kind: str, label: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        episode = self._open[(kind, label)]
        before = copy.deepcopy(episode)
        episode["data"] = _plain(data)
        return [{"type": "update", "before": before, "after": copy.deepcopy(episode)}]

    def _end(self, kind: str, label: str, ts: float, data: dict[str, Any]) -> list[dict[str, Any]]:
        episode = self._open.pop((kind, label), None)
        if episode is None:
            return []  # it started before picamd did (or before MQTT was on): nothing to end
        before = copy.deepcopy(episode)
        episode["end_time"] = round(max(ts, episode["start_time"]), 3)
        episode["data"] = _plain(data)
        return [{"type": "end", "before": before, "after": episode}]


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """An event's fields without the ones that are not for the broker (a region's webhook URL may hold a key)."""
    return {k: v for k, v in data.items() if k != "webhook"}


def machine_attributes(region: dict[str, Any]) -> dict[str, Any]:
    """`P/machine/<region>/attributes`: one region's state with its time in state and idle time (from `Motion.region_states`)."""
    return {
        "region": region.get("name"),
        "machine_id": region.get("machine_id"),
        "state": region.get("state"),
        "in_state_s": region.get("in_state_s"),
        "idle_s": region.get("idle_s"),
        "window_moving": region.get("window_moving"),
        "fraction": region.get("fraction"),
        "watched": region.get("watched", True),  # false: out of the picture since the PTZ camera moved
        "ts": round(time.time(), 3),
    }


def health_summary(h: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The flat `P/health` payload from the daemon's `health()`: what a dashboard shows at a glance."""
    system = h.get("system") or {}
    camera = h.get("camera") or {}
    latest = h.get("latest_frame") or {}
    night = h.get("night") or {}
    detect = h.get("detect") or {}
    throttling = system.get("throttling") or {}
    mjpeg = (h.get("clients") or {}).get("mjpeg") or {}
    last = detect.get("last") or {}
    out: dict[str, Any] = {
        "ts": round(time.time(), 3),
        "status": h.get("status"),
        "degraded": h.get("degraded", []),
        "version": h.get("version"),
        "uptime_s": h.get("uptime_s"),
        "camera": camera.get("state"),
        "fps": camera.get("fps"),
        "dark_score": latest.get("dark_score"),
        "night": night.get("state") == "NIGHT",
        "night_mode": night.get("mode"),
        "cpu_temp_c": system.get("cpu_temp_c"),
        "throttled_now": sorted(k for k, on in (throttling.get("now") or {}).items() if on),
        "disk_free_mb": system.get("disk_free_mb"),
        "mem_available_mb": system.get("mem_available_mb"),
        "rss_mb": system.get("rss_mb"),
        "ring_fill": (h.get("ring") or {}).get("fill"),
        "viewers": mjpeg.get("viewers"),
        "detect": detect.get("state"),
        "people": last.get("people"),
    }
    if extra:
        out.update(extra)
    return out
