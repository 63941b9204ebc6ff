"""Delivering a sweep's report: three notification channels on the notifier's background sender.

Each takes `ptz.sweep.done` and `ptz.sweep.failed` when its own `ptz.report.*`
key is set, whatever `notify.events` selects (those events can also go out
as ordinary notifications when `notify.events` lists `ptz`):
- `ptz-email`: a mail with the run's zip attached, through the SMTP server of
  `notify.email` (same host, port, security, user, PICAMD_SMTP_PASSWORD), to
  `ptz.report.email_to` or else `notify.email.recipients`;
- `ptz-mailapi`: the seed's HTTP mail API style, a JSON POST with the zip in
  base64 and `Authorization: Bearer TOKEN` (`ptz.report.mail_api_token`, or
  the environment variable PICAMD_MAIL_API_TOKEN);
- `ptz-webhook`: a JSON POST with the summary and the CSV rows.
Each attempt has `notify.timeout_s`; failures are retried with the notifier's
backoff. Tokens and passwords never appear in logs, errors or `health`.
A report asked for by mail without an SMTP server is the `ptz-email`
channel's `problem` in health, and a warning at start.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from daemon import __version__
from daemon.core.bus import Event
from daemon.notify.email import EmailChannel
from daemon.notify.sender import Channel, SendError

from .sweep import SWEEP_EVENTS

TOKEN_ENV = "PICAMD_MAIL_API_TOKEN"
_RETRYABLE_STATUS = {408, 429}


def _recipients(report_cfg: Any, email_cfg: Any) -> list[str]:
    own = [str(r).strip() for r in (report_cfg.email_to or []) if str(r).strip()]
    return own or [str(r).strip() for r in (email_cfg.recipients or []) if str(r).strip()]


def _rows(event: Event) -> list[dict[str, str]]:
    path = event.data.get("csv")
    if not isinstance(path, str) or not path:
        return []
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def _zip(event: Event, limit_mb: float) -> tuple[Path, bytes | None, str]:
    """The run's zip, its bytes (None when over the limit) and a note for the text; SendError when it is gone."""
    path = Path(str(event.data.get("zip") or ""))
    try:
        size = path.stat().st_size
        if size > limit_mb * 2**20:
            return path, None, f"The zip ({size / 2**20:.1f} MiB) is over ptz.report.attach_max_mb and stays on the camera: {path}"
        return path, path.read_bytes(), ""
    except OSError as exc:
        raise SendError(
            f"the report {path.name or '(none)'} cannot be read ({exc.strerror or exc}); retention may have deleted it", retryable=False
        ) from None


def report_text(event: Event, host: str) -> str:
    """The plain text of a report: the headline and one line per preset."""
    lines = [str(event.data.get("text") or event.kind), ""]
    rows = _rows(event)
    if rows:
        lines.append(f"{'preset':>6}  {'name':<24} {'people':>6} {'groups':>6}  {'time':<25} error")
        for r in rows:
            lines.append(
                f"{r.get('preset', ''):>6}  {r.get('name', '')[:24]:<24} {r.get('people', ''):>6} {r.get('groups', ''):>6}  "
                f"{r.get('time', ''):<25} {r.get('error', '')}"
            )
    lines += ["", f"run {event.data.get('run', '?')} on {host}, folder {event.data.get('folder', '?')}", f"-- picamd on {host}"]
    return "\n".join(lines) + "\n"


def _post(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> None:
    payload = json.dumps(body, default=str).encode()
    all_headers = {"User-Agent": f"picamd/{__version__}", "Content-Type": "application/json", **headers}
    import requests  # here, not at the top: about 5 MiB, and only a set mail API or webhook URL needs it

    try:
        response = requests.post(url, data=payload, headers=all_headers, timeout=(timeout, timeout), stream=True)
    except requests.Timeout:
        raise SendError(f"no answer within {timeout:g} s") from None
    except requests.ConnectionError:
        raise SendError("cannot connect") from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema, ValueError) as exc:
        raise SendError(f"request refused locally: {type(exc).__name__} (check the URL)", retryable=False) from None
    except requests.RequestException as exc:
        raise SendError(f"request failed: {type(exc).__name__}") from None
    with response:
        status = response.status_code
        if 200 <= status < 300:
            return
        reason = f"HTTP {status} {response.reason or ''}".rstrip()
        raise SendError(reason, retryable=status in _RETRYABLE_STATUS or status >= 500)


def _site(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}" + ("/..." if parts.path not in ("", "/") else "")
    except ValueError:
        return "(invalid URL)"


class ReportEmailChannel(EmailChannel):
    name = "ptz-email"
    own_selection = True

    def __init__(self, report_cfg: Any, email_cfg: Any, host: str, env: Mapping[str, str]) -> None:
        super().__init__(email_cfg, host, env)
        self._report = report_cfg

    def enabled(self) -> bool:
        return bool(self._report.email) and super().enabled()

    def problem(self) -> str | None:
        if self._report.email and not super().enabled():
            return "ptz.report.email is true but notify.email.smtp_host is empty: sweep reports are not mailed until it is set"
        return None

    def destination(self, event: Event) -> str | None:
        return "smtp-report" if event.kind in SWEEP_EVENTS and event.data.get("zip") and self.enabled() else None

    def _recipients(self) -> list[str]:
        return _recipients(self._report, self._cfg)

    def subject(self, event: Event) -> str:
        return " ".join(f"picamd {self._host}: {event.data.get('text') or event.kind}".split())[:200]

    def body(self, event: Event) -> str:
        return report_text(event, self._host)

    def message(self, event: Event, recipients: list[str]) -> EmailMessage:
        path, data, note = _zip(event, float(self._report.attach_max_mb))
        msg = super().message(event, recipients)
        if data is None:
            msg.set_content(self.body(event) + "\n" + note + "\n")
        else:
            msg.add_attachment(data, maintype="application", subtype="zip", filename=path.name)
        return msg

    def send(self, event: Event, destination: str, timeout: float) -> None:
        _zip(event, float(self._report.attach_max_mb))  # gone: say so, not an unexpected error
        super().send(event, destination, timeout)


class MailApiChannel(Channel):
    name = "ptz-mailapi"
    own_selection = True

    def __init__(self, report_cfg: Any, email_cfg: Any, host: str, env: Mapping[str, str]) -> None:
        self._report = report_cfg
        self._email = email_cfg
        self._host = host
        self._env = env

    def _token(self) -> str:
        return str(self._report.mail_api_token or "").strip() or self._env.get(TOKEN_ENV, "").strip()

    def enabled(self) -> bool:
        return bool(str(self._report.mail_api_url).strip())

    def destination(self, event: Event) -> str | None:
        return "mailapi" if event.kind in SWEEP_EVENTS and event.data.get("zip") and self.enabled() else None

    def describe(self, destination: str) -> str:
        return _site(str(self._report.mail_api_url).strip())

    def secrets(self, destination: str) -> list[str]:
        return [self._token()]

    def body(self, event: Event, recipients: list[str]) -> dict[str, Any]:
        path, data, note = _zip(event, float(self._report.attach_max_mb))
        text = report_text(event, self._host) + (f"\n{note}\n" if note else "")
        out: dict[str, Any] = {
            "from": {"email": str(self._email.sender).strip(), "name": f"picamd {self._host}"},
            "to": [{"email": r} for r in recipients],
            "subject": " ".join(f"picamd {self._host}: {event.data.get('text') or event.kind}".split())[:200],
            "text": text,
            "category": "picamd sweep",
        }
        if data is not None:
            out["attachments"] = [
                {
                    "content": base64.b64encode(data).decode("ascii"),
                    "filename": path.name,
                    "type": "application/zip",
                    "disposition": "attachment",
                }
            ]
        return out

    def send(self, event: Event, destination: str, timeout: float) -> None:
        url = str(self._report.mail_api_url).strip()
        if not url:
            raise SendError("ptz.report.mail_api_url was cleared", retryable=False)
        token = self._token()
        if not token:
            raise SendError(f"no token: set ptz.report.mail_api_token or {TOKEN_ENV}", retryable=False)
        recipients = _recipients(self._report, self._email)
        if not recipients:
            raise SendError("no recipients: set ptz.report.email_to or notify.email.recipients", retryable=False)
        _post(url, self.body(event, recipients), {"Authorization": f"Bearer {token}"}, timeout)


class ReportWebhookChannel(Channel):
    name = "ptz-webhook"
    own_selection = True

    def __init__(self, report_cfg: Any, host: str) -> None:
        self._report = report_cfg
        self._host = host

    def enabled(self) -> bool:
        return bool(str(self._report.webhook).strip())

    def destination(self, event: Event) -> str | None:
        return "ptz-webhook" if event.kind in SWEEP_EVENTS and self.enabled() else None

    def describe(self, destination: str) -> str:
        return _site(str(self._report.webhook).strip())

    def secrets(self, destination: str) -> list[str]:
        url = str(self._report.webhook).strip()
        parts = urlsplit(url) if url else None
        return [s for s in (url, parts.path if parts else "", parts.query if parts else "") if s and s != "/"]

    def body(self, event: Event) -> dict[str, Any]:
        rows = _rows(event)
        out = io.StringIO()
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        data = {k: v for k, v in event.data.items() if k not in ("folder", "zip", "csv", "summary")}
        return {"event": event.kind, "ts": event.ts, "host": self._host, **data, "results": rows, "csv": out.getvalue()}

    def send(self, event: Event, destination: str, timeout: float) -> None:
        url = str(self._report.webhook).strip()
        if not url:
            raise SendError("ptz.report.webhook was cleared", retryable=False)
        _post(url, self.body(event), {}, timeout)


def report_channels(report_cfg: Any, email_cfg: Any, host: str, env: Mapping[str, str]) -> list[Channel]:
    """The three report channels, for `Notifier.add_channel`."""
    return [
        ReportEmailChannel(report_cfg, email_cfg, host, env),
        MailApiChannel(report_cfg, email_cfg, host, env),
        ReportWebhookChannel(report_cfg, host),
    ]
