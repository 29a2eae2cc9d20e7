"""The status push, hardened: its own listener apart from /admin and /metrics, failed
authentication logged with the peer, a final push confirmed against the report at
Retarus (whose statuses win) before that report is deleted there, and the
simulator's control API never showing the push credentials."""

from __future__ import annotations

import logging

import httpx

from tests.conftest import sim_jobs, wait_for
from tests.smtp_client import send
from tests.test_push import NO_POLL, _waiting, complete_at_retarus, post, report_for
from tests.test_reports import fax_mail, maildir, one_report, outcome


async def test_push_on_its_own_listener(make_bridge):
    bridge = await make_bridge(fax=NO_POLL, retarus={"push_listen": "127.0.0.1:0"})
    push_url = bridge.push_server.url
    assert push_url != bridge.http_server.url
    t = await send(bridge.smtp_address, fax_mail())
    await one_report(bridge)  # only the push can have finished it (no poll)
    assert bridge.store.job(t.job_id).state == "done"
    [sim] = await sim_jobs(bridge.sim_url)
    target = sim["request"]["statusReportOptions"]["httpStatusPush"]["targetUrl"]
    assert target == f"{push_url}/retarus/push"
    async with httpx.AsyncClient() as c:
        # the main listener has no push route; the push listener nothing else
        r = await c.post(f"{bridge.http_server.url}/retarus/push", content=b"<x/>",
                         headers={"Content-Type": "text/xml"})
        assert r.status_code == 404
        for path in ("/admin/jobs", "/metrics", "/readyz", "/healthz"):
            assert (await c.get(push_url + path)).status_code == 404, path
        assert (await c.get(f"{bridge.http_server.url}/metrics")).status_code == 200
        r = await c.post(f"{push_url}/retarus/push", content=b"<x/>",
                         headers={"Content-Type": "text/xml"})
        assert r.status_code == 401


async def test_failed_push_authentication_is_logged_with_the_peer(make_bridge, caplog):
    bridge = await _waiting(make_bridge, "basic")
    caplog.set_level(logging.INFO, logger="faxbridge.web")
    r = await post(bridge, report_for(bridge), auth=("mallory", "guess"))
    assert r.status_code == 401
    [rec] = [r for r in caplog.records if "authentication failed" in r.getMessage()]
    assert rec.levelno == logging.WARNING
    assert "peer=127.0.0.1:" in rec.getMessage() and "'mallory'" in rec.getMessage()
    assert "guess" not in rec.getMessage()
    r = await post(bridge, report_for(bridge), auth=None)  # no credentials at all
    assert r.status_code == 401


async def test_forged_final_push_does_not_decide_the_outcome(make_bridge, caplog):
    """Retarus will report NOFAX; a push claiming OK arrives first (while the report
    is pending) and again once it is final. Neither makes the job delivered: the
    first changes nothing, the second is checked against the report, whose NOFAX
    is recorded; the report is deleted at Retarus only after that."""
    caplog.set_level(logging.INFO, logger="faxbridge")
    bridge = await _waiting(make_bridge, "basic")
    await outcome(bridge.sim_url, "+4989123456", "NOFAX")
    sim = next(j for j in bridge.sim_state.jobs if j.job_id == bridge.retarus_id)
    sim.outcomes = [("NOFAX", "No fax machine answered")]  # decided at submission
    forged = report_for(bridge).replace(b"+498912504001710", b"+4989123456")

    r = await post(bridge, forged)
    assert r.status_code == 200 and "not final at Retarus" in r.json()["status"], r.text
    assert bridge.store.job(bridge.job_id).state == "submitted"
    assert bridge.retarus_id in bridge.sim_state.reports[sim.dc]  # nothing deleted
    assert any("premature or forged" in r.getMessage() for r in caplog.records)

    complete_at_retarus(bridge)
    r = await post(bridge, forged)
    assert r.status_code == 200 and r.json()["status"] == "recorded", r.text
    job = bridge.store.job(bridge.job_id)
    assert job.state == "failed"
    [rec] = bridge.store.job_recipients(bridge.job_id)
    assert rec.status == "NOFAX"
    assert any("disagrees with the report at Retarus" in r.getMessage()
               for r in caplog.records)
    msgs = await wait_for(lambda: maildir(bridge))
    assert len(msgs) == 1 and "delivered" not in msgs[0]["Subject"]
    # deleted at Retarus after the confirmed outcome was committed, not before
    await wait_for(lambda: bridge.store.job(bridge.job_id).report_deleted == 1)
    assert bridge.retarus_id not in bridge.sim_state.reports[sim.dc]
    calls = bridge.sim_state.calls
    fetched = max(i for i, c in enumerate(calls)
                  if c["method"] == "GET" and c["path"].endswith(bridge.retarus_id))
    deleted = min(i for i, c in enumerate(calls)
                  if c["method"] in ("DELETE", "POST") and "/fax/reports" in c["path"])
    assert fetched < deleted, calls


async def test_simulator_control_api_hides_push_credentials(make_bridge):
    bridge = await make_bridge(fax=NO_POLL)
    t = await send(bridge.smtp_address, fax_mail())
    await wait_for(lambda: bridge.store.job(t.job_id).state in ("submitted", "done"))
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{bridge.sim_url}/_sim/jobs")
    assert bridge.push_secret and bridge.push_secret not in r.text
    [job] = r.json()
    push = job["request"]["statusReportOptions"]["httpStatusPush"]
    assert push["credentials"] == "(hidden)" and push["principal"]
    # the simulator itself still has them: its push authenticates and finishes the job
    await wait_for(lambda: bridge.sim_state.jobs[0].pushes)
    assert [p["status"] for p in bridge.sim_state.jobs[0].pushes] == [200]
    assert bridge.store.job(t.job_id).state == "done"
