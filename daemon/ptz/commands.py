"""The PTZ commands: `ptz`, `presets`, `goto`, `preset set`, `home`, `ptz stop`, `pan_tilt`, `zoom`, `sweep ...`.

Reading (`ptz`, `presets`, `sweep status`) is open; everything that moves
the camera, stores a preset or starts or cancels a sweep needs the token when
one is set. A manual move answers once the camera reports it done; `sweep`
answers its run id at once and works in the background (`sweep status`
follows it). While a sweep runs, manual moves are refused with the sweep's
id; `ptz stop` always works, and also cancels a running sweep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daemon.commands import Command, Registry, Reply, Session

from . import visca
from .client import PtzError
from .component import PtzOff
from .presets import parse_selection
from .sweep import Busy

if TYPE_CHECKING:
    from .component import Ptz


def _int(text: str, what: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{what} must be a whole number, not {text[:20]!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{what} must be {lo}..{hi}, not {value}")
    return value


class PtzCommands:
    def __init__(self, ptz: Ptz) -> None:
        self._ptz = ptz

    def register(self, registry: Registry) -> None:
        r = registry.register
        r(Command("ptz", self._cmd_ptz, "PTZ state: link, position (asked from the camera), sweep, last error (JSON)"))
        r(Command("ptz", self._cmd_stop, "Stop the camera now (and cancel a running sweep)", mutating=True, sub="stop"))
        r(Command("presets", self._cmd_presets, "The configured presets: number, name, settle_s, zone, regions, masks"))
        r(
            Command(
                "goto",
                self._cmd_goto,
                "Move to a preset and wait until the camera is there",
                usage="N",
                mutating=True,
                min_args=1,
                max_args=1,
            )
        )
        r(
            Command(
                "preset",
                self._cmd_preset_set,
                "Store the camera's current position as preset N (0..254; some cameras take fewer)",
                usage="N",
                mutating=True,
                min_args=1,
                max_args=1,
                sub="set",
            )
        )
        r(Command("home", self._cmd_home, "Move to the home position", mutating=True))
        r(
            Command(
                "pan_tilt",
                self._cmd_pan_tilt,
                f"Move to an absolute pan and tilt (-32768..32767, SPEED 1..{visca.SPEED_MAX}); answers the position the camera reports",
                usage="PAN TILT [SPEED]",
                mutating=True,
                min_args=2,
                max_args=3,
            )
        )
        r(
            Command(
                "zoom",
                self._cmd_zoom,
                f"Zoom to an absolute position (0..{visca.ZOOM_MAX}); answers the position the camera reports",
                usage="Z",
                mutating=True,
                min_args=1,
                max_args=1,
            )
        )
        r(
            Command(
                "sweep",
                self._cmd_sweep,
                "Sweep the presets (all, or the numbers given) in the background: move, settle, "
                "picture, count people, report; answers the run id",
                usage="[N,M,...]",
                mutating=True,
                max_args=None,
            )
        )
        r(Command("sweep", self._cmd_status, "Progress of the running (or last) sweep: each preset's state, counts, ETA", sub="status"))
        r(
            Command(
                "sweep",
                self._cmd_cancel,
                "Cancel the running sweep (its report is written with what was done)",
                mutating=True,
                sub="cancel",
            )
        )

    # -- reading
    def _cmd_ptz(self, args: list[str], session: Session) -> Reply:
        ptz = self._ptz
        body = ptz.health()
        position_error = None
        if body["enabled"] and ptz.busy_with() is None:
            try:
                ptz.read_position()
            except (PtzError, PtzOff, visca.ViscaProtocolError) as exc:
                position_error = str(exc)
            body = ptz.health()  # again after the inquiry, so that the link figures (connected, requests) count it
        body["position_error"] = position_error
        body["last_error"] = ptz.client.last_error
        if not body["enabled"]:
            head = "PTZ off"
        else:
            pos = body.get("position")
            where = f" at pan {pos['pan']} tilt {pos['tilt']} zoom {pos['zoom']}" if pos and position_error is None else ""
            head = f"PTZ {body['state']}{where} ({ptz.client.where()})"
            if position_error:
                head += f"; position unknown: {position_error}"
        return Reply(True, head, body=body)

    def _cmd_presets(self, args: list[str], session: Session) -> Reply:
        try:
            presets = self._ptz.presets()
        except ValueError as exc:
            return Reply.error(str(exc))
        return Reply(True, f"{len(presets)} preset(s)", body=[p.to_dict() for p in presets])

    def _cmd_status(self, args: list[str], session: Session) -> Reply:
        run = self._ptz.sweeper.current()
        if run is None:
            return Reply(True, "no sweep yet", body=None)
        p = run.progress()
        eta = f", ETA {p['eta_s']:g} s" if run.running and p["eta_s"] is not None else ""
        failed = sum(1 for r in p["rows"] if r["state"] == "failed")
        done = f"{p['presets_done']} of {p['presets']} presets done" + (f" ({failed} failed)" if failed else "")
        return Reply(True, f"sweep {run.id} {run.status}: {done}, {p['people']} people{eta}", body=p)

    # -- moving
    def _refused_while_sweeping(self) -> Reply | None:
        run = self._ptz.busy_with()
        return Reply.error(f"busy: sweep {run.id} running") if run is not None else None

    def _run(self, what: str, action: Any) -> Reply:
        busy = self._refused_while_sweeping()
        if busy is not None:
            return busy
        try:
            result = action()
        except (PtzOff, PtzError, visca.ViscaFormatError, visca.ViscaProtocolError) as exc:
            return Reply.error(str(exc))
        return result if isinstance(result, Reply) else Reply(True, what)

    def _cmd_goto(self, args: list[str], session: Session) -> Reply:
        try:
            n = _int(args[0], "preset", 0, visca.PRESET_MAX)
        except ValueError as exc:
            return Reply.error(str(exc))
        return self._run("", lambda: Reply(True, f"at preset {n} after {self._ptz.move(visca.recall_preset(n), preset=n):.1f} s"))

    def _cmd_preset_set(self, args: list[str], session: Session) -> Reply:
        try:
            n = _int(args[0], "preset", 0, visca.PRESET_MAX)
        except ValueError as exc:
            return Reply.error(str(exc))
        return self._run(f"preset {n} stored", lambda: self._ptz.command(visca.set_preset(n)))

    def _cmd_home(self, args: list[str], session: Session) -> Reply:
        return self._run("", lambda: Reply(True, f"home after {self._ptz.move(visca.home()):.1f} s"))

    def _cmd_stop(self, args: list[str], session: Session) -> Reply:
        run = self._ptz.sweeper.cancel(by=session.peer)
        try:
            self._ptz.command(visca.stop())
        except (PtzOff, PtzError) as exc:
            return Reply.error(str(exc))
        return Reply(True, "stopped" + (f"; sweep {run.id} cancelled" if run is not None else ""))

    def _cmd_pan_tilt(self, args: list[str], session: Session) -> Reply:
        try:
            pan = _int(args[0], "PAN", visca.POSITION_MIN, visca.POSITION_MAX)
            tilt = _int(args[1], "TILT", visca.POSITION_MIN, visca.POSITION_MAX)
            speed = _int(args[2], "SPEED", 1, visca.SPEED_MAX) if len(args) > 2 else visca.SPEED_MAX
        except ValueError as exc:
            return Reply.error(str(exc))

        def act() -> Reply:
            took = self._ptz.move(visca.pan_tilt_absolute(pan, tilt, speed))
            return self._with_position(f"moved in {took:.1f} s", lambda p: p["pan"] == pan and p["tilt"] == tilt)

        return self._run("", act)

    def _cmd_zoom(self, args: list[str], session: Session) -> Reply:
        try:
            z = _int(args[0], "Z", 0, visca.ZOOM_MAX)
        except ValueError as exc:
            return Reply.error(str(exc))

        def act() -> Reply:
            took = self._ptz.move(visca.zoom_direct(z))
            return self._with_position(f"zoomed in {took:.1f} s", lambda p: p["zoom"] == z)

        return self._run("", act)

    def _with_position(self, what: str, matches: Any) -> Reply:
        """The camera's reported position after a move (the inquiry is the check that it went where it was sent)."""
        try:
            pos = self._ptz.read_position()
        except (PtzError, visca.ViscaProtocolError) as exc:
            return Reply(True, f"{what}; position unknown: {exc}")
        note = "" if matches(pos) else " (not where it was sent: the camera's limits?)"
        return Reply(True, f"{what}: pan {pos['pan']} tilt {pos['tilt']} zoom {pos['zoom']}{note}", body=pos)

    # -- sweeps
    def _cmd_sweep(self, args: list[str], session: Session) -> Reply:
        ptz = self._ptz
        try:
            ptz.check_on()
            numbers = parse_selection(" ".join(args)) if args else None
            presets = ptz.select(numbers)
            run = ptz.sweeper.start(presets, trigger="command", peer=session.peer)
        except Busy as exc:
            return Reply.error(f"busy: {exc}")
        except PtzOff as exc:
            return Reply.error(str(exc))
        except ValueError as exc:
            return Reply.error(str(exc))
        except OSError as exc:
            return Reply.error(f"cannot create the sweep folder: {exc.strerror or exc}")
        return Reply(
            True, f"sweep {run.id} started: {len(presets)} preset(s)", body={"run": run.id, "presets": [p.number for p in presets]}
        )

    def _cmd_cancel(self, args: list[str], session: Session) -> Reply:
        run = self._ptz.sweeper.cancel(by=session.peer)
        if run is None:
            return Reply.error("no sweep is running")
        return Reply(True, f"sweep {run.id} cancelling (the report keeps what was done)")
