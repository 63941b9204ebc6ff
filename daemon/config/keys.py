"""One config key (`Key`): its type, default, range and checks, and the coercion of YAML and `set` text to its type."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from daemon.core.redact import MASK, redact_tree, secret_name


class ConfigError(ValueError):
    """A value was refused. The message names the key, the value and why."""


@dataclass(frozen=True)
class Key:
    name: str
    kind: type
    default: Any
    doc: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    live: bool = True
    secret: bool = False
    # Extra validation/normalisation: returns the normalised value or raises ValueError(reason).
    check: Callable[[Any], Any] | None = None
    # How the README and the example config show a default that depends on the machine (the host name).
    shown_default: str | None = None
    # "dir" or "file": the value names a folder the daemon writes or a file it reads, confined to storage.allowed_roots.
    path: str = ""
    # Only the config file may set it (never `set`/`reset` on the port): the keys that bound what the port may do.
    file_only: bool = False

    def validate(self, value: Any) -> Any:
        """Coerce and validate a value from YAML or from `set`; raises ConfigError naming key, value and reason."""
        try:
            v = coerce(self.kind, value)
            if self.choices is not None and v not in self.choices:
                raise ValueError(f"must be one of {', '.join(map(str, self.choices))}")
            if self.min is not None and v < self.min:
                raise ValueError(f"must be >= {self.min:g}")
            if self.max is not None and v > self.max:
                raise ValueError(f"must be <= {self.max:g}")
            if self.check is not None:
                v = self.check(v)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self.name}: {short(redact_text_of(self, self.name, value))}: {exc}") from None
        except RecursionError:  # a file's value nested past Python's limit (a `set` value is bounded by load_value)
            raise ConfigError(f"{self.name}: {short(str(value))}: nested too deeply") from None
        return v

    def describe_range(self) -> str:
        if self.choices is not None:
            return " \\| ".join(map(str, self.choices))
        if self.min is not None or self.max is not None:
            lo = "" if self.min is None else f"{self.min:g}"
            hi = "" if self.max is None else f"{self.max:g}"
            return f"{lo}..{hi}"
        return ""


def short(value: Any, limit: int = 80) -> str:
    """A value for an error message, cut to `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(kind: type, value: Any) -> Any:
    """Turn YAML values and `set` text into the key's type, refusing anything ambiguous."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("must be true or false")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError("must be a whole number")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError("must be a whole number")
    if kind is float:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        if isinstance(value, (int, float)):
            v = float(value)
        elif isinstance(value, str):
            try:
                v = float(value.strip())
            except ValueError:
                raise ValueError("must be a number") from None
        else:
            raise ValueError("must be a number")
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v
    if kind is str:
        if isinstance(value, (dict, list)):
            raise ValueError("must be text")
        if value is None:
            return ""
        return str(value)
    if kind is list:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = _parse_flow(text)
            else:  # `set export.formats jpg,png`
                value = [p.strip() for p in text.split(",") if p.strip()]
        if not isinstance(value, list):
            raise ValueError("must be a list")
        return value
    if kind is dict:
        if isinstance(value, str):
            value = _parse_flow(value.strip())
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("must be a mapping")
        return value
    raise TypeError(f"unsupported kind {kind}")


#: Bounds of one value given as text (`set`, MQTT commands): far beyond any real config, far below any harm.
MAX_VALUE_DEPTH = 32
MAX_VALUE_NODES = 20000


class _ValueLoader(yaml.SafeLoader):
    """YAML for one value from the command port: no aliases (a few hundred bytes of nested `*name` expand to gigabytes
    when the value is copied, echoed or dumped), and bounded nesting and size. Anchors alone are harmless."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise ValueError("YAML aliases (*name) are not accepted in a value: write it out")
        self._nodes += 1
        if self._nodes > MAX_VALUE_NODES:
            raise ValueError(f"more than {MAX_VALUE_NODES} items")
        self._depth += 1
        try:
            if self._depth > MAX_VALUE_DEPTH:
                raise ValueError(f"nested deeper than {MAX_VALUE_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_value(text: str) -> Any:
    """One value written as YAML or JSON, from text a client sent; ValueError says what is wrong with it."""
    try:
        return yaml.load(text, Loader=_ValueLoader)  # a SafeLoader, bounded
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML/JSON ({str(exc).splitlines()[0]})") from None


def _parse_flow(text: str) -> Any:
    return load_value(text)


# Redaction given the key itself (None for a name the schema does not know): `Key.validate` needs it before the
# schema exists; `daemon.config.redaction` looks the key up by name and calls these.


def redact_of(key: Key | None, name: str, value: Any) -> Any:
    """`value` of key `name` as anyone may see it: secrets as ***, see `daemon.config.redaction.redact`."""
    leaf = name.rpartition(".")[2]
    if (key is not None and key.secret) or secret_name(leaf):
        return MASK if value not in ("", None, [], {}) else value
    return redact_tree(value, name, hook=name.startswith("notify."))


def redact_text_of(key: Key | None, name: str, value: Any) -> str:
    """`redact_of` for a value as given, also the text of `set`, see `daemon.config.redaction.redact_text`."""
    if isinstance(value, str) and key is not None and key.kind in (list, dict):
        try:
            parsed = coerce(key.kind, value)
        except (ValueError, TypeError):
            shown = redact_of(key, name, value)  # text that does not parse: hidden when it might hold a URL
            return MASK if shown == value and "://" in value else str(shown)
        hidden = redact_of(key, name, parsed)
        return value if hidden == parsed else json.dumps(hidden, default=str)  # as typed when nothing in it is secret
    shown = redact_of(key, name, value)
    return shown if isinstance(shown, str) else json.dumps(shown, default=str)
