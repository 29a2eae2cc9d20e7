"""Small asyncio helpers shared by the workers."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Return when `event` is set or `timeout` seconds have passed.

    Not asyncio.wait_for(event.wait(), timeout): on Python 3.11 wait_for swallows a
    cancellation that arrives just as the inner wait completes (CPython gh-86296,
    fixed in 3.12), so a worker cancelled by Bridge.stop() while being woken ran on
    forever and stop() hung. asyncio.timeout() lets the cancellation through."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
