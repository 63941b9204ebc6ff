"""Groups of people (DBSCAN over foot points in body heights) and the tracker (ids, dwell, ends, counts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.detect import Detection
from daemon.detect.groups import UNAVAILABLE, GroupFinder, foot_distances
from daemon.detect.tracker import Tracker

ROOT = Path(__file__).resolve().parents[1]


def person(x1: float, y1: float, x2: float, y2: float, score: float = 0.8, label: str = "person") -> Detection:
    return Detection(label, 0 if label == "person" else 41, score, x1, y1, x2, y2)


def standing(cx: float, foot_y: float, height: float, label: str = "person") -> Detection:
    """A person of `height` pixels whose feet are at (cx, foot_y); as wide as 40% of their height."""
    w = 0.4 * height
    return person(cx - w / 2, foot_y - height, cx + w / 2, foot_y, label=label)


# Near the camera: two people 400 px tall, feet 200 px apart (half a body height).
NEAR = [standing(300, 1000, 400), standing(500, 1000, 400)]
# Far away: two people 40 px tall, feet 20 px apart (also half a body height), and a third 60 px (1.5 heights) off.
FAR = [standing(1200, 300, 40), standing(1220, 300, 40), standing(1280, 300, 40)]


# --- groups ----------------------------------------------------------------------------------------------------


def test_foot_distances_are_in_body_heights():
    d = foot_distances(NEAR + FAR)
    assert d[0, 1] == pytest.approx(0.5) and d[2, 3] == pytest.approx(0.5) and d[3, 4] == pytest.approx(1.5)
    assert np.allclose(d, d.T) and np.allclose(np.diag(d), 0)


def test_near_and_far_pairs_group_alike_and_the_far_loner_stays_alone():
    pytest.importorskip("sklearn", reason="groups need scikit-learn")
    finder = GroupFinder(eps=1.0, min_samples=2)
    result = finder.find(NEAR + FAR)
    assert result.available and finder.status == "ok"
    assert result.groups == [[0, 1], [2, 3]]
    assert result.summary() == {"people": 5, "groups": 2, "sizes": [2, 2], "alone": 1}
    assert json.loads(json.dumps(result.to_dict()))["members"] == [[0, 1], [2, 3]]
    # In plain pixels no single eps does both: the near pair is 200 px apart, the far loner only 60 px from its neighbour.
    from sklearn.cluster import DBSCAN

    feet = np.array([d.foot for d in NEAR + FAR])
    for eps in (30, 100, 250):
        labels = DBSCAN(eps=eps, min_samples=2).fit_predict(feet)
        near_grouped = labels[0] >= 0 and labels[0] == labels[1]
        loner_alone = labels[4] < 0
        assert not (near_grouped and loner_alone), eps


def test_groups_count_only_people_and_keep_indices_into_the_detections():
    pytest.importorskip("sklearn", reason="groups need scikit-learn")
    cup = standing(310, 1000, 400, label="cup")
    mixed = [cup, NEAR[0], FAR[2], NEAR[1]]
    result = GroupFinder(eps=1.0).find(mixed)
    assert result.people == 3 and result.groups == [[1, 3]]
    assert GroupFinder(eps=1.0, min_samples=3).find(NEAR + FAR).groups == []
    assert GroupFinder(eps=2.0, min_samples=3).find(NEAR + FAR).groups == [[2, 3, 4]]


def test_bad_group_parameters():
    with pytest.raises(ValueError, match="eps must be > 0"):
        GroupFinder(eps=0)
    with pytest.raises(ValueError, match="min_samples must be at least 2"):
        GroupFinder(min_samples=1)


def run_python(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


PEOPLE = "[Detection('person', 0, 0.9, 0, 0, 40, 100), Detection('person', 0, 0.9, 30, 0, 70, 100)]"


def test_without_scikit_learn_groups_say_why_instead_of_failing():
    # `sys.modules[name] = None` makes `import name` fail as if the package were not installed.
    got = run_python(
        "import sys, json; sys.modules['sklearn'] = None; sys.modules['sklearn.cluster'] = None\n"
        "from daemon.detect import Detection\nfrom daemon.detect.groups import GroupFinder\n"
        f"f = GroupFinder(); r = f.find({PEOPLE})\n"
        "print(json.dumps({'summary': r.summary(), 'available': r.available, 'status': f.status}))"
    )
    assert got == {
        "summary": {"people": 2, "groups": 0, "sizes": [], "alone": 2, "reason": UNAVAILABLE},
        "available": False,
        "status": UNAVAILABLE,
    }
    assert UNAVAILABLE == "groups unavailable: scikit-learn is not installed"


def test_scikit_learn_is_imported_only_when_a_group_is_computed():
    pytest.importorskip("sklearn", reason="groups need scikit-learn")
    got = run_python(
        "import sys, json\nfrom daemon.detect import Detection\nfrom daemon.detect.groups import GroupFinder\n"
        "f = GroupFinder(); one = f.find([Detection('person', 0, 0.9, 0, 0, 40, 100)])\n"
        "before = 'sklearn' in sys.modules; status = f.status\n"
        f"two = f.find({PEOPLE})\n"
        "print(json.dumps({'before': before, 'status_before': status, 'after': 'sklearn' in sys.modules,"
        " 'groups': two.groups, 'status': f.status}))"
    )
    assert got == {"before": False, "status_before": "not loaded", "after": True, "groups": [[0, 1]], "status": "ok"}


# --- tracker ---------------------------------------------------------------------------------------------------


def jitter(d: Detection, rng: np.random.Generator, px: float = 3.0) -> Detection:
    dx, dy = rng.uniform(-px, px, 2)
    return Detection(d.label, d.class_id, float(rng.uniform(0.6, 0.9)), d.x1 + dx, d.y1 + dy, d.x2 + dx, d.y2 + dy)


def test_a_standing_person_is_one_track_and_one_new_event():
    rng = np.random.default_rng(3)
    tracker = Tracker(dwell_s=1.0, max_missed=3)
    alice = standing(300, 900, 400)
    news, ids, counts = [], set(), []
    for k in range(30):  # 6 s at 5 detections a second, with jitter and a dropped detection every 7th frame
        frame = [] if k % 7 == 6 else [jitter(alice, rng)]
        up = tracker.update(frame, now=k * 0.2)
        ids.update(up.ids)
        news += [(k, t.id) for t in up.new]
        assert not up.ended
        if up.count_changed:
            counts.append((k, up.previous_count, up.count))
    assert ids == {1}
    assert news == [(5, 1)]  # confirmed once, when seen for 1.0 s
    assert counts == [(5, 0, 1)]  # and the dropped frames do not make the count flicker


def test_a_new_person_gets_a_new_id_after_dwell_and_leaving_ends_the_track():
    tracker = Tracker(dwell_s=0.5, max_missed=2)
    alice, bob = standing(300, 900, 400), standing(900, 880, 380)
    t = 0.0
    for _ in range(5):
        up = tracker.update([alice], t)
        t += 0.25
    assert up.count == 1 and up.ids == [1]
    events = []
    for _ in range(4):  # Bob walks in
        up = tracker.update([alice, bob], t)
        events.append(([x.id for x in up.new], up.count))
        t += 0.25
    assert up.ids == [1, 2]
    assert events == [([], 1), ([], 1), ([2], 2), ([], 2)]  # Bob is new after 0.5 s, not at first sight
    ended = []
    for _ in range(4):  # Bob leaves: his track ends after more than max_missed updates without him
        up = tracker.update([alice], t)
        ended.append(([x.id for x in up.ended], up.count, up.count_changed))
        t += 0.25
    assert ended == [([], 2, False), ([], 2, False), ([2], 1, True), ([], 1, False)]
    for _ in range(3):  # Alice leaves too: cleared
        up = tracker.update([], t)
        t += 0.25
    assert up.cleared and [x.id for x in up.ended] == [1] and up.count == 0 and tracker.tracks == []
    up = tracker.update([alice], t)
    assert up.ids == [3]  # an id is never reused


def test_a_one_frame_false_detection_never_becomes_an_event():
    tracker = Tracker(dwell_s=0.5, max_missed=1)
    up = tracker.update([standing(100, 500, 200)], 0.0)
    assert up.ids == [1] and not up.new and up.count == 0
    for k in range(1, 4):
        up = tracker.update([], k * 0.25)
        assert not up.new and not up.ended and not up.count_changed
    assert tracker.tracks == []


def test_a_walker_keeps_the_id_when_boxes_stop_overlapping():
    """At a low detection rate consecutive boxes do not overlap; the centre distance in body heights keeps the id."""
    tracker = Tracker(dwell_s=0.0, max_distance=0.5, iou_threshold=0.3)
    ids = set()
    for k in range(10):  # 400 px tall, 160 px wide, 180 px to the right each frame: IoU 0 from frame to frame
        ids.update(tracker.update([standing(200 + 180 * k, 900, 400)], k * 1.0).ids)
    assert ids == {1}
    far = Tracker(dwell_s=0.0, max_distance=0.3)
    seen = set()
    for k in range(3):  # 0.45 heights a step: beyond 0.3, so each frame is someone new
        seen.update(far.update([standing(200 + 180 * k, 900, 400)], k * 1.0).ids)
    assert len(seen) == 3


def test_two_people_side_by_side_keep_their_own_ids():
    tracker = Tracker(dwell_s=0.0)
    a, b = standing(300, 900, 400), standing(420, 900, 400)  # 0.3 heights apart, overlapping boxes
    first = tracker.update([a, b], 0.0).ids
    for k in range(1, 6):
        dx = 4.0 * k
        moved_a = Detection("person", 0, 0.8, a.x1 + dx, a.y1, a.x2 + dx, a.y2)
        moved_b = Detection("person", 0, 0.8, b.x1 - dx, b.y1, b.x2 - dx, b.y2)
        assert tracker.update([moved_b, moved_a], float(k)).ids == [first[1], first[0]]


def test_max_age_and_labels():
    tracker = Tracker(dwell_s=0.0, max_missed=100, max_age_s=10.0)
    alice = standing(300, 900, 400)
    cup = standing(800, 900, 100, label="cup")
    up = tracker.update([cup, alice], 0.0)
    assert up.ids == [0, 1] and up.count == 1  # a cup is not tracked
    up = tracker.update([alice], 5.0)
    assert up.ids == [1]
    up = tracker.update([alice], 20.0)  # not seen for 15 s: the old track ended, this is a new one
    assert [t.id for t in up.ended] == [1] and up.ids == [2] and [t.id for t in up.new] == [2]
    # Without max_age_s, a person standing still through a long gap (no detections while nothing moves) is the same track.
    still = Tracker(dwell_s=0.0)
    still.update([alice], 0.0)
    assert still.update([alice], 600.0).ids == [1]
    assert json.loads(json.dumps(still.tracks[0].to_dict(now=600.0)))["age_s"] == 600.0


def test_tracks_end_by_the_clock_without_an_update():
    # The daemon calls expire() from its worker's own step: a scene gone still runs no inference, so no update comes.
    tracker = Tracker(dwell_s=0.5)
    alice = standing(300, 900, 400)
    tracker.update([alice], 0.0)
    assert [t.id for t in tracker.update([alice], 1.0).new] == [1] and tracker.count == 1
    assert tracker.expire(5.0, 10.0) == [] and tracker.count == 1  # last seen 4 s ago: kept
    ended = tracker.expire(11.5, 10.0)
    assert [t.id for t in ended] == [1] and tracker.count == 0 and tracker.tracks == []
    tracker.update([alice], 20.0)  # seen once, never confirmed: it goes silently
    assert tracker.expire(31.0, 10.0) == [] and tracker.tracks == []
    assert tracker.update([alice], 32.0).ids == [3]  # a new track, never an old id again
    with pytest.raises(ValueError, match="max_age_s"):
        tracker.expire(40.0, -1.0)


def test_bad_tracker_parameters():
    cases: list[tuple[dict[str, Any], str]] = [
        ({"iou_threshold": 0}, "iou_threshold"),
        ({"max_missed": -1}, "max_missed"),
        ({"dwell_s": -1}, "dwell_s"),
        ({"min_hits": 0}, "min_hits"),
        ({"max_age_s": 0}, "max_age_s"),
        ({"max_distance": -1}, "max_distance"),
    ]
    for kwargs, why in cases:
        with pytest.raises(ValueError, match=why):
            Tracker(**kwargs)
