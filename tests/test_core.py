"""The shared primitives: the `Latest` hand-off, the `Worker` thread, `RepeatedLog` and `ComponentStatus`."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from daemon_proc import wait_for

from daemon.core.latest import HandoffFailed, Latest
from daemon.core.repeat import RepeatedLog
from daemon.core.status import ComponentStatus
from daemon.core.worker import Worker

pytestmark = pytest.mark.timeout(30)


# -- Latest


def test_latest_hands_over_the_newest_value_and_skips_the_rest():
    slot: Latest[str] = Latest()
    assert slot.get() is None and slot.version == 0
    assert slot.wait_newer(0, 0.01) is None
    for text in ("a", "b", "c"):
        slot.put(text)
    assert slot.get() == (3, "c")
    assert slot.wait_newer(0, 0.01) == (3, "c")  # a slow reader gets the newest, not a backlog
    assert slot.wait_newer(3, 0.01) is None  # nothing newer than what it has


def test_latest_wakes_a_waiting_reader_at_once():
    slot: Latest[int] = Latest()
    got = []
    t = threading.Thread(target=lambda: got.append(slot.wait_newer(0, 10.0)))
    t.start()
    time.sleep(0.05)
    slot.put(42, version=7)
    t.join(2.0)
    assert got == [(7, 42)]


def test_latest_with_a_restarted_counter_does_not_strand_readers():
    slot: Latest[str] = Latest()
    slot.put("old", version=500)
    slot.put("new", version=1)  # the producer was rebuilt and counts from 1 again
    assert slot.wait_newer(500, 0.01) == (1, "new")


def test_latest_fail_wakes_readers_with_the_reason_and_loses_no_value():
    slot: Latest[str] = Latest()
    slot.put("last frame")
    slot.fail("camera unplugged")
    assert slot.wait_newer(0, 0.01) == (1, "last frame")  # what was put before the failure still arrives
    with pytest.raises(HandoffFailed, match="camera unplugged"):
        slot.wait_newer(1, 5.0)
    slot.put("back")
    assert slot.wait_newer(1, 0.01) == (2, "back")  # the next put clears the failure
    slot.clear()
    assert slot.get() is None and slot.wait_newer(2, 0.01) is None


# -- Worker


def test_worker_names_its_thread_steps_until_stopped_and_stops_promptly():
    seen = []
    worker = Worker("probe", lambda: seen.append(threading.current_thread().name), interval_s=0.01)
    worker.start()
    assert wait_for(lambda: len(seen) >= 3, 5.0)
    assert worker.alive and set(seen) == {"picamd-probe"}
    started = time.monotonic()
    assert worker.stop() is True
    assert time.monotonic() - started < 1.0 and not worker.alive


def test_worker_counts_a_failing_step_logs_it_once_and_keeps_going(caplog):
    status = ComponentStatus("probe")
    calls = []

    def step() -> None:
        calls.append(1)
        raise OSError("disk on fire")

    worker = Worker("probe", step, status=status, error_pause_s=0.005)
    with caplog.at_level(logging.ERROR, logger="picamd"):
        worker.start()
        assert wait_for(lambda: len(calls) >= 20, 5.0)
        worker.stop()
    assert worker.errors == len(calls) and status.errors == len(calls)
    assert status.last_error is not None and "disk on fire" in status.last_error
    lines = [r for r in caplog.records if "disk on fire" in r.getMessage()]
    assert len(lines) == 1, "a repeated error is one log line, then a count"


def test_worker_stop_wakes_a_blocked_step_through_on_stop():
    wake = threading.Event()

    def sleep() -> None:
        wake.wait(60)

    worker = Worker("sleeper", sleep, on_stop=wake.set)
    worker.start()
    time.sleep(0.05)
    started = time.monotonic()
    assert worker.stop()
    assert time.monotonic() - started < 1.0


def test_worker_stop_is_bounded_when_a_step_hangs():
    release = threading.Event()

    def hang() -> None:
        release.wait(30)

    worker = Worker("stuck", hang, join_timeout_s=0.2, interval_s=0.01)
    worker.start()
    time.sleep(0.05)
    started = time.monotonic()
    assert worker.stop() is False  # it says so instead of hanging the shutdown
    assert time.monotonic() - started < 1.0
    old = threading.enumerate()
    worker.start()  # a new run gets its own stop event: the stuck one still ends when released
    release.set()
    assert wait_for(lambda: not any(t.name == "picamd-stuck" and t in old and t.is_alive() for t in threading.enumerate()), 5.0)
    assert worker.alive
    worker.stop()


def test_worker_with_repeat_off_runs_its_body_once():
    calls = []
    worker = Worker("once", lambda: calls.append(1), repeat=False)
    worker.start()
    assert wait_for(lambda: not worker.alive, 5.0)
    assert calls == [1]


# -- RepeatedLog


def test_repeated_log_logs_the_first_then_counts(caplog):
    log = logging.getLogger("picamd.test.repeat")
    rl = RepeatedLog(log, every_s=0.2)
    with caplog.at_level(logging.ERROR, logger="picamd.test.repeat"):
        assert rl.error("disk", "disk full: %s", "/captures") is True
        for _ in range(300):
            assert rl.error("disk", "disk full: %s", "/captures") is False
        assert rl.error("other", "something else") is True  # another kind is not held back
        assert rl.held("disk") == 300
        time.sleep(0.25)
        assert rl.error("disk", "disk full: %s", "/captures") is True
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "disk full: /captures"
    assert messages[1] == "something else"
    assert messages[2].startswith("disk full: /captures (and 300 more like it in the last")
    assert len(messages) == 3


def test_repeated_log_keys_are_bounded():
    rl = RepeatedLog(logging.getLogger("picamd.test.repeat2"), every_s=60, max_keys=8)
    for i in range(1000):  # an attacker varying the message must not grow the table
        rl.error(f"junk {i}", "junk %d", i)
    assert len(rl._last) <= 8


def test_component_status_rate_limits_its_error_log(caplog):
    status = ComponentStatus("export")
    with caplog.at_level(logging.ERROR, logger="picamd.export"):
        for _ in range(500):
            status.error("save failed", OSError(28, "No space left on device"))
    assert status.errors == 500
    assert len([r for r in caplog.records if "save failed" in r.getMessage()]) == 1


# -- ComponentStatus


def test_starting_is_not_ok_but_no_fault_in_the_log_and_a_real_failure_still_warns(caplog):
    status = ComponentStatus("probe")
    with caplog.at_level(logging.INFO, logger="picamd.probe"):
        status.starting("connecting to the broker 127.0.0.1:1883")
        assert not status.ok and status.state == "starting (connecting to the broker 127.0.0.1:1883)"
        status.recover()
        assert status.ok and status.state == "ok"
        quiet = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert quiet == [(logging.INFO, "probe: connecting to the broker 127.0.0.1:1883")]  # no "recovered after 0.0 s"
        caplog.clear()
        status.starting("connecting to the broker 127.0.0.1:1883")
        status.degrade("cannot connect to the broker 127.0.0.1:1883")
        assert status.state == "degraded (cannot connect to the broker 127.0.0.1:1883)"
        status.recover()
    assert [(r.levelno, r.getMessage().split(" after ")[0]) for r in caplog.records] == [
        (logging.INFO, "probe: connecting to the broker 127.0.0.1:1883"),
        (logging.WARNING, "probe degraded: cannot connect to the broker 127.0.0.1:1883"),
        (logging.INFO, "probe recovered"),
    ]
