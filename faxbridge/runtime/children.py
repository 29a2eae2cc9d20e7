"""What the listener's child processes (the workers process, the parse processes)
have in common: how long to wait before starting one again after it ended
unexpectedly, and how to stop one."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("faxbridge")


class RestartDelay:
    """Delays before restarting a child that ended unexpectedly: `first`, doubling up
    to `cap`; back to `first` once a child had run `reset` seconds. A child that
    cannot start or keeps crashing must not be respawned in a tight loop; one that
    crashes rarely must not wait long."""

    def __init__(self, first: float, cap: float, reset: float) -> None:
        self.first, self.cap, self.reset = first, cap, reset
        self._next = first

    def after(self, ran: float) -> float:
        """The delay before the next start, for a child that ran `ran` seconds (0: it
        could not be started)."""
        if ran >= self.reset:
            self._next = self.first
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay


async def stop_child(proc: asyncio.subprocess.Process, seconds: float, what: str) -> None:
    """End of its stdin tells a child to stop (after the item in hand); it is killed
    only if it takes longer than `seconds`."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), seconds)
    except TimeoutError:
        log.error("%s (pid %d) did not stop; killing it", what, proc.pid)
        proc.kill()
        await proc.wait()
