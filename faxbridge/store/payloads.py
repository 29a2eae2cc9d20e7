"""Deleting faxes and their payloads in SQLite, and paged listings.

A payload is what a fax carried: for a sent fax the mail as received, its
documents and its settled report mails (which may attach the documents); for a
received fax its files and its settled mails. Deleting only the payload keeps the
job or fax row, its recipients and results, its timeline and the SMTP log: the
evidence that it was sent or received. Only settled items lose anything: a job
still being sent needs its documents, a fax not yet mailed its files.

Every deletion that removed something ends with `reclaim` (incremental vacuum and
a WAL checkpoint): the space goes back to the file system and the bytes are gone
from the store's files, not only unreachable."""

from __future__ import annotations

import sqlite3
from typing import Any

from faxbridge.store.db import Database, reclaim
from faxbridge.store.new import OUT_FINAL
from faxbridge.store.rows import InboundFax, Job, LogEntry, rows_as
from faxbridge.store.statements import insert_event

# A received fax whose payload may go: delivered, or held (the admin gave up on it).
IN_SETTLED = ("delivered", "held")
_FINAL = ",".join(f"'{s}'" for s in OUT_FINAL)
_SETTLED = ",".join(f"'{s}'" for s in IN_SETTLED)
_JOB_HAS_PAYLOAD = (
    "(EXISTS (SELECT 1 FROM job_documents d WHERE d.job_id=jobs.id) OR "
    "EXISTS (SELECT 1 FROM job_messages m WHERE m.job_id=jobs.id) OR "
    "EXISTS (SELECT 1 FROM mail_out o WHERE o.kind='report' AND o.ref=jobs.id "
    "AND o.state IN ('sent','failed') AND length(o.raw)>0))")
_FAX_HAS_PAYLOAD = (
    "(EXISTS (SELECT 1 FROM inbound_files f WHERE f.fax_id=inbound.id) OR "
    "EXISTS (SELECT 1 FROM mail_out o WHERE o.kind='inbound' AND o.ref=inbound.id "
    "AND o.state IN ('sent','failed') AND length(o.raw)>0))")


def _drop_job_payload(c: sqlite3.Connection, job_id: str) -> None:
    c.execute("DELETE FROM job_documents WHERE job_id=?", (job_id,))
    c.execute("DELETE FROM job_messages WHERE job_id=?", (job_id,))
    c.execute("UPDATE mail_out SET raw=zeroblob(0) WHERE kind='report' AND ref=? "
              "AND state IN ('sent','failed')", (job_id,))


def _drop_fax_payload(c: sqlite3.Connection, key: str) -> None:
    c.execute("DELETE FROM inbound_files WHERE fax_id=?", (key,))
    c.execute("UPDATE mail_out SET raw=zeroblob(0) WHERE kind='inbound' AND ref=? "
              "AND state IN ('sent','failed')", (key,))


class SqlitePayloads:
    db: Database

    def _reclaim(self) -> None:
        with self.db.read() as c:
            reclaim(c)

    # ------------------------------------------------------------ deleting
    def delete_job(self, job_id: str) -> bool:
        """A finished job with everything of it but its SMTP log record (which has its
        own retention). False when there is no such finished job."""
        with self.db.tx() as c:
            row = c.execute(f"SELECT 1 FROM jobs WHERE id=? AND state IN ({_FINAL})",
                            (job_id,)).fetchone()
            if row is None:
                return False
            c.execute("DELETE FROM mail_out WHERE kind='report' AND ref=? AND state!='queued'",
                      (job_id,))
            c.execute("DELETE FROM job_events WHERE job_id=?", (job_id,))
            c.execute("DELETE FROM jobs WHERE id=?", (job_id,))  # cascades to its tables
        self._reclaim()
        return True

    def delete_job_payload(self, job_id: str, detail: str) -> bool:
        """The payload of a finished job; the job, results and timeline stay (with an
        event saying so). False when there is no such finished job."""
        with self.db.tx() as c:
            row = c.execute(f"SELECT 1 FROM jobs WHERE id=? AND state IN ({_FINAL})",
                            (job_id,)).fetchone()
            if row is None:
                return False
            _drop_job_payload(c, job_id)
            insert_event(c, job_id, "payload-deleted", detail)
        self._reclaim()
        return True

    def delete_inbound(self, key: str) -> bool:
        """A settled, acknowledged received fax with its files and mails. False when
        there is none (an unacknowledged one would be fetched and stored again)."""
        with self.db.tx() as c:
            row = c.execute(f"SELECT 1 FROM inbound WHERE id=? AND acked=1 AND state IN "
                            f"({_SETTLED})", (key,)).fetchone()
            if row is None:
                return False
            c.execute("DELETE FROM mail_out WHERE kind='inbound' AND ref=? AND state!='queued'",
                      (key,))
            c.execute("DELETE FROM inbound WHERE id=?", (key,))  # cascades to its files
        self._reclaim()
        return True

    def delete_inbound_payload(self, key: str) -> bool:
        """The files and settled mails of a settled received fax; its row stays."""
        with self.db.tx() as c:
            row = c.execute(f"SELECT 1 FROM inbound WHERE id=? AND state IN ({_SETTLED})",
                            (key,)).fetchone()
            if row is None:
                return False
            _drop_fax_payload(c, key)
        self._reclaim()
        return True

    def expire_payloads(self, direction: str, before: float, limit: int = 1000) -> list[str]:
        """Delete the payloads of settled items of `direction` ('outbound' or
        'inbound') created before `before`; the ids whose payload went."""
        assert direction in ("outbound", "inbound"), direction
        with self.db.tx() as c:
            if direction == "outbound":
                ids = [r[0] for r in c.execute(
                    f"SELECT id FROM jobs WHERE state IN ({_FINAL}) AND created<? AND "
                    f"{_JOB_HAS_PAYLOAD} ORDER BY created LIMIT ?", (before, limit))]
                for job_id in ids:
                    _drop_job_payload(c, job_id)
                    insert_event(c, job_id, "payload-expired",
                                 "storage.payload_retention_days reached")
            else:
                ids = [r[0] for r in c.execute(
                    f"SELECT id FROM inbound WHERE state IN ({_SETTLED}) AND created<? AND "
                    f"{_FAX_HAS_PAYLOAD} ORDER BY created LIMIT ?", (before, limit))]
                for key in ids:
                    _drop_fax_payload(c, key)
        if ids:
            self._reclaim()
        return ids

    # ------------------------------------------------------------- paging
    # Newest first; `start_key` is the id of the first item of the page (the
    # previous page's next_start_key). The caller asks for one more than it shows
    # to learn whether more remain.
    def page_jobs(self, *, states: tuple[str, ...], senders: tuple[str, ...] | None = None,
                  created_from: float | None = None, created_to: float | None = None,
                  start_key: str | None = None, limit: int = 50) -> list[Job]:
        sql = f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(states))})"
        args: list[Any] = list(states)
        if senders is not None:
            sql += f" AND sender IN ({','.join('?' * len(senders))})"
            args += [s.lower() for s in senders]
        sql, args = _window(sql, args, "created", created_from, created_to)
        if start_key is not None:
            sql += " AND (created, id) <= (SELECT created, id FROM jobs WHERE id=?)"
            args.append(start_key)
        return rows_as(Job, self.db.query(sql + " ORDER BY created DESC, id DESC LIMIT ?",
                                          (*args, limit)))

    def page_inbound(self, *, states: tuple[str, ...] | None = None,
                     topics: tuple[str, ...] | None = None, created_from: float | None = None,
                     created_to: float | None = None, start_key: str | None = None,
                     limit: int = 50) -> list[InboundFax]:
        sql, args = "SELECT * FROM inbound WHERE 1=1", []
        if states is not None:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        if topics is not None:
            sql += f" AND topic IN ({','.join('?' * len(topics))})"
            args += list(topics)
        sql, args = _window(sql, args, "created", created_from, created_to)
        if start_key is not None:
            sql += " AND (created, id) <= (SELECT created, id FROM inbound WHERE id=?)"
            args.append(start_key)
        return rows_as(InboundFax, self.db.query(
            sql + " ORDER BY created DESC, id DESC LIMIT ?", (*args, limit)))

    def page_log(self, *, senders: tuple[str, ...] | None = None,
                 created_from: float | None = None, created_to: float | None = None,
                 start_key: int | None = None, limit: int = 50) -> list[LogEntry]:
        sql, args = "SELECT * FROM smtp_log WHERE 1=1", []
        if senders is not None:
            sql += f" AND mail_from IN ({','.join('?' * len(senders))})"
            args += [s.lower() for s in senders]
        sql, args = _window(sql, args, "ts", created_from, created_to)
        if start_key is not None:
            sql += " AND id<=?"
            args.append(start_key)
        return rows_as(LogEntry, self.db.query(sql + " ORDER BY id DESC LIMIT ?",
                                               (*args, limit)))


def _window(sql: str, args: list[Any], column: str, t_from: float | None,
            t_to: float | None) -> tuple[str, list[Any]]:
    if t_from is not None:
        sql += f" AND {column}>=?"
        args.append(t_from)
    if t_to is not None:
        sql += f" AND {column}<=?"
        args.append(t_to)
    return sql, args
