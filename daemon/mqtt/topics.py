"""Every MQTT topic picamd uses, built in one place from `mqtt.topic_prefix` and `camera.name`.

The layout follows Frigate's, which Home Assistant users know
(`P` is `<topic_prefix>/<camera.name>`):

    P/available                    online | offline (retained; offline is also the last will)
    P/info                         version, HTTP and command URLs (retained JSON)
    P/night                        ON | OFF (retained)
    P/night/mode                   auto | day | night (retained; the state of the select)
    P/night/set                    auto | day | night (command)
    P/motion/state                 ON | OFF: motion measuring on (retained; the state of the switch)
    P/motion/set                   ON | OFF (command)
    P/motion/<region>              ON | OFF: the region moves, on change (retained)
    P/motion/<region>/fraction     changed fraction of the region, at most once a second
    P/machine/<region>/state       RUNNING | STOPPED | DEEP_SLEEP | UNKNOWN (retained)
    P/machine/<region>/attributes  time in state, idle time... (retained JSON)
    P/people                       tracked people (retained)
    P/detections                   detection events (JSON)
    P/detect/state                 ON | OFF: detection on (retained; the state of the switch)
    P/detect/set                   ON | OFF (command)
    P/sweep                        the last PTZ sweep's result (retained JSON)
    P/health                       health summary every mqtt.health_every_s (JSON)
    P/snapshot                     JPEG of the newest frame, at most every mqtt.snapshot_every_s (retained)
    P/events                       new / update / end of motion, people, night and camera episodes (JSON)
    P/cmd, P/cmd/reply             commands of the command registry and their replies

A region's name becomes a topic level through `region_slug`: the letters,
digits, `_`, `.` and `-` of its log file name, so `/`, `+` and `#` can never
reach a topic. The switch's own levels (`set`, `state`) are not region
names: a region called `set` gets the level `set_region`.
"""

from __future__ import annotations

import ipaddress
import re

from daemon.motion.regions import file_stem

#: Levels under P/motion/ that belong to the switch, not to a region.
RESERVED_MOTION_LEVELS = ("set", "state")


def check_host(value: str) -> str:
    """`mqtt.host`: "" (off), an IP address or a host name; no scheme, port or path (the port is mqtt.port)."""
    text = value.strip()
    if not text:
        return ""
    if "://" in text:
        raise ValueError("give the broker's host name or address only (like 192.168.1.10 or broker.lan), without mqtt://")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if ":" in text or "/" in text:
        raise ValueError("give the host only; the port is mqtt.port")
    if not re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?", text):
        raise ValueError("is neither an IP address nor a host name")
    return text


def check_topic_level(value: str) -> str:
    """A topic prefix: one or more levels without wildcards (+ #), without $ at the start and without empty levels."""
    text = value.strip()
    if not text:
        raise ValueError("must not be empty")
    if text.startswith("$"):
        raise ValueError("must not start with $ (brokers keep those topics for themselves)")
    if any(c in text for c in "+#\0") or any(not level for level in text.split("/")):
        raise ValueError("must be topic levels without + or # and without empty levels (no leading, trailing or double /)")
    if not text.isprintable() or len(text.encode()) > 200:
        raise ValueError("must be at most 200 bytes of printable text")
    return text


def region_slug(name: str) -> str:
    """A region name as one topic level and as part of an entity id (see the module's docstring)."""
    slug = file_stem(name)
    return f"{slug}_region" if slug in RESERVED_MOTION_LEVELS else slug


def object_id(text: str) -> str:
    """Text as a Home Assistant object id: lower-case letters, digits and `_`."""
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "x"


def valid_publish_topic(topic: str) -> str | None:
    """Why `topic` cannot be published to, or None when it can."""
    if not topic:
        return "is empty"
    if any(c in topic for c in "+#\0"):
        return "contains a wildcard (+ or #) or a NUL"
    if topic.startswith("$"):
        return "starts with $"
    if len(topic.encode()) > 65535:
        return "is too long"
    return None


class Topics:
    """The topic names of one camera."""

    def __init__(self, prefix: str, camera: str, discovery_prefix: str) -> None:
        self.prefix = prefix
        self.camera = camera
        self.base = f"{prefix}/{camera}"
        self.discovery_prefix = discovery_prefix
        b = self.base
        self.available = f"{b}/available"
        self.info = f"{b}/info"
        self.night = f"{b}/night"
        self.night_mode = f"{b}/night/mode"
        self.night_set = f"{b}/night/set"
        self.motion_state = f"{b}/motion/state"
        self.motion_set = f"{b}/motion/set"
        self.people = f"{b}/people"
        self.detections = f"{b}/detections"
        self.detect_state = f"{b}/detect/state"
        self.detect_set = f"{b}/detect/set"
        self.sweep = f"{b}/sweep"
        self.health = f"{b}/health"
        self.snapshot = f"{b}/snapshot"
        self.events = f"{b}/events"
        self.cmd = f"{b}/cmd"
        self.cmd_reply = f"{b}/cmd/reply"
        self.ha_status = f"{discovery_prefix}/status"

    def motion(self, slug: str) -> str:
        return f"{self.base}/motion/{slug}"

    def motion_fraction(self, slug: str) -> str:
        return f"{self.base}/motion/{slug}/fraction"

    def machine_state(self, slug: str) -> str:
        return f"{self.base}/machine/{slug}/state"

    def machine_attributes(self, slug: str) -> str:
        return f"{self.base}/machine/{slug}/attributes"

    def subscriptions(self) -> list[str]:
        """What picamd listens to: commands, the Home Assistant controls, and Home Assistant's birth message."""
        return [self.cmd, self.night_set, self.motion_set, self.detect_set, self.ha_status]

    @property
    def node_id(self) -> str:
        """The discovery node id (and the device identifier): one per camera."""
        return object_id(f"picamd_{self.camera}")

    def discovery(self, component: str, object_name: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{object_id(object_name)}/config"
