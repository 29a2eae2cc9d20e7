"""One set of workers per SQLite data directory.

The runners assume they are alone on a SQLite file: at start the submitter takes
every job still `submitting` for a crash's leftover. After a kill -9 of the
listener its old workers process only notices (end of its stdin) and stops
between items, while a restarted `serve` already spawns new workers; two sets at
once would submit the same fax twice. An exclusive flock on
`<data_dir>/workers.lock`, held from before the runners start until after they
stopped, makes the newcomer wait for the old one. The kernel drops the lock when
its holder dies, so a crash never leaves it behind. (Not used with PostgreSQL,
where several nodes run their workers at once on purpose.)"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Callable
from pathlib import Path

LOCK_FILE = "workers.lock"
# How often a waiter retries: the previous holder stops between items (seconds).
RETRY_SECONDS = 0.2

log = logging.getLogger("faxbridge")


class WorkersLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def _try(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def holder(self) -> str:
        """The pid the holder wrote into the file ("?" if unreadable)."""
        try:
            return self.path.read_text(encoding="ascii").strip() or "?"
        except (OSError, UnicodeDecodeError):
            return "?"

    async def acquire(self, waiting: Callable[[str], None] | None = None) -> None:
        """Take the lock, waiting (cancellably) for a previous holder to release it,
        then write this process's pid into the file for the next waiter's log line.
        `waiting` is told the holder's pid when there is one to wait for."""
        # O_CLOEXEC (Python's default): a child process must not inherit the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not self._try(fd):
                holder = self.holder()
                log.info("waiting for the previous workers process (pid %s) to stop", holder)
                if waiting is not None:
                    waiting(holder)
                # A non-blocking retry loop rather than a blocking flock in a thread:
                # a stop while waiting must be able to cancel it.
                while not self._try(fd):
                    await asyncio.sleep(RETRY_SECONDS)
                log.info("previous workers process gone; starting the workers")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None
