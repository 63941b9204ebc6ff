"""End to end: the daemon as a subprocess drives the VISCA simulator, takes each preset's picture from an HTTP snapshot
server (a different real photo per preset, behind basic auth), counts people, writes the report and mails the zip to a
real SMTP server; all on loopback, driven through the command port like nc does."""

from __future__ import annotations

import csv
import email
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from daemon_proc import Daemon, free_port, replies, reply_json, wait_for
from ptz_scene import SnapshotServer
from smtp_mailbox import Mailbox
from visca_sim import ViscaCamera

TOKEN = "e2e-token-4711"
PRESETS = [{"number": 1, "name": "Entrance"}, {"number": 2, "name": "Coffee bar"}, {"number": 3, "name": "Studio"}]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    camera = ViscaCamera(move_time_s=0.3).start()
    snap = SnapshotServer(camera, user="admin", password="cam-pw-99")
    box = Mailbox()
    smtp = Controller(box, hostname="127.0.0.1", port=free_port())
    smtp.start()
    daemon = Daemon(
        tmp_path_factory.mktemp("ptz"),
        overrides={
            "control.token": TOKEN,
            "ptz.enabled": True,
            "ptz.host": "127.0.0.1",
            "ptz.port": camera.tcp_port,
            "ptz.timeout_s": 0.5,
            "ptz.move_timeout_s": 10.0,
            "ptz.presets": PRESETS,
            "ptz.snapshot_url": snap.url("admin:cam-pw-99"),
            "ptz.settle_s": 3.0,
            "ptz.report.email": True,
            "notify.email.smtp_host": "127.0.0.1",
            "notify.email.smtp_port": smtp.port,
            "notify.email.security": "none",
            "notify.email.recipients": ["site@example.com"],
            "notify.backoff_s": 0.1,
        },
        env={"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"},
    ).start()
    yield camera, snap, box, daemon
    daemon.stop()
    smtp.stop()
    snap.close()
    camera.stop()


def first(out: str) -> str:
    return replies(out)[0].splitlines()[0]


def finished(daemon: Daemon, run_id: str) -> dict:
    def status() -> dict | None:
        reply = replies(daemon.cmd("sweep status"))[0]
        body = reply_json(reply)
        return body if body and body["run"] == run_id and body["status"] != "running" else None

    body = wait_for(status, timeout=40, interval=0.1)
    assert body, f"sweep {run_id} did not finish:\n{daemon.log()}"
    return body


def start_sweep(daemon: Daemon, selection: str = "") -> str:
    out = daemon.cmd(f"token {TOKEN}", f"sweep {selection}".strip())
    head = replies(out)[1].splitlines()[0]
    assert head.startswith("OK sweep run_"), out
    return head.split()[2]


def test_reading_is_open_and_moving_needs_the_token(world):
    camera, _, _, daemon = world
    camera.faults = type(camera.faults)()
    assert first(daemon.cmd("goto 1")) == "ERR goto changes state and needs 'token SECRET' first on this connection"
    assert first(daemon.cmd("sweep")).startswith("ERR sweep changes state and needs")
    reply = replies(daemon.cmd("ptz"))[0]
    head = reply.splitlines()[0]
    assert head.startswith("OK PTZ idle at pan ") and f"camera 127.0.0.1:{camera.tcp_port} (visca-tcp, address 1)" in head
    link = reply_json(reply)["link"]  # read after the position inquiry, so it counts the link that inquiry used
    assert link["connected"] is True and link["requests"] >= 2, link
    presets = reply_json(replies(daemon.cmd("presets"))[0])
    assert [p["name"] for p in presets] == ["Entrance", "Coffee bar", "Studio"]
    described = replies(daemon.cmd("help presets"))[0].splitlines()[2]
    assert all(key in described for key in ("number", "name", "settle_s", "zone", "regions", "masks")), described
    out = replies(
        daemon.cmd(f"token {TOKEN}", "goto 2", "pan_tilt 100 -50 10", "zoom 4000", "preset set 300", "preset set 12", "home", "ptz stop")
    )
    heads = [r.splitlines()[0] for r in out]
    assert heads[1].startswith("OK at preset 2 after ")
    assert heads[2].startswith("OK moved in ") and heads[2].endswith("pan 100 tilt -50 zoom 1000")
    assert heads[3].endswith("pan 100 tilt -50 zoom 4000")
    assert heads[4] == "ERR preset must be 0..254, not 300"
    assert heads[5] == "OK preset 12 stored" and camera.presets[12] == (100, -50, 4000)
    assert heads[6].startswith("OK home after ") and heads[7] == "OK stopped"
    dump = daemon.cmd("dump_config")
    assert "cam-pw-99" not in dump and "admin:***@127.0.0.1" in dump


def _openbsd_nc() -> str | None:
    nc = shutil.which("nc")
    if nc is None:
        return None
    out = subprocess.run([nc, "-h"], capture_output=True, text=True, timeout=10)
    return nc if "OpenBSD netcat" in out.stdout + out.stderr else None


def test_a_sweep_from_nc_writes_the_report_and_mails_the_zip(world):
    camera, snap, box, daemon = world
    camera.faults = type(camera.faults)()
    mails = len(box.messages)
    nc = _openbsd_nc()
    if nc is not None:  # the real netcat, as a person would type it
        out = subprocess.run(
            f"printf 'token {TOKEN}\\nsweep\\n' | {nc} -N 127.0.0.1 {daemon.control_port}",
            shell=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    else:
        out = daemon.cmd(f"token {TOKEN}", "sweep")
    head = replies(out)[1].splitlines()[0]
    assert head.startswith("OK sweep run_") and head.endswith("started: 3 preset(s)"), out
    run_id = head.split()[2]
    body = finished(daemon, run_id)
    assert body["status"] == "done" and [r["people"] for r in body["rows"]] == [1, 0, 1]
    folder = Path(body["folder"])
    assert folder == daemon.workdir / "captures" / "sweeps" / run_id
    with open(folder / "results" / "count_results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["preset"], r["name"], r["people"], r["error"]) for r in rows] == [
        ("1", "Entrance", "1", ""),
        ("2", "Coffee bar", "0", ""),
        ("3", "Studio", "1", ""),
    ]
    annotated = sorted(p.name for p in (folder / "annotated_images").iterdir())
    assert annotated == ["p001_entrance.jpg", "p002_coffee_bar.jpg", "p003_studio.jpg"]
    zip_path = folder / f"ptz_capture_results_{run_id.removeprefix('run_')}.zip"
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.testzip() is None
        assert {
            f"{run_id}/annotated_images/p001_entrance.jpg",
            f"{run_id}/raw_images/p003_studio.jpg",
            f"{run_id}/results/count_results.csv",
            f"{run_id}/summary.json",
        } <= set(zf.namelist())
    assert snap.refused == 0  # every snapshot fetch logged in with the URL's user
    mail = email.message_from_bytes(box.wait_for(mails + 1)[mails].content)
    assert mail["To"] == "site@example.com" and run_id in " ".join(mail["Subject"].split())
    attachment = next(p for p in mail.walk() if p.get_filename() == zip_path.name)
    assert attachment.get_content_type() == "application/zip" and attachment.get_payload(decode=True) == zip_path.read_bytes()
    health = reply_json(replies(daemon.cmd("health"))[0])
    assert health["ptz"]["sweeps"] >= 1 and health["notify"]["channels"]["ptz-email"]["sent"] >= 1


def test_one_preset_erroring_gives_one_error_row_and_a_complete_report(world):
    camera, _, box, daemon = world
    camera.faults = type(camera.faults)()
    camera.faults.preset_errors = {2: 0x41}
    mails = len(box.messages)
    run_id = start_sweep(daemon)
    body = finished(daemon, run_id)
    camera.faults.preset_errors = {}
    assert body["status"] == "partial"
    folder = Path(body["folder"])
    with open(folder / "results" / "count_results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["people"] for r in rows] == ["1", "", "1"]
    assert rows[1]["error"].endswith("refused recall preset 2: command not executable") and not rows[0]["error"] and not rows[2]["error"]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "partial" and summary["ok"] == 2
    with zipfile.ZipFile(next(folder.glob("*.zip"))) as zf:
        assert sorted(n.rsplit("/", 1)[1] for n in zf.namelist() if "/raw_images/" in n) == ["p001_entrance.jpg", "p003_studio.jpg"]
    box.wait_for(mails + 1)


def test_sweep_cancel_leaves_a_consistent_partial_report(world):
    camera, _, _, daemon = world
    camera.faults = type(camera.faults)()
    camera.move_time_s = 1.5
    try:
        run_id = start_sweep(daemon, "1,3,2")
        busy = replies(daemon.cmd(f"token {TOKEN}", "sweep 1"))[1].splitlines()[0]
        assert busy == f"ERR busy: sweep {run_id} running"
        assert replies(daemon.cmd(f"token {TOKEN}", "goto 1"))[1].splitlines()[0] == f"ERR busy: sweep {run_id} running"
        assert wait_for(lambda: reply_json(replies(daemon.cmd("sweep status"))[0])["presets_done"] >= 1, timeout=20)
        cancel = replies(daemon.cmd(f"token {TOKEN}", "sweep cancel"))[1].splitlines()[0]
        assert cancel == f"OK sweep {run_id} cancelling (the report keeps what was done)"
        body = finished(daemon, run_id)
    finally:
        camera.move_time_s = 0.3
    assert body["status"] == "cancelled" and body["presets_done"] == 1
    head = first(daemon.cmd("sweep status"))
    assert head == f"OK sweep {run_id} cancelled: 1 of 3 presets done, 1 people", head
    folder = Path(body["folder"])
    with open(folder / "results" / "count_results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["preset"] for r in rows] == ["1", "3", "2"] and rows[0]["people"] == "1" and rows[0]["error"] == ""
    assert all(r["error"] and r["people"] == "" for r in rows[1:])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "cancelled" and summary["ok"] == 1 and summary["cancelled_by"].startswith("127.0.0.1:")
    with zipfile.ZipFile(next(folder.glob("*.zip"))) as zf:
        assert zf.testzip() is None and f"{run_id}/raw_images/p001_entrance.jpg" in zf.namelist()
    assert replies(daemon.cmd(f"token {TOKEN}", "sweep cancel"))[1].splitlines()[0] == "ERR no sweep is running"


def test_each_preset_watches_its_own_motion_regions_from_the_command_port(world):
    camera, _, _, daemon = world
    camera.faults = type(camera.faults)()
    own = [
        {"number": 1, "name": "Entrance", "regions": [{"name": "door1", "rect": [0.1, 0.1, 0.3, 0.3]}]},
        {"number": 2, "name": "Coffee bar", "regions": []},
        {"number": 3, "name": "Studio"},
    ]

    def watched() -> tuple[str, list[str]]:
        body = reply_json(replies(daemon.cmd("regions"))[0])
        return body["from"], [r["name"] for r in body["active"]]

    def becomes(expected: tuple[str, list[str]]) -> None:
        assert wait_for(lambda: watched() == expected, timeout=10), (watched(), daemon.log()[-3000:])

    try:
        out = replies(
            daemon.cmd(
                f"token {TOKEN}",
                "set motion.regions [{name: base, rect: [0, 0, 0.5, 0.5]}]",
                "set ptz.presets [{number: 1, regions: [{name: bad, rect: [0.5, 0.5, 0.8, 0.2]}]}]",
                f"set ptz.presets {json.dumps(own)}",
                "goto 1",
            )
        )
        heads = [r.splitlines()[0] for r in out]
        assert heads[1].startswith("OK motion.regions=")
        assert heads[2].startswith("ERR ptz.presets: ") and "preset 1: region 'bad': rect [0.5, 0.5, 0.8, 0.2] reaches outside" in heads[2]
        assert heads[3].startswith("OK ptz.presets=") and heads[4].startswith("OK at preset 1 after ")
        becomes(("preset 1", ["door1"]))
        head = replies(daemon.cmd("regions"))[0].splitlines()[0]
        assert head == "OK 1 region active (the PTZ camera's preset 1 has its own; motion.regions apply elsewhere)"
        health = reply_json(replies(daemon.cmd("health"))[0])
        assert health["motion"]["watching"] == {"from": "preset 1", "preset": 1, "preset_name": "Entrance"}
        assert health["ptz"]["view"] == {"preset": 1, "name": "Entrance"}
        # An edit of motion.regions while a preset's own are measured says so; it applies once the camera leaves.
        added = replies(daemon.cmd(f"token {TOKEN}", "region add extra 0.6 0.6 0.2 0.2"))[1].splitlines()[0]
        assert added.startswith("OK region extra added")
        assert added.endswith("the camera is at preset 1, whose own regions are measured until it moves")
        # Changing the preset's regions while the camera is there takes effect at once.
        own[0]["regions"] = [{"name": "door1b", "rect": [0.2, 0.2, 0.3, 0.3]}]
        assert replies(daemon.cmd(f"token {TOKEN}", f"set ptz.presets {json.dumps(own)}"))[1].startswith("OK ptz.presets=")
        becomes(("preset 1", ["door1b"]))
        assert replies(daemon.cmd(f"token {TOKEN}", "goto 2"))[1].startswith("OK at preset 2 after ")
        becomes(("preset 2", []))
        # door1b is out of the picture: still listed, UNKNOWN, and says why.
        assert first(daemon.cmd("motion door1b")) == "OK door1b UNKNOWN (not in the picture since the camera left preset 1)"
        assert replies(daemon.cmd(f"token {TOKEN}", "goto 3"))[1].startswith("OK at preset 3 after ")
        becomes(("motion.regions", ["base", "extra"]))
        assert replies(daemon.cmd(f"token {TOKEN}", "goto 1", "home"))[2].startswith("OK home after ")
        becomes(("motion.regions", ["base", "extra"]))
        assert "motion: regions now door1b (from preset 1)" in daemon.log()
    finally:
        daemon.cmd(f"token {TOKEN}", f"set ptz.presets {json.dumps(PRESETS)}", "set motion.regions []")


def test_a_report_by_mail_without_an_smtp_server_is_named_at_start_and_in_health(tmp_path):
    daemon = Daemon(tmp_path, overrides={"control.token": TOKEN, "ptz.report.email": True}).start()
    try:
        warned = [ln for ln in daemon.log_path.read_text().splitlines() if "ptz.report.email is true" in ln]
        assert len(warned) == 1 and " WARNING " in warned[0] and "notify.email.smtp_host is empty" in warned[0], warned
        channel = reply_json(replies(daemon.cmd("health"))[0])["notify"]["channels"]["ptz-email"]
        assert channel["enabled"] is False and "notify.email.smtp_host is empty" in channel["problem"]
        assert replies(daemon.cmd(f"token {TOKEN}", "set notify.email.smtp_host 127.0.0.1"))[1].startswith("OK ")
        channel = reply_json(replies(daemon.cmd("health"))[0])["notify"]["channels"]["ptz-email"]
        assert channel["enabled"] is True and channel["problem"] is None
    finally:
        daemon.stop()
