"""Periodic clean-up: SMTP log retention (storage.smtp_log_retention_days)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faxbridge.app import Bridge

log = logging.getLogger("faxbridge.housekeeping")


async def housekeeping(bridge: Bridge, every: float = 3600.0) -> None:
    while True:
        store = bridge.store
        assert store is not None
        days = bridge.cfg.storage.smtp_log_retention_days
        try:
            removed = await bridge.db(store.prune_log, time.time() - days * 86400)
            if removed:
                log.info("pruned %d SMTP log record(s) older than %d days", removed, days)
        except Exception:  # noqa: BLE001 - housekeeping must never stop the bridge
            log.exception("SMTP log pruning failed")
        await asyncio.sleep(every)
