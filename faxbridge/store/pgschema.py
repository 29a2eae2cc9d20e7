"""The PostgreSQL schema and its migrations.

The tables mirror the SQLite ones (the rows callers read are the same dataclasses);
what a cluster needs on top:
- `nodes`: each running bridge's heartbeat lease. A node whose lease ran out is dead
  for the others: its claims and its leads are theirs to take.
- `claimed_by` on the rows workers claim (jobs, inbound, mail_out): the node working
  on the row; another node leaves it alone while that node's lease holds.
- `leads`: which node does the one-node-at-a-time work (a Fax2WSPull topic, the
  confirmation pass, report clean-up, SMTP log pruning).
- `chunks`: message bodies, documents, received files and outgoing mails, in pieces
  of CHUNK bytes, so no value is ever handed to or taken from the server whole.
"""

from __future__ import annotations

# Each entry migrates from version i to i+1. Append only; never edit a shipped one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        started DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE leads (
        name TEXT PRIMARY KEY,
        node TEXT NOT NULL,
        since DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        sender TEXT NOT NULL,
        auth_user TEXT,
        message_id TEXT,
        subject TEXT,
        rule TEXT,
        header TEXT,
        retarus_job_id TEXT,
        datacenter TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt DOUBLE PRECISION NOT NULL DEFAULT 0,
        deadline DOUBLE PRECISION NOT NULL,
        valid_until DOUBLE PRECISION NOT NULL,
        last_error TEXT,
        notify TEXT NOT NULL DEFAULT 'always',
        attach_documents INTEGER NOT NULL DEFAULT 0,
        reported INTEGER NOT NULL DEFAULT 0,
        report_deleted INTEGER NOT NULL DEFAULT 0,
        options_json TEXT NOT NULL DEFAULT '{}',
        claimed_by TEXT
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
        size BIGINT NOT NULL,
        PRIMARY KEY (job_id, idx)
    );
    CREATE TABLE job_messages (
        job_id TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
        size BIGINT NOT NULL
    );
    CREATE TABLE job_events (
        id BIGSERIAL PRIMARY KEY,
        job_id TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX job_events_job ON job_events(job_id, id);
    CREATE TABLE inbound (
        id TEXT PRIMARY KEY,
        topic TEXT NOT NULL,
        state TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        metadata_json TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt DOUBLE PRECISION NOT NULL DEFAULT 0,
        last_error TEXT,
        delivered_to TEXT,
        acked INTEGER NOT NULL DEFAULT 0,
        fax_id TEXT,
        claimed_by TEXT
    );
    CREATE INDEX inbound_state ON inbound(state, next_attempt);
    CREATE TABLE inbound_files (
        fax_id TEXT NOT NULL REFERENCES inbound(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,
        content_type TEXT NOT NULL,
        size BIGINT NOT NULL,
        PRIMARY KEY (fax_id, idx)
    );
    CREATE TABLE smtp_log (
        id BIGSERIAL PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
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
        id BIGSERIAL PRIMARY KEY,
        state TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        ref TEXT,
        mail_from TEXT NOT NULL,
        recipients_json TEXT NOT NULL,
        size BIGINT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt DOUBLE PRECISION NOT NULL DEFAULT 0,
        last_error TEXT,
        claimed_by TEXT
    );
    CREATE INDEX mail_out_state ON mail_out(state, next_attempt);
    CREATE INDEX mail_out_ref ON mail_out(kind, ref, id);
    CREATE TABLE chunks (
        owner TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (owner, seq)
    );
    -- PDFs and TIFFs do not compress: do not spend CPU trying (TOAST, uncompressed)
    ALTER TABLE chunks ALTER COLUMN data SET STORAGE EXTERNAL;
    """,
    # 2 (SQLite's 5): identity, not claims: rate limits count faxes (recipients) per
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

# Any constant both nodes agree on: the transaction-level advisory lock that
# serialises migrations when two nodes start at once.
MIGRATION_LOCK = 0x66617862  # "faxb"
