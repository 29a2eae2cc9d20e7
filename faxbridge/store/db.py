"""SQLite connection, pragmas, schema and migrations.

WAL + synchronous=FULL: a commit is on disk when `commit()` returns, so the SMTP
250 and the Fax2WSPull ack that follow it are truthful (SQLite docs "WAL mode":
with synchronous=FULL a transaction is durable across power loss).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from faxbridge.errors import StoreError

# Each entry migrates from version i to i+1. Append only; never edit a shipped one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,            -- queued submitting submitted done failed deferred held
        created REAL NOT NULL,
        updated REAL NOT NULL,
        sender TEXT NOT NULL,
        auth_user TEXT,
        message_id TEXT,
        subject TEXT,
        rule TEXT,
        header TEXT,
        request_json TEXT NOT NULL,     -- the FaxJobRequest minus document data
        raw BLOB,                       -- the message as received (v3: job_messages)
        retarus_job_id TEXT,
        datacenter TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL DEFAULT 0,
        deadline REAL NOT NULL,
        valid_until REAL NOT NULL,
        last_error TEXT,
        notify TEXT NOT NULL DEFAULT 'always',
        attach_documents INTEGER NOT NULL DEFAULT 0,
        reported INTEGER NOT NULL DEFAULT 0,
        report_deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_state ON jobs(state, next_attempt);
    CREATE INDEX jobs_sender ON jobs(sender, created);
    CREATE INDEX jobs_retarus ON jobs(retarus_job_id);
    CREATE TABLE job_recipients (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        number TEXT NOT NULL,
        address TEXT NOT NULL,
        display_name TEXT,
        status TEXT,
        reason TEXT,
        sent_ts TEXT,
        duration INTEGER,
        pages INTEGER,
        remote_csid TEXT,
        sent_to_number TEXT,
        PRIMARY KEY (job_id, idx)
    );
    CREATE TABLE job_documents (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,
        content_type TEXT NOT NULL,
        charset TEXT,
        data BLOB NOT NULL,
        PRIMARY KEY (job_id, idx)
    );
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX job_events_job ON job_events(job_id, id);
    CREATE TABLE inbound (
        id TEXT PRIMARY KEY,            -- Fax2WSPull fax id, scoped by topic
        topic TEXT NOT NULL,
        state TEXT NOT NULL,            -- stored acked delivered deferred held
        created REAL NOT NULL,
        updated REAL NOT NULL,
        metadata_json TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        delivered_to TEXT
    );
    CREATE INDEX inbound_state ON inbound(state, next_attempt);
    CREATE TABLE inbound_files (
        fax_id TEXT NOT NULL REFERENCES inbound(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,
        content_type TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (fax_id, idx)
    );
    CREATE TABLE smtp_log (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        peer TEXT,
        helo TEXT,
        tls INTEGER NOT NULL DEFAULT 0,
        auth_user TEXT,
        mail_from TEXT,
        recipients_json TEXT NOT NULL DEFAULT '[]',
        message_id TEXT,
        subject TEXT,
        size INTEGER,
        parts_json TEXT NOT NULL DEFAULT '[]',
        reply TEXT,
        ok INTEGER NOT NULL DEFAULT 0,
        job_id TEXT,
        timings_json TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX smtp_log_ts ON smtp_log(ts);
    CREATE TABLE mail_out (
        id INTEGER PRIMARY KEY,
        state TEXT NOT NULL,            -- queued sent failed
        created REAL NOT NULL,
        updated REAL NOT NULL,
        kind TEXT NOT NULL,             -- report, inbound
        ref TEXT,                       -- job id or inbound fax id
        mail_from TEXT NOT NULL,
        recipients_json TEXT NOT NULL,
        raw BLOB NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX mail_out_state ON mail_out(state, next_attempt);
    """,
    # 2: the Fax2WSPull ack is tracked apart from delivery: a committed fax is
    # mailed whether or not its ack is known to have reached Retarus.
    """
    ALTER TABLE inbound ADD COLUMN acked INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE inbound ADD COLUMN fax_id TEXT;
    """,
    # 3: the message as received gets its own table, as the last column of its row:
    # SQLite keeps a zeroblob() unexpanded only there, so blob I/O can fill it in
    # place. In the middle of a jobs row, every insert built the whole message in
    # memory twice (58 MB for a 34 MB mail).
    """
    CREATE TABLE job_messages (
        job_id TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
        raw BLOB NOT NULL
    );
    INSERT INTO job_messages (job_id, raw) SELECT id, raw FROM jobs WHERE raw IS NOT NULL;
    ALTER TABLE jobs DROP COLUMN raw;
    """,
    # 4: the Fax4A request is built when the job is sent, from the job's facts; the
    # stored request of a job accepted before gives its options (all it held beyond
    # the job's id, header and recipients, which the job has anyway).
    """
    ALTER TABLE jobs ADD COLUMN options_json TEXT NOT NULL DEFAULT '{}';
    UPDATE jobs SET options_json = json_object(
        'billing_code', json_extract(request_json, '$.reference.billingCode'),
        'express', json(CASE WHEN json_extract(request_json, '$.transportOptions.isExpress')
                        THEN 'true' ELSE 'false' END),
        'blacklist', json(CASE WHEN json_extract(request_json,
                                                 '$.transportOptions.isBlacklistEnabled') = 0
                          THEN 'false' ELSE 'true' END),
        'paper_format', json_extract(request_json, '$.renderingOptions.paperFormat'),
        'resolution', json_extract(request_json, '$.renderingOptions.resolution'),
        'csid', json_extract(request_json, '$.transportOptions.csid'),
        'cover_page_template', json_extract(request_json, '$.renderingOptions.coverpageTemplate'))
    WHERE json_valid(request_json);
    ALTER TABLE jobs DROP COLUMN request_json;
    """,
    # 5: identity, not claims: rate limits count faxes (recipients) per
    # authenticated user, per client address and per number; a job's reports go to
    # report_to (the user's address) when MAIL FROM is not the user's own.
    """
    ALTER TABLE jobs ADD COLUMN peer TEXT;
    ALTER TABLE jobs ADD COLUMN report_to TEXT;
    CREATE INDEX jobs_auth_user ON jobs(auth_user, created);
    CREATE INDEX jobs_peer ON jobs(peer, created);
    CREATE INDEX job_recipients_number ON job_recipients(number);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path, busy_timeout_ms: int = 10000) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                           timeout=busy_timeout_ms / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    # A deleted payload (a fax document, a mail) is overwritten with zeros, not left
    # readable in a free page of the file: deletion is for privacy.
    conn.execute("PRAGMA secure_delete=ON")
    migrate(conn)
    incremental_vacuum_mode(conn)
    return conn


def incremental_vacuum_mode(conn: sqlite3.Connection) -> None:
    """auto_vacuum=INCREMENTAL, so `reclaim` can give the pages of deleted payloads
    back to the file system. A new database takes the mode before its first table;
    an existing one only through one VACUUM (which rewrites the file once, outside
    any transaction, hence not one of MIGRATIONS), and the mode itself records that
    it was done."""
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("VACUUM")


def reclaim(conn: sqlite3.Connection) -> None:
    """After deleting payloads: hand the free pages back (the file shrinks) and
    checkpoint the WAL into the file and truncate it, so the deleted data is in
    neither file any more. Outside a transaction."""
    # executescript: sqlite3's execute() steps a statement without result columns
    # once, and one step of incremental_vacuum frees one page
    conn.executescript("PRAGMA incremental_vacuum;")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def migrate(conn: sqlite3.Connection) -> int:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"database schema {version} is newer than this faxbridge "
                           f"({SCHEMA_VERSION}); refusing to touch it")
    for i in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _statements(MIGRATIONS[i]):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={i + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION


def _statements(script: str) -> Iterator[str]:
    buf = ""
    for line in script.splitlines():
        line = line.split("--", 1)[0]
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf.strip()
            buf = ""


class Database:
    """One connection shared under a lock; every write is one transaction.

    The one place where sqlite3.Error becomes the project's StoreError: every
    statement the store runs goes through tx(), read() or query() (or opening the
    database), so callers and the table modules never see a library exception."""

    def __init__(self, path: Path, busy_timeout_ms: int = 10000) -> None:
        self.path = path
        with mapped(f"cannot open store {path}"):
            self.conn = connect(path, busy_timeout_ms)
        self.lock = threading.RLock()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self.lock, mapped("store transaction failed"):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                # SQLite may already have rolled back (e.g. disk full); a second
                # ROLLBACK would hide the error that matters
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads that need more than one statement (blob I/O)."""
        with self.lock, mapped("store read failed"):
            yield self.conn

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self.lock, mapped("store query failed"):
            return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self.lock:
            self.conn.close()


@contextmanager
def mapped(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"{what}: {exc}") from exc


# Blobs go in and out through SQLite's incremental blob I/O: binding a 30 MB value
# makes SQLite copy it (and build the record around it) before the pages are
# written, and reading one materialises it in SQLite's heap before Python copies it.
# The blob must be the last column of its row (job_documents.data,
# job_messages.raw): only there does SQLite keep the zeroblob() unexpanded.
BLOB_CHUNK = 1 << 20


def write_blob(c: sqlite3.Connection, table: str, column: str, rowid: int | None,
               data: bytes | bytearray) -> None:
    if not data:
        return
    assert rowid is not None
    view = memoryview(data)
    with c.blobopen(table, column, rowid) as blob:
        for i in range(0, len(data), BLOB_CHUNK):
            blob.write(view[i:i + BLOB_CHUNK])


def read_blob(c: sqlite3.Connection, table: str, column: str, rowid: int) -> bytes:
    # both blob columns are NOT NULL and only ever written as blobs (zeroblob(0) too)
    with c.blobopen(table, column, rowid, readonly=True) as blob:
        return blob.read()
