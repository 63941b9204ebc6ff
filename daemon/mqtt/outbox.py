"""`Outbox`: the messages on their way to the broker, bounded, and the retained state to publish again.

Two kinds of message, both behind one lock (the MQTT worker and the command
worker put, the MQTT worker takes):
- a message that is not retained (an event, a detection, the health summary,
  a command reply) waits in a FIFO of at most `size()` messages: when it is
  full the oldest is dropped and counted. While the broker is away this is
  what picamd holds for it;
- a retained message (availability, a state, a discovery config, the
  snapshot) carries a state: only the newest value of each topic is kept,
  and it never takes a place in the FIFO, so a state that changes often
  cannot push events out. A topic is marked unsent when it changes; on
  every (re)connect and whenever Home Assistant announces itself `resync`
  marks them all unsent again (availability first), ahead of the FIFO.
Apart from the resync, messages leave in the order they were made (a state
and the events around it stay in order); a retained topic that changes
again before its turn is sent once, with its newest value, where its last
change put it. A message with an empty payload on a retained topic deletes
that topic on the broker (a region that was removed); it is kept, so a
broker that restarted with an old store hears of it again.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1
    correlation: bytes | None = None  # MQTT 5 correlation data of a command reply


class Outbox:
    def __init__(self, size: Callable[[], int]) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._seq = itertools.count(1)  # the order messages were made in
        self._front = 0  # decreasing: the order of what goes ahead of everything (resync, put back)
        self._queue: collections.deque[tuple[int, Message]] = collections.deque()
        self._state: dict[str, Message] = {}
        self._unsent: collections.OrderedDict[str, int] = collections.OrderedDict()  # retained topic -> its place in line
        self.dropped = 0
        self.queued_total = 0
        self.peak = 0

    def put(self, message: Message) -> None:
        with self._lock:
            seq = next(self._seq)
            self.queued_total += 1
            if message.retain:
                self._state[message.topic] = message
                self._unsent.pop(message.topic, None)
                self._unsent[message.topic] = seq
                return
            limit = max(1, int(self._size()))
            while len(self._queue) >= limit:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((seq, message))
            self.peak = max(self.peak, len(self._queue))

    def retained(self, topic: str) -> Message | None:
        with self._lock:
            return self._state.get(topic)

    def resync(self, first: str | None = None) -> int:
        """Mark every retained topic unsent, ahead of the FIFO, `first`'s topic at the very front. Returns how many."""
        with self._lock:
            topics = sorted(self._state, key=lambda t: t != first)
            self._unsent.clear()
            base = self._front - len(topics)
            self._front = base - 1
            for i, topic in enumerate(topics):
                self._unsent[topic] = base + i
            return len(topics)

    def take(self) -> Message | None:
        """The next message to publish, or None."""
        with self._lock:
            state_seq = next(iter(self._unsent.values())) if self._unsent else None
            if self._queue and (state_seq is None or self._queue[0][0] < state_seq):
                return self._queue.popleft()[1]
            if state_seq is not None:
                topic, _ = self._unsent.popitem(last=False)
                return self._state[topic]
            return None

    def put_back(self, message: Message) -> None:
        """A message taken but not handed to the client: first in line again (unless a newer value of its topic waits)."""
        with self._lock:
            self._front -= 1
            if message.retain:
                if self._state.get(message.topic) is message and message.topic not in self._unsent:
                    self._unsent[message.topic] = self._front
                    self._unsent.move_to_end(message.topic, last=False)
                return
            self._queue.appendleft((self._front, message))

    def backlog(self) -> int:
        """Messages waiting in the FIFO (retained states not counted)."""
        with self._lock:
            return len(self._queue)

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue) + len(self._unsent)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "held": len(self._queue),
                "held_peak": self.peak,
                "dropped": self.dropped,
                "unsent_states": len(self._unsent),
                "retained_topics": len(self._state),
                "queued_total": self.queued_total,
            }
