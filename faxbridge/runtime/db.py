"""The store behind its own thread pool: `await db.run(store.method, ...)`."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from faxbridge.store.protocol import Store

T = TypeVar("T")


class Offload:
    """Blocking work off the event loop, on a pool of its own: store commits wait for
    fsync and MIME parsing is CPU-bound; neither may queue behind other users of
    asyncio's default pool."""

    def __init__(self, workers: int, name: str) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(fn, *args, **kw))

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True)


class Db(Offload):
    """The store and the executor its blocking calls run on."""

    def __init__(self, store: Store, workers: int = 4) -> None:
        super().__init__(workers, "store")
        self.store = store

    def close(self) -> None:
        self.shutdown()
        self.store.close()
