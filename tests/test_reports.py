"""Tracking and report mails against the simulator and a real SMTP relay."""

from __future__ import annotations

import email
import email.policy
import logging
import mailbox
from email.message import EmailMessage

import httpx
import pytest

from faxbridge.mail.transport import maildir_path
from tests.conftest import arun_faxbridge, sim_jobs, wait_for
from tests.relay import Relay
from tests.smtp_client import send

FAST = {"report_poll_min_seconds": 0.1, "report_poll_max_seconds": 0.3}
MAIL_FAST = {"retry_min_seconds": 0.2, "retry_max_seconds": 0.5}


def fax_mail(to: str = "+4989123456@fax.local", subject: str = "Invoice 4711",
             msgid: str = "<orig-1@example.com>") -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = "alice@example.com", to, subject, msgid
    m.set_content("Please pay.")
    return m


async def outcome(url: str, pattern: str, status: str) -> None:
    async with httpx.AsyncClient() as c:
        await c.post(f"{url}/_sim/outcomes", json={"pattern": pattern, "status": status})


def maildir(bridge, address: str = "alice@example.com") -> list[EmailMessage]:
    path = maildir_path(bridge.cfg.storage.data_dir / "mail", address)
    # cur/ is the last of tmp/ new/ cur/ that mailbox.Maildir(create=True) makes: until
    # it exists the bridge is still creating the mailbox (reading it then raised)
    if not (path / "cur").exists():
        return []
    return [email.message_from_bytes(m.as_bytes(), policy=email.policy.default)
            for m in mailbox.Maildir(str(path), create=False)]


def no_more_reports(bridge) -> bool:
    """No further report can be mailed: every job is final (its report is queued in
    the transaction that finishes it, and a final job is never finished again), the
    simulator has pushed every job's status (poll and push have both reported), and
    no mail waits to be sent."""
    return (all(j.state in ("done", "failed") for j in bridge.store.list_jobs())
            and all(j.pushes for j in bridge.sim_state.jobs)
            and all(m.state != "queued" for m in bridge.store.list_mail()))


async def one_report(bridge, address: str = "alice@example.com") -> EmailMessage:
    await wait_for(lambda: maildir(bridge, address))
    await wait_for(lambda: no_more_reports(bridge))
    msgs = maildir(bridge, address)
    assert len(msgs) == 1, [m["Subject"] for m in msgs]
    return msgs[0]


def text_and_html(msg: EmailMessage) -> tuple[str, str]:
    return (msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content())


@pytest.fixture
async def bridge(make_bridge):
    return await make_bridge(fax=FAST)


async def test_delivered_report_threads_under_the_original(bridge):
    t = await send(bridge.smtp_address, fax_mail())
    msg = await one_report(bridge)
    assert msg["Subject"] == "Fax to +49 89 123456 delivered (1 page): Invoice 4711"
    assert msg["In-Reply-To"] == "<orig-1@example.com>" == msg["References"]
    assert msg["To"] == "alice@example.com" and msg["Auto-Submitted"] == "auto-generated"
    text, html = text_and_html(msg)
    assert "Your fax to +49 89 123456 was delivered." in text
    assert "Status code:       OK" in text
    # the job id is for the admin: in a header, not in what people read
    assert msg["X-Faxbridge-Job"] == t.job_id
    assert t.job_id not in text and t.job_id not in html
    assert "<table" in html and ">OK<" in html
    job = bridge.store.job(t.job_id)
    assert job.state == "done"
    rec = bridge.store.job_recipients(t.job_id)[0]
    assert (rec.status, rec.reason, rec.pages) == ("OK", "OK", 1)
    assert rec.sent_to_number == "004989123456" and rec.sent_ts


async def test_busy_report_explains_what_to_do(bridge):
    await outcome(bridge.sim_url, "+4930*", "BUSY")
    t = await send(bridge.smtp_address, fax_mail("+49301234567@fax.local"))
    msg = await one_report(bridge)
    assert msg["Subject"] == ("Fax to +49 30 1234567 failed: the line was busy on every attempt "
                              "(Invoice 4711)")
    text, _ = text_and_html(msg)
    assert "Status code:       BUSY (Line busy)" in text
    assert "What to do: Try again later" in text
    assert bridge.store.job(t.job_id).state == "failed"


async def test_mixed_outcomes_two_recipients(bridge):
    await outcome(bridge.sim_url, "+4930*", "NOFAX")
    m = fax_mail("Jane <+4989123456@fax.local>, Bob <+49301234567@fax.local>")
    t = await send(bridge.smtp_address, m)
    msg = await one_report(bridge)
    assert msg["Subject"] == "Fax partly delivered: 1 of 2 recipients: Invoice 4711"
    text, html = text_and_html(msg)
    assert "It did not reach +49 30 1234567." in text
    assert "send your mail again to that number only" in text
    assert "+49 89 123456 (Jane)" in text and "+49 30 1234567 (Bob)" in text
    assert "Status code:       NOFAX (No fax machine answered)" in text
    assert "instead of a fax machine" in text
    assert bridge.store.job(t.job_id).state == "done"


async def test_unknown_status_code_shown_as_it_is(bridge):
    await outcome(bridge.sim_url, "+4940*", "WRONG_NUMBER_X")
    await send(bridge.smtp_address, fax_mail("+49401234567@fax.local"))
    text, _ = text_and_html(await one_report(bridge))
    assert "Status code:       WRONG_NUMBER_X" in text and "Fax service status WRONG_NUMBER_X." in text


async def test_report_found_only_on_second_datacenter_and_deleted_there(bridge):
    async with httpx.AsyncClient() as c:
        await c.post(f"{bridge.sim_url}/_sim/config", json={"ha_route": {"ha-de": "de2"}})
    t = await send(bridge.smtp_address, fax_mail())
    await one_report(bridge)
    job = bridge.store.job(t.job_id)
    # finished by poll (data center known) or by push (not known): either way the
    # clean-up deletes the report where it lives, on de2
    await wait_for(lambda: bridge.store.job(t.job_id).report_deleted == 1)
    assert job.retarus_job_id not in bridge.sim_state.reports["de2"]
    deletes = [c for c in bridge.sim_state.calls if c["endpoint"] in ("delete", "bulk")]
    assert deletes and deletes[-1]["dc"] == "de2"
    assert all(c["dc"] in ("de1", "de2") for c in bridge.sim_state.calls
               if c["endpoint"] in ("report", "list", "bulk", "delete", "delete_oldest"))
    # (reports are never asked of the HA URL)
    # (report-sent follows the mail's state in its own transaction)
    kinds = await wait_for(lambda: (k := [e.kind for e in bridge.store.job_events(t.job_id)])
                           and "report-sent" in k and k)
    assert "report-deleted" in kinds


async def test_push_before_poll(make_bridge):
    # polls only once an hour after the first PENDING: the push must do it
    bridge = await make_bridge(fax={"report_poll_min_seconds": 3600,
                                    "report_poll_max_seconds": 3600})
    t = await send(bridge.smtp_address, fax_mail())
    await one_report(bridge)
    events = bridge.store.job_events(t.job_id)
    done = [e for e in events if e.kind == "done"]
    assert len(done) == 1 and "(push)" in done[0].detail
    assert [e.kind for e in events].count("poll") <= 1  # at most the first, PENDING


async def push(bridge, body: dict, auth=None) -> httpx.Response:
    auth = auth or (bridge.cfg.retarus.push_username, bridge.push_secret)
    async with httpx.AsyncClient() as c:
        return await c.post(f"{bridge.http_server.url}/retarus/push", json=body, auth=auth)


async def test_poll_before_push_and_duplicate_pushes(bridge):
    t = await send(bridge.smtp_address, fax_mail())
    await one_report(bridge)
    job = bridge.store.job(t.job_id)
    rep = next(j["report"] for j in await sim_jobs(bridge.sim_url)
               if j["jobId"] == job.retarus_job_id)
    body = {"jobId": rep["jobId"], "faxRecipient": [
        {**r, "sentTS": r["sentTs"], "status": "OK"} for r in rep["recipientStatus"]]}
    for _ in range(3):  # late and repeated pushes change nothing
        r = await push(bridge, body)
        assert r.status_code == 200 and r.json()["status"] == "already final"
    # a report the pushes caused would be queued before their answer
    assert [m.kind for m in bridge.store.list_mail()] == ["report"]
    assert len(maildir(bridge)) == 1
    assert [e.kind for e in bridge.store.job_events(t.job_id)].count("done") == 1


async def test_push_with_wrong_credentials_and_unknown_job(bridge):
    r = await push(bridge, {"jobId": "FJX"}, auth=("retarus", "wrong"))
    assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
    r = await push(bridge, {"jobId": "FJNOSUCHJOB", "faxRecipients": [{"status": "OK"}]})
    assert r.status_code == 200 and r.json()["status"] == "unknown job, ignored"
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{bridge.http_server.url}/retarus/push", content=b"<xml/>",
                         headers={"content-type": "text/plain"},
                         auth=("retarus", bridge.push_secret))
    assert r.status_code == 415


async def test_not_submitted_report(bridge):
    async with httpx.AsyncClient() as c:
        await c.post(f"{bridge.sim_url}/_sim/faults",
                     json={"endpoint": "send", "count": 1, "status": 409})
    t = await send(bridge.smtp_address, fax_mail())
    msg = await one_report(bridge)
    assert msg["Subject"] == "Fax to +49 89 123456 could not be sent: Invoice 4711"
    text, _ = text_and_html(msg)
    assert "nothing was sent" in text and "HTTP 409" in text
    assert bridge.store.job(t.job_id).state == "failed"


async def test_refused_job_report_quotes_retarus_and_says_fix(bridge):
    """A 400 with sendJobRequest's JSON body: Retarus' message reaches the job's error
    and the report, whose advice is to fix and send again (retrying cannot help)."""
    why = "documents[0].name 'a b.pdf': at most 32 characters of a-zA-Z0-9-_."
    async with httpx.AsyncClient() as c:
        await c.post(f"{bridge.sim_url}/_sim/faults", json={
            "endpoint": "send", "count": 1, "status": 400,
            "body": {"code": 400, "message": why}})
    t = await send(bridge.smtp_address, fax_mail())
    msg = await one_report(bridge)
    text, html = text_and_html(msg)
    assert why in text and "HTTP 400" in text
    assert "Fix what the reason names and send your mail again" in text
    assert "again later" not in text and "again later" not in html
    assert "Status code:       REFUSED" in text and "the fax service refused the fax" in text
    job = bridge.store.job(t.job_id)
    assert job.state == "failed" and why in job.last_error


async def test_job_not_handed_over_in_time_report_says_later(make_bridge):
    """The opposite case: Retarus could not be reached (503) until the deadline. Nothing
    is wrong with the mail, so the advice is to send it again later."""
    bridge = await make_bridge(fax={**FAST, "submit_deadline_seconds": 1})
    async with httpx.AsyncClient() as c:
        await c.post(f"{bridge.sim_url}/_sim/faults", json={
            "endpoint": "send", "count": 100, "status": 503,
            "body": {"code": 503, "message": "maintenance"}})
    t = await send(bridge.smtp_address, fax_mail())
    msg = await one_report(bridge)
    text, _ = text_and_html(msg)
    assert "Send your mail again later" in text and "maintenance" in text
    assert "fix what the reason names" not in text.lower()
    assert "Status code:       NOT_SENT" in text
    assert "could not be handed to the fax service" in text
    assert bridge.store.job(t.job_id).state == "failed"


async def test_notify_failure_only_and_attachments(make_bridge):
    from tests.conftest import loopback_rule
    bridge = await make_bridge(fax=FAST, senders=[
        loopback_rule(name="quiet", notify="failure").model_copy(
            update={"match": ("ok@example.com",)}).model_dump(),
        loopback_rule(name="attach", attach_documents=True).model_dump()])
    m = fax_mail()
    m.replace_header("From", "ok@example.com")
    t1 = await send(bridge.smtp_address, m)
    t2 = await send(bridge.smtp_address, fax_mail(msgid="<orig-2@example.com>"))
    msg = await one_report(bridge)  # (also waits until t1 is done)
    assert bridge.store.job(t1.job_id).state == "done"
    assert msg["In-Reply-To"] == "<orig-2@example.com>"
    atts = [(a.get_filename(), a.get_content()) for a in msg.iter_attachments()]
    assert atts == [("mail-body.txt", "Please pay.\n")]
    assert maildir(bridge, "ok@example.com") == []
    assert bridge.store.job(t2.job_id).state == "done"


async def test_broken_override_template_falls_back(make_bridge, tmp_path, caplog):
    tdir = tmp_path / "tpl"
    tdir.mkdir()
    (tdir / "report.delivered.txt.j2").write_text("Custom {{ no_such_variable.attr }}\n")
    (tdir / "report.delivered.subject.j2").write_text("Custom: {{ target }} ok\n")
    bridge = await make_bridge(fax=FAST, mail={"template_dir": tdir})
    caplog.set_level(logging.ERROR, logger="faxbridge.mail")
    await send(bridge.smtp_address, fax_mail())
    msg = await one_report(bridge)
    assert msg["Subject"] == "Custom: +49 89 123456 ok"  # the working override is used
    text, _ = text_and_html(msg)
    assert "Your fax to +49 89 123456 was delivered." in text  # the broken one fell back to the built-in
    assert "report.delivered.txt.j2 failed" in caplog.text


async def test_relay_down_then_up_report_arrives_once(make_bridge):
    relay = Relay.reserved()  # refuses connections until started
    try:
        bridge = await make_bridge(fax=FAST, mail={
            "transport": "smtp", **MAIL_FAST,
            "relay": {"host": "127.0.0.1", "port": relay.port, "tls": "none"}})
        t = await send(bridge.smtp_address, fax_mail())
        await wait_for(lambda: bridge.store.job(t.job_id).state == "done")
        await wait_for(lambda: (m := bridge.store.list_mail()) and m[0].attempts >= 2)
        assert bridge.store.list_mail()[0].state == "queued"
        assert "unreachable" in bridge.store.list_mail()[0].last_error
        await relay.start()
        # 'sent' is recorded after the relay's 250 and is final: nothing is sent again
        await wait_for(lambda: bridge.store.list_mail()[0].state == "sent")
        assert len(relay.messages) == 1
        mail_from, rcpts, _ = relay.messages[0]
        assert rcpts == ["alice@example.com"] and mail_from == "faxbridge@localhost"
        assert relay.parsed()[0]["In-Reply-To"] == "<orig-1@example.com>"
    finally:
        await relay.stop()


async def test_relay_550_for_the_sender_is_recorded_not_retried(make_bridge):
    relay = await Relay().start()
    relay.refuse["alice@example.com"] = "550 5.1.1 no such mailbox"
    try:
        bridge = await make_bridge(fax=FAST, mail={
            "transport": "smtp", **MAIL_FAST,
            "relay": {"host": "127.0.0.1", "port": relay.port, "tls": "none"}})
        t = await send(bridge.smtp_address, fax_mail())
        await wait_for(lambda: (m := bridge.store.list_mail()) and m[0].state == "failed")
        row = bridge.store.list_mail()[0]
        assert "550" in row.last_error and row.attempts == 1
        # the job's event follows the mail's state in its own transaction
        await wait_for(lambda: "report-failed" in [e.kind for e in
                                                   bridge.store.job_events(t.job_id)])
        # a second report is refused the same way: the mail worker has gone round again
        # since the first was refused, and did not try the first one again
        await send(bridge.smtp_address, fax_mail(msgid="<orig-2@example.com>"))
        await wait_for(lambda: len(m := bridge.store.list_mail()) == 2 and
                       m[0].state == "failed")
        assert [(m.state, m.attempts) for m in bridge.store.list_mail()] == [
            ("failed", 1), ("failed", 1)]
        assert relay.rcpt_attempts == ["alice@example.com"] * 2 and relay.messages == []
    finally:
        await relay.stop()


async def test_jobs_show_timeline(bridge):
    t = await send(bridge.smtp_address, fax_mail())
    await one_report(bridge)
    await wait_for(lambda: "report-sent" in [e.kind for e in
                                             bridge.store.job_events(t.job_id)])
    out = (await arun_faxbridge("jobs", "show", t.job_id, "--data-dir",
                                str(bridge.cfg.storage.data_dir))).stdout
    for kind in ("accepted", "submitting", "submitted", "poll", "done", "report-queued",
                 "report-sent"):
        assert kind in out, out
    assert "OK" in out
