"""Change a few keys of a block-style YAML text and leave every other byte of it alone.

`overwrite_config` persists only the keys changed with `set`: each one's
line is replaced in place (its doc comment above it, the other keys, their
order and the file's own comments stay), and a key the file does not have
yet is added at the end of its section. Values are written in flow style on
one line (`allow: [127.0.0.0/8, 10.0.0.0/8]`). The caller checks the result
by parsing it: a layout this editor does not understand (anchors, a section
written as an inline mapping) shows up there, never as a silently wrong file.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_KEY_LINE = re.compile(r"""^(?P<indent> *)(?P<key>"[^"]*"|'[^']*'|[^\s#'"{}\[\],&*!|>%@`][^:#]*?)\s*:(?:\s+(?P<rest>.*))?$""")


def render(leaf: str, value: Any) -> str:
    """`leaf: value` on one line, quoted where YAML needs it."""
    return yaml.safe_dump({leaf: value}, default_flow_style=True, width=1_000_000, sort_keys=False).strip()[1:-1]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    text = line.strip()
    return bool(text) and not text.startswith("#")


def _key_of(line: str) -> tuple[str, str | None] | None:
    m = _KEY_LINE.match(line.rstrip())
    if not m:
        return None
    key = m["key"]
    if key[:1] in "\"'":
        key = key[1:-1]
    return key, m["rest"]


def _block_end(lines: list[str], at: int) -> int:
    """One past the last line of the value that starts on line `at` (deeper lines, or `- ` items at the same indent)."""
    own = _indent(lines[at])
    end = at + 1
    for j in range(at + 1, len(lines)):
        if not _content(lines[j]):
            continue
        ind = _indent(lines[j])
        if ind > own or (ind == own and lines[j].lstrip().startswith("- ")):
            end = j + 1
            continue
        break
    return end


def _child(lines: list[str], lo: int, hi: int, name: str) -> tuple[int | None, int | None]:
    """The line of key `name` among the direct children in lines[lo:hi], and the children's indent."""
    child_indent: int | None = None
    for i in range(lo, hi):
        if not _content(lines[i]):
            continue
        ind = _indent(lines[i])
        if child_indent is None:
            child_indent = ind
        if ind != child_indent:
            continue
        found = _key_of(lines[i])
        if found is not None and found[0] == name:
            return i, child_indent
    return None, child_indent


def _inline_comment(rest: str | None, old_value: Any) -> str:
    """The `# ...` after a one-line value, if the part before it really is the whole value."""
    if not rest:
        return ""
    for m in re.finditer(r"\s#", rest):
        try:
            if yaml.safe_load(rest[: m.start()]) == old_value:
                return "  " + rest[m.start() :].strip()
        except yaml.YAMLError:
            continue
    return ""


def set_keys(text: str, values: dict[tuple[str, ...], Any]) -> str:
    """`text` with each key path (("control", "allow"), ...) set to its value, changing as little as possible."""
    lines = text.splitlines()
    for parts, value in values.items():
        lo, hi, depth, parent_indent = 0, len(lines), 0, -2
        while depth < len(parts):
            at, child_indent = _child(lines, lo, hi, parts[depth])
            if at is None:
                indent = child_indent if child_indent is not None and child_indent > parent_indent else parent_indent + 2
                new = []
                for d, part in enumerate(parts[depth:]):
                    pad = " " * (indent + 2 * d)
                    new.append(pad + (render(part, value) if depth + d == len(parts) - 1 else f"{part}:"))
                if depth == 0:
                    while lines and not lines[-1].strip():
                        lines.pop()
                    lines.extend(["", *new])
                else:
                    lines[hi:hi] = new
                break
            if depth == len(parts) - 1:
                end = _block_end(lines, at)
                key, rest = _key_of(lines[at]) or (parts[depth], None)
                comment = ""
                if end == at + 1 and rest:
                    try:
                        old = yaml.safe_load(rest)
                    except yaml.YAMLError:
                        old = None
                    comment = _inline_comment(rest, old) if old is not None else ""
                lines[at:end] = [" " * _indent(lines[at]) + render(parts[depth], value) + comment]
                break
            parent_indent = _indent(lines[at])
            lo, hi = at + 1, _block_end(lines, at)
            depth += 1
    return "\n".join(lines) + "\n"


def delete_keys(text: str, paths: list[tuple[str, ...]]) -> str:
    """`text` without the given keys (with the comment lines right above each); a section left empty goes too."""
    lines = text.splitlines()
    for parts in paths:
        chain: list[int] = []  # the line of each part
        lo, hi = 0, len(lines)
        for part in parts:
            at, _ = _child(lines, lo, hi, part)
            if at is None:
                break
            chain.append(at)
            lo, hi = at + 1, _block_end(lines, at)
        if len(chain) != len(parts):
            continue
        # Remove the leaf, then every parent whose block has nothing left in it.
        for at in reversed(chain):
            end = _block_end(lines, at)
            if at != chain[-1] and any(_content(ln) for ln in lines[at + 1 : end]):
                break
            start = at
            while start > 0 and lines[start - 1].strip().startswith("#") and _indent(lines[start - 1]) == _indent(lines[at]):
                start -= 1
            del lines[start:end]
    return "\n".join(lines) + "\n"
