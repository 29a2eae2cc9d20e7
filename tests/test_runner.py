"""The one base of every background stage: a failing item, a failing claim and a failing
failure record never stop a runner; stop() takes effect between items."""

from __future__ import annotations

import asyncio

import pytest

from faxbridge.runner import Runner
from tests.conftest import wait_for


class Queue(Runner[str]):
    """A stage over an in-memory queue: items named 'bad…' raise while disposed of."""

    name = "test-queue"
    idle = 0.05

    def __init__(self, items: list[str], concurrency: int = 1) -> None:
        super().__init__()
        self.concurrency = concurrency
        self.todo = list(items)
        self.done: list[str] = []
        self.recorded: list[tuple[str, str]] = []
        self.claim_errors = 0
        self.fail_claims = 0

    async def claim(self, limit: int, busy: frozenset) -> list[str]:
        if self.fail_claims:
            self.fail_claims -= 1
            raise OSError("store busy")
        out, self.todo = self.todo[:limit], self.todo[limit:]
        return out

    async def claim_failed(self, exc: Exception) -> None:
        self.claim_errors += 1
        await super().claim_failed(exc)

    async def dispose(self, item: str) -> None:
        if item.startswith("bad"):
            raise ValueError(f"cannot dispose of {item}")
        self.done.append(item)

    async def failed(self, item: str, exc: Exception) -> None:
        if item == "bad-unrecordable":
            raise RuntimeError("the store is gone too")
        self.recorded.append((item, str(exc)))


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_one_failing_item_never_stops_the_runner(concurrency):
    q = Queue(["a", "bad-1", "b", "bad-unrecordable", "c"], concurrency)
    q.fail_claims = 2  # and the first two claims fail outright
    task = asyncio.create_task(q.run())
    try:
        await wait_for(lambda: sorted(q.done) == ["a", "b", "c"], timeout=30)
        assert q.claim_errors == 2
        assert q.recorded == [("bad-1", "cannot dispose of bad-1")]
        assert q.failures == 2
        q.todo.append("d")  # still alive: new work is taken once woken
        q.wakeup.set()
        await wait_for(lambda: "d" in q.done, timeout=30)
    finally:
        q.stop()
        await asyncio.wait_for(task, 30)
    assert task.done() and task.exception() is None


async def test_stop_takes_effect_between_items():
    started, release = asyncio.Event(), asyncio.Event()

    class Slow(Queue):
        async def dispose(self, item: str) -> None:
            started.set()
            await release.wait()
            self.done.append(item)

    q = Slow(["first", "second"])
    task = asyncio.create_task(q.run())
    await asyncio.wait_for(started.wait(), 30)
    q.stop()  # while "first" is being disposed of
    release.set()
    await asyncio.wait_for(task, 30)
    assert q.done == ["first"]  # the item in hand finished; the next was not begun
