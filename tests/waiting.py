"""Time in the tests, in one place. The suite's two waiters poll a condition with a
deadline (never a fixed sleep), shared by the tests and by the helper modules that
start servers (tests/postfix.py, tests/pgserver.py): the interval is only how often
the condition is asked; the deadline is an upper bound, generous for a loaded
machine. `dribble` is a slow peer whose pace is the behaviour under test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_for(pred: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll `pred` (sync or async) until it returns something truthy, and return that.
    The deadline is only an upper bound: generous, so a loaded machine does not fail it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met in {timeout} s")


def wait_until(pred: Callable[[], T | None], timeout: float, what: str,
               interval: float = 0.1) -> T:
    """wait_for for synchronous tests: poll `pred` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s")


async def dribble(write: Callable[[bytes], None], pieces: Iterable[bytes],
                  every: float) -> None:
    """A slow peer, not a wait: write one piece every `every` seconds. The pace is
    the behaviour under test (a slow link the bridge must tell from an idle one, a
    steady flow its total deadline must still cut), so it is time itself, not a
    condition that could be waited for."""
    for piece in pieces:
        write(piece)
        await asyncio.sleep(every)
