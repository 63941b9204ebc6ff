"""The command port against unfriendly and careless clients, on one real daemon with a token.

Silent and blank-line clients filling the port, guessing the token over one
connection and over many at once, every command's token rule (read from the daemon's own `help`,
so commands added later are covered), an allow-list that would shut out the
client setting it.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_proc import Daemon, replies, reply_json, send, wait_for

pytestmark = pytest.mark.timeout(90)

TOKEN = "s3cret-token"
GRACE_S = 0.5
NEEDS_TOKEN = "needs 'token SECRET'"
# Commands that change state: whatever else the registry marks, these must need the token.
KNOWN_MUTATING = {
    "set",
    "reset",
    "overwrite_config",
    "save",
    "pastStack",
    "stack",
    "night auto",
    "night day",
    "night night",
    "region add",
    "region del",
    "notify_test",
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    workdir: Path = tmp_path_factory.mktemp("hardening")
    d = Daemon(workdir, {"control.token": TOKEN, "control.grace_s": GRACE_S, "control.script_linger_s": 0}).start()
    yield d
    d.stop()


def control_health(d: Daemon) -> dict:
    return reply_json(replies(d.cmd("health"))[0])["clients"]["control"]


def connect(d: Daemon, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", d.control_port), timeout=20, source_address=(source, 0))


def first_line(d: Daemon, line: str, source: str = "127.0.0.1") -> str:
    """The first line of the reply to one command (enough for a stream reply too)."""
    with connect(d, source) as sock:
        sock.sendall(line.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")


def close_all(d: Daemon, socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()
    assert wait_for(lambda: control_health(d)["clients"] <= 1)  # only the health connection itself


# -- 4: a full port makes room -------------------------------------------------------------------------


def test_32_silent_clients_do_not_lock_out_a_new_health(daemon: Daemon) -> None:
    before = control_health(daemon)["dropped_for_newcomer"]
    silent = [connect(daemon) for _ in range(32)]  # the port is full (control.max_clients is 32)
    time.sleep(GRACE_S + 0.2)  # past their grace: a never-used connection is the first to go
    out = daemon.cmd("health")
    assert out.startswith("OK "), out
    figures = reply_json(replies(out)[0])["clients"]["control"]
    assert figures["dropped_for_newcomer"] >= before + 1 and figures["refused_too_many"] == 0
    dropped = 0
    for s in silent:
        s.settimeout(0.05)
        try:
            dropped += s.recv(200).startswith(b"ERR dropped: the command port is full")
        except (TimeoutError, ConnectionResetError):
            pass
    assert dropped >= 1
    close_all(daemon, silent)


def test_32_blank_line_senders_do_not_lock_out_a_new_health(daemon: Daemon) -> None:
    chatty = [connect(daemon) for _ in range(32)]
    for s in chatty:
        s.sendall(b"status\n")
    for s in chatty:  # all 32 are in and served
        data = b""
        while not data.endswith(b"\n\n"):
            data += s.recv(65536)
        assert data.startswith(b"OK ")
    stop = threading.Event()

    def blank_lines() -> None:  # what kept the port full forever: a blank line every so often on every connection
        while not stop.is_set():
            for s in chatty:
                try:
                    s.sendall(b"\n")
                except OSError:
                    pass
            stop.wait(0.1)

    sender = threading.Thread(target=blank_lines, daemon=True)
    sender.start()
    try:
        time.sleep(0.3)
        out = daemon.cmd("health")
        assert out.startswith("OK "), out
        assert reply_json(replies(out)[0])["clients"]["control"]["refused_too_many"] == 0
    finally:
        stop.set()
        sender.join(5)
    close_all(daemon, chatty)


# -- 5: token guessing ---------------------------------------------------------------------------------


def test_guessing_the_token_over_one_connection_is_slowed_counted_logged_and_cut_off(daemon: Daemon) -> None:
    before = control_health(daemon)
    guesses = 50
    t0 = time.monotonic()
    out = send(daemon.control_port, *(f"token guess{i:04d}" for i in range(guesses)))
    elapsed = time.monotonic() - t0
    answers = replies(out)
    assert answers == ["ERR wrong token", "ERR wrong token", "ERR wrong token; closing this connection after 3 wrong tokens"]
    # 3 tries, then the connection is closed: 0.5 s + 1 s + 2 s of delays bound the rate (it was about 53,000 a second).
    assert elapsed >= 3.5 and len(answers) / elapsed < 1.0
    after = control_health(daemon)
    assert after["token_failures"] - before["token_failures"] == 3
    assert after["token_disconnects"] - before["token_disconnects"] == 1
    lines = [ln for ln in daemon.log().splitlines() if "wrong token from 127.0.0.1" in ln]
    assert len(lines) == 1, lines  # logged once, then counted (one line a minute per address)
    assert "guess" not in daemon.log()  # the guesses themselves never reach the journal
    # The right token still works at once, and clears the address's record.
    t0 = time.monotonic()
    assert replies(send(daemon.control_port, f"token {TOKEN}"))[0] == "OK authorised"
    assert time.monotonic() - t0 < 3.0


REFUSED_UNHEARD = re.compile(r"ERR too many wrong tokens from 127\.0\.0\.1: try again in (\d+\.\d) s")


def test_guessing_the_token_over_many_connections_is_bounded_per_address(daemon: Daemon) -> None:
    before = control_health(daemon)
    stop = threading.Event()
    answers: list[tuple[float, str]] = []  # (when, first reply line) of every guess answered within 50 ms

    def guess(k: int) -> None:
        # The attack that had 312 guesses a second judged: connect, guess, hang up unless OK came at once.
        n = 0
        while not stop.is_set():
            n += 1
            try:
                with connect(daemon) as sock:
                    sock.sendall(f"token guess{k}-{n}\n".encode())
                    sock.settimeout(0.05)
                    try:
                        answers.append((time.monotonic(), sock.recv(200).decode(errors="replace").split("\n")[0]))
                    except (TimeoutError, ConnectionResetError):
                        pass
            except OSError:
                stop.wait(0.01)

    threads = [threading.Thread(target=guess, args=(k,), daemon=True) for k in range(16)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    try:
        # While the address has a second or more left to serve, even the right token is refused unheard, and at once;
        # another address is not held up by it.
        def long_refusal() -> bool:
            return any((m := REFUSED_UNHEARD.match(a)) and float(m[1]) >= 1.0 for _, a in answers[-50:])

        assert wait_for(long_refusal, timeout=10), answers[-5:]
        right = first_line(daemon, f"token {TOKEN}")
        assert REFUSED_UNHEARD.match(right), right
        assert first_line(daemon, f"token {TOKEN}", source="127.0.0.2") == "OK authorised"
        time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    elapsed = time.monotonic() - t0
    after = control_health(daemon)
    judged = after["token_failures"] - before["token_failures"]
    refused = after["token_refused_unheard"] - before["token_refused_unheard"]
    # 0.5 s, 1 s, 2 s, 4 s between judged guesses: 3 to 4 in about 3 s, however many connections guess at once.
    assert 1 <= judged <= 6, (judged, elapsed)
    assert refused >= 20 and refused >= 5 * judged, (refused, judged)
    assert not any(a.startswith("OK") for _, a in answers)
    assert "guess" not in daemon.log()  # neither the judged nor the refused guesses reach the journal
    # Once the address has served its time, the right token is heard again (and clears the address's record).
    for _ in range(5):
        answer = first_line(daemon, f"token {TOKEN}")
        if not (m := REFUSED_UNHEARD.match(answer)):
            break
        time.sleep(float(m[1]) + 0.05)
    assert answer == "OK authorised", answer
    assert first_line(daemon, "token guess-after") == "ERR wrong token"  # the schedule starts afresh
    assert control_health(daemon)["token_failures"] - after["token_failures"] == 1
    time.sleep(0.6)
    assert first_line(daemon, f"token {TOKEN}") == "OK authorised"


# -- 6: every command's token rule, from the daemon's own registry ---------------------------------------


def _help_entries(d: Daemon) -> dict[str, bool]:
    """Every (sub)command the daemon's `help` lists -> whether it is marked as needing the token."""
    out = replies(d.cmd("help"))[0].splitlines()
    count = int(re.match(r"OK (\d+) commands", out[0])[1])  # type: ignore[index]
    entries: dict[str, bool] = {}
    for line in out[1:]:
        # `USAGE  description`: a usage line has single spaces only; its name is the words before the first argument.
        usage = re.split(r" {2,}", line.strip(), maxsplit=1)[0]
        words = []
        for word in usage.split():
            if word.isupper() or word.startswith("[") or "|" in word:
                break
            words.append(word)
        entries[" ".join(words)] = line.rstrip().endswith("(needs token)")
    assert len(entries) == count, (len(entries), count, out)
    return entries


def _with_dummy_args(d: Daemon, name: str) -> list[str]:
    """First lines of the replies to `name` with 0..6 dummy arguments (arguments that change nothing when refused)."""
    return [first_line(d, " ".join([name, *(["1"] * n)])) for n in range(7)]


def test_every_state_changing_command_needs_the_token_and_no_reading_one_does(daemon: Daemon) -> None:
    entries = _help_entries(daemon)
    assert KNOWN_MUTATING <= {n for n, mutating in entries.items() if mutating}, "a command that changes state is open"
    assert {"help", "health", "status", "get", "dump_config", "night", "motion", "regions", "list"} <= {
        n for n, mutating in entries.items() if not mutating
    }
    for name, mutating in entries.items():
        if name in ("token", "stay"):
            continue  # the token command itself, and stay (holds the connection): nothing to refuse
        answers = _with_dummy_args(daemon, name)
        if mutating:
            # Some argument count passes the usage check; every such line must be refused for the token.
            refused = [a for a in answers if not a.startswith("ERR usage:")]
            assert refused and all(NEEDS_TOKEN in a and a.startswith(f"ERR {name} ") for a in refused), (name, answers)
        else:
            assert not any(NEEDS_TOKEN in a for a in answers), (name, answers)
    # Nothing was changed by all that: no capture was written, the config is as it was.
    assert not list((daemon.workdir / "captures").rglob("*.jpg"))
    assert reply_json(replies(daemon.cmd("dump_config"))[0])["night"]["gain"] == 8.0


# -- 10: an allow-list that shuts out its setter ------------------------------------------------------------


def test_an_allow_list_that_excludes_the_client_changing_it_is_refused(daemon: Daemon) -> None:
    auth = f"token {TOKEN}"
    for value in ("[]", "10.0.0.0/8", "192.168.1.0/24,10.0.0.0/8"):
        answer = replies(send(daemon.control_port, auth, f"set control.allow {value}"))[1]
        assert answer.startswith("ERR control.allow: ") and "would shut out 127.0.0.1, the client making this change" in answer, answer
    assert replies(send(daemon.control_port, auth, "set control.allow 127.0.0.1/32,10.0.0.0/8"))[1].startswith("OK")
    assert replies(send(daemon.control_port, auth, "reset control.allow"))[1].startswith('OK control.allow=["127.0.0.0/8"')
    assert first_line(daemon, "health").startswith("OK")


def test_more_addresses_than_the_token_memory_holds_share_one_shut_out() -> None:
    """A guesser with more source addresses than the table holds (easy over IPv6) must not push a shut-out address
    out and get a fresh 0.5 s on each: the addresses beyond a table full of shut-outs share one entry."""
    from daemon.net.controlclient import TokenMemory

    memory = TokenMemory()
    memory.capacity = 4
    now = 1000.0
    for _ in range(5):  # the first address: shut out for 8 s after its fifth wrong token
        _count, until = memory.failed("10.0.0.1", now, 1)
    assert until - now == 8.0
    for i in range(2, 50):  # 48 more addresses, one wrong token each, within the shut-outs
        memory.failed(f"10.0.0.{i}", now + 0.01 * i, 1)
    assert memory.shut_out("10.0.0.1", now + 1) == pytest.approx(7.0)  # still remembered, still shut out
    # Every address beyond the table is shut out together, however new: 45 guesses made it 0.5 s doubling to 60 s.
    assert memory.shut_out("10.9.9.9", now + 1) > 30
    # Once the table's shut-outs are over, a new address takes the room of one whose shut-out ended.
    later = now + 100
    assert memory.failed("10.0.1.1", later, 1) == (1, later + 0.5)
    assert memory.shut_out("10.0.1.1", later + 0.1) == pytest.approx(0.4)
