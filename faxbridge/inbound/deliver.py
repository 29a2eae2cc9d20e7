"""Fax → mail: one mail per received fax to the mapped addresses, through the
same outbox and transport as the reports. A mailbox that refuses permanently
sends the fax to mail.fallback_mailbox and marks it for the admin; nothing
received is ever dropped."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from faxbridge.intake import numbers
from faxbridge.mail import pages
from faxbridge.mail.compose import ComposeError
from faxbridge.mail.service import MailService
from faxbridge.runner import Runner
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.db import Db
from faxbridge.runtime.health import Health
from faxbridge.runtime.wakeups import Wakeups
from faxbridge.store.rows import InboundDelivery, InboundFax, InboundFile

if TYPE_CHECKING:
    from faxbridge.config import Config, Topic
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


def mapped_addresses(cfg: Config, row: InboundFax) -> tuple[list[str], str | None]:
    """Where a received fax's mail goes: its topic's addresses (or its called number's),
    or mail.fallback_mailbox when the topic is no longer configured, with a note
    saying so for the reader."""
    topic = next((t for t in cfg.topics if t.name == row.topic), None)
    if topic is None:
        return ([cfg.mail.fallback_mailbox],
                f"Topic {row.topic} is no longer configured.")
    return addresses_for(topic, json.loads(row.metadata_json)), None


def attachment_name(fax_id: str, calling: Any, received: Any, original: str, n: int) -> str:
    ext = original.rsplit(".", 1)[-1].lower() if "." in original else "pdf"
    who = re.sub(r"[^0-9+]", "", str(calling or "")) or "unknown"
    when = re.sub(r"[^0-9]", "", str(received or ""))[:12]
    suffix = f"-{n + 1}" if n else ""
    return f"fax-{who}-{when or fax_id}{suffix}.{ext}"


def fax_documents(composer: Composer, files: list[InboundFile],
                  ) -> tuple[list[tuple[str, str, bytes]], int | None, bytes | None, bool]:
    """The fax as people get it: its documents (a TIFF as PDF when the composer's
    mail.tiff_to_pdf says so), the pages counted in them (None if any is unreadable),
    a PNG of the first page (None if none can be made), and whether a TIFF was
    converted."""
    docs, counts, preview, converted = [], [], None, False
    for f in files:
        name, ctype, data = f.name, f.content_type, f.data
        kind = pages.kind_of(ctype, name, data)
        if preview is None:
            preview = pages.first_page_png(ctype, name, data)
        counts.append(pages.page_count(ctype, name, data))
        if kind == "tiff" and composer.tiff_to_pdf and (pdf := pages.tiff_to_pdf(data)):
            name, ctype, data, converted = f"{name.rsplit('.', 1)[0]}.pdf", \
                "application/pdf", pdf, True
        docs.append((name, ctype, data))
    # several files of one fax are its pages split up; one unreadable file: no count
    total = sum(n for n in counts if n) if counts and None not in counts else None
    return docs, total, preview, converted


def compose_fax_mail(composer: Composer, mail_from: str, row: InboundFax,
                     files: list[InboundFile], to: list[str], note: str | None = None) -> bytes:
    meta = json.loads(row.metadata_json)
    calling = meta_value(meta, "calling")
    # the time Retarus received it; the time we fetched it when Retarus says nothing
    received = meta_value(meta, "received") or row.created
    docs, counted, preview, converted = fax_documents(composer, files)
    # the pages in the document are what the reader gets; the metadata's count
    # (its field is a guess, docs/retarus-wire.md §3) only when they cannot be counted
    pages_ = counted or meta_value(meta, "pages")
    fax_id = row.fax_id or row.id
    attachments = [(attachment_name(fax_id, calling, meta_value(meta, "received"), name, i),
                    ctype, data) for i, (name, ctype, data) in enumerate(docs)]
    ctx = {"fax_id": fax_id, "topic": row.topic,
           "calling": pretty(calling), "called": pretty(meta_value(meta, "called")),
           "csid": meta_value(meta, "csid"), "pages": pages_, "received": received,
           "files": [f.name for f in files], "attachments": [a[0] for a in attachments],
           "converted": converted, "preview": preview is not None, "note": note}
    msg = composer.compose("inbound.fax", ctx, mail_from=mail_from, to=to,
                           attachments=attachments,
                           inline={"preview": ("image/png", preview)} if preview else None,
                           # for the admin (faxbridge inbox), kept out of the text
                           headers={"X-Faxbridge-Fax": row.id})
    return msg.as_bytes()


class FaxMail:
    """Composes a received fax's mail and queues it (with the fax's `mailing` state,
    in one transaction). The deliverer and the admin API's resend use it."""

    def __init__(self, db: Db, config: ConfigProvider, mail: MailService, health: Health,
                 wakeups: Wakeups) -> None:
        self.db, self.config, self.mail, self.health = db, config, mail, health
        self.wakeups = wakeups

    async def queue(self, row: InboundFax, to: list[str] | None = None,
                    note: str | None = None) -> None:
        store, cfg = self.db.store, self.config.current
        if not to:
            to, gone = mapped_addresses(cfg, row)
            note = " ".join(filter(None, (note, gone))) or None
        files = await self.db.run(store.inbound_files, row.id)
        try:
            # in a thread: the preview and a TIFF's conversion take tens of ms of CPU,
            # which the event loop (SMTP sessions, polls) must not wait for
            raw = await asyncio.to_thread(compose_fax_mail, self.mail.composer,
                                          cfg.mail.from_address, row, files, to, note)
        except ComposeError as exc:
            self.health.metrics.compose_failed("inbound", str(exc))
            raise
        self.health.metrics.mail_ok("compose", "inbound")
        await self.db.run(store.queue_mail, "inbound", row.id, cfg.mail.from_address, to,
                          raw, inbound_state=(row.id, "mailing"))
        self.wakeups.mail.set()


class Deliverer(Runner[InboundDelivery]):
    """Takes each received fax whose next step is a mail: a stored fax gets its mail
    queued; a fax whose mail was refused goes to mail.fallback_mailbox (or is held
    when even that refused it). The mail worker records a sent mail and the fax's
    `delivered` in one transaction; this stage only reacts to what the store says."""

    name = "deliver"
    log = log
    expected = (ComposeError,)

    def __init__(self, db: Db, fax_mail: FaxMail, wakeups: Wakeups) -> None:
        super().__init__(wakeups.inbound)
        self.db, self.fax_mail = db, fax_mail

    async def claim(self, limit: int, busy: frozenset[Hashable]) -> list[InboundDelivery]:
        return await self.db.run(self.db.store.inbound_to_deliver, max(limit, 100))

    def key(self, item: InboundDelivery) -> Hashable:
        return item.id

    def describe(self, item: InboundDelivery) -> str:
        return f"inbound {item.id}"

    async def failed(self, row: InboundDelivery, exc: Exception) -> None:
        if isinstance(exc, ComposeError):
            log.error("inbound %s: could not compose its mail: %s; holding it", row.id, exc)
            error = f"could not compose its mail: {exc}"
        else:
            error = "could not compose its mail (see log)"
        await self.db.run(self.db.store.set_inbound_state, row.id, "held", error=error)

    async def dispose(self, row: InboundDelivery) -> None:
        store = self.db.store
        if row.state == "stored" or row.mail_state is None:
            await self.fax_mail.queue(row)
        elif row.mail_state == "sent":
            # a store from before the mail's outcome and this state were one transaction
            await self.db.run(store.set_inbound_state, row.id, "delivered",
                              delivered_to=", ".join(json.loads(row.mail_to_json)))
        else:
            await self.refused(row, row.mail_error or "refused")

    async def refused(self, row: InboundDelivery, error: str) -> None:
        store = self.db.store
        fallback = self.fax_mail.config.current.mail.fallback_mailbox
        to = json.loads(row.mail_to_json)
        if to == [fallback]:
            log.error("inbound %s: even the fallback mailbox refused it: %s", row.id, error)
            await self.db.run(store.set_inbound_state, row.id, "held", error=error)
            return
        log.error("inbound %s: %s refused it (%s); sending to %s", row.id, ", ".join(to),
                  error, fallback)
        # The note first: once queued, the mail worker may mark the fax delivered at
        # any moment, and a later state write would undo that. (A crash in between
        # leaves the refused mail the latest: this runs again.)
        await self.db.run(store.set_inbound_state, row.id, "mailing",
                          error=f"refused by {', '.join(to)}: {error}; sent to {fallback}")
        await self.fax_mail.queue(
            row, to=[fallback], note=f"This fax could not be delivered to {', '.join(to)}: {error}")
