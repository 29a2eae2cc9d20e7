"""The durable store: the only package that runs SQL.

Every state change is one transaction; workers claim items by state, do one
thing, and record the outcome, so a restart resumes whatever was unfinished.

Layout: protocol.py is the interface callers depend on (one Protocol per table
group, `StoreProtocol` here); rows.py the typed rows it returns; new.py what
callers hand it to write. The SQLite backend is sqlite.py, made of one module per
table group (jobs, inbound, smtplog, mailout) over db.py (connection, migrations,
the one place sqlite3.Error becomes StoreError). `Store` is that backend, kept
under its old name so `Store(path)` opens one; `open_store` is how the bridge
opens its store. postgres.py (schema in pgschema.py) is the PostgreSQL backend that
several bridges share.
"""

from __future__ import annotations

from pathlib import Path

from faxbridge.store.new import (
    IN_STATES,
    OUT_FINAL,
    OUT_STATES,
    NewDocument,
    NewJob,
    NewRecipient,
    SmtpLogRecord,
    new_job_id,
)
from faxbridge.store.protocol import Store as StoreProtocol
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
)
from faxbridge.store.sqlite import SqliteStore

Store = SqliteStore


def open_store(path: Path, busy_timeout_ms: int = 10000, database_url: str | None = None,
               *, lease_seconds: float = 30.0, pool_size: int = 8,
               as_node: bool = True, migrate: bool = True) -> StoreProtocol:
    """The store the bridge and the command line work on: the PostgreSQL database at
    `database_url` (shared by every node), else SQLite at `path`. The command line
    opens it `as_node=False`: it takes part in no claims; `faxbridge check` also
    with `migrate=False`: it only reads the schema version."""
    if database_url:
        # imported here: psycopg is an optional dependency (faxbridge[postgres])
        from faxbridge.store.postgres import PostgresStore
        return PostgresStore(database_url, lease_seconds=lease_seconds, pool_size=pool_size,
                             connect_timeout=max(1.0, busy_timeout_ms / 1000),
                             as_node=as_node, migrate=migrate)
    return SqliteStore(path, busy_timeout_ms)


__all__ = [
    "IN_STATES", "OUT_FINAL", "OUT_STATES", "InboundDelivery", "InboundFax", "InboundFile",
    "Job", "JobDocument", "JobEvent", "JobRecipient", "LogEntry", "NewDocument", "NewJob",
    "NewRecipient", "OutMail", "SmtpLogRecord", "SqliteStore", "Store", "StoreProtocol",
    "new_job_id", "open_store",
]
