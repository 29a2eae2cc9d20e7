"""Periodic clean-up: SMTP log retention (storage.smtp_log_retention_days) and
payload retention (storage.payload_retention_days and its per-direction
overrides)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from faxbridge.runner import Runner
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.db import Db

if TYPE_CHECKING:
    from faxbridge.config import Config
    from faxbridge.store.protocol import Store

log = logging.getLogger("faxbridge.housekeeping")
DIRECTIONS = ("outbound", "inbound")


def retention_days(cfg: Config) -> dict[str, int | None]:
    """Days a settled fax keeps its payload, per direction (None: until deleted)."""
    st = cfg.storage
    return {"outbound": st.outbound_payload_retention_days or st.payload_retention_days,
            "inbound": st.inbound_payload_retention_days or st.payload_retention_days}


def apply_retention(store: Store, cfg: Config, now: float | None = None,
                    days: int | None = None) -> dict[str, list[str]]:
    """Delete the payloads that are past their retention as of `now`: the ids per
    direction. `days` replaces the configured retention for both directions (the
    CLI's --older-than). The housekeeping loop, the CLI and the admin API run this."""
    now = time.time() if now is None else now
    out: dict[str, list[str]] = {}
    for direction, keep in retention_days(cfg).items():
        keep = days if days is not None else keep
        if keep is None:
            continue
        gone: list[str] = []
        while batch := store.expire_payloads(direction, now - keep * 86400):
            gone += batch
        out[direction] = gone
    return out


class Housekeeper(Runner[float]):
    """One item per round: the cut-off time before which SMTP log records go; the
    payload retention runs in the same round."""

    name = "housekeeping"
    log = log

    def __init__(self, db: Db, config: ConfigProvider, every: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.db, self.config, self.clock = db, config, clock
        self.idle = every

    async def claim(self, limit: int, busy: frozenset[Hashable]) -> list[float]:
        if not await self.db.run(self.db.store.lead, "housekeeping"):
            return []  # another node on the same database does it
        days = self.config.current.storage.smtp_log_retention_days
        return [self.clock() - days * 86400]

    async def pause(self, claimed: int, failed: int) -> None:
        await self.wait(self.idle)

    def describe(self, item: float) -> str:
        return "SMTP log pruning and payload retention"

    async def dispose(self, cutoff: float) -> None:
        cfg = self.config.current
        removed = await self.db.run(self.db.store.prune_log, cutoff)
        if removed:
            log.info("pruned %d SMTP log record(s) older than %d days", removed,
                     cfg.storage.smtp_log_retention_days)
        gone = await self.db.run(apply_retention, self.db.store, cfg, self.clock())
        for direction, ids in gone.items():
            if ids:
                log.info("payload retention: removed the payload of %d %s fax(es) older "
                         "than %d days", len(ids), direction,
                         retention_days(cfg)[direction] or 0)
