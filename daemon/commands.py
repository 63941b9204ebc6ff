"""The command registry: every command is declared once, with its handler.

The TCP command port, tests and any later entry point (MQTT) dispatch through
`Registry.dispatch`, so `help` writes itself and every entry point validates
arguments and authorisation the same way.

A command may have subcommands (`night` shows the mode, `night day` forces
it): each (command, subcommand) pair is its own `Command` with its own
arguments, help line and token rule, so reading stays open while changing
state needs the token. A line's second word picks the subcommand when one of
that name is registered; otherwise the plain command gets all the arguments.

Wire format of a reply (see `Reply.encode`): a first line `OK ...` or
`ERR <reason>`, then any body lines (pretty JSON or text), then one empty
line that ends the reply. `shortstream` is the one exception: after its OK
line come length-prefixed JPEG frames (see `net/jpegfeed.py`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from daemon.core.repeat import RepeatedLog

log = logging.getLogger("picamd.commands")


@dataclass
class Reply:
    ok: bool
    message: str = ""
    body: Any = None  # JSON-able: sent as pretty JSON lines after the first line
    text: str | None = None  # plain text lines after the first line
    stream: Iterator[bytes] | None = None  # raw bytes after the first line (no terminating empty line)

    @classmethod
    def error(cls, reason: str) -> Reply:
        return cls(False, reason)

    def first_line(self) -> str:
        head = "OK" if self.ok else "ERR"
        msg = " ".join(self.message.split())  # never let a reason break the one-line rule
        return f"{head} {msg}".rstrip()

    def encode(self) -> bytes:
        lines = [self.first_line()]
        if self.body is not None:
            lines.append(json.dumps(self.body, indent=2, default=str))
        if self.text:
            lines.append("\n".join(ln for ln in self.text.splitlines() if ln.strip()))
        out = "\n".join(lines) + "\n"
        if self.stream is None:
            out += "\n"
        return out.encode()


@dataclass
class Session:
    """One client's state on an entry point (a TCP connection, a test)."""

    peer: str = "local"
    authorized: bool = False
    auth_failures: int = 0  # wrong tokens on this session: the entry point delays, logs and disconnects on them
    data: dict[str, Any] = field(default_factory=dict)
    # The entry point's look at whether its client is still there (the TCP port: not closed, not half-closed, not
    # broken); None where the question makes no sense (a test, MQTT). A long command (a stack) asks it while it
    # works: a handler runs on its client's own thread, which reads nothing from the client meanwhile.
    connected: Callable[[], bool] | None = field(default=None, repr=False, compare=False)

    def is_connected(self) -> bool:
        """False once the client has gone, so that work only it wanted can stop."""
        return self.connected is None or self.connected()


Handler = Callable[[list[str], Session], Reply]


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    help: str
    usage: str = ""
    mutating: bool = False  # needs the token when one is set
    min_args: int = 0
    max_args: int | None = 0
    raw_tail: bool = False  # the last argument takes the rest of the line as it is (for `set KEY VALUE`)
    sub: str = ""  # the subcommand word ("" for the plain command)

    @property
    def full_name(self) -> str:
        return f"{self.name} {self.sub}" if self.sub else self.name

    def usage_line(self) -> str:
        return f"{self.full_name} {self.usage}".rstrip()


class Registry:
    def __init__(self, token: Callable[[], str] = lambda: "") -> None:
        self._commands: dict[str, dict[str, Command]] = {}  # name -> subcommand ("" plain) -> command
        self._lock = threading.Lock()
        self._token = token
        self._errlog = RepeatedLog(log)
        self.register(
            Command("help", self._help, "List the commands, or show one (or one subcommand)", usage="[COMMAND [SUBCOMMAND]]", max_args=2)
        )
        self.register(
            Command("token", self._auth, "Authorise this connection for commands that change state", usage="SECRET", min_args=1, max_args=1)
        )

    def register(self, command: Command) -> None:
        with self._lock:
            subs = self._commands.setdefault(command.name.lower(), {})
            if command.sub.lower() in subs:
                raise ValueError(f"command {command.full_name} is registered twice")
            subs[command.sub.lower()] = command

    def add(
        self,
        name: str,
        help: str,
        *,
        usage: str = "",
        mutating: bool = False,
        min_args: int = 0,
        max_args: int | None = 0,
        raw_tail: bool = False,
        sub: str = "",
    ) -> Callable[[Handler], Handler]:
        """Decorator form of `register`."""

        def deco(fn: Handler) -> Handler:
            self.register(Command(name, fn, help, usage, mutating, min_args, max_args, raw_tail, sub))
            return fn

        return deco

    def names(self) -> list[str]:
        """Every command and subcommand, as typed ("night", "night day", ...)."""
        return sorted(c.full_name for subs in self._commands.values() for c in subs.values())

    def commands(self) -> list[Command]:
        return sorted((c for subs in self._commands.values() for c in subs.values()), key=lambda c: (c.name.lower(), c.sub))

    def get(self, name: str, sub: str = "") -> Command | None:
        return self._commands.get(name.lower(), {}).get(sub.lower())

    def _usage(self, name: str) -> str:
        return " | ".join(c.usage_line() for c in self._commands[name.lower()].values())

    def resolve(self, line: str) -> tuple[Command | None, str]:
        """The command a line names and the rest of the line after it (and after its subcommand word)."""
        name, _, rest = line.strip().partition(" ")
        subs = self._commands.get(name.lower())
        if not subs:
            return None, rest
        word, _, after = rest.strip().partition(" ")
        if word and word.lower() in subs:
            return subs[word.lower()], after
        return subs.get(""), rest

    def dispatch(self, line: str, session: Session | None = None) -> Reply:
        """Run one command line. Never raises: every failure becomes an ERR reply."""
        session = session or Session()
        line = line.strip()
        if not line:
            return Reply.error("empty command (try help)")
        if not line.isprintable():
            return Reply.error("command contains control or binary characters")
        name = line.partition(" ")[0]
        if name.lower() not in self._commands:
            return Reply.error(f"unknown command {name[:40]!r} (try help)")
        cmd, rest = self.resolve(line)
        if cmd is None:
            return Reply.error(f"usage: {self._usage(name)}")
        if cmd.raw_tail and cmd.max_args:
            args = rest.strip().split(None, cmd.max_args - 1) if rest.strip() else []
        else:
            args = rest.split()
        if len(args) < cmd.min_args or (cmd.max_args is not None and len(args) > cmd.max_args):
            return Reply.error(f"usage: {self._usage(name)}")
        if cmd.mutating and self._token() and not session.authorized:
            return Reply.error(f"{cmd.full_name} changes state and needs 'token SECRET' first on this connection")
        try:
            return cmd.handler(args, session)
        except Exception as exc:  # a handler bug answers ERR, it never drops the connection or the daemon
            self._errlog.log(logging.ERROR, f"{cmd.full_name} {type(exc).__name__}", "command %r failed: %s", line[:200], exc, exc_info=exc)
            return Reply.error(f"{cmd.name} failed: {exc}")

    # -- built-in commands
    def _help(self, args: list[str], session: Session) -> Reply:
        token_set = bool(self._token())

        def described(c: Command) -> str:
            return c.help + (" (needs token)" if c.mutating and token_set else "")

        if args:
            subs = self._commands.get(args[0].lower())
            if not subs:
                return Reply.error(f"unknown command {args[0][:40]!r}")
            entries = sorted(subs.values(), key=lambda c: c.sub)
            if len(args) == 2:
                known = [c.sub for c in entries if c.sub]
                one = subs.get(args[1].lower())
                if one is None:
                    if not known:
                        return Reply.error(f"{entries[0].name} has no subcommands")
                    return Reply.error(f"unknown subcommand {args[1][:40]!r} of {entries[0].name}; known: {', '.join(known)}")
                return Reply(True, one.full_name, text=f"{one.usage_line()}\n  {described(one)}")
            return Reply(True, entries[0].name, text="\n".join(f"{c.usage_line()}\n  {described(c)}" for c in entries))
        everything = self.commands()
        width = max(len(c.usage_line()) for c in everything)
        return Reply(True, f"{len(everything)} commands", text="\n".join(f"{c.usage_line():<{width}}  {described(c)}" for c in everything))

    def _auth(self, args: list[str], session: Session) -> Reply:
        token = self._token()
        if not token:
            session.authorized = True
            return Reply(True, "no token is configured; all commands are open")
        import hmac

        if hmac.compare_digest(args[0].encode(), token.encode()):
            session.authorized = True
            return Reply(True, "authorised")
        session.auth_failures += 1
        return Reply.error("wrong token")
