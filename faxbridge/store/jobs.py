"""Outgoing fax jobs in SQLite: jobs, job_recipients, job_documents, job_messages
and job_events. Every state change is one transaction with its timeline event."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from faxbridge.store.db import Database, read_blob, write_blob
from faxbridge.store.new import OUT_FINAL, OUT_STATES, NewJob, SmtpLogRecord
from faxbridge.store.rows import Job, JobDocument, JobEvent, JobRecipient, row_as, rows_as
from faxbridge.store.statements import insert_event, insert_log, insert_mail


class SqliteJobs:
    db: Database

    def create_jobs(self, batch: list[tuple[NewJob, SmtpLogRecord | None]]) -> None:
        """Commit each accepted message with its job, recipients, documents and SMTP
        log record; several mails in one transaction (group commit: one fsync). All
        or none are committed; the caller answers each SMTP client after this."""
        now = time.time()
        with self.db.tx() as c:
            for job, log in batch:
                _insert_job(c, job, log, now)

    def add_event(self, job_id: str, kind: str, detail: str = "") -> None:
        with self.db.tx() as c:
            insert_event(c, job_id, kind, detail)

    def next_jobs(self, limit: int, exclude: set[str] | frozenset[str] = frozenset(),
                  now: float | None = None) -> list[Job]:
        """Up to `limit` due queued/deferred jobs, oldest first, skipping `exclude`."""
        now = time.time() if now is None else now
        rows = self.db.query(
            "SELECT * FROM jobs WHERE state IN ('queued','deferred') AND next_attempt<=? "
            "ORDER BY next_attempt, created LIMIT ?", (now, limit + len(exclude)))
        return rows_as(Job, [r for r in rows if r["id"] not in exclude][:limit])

    def claim_job(self, job_id: str) -> bool:
        """Mark a job submitting, right before its POST: after a crash, 'submitting'
        means the request may have reached Retarus."""
        now = time.time()
        with self.db.tx() as c:
            row = c.execute("SELECT state, attempts FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row["state"] not in ("queued", "deferred"):
                return False
            c.execute("UPDATE jobs SET state='submitting', attempts=attempts+1, updated=? "
                      "WHERE id=?", (now, job_id))
            insert_event(c, job_id, "submitting", f"attempt {row['attempts'] + 1}")
        return True

    def abandoned_submissions(self, at_start: bool) -> list[Job]:
        # one bridge per file: at its start, every `submitting` job is a crash's
        return self.jobs_in(("submitting",)) if at_start else []

    def job(self, job_id: str) -> Job | None:
        rows = self.db.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return row_as(Job, rows[0]) if rows else None

    def job_by_retarus_id(self, retarus_job_id: str) -> Job | None:
        rows = self.db.query("SELECT * FROM jobs WHERE retarus_job_id=?", (retarus_job_id,))
        return row_as(Job, rows[0]) if rows else None

    def job_documents(self, job_id: str) -> list[JobDocument]:
        """The documents with their data (read straight into one bytes object each)."""
        with self.db.read() as c:
            rows = c.execute(
                "SELECT rowid, job_id, idx, name, content_type, charset FROM job_documents "
                "WHERE job_id=? ORDER BY idx", (job_id,)).fetchall()
            return [JobDocument(r["job_id"], r["idx"], r["name"], r["content_type"],
                                r["charset"], read_blob(c, "job_documents", "data", r["rowid"]))
                    for r in rows]

    def job_raw(self, job_id: str) -> bytes | None:
        with self.db.read() as c:
            rows = c.execute("SELECT rowid FROM job_messages WHERE job_id=?",
                             (job_id,)).fetchall()
            return read_blob(c, "job_messages", "raw", rows[0][0]) if rows else None

    def job_recipients(self, job_id: str) -> list[JobRecipient]:
        return rows_as(JobRecipient, self.db.query(
            "SELECT * FROM job_recipients WHERE job_id=? ORDER BY idx", (job_id,)))

    def job_events(self, job_id: str) -> list[JobEvent]:
        return rows_as(JobEvent, self.db.query(
            "SELECT * FROM job_events WHERE job_id=? ORDER BY id", (job_id,)))

    def set_job_state(self, job_id: str, state: str, *, event: str, detail: str = "",
                      error: str | None = None, next_attempt: float | None = None,
                      retarus_job_id: str | None = None, datacenter: str | None = None,
                      expect: tuple[str, ...] | None = None) -> bool:
        """One state transition with its timeline event. With `expect`, only applies
        when the job is in one of those states (so a late push cannot undo a final state)."""
        assert state in OUT_STATES, state
        now = time.time()
        with self.db.tx() as c:
            if expect is not None:
                cur = c.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
                if cur is None or cur["state"] not in expect:
                    return False
            c.execute(
                "UPDATE jobs SET state=?, updated=?, last_error=COALESCE(?, last_error), "
                "next_attempt=COALESCE(?, next_attempt), "
                "retarus_job_id=COALESCE(?, retarus_job_id), "
                "datacenter=COALESCE(?, datacenter) WHERE id=?",
                (state, now, error, next_attempt, retarus_job_id, datacenter, job_id))
            insert_event(c, job_id, event, detail)
        return True

    def finish_job(self, job_id: str, state: str, *, event: str, detail: str,
                   recipients: list[dict[str, Any]] | None = None, error: str | None = None,
                   datacenter: str | None = None,
                   mail: tuple[str, list[str], bytes] | None = None,
                   expect: tuple[str, ...] = ("submitted",)) -> bool:
        """Record a job's final outcome, its per-recipient results and its report mail
        in one transaction. Applies only from an `expect`ed state, so a second report
        (poll after push, duplicate push) changes nothing and mails nothing."""
        # held: the outcome is recorded but the report mail cannot be made (a poison mail)
        assert state in OUT_FINAL or state == "held", state
        now = time.time()
        with self.db.tx() as c:
            cur = c.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if cur is None or cur["state"] not in expect:
                return False
            for r in recipients or []:
                c.execute("UPDATE job_recipients SET status=?, reason=?, sent_ts=?, duration=?,"
                          " pages=?, remote_csid=?, sent_to_number=? WHERE job_id=? AND idx=?",
                          (r.get("status"), r.get("reason"), r.get("sent_ts"), r.get("duration"),
                           r.get("pages"), r.get("remote_csid"), r.get("sent_to_number"),
                           job_id, r["idx"]))
            c.execute("UPDATE jobs SET state=?, updated=?, last_error=COALESCE(?, last_error), "
                      "datacenter=COALESCE(?, datacenter) WHERE id=?",
                      (state, now, error, datacenter, job_id))
            insert_event(c, job_id, event, detail)
            if mail is not None:
                mail_from, rcpts, raw = mail
                insert_mail(c, now, "report", job_id, mail_from, rcpts, raw)
                c.execute("UPDATE jobs SET reported=1 WHERE id=?", (job_id,))
                insert_event(c, job_id, "report-queued", f"report mail to {', '.join(rcpts)}")
        return True

    def release_job(self, job_id: str, *, detail: str, deadline: float,
                    valid_until: float) -> bool:
        """A held job back to queued, due now, with a new deadline and validity."""
        with self.db.tx() as c:
            cur = c.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if cur is None or cur["state"] != "held":
                return False
            c.execute("UPDATE jobs SET state='queued', updated=?, next_attempt=0, deadline=?, "
                      "valid_until=? WHERE id=?", (time.time(), deadline, valid_until, job_id))
            insert_event(c, job_id, "released", detail)
        return True

    def reports_to_delete(self, limit: int = 1000) -> list[Job]:
        return rows_as(Job, self.db.query(
            "SELECT * FROM jobs WHERE state IN ('done','failed') "
            "AND retarus_job_id IS NOT NULL AND report_deleted=0 LIMIT ?", (limit,)))

    def mark_reports_deleted(self, job_ids: list[str], detail: str) -> None:
        with self.db.tx() as c:
            for job_id in job_ids:
                c.execute("UPDATE jobs SET report_deleted=1 WHERE id=?", (job_id,))
                insert_event(c, job_id, "report-deleted", detail)

    def due_submitted(self, now: float, limit: int = 100) -> list[Job]:
        return rows_as(Job, self.db.query(
            "SELECT * FROM jobs WHERE state='submitted' AND next_attempt<=? "
            "ORDER BY next_attempt LIMIT ?", (now, limit)))

    def schedule_poll(self, job_id: str, next_attempt: float, detail: str | None,
                      error: str | None = None) -> None:
        """Next report poll; `error` (a poll that failed) is shown as the job's last
        error until a poll gets through again."""
        with self.db.tx() as c:
            # only while submitted: a poll that raced a push which ended (or held) the
            # job meanwhile must not wipe the reason it was held with
            cur = c.execute("UPDATE jobs SET next_attempt=?, updated=?, last_error=? "
                            "WHERE id=? AND state='submitted'",
                            (next_attempt, time.time(), error, job_id))
            if detail and cur.rowcount:
                insert_event(c, job_id, "poll", detail)

    def jobs_in(self, states: tuple[str, ...], limit: int = 1000) -> list[Job]:
        marks = ",".join("?" * len(states))
        return rows_as(Job, self.db.query(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created LIMIT ?",
            (*states, limit)))

    def held_for(self, error: str, limit: int = 10000) -> list[Job]:
        """Held jobs whose last_error is exactly `error` (not cut off by other held jobs)."""
        return rows_as(Job, self.db.query(
            "SELECT * FROM jobs WHERE state='held' AND last_error=? ORDER BY created LIMIT ?",
            (error, limit)))

    def list_jobs(self, *, state: str | None = None, sender: str | None = None,
                  limit: int = 100) -> list[Job]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if state:
            sql += " AND state=?"
            args.append(state)
        if sender:
            sql += " AND sender=?"
            args.append(sender.lower())
        sql += " ORDER BY created DESC LIMIT ?"
        args.append(limit)
        return rows_as(Job, self.db.query(sql, tuple(args)))

    def count_faxes_since(self, scope: str, key: str, since: float) -> int:
        """Faxes (job recipients) accepted since `since` for a rate limit's key:
        scope 'user' (authenticated user), 'sender' (envelope sender), 'client'
        (client IP address) or 'number' (E.164 recipient number)."""
        where = _FAX_SCOPES[scope]
        rows = self.db.query(
            "SELECT COUNT(*) FROM job_recipients r JOIN jobs j ON j.id = r.job_id "
            f"WHERE {where}=? AND j.created>=?", (key, since))
        return int(rows[0][0])

    def job_state_counts(self) -> dict[str, int]:
        """How many jobs are in each state (states without jobs are left out)."""
        return {r[0]: int(r[1]) for r in self.db.query(
            "SELECT state, COUNT(*) FROM jobs GROUP BY state")}


# a rate limit's scope → the column it counts by (a fixed table: never client text)
_FAX_SCOPES = {"user": "j.auth_user", "sender": "j.sender", "client": "j.peer",
               "number": "r.number"}


def _insert_job(c: sqlite3.Connection, job: NewJob, log: SmtpLogRecord | None,
                now: float) -> None:
    c.execute(
        "INSERT INTO jobs (id,state,created,updated,sender,auth_user,message_id,"
        "subject,rule,header,options_json,deadline,valid_until,notify,"
        "attach_documents,last_error,peer,report_to) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (job.id, job.state, now, now, job.sender, job.auth_user, job.message_id,
         job.subject, job.rule, job.header, json.dumps(job.options),
         job.deadline, job.valid_until, job.notify, int(job.attach_documents),
         job.last_error, job.peer, job.report_to))
    rowid = c.execute("INSERT INTO job_messages (job_id, raw) VALUES (?, zeroblob(?))",
                      (job.id, len(job.raw))).lastrowid
    write_blob(c, "job_messages", "raw", rowid, job.raw)
    c.executemany(
        "INSERT INTO job_recipients (job_id,idx,number,address,display_name) "
        "VALUES (?,?,?,?,?)",
        [(job.id, i, r.number, r.address, r.display_name)
         for i, r in enumerate(job.recipients)])
    for i, d in enumerate(job.documents):
        rowid = c.execute(
            "INSERT INTO job_documents (job_id,idx,name,content_type,charset,data) "
            "VALUES (?,?,?,?,?,zeroblob(?))",
            (job.id, i, d.name, d.content_type, d.charset, len(d.data))).lastrowid
        write_blob(c, "job_documents", "data", rowid, d.data)
    insert_event(c, job.id, "accepted",
                 f"from {job.sender}"
                 + (f" (user {job.auth_user}, reports to {job.report_to})"
                    if job.report_to else "")
                 + f", {len(job.recipients)} recipient(s), "
                 f"{len(job.documents)} document(s), rule {job.rule}")
    if job.state != "queued":
        insert_event(c, job.id, job.state, job.last_error or "")
    if log is not None:
        log.job_id = job.id
        insert_log(c, log)
