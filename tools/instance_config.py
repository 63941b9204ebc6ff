"""Write the config of one picamd@NAME instance: a picamd for a remote camera, next to this machine's own.

    tools/instance_config.py NAME --source URL [--http-port P] [--control-port Q] [--set KEY=VALUE ...] [--root DIR]

The file is `picamd example-config` (every key with its doc line) with the
instance's keys filled in: `camera.name` NAME, `camera.source: opencv`,
`camera.device` URL (another picamd's /stream, an RTSP camera), its own ports,
captures under /var/lib/picamd/NAME and motion logs under /var/log/picamd/NAME
(the folders systemd makes for picamd@NAME). Ports not given are the lowest
free ones from 8081 (HTTP) and 10000 (commands) that no other config in the
folder uses. `--set` adds any other key (`--set detect.enabled=true`), the
value read as YAML. Everything is checked against the daemon's schema before
the file is written (atomically); an existing file is kept unless `--force`.
`--root DIR` writes under DIR (packaging and tests) while the file still names
the real paths. tools/install.sh --instance calls this.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python tools/instance_config.py` from a checkout
    sys.path.insert(0, str(ROOT))

from daemon.config import Config, ConfigError, commented_yaml  # noqa: E402
from daemon.storage.atomicfile import write_atomic  # noqa: E402

CONFIG_DIR = "/etc/picamd"
DATA_ROOT = "/var/lib/picamd"
LOG_ROOT = "/var/log/picamd"
#: The machine's own picamd keeps 8080 and 9999; instances count up from here.
FIRST_HTTP_PORT = 8081
FIRST_CONTROL_PORT = 10000
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")


def check_name(name: str) -> str:
    """An instance name that is also a valid camera.name and a plain systemd instance (no escaping needed)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"instance name {name!r}: use 1 to 64 letters, digits, - or _, not starting with -")
    return name


def used_ports(config_dir: Path, skip: Path | None = None) -> set[int]:
    """The http.port and control.port of every config in the folder (the machine's own config.yaml too)."""
    ports: set[int] = set()
    for path in sorted(config_dir.glob("*.yaml")):
        if skip is not None and path.resolve() == skip.resolve():
            continue
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue  # not ours to judge here; picamd refuses it with its reasons at start
        if not isinstance(tree, dict):
            continue
        for section, default in (("http", 8080), ("control", 9999)):
            node = tree.get(section)
            port = node.get("port", default) if isinstance(node, dict) else default
            if isinstance(port, int):
                ports.add(port)
    return ports


def free_port(first: int, taken: set[int]) -> int:
    port = first
    while port in taken:
        port += 1
    if port > 65535:
        raise ValueError(f"no free port from {first}")
    return port


def parse_sets(items: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: use KEY=VALUE, e.g. --set detect.enabled=true")
        try:
            values[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            values[key.strip()] = text
    return values


def instance_values(name: str, source: str, http_port: int, control_port: int, extra: dict[str, Any]) -> dict[str, Any]:
    if not source.strip():
        raise ValueError("--source is empty: give another picamd's /stream URL or an RTSP URL")
    values: dict[str, Any] = {
        "camera.name": name,
        "camera.source": "opencv",
        "camera.device": source.strip(),
        "http.port": http_port,
        "control.port": control_port,
        "export.base_dir": f"{DATA_ROOT}/{name}/captures",
        "motion.log_dir": f"{LOG_ROOT}/{name}",
    }
    values.update(extra)
    return values


def write_instance(
    name: str,
    source: str,
    *,
    root: Path,
    http_port: int | None = None,
    control_port: int | None = None,
    extra: dict[str, Any] | None = None,
    force: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Write ROOT/etc/picamd/NAME.yaml; returns its path and the keys set. Raises ValueError (ConfigError) with the reason."""
    check_name(name)
    config_dir = root / CONFIG_DIR.lstrip("/")
    target = config_dir / f"{name}.yaml"
    if target.exists() and not force:
        raise ValueError(f"{target} exists already; --force replaces it (its changes are lost)")
    taken = used_ports(config_dir, skip=target) if config_dir.is_dir() else set()
    http = http_port if http_port is not None else free_port(FIRST_HTTP_PORT, taken)
    control = control_port if control_port is not None else free_port(FIRST_CONTROL_PORT, taken | {http})
    if http == control:
        raise ValueError(f"the HTTP and command ports are both {http}")
    clash = sorted({http, control} & taken)
    if clash:
        raise ValueError(f"port {clash[0]} is already used by another config in {config_dir}")
    values = instance_values(name, source, http, control, extra or {})
    # The schema's own checks (types, ranges, camera.name, the folders inside the allowed roots), with the real path.
    Config(values, path=Path(CONFIG_DIR) / f"{name}.yaml", confine=True)
    config_dir.mkdir(parents=True, exist_ok=True)
    header = (
        f"# picamd@{name}: a picamd for the remote camera {name}, written by tools/instance_config.py.\n"
        f"# Runs as: systemctl status picamd@{name}    Stream: http://<this machine>:{http}/stream\n"
    )
    write_atomic(target, (header + commented_yaml(values)).encode())
    os.chmod(target, 0o640)  # it may hold a stream password in camera.device
    return target, values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write /etc/picamd/NAME.yaml for picamd@NAME (a picamd for a remote camera)")
    parser.add_argument("name", help="instance name: camera.name and the NAME of picamd@NAME")
    parser.add_argument("--source", required=True, help="another picamd's http://host:8080/stream, or an rtsp:// URL")
    parser.add_argument("--http-port", type=int, help=f"HTTP port (default: the lowest free from {FIRST_HTTP_PORT})")
    parser.add_argument("--control-port", type=int, help=f"command port (default: the lowest free from {FIRST_CONTROL_PORT})")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="any other key (repeatable)")
    parser.add_argument("--root", default="/", help="write under this folder instead of / (packaging, tests)")
    parser.add_argument("--force", action="store_true", help="replace an existing config of this instance")
    args = parser.parse_args(argv)
    try:
        target, values = write_instance(
            args.name,
            args.source,
            root=Path(args.root),
            http_port=args.http_port,
            control_port=args.control_port,
            extra=parse_sets(args.sets),
            force=args.force,
        )
    except (ValueError, ConfigError, OSError) as exc:
        print(f"instance_config: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {target}: HTTP port {values['http.port']}, command port {values['control.port']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
