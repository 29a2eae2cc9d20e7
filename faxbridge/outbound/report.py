"""The status report mail of a job (pure apart from the composer's templates)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faxbridge.intake.numbers import pretty
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


def build_report(composer: Composer, job: Job, recipients: list[dict[str, Any]],
                 event: str, *, mail_from: str, pages: int | None = None,
                 error: str | None = None,
                 documents: list[tuple[str, str, bytes]] = ()) -> bytes:
    rows = []
    for r in recipients:
        what, todo = explain(r.get("status"))
        rows.append({"number": pretty(r["number"]), "name": r.get("display_name"),
                     "status": r.get("status") or "-", "reason": r.get("reason") or "",
                     "explanation": what, "advice": todo, "sent_ts": r.get("sent_ts"),
                     "duration": r.get("duration"), "pages": r.get("pages"),
                     "remote_csid": r.get("remote_csid")})
    failed = [x for x in rows if x["status"].upper() != "OK"]
    ctx = {
        "event": event, "job_id": job.id, "retarus_job_id": job.retarus_job_id,
        "subject": job.subject or "", "sender": job.sender, "recipients": rows,
        "failed": failed, "pages": pages, "error": error,
        # a refused job needs a fix before it is sent again; a job that could not be
        # handed over in time needs only a later try: the advice differs
        "refused": any(x["status"].upper() == "REFUSED" for x in rows),
        "target": rows[0]["number"] if len(rows) == 1 else f"{len(rows)} recipients",
        "documents": [name for name, _, _ in documents],
    }
    msg = composer.compose(f"report.{event}", ctx, mail_from=mail_from, to=[job.report_address],
                           in_reply_to=job.message_id, attachments=list(documents))
    return msg.as_bytes()
