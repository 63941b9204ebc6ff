"""Email channel: one plain-text mail per event over SMTP (none, STARTTLS or SSL).

The password comes from the environment (PICAMD_SMTP_PASSWORD, e.g. from a
systemd `EnvironmentFile=`), never from config.yaml, so `dump_config` and
`overwrite_config` can never reveal it; it is never logged either.
"""

from __future__ import annotations

import datetime as _dt
import logging
import smtplib
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from daemon.core.bus import Event

from .sender import Channel, SendError, format_duration, public_fields, summarize

log = logging.getLogger("picamd.notify")

PASSWORD_ENV = "PICAMD_SMTP_PASSWORD"
SMTP_LANE = "smtp"  # one lane: the server is read from the config at each attempt


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class EmailChannel(Channel):
    name = "email"

    def __init__(self, cfg: Any, host: str, env: Mapping[str, str]) -> None:
        """`cfg` is the `notify.email` section; `host` names this camera; `env` holds PICAMD_SMTP_PASSWORD."""
        self._cfg = cfg
        self._host = host
        self._env = env
        self._warned_plain_login = False

    def enabled(self) -> bool:
        return bool(self._cfg.smtp_host.strip())

    def destination(self, event: Event) -> str | None:
        return SMTP_LANE if self.enabled() else None

    def describe(self, destination: str) -> str:
        recipients = self._recipients()
        server = f"{self._cfg.smtp_host.strip() or '(no server)'}:{self._cfg.smtp_port}"
        return f"via {server} ({self._cfg.security}) to {len(recipients)} recipient(s)"

    def secrets(self, destination: str) -> list[str]:
        return [self._env.get(PASSWORD_ENV, "")]

    def _recipients(self) -> list[str]:
        return [str(r).strip() for r in (self._cfg.recipients or []) if str(r).strip()]

    # -- the mail
    def subject(self, event: Event) -> str:
        return _one_line(f"picamd: {summarize(event, self._host).headline}")[:200]

    def body(self, event: Event) -> str:
        summary = summarize(event, self._host)
        when = _dt.datetime.fromtimestamp(event.ts).astimezone().isoformat(timespec="seconds")
        lines = [summary.headline, "", f"{'event':<14} {event.kind}", f"{'time':<14} {when}"]
        for key, value in public_fields(event, self._host).items():
            if key in ("event", "ts") or value is None:
                continue
            shown = value if isinstance(value, str) else repr(value)
            if key.endswith("_s") and isinstance(value, (int, float)) and not isinstance(value, bool):
                shown = f"{value:.1f} ({format_duration(value)})"
            lines.append(f"{key:<14} {shown}")
        lines += ["", f"-- picamd on {self._host}"]
        return "\n".join(lines) + "\n"

    def message(self, event: Event, recipients: list[str]) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = self.subject(event)
        msg["From"] = _one_line(self._cfg.sender)
        msg["To"] = ", ".join(_one_line(r) for r in recipients)
        msg["Date"] = formatdate(event.ts, localtime=True)
        # An explicit domain: make_msgid's default looks up the FQDN, which can stall without DNS.
        msg["Message-ID"] = make_msgid(domain=self._host or "picamd.local")
        msg["X-Picamd-Event"] = event.kind
        msg.set_content(self.body(event))
        return msg

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        ca_file = self._cfg.ca_file.strip()
        if ca_file:
            try:
                context.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise SendError(f"cannot load notify.email.ca_file {ca_file}: {exc}", retryable=False) from None
        return context

    # -- one attempt
    def send(self, event: Event, destination: str, timeout: float) -> None:
        server = self._cfg.smtp_host.strip()
        port = int(self._cfg.smtp_port)
        security = self._cfg.security
        username = self._cfg.username.strip()
        if not server:
            raise SendError("notify.email.smtp_host was cleared", retryable=False)
        recipients = self._recipients()
        if not recipients:
            raise SendError("notify.email.recipients is empty", retryable=False)
        password = self._env.get(PASSWORD_ENV, "")
        if username and not password:
            raise SendError(f"notify.email.username is set but {PASSWORD_ENV} is not in the environment", retryable=False)
        try:
            msg = self.message(event, recipients)
        except (ValueError, TypeError) as exc:
            raise SendError(f"cannot build the mail: {exc}", retryable=False) from None
        context = self._tls_context() if security != "none" else None
        smtp: smtplib.SMTP | None = None
        try:
            # local_hostname given: smtplib would otherwise look up our FQDN for EHLO, which can hang without DNS.
            if security == "ssl":
                smtp = smtplib.SMTP_SSL(server, port, local_hostname=self._host or "localhost", timeout=timeout, context=context)
            else:
                smtp = smtplib.SMTP(server, port, local_hostname=self._host or "localhost", timeout=timeout)
            if security == "starttls":
                smtp.starttls(context=context)
            if username:
                if security == "none" and not self._warned_plain_login:
                    self._warned_plain_login = True
                    log.warning("email: logging in to %s without encryption (notify.email.security is none)", server)
                _login(smtp, username, password)
            refused = smtp.send_message(msg, from_addr=_one_line(self._cfg.sender), to_addrs=recipients)
            if refused:
                log.warning("email: the server refused %d of %d recipient(s): %s", len(refused), len(recipients), ", ".join(refused))
        except smtplib.SMTPAuthenticationError as exc:
            raise SendError(f"login refused for {username}: {exc.smtp_code} {_text(exc.smtp_error)}", retryable=False) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise SendError(f"the server does not support it: {exc}", retryable=False) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise SendError(f"all recipients refused: {', '.join(exc.recipients)}", retryable=False) from None
        except smtplib.SMTPResponseException as exc:  # sender refused, data refused, other answers
            transient = 400 <= exc.smtp_code < 500
            raise SendError(f"SMTP {exc.smtp_code} {_text(exc.smtp_error)}", retryable=transient) from None
        except smtplib.SMTPServerDisconnected as exc:
            raise SendError(f"the server closed the connection: {exc}") from None
        except ssl.SSLCertVerificationError as exc:
            raise SendError(f"TLS certificate not trusted: {exc.verify_message} (see notify.email.ca_file)", retryable=False) from None
        except ssl.SSLError as exc:
            raise SendError(f"TLS failed: {exc.reason or exc} (does notify.email.security match the port?)", retryable=False) from None
        except TimeoutError:
            raise SendError(f"no answer within {timeout:g} s") from None
        except smtplib.SMTPException as exc:
            raise SendError(f"SMTP error: {exc}") from None
        except OSError as exc:
            raise SendError(f"cannot connect to {server}:{port}: {exc.strerror or exc}") from None
        finally:
            if smtp is not None:
                _quit(smtp)


def _login(smtp: smtplib.SMTP, username: str, password: str) -> None:
    """Log in with one mechanism: smtplib's login() would try every mechanism in turn with the same
    wrong password, which counts as several failed logins and can get the camera locked out."""
    smtp.ehlo_or_helo_if_needed()
    advertised = smtp.esmtp_features.get("auth", "").upper().split()
    if "PLAIN" in advertised:
        smtp.user, smtp.password = username, password
        smtp.auth("PLAIN", smtp.auth_plain)
    else:
        smtp.login(username, password)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return _one_line(value)[:200]


def _quit(smtp: smtplib.SMTP) -> None:
    """Say goodbye politely; a failure here must not turn a delivered mail into a retry (a duplicate)."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()
