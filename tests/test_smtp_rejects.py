"""Every rejection with its exact code, and each one explained in the SMTP log."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from email.message import EmailMessage

import pytest
import trustme

from faxbridge.config import SmtpUser
from faxbridge.smtp.auth import hash_password
from tests.conftest import loopback_rule, sim_jobs
from tests.smtp_client import send


def mail(to: str = "+4989123456@fax.local", sender: str = "alice@example.com") -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = sender, to, "t"
    m.set_content("hello")
    return m


def last_log(bridge) -> dict:
    return dataclasses.asdict(bridge.store.list_log(limit=1)[0])


async def flushed(bridge, n: int = 1) -> list[dict]:
    from tests.conftest import wait_for
    return await wait_for(lambda: len(rows := bridge.store.list_log()) >= n and
                          [dataclasses.asdict(r) for r in rows])


@pytest.fixture
async def office(make_bridge):
    """Only *@example.com may fax; premium rate denied; 2 faxes per hour."""
    return await make_bridge(senders=[
        loopback_rule(name="office", max_per_hour=2).model_copy(
            update={"match": ("*@example.com",)}).model_dump()])


async def test_non_fax_domain_is_relay_denied(office):
    t = await send(office.smtp_address, mail("someone@gmail.com"))
    assert t.rcpt == [(550, "5.7.1 Relaying denied: gmail.com is not a fax domain of this server "
                            "(fax domains: fax.local)")]
    rows = await flushed(office)
    assert "Relaying denied" in rows[0]["reply"] and rows[0]["ok"] == 0


@pytest.mark.parametrize("local, why", [
    ("+49891", "is not valid for country code +49"),
    ("12ab34", "contains 'ab'"),
    ("+4989123456789012345", "too long"),
])
async def test_bad_number(office, local, why):
    t = await send(office.smtp_address, mail(f"{local}@fax.local"))
    code, text = t.rcpt[0]
    assert code == 553 and text.startswith("5.1.3 Bad fax number") and why in text, text


async def test_unauthorised_sender(office):
    t = await send(office.smtp_address, mail(sender="mallory@evil.example"))
    assert t.rcpt == [(550, "5.7.1 Sender mallory@evil.example is not allowed to send faxes "
                            "(no sender rule matches)")]
    rows = await flushed(office)
    assert rows[0]["mail_from"] == "mallory@evil.example"


async def test_sender_match_is_case_insensitive(office):
    t = await send(office.smtp_address, mail(sender="Alice@EXAMPLE.com"))
    assert t.data[0] == 250


async def test_premium_rate_blocked_naming_the_rule(office):
    t = await send(office.smtp_address, mail("+499001234567@fax.local"))
    code, text = t.rcpt[0]
    assert code == 550 and text.startswith("5.7.1 Fax number +49 900 1 234567 is blocked by "
                                           "rule 'office': denied by pattern +49900*"), text


async def test_null_sender(office):
    """Bounces never become faxes: MAIL FROM:<> is taken (verification probes use
    it), its recipients are checked by number, and DATA is refused at once."""
    import asyncio
    import smtplib

    def talk() -> list[tuple[int, bytes]]:
        host, port = office.smtp_address.split(":")
        with smtplib.SMTP(host, int(port), timeout=30) as s:
            s.ehlo()
            return [s.docmd("MAIL FROM:<>"), s.docmd("RCPT TO:<+4989123456@fax.local>"),
                    s.docmd("DATA")]
    mail_reply, rcpt_reply, data_reply = await asyncio.to_thread(talk)
    assert mail_reply[0] == 250 and rcpt_reply[0] == 250
    assert data_reply == (550, b"5.7.1 The null sender <> cannot send faxes (mail from <> and "
                               b"verification probes are checked up to RCPT only)")
    assert await sim_jobs(office.sim_url) == []
    rows = await flushed(office)
    assert rows[0]["reply"].startswith("550 5.7.1 The null sender") and rows[0]["ok"] == 0


async def test_nothing_to_fax_lists_the_parts(make_bridge):
    bridge = await make_bridge(senders=[loopback_rule(body="ignore").model_dump()])
    m = mail()
    m.add_attachment(b"PK\x03\x04zipdata", maintype="application", subtype="zip",
                     filename="archive.zip")
    t = await send(bridge.smtp_address, m)
    code, text = t.data
    assert code == 554 and text.startswith("5.6.1 Nothing to fax in this mail:")
    assert "the sender rule ignores the body" in text
    assert "archive.zip: type application/zip cannot be faxed" in text
    assert await sim_jobs(bridge.sim_url) == []
    rec = last_log(bridge)
    assert rec["job_id"] is None and "554 5.6.1" in rec["reply"]
    assert [p["name"] for p in json.loads(rec["parts_json"])] == [None, "archive.zip"]


async def test_oversized_mail(make_bridge):
    bridge = await make_bridge(smtp={"max_message_size": 20000})
    t = await send(bridge.smtp_address, mail())
    assert "SIZE 20000" in t.ehlo[1]
    m = mail()
    m.add_attachment(b"%PDF" + b"x" * 40000, maintype="application", subtype="pdf",
                     filename="big.pdf")
    t = await send(bridge.smtp_address, m)
    assert t.data[0] == 552


async def test_too_many_recipients(make_bridge):
    bridge = await make_bridge(smtp={"max_recipients": 2})
    t = await send(bridge.smtp_address, mail(),
                   rcpts=[f"+498912345{i}@fax.local" for i in range(3)])
    assert [c for c, _ in t.rcpt] == [250, 250, 452]
    assert t.rcpt[2][1].startswith("4.5.3 Too many recipients")


async def test_rate_limit_is_temporary(office):
    for _ in range(2):
        assert (await send(office.smtp_address, mail())).data[0] == 250
    t = await send(office.smtp_address, mail())
    code, text = t.rcpt[0]
    assert code == 450 and text.startswith("4.7.1 Rate limit of rule 'office' reached (2 faxes "
                                           "in the last hour)")


async def test_untrusted_network_needs_auth(make_bridge):
    bridge = await make_bridge(smtp={"trusted_networks": ["10.0.0.0/8"]})
    t = await send(bridge.smtp_address, mail())
    assert t.mail[0] == 530 and t.mail[1].startswith("5.7.0 Authentication required")


async def test_auth_not_offered_without_tls(make_bridge):
    users = [SmtpUser(name="scanner", password_hash=hash_password("s3cret", 1000)).model_dump()]
    bridge = await make_bridge(smtp={"trusted_networks": [], "users": users})
    t = await send(bridge.smtp_address, mail())
    assert "AUTH" not in t.ehlo[1] and t.mail[0] == 530


async def test_auth_after_starttls_and_user_rule(make_bridge, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    # the user may send as the scanner's address (its MAIL FROM must be the user's)
    users = [SmtpUser(name="scanner", password_hash=hash_password("s3cret", 1000),
                      addresses=("scan@copier.example",)).model_dump()]
    bridge = await make_bridge(
        smtp={"trusted_networks": [], "users": users, "tls_cert": tmp_path / "cert.pem",
              "tls_key": tmp_path / "key.pem"},
        senders=[{"name": "scanners", "match": ["user:scanner"]}])
    t = await send(bridge.smtp_address, mail(sender="scan@copier.example"), starttls=True,
                   login=("scanner", "s3cret"))
    assert t.data[0] == 250
    rec = last_log(bridge)
    assert rec["tls"] == 1 and rec["auth_user"] == "scanner"
    import smtplib
    with pytest.raises(smtplib.SMTPAuthenticationError):
        await send(bridge.smtp_address, mail(), starttls=True, login=("scanner", "wrong"))


async def test_store_failure_answers_451_and_commits_nothing(make_bridge):
    bridge = await make_bridge(storage={"busy_timeout_ms": 200})
    # another process holds the write lock: the commit cannot happen
    other = sqlite3.connect(bridge.store.db.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    try:
        t = await send(bridge.smtp_address, mail())
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert t.data == (451, "4.3.0 Temporary failure storing your fax; nothing was queued, "
                           "try again later")
    assert bridge.store.list_jobs() == []
    t2 = await send(bridge.smtp_address, mail())  # the sender's MTA retries: accepted
    assert t2.data[0] == 250 and len(bridge.store.list_jobs()) == 1
    rows = await flushed(bridge, 2)  # the 451 is in the SMTP log too, without a job
    failed = [r for r in rows if r["reply"].startswith("451 4.3.0")]
    assert len(failed) == 1 and failed[0]["job_id"] is None and failed[0]["ok"] == 0


async def test_rejections_are_explained_by_the_log_command(office, tmp_path):
    await send(office.smtp_address, mail("+499001234567@fax.local"))
    await send(office.smtp_address, mail(sender="eve@other.example"))
    await flushed(office, 2)
    from tests.conftest import arun_faxbridge
    out = await arun_faxbridge("log", "--failed", "--data-dir", str(office.cfg.storage.data_dir))
    assert out.returncode == 0
    assert "blocked by rule 'office'" in out.stdout and "eve@other.example" in out.stdout
    eve = next(line for line in out.stdout.splitlines() if "eve@other.example" in line)
    show = await arun_faxbridge("log", "show", eve.split()[0].lstrip("#"), "--data-dir",
                                str(office.cfg.storage.data_dir))
    assert "from eve@other.example" in show.stdout
    assert ("rcpt +4989123456@fax.local number +4989123456 rule -: 550 5.7.1 Sender "
            "eve@other.example is not allowed to send faxes") in show.stdout


def test_route_command_explains(tmp_path):
    import subprocess
    import sys
    cfg = tmp_path / "c.toml"
    cfg.write_text("[[senders]]\nname='office'\nmatch=['*@example.com']\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "faxbridge", "route", "--config",  # noqa: E731
                                     str(cfg), *a], capture_output=True, text=True)
    ok = run("--from", "a@example.com", "--to", "089123456@fax.local")
    assert ok.returncode == 0 and "+4989123456" in ok.stdout and ok.stdout.strip().endswith(
        "accept")
    bad = run("--from", "a@example.com", "--to", "+499001234567@fax.local", "--json")
    verdict = json.loads(bad.stdout)["verdict"]
    assert bad.returncode == 1 and "denied by pattern +49900*" in verdict
    nobody = run("--from", "x@y.example", "--to", "+4989123456@fax.local")
    assert "no sender rule matches" in nobody.stdout


async def test_concurrent_sessions_each_get_their_own_job(make_bridge):
    import asyncio
    bridge = await make_bridge()
    results = await asyncio.gather(*[send(bridge.smtp_address, mail()) for _ in range(10)])
    ids = {t.job_id for t in results}
    assert len(ids) == 10 and None not in ids
    assert {j.id for j in bridge.store.list_jobs()} == ids  # each 250 has its own job
