"""Clips: a run of ring frames written as a video, with a JSON sidecar, among the captures.

`ClipRecorder` writes the frames of the ring from `pre_s` before a frame
(the anchor) to `post_s` after it: the ones already in the ring at once, the
later ones as the capture loop commits them, one frame copied at a time (a
clip never holds the ring twice in memory), so the ring need only reach back
`pre_s` seconds. The video is MPEG-4 (`mp4v`) in an MP4, which every OpenCV
built with FFmpeg writes and VLC, browsers' players and ffprobe open; where
that codec is missing, MJPEG in an AVI. It is written under a hidden temp
name in `<base_dir>/.picamd-tmp` and moved into place with its sidecar by
`Exporter.save_files` (atomic rename, retention, which treats clips like
auto-saves): `YYYYMMDD-HHMMSS.mmm_f<anchor>_clip.mp4` and `.json`. The
sidecar gives the frames written, the first and last frame id and time, the
frame rate measured from the frames' timestamps (and the one the container
was given), the codec and size, and what asked for the clip.

One worker, `picamd-clip`, writes one clip at a time: asking for another
while one is being written is refused (`ClipBusy`, `ERR busy` on the port).
It also saves the annotated pictures of `detect.person` (kind
`autodetect`), queued (a few at most) and written between clips. Nothing
here runs on the capture loop.

    clip [SECONDS]     the ring's last SECONDS (default 10) on demand; needs the token
"""

from __future__ import annotations

import collections
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from daemon.capture.ring import FrameMeta, Ring
from daemon.commands import Command, Registry, Reply, Session
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker
from daemon.storage.export import TEMP_DIR, Exporter, ExportError, capture_stamp

log = logging.getLogger("picamd.clips")

#: (fourcc, container) tried in order: MPEG-4 Part 2 in MP4 first; MJPEG in AVI needs no codec library at all.
CODECS: tuple[tuple[str, str], ...] = (("mp4v", "mp4"), ("MJPG", "avi"))
DEFAULT_SECONDS = 10.0
MAX_SECONDS = 600.0
#: Annotated pictures waiting to be written; beyond it the oldest is dropped (and counted).
MAX_STILLS = 4
#: How long a clip waits for frames after its end should have come (a camera that stalls): then it keeps what came.
STALL_GRACE_S = 5.0
#: Longest `clip` waits for its clip to be written before answering.
COMMAND_TIMEOUT_S = 120.0


class ClipError(Exception):
    """A clip could not be written; the message is the reason a user reads after `ERR `."""


class ClipBusy(ClipError):
    pass


@dataclass(frozen=True)
class ClipJob:
    """What to record: `pre_s` before the anchor frame to `post_s` after it."""

    anchor: FrameMeta
    pre_s: float
    post_s: float
    trigger: str  # "command", or the event that asked (detect.person)
    details: dict[str, Any] = field(default_factory=dict)  # goes into the sidecar as it is (the detection, say)


@dataclass
class _Request:
    job: ClipJob
    done: threading.Event = field(default_factory=threading.Event)
    paths: list[Path] = field(default_factory=list)
    capture: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class _Still:
    jpeg: bytes
    meta: FrameMeta
    capture: dict[str, Any]


def _local_iso(ts: float) -> str:
    return datetime.fromtimestamp(round(ts, 3)).astimezone().isoformat(timespec="milliseconds")


def _sidecar(meta: FrameMeta, capture: dict[str, Any]) -> bytes:
    doc = meta.to_dict()
    doc["time_local"] = _local_iso(meta.ts)
    doc["capture"] = {**capture, "saved_at": round(time.time(), 3)}
    return (json.dumps(doc, indent=2, default=str) + "\n").encode()


class _Video:
    """One video being written to a temp file; opened at the first frame, whose size (cut to even) it keeps."""

    def __init__(self, folder: Path, stem: str, fps: float, codecs: tuple[tuple[str, str], ...]) -> None:
        self._folder, self._stem, self.fps, self._codecs = folder, stem, fps, codecs
        self._writer: cv2.VideoWriter | None = None
        self.path: Path | None = None
        self.codec = self.container = ""
        self.size = (0, 0)
        self.refused: list[str] = []

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None:
            self._open(frame.shape[1] & ~1, frame.shape[0] & ~1)  # MPEG-4 wants even sides: drop an odd last column or row
        w, h = self.size
        assert self._writer is not None
        self._writer.write(np.ascontiguousarray(frame[:h, :w]))

    def _open(self, w: int, h: int) -> None:
        if w < 2 or h < 2:
            raise ClipError(f"frames of {w}x{h} are too small for a video")
        for fourcc, container in self._codecs:
            fd, name = tempfile.mkstemp(prefix=f".{self._stem}.", suffix=f".tmp.{container}", dir=self._folder)
            os.close(fd)
            writer = cv2.VideoWriter(name, cv2.VideoWriter.fourcc(*fourcc), self.fps, (w, h))
            if writer.isOpened():
                self._writer, self.path, self.codec, self.container, self.size = writer, Path(name), fourcc, container, (w, h)
                return
            writer.release()
            Path(name).unlink(missing_ok=True)
            self.refused.append(fourcc)
        raise ClipError(f"OpenCV cannot write video here (tried {', '.join(c for c, _ in self._codecs)})")

    def finish(self) -> int:
        """Close the file; its size in bytes."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        return self.path.stat().st_size if self.path is not None and self.path.exists() else 0

    def discard(self) -> None:
        self.finish()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class ClipRecorder:
    #: Longest wait for a new frame or job before looking at stop and the queue again.
    poll_s = 0.25

    def __init__(self, ring: Ring, exporter: Exporter, status: ComponentStatus, codecs: tuple[tuple[str, str], ...] = CODECS) -> None:
        self._ring = ring
        self._exporter = exporter
        self.status = status
        self._codecs = codecs
        self._cond = threading.Condition()
        self._request: _Request | None = None  # the clip asked for or being written: at most one
        self._stills: collections.deque[_Still] = collections.deque()
        self._worker = Worker("clip", self._step, status=status, on_stop=self._wake, join_timeout_s=3.0)
        self._written = 0
        self._failed = 0
        self._busy_refusals = 0
        self._stills_written = 0
        self._stills_dropped = 0
        self._last: dict[str, Any] | None = None

    # -- lifecycle
    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- asking (any thread; never waits for a clip unless told to)
    @property
    def busy(self) -> bool:
        with self._cond:
            return self._request is not None

    def submit(self, job: ClipJob) -> _Request:
        """Queue `job` for the worker; raises ClipBusy while another clip is asked for or being written."""
        if not job.pre_s >= 0 or not job.post_s >= 0 or job.pre_s + job.post_s <= 0 or job.pre_s + job.post_s > 2 * MAX_SECONDS:
            raise ClipError(f"a clip needs a length above 0 and at most {2 * MAX_SECONDS:g} s, not {job.pre_s:g} + {job.post_s:g} s")
        if not self._worker.alive:
            raise ClipError("the clip writer is not running")
        with self._cond:
            if self._request is not None:
                self._busy_refusals += 1
                raise ClipBusy("busy: a clip is being written; ask again when it is done")
            request = self._request = _Request(job)
            self._cond.notify_all()
        return request

    def record(self, seconds: float, timeout: float = COMMAND_TIMEOUT_S) -> _Request:
        """The ring's last `seconds` as a clip, waited for (the `clip` command)."""
        if not 0 < seconds <= MAX_SECONDS:
            raise ClipError(f"SECONDS must be above 0 and at most {MAX_SECONDS:g}, not {seconds:g}")
        anchor = self._ring.latest_meta()
        if anchor is None:
            raise ClipError("no frame yet")
        request = self.submit(ClipJob(anchor, seconds, 0.0, "command"))
        if not request.done.wait(timeout):
            raise ClipError(f"the clip is still being written after {timeout:g} s; it will appear among the captures")
        if request.error is not None:
            raise ClipError(request.error)
        return request

    def save_still(self, jpeg: bytes, meta: FrameMeta, capture: dict[str, Any]) -> None:
        """Queue an annotated picture (kind `autodetect`) to be written by the worker; never waits."""
        with self._cond:
            if len(self._stills) >= MAX_STILLS:
                self._stills.popleft()
                self._stills_dropped += 1
            self._stills.append(_Still(jpeg, meta, capture))
            self._cond.notify_all()

    # -- the worker
    def _step(self) -> None:
        with self._cond:
            if not self._stills and (self._request is None or self._request.done.is_set()):
                self._cond.wait(self.poll_s)
                return
            still = self._stills.popleft() if self._stills else None
            request = self._request if still is None else None
        if still is not None:
            self._write_still(still)
        elif request is not None:
            try:
                self._write_clip(request)
            finally:
                with self._cond:
                    self._request = None
                request.done.set()

    def _write_still(self, still: _Still) -> None:
        try:
            self._exporter.save_files(
                still.meta.frame_id, still.meta.ts, "autodetect", [("jpg", still.jpeg), ("json", _sidecar(still.meta, still.capture))]
            )
        except ExportError as exc:
            self.status.error(f"saving the detection picture of frame {still.meta.frame_id} failed: {exc}")
            return
        with self._cond:
            self._stills_written += 1

    def _write_clip(self, request: _Request) -> None:
        job = request.job
        try:
            request.paths, request.capture = self._record(job)
        except (ClipError, ExportError, OSError, cv2.error) as exc:
            request.error = str(exc) if isinstance(exc, (ClipError, ExportError)) else f"{type(exc).__name__}: {exc}"
            with self._cond:
                self._failed += 1
            self.status.error(f"clip ({job.trigger}) failed: {request.error}")
            return
        cap = request.capture
        with self._cond:
            self._written += 1
            self._last = {
                "ts": round(time.time(), 3),
                "trigger": job.trigger,
                "frames": cap["frames"],
                "codec": cap["codec"],
                "paths": [str(p) for p in request.paths],
            }
        self.status.recover()
        log.info(
            "clip of %d frames (%.1f s, %s, %.1f fps) for %s: %s",
            cap["frames"],
            cap["duration_s"],
            cap["codec"],
            cap["fps"],
            job.trigger,
            request.paths[0],
        )

    def _fps_guess(self, start_mono: float) -> float:
        """The container's frame rate: the ring's recent frames, measured by their timestamps."""
        metas = [m for m in self._ring.metas() if m.mono >= start_mono][-60:] or self._ring.metas()[-30:]
        if len(metas) >= 2 and metas[-1].mono > metas[0].mono:
            return min(120.0, max(0.5, (len(metas) - 1) / (metas[-1].mono - metas[0].mono)))
        return 10.0

    def _record(self, job: ClipJob) -> tuple[list[Path], dict[str, Any]]:
        anchor = job.anchor
        start, end = anchor.mono - job.pre_s, anchor.mono + job.post_s
        tmp_dir = self._exporter.base_dir / TEMP_DIR
        tmp_dir.mkdir(parents=True, exist_ok=True)
        _, stamp = capture_stamp(anchor.ts)
        video = _Video(tmp_dir, f"{stamp}_f{anchor.frame_id}_clip", self._fps_guess(start), self._codecs)
        written: list[FrameMeta] = []
        missed = 0
        last_id = -1
        notes: list[str] = []
        give_up = time.monotonic() + max(0.0, end - time.monotonic()) + STALL_GRACE_S
        try:
            while True:
                metas = self._ring.metas()
                for meta in metas:
                    if meta.frame_id <= last_id or not start <= meta.mono <= end:
                        continue
                    got = self._ring.get(meta.frame_id)
                    last_id = meta.frame_id
                    if got is None:
                        missed += 1  # overwritten before it could be read: the ring laps faster than this writes
                        continue
                    video.write(got[0])
                    written.append(meta)
                if metas and metas[-1].mono >= end:
                    break
                if self._worker.stopping.is_set():
                    notes.append("the daemon stopped before the clip's end")
                    break
                if time.monotonic() > give_up:
                    notes.append(f"no frame for {STALL_GRACE_S:g} s after the clip's end should have come")
                    break
                self._ring.wait_newer(metas[-1].frame_id if metas else -1, self.poll_s)
            if not written:
                raise ClipError(f"no frame of the ring lies in the {job.pre_s + job.post_s:g} s asked for")
            size = video.finish()
            if size <= 0 or video.path is None:
                raise ClipError("the video came out empty (is the disk full?)")
            first, last = written[0], written[-1]
            span = last.mono - first.mono
            capture: dict[str, Any] = {
                "kind": "clip",
                "method": "video",
                "trigger": job.trigger,
                "frames": len(written),
                "first_frame_id": first.frame_id,
                "last_frame_id": last.frame_id,
                "first_ts": round(first.ts, 6),
                "last_ts": round(last.ts, 6),
                "first_time_local": _local_iso(first.ts),
                "last_time_local": _local_iso(last.ts),
                "duration_s": round(span, 3),
                "fps": round((len(written) - 1) / span, 3) if span > 0 else None,  # from the frames' own timestamps
                "container_fps": round(video.fps, 3),
                "codec": video.codec,
                "container": video.container,
                "size": list(video.size),
                "source": "ring",
                "requested_pre_s": job.pre_s,
                "requested_post_s": job.post_s,
                "missed_frames": missed,
                "video_bytes": size,
            }
            if video.refused:
                capture["codecs_missing"] = video.refused
            if first.mono > start + 1.0 / max(video.fps, 0.5):
                notes.append(f"the ring reached back only {anchor.mono - first.mono:.1f} of the {job.pre_s:g} s asked for")
            if notes:
                capture["note"] = "; ".join(notes)
            if job.details:
                capture.update(job.details)
            paths = self._exporter.save_files(
                anchor.frame_id,
                anchor.ts,
                "clip",
                [(video.container, video.path), ("json", _sidecar(anchor, capture))],
                frames=len(written),
            )
            return paths, capture
        finally:
            video.discard()  # after save_files moved it this only closes; on any failure it removes the temp file

    # -- health and commands
    def health(self) -> dict[str, Any]:
        with self._cond:
            return {
                "state": self.status.state,
                "busy": self._request is not None,
                "clips": self._written,
                "failed": self._failed,
                "refused_busy": self._busy_refusals,
                "pictures": self._stills_written,
                "pictures_waiting": len(self._stills),
                "pictures_dropped": self._stills_dropped,
                "last": dict(self._last) if self._last else None,
            }

    def register_commands(self, registry: Registry) -> None:
        registry.register(
            Command(
                "clip",
                self._cmd_clip,
                f"Write the ring's last SECONDS (default {DEFAULT_SECONDS:g}) as a video with a JSON sidecar into "
                "the captures (MP4, else MJPEG AVI)",
                usage="[SECONDS]",
                mutating=True,
                max_args=1,
            )
        )

    def _cmd_clip(self, args: list[str], session: Session) -> Reply:
        try:
            seconds = float(args[0]) if args else DEFAULT_SECONDS
        except ValueError:
            return Reply.error(f"usage: clip [SECONDS] (a number of seconds up to {MAX_SECONDS:g}), not {args[0][:20]!r}")
        if not 0 < seconds <= MAX_SECONDS:  # also refuses nan
            return Reply.error(f"SECONDS must be above 0 and at most {MAX_SECONDS:g}, not {args[0][:20]}")
        try:
            request = self.record(seconds)
        except ClipError as exc:
            return Reply.error(str(exc))
        cap = request.capture
        fps = f"{cap['fps']:.1f} fps" if cap["fps"] else "one frame"
        return Reply(
            True,
            f"clip of {cap['frames']} frames ({cap['duration_s']:.1f} s, f{cap['first_frame_id']}..f{cap['last_frame_id']}, "
            f"{cap['codec']} {cap['container']}, {fps})",
            body={"paths": [str(p) for p in request.paths], "clip": cap},
        )
