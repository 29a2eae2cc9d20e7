"""The SMTP log in SQLite (smtp_log): one record per transaction, with every
decision taken in it."""

from __future__ import annotations

from faxbridge.store.db import Database
from faxbridge.store.new import SmtpLogRecord
from faxbridge.store.rows import LogEntry, row_as, rows_as
from faxbridge.store.statements import insert_log


class SqliteSmtpLog:
    db: Database

    def add_log(self, r: SmtpLogRecord) -> int:
        with self.db.tx() as c:
            return insert_log(c, r)

    def list_log(self, *, failed: bool = False, sender: str | None = None,
                 number: str | None = None, since: float | None = None,
                 limit: int = 100) -> list[LogEntry]:
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
        return rows_as(LogEntry, self.db.query(sql, tuple(args)))

    def log_entry(self, log_id: int) -> LogEntry | None:
        rows = self.db.query("SELECT * FROM smtp_log WHERE id=?", (log_id,))
        return row_as(LogEntry, rows[0]) if rows else None

    def prune_log(self, older_than: float) -> int:
        with self.db.tx() as c:
            return c.execute("DELETE FROM smtp_log WHERE ts<?", (older_than,)).rowcount
