"""The reliability suite's cross-cutting cases: kill -9 at random moments while mail
streams in *and* faxes arrive; a data center down; a relay that is slow or defers.

Single-fault cases live next to the code they exercise (test_submit, test_inbound,
test_reports, test_bad_input); these combine them the way production does.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from email.message import EmailMessage

import httpx

from faxbridge.store import Store
from tests.conftest import (
    ALL_SENDERS_TOML,
    Proc,
    demo_topic_toml,
    retarus_toml,
    serve_args,
    sim_jobs,
    start_simulator,
    wait_for,
)
from tests.relay import Relay
from tests.smtp_client import astreaming, send
from tests.test_inbound import fax_ids, inbox, inject, sim_post

FAST = {"report_poll_min_seconds": 0.1, "report_poll_max_seconds": 0.3}
MAIL_FAST = {"retry_min_seconds": 0.2, "retry_max_seconds": 0.5}


async def test_kill9_at_random_moments_with_mail_and_faxes_in_flight(tmp_path, procs,
                                                                    monkeypatch):
    """Mail streams in on three connections while faxes arrive on a topic; the bridge is
    killed at a random moment, restarted, killed again … Afterwards every 250 is one job
    sent at most once, every fax is mailed exactly once, every finished job has exactly
    one report, and SQLite's integrity check passes."""
    seed = int(os.environ.get("FB_CRASH_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    why = f"(reproduce with FB_CRASH_SEED={seed})"
    url = start_simulator(procs, tmp_path, "--complete-after", "0.2")
    await sim_post(url, "config", {"lock_seconds": 1})
    data = tmp_path / "data"
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(retarus_toml(url) + f"""
[fax]
report_poll_min_seconds = 0.1
report_poll_max_seconds = 0.3
[storage]
data_dir = "{data}"
""" + ALL_SENDERS_TOML + demo_topic_toml(url, 0.1))
    args = serve_args(cfg)  # port 0: each life reports the ports it got
    monkeypatch.setenv("FB_PULL_PW", "simulator")  # inherited by the bridges
    accepted: list[str] = []
    injected: list[str] = []
    counter = itertools.count(1)
    kills, connections = 4, 3
    for _ in range(kills):
        bridge = Proc(args, tmp_path)
        procs.append(bridge)
        smtp = (await bridge.listening()).smtp
        async with astreaming(smtp, counter, accepted, connections):
            # a life ends after a random amount of traffic rather than time, so a loaded
            # machine does the same work: a fax arrives for every mail accepted, and the
            # kill comes as the last of them is answered (the others are mid-transaction)
            goal = len(accepted) + rnd.randint(1, 25)
            while len(accepted) < goal:
                injected.append(await inject(url))
                seen = len(accepted)
                await wait_for(lambda seen=seen: len(accepted) > seen, timeout=60)
            await asyncio.to_thread(bridge.kill9)

    final = Proc(args, tmp_path)
    procs.append(final)
    await final.listening()
    store = Store(data / "faxbridge.sqlite3")
    try:
        async def all_acked() -> bool:
            async with httpx.AsyncClient() as c:
                return all(f["acked"] for f in (await c.get(f"{url}/_sim/inbound")).json())
        await wait_for(all_acked, timeout=60)

        async def settled() -> bool:
            """Nothing more can be sent or mailed: every job is final or held (a report
            is queued in the transaction that finishes its job), no held job is one the
            simulator has (those the confirmation pass must find and promote), every
            fax is delivered (and acked above, so never offered again), no mail waits."""
            rows = store.db.query("SELECT id, state FROM jobs")
            faxes = store.db.query("SELECT state FROM inbound")
            mails = store.db.query("SELECT state FROM mail_out")
            if not (all(r["state"] in ("held", "done", "failed") for r in rows)
                    and all(f["state"] == "delivered" for f in faxes)
                    and all(m["state"] != "queued" for m in mails)):
                return False
            at_sim = {j["request"]["reference"]["customerDefinedId"] for j in await sim_jobs(url)}
            return not any(r["state"] == "held" and r["id"] in at_sim for r in rows)
        await wait_for(settled, timeout=60)
        assert store.integrity_check() == "ok"

        # outbound: each 250 is a job, sent to Retarus at most once
        received = [j["request"]["reference"]["customerDefinedId"] for j in await sim_jobs(url)]
        assert len(received) == len(set(received)), f"a fax was sent twice {why}"
        # besides the 250s, only mails whose 250 the kill cut off (at most one per
        # connection and kill) may have become jobs
        jobs = {r["id"] for r in store.db.query("SELECT id FROM jobs")}
        assert set(accepted) <= jobs, f"250 without a job {why}"
        assert len(jobs) - len(accepted) <= kills * connections, why
        for job_id in accepted:
            row = store.job(job_id)
            if row.state == "held":  # killed between claim and POST: held, never guessed
                assert job_id not in received and row.last_error == \
                    "unconfirmed submission", why
            else:
                assert received.count(job_id) == 1, (job_id, row["state"], why)

        # reports: each finished job reported exactly once
        finished = {r["id"] for r in store.db.query(
            "SELECT id FROM jobs WHERE state IN ('done', 'failed')")}
        threads_of = [m["In-Reply-To"] for m in inbox(data, "alice@example.com")]
        assert len(threads_of) == len(set(threads_of)), f"a report was mailed twice {why}"
        assert len(threads_of) == len(finished), why

        # inbound: each received fax mailed exactly once
        assert sorted(fax_ids(inbox(data, "in@example.com"))) == sorted(injected), why
    finally:
        store.close()


async def test_one_data_center_down_jobs_go_through_the_other(make_bridge):
    """de1 answers 503 to everything (its load balancer is up, the back end is not);
    the HA URL routes around it (docs/retarus-wire.md §1.3). Tracking must find the reports on de2,
    and the admin sees the de1 errors only as detail, never as a failed job."""
    bridge = await make_bridge(fax=FAST)
    async with httpx.AsyncClient() as c:
        await c.post(f"{bridge.sim_url}/_sim/config", json={"ha_route": {"ha-de": "de2"}})
        await c.post(f"{bridge.sim_url}/_sim/faults",
                     json={"dc": "de1", "endpoint": "any", "status": 503, "count": 10_000})
        # no status pushes from de2: on a loaded machine a push could finish a job before
        # its first poll, and this test is about tracking by polling
        await c.post(f"{bridge.sim_url}/_sim/faults",
                     json={"dc": "de2", "endpoint": "push", "drop": True, "count": 10_000})
    ids = [(await send(bridge.smtp_address, _fax(n))).job_id for n in range(3)]
    for job_id in ids:
        await wait_for(lambda j=job_id: bridge.store.job(j).state == "done")
    for job_id in ids:
        # finished by a poll that found the report on de2 (on a slow machine the first
        # poll may already find it final: then there is no PENDING poll event)
        done = [e.detail for e in bridge.store.job_events(job_id) if e.kind == "done"]
        assert len(done) == 1 and "(poll)" in done[0], done
        assert "/de2/" in bridge.store.job(job_id).datacenter
        polls = [e.detail for e in bridge.store.job_events(job_id) if e.kind == "poll"]
        assert all("/de2/" in d for d in polls), polls
    # the final reports are deleted at de2 although de1 fails every call
    await wait_for(lambda: all(bridge.store.job(j).report_deleted for j in ids))
    assert not bridge.sim_state.reports["de2"]
    async with httpx.AsyncClient() as c:
        calls = (await c.get(f"{bridge.sim_url}/_sim/calls")).json()
    assert any(call["dc"] == "de1" for call in calls), "de1 was never tried"


async def test_data_center_down_after_submission_keeps_the_job_visible(make_bridge):
    """The job sits on de1 and de1 goes away (no answers, no pushes): the job stays
    'submitted' with the poll error for the admin, and is finished once de1 is back."""
    bridge = await make_bridge(fax=FAST)
    async with httpx.AsyncClient() as c:
        await c.post(f"{bridge.sim_url}/_sim/config", json={"ha_route": {"ha-de": "de1"}})
        await c.post(f"{bridge.sim_url}/_sim/faults",
                     json={"dc": "de1", "endpoint": "any", "drop": True, "count": 10_000})
    t = await send(bridge.smtp_address, _fax(0))
    job = await wait_for(lambda: (j := bridge.store.job(t.job_id)).state == "submitted"
                         and j.last_error and "report poll failed" in j.last_error
                         and j)
    assert job.state == "submitted"

    def failed_polls() -> int:
        return sum("report poll failed" in e.detail for e in bridge.store.job_events(t.job_id)
                   if e.kind == "poll")
    # three polls have failed (not one lucky moment): the job is still waiting
    await wait_for(lambda: failed_polls() >= 3)
    assert bridge.store.job(t.job_id).state == "submitted"
    async with httpx.AsyncClient() as c:
        await c.post(f"{bridge.sim_url}/_sim/faults", json={"clear": True})
    await wait_for(lambda: bridge.store.job(t.job_id).state == "done")


def _fax(n: int) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "alice@example.com", "+4989123456@fax.local", f"f{n}"
    m["Message-ID"] = f"<rel-{n}@example.com>"
    m.set_content("Please pay.")
    return m


async def _relay_bridge(make_bridge, relay: Relay, **relay_cfg):
    return await make_bridge(fax=FAST, mail={
        "transport": "smtp", **MAIL_FAST,
        "relay": {"host": "127.0.0.1", "port": relay.port, "tls": "none", **relay_cfg}})


async def test_relay_4xx_is_retried_and_delivered_once(make_bridge):
    relay = await Relay().start()
    relay.defer_data = 2
    try:
        bridge = await _relay_bridge(make_bridge, relay)
        await send(bridge.smtp_address, _fax(1))
        # 'sent' is recorded after the relay's 250 and is final: nothing is sent again
        row = await wait_for(lambda: (m := bridge.store.list_mail()) and
                             m[0].state == "sent" and m[0])
        assert len(relay.messages) == 1
        assert relay.data_replies == [relay.data_reply_4xx] * 2 + ["250"]
        assert row.attempts == 3
    finally:
        await relay.stop()


async def test_slow_relay_times_out_is_retried_and_delivered_once(make_bridge):
    """A relay that stalls longer than mail.relay.timeout before answering RCPT: the
    attempt is abandoned before DATA (nothing can have been accepted), recorded, and
    retried; once the relay is quick again the report goes out once."""
    relay = await Relay().start()
    relay.rcpt_go.clear()  # RCPT is not answered until the test says so
    try:
        bridge = await _relay_bridge(make_bridge, relay, timeout=2.0)
        await send(bridge.smtp_address, _fax(2))
        await wait_for(lambda: relay.rcpt_stalls >= 1)
        row = await wait_for(lambda: (m := bridge.store.list_mail()) and m[0].attempts >= 1
                             and m[0].last_error and m[0])
        assert row.state == "queued" and "unreachable" in row.last_error
        assert relay.messages == []
        relay.rcpt_go.set()
        # 'sent' is recorded after the relay's 250 and is final: nothing is sent again
        await wait_for(lambda: bridge.store.list_mail()[0].state == "sent")
        assert len(relay.messages) == 1
    finally:
        await relay.stop()


async def test_relay_5xx_at_data_fails_visibly_without_retry(make_bridge):
    relay = await Relay().start()
    relay.defer_data = 1_000
    relay.data_reply_4xx = "554 5.6.0 message content rejected"
    try:
        bridge = await _relay_bridge(make_bridge, relay)
        t = await send(bridge.smtp_address, _fax(3))
        row = await wait_for(lambda: (m := bridge.store.list_mail()) and
                             m[0].state == "failed" and m[0])
        assert "554" in row.last_error and row.attempts == 1
        # the job's event follows the mail's state in its own transaction
        await wait_for(lambda: "report-failed" in [e.kind for e in
                                                   bridge.store.job_events(t.job_id)])
        # a second report fails the same way: the mail worker has gone round again
        # since the first failed, and did not try the first one again
        t2 = await send(bridge.smtp_address, _fax(4))
        await wait_for(lambda: len(m := bridge.store.list_mail()) == 2 and
                       m[0].state == "failed")
        assert [(m.state, m.attempts) for m in bridge.store.list_mail()] == [
            ("failed", 1), ("failed", 1)]
        assert relay.data_replies == ["554 5.6.0 message content rejected"] * 2, t2
    finally:
        await relay.stop()
