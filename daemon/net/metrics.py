"""GET /metrics: the daemon's figures in the Prometheus text exposition format (version 0.0.4), without prometheus_client.

`render(health)` turns the App's `health()` dict into metrics, so /metrics,
/health and the `health` command can never disagree, and a scrape costs one
`health()` call and some string formatting. The format is small enough to
write directly: families one after the other, each with its `# HELP` and
`# TYPE` line before its samples; HELP text escapes backslash and line feed,
label values backslash, double quote and line feed; values are Go-style
floats (`NaN`, `+Inf`, `-Inf`). Names follow Prometheus' conventions: the
`picamd_` prefix, base units (seconds, bytes, ratios 0..1, degrees Celsius)
as a suffix, `_total` on every counter. A figure the health dict does not
have (no temperature sensor on a PC, no detector) is left out rather than
given a made-up value.

Why not prometheus_client (bench/metrics_memory.py): inside the daemon it
would add only about 0.3 MiB of RSS, since the daemon has already loaded most
of what it imports (alone it costs 12 MiB), so memory does not decide; this
module stays because it adds no dependency to install on a Pi, renders a
scrape in about half the time, and the mapping from `health()` to families
would be the same code either way. Tests check its output with
prometheus_client's own parser.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["CONTENT_TYPE", "Exposition", "escape_help", "escape_label_value", "format_value", "render"]

#: What a scraper is told it gets (the text format's media type).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KINDS = frozenset({"counter", "gauge", "histogram", "untyped"})
#: Every state a motion region can be in (daemon/motion/machine.py); each is exposed as 0 or 1, so a state
#: that ends shows 0 rather than vanishing.
MOTION_STATES = ("UNKNOWN", "RUNNING", "STOPPED", "DEEP_SLEEP")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MIB = 1024 * 1024

Labels = Mapping[str, str]
Sample = tuple[Labels, float | int | bool | None]


def escape_help(text: str) -> str:
    """HELP text: backslash and line feed escaped (the format allows any other character there)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(text: str) -> str:
    """A label value between double quotes: backslash, double quote and line feed escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float | int | bool) -> str:
    """A sample value as the format writes it: integers exactly, floats in their shortest exact form, NaN and ±Inf by name."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return repr(number)


def _label_text(labels: Labels) -> str:
    if not labels:
        return ""
    parts = []
    for name, value in labels.items():
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"{name!r} is not a valid label name")
        parts.append(f'{name}="{escape_label_value(str(value))}"')
    return "{" + ",".join(parts) + "}"


class Exposition:
    """Metric families in the order they are added, each family's lines together, each name once."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._names: set[str] = set()

    def _head(self, name: str, kind: str, help_text: str) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid metric name")
        if kind not in KINDS:
            raise ValueError(f"{kind!r} is not a metric type")
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        if name in self._names:
            raise ValueError(f"metric {name} added twice")
        self._names.add(name)
        self._lines.append(f"# HELP {name} {escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        """A counter, gauge or untyped family; samples whose value is None are left out, and so is a family left empty."""
        kept = [(labels, value) for labels, value in samples if _is_number(value)]
        if not kept:
            return
        self._head(name, kind, help_text)
        for labels, value in kept:
            assert value is not None  # _is_number
            self._lines.append(f"{name}{_label_text(labels)} {format_value(value)}")

    def gauge(self, name: str, help_text: str, value: float | int | bool | None, labels: Labels | None = None) -> None:
        self.family(name, "gauge", help_text, [(labels or {}, value)])

    def counter(self, name: str, help_text: str, value: float | int | None, labels: Labels | None = None) -> None:
        self.family(name, "counter", help_text, [(labels or {}, value)])

    def histogram(
        self, name: str, help_text: str, buckets: Iterable[tuple[float, int]], total: float, count: int, labels: Labels | None = None
    ) -> None:
        """`buckets` are (upper bound, cumulative count) in rising order; the `+Inf` bucket is `count`."""
        base = dict(labels or {})
        if "le" in base:
            raise ValueError("a histogram's own labels cannot include le")
        self._head(name, "histogram", help_text)
        previous = -math.inf
        seen = 0
        for bound, cumulative in buckets:
            if not bound > previous or cumulative < seen or cumulative > count:
                raise ValueError(f"histogram {name}: buckets must rise and be cumulative: {bound} {cumulative}")
            previous, seen = bound, cumulative
            self._lines.append(f"{name}_bucket{_label_text({**base, 'le': format_value(float(bound))})} {cumulative}")
        self._lines.append(f"{name}_bucket{_label_text({**base, 'le': '+Inf'})} {int(count)}")
        self._lines.append(f"{name}_sum{_label_text(base)} {format_value(float(total))}")
        self._lines.append(f"{name}_count{_label_text(base)} {int(count)}")

    def text(self) -> str:
        """The exposition; it ends with a line feed, as the format requires."""
        return "\n".join(self._lines) + "\n" if self._lines else ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def _num(value: Any) -> float | int | None:
    """A number from the health dict, or None (missing, null, or not a number)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    return None


def _mib_to_bytes(value: Any) -> int | None:
    number = _num(value)
    return None if number is None else int(round(number * _MIB))


def _ms_to_seconds(value: Any) -> float | None:
    number = _num(value)
    return None if number is None else round(number / 1000.0, 9)  # 23.47 ms -> 0.02347, not 0.023469999999999998


def _section(health: Mapping[str, Any], *path: str) -> Mapping[str, Any]:
    node: Any = health
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def render(health: Mapping[str, Any]) -> str:
    """The /metrics text for one `health()` dict (camera.name, in `camera.name` of it, labels `picamd_info`)."""
    exp = Exposition()
    _daemon(exp, health)
    _capture(exp, health)
    _night(exp, health)
    _stream(exp, health)
    _commands(exp, health)
    _motion(exp, health)
    _detect(exp, health)
    _notify(exp, health)
    _storage(exp, health)
    _system(exp, health)
    return exp.text()


def _daemon(exp: Exposition, h: Mapping[str, Any]) -> None:
    info = {"version": str(h.get("version", "unknown"))}
    camera = _section(h, "camera").get("name")
    if camera:
        info["camera"] = str(camera)
    source = _section(h, "camera", "source").get("source")
    if source:
        info["source"] = str(source)
    exp.gauge("picamd_info", "Always 1; the labels say which picamd this is", 1, info)
    if "status" in h:
        exp.gauge("picamd_healthy", "1 while no component is degraded", h.get("status") == "ok")
    exp.gauge("picamd_uptime_seconds", "Seconds since the daemon started", _num(h.get("uptime_s")))
    components = _section(h, "components")
    exp.family(
        "picamd_component_degraded",
        "gauge",
        "1 while the component is degraded",
        [({"component": name}, s.get("state", "ok") != "ok") for name, s in components.items() if isinstance(s, Mapping)],
    )
    exp.family(
        "picamd_component_errors_total",
        "counter",
        "Errors the component has counted since the start",
        [({"component": name}, _num(s.get("errors"))) for name, s in components.items() if isinstance(s, Mapping)],
    )


def _capture(exp: Exposition, h: Mapping[str, Any]) -> None:
    cam = _section(h, "camera")
    exp.counter("picamd_frames_captured_total", "Frames the capture loop took from the source", _num(cam.get("frames")))
    exp.counter(
        "picamd_frames_dropped_total",
        "Frames the source delivered that the capture loop never took (a newer one "
        "replaced it, or the loop paced the source to camera.framerate)",
        _num(cam.get("dropped")),
    )
    exp.gauge("picamd_capture_frames_per_second", "Capture rate, smoothed over the last frames", _num(cam.get("fps")))
    exp.gauge("picamd_capture_last_frame_age_seconds", "Seconds since the newest frame arrived", _num(cam.get("last_frame_age_s")))
    exp.counter("picamd_camera_reopens_total", "Times the capture loop (re)opened the source after it failed", _num(cam.get("reopens")))
    ring = _section(h, "ring")
    capacity, fill = _num(ring.get("capacity")), _num(ring.get("fill"))
    exp.gauge("picamd_ring_capacity_frames", "Frames the ring holds", capacity)
    exp.gauge("picamd_ring_frames", "Frames in the ring now", fill)
    exp.gauge(
        "picamd_ring_fill_ratio", "Share of the ring that holds frames (0..1)", fill / capacity if fill is not None and capacity else None
    )
    exp.gauge("picamd_ring_bytes", "Bytes of frame memory in the ring", _num(ring.get("bytes")))


def _night(exp: Exposition, h: Mapping[str, Any]) -> None:
    night = _section(h, "night")
    if "state" in night:
        exp.gauge("picamd_night", "1 at night, 0 by day", night.get("state") == "NIGHT")
    exp.gauge("picamd_dark_score", "Mean brightness 0-255 of the newest downscaled frame", _num(night.get("score")))
    exp.counter("picamd_night_switches_total", "Switches between day and night", _num(night.get("switches")))


def _stream(exp: Exposition, h: Mapping[str, Any]) -> None:
    enc = _section(h, "encoder")
    exp.counter(
        "picamd_jpeg_encodes_total",
        "JPEG encodes for the stream, snapshots and shortstream (one per frame however many watch)",
        _num(enc.get("encodes")),
    )
    exp.gauge("picamd_jpeg_last_encode_seconds", "Time the last JPEG encode took", _ms_to_seconds(enc.get("last_encode_ms")))
    exp.gauge("picamd_jpeg_last_size_bytes", "Size of the last JPEG", _num(enc.get("last_jpeg_bytes")))
    web = _section(h, "clients", "mjpeg")
    exp.gauge("picamd_stream_clients", "Viewers of /stream now", _num(web.get("viewers")))
    exp.gauge("picamd_stream_clients_max", "Most /stream viewers at once (http.max_clients)", _num(web.get("max_clients")))
    exp.counter("picamd_stream_frames_sent_total", "Frames sent to /stream viewers", _num(web.get("frames_sent")))
    exp.counter("picamd_stream_sent_bytes_total", "Bytes sent to /stream viewers", _num(web.get("bytes_sent")))
    exp.counter(
        "picamd_stream_clients_dropped_total",
        "Viewers dropped because their socket stayed blocked",
        _num(web.get("dropped_for_slow_clients")),
    )
    exp.counter("picamd_http_requests_total", "HTTP requests answered", _num(web.get("requests")))
    exp.family(
        "picamd_http_rejected_total",
        "counter",
        "HTTP connections refused or dropped, by reason",
        [
            ({"reason": "forbidden"}, _num(web.get("rejected_forbidden"))),
            ({"reason": "busy"}, _num(web.get("rejected_busy"))),
            ({"reason": "header_timeout"}, _num(web.get("header_timeouts"))),
            ({"reason": "unread_answer"}, _num(web.get("unread_answers_dropped"))),
        ],
    )
    auth = _section(web, "auth")
    exp.family(
        "picamd_http_logins_total",
        "counter",
        "HTTP logins checked, by result",
        [
            ({"result": "ok"}, _num(auth.get("logins_ok"))),
            ({"result": "failed"}, _num(auth.get("logins_failed"))),
        ],
    )


def _commands(exp: Exposition, h: Mapping[str, Any]) -> None:
    ctl = _section(h, "clients", "control")
    exp.gauge("picamd_command_clients", "Connections to the command port now", _num(ctl.get("clients")))
    exp.counter("picamd_commands_total", "Commands answered on the command port", _num(ctl.get("commands_served")))
    exp.counter("picamd_command_connections_total", "Connections accepted on the command port", _num(ctl.get("connections_total")))


def _motion(exp: Exposition, h: Mapping[str, Any]) -> None:
    motion = _section(h, "motion")
    regions = [(name, r) for name, r in _section(motion, "regions").items() if isinstance(r, Mapping)]
    if "enabled" in motion:
        exp.gauge("picamd_motion_enabled", "1 while motion is measured", bool(motion.get("enabled")))
    exp.counter(
        "picamd_motion_resets_total",
        "Times the motion background was reset (brightness jump, night switch, reopen)",
        _num(motion.get("resets")),
    )
    exp.family(
        "picamd_motion_region_changed_ratio",
        "gauge",
        "Share of the region's pixels that changed in the newest frame (0..1)",
        [({"region": name}, _num(r.get("fraction"))) for name, r in regions],
    )
    exp.family(
        "picamd_motion_region_moving",
        "gauge",
        "1 when the region moved in the newest frame",
        [({"region": name}, _num(r.get("moving"))) for name, r in regions],
    )
    states: list[Sample] = []
    for name, r in regions:
        current = str(r.get("state", ""))
        known = MOTION_STATES if current in MOTION_STATES or not current else (*MOTION_STATES, current)
        states += [({"region": name, "state": s}, s == current) for s in known]
    exp.family(
        "picamd_motion_region_state",
        "gauge",
        "1 for the state the region is in (RUNNING, STOPPED, DEEP_SLEEP, UNKNOWN), 0 for the others",
        states,
    )
    exp.family(
        "picamd_motion_region_state_seconds",
        "gauge",
        "Seconds the region has been in its current state",
        [({"region": name}, _num(r.get("in_state_s"))) for name, r in regions],
    )
    exp.family(
        "picamd_motion_region_idle_seconds",
        "gauge",
        "Seconds since the region last stopped, while it is stopped or asleep",
        [({"region": name}, _num(r.get("idle_s"))) for name, r in regions],
    )


def _detect(exp: Exposition, h: Mapping[str, Any]) -> None:
    det = _section(h, "detect")
    if not det:
        return  # a daemon without the detection service
    if "state" in det:
        exp.gauge("picamd_detect_running", "1 while the detector runs", det.get("state") == "running")
    exp.counter("picamd_detect_inferences_total", "Inferences run", _num(det.get("inferences")))
    skipped = _section(det, "skipped")
    exp.family(
        "picamd_detect_inferences_skipped_total",
        "counter",
        "Frames the detector did not run on, by reason",
        [({"reason": str(reason)}, _num(n)) for reason, n in skipped.items()],
    )
    exp.counter("picamd_detect_errors_total", "Inferences that failed", _num(det.get("errors")))
    last = _section(det, "last")
    exp.gauge("picamd_detect_last_inference_seconds", "Time the last inference took in the model", _ms_to_seconds(last.get("inference_ms")))
    exp.gauge("picamd_people", "People in the newest detection result", _num(last.get("people")))
    exp.gauge("picamd_detect_last_result_age_seconds", "Age of the newest detection result", _num(last.get("age_s")))
    hist = _section(det, "inference_histogram")
    if hist:
        bounds, counts = hist.get("le"), hist.get("counts")
        if isinstance(bounds, list) and isinstance(counts, list) and len(bounds) == len(counts):
            exp.histogram(
                "picamd_detect_inference_duration_seconds",
                "Time the model took per inference",
                zip([float(b) for b in bounds], [int(c) for c in counts], strict=True),
                float(hist.get("sum", 0.0)),
                int(hist.get("count", 0)),
            )


def _notify(exp: Exposition, h: Mapping[str, Any]) -> None:
    channels = [(name, c) for name, c in _section(h, "notify", "channels").items() if isinstance(c, Mapping)]
    for key, name, what in (
        ("sent", "picamd_notifications_sent_total", "Notifications sent"),
        ("failed", "picamd_notifications_failed_total", "Notifications given up after their retries"),
        ("dropped", "picamd_notifications_dropped_total", "Notifications dropped from a full queue"),
    ):
        exp.family(name, "counter", f"{what}, per channel", [({"channel": ch}, _num(c.get(key))) for ch, c in channels])
    exp.family(
        "picamd_notifications_queued",
        "gauge",
        "Notifications waiting to be sent, per channel",
        [({"channel": ch}, _num(c.get("queued"))) for ch, c in channels],
    )
    exp.family(
        "picamd_notify_channel_enabled",
        "gauge",
        "1 when the channel is configured",
        [({"channel": ch}, _num(c.get("enabled"))) for ch, c in channels],
    )


def _storage(exp: Exposition, h: Mapping[str, Any]) -> None:
    export = _section(h, "export")
    exp.counter("picamd_saves_total", "Images saved (save, stacks, auto-save)", _num(export.get("saves")))
    exp.counter("picamd_saves_failed_total", "Saves that failed", _num(export.get("failed_saves")))
    exp.gauge("picamd_captures_bytes", "Bytes in the captures folder", _num(export.get("bytes")))
    exp.counter("picamd_captures_deleted_total", "Files deleted by retention", _num(export.get("deleted_by_retention")))


def _system(exp: Exposition, h: Mapping[str, Any]) -> None:
    sys_ = _section(h, "system")
    exp.gauge("picamd_cpu_temperature_celsius", "CPU temperature", _num(sys_.get("cpu_temp_c")))
    throttling = _section(sys_, "throttling")
    flags: list[Sample] = []
    for when in ("now", "since_boot"):
        for flag, on in _section(throttling, when).items():
            flags.append(({"flag": str(flag), "when": when}, bool(on)))
    exp.family("picamd_throttling", "gauge", "1 when the firmware reports the condition (vcgencmd get_throttled), now or since boot", flags)
    exp.gauge("picamd_memory_rss_bytes", "Resident memory of the daemon", _mib_to_bytes(sys_.get("rss_mb")))
    exp.gauge("picamd_memory_total_bytes", "Memory of the machine", _mib_to_bytes(sys_.get("mem_total_mb")))
    exp.gauge("picamd_memory_available_bytes", "Memory available for new work (MemAvailable)", _mib_to_bytes(sys_.get("mem_available_mb")))
    exp.gauge("picamd_swap_total_bytes", "Swap of the machine", _mib_to_bytes(sys_.get("swap_total_mb")))
    exp.gauge("picamd_swap_used_bytes", "Swap in use", _mib_to_bytes(sys_.get("swap_used_mb")))
    exp.gauge("picamd_disk_free_bytes", "Free bytes on the disk of the captures folder", _mib_to_bytes(sys_.get("disk_free_mb")))
    exp.gauge("picamd_disk_total_bytes", "Size of the disk of the captures folder", _mib_to_bytes(sys_.get("disk_total_mb")))
    load = sys_.get("load_avg")
    if isinstance(load, list) and len(load) == 3:
        exp.family(
            "picamd_load_average",
            "gauge",
            "System load average",
            [({"minutes": m}, _num(v)) for m, v in zip(("1", "5", "15"), load, strict=True)],
        )
    guard = _section(h, "swap_guard")
    if "active" in guard:
        exp.gauge("picamd_swap_guard_active", "1 while the swap guard slows the capture", bool(guard.get("active")))
