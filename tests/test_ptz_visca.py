"""VISCA: the bytes of messages and replies, the client against the camera simulator on both transports, and the
simulator itself against an independent client (the PyPI visca-over-ip library)."""

from __future__ import annotations

import socket

import pytest
from visca_sim import ViscaCamera

from daemon.ptz import visca
from daemon.ptz.client import CameraRefused, LinkError, LinkSettings, NoReply, ViscaClient
from daemon.ptz.transport import TYPE_COMMAND, TYPE_INQUIRY, pack_ip, unpack_ip
from daemon.ptz.visca import ViscaFormatError, ViscaProtocolError, parse_reply, split_packets

MOVE_S = 0.25


# --- messages and replies, byte for byte -----------------------------------------------------------


def test_commands_are_the_documented_bytes():
    assert visca.recall_preset(5).packet(1) == bytes.fromhex("81 01 04 3F 02 05 FF")
    assert visca.recall_preset(254).packet(3) == bytes.fromhex("83 01 04 3F 02 FE FF")
    assert visca.set_preset(0).packet(1) == bytes.fromhex("81 01 04 3F 01 00 FF")
    assert visca.pan_tilt_absolute(-1234, 567, 10).packet(1) == bytes.fromhex("81 01 06 02 0A 0A 0F 0B 02 0E 00 02 03 07 FF")
    assert visca.home().packet(1) == bytes.fromhex("81 01 06 04 FF")
    assert visca.stop(3).packet(1) == bytes.fromhex("81 01 06 01 03 03 03 03 FF")
    assert visca.zoom_direct(0x1A2B).packet(2) == bytes.fromhex("82 01 04 47 01 0A 02 0B FF")
    assert visca.pan_tilt_inquiry().packet(1) == bytes.fromhex("81 09 06 12 FF")
    assert visca.zoom_inquiry().packet(1) == bytes.fromhex("81 09 04 47 FF")
    assert visca.if_clear().packet(1) == bytes.fromhex("81 01 00 01 FF")


@pytest.mark.parametrize(
    "build, text",
    [
        (lambda: visca.recall_preset(255), "preset must be 0..254, not 255"),
        (lambda: visca.set_preset(-1), "preset must be 0..254, not -1"),
        (lambda: visca.pan_tilt_absolute(40000, 0), "pan must be -32768..32767, not 40000"),
        (lambda: visca.pan_tilt_absolute(0, 0, 25), "speed must be 1..24, not 25"),
        (lambda: visca.zoom_direct(70000), "zoom must be 0..65535, not 70000"),
        (lambda: visca.home().packet(8), "camera address must be 1..7, not 8"),
    ],
)
def test_builders_refuse_what_no_message_can_carry(build, text):
    with pytest.raises(ViscaFormatError, match=text):
        build()


def test_replies_parse_by_kind_socket_and_error_name():
    ack = parse_reply(bytes.fromhex("90 41 FF"))
    assert (ack.kind, ack.address, ack.socket) == (visca.ACK, 1, 1)
    done = parse_reply(bytes.fromhex("90 52 FF"))
    assert (done.kind, done.socket, done.data) == (visca.COMPLETION, 2, b"")
    answer = parse_reply(bytes.fromhex("90 50 0F 0B 02 0E 00 02 03 07 FF"))
    assert answer.kind == visca.COMPLETION and visca.parse_pan_tilt(answer.data) == (-1234, 567)
    assert visca.parse_zoom(parse_reply(bytes.fromhex("90 50 01 0A 02 0B FF")).data) == 0x1A2B
    names = {code: parse_reply(bytes([0x90, 0x61, code, 0xFF])).error_name for code in (0x02, 0x03, 0x04, 0x05, 0x41)}
    assert names == {
        0x02: "syntax error",
        0x03: "command buffer full",
        0x04: "command cancelled",
        0x05: "no socket",
        0x41: "command not executable",
    }
    third = parse_reply(bytes.fromhex("B0 41 FF"))  # camera 3 answers from (3 + 8) << 4
    assert third.address == 3 and visca.reply_address_byte(3) == 0xB0


@pytest.mark.parametrize(
    "raw, why",
    [
        ("90 41", "too short or no FF"),
        ("12 34 56 FF", "no reply address"),
        ("90 41 FF 41 FF", "FF inside"),
        ("90 77 FF", "unknown status"),
        ("90 50" + " 01" * 20 + " FF", "at most 16"),
    ],
)
def test_garbage_is_refused_with_the_reason(raw, why):
    with pytest.raises(ViscaProtocolError, match=why):
        parse_reply(bytes.fromhex(raw))


def test_a_stream_is_split_at_terminators_keeping_a_partial_packet():
    buf = bytearray(bytes.fromhex("90 41 FF 90 51 FF 90 5"[:-2]))
    assert split_packets(buf) == [bytes.fromhex("90 41 FF"), bytes.fromhex("90 51 FF")] and buf == bytearray(b"\x90")
    junk = bytearray(range(1, 20))
    with pytest.raises(ViscaProtocolError, match="without a VISCA terminator"):
        split_packets(junk)


def test_visca_over_ip_header():
    datagram = pack_ip(TYPE_COMMAND, 0x01020304, bytes.fromhex("81 01 06 04 FF"))
    assert datagram == bytes.fromhex("01 00 00 05 01 02 03 04 81 01 06 04 FF")
    assert unpack_ip(datagram) == (TYPE_COMMAND, 0x01020304, bytes.fromhex("81 01 06 04 FF"))
    assert unpack_ip(pack_ip(TYPE_INQUIRY, 7, b"\x81\x09\x04\x47\xff"))[0] == TYPE_INQUIRY
    with pytest.raises(ViscaProtocolError, match="header says 9 payload bytes"):
        unpack_ip(bytes.fromhex("01 11 00 09 00 00 00 01 90 41 FF"))


# --- the client against the simulator ---------------------------------------------------------------


@pytest.fixture(scope="module")
def camera():
    cam = ViscaCamera(move_time_s=MOVE_S).start()
    yield cam
    cam.stop()


@pytest.fixture(params=["visca-tcp", "visca-udp"])
def link(request, camera):
    camera.faults = type(camera.faults)()
    camera.move_time_s = MOVE_S
    port = camera.tcp_port if request.param == "visca-tcp" else camera.udp_port
    settings = {"s": LinkSettings(request.param, "127.0.0.1", port, 1, timeout_s=0.3, move_timeout_s=3.0, retries=2)}
    client = ViscaClient(lambda: settings["s"])
    client.settings = settings  # type: ignore[attr-defined]  # a test changes them like `set ptz.*` does
    yield client
    client.close()


def test_a_move_is_acknowledged_then_completed_after_the_camera_moved(link, camera):
    req = link.start(visca.recall_preset(3))
    assert req.acked and req.socket in (1, 2) and not req.done.is_set()  # the ACK came first; the camera is moving
    reply = link.complete(req)
    assert reply.kind == visca.COMPLETION and reply.socket == req.socket
    assert camera.view()[:2] == (3, False)
    assert visca.parse_pan_tilt(link.inquire(visca.pan_tilt_inquiry())) == (3000, -300)
    link.run(visca.pan_tilt_absolute(-1234, 567, 12))
    assert visca.parse_pan_tilt(link.inquire(visca.pan_tilt_inquiry())) == (-1234, 567)
    link.run(visca.zoom_direct(0x2000))
    assert visca.parse_zoom(link.inquire(visca.zoom_inquiry())) == 0x2000
    link.run(visca.set_preset(9))
    link.run(visca.home())
    link.run(visca.recall_preset(9))
    assert visca.parse_pan_tilt(link.inquire(visca.pan_tilt_inquiry())) == (-1234, 567)


def test_error_replies_are_named_with_the_command_and_the_camera(link, camera):
    camera.faults.preset_errors = {7: 0x41}
    with pytest.raises(
        CameraRefused,
        match=r"camera 127\.0\.0\.1:\d+ \(visca-\w+, address 1\) refused recall preset 7: "
        r"command not executable",
    ) as err:
        link.run(visca.recall_preset(7))
    assert err.value.code == 0x41
    camera.faults.error_after_ack = True  # acknowledged, then refused in place of the completion
    with pytest.raises(CameraRefused, match="refused recall preset 7: command not executable"):
        link.run(visca.recall_preset(7))
    camera.preset_max = 15
    try:
        with pytest.raises(CameraRefused, match="refused set preset 200: syntax error"):
            link.run(visca.set_preset(200))
    finally:
        camera.preset_max = 254
    assert link.health()["refused"] == 3 and link.health()["retries"] == 0  # refusals are not sent again


def test_a_full_buffer_is_sent_again(link, camera):
    camera.faults.buffer_full = 1
    link.run(visca.home())
    assert link.health()["retries"] == 1


def test_a_silent_camera_is_an_error_after_the_bounded_retries_then_works_again(link, camera):
    camera.faults.silent = True
    with pytest.raises(
        NoReply,
        match=r"no reply from camera 127\.0\.0\.1:\d+ \(visca-\w+, address 1\) to home within 0\.3 s "
        r"\(3 attempts\)",
    ):
        link.run(visca.home())
    camera.faults.silent = False
    link.run(visca.home())
    assert link.health()["connects"] == 2  # an unanswered request reconnects before the next


def test_a_completion_that_never_comes_is_an_error_naming_the_command(link, camera):
    camera.faults.no_completion = True
    req = link.start(visca.recall_preset(2))
    with pytest.raises(NoReply, match=r"no completion from camera .* for recall preset 2 within 0\.5 s \(acknowledged on socket \d\)"):
        link.complete(req, timeout=0.5)
    assert link.health()["pending"] == 0


def test_stop_during_a_move_cancels_it_on_its_socket(link, camera):
    camera.move_time_s = 2.0
    req = link.start(visca.recall_preset(4))
    link.run(visca.stop())  # a second request while the first holds its socket
    with pytest.raises(CameraRefused, match="refused recall preset 4: command cancelled"):
        link.complete(req)
    assert camera.view()[:2] == (None, False)


def test_garbage_is_a_clear_error_and_a_reconnect(link, camera):
    link.run(visca.home())  # connected (over IP: the sequence reset answered) before the garbage starts
    camera.faults.garbage = 10
    error = LinkError if link.settings["s"].protocol == "visca-tcp" else NoReply
    with pytest.raises(error, match="garbage from visca-|unreadable answer"):
        link.run(visca.home())
    camera.faults.garbage = 0
    link.run(visca.recall_preset(1))
    h = link.health()
    assert h["garbage"] >= 1 and h["connects"] >= 2 and "garbage" in h["last_error"]


def test_a_dropped_connection_fails_waiting_requests_at_once_and_the_next_reconnects(camera):
    s = LinkSettings("visca-tcp", "127.0.0.1", camera.tcp_port, 1, timeout_s=0.3, move_timeout_s=10.0, retries=2)
    client = ViscaClient(lambda: s)
    try:
        camera.faults = type(camera.faults)()
        camera.move_time_s = 2.0
        req = client.start(visca.recall_preset(5))
        camera.tcp.drop_all()
        # The reader sees the close: the waiting move fails with the reason, not with the move timeout's "no completion".
        with pytest.raises(LinkError, match="recall preset 5: visca-tcp 127.0.0.1:\\d+: the camera closed the connection"):
            client.complete(req)
        camera.move_time_s = MOVE_S
        camera.faults.drop_connection = 1  # the next command's connection closes: sent again on a new one
        client.run(visca.home())
        camera.faults.drop_connection = 5
        with pytest.raises(LinkError, match="closed the connection"):
            client.run(visca.home())
        camera.faults.drop_connection = 0
        client.run(visca.home())
        assert client.health()["link_failures"] >= 3
    finally:
        client.close()


def test_replies_with_a_wrong_sequence_number_are_not_taken(camera):
    s = LinkSettings("visca-udp", "127.0.0.1", camera.udp_port, 1, timeout_s=0.3, move_timeout_s=3.0, retries=1)
    client = ViscaClient(lambda: s)
    try:
        camera.faults = type(camera.faults)()
        client.run(visca.home())
        camera.faults.wrong_sequence = True
        with pytest.raises(NoReply, match="no reply from .* to recall preset 2 within 0.3 s \\(2 attempts"):
            client.run(visca.recall_preset(2))
        assert client.health()["unmatched"] >= 1
    finally:
        camera.faults.wrong_sequence = False
        client.close()


def test_a_lost_reply_is_asked_again_with_the_same_sequence_number_and_not_acted_on_twice(camera):
    s = LinkSettings("visca-udp", "127.0.0.1", camera.udp_port, 1, timeout_s=0.3, move_timeout_s=3.0, retries=2)
    client = ViscaClient(lambda: s)
    try:
        camera.faults = type(camera.faults)()
        client.run(visca.home())
        before, logged = len(camera.executed), len(camera.log)
        camera.move_time_s = 1.0  # the ACK is lost, and the completion comes after the first wait
        camera.faults.lose_replies = 1
        client.run(visca.recall_preset(6))
        assert [e for e in camera.executed[before:] if e.startswith("move")] == ["move 6"]
        assert [kind for kind, _ in camera.log[logged:]] == ["udp", "udp-resend"]
        assert client.health()["retries"] == 1
    finally:
        camera.move_time_s = MOVE_S
        client.close()


def test_a_changed_host_or_port_takes_effect_on_the_next_request(link, camera):
    link.run(visca.home())
    s = link.settings["s"]
    link.settings["s"] = LinkSettings(s.protocol, "127.0.0.1", _closed_port(s.protocol), 1, 0.2, 1.0, 0)
    with pytest.raises((LinkError, NoReply)):
        link.run(visca.home())
    link.settings["s"] = s
    link.run(visca.home())


def _closed_port(protocol: str) -> int:
    kind = socket.SOCK_STREAM if protocol == "visca-tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the simulator against an independent client ----------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def test_the_simulator_speaks_visca_over_ip_to_the_visca_over_ip_library():
    pytest.importorskip("visca_over_ip", reason="pip install visca-over-ip (the test extra)")
    from visca_over_ip import Camera
    from visca_over_ip.exceptions import ViscaException

    if not _port_free(52381):
        pytest.skip("UDP port 52381 is in use here: the visca-over-ip library always binds it")
    # The library binds the camera's port on every address for its inquiries, so the camera listens on 127.0.0.2 with
    # SO_REUSEADDR (loopback is all of 127/8 on Linux) and its answers reach the library on 127.0.0.1.
    cam = ViscaCamera(move_time_s=0.1).start(host="127.0.0.2", udp_port=52381, reuse_udp=True)
    lib = Camera("127.0.0.2", 52381)
    try:
        assert ("udp-control", b"\x01") in cam.log  # the library's sequence reset, answered 0x0201 01
        lib.recall_preset(4)
        assert cam.wait_executed("recall 4")
        assert lib.get_pantilt_position() == (4000, -400)
        assert lib.get_zoom_position() == 2000
        lib.pantilt(12, 10, -500, 250)
        assert cam.wait_executed("at (-500, 250, 2000)")
        assert lib.get_pantilt_position() == (-500, 250)
        lib.zoom_to(0.5)
        assert cam.wait_executed("at (-500, 250, 8192)")
        assert lib.get_zoom_position() == 8192
        lib.save_preset(7)
        assert cam.wait_executed("set 7")
        cam.preset_max = 15
        with pytest.raises(ViscaException) as err:
            lib.save_preset(200)
        assert err.value.status_code == 0x02 and err.value.description == "Syntax error"
    finally:
        lib.close_connection()
        cam.stop()
