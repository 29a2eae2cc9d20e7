"""wait_event: a worker cancelled in the same instant it is woken must stop.
asyncio.wait_for(event.wait(), t) swallows that cancellation on Python 3.11
(CPython gh-86296) and Bridge.stop() hung on such a worker."""

from __future__ import annotations

import asyncio

import pytest

from faxbridge.aio import wait_event
from tests.conftest import wait_for


async def test_cancel_arriving_with_the_wake_up_stops_the_worker():
    event = asyncio.Event()
    rounds = 0
    waiting = False

    async def worker() -> None:
        nonlocal rounds, waiting
        while True:
            event.clear()
            waiting = True  # no await between this and the wait inside wait_event
            await wait_event(event, 30)
            rounds += 1

    task = asyncio.create_task(worker())
    await wait_for(lambda: waiting)  # the worker is suspended in event.wait()
    event.set()
    task.cancel()  # same loop iteration as the wake-up
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert rounds == 0


async def test_timeout_and_wake_up_both_return():
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    # nobody sets it: returns after the timeout, not before, and not never
    start = loop.time()
    await asyncio.wait_for(wait_event(event, 0.2), 20)
    assert loop.time() - start >= 0.2 and not event.is_set()
    # set while it waits: wakes up long before its 300 s timeout
    waiting = False

    async def waiter() -> None:
        nonlocal waiting
        waiting = True  # no await between this and the wait inside wait_event
        await wait_event(event, 300)

    task = asyncio.create_task(waiter())
    await wait_for(lambda: waiting)
    event.set()
    await asyncio.wait_for(task, 20)
    # already set: returns at once
    await asyncio.wait_for(wait_event(event, 300), 20)
