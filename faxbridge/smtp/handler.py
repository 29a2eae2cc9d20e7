"""aiosmtpd handler: protocol in, decisions out. Each hook returns a reply string
from replies.py; the decisions themselves are the pure functions of intake/.

One SMTP log record per transaction (MAIL … DATA/RSET/QUIT/disconnect), with every
decision taken, so an admin can answer "why didn't my fax go out?".
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import Envelope, Session

from faxbridge import replies
from faxbridge.errors import StoreError
from faxbridge.intake import accept
from faxbridge.intake.clean import clean_text
from faxbridge.intake.mime import MimeError
from faxbridge.intake.parse import parse_mail
from faxbridge.intake.subject import header_line
from faxbridge.outbound.request import fax_options
from faxbridge.runtime.inflight import InFlight, count_limits
from faxbridge.runtime.parsers import ParserUnavailable
from faxbridge.smtp.txlog import log_transaction
from faxbridge.store.new import NewDocument, NewJob, NewRecipient, SmtpLogRecord, new_job_id

if TYPE_CHECKING:
    from faxbridge.metrics import Metrics
    from faxbridge.runtime.config import ConfigProvider
    from faxbridge.runtime.db import Db
    from faxbridge.runtime.parsers import ParsePool
    from faxbridge.runtime.wakeups import Wakeups
    from faxbridge.store.groupcommit import GroupCommitter

log = logging.getLogger("faxbridge.smtp")

# What one transaction's log record keeps of its RCPT commands: the first ones in
# full, then only counts. A client may send tens of thousands of RCPTs; one record
# per transaction must stay small enough to read, list and store.
LOG_RECIPIENTS = 100


@dataclass(eq=False)  # hashed by identity: InFlight holds faxes per transaction
class Tx:
    """One SMTP transaction: what it accepted so far, and its log record."""

    record: SmtpLogRecord
    state: accept.MailState
    started: float = field(default_factory=time.perf_counter)
    logged: bool = False
    last_refusal: str | None = None  # kept even when its entry is beyond LOG_RECIPIENTS
    omitted: dict[str, int] = field(default_factory=dict)  # "accepted"/"refused" counts

    def note_recipient(self, entry: dict[str, Any], accepted: bool) -> None:
        if not accepted:
            self.last_refusal = entry["reply"]
        rec = self.record.recipients
        if len(rec) < LOG_RECIPIENTS:
            rec.append(entry)
            return
        key = "accepted" if accepted else "refused"
        if not self.omitted:
            rec.append({"omitted": self.omitted})  # the same dict, counted on below
        self.omitted[key] = self.omitted.get(key, 0) + 1


class FaxHandler:
    def __init__(self, config: ConfigProvider, db: Db, cpu: ParsePool,
                 committer: GroupCommitter, metrics: Metrics, wakeups: Wakeups,
                 inflight: InFlight | None = None) -> None:
        self.config, self.db, self.cpu, self.committer = config, db, cpu, committer
        self.metrics, self.wakeups = metrics, wakeups
        # accepted recipients of unfinished transactions, so rate limits hold
        # across concurrent sessions (shared with the Faxes API)
        self.inflight = inflight or InFlight()

    @property
    def cfg(self):  # noqa: ANN201 - always the current config (live reload)
        return self.config.current

    # ----------------------------------------------------------- helpers
    def _new_tx(self, session: Session, mail_from: str) -> Tx:
        rec = SmtpLogRecord(peer=session.peer[0] if session.peer else None,
                            helo=session.host_name, tls=bool(session.ssl),
                            auth_user=getattr(session, "fb_user", None),
                            mail_from=mail_from.lower())
        # XFORWARD (smtp/server.py) applies to this one transaction
        origin = (getattr(session, "fb_xforward", None) or {}).get("ADDR")
        session.fb_xforward = {}  # type: ignore[attr-defined]
        client = accept.Client(rec.peer, auth_user=rec.auth_user if getattr(
                                   session, "authenticated", False) else None,
                               tls=rec.tls, origin=origin)
        if origin:
            rec.peer = f"{origin} via {rec.peer}"
        tx = Tx(rec, accept.MailState(mail_from, client))
        session.fb_tx = tx  # type: ignore[attr-defined]
        return tx

    def flush(self, session: Session, reply: str | None = None) -> None:
        """Write the log record of an unfinished transaction (RSET, QUIT, drop)."""
        tx: Tx | None = getattr(session, "fb_tx", None)
        if tx is None:
            return
        self.inflight.release(tx)  # no job (or already committed): nothing to hold
        if tx.logged:
            return
        tx.logged = True
        refused = tx.last_refusal
        # The reason that counts is the last refusal when the client just gave up.
        reason = tx.record.reply or refused or reply or ""
        if reply and not tx.record.reply:
            tx.record.reply = f"{reply} after {refused}" if refused else reply
        self.metrics.smtp_reply(reason, False)
        log_transaction(tx.record, reason)
        # Off the event loop: a commit waits for fsync.
        fut = asyncio.ensure_future(self.db.run(self.db.store.add_log, tx.record))
        fut.add_done_callback(_log_failure)

    # ------------------------------------------------------------- hooks
    async def handle_MAIL(self, server: Any, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        self.flush(session, "(transaction abandoned)")
        tx = self._new_tx(session, address)
        decision = accept.mail(self.cfg, tx.state.client, address)
        tx.state.report_to = decision.report_to
        if not decision.accepted:
            tx.record.reply = decision.reply
            self.flush(session)
            return decision.reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return decision.reply

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        tx: Tx = getattr(session, "fb_tx", None) or self._new_tx(session, envelope.mail_from
                                                                   or "")
        cfg = self.cfg
        decision = accept.recipient(cfg, tx.state, address)
        if decision.pending:
            counts = await self._counts(tx, decision.pending)
            # no await from here to the hold: no other session counts in between
            decision = accept.recipient(cfg, tx.state, address, counts)
        if decision.accepted and not decision.duplicate:
            self.inflight.hold(tx, decision.keys)
        tx.state.record(address, decision)
        entry: dict[str, Any] = {"address": address}
        if decision.number:
            entry["number"] = decision.number
        if decision.rule is not None:
            entry["rule"] = decision.rule.name
        if decision.why is not None:
            entry["why"] = decision.why
        entry["reply"] = decision.reply
        tx.note_recipient(entry, decision.accepted)
        if decision.accepted:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return decision.reply

    async def _counts(self, tx: Tx, limits: tuple[accept.Limit, ...]) -> dict[
            tuple[str, str, str], int]:
        """Other transactions' faxes under each limit (runtime.inflight)."""
        return await count_limits(self.db, self.inflight, tx, limits)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        """End of DATA. Nothing a client sends may surface as a traceback: input the
        parser refuses gets its reason (554), anything else unexpected a one-line
        log entry and a temporary failure without internal details (aiosmtpd would
        otherwise answer with the exception's text and log its traceback)."""
        tx: Tx | None = getattr(session, "fb_tx", None)
        if tx is None or not tx.state.numbers:
            return replies.S503_NEED_RCPT
        try:
            return await self._data(session, envelope, tx)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.error("DATA failed unexpectedly (peer=%s): %s", tx.record.peer,
                      _one_line(exc))
            log.debug("DATA failure", exc_info=True)
            tx.record.ok, tx.record.job_id = False, None
            tx.record.reply = replies.S451_INTERNAL
            tx.logged = False
            self.flush(session)
            return replies.S451_INTERNAL

    async def _data(self, session: Session, envelope: Envelope, tx: Tx) -> str:
        t0 = time.perf_counter()
        raw: bytes | bytearray = envelope.original_content or envelope.content or b""
        rec = tx.record
        rec.size = len(raw)
        rule = tx.state.rule
        assert rule is not None  # set with the first accepted recipient
        cfg = self.cfg
        try:
            # every header of the mail is parsed in the pool, never on the event loop:
            # a multi-megabyte To: or Subject: would stall every other session
            parsed = await self.cpu.run(parse_mail, raw, cfg.fax.allowed_types, rule.body,
                                        cfg.fax.default_country)
        except MimeError as exc:
            log.warning("mail refused (peer=%s): %s", rec.peer, exc)
            rec.reply = replies.S554_BAD_MIME.format(why=exc)
            self.flush(session)
            return rec.reply
        except ParserUnavailable as exc:
            # the parse process died with this mail in hand: not necessarily the
            # mail's fault, and nothing was queued, so the client may try again
            log.error("mail deferred (peer=%s): %s", rec.peer, exc)
            rec.reply = replies.S451_INTERNAL
            self.flush(session)
            return rec.reply
        except Exception as exc:  # noqa: BLE001 - the parser must never crash a session
            # a parser bug, not the client's fault: its text stays in our log
            log.error("MIME parsing failed (peer=%s): %s", rec.peer, _one_line(exc))
            log.debug("MIME parsing failure", exc_info=True)
            rec.reply = replies.S554_BAD_MIME.format(why="its MIME structure is broken")
            self.flush(session)
            return rec.reply
        ext, subject, names = parsed.ext, parsed.subject, parsed.names
        t1 = time.perf_counter()
        rec.timings["parse_ms"] = round((t1 - t0) * 1000, 2)
        rec.message_id = ext.message_id
        rec.subject = subject
        rec.parts = [p.as_dict() for p in ext.parts]
        job_id = new_job_id()
        decision = accept.content(cfg, ext, len(raw), job_id, tx.state)
        if not decision.accepted:
            rec.reply = decision.reply
            self.flush(session)
            return rec.reply
        fax = [(num, addr, names.get(num), pretty) for num, addr, pretty in tx.state.numbers]
        header = header_line(subject, cfg.fax.header_template, cfg.fax.header_max_length,
                             sender=envelope.mail_from or "", number=fax[0][3])
        now = time.time()
        job = NewJob(
            sender=(envelope.mail_from or "").lower(),
            recipients=[NewRecipient(n, a, d) for n, a, d, _ in fax],
            documents=[NewDocument(d.name, d.content_type, d.data, d.charset)
                       for d in ext.documents],
            options=fax_options(cfg, rule),
            raw=raw,
            deadline=now + cfg.fax.submit_deadline_seconds,
            valid_until=now + cfg.fax.job_valid_seconds,
            auth_user=tx.state.client.auth_user, peer=rec.peer,
            report_to=tx.state.report_to,
            message_id=ext.message_id, subject=subject, rule=rule.name, header=header,
            notify=rule.notify, attach_documents=rule.attach_documents, id=job_id)
        rec.reply = decision.reply
        rec.ok = True
        rec.timings["total_before_commit_ms"] = round((time.perf_counter() - tx.started)
                                                      * 1000, 2)
        try:
            await self.committer.commit(job, rec)
            # the store counts this job's faxes now
            self.inflight.release(tx, committed=True)
        except StoreError as exc:
            log.error("store failure, answering 451: %s", exc)
            rec.ok, rec.job_id = False, None
            rec.reply = replies.S451_STORE
            tx.logged = False
            self.flush(session)  # the log record is tried on its own (it may fail too)
            return rec.reply
        tx.logged = True
        self.metrics.smtp_reply(rec.reply, True)
        log_transaction(rec, rec.reply, job.id)
        self.wakeups.accepted()
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


def _one_line(exc: BaseException) -> str:
    return clean_text(f"{type(exc).__name__}: {exc}", 300)
