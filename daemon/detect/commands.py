"""The detection commands: `detect`, `detect events [N]`, `detect on|off|auto`, `detect save`.

Reading is open; turning detection on or off and saving need the token like
every other change. `detect` and `detect save` ask the detection worker (the
one thread that uses the model) and wait for its answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from daemon.commands import Command, Handler, Registry, Reply, Session
from daemon.storage.export import ExportError

from .annotate import draw_detections
from .base import DetectorUnavailable

if TYPE_CHECKING:
    from daemon.storage.export import Exporter

    from .result import DetectionResult
    from .service import Detection

log = logging.getLogger("picamd.detect")

#: How long a command waits for the worker (loading the model the first time included).
REQUEST_TIMEOUT_S = 20.0

_MODE_HELP = {
    "on": "Run detection on every frame it can take (up to detect.max_fps), whatever moves",
    "auto": "Run detection while the gate (detect.gate) sees something move",
    "off": "Stop detection and release the model",
}


class DetectCommands:
    def __init__(self, service: Detection, saver: Exporter | None) -> None:
        self._service = service
        self._saver = saver

    def register(self, registry: Registry) -> None:
        registry.register(
            Command("detect", self._cmd_detect, "Detect now on the newest frame: people, scores, boxes, groups, inference ms (JSON)")
        )
        registry.register(
            Command(
                "detect",
                self._cmd_events,
                "Recent detection events (detect.person, detect.count, detect.clear)",
                usage="[N]",
                max_args=1,
                sub="events",
            )
        )
        for mode, what in _MODE_HELP.items():
            registry.register(Command("detect", self._mode_handler(mode), what, mutating=True, sub=mode))
        registry.register(
            Command(
                "detect",
                self._cmd_save,
                "Detect now and save the annotated full-resolution JPEG with a JSON sidecar into the captures",
                mutating=True,
                sub="save",
            )
        )

    def _ask(self) -> tuple[DetectionResult, Any, Any] | Reply:
        try:
            return self._service.request(REQUEST_TIMEOUT_S)
        except (DetectorUnavailable, TimeoutError) as exc:
            return Reply.error(str(exc))

    @staticmethod
    def _headline(result: DetectionResult) -> str:
        groups = result.groups
        grouped = f", {groups['groups']} group(s)" if groups and groups.get("groups") else ""
        return (
            f"{result.people} {'person' if result.people == 1 else 'people'}{grouped} on frame {result.frame_id} "
            f"({len(result.detections)} detection(s), {result.inference_ms:.1f} ms inference)"
        )

    def _cmd_detect(self, args: list[str], session: Session) -> Reply:
        got = self._ask()
        if isinstance(got, Reply):
            return got
        result = got[0]
        return Reply(True, self._headline(result), body=result.to_dict())

    def _cmd_events(self, args: list[str], session: Session) -> Reply:
        try:
            n = int(args[0]) if args else 20
        except ValueError:
            n = 0
        if n < 1:
            return Reply.error("usage: detect events [N] (N is a whole number >= 1)")
        events = self._service.events(n)
        return Reply(True, f"{len(events)} detection event(s)", body=events)

    def _mode_handler(self, mode: str) -> Handler:
        def handler(args: list[str], session: Session) -> Reply:
            self._service.set_mode(mode)
            log.info("detect %s by %s", mode, session.peer)
            return Reply(True, f"detection {mode}", body={"mode": self._service.mode, "state": self._service.state})

        return handler

    def _cmd_save(self, args: list[str], session: Session) -> Reply:
        if self._saver is None:
            return Reply.error("saving is not available")
        got = self._ask()
        if isinstance(got, Reply):
            return got
        result, frame, meta = got
        image = draw_detections(frame, result.detections, result.frame_size)
        how: dict[str, Any] = {
            "kind": "detect",
            "method": "annotated",
            "frames": 1,
            "frame_id": meta.frame_id,
            "source": "full",
            "source_size": [int(frame.shape[1]), int(frame.shape[0])],
            "detection": result.to_dict(),
        }
        try:
            paths = self._saver.save_image(image, meta, "detect", how, ["jpg"], sidecar=True)
        except ExportError as exc:
            return Reply.error(str(exc))
        shown = [str(p) for p in paths] + [str(p.with_suffix(".json")) for p in paths[:1]]
        return Reply(True, f"saved {self._headline(result)}", body={"paths": shown, "detection": result.to_dict()})
