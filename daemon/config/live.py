"""The live config built from the schema: `Config` (load, get, set, reset, save) and the `Section` views components read.

Components receive a `Section` view (`config.section("night")`) and read values through it when they need them, so a
live `set` takes effect on the next frame without any copying; components that must act on a change (the camera frame
rate, say) subscribe with `config.on_change(prefix, callback)`.
"""

from __future__ import annotations

import copy
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from daemon.config.docs import commented_yaml
from daemon.config.keys import ConfigError, short
from daemon.config.paths import allowed_roots, path_kind, path_refusal
from daemon.config.redaction import redact
from daemon.config.schema import KEYS, RENAMED, SCHEMA
from daemon.core.yamledit import delete_keys, set_keys
from daemon.storage.atomicfile import write_atomic

log = logging.getLogger("picamd.config")


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"camera.width": 640} -> {"camera": {"width": 640}}: dotted names as the YAML file's sections."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        node = out
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if name in KEYS:
            flat[name] = v
        elif isinstance(v, dict):
            flat.update(_flatten(v, name + "."))
        else:
            flat[name] = v  # unknown key: reported by the caller
    return flat


def _move_renamed(flat: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Old key names in a config file -> the new ones, with one log line saying what to rename."""
    moved = [(old, new) for old, new in RENAMED.items() if old in flat]
    if not moved:
        return flat
    out = dict(flat)
    for old, new in moved:
        if new in out:
            raise ConfigError(f"{path}: both {old} and {new} are set; {old} is the old name of {new}: keep only {new}")
        out[new] = out.pop(old)
    renames = ", ".join(f"{old} is now {new}" for old, new in moved)
    log.warning("config: %s; rename %s in %s", renames, "it" if len(moved) == 1 else "them", Path(path).name)
    return out


def _cross_check(values: dict[str, Any]) -> None:
    if values["night.bright_threshold"] <= values["night.dark_threshold"]:
        raise ConfigError(
            f"night.bright_threshold: {values['night.bright_threshold']:g}: must be above night.dark_threshold "
            f"({values['night.dark_threshold']:g}), or night mode would flap"
        )


def _read_tree(text: str, path: str | os.PathLike) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return tree


class Config:
    """Live configuration: validated values keyed by dotted name, with change listeners.

    `Config.load` (what the daemon uses) confines the path keys to `storage.allowed_roots`; a Config built in code from
    a dict is not confined unless `confine=True`.
    """

    def __init__(self, values: dict[str, Any] | None = None, path: str | os.PathLike | None = None, *, confine: bool = False) -> None:
        self._lock = threading.RLock()
        self._values = {k.name: copy.deepcopy(k.default) for k in SCHEMA}
        self._listeners: list[tuple[str, Callable[[str, Any], None]]] = []
        self._changed: set[str] = set()  # changed with set/reset since the start: what overwrite_config writes
        self._roots: list[Path] | None = None
        self.path = Path(path) if path else None
        if values:
            errors = []
            for name, value in values.items():
                try:
                    self._values[name] = self._validate(name, value)
                except ConfigError as exc:
                    errors.append(str(exc))
            if errors:
                raise ConfigError("; ".join(errors))
            _cross_check(self._values)
        if confine:
            self._roots = allowed_roots(self._values["storage.allowed_roots"], self.path)
            errors = []
            for key in SCHEMA:
                why = path_refusal(key.name, self._values[key.name], self._roots) if path_kind(key) else None
                if why:
                    errors.append(f"{key.name}: {short(self._values[key.name])}: {why}")
            if errors:
                raise ConfigError("; ".join(errors))

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> Config:
        """Read config.yaml. A missing file means all defaults; any bad key or value is refused with all reasons at once."""
        if path is None or not Path(path).exists():
            if path is not None:
                log.warning("config file %s not found; using defaults", path)
            return cls(path=path, confine=True)
        tree = _read_tree(Path(path).read_text(), path)
        return cls(_move_renamed(_flatten(tree), path), path=path, confine=True)

    @staticmethod
    def _validate(name: str, value: Any) -> Any:
        key = KEYS.get(name)
        if key is None:
            raise _unknown(name)
        return key.validate(value)

    # -- reading
    def get(self, name: str) -> Any:
        if name not in KEYS:
            raise _unknown(name)
        return self._values[name]

    def section(self, prefix: str) -> Section:
        return Section(self, prefix)

    def dump(self, redact: bool = True) -> dict[str, Any]:
        """Nested dict of every value; secrets shown as '***' when redact is on (see `redact`)."""
        with self._lock:
            flat = {n: (_redact(n, v) if redact else copy.deepcopy(v)) for n, v in self._values.items()}
        return nest(flat)

    def shown(self, name: str) -> Any:
        """The value of `name` as anyone may see it (secrets as ***)."""
        return redact(name, self.get(name))

    @property
    def roots(self) -> list[Path] | None:
        """The folders path keys must lie in, or None when this config is not confined."""
        return self._roots

    def changed(self) -> list[str]:
        """Keys changed with set/reset since the start or the last save: what `save` writes."""
        with self._lock:
            return sorted(self._changed)

    # -- changing
    def set(self, name: str, value: Any, *, persist: bool = True) -> bool:
        """Validate and apply one value. Returns True if it applies live, False if a restart is needed.

        Nothing changes when the value is refused. `persist=False` (command-line overrides) keeps it out of `save`.
        """
        with self._lock:
            key = KEYS.get(name)
            if key is None:
                raise _unknown(name)
            if key.file_only:
                raise ConfigError(f"{name}: can only be set in the config file, not while the daemon runs")
            confined = bool(path_kind(key)) and self._roots is not None
            # Before the key's own check, which may read the file: a file outside the roots is never opened.
            why = path_refusal(name, value, self._roots) if confined and isinstance(value, str) and self._roots else None
            if why:
                raise ConfigError(f"{name}: {short(value)}: {why}")
            v = self._validate(name, value)
            why = path_refusal(name, v, self._roots) if confined and self._roots is not None else None
            if why:
                raise ConfigError(f"{name}: {short(v)}: {why}")
            trial = dict(self._values)
            trial[name] = v
            _cross_check(trial)
            old = self._values[name]
            self._values[name] = v
            if persist:
                self._changed.add(name)
            listeners = [cb for prefix, cb in self._listeners if name.startswith(prefix)]
        if v != old:
            for cb in listeners:
                try:
                    cb(name, v)
                except Exception:
                    log.exception("config listener for %s failed", name)
        return key.live

    def reset(self, name: str) -> bool:
        """Give `name` its default again (persisted like a set). Returns True if that applies live."""
        if name not in KEYS:
            raise _unknown(name)
        return self.set(name, copy.deepcopy(KEYS[name].default))

    def on_change(self, prefix: str, callback: Callable[[str, Any], None]) -> None:
        with self._lock:
            self._listeners.append((prefix, callback))

    def save(self, path: str | os.PathLike | None = None) -> tuple[Path, list[str]]:
        """Write the keys changed with set/reset into the config file; returns the file and the keys written.

        The file keeps its comments, its key order, every other value, its mode and its owner; the previous
        version is kept as .bak (with the same mode). Command-line overrides are not written. A read-only file
        is refused with ConfigError, and so is a file that no longer parses. Without a file, a complete commented
        one is written (mode 0600: it may hold secrets).
        """
        target = Path(path or self.path or "config.yaml")
        with self._lock:
            changed = {n: copy.deepcopy(self._values[n]) for n in sorted(self._changed)}
        if not target.exists():
            _write_keeping(target, commented_yaml(changed).encode(), 0o600, None)
            self._saved(changed)
            return target, list(changed)
        st = target.stat()
        mode = stat.S_IMODE(st.st_mode)
        if not mode & 0o222:
            raise ConfigError(
                f"{target} is read-only (mode {mode:04o}): nothing was written; "
                "make it writable (chmod u+w) to let overwrite_config change it"
            )
        old_bytes = target.read_bytes()
        old_text = old_bytes.decode()
        old_flat = _flatten(_read_tree(old_text, target))
        # Keys the file has under an old name move to the new one, with the file's value unless set changed it.
        moved = {old: new for old, new in RENAMED.items() if old in old_flat}
        writes = {**{new: old_flat[old] for old, new in moved.items()}, **changed}
        if not writes:
            return target, []
        text = set_keys(
            delete_keys(old_text, [tuple(old.split(".")) for old in moved]), {tuple(n.split(".")): v for n, v in writes.items()}
        )
        expected = {**{k: v for k, v in old_flat.items() if k not in moved}, **writes}
        try:
            got = _flatten(_read_tree(text, target))
        except ConfigError:
            got = None
        if got != expected:
            # A layout the line editor does not handle (anchors, inline sections): a complete documented file instead.
            log.warning(
                "config: %s has a layout that cannot be edited in place; writing it anew (its own comments are lost, "
                "the previous version is in %s.bak)",
                target,
                target.name,
            )
            text = commented_yaml(expected)
        owner = (st.st_uid, st.st_gid)
        _write_keeping(target.with_name(target.name + ".bak"), old_bytes, mode, owner)
        _write_keeping(target, text.encode(), mode, owner)
        self._saved(changed)
        return target, sorted(writes)

    def _saved(self, written: dict[str, Any]) -> None:
        with self._lock:
            for name, value in written.items():
                if self._values[name] == value:
                    self._changed.discard(name)


_redact = redact  # Config.dump has a parameter of that name


def _write_keeping(target: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    """Atomic write with the given mode, and the owner of the file it replaces when we may give it."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
        if owner is not None and (os.geteuid() == 0 or owner[0] == os.geteuid()):
            try:
                os.chown(tmp, *owner)
            except OSError as exc:  # a group we are not in: keep ours, say so
                log.warning("config: cannot give %s its owner %d:%d back: %s", target, owner[0], owner[1], exc)

    write_atomic(target, write, mode=mode)


def _unknown(name: str) -> ConfigError:
    if name in RENAMED:
        return ConfigError(f"{name}: this key is now {RENAMED[name]}; use {RENAMED[name]}")
    return ConfigError(f"{name}: unknown key (see dump_config for the known ones)")


class Section:
    """A live view of one section: `cfg.dark_threshold` reads `night.dark_threshold` now."""

    __slots__ = ("_config", "_prefix")

    def __init__(self, config: Config, prefix: str) -> None:
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, leaf: str) -> Any:
        try:
            return self._config.get(f"{self._prefix}.{leaf}")
        except ConfigError:
            raise AttributeError(f"{self._prefix}.{leaf}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("config sections are read-only; use Config.set")

    def section(self, sub: str) -> Section:
        return Section(self._config, f"{self._prefix}.{sub}")

    def on_change(self, callback: Callable[[str, Any], None]) -> None:
        self._config.on_change(self._prefix + ".", callback)

    @property
    def config(self) -> Config:
        return self._config
