"""Creating an outgoing fax from the Faxes API, through the accept path the SMTP
listener uses (intake.accept): the token's sender is the mail's sender, each
to_number a recipient address in the first fax domain, and the documents become
the attachments of a mail that is extracted like any other. So sender rules,
destination rules, rate limits, allowed types, size limits and reports are the
ones a mail from that address gets; the mail is stored as the job's message."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from typing import TYPE_CHECKING, Any

from faxbridge.intake import accept
from faxbridge.intake.mime import extract
from faxbridge.intake.subject import header_line
from faxbridge.outbound.request import fax_options
from faxbridge.runtime.inflight import InFlight, count_limits
from faxbridge.store.new import NewDocument, NewJob, NewRecipient, new_job_id
from faxbridge.web.fetch import FetchFailed, allowed, fetch_document
from faxbridge.web.kazoo import ApiError, field_error

if TYPE_CHECKING:
    from faxbridge.config import ApiToken, Config
    from faxbridge.runtime.db import Db
    from faxbridge.runtime.parsers import ParsePool
    from faxbridge.runtime.wakeups import Wakeups
    from faxbridge.store.groupcommit import GroupCommitter

# Schema fields of the document's fax document a client may set.
KNOWN = {"to_number", "to_name", "from_name", "from_number", "retries", "document",
         "notifications", "subject", "attempts", "tx_result", "fax_timezone", "id"}
DOC_FIELDS = {"url", "method", "content", "content_type", "host", "referer"}


@dataclass
class FaxRequest:
    """A checked create request."""

    numbers: list[str]
    to_name: str = ""
    from_name: str = ""
    from_number: str = ""
    retries: int = 1
    subject: str = ""
    document: dict[str, Any] | None = None
    notify_to: list[str] = field(default_factory=list)

    def api_facts(self, token: ApiToken) -> dict[str, Any]:
        """What the job keeps of the request (its options' `api` entry)."""
        facts: dict[str, Any] = {"token": token.name, "account_id": token.account,
                                 "to_name": self.to_name, "from_name": self.from_name,
                                 "from_number": self.from_number, "retries": self.retries}
        if self.document:
            facts["document"] = {k: v for k, v in self.document.items() if k != "content"}
        if self.notify_to:
            facts["notifications"] = {"email": {"send_to": self.notify_to}}
        return facts


def _str(data: dict[str, Any], key: str, limit: int = 200) -> str:
    value = data.get(key, "")
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise field_error(key, "type", "expected a string", value=value)
    if len(str(value)) > limit:
        raise field_error(key, "maxLength", f"at most {limit} characters")
    return str(value)


def parse_request(body: Any, has_files: bool, api_fetch: bool) -> FaxRequest:
    """`{"data": {...}}` checked against the schema; raises ApiError naming the field."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise field_error("data", "required", 'expected a JSON object {"data": {...}}')
    data = body["data"]
    unknown = sorted(set(data) - KNOWN)
    if unknown:
        raise field_error(unknown[0], "unknown", f"not a field of a fax document (known: "
                          f"{', '.join(sorted(KNOWN))})")
    to = data.get("to_number")
    if to is None or to == "" or to == []:
        raise field_error("to_number", "required", "Field is required but missing")
    numbers = [to] if isinstance(to, str | int) and not isinstance(to, bool) else to
    if not isinstance(numbers, list) or not all(
            isinstance(n, str | int) and not isinstance(n, bool) and str(n).strip()
            for n in numbers):
        raise field_error("to_number", "type", "expected a number or a list of numbers",
                          value=to)
    retries = data.get("retries", 1)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 10:
        raise field_error("retries", "type", "expected a whole number from 0 to 10",
                          value=retries)
    req = FaxRequest([str(n).strip() for n in numbers], to_name=_str(data, "to_name"),
                     from_name=_str(data, "from_name"), from_number=_str(data, "from_number", 40),
                     retries=retries, subject=_str(data, "subject"))
    notes = data.get("notifications") or {}
    send_to = (notes.get("email") or {}).get("send_to") if isinstance(notes, dict) else None
    if send_to is not None:
        send_to = [send_to] if isinstance(send_to, str) else send_to
        if not (isinstance(send_to, list) and all(isinstance(a, str) and "@" in a
                                                  for a in send_to)):
            raise field_error("notifications.email.send_to", "type",
                              "expected an address or a list of addresses", value=send_to)
        req.notify_to = send_to
    doc = data.get("document")
    if doc is not None:
        if not isinstance(doc, dict):
            raise field_error("document", "type", "expected an object {\"url\": …}")
        if unknown := sorted(set(doc) - DOC_FIELDS):
            raise field_error(f"document.{unknown[0]}", "unknown",
                              f"not a document field (known: {', '.join(sorted(DOC_FIELDS))})")
        if str(doc.get("method") or "get").lower() not in ("get", "post"):
            raise field_error("document.method", "enum", "expected 'get' or 'post'",
                              value=doc.get("method"))
        if not has_files:
            if not isinstance(doc.get("url"), str) or not doc["url"]:
                raise field_error("document.url", "required", "Field is required but missing")
            if not api_fetch:
                raise field_error("document.url", "forbidden",
                                  "fetching documents is disabled (api.fetch_allow is empty); "
                                  "send the document with the request (multipart/mixed)",
                                  value=doc["url"])
        req.document = doc
    elif not has_files:
        raise field_error("document", "required", "a document is needed: document.url, or "
                          "the document after the JSON in a multipart/mixed request")
    return req


def _mail(sender: str, recipients: list[tuple[str, str]], req: FaxRequest,
          documents: list[tuple[str, str, bytes]], token: ApiToken) -> bytes:
    """The request as the mail it stands for: what is stored as the job's message
    and extracted like a mail (no body text: only the documents are faxed)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(formataddr((req.to_name, a)) if req.to_name else a
                          for a, _ in recipients)
    msg["Subject"] = req.subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="faxbridge.api")
    msg["X-Faxbridge-Api-Token"] = token.name
    for name, ctype, data in documents:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype or "application",
                           subtype=subtype or "octet-stream", filename=name)
    return msg.as_bytes()


class FaxCreator:
    def __init__(self, db: Db, cpu: ParsePool, committer: GroupCommitter,
                 wakeups: Wakeups, inflight: InFlight) -> None:
        self.db, self.cpu, self.committer, self.wakeups = db, cpu, committer, wakeups
        # the SMTP listener's: an API request and a mail count against the same
        # limits, committed or still in flight
        self.inflight = inflight

    async def create(self, cfg: Config, token: ApiToken, peer: str | None, req: FaxRequest,
                     files: list[tuple[str, str, bytes]]) -> str:
        """Accept, fetch, extract and commit: the new job's id. A document that
        cannot be fetched still makes a job, failed with why. Raises ApiError.
        The request's faxes are held against the rate limits until its job is
        committed (or it fails), as an SMTP transaction's are."""
        owner = object()
        try:
            job_id = await self._create(owner, cfg, token, peer, req, files)
        except BaseException:
            self.inflight.release(owner)
            raise
        self.inflight.release(owner, committed=True)
        return job_id

    async def _create(self, owner: object, cfg: Config, token: ApiToken, peer: str | None,
                      req: FaxRequest, files: list[tuple[str, str, bytes]]) -> str:
        client = accept.Client(peer, api_token=token.name)
        sender = token.sender.lower()
        decision = accept.mail(cfg, client, sender)
        if not decision.accepted:
            raise ApiError(403, "forbidden", {"from": {"forbidden": {
                "message": decision.reply, "value": sender}}})
        state = accept.MailState(sender, client)
        for number in req.numbers:
            address = f"{number}@{cfg.fax.domains[0]}"
            d = accept.recipient(cfg, state, address)
            if d.pending:
                counts = await count_limits(self.db, self.inflight, owner, d.pending)
                # no await from here to the hold: nothing else counts in between
                d = accept.recipient(cfg, state, address, counts)
            if not d.accepted:
                code = 429 if d.code == 450 else 400
                raise ApiError(code, "invalid data" if code == 400 else "too many requests",
                               {"to_number": {"refused": {"message": d.reply,
                                                          "value": number}}})
            if not d.duplicate:
                self.inflight.hold(owner, d.keys)
            state.record(address, d)
        rule = state.rule
        assert rule is not None  # set by the first accepted recipient
        job_id = new_job_id()
        error = None
        if not files and req.document is not None:
            if not allowed(cfg.api, req.document["url"]):
                raise field_error("document.url", "forbidden", "not under any prefix of "
                                  "api.fetch_allow: the bridge does not fetch it",
                                  value=req.document["url"])
            try:
                got = await fetch_document(cfg.api, req.document)
                files = [(got.name, got.content_type, got.data)]
            except FetchFailed as exc:
                error = str(exc)
        raw = _mail(sender, [(a, p) for _, a, p in state.numbers], req, files, token)
        if error is None:
            ext = await self.cpu.run(extract, raw, cfg.fax.allowed_types, rule.body)
            decision = accept.content(cfg, ext, len(raw), job_id, state)
            if not decision.accepted:
                code = 413 if decision.code == 552 else 400
                raise ApiError(code, "invalid data", {"document": {"refused": {
                    "message": decision.reply}}})
            documents = [NewDocument(d.name, d.content_type, d.data, d.charset)
                         for d in ext.documents]
        else:
            documents, raw = [], b""
        now = time.time()
        first = state.numbers[0][2]
        job = NewJob(
            sender=sender,
            recipients=[NewRecipient(n, a, req.to_name or None) for n, a, _ in state.numbers],
            documents=documents,
            options={**fax_options(cfg, rule), "api": req.api_facts(token)},
            raw=raw, deadline=now + cfg.fax.submit_deadline_seconds,
            # the jobs list shows who sent it; api:NAME is no SMTP user's name
            valid_until=now + cfg.fax.job_valid_seconds, auth_user=f"api:{token.name}",
            subject=req.subject or None, rule=rule.name,
            header=header_line(req.subject, cfg.fax.header_template,
                               cfg.fax.header_max_length, sender=sender, number=first),
            notify=rule.notify, attach_documents=rule.attach_documents, id=job_id,
            state="failed" if error else "queued", last_error=error)
        await self.committer.commit(job, None)
        if error is None:
            self.wakeups.accepted()
        return job_id
