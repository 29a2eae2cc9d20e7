"""aiosmtpd handler: protocol in, decisions out. Each hook returns a reply string
from replies.py; the decisions themselves are the pure functions of intake/.

One SMTP log record per transaction (MAIL … DATA/RSET/QUIT/disconnect), with every
decision taken, so an admin can answer "why didn't my fax go out?".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import Envelope, Session

from faxbridge import replies
from faxbridge.errors import StoreError
from faxbridge.intake.mime import extract
from faxbridge.intake.numbers import parse_number, split_address
from faxbridge.intake.rules import Who, destination_allowed, find_rule, in_networks
from faxbridge.intake.slim import header_block
from faxbridge.intake.subject import decode_subject, header_line
from faxbridge.outbound.request import request_skeleton
from faxbridge.store import NewDocument, NewJob, NewRecipient, SmtpLogRecord

if TYPE_CHECKING:
    from faxbridge.metrics import Metrics
    from faxbridge.runtime.config import ConfigProvider
    from faxbridge.runtime.db import Db, Offload
    from faxbridge.runtime.wakeups import Wakeups
    from faxbridge.store.groupcommit import GroupCommitter

log = logging.getLogger("faxbridge.smtp")


@dataclass
class Tx:
    """What one SMTP transaction has decided so far."""

    record: SmtpLogRecord
    rule: Any = None
    fax: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    # (e164, address, display name, pretty)
    started: float = field(default_factory=time.perf_counter)
    logged: bool = False


class FaxHandler:
    def __init__(self, config: ConfigProvider, db: Db, cpu: Offload,
                 committer: GroupCommitter, metrics: Metrics, wakeups: Wakeups,
                 push_url: Callable[[], str | None]) -> None:
        self.config, self.db, self.cpu, self.committer = config, db, cpu, committer
        self.metrics, self.wakeups, self.push_url = metrics, wakeups, push_url

    @property
    def cfg(self):  # noqa: ANN201 - always the current config (live reload)
        return self.config.current

    # ----------------------------------------------------------- helpers
    def _new_tx(self, session: Session, mail_from: str) -> Tx:
        rec = SmtpLogRecord(peer=session.peer[0] if session.peer else None,
                            helo=session.host_name, tls=bool(session.ssl),
                            auth_user=getattr(session, "fb_user", None),
                            mail_from=mail_from.lower())
        tx = Tx(rec)
        session.fb_tx = tx  # type: ignore[attr-defined]
        return tx

    def flush(self, session: Session, reply: str | None = None) -> None:
        """Write the log record of an unfinished transaction (RSET, QUIT, drop)."""
        tx: Tx | None = getattr(session, "fb_tx", None)
        if tx is None or tx.logged:
            return
        tx.logged = True
        refused = [r["reply"] for r in tx.record.recipients
                   if not str(r.get("reply", "")).startswith("250")]
        # The reason that counts is the last refusal when the client just gave up.
        reason = tx.record.reply or (refused[-1] if refused else reply or "")
        if reply and not tx.record.reply:
            tx.record.reply = f"{reply} after {refused[-1]}" if refused else reply
        self.metrics.smtp_reply(reason, False)
        # Off the event loop: a commit waits for fsync.
        fut = asyncio.ensure_future(self.db.run(self.db.store.add_log, tx.record))
        fut.add_done_callback(_log_failure)

    @staticmethod
    def _who(session: Session, sender: str) -> Who:
        return Who(sender=sender.lower(), auth_user=getattr(session, "fb_user", None),
                   peer_ip=session.peer[0] if session.peer else None)

    # ------------------------------------------------------------- hooks
    async def handle_MAIL(self, server: Any, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        self.flush(session, "(transaction abandoned)")
        tx = self._new_tx(session, address)
        peer = tx.record.peer
        if not getattr(session, "authenticated", False) and \
                not in_networks(peer, self.cfg.smtp.trusted_networks):
            tx.record.reply = replies.S530_AUTH.format(peer=peer)
            self.flush(session)
            return tx.record.reply
        if address in ("", "<>"):
            # A null sender cannot be told the fax's outcome, and bounces must never
            # become faxes (a mail loop costs money per page).
            tx.record.reply = replies.S550_NULL_SENDER
            self.flush(session)
            return tx.record.reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.S250_SENDER_OK

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        tx: Tx = getattr(session, "fb_tx", None) or self._new_tx(session, envelope.mail_from
                                                                   or "")
        reply, entry = await self._decide_rcpt(session, envelope, tx, address)
        entry["reply"] = reply
        tx.record.recipients.append(entry)
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def _decide_rcpt(self, session: Session, envelope: Envelope, tx: Tx,
                           address: str) -> tuple[str, dict[str, Any]]:
        cfg = self.cfg
        entry: dict[str, Any] = {"address": address}
        if len(envelope.rcpt_tos) >= cfg.smtp.max_recipients:
            return replies.S452_TOO_MANY.format(limit=cfg.smtp.max_recipients), entry
        local, domain = split_address(address)
        if domain not in cfg.fax.domains:
            return replies.S550_RELAY.format(domain=domain or "(none)",
                                             domains=", ".join(cfg.fax.domains)), entry
        parsed = parse_number(local, cfg.fax.default_country)
        if not parsed.ok:
            return replies.S553_NUMBER.format(address=address, why=parsed.error), entry
        entry["number"] = parsed.number
        who = self._who(session, envelope.mail_from or "")
        rule = find_rule(cfg.senders, who)
        if rule is None:
            return replies.S550_SENDER.format(sender=envelope.mail_from), entry
        entry["rule"] = rule.name
        ok, why = destination_allowed(rule, parsed.number)
        entry["why"] = why
        if not ok:
            return replies.S550_DEST.format(number=parsed.pretty, rule=rule.name, why=why), entry
        if tx.rule is None and (rule.max_per_hour or rule.max_per_day):
            limited = await self.db.run(self._rate_limited, rule, who.sender)
            if limited:
                return limited, entry
        tx.rule = rule
        if any(n == parsed.number for n, *_ in tx.fax):
            return replies.S250_RCPT_OK.format(number=parsed.pretty) + " (duplicate)", entry
        tx.fax.append((parsed.number, address, None, parsed.pretty))
        return replies.S250_RCPT_OK.format(number=parsed.pretty), entry

    def _rate_limited(self, rule: Any, sender: str) -> str | None:
        store = self.db.store
        now = time.time()
        for limit, window, label in ((rule.max_per_hour, 3600, "hour"),
                                     (rule.max_per_day, 86400, "day")):
            if limit:
                count = store.count_jobs_since(sender, now - window)
                if count >= limit:
                    return replies.S450_RATE.format(rule=rule.name, count=count, window=label)
        return None

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        tx: Tx | None = getattr(session, "fb_tx", None)
        if tx is None or not tx.fax:
            return replies.S503_NEED_RCPT
        t0 = time.perf_counter()
        raw: bytes | bytearray = envelope.original_content or envelope.content or b""
        rec = tx.record
        rec.size = len(raw)
        rule = tx.rule
        cfg = self.cfg
        try:
            ext = await self.cpu.run(extract, raw, cfg.fax.allowed_types, rule.body)
        except Exception as exc:  # noqa: BLE001 - the parser must never crash a session
            log.exception("MIME parsing failed")
            rec.reply = replies.S554_BAD_MIME.format(why=str(exc)[:200])
            self.flush(session)
            return rec.reply
        t1 = time.perf_counter()
        rec.timings["parse_ms"] = round((t1 - t0) * 1000, 2)
        rec.message_id = ext.message_id
        subject = decode_subject(ext.subject)
        rec.subject = subject
        rec.parts = [p.as_dict() for p in ext.parts]
        if not ext.documents:
            rec.reply = replies.S554_NOTHING.format(why=ext.why_nothing())[:900]
            self.flush(session)
            return rec.reply
        # Display names come from the To/Cc headers (the envelope has none).
        names = _display_names(raw, cfg.fax.default_country)
        fax = [(num, addr, names.get(num), pretty) for num, addr, _, pretty in tx.fax]
        header = header_line(subject, cfg.fax.header_template, cfg.fax.header_max_length,
                             sender=envelope.mail_from or "", number=fax[0][3])
        now = time.time()
        job = NewJob(
            sender=(envelope.mail_from or "").lower(),
            recipients=[NewRecipient(n, a, d) for n, a, d, _ in fax],
            documents=[NewDocument(d.name, d.content_type, d.data, d.charset)
                       for d in ext.documents],
            request={},
            raw=raw,
            deadline=now + cfg.fax.submit_deadline_seconds,
            valid_until=now + cfg.fax.job_valid_seconds,
            auth_user=getattr(session, "fb_user", None),
            message_id=ext.message_id, subject=subject, rule=rule.name, header=header,
            notify=rule.notify, attach_documents=rule.attach_documents)
        job.request = request_skeleton(cfg, rule, job.id, header,
                                       [(n, d) for n, _, d, _ in fax],
                                       self.push_url())
        rec.reply = replies.S250_QUEUED.format(job_id=job.id,
                                               numbers=", ".join(p for *_, p in fax))
        rec.ok = True
        rec.timings["total_before_commit_ms"] = round((time.perf_counter() - tx.started)
                                                      * 1000, 2)
        try:
            await self.committer.commit(job, rec)
        except StoreError as exc:
            log.error("store failure, answering 451: %s", exc)
            rec.ok, rec.job_id = False, None
            rec.reply = replies.S451_STORE
            tx.logged = False
            self.flush(session)  # the log record is tried on its own (it may fail too)
            return rec.reply
        tx.logged = True
        self.metrics.smtp_reply(rec.reply, True)
        log.info("accepted job=%s message_id=%s from=%s to=%s docs=%d", job.id,
                 ext.message_id, job.sender, ",".join(n for n, *_ in fax), len(ext.documents))
        self.wakeups.submit.set()
        return rec.reply

    async def handle_RSET(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.flush(session, "(reset by client)")
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.flush(session, "(client quit)")
        return "221 2.0.0 Bye"


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("could not write SMTP log record: %s", fut.exception())


def _display_names(raw: bytes | bytearray, country: str) -> dict[str, str]:
    """E.164 number → display name, from the To/Cc headers (keyed by number: the
    header may spell the address differently from the envelope)."""
    from email.header import decode_header, make_header
    from email.parser import BytesHeaderParser
    from email.utils import getaddresses
    try:
        # the header block only: parsing all of a 30 MB mail for two headers cost
        # eight times its size in memory (the body is skipped anyway)
        headers = BytesHeaderParser().parsebytes(header_block(raw))
        pairs = getaddresses(headers.get_all("To", []) + headers.get_all("Cc", []))
    except Exception:  # noqa: BLE001
        return {}
    out = {}
    for name, addr in pairs:
        if name and addr:
            with contextlib.suppress(Exception):
                name = str(make_header(decode_header(name)))
            parsed = parse_number(split_address(addr)[0], country)
            if parsed.ok:
                out[parsed.number] = name.strip()
    return out
