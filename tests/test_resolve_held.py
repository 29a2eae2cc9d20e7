"""Resolving a held job whose outcome is recorded but whose report mail could not be
composed (a poison mail): the CLI, the admin API and the dashboard each close it as
done or failed by the recorded outcome, the sender gets a plain fallback report, and
only then does the report cleaner delete its report at the simulator. A held job
without a recorded outcome is refused: release is the way for those."""

from __future__ import annotations

import email
import email.policy
import mailbox
import re
import sqlite3
import time
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from faxbridge.mail.transport import maildir_path
from faxbridge.outbound.report import REPORT_HELD
from tests.conftest import arun_faxbridge, wait_for
from tests.smtp_client import send

SENDER = "alice@example.com"
TOKEN = "resolve-s3cret"
ADMIN = {"admin_token": {"env": "FB_ADMIN"}}
# fast polls; the simulator completes a fax only when a test says so (no push either)
FAST = {"report_poll_min_seconds": 0.1, "report_poll_max_seconds": 0.3}
LATER = {"complete_after": 3600}
# a Message-ID folded over a Bcc line, stored as an older version stored it: the
# report's In-Reply-To cannot be written, so the finished job is held
POISON_ID = "<id@host>\r\n Bcc: eve@example.com"


@pytest.fixture
def admin_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FB_ADMIN", TOKEN)
    return TOKEN


def mail(to: str = "+4989123456@fax.local", subject: str = "Invoice 4711") -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = SENDER, to, subject
    m["Message-ID"] = "<ok@host>"
    m.set_content("Please fax.")
    return m


def reports(bridge: Any) -> list[EmailMessage]:
    path = maildir_path(bridge.cfg.storage.data_dir / "mail", SENDER)
    if not (path / "cur").exists():
        return []
    return [email.message_from_bytes(m.as_bytes(), policy=email.policy.default)
            for m in mailbox.Maildir(str(path), create=False)]


def report_of(bridge: Any, job_id: str) -> EmailMessage | None:
    # the job id is in a header, not in the text people read
    return next((m for m in reports(bridge) if m["X-Faxbridge-Job"] == job_id), None)


async def report_stored(bridge: Any, job_id: str) -> bool:
    """Whether the simulator still stores the job's report, from its control API."""
    retarus_id = bridge.store.job(job_id).retarus_job_id
    async with httpx.AsyncClient() as c:
        jobs = (await c.get(f"{bridge.sim_url}/_sim/jobs")).json()
    [sim] = [j for j in jobs if j["jobId"] == retarus_id]
    return sim["report_stored"]


def complete(bridge: Any, job_id: str) -> None:
    """The simulator finishes this job's fax now; the next poll finds the report."""
    retarus_id = bridge.store.job(job_id).retarus_job_id
    for j in bridge.sim_state.jobs:
        if j.job_id == retarus_id:
            j.completes_at = time.time()


async def held_with_outcome(bridge: Any, *subjects_and_numbers: tuple[str, str]) -> list[str]:
    """Jobs sent, their stored Message-ID made poison, then completed: each ends
    held with its outcome recorded (as tests/test_poison_headers.py produces one)."""
    ids = []
    for subject, number in subjects_and_numbers:
        t = await send(bridge.smtp_address, mail(f"{number}@fax.local", subject))
        assert t.job_id, t
        ids.append(t.job_id)
    await wait_for(lambda: all(bridge.store.job(i).state == "submitted" for i in ids), 60)
    with sqlite3.connect(bridge.cfg.storage.data_dir / "faxbridge.sqlite3") as c:
        c.executemany("UPDATE jobs SET message_id=? WHERE id=?", [(POISON_ID, i) for i in ids])
    c.close()
    # a poll claimed before the update holds the old row: wait for two polls after it
    changed = time.time()
    await wait_for(lambda: all(len([e for e in bridge.store.job_events(i)
                                    if e.kind == "poll" and e.ts > changed]) >= 2
                               for i in ids), 60)
    for i in ids:
        complete(bridge, i)
    await wait_for(lambda: all(bridge.store.job(i).state == "held" for i in ids), 60)
    for i in ids:
        assert bridge.store.job(i).last_error.startswith(REPORT_HELD)
    return ids


async def cleaner_pass_after_hold(bridge: Any) -> None:
    """Wait for a report clean-up pass that ran after the jobs were held: a normal
    job sent now, whose report the cleaner deletes."""
    t = await send(bridge.smtp_address, mail("+4940111222@fax.local", "control"))
    await wait_for(lambda: bridge.store.job(t.job_id).state == "submitted", 60)
    complete(bridge, t.job_id)
    await wait_for(lambda: bridge.store.job(t.job_id).report_deleted, 60)
    assert not await report_stored(bridge, t.job_id)


def events(bridge: Any, job_id: str, kind: str) -> list[str]:
    return [e.detail for e in bridge.store.job_events(job_id) if e.kind == kind]


def assert_plain_fallback_report(bridge: Any, job_id: str, status: str) -> None:
    report = report_of(bridge, job_id)
    assert report is not None
    # nothing taken from the poison mail: no threading, no subject, no Bcc smuggled in
    assert report["In-Reply-To"] is None and "Invoice" not in str(report["Subject"])
    assert "eve@example.com" not in report.as_string()
    assert status in report.get_body(("plain",)).get_content()


async def test_cli_resolves_and_only_then_the_report_is_deleted_at_retarus(make_bridge):
    bridge = await make_bridge(fax=FAST, simulator=LATER)
    data_dir = str(bridge.cfg.storage.data_dir)
    [job_id] = await held_with_outcome(bridge, ("Invoice 4711", "+4989123456"))
    # held is not finished: the cleaner leaves its report at Retarus (the evidence)
    await cleaner_pass_after_hold(bridge)
    assert await report_stored(bridge, job_id)
    assert not bridge.store.job(job_id).report_deleted
    assert report_of(bridge, job_id) is None

    shown = (await arun_faxbridge("jobs", "show", job_id, "--data-dir", data_dir)).stdout
    assert f"faxbridge jobs resolve {job_id}" in shown, shown
    out = await arun_faxbridge("jobs", "release", job_id, "--data-dir", data_dir)
    assert out.returncode == 1 and "send the fax again" in out.stdout

    out = await arun_faxbridge("jobs", "resolve", job_id, "--data-dir", data_dir)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stdout.strip().startswith(f"job {job_id} resolved: done (delivered)"), out.stdout
    assert "plain fallback report mail to alice@example.com" in out.stdout
    job = bridge.store.job(job_id)
    assert job.state == "done"
    [resolved] = events(bridge, job_id, "resolved")
    assert resolved.startswith("resolved by admin (CLI): done by the recorded outcome "
                               "(delivered: +4989123456 OK)"), resolved
    # the fallback report goes out through the running bridge's mail worker
    await wait_for(lambda: report_of(bridge, job_id), 60)
    assert_plain_fallback_report(bridge, job_id, "OK")
    # and now, finished, its report is deleted at Retarus
    await wait_for(lambda: bridge.store.job(job_id).report_deleted, 60)
    assert not await report_stored(bridge, job_id)
    assert events(bridge, job_id, "report-deleted")

    out = await arun_faxbridge("jobs", "resolve", job_id, "--data-dir", data_dir)
    assert out.returncode == 1 and f"job {job_id} is done, not held" in out.stdout
    out = await arun_faxbridge("jobs", "resolve", "nosuchjob", "--data-dir", data_dir)
    assert out.returncode == 1 and "no job nosuchjob" in out.stdout


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def test_admin_api_and_dashboard_resolve(make_bridge, admin_token):
    bridge = await make_bridge(fax=FAST, simulator=LATER, http=ADMIN)
    async with httpx.AsyncClient() as c:  # the dashboard's job fails: closed as failed
        await c.post(f"{bridge.sim_url}/_sim/outcomes",
                     json={"pattern": "+4930*", "status": "BUSY"})
    api_job, dash_job = await held_with_outcome(bridge, ("Invoice 1", "+4989123456"),
                                                ("Invoice 2", "+4930123456"))
    await cleaner_pass_after_hold(bridge)
    assert await report_stored(bridge, api_job) and await report_stored(bridge, dash_job)
    base, auth = bridge.http_server.url, {"Authorization": f"Bearer {TOKEN}"}

    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.get(f"/admin/jobs/{api_job}", headers=auth)
        assert r.json()["outcome_recorded"] is True
        r = await c.post(f"/admin/jobs/{api_job}/resolve")
        assert r.status_code == 401 and bridge.store.job(api_job).state == "held"
        r = await c.post("/admin/jobs/nosuchjob/resolve", headers=auth)
        assert r.status_code == 404
        r = await c.post(f"/admin/jobs/{api_job}/resolve", headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["resolved"] == api_job
        assert r.json()["message"].startswith(f"job {api_job} resolved: done (delivered)")
        r = await c.post(f"/admin/jobs/{api_job}/resolve", headers=auth)
        assert r.status_code == 409 and "is done, not held" in r.json()["error"]
    assert bridge.store.job(api_job).state == "done"
    assert events(bridge, api_job, "resolved")[0].startswith("resolved by the admin API: done")

    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/dashboard/login", data={"token": TOKEN, "next": "/dashboard/"})
        assert r.status_code == 303
        held = (await c.get("/dashboard/held")).text
        # the held page offers Resolve (not Release, which would send it again)
        assert f'action="/dashboard/jobs/{dash_job}/resolve"' in held
        assert f'action="/dashboard/jobs/{dash_job}/release"' not in held
        assert api_job not in held
        page = (await c.get(f"/dashboard/jobs/{dash_job}")).text
        assert 'id="resolve"' in page and 'id="release"' not in page
        token = csrf_of(page)
        resolve = f"/dashboard/jobs/{dash_job}/resolve"
        # as every dashboard POST: the session's CSRF token and the same origin
        for data, headers in (({}, {}), ({"csrf": "0" * 40}, {}),
                              ({"csrf": token}, {"Origin": "http://evil.example"})):
            r = await c.post(resolve, data=data, headers=headers)
            assert r.status_code == 403, (data, headers)
        assert bridge.store.job(dash_job).state == "held"
        r = await c.post(resolve, data={"csrf": token}, headers={"Origin": base})
        assert r.status_code == 303 and r.headers["location"] == \
            f"/dashboard/jobs/{dash_job}?resolved=1"
        page = (await c.get(r.headers["location"])).text
        assert 'id="notice"' in page and "Resolved" in page
        assert 'id="job-state">failed<' in page and "resolved by the dashboard" in page
    assert bridge.store.job(dash_job).state == "failed"

    for job_id, status in ((api_job, "OK"), (dash_job, "BUSY")):
        await wait_for(lambda j=job_id: report_of(bridge, j), 60)
        assert_plain_fallback_report(bridge, job_id, status)
        await wait_for(lambda j=job_id: bridge.store.job(j).report_deleted, 60)
        assert not await report_stored(bridge, job_id)


async def test_a_held_job_without_a_recorded_outcome_is_refused(make_bridge, admin_token):
    """An unconfirmed submission (Retarus' answer came too late) has no outcome to
    close it with: every interface refuses, precisely, and the job stays held."""
    bridge = await make_bridge(fax=FAST, http=ADMIN, retarus={"timeout": 1.0})
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{bridge.sim_url}/_sim/faults",
                         json={"endpoint": "send", "count": 1, "delay": 2.0, "status": 503})
        assert r.status_code == 200
    t = await send(bridge.smtp_address, mail())
    assert t.job_id
    await wait_for(lambda: bridge.store.job(t.job_id).state == "held", 60)
    expected = (f"job {t.job_id} is held without a recorded outcome (unconfirmed submission): "
                "there is no result to close it with; release it instead")

    out = await arun_faxbridge("jobs", "resolve", t.job_id, "--data-dir",
                               str(bridge.cfg.storage.data_dir))
    assert out.returncode == 1 and out.stdout.strip() == expected, out.stdout
    base = bridge.http_server.url
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.post(f"/admin/jobs/{t.job_id}/resolve",
                         headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 409 and r.json()["error"] == expected
        r = await c.post("/dashboard/login", data={"token": TOKEN, "next": "/dashboard/"})
        held = (await c.get("/dashboard/held")).text
        assert f'action="/dashboard/jobs/{t.job_id}/release"' in held
        assert f'action="/dashboard/jobs/{t.job_id}/resolve"' not in held
        page = (await c.get(f"/dashboard/jobs/{t.job_id}")).text
        assert 'id="resolve"' not in page
        r = await c.post(f"/dashboard/jobs/{t.job_id}/resolve", data={"csrf": csrf_of(page)})
        assert r.status_code == 409 and "held without a recorded outcome" in r.text
    assert bridge.store.job(t.job_id).state == "held"
    assert not events(bridge, t.job_id, "resolved")
