"""Secrets shown as `***`: passwords in URLs, keys in webhook paths and queries, header values.

One set of rules for everything that shows configuration or a device to a
person: `dump_config`, `get`, the echo of `set`, errors and log lines.
Webhook URLs keep only their scheme and host, because services put the key
in the path (IFTTT `/trigger/EVENT/with/key/KEY`, Slack `/services/T/B/KEY`,
Home Assistant `/api/webhook/ID`); other URLs (an RTSP camera) keep their
path, with the password of `user:pass@`, the values of key-like query
parameters and key-like path segments hidden.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MASK = "***"

# Field and parameter names whose values are credentials (compared without - and _, in lower case).
_SECRET_NAMES = frozenset(
    {
        "token",
        "accesstoken",
        "authtoken",
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "clientsecret",
        "key",
        "apikey",
        "auth",
        "authorization",
        "credentials",
        "sig",
        "signature",
        "sessionid",
    }
)
_SECRET_ENDINGS = ("token", "password", "passwd", "secret", "apikey")
# A path segment after one of these is the key itself (`.../with/key/KEY`, `.../token/TOKEN`).
_KEY_SEGMENTS = frozenset({"key", "keys", "token", "tokens", "secret", "apikey", "webhook", "webhooks"})
# A long run of letters and digits with both in it reads like a generated key.
_KEYLIKE = re.compile(r"^(?=.*[0-9])(?=.*[A-Za-z])[A-Za-z0-9_\-]{20,}$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def _plain(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def secret_name(name: str) -> bool:
    """True for a field or parameter name that holds a credential (token, password, api_key, mail_api_token, ...)."""
    plain = _plain(name)
    return plain in _SECRET_NAMES or plain.endswith(_SECRET_ENDINGS)


def is_url(text: str) -> bool:
    return bool(_URL.match(text))


def redact_url(url: str, *, keep_path: bool = True) -> str:
    """A URL with its secrets as ***. `keep_path=False` (webhooks) keeps only the scheme and the host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK
    if ":" in host:
        host = f"[{host}]"
    userinfo = ""
    if "@" in parts.netloc:
        user = parts.username or ""
        # A user without a password may itself be the token (https://TOKEN@host).
        userinfo = f"{user}:{MASK}@" if parts.password is not None and user else f"{MASK}@"
    head = f"{parts.scheme}://{userinfo}{host}{port}"
    if not keep_path:
        return head + (f"/{MASK}" if parts.path not in ("", "/") or parts.query or parts.fragment else parts.path)
    segments = parts.path.split("/")
    shown = []
    for i, seg in enumerate(segments):
        after_key = i > 0 and _plain(segments[i - 1]) in _KEY_SEGMENTS
        shown.append(MASK if seg and (after_key or _KEYLIKE.match(seg)) else seg)
    out = head + "/".join(shown)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        out += "?" + "&".join(f"{k}={MASK if secret_name(k) or _KEYLIKE.match(v) else v}" for k, v in pairs)
    if parts.fragment:
        out += f"#{MASK}"
    return out


def redact_tree(value: Any, field: str = "", *, hook: bool = False) -> Any:
    """A copy of a config value with credentials hidden at any depth.

    `field` is the name the value is stored under: values under a secret-like
    name are masked, every value of a `headers` mapping is masked, and URLs
    under a webhook-like name (or anywhere when `hook`) keep only scheme and host.
    """
    hook = hook or "hook" in field.lower()
    if field.lower().endswith("headers") and value:
        return {k: MASK for k in value} if isinstance(value, dict) else MASK
    if isinstance(value, dict):
        return {
            k: (MASK if secret_name(str(k)) and v not in ("", None, [], {}) else redact_tree(v, str(k), hook=hook))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_tree(v, field, hook=hook) for v in value]
    if isinstance(value, str) and is_url(value):
        return redact_url(value, keep_path=not hook)
    return value
