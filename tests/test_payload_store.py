"""Payload deletion in the SQLite store: an existing store is switched to
incremental auto-vacuum once, keeping its data, and a deleted payload's pages go
back to the file system."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from faxbridge.store import NewDocument, NewJob, NewRecipient, Store
from faxbridge.store.db import migrate


def job(data: bytes) -> NewJob:
    return NewJob(sender="a@example.com", recipients=[NewRecipient("+4989123456", "x@fax.local")],
                  documents=[NewDocument("d.pdf", "application/pdf", data)], options={},
                  raw=b"Subject: x\r\n\r\n" + data, deadline=9e9, valid_until=9e9)


def test_an_existing_store_becomes_incremental_and_keeps_its_data(tmp_path: Path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)  # as stores were made before
    conn.execute("PRAGMA journal_mode=WAL")
    migrate(conn)
    conn.close()
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    store = Store(path)
    old = job(b"%PDF-1.4 kept")
    store.create_jobs([(old, None)])
    store.close()
    store = Store(path)  # reopened: converted once, data intact
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert store.job_documents(old.id)[0].data == b"%PDF-1.4 kept"
    store.close()


def test_deleting_a_payload_shrinks_the_file(tmp_path: Path):
    path = tmp_path / "s.sqlite3"
    store = Store(path)
    big = job(b"%PDF-1.4 " + b"PAYLOAD-MARK" * 100_000)
    store.create_jobs([(big, None)])
    store.set_job_state(big.id, "failed", event="failed", detail="test")
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    assert store.delete_job_payload(big.id, "test")
    assert path.stat().st_size < size - 1_500_000  # two copies of 1.2 MB went
    assert b"PAYLOAD-MARK" not in path.read_bytes()
    assert store.job(big.id) is not None and store.job_documents(big.id) == []
    assert [e.kind for e in store.job_events(big.id)][-1] == "payload-deleted"
    store.close()
