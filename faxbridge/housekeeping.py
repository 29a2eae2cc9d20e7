"""Periodic clean-up: SMTP log retention (storage.smtp_log_retention_days)."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable

from faxbridge.runner import Runner
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.db import Db

log = logging.getLogger("faxbridge.housekeeping")


class Housekeeper(Runner[float]):
    """One item per round: the cut-off time before which SMTP log records go."""

    name = "housekeeping"
    log = log

    def __init__(self, db: Db, config: ConfigProvider, every: float = 3600.0) -> None:
        super().__init__()
        self.db, self.config = db, config
        self.idle = every

    async def claim(self, limit: int, busy: frozenset[Hashable]) -> list[float]:
        if not await self.db.run(self.db.store.lead, "housekeeping"):
            return []  # another node on the same database does it
        days = self.config.current.storage.smtp_log_retention_days
        return [time.time() - days * 86400]

    async def pause(self, claimed: int, failed: int) -> None:
        await self.wait(self.idle)

    def describe(self, item: float) -> str:
        return "SMTP log pruning"

    async def dispose(self, cutoff: float) -> None:
        removed = await self.db.run(self.db.store.prune_log, cutoff)
        if removed:
            log.info("pruned %d SMTP log record(s) older than %d days", removed,
                     self.config.current.storage.smtp_log_retention_days)
