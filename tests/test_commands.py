"""The command registry: subcommands with their own arguments, help and token rule, through the real command port too."""

from __future__ import annotations

import pytest
from daemon_proc import replies, send

from daemon.commands import Command, Registry, Reply, Session
from daemon.config import Config
from daemon.core.bus import EventBus
from daemon.core.status import ComponentStatus
from daemon.image.night import NightController
from daemon.net.control import ControlServer

pytestmark = pytest.mark.timeout(30)


def registry_with_subcommands(token: str = "") -> tuple[Registry, list[str]]:
    calls: list[str] = []
    reg = Registry(token=lambda: token)

    def record(what: str):
        def handler(args: list[str], session: Session) -> Reply:
            calls.append(" ".join([what, *args]))
            return Reply(True, what)

        return handler

    reg.register(Command("sweep", record("start"), "Start a sweep", usage="[N,M,...]", mutating=True, max_args=1))
    reg.register(Command("sweep", record("status"), "Progress of the sweep", sub="status"))
    reg.register(Command("sweep", record("cancel"), "Cancel the sweep", mutating=True, sub="cancel"))
    reg.register(Command("region", record("add"), "Add a region", usage="NAME X Y W H", mutating=True, min_args=5, max_args=6, sub="add"))
    reg.register(Command("region", record("del"), "Delete a region", usage="NAME", mutating=True, min_args=1, max_args=1, sub="del"))
    return reg, calls


def test_the_second_word_picks_the_subcommand_and_the_rest_are_its_arguments():
    reg, calls = registry_with_subcommands()
    assert reg.dispatch("sweep status").first_line() == "OK status"
    assert reg.dispatch("sweep 1,2,3").first_line() == "OK start"
    assert reg.dispatch("SWEEP Cancel").first_line() == "OK cancel"
    assert reg.dispatch("region add door 0 0 10 10").ok
    assert calls == ["status", "start 1,2,3", "cancel", "add door 0 0 10 10"]


def test_each_subcommand_checks_its_own_arguments():
    reg, calls = registry_with_subcommands()
    bad = reg.dispatch("region add door 1 2")
    assert not bad.ok and bad.first_line().startswith("ERR usage: region add NAME X Y W H")
    assert reg.dispatch("sweep status now").first_line().startswith("ERR usage: sweep")
    # No plain `region`: a missing or unknown subcommand names the ones there are.
    assert reg.dispatch("region").first_line() == "ERR usage: region add NAME X Y W H | region del NAME"
    assert reg.dispatch("region move door").first_line().startswith("ERR usage: region add")
    assert calls == []


def test_reading_is_open_and_changing_needs_the_token_per_subcommand():
    reg, calls = registry_with_subcommands(token="s3cret")
    stranger = Session(peer="192.168.1.50")
    assert reg.dispatch("sweep status", stranger).ok
    for line in ("sweep", "sweep 1,2", "sweep cancel", "region del door"):
        reply = reg.dispatch(line, stranger)
        assert not reply.ok and "changes state and needs 'token SECRET'" in reply.first_line(), line
    assert calls == ["status"]
    assert reg.dispatch("token s3cret", stranger).ok
    assert reg.dispatch("sweep cancel", stranger).ok
    assert calls == ["status", "cancel"]


def test_help_lists_every_subcommand_with_its_lock():
    reg, _ = registry_with_subcommands(token="s3cret")
    text = reg.dispatch("help").text or ""
    lines = {ln.split("  ")[0].strip(): ln for ln in text.splitlines()}
    assert "(needs token)" not in lines["sweep status"]
    assert "(needs token)" in lines["sweep cancel"] and "(needs token)" in lines["sweep [N,M,...]"]
    one = reg.dispatch("help sweep")
    assert one.ok and "sweep status" in (one.text or "") and "sweep cancel" in (one.text or "")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(Command("sweep", lambda a, s: Reply(True), "again", sub="status"))


def test_help_shows_one_subcommand_over_the_command_port():
    reg, calls = registry_with_subcommands(token="s3cret")
    config = Config({"control.bind": "127.0.0.1", "control.port": 0, "control.script_linger_s": 0.2})
    server = ControlServer(config.section("control"), reg, ComponentStatus("control"))
    server.start()
    try:
        assert server.port
        add, cancel, unknown, plain, token_sub, too_many = replies(
            send(server.port, "help region add", "HELP sweep Cancel", "help region move", "help sweep", "help token x", "help a b c")
        )
        assert add.splitlines() == ["OK region add", "region add NAME X Y W H", "  Add a region (needs token)"]
        assert cancel.splitlines() == ["OK sweep cancel", "sweep cancel", "  Cancel the sweep (needs token)"]
        assert unknown == "ERR unknown subcommand 'move' of region; known: add, del"
        assert plain.splitlines()[0] == "OK sweep" and "sweep status" in plain and "sweep cancel" in plain
        assert token_sub == "ERR token has no subcommands"
        assert too_many == "ERR usage: help [COMMAND [SUBCOMMAND]]"
        assert calls == []
    finally:
        server.stop()


def test_night_without_argument_answers_without_the_token_over_the_command_port():
    config = Config({"control.bind": "127.0.0.1", "control.port": 0, "control.token": "s3cret", "control.script_linger_s": 0.2})
    registry = Registry(token=lambda: config.get("control.token"))
    night = NightController(config.section("night"), EventBus(), lambda is_night: {"night": is_night, "applied": True})
    night.register_commands(registry)
    server = ControlServer(config.section("control"), registry, ComponentStatus("control"))
    server.start()
    try:
        port = server.port
        assert port
        shown, forced, level = replies(send(port, "night", "night night", "night_level"))
        assert shown.startswith("OK DAY mode=auto")
        assert forced.startswith("ERR night night changes state and needs 'token SECRET'")
        assert level.startswith("OK DAY")
        assert night.level()["mode"] == "auto"
        authorised = replies(send(port, "token s3cret", "night auto", "night"))
        assert [r.split()[0] for r in authorised] == ["OK", "OK", "OK"]
    finally:
        server.stop()
