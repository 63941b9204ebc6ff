"""The one config schema, and the live config built from it.

Every key is declared once (`schema.SCHEMA`) with its type, default, range or choices, a line of doc, whether it
applies live and whether it is a secret. The same table drives loading config.yaml, `get`/`set`, `dump_config`,
`overwrite_config` and the README's config table (`picamd config-table`).

- `keys`: `Key`, `ConfigError` and the coercion of YAML and `set` text to a key's type
- `checks`: the checks keys use to refuse or normalise a value
- `schema`: the table itself (`SCHEMA`, `KEYS`, `RENAMED`)
- `redaction`, `paths`: how values are shown (secrets as ***) and where path keys may point
- `live`: `Config` (load, get, set, reset, save) and the `Section` views components read
- `docs`: the README table and the commented example config.yaml

Importing it loads neither OpenCV nor numpy (`picamd config-table` and `check_config` run without them).
"""

from __future__ import annotations

from daemon.config.checks import parse_downscale, ring_frame_size
from daemon.config.docs import commented_yaml, markdown_table
from daemon.config.keys import ConfigError, Key, load_value
from daemon.config.live import Config, Section, nest
from daemon.config.paths import SYSTEM_ROOTS, allowed_roots, path_kind, path_refusal
from daemon.config.redaction import redact, redact_text
from daemon.config.schema import KEYS, PRIVATE_NETS, RENAMED, SCHEMA

__all__ = [
    "KEYS",
    "PRIVATE_NETS",
    "RENAMED",
    "SCHEMA",
    "SYSTEM_ROOTS",
    "Config",
    "ConfigError",
    "Key",
    "Section",
    "allowed_roots",
    "commented_yaml",
    "load_value",
    "markdown_table",
    "nest",
    "parse_downscale",
    "path_kind",
    "path_refusal",
    "redact",
    "redact_text",
    "ring_frame_size",
]
