"""The rows callers read, as typed, immutable values.

A backend converts its own row type into these before anything leaves the store,
so no caller depends on how a backend represents a row (sqlite3.Row today). The
fields mirror the table columns, in column order, with the column's own value:
flags stay 0/1 integers and `*_json` columns stay JSON text, so the admin views
that serialise a row (operations.public) show exactly what they showed before.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

R = TypeVar("R")


def row_as(cls: type[R], row: Mapping[str, Any]) -> R:
    """One row as `cls`; the columns must be exactly the dataclass's fields (a
    column added by a migration without its field fails here, loudly)."""
    return cls(**dict(row))  # sqlite3.Row: dict() takes its keys()


def rows_as(cls: type[R], rows: Iterable[Any]) -> list[R]:
    return [row_as(cls, r) for r in rows]


@dataclass(frozen=True)
class Job:
    """An outgoing fax job (table jobs)."""

    id: str
    state: str
    created: float
    updated: float
    sender: str
    auth_user: str | None
    message_id: str | None
    subject: str | None
    rule: str | None
    header: str | None
    retarus_job_id: str | None
    datacenter: str | None
    attempts: int
    next_attempt: float
    deadline: float
    valid_until: float
    last_error: str | None
    notify: str
    attach_documents: int
    reported: int
    report_deleted: int
    options_json: str
    peer: str | None = None
    report_to: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        """The resolved fax options the job was accepted with."""
        return dict(json.loads(self.options_json or "{}"))

    @property
    def report_address(self) -> str:
        """Where the job's reports go: the authenticated user's address when MAIL
        FROM was not one of the user's own, else the envelope sender."""
        return self.report_to or self.sender


@dataclass(frozen=True)
class JobRecipient:
    """One fax number of a job and, once reported, its result (job_recipients)."""

    job_id: str
    idx: int
    number: str
    address: str
    display_name: str | None
    status: str | None
    reason: str | None
    sent_ts: str | None
    duration: int | None
    pages: int | None
    remote_csid: str | None
    sent_to_number: str | None


@dataclass(frozen=True)
class JobDocument:
    """One document of a job with its data (job_documents)."""

    job_id: str
    idx: int
    name: str
    content_type: str
    charset: str | None
    data: bytes


@dataclass(frozen=True)
class JobEvent:
    """One line of a job's timeline (job_events)."""

    id: int
    job_id: str
    ts: float
    kind: str
    detail: str | None


@dataclass(frozen=True)
class InboundFax:
    """A received fax; `id` is topic/fax id (table inbound)."""

    id: str
    topic: str
    state: str
    created: float
    updated: float
    metadata_json: str
    attempts: int
    next_attempt: float
    last_error: str | None
    delivered_to: str | None
    acked: int
    fax_id: str | None

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(json.loads(self.metadata_json))


@dataclass(frozen=True)
class InboundDelivery(InboundFax):
    """A received fax the deliverer acts on, with its latest mail's state, error and
    recipients (all None when no mail was queued for it yet)."""

    mail_state: str | None
    mail_error: str | None
    mail_to_json: str | None


@dataclass(frozen=True)
class InboundFile:
    """One file of a received fax (inbound_files); `fax_id` is the fax's key."""

    fax_id: str
    idx: int
    name: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class LogEntry:
    """One SMTP transaction and every decision taken in it (smtp_log)."""

    id: int
    ts: float
    peer: str | None
    helo: str | None
    tls: int
    auth_user: str | None
    mail_from: str | None
    recipients_json: str
    message_id: str | None
    subject: str | None
    size: int | None
    parts_json: str
    reply: str | None
    ok: int
    job_id: str | None
    timings_json: str


@dataclass(frozen=True)
class OutMail:
    """An outgoing mail of the outbox (mail_out): a report or a received fax.
    `raw` is None in listings, which do not load the message."""

    id: int
    state: str
    created: float
    updated: float
    kind: str
    ref: str | None
    mail_from: str
    recipients_json: str
    attempts: int
    next_attempt: float
    last_error: str | None
    raw: bytes | None = None

    @property
    def recipients(self) -> list[str]:
        return list(json.loads(self.recipients_json))
