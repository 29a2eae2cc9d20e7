"""Mail worker: sends committed mails from the store's outbox.

Relay down or 4xx → retried with backoff until mail.give_up_after_seconds;
5xx for every recipient → failed at once, visible to the admin, never retried.
The outcome goes to the store, which in the same transaction updates the row the
mail belongs to (the job's report event, the received fax's state); the stages
that own those rows react to their state, not to a callback from here.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Hashable

from faxbridge.errors import Permanent, Transient
from faxbridge.mail.service import MailService
from faxbridge.retry import backoff
from faxbridge.runner import Runner
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.db import Db
from faxbridge.runtime.health import Health
from faxbridge.runtime.wakeups import Wakeups
from faxbridge.store.rows import OutMail


def queue_id(reply: str) -> str | None:
    """The relay's queue id in its 250, as Postfix ("queued as 4dXyz1"), Exim
    ("id=1qAbc-000123-Xy") and others word it; None when it names none."""
    m = re.search(r"queued as ([A-Za-z0-9._-]+)|\bid=([A-Za-z0-9._-]+)", reply, re.I)
    return (m.group(1) or m.group(2)) if m else None


def ref_fields(kind: str, ref: str | None) -> dict[str, str | None]:
    """What the mail is about as a field of its own: the job of a status report,
    the received fax of an inbound mail."""
    return {"job": ref} if kind == "report" else {"fax": ref} if kind == "inbound" else {}


class Mailer(Runner[OutMail]):
    name = "mail"
    log = logging.getLogger("faxbridge.mail")

    def __init__(self, db: Db, config: ConfigProvider, mail: MailService, health: Health,
                 wakeups: Wakeups) -> None:
        super().__init__(wakeups.mail)
        self.db, self.config, self.mail, self.health = db, config, mail, health
        self.wakeups = wakeups

    async def claim(self, limit: int, busy: frozenset[Hashable]) -> list[OutMail]:
        row = await self.db.run(self.db.store.claim_mail)
        return [row] if row is not None else []

    def key(self, item: OutMail) -> Hashable:
        return item.id

    def describe(self, item: OutMail) -> str:
        return f"mail {item.id} ({item.kind} {item.ref})"

    async def failed(self, item: OutMail, exc: Exception) -> None:
        await self._finish(item, "failed", error=repr(exc))

    async def _finish(self, row: OutMail, state: str, **kw: object) -> None:
        await self.db.run(self.db.store.finish_mail, row.id, state, **kw)
        if state == "failed" and row.kind == "inbound":
            self.wakeups.inbound.set()  # the deliverer sends it to the fallback mailbox

    async def dispose(self, row: OutMail) -> None:
        rcpts = json.loads(row.recipients_json)
        mail_cfg = self.config.current.mail
        metrics = self.health.metrics
        try:
            sent = await self.mail.transport.send(row.mail_from, rcpts, row.raw,
                                                  key=str(row.id))
        except Transient as exc:
            metrics.mail_deferred(row.kind, str(exc))
            age = time.time() - row.created
            if age > mail_cfg.give_up_after_seconds:
                await self._finish(row, "failed", error=f"gave up after {age:.0f}s: {exc}")
                return
            delay = backoff(row.attempts + 1, base=mail_cfg.retry_min_seconds,
                            cap=mail_cfg.retry_max_seconds)
            delay = max(delay, mail_cfg.retry_min_seconds / 2)
            self.log.warning("mail %s (%s %s) deferred %.1fs: %s", row.id, row.kind,
                             row.ref, delay, exc)
            await self._finish(row, "queued", error=str(exc), next_attempt=time.time() + delay)
            return
        except Permanent as exc:
            metrics.mail_failures.labels(row.kind, "refused").inc()
            self.log.error("mail %s (%s %s) refused: %s", row.id, row.kind, row.ref,
                           exc)
            await self._finish(row, "failed", error=str(exc))
            return
        refused = sent.refused
        self.health.last_contact["relay"] = time.time()
        # One line per mail sent, with the relay's reply: its queue id is how the
        # relay's own log (and the recipient's postmaster) knows this mail.
        self.log.info('sent %s mail %s for %s: from=<%s> to=%s reply="%s"%s', row.kind,
                      row.id, row.ref, row.mail_from, ",".join(f"<{r}>" for r in rcpts),
                      sent.reply, f" refused={'; '.join(refused)}" if refused else "",
                      extra={"event": "mail_sent", "kind": row.kind, "mail": row.id,
                             "ref": row.ref, "sender": row.mail_from,
                             "recipients": rcpts, "reply": sent.reply,
                             "queue_id": queue_id(sent.reply), "refused": refused,
                             **ref_fields(row.kind, row.ref)})
        metrics.mail_ok("deliver", row.kind)
        await self._finish(row, "sent", refused=refused,
                           error=("partly refused: " + "; ".join(refused)) if refused else None)
        if row.kind == "inbound":
            metrics.inbound_delivered.inc()
