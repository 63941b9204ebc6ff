"""Secrets, the config file, paths, addresses and clearing values, against one real daemon.

The daemon runs from a hand-kept, commented config file (mode 0600) holding
secrets, with a command-line override of its HTTP port. `picamd check-config`
and failed starts run as their own short processes.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from daemon_proc import ROOT, Daemon, free_port, replies, reply_json, send

from daemon.config import KEYS, SCHEMA, Config, commented_yaml, path_kind, redact

pytestmark = pytest.mark.timeout(90)

TOKEN = "tok-Zq8Lr2Vx"
IFTTT_KEY = "IFTTTkey0123456789abcdef"
HEADER_KEY = "HeaderKey-77x9"
REGION_HOOK = "RegionHookId4455aa"
RTSP_PASS = "RtspPass99"
STR_SECRETS = {k.name: f"SEKRIT{i:02d}x" for i, k in enumerate(SCHEMA) if k.secret and k.kind is str and k.name != "control.token"}
SECRETS = [TOKEN, IFTTT_KEY, HEADER_KEY, REGION_HOOK, RTSP_PASS, *STR_SECRETS.values()]
NOTE = "# The camera over the loading bay. Ask Sam before changing the regions."


def values_for(workdir: Path, http_port: int, control_port: int) -> dict:
    return {
        "camera.width": 640,
        "camera.height": 480,
        "camera.framerate": 15.0,
        "camera.stall_timeout_s": 2.0,
        "camera.device": f"rtsp://admin:{RTSP_PASS}@127.0.0.1:8554/stream",
        "ring.size": 60,
        "ring.downscale": "160x120",
        "control.bind": "127.0.0.1",
        "control.port": control_port,
        "control.token": TOKEN,
        "http.bind": "127.0.0.1",
        "http.port": http_port,
        "export.base_dir": str(workdir / "captures"),
        "export.auto_save_interval_s": 0,
        "motion.log_dir": str(workdir / "logs"),
        "motion.regions": [
            {"name": "bay", "rect": [0.1, 0.1, 0.2, 0.2], "min_fraction": 0.9, "webhook": f"http://127.0.0.1:9/api/webhook/{REGION_HOOK}"}
        ],
        # Loopback port 9 refuses: nothing leaves the machine.
        "notify.webhook.url": f"http://127.0.0.1:9/trigger/machine/with/key/{IFTTT_KEY}",
        "notify.webhook.headers": {"X-Api-Key": HEADER_KEY},
        "logging.level": "DEBUG",
        **STR_SECRETS,
    }


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    workdir = tmp_path_factory.mktemp("confighard")
    file_http_port, run_http_port = free_port(), free_port()
    d = Daemon(workdir, http_port=run_http_port, args=["--http-port", str(run_http_port)])
    d.file_http_port = file_http_port  # type: ignore[attr-defined]
    # A hand-kept file: a note at the top, every key with its doc line, secrets in it, readable by its owner only.
    d.config_path.write_text(NOTE + "\n" + commented_yaml(values_for(workdir, file_http_port, d.control_port)))
    os.chmod(d.config_path, 0o600)
    d.start()
    yield d
    d.stop()


def ask(d: Daemon, *lines: str) -> list[str]:
    return replies(send(d.control_port, *lines))


def authorised(d: Daemon, *lines: str) -> list[str]:
    answers = ask(d, f"token {TOKEN}", *lines)
    assert answers[0] == "OK authorised"
    return answers[1:]


def picamd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


# -- 8: overwrite_config ----------------------------------------------------------------------------------------


def test_overwrite_config_writes_only_what_set_changed_and_keeps_comments_order_mode_and_owner(daemon: Daemon) -> None:
    path = daemon.config_path
    before = path.read_text()
    owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    os.chown(path, *owner)
    answers = authorised(
        daemon,
        "set night.dark_threshold 33",
        "set control.allow 127.0.0.0/8,192.168.7.0/24",
        "set export.jpeg_quality 85",
        "overwrite_config",
    )
    assert answers[-1].startswith(f"OK wrote 3 changed key(s) to {path}"), answers
    after = path.read_text()
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == owner
    bak = path.with_name(path.name + ".bak")
    assert bak.read_text() == before and stat.S_IMODE(bak.stat().st_mode) == 0o600
    old_lines, new_lines = before.splitlines(), after.splitlines()
    assert len(old_lines) == len(new_lines) and new_lines[0] == NOTE
    changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
    assert sorted(b.strip() for _, b in changed) == ["allow: [127.0.0.0/8, 192.168.7.0/24]", "dark_threshold: 33.0", "jpeg_quality: 85"]
    saved = yaml.safe_load(after)
    # Not the command-line override (--http-port), not --source, and the secrets as they were.
    assert saved["http"]["port"] == daemon.file_http_port != daemon.http_port  # type: ignore[attr-defined]
    assert saved["camera"]["source"] == "auto" and saved["control"]["token"] == TOKEN
    # Nothing changed since: nothing to write.
    assert authorised(daemon, "overwrite_config")[0].startswith("OK nothing to write")
    # A file made read-only is not replaced.
    os.chmod(path, 0o400)
    try:
        answers = authorised(daemon, "set night.gain 5", "overwrite_config", "reset night.gain")
        assert answers[1] == (
            f"ERR {path} is read-only (mode 0400): nothing was written; make it writable (chmod u+w) to let overwrite_config change it"
        )
        assert path.read_text() == after
    finally:
        os.chmod(path, 0o600)
    answers = authorised(daemon, "reset night.dark_threshold", "reset control.allow", "reset export.jpeg_quality", "overwrite_config")
    assert answers[-1].startswith("OK wrote 4 changed key(s)"), answers  # night.gain too: set and reset since the last write
    saved = yaml.safe_load(path.read_text())  # reset: the default is what is written
    assert (saved["night"]["gain"], saved["night"]["dark_threshold"], saved["export"]["jpeg_quality"]) == (8.0, 40.0, 92)


# -- 7: secrets -------------------------------------------------------------------------------------------


def test_secrets_never_show_in_dump_get_set_health_or_the_log(daemon: Daemon) -> None:
    dump = daemon.cmd("dump_config")
    for secret in SECRETS:
        assert secret not in dump
    config = reply_json(replies(dump)[0])
    assert config["control"]["token"] == "***"
    assert config["notify"]["webhook"]["url"] == "http://127.0.0.1:9/***"
    assert config["notify"]["webhook"]["headers"] == {"X-Api-Key": "***"}
    assert config["motion"]["regions"][0]["webhook"] == "http://127.0.0.1:9/***"
    assert config["camera"]["device"] == "rtsp://admin:***@127.0.0.1:8554/stream"
    for name in STR_SECRETS:
        part: dict = config
        for p in name.split("."):
            part = part[p]
        assert part == "***", name
    for key in ("control.token", "notify.webhook.url", "notify.webhook.headers", "motion.regions", "camera.device", *STR_SECRETS):
        got = ask(daemon, f"get {key}")[0]
        assert got.startswith(f"OK {key}=") and "***" in got and not any(s in got for s in SECRETS), got
    new_key = "NewIftttKey5566778899zz"
    echo = authorised(
        daemon,
        f"set notify.webhook.url http://127.0.0.1:9/trigger/door/with/key/{new_key}",
        f'set notify.webhook.headers {{"Authorization": "Basic {new_key}"}}',
    )
    assert echo[0] == 'OK notify.webhook.url="http://127.0.0.1:9/***" (applied)'
    assert echo[1] == 'OK notify.webhook.headers={"Authorization": "***"} (applied)'
    refused = authorised(daemon, f"set notify.webhook.url ftp://{new_key}@127.0.0.1/x")[0]
    assert refused.startswith("ERR notify.webhook.url: ") and new_key not in refused
    health = daemon.cmd("health")
    log = daemon.log_path.read_text(errors="replace")
    for secret in [*SECRETS, new_key]:
        assert secret not in health and secret not in log, secret


def test_every_key_the_schema_marks_secret_is_hidden_whatever_its_type() -> None:
    for key in SCHEMA:
        if key.secret:
            assert redact(key.name, {"str": "x", "list": ["x"], "dict": {"a": "x"}}.get(key.kind.__name__, "x")) == "***", key.name
            assert redact(key.name, key.default) == key.default  # an unset secret shows as unset
    assert redact("notify.webhook.url", "https://maker.ifttt.com/trigger/x/with/key/K") == "https://maker.ifttt.com/***"
    assert redact("camera.device", "http://cam.local/video.mjpg?user=a&password=b") == "http://cam.local/video.mjpg?user=a&password=***"
    assert redact("camera.device", "https://cam.local/with/key/abc/stream") == "https://cam.local/with/key/***/stream"
    assert redact("camera.device", "/dev/video0") == "/dev/video0"


# -- 11: clearing and resetting ----------------------------------------------------------------------------


def test_set_empty_clears_a_text_and_reset_restores_the_default(daemon: Daemon) -> None:
    answers = authorised(
        daemon,
        'set notify.webhook.url ""',
        "get notify.webhook.url",
        "set night.gain 4",
        "reset night.gain",
        "get night.gain",
        "reset no.such.key",
        'set notify.webhook.url "not a url"',
        "set notify.webhook.url http://",
        "set notify.webhook.headers ''",
        "get notify.webhook.headers",
    )
    assert answers[0] == 'OK notify.webhook.url="" (applied)'
    assert answers[1] == 'OK notify.webhook.url=""'
    assert answers[2] == "OK night.gain=4.0 (applied)"
    assert answers[3] == "OK night.gain=8.0 (applied)"
    assert answers[4] == "OK night.gain=8.0"
    assert answers[5].startswith("ERR no.such.key: unknown key")
    assert answers[6].startswith("ERR notify.webhook.url: not a url: must be an http:// or https:// URL")
    assert answers[7].startswith("ERR notify.webhook.url: http://: must be an http:// or https:// URL")
    assert answers[8] == "OK notify.webhook.headers={} (applied)"
    assert answers[9] == "OK notify.webhook.headers={}"
    health = reply_json(ask(daemon, "health")[0])
    assert "notify" not in health["degraded"]
    # The token too: "" clears it, so the commands that change state open up; then it is set again.
    assert authorised(daemon, 'set control.token ""') == ['OK control.token="" (applied)']
    assert ask(daemon, "set night.gain 8") == ["OK night.gain=8.0 (applied)"]
    assert ask(daemon, f"set control.token {TOKEN}") == ['OK control.token="***" (applied)']
    assert ask(daemon, "set night.gain 8")[0].startswith("ERR set changes state and needs 'token SECRET'")


# -- 9: paths ---------------------------------------------------------------------------------------------------


def test_hostile_yaml_values_are_refused_at_once_with_the_key(daemon: Daemon) -> None:
    """441 bytes of nested aliases ("billion laughs") expand to gigabytes once copied or echoed; a value nested a
    thousand deep overflows Python's recursion. Both are refused as values, one ERR line each, in well under a
    second, and the connection and daemon carry on."""
    levels = ["&l0 [" + ", ".join(["1"] * 9) + "]"] + [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    laughs = "[" + ", ".join(levels) + "]"
    deep = "[" * 1000 + "]" * 1000
    started = time.monotonic()
    answers = authorised(
        daemon,
        f"set ptz.presets {laughs}",
        f"set notify.events {laughs}",
        f"set ptz.presets {deep}",
        "set control.token two words",
        "set ptz.presets [{number: 1, regions: [{name: a, polygon: [[0, 0], [10, 0], [10, 10]]}]}]",
        "set ptz.presets []",
        "get night.gain",
    )
    took = time.monotonic() - started
    assert answers[0].startswith("ERR ptz.presets: ") and answers[0].endswith(
        "YAML aliases (*name) are not accepted in a value: write it out"
    )
    assert answers[1].startswith("ERR notify.events: ") and "YAML aliases" in answers[1]
    assert answers[2].startswith("ERR ptz.presets: ") and answers[2].endswith("nested deeper than 32 levels"), answers[2]
    assert answers[3] == ("ERR control.token: ***: must be one word of printable characters (no spaces): `token SECRET` takes one word"), (
        answers[3]
    )
    assert answers[4].startswith("OK ptz.presets=") and answers[5] == "OK ptz.presets=[] (applied)"
    assert answers[6].startswith("OK night.gain=")
    assert took < 10, took  # seconds, not the minutes (and gigabytes) the expansion took
    assert ask(daemon, f"token {TOKEN}")[0] == "OK authorised"  # the token was not changed
    assert "Traceback" not in daemon.log()


def test_folders_and_files_are_confined_to_the_allowed_roots(daemon: Daemon, tmp_path: Path) -> None:
    for key, value, why in [
        # The daemon runs in the checkout: climb out of it however deep it sits.
        ("export.base_dir", "../" * len(ROOT.resolve().parts) + "tmp/evil", "resolves to /tmp/evil, outside the allowed folders"),
        ("export.base_dir", "/var/lib/picamd/../../../tmp/evil", "resolves to /tmp/evil, outside the allowed folders"),
        ("export.base_dir", "/etc", "resolves to /etc, outside the allowed folders"),
        ("export.base_dir", "~", "~ is not expanded"),
        ("export.base_dir", '""', "must name a folder"),
        ("motion.log_dir", "/var/tmp", "outside the allowed folders"),
        ("detect.model", "/etc/passwd", "outside the allowed folders"),
        ("detect.labels", "../../../etc/hostname", "outside the allowed folders"),
        ("notify.email.ca_file", "/etc/ssl/certs/ca-certificates.crt", "outside the allowed folders"),
    ]:
        answer = authorised(daemon, f"set {key} {value}")[0]
        shown = "" if value == '""' else value
        assert answer.startswith(f"ERR {key}: {shown}: ") and why in answer, answer
    # Every key that names a folder or a file (those added later too: a preset file, a CA file...).
    for key in (k.name for k in SCHEMA if path_kind(k)):
        answer = authorised(daemon, f"set {key} /etc/passwd")[0]
        assert answer.startswith(f"ERR {key}: /etc/passwd: resolves to /etc/passwd, outside the allowed folders"), answer
    for line in ('set storage.allowed_roots ["/"]', "reset storage.allowed_roots"):
        assert authorised(daemon, line)[0] == "ERR storage.allowed_roots: can only be set in the config file, not from the command port"
    # Inside the config file's folder is fine, and save writes there; nothing went anywhere else.
    inside = daemon.workdir / "elsewhere"
    answers = authorised(daemon, f"set export.base_dir {inside}", "save", f"set export.base_dir {daemon.workdir / 'captures'}")
    assert answers[0].startswith("OK export.base_dir=") and answers[1].startswith("OK saved"), answers
    assert list(inside.rglob("*.jpg")) and not Path("/tmp/evil").exists()
    # The same rule at start: check-config (and the daemon) refuse a file that points outside.
    bad = tmp_path / "config.yaml"
    bad.write_text(yaml.safe_dump({"export": {"base_dir": "/etc"}, "motion": {"log_dir": str(tmp_path / "logs")}}))
    done = picamd("check-config", "--config", str(bad))
    assert done.returncode == 2 and "export.base_dir: /etc: resolves to /etc, outside the allowed folders" in done.stderr
    bad.write_text(
        yaml.safe_dump(
            {
                "storage": {"allowed_roots": ["/srv/picamd"]},
                "export": {"base_dir": "/srv/picamd/captures"},
                "motion": {"log_dir": "/srv/picamd/logs"},
                "control": {"port": 0},
                "http": {"port": 0},
            }
        )
    )
    done = picamd("check-config", "--config", str(bad))
    assert done.returncode == 0, done.stderr


# -- 10: addresses and start ---------------------------------------------------------------------------------------


def test_bad_addresses_are_refused_and_check_config_checks_what_start_would(daemon: Daemon, tmp_path: Path) -> None:
    for key in ("control.bind", "http.bind"):
        answer = authorised(daemon, f"set {key} 999.1.1.1")[0]
        assert answer == f"ERR {key}: 999.1.1.1: is not an IP address", answer
    assert authorised(daemon, "set http.bind no-such-host.invalid")[0].startswith("ERR http.bind: no-such-host.invalid: ")
    assert authorised(daemon, "set http.bind localhost")[0].startswith('OK http.bind="localhost" (stored; takes effect after')
    assert authorised(daemon, "reset http.bind")[0].startswith('OK http.bind="0.0.0.0"')

    path = tmp_path / "config.yaml"
    logs = {"export": {"base_dir": str(tmp_path / "captures")}, "motion": {"log_dir": str(tmp_path / "logs")}}
    done = picamd("check-config", "--config", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "missing.yaml: no such file" in done.stderr
    path.write_text(yaml.safe_dump({**logs, "control": {"bind": "999.1.1.1"}}))
    done = picamd("check-config", "--config", str(path))
    assert done.returncode == 2 and "control.bind: 999.1.1.1: is not an IP address" in done.stderr
    path.write_text(yaml.safe_dump({**logs, "notify": {"webhook": {"url": "htp:/example"}}}))
    done = picamd("check-config", "--config", str(path))
    assert done.returncode == 2 and "notify.webhook.url: htp:/example: must be an http:// or https:// URL" in done.stderr
    # The running daemon holds its ports: check-config says so, as start would find.
    path.write_text(
        yaml.safe_dump({**logs, "control": {"bind": "127.0.0.1", "port": daemon.control_port}, "http": {"bind": "127.0.0.1", "port": 0}})
    )
    done = picamd("check-config", "--config", str(path))
    assert done.returncode == 2
    assert f"control.bind/control.port: 127.0.0.1:{daemon.control_port}: cannot listen: Address already in use" in done.stderr
    path.write_text(yaml.safe_dump({**logs, "control": {"bind": "127.0.0.1", "port": 0}, "http": {"bind": "127.0.0.1", "port": 0}}))
    assert picamd("check-config", "--config", str(path)).returncode == 0


@pytest.mark.parametrize("taken", ["control", "http"])
def test_a_server_that_cannot_listen_at_start_exits_non_zero_saying_why(daemon: Daemon, tmp_path: Path, taken: str) -> None:
    # A port that is taken (here by the running daemon): the process ends instead of running on, unreachable.
    busy = daemon.control_port if taken == "control" else daemon.http_port
    second = Daemon(tmp_path, control_port=busy if taken == "control" else None, http_port=busy if taken == "http" else None)
    second.start(wait=False)
    assert second.proc is not None
    rc = second.proc.wait(timeout=60)
    second.stop()
    assert rc != 0
    what = "command port" if taken == "control" else "HTTP server"
    errors = [ln for ln in second.log().splitlines() if " ERROR " in ln or ln.startswith("ERROR")]
    assert len(errors) == 1 and "cannot start: " in errors[0] and what in errors[0] and f"127.0.0.1:{busy}" in errors[0], errors
    assert "Address already in use" in errors[0]
    # The first daemon did not notice.
    assert ask(daemon, "status")[0].startswith("OK")


def test_save_edits_a_hand_written_file_in_place_and_rewrites_a_layout_it_cannot_edit(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "# top\ncamera:\n  width: 640   # my camera\n  # the height\n  height: 480\n"
        "control:\n  allow:\n  - 127.0.0.0/8\n  - 10.0.0.0/8\n  port: 9999\n"
    )
    cfg = Config.load(path)
    for key, value in [("camera.height", 600), ("control.allow", ["127.0.0.0/8"]), ("control.token", "a:b#c"), ("night.gain", 4)]:
        cfg.set(key, value)
    cfg.set("control.port", 7000, persist=False)  # like --control-port
    assert cfg.save() == (path, ["camera.height", "control.allow", "control.token", "night.gain"])
    assert path.read_text() == (
        "# top\ncamera:\n  width: 640   # my camera\n  # the height\n  height: 600\n"
        "control:\n  allow: [127.0.0.0/8]\n  port: 9999\n  token: 'a:b#c'\n\nnight:\n  gain: 4.0\n"
    )
    # A section written inline is beyond the line editor: the file is written anew, complete and documented, same values.
    path.write_text("night: {gain: 4}\n")
    cfg = Config.load(path)
    cfg.set("night.dark_threshold", 30)
    cfg.save()
    again = Config.load(path)
    assert (again.get("night.gain"), again.get("night.dark_threshold")) == (4.0, 30.0)
    assert KEYS["night.gain"].doc in path.read_text()
