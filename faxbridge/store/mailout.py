"""The outbox in SQLite (mail_out): report mails and received faxes' mails, and
what a mail's outcome means for the job or fax it belongs to, in the same
transaction."""

from __future__ import annotations

import json
import time

from faxbridge.store.db import Database
from faxbridge.store.rows import OutMail, row_as, rows_as
from faxbridge.store.statements import insert_event, insert_mail

# a listing leaves the message out: it can be tens of megabytes
_LISTED = "id,state,created,updated,kind,ref,mail_from,recipients_json,attempts," \
          "next_attempt,last_error"


class SqliteMailOut:
    db: Database

    def queue_mail(self, kind: str, ref: str | None, mail_from: str, recipients: list[str],
                   raw: bytes, *, inbound_state: tuple[str, str] | None = None) -> int:
        """Queue an outgoing mail; optionally in the same transaction record the
        inbound state that produced it, so a crash cannot produce it twice."""
        now = time.time()
        with self.db.tx() as c:
            mail_id = insert_mail(c, now, kind, ref, mail_from, recipients, raw)
            if inbound_state is not None:
                key, state = inbound_state
                c.execute("UPDATE inbound SET state=?, updated=? WHERE id=?", (state, now, key))
            return mail_id

    def claim_mail(self, now: float | None = None) -> OutMail | None:
        now = time.time() if now is None else now
        rows = self.db.query(
            "SELECT * FROM mail_out WHERE state='queued' AND next_attempt<=? "
            "ORDER BY next_attempt, id LIMIT 1", (now,))
        return row_as(OutMail, rows[0]) if rows else None

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
                insert_event(c, row["ref"], "report-sent",
                             f"report mail to {to}" + (f" ({note})" if note else ""))
            elif row["kind"] == "report":
                insert_event(c, row["ref"], "report-failed",
                             f"report mail could not be delivered: {error}")
            elif row["kind"] == "inbound" and state == "sent":
                c.execute("UPDATE inbound SET state='delivered', updated=?, delivered_to=?, "
                          "last_error=COALESCE(?,last_error) WHERE id=? AND state='mailing'",
                          (now, to, note, row["ref"]))

    def latest_mail(self, kind: str, ref: str) -> OutMail | None:
        rows = self.db.query(f"SELECT {_LISTED} FROM mail_out WHERE kind=? AND ref=? "
                             "ORDER BY id DESC LIMIT 1", (kind, ref))
        return row_as(OutMail, rows[0]) if rows else None

    def list_mail(self, limit: int = 100) -> list[OutMail]:
        return rows_as(OutMail, self.db.query(
            f"SELECT {_LISTED} FROM mail_out ORDER BY id DESC LIMIT ?", (limit,)))
