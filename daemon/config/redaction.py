"""How a config value is shown to anyone (dump_config, get, set's echo, errors, logs): secrets as ***."""

from __future__ import annotations

from typing import Any

from daemon.config.keys import redact_of, redact_text_of
from daemon.config.schema import KEYS


def redact(name: str, value: Any) -> Any:
    """How the value of key `name` is shown to anyone (dump_config, get, set's echo, errors, logs): secrets as ***.

    Keys the schema marks secret, URLs with a password or a key in them (webhooks keep only their host), header values,
    and any field named like a credential inside a list or mapping (a region's webhook, say).
    """
    return redact_of(KEYS.get(name), name, value)


def redact_text(name: str, value: Any) -> str:
    """`redact` for a value as given, also the text of `set` (a list or mapping still as YAML), for errors and logs."""
    return redact_text_of(KEYS.get(name), name, value)
