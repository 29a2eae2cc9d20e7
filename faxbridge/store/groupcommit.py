"""Group commit for accepted mails.

Concurrent SMTP sessions that reach the end of DATA together share one SQLite
transaction, so one fsync serves many 250s. Durability is unchanged: each
session awaits the commit that contains its job before answering 250. If a
shared commit fails, the jobs are retried one by one so that one bad item does
not fail its neighbours (each then gets its own 250 or 451).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from faxbridge.errors import StoreError
from faxbridge.store.new import NewJob, SmtpLogRecord
from faxbridge.store.protocol import Store

MAX_BATCH = 64


class GroupCommitter:
    def __init__(self, store: Store, run_in_db: Callable[..., Awaitable[Any]]) -> None:
        self.store = store
        self.run_in_db = run_in_db
        self.queue: asyncio.Queue[tuple[NewJob, SmtpLogRecord | None, asyncio.Future[None]]] = \
            asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def commit(self, job: NewJob, log: SmtpLogRecord | None) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="group-commit")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.queue.put((job, log, fut))
        await fut

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            await self._commit(batch)
            # let go of the messages now, not when the next mail arrives (a 30 MB
            # mail otherwise stayed in memory until then)
            del batch

    async def _commit(self, batch: list[tuple[NewJob, SmtpLogRecord | None,
                                              asyncio.Future[None]]]) -> None:
        try:
            await self.run_in_db(self.store.create_jobs, [(j, lg) for j, lg, _ in batch])
        except StoreError:
            for job, log, fut in batch:
                try:
                    await self.run_in_db(self.store.create_jobs, [(job, log)])
                except StoreError as exc:
                    if not fut.done():
                        fut.set_exception(exc)
                else:
                    if not fut.done():
                        fut.set_result(None)
            return
        except BaseException as exc:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(StoreError(f"commit interrupted: {exc!r}"))
            raise
        for _, _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
