"""Webhook channel: an HTTP POST per event, generic JSON or IFTTT Maker format.

For IFTTT the user puts the whole Maker URL in `notify.webhook.url`
(https://maker.ifttt.com/trigger/EVENT/with/key/KEY); since that URL holds the
key, logs and health only ever show its scheme and host.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from daemon import __version__
from daemon.core.bus import Event
from daemon.core.redact import redact_url as shared_redact_url

from .sender import Channel, SendError, public_fields, summarize

if TYPE_CHECKING:
    import requests

# Lane key of the configured URL: resolved at each attempt, so fixing the URL with `set` also
# redirects notifications already waiting for a retry.
CONFIGURED = "configured"

# Answers worth another attempt: the server asked for patience or failed on its side.
_RETRYABLE_STATUS = {408, 429}


def redact_url(url: str) -> str:
    """'https://maker.ifttt.com/trigger/x/with/key/SECRET' -> 'https://maker.ifttt.com/***' (webhooks carry keys in the path)."""
    return shared_redact_url(url, keep_path=False)


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        return (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port)
    except ValueError:
        return None


def _valid_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _root_cause(exc: BaseException) -> str:
    """The OS-level reason inside a requests/urllib3 exception chain, without the URL it also carries."""
    seen = set()
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        for inner in (e.__cause__, e.__context__, getattr(e, "reason", None), *getattr(e, "args", ())):
            if isinstance(inner, BaseException):
                stack.append(inner)
    text = str(exc).lower()
    for known in (
        "name or service not known",
        "connection refused",
        "connection reset",
        "no route to host",
        "network is unreachable",
        "temporary failure in name resolution",
        "certificate verify failed",
    ):
        if known in text:
            return known
    return type(exc).__name__


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # the HTTP-date form is rare for webhooks; the backoff applies instead


class WebhookChannel(Channel):
    name = "webhook"

    def __init__(self, cfg: Any, host: str) -> None:
        """`cfg` is the `notify.webhook` section (url, format, headers, token); `host` names this camera."""
        self._cfg = cfg
        self._host = host

    def enabled(self) -> bool:
        return bool(self._cfg.url.strip())

    def destination(self, event: Event) -> str | None:
        own = event.data.get("webhook")
        if isinstance(own, str) and own.strip():
            return own.strip()  # a region with its own webhook
        return CONFIGURED if self._cfg.url.strip() else None

    def _url(self, destination: str) -> str:
        return self._cfg.url.strip() if destination == CONFIGURED else destination

    def describe(self, destination: str) -> str:
        url = self._url(destination)
        return redact_url(url) if url else "(no URL)"

    def secrets(self, destination: str) -> list[str]:
        url = self._url(destination)
        out = [self._cfg.token]
        if _valid_url(url):  # an invalid one never reaches a message: send() refuses it by name only
            parts = urlsplit(url)
            out += [url, parts.path, parts.query]
        return [s for s in out if s and s != "/"]

    def body(self, event: Event) -> dict[str, Any]:
        if self._cfg.format == "ifttt":
            summary = summarize(event, self._host)
            return {"value1": summary.who, "value2": summary.what, "value3": summary.detail}
        return public_fields(event, self._host)

    def headers(self, url: str) -> dict[str, str]:
        headers = {"User-Agent": f"picamd/{__version__}"}
        headers.update({str(k): str(v) for k, v in (self._cfg.headers or {}).items()})
        headers["Content-Type"] = "application/json"
        token = self._cfg.token
        configured = self._cfg.url.strip()
        # The token belongs to the configured endpoint: a region's webhook on another host (its own
        # IFTTT key, say) does not get it. With no configured URL it is meant for the region URLs.
        if token and (not configured or _origin(url) == _origin(configured)):
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def send(self, event: Event, destination: str, timeout: float) -> None:
        url = self._url(destination)
        if not url:
            raise SendError("notify.webhook.url was cleared", retryable=False)
        if not _valid_url(url):
            raise SendError("not an http:// or https:// URL", retryable=False)
        payload = json.dumps(self.body(event), default=str).encode()
        import requests  # here, not at the top: requests and urllib3 cost about 5 MiB, and only a set URL needs them

        try:
            # stream=True: the answer's body is never read, so a huge or endless one costs nothing.
            response = requests.post(url, data=payload, headers=self.headers(url), timeout=(timeout, timeout), stream=True)
        except requests.Timeout:
            raise SendError(f"no answer within {timeout:g} s") from None
        except requests.ConnectionError as exc:
            raise SendError(f"cannot connect: {_root_cause(exc)}") from None
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.InvalidHeader,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
            ValueError,
        ) as exc:
            raise SendError(f"request refused locally: {type(exc).__name__} (check the URL and headers)", retryable=False) from None
        except requests.TooManyRedirects:
            raise SendError("too many redirects", retryable=False) from None
        except requests.RequestException as exc:
            raise SendError(f"request failed: {type(exc).__name__}") from None
        with response:
            status = response.status_code
            reason = f"HTTP {status} {response.reason or ''}".rstrip()
            if 200 <= status < 300:
                return
            if status in _RETRYABLE_STATUS or status >= 500:
                raise SendError(reason, retry_after=_retry_after(response))
            raise SendError(reason, retryable=False)
