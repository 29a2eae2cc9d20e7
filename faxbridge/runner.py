"""The one shape of every background stage: claim the next items, dispose of each,
record the outcome; wait on a wake-up event between rounds.

A failure of one item never stops a runner: it is logged with the item's
identity, counted, and recorded by `failed()` (e.g. the job held for the admin),
and the runner goes on with the next item. `stop()` lets the item in hand finish
and ends the runner before the next one (README "Shutdown": workers stop between
items); whoever stops it cancels it only if that takes too long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Hashable
from typing import Generic, TypeVar

from faxbridge.aio import wait_event

Item = TypeVar("Item")


class Runner(Generic[Item]):
    name = "runner"
    log = logging.getLogger("faxbridge")
    idle = 1.0             # seconds to wait for the wake-up when there is nothing to do
    concurrency = 1        # items disposed of at once (above 1: each in its own task)
    drain_seconds = 15.0   # how long a stop waits for concurrent items in flight
    # Failures `failed()` reports itself (expected ones: no traceback in the log).
    expected: tuple[type[BaseException], ...] = ()

    def __init__(self, wakeup: asyncio.Event | None = None) -> None:
        self.wakeup = wakeup if wakeup is not None else asyncio.Event()
        self.stopping = False
        self.failures = 0                   # items whose disposal raised, since start
        self._inflight: dict[Hashable, asyncio.Task[bool]] = {}

    # ------------------------------------------------------------ the stage
    async def prepare(self) -> None:
        """Once, before the first round (e.g. recover what a crash left behind)."""

    async def claim(self, limit: int, busy: frozenset[Hashable]) -> list[Item]:
        """Up to `limit` items to work on now, none of those in `busy`."""
        raise NotImplementedError

    async def dispose(self, item: Item) -> None:
        raise NotImplementedError

    async def failed(self, item: Item, exc: Exception) -> None:
        """Record that disposing of `item` raised (the runner goes on regardless)."""

    async def claim_failed(self, exc: Exception) -> None:
        """Claiming raised (store busy, service down): log it, wait, try again."""
        self.log.exception("%s: could not claim work; trying again in %.0fs", self.name,
                           self.idle)
        await self.wait(self.idle)

    async def pause(self, claimed: int, failed: int) -> None:
        """Between rounds: go on at once while there is work, else wait for the
        wake-up. After a failed item, wait anyway: a store that cannot record the
        failure would otherwise hand out the same item in a tight loop."""
        if not claimed or failed:
            await self.wait(self.idle)

    async def finish(self) -> None:
        """After the last round, also when cancelled (e.g. acknowledge a batch)."""

    def key(self, item: Item) -> Hashable:
        return id(item)

    def describe(self, item: Item) -> str:
        return repr(item)

    # --------------------------------------------------------- the machine
    def stop(self) -> None:
        self.stopping = True
        self.wakeup.set()

    async def wait(self, seconds: float) -> None:
        if not self.stopping:
            await wait_event(self.wakeup, seconds)

    async def run(self) -> None:
        try:
            await self.prepare()
            while not self.stopping:
                # Cleared before claiming: work committed while we claim wakes us.
                self.wakeup.clear()
                room = self.concurrency - len(self._inflight)
                if room <= 0:
                    await self.wait(self.idle)  # a finishing item sets the wake-up
                    continue
                try:
                    items = await self.claim(room, frozenset(self._inflight))
                except Exception as exc:  # noqa: BLE001 - the runner never dies of it
                    await self.claim_failed(exc)
                    continue
                bad = 0
                for item in items:
                    if self.stopping:
                        break
                    if self.concurrency == 1:
                        bad += not await self._one(item)
                    else:
                        self._spawn(item)
                await self.pause(len(items), bad)
        finally:
            await self._drain()
            await self.finish()

    def _spawn(self, item: Item) -> None:
        key = self.key(item)
        task = asyncio.create_task(self._one(item), name=f"{self.name}:{key}")
        self._inflight[key] = task

        def done(_: asyncio.Task[bool]) -> None:
            self._inflight.pop(key, None)
            self.wakeup.set()  # room for the next item
        task.add_done_callback(done)

    async def _one(self, item: Item) -> bool:
        try:
            await self.dispose(item)
            return True
        except Exception as exc:  # noqa: BLE001 - one item never stops the runner
            self.failures += 1
            if not isinstance(exc, self.expected):
                self.log.exception("%s: %s: unexpected error", self.name, self.describe(item))
            try:
                await self.failed(item, exc)
            except Exception:  # noqa: BLE001
                self.log.exception("%s: %s: could not record the failure", self.name,
                                   self.describe(item))
            return False

    async def _drain(self) -> None:
        """Items in flight finish (a POST is short), so a graceful stop leaves nothing
        claimed but undone; only a hang is cut off."""
        tasks = list(self._inflight.values())
        if tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait(tasks, timeout=self.drain_seconds)
        for task in tasks:
            task.cancel()
