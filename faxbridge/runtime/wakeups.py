"""Wake-up events: a producer that commits new work wakes the stage that takes it,
instead of that stage finding it at its next idle poll. Accepted jobs are also
counted, so that the submitter knows when mail is arriving in a burst."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# How many accepts per second the pace is counted up to (see accept_rate).
PACE_WINDOW = 1.0
PACE_MAX = 256


@dataclass
class Wakeups:
    submit: asyncio.Event = field(default_factory=asyncio.Event)   # jobs queued / released
    mail: asyncio.Event = field(default_factory=asyncio.Event)     # mails queued
    inbound: asyncio.Event = field(default_factory=asyncio.Event)  # faxes stored, mails settled
    # monotonic times of the latest accepted jobs (the listener's pace)
    accepts: deque[float] = field(default_factory=lambda: deque(maxlen=PACE_MAX))
    # (the listener of `serve`) tells the workers process instead of waking a submitter
    on_accept: Callable[[int], None] | None = None

    def accepted(self, count: int = 1, now: float | None = None) -> None:
        """`count` jobs were just accepted (committed): submit them, and note the pace."""
        if self.on_accept is not None:
            self.on_accept(count)  # the workers process submits and counts
            return
        now = time.monotonic() if now is None else now
        self.accepts.extend([now] * min(count, PACE_MAX))
        self.submit.set()

    def accept_rate(self, now: float | None = None) -> int:
        """Jobs accepted within the last PACE_WINDOW seconds (at most PACE_MAX)."""
        now = time.monotonic() if now is None else now
        return sum(1 for t in self.accepts if now - t < PACE_WINDOW)
