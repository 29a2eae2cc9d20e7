"""The durable store: the only package that runs SQL.

Every state change is one transaction; workers claim items by state, do one
thing, and record the outcome, so a restart resumes whatever was unfinished.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faxbridge.errors import StoreError
from faxbridge.store.db import Database

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
    id: str = field(default_factory=new_job_id)


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


# Blobs go in and out through SQLite's incremental blob I/O: binding a 30 MB value
# makes SQLite copy it (and build the record around it) before the pages are
# written, and reading one materialises it in SQLite's heap before Python copies it.
# The blob must be the last column of its row (job_documents.data,
# job_messages.raw): only there does SQLite keep the zeroblob() unexpanded.
BLOB_CHUNK = 1 << 20


def _write_blob(c: sqlite3.Connection, table: str, column: str, rowid: int | None,
                data: bytes) -> None:
    if not data:
        return
    assert rowid is not None
    view = memoryview(data)
    with c.blobopen(table, column, rowid) as blob:
        for i in range(0, len(data), BLOB_CHUNK):
            blob.write(view[i:i + BLOB_CHUNK])


def _read_blob(c: sqlite3.Connection, table: str, column: str, rowid: int) -> bytes:
    # both blob columns are NOT NULL and only ever written as blobs (zeroblob(0) too)
    with c.blobopen(table, column, rowid, readonly=True) as blob:
        return blob.read()


class Store:
    def __init__(self, path: Path, busy_timeout_ms: int = 10000) -> None:
        try:
            self.db = Database(path, busy_timeout_ms)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    # ---------------------------------------------------------------- jobs
    def create_jobs(self, batch: list[tuple[NewJob, SmtpLogRecord | None]]) -> None:
        """Commit each accepted message with its job, recipients, documents and SMTP
        log record; several mails in one transaction (group commit: one fsync). All
        or none are committed; the caller answers each SMTP client after this."""
        now = time.time()
        try:
            with self.db.tx() as c:
                for job, log in batch:
                    self._insert_job(c, job, log, now)
        except sqlite3.Error as exc:
            raise StoreError(f"could not commit job: {exc}") from exc

    def _insert_job(self, c: sqlite3.Connection, job: NewJob, log: SmtpLogRecord | None,
                    now: float) -> None:
        c.execute(
            "INSERT INTO jobs (id,state,created,updated,sender,auth_user,message_id,"
            "subject,rule,header,options_json,deadline,valid_until,notify,"
            "attach_documents) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (job.id, "queued", now, now, job.sender, job.auth_user, job.message_id,
             job.subject, job.rule, job.header, json.dumps(job.options),
             job.deadline, job.valid_until, job.notify, int(job.attach_documents)))
        rowid = c.execute("INSERT INTO job_messages (job_id, raw) VALUES (?, zeroblob(?))",
                          (job.id, len(job.raw))).lastrowid
        _write_blob(c, "job_messages", "raw", rowid, job.raw)
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
            _write_blob(c, "job_documents", "data", rowid, d.data)
        self._event(c, job.id, "accepted",
                    f"from {job.sender}, {len(job.recipients)} recipient(s), "
                    f"{len(job.documents)} document(s), rule {job.rule}")
        if log is not None:
            log.job_id = job.id
            self._insert_log(c, log)


    @staticmethod
    def _event(c: sqlite3.Connection, job_id: str, kind: str, detail: str = "") -> None:
        c.execute("INSERT INTO job_events (job_id,ts,kind,detail) VALUES (?,?,?,?)",
                  (job_id, time.time(), kind, detail))

    def add_event(self, job_id: str, kind: str, detail: str = "") -> None:
        with self.db.tx() as c:
            self._event(c, job_id, kind, detail)

    def next_jobs(self, limit: int, exclude: set[str] | frozenset[str] = frozenset(),
                  now: float | None = None) -> list[sqlite3.Row]:
        """Up to `limit` due queued/deferred jobs, oldest first, skipping `exclude`."""
        now = time.time() if now is None else now
        rows = self.db.query(
            "SELECT * FROM jobs WHERE state IN ('queued','deferred') AND next_attempt<=? "
            "ORDER BY next_attempt, created LIMIT ?", (now, limit + len(exclude)))
        return [r for r in rows if r["id"] not in exclude][:limit]

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
            self._event(c, job_id, "submitting", f"attempt {row['attempts'] + 1}")
        return True

    def job(self, job_id: str) -> sqlite3.Row | None:
        rows = self.db.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return rows[0] if rows else None

    def job_by_retarus_id(self, retarus_job_id: str) -> sqlite3.Row | None:
        rows = self.db.query("SELECT * FROM jobs WHERE retarus_job_id=?", (retarus_job_id,))
        return rows[0] if rows else None

    def job_documents(self, job_id: str) -> list[dict[str, Any]]:
        """The documents with their data (read straight into one bytes object each)."""
        with self.db.lock:
            rows = self.db.conn.execute(
                "SELECT rowid, job_id, idx, name, content_type, charset FROM job_documents "
                "WHERE job_id=? ORDER BY idx", (job_id,)).fetchall()
            return [{**dict(r), "data": _read_blob(self.db.conn, "job_documents", "data",
                                                   r["rowid"])} for r in rows]

    def job_raw(self, job_id: str) -> bytes | None:
        with self.db.lock:
            rows = self.db.conn.execute("SELECT rowid FROM job_messages WHERE job_id=?",
                                        (job_id,)).fetchall()
            return _read_blob(self.db.conn, "job_messages", "raw", rows[0][0]) if rows \
                else None

    def job_recipients(self, job_id: str) -> list[sqlite3.Row]:
        return self.db.query("SELECT * FROM job_recipients WHERE job_id=? ORDER BY idx",
                             (job_id,))

    def job_events(self, job_id: str) -> list[sqlite3.Row]:
        return self.db.query("SELECT * FROM job_events WHERE job_id=? ORDER BY id", (job_id,))

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
            self._event(c, job_id, event, detail)
        return True

    def finish_job(self, job_id: str, state: str, *, event: str, detail: str,
                   recipients: list[dict[str, Any]] | None = None, error: str | None = None,
                   datacenter: str | None = None,
                   mail: tuple[str, list[str], bytes] | None = None,
                   expect: tuple[str, ...] = ("submitted",)) -> bool:
        """Record a job's final outcome, its per-recipient results and its report mail
        in one transaction. Applies only from an `expect`ed state, so a second report
        (poll after push, duplicate push) changes nothing and mails nothing."""
        assert state in OUT_FINAL, state
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
            self._event(c, job_id, event, detail)
            if mail is not None:
                mail_from, rcpts, raw = mail
                c.execute("INSERT INTO mail_out (state,created,updated,kind,ref,mail_from,"
                          "recipients_json,raw) VALUES ('queued',?,?,?,?,?,?,?)",
                          (now, now, "report", job_id, mail_from, json.dumps(rcpts), raw))
                c.execute("UPDATE jobs SET reported=1 WHERE id=?", (job_id,))
                self._event(c, job_id, "report-queued", f"report mail to {', '.join(rcpts)}")
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
            self._event(c, job_id, "released", detail)
        return True

    def reports_to_delete(self, limit: int = 1000) -> list[sqlite3.Row]:
        return self.db.query(
            "SELECT id, retarus_job_id, datacenter FROM jobs WHERE state IN ('done','failed') "
            "AND retarus_job_id IS NOT NULL AND report_deleted=0 LIMIT ?", (limit,))

    def mark_reports_deleted(self, job_ids: list[str], detail: str) -> None:
        with self.db.tx() as c:
            for job_id in job_ids:
                c.execute("UPDATE jobs SET report_deleted=1 WHERE id=?", (job_id,))
                self._event(c, job_id, "report-deleted", detail)

    def due_submitted(self, now: float, limit: int = 100) -> list[sqlite3.Row]:
        return self.db.query("SELECT * FROM jobs WHERE state='submitted' AND next_attempt<=? "
                             "ORDER BY next_attempt LIMIT ?", (now, limit))

    def schedule_poll(self, job_id: str, next_attempt: float, detail: str | None,
                      error: str | None = None) -> None:
        """Next report poll; `error` (a poll that failed) is shown as the job's last
        error until a poll gets through again."""
        with self.db.tx() as c:
            c.execute("UPDATE jobs SET next_attempt=?, updated=?, last_error=? WHERE id=?",
                      (next_attempt, time.time(), error, job_id))
            if detail:
                self._event(c, job_id, "poll", detail)

    def jobs_in(self, states: tuple[str, ...], limit: int = 1000) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(states))
        return self.db.query(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created LIMIT ?",
            (*states, limit))

    def held_for(self, error: str, limit: int = 10000) -> list[sqlite3.Row]:
        """Held jobs whose last_error is exactly `error` (not cut off by other held jobs)."""
        return self.db.query("SELECT * FROM jobs WHERE state='held' AND last_error=? "
                             "ORDER BY created LIMIT ?", (error, limit))

    def list_jobs(self, *, state: str | None = None, sender: str | None = None,
                  limit: int = 100) -> list[sqlite3.Row]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if state:
            sql += " AND state=?"
            args.append(state)
        if sender:
            sql += " AND sender=?"
            args.append(sender.lower())
        sql += " ORDER BY created DESC LIMIT ?"
        args.append(limit)
        return self.db.query(sql, tuple(args))

    def count_jobs_since(self, sender: str, since: float) -> int:
        rows = self.db.query(
            "SELECT COUNT(*) FROM jobs WHERE sender=? AND created>=?", (sender, since))
        return int(rows[0][0])

    # ----------------------------------------------------------- smtp log
    @staticmethod
    def _insert_log(c: sqlite3.Connection, r: SmtpLogRecord) -> int:
        cur = c.execute(
            "INSERT INTO smtp_log (ts,peer,helo,tls,auth_user,mail_from,recipients_json,"
            "message_id,subject,size,parts_json,reply,ok,job_id,timings_json) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (r.ts, r.peer, r.helo, int(r.tls), r.auth_user, r.mail_from,
             json.dumps(r.recipients), r.message_id, r.subject, r.size, json.dumps(r.parts),
             r.reply, int(r.ok), r.job_id, json.dumps(r.timings)))
        return int(cur.lastrowid or 0)

    def add_log(self, r: SmtpLogRecord) -> int:
        with self.db.tx() as c:
            return self._insert_log(c, r)

    def list_log(self, *, failed: bool = False, sender: str | None = None,
                 number: str | None = None, since: float | None = None,
                 limit: int = 100) -> list[sqlite3.Row]:
        sql, args = "SELECT * FROM smtp_log WHERE 1=1", []
        if failed:
            sql += " AND ok=0"
        if sender:
            sql += " AND mail_from=?"
            args.append(sender.lower())
        if number:
            sql += " AND recipients_json LIKE ?"
            args.append(f"%{number}%")
        if since is not None:
            sql += " AND ts>=?"
            args.append(since)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return self.db.query(sql, tuple(args))

    def log_entry(self, log_id: int) -> sqlite3.Row | None:
        rows = self.db.query("SELECT * FROM smtp_log WHERE id=?", (log_id,))
        return rows[0] if rows else None

    def prune_log(self, older_than: float) -> int:
        with self.db.tx() as c:
            return c.execute("DELETE FROM smtp_log WHERE ts<?", (older_than,)).rowcount

    # ------------------------------------------------------------ inbound
    def store_inbound(self, fax_id: str, topic: str, metadata: dict[str, Any],
                      files: list[tuple[str, str, bytes]]) -> bool:
        """Commit a received fax and its files. False if it was already stored
        (a re-offered fax whose ack was lost): it is never stored or mailed twice."""
        now = time.time()
        key = f"{topic}/{fax_id}"
        with self.db.tx() as c:
            if c.execute("SELECT 1 FROM inbound WHERE id=?", (key,)).fetchone():
                return False
            c.execute("INSERT INTO inbound (id,topic,state,created,updated,metadata_json,fax_id) "
                      "VALUES (?,?,?,?,?,?,?)",
                      (key, topic, "stored", now, now, json.dumps(metadata), fax_id))
            c.executemany("INSERT INTO inbound_files (fax_id,idx,name,content_type,data) "
                          "VALUES (?,?,?,?,?)",
                          [(key, i, n, t, d) for i, (n, t, d) in enumerate(files)])
        return True

    def set_inbound_state(self, key: str, state: str, *, error: str | None = None,
                          delivered_to: str | None = None) -> None:
        assert state in IN_STATES, state
        with self.db.tx() as c:
            c.execute("UPDATE inbound SET state=?, updated=?, last_error=COALESCE(?,last_error),"
                      " delivered_to=COALESCE(?,delivered_to) WHERE id=?",
                      (state, time.time(), error, delivered_to, key))

    def has_inbound(self, topic: str, fax_id: str) -> bool:
        return bool(self.db.query("SELECT 1 FROM inbound WHERE id=?", (f"{topic}/{fax_id}",)))

    def mark_acked(self, topic: str, fax_ids: list[str]) -> None:
        with self.db.tx() as c:
            c.executemany("UPDATE inbound SET acked=1 WHERE id=?",
                          [(f"{topic}/{i}",) for i in fax_ids])

    def inbound(self, key: str) -> sqlite3.Row | None:
        rows = self.db.query("SELECT * FROM inbound WHERE id=?", (key,))
        return rows[0] if rows else None

    def inbound_files(self, key: str) -> list[sqlite3.Row]:
        return self.db.query("SELECT * FROM inbound_files WHERE fax_id=? ORDER BY idx", (key,))

    def inbound_in(self, states: tuple[str, ...], topic: str | None = None,
                   limit: int = 1000) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(states))
        sql = f"SELECT * FROM inbound WHERE state IN ({marks})"
        args: list[Any] = list(states)
        if topic:
            sql += " AND topic=?"
            args.append(topic)
        return self.db.query(sql + " ORDER BY created LIMIT ?", (*args, limit))

    def list_inbound(self, limit: int = 100) -> list[sqlite3.Row]:
        return self.db.query("SELECT * FROM inbound ORDER BY created DESC LIMIT ?", (limit,))

    # ---------------------------------------------------------- mail out
    def queue_mail(self, kind: str, ref: str | None, mail_from: str, recipients: list[str],
                   raw: bytes, *, inbound_state: tuple[str, str] | None = None) -> int:
        """Queue an outgoing mail; optionally in the same transaction record the
        inbound state that produced it, so a crash cannot produce it twice."""
        now = time.time()
        with self.db.tx() as c:
            cur = c.execute(
                "INSERT INTO mail_out (state,created,updated,kind,ref,mail_from,"
                "recipients_json,raw) VALUES ('queued',?,?,?,?,?,?,?)",
                (now, now, kind, ref, mail_from, json.dumps(recipients), raw))
            if inbound_state is not None:
                key, state = inbound_state
                c.execute("UPDATE inbound SET state=?, updated=? WHERE id=?", (state, now, key))
            return int(cur.lastrowid or 0)

    def claim_mail(self, now: float | None = None) -> sqlite3.Row | None:
        now = time.time() if now is None else now
        rows = self.db.query(
            "SELECT * FROM mail_out WHERE state='queued' AND next_attempt<=? "
            "ORDER BY next_attempt, id LIMIT 1", (now,))
        return rows[0] if rows else None

    def finish_mail(self, mail_id: int, state: str, *, error: str | None = None,
                    next_attempt: float | None = None, refused: list[str] | None = None) -> None:
        """Record a mail's outcome, and in the same transaction what it means for the
        row it belongs to: a report mail's `report-sent` / `report-failed` event on its
        job, a received fax `delivered` once its mail is sent. A crash can no longer
        keep the one without the other. (A received fax whose mail was refused stays
        `mailing` with that mail failed: the deliverer reacts to that state.)"""
        now = time.time()
        with self.db.tx() as c:
            c.execute("UPDATE mail_out SET state=?, updated=?, last_error=COALESCE(?,last_error),"
                      " next_attempt=COALESCE(?,next_attempt), attempts=attempts+1 WHERE id=?",
                      (state, now, error, next_attempt, mail_id))
            if state not in ("sent", "failed"):
                return
            row = c.execute("SELECT kind, ref, recipients_json FROM mail_out WHERE id=?",
                            (mail_id,)).fetchone()
            if row is None or not row["ref"]:
                return
            to = ", ".join(json.loads(row["recipients_json"]))
            note = f"refused: {'; '.join(refused)}" if refused else None
            if row["kind"] == "report" and state == "sent":
                self._event(c, row["ref"], "report-sent",
                            f"report mail to {to}" + (f" ({note})" if note else ""))
            elif row["kind"] == "report":
                self._event(c, row["ref"], "report-failed",
                            f"report mail could not be delivered: {error}")
            elif row["kind"] == "inbound" and state == "sent":
                c.execute("UPDATE inbound SET state='delivered', updated=?, delivered_to=?, "
                          "last_error=COALESCE(?,last_error) WHERE id=? AND state='mailing'",
                          (now, to, note, row["ref"]))

    def inbound_to_deliver(self, limit: int = 100) -> list[sqlite3.Row]:
        """Received faxes whose next step is the deliverer's: stored ones (mail them),
        and those `mailing` whose latest mail is settled — failed (fallback mailbox or
        hold), or sent / missing in a store written before the mail's outcome and the
        fax's state were one transaction. Each row carries its latest mail's state,
        error and recipients as mail_state, mail_error, mail_to_json."""
        return self.db.query(
            "SELECT i.*, m.state AS mail_state, m.last_error AS mail_error, "
            "m.recipients_json AS mail_to_json FROM inbound i LEFT JOIN mail_out m ON m.id = "
            "(SELECT MAX(id) FROM mail_out WHERE kind='inbound' AND ref=i.id) "
            "WHERE i.state='stored' OR (i.state='mailing' AND (m.id IS NULL OR "
            "m.state IN ('sent','failed'))) ORDER BY i.created LIMIT ?", (limit,))

    def latest_mail(self, kind: str, ref: str) -> sqlite3.Row | None:
        rows = self.db.query("SELECT * FROM mail_out WHERE kind=? AND ref=? ORDER BY id DESC "
                             "LIMIT 1", (kind, ref))
        return rows[0] if rows else None

    def list_mail(self, limit: int = 100) -> list[sqlite3.Row]:
        return self.db.query("SELECT id,state,created,kind,ref,mail_from,recipients_json,"
                             "attempts,last_error FROM mail_out ORDER BY id DESC LIMIT ?",
                             (limit,))

    def writable(self) -> bool:
        """Take and release the write lock: proves the store can commit right now."""
        with self.db.lock:
            self.db.conn.execute("BEGIN IMMEDIATE")
            self.db.conn.execute("ROLLBACK")
        return True

    def integrity_check(self) -> str:
        return str(self.db.query("PRAGMA integrity_check")[0][0])
