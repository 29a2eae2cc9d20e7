"""wait_event: a worker cancelled in the same instant it is woken must stop.
asyncio.wait_for(event.wait(), t) swallows that cancellation on Python 3.11
(CPython gh-86296) and Bridge.stop() hung on such a worker."""

from __future__ import annotations

import asyncio

import pytest

from faxbridge.aio import wait_event


async def test_cancel_arriving_with_the_wake_up_stops_the_worker():
    event = asyncio.Event()
    rounds = 0

    async def worker() -> None:
        nonlocal rounds
        while True:
            event.clear()
            await wait_event(event, 30)
            rounds += 1

    task = asyncio.create_task(worker())
    await asyncio.sleep(0.01)  # the worker is waiting
    event.set()
    task.cancel()  # same loop iteration as the wake-up
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert rounds == 0


async def test_timeout_and_wake_up_both_return():
    event = asyncio.Event()
    await wait_event(event, 0.01)  # nobody sets it: returns after the timeout
    event.set()
    await asyncio.wait_for(wait_event(event, 30), 1)  # already set: at once
