"""Documents generated from the schema: the README's config table and a complete, commented config.yaml."""

from __future__ import annotations

import json
from typing import Any

import yaml

from daemon.config.schema import SCHEMA


def markdown_table() -> str:
    """The README's config table, generated from the schema."""
    rows = ["| key | default | range | live | description |", "| --- | --- | --- | --- | --- |"]
    for k in SCHEMA:
        default = json.dumps(k.default) if not isinstance(k.default, str) else (k.default or '""')
        if isinstance(k.default, list) and len(default) > 40:
            default = default[:37] + "..."
        default = f"`{default}`" if k.shown_default is None else k.shown_default
        rows.append(f"| `{k.name}` | {default} | {k.describe_range()} | {'yes' if k.live else 'restart'} | {k.doc} |")
    return "\n".join(rows)


def commented_yaml(values: dict[str, Any] | None = None) -> str:
    """A complete config.yaml with every key, its value and its doc line as a comment."""
    values = values or {}
    lines = [
        "# picamd configuration. Every key, with its default and what it does.",
        "# Change values live with `set KEY VALUE` on the command port; `overwrite_config` writes them here.",
        "",
    ]
    open_path: list[str] = []
    for k in SCHEMA:
        *parents, leaf = k.name.split(".")
        common = 0
        while common < min(len(parents), len(open_path)) and parents[common] == open_path[common]:
            common += 1
        for depth in range(common, len(parents)):
            if depth == 0:
                lines.append("")
            lines.append("  " * depth + f"{parents[depth]}:")
        open_path = parents
        indent = "  " * len(parents)
        value = values.get(k.name, k.default)
        rendered = yaml.safe_dump({leaf: value}, default_flow_style=True, width=10_000).strip()[1:-1]
        rng = k.describe_range().replace(" \\| ", "|")
        lines.append(f"{indent}# {k.doc}" + (f" [{rng}]" if rng else "") + ("" if k.live else " (restart)"))
        if k.shown_default is not None and k.name not in values:
            # Left out, so a file copied to another machine does not carry this machine's value.
            rendered = f"# {leaf}: ({k.shown_default} when not set)"
        lines.append(f"{indent}{rendered}")
    return "\n".join(lines) + "\n"
