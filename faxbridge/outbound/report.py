"""The status report mail of a job (pure apart from the composer's templates)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faxbridge.intake.numbers import pretty
from faxbridge.mail.pages import page_count
from faxbridge.outbound.statuses import explain

if TYPE_CHECKING:
    from faxbridge.mail.compose import Composer
    from faxbridge.store.rows import Job


# The held job's reason when its outcome is recorded but its report cannot be made
# from its own data: the fax went out, so releasing it would send it again.
REPORT_HELD = "outcome recorded, report mail could not be composed"


def event_for(results: list[dict[str, Any]], submitted: bool) -> str:
    if not submitted:
        return "notsubmitted"
    ok = [r for r in results if (r.get("status") or "").upper() == "OK"]
    if len(ok) == len(results):
        return "delivered"
    return "partial" if ok else "failed"


def wanted(notify: str, event: str) -> bool:
    if notify == "never":
        return False
    if notify == "failure":
        return event != "delivered"
    return True


def report_to(job: Job) -> list[str]:
    """Who gets a job's report: the addresses a Faxes API request named in
    notifications.email.send_to, else the job's report address (its sender, or the
    authenticated user's own address when MAIL FROM is not one of the user's)."""
    api = job.options.get("api") or {}
    send_to = ((api.get("notifications") or {}).get("email") or {}).get("send_to")
    return list(send_to) if send_to else [job.report_address]


# The name intake.mime gives the mail's own text when it is faxed: always the first
# document of the job (the body is collated before the attachments).
BODY_NAME = "mail-body.txt"


def faxed_documents(documents: list[tuple[str, str, bytes]],
                    pages: int | None) -> tuple[list[dict[str, Any]], int | None]:
    """The job's documents for the reader, in fax order, and the number of pages the
    mail text took (None when unknown). Retarus reports only the total: the mail
    text's share is what the total leaves after the attachments we can count (PDF,
    TIFF, images); when every share is known, each document gets its page range."""
    items = []
    for i, (name, ctype, data) in enumerate(documents):
        body = i == 0 and name == BODY_NAME and ctype == "text/plain"
        items.append({"name": name, "body": body, "first": None, "last": None,
                      "pages": None if body else page_count(ctype, name, data)})
    body_pages = None
    others = [d["pages"] for d in items if not d["body"]]
    if items and items[0]["body"] and pages and None not in others:
        left = pages - sum(n for n in others if n is not None)
        body_pages = left if left >= 1 else None
        items[0]["pages"] = body_pages
    counts = [d["pages"] for d in items]
    if pages and items and None not in counts and sum(counts) == pages:
        first = 1
        for d in items:
            d["first"], d["last"] = first, first + d["pages"] - 1
            first += d["pages"]
    return items, body_pages


def build_report(composer: Composer, job: Job, recipients: list[dict[str, Any]],
                 event: str, *, mail_from: str, pages: int | None = None,
                 error: str | None = None,
                 documents: list[tuple[str, str, bytes]] = (),
                 attach: bool = True) -> bytes:
    """The report mail. `documents` are the job's documents (listed in the mail);
    they are attached too when `attach` (the sender rule's attach_documents)."""
    rows = []
    for r in recipients:
        what, todo = explain(r.get("status"))
        status = r.get("status") or "-"
        rows.append({"number": pretty(r["number"]), "name": r.get("display_name"),
                     "status": status, "reason": r.get("reason") or "",
                     "ok": status.upper() == "OK",
                     "explanation": what, "advice": todo, "sent_ts": r.get("sent_ts"),
                     "duration": r.get("duration"), "pages": r.get("pages"),
                     "remote_csid": r.get("remote_csid")})
    failed = [x for x in rows if not x["ok"]]
    # One piece of advice for the whole mail when every failed recipient shares it;
    # otherwise each recipient shows its own.
    advices = {x["advice"] for x in failed if x["advice"]}
    faxed, body_pages = faxed_documents(list(documents), pages)
    sent_at = next((x["sent_ts"] for x in rows if x["ok"] and x["sent_ts"]), None)
    ctx = {
        "event": event, "job_id": job.id, "retarus_job_id": job.retarus_job_id,
        "subject": job.subject or "", "sender": job.sender, "recipients": rows,
        "failed": failed, "pages": pages or None, "error": error,
        # a refused job needs a fix before it is sent again; a job that could not be
        # handed over in time needs only a later try: the advice differs
        "refused": any(x["status"].upper() == "REFUSED" for x in rows),
        "target": rows[0]["number"] if len(rows) == 1 else f"{len(rows)} recipients",
        "documents": [name for name, _, _ in documents] if attach else [],
        "faxed": faxed, "body_pages": body_pages, "sent": event in ("delivered", "partial"),
        "advice": advices.pop() if len(advices) == 1 else None,
        "sent_at": sent_at, "received": job.created,
    }
    # The job id is for the admin (faxbridge jobs show ID), not for the reader: a
    # header keeps it findable without putting it into the text.
    msg = composer.compose(f"report.{event}", ctx, mail_from=mail_from, to=report_to(job),
                           in_reply_to=job.message_id,
                           attachments=list(documents) if attach else [],
                           headers={"X-Faxbridge-Job": job.id})
    return msg.as_bytes()
