"""The TCP command port, driven through real sockets, the real `nc` and tools/shortstream.py."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from daemon_proc import wait_for
from images import decode_jpeg, read_image

from daemon.commands import Command, Registry, Reply
from daemon.config import Config
from daemon.core.status import ComponentStatus
from daemon.net.control import ControlServer

ROOT = Path(__file__).resolve().parents[1]
SHORTSTREAM = ROOT / "tools" / "shortstream.py"

pytestmark = pytest.mark.timeout(60)

CUT_SHORT = 77  # `shortstream 77` fails after its first frame


# -- the registry the server is tested with --------------------------------------------------------


def _jpeg(i: int) -> bytes:
    frame = np.zeros((48, 64, 3), dtype=np.uint8)
    frame[:, :, 1] = (i * 40) % 256
    frame[10:20, 5 + 5 * i : 15 + 5 * i] = 255
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def _framed(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def build_registry(config: Config, state: dict) -> Registry:
    reg = Registry(token=lambda: config.get("control.token"))
    reg.register(Command("ping", lambda args, s: Reply(True, "pong"), "Answer pong"))
    reg.register(
        Command(
            "info",
            lambda args, s: Reply(True, "info", body={"peer": s.peer, "counter": state["counter"], "authorized": s.authorized}),
            "A JSON body",
        )
    )

    def add(args, session):
        try:
            n = int(args[0])
        except ValueError:
            return Reply.error(f"{args[0][:20]!r} is not a whole number")
        state["counter"] += n
        return Reply(True, f"counter {state['counter']}")

    reg.register(Command("add", add, "Add N to the counter", usage="N", mutating=True, min_args=1, max_args=1))
    reg.register(
        Command(
            "echo",
            lambda args, s: Reply(True, "echo", body={"text": args[0] if args else ""}),
            "Echo the rest of the line",
            usage="TEXT",
            max_args=1,
            raw_tail=True,
        )
    )

    def boom(args, session):
        raise RuntimeError("deliberate failure")

    reg.register(Command("boom", boom, "Always raises"))

    def cyclic(args, session):
        body: dict = {}
        body["self"] = body  # no JSON for this
        return Reply(True, "cyclic", body=body)

    reg.register(Command("cyclic", cyclic, "A reply that cannot be encoded"))
    reg.register(
        Command(
            "blob",
            lambda args, s: Reply(True, "blob", text=("x" * 1023 + "\n") * int(args[0])),
            "KB kilobytes of text",
            usage="KB",
            min_args=1,
            max_args=1,
        )
    )

    def shortstream(args, session):
        try:
            n = int(args[0])
        except ValueError:
            return Reply.error("usage: shortstream N")
        if not 1 <= n <= 100:
            return Reply.error("N must be 1..100")

        def frames():
            for i in range(n):
                if n == CUT_SHORT and i == 1:
                    raise OSError("camera vanished")
                yield _framed(_jpeg(i))
            yield struct.pack(">I", 0)

        return Reply(True, f"streaming {n} frames", stream=frames())

    reg.register(Command("shortstream", shortstream, "N length-prefixed JPEG frames", usage="N", min_args=1, max_args=1))

    def broken(args, session):
        def frames():
            yield _framed(_jpeg(0))
            raise OSError("camera vanished")

        return Reply(True, "streaming", stream=frames())

    reg.register(Command("brokenstream", broken, "Fails after one frame"))

    def endless(args, session):
        def frames():
            try:
                i = 0
                while True:
                    yield _framed(_jpeg(i % 8))
                    i += 1
            finally:
                state["endless_closed"] = True

        return Reply(True, "streaming forever", stream=frames())

    reg.register(Command("endless", endless, "Frames until the client leaves"))
    return reg


@pytest.fixture
def app():
    config = Config({"control.bind": "127.0.0.1", "control.port": 0})
    state = {"counter": 0, "endless_closed": False}
    status = ComponentStatus("control")
    server = ControlServer(config.section("control"), build_registry(config, state), status, send_timeout_s=1.0)
    server.start()
    assert server.port
    yield SimpleNamespace(config=config, state=state, status=status, server=server, port=server.port)
    server.stop()


# -- a client ---------------------------------------------------------------------------------------


class Conn:
    def __init__(self, port: int, timeout: float = 10.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def line(self) -> str:
        raw = self.file.readline()
        assert raw.endswith(b"\n"), f"connection ended in a line: {raw!r}"
        return raw.decode().rstrip("\r\n")

    def reply(self) -> list[str]:
        """One non-stream reply: its lines up to the empty line that ends it."""
        lines = [self.line()]
        while (ln := self.line()) != "":
            lines.append(ln)
        return lines

    def command(self, text: str) -> list[str]:
        self.send(text + "\n")
        return self.reply()

    def exact(self, n: int) -> bytes:
        data = self.file.read(n)
        assert data is not None and len(data) == n, f"short read: {0 if not data else len(data)} of {n}"
        return data

    def at_eof(self) -> bool:
        """True when the server closes (reads past anything still buffered)."""
        try:
            return self.file.read() is not None
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def body_json(reply: list[str]) -> dict:
    return json.loads("\n".join(reply[1:]))


def read_frames(conn: Conn) -> list[bytes]:
    frames: list[bytes] = []
    while True:
        (n,) = struct.unpack(">I", conn.exact(4))
        if n == 0:
            return frames
        frames.append(conn.exact(n))


# -- line protocol ----------------------------------------------------------------------------------


def test_pipelined_commands_are_answered_in_order(app):
    c = Conn(app.port)
    c.send("ping\ninfo\r\necho  hello   world \r\nhelp ping\nnosuch\n")
    assert c.reply() == ["OK pong"]
    info = c.reply()
    assert info[0] == "OK info"
    assert body_json(info)["counter"] == 0
    assert body_json(info)["peer"].startswith("127.0.0.1:")
    echo = c.reply()
    assert body_json(echo) == {"text": "hello   world"}  # raw_tail keeps the inner spacing
    help_ping = c.reply()
    assert help_ping[0] == "OK ping" and "Answer pong" in help_ping[-1]
    assert c.reply()[0].startswith("ERR unknown command 'nosuch'")
    assert app.server.health()["commands_served"] == 5
    c.close()


def test_blank_lines_are_not_commands(app):
    c = Conn(app.port)
    c.send("\n\r\n   \nping\n")
    assert c.reply() == ["OK pong"]  # the first reply is ping's: nothing was answered for the blank lines
    assert app.server.health()["commands_served"] == 1
    c.close()


def _openbsd_nc() -> str:
    nc = shutil.which("nc")
    if nc is None:
        pytest.skip("netcat is not installed (apt install netcat-openbsd): the real-nc tests need it")
    out = subprocess.run([nc, "-h"], capture_output=True, text=True, timeout=10)
    if "OpenBSD netcat" not in out.stdout + out.stderr:
        pytest.skip("these tests use netcat-openbsd's -N; the installed nc is another variant")
    return nc


def test_real_nc_one_shot_with_and_without_final_newline(app):
    nc = _openbsd_nc()
    out = subprocess.run(f"echo help | {nc} -N 127.0.0.1 {app.port}", shell=True, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("OK") and lines[0].endswith("commands")
    assert any(ln.startswith("ping") for ln in lines) and any(ln.startswith("shortstream N") for ln in lines)
    out = subprocess.run(f"printf 'ping\\ninfo' | {nc} -N 127.0.0.1 {app.port}", shell=True, capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("OK pong\n\nOK info\n")
    assert json.loads(out.stdout.split("OK info\n", 1)[1])["counter"] == 0


def test_real_nc_interactive_session(app):
    nc = _openbsd_nc()
    proc = subprocess.Popen([nc, "127.0.0.1", str(app.port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"ping\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"OK pong\n"
        assert proc.stdout.readline() == b"\n"
        proc.stdin.write(b"add 3\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"OK counter 3\n"
        assert app.state["counter"] == 3
    finally:
        proc.kill()
        proc.wait(10)


def test_twenty_concurrent_clients_are_all_answered(app):
    n = 20
    connected = threading.Barrier(n + 1, timeout=30)
    go_on = threading.Barrier(n + 1, timeout=30)
    results: dict[int, list] = {}

    def client(i: int) -> None:
        c = Conn(app.port, timeout=20)
        try:
            first = c.command("ping")
            connected.wait()
            go_on.wait()
            results[i] = [first, c.command(f"echo client {i}"), c.command("info")]
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    connected.wait()
    assert app.server.health()["clients"] == n
    go_on.wait()
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(n))
    for i, (ping, echo, info) in results.items():
        assert ping == ["OK pong"]
        assert body_json(echo) == {"text": f"client {i}"}
        assert info[0] == "OK info"


def test_silent_and_non_reading_clients_do_not_block_others(app):
    silent = Conn(app.port)
    flooder = Conn(app.port, rcvbuf=4096)
    flooder.send("blob 2048\n" * 16)  # 32 MiB of replies it will never read
    other = Conn(app.port)
    assert other.command("stay")[0].startswith("OK")  # a program holding its connection
    for _ in range(3):
        assert other.command("ping") == ["OK pong"]
    # The server gives up on the flooder once a reply cannot be sent within its send timeout ...
    assert wait_for(lambda: app.server.health()["dropped_slow"] >= 1)
    assert wait_for(lambda: app.server.health()["clients"] == 2)
    # ... while the silent client keeps its connection and is served when it speaks.
    assert silent.command("ping") == ["OK pong"]
    assert other.command("ping") == ["OK pong"]
    for c in (silent, flooder, other):
        c.close()


# -- bad input --------------------------------------------------------------------------------------


def test_over_long_lines_are_refused_and_the_connection_stays_usable(app):
    app.config.set("control.max_line_bytes", 64)
    c = Conn(app.port)
    c.send("add " + "9" * 200 + "\nping\n")
    assert c.reply() == ["ERR line too long (max 64 bytes)"]
    assert c.reply() == ["OK pong"]
    # A long line still arriving is refused before its end, and the rest of it is dropped.
    c.send("add 1" + "y" * 100)
    assert c.reply() == ["ERR line too long (max 64 bytes)"]
    c.send("y" * 5000 + "\nping\n")
    assert c.reply() == ["OK pong"]
    # Exactly the limit is fine, with \n or \r\n.
    assert body_json(c.command("echo " + "z" * 59)) == {"text": "z" * 59}
    c.send("echo " + "w" * 59 + "\r\n")
    assert body_json(c.reply()) == {"text": "w" * 59}
    assert app.state["counter"] == 0
    assert app.server.health()["lines_too_long"] == 2
    c.close()


def test_binary_junk_gets_err_and_the_connection_stays_up(app):
    c = Conn(app.port)
    c.send(b"\xff\xfe\xfd\x00junk\n")
    assert c.reply() == ["ERR command is not valid UTF-8 text"]
    c.send(b"add 5\x00\x07\n")
    assert c.reply() == ["ERR command contains control or binary characters"]
    c.send(b"\x1b[A\n")
    assert c.reply()[0].startswith("ERR ")
    c.send(b"add \xc3\x28\n")  # a broken UTF-8 sequence in a mutating command
    assert c.reply() == ["ERR command is not valid UTF-8 text"]
    assert c.command("ping") == ["OK pong"]
    assert app.state["counter"] == 0


def test_half_close_answers_a_final_line_without_newline(app):
    c = Conn(app.port)
    c.send("ping\ninfo")
    c.sock.shutdown(socket.SHUT_WR)
    assert c.reply() == ["OK pong"]
    assert c.reply()[0] == "OK info"
    assert c.file.read() == b""  # then the server closes
    c.close()
    # Connecting and half-closing at once is a clean close with no answer.
    d = Conn(app.port)
    d.sock.shutdown(socket.SHUT_WR)
    assert d.file.read() == b""
    d.close()


def test_a_handler_that_raises_answers_err_and_nothing_else_breaks(app):
    c = Conn(app.port)
    assert c.command("boom") == ["ERR boom failed: deliberate failure"]
    assert c.command("ping") == ["OK pong"]
    d = Conn(app.port)
    assert d.command("ping") == ["OK pong"]
    assert app.server.health()["listening"]
    c.close()
    d.close()


def test_a_reply_that_cannot_be_encoded_answers_err(app):
    c = Conn(app.port)
    assert c.command("cyclic") == ["ERR internal error: the reply could not be encoded"]
    assert app.status.errors == 1
    assert c.command("ping") == ["OK pong"]
    c.close()


def test_wrong_arguments_change_nothing(app):
    c = Conn(app.port)
    assert c.command("add") == ["ERR usage: add N"]
    assert c.command("add 1 2") == ["ERR usage: add N"]
    assert c.command("add seven")[0] == "ERR 'seven' is not a whole number"
    assert app.state["counter"] == 0
    c.close()


# -- token and allow-list ---------------------------------------------------------------------------


def test_token_authorises_one_connection_for_mutating_commands(app):
    app.config.set("control.token", "s3cret")
    c = Conn(app.port)
    refused = c.command("add 5")
    assert refused[0].startswith("ERR add changes state and needs 'token SECRET'")
    assert app.state["counter"] == 0
    assert c.command("token nope") == ["ERR wrong token"]
    assert c.command("add 5")[0].startswith("ERR ")
    assert app.state["counter"] == 0
    assert c.command("ping") == ["OK pong"]  # reading needs no token
    assert c.command("token s3cret") == ["OK authorised"]
    assert c.command("add 5") == ["OK counter 5"]
    assert app.state["counter"] == 5
    other = Conn(app.port)  # authorisation belongs to the connection
    assert other.command("add 1")[0].startswith("ERR ")
    assert app.state["counter"] == 5
    c.close()
    other.close()


def test_allow_list_applies_live(app):
    app.config.set("control.allow", ["10.0.0.0/8"])
    c = Conn(app.port)
    c.send("add 5\n")  # sent before reading: the refusal must still arrive intact
    assert c.line() == "ERR not allowed from 127.0.0.1"
    assert c.at_eof()
    c.close()
    assert app.state["counter"] == 0
    health = app.server.health()
    assert health["refused_not_allowed"] == 1 and health["refused"] == 1
    app.config.set("control.allow", ["127.0.0.0/8"])
    d = Conn(app.port)
    assert d.command("add 2") == ["OK counter 2"]
    d.close()


def test_max_clients_cap_applies_live(app):
    app.config.set("control.max_clients", 2)
    app.config.set("control.grace_s", 60)  # two new silent connections, both within their grace: no room to make
    a, b = Conn(app.port), Conn(app.port)
    assert wait_for(lambda: app.server.health()["clients"] == 2)
    c = Conn(app.port)
    c.send("ping\n")
    assert c.line() == "ERR too many connections"
    assert c.at_eof()
    c.close()
    assert app.server.health()["refused_too_many"] == 1 and app.server.health()["dropped_for_newcomer"] == 0
    a.close()
    assert wait_for(lambda: app.server.health()["clients"] == 1)
    d = Conn(app.port)
    assert d.command("ping") == ["OK pong"]
    b.close()
    d.close()


def test_a_full_port_drops_the_connection_idle_longest_for_a_newcomer(app):
    app.config.set("control.max_clients", 3)
    app.config.set("control.grace_s", 0.3)
    app.config.set("control.script_linger_s", 0)  # these send at once, like scripts: keep them anyway
    a, b, silent = Conn(app.port), Conn(app.port), Conn(app.port)
    assert a.command("ping") == ["OK pong"]
    assert b.command("ping") == ["OK pong"]
    a.send("\n\n  \n")  # blank lines after b's command: no activity, so a stays the one idle longest
    time.sleep(1.0)  # well past the silent one's grace (0.3 s), even when the server accepted it late on a loaded machine
    first = Conn(app.port)
    assert first.command("ping") == ["OK pong"]
    assert silent.line().startswith("ERR dropped: the command port is full") and silent.at_eof()  # never sent a command: first
    second = Conn(app.port)
    assert second.command("ping") == ["OK pong"]
    assert a.line().startswith("ERR dropped: the command port is full") and a.at_eof()
    assert b.command("ping") == ["OK pong"]
    health = app.server.health()
    assert health["dropped_for_newcomer"] == 2 and health["refused_too_many"] == 0 and health["clients"] == 3
    for c in (a, b, silent, first, second):
        c.close()


def test_idle_connections_are_closed(app):
    app.config.set("control.idle_timeout_s", 1)
    c = Conn(app.port, timeout=20)
    assert c.command("stay")[0].startswith("OK")
    assert c.command("ping") == ["OK pong"]
    assert c.file.read() == b""  # closed by the server, well before our own 20 s timeout
    assert app.server.health()["idle_closed"] == 1
    assert wait_for(lambda: app.server.health()["clients"] == 0)
    c.close()


def test_a_client_trickling_bytes_without_a_newline_is_closed_as_idle(app):
    app.config.set("control.idle_timeout_s", 1)
    c = Conn(app.port, timeout=0.2)
    closed = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not closed:
        try:
            c.sock.sendall(b"p")
            closed = c.sock.recv(100) == b""
        except TimeoutError:
            continue
        except OSError:  # reset: the server closed while we were still sending
            closed = True
    assert closed
    assert app.server.health()["idle_closed"] == 1
    c.close()


# -- streams ----------------------------------------------------------------------------------------


def test_stream_reply_then_the_next_command(app):
    c = Conn(app.port)
    c.send("shortstream 3\n")
    assert c.line() == "OK streaming 3 frames"
    frames = read_frames(c)
    assert len(frames) == 3
    for i, data in enumerate(frames):
        img = decode_jpeg(data)
        assert img.shape == (48, 64, 3)
        assert abs(int(img[30, 60, 1]) - (i * 40) % 256) < 8
    assert c.command("ping") == ["OK pong"]
    assert c.command("shortstream 0") == ["ERR N must be 1..100"]
    c.close()


def test_a_stream_that_fails_midway_closes_only_that_connection(app):
    c = Conn(app.port)
    c.send("brokenstream\n")
    assert c.line() == "OK streaming"
    (n,) = struct.unpack(">I", c.exact(4))
    assert c.exact(n).startswith(b"\xff\xd8")
    assert c.at_eof()
    c.close()
    assert app.server.health()["stream_errors"] == 1
    assert app.status.errors == 1 and "camera vanished" in app.status.last_error
    d = Conn(app.port)
    assert d.command("ping") == ["OK pong"]
    d.close()


def test_a_stream_is_closed_when_its_client_leaves(app):
    c = Conn(app.port)
    c.send("endless\n")
    assert c.line() == "OK streaming forever"
    (n,) = struct.unpack(">I", c.exact(4))
    c.exact(n)
    c.close()
    assert wait_for(lambda: app.state["endless_closed"])
    assert wait_for(lambda: app.server.health()["clients"] == 0)


# -- lifecycle --------------------------------------------------------------------------------------


def test_threads_are_named_and_stop_closes_clients():
    config = Config({"control.bind": "127.0.0.1", "control.port": 0})
    server = ControlServer(config.section("control"), build_registry(config, {"counter": 0}), ComponentStatus("control"))
    server.start()
    port = server.port
    assert port is not None
    c = Conn(port)
    assert c.command("ping") == ["OK pong"]
    names = {t.name for t in threading.enumerate()}
    assert "picamd-control" in names
    assert any(n.startswith("picamd-control-") and n[len("picamd-control-") :].isdigit() for n in names)
    server.stop()
    assert c.file.read() == b""
    c.close()
    assert not any(t.name.startswith("picamd-control") for t in threading.enumerate())
    assert server.port is None and not server.health()["listening"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_port_in_use_fails_start_with_the_reason(app):
    # The daemon exits non-zero on it (systemd restarts it and the journal says why) instead of running on, unreachable.
    config = Config({"control.bind": "127.0.0.1", "control.port": app.port})
    second = ControlServer(config.section("control"), build_registry(config, {"counter": 0}), ComponentStatus("control2"))
    with pytest.raises(OSError, match=f"^command port cannot listen on 127.0.0.1:{app.port}: Address already in use$"):
        second.start()
    assert second.port is None and not second.health()["listening"]
    second.stop()  # nothing to stop, and no error
    c = Conn(app.port)  # the first server is untouched
    assert c.command("ping") == ["OK pong"]
    c.close()


# -- tools/shortstream.py ---------------------------------------------------------------------------


def _run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SHORTSTREAM), *args], capture_output=True, text=True, timeout=60)


def test_shortstream_tool_saves_decodable_jpegs(app, tmp_path):
    app.config.set("control.token", "s3cret")
    out = tmp_path / "burst"
    done = _run_tool(f"127.0.0.1:{app.port}", "4", "--out", str(out), "--token", "s3cret")
    assert done.returncode == 0, done.stderr
    assert "4 frames" in done.stdout and "fps" in done.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["frame_0001.jpg", "frame_0002.jpg", "frame_0003.jpg", "frame_0004.jpg"]  # no temp files left
    for i, name in enumerate(names):
        img = read_image(out / name)
        assert img is not None and img.shape == (48, 64, 3)
        assert abs(int(img[30, 60, 1]) - (i * 40) % 256) < 8


def test_shortstream_tool_reports_errors(app, tmp_path):
    out = tmp_path / "none"
    refused = _run_tool(f"127.0.0.1:{app.port}", "500", "--out", str(out))
    assert refused.returncode == 1
    assert "ERR N must be 1..100" in refused.stderr
    assert not out.exists()

    app.config.set("control.token", "s3cret")
    wrong = _run_tool(f"127.0.0.1:{app.port}", "2", "--out", str(out), "--token", "nope")
    assert wrong.returncode == 1 and "token refused: ERR wrong token" in wrong.stderr

    usage = _run_tool(f"127.0.0.1:{app.port}", "0")
    assert usage.returncode == 2 and "N must be at least 1" in usage.stderr

    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    nobody = _run_tool(f"127.0.0.1:{free_port}", "2", "--out", str(out), "--timeout", "5")
    assert nobody.returncode == 1 and "cannot connect to 127.0.0.1" in nobody.stderr
    assert not out.exists()


def test_shortstream_tool_against_a_stream_cut_short(app, tmp_path):
    out = tmp_path / "cut"
    done = _run_tool(f"127.0.0.1:{app.port}", str(CUT_SHORT), "--out", str(out))
    assert done.returncode == 1
    assert "the connection ended in the middle of the length of frame 2" in done.stderr
    assert [p.name for p in out.iterdir()] == ["frame_0001.jpg"]  # what arrived is kept


def _fake_stream_server(payload: bytes):
    """A one-shot server that answers any first line with `payload` and then closes; returns (port, thread)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(30)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(30)
                conn.makefile("rb").readline()
                conn.sendall(payload)
                if payload:
                    conn.shutdown(socket.SHUT_WR)
                    conn.recv(1)  # until the client hangs up
                else:
                    conn.recv(1)  # stay silent until the client gives up
        except OSError:
            pass
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"OK streaming\n" + _framed(b"definitely not a jpeg"), "frame 1 is not a JPEG"),
        (b"OK streaming\n" + struct.pack(">I", 0xFFFFFFF0), "frame 1 claims 4294967280 bytes: the stream is out of step"),
        (
            b"OK streaming\n" + struct.pack(">I", 1000) + b"\xff\xd8" + b"x" * 10,
            "the connection ended in the middle of frame 1 (12 of 1000 bytes)",
        ),
        (b"", "the server sent nothing for 1 s (after 0 frames)"),
    ],
)
def test_shortstream_tool_refuses_a_broken_stream(tmp_path, payload, message):
    port, thread = _fake_stream_server(payload)
    done = _run_tool(f"127.0.0.1:{port}", "2", "--out", str(tmp_path / "out"), "--timeout", "1")
    thread.join(30)
    assert done.returncode == 1
    assert message in done.stderr
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())  # nothing half-written left behind


def test_shortstream_tool_address_forms():
    spec = importlib.util.spec_from_file_location("shortstream_tool", SHORTSTREAM)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.parse_address("raspberrypi") == ("raspberrypi", 9999)
    assert tool.parse_address("raspberrypi:1234") == ("raspberrypi", 1234)
    assert tool.parse_address("[fe80::1]:9000") == ("fe80::1", 9000)
    assert tool.parse_address("[::1]") == ("::1", 9999)
    assert tool.parse_address("::1") == ("::1", 9999)
    for bad in ("host:port", "host:0", "host:70000", ":9999"):
        with pytest.raises(tool.ShortStreamError):
            tool.parse_address(bad)


def test_real_nc_without_half_close_returns_once_a_script_is_answered(app):
    """`echo CMD | nc host port` (no -N) never closes its side; the port closes it once answered."""
    nc = _openbsd_nc()
    app.config.set("control.idle_timeout_s", 120)
    t0 = time.monotonic()
    out = subprocess.run(f"printf 'ping\\nadd 2\\n' | {nc} 127.0.0.1 {app.port}", shell=True, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "OK pong\n\nOK counter 2\n\n"
    assert time.monotonic() - t0 < 60  # closed by the linger, not by the 120 s idle timeout


def test_a_person_typing_keeps_the_connection_past_the_script_linger(app):
    app.config.set("control.script_linger_s", 0.2)
    c = Conn(app.port)
    try:
        time.sleep(0.6)  # a person reads the prompt before typing
        assert c.command("ping") == ["OK pong"]
        time.sleep(0.8)  # well past the linger: an interactive session stays open
        assert c.command("add 1") == ["OK counter 1"]
    finally:
        c.close()


def test_a_script_that_sends_at_once_is_closed_after_the_linger_and_zero_turns_it_off(app):
    app.config.set("control.script_linger_s", 0.2)
    c = Conn(app.port)
    c.send("ping\n")
    assert c.reply() == ["OK pong"]
    assert c.at_eof()
    c.close()
    c = Conn(app.port)  # a program that holds its connection says so
    try:
        assert c.command("stay")[0].startswith("OK")
        time.sleep(0.5)
        assert c.command("ping") == ["OK pong"]
    finally:
        c.close()
    app.config.set("control.script_linger_s", 0)
    c = Conn(app.port)
    try:
        assert c.command("ping") == ["OK pong"]
        time.sleep(0.5)
        assert c.command("ping") == ["OK pong"]
    finally:
        c.close()
