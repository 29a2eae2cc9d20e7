"""What callers hand the store to write: a new job with its recipients and
documents, an SMTP log record; and the states a row can be in."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

OUT_FINAL = ("done", "failed")
OUT_STATES = ("queued", "submitting", "submitted", "done", "failed", "deferred", "held")
IN_STATES = ("stored", "mailing", "delivered", "held")


def new_job_id() -> str:
    # Short, sortable by time, unique: shows up in the 250 reply and in reports.
    return f"FB{int(time.time()):x}{uuid.uuid4().hex[:10]}".upper()


@dataclass
class NewRecipient:
    number: str
    address: str
    display_name: str | None = None


@dataclass
class NewDocument:
    name: str
    content_type: str
    data: bytes
    charset: str | None = None


@dataclass
class NewJob:
    sender: str
    recipients: list[NewRecipient]
    documents: list[NewDocument]
    options: dict[str, Any]  # the resolved fax options (outbound.request.fax_options)
    raw: bytes | bytearray  # as received (the SMTP listener's buffer, not copied)
    deadline: float
    valid_until: float
    auth_user: str | None = None
    message_id: str | None = None
    subject: str | None = None
    rule: str | None = None
    header: str | None = None
    notify: str = "always"
    attach_documents: bool = False
    peer: str | None = None       # the SMTP client's IP address (rate limits)
    report_to: str | None = None  # where reports go when not to `sender`
    id: str = field(default_factory=new_job_id)
    # A job is created queued; one whose documents could not be had at all (a
    # Faxes API document URL that failed) is recorded failed, with why.
    state: str = "queued"
    last_error: str | None = None


@dataclass
class SmtpLogRecord:
    peer: str | None = None
    helo: str | None = None
    tls: bool = False
    auth_user: str | None = None
    mail_from: str | None = None
    recipients: list[dict[str, Any]] = field(default_factory=list)
    message_id: str | None = None
    subject: str | None = None
    size: int | None = None
    parts: list[dict[str, Any]] = field(default_factory=list)
    reply: str | None = None
    ok: bool = False
    job_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)
