"""A mailbox for aiosmtpd's Controller: keeps every envelope that arrives, so a test can wait for its mail."""

from __future__ import annotations

import threading


class Mailbox:
    def __init__(self) -> None:
        self.messages: list = []
        self.cond = threading.Condition()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's naming)
        with self.cond:
            self.messages.append(envelope)
            self.cond.notify_all()
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 30) -> list:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.messages) >= count, timeout), f"expected {count} mail(s), got {len(self.messages)}"
            return list(self.messages)
