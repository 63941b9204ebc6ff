"""Command line: run the daemon, list cameras, send a command like netcat, print the config table.

    picamd [run] --config config.yaml [--source auto|synthetic|picamera2|opencv|DEVICE|URL|FILE]
    picamd cameras
    picamd ctl [--host H] [--port P] COMMAND...
    picamd config-table
    picamd check-config --config config.yaml
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading

from . import __version__
from .config import Config, ConfigError, markdown_table


def _setup_logging(level: str) -> None:
    # Under systemd, journald adds its own timestamps; a terminal gets them from us.
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s" if under_journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.WARNING, format=fmt, stream=sys.stderr)
    logging.getLogger("picamd").setLevel(level)


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        config = Config.load(args.config)
        overrides = {
            "control.port": args.control_port,
            "mjpeg.port": args.http_port,
            "control.bind": args.bind,
            "mjpeg.bind": args.bind,
            "logging.level": args.log_level,
        }
        for key, value in overrides.items():
            if value is not None:
                config.set(key, value)
    except ConfigError as exc:
        print(f"picamd: config refused: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config.get("logging.level"))
    from .app import App  # imported late so `picamd config-table` works without OpenCV

    try:
        app = App(config, source_override=args.source)
    except (ConfigError, ValueError) as exc:
        logging.getLogger("picamd").error("cannot start: %s", exc)
        return 2
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        logging.getLogger("picamd").info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        app.start()
    except OSError as exc:
        logging.getLogger("picamd").error("cannot start: %s", exc)
        app.stop()
        return 1
    stop.wait()
    app.stop()
    return 0


def _cmd_cameras(args: argparse.Namespace) -> int:
    from .sources.select import list_cameras

    print(json.dumps(list_cameras(), indent=2, default=str))
    return 0


def _cmd_ctl(args: argparse.Namespace) -> int:
    """Send one command and print the reply, as `echo CMD | nc HOST PORT` would."""
    line = " ".join(args.command)
    try:
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as sock:
            if args.token:
                sock.sendall(f"token {args.token}\n".encode())
            sock.sendall(line.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
    except OSError as exc:
        print(f"picamd ctl: cannot talk to {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    text = b"".join(chunks).decode(errors="replace")
    if args.token:  # drop the token's own reply
        text = text.split("\n\n", 1)[-1]
    sys.stdout.write(text)
    return 0 if text.startswith("OK") else 1


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        Config.load(args.config)
    except ConfigError as exc:
        print(f"config refused: {exc}", file=sys.stderr)
        return 2
    print(f"{args.config}: ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="picamd", description="Camera daemon for the Raspberry Pi")
    parser.add_argument("--version", action="version", version=f"picamd {__version__}")
    sub = parser.add_subparsers(dest="cmd")

    def add_run_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default="config.yaml", help="config file (default: config.yaml)")
        p.add_argument("--source", help="auto, synthetic, picamera2, opencv, or a device path, URL or video file (opencv)")
        p.add_argument("--control-port", type=int, help="command port (overrides control.port)")
        p.add_argument("--http-port", type=int, help="HTTP/MJPEG port (overrides mjpeg.port)")
        p.add_argument("--bind", help="address both servers listen on (overrides control.bind and mjpeg.bind)")
        p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    add_run_args(parser)
    add_run_args(sub.add_parser("run", help="run the daemon (the default)"))
    sub.add_parser("cameras", help="list the cameras that can be found")
    ctl = sub.add_parser("ctl", help="send a command to a running daemon")
    ctl.add_argument("--host", default="127.0.0.1")
    ctl.add_argument("--port", type=int, default=9999)
    ctl.add_argument("--token", default=os.environ.get("PICAMD_TOKEN"))
    ctl.add_argument("--timeout", type=float, default=30.0)
    ctl.add_argument("command", nargs="+")
    sub.add_parser("config-table", help="print the README's config table from the schema")
    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("--config", default="config.yaml")

    args = parser.parse_args(argv)
    if args.cmd == "cameras":
        return _cmd_cameras(args)
    if args.cmd == "ctl":
        return _cmd_ctl(args)
    if args.cmd == "config-table":
        print(markdown_table())
        return 0
    if args.cmd == "check-config":
        return _cmd_check(args)
    return _cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
