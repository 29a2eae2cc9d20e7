"""Mail worker: sends committed mails from the store's outbox.

Relay down or 4xx → retried with backoff until mail.give_up_after_seconds;
5xx for every recipient → failed at once, visible to the admin, never retried.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from faxbridge.aio import wait_event
from faxbridge.errors import Permanent, Transient
from faxbridge.retarus.http import backoff

if TYPE_CHECKING:
    import sqlite3

    from faxbridge.app import Bridge

log = logging.getLogger("faxbridge.mail")


class Mailer:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    async def run(self) -> None:
        store = self.bridge.store
        assert store is not None
        while True:
            row = await self.bridge.db(store.claim_mail)
            if row is None:
                self.bridge.mail_wakeup.clear()
                await wait_event(self.bridge.mail_wakeup, 1.0)
                continue
            try:
                await self.dispose(row)
            except Exception as exc:  # noqa: BLE001 - one mail never stops the worker
                log.exception("mail %s: unexpected error", row["id"])
                await self.bridge.db(store.finish_mail, row["id"], "failed", error=repr(exc))

    async def dispose(self, row: sqlite3.Row) -> None:
        import json
        store = self.bridge.store
        assert store is not None
        rcpts = json.loads(row["recipients_json"])
        mail_cfg = self.bridge.cfg.mail
        try:
            refused = await self.bridge.transport.send(row["mail_from"], rcpts, row["raw"],
                                                       key=str(row["id"]))
        except Transient as exc:
            self.bridge.metrics.mail_deferred(row["kind"], str(exc))
            age = time.time() - row["created"]
            if age > mail_cfg.give_up_after_seconds:
                await self.bridge.db(store.finish_mail, row["id"], "failed",
                                     error=f"gave up after {age:.0f}s: {exc}")
                await self._on_failed(row, str(exc))
                return
            delay = backoff(row["attempts"] + 1, base=mail_cfg.retry_min_seconds,
                            cap=mail_cfg.retry_max_seconds)
            delay = max(delay, mail_cfg.retry_min_seconds / 2)
            log.warning("mail %s (%s %s) deferred %.1fs: %s", row["id"], row["kind"],
                        row["ref"], delay, exc)
            await self.bridge.db(store.finish_mail, row["id"], "queued", error=str(exc),
                                 next_attempt=time.time() + delay)
            return
        except Permanent as exc:
            self.bridge.metrics.mail_failures.labels(row["kind"], "refused").inc()
            log.error("mail %s (%s %s) refused: %s", row["id"], row["kind"], row["ref"], exc)
            await self.bridge.db(store.finish_mail, row["id"], "failed", error=str(exc))
            await self._on_failed(row, str(exc))
            return
        self.bridge.last_contact["relay"] = time.time()
        self.bridge.metrics.mail_ok("deliver", row["kind"])
        await self.bridge.db(store.finish_mail, row["id"], "sent",
                             error=("partly refused: " + "; ".join(refused)) if refused else None)
        if row["kind"] == "report" and row["ref"]:
            await self.bridge.db(store.add_event, row["ref"], "report-sent",
                                 f"report mail to {', '.join(rcpts)}"
                                 + (f" (refused: {'; '.join(refused)})" if refused else ""))
        hook = self.bridge.mail_sent_hooks.get(row["kind"])
        if hook:
            await hook(row, refused)

    async def _on_failed(self, row: sqlite3.Row, error: str) -> None:
        if row["kind"] == "report" and row["ref"]:
            await self.bridge.db(self.bridge.store.add_event, row["ref"], "report-failed",
                                 f"report mail could not be delivered: {error}")
        hook = self.bridge.mail_failed_hooks.get(row["kind"])
        if hook:
            await hook(row, error)
