"""The submission worker against simulator faults, and kill -9 while mail streams in."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import subprocess
import sys
import time
from email.message import EmailMessage

import httpx

from faxbridge.outbound.submit import NOT_FOUND, UNCONFIRMED
from faxbridge.store import Store
from tests.conftest import (
    ALL_SENDERS_TOML,
    Proc,
    retarus_toml,
    serve_args,
    sim_jobs,
    start_simulator,
    wait_for,
)
from tests.smtp_client import send, streaming


def mail(n: int = 0) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "alice@example.com", "+4989123456@fax.local", f"m{n}"
    m.set_content(f"mail number {n}")
    return m


async def fault(url: str, **body) -> None:
    async with httpx.AsyncClient() as c:
        assert (await c.post(f"{url}/_sim/faults", json=body)).status_code == 200


async def state_of(bridge, job_id: str, states: tuple[str, ...]):
    return await wait_for(lambda: (j := bridge.store.job(job_id)) and j.state in states and j,
                          timeout=20)


async def test_transient_errors_are_retried(make_bridge):
    bridge = await make_bridge()
    # every send URL fails twice with 520 UNKNOWN_ERROR (not failed over: may be accepted)
    await fault(bridge.sim_url, endpoint="send", count=2, status=520)
    t = await send(bridge.smtp_address, mail())
    job = await state_of(bridge, t.job_id, ("submitted",))
    events = [e.kind for e in bridge.store.job_events(t.job_id)]
    assert events.count("deferred") == 2 and job.attempts == 3
    assert len(await sim_jobs(bridge.sim_url)) == 1


async def test_retry_after_is_honoured(make_bridge):
    """A 503 with Retry-After (RFC 9110 §10.2.3) defers the job at least that long,
    although the back-off of a first retry alone would be a few seconds at most."""
    bridge = await make_bridge()
    await fault(bridge.sim_url, endpoint="send", count=100, status=503, retry_after=120)
    before = time.time()
    t = await send(bridge.smtp_address, mail())
    job = await state_of(bridge, t.job_id, ("deferred",))
    assert job.next_attempt - before >= 120
    assert "next try in 120s" in bridge.store.job_events(t.job_id)[-1].detail
    assert await sim_jobs(bridge.sim_url) == []


async def test_permanent_error_fails_at_once_with_reason(make_bridge):
    bridge = await make_bridge()
    await fault(bridge.sim_url, endpoint="send", count=1, status=409)
    t = await send(bridge.smtp_address, mail())
    job = await state_of(bridge, t.job_id, ("failed",))
    assert "HTTP 409" in job.last_error and job.attempts == 1
    assert await sim_jobs(bridge.sim_url) == []


async def test_deadline_turns_transient_into_failed(make_bridge):
    bridge = await make_bridge(fax={"submit_deadline_seconds": 1})
    await fault(bridge.sim_url, endpoint="send", count=100, status=503)
    t = await send(bridge.smtp_address, mail())
    job = await state_of(bridge, t.job_id, ("failed",))
    assert any("before the deadline" in (e.detail or "")
               for e in bridge.store.job_events(t.job_id))
    assert "503" in job.last_error


async def test_job_whose_validity_ended_while_waiting_is_not_sent(make_bridge):
    """Retarus would refuse a job past its jobValid.end, and nothing would follow it:
    the bridge fails it as not sent, with the reason, instead of sending it."""
    bridge = await make_bridge(fax={"job_valid_seconds": 1})
    # the HA URL and both data centers answer 503: deferred (≥2 s), past the validity
    await fault(bridge.sim_url, endpoint="send", count=3, status=503)
    t = await send(bridge.smtp_address, mail())
    await state_of(bridge, t.job_id, ("failed",))
    assert any("validity ended before it could be sent" in (e.detail or "")
               for e in bridge.store.job_events(t.job_id))
    assert await sim_jobs(bridge.sim_url) == []


async def test_no_answer_after_sending_is_not_resent_but_confirmed(make_bridge):
    """The POST goes out, the answer comes after our timeout (Retarus did take the
    job): the bridge must not send the fax again; it finds it by customerDefinedId."""
    bridge = await make_bridge(retarus={"timeout": 1.0},
                               fax={"report_poll_min_seconds": 0.2,
                                    "report_poll_max_seconds": 0.5})
    await fault(bridge.sim_url, endpoint="send", count=1, delay=2.0)
    t = await send(bridge.smtp_address, mail())
    held = await state_of(bridge, t.job_id, ("held",))
    assert held.last_error == "unconfirmed submission"
    job = await state_of(bridge, t.job_id, ("submitted", "done"))
    # once submitted (the only way on from held), nothing sends it again
    received = [j for j in await sim_jobs(bridge.sim_url)
                if j["request"]["reference"]["customerDefinedId"] == t.job_id]
    assert len(received) == 1, "the fax was sent twice"
    assert job.retarus_job_id == received[0]["jobId"]
    kinds = [e.kind for e in bridge.store.job_events(t.job_id)]
    assert kinds.index("unconfirmed") < kinds.index("confirmed")
    assert "deferred" not in kinds


async def test_wrong_retarus_password_defers_not_fails(make_bridge, monkeypatch):
    monkeypatch.setenv("FB_TEST_PW", "wrong")
    bridge = await make_bridge(retarus={"password": {"env": "FB_TEST_PW"}})
    # the embedded simulator takes the configured password; break it after start
    bridge.sim_state.password = "rotated"
    t = await send(bridge.smtp_address, mail())
    job = await state_of(bridge, t.job_id, ("deferred",))
    assert "401" in job.last_error and job.next_attempt > time.time() + 30


def received_by_simulator(jobs: list[dict]) -> list[str]:
    """The bridge job id of every job the simulator took (customerDefinedId)."""
    return [j["request"]["reference"]["customerDefinedId"] for j in jobs]


async def test_confirmation_keeps_looking_while_idle_and_through_errors(make_bridge):
    """A POST whose answer never came, for a job Retarus is still working on: no
    report is listed for it for a while, and listing fails a few times. The pass
    keeps looking (with nothing else for the submitter to do) and confirms it
    once Retarus lists it, without sending it again."""
    bridge = await make_bridge(retarus={"timeout": 1.0},
                               simulator={"complete_after": 3.0},
                               fax={"report_poll_min_seconds": 0.2,
                                    "report_poll_max_seconds": 0.5})
    await fault(bridge.sim_url, endpoint="send", count=1, delay=2.0)
    await fault(bridge.sim_url, endpoint="list", count=4, status=503)
    t = await send(bridge.smtp_address, mail())
    held = await state_of(bridge, t.job_id, ("held",))
    assert held.last_error == UNCONFIRMED
    job = await wait_for(lambda: (j := bridge.store.job(t.job_id))
                         and j.state in ("submitted", "done") and j, timeout=30)
    [at_sim] = await sim_jobs(bridge.sim_url)
    assert received_by_simulator([at_sim]) == [t.job_id]
    assert job.retarus_job_id == at_sim["jobId"]
    events = {e.kind: e for e in bridge.store.job_events(t.job_id)}
    # found only once Retarus had finished it (in progress = not listed), so the
    # pass was still running seconds after the job became unconfirmed...
    assert events["confirmed"].ts >= at_sim["received"] + 3.0 - 0.1
    async with httpx.AsyncClient() as c:
        calls = (await c.get(f"{bridge.sim_url}/_sim/calls")).json()
    lists = [c for c in calls if c["endpoint"] == "list"]
    # ...and past the four 503s: later passes asked again (two data centers each)
    assert len(lists) >= 4 + 2 * 2, len(lists)
    assert "deferred" not in events and "not-found" not in events


async def test_unconfirmed_job_never_at_retarus_is_held_safe_to_release_after_validity(
        make_bridge, monkeypatch):
    """The POST got no answer and Retarus never took the job. While it may still
    show up, the admin API refuses to release it (that could send the fax twice);
    once its validity has ended without Retarus listing it, the job says so and a
    release sends it, once, with a fresh validity."""
    monkeypatch.setenv("FB_ADMIN", "tok")
    bridge = await make_bridge(retarus={"timeout": 1.0}, http={"admin_token": {"env": "FB_ADMIN"}},
                               fax={"report_poll_min_seconds": 0.2,
                                    "report_poll_max_seconds": 0.5, "job_valid_seconds": 5})
    # the answer is late (the client gives up: unconfirmed) and a 503: not taken
    await fault(bridge.sim_url, endpoint="send", count=1, delay=2.0, status=503)
    t = await send(bridge.smtp_address, mail())
    first = await state_of(bridge, t.job_id, ("held",))
    base, auth = bridge.http_server.url, {"Authorization": "Bearer tok"}
    async with httpx.AsyncClient() as c:
        view = (await c.get(f"{base}/admin/jobs/{t.job_id}", headers=auth)).json()
        assert view["last_error"] == UNCONFIRMED and view["confirmation"]["looking"] is True
        r = await c.post(f"{base}/admin/jobs/{t.job_id}/release", headers=auth)
        assert r.status_code == 409 and "twice" in r.json()["error"], r.text
        assert bridge.store.job(t.job_id).state == "held"

        job = await wait_for(lambda: (j := bridge.store.job(t.job_id))
                             and j.last_error == NOT_FOUND and j, timeout=20)
        assert job.state == "held"
        [gave_up] = [e for e in bridge.store.job_events(t.job_id) if e.kind == "not-found"]
        assert gave_up.ts >= first.valid_until
        assert "never taken" in gave_up.detail and "release" in gave_up.detail
        view = (await c.get(f"{base}/admin/jobs/{t.job_id}", headers=auth)).json()
        assert view["confirmation"]["looking"] is False
        assert await sim_jobs(bridge.sim_url) == []

        r = await c.post(f"{base}/admin/jobs/{t.job_id}/release", headers=auth)
        assert r.status_code == 200, r.text
    job = await wait_for(lambda: (j := bridge.store.job(t.job_id))
                         and j.state in ("submitted", "done") and j, timeout=20)
    assert job.valid_until > first.valid_until
    [at_sim] = await sim_jobs(bridge.sim_url)
    assert received_by_simulator([at_sim]) == [t.job_id]
    # Retarus is told when the job's validity ends: the ground for "never taken"
    assert at_sim["request"]["meta"]["jobValid"]["end"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.valid_until))
    kinds = [e.kind for e in bridge.store.job_events(t.job_id)]
    assert kinds.index("unconfirmed") < kinds.index("not-found") < kinds.index("released") \
        < kinds.index("submitted")


async def test_cli_refuses_to_release_a_job_still_looked_for_unless_forced(
        make_bridge, tmp_path):
    bridge = await make_bridge(retarus={"timeout": 1.0},
                               fax={"report_poll_min_seconds": 0.2,
                                    "report_poll_max_seconds": 0.5})
    await fault(bridge.sim_url, endpoint="send", count=1, delay=2.0, status=503)
    t = await send(bridge.smtp_address, mail())
    await state_of(bridge, t.job_id, ("held",))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "faxbridge", "jobs", *args,
                               "--data-dir", str(tmp_path / "data")],
                              capture_output=True, text=True, timeout=60)

    shown = await asyncio.to_thread(cli, "show", t.job_id)
    assert "at Retarus: may be at Retarus already" in shown.stdout, shown.stdout
    refused = await asyncio.to_thread(cli, "release", t.job_id)
    assert refused.returncode == 1 and "send the fax twice" in refused.stdout, refused
    assert bridge.store.job(t.job_id).state == "held"
    forced = await asyncio.to_thread(cli, "release", t.job_id, "--force")
    assert forced.returncode == 0, forced
    await state_of(bridge, t.job_id, ("submitted", "done"))
    assert received_by_simulator(await sim_jobs(bridge.sim_url)) == [t.job_id]
    [released] = [e for e in bridge.store.job_events(t.job_id) if e.kind == "released"]
    assert "forced" in released.detail


async def test_kill9_while_streaming_every_250_is_submitted_exactly_once(tmp_path, procs):
    sim = await asyncio.to_thread(start_simulator, procs, tmp_path, "--complete-after", "0")
    cfg = tmp_path / "bridge.toml"
    # a quick confirmation pass, so the wait below is short
    cfg.write_text(retarus_toml(sim) + f"""
[storage]
data_dir = "{tmp_path / 'data'}"

[fax]
report_poll_min_seconds = 0.3
report_poll_max_seconds = 1.0
""" + ALL_SENDERS_TOML)
    accepted: list[str] = []
    counter = itertools.count(1)
    for round_ in range(3):
        bridge = Proc(serve_args(cfg), tmp_path)
        procs.append(bridge)
        smtp = (await bridge.listening()).smtp
        with streaming(smtp, counter, accepted):
            # kill it in full flow: after some more 250s (more at each round)
            goal = len(accepted) + 5 + 5 * round_
            await wait_for(lambda g=goal: len(accepted) >= g, timeout=60)
            await asyncio.to_thread(bridge.kill9)
    assert len(accepted) > 10, "the stream delivered too little to test anything"
    # Every process that could have sent a fax is dead: what the simulator has of
    # them now is all it will ever have of them.
    procs.append(last := Proc(serve_args(cfg), tmp_path))
    await last.listening()
    store = Store(tmp_path / "data" / "faxbridge.sqlite3")
    try:
        snapshot: dict[str, list] = {}

        async def settled() -> bool:
            """Nothing left to submit, and no job held as unconfirmed that the
            simulator has: those the confirmation pass must find and promote. A held
            job the simulator never took may stay held (until its validity ends)."""
            rows = {r["id"]: r for r in store.db.query("SELECT * FROM jobs")}
            if any(r["state"] not in ("submitted", "held", "done", "failed")
                   for r in rows.values()):
                return False
            received = received_by_simulator(await sim_jobs(sim))
            stuck = [i for i, r in rows.items() if r["state"] == "held" and i in received]
            snapshot.update(rows=[rows], received=[received], stuck=stuck)
            return not stuck
        try:
            await wait_for(settled, timeout=60, interval=0.2)
        except AssertionError:
            raise AssertionError("held although the simulator has it (the confirmation "
                                 f"pass did not find them): {snapshot.get('stuck')}") from None
        assert store.integrity_check() == "ok"
        [rows], [received] = snapshot["rows"], snapshot["received"]
        assert len(received) == len(set(received)), "a fax was sent twice"
        held = []
        for job_id in accepted:
            row = rows.get(job_id)
            assert row is not None, f"250 for {job_id} but no job"
            if row["state"] == "held":
                # killed before its POST reached Retarus: never sent, and held for the
                # admin (still looked for) rather than guessed
                assert job_id not in received and row["last_error"] == UNCONFIRMED, \
                    (job_id, row["last_error"])
                held.append(job_id)
            else:
                assert received.count(job_id) == 1, (job_id, row["state"])
        # at most the claims in flight at each of the 3 kills
        assert len(held) <= 3 * 8, f"more held jobs than claims in flight: {held}"
    finally:
        store.close()


async def test_request_is_built_from_the_stored_job(make_bridge):
    """The Fax4A request is built at submission from the job's stored facts: the sender
    rule's options (as resolved when the mail was accepted), header and recipients."""
    bridge = await make_bridge(fax={"resolution": "LOW"}, senders=[{
        "name": "office", "match": ["net:127.0.0.0/8"], "billing_code": "cost-7",
        "options": {"express": True, "blacklist": False, "csid": "ACME FAX",
                    "paper_format": "LETTER"}}])
    t = await send(bridge.smtp_address, mail(3))
    assert t.data[0] == 250
    job = await wait_for(lambda: _sim_job(bridge, t.job_id))
    req = job["request"]
    assert req["reference"] == {"customerDefinedId": t.job_id, "billingCode": "cost-7"}
    assert req["transportOptions"] == {"isExpress": True, "isBlacklistEnabled": False,
                                       "csid": "ACME FAX"}
    assert req["renderingOptions"] == {"paperFormat": "LETTER", "resolution": "LOW",
                                       "header": "m3"}
    assert [r["number"] for r in req["recipients"]] == ["+4989123456"]
    # the meta the bridge adds passed the simulator's validation (the job is there)
    assert req["meta"]["customerReference"] == t.job_id and req["meta"]["jobValid"]["end"]
    stored = json.loads(bridge.store.job(t.job_id).options_json)
    assert stored["billing_code"] == "cost-7" and stored["resolution"] == "LOW"


async def _sim_job(bridge, job_id: str):
    for j in await sim_jobs(bridge.sim_url):
        if (j["request"].get("reference") or {}).get("customerDefinedId") == job_id:
            return j
    return None


async def test_job_queued_by_an_earlier_version_is_sent_with_its_stored_request(make_bridge,
                                                                              tmp_path):
    """A job an earlier version queued with its request stored as JSON (schema 3) is sent
    after the upgrade with everything that request held."""
    import sqlite3

    from faxbridge.store.db import MIGRATIONS, _statements
    data = tmp_path / "data"
    data.mkdir()
    old = sqlite3.connect(data / "faxbridge.sqlite3", isolation_level=None)
    for script in MIGRATIONS[:3]:
        for stmt in _statements(script):
            old.execute(stmt)
    old.execute("PRAGMA user_version=3")
    now = time.time()
    request = {  # as the earlier version's request_skeleton wrote it
        "reference": {"customerDefinedId": "J1", "billingCode": "cost-42"},
        "recipients": [{"number": "+4989123456",
                        "properties": [{"key": "ToName", "value": "Jane Roe"}]}],
        "transportOptions": {"isExpress": True, "isBlacklistEnabled": False, "csid": "ACME"},
        "renderingOptions": {"paperFormat": "LETTER", "resolution": "LOW",
                             "header": "Old header", "coverpageTemplate": "cover.ftl"}}
    old.execute("INSERT INTO jobs (id,state,created,updated,sender,rule,header,request_json,"
                "deadline,valid_until) VALUES ('J1','queued',?,?,'alice@example.com','office',"
                "'Old header',?,?,?)", (now, now, json.dumps(request), now + 3600, now + 86400))
    old.execute("INSERT INTO job_recipients (job_id,idx,number,address,display_name) "
                "VALUES ('J1',0,'+4989123456','+4989123456@fax.local','Jane Roe')")
    old.execute("INSERT INTO job_documents (job_id,idx,name,content_type,charset,data) "
                "VALUES ('J1',0,'mail-body.txt','text/plain','UTF-8',?)", (b"hello",))
    old.execute("INSERT INTO job_messages (job_id,raw) VALUES ('J1',?)", (b"From: a\r\n",))
    old.close()
    bridge = await make_bridge()  # on tmp_path / "data": the old store
    job = await wait_for(lambda: _sim_job(bridge, "J1"))
    sent = job["request"]
    for key in ("reference", "recipients", "transportOptions", "renderingOptions"):
        assert sent[key] == request[key], key
    assert "request_json" not in dataclasses.asdict(bridge.store.job("J1"))
