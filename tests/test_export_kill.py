"""kill -9 in the middle of `save png npy`, then a restart: no partial capture under a final name, no temp file.

A capture's files are renamed into place only once all are written, the sidecar last; a kill between two
renames leaves final names next to temp files of the same stem, which `list` ignores and the next start
removes with every other temp file (it holds the folder's lock, so no other writer is at work).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

from daemon_proc import Daemon, replies, reply_json

FORMATS = (".png", ".npy", ".json")
KILLS = 6  # at most this many kill and restart rounds; they stop once two kills caught files in flight


def on_disk(base: Path) -> tuple[list[Path], dict[str, set[str]]]:
    """(temp files, {final stem: its suffixes}) under the captures folder."""
    temps = [p for p in base.rglob(".*") if p.is_file() and ".tmp." in p.name]
    stems: dict[str, set[str]] = {}
    for p in base.glob("????-??-??/*"):
        if p.is_file() and not p.name.startswith("."):
            stems.setdefault(p.name.rpartition(".")[0], set()).add(p.suffix)
    return temps, stems


def temp_files(base: Path) -> list[str]:
    try:
        return [name for name in os.listdir(base / ".picamd-tmp") if ".tmp." in name]
    except FileNotFoundError:
        return []


def save_forever(port: int, stop: threading.Event) -> None:
    """Keep the daemon saving: pipelined `save png npy` lines until it dies or `stop` is set."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"stay\n")
            while not stop.is_set():
                sock.sendall(b"save png npy\n" * 4)
                sock.recv(65536)
    except OSError:
        pass  # the daemon was killed


def test_kill_during_saves_leaves_no_partial_capture(tmp_path):
    # 1280x960 frames: a png takes tens of milliseconds to encode and write, so a kill lands in the middle
    d = Daemon(tmp_path, overrides={"control.token": "", "camera.width": 1280, "camera.height": 960, "ring.size": 20})
    base = tmp_path / "captures"
    caught = rounds = 0
    d.start()
    try:
        while rounds < KILLS and caught < 2:
            rounds += 1
            stop = threading.Event()
            saver = threading.Thread(target=save_forever, args=(d.control_port, stop), daemon=True)
            saver.start()
            saved_before = len(on_disk(base)[1])
            deadline = time.monotonic() + 10
            while len(on_disk(base)[1]) < saved_before + 2 and time.monotonic() < deadline:
                time.sleep(0.02)  # saves are under way
            if rounds % 2:  # kill the moment a capture's temp files appear: in the middle of writing it
                while not temp_files(base) and time.monotonic() < deadline:
                    pass
            else:  # or at some moment of a save: encoding, writing or renaming
                time.sleep(0.011 * rounds)
            assert d.proc is not None
            os.kill(d.proc.pid, signal.SIGKILL)
            d.proc.wait(10)
            stop.set()
            saver.join(10)
            temps, stems = on_disk(base)
            partial = [s for s, suffixes in stems.items() if suffixes != set(FORMATS)]
            if temps or partial:
                caught += 1
            assert not [s for s, suffixes in stems.items() if ".json" in suffixes and suffixes != set(FORMATS)], (
                "a sidecar before all its images"
            )
            d.start()  # the next daemon cleans at start, holding the folder's lock
            temps, stems = on_disk(base)
            assert temps == [], temps
            assert all(suffixes == set(FORMATS) for suffixes in stems.values()), stems
            listed = reply_json(replies(d.cmd(f"list {time.strftime('%Y-%m-%d')}"))[0])
            names = {item["name"] for item in listed}
            assert names == {stem + s for stem in stems for s in FORMATS}
            assert reply_json(replies(d.cmd("health"))[0])["export"]["folder_lock"] == "held"
        assert caught >= 1, f"no kill of {rounds} landed while files were in flight"
    finally:
        d.stop()
