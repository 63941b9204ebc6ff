#!/usr/bin/env python3
"""Charts of picamd's motion logs: a PNG plot and a self-contained HTML page.

    python tools/chart.py /var/lib/picamd/logs --png motion.png --html motion.html
    python tools/chart.py logs --region press1 --since 2024-05-01T06:00 --until 2024-05-01T22:00 --html shift.html

Reads, from LOG_DIR (rotated `.1`, `.2` ... files included):
- `summary_<region>.jsonl`: one line per region and interval (a minute by
  default: frames, moving frames, mean and highest changed fraction, state at
  the end), what the daemon always writes,
- `motion_<region>.jsonl`: one line per frame and region (changed fraction,
  moving, state), written only with `motion.log_frames`,
- `state_changes.jsonl` and `deep_sleep.jsonl`: the state changes,
in the format `daemon/motion/log.py` describes. Both kinds may lie in one
folder (a day with per-frame logs among weeks of summaries): where per-frame
records exist they are used and the summaries of the same time are not.
Lines that are not valid records (a torn last line after a power cut, an
edited file) are skipped and counted.

The state timeline of each region comes from the state changes, confirmed by
the per-frame records and the summaries (the state at the end of each
interval). A gap of more than `--gap-s` seconds between two records (the
daemon was down, the camera stalled; a summary covers its first to its last
frame) counts as NO DATA.

Utilisation is the share of the time RUNNING among the time the region was
RUNNING, STOPPED or DEEP_SLEEP (UNKNOWN after a start and NO DATA are left
out); an idle period is a stretch of STOPPED and DEEP_SLEEP.

The PNG shows, per region, the state as a coloured band and the changed
fraction over time (the highest value of each pixel column in light, the mean
over the judged frames in dark; a summary spreads over the columns it
spans). The HTML holds the utilisation of every machine, an SVG chart per
region (hover for the time, fraction and state), the idle periods and the
state changes. No external assets: it opens offline and can be mailed.

Times are shown in the local time zone (`--utc` for UTC); --since and --until
take ISO dates or times (2024-05-01, 2024-05-01T06:00, with an optional
offset) in the same zone, or seconds since the epoch.

Exit status: 0 done (also when there are no records in the period: the charts
say so), 1 LOG_DIR is missing, holds no motion logs, or an output cannot be
written, 2 bad usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import toolenv

toolenv.require(__file__, "cv2", "numpy")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from daemon.core.timefmt import format_duration  # noqa: E402
from daemon.motion.log import DEEP_SLEEP_LOG, FRAME_PREFIX, STATE_LOG, SUMMARY_PREFIX  # noqa: E402
from daemon.storage.atomicfile import write_atomic  # noqa: E402

EXIT_ERROR, EXIT_USAGE = 1, 2
RUNNING, STOPPED, DEEP_SLEEP, UNKNOWN, NO_DATA = "RUNNING", "STOPPED", "DEEP_SLEEP", "UNKNOWN", "NO DATA"
STATES = (UNKNOWN, RUNNING, STOPPED, DEEP_SLEEP)
IDLE = (STOPPED, DEEP_SLEEP)
KNOWN = (RUNNING, STOPPED, DEEP_SLEEP)
TRANSITIONS = ("motion.state", "motion.deep_sleep")  # motion.wake repeats its motion.state event
EVENTS = (*TRANSITIONS, "motion.wake")
# BGR for the PNG; the HTML uses the same colours.
COLOURS = {
    RUNNING: (80, 175, 76),
    STOPPED: (0, 152, 255),
    DEEP_SLEEP: (181, 81, 63),
    UNKNOWN: (190, 190, 190),
    NO_DATA: (235, 235, 235),
}
TICK_STEPS = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    2 * 86400,
    7 * 86400,
    14 * 86400,
    28 * 86400,
)
_ROTATED = re.compile(r"\.jsonl(\.\d+)?$")


class ChartError(Exception):
    """Something the user can fix; the message says what."""


# --- reading the logs ----------------------------------------------------------------------------


@dataclass
class Change:
    ts: float
    kind: str
    region: str
    old: str
    new: str
    duration_s: float | None
    idle_s: float | None
    machine_id: Any = None


@dataclass(frozen=True)
class Summary:
    """One interval of a region from summary_<region>.jsonl."""

    first: float
    last: float
    frames: int
    judged: int
    moving: int
    mean: float
    peak: float
    state: str


@dataclass
class Logs:
    frames: dict[str, list[tuple[float, float, int, str]]] = field(default_factory=dict)  # region -> (ts, fraction, moving, state)
    summaries: dict[str, list[Summary]] = field(default_factory=dict)  # region -> its intervals
    changes: list[Change] = field(default_factory=list)
    machine_ids: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    bad_lines: dict[str, int] = field(default_factory=dict)  # file name -> lines skipped

    @property
    def skipped(self) -> int:
        return sum(self.bad_lines.values())


def log_files(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(per-frame logs, summaries, state/deep-sleep logs), rotated ones included, oldest rotation first."""

    def order(p: Path) -> tuple[str, int]:
        m = re.search(r"\.jsonl\.(\d+)$", p.name)
        return (_ROTATED.sub("", p.name), -int(m.group(1)) if m else 0)

    frames, summaries, events = [], [], []
    for path in folder.iterdir():
        if not path.is_file() or not _ROTATED.search(path.name):
            continue
        stem = _ROTATED.sub(".jsonl", path.name)
        if stem.startswith(FRAME_PREFIX):
            frames.append(path)
        elif stem.startswith(SUMMARY_PREFIX):
            summaries.append(path)
        elif stem in (STATE_LOG, DEEP_SLEEP_LOG):
            events.append(path)
    return sorted(frames, key=order), sorted(summaries, key=order), sorted(events, key=order)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _lines(path: Path) -> Iterator[dict[str, Any] | None]:
    """Each line as a JSON object, or None for a line that is not one."""
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                yield None
                continue
            yield record if isinstance(record, dict) else None


def read_logs(folder: Path, regions: set[str] | None) -> Logs:
    if not folder.is_dir():
        raise ChartError(f"{folder} is not a folder (give the daemon's motion.log_dir)")
    frame_files, summary_files, event_files = log_files(folder)
    if not frame_files and not summary_files and not event_files:
        raise ChartError(
            f"no motion logs in {folder} (expected summary_<region>.jsonl, motion_<region>.jsonl, {STATE_LOG} or {DEEP_SLEEP_LOG})"
        )
    logs = Logs(files=frame_files + summary_files + event_files)
    for path in frame_files:
        for region, row in _parsed(path, _frame_record, logs):
            if regions is None or region in regions:
                logs.frames.setdefault(region, []).append(row)
    for path in summary_files:
        for region, summary in _parsed(path, _summary_record, logs):
            if regions is None or region in regions:
                logs.summaries.setdefault(region, []).append(summary)
    for path in event_files:
        for change in _parsed(path, _change_record, logs):
            if regions is not None and change.region not in regions:
                continue
            if change.machine_id is not None:
                logs.machine_ids[change.region] = change.machine_id
            if change.kind in TRANSITIONS:
                logs.changes.append(change)
    for rows in logs.frames.values():
        rows.sort(key=lambda r: r[0])
    for region, summaries in logs.summaries.items():
        summaries.sort(key=lambda s: s.first)
        logs.summaries[region] = _not_covered(summaries, logs.frames.get(region, []))
    logs.changes.sort(key=lambda c: c.ts)
    return logs


def _not_covered(summaries: list[Summary], frames: list[tuple[float, float, int, str]]) -> list[Summary]:
    """The summaries whose time holds no per-frame record: where both were logged, the frames say more."""
    if not frames:
        return summaries
    stamps = np.array([r[0] for r in frames], np.float64)
    firsts = np.searchsorted(stamps, [s.first for s in summaries], side="left")
    lasts = np.searchsorted(stamps, [s.last for s in summaries], side="right")
    return [s for s, a, b in zip(summaries, firsts, lasts, strict=True) if a == b]


def _parsed(path: Path, parse, logs: Logs):
    """The records of one log file that `parse` accepts; the lines it refuses are counted as bad."""
    bad = 0
    try:
        for record in _lines(path):
            item = parse(record)
            if item is None:
                bad += 1
            else:
                yield item
    except OSError as exc:
        raise ChartError(f"cannot read {path}: {exc.strerror or exc}") from None
    if bad:
        logs.bad_lines[path.name] = bad


def _frame_record(record: dict[str, Any] | None) -> tuple[str, tuple[float, float, int, str]] | None:
    if record is None:
        return None
    ts, fraction = _finite(record.get("ts")), _finite(record.get("fraction"))
    region, state, moving = record.get("region"), record.get("state"), record.get("moving")
    if ts is None or fraction is None or not 0 <= fraction <= 1 or not isinstance(region, str) or not region:
        return None
    if state not in STATES or moving not in (True, False, None):
        return None
    return region, (ts, fraction, -1 if moving is None else int(moving), state)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _summary_record(record: dict[str, Any] | None) -> tuple[str, Summary] | None:
    if record is None:
        return None
    first, last = _finite(record.get("ts")), _finite(record.get("end"))
    frames, judged, moving = _count(record.get("frames")), _count(record.get("judged")), _count(record.get("moving_frames"))
    mean, peak = _finite(record.get("mean_fraction")), _finite(record.get("max_fraction"))
    region, state = record.get("region"), record.get("state")
    if first is None or last is None or last < first or not isinstance(region, str) or not region or state not in STATES:
        return None
    if frames is None or judged is None or moving is None or not moving <= judged <= frames or frames == 0:
        return None
    if mean is None or peak is None or not 0 <= mean <= peak <= 1:
        return None
    return region, Summary(first, last, frames, judged, moving, mean, peak, state)


def _change_record(record: dict[str, Any] | None) -> Change | None:
    if record is None:
        return None
    ts = _finite(record.get("ts"))
    kind, region, old, new = record.get("event"), record.get("region"), record.get("old"), record.get("new")
    if ts is None or kind not in EVENTS or not isinstance(region, str) or not region or old not in STATES or new not in STATES:
        return None
    machine_id = record.get("machine_id")
    return Change(
        ts,
        kind,
        region,
        old,
        new,
        _finite(record.get("duration_s")),
        _finite(record.get("idle_s")),
        machine_id if isinstance(machine_id, (str, int)) and not isinstance(machine_id, bool) else None,
    )


# --- the timeline and its figures ---------------------------------------------------------------


@dataclass
class Idle:
    start: float
    end: float
    deep: bool
    began_before: bool  # idle already when the period starts
    ongoing: bool  # still idle at the end of the period (a change at the very end, with no time left to show, counts)

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class RegionReport:
    name: str
    machine_id: Any
    segments: list[tuple[float, float, str]]
    totals: dict[str, float]
    idle: list[Idle]
    changes: list[Change]
    samples: np.ndarray  # (n, 7) per frame record or summary: SAMPLE_COLUMNS

    @property
    def known_s(self) -> float:
        return sum(self.totals.get(s, 0.0) for s in KNOWN)

    @property
    def utilisation(self) -> float | None:
        known = self.known_s
        return None if known <= 0 else self.totals.get(RUNNING, 0.0) / known


# A point of the timeline: (ts, order, state or None, is data, old state, joined). A change (order 0, not data) sets
# its new state and knows the old one; a frame record (data) confirms its state; a summary is two data points, its
# first frame (order 1, state None: it says no state there) and its last frame (order 2, the state at the end,
# joined: no gap from its first frame however long the interval). At equal times the change comes first.
Point = tuple[float, int, str | None, bool, str | None, bool]


def _points(frames: list[tuple[float, float, int, str]], summaries: list[Summary], changes: list[Change], gap_s: float) -> list[Point]:
    points: list[Point] = [(c.ts, 0, c.new, False, c.old, False) for c in changes]
    points += [(ts, 1, state, True, None, False) for ts, _f, _m, state in frames]
    for s in summaries:
        points += [(s.first, 1, None, True, None, False), (s.last, 2, s.state, True, None, True)]
    points.sort(key=lambda p: (p[0], p[1]))
    # A summary's first frame carries the state on, unless it follows a gap (or nothing): then the state is the one the
    # next point says held before it (a change's old state, the summary's own state at the end).
    carried: str | None = None
    last_data: float | None = None
    for i, (ts, order, state, is_data, old, joined) in enumerate(points):
        if state is None:
            if carried is None or last_data is None or ts - last_data > gap_s:
                state = next(((p[4] if not p[3] else p[2]) for p in points[i + 1 :] if p[2] is not None), None) or NO_DATA
            else:
                state = carried
            points[i] = (ts, order, state, is_data, old, joined)
        carried = state
        if is_data:
            last_data = ts
    return points


def timeline(
    frames: list[tuple[float, float, int, str]],
    changes: list[Change],
    start: float,
    end: float,
    gap_s: float,
    summaries: list[Summary] | None = None,
) -> tuple[list[tuple[float, float, str]], str]:
    """Segments (from, to, state) covering [start, end], and the state at `end`; see the module doc for the rules.

    The state at `end` is told apart because a change at `end` itself (the period ends at the last record, and that
    may be a change) has no time left to show as a segment, yet ends the state before it."""
    points = _points(frames, summaries or [], changes, gap_s)
    segments: list[list[Any]] = []

    def emit(a: float, b: float, state: str) -> None:
        a, b = max(a, start), min(b, end)
        if b <= a:
            return
        if segments and segments[-1][2] == state and segments[-1][1] >= a - 1e-9:
            segments[-1][1] = b
        else:
            segments.append([a, b, state])

    before = [p for p in points if p[0] <= start]
    inside = [p for p in points if start < p[0] <= end]
    prev: Point | None
    if before:
        prev = before[-1]
        state = prev[2] or NO_DATA
    elif inside and not inside[0][3]:
        prev = None
        state = inside[0][4] or NO_DATA  # the first change says what the state was before it (only frames have no old state)
    else:
        prev = None
        state = NO_DATA
    cursor = start
    for point in inside:
        ts, _order, new_state, is_data, _old, joined = point
        if prev is not None and prev[3] and is_data and not joined and ts - prev[0] > gap_s:
            emit(cursor, prev[0], state)
            emit(prev[0], ts, NO_DATA)
        else:
            emit(cursor, ts, state)
        cursor, state, prev = ts, new_state or NO_DATA, point
    if prev is not None and prev[3] and end - prev[0] > gap_s:
        emit(cursor, prev[0], state)
        emit(prev[0], end, NO_DATA)
        state = NO_DATA
    else:
        emit(cursor, end, state)
    return [(a, b, s) for a, b, s in segments], state


def idle_periods(segments: list[tuple[float, float, str]], start: float, end: float, final: str) -> list[Idle]:
    """The idle stretches of `segments`; `final` is the state at `end` (see `timeline`)."""
    out: list[Idle] = []
    for a, b, state in segments:
        if state not in IDLE:
            continue
        if out and abs(out[-1].end - a) < 1e-9:
            out[-1].end = b
            out[-1].deep |= state == DEEP_SLEEP
        else:
            out.append(Idle(a, b, state == DEEP_SLEEP, began_before=a <= start, ongoing=False))
    for period in out:
        period.ongoing = period.end >= end and final in IDLE
    return out


def samples(frames: list[tuple[float, float, int, str]], summaries: list[Summary], start: float, end: float) -> np.ndarray:
    """The frame records and summaries within [start, end] as rows of SAMPLE_COLUMNS."""
    rows = [(ts, ts, f, f if m >= 0 else 0.0, int(m == 1), 1, int(m >= 0)) for ts, f, m, _s in frames if start <= ts <= end]
    rows += [
        (s.first, s.last, s.peak, s.mean * s.judged, s.moving, s.frames, s.judged) for s in summaries if s.last >= start and s.first <= end
    ]
    return np.array(rows, np.float64).reshape(-1, len(SAMPLE_COLUMNS))


SAMPLE_COLUMNS = ("first ts", "last ts", "highest fraction", "sum of judged fractions", "moving frames", "frames", "judged frames")


def build_reports(logs: Logs, start: float, end: float, gap_s: float) -> list[RegionReport]:
    names = sorted(set(logs.frames) | set(logs.summaries) | {c.region for c in logs.changes})
    reports = []
    for name in names:
        frames = logs.frames.get(name, [])
        summaries = logs.summaries.get(name, [])
        changes = [c for c in logs.changes if c.region == name]
        if (
            not any(start <= r[0] <= end for r in frames)
            and not any(s.last >= start and s.first <= end for s in summaries)
            and not any(start <= c.ts <= end for c in changes)
            and not any(c.ts < start for c in changes)
        ):
            continue  # nothing of this region in or before the period
        segments, final = timeline(frames, changes, start, end, gap_s, summaries)
        totals: dict[str, float] = {}
        for a, b, state in segments:
            totals[state] = totals.get(state, 0.0) + (b - a)
        reports.append(
            RegionReport(
                name=name,
                machine_id=logs.machine_ids.get(name),
                segments=segments,
                totals=totals,
                idle=idle_periods(segments, start, end, final),
                changes=[c for c in changes if start <= c.ts <= end],
                samples=samples(frames, summaries, start, end),
            )
        )
    return reports


def period(logs: Logs, since: float | None, until: float | None) -> tuple[float, float] | None:
    """[start, end] of the charts: --since/--until, else the first and last record."""
    stamps = [rows[0][0] for rows in logs.frames.values() if rows] + [rows[-1][0] for rows in logs.frames.values() if rows]
    stamps += [rows[0].first for rows in logs.summaries.values() if rows]
    stamps += [max(s.last for s in rows) for rows in logs.summaries.values() if rows]
    stamps += [c.ts for c in logs.changes]
    if since is not None:
        stamps = [t for t in stamps if t >= since] or stamps
    if until is not None:
        stamps = [t for t in stamps if t <= until] or stamps
    lo = since if since is not None else (min(stamps) if stamps else None)
    hi = until if until is not None else (max(stamps) if stamps else None)
    if lo is None or hi is None or hi <= lo:
        return None
    return lo, hi


# --- time formatting ----------------------------------------------------------------------------


class Clock:
    def __init__(self, utc: bool) -> None:
        self.utc = utc

    def dt(self, ts: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(ts, UTC) if self.utc else dt.datetime.fromtimestamp(ts).astimezone()

    def text(self, ts: float) -> str:
        return self.dt(ts).strftime("%Y-%m-%d %H:%M:%S")

    def zone(self, ts: float) -> str:
        return "UTC" if self.utc else (self.dt(ts).strftime("%Z") or self.dt(ts).strftime("UTC%z"))

    def parse(self, text: str, what: str) -> float:
        text = text.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{what}: {text!r} is not an ISO date/time like 2024-05-01T06:00 or seconds since the epoch"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC) if self.utc else when.astimezone()
        return when.timestamp()

    def ticks(self, start: float, end: float, max_ticks: int) -> tuple[list[float], str]:
        """Tick times at a round step aligned to the clock, and the strftime format for their labels."""
        span = end - start
        step = next((s for s in TICK_STEPS if span / s <= max_ticks), TICK_STEPS[-1])
        offset = self.dt(start).utcoffset()
        off = offset.total_seconds() if offset else 0.0
        first = math.ceil((start + off) / step) * step - off
        ticks = [first + i * step for i in range(int((end - first) // step) + 1)]
        if step >= 86400:
            fmt = "%m-%d"
        elif span > 86400:
            fmt = "%m-%d %H:%M"
        elif step >= 60:
            fmt = "%H:%M"
        else:
            fmt = "%H:%M:%S"
        return ticks, fmt


def _duration(seconds: float) -> str:
    return format_duration(seconds)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


# --- PNG ------------------------------------------------------------------------------------------


def _ascii(text: str) -> str:
    # Hershey fonts draw ASCII only.
    return text.encode("ascii", "replace").decode("ascii")


def _put(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.45, colour=(40, 40, 40), thick: int = 1) -> None:
    cv2.putText(img, _ascii(text), (int(x), int(y)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def _text_width(text: str, scale: float = 0.45, thick: int = 1) -> int:
    return cv2.getTextSize(_ascii(text), cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0]


def _nice_max(value: float) -> float:
    for nice in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0):
        if value <= nice:
            return nice
    return 1.0


def _spread(n: float, k: int) -> np.ndarray:
    """n frames over k columns as whole numbers that add up to n, evenly: with fewer frames than columns, every few columns."""
    edges = (np.arange(k + 1) * int(n)) // k
    return np.diff(edges).astype(np.float64)


def bins(rows: np.ndarray, start: float, end: float, columns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per column: highest fraction, mean fraction of the judged frames, moving frames, frames (0 where none), and
    whether any record covers it.

    `rows` are `samples()`; a summary spanning several columns covers them all and is spread over them evenly, so a
    column of a summary with fewer frames than columns may hold no whole frame and still be drawn."""
    peak = np.zeros(columns)
    total = np.zeros(columns)
    moving = np.zeros(columns)
    count = np.zeros(columns)
    judged = np.zeros(columns)
    covered = np.zeros(columns, bool)
    if len(rows):
        scale = columns / (end - start)
        first = np.clip(((rows[:, 0] - start) * scale).astype(np.int64), 0, columns - 1)
        last = np.clip(((rows[:, 1] - start) * scale).astype(np.int64), 0, columns - 1)
        one = first == last
        col = first[one]
        np.maximum.at(peak, col, rows[one, 2])
        np.add.at(total, col, rows[one, 3])
        np.add.at(moving, col, rows[one, 4])
        np.add.at(count, col, rows[one, 5])
        np.add.at(judged, col, rows[one, 6])
        covered[col] = True
        for i in np.flatnonzero(~one):
            span = slice(int(first[i]), int(last[i]) + 1)
            k = span.stop - span.start
            covered[span] = True
            peak[span] = np.maximum(peak[span], rows[i, 2])
            total[span] += rows[i, 3] / k
            moving[span] += _spread(rows[i, 4], k)
            count[span] += _spread(rows[i, 5], k)
            judged[span] += rows[i, 6] / k
    mean = np.divide(total, judged, out=np.zeros(columns), where=judged > 0)
    return peak, mean, moving, count, covered


def render_png(reports: list[RegionReport], start: float, end: float, clock: Clock, width: int, title: str, notes: list[str]) -> np.ndarray:
    left, right = 70, 20
    plot_w = max(200, width - left - right)
    panel_h, header_h, footer_h = 230, 50, 40 + 18 * len(notes)
    panels = max(1, len(reports))
    img = np.full((header_h + panels * panel_h + footer_h, left + plot_w + right, 3), 255, np.uint8)
    _put(img, title, 10, 22, 0.6, (0, 0, 0), 1)
    _put(img, f"{clock.text(start)} to {clock.text(end)} ({clock.zone(start)}), {_duration(end - start)}", 10, 42, 0.45, (90, 90, 90))

    def x_of(ts: float) -> int:
        return left + int(round((ts - start) / (end - start) * plot_w))

    ticks, fmt = clock.ticks(start, end, max(2, plot_w // 110))
    if not reports:
        y = header_h + panel_h // 2
        _put(img, "no motion records in this period", left, y, 0.7, (0, 0, 160), 1)
    for i, rep in enumerate(reports):
        top = header_h + i * panel_h
        band_top, band_h = top + 28, 18
        plot_top, plot_h = top + 56, panel_h - 100
        plot_bottom = plot_top + plot_h
        who = rep.name if rep.machine_id is None else f"{rep.name} (machine {rep.machine_id})"
        longest = max((p.duration for p in rep.idle), default=0.0)
        _put(
            img,
            f"{who}: RUNNING {_percent(rep.utilisation)} of the known time; {len(rep.idle)} idle periods"
            + (f", longest {_duration(longest)}" if rep.idle else ""),
            left,
            top + 20,
            0.5,
            (0, 0, 0),
            1,
        )
        for a, b, state in rep.segments:
            x0, x1 = x_of(a), max(x_of(a) + 1, x_of(b))
            cv2.rectangle(img, (x0, band_top), (x1 - 1, band_top + band_h), COLOURS[state], -1)
        cv2.rectangle(img, (left, band_top), (left + plot_w, band_top + band_h), (120, 120, 120), 1)
        # The fraction plot.
        peak, mean, moving, _count, covered = bins(rep.samples, start, end, plot_w)
        top_value = float(np.percentile(rep.samples[:, 2], 99.5)) if len(rep.samples) else 0.0
        ymax = _nice_max(max(top_value, 0.005))
        cv2.rectangle(img, (left, plot_top), (left + plot_w, plot_bottom), (245, 245, 245), -1)
        for frac in (0.25, 0.5, 0.75, 1.0):
            y = plot_bottom - int(round(frac * plot_h))
            cv2.line(img, (left, y), (left + plot_w, y), (225, 225, 225), 1)
            _put(img, f"{frac * ymax:.3g}", 8, y + 4, 0.38, (90, 90, 90))
        for t in ticks:
            x = x_of(t)
            cv2.line(img, (x, plot_top), (x, plot_bottom), (225, 225, 225), 1)
        scaled_peak = np.minimum(peak / ymax, 1.0) * plot_h
        scaled_mean = np.minimum(mean / ymax, 1.0) * plot_h
        for c in np.flatnonzero(covered):
            x = left + int(c)
            colour = (140, 200, 140) if moving[c] > 0 else (200, 200, 200)
            cv2.line(img, (x, plot_bottom), (x, plot_bottom - int(round(scaled_peak[c]))), colour, 1)
        pts = [(left + int(c), plot_bottom - int(round(scaled_mean[c]))) for c in np.flatnonzero(covered)]
        if len(pts) > 1:
            # Break the line where there are no frames rather than bridging a gap.
            run = [pts[0]]
            for p in pts[1:]:
                if p[0] - run[-1][0] > 2:
                    if len(run) > 1:
                        cv2.polylines(img, [np.array(run, np.int32)], False, (60, 90, 30), 1, cv2.LINE_AA)
                    run = []
                run.append(p)
            if len(run) > 1:
                cv2.polylines(img, [np.array(run, np.int32)], False, (60, 90, 30), 1, cv2.LINE_AA)
        if not len(rep.samples):
            _put(
                img,
                "no frame records or summaries in this period (rotated away?); states from the state-change log",
                left + 8,
                plot_top + 20,
                0.42,
                (90, 90, 90),
            )
        cv2.rectangle(img, (left, plot_top), (left + plot_w, plot_bottom), (120, 120, 120), 1)
        _put(img, "changed fraction", left + 4, plot_top + 14, 0.38, (90, 90, 90))
        last_right = -1
        for t in ticks:
            label = clock.dt(t).strftime(fmt)
            w = _text_width(label, 0.4)
            x = x_of(t) - w // 2
            if x <= last_right + 6 or x < 0 or x + w > img.shape[1]:
                continue
            cv2.line(img, (x_of(t), plot_bottom), (x_of(t), plot_bottom + 4), (90, 90, 90), 1)
            _put(img, label, x, plot_bottom + 18, 0.4, (60, 60, 60))
            last_right = x + w
    y = header_h + panels * panel_h + 16
    x = left
    for state in (RUNNING, STOPPED, DEEP_SLEEP, UNKNOWN, NO_DATA):
        cv2.rectangle(img, (x, y - 10), (x + 14, y + 2), COLOURS[state], -1)
        cv2.rectangle(img, (x, y - 10), (x + 14, y + 2), (120, 120, 120), 1)
        _put(img, state, x + 20, y, 0.42)
        x += 40 + _text_width(state, 0.42)
    _put(img, "bars: highest fraction per pixel column (green: a frame counted as moving); line: mean", x + 10, y, 0.38, (90, 90, 90))
    for k, note in enumerate(notes):
        _put(img, note, left, y + 20 + 18 * k, 0.4, (0, 0, 160))
    return img


# --- HTML -----------------------------------------------------------------------------------------


def _css(state: str) -> str:
    b, g, r = COLOURS[state]
    return f"#{r:02x}{g:02x}{b:02x}"


_HTML_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
  body {{ font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }}
  h1 {{ font-size: 1.4em; margin-bottom: .2em; }}
  h2 {{ font-size: 1.15em; margin-top: 2em; }}
  .sub {{ color: #666; }}
  .warn {{ color: #a00; }}
  table {{ border-collapse: collapse; margin: .5em 0; }}
  th, td {{ padding: .25em .7em; border-bottom: 1px solid #ddd; text-align: left; }}
  td.num, th.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
  .chart {{ position: relative; max-width: 1100px; }}
  .chart svg {{ width: 100%; height: auto; display: block; }}
  .readout {{ min-height: 1.4em; color: #333; font-variant-numeric: tabular-nums; }}
  .key span {{ display: inline-block; width: .9em; height: .9em; margin: 0 .3em 0 1em; vertical-align: -.1em; border: 1px solid #888; }}
  details {{ margin: .5em 0; }}
</style>
</head>
<body>
"""

_HTML_SCRIPT = """<script>
"use strict";
// Hover readout: the time, the changed fraction of that column and the state under the pointer.
for (const chart of document.querySelectorAll(".chart")) {
  const data = JSON.parse(chart.querySelector("script[type='application/json']").textContent);
  const svg = chart.querySelector("svg");
  const cursor = svg.querySelector(".cursor");
  const readout = chart.querySelector(".readout");
  const pad = (n) => String(n).padStart(2, "0");
  const when = (ts) => {
    const d = new Date((ts + data.offset) * 1000);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
  };
  svg.addEventListener("mousemove", (ev) => {
    const box = svg.getBoundingClientRect();
    const x = (ev.clientX - box.left) / box.width * data.width;
    if (x < data.left || x > data.left + data.plot) { return; }
    const ts = data.start + (x - data.left) / data.plot * (data.end - data.start);
    const col = Math.min(data.plot - 1, Math.max(0, Math.floor(x - data.left)));
    let state = "";
    for (const [a, b, s] of data.segments) { if (ts >= a && ts <= b) { state = s; break; } }
    // A column of a summary with fewer frames than columns holds no whole frame but is covered all the same.
    const frac = data.covered[col] ? "highest fraction " + data.peak[col].toFixed(4) + ", mean " + data.mean[col].toFixed(4) +
      (data.count[col] ? " over " + data.count[col] + " frames" : " (part of a summary)") : "no frames";
    readout.textContent = when(ts) + "  " + state + "  " + frac;
    cursor.setAttribute("x1", x); cursor.setAttribute("x2", x); cursor.style.display = "";
  });
  svg.addEventListener("mouseleave", () => { cursor.style.display = "none"; readout.textContent = ""; });
}
</script>
"""


def _svg(rep: RegionReport, start: float, end: float, clock: Clock, chart_id: str) -> str:
    width, left, plot = 1100, 60, 1020
    band_y, band_h, plot_y, plot_h = 6, 18, 32, 130
    height = plot_y + plot_h + 24

    def x_of(ts: float) -> float:
        return left + (ts - start) / (end - start) * plot

    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="state and changed fraction of {html.escape(rep.name)}">']
    for a, b, state in rep.segments:
        x0, x1 = x_of(a), x_of(b)
        tip = f"{state}: {clock.text(a)} to {clock.text(b)} ({_duration(b - a)})"
        parts.append(
            f'<rect x="{x0:.2f}" y="{band_y}" width="{max(x1 - x0, 0.5):.2f}" height="{band_h}" fill="{_css(state)}">'
            f"<title>{html.escape(tip)}</title></rect>"
        )
    parts.append(f'<rect x="{left}" y="{plot_y}" width="{plot}" height="{plot_h}" fill="#f6f6f6" stroke="#999"/>')
    peak, mean, _moving, count, covered_columns = bins(rep.samples, start, end, plot)
    top_value = float(np.percentile(rep.samples[:, 2], 99.5)) if len(rep.samples) else 0.0
    ymax = _nice_max(max(top_value, 0.005))
    for frac in (0.5, 1.0):
        y = plot_y + plot_h - frac * plot_h
        parts.append(f'<line x1="{left}" x2="{left + plot}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#666">{frac * ymax:.3g}</text>')
    ticks, fmt = clock.ticks(start, end, 10)
    for t in ticks:
        x = x_of(t)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{plot_y}" y2="{plot_y + plot_h + 4}" stroke="#ddd"/>')
        label = html.escape(clock.dt(t).strftime(fmt))
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" font-size="11" text-anchor="middle" fill="#444">{label}</text>')
    covered = np.flatnonzero(covered_columns)
    bars = []
    for c in covered:
        h = min(peak[c] / ymax, 1.0) * plot_h
        if h > 0:
            bars.append(f"M{left + c + 0.5:.1f} {plot_y + plot_h:.1f}v{-h:.1f}")
    if bars:
        parts.append(f'<path d="{"".join(bars)}" stroke="#9ccf9c" stroke-width="1"/>')
    if len(covered) > 1:
        runs, run = [], [covered[0]]
        for c in covered[1:]:
            if c - run[-1] > 2:
                runs.append(run)
                run = []
            run.append(c)
        runs.append(run)
        for run in (r for r in runs if len(r) > 1):
            pts = " ".join(f"{left + c + 0.5:.1f},{plot_y + plot_h - min(mean[c] / ymax, 1.0) * plot_h:.1f}" for c in run)
            parts.append(f'<polyline points="{pts}" fill="none" stroke="#2e6b1e" stroke-width="1"/>')
    parts.append(
        f'<line class="cursor" x1="0" x2="0" y1="{band_y}" y2="{plot_y + plot_h}" stroke="#000" stroke-dasharray="3 2" '
        'style="display:none"/>'
    )
    parts.append("</svg>")
    offset = clock.dt(start).utcoffset()
    data = {
        "start": start,
        "end": end,
        "width": width,
        "left": left,
        "plot": plot,
        "offset": offset.total_seconds() if offset else 0,
        "segments": [[round(a, 3), round(b, 3), s] for a, b, s in rep.segments],
        "peak": [round(float(v), 4) for v in peak],
        "mean": [round(float(v), 4) for v in mean],
        "count": [int(v) for v in count],
        "covered": [int(v) for v in covered_columns],
    }
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (
        f'<div class="chart" id="{chart_id}">'
        + "".join(parts)
        + f'<div class="readout"></div><script type="application/json">{blob}</script></div>'
    )


def render_html(reports: list[RegionReport], start: float, end: float, clock: Clock, title: str, notes: list[str]) -> str:
    e = html.escape
    out = [_HTML_HEAD.format(title=e(title)), f"<h1>{e(title)}</h1>"]
    out.append(
        f'<p class="sub">{e(clock.text(start))} to {e(clock.text(end))} ({e(clock.zone(start))}), '
        f"{e(_duration(end - start))}. Generated {e(clock.text(dt.datetime.now().timestamp()))}.</p>"
    )
    for note in notes:
        out.append(f'<p class="warn">{e(note)}</p>')
    if not reports:
        out.append("<p>No motion records in this period.</p>")
    else:
        out.append("<h2>Utilisation</h2>")
        out.append(
            '<p class="sub">Utilisation: share of the time RUNNING among the time RUNNING, STOPPED or DEEP_SLEEP '
            "(UNKNOWN after a start and NO DATA left out).</p>"
        )
        out.append(
            "<table><tr><th>region</th><th>machine</th><th class=num>utilisation</th><th class=num>running</th>"
            "<th class=num>stopped</th><th class=num>deep sleep</th><th class=num>unknown / no data</th>"
            "<th class=num>idle periods</th><th class=num>longest idle</th><th class=num>state changes</th></tr>"
        )
        for rep in reports:
            longest = max((p.duration for p in rep.idle), default=None)
            other = rep.totals.get(UNKNOWN, 0.0) + rep.totals.get(NO_DATA, 0.0)
            out.append(
                f'<tr><td><a href="#r{reports.index(rep)}">{e(rep.name)}</a></td>'
                f"<td>{e('' if rep.machine_id is None else str(rep.machine_id))}</td>"
                f'<td class="num util" data-region="{e(rep.name)}">{_percent(rep.utilisation)}</td>'
                f"<td class=num>{_duration(rep.totals.get(RUNNING, 0.0))}</td><td class=num>{_duration(rep.totals.get(STOPPED, 0.0))}</td>"
                f"<td class=num>{_duration(rep.totals.get(DEEP_SLEEP, 0.0))}</td><td class=num>{_duration(other)}</td>"
                f"<td class=num>{len(rep.idle)}</td><td class=num>{'-' if longest is None else _duration(longest)}</td>"
                f"<td class=num>{len(rep.changes)}</td></tr>"
            )
        out.append("</table>")
        key = "".join(f'<span style="background:{_css(s)}"></span>{e(s)}' for s in (RUNNING, STOPPED, DEEP_SLEEP, UNKNOWN, NO_DATA))
        out.append(f'<p class="key">{key}</p>')
    for i, rep in enumerate(reports):
        who = rep.name if rep.machine_id is None else f"{rep.name} (machine {rep.machine_id})"
        out.append(f'<h2 id="r{i}">{e(who)}: utilisation {_percent(rep.utilisation)}</h2>')
        out.append(_svg(rep, start, end, clock, f"chart{i}"))
        if not len(rep.samples):
            out.append(
                '<p class="sub">No frame records or summaries in this period (rotated away?): the states come from the '
                "state-change log.</p>"
            )
        out.append(f"<h3>Idle periods ({len(rep.idle)})</h3>")
        if rep.idle:
            out.append("<table><tr><th>start</th><th>end</th><th class=num>duration</th><th>deep sleep</th></tr>")
            for p in rep.idle:
                begin = clock.text(p.start) + (" (or earlier)" if p.began_before else "")
                finish = clock.text(p.end) + (" (still idle)" if p.ongoing else "")
                out.append(
                    f'<tr class="idle"><td>{e(begin)}</td><td>{e(finish)}</td><td class="num dur">{_duration(p.duration)}</td>'
                    f"<td>{'yes' if p.deep else 'no'}</td></tr>"
                )
            out.append("</table>")
        else:
            out.append("<p>None.</p>")
        out.append(f"<details{' open' if len(rep.changes) <= 50 else ''}><summary>State changes ({len(rep.changes)})</summary>")
        if rep.changes:
            out.append("<table><tr><th>time</th><th>change</th><th class=num>after</th><th class=num>idle</th></tr>")
            for c in rep.changes:
                after = "" if c.duration_s is None else _duration(c.duration_s)
                idle = "" if c.idle_s is None else _duration(c.idle_s)
                out.append(
                    f'<tr class="change"><td>{e(clock.text(c.ts))}</td><td>{e(c.old)} &rarr; {e(c.new)}</td>'
                    f"<td class=num>{after}</td><td class=num>{idle}</td></tr>"
                )
            out.append("</table>")
        out.append("</details>")
    out.append(_HTML_SCRIPT)
    out.append("</body>\n</html>\n")
    return "\n".join(out)


# --- the run --------------------------------------------------------------------------------------


def summary(reports: list[RegionReport], clock: Clock) -> str:
    lines = []
    for rep in reports:
        lines.append(
            f"{rep.name}: utilisation {_percent(rep.utilisation)} (running {_duration(rep.totals.get(RUNNING, 0.0))}, "
            f"idle {_duration(sum(p.duration for p in rep.idle))} in {len(rep.idle)} periods, {len(rep.changes)} state changes)"
        )
        for p in rep.idle:
            lines.append(
                f"  idle {clock.text(p.start)}{' (or earlier)' if p.began_before else ''} to {clock.text(p.end)}"
                f"{' (still idle)' if p.ongoing else ''}: {_duration(p.duration)}{', deep sleep' if p.deep else ''}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Turn picamd's motion logs into a PNG plot and a self-contained HTML chart "
        "(utilisation per machine, idle periods, state changes).",
        epilog="example: chart.py /var/lib/picamd/logs --since 2024-05-01T06:00 --png day.png --html day.html",
    )
    ap.add_argument("log_dir", metavar="LOG_DIR", help="the daemon's motion.log_dir")
    ap.add_argument("--region", action="append", metavar="NAME", help="only this region (repeat for more)")
    ap.add_argument("--since", metavar="ISO", help="start of the period (default: the first record)")
    ap.add_argument("--until", metavar="ISO", help="end of the period (default: the last record)")
    ap.add_argument("--png", metavar="FILE", help="write the PNG plot here")
    ap.add_argument("--html", metavar="FILE", help="write the HTML chart here")
    ap.add_argument("--width", type=int, default=1600, help="PNG width in pixels (default 1600)")
    ap.add_argument(
        "--gap-s",
        type=float,
        default=60.0,
        help="a gap between records (frames, or summaries from their first to their last frame) longer than this is NO DATA (default 60)",
    )
    ap.add_argument("--utc", action="store_true", help="show and read times in UTC instead of the local time zone")
    ap.add_argument("--title", default="picamd motion", help="title of the charts")
    args = ap.parse_args(argv)
    clock = Clock(args.utc)
    try:
        since = None if args.since is None else clock.parse(args.since, "--since")
        until = None if args.until is None else clock.parse(args.until, "--until")
    except argparse.ArgumentTypeError as exc:
        ap.error(str(exc))
    if since is not None and until is not None and until <= since:
        ap.error("--until must be after --since")
    if not 200 <= args.width <= 20000:
        ap.error("--width must be 200..20000")
    if not (math.isfinite(args.gap_s) and args.gap_s > 0):
        ap.error("--gap-s must be positive")
    try:
        logs = read_logs(Path(args.log_dir), set(args.region) if args.region else None)
        notes = []
        if logs.skipped:
            detail = ", ".join(f"{name}: {n}" for name, n in sorted(logs.bad_lines.items()))
            lines = "line that is not a valid record" if logs.skipped == 1 else "lines that are not valid records"
            notes.append(f"skipped {logs.skipped} {lines} ({detail})")
        if args.region:
            found = set(logs.frames) | set(logs.summaries) | {c.region for c in logs.changes}
            missing = sorted(set(args.region) - found)
            if missing:
                notes.append(f"no records of {', '.join(missing)}")
        span = period(logs, since, until)
        if span is None:
            reports: list[RegionReport] = []
            now = dt.datetime.now().timestamp()
            start, end = since if since is not None else now - 3600, until if until is not None else now
            if end <= start:
                start = end - 3600
        else:
            start, end = span
            reports = build_reports(logs, start, end, args.gap_s)
        for note in notes:
            print(f"chart: {note}", file=sys.stderr)
        if not reports:
            print(f"chart: no motion records in {args.log_dir} for this period", file=sys.stderr)
        else:
            print(summary(reports, clock))
        if args.png:
            img = render_png(reports, start, end, clock, args.width, args.title, notes)
            ok, encoded = cv2.imencode(".png", img)
            if not ok:
                raise ChartError("OpenCV could not encode the PNG")
            _write(args.png, encoded.tobytes())
            print(f"PNG written to {args.png}")
        if args.html:
            _write(args.html, render_html(reports, start, end, clock, args.title, notes).encode("utf-8"))
            print(f"HTML written to {args.html}")
    except ChartError as exc:
        print(f"chart: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _write(path: str, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise ChartError(f"cannot write {path}: {exc.strerror or exc}") from None


if __name__ == "__main__":
    sys.exit(main())
