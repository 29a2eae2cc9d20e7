"""The PostgreSQL backend: the same store, shared by several bridges (nodes).

Every method is one transaction, as in SQLite; what changes is that another node
may run the same method at the same moment. The rules that keep that safe:

- A state change is one conditional UPDATE (`... WHERE state = ANY(expected)`), so
  of two nodes applying the same report or status push exactly one succeeds, and
  only that one queues the report mail.
- Work is claimed with `FOR UPDATE SKIP LOCKED` and marked `claimed_by` this node:
  another node skips the row while this node's heartbeat lease (table nodes) holds.
  When a node dies its lease runs out after `lease_seconds`, and its claims become
  anyone's: a queued job is sent by another node, a job left `submitting` goes to
  the confirmation pass (never resent blindly), a mail is sent by another node.
- One-node work (a Fax2WSPull topic, the confirmation pass, report clean-up, SMTP
  log pruning) is led by one node at a time (table leads, same lease).
- Leases are measured on the database's clock, so nodes' clocks need not agree.

A mail whose relay answered 250 is marked sent in the next transaction; a node that
dies between the two leaves it queued, and another node sends it again: report and
fax mails are delivered at least once, and twice only in that window.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from faxbridge.errors import StoreError
from faxbridge.store.new import IN_STATES, OUT_FINAL, OUT_STATES, NewJob, SmtpLogRecord
from faxbridge.store.pgschema import MIGRATION_LOCK, MIGRATIONS, SCHEMA_VERSION
from faxbridge.store.rows import (
    InboundDelivery,
    InboundFax,
    InboundFile,
    Job,
    JobDocument,
    JobEvent,
    JobRecipient,
    LogEntry,
    OutMail,
    row_as,
    rows_as,
)

log = logging.getLogger("faxbridge.store")

# Values go to the server and come back in pieces of this size: a 25 MB mail is
# 25 statements of 1 MB, never one 25 MB parameter (which libpq and the server would
# each copy whole) nor one 25 MB result.
CHUNK = 1 << 20
NOW = "extract(epoch from clock_timestamp())"


def _cols(cls: type, prefix: str = "") -> str:
    return ",".join(prefix + f.name for f in fields(cls))


JOB = _cols(Job)
INBOUND = _cols(InboundFax)
MAIL = ",".join(f.name for f in fields(OutMail) if f.name != "raw")


def _free(table: str) -> str:
    """SQL: the row is claimed by nobody, by this node, or by a node whose lease ran out."""
    return (f"({table}.claimed_by IS NULL OR {table}.claimed_by = %(me)s OR NOT EXISTS "
            f"(SELECT 1 FROM nodes n WHERE n.id = {table}.claimed_by "
            f"AND n.lease_until > {NOW}))")


def redacted(url: str) -> str:
    """The URL without its password, for logs, `check` and /readyz."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore:
    """Implements store.protocol.Store on a PostgreSQL database shared by the nodes."""

    def __init__(self, url: str, *, pool_size: int = 8, lease_seconds: float = 30.0,
                 node: str | None = None, connect_timeout: float = 10.0,
                 as_node: bool = True, migrate: bool = True) -> None:
        """`as_node=False` (the command line): look and act on the rows, but take part
        in no claims: no node row, no heartbeat. `migrate=False` (`faxbridge check`):
        only look at the schema version, change nothing."""
        try:
            import psycopg
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise StoreError("storage.database_url needs the PostgreSQL driver: "
                             "pip install 'faxbridge[postgres]'") from exc
        self._psycopg = psycopg
        self.url = url
        self.where = redacted(url)
        self.lease_seconds = lease_seconds
        self.me = node or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        try:
            # one plain connection first: an unreachable server or a refused login is
            # reported at once with the server's reason (the pool would retry quietly
            # until its timeout and only say that it timed out)
            psycopg.connect(url, connect_timeout=int(connect_timeout)).close()
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())  # libpq's reason spans lines
            raise StoreError(f"cannot open store {self.where}: {reason}") from exc
        try:
            self.pool = ConnectionPool(
                url, min_size=1, max_size=pool_size, open=False, name="faxbridge",
                kwargs={"row_factory": dict_row, "connect_timeout": int(connect_timeout),
                        "application_name": "faxbridge"},
                check=ConnectionPool.check_connection, timeout=connect_timeout)
            self.pool.open(wait=True, timeout=connect_timeout)
        except Exception as exc:  # noqa: BLE001 - a pool timeout or a driver error
            raise StoreError(f"cannot open store {self.where}: {exc}") from exc
        self.schema_version = self._migrate() if migrate else self._version()
        self.as_node = as_node
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="store-heartbeat",
                                      daemon=True)
        if as_node:
            self._register()
            self._beat.start()

    # ------------------------------------------------------------ plumbing
    @contextmanager
    def tx(self) -> Iterator[Any]:
        """One transaction on a pooled connection; any driver error is a StoreError."""
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield conn
        except self._psycopg.Error as exc:
            raise StoreError(f"store transaction failed: {exc}") from exc
        except StoreError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg_pool"):
                raise StoreError(f"store unavailable: {exc}") from exc
            raise

    def query(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        with self.tx() as c:
            return c.execute(sql, params).fetchall()

    def _migrate(self) -> int:
        """Bring the schema to this version; two nodes starting at once take turns on
        an advisory lock, so the second finds the work done."""
        with self.tx() as c:
            c.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = c.execute("SELECT version FROM schema_version").fetchone()
            version = row["version"] if row else 0
            if row is None:
                c.execute("INSERT INTO schema_version VALUES (0)")
            if version > SCHEMA_VERSION:
                raise StoreError(f"database schema {version} is newer than this faxbridge "
                                 f"({SCHEMA_VERSION}); refusing to touch it")
            for i in range(version, SCHEMA_VERSION):
                c.execute(MIGRATIONS[i])
                c.execute("UPDATE schema_version SET version=%s", (i + 1,))
                log.info("database %s migrated to schema %d", self.where, i + 1)
        return SCHEMA_VERSION

    def _version(self) -> int:
        with self.tx() as c:
            if c.execute("SELECT to_regclass('schema_version') AS t").fetchone()["t"] is None:
                return 0
            row = c.execute("SELECT version FROM schema_version").fetchone()
            return int(row["version"]) if row else 0

    def _register(self) -> None:
        with self.tx() as c:
            c.execute(f"INSERT INTO nodes (id, started, lease_until) VALUES (%s, {NOW}, "
                      f"{NOW} + %s) ON CONFLICT (id) DO UPDATE SET lease_until = "
                      "EXCLUDED.lease_until", (self.me, self.lease_seconds))
            # nodes gone for a day are only clutter
            c.execute(f"DELETE FROM nodes WHERE lease_until < {NOW} - 86400")

    def _heartbeat(self) -> None:
        """Renew this node's lease a few times per lease: a node alive keeps its claims."""
        while not self._stop.wait(self.lease_seconds / 4):
            try:
                self._register()
            except Exception:  # noqa: BLE001 - the next beat tries again
                log.warning("store heartbeat failed; claims lapse after %.0fs without one",
                            self.lease_seconds, exc_info=True)

    def close(self) -> None:
        """Stop the heartbeat and give up this node's claims and leads at once, so the
        other nodes need not wait for the lease to run out."""
        self._stop.set()
        if not self.as_node:
            self.pool.close()
            return
        self._beat.join(5)
        try:
            with self.tx() as c:
                for table in ("jobs", "inbound", "mail_out"):
                    c.execute(f"UPDATE {table} SET claimed_by=NULL WHERE claimed_by=%s "  # noqa: S608
                              "AND state <> 'submitting'", (self.me,))
                c.execute("DELETE FROM leads WHERE node=%s", (self.me,))
                # a job left submitting stays claimed by a node that is now gone: the
                # others' confirmation pass takes it once the lease below is over
                c.execute(f"UPDATE nodes SET lease_until={NOW} WHERE id=%s", (self.me,))
        except StoreError:
            log.warning("could not release this node's claims; they lapse with its lease")
        self.pool.close()

    # ------------------------------------------------------------ blobs
    def _put(self, c: Any, owner: str, data: bytes | bytearray) -> None:
        view = memoryview(data)
        with c.cursor() as cur:
            for seq, i in enumerate(range(0, len(view), CHUNK)):
                cur.execute("INSERT INTO chunks (owner, seq, data) VALUES (%s, %s, %b)",
                            (owner, seq, view[i:i + CHUNK]))

    def _get(self, c: Any, owner: str, size: int) -> bytes:
        """The value, read one chunk at a time into one buffer of its final size."""
        if not size:
            return b""
        buf = bytearray(size)
        pos = 0
        with c.cursor(binary=True) as cur:
            for seq in range((size + CHUNK - 1) // CHUNK):
                row = cur.execute("SELECT data FROM chunks WHERE owner=%s AND seq=%s",
                                  (owner, seq)).fetchone()
                if row is None:
                    raise StoreError(f"store damaged: {owner} part {seq} missing")
                piece = row["data"]
                buf[pos:pos + len(piece)] = piece
                pos += len(piece)
                del row, piece
        if pos != size:
            raise StoreError(f"store damaged: {owner} has {pos} bytes, not {size}")
        return bytes(buf)

    # ------------------------------------------------------------ shared statements
    @staticmethod
    def _event(c: Any, job_id: str, kind: str, detail: str = "") -> None:
        c.execute("INSERT INTO job_events (job_id,ts,kind,detail) VALUES (%s,%s,%s,%s)",
                  (job_id, time.time(), kind, detail))

    @staticmethod
    def _log(c: Any, r: SmtpLogRecord) -> int:
        row = c.execute(
            "INSERT INTO smtp_log (ts,peer,helo,tls,auth_user,mail_from,recipients_json,"
            "message_id,subject,size,parts_json,reply,ok,job_id,timings_json) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
            (r.ts, r.peer, r.helo, int(r.tls), r.auth_user, r.mail_from,
             json.dumps(r.recipients), r.message_id, r.subject, r.size, json.dumps(r.parts),
             r.reply, int(r.ok), r.job_id, json.dumps(r.timings))).fetchone()
        return int(row["id"])

    def _mail(self, c: Any, now: float, kind: str, ref: str | None, mail_from: str,
              recipients: list[str], raw: bytes | bytearray) -> int:
        row = c.execute(
            "INSERT INTO mail_out (state,created,updated,kind,ref,mail_from,recipients_json,"
            "size) VALUES ('queued',%s,%s,%s,%s,%s,%s,%s) RETURNING id",
            (now, now, kind, ref, mail_from, json.dumps(recipients), len(raw))).fetchone()
        mail_id = int(row["id"])
        self._put(c, f"mail:{mail_id}", raw)
        return mail_id

    # ------------------------------------------------------------ jobs
    def create_jobs(self, batch: list[tuple[NewJob, SmtpLogRecord | None]]) -> None:
        now = time.time()
        with self.tx() as c:
            for job, log_rec in batch:
                self._insert_job(c, job, log_rec, now)

    def _insert_job(self, c: Any, job: NewJob, log_rec: SmtpLogRecord | None,
                    now: float) -> None:
        c.execute(
            "INSERT INTO jobs (id,state,created,updated,sender,auth_user,message_id,"
            "subject,rule,header,options_json,deadline,valid_until,notify,"
            "attach_documents,last_error,peer,report_to) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (job.id, job.state, now, now, job.sender, job.auth_user, job.message_id,
             job.subject, job.rule, job.header, json.dumps(job.options),
             job.deadline, job.valid_until, job.notify, int(job.attach_documents),
             job.last_error, job.peer, job.report_to))
        c.execute("INSERT INTO job_messages (job_id, size) VALUES (%s, %s)",
                  (job.id, len(job.raw)))
        self._put(c, f"msg:{job.id}", job.raw)
        with c.cursor() as cur:
            cur.executemany(
                "INSERT INTO job_recipients (job_id,idx,number,address,display_name) "
                "VALUES (%s,%s,%s,%s,%s)",
                [(job.id, i, r.number, r.address, r.display_name)
                 for i, r in enumerate(job.recipients)])
        for i, d in enumerate(job.documents):
            c.execute("INSERT INTO job_documents (job_id,idx,name,content_type,charset,size) "
                      "VALUES (%s,%s,%s,%s,%s,%s)",
                      (job.id, i, d.name, d.content_type, d.charset, len(d.data)))
            self._put(c, f"doc:{job.id}:{i}", d.data)
        self._event(c, job.id, "accepted",
                    f"from {job.sender}"
                    + (f" (user {job.auth_user}, reports to {job.report_to})"
                       if job.report_to else "")
                    + f", {len(job.recipients)} recipient(s), "
                    f"{len(job.documents)} document(s), rule {job.rule}")
        if job.state != "queued":
            # a job recorded failed at once (its documents could not be had): the
            # timeline says so, as for any other final state
            self._event(c, job.id, job.state, job.last_error or "")
        if log_rec is not None:
            log_rec.job_id = job.id
            self._log(c, log_rec)

    def add_event(self, job_id: str, kind: str, detail: str = "") -> None:
        with self.tx() as c:
            self._event(c, job_id, kind, detail)

    def next_jobs(self, limit: int, exclude: set[str] | frozenset[str] = frozenset(),
                  now: float | None = None) -> list[Job]:
        """Claims up to `limit` due queued/deferred jobs for this node, oldest first:
        the other nodes skip them while this node lives."""
        now = time.time() if now is None else now
        rows = self.query(
            f"UPDATE jobs SET claimed_by=%(me)s WHERE id IN (SELECT id FROM jobs WHERE "
            f"state IN ('queued','deferred') AND next_attempt<=%(now)s "
            f"AND NOT (id = ANY(%(ex)s)) AND {_free('jobs')} "
            f"ORDER BY next_attempt, created LIMIT %(n)s FOR UPDATE SKIP LOCKED) "
            f"RETURNING {JOB}",
            {"me": self.me, "now": now, "ex": list(exclude), "n": limit})
        rows.sort(key=lambda r: (r["next_attempt"], r["created"]))
        return rows_as(Job, rows)

    def claim_job(self, job_id: str) -> bool:
        with self.tx() as c:
            row = c.execute(
                "UPDATE jobs SET state='submitting', attempts=attempts+1, updated=%s, "
                "claimed_by=%s WHERE id=%s AND state IN ('queued','deferred') "
                "RETURNING attempts", (time.time(), self.me, job_id)).fetchone()
            if row is None:
                return False
            self._event(c, job_id, "submitting", f"attempt {row['attempts']}")
        return True

    def abandoned_submissions(self, at_start: bool) -> list[Job]:
        """Jobs left `submitting` by a node that is gone (its lease ran out)."""
        return rows_as(Job, self.query(
            f"SELECT {JOB} FROM jobs WHERE state='submitting' AND claimed_by IS DISTINCT "
            f"FROM %(me)s AND {_free('jobs')} ORDER BY created", {"me": self.me}))

    def job(self, job_id: str) -> Job | None:
        rows = self.query(f"SELECT {JOB} FROM jobs WHERE id=%s", (job_id,))
        return row_as(Job, rows[0]) if rows else None

    def job_by_retarus_id(self, retarus_job_id: str) -> Job | None:
        rows = self.query(f"SELECT {JOB} FROM jobs WHERE retarus_job_id=%s LIMIT 1",
                          (retarus_job_id,))
        return row_as(Job, rows[0]) if rows else None

    def job_documents(self, job_id: str) -> list[JobDocument]:
        with self.tx() as c:
            rows = c.execute("SELECT idx, name, content_type, charset, size FROM "
                             "job_documents WHERE job_id=%s ORDER BY idx", (job_id,)).fetchall()
            return [JobDocument(job_id, r["idx"], r["name"], r["content_type"], r["charset"],
                                self._get(c, f"doc:{job_id}:{r['idx']}", r["size"]))
                    for r in rows]

    def job_raw(self, job_id: str) -> bytes | None:
        with self.tx() as c:
            row = c.execute("SELECT size FROM job_messages WHERE job_id=%s",
                            (job_id,)).fetchone()
            return self._get(c, f"msg:{job_id}", row["size"]) if row else None

    def job_recipients(self, job_id: str) -> list[JobRecipient]:
        return rows_as(JobRecipient, self.query(
            f"SELECT {_cols(JobRecipient)} FROM job_recipients WHERE job_id=%s ORDER BY idx",
            (job_id,)))

    def job_events(self, job_id: str) -> list[JobEvent]:
        return rows_as(JobEvent, self.query(
            f"SELECT {_cols(JobEvent)} FROM job_events WHERE job_id=%s ORDER BY id",
            (job_id,)))

    def set_job_state(self, job_id: str, state: str, *, event: str, detail: str = "",
                      error: str | None = None, next_attempt: float | None = None,
                      retarus_job_id: str | None = None, datacenter: str | None = None,
                      expect: tuple[str, ...] | None = None) -> bool:
        assert state in OUT_STATES, state
        sql = ("UPDATE jobs SET state=%(state)s, updated=%(now)s, claimed_by=NULL, "
               "last_error=COALESCE(%(error)s, last_error), "
               "next_attempt=COALESCE(%(next)s, next_attempt), "
               "retarus_job_id=COALESCE(%(rid)s, retarus_job_id), "
               "datacenter=COALESCE(%(dc)s, datacenter) WHERE id=%(id)s")
        if expect is not None:
            sql += " AND state = ANY(%(expect)s)"
        with self.tx() as c:
            cur = c.execute(sql, {"state": state, "now": time.time(), "error": error,
                                  "next": next_attempt, "rid": retarus_job_id,
                                  "dc": datacenter, "id": job_id,
                                  "expect": list(expect or ())})
            if expect is not None and not cur.rowcount:
                return False
            self._event(c, job_id, event, detail)
        return True

    def finish_job(self, job_id: str, state: str, *, event: str, detail: str,
                   recipients: list[dict[str, Any]] | None = None, error: str | None = None,
                   datacenter: str | None = None,
                   mail: tuple[str, list[str], bytes] | None = None,
                   expect: tuple[str, ...] = ("submitted",)) -> bool:
        assert state in OUT_FINAL or state == "held", state
        now = time.time()
        with self.tx() as c:
            # the conditional UPDATE first: of two nodes finishing the same job (a push
            # here, a poll there) exactly one gets the row, the other changes nothing
            cur = c.execute(
                "UPDATE jobs SET state=%s, updated=%s, claimed_by=NULL, "
                "last_error=COALESCE(%s, last_error), datacenter=COALESCE(%s, datacenter) "
                "WHERE id=%s AND state = ANY(%s)",
                (state, now, error, datacenter, job_id, list(expect)))
            if not cur.rowcount:
                return False
            for r in recipients or []:
                c.execute("UPDATE job_recipients SET status=%s, reason=%s, sent_ts=%s, "
                          "duration=%s, pages=%s, remote_csid=%s, sent_to_number=%s "
                          "WHERE job_id=%s AND idx=%s",
                          (r.get("status"), r.get("reason"), r.get("sent_ts"),
                           r.get("duration"), r.get("pages"), r.get("remote_csid"),
                           r.get("sent_to_number"), job_id, r["idx"]))
            self._event(c, job_id, event, detail)
            if mail is not None:
                mail_from, rcpts, raw = mail
                self._mail(c, now, "report", job_id, mail_from, rcpts, raw)
                c.execute("UPDATE jobs SET reported=1 WHERE id=%s", (job_id,))
                self._event(c, job_id, "report-queued", f"report mail to {', '.join(rcpts)}")
        return True

    def release_job(self, job_id: str, *, detail: str, deadline: float,
                    valid_until: float) -> bool:
        with self.tx() as c:
            cur = c.execute("UPDATE jobs SET state='queued', updated=%s, next_attempt=0, "
                            "deadline=%s, valid_until=%s, claimed_by=NULL "
                            "WHERE id=%s AND state='held'",
                            (time.time(), deadline, valid_until, job_id))
            if not cur.rowcount:
                return False
            self._event(c, job_id, "released", detail)
        return True

    def reports_to_delete(self, limit: int = 1000) -> list[Job]:
        return rows_as(Job, self.query(
            f"SELECT {JOB} FROM jobs WHERE state IN ('done','failed') "
            "AND retarus_job_id IS NOT NULL AND report_deleted=0 LIMIT %s", (limit,)))

    def mark_reports_deleted(self, job_ids: list[str], detail: str) -> None:
        with self.tx() as c:
            for job_id in job_ids:
                c.execute("UPDATE jobs SET report_deleted=1 WHERE id=%s", (job_id,))
                self._event(c, job_id, "report-deleted", detail)

    def due_submitted(self, now: float, limit: int = 100) -> list[Job]:
        """Claims the submitted jobs due for a report poll: one node polls each."""
        rows = self.query(
            f"UPDATE jobs SET claimed_by=%(me)s WHERE id IN (SELECT id FROM jobs WHERE "
            f"state='submitted' AND next_attempt<=%(now)s AND {_free('jobs')} "
            f"ORDER BY next_attempt LIMIT %(n)s FOR UPDATE SKIP LOCKED) RETURNING {JOB}",
            {"me": self.me, "now": now, "n": limit})
        rows.sort(key=lambda r: r["next_attempt"])
        return rows_as(Job, rows)

    def schedule_poll(self, job_id: str, next_attempt: float, detail: str | None,
                      error: str | None = None) -> None:
        with self.tx() as c:
            cur = c.execute("UPDATE jobs SET next_attempt=%s, updated=%s, last_error=%s, "
                            "claimed_by=NULL WHERE id=%s AND state='submitted'",
                            (next_attempt, time.time(), error, job_id))
            if detail and cur.rowcount:
                self._event(c, job_id, "poll", detail)

    def jobs_in(self, states: tuple[str, ...], limit: int = 1000) -> list[Job]:
        return rows_as(Job, self.query(
            f"SELECT {JOB} FROM jobs WHERE state = ANY(%s) ORDER BY created LIMIT %s",
            (list(states), limit)))

    def held_for(self, error: str, limit: int = 10000) -> list[Job]:
        return rows_as(Job, self.query(
            f"SELECT {JOB} FROM jobs WHERE state='held' AND last_error=%s "
            "ORDER BY created LIMIT %s", (error, limit)))

    def list_jobs(self, *, state: str | None = None, sender: str | None = None,
                  limit: int = 100) -> list[Job]:
        sql, args = f"SELECT {JOB} FROM jobs WHERE TRUE", []
        if state:
            sql += " AND state=%s"
            args.append(state)
        if sender:
            sql += " AND sender=%s"
            args.append(sender.lower())
        sql += " ORDER BY created DESC LIMIT %s"
        args.append(limit)
        return rows_as(Job, self.query(sql, args))

    def count_faxes_since(self, scope: str, key: str, since: float) -> int:
        """Faxes (job recipients) accepted since `since` for a rate limit's key, as in
        SQLite: scope 'user', 'sender', 'client' or 'number'. Every node counts in the
        one database, so a limit holds across the cluster."""
        where = _FAX_SCOPES[scope]
        rows = self.query(
            "SELECT COUNT(*) AS n FROM job_recipients r JOIN jobs j ON j.id = r.job_id "
            f"WHERE {where}=%s AND j.created>=%s", (key, since))
        return int(rows[0]["n"])

    def job_state_counts(self) -> dict[str, int]:
        return {r["state"]: int(r["n"]) for r in self.query(
            "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}

    # ------------------------------------------------------------ inbound
    def store_inbound(self, fax_id: str, topic: str, metadata: dict[str, Any],
                      files: list[tuple[str, str, bytes]]) -> bool:
        now = time.time()
        key = f"{topic}/{fax_id}"
        with self.tx() as c:
            row = c.execute(
                "INSERT INTO inbound (id,topic,state,created,updated,metadata_json,fax_id) "
                "VALUES (%s,%s,'stored',%s,%s,%s,%s) ON CONFLICT (id) DO NOTHING RETURNING id",
                (key, topic, now, now, json.dumps(metadata), fax_id)).fetchone()
            if row is None:
                return False
            for i, (name, ctype, data) in enumerate(files):
                c.execute("INSERT INTO inbound_files (fax_id,idx,name,content_type,size) "
                          "VALUES (%s,%s,%s,%s,%s)", (key, i, name, ctype, len(data)))
                self._put(c, f"in:{key}:{i}", data)
        return True

    def set_inbound_state(self, key: str, state: str, *, error: str | None = None,
                          delivered_to: str | None = None) -> None:
        assert state in IN_STATES, state
        with self.tx() as c:
            c.execute("UPDATE inbound SET state=%s, updated=%s, claimed_by=NULL, "
                      "last_error=COALESCE(%s,last_error), "
                      "delivered_to=COALESCE(%s,delivered_to) WHERE id=%s",
                      (state, time.time(), error, delivered_to, key))

    def has_inbound(self, topic: str, fax_id: str) -> bool:
        return bool(self.query("SELECT 1 FROM inbound WHERE id=%s", (f"{topic}/{fax_id}",)))

    def mark_acked(self, topic: str, fax_ids: list[str]) -> None:
        with self.tx() as c:
            c.execute("UPDATE inbound SET acked=1 WHERE id = ANY(%s)",
                      ([f"{topic}/{i}" for i in fax_ids],))

    def inbound(self, key: str) -> InboundFax | None:
        rows = self.query(f"SELECT {INBOUND} FROM inbound WHERE id=%s", (key,))
        return row_as(InboundFax, rows[0]) if rows else None

    def inbound_files(self, key: str) -> list[InboundFile]:
        with self.tx() as c:
            rows = c.execute("SELECT idx, name, content_type, size FROM inbound_files "
                             "WHERE fax_id=%s ORDER BY idx", (key,)).fetchall()
            return [InboundFile(key, r["idx"], r["name"], r["content_type"],
                                self._get(c, f"in:{key}:{r['idx']}", r["size"]))
                    for r in rows]

    def inbound_in(self, states: tuple[str, ...], topic: str | None = None,
                   limit: int = 1000) -> list[InboundFax]:
        sql = f"SELECT {INBOUND} FROM inbound WHERE state = ANY(%s)"
        args: list[Any] = [list(states)]
        if topic:
            sql += " AND topic=%s"
            args.append(topic)
        return rows_as(InboundFax, self.query(sql + " ORDER BY created LIMIT %s",
                                              (*args, limit)))

    def list_inbound(self, limit: int = 100) -> list[InboundFax]:
        return rows_as(InboundFax, self.query(
            f"SELECT {INBOUND} FROM inbound ORDER BY created DESC LIMIT %s", (limit,)))

    def inbound_to_deliver(self, limit: int = 100) -> list[InboundDelivery]:
        """As in SQLite, and claimed for this node: one node queues each fax's mail."""
        latest = ("(SELECT MAX(id) FROM mail_out WHERE kind='inbound' AND ref={}.id)")
        rows = self.query(
            f"WITH c AS (UPDATE inbound SET claimed_by=%(me)s WHERE id IN ("
            f"SELECT i.id FROM inbound i LEFT JOIN mail_out m ON m.id = {latest.format('i')} "
            f"WHERE (i.state='stored' OR (i.state='mailing' AND (m.id IS NULL OR "
            f"m.state IN ('sent','failed')))) AND {_free('i')} "
            f"ORDER BY i.created LIMIT %(n)s FOR UPDATE OF i SKIP LOCKED) "
            f"RETURNING {INBOUND}) "
            f"SELECT {_cols(InboundFax, 'c.')}, m.state AS mail_state, "
            f"m.last_error AS mail_error, m.recipients_json AS mail_to_json "
            f"FROM c LEFT JOIN mail_out m ON m.id = {latest.format('c')} ORDER BY c.created",
            {"me": self.me, "n": limit})
        return rows_as(InboundDelivery, rows)

    # ------------------------------------------------------------ SMTP log
    def add_log(self, r: SmtpLogRecord) -> int:
        with self.tx() as c:
            return self._log(c, r)

    def list_log(self, *, failed: bool = False, sender: str | None = None,
                 number: str | None = None, since: float | None = None,
                 limit: int = 100) -> list[LogEntry]:
        sql, args = f"SELECT {_cols(LogEntry)} FROM smtp_log WHERE TRUE", []
        if failed:
            sql += " AND ok=0"
        if sender:
            sql += " AND mail_from=%s"
            args.append(sender.lower())
        if number:
            # LIKE with the number taken literally (SQLite's LIKE has no escape either,
            # but a number holds no % or _ after intake)
            sql += " AND strpos(recipients_json, %s) > 0"
            args.append(number)
        if since is not None:
            sql += " AND ts>=%s"
            args.append(since)
        sql += " ORDER BY id DESC LIMIT %s"
        args.append(limit)
        return rows_as(LogEntry, self.query(sql, args))

    def log_entry(self, log_id: int) -> LogEntry | None:
        rows = self.query(f"SELECT {_cols(LogEntry)} FROM smtp_log WHERE id=%s", (log_id,))
        return row_as(LogEntry, rows[0]) if rows else None

    def prune_log(self, older_than: float) -> int:
        with self.tx() as c:
            return int(c.execute("DELETE FROM smtp_log WHERE ts<%s", (older_than,)).rowcount)

    # ------------------------------------------------------------ outbox
    def queue_mail(self, kind: str, ref: str | None, mail_from: str, recipients: list[str],
                   raw: bytes, *, inbound_state: tuple[str, str] | None = None) -> int:
        now = time.time()
        with self.tx() as c:
            mail_id = self._mail(c, now, kind, ref, mail_from, recipients, raw)
            if inbound_state is not None:
                key, state = inbound_state
                c.execute("UPDATE inbound SET state=%s, updated=%s, claimed_by=NULL "
                          "WHERE id=%s", (state, now, key))
            return mail_id

    def claim_mail(self, now: float | None = None) -> OutMail | None:
        """The next due mail, claimed for this node: no other node sends it while this
        one lives. Sent twice only if this node dies between the relay's 250 and
        finish_mail (at least once, never silently lost)."""
        now = time.time() if now is None else now
        with self.tx() as c:
            row = c.execute(
                f"UPDATE mail_out SET claimed_by=%(me)s WHERE id = (SELECT id FROM mail_out "
                f"WHERE state='queued' AND next_attempt<=%(now)s AND {_free('mail_out')} "
                f"ORDER BY next_attempt, id LIMIT 1 FOR UPDATE SKIP LOCKED) "
                f"RETURNING {MAIL}, size", {"me": self.me, "now": now}).fetchone()
            if row is None:
                return None
            size = row.pop("size")
            return OutMail(**row, raw=self._get(c, f"mail:{row['id']}", size))

    def finish_mail(self, mail_id: int, state: str, *, error: str | None = None,
                    next_attempt: float | None = None, refused: list[str] | None = None) -> None:
        now = time.time()
        with self.tx() as c:
            row = c.execute(
                "UPDATE mail_out SET state=%s, updated=%s, last_error=COALESCE(%s,last_error),"
                " next_attempt=COALESCE(%s,next_attempt), attempts=attempts+1, "
                "claimed_by=NULL WHERE id=%s RETURNING kind, ref, recipients_json",
                (state, now, error, next_attempt, mail_id)).fetchone()
            if state not in ("sent", "failed") or row is None or not row["ref"]:
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
                c.execute("UPDATE inbound SET state='delivered', updated=%s, delivered_to=%s, "
                          "last_error=COALESCE(%s,last_error) WHERE id=%s AND state='mailing'",
                          (now, to, note, row["ref"]))

    def latest_mail(self, kind: str, ref: str) -> OutMail | None:
        rows = self.query(f"SELECT {MAIL} FROM mail_out WHERE kind=%s AND ref=%s "
                          "ORDER BY id DESC LIMIT 1", (kind, ref))
        return row_as(OutMail, rows[0]) if rows else None

    def list_mail(self, limit: int = 100) -> list[OutMail]:
        return rows_as(OutMail, self.query(
            f"SELECT {MAIL} FROM mail_out ORDER BY id DESC LIMIT %s", (limit,)))

    # ------------------------------------------------------------ payloads
    # As in SQLite (store/payloads.py): deleting a fax or only its payload touches
    # settled items only, and keeps the evidence (row, results, timeline, SMTP log)
    # when only the payload goes. Here the bytes live in `chunks`, which no foreign
    # key reaches: every deletion removes the chunk rows of what it deletes in the
    # same transaction. PostgreSQL keeps a deleted row's bytes on disk until VACUUM
    # (autovacuum) reclaims the space for reuse; no statement here can shrink the
    # files (VACUUM FULL locks the table, which a running cluster cannot afford).
    @staticmethod
    def _locked(c: Any, table: str, key: str, where: str) -> bool:
        """Lock the row if it is settled: a node changing it meanwhile waits, and the
        deletion decides on the state it will delete in."""
        return c.execute(f"SELECT 1 FROM {table} WHERE id=%s AND {where} "  # noqa: S608
                         "FOR UPDATE", (key,)).fetchone() is not None

    @staticmethod
    def _drop_mails(c: Any, kind: str, ref: str, *, rows: bool) -> None:
        """The settled mails of a fax: their bodies (`rows`: the mails themselves)."""
        if rows:
            ids = c.execute("DELETE FROM mail_out WHERE kind=%s AND ref=%s AND "
                            "state<>'queued' RETURNING id", (kind, ref)).fetchall()
        else:
            ids = c.execute("UPDATE mail_out SET size=0 WHERE kind=%s AND ref=%s AND "
                            "state IN ('sent','failed') RETURNING id", (kind, ref)).fetchall()
        if ids:
            c.execute("DELETE FROM chunks WHERE owner = ANY(%s)",
                      ([f"mail:{r['id']}" for r in ids],))

    def _drop_job_payload(self, c: Any, job_id: str) -> None:
        c.execute("DELETE FROM chunks WHERE owner = ANY(ARRAY(SELECT 'doc:' || job_id || "
                  "':' || idx FROM job_documents WHERE job_id=%s)) OR owner=%s",
                  (job_id, f"msg:{job_id}"))
        c.execute("DELETE FROM job_documents WHERE job_id=%s", (job_id,))
        c.execute("DELETE FROM job_messages WHERE job_id=%s", (job_id,))
        self._drop_mails(c, "report", job_id, rows=False)

    def _drop_fax_payload(self, c: Any, key: str) -> None:
        c.execute("DELETE FROM chunks WHERE owner = ANY(ARRAY(SELECT 'in:' || fax_id || "
                  "':' || idx FROM inbound_files WHERE fax_id=%s))", (key,))
        c.execute("DELETE FROM inbound_files WHERE fax_id=%s", (key,))
        self._drop_mails(c, "inbound", key, rows=False)

    def delete_job(self, job_id: str) -> bool:
        with self.tx() as c:
            if not self._locked(c, "jobs", job_id, _JOB_FINAL):
                return False
            self._drop_job_payload(c, job_id)
            self._drop_mails(c, "report", job_id, rows=True)
            c.execute("DELETE FROM job_events WHERE job_id=%s", (job_id,))
            c.execute("DELETE FROM jobs WHERE id=%s", (job_id,))  # cascades to its tables
        return True

    def delete_job_payload(self, job_id: str, detail: str) -> bool:
        with self.tx() as c:
            if not self._locked(c, "jobs", job_id, _JOB_FINAL):
                return False
            self._drop_job_payload(c, job_id)
            self._event(c, job_id, "payload-deleted", detail)
        return True

    def delete_inbound(self, key: str) -> bool:
        """A settled, acknowledged received fax (an unacknowledged one would be
        fetched and stored again)."""
        with self.tx() as c:
            if not self._locked(c, "inbound", key, f"acked=1 AND {_FAX_SETTLED}"):
                return False
            self._drop_fax_payload(c, key)
            self._drop_mails(c, "inbound", key, rows=True)
            c.execute("DELETE FROM inbound WHERE id=%s", (key,))  # cascades to its files
        return True

    def delete_inbound_payload(self, key: str) -> bool:
        with self.tx() as c:
            if not self._locked(c, "inbound", key, _FAX_SETTLED):
                return False
            self._drop_fax_payload(c, key)
        return True

    def expire_payloads(self, direction: str, before: float, limit: int = 1000) -> list[str]:
        """The payloads of settled items of `direction` created before `before`; the
        ids whose payload went. Rows another node is deleting are skipped (SKIP
        LOCKED), not waited for: the next pass finds whatever is left."""
        assert direction in ("outbound", "inbound"), direction
        with self.tx() as c:
            if direction == "outbound":
                ids = [r["id"] for r in c.execute(
                    f"SELECT id FROM jobs WHERE {_JOB_FINAL} AND created<%s AND "
                    f"{_JOB_HAS_PAYLOAD} ORDER BY created LIMIT %s FOR UPDATE SKIP LOCKED",
                    (before, limit))]
                for job_id in ids:
                    self._drop_job_payload(c, job_id)
                    self._event(c, job_id, "payload-expired",
                                "storage.payload_retention_days reached")
            else:
                ids = [r["id"] for r in c.execute(
                    f"SELECT id FROM inbound WHERE {_FAX_SETTLED} AND created<%s AND "
                    f"{_FAX_HAS_PAYLOAD} ORDER BY created LIMIT %s FOR UPDATE SKIP LOCKED",
                    (before, limit))]
                for key in ids:
                    self._drop_fax_payload(c, key)
        return ids

    # Newest first; `start_key` is the id of the first item of the page (the previous
    # page's next_start_key), as in SQLite.
    def page_jobs(self, *, states: tuple[str, ...], senders: tuple[str, ...] | None = None,
                  created_from: float | None = None, created_to: float | None = None,
                  start_key: str | None = None, limit: int = 50) -> list[Job]:
        sql, args = f"SELECT {JOB} FROM jobs WHERE state = ANY(%s)", [list(states)]
        if senders is not None:
            sql += " AND sender = ANY(%s)"
            args.append([s.lower() for s in senders])
        sql, args = _window(sql, args, "created", created_from, created_to)
        if start_key is not None:
            sql += " AND (created, id) <= (SELECT created, id FROM jobs WHERE id=%s)"
            args.append(start_key)
        return rows_as(Job, self.query(sql + " ORDER BY created DESC, id DESC LIMIT %s",
                                       (*args, limit)))

    def page_inbound(self, *, states: tuple[str, ...] | None = None,
                     topics: tuple[str, ...] | None = None, created_from: float | None = None,
                     created_to: float | None = None, start_key: str | None = None,
                     limit: int = 50) -> list[InboundFax]:
        sql, args = f"SELECT {INBOUND} FROM inbound WHERE TRUE", []
        if states is not None:
            sql += " AND state = ANY(%s)"
            args.append(list(states))
        if topics is not None:
            sql += " AND topic = ANY(%s)"
            args.append(list(topics))
        sql, args = _window(sql, args, "created", created_from, created_to)
        if start_key is not None:
            sql += " AND (created, id) <= (SELECT created, id FROM inbound WHERE id=%s)"
            args.append(start_key)
        return rows_as(InboundFax, self.query(
            sql + " ORDER BY created DESC, id DESC LIMIT %s", (*args, limit)))

    def page_log(self, *, senders: tuple[str, ...] | None = None,
                 created_from: float | None = None, created_to: float | None = None,
                 start_key: int | None = None, limit: int = 50) -> list[LogEntry]:
        sql, args = f"SELECT {_cols(LogEntry)} FROM smtp_log WHERE TRUE", []
        if senders is not None:
            sql += " AND mail_from = ANY(%s)"
            args.append([s.lower() for s in senders])
        sql, args = _window(sql, args, "ts", created_from, created_to)
        if start_key is not None:
            sql += " AND id<=%s"
            args.append(start_key)
        return rows_as(LogEntry, self.query(sql + " ORDER BY id DESC LIMIT %s",
                                            (*args, limit)))

    # ------------------------------------------------------------ the whole store
    def lead(self, name: str) -> bool:
        """Whether this node does the one-node work `name` now: it keeps the lead while
        it lives, and takes it over from a node whose lease ran out."""
        rows = self.query(
            f"INSERT INTO leads (name, node, since) VALUES (%(name)s, %(me)s, {NOW}) "
            f"ON CONFLICT (name) DO UPDATE SET node=EXCLUDED.node, since=EXCLUDED.since "
            f"WHERE leads.node = EXCLUDED.node OR NOT EXISTS (SELECT 1 FROM nodes n "
            f"WHERE n.id = leads.node AND n.lease_until > {NOW}) RETURNING node",
            {"name": name, "me": self.me})
        return bool(rows)

    def database(self) -> dict[str, Any]:
        version = self._version()
        alive = 0
        if version:
            alive = int(self.query(
                f"SELECT COUNT(*) AS n FROM nodes WHERE lease_until > {NOW}")[0]["n"])
        return {"backend": "postgresql", "location": self.where,
                "schema_version": version, "schema_expected": SCHEMA_VERSION,
                "node": self.me if self.as_node else None, "nodes_alive": alive}

    def queues(self) -> dict[str, tuple[int, float | None]]:
        out = {}
        for name, sql in _QUEUES:
            r = self.query(sql)[0]
            out[name] = (int(r["n"]), r["oldest"])
        return out

    def writable(self) -> bool:
        """A write that commits: proves the database takes commits right now."""
        with self.tx() as c:
            c.execute(f"UPDATE nodes SET lease_until = {NOW} + %s WHERE id=%s",
                      (self.lease_seconds, self.me))
        return True

    def integrity_check(self) -> str:
        """PostgreSQL checks its own pages; this checks the store's own invariants:
        every stored value has all its chunks."""
        rows = self.query(
            "SELECT 'msg:'||job_id AS owner, size FROM job_messages UNION ALL "
            "SELECT 'doc:'||job_id||':'||idx, size FROM job_documents UNION ALL "
            "SELECT 'in:'||fax_id||':'||idx, size FROM inbound_files UNION ALL "
            "SELECT 'mail:'||id, size FROM mail_out "
            "EXCEPT SELECT owner, SUM(octet_length(data)) FROM chunks GROUP BY owner")
        bad = [r for r in rows if r["size"]]
        if bad:
            return f"{len(bad)} stored value(s) incomplete, e.g. {bad[0]['owner']}"
        return "ok"


def _window(sql: str, args: list[Any], column: str, t_from: float | None,
            t_to: float | None) -> tuple[str, list[Any]]:
    if t_from is not None:
        sql += f" AND {column}>=%s"
        args.append(t_from)
    if t_to is not None:
        sql += f" AND {column}<=%s"
        args.append(t_to)
    return sql, args


# settled: a job done or failed; a received fax delivered, or held (given up on)
_JOB_FINAL = "state IN (" + ",".join(f"'{s}'" for s in OUT_FINAL) + ")"
_FAX_SETTLED = "state IN ('delivered','held')"
_JOB_HAS_PAYLOAD = (
    "(EXISTS (SELECT 1 FROM job_documents d WHERE d.job_id=jobs.id) OR "
    "EXISTS (SELECT 1 FROM job_messages m WHERE m.job_id=jobs.id) OR "
    "EXISTS (SELECT 1 FROM mail_out o WHERE o.kind='report' AND o.ref=jobs.id "
    "AND o.state IN ('sent','failed') AND o.size>0))")
_FAX_HAS_PAYLOAD = (
    "(EXISTS (SELECT 1 FROM inbound_files f WHERE f.fax_id=inbound.id) OR "
    "EXISTS (SELECT 1 FROM mail_out o WHERE o.kind='inbound' AND o.ref=inbound.id "
    "AND o.state IN ('sent','failed') AND o.size>0))")

# a rate limit's scope → the column it counts by (a fixed table: never client text)
_FAX_SCOPES = {"user": "j.auth_user", "sender": "j.sender", "client": "j.peer",
               "number": "r.number"}

_QUEUES = (
    ("jobs", "SELECT COUNT(*) AS n, MIN(created) AS oldest FROM jobs "
             "WHERE state IN ('queued','deferred','submitting')"),
    ("tracking", "SELECT COUNT(*) AS n, MIN(created) AS oldest FROM jobs "
                 "WHERE state='submitted'"),
    ("mail_out", "SELECT COUNT(*) AS n, MIN(created) AS oldest FROM mail_out "
                 "WHERE state='queued'"),
    ("inbound", "SELECT COUNT(*) AS n, MIN(created) AS oldest FROM inbound "
                "WHERE state IN ('stored','mailing')"),
)
