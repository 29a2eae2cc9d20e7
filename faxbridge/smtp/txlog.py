"""The process log's line per SMTP transaction, like Postfix's smtpd lines: one INFO
line whether the mail was accepted, refused or abandoned, with the peer, sender,
recipients, reply and job id, so `grep` in journald answers "did my fax arrive?"
without the store. In JSON mode the same facts are fields (logging `extra`)."""

from __future__ import annotations

import logging
from typing import Any

from faxbridge.store.new import SmtpLogRecord

log = logging.getLogger("faxbridge.smtp")


def result_of(reply: str) -> str:
    """accepted (2xx), deferred (4xx), refused (5xx) or abandoned (no reply code:
    the client reset or quit before DATA)."""
    return {"2": "accepted", "4": "deferred", "5": "refused"}.get(reply[:1], "abandoned")


def log_transaction(rec: SmtpLogRecord, reply: str, job_id: str | None = None) -> None:
    recipients = [str(r.get("address", "")) for r in rec.recipients]
    code = int(reply[:3]) if reply[:3].isdigit() else None
    result = result_of(reply)
    sender = "" if rec.mail_from in (None, "<>") else rec.mail_from  # the null sender
    # "<client> via <mta>" when an MTA in front named its client (XFORWARD)
    client, _, via = (rec.peer or "").partition(" via ")
    peer = via or rec.peer
    fields: dict[str, Any] = {
        "event": "smtp", "result": result, "peer": peer, "client": client if via else None,
        "helo": rec.helo,
        "sender": sender, "recipients": recipients, "code": code,
        "reply": reply, "job": job_id, "message_id": rec.message_id, "size": rec.size,
        "auth_user": rec.auth_user,
    }
    # key=value like Postfix's smtpd lines; <> around addresses so that an empty
    # sender is visible and `grep 'from=<a@b>'` matches exactly.
    text = f"{result}: peer={peer}" + (f" client={client}" if via else "")
    text += (f" from=<{sender}> "
            f"to={','.join(f'<{r}>' for r in recipients) or '-'}")
    if rec.auth_user:
        text += f" user={rec.auth_user}"
    if job_id:
        text += f" job={job_id}"
    if rec.message_id:
        text += f" message_id={rec.message_id}"
    if rec.size is not None:
        text += f" size={rec.size}"
    text += f' reply="{reply}"'
    log.info("%s", text, extra=fields)
