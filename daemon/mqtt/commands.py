"""Commands over MQTT: the command registry on `P/cmd`, and the Home Assistant controls.

`P/cmd` takes what the TCP port takes, through the same `Registry.dispatch`
(same validation, same help, same token rule), in one of two forms:
- JSON `{"command": "night day", "token": "SECRET", "reply_to": "my/inbox"}`
  (`token` and `reply_to` optional): the token authorises this one message,
  as `token SECRET` does a TCP connection;
- plain text: one command per line, run in order on one session, exactly
  as netcat would send them (so `token SECRET` on the first line works too).
Every command gets one JSON reply `{"command", "ok", "reply", "body", "text"}`
(`reply` is the TCP port's first line, `OK ...` or `ERR ...`; the command is
echoed with a token or secret value hidden). It goes to the request's MQTT 5
response topic with its correlation data, else to `reply_to`, else to
`P/cmd/reply`. A reply topic may not be one of picamd's own topics (that
would loop or overwrite a state) apart from `P/cmd/reply/...`, nor lie
under the discovery prefix, nor hold wildcards.

Wrong tokens cost time as on the TCP port, without holding up anything: after
a wrong token every token is refused unheard for a while that doubles with each
failure (0.5 s, 1 s, ... at most 8 s) and is forgotten after 10 minutes of
peace.

The controls Home Assistant shows send plain payloads and cannot carry a
token: `P/night/set` (auto, day, night) runs `night auto|day|night`,
`P/motion/set` (ON, OFF) runs `set motion.enabled true|false`, `P/detect/set`
(ON, OFF) runs `detect auto|off`. With `control.token` set they work only
when `mqtt.allow_controls` is true (then whoever may publish to those topics,
which the broker's ACL decides, may use them); without a token they are open
like every command. A refused or failed control is answered on `P/cmd/reply`
too, and logged once a minute.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.commands import Registry, Reply, Session
from daemon.config import redact
from daemon.core.repeat import RepeatedLog

from .outbox import Message
from .topics import Topics, valid_publish_topic

log = logging.getLogger("picamd.mqtt")

#: The largest command payload read; more is refused unread.
MAX_PAYLOAD = 65536
#: Most command lines in one plain-text message.
MAX_LINES = 16
_TOKEN_DELAY_S = 0.5
_MAX_TOKEN_DELAY_S = 8.0
_TOKEN_MEMORY_S = 600.0
_JSON_KEYS = frozenset({"command", "token", "reply_to"})


@dataclass(frozen=True)
class Request:
    """One message on a topic picamd listens to."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None


class MqttCommands:
    def __init__(
        self,
        registry: Registry,
        topics: Topics,
        *,
        token: Callable[[], str],
        allow_controls: Callable[[], bool],
        max_line: Callable[[], int] = lambda: 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._topics = topics
        self._token = token
        self._allow_controls = allow_controls
        self._max_line = max_line
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._last_failure = -_TOKEN_MEMORY_S
        self._locked_until = 0.0
        self._errlog = RepeatedLog(log)
        self.counts = {
            "commands": 0,
            "controls": 0,
            "refused_controls": 0,
            "token_failures": 0,
            "token_refused_unheard": 0,
            "bad_requests": 0,
        }
        # control topic -> (the payloads it takes, the command line a payload means or None)
        self._controls: dict[str, tuple[str, Callable[[str], str | None]]] = {
            topics.night_set: ("auto, day, night", _night_line),
            topics.motion_set: ("ON, OFF", lambda v: _on_off(v, "set motion.enabled true", "set motion.enabled false")),
            topics.detect_set: ("ON, OFF", lambda v: _on_off(v, "detect auto", "detect off")),
        }

    def handle(self, request: Request) -> list[Message]:
        """The replies to one request (run on the command worker: a command may take seconds)."""
        if request.topic == self._topics.cmd:
            return self._command(request)
        if request.topic in self._controls:
            return self._control(request)
        return []

    # -- P/cmd
    def _command(self, request: Request) -> list[Message]:
        topic, problem = self._reply_topic(request.response_topic, None)
        if len(request.payload) > MAX_PAYLOAD:
            return [self._bad(topic, request, f"payload over {MAX_PAYLOAD} bytes")]
        try:
            text = request.payload.decode("utf-8")
        except UnicodeDecodeError:
            return [self._bad(topic, request, "payload is not UTF-8 text")]
        session = Session(peer="mqtt")
        if text.lstrip().startswith("{"):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                return [self._bad(topic, request, f"payload is not valid JSON ({exc.msg} at {exc.pos})")]
            err = _check_json(parsed)
            if err:
                return [self._bad(topic, request, err)]
            if request.response_topic is None and parsed.get("reply_to") is not None:
                topic, problem = self._reply_topic(None, str(parsed["reply_to"]))
            if problem:
                return [self._bad(topic, request, problem)]
            line = parsed["command"]
            token = parsed.get("token")
            if token is not None:
                refused = self._authorise(str(token), session)
                if refused is not None:
                    return [self._reply(topic, request, line, refused)]
            return [self._run(topic, request, line, session)]
        if problem:
            return [self._bad(topic, request, problem)]
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            return [self._bad(topic, request, "empty command (try help)")]
        if len(lines) > MAX_LINES:
            return [self._bad(topic, request, f"more than {MAX_LINES} command lines in one message")]
        out = []
        for line in lines:
            name, _, rest = line.strip().partition(" ")
            if name.lower() == "token":
                refused = self._authorise(rest.strip(), session)
                out.append(
                    self._reply(
                        topic,
                        request,
                        line,
                        refused or Reply(True, "authorised" if self._token() else "no token is configured; all commands are open"),
                    )
                )
                if refused is not None:
                    break  # as on the TCP port: a wrong token ends the conversation
                continue
            out.append(self._run(topic, request, line, session))
        return out

    def _authorise(self, token: str, session: Session) -> Reply | None:
        """Check `token` for this session; None when authorised, else the ERR reply."""
        now = self._clock()
        with self._lock:
            if now - self._last_failure > _TOKEN_MEMORY_S:
                self._failures = 0
            if now < self._locked_until:
                self.counts["token_refused_unheard"] += 1
                return Reply.error(
                    f"a wrong token came {now - self._last_failure:.1f} s ago: tokens are refused unheard for "
                    f"{self._locked_until - now:.1f} s more"
                )
        failures = session.auth_failures
        reply = self._registry.dispatch(f"token {token}" if token and " " not in token else "token", session)
        if session.auth_failures > failures or not reply.ok:
            with self._lock:
                self._failures += 1
                self._last_failure = now
                self._locked_until = now + min(_TOKEN_DELAY_S * 2 ** min(self._failures - 1, 16), _MAX_TOKEN_DELAY_S)
                self.counts["token_failures"] += 1
                n = self._failures
            self._errlog.warning("token", "wrong token on MQTT (%d in a row)", n)
            return reply if not reply.ok else Reply.error("wrong token")
        with self._lock:
            self._failures = 0
        return None

    def _run(self, topic: str, request: Request, line: str, session: Session) -> Message:
        if len(line.encode()) > self._max_line():
            return self._reply(topic, request, line, Reply.error(f"line too long (max {self._max_line()} bytes)"))
        reply = self._registry.dispatch(line, session)
        with self._lock:
            self.counts["commands"] += 1
        return self._reply(topic, request, line, reply)

    # -- the Home Assistant controls
    def _control(self, request: Request) -> list[Message]:
        value = request.payload.decode("utf-8", errors="replace").strip()[:40]
        choices, meaning = self._controls[request.topic]
        line = meaning(value)
        with self._lock:
            self.counts["controls"] += 1
        if line is None:
            reply = Reply.error(f"{request.topic}: {value!r} is not one of {choices}")
        else:
            session = Session(peer="mqtt", authorized=not self._token() or bool(self._allow_controls()))
            reply = self._registry.dispatch(line, session)
        if not reply.ok:
            with self._lock:
                self.counts["refused_controls"] += 1
            why = reply.message
            if line is not None and self._token() and not self._allow_controls():
                why = f"{why} (the controls need mqtt.allow_controls: true while control.token is set)"
                reply = Reply.error(why)
            self._errlog.warning(f"control {request.topic}", "MQTT control %s %r refused: %s", request.topic, value, why)
        payload = _reply_payload(line or value, reply)
        payload["control"] = request.topic
        return [Message(self._topics.cmd_reply, _json(payload))]

    # -- replies
    def _reply_topic(self, response_topic: str | None, reply_to: str | None) -> tuple[str, str | None]:
        """Where the reply goes, and why the asked-for topic was refused (then the reply goes to P/cmd/reply)."""
        wanted = response_topic if response_topic is not None else reply_to
        if wanted is None:
            return self._topics.cmd_reply, None
        why = valid_publish_topic(wanted)
        base = self._topics.base + "/"
        own_reply = wanted == self._topics.cmd_reply or wanted.startswith(self._topics.cmd_reply + "/")
        if why is None and (wanted.startswith(base) and not own_reply):
            why = f"is one of this camera's own topics ({base}...): only {self._topics.cmd_reply}[/...] may take replies"
        if why is None and wanted.startswith(self._topics.discovery_prefix + "/"):
            why = f"lies under the discovery prefix {self._topics.discovery_prefix}/"
        if why is None and wanted in self._topics.subscriptions():
            why = "is a topic picamd listens to"
        if why is not None:
            return self._topics.cmd_reply, f"reply topic {wanted[:120]!r} {why}"
        return wanted, None

    def _bad(self, topic: str, request: Request, reason: str) -> Message:
        with self._lock:
            self.counts["bad_requests"] += 1
        return self._reply(topic, request, None, Reply.error(reason))

    def _reply(self, topic: str, request: Request, line: str | None, reply: Reply) -> Message:
        return Message(topic, _json(_reply_payload(line, reply)), correlation=request.correlation)


def _night_line(value: str) -> str | None:
    v = value.lower()
    return f"night {v}" if v in ("auto", "day", "night") else None


def _on_off(value: str, on: str, off: str) -> str | None:
    v = value.lower()
    if v in ("on", "true", "1"):
        return on
    if v in ("off", "false", "0"):
        return off
    return None


def _check_json(parsed: Any) -> str | None:
    if not isinstance(parsed, dict):
        return 'a JSON payload must be an object like {"command": "health"}'
    unknown = sorted(set(parsed) - _JSON_KEYS)
    if unknown:
        return f"unknown key(s) {', '.join(map(repr, unknown))[:120]}: a JSON command has command, token and reply_to"
    if not isinstance(parsed.get("command"), str) or not parsed["command"].strip():
        return 'a JSON payload needs "command": "<a command line>"'
    for key in ("token", "reply_to"):
        if key in parsed and parsed[key] is not None and not isinstance(parsed[key], str):
            return f'"{key}" must be text'
    return None


def shown_line(line: str | None) -> str | None:
    """A command line as a reply or a log may show it: the token and secret values hidden."""
    if line is None:
        return None
    name, _, rest = line.strip().partition(" ")
    if name.lower() == "token":
        return "token ***"
    if name.lower() == "set":
        key, _, value = rest.strip().partition(" ")
        shown = redact(key, value.strip())
        return f"{name} {key} {shown if isinstance(shown, str) else json.dumps(shown)}"[:200]
    return line.strip()[:200]


def _reply_payload(line: str | None, reply: Reply) -> dict[str, Any]:
    if reply.stream is not None:
        close = getattr(reply.stream, "close", None)
        if callable(close):
            close()
        reply = Reply.error("this command streams binary data: use the TCP command port for it")
    return {"command": shown_line(line), "ok": reply.ok, "reply": reply.first_line(), "body": reply.body, "text": reply.text}


def _json(payload: dict[str, Any]) -> bytes:
    try:
        return json.dumps(payload, default=str).encode()
    except (TypeError, ValueError) as exc:  # a body json cannot encode (a handler bug): still answer
        return json.dumps(
            {
                "command": payload.get("command"),
                "ok": False,
                "reply": f"ERR the reply could not be encoded: {exc}",
                "body": None,
                "text": None,
            }
        ).encode()
