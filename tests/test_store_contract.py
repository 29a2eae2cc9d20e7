"""The store's contract, run against both backends (SQLite and a real PostgreSQL
started by the suite), and what only a shared database must add: two nodes on one
PostgreSQL never both get a claim, a dead node's claims and leads pass to another
once its lease runs out, and racing state changes are applied once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.waiting as waiting
from faxbridge.errors import StoreError
from faxbridge.store import NewDocument, NewJob, NewRecipient, SmtpLogRecord, open_store
from faxbridge.store.pgschema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from faxbridge.store.postgres import PostgresStore
from faxbridge.store.protocol import Store


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = open_store(tmp_path / "s.sqlite3")
    else:
        s = open_store(tmp_path, database_url=request.getfixturevalue("database_url"))
    yield s
    s.close()


def new_job(n_docs: int = 1, size: int = 10, raw: bytes = b"raw mail", **kw: Any) -> NewJob:
    kw.setdefault("sender", "a@example.com")
    return NewJob(recipients=[NewRecipient("+4989123456", "4989123456@fax.local", "Bob"),
                              NewRecipient("+4930123456", "4930123456@fax.local")],
                  documents=[NewDocument(f"d{i}.pdf", "application/pdf",
                                         bytes([i % 256]) * size) for i in range(n_docs)],
                  options={"resolution": "HIGH"}, raw=bytearray(raw),
                  deadline=time.time() + 600, valid_until=time.time() + 3600, **kw)


def test_job_lifecycle(store: Store):
    job = new_job(n_docs=2, subject="Hello")
    store.create_jobs([(job, SmtpLogRecord(mail_from="a@example.com", ok=True))])
    row = store.job(job.id)
    assert row is not None and row.state == "queued" and row.subject == "Hello"
    assert row.options == {"resolution": "HIGH"}
    assert [j.id for j in store.next_jobs(5)] == [job.id]
    assert store.next_jobs(5, exclude={job.id}) == []
    assert [d.data for d in store.job_documents(job.id)] == [b"\0" * 10, b"\1" * 10]
    assert store.job_raw(job.id) == b"raw mail"
    assert [r.display_name for r in store.job_recipients(job.id)] == ["Bob", None]
    assert store.list_log()[0].job_id == job.id
    # the claim before the POST: once only
    assert store.claim_job(job.id) and not store.claim_job(job.id)
    assert store.job(job.id).state == "submitting" and store.job(job.id).attempts == 1
    assert store.abandoned_submissions(at_start=False) == []
    assert store.set_job_state(job.id, "submitted", event="submitted", retarus_job_id="FJ1",
                               datacenter="de1")
    assert store.job_by_retarus_id("FJ1").id == job.id
    assert [j.id for j in store.due_submitted(time.time())] == [job.id]
    store.schedule_poll(job.id, time.time() + 60, "PENDING at de1")
    assert store.due_submitted(time.time()) == []
    # a guarded transition from the wrong state changes nothing
    assert not store.set_job_state(job.id, "held", event="held", expect=("queued",))
    results = [{"idx": 0, "status": "OK", "pages": 2}, {"idx": 1, "status": "BUSY"}]
    assert store.finish_job(job.id, "done", event="done", detail="partial",
                            recipients=results, mail=("fax@b", ["a@example.com"], b"report"))
    # a second report (push after poll) changes nothing and mails nothing
    assert not store.finish_job(job.id, "failed", event="failed", detail="again",
                                mail=("fax@b", ["a@example.com"], b"report 2"))
    assert store.job(job.id).state == "done" and store.job(job.id).reported == 1
    assert [r.status for r in store.job_recipients(job.id)] == ["OK", "BUSY"]
    kinds = [e.kind for e in store.job_events(job.id)]
    assert kinds == ["accepted", "submitting", "submitted", "poll", "done", "report-queued"]
    mail = store.claim_mail()
    assert mail is not None and mail.raw == b"report" and mail.recipients == ["a@example.com"]
    store.finish_mail(mail.id, "sent")
    assert store.claim_mail() is None
    assert store.latest_mail("report", job.id).state == "sent"
    assert store.job_events(job.id)[-1].kind == "report-sent"
    assert [j.id for j in store.reports_to_delete()] == [job.id]
    store.mark_reports_deleted([job.id], "deleted")
    assert store.reports_to_delete() == []
    assert store.job_state_counts() == {"done": 1}
    assert store.count_faxes_since("sender", "a@example.com", 0) == 2  # two recipients
    assert [j.id for j in store.list_jobs(state="done", sender="A@example.com")] == [job.id]
    assert store.queues()["jobs"][0] == 0
    assert store.writable() and store.integrity_check() == "ok"


def test_held_release_and_abandoned_at_start(store: Store):
    a, b = new_job(), new_job()
    store.create_jobs([(a, None), (b, None)])
    assert store.set_job_state(a.id, "held", event="held", error="unconfirmed submission")
    assert [j.id for j in store.held_for("unconfirmed submission")] == [a.id]
    assert store.release_job(a.id, detail="by admin", deadline=1.0, valid_until=2.0)
    assert not store.release_job(a.id, detail="again", deadline=1.0, valid_until=2.0)
    assert store.job(a.id).state == "queued" and store.job(a.id).valid_until == 2.0
    assert store.claim_job(b.id)
    assert [j.id for j in store.jobs_in(("submitting",))] == [b.id]


def test_inbound_and_outbox(store: Store):
    files = [("f.pdf", "application/pdf", b"%PDF-1.4 one"), ("g.pdf", "application/pdf", b"")]
    assert store.store_inbound("F1", "demo", {"callingNumber": "+4989"}, files)
    assert not store.store_inbound("F1", "demo", {}, [])  # re-offered: never twice
    assert store.has_inbound("demo", "F1") and not store.has_inbound("other", "F1")
    key = "demo/F1"
    assert [(f.name, f.data) for f in store.inbound_files(key)] == \
        [("f.pdf", b"%PDF-1.4 one"), ("g.pdf", b"")]
    todo = store.inbound_to_deliver()
    assert [(t.id, t.mail_state) for t in todo] == [(key, None)]
    mail_id = store.queue_mail("inbound", key, "fax@b", ["in@example.com"], b"fax mail",
                               inbound_state=(key, "mailing"))
    assert store.inbound_to_deliver() == []  # its mail is queued: nothing to do
    store.mark_acked("demo", ["F1"])
    assert store.inbound(key).acked == 1 and store.inbound(key).state == "mailing"
    mail = store.claim_mail()
    assert mail is not None and mail.id == mail_id and mail.raw == b"fax mail"
    store.finish_mail(mail_id, "queued", error="451 later", next_attempt=time.time() + 60)
    assert store.claim_mail() is None  # not due yet
    assert store.claim_mail(now=time.time() + 120).id == mail_id
    store.finish_mail(mail_id, "sent")
    fax = store.inbound(key)
    assert fax.state == "delivered" and fax.delivered_to == "in@example.com"
    assert [m.id for m in store.list_mail()] == [mail_id] and store.list_mail()[0].raw is None
    assert [f.id for f in store.list_inbound()] == [key]
    assert [f.id for f in store.inbound_in(("delivered",), topic="demo")] == [key]
    store.set_inbound_state(key, "held", error="x")
    assert store.inbound(key).last_error == "x"


def test_smtp_log(store: Store):
    old = store.add_log(SmtpLogRecord(mail_from="x@example.com", ts=100.0,
                                      recipients=[{"address": "4989@fax.local"}]))
    new = store.add_log(SmtpLogRecord(mail_from="y@example.com", ok=True, reply="250 ok"))
    assert [e.id for e in store.list_log()] == [new, old]
    assert [e.id for e in store.list_log(failed=True)] == [old]
    assert [e.id for e in store.list_log(number="4989")] == [old]
    assert [e.id for e in store.list_log(sender="Y@example.com")] == [new]
    assert [e.id for e in store.list_log(since=1000.0)] == [new]
    assert store.log_entry(new).reply == "250 ok"
    assert store.prune_log(1000.0) == 1 and store.log_entry(old) is None


def test_large_values_round_trip(store: Store):
    """A 5 MB document and message go in and come out whole (PostgreSQL: in chunks)."""
    big = bytes(range(256)) * (5 * 4096 + 7)
    job = new_job(n_docs=0, raw=big)
    job.documents = [NewDocument("big.pdf", "application/pdf", big[::-1])]
    store.create_jobs([(job, None)])
    assert store.job_raw(job.id) == big
    assert store.job_documents(job.id)[0].data == big[::-1]
    assert store.integrity_check() == "ok"


def test_database_info(store: Store):
    info = store.database()
    assert info["backend"] in ("sqlite", "postgresql") and info["schema_version"] >= 1
    assert store.lead("housekeeping")


def stored_bytes(store: Store) -> int:
    """How many payload bytes the backend holds (PostgreSQL: its chunk rows; SQLite:
    its blob columns): a deleted payload must really be gone, not only unlinked."""
    if isinstance(store, PostgresStore):
        return int(store.query("SELECT COALESCE(SUM(octet_length(data)), 0) AS n "
                               "FROM chunks")[0]["n"])
    return int(store.db.query(  # type: ignore[attr-defined]
        "SELECT (SELECT COALESCE(SUM(length(raw)), 0) FROM job_messages) + "
        "(SELECT COALESCE(SUM(length(data)), 0) FROM job_documents) + "
        "(SELECT COALESCE(SUM(length(data)), 0) FROM inbound_files) + "
        "(SELECT COALESCE(SUM(length(raw)), 0) FROM mail_out)")[0][0])


def finished_job(store: Store, size: int = 1000, **kw: Any) -> NewJob:
    """A job sent and done, with its report mail sent."""
    job = new_job(n_docs=2, size=size, raw=b"M" * size, **kw)
    store.create_jobs([(job, None)])
    store.set_job_state(job.id, "submitted", event="submitted")
    store.finish_job(job.id, "done", event="done", detail="",
                     mail=("f@b", ["a@example.com"], b"R" * size))
    mail = store.claim_mail()
    assert mail is not None
    store.finish_mail(mail.id, "sent")
    return job


def delivered_fax(store: Store, fax_id: str, size: int = 1000) -> str:
    key = f"demo/{fax_id}"
    store.store_inbound(fax_id, "demo", {}, [("f.pdf", "application/pdf", b"F" * size)])
    mail_id = store.queue_mail("inbound", key, "f@b", ["in@example.com"], b"I" * size,
                               inbound_state=(key, "mailing"))
    claimed = store.claim_mail()
    assert claimed is not None and claimed.id == mail_id
    store.finish_mail(mail_id, "sent")
    return key


def test_deleting_payloads_removes_the_bytes(store: Store):
    job, other = finished_job(store), finished_job(store)
    busy = new_job(size=1000)
    store.create_jobs([(busy, None)])
    key = delivered_fax(store, "F1")
    start = stored_bytes(store)
    # only settled items lose anything
    assert not store.delete_job_payload(busy.id, "x") and not store.delete_job(busy.id)
    assert not store.delete_job_payload("NOPE", "x") and not store.delete_inbound("demo/NO")
    assert stored_bytes(store) == start
    # the payload of a done job: message, two documents, its sent report (4 × 1000)
    assert store.delete_job_payload(job.id, "by test")
    assert stored_bytes(store) == start - 4000
    assert store.job_documents(job.id) == [] and store.job_raw(job.id) is None
    kept = store.job(job.id)
    assert kept is not None and kept.state == "done"
    assert [r.number for r in store.job_recipients(job.id)] == ["+4989123456", "+4930123456"]
    assert store.job_events(job.id)[-1].kind == "payload-deleted"
    assert store.latest_mail("report", job.id).state == "sent"  # the record of it stays
    # the whole job: row, results, timeline, report mail
    assert store.delete_job(other.id)
    assert stored_bytes(store) == start - 8000
    assert store.job(other.id) is None and store.job_events(other.id) == []
    assert store.job_recipients(other.id) == [] and store.latest_mail("report", other.id) is None
    # a received fax: unacknowledged, it is not deleted (it would be fetched again)
    assert not store.delete_inbound(key)
    assert store.delete_inbound_payload(key)
    assert stored_bytes(store) == start - 10000 and store.inbound_files(key) == []
    assert store.inbound(key) is not None
    store.mark_acked("demo", ["F1"])
    assert store.delete_inbound(key) and store.inbound(key) is None
    assert store.latest_mail("inbound", key) is None
    # what is left is the queued job's, whole
    assert stored_bytes(store) == start - 10000 == len(b"raw mail") + 1000
    assert store.job_raw(busy.id) == b"raw mail" and len(store.job_documents(busy.id)) == 1
    assert store.integrity_check() == "ok"


def test_expire_payloads(store: Store):
    old, new = finished_job(store), finished_job(store)
    queued = new_job()
    store.create_jobs([(queued, None)])
    cut = store.job(new.id).created  # old was created before it
    k_old = delivered_fax(store, "OLD")
    k_cut = store.inbound(k_old).created
    delivered_fax(store, "NEW")
    assert store.expire_payloads("outbound", cut) == [old.id]
    assert store.expire_payloads("outbound", cut) == []  # nothing left to expire
    assert store.job_documents(old.id) == [] and len(store.job_documents(new.id)) == 2
    assert store.job_events(old.id)[-1].kind == "payload-expired"
    # a queued job keeps its documents, however old
    assert store.expire_payloads("outbound", time.time() + 60) == [new.id]
    assert len(store.job_documents(queued.id)) == 1
    after = store.inbound("demo/NEW").created
    assert store.expire_payloads("inbound", k_cut + (after - k_cut) / 2) == [k_old]
    assert store.inbound_files(k_old) == [] and len(store.inbound_files("demo/NEW")) == 1
    assert store.integrity_check() == "ok"


def test_paging_newest_first(store: Store):
    jobs = [finished_job(store, size=1, sender=f"s{i % 2}@example.com") for i in range(5)]
    newest = [j.id for j in reversed(jobs)]
    page = store.page_jobs(states=("done",), limit=3)
    assert [j.id for j in page] == newest[:3]
    assert [j.id for j in store.page_jobs(states=("done",), start_key=page[-1].id,
                                          limit=3)] == newest[2:]
    assert [j.id for j in store.page_jobs(states=("done",), senders=("S0@example.com",))] \
        == [j.id for j in reversed(jobs) if j.sender == "s0@example.com"]
    assert store.page_jobs(states=("queued",)) == []
    created = [store.job(j.id).created for j in jobs]
    assert [j.id for j in store.page_jobs(states=("done",), created_from=created[1],
                                          created_to=created[3])] == newest[1:4]
    for i in range(4):
        store.store_inbound(f"P{i}", "demo" if i < 3 else "other", {}, [])
    assert [f.id for f in store.page_inbound(limit=2)] == ["other/P3", "demo/P2"]
    assert [f.id for f in store.page_inbound(topics=("demo",), start_key="demo/P1")] == \
        ["demo/P1", "demo/P0"]
    assert [f.id for f in store.page_inbound(states=("delivered",))] == []
    ids = [store.add_log(SmtpLogRecord(mail_from=f"m{i % 2}@example.com", ts=1000.0 + i))
           for i in range(4)]
    assert [e.id for e in store.page_log(limit=2)] == ids[::-1][:2]
    assert [e.id for e in store.page_log(senders=("M1@example.com",), start_key=ids[2])] == \
        [ids[1]]
    assert [e.id for e in store.page_log(created_from=1001.0, created_to=1002.0)] == \
        [ids[2], ids[1]]


def test_count_faxes_since_per_scope(store: Store):
    a = new_job(auth_user="alice", peer="127.0.0.7", sender="x@example.com")
    b = new_job(auth_user="alice", peer="127.0.0.8", sender="y@example.com",
                report_to="alice@example.com")
    b.recipients = b.recipients[:1]
    store.create_jobs([(a, None), (b, None)])
    assert store.count_faxes_since("user", "alice", 0) == 3  # faxes: recipients, not jobs
    assert store.count_faxes_since("user", "bob", 0) == 0
    assert store.count_faxes_since("sender", "x@example.com", 0) == 2
    assert store.count_faxes_since("client", "127.0.0.8", 0) == 1
    assert store.count_faxes_since("number", "+4989123456", 0) == 2
    assert store.count_faxes_since("number", "+4930123456", 0) == 1
    assert store.count_faxes_since("user", "alice", time.time() + 1) == 0
    row = store.job(b.id)
    assert row.peer == "127.0.0.8" and row.report_to == "alice@example.com"
    assert row.report_address == "alice@example.com"
    assert store.job(a.id).report_address == "x@example.com"
    assert "reports to alice@example.com" in store.job_events(b.id)[0].detail


def test_a_job_can_be_recorded_failed_at_once(store: Store):
    job = new_job(state="failed", last_error="document URL answered 404")
    store.create_jobs([(job, None)])
    row = store.job(job.id)
    assert row.state == "failed" and row.last_error == "document URL answered 404"
    assert [(e.kind, e.detail) for e in store.job_events(job.id)] == \
        [("accepted", store.job_events(job.id)[0].detail),
         ("failed", "document URL answered 404")]
    assert store.next_jobs(5) == []  # never sent
    assert store.delete_job(job.id)  # settled: the API may delete it


def test_resolving_a_held_job_with_its_outcome(store: Store):
    """A job held after its outcome was recorded is closed once, by its outcome, with
    its report (operations.resolve_job: finish_job from held)."""
    job = new_job()
    store.create_jobs([(job, None)])
    store.set_job_state(job.id, "submitted", event="submitted", retarus_job_id="FJR")
    assert store.finish_job(job.id, "held", event="held", detail="report not composable",
                            recipients=[{"idx": 0, "status": "OK"}, {"idx": 1, "status": "OK"}],
                            error="report could not be composed")
    assert [j.id for j in store.held_for("report could not be composed")] == [job.id]
    assert store.reports_to_delete() == []  # held: its report stays at Retarus
    assert store.finish_job(job.id, "done", event="resolved", detail="by admin",
                            mail=("f@b", ["a@example.com"], b"fallback"), expect=("held",))
    assert not store.finish_job(job.id, "done", event="resolved", detail="again",
                                mail=("f@b", ["a@example.com"], b"twice"), expect=("held",))
    assert store.job(job.id).state == "done" and store.job(job.id).reported == 1
    assert [m.ref for m in store.list_mail()] == [job.id]
    assert [j.id for j in store.reports_to_delete()] == [job.id]
    assert [r.status for r in store.job_recipients(job.id)] == ["OK", "OK"]


# ----------------------------------------------------------------- PostgreSQL only
def two_nodes(url: str, lease: float = 1.0) -> tuple[PostgresStore, PostgresStore]:
    return (PostgresStore(url, lease_seconds=lease, node="node-a"),
            PostgresStore(url, lease_seconds=lease, node="node-b"))


def kill(node: PostgresStore) -> None:
    """The node stops renewing its lease and leaves its claims as they are (as SIGKILL
    would); only its connections are closed."""
    node._stop.set()
    node._beat.join()
    node.pool.close()


def wait_until(pred: Any, timeout: float = 20.0) -> Any:
    return waiting.wait_until(pred, timeout, "condition", 0.05)


def test_two_nodes_never_claim_the_same_work(database_url):
    a, b = two_nodes(database_url, lease=30)
    try:
        jobs = [new_job() for _ in range(6)]
        a.create_jobs([(j, None) for j in jobs])
        got_a, got_b = a.next_jobs(3), b.next_jobs(10)
        assert len(got_a) == 3 and len(got_b) == 3
        assert not {j.id for j in got_a} & {j.id for j in got_b}
        assert a.next_jobs(10) == [j for j in a.next_jobs(10)]  # its own, offered again
        # the POST claim: whoever comes second gets nothing
        assert a.claim_job(got_a[0].id) and not b.claim_job(got_a[0].id)
        # a mail and a received fax go to one node
        a.queue_mail("report", None, "f@b", ["x@y"], b"m")
        assert a.claim_mail() is not None and b.claim_mail() is None
        a.store_inbound("F1", "demo", {}, [])
        assert len(b.inbound_to_deliver()) == 1 and a.inbound_to_deliver() == []
        assert a.lead("topic:demo") and not b.lead("topic:demo") and a.lead("topic:demo")
        # a job that is due for its report poll is polled by one node
        a.set_job_state(got_a[0].id, "submitted", event="submitted", retarus_job_id="FJ")
        assert len(b.due_submitted(time.time())) == 1 and a.due_submitted(time.time()) == []
    finally:
        a.close()
        b.close()


def test_a_dead_nodes_claims_and_leads_pass_on(database_url):
    a, b = two_nodes(database_url, lease=1.0)
    try:
        sending, queued = new_job(), new_job()
        a.create_jobs([(sending, None), (queued, None)])
        assert len(a.next_jobs(5)) == 2 and a.claim_job(sending.id)
        a.queue_mail("report", None, "f@b", ["x@y"], b"m")
        assert a.claim_mail() is not None and a.lead("confirm")
        assert b.next_jobs(5) == [] and b.claim_mail() is None and not b.lead("confirm")
        assert b.abandoned_submissions(at_start=True) == []  # a lives: not abandoned
        kill(a)
        # once a's lease ran out, its work is b's: the queued job to send, the mail to
        # send, the lead; the job a was submitting goes to the confirmation pass
        wait_until(lambda: b.lead("confirm"))
        assert [j.id for j in b.next_jobs(5)] == [queued.id]
        assert b.claim_mail() is not None
        assert [j.id for j in b.abandoned_submissions(at_start=False)] == [sending.id]
    finally:
        b.close()


def test_racing_final_reports_are_applied_once(database_url):
    """A status push on one node and a poll on another finish the same job at the
    same moment: one of them records it and queues the report mail."""
    a, b = two_nodes(database_url, lease=30)
    try:
        for _ in range(10):
            job = new_job()
            a.create_jobs([(job, None)])
            a.set_job_state(job.id, "submitted", event="submitted")
            go, wins = threading.Barrier(2), []

            def finish(node: PostgresStore, job_id: str = job.id,
                       go: threading.Barrier = go, wins: list[str] = wins) -> None:
                go.wait()
                if node.finish_job(job_id, "done", event="done", detail="",
                                   mail=("f@b", ["a@example.com"], b"report")):
                    wins.append(node.me)
            threads = [threading.Thread(target=finish, args=(n,)) for n in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(wins) == 1
            assert len([m for m in a.list_mail() if m.ref == job.id]) == 1
    finally:
        a.close()
        b.close()


def test_two_nodes_starting_at_once_migrate_once(database_url):
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []
    go = threading.Barrier(4)

    def start() -> None:
        go.wait()
        try:
            stores.append(PostgresStore(database_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        assert {s.database()["schema_version"] for s in stores} == {PG_SCHEMA_VERSION}
        assert stores[0].query("SELECT COUNT(*) AS n FROM schema_version")[0]["n"] == 1
    finally:
        for s in stores:
            s.close()


def test_unreachable_database_is_a_store_error(tmp_path):
    from tests.pgserver import free_port
    with pytest.raises(StoreError, match="cannot open store") as err:
        open_store(tmp_path, 1000, f"postgresql://nobody:secret@127.0.0.1:{free_port()}/x")
    assert "secret" not in str(err.value)  # the password is never shown


def test_check_reports_the_database(database_url, monkeypatch):
    from tests.conftest import run_faxbridge
    # an empty database: reachable, no schema yet, and check leaves it so
    fresh = run_faxbridge("check", "--database-url", database_url)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert f"reachable, schema version 0 (this faxbridge uses {PG_SCHEMA_VERSION}; `serve` " \
        "creates or migrates it at start), 0 node(s) alive" in fresh.stdout
    open_store(Path(), database_url=database_url).close()  # as a bridge at its start
    ok = run_faxbridge("check", "--database-url", database_url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"reachable, schema version {PG_SCHEMA_VERSION}, 0 node(s) alive" in ok.stdout
    assert "PostgreSQL at 127.0.0.1:" in ok.stdout  # the summary, without a password
    from tests.pgserver import free_port
    bad = run_faxbridge("check", "--database-url",
                        f"postgresql://fb:pw-secret@127.0.0.1:{free_port()}/none")
    assert bad.returncode == 1
    assert "storage.database_url: cannot open store postgresql://fb:***@" in bad.stdout
    assert "pw-secret" not in bad.stdout + bad.stderr
    monkeypatch.setenv("FAXBRIDGE_DATABASE_URL", "mysql://x@127.0.0.1/db")
    wrong = run_faxbridge("check")
    assert wrong.returncode == 1
    assert "FAXBRIDGE_DATABASE_URL: Value error, expected a postgresql://" in wrong.stdout
