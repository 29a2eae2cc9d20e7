"""Received faxes in SQLite: inbound (one row per fax, keyed topic/fax id) and
inbound_files. A fax is committed before its Fax2WSPull ack, and only once."""

from __future__ import annotations

import json
import time
from typing import Any

from faxbridge.store.db import Database
from faxbridge.store.new import IN_STATES
from faxbridge.store.rows import InboundDelivery, InboundFax, InboundFile, row_as, rows_as


class SqliteInbound:
    db: Database

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

    def inbound(self, key: str) -> InboundFax | None:
        rows = self.db.query("SELECT * FROM inbound WHERE id=?", (key,))
        return row_as(InboundFax, rows[0]) if rows else None

    def inbound_files(self, key: str) -> list[InboundFile]:
        return rows_as(InboundFile, self.db.query(
            "SELECT * FROM inbound_files WHERE fax_id=? ORDER BY idx", (key,)))

    def inbound_in(self, states: tuple[str, ...], topic: str | None = None,
                   limit: int = 1000) -> list[InboundFax]:
        marks = ",".join("?" * len(states))
        sql = f"SELECT * FROM inbound WHERE state IN ({marks})"
        args: list[Any] = list(states)
        if topic:
            sql += " AND topic=?"
            args.append(topic)
        return rows_as(InboundFax, self.db.query(sql + " ORDER BY created LIMIT ?",
                                                 (*args, limit)))

    def list_inbound(self, limit: int = 100) -> list[InboundFax]:
        return rows_as(InboundFax, self.db.query(
            "SELECT * FROM inbound ORDER BY created DESC LIMIT ?", (limit,)))

    def inbound_to_deliver(self, limit: int = 100) -> list[InboundDelivery]:
        """Received faxes whose next step is the deliverer's: stored ones (mail them),
        and those `mailing` whose latest mail is settled — failed (fallback mailbox or
        hold), or sent / missing in a store written before the mail's outcome and the
        fax's state were one transaction. Each carries its latest mail's state, error
        and recipients as mail_state, mail_error, mail_to_json."""
        return rows_as(InboundDelivery, self.db.query(
            "SELECT i.*, m.state AS mail_state, m.last_error AS mail_error, "
            "m.recipients_json AS mail_to_json FROM inbound i LEFT JOIN mail_out m ON m.id = "
            "(SELECT MAX(id) FROM mail_out WHERE kind='inbound' AND ref=i.id) "
            "WHERE i.state='stored' OR (i.state='mailing' AND (m.id IS NULL OR "
            "m.state IN ('sent','failed'))) ORDER BY i.created LIMIT ?", (limit,)))
