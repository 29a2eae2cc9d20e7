"""SQLite statements that more than one table group runs inside its own
transaction: a job's timeline event (also written by the outbox when a report
mail settles), an SMTP log record (also committed with its job), an outgoing
mail (also queued with a job's final outcome). Kept apart so that the table
modules need not import each other."""

from __future__ import annotations

import json
import sqlite3
import time

from faxbridge.store.new import SmtpLogRecord


def insert_event(c: sqlite3.Connection, job_id: str, kind: str, detail: str = "") -> None:
    c.execute("INSERT INTO job_events (job_id,ts,kind,detail) VALUES (?,?,?,?)",
              (job_id, time.time(), kind, detail))


def insert_log(c: sqlite3.Connection, r: SmtpLogRecord) -> int:
    cur = c.execute(
        "INSERT INTO smtp_log (ts,peer,helo,tls,auth_user,mail_from,recipients_json,"
        "message_id,subject,size,parts_json,reply,ok,job_id,timings_json) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (r.ts, r.peer, r.helo, int(r.tls), r.auth_user, r.mail_from,
         json.dumps(r.recipients), r.message_id, r.subject, r.size, json.dumps(r.parts),
         r.reply, int(r.ok), r.job_id, json.dumps(r.timings)))
    return int(cur.lastrowid or 0)


def insert_mail(c: sqlite3.Connection, now: float, kind: str, ref: str | None,
                mail_from: str, recipients: list[str], raw: bytes) -> int:
    cur = c.execute(
        "INSERT INTO mail_out (state,created,updated,kind,ref,mail_from,"
        "recipients_json,raw) VALUES ('queued',?,?,?,?,?,?,?)",
        (now, now, kind, ref, mail_from, json.dumps(recipients), raw))
    return int(cur.lastrowid or 0)
