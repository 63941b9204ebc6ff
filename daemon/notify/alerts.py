"""Alerts channel: each new person (`detect.person`) posted with its annotated picture, as seed 003's backend takes them.

    POST notify.alerts.url
    Authorization: Token <notify.alerts.token>
    {"camera_id": ..., "alert_type": "person", "confidence": 0.87, "image_base64": "<the annotated JPEG>",
     "description": "Person detected on cam1 (track 3; 2 people in view)", "track_id": 3, "count": 2,
     "boxes": [...], "groups": {...}, "frame_id": ..., "ts": ..., "host": ...}

It is one more channel of the notifier, not a second webhook system: the
same outbox, retries, backoff and health. It picks its events itself
(`detect.person`, plus `notify_test` as `alert_type` "test" without a
picture), whatever `notify.events` selects, so setting the URL is all it
takes. The picture comes with the event as an attachment (encoded on the
detection thread, never on the capture loop); only this channel keeps it,
and the outboxes hold at most `notify.queue_max_mb` of pictures.

A track alerts at most once per `notify.alerts.cooldown_s`. The detector
announces each track once (its tracker keeps a person standing in view one
track), so the cooldown only guards against the same track announced again.
The token and the URL's path never reach a log line or `health`.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Any

from daemon import __version__
from daemon.core.bus import Event

from .webhook import CONFIGURED, WebhookChannel

PERSON_EVENT = "detect.person"
TEST_EVENT = "notify.test"
#: The attachment key of the annotated JPEG on a `detect.person` event (daemon/detect/events.py puts it there).
IMAGE = "jpeg"


class AlertChannel(WebhookChannel):
    """The webhook's POST, retries and error handling, with the alert's body, token header and events."""

    name = "alerts"
    own_selection = True
    wants_attachments = True

    def __init__(self, cfg: Any, camera_name: Callable[[], str], host: str) -> None:
        """`cfg` is the `notify.alerts` section (url, token, camera_id, cooldown_s); `camera_name` gives camera.name."""
        super().__init__(cfg, host)
        self._camera_name = camera_name
        self._lock = threading.Lock()
        self._last_alert: dict[int, float] = {}  # track id -> monotonic time of its last alert

    def destination(self, event: Event) -> str | None:
        if not self.enabled() or event.kind not in (PERSON_EVENT, TEST_EVENT):
            return None
        if event.kind == PERSON_EVENT and not self._cooled_down(event.data.get("track")):
            return None
        return CONFIGURED

    def _cooled_down(self, track: Any) -> bool:
        """True (and the time noted) when `track` has had no alert for notify.alerts.cooldown_s."""
        if not isinstance(track, int) or isinstance(track, bool):
            return True
        cooldown = float(self._cfg.cooldown_s)
        now = time.monotonic()
        with self._lock:
            # Forget tracks past their cooldown, so the table stays as small as the people seen lately.
            self._last_alert = {t: at for t, at in self._last_alert.items() if now - at < cooldown}
            if track in self._last_alert:
                return False
            self._last_alert[track] = now
            return True

    def camera_id(self) -> str | int:
        text = str(self._cfg.camera_id).strip() or self._camera_name()
        return int(text) if text.isdigit() else text  # the seed's backend numbers its cameras

    def headers(self, url: str) -> dict[str, str]:
        headers = {"User-Agent": f"picamd/{__version__}", "Content-Type": "application/json"}
        if self._cfg.token:
            headers["Authorization"] = f"Token {self._cfg.token}"
        return headers

    def body(self, event: Event) -> dict[str, Any]:
        data = event.data
        camera = self.camera_id()
        if event.kind == TEST_EVENT:
            return {
                "camera_id": camera,
                "alert_type": "test",
                "confidence": 0.0,
                "image_base64": "",
                "description": " ".join(str(data.get("text") or "test alert").split())[:500],
                "host": self._host,
                "ts": round(event.ts, 3),
            }
        count = data.get("people")
        track = data.get("track")
        in_view = f"; {count} {'person' if count == 1 else 'people'} in view" if isinstance(count, int) else ""
        return {
            "camera_id": camera,
            "alert_type": "person",
            "confidence": round(float(data.get("score") or 0.0), 4),
            "image_base64": base64.b64encode(event.attachments.get(IMAGE, b"")).decode("ascii"),
            "description": f"Person detected on {self._camera_name()} (track {track}{in_view})",
            "track_id": track,
            "count": count,
            "boxes": data.get("detections") or [],
            "groups": data.get("groups"),
            "box": data.get("box"),
            "frame_id": data.get("frame_id"),
            "frame_size": data.get("frame_size"),
            "ts": data.get("frame_ts", round(event.ts, 3)),
            "host": self._host,
        }
