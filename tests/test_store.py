"""The store survives kill -9 in the middle of its transactions; its SQLite backend
implements the store's Protocol, returns typed rows and raises only StoreError."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faxbridge.store import NewDocument, NewJob, NewRecipient, SmtpLogRecord, Store

WRITER = r"""
import sys, time
from pathlib import Path
from faxbridge.store import Store, NewJob, NewRecipient, NewDocument
s = Store(Path(sys.argv[1]))
i = 0
while True:
    i += 1
    job = NewJob(sender="a@example.com", recipients=[NewRecipient("+4989123456", "x@fax.local")] * 3,
                 documents=[NewDocument(f"d{k}.pdf", "application/pdf", b"%PDF" + bytes(20000))
                            for k in range(4)],
                 options={"n": i}, raw=b"x" * 50000, deadline=0, valid_until=0)
    s.create_jobs([(job, None)])
    s.set_job_state(job.id, "submitted", event="submitted", retarus_job_id=f"FJ{i}")
    print(job.id, flush=True)
"""


def test_kill9_during_transactions_leaves_store_consistent(tmp_path):
    db = tmp_path / "s.sqlite3"
    printed: list[str] = []  # each id is printed after its two transactions committed
    for round_ in range(3):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE)
        assert p.stdout is not None
        # kill once it has committed a few jobs in this round: it is then inside the next
        # one (it loops without pause), whatever the machine's speed
        for _ in range(3 + 4 * round_):
            line = p.stdout.readline()
            assert line.endswith(b"\n"), "the writer died"
            printed.append(line.decode().strip())
        p.send_signal(signal.SIGKILL)
        p.wait()
        printed += [x.decode().strip() for x in p.stdout.read().splitlines(keepends=True)
                    if x.endswith(b"\n")]  # what it printed after our last read
        p.stdout.close()
        s = Store(db)
        assert s.integrity_check() == "ok"
        state = {row["id"]: row["state"] for row in s.db.query("SELECT id, state FROM jobs")}
        # nothing committed is lost ...
        assert all(state.get(job_id) == "submitted" for job_id in printed)
        # ... and besides, only the job in flight in each round may be there, unprinted
        assert len(state) - len(printed) <= round_ + 1
        for job_id in state:  # every committed job is whole: all recipients and documents
            assert len(s.job_recipients(job_id)) == 3
            assert len(s.job_documents(job_id)) == 4
        s.close()


def test_schema_version_and_wal(tmp_path):
    s = Store(tmp_path / "x.sqlite3")
    assert s.db.query("PRAGMA journal_mode")[0][0] == "wal"
    assert s.db.query("PRAGMA synchronous")[0][0] == 2  # FULL
    assert s.db.query("PRAGMA user_version")[0][0] >= 1
    job = NewJob(sender="a@b.c", recipients=[NewRecipient("+491", "1@fax.local")],
                 documents=[NewDocument("a.txt", "text/plain", b"hi", "UTF-8")], options={},
                 raw=b"", deadline=0, valid_until=0)
    s.create_jobs([(job, None)])
    assert [r.id for r in s.next_jobs(1)] == [job.id]
    assert s.claim_job(job.id) and s.job(job.id).state == "submitting"
    assert not s.claim_job(job.id) and s.next_jobs(1) == []
    # a final state cannot be undone by a late transition guarded with expect=
    s.set_job_state(job.id, "done", event="done")
    assert not s.set_job_state(job.id, "submitted", event="x", expect=("submitting",))
    assert s.job(job.id).state == "done"


def test_smtp_log_retention_prunes_only_old_records(tmp_path):
    from faxbridge.store import SmtpLogRecord
    s = Store(tmp_path / "x.sqlite3")
    s.add_log(SmtpLogRecord(ts=time.time() - 100 * 86400, reply="old"))
    s.add_log(SmtpLogRecord(reply="new"))
    assert s.prune_log(time.time() - 90 * 86400) == 1
    assert [r.reply for r in s.list_log()] == ["new"]


def test_migration_moves_stored_messages_out_of_jobs(tmp_path):
    """A database written by an earlier version (schema 2, the message in jobs.raw)
    keeps every message when opened by this one."""
    import sqlite3

    from faxbridge.store.db import MIGRATIONS, SCHEMA_VERSION, _statements
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:2]:
        for stmt in _statements(script):
            old.execute(stmt)
    old.execute("PRAGMA user_version=2")
    old.execute("INSERT INTO jobs (id,state,created,updated,sender,request_json,raw,deadline,"
                "valid_until) VALUES ('J1','done',0,0,'a@b.c','{}',?,0,0)", (b"From: a\r\n",))
    old.close()
    s = Store(path)
    assert s.db.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    assert s.job_raw("J1") == b"From: a\r\n"
    assert "raw" not in dataclasses.asdict(s.job("J1"))  # the column is gone
    s.close()


def _protocol_methods() -> dict[str, inspect.Signature]:
    from faxbridge.store import protocol
    out = {}
    for cls in (protocol.JobStore, protocol.InboundStore, protocol.SmtpLogStore,
                protocol.MailOutStore, protocol.PayloadStore, protocol.Store):
        for name, fn in vars(cls).items():
            if inspect.isfunction(fn) and not name.startswith("_"):
                out[name] = inspect.signature(fn)
    return out


def test_sqlite_store_implements_the_protocol():
    """Every method of the interface exists on the SQLite backend with the same
    parameters (names, kinds, defaults), so callers typed on the Protocol get it."""
    from faxbridge.store.sqlite import SqliteStore
    methods = _protocol_methods()
    assert len(methods) > 40
    for name, sig in methods.items():
        impl = getattr(SqliteStore, name, None)
        assert impl is not None, f"SqliteStore lacks {name}"
        got = inspect.signature(impl)
        assert [(p.name, p.kind, p.default) for p in got.parameters.values()] == \
            [(p.name, p.kind, p.default) for p in sig.parameters.values()], name


def _is_store(node: ast.expr) -> bool:
    if isinstance(node, ast.Call):
        node = node.func
    return (isinstance(node, ast.Name) and node.id == "store") or \
        (isinstance(node, ast.Attribute) and node.attr == "store")


def test_callers_use_only_the_protocol():
    """No module outside the store calls a store method the interface does not
    declare, nor reaches into the SQLite connection (`store.db`): a second backend
    that implements the Protocol is then enough."""
    methods = set(_protocol_methods())
    root = Path(__file__).resolve().parent.parent / "faxbridge"
    used: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        if "store" in path.relative_to(root).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            # store.x, self.store.x, db.store.x, store().x (the admin API's accessor)
            if isinstance(node, ast.Attribute) and _is_store(node.value):
                used.setdefault(node.attr, set()).add(str(path.relative_to(root)))
    assert "job" in used and "finish_job" in used  # the scan sees the callers
    unknown = {n: sorted(p) for n, p in used.items() if n not in methods}
    assert unknown == {}


def test_rows_are_typed_and_immutable(tmp_path):
    from faxbridge.store import Job, JobEvent, JobRecipient, LogEntry
    s = Store(tmp_path / "x.sqlite3")
    job = NewJob(sender="a@b.c", recipients=[NewRecipient("+491", "1@fax.local", "Jo")],
                 documents=[NewDocument("a.txt", "text/plain", b"hi", "UTF-8")],
                 options={"csid": "X"}, raw=b"raw", deadline=0, valid_until=0)
    s.create_jobs([(job, SmtpLogRecord(reply="250 ok", ok=True))])
    row = s.job(job.id)
    assert isinstance(row, Job) and row.state == "queued" and row.options == {"csid": "X"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.state = "done"  # type: ignore[misc]
    [rcpt] = s.job_recipients(job.id)
    assert isinstance(rcpt, JobRecipient) and rcpt.display_name == "Jo"
    assert all(isinstance(e, JobEvent) for e in s.job_events(job.id))
    [doc] = s.job_documents(job.id)
    assert (doc.name, doc.charset, doc.data) == ("a.txt", "UTF-8", b"hi")
    [log] = s.list_log()
    assert isinstance(log, LogEntry) and log.job_id == job.id and log.ok == 1
    s.close()


def test_sqlite_errors_become_store_errors(tmp_path):
    """A locked database (another writer holds it past the busy timeout) and a
    closed connection surface as StoreError, from writes and reads alike; the
    store works again once the lock is gone."""
    import sqlite3

    from faxbridge.errors import StoreError
    path = tmp_path / "x.sqlite3"
    s = Store(path, busy_timeout_ms=50)
    other = sqlite3.connect(path, isolation_level=None, timeout=0.05)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="locked"):
            s.add_log(SmtpLogRecord(reply="x"))
        with pytest.raises(StoreError):
            s.writable()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert s.add_log(SmtpLogRecord(reply="y")) > 0 and s.writable()
    s.db.conn.close()
    with pytest.raises(StoreError):
        s.job("J1")
    with pytest.raises(StoreError):
        s.job_raw("J1")
    with pytest.raises(StoreError, match="cannot open store"):
        Store(tmp_path)  # a directory, not a database file
