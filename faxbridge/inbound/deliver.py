"""Fax → mail: one mail per received fax to the mapped addresses, through the
same outbox and transport as the reports. A mailbox that refuses permanently
sends the fax to mail.fallback_mailbox and marks it for the admin; nothing
received is ever dropped."""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

from faxbridge.aio import wait_event
from faxbridge.intake import numbers
from faxbridge.mail.compose import ComposeError

if TYPE_CHECKING:
    import sqlite3

    from faxbridge.app import Bridge
    from faxbridge.config import Topic
    from faxbridge.mail.compose import Composer

log = logging.getLogger("faxbridge.inbound")

# Field names of the Fax2WSPull metadata are unknown (docs/retarus-wire.md §3): look for the
# likely spellings, including those of the Fax-to-Webservice XML (CallingNumber, …).
FIELDS = {
    "calling": ("callingNumber", "CallingNumber", "senderNumber", "from"),
    "called": ("calledNumber", "CalledNumber", "recipientNumber", "to"),
    "csid": ("remoteCsid", "RemoteCSID", "csid", "CSID"),
    "pages": ("pages", "PageCount", "pageCount"),
    "received": ("receivedTs", "DateReceived", "receivedTS", "received"),
}


def meta_value(meta: dict[str, Any], what: str) -> Any:
    for key in FIELDS[what]:
        if meta.get(key) not in (None, ""):
            return meta[key]
    return None


def pretty(number: Any) -> str | None:
    return numbers.pretty(number) if number else None


def addresses_for(topic: Topic, meta: dict[str, Any]) -> list[str]:
    called = meta_value(meta, "called")
    for mb in topic.numbers:
        if numbers.same_number(called, mb.number):
            return list(mb.addresses)
    return list(topic.addresses)


def attachment_name(fax_id: str, calling: Any, received: Any, original: str, n: int) -> str:
    ext = original.rsplit(".", 1)[-1].lower() if "." in original else "pdf"
    who = re.sub(r"[^0-9+]", "", str(calling or "")) or "unknown"
    when = re.sub(r"[^0-9]", "", str(received or ""))[:12]
    suffix = f"-{n + 1}" if n else ""
    return f"fax-{who}-{when or fax_id}{suffix}.{ext}"


def compose_fax_mail(composer: Composer, mail_from: str, row: sqlite3.Row,
                     files: list[sqlite3.Row], to: list[str], note: str | None = None) -> bytes:
    meta = json.loads(row["metadata_json"])
    calling, received = meta_value(meta, "calling"), meta_value(meta, "received")
    pages = meta_value(meta, "pages")
    ctx = {"fax_id": row["fax_id"] or row["id"], "topic": row["topic"],
           "calling": pretty(calling), "called": pretty(meta_value(meta, "called")),
           "csid": meta_value(meta, "csid"), "pages": pages, "received": received,
           "files": [f["name"] for f in files], "note": note}
    attachments = [(attachment_name(ctx["fax_id"], calling, received, f["name"], i),
                    f["content_type"], f["data"]) for i, f in enumerate(files)]
    msg = composer.compose("inbound.fax", ctx, mail_from=mail_from, to=to,
                           attachments=attachments)
    return msg.as_bytes()


class Deliverer:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        bridge.mail_sent_hooks["inbound"] = self.on_sent
        bridge.mail_failed_hooks["inbound"] = self.on_failed

    def topic(self, name: str) -> Topic | None:
        return next((t for t in self.bridge.cfg.topics if t.name == name), None)

    async def resume(self) -> None:
        """Faxes left in `mailing` whose mail was already recorded as sent or failed
        (a crash between the mail worker's commit and this hook) finish their step."""
        store = self.bridge.store
        assert store is not None
        for row in await self.bridge.db(store.inbound_in, ("mailing",)):
            mail = await self.bridge.db(store.latest_mail, "inbound", row["id"])
            if mail is None:
                await self.queue(row)
            elif mail["state"] == "sent":
                await self.on_sent(mail, [])
            elif mail["state"] == "failed":
                await self.on_failed(mail, mail["last_error"] or "refused")

    async def run(self) -> None:
        store = self.bridge.store
        assert store is not None
        await self.resume()
        while True:
            for row in await self.bridge.db(store.inbound_in, ("stored",)):
                try:
                    await self.queue(row)
                except ComposeError as exc:
                    log.error("inbound %s: could not compose its mail: %s; holding it",
                              row["id"], exc)
                    await self.bridge.db(store.set_inbound_state, row["id"], "held",
                                         error=f"could not compose its mail: {exc}")
                except Exception:  # noqa: BLE001 - never stop on one fax
                    log.exception("inbound %s: could not queue its mail", row["id"])
                    await self.bridge.db(store.set_inbound_state, row["id"], "held",
                                         error="could not compose its mail (see log)")
            self.bridge.inbound_wakeup.clear()
            await wait_event(self.bridge.inbound_wakeup, 1.0)

    async def queue(self, row: sqlite3.Row, to: list[str] | None = None,
                    note: str | None = None) -> None:
        store = self.bridge.store
        topic = self.topic(row["topic"])
        meta = json.loads(row["metadata_json"])
        if to is None:
            to = addresses_for(topic, meta) if topic else [self.bridge.cfg.mail.fallback_mailbox]
            if topic is None:
                note = f"topic {row['topic']} is no longer configured"
        files = await self.bridge.db(store.inbound_files, row["id"])
        try:
            raw = compose_fax_mail(self.bridge.composer, self.bridge.cfg.mail.from_address,
                                   row, files, to, note)
        except ComposeError as exc:
            self.bridge.metrics.compose_failed("inbound", str(exc))
            raise
        self.bridge.metrics.mail_ok("compose", "inbound")
        await self.bridge.db(store.queue_mail, "inbound", row["id"],
                             self.bridge.cfg.mail.from_address, to, raw,
                             inbound_state=(row["id"], "mailing"))
        self.bridge.mail_wakeup.set()

    async def on_sent(self, mail: sqlite3.Row, refused: list[str]) -> None:
        store = self.bridge.store
        to = json.loads(mail["recipients_json"])
        self.bridge.metrics.inbound_delivered.inc()
        await self.bridge.db(store.set_inbound_state, mail["ref"], "delivered",
                             delivered_to=", ".join(to),
                             error=("refused: " + "; ".join(refused)) if refused else None)

    async def on_failed(self, mail: sqlite3.Row, error: str) -> None:
        store = self.bridge.store
        fallback = self.bridge.cfg.mail.fallback_mailbox
        to = json.loads(mail["recipients_json"])
        row = await self.bridge.db(store.inbound, mail["ref"])
        if row is None:
            return
        if to == [fallback]:
            log.error("inbound %s: even the fallback mailbox refused it: %s", row["id"], error)
            await self.bridge.db(store.set_inbound_state, row["id"], "held", error=error)
            return
        log.error("inbound %s: %s refused it (%s); sending to %s", row["id"], ", ".join(to),
                  error, fallback)
        await self.queue(row, to=[fallback],
                         note=f"This fax could not be delivered to {', '.join(to)}: {error}")
        await self.bridge.db(store.set_inbound_state, row["id"], "mailing",
                             error=f"refused by {', '.join(to)}: {error}; sent to {fallback}")
