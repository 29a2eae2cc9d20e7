"""The SQLite backend: one class made of the table groups' SQLite mixins, over
one Database (connection, migrations, error mapping)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faxbridge.store.db import SCHEMA_VERSION, Database
from faxbridge.store.inbound import SqliteInbound
from faxbridge.store.jobs import SqliteJobs
from faxbridge.store.mailout import SqliteMailOut
from faxbridge.store.payloads import SqlitePayloads
from faxbridge.store.smtplog import SqliteSmtpLog

# (count, oldest created) per queue, for the metrics' queue depth and age gauges
_QUEUES = (
    ("jobs", "SELECT COUNT(*), MIN(created) FROM jobs "
             "WHERE state IN ('queued','deferred','submitting')"),
    ("tracking", "SELECT COUNT(*), MIN(created) FROM jobs WHERE state='submitted'"),
    ("mail_out", "SELECT COUNT(*), MIN(created) FROM mail_out WHERE state='queued'"),
    ("inbound", "SELECT COUNT(*), MIN(created) FROM inbound WHERE state IN ('stored','mailing')"),
)


class SqliteStore(SqliteJobs, SqliteInbound, SqliteSmtpLog, SqliteMailOut, SqlitePayloads):
    """Implements store.protocol.Store on one SQLite file (WAL, synchronous=FULL)."""

    def __init__(self, path: Path, busy_timeout_ms: int = 10000) -> None:
        self.db = Database(path, busy_timeout_ms)

    def close(self) -> None:
        self.db.close()

    def queues(self) -> dict[str, tuple[int, float | None]]:
        out = {}
        for name, sql in _QUEUES:
            n, oldest = self.db.query(sql)[0]
            out[name] = (int(n), oldest)
        return out

    def writable(self) -> bool:
        """Take and release the write lock: proves the store can commit right now."""
        with self.db.read() as c:
            c.execute("BEGIN IMMEDIATE")
            c.execute("ROLLBACK")
        return True

    def integrity_check(self) -> str:
        return str(self.db.query("PRAGMA integrity_check")[0][0])

    def lead(self, name: str) -> bool:
        return True  # one file, one bridge: it does all the work

    def database(self) -> dict[str, Any]:
        version = int(self.db.query("PRAGMA user_version")[0][0])
        return {"backend": "sqlite", "location": str(self.db.path),
                "schema_version": version, "schema_expected": SCHEMA_VERSION}
