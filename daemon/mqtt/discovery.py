"""Home Assistant MQTT discovery: one device per camera, its entities, so adding picamd needs no YAML.

Each entity is a retained config message on
`<discovery_prefix>/<component>/<node_id>/<object_id>/config` (node_id
`picamd_<camera>`), with the keys Home Assistant's MQTT integration documents
for that component, a `unique_id`, the shared `device` (identifiers
`[node_id]`) and `availability_topic` (`P/available`, online/offline). The
entities:

| component     | object                        | reads                                                      |
| ------------- | ----------------------------- | ---------------------------------------------------------- |
| camera        | camera                        | `P/snapshot` (JPEG), when mqtt.snapshot_every_s > 0        |
| binary_sensor | motion_<region>               | `P/motion/<region>` ON/OFF, device_class motion            |
| binary_sensor | machine_<region>              | `P/machine/<region>/state`, device_class running           |
| binary_sensor | night                         | `P/night` ON/OFF                                           |
| sensor        | people                        | `P/people`                                                 |
| sensor        | brightness, cpu_temperature, disk_free | `P/health` (value_json.dark_score, cpu_temp_c, disk_free_mb) |
| sensor        | machine_<region>_time_in_state | `P/machine/<region>/attributes` (value_json.in_state_s)   |
| select        | night_mode                    | `P/night/mode`, commands to `P/night/set` (auto/day/night) |
| switch        | motion                        | `P/motion/state`, commands to `P/motion/set` (ON/OFF)      |
| switch        | detection                     | `P/detect/state`, commands to `P/detect/set` (ON/OFF)      |

`REQUIRED` lists, per component, the keys Home Assistant refuses a config
without; the tests check every payload against it.
"""

from __future__ import annotations

from typing import Any

from .topics import Topics, object_id

#: Keys Home Assistant's MQTT integration requires per component (from its documentation of each platform).
REQUIRED: dict[str, tuple[str, ...]] = {
    "camera": ("topic",),
    "binary_sensor": ("state_topic",),
    "sensor": ("state_topic",),
    "select": ("command_topic", "options"),
    "switch": ("command_topic",),
}

NIGHT_OPTIONS = ("auto", "day", "night")


def device(topics: Topics, version: str, url: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "identifiers": [topics.node_id],
        "name": topics.camera,
        "manufacturer": "picamd",
        "model": "picamd camera daemon",
        "sw_version": version,
    }
    if url:
        out["configuration_url"] = url
    return out


def entities(topics: Topics, version: str, url: str | None, regions: list[tuple[str, str]], snapshot: bool) -> dict[str, dict[str, Any]]:
    """Every discovery topic and its config. `regions` are (name, slug) pairs; `snapshot` adds the camera entity."""
    common = {
        "availability_topic": topics.available,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device(topics, version, url),
        "origin": {"name": "picamd", "sw_version": version},
    }
    node = topics.node_id
    out: dict[str, dict[str, Any]] = {}

    def add(component: str, obj: str, config: dict[str, Any]) -> None:
        oid = object_id(obj)
        out[topics.discovery(component, oid)] = {"unique_id": f"{node}_{oid}", **config, **common}

    if snapshot:
        add("camera", "camera", {"name": "Snapshot", "topic": topics.snapshot})
    on_off = {"payload_on": "ON", "payload_off": "OFF"}
    for name, slug in regions:
        add(
            "binary_sensor",
            f"motion_{slug}",
            {"name": f"Motion {name}", "state_topic": topics.motion(slug), "device_class": "motion", **on_off},
        )
        add(
            "binary_sensor",
            f"machine_{slug}",
            {
                "name": f"Machine {name}",
                "state_topic": topics.machine_state(slug),
                "device_class": "running",
                "value_template": "{{ 'ON' if value == 'RUNNING' else 'OFF' }}",
                **on_off,
                "json_attributes_topic": topics.machine_attributes(slug),
            },
        )
        add(
            "sensor",
            f"machine_{slug}_time_in_state",
            {
                "name": f"Machine {name} time in state",
                "state_topic": topics.machine_attributes(slug),
                "value_template": "{{ value_json.in_state_s }}",
                "device_class": "duration",
                "unit_of_measurement": "s",
                "state_class": "measurement",
            },
        )
    add("binary_sensor", "night", {"name": "Night", "state_topic": topics.night, "icon": "mdi:weather-night", **on_off})
    add("sensor", "people", {"name": "People", "state_topic": topics.people, "state_class": "measurement", "icon": "mdi:account-group"})
    add(
        "sensor",
        "brightness",
        {
            "name": "Brightness",
            "state_topic": topics.health,
            "value_template": "{{ value_json.dark_score }}",
            "state_class": "measurement",
            "icon": "mdi:brightness-6",
            "entity_category": "diagnostic",
        },
    )
    add(
        "sensor",
        "cpu_temperature",
        {
            "name": "CPU temperature",
            "state_topic": topics.health,
            "value_template": "{{ value_json.cpu_temp_c }}",
            "device_class": "temperature",
            "unit_of_measurement": "°C",
            "state_class": "measurement",
            "entity_category": "diagnostic",
        },
    )
    add(
        "sensor",
        "disk_free",
        {
            "name": "Disk free",
            "state_topic": topics.health,
            "value_template": "{{ value_json.disk_free_mb }}",
            "device_class": "data_size",
            "unit_of_measurement": "MiB",
            "state_class": "measurement",
            "entity_category": "diagnostic",
        },
    )
    add(
        "select",
        "night_mode",
        {
            "name": "Night mode",
            "command_topic": topics.night_set,
            "state_topic": topics.night_mode,
            "options": list(NIGHT_OPTIONS),
            "icon": "mdi:theme-light-dark",
        },
    )
    add(
        "switch",
        "motion",
        {
            "name": "Motion detection",
            "command_topic": topics.motion_set,
            "state_topic": topics.motion_state,
            **on_off,
            "state_on": "ON",
            "state_off": "OFF",
            "icon": "mdi:motion-sensor",
        },
    )
    add(
        "switch",
        "detection",
        {
            "name": "Person detection",
            "command_topic": topics.detect_set,
            "state_topic": topics.detect_state,
            **on_off,
            "state_on": "ON",
            "state_off": "OFF",
            "icon": "mdi:account-search",
        },
    )
    return out
