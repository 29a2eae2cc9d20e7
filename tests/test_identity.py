"""Identity, not claims: over real SMTP with STARTTLS and AUTH, the authenticated
user decides the sender rule, MAIL FROM must be an address the user may use, and
reports go to the user's own address when MAIL FROM is not one of them.

The issue's observation: a client authenticated as `scanner` (whose rule allows
only +4930*) sent MAIL FROM:<boss@example.com>, matched the boss's rule, and a fax
to +4989123456 was queued."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import mailbox
from pathlib import Path
from typing import Any

import pytest
import trustme

from faxbridge.config import SmtpUser
from faxbridge.mail.transport import maildir_path
from faxbridge.smtp.auth import hash_password
from tests.conftest import arun_faxbridge, sim_jobs, wait_for
from tests.smtp_async import send_one

HASH = hash_password("s3cret", 1000)
SCANNER = ("scanner", "s3cret")
CLERK = ("clerk", "s3cret")
LOST = ("lost", "s3cret")
FAST = {"report_poll_min_seconds": 0.1, "report_poll_max_seconds": 0.3}


def tls_files(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    return {"tls_cert": tmp_path / "cert.pem", "tls_key": tmp_path / "key.pem"}


USERS: list[dict[str, Any]] = [
    # bound to the berlin rule; owns scanner@example.com, may send as the copier
    SmtpUser(name="scanner", password_hash=HASH, addresses=("scanner@example.com",),
             send_as=("*@copier.example",), rule="berlin").model_dump(),
    # no binding: the rule naming user:clerk is its own
    SmtpUser(name="clerk", password_hash=HASH, addresses=("clerk@example.com",)).model_dump(),
    # no binding and no rule names it: it may not fax, whatever MAIL FROM says
    SmtpUser(name="lost", password_hash=HASH, addresses=("lost@example.com",)).model_dump(),
]
SENDERS = [
    {"name": "management", "match": ["boss@example.com", "*@example.com"]},
    {"name": "berlin", "match": ["net:192.0.2.0/24"], "allow": ["+4930*"]},
    {"name": "clerks", "match": ["user:clerk"], "allow": ["+33*"]},
]


@pytest.fixture
async def bridge(make_bridge, tmp_path):
    return await make_bridge(smtp={"trusted_networks": [], "users": USERS,
                                   **tls_files(tmp_path)},
                             senders=SENDERS, fax=FAST)


async def as_user(bridge, login: tuple[str, str], sender: str,
                  rcpts: list[str]) -> tuple[str, list[str], str | None]:
    return await send_one(bridge.smtp_address, sender, rcpts, tls=True, login=login)


def log_rows(bridge) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in bridge.store.list_log(limit=100)]


async def test_issue_repro_mismatched_mail_from_is_refused(bridge):
    """scanner claiming boss@example.com: refused at MAIL (553 5.7.1), nothing
    queued, and the refusal is in the SMTP log with the user."""
    mail, rcpts, data = await as_user(bridge, SCANNER, "boss@example.com",
                                      ["+4989123456@fax.local"])
    assert mail == ("553 5.7.1 <boss@example.com>: Sender address rejected: not owned by "
                    "user scanner (smtp.users addresses / send_as)")
    assert rcpts == [] and data is None
    assert bridge.store.list_jobs() == []
    rows = await wait_for(lambda: log_rows(bridge))
    assert rows[0]["auth_user"] == "scanner" and rows[0]["mail_from"] == "boss@example.com"
    assert rows[0]["reply"].startswith("553 5.7.1 <boss@example.com>: Sender address rejected")


async def test_bound_rule_decides_not_mail_from(bridge):
    """With its own address, which also matches the management rule's *@example.com,
    scanner still goes by its bound rule berlin: +4989… refused, +4930… accepted."""
    mail, rcpts, data = await as_user(bridge, SCANNER, "scanner@example.com",
                                      ["+4989123456@fax.local", "+4930123456@fax.local"])
    assert mail == "250 2.1.0 Sender OK"
    assert rcpts[0] == ("550 5.7.1 Fax number +49 89 123456 is blocked by rule 'berlin': "
                        "matches none of the allowed patterns +4930*")
    assert rcpts[1] == "250 2.1.5 Fax number +49 30 123456 OK"
    assert data is not None and data.startswith("250 2.0.0 Queued as ")
    (job,) = bridge.store.list_jobs()
    assert job.rule == "berlin" and job.auth_user == "scanner"
    assert [r.number for r in bridge.store.job_recipients(job.id)] == ["+4930123456"]
    assert {j["request"]["recipients"][0]["number"] for j in await wait_for(
        lambda: sim_jobs(bridge.sim_url))} == {"+4930123456"}


async def test_user_rule_by_match_and_user_without_rule(bridge):
    """clerk has no binding: the rule naming user:clerk applies, not the
    management rule its address matches. lost has none: refused, although its
    MAIL FROM matches *@example.com."""
    _, rcpts, _ = await as_user(bridge, CLERK, "clerk@example.com",
                                ["+4989123456@fax.local", "+33123456789@fax.local"])
    assert rcpts[0].startswith("550 5.7.1 Fax number +49 89 123456 is blocked by rule "
                               "'clerks'"), rcpts
    assert rcpts[1].startswith("250 2.1.5"), rcpts
    mail, rcpts, data = await as_user(bridge, LOST, "lost@example.com",
                                      ["+4989123456@fax.local"])
    assert mail.startswith("250")
    assert rcpts == ["550 5.7.1 User lost is not allowed to send faxes (no sender rule for "
                     "this user: smtp.users rule, or 'user:lost' in a rule's match)"]
    assert data is None


def maildir(bridge, address: str) -> list[email.message.EmailMessage]:
    path = maildir_path(bridge.cfg.storage.data_dir / "mail", address)
    if not (path / "cur").exists():
        return []
    return [email.message_from_bytes(m.as_bytes(), policy=email.policy.default)
            for m in mailbox.Maildir(str(path), create=False)]


async def test_report_goes_to_the_users_address(bridge):
    """MAIL FROM scan@copier.example (send_as) is not the user's own address: the
    report goes to scanner@example.com, and no mail to the copier's address."""
    _, _, data = await as_user(bridge, SCANNER, "scan@copier.example",
                               ["+4930123456@fax.local"])
    assert data is not None and data.startswith("250 2.0.0")
    (job,) = bridge.store.list_jobs()
    assert job.sender == "scan@copier.example" and job.report_to == "scanner@example.com"
    events = [e.detail for e in bridge.store.job_events(job.id)]
    assert "reports to scanner@example.com" in events[0], events
    reports = await wait_for(lambda: maildir(bridge, "scanner@example.com"), timeout=60)
    assert reports[0]["To"] == "scanner@example.com" and job.id in reports[0].as_string()
    await wait_for(lambda: all(m.state != "queued" for m in bridge.store.list_mail()))
    assert maildir(bridge, "scan@copier.example") == []
    assert [json.loads(m.recipients_json) for m in bridge.store.list_mail()] == [
        ["scanner@example.com"]]


async def test_report_goes_to_mail_from_when_it_is_the_users_own(bridge):
    _, _, data = await as_user(bridge, SCANNER, "Scanner@Example.com",
                               ["+4930123456@fax.local"])
    assert data is not None and data.startswith("250 2.0.0")
    (job,) = bridge.store.list_jobs()
    assert job.report_to is None and job.report_address == "scanner@example.com"


async def test_route_gives_the_listeners_decision_for_a_user(bridge, tmp_path):
    """`faxbridge route --user` runs the same accept path: each case's replies are
    the listener's, reply for reply."""
    cfg = tmp_path / "route.toml"
    tls = bridge.cfg.smtp
    users = "".join(
        f"[[smtp.users]]\nname = '{u['name']}'\npassword_hash = '{HASH}'\n"
        f"addresses = {json.dumps(list(u['addresses']))}\n"
        f"send_as = {json.dumps(list(u['send_as']))}\n"
        + (f"rule = '{u['rule']}'\n" if u["rule"] else "") for u in USERS)
    senders = "".join(f"[[senders]]\nname = '{s['name']}'\nmatch = {json.dumps(s['match'])}\n"
                      + (f"allow = {json.dumps(s['allow'])}\n" if "allow" in s else "")
                      for s in SENDERS)
    cfg.write_text(f"[smtp]\ntrusted_networks = []\ntls_cert = '{tls.tls_cert}'\n"
                   f"tls_key = '{tls.tls_key}'\n{users}{senders}")
    cases = [
        (SCANNER, "boss@example.com", ["+4989123456@fax.local"]),
        (SCANNER, "scanner@example.com", ["+4989123456@fax.local", "+4930123456@fax.local"]),
        (SCANNER, "scan@copier.example", ["+4930123456@fax.local", "+33899123456@fax.local"]),
        (CLERK, "clerk@example.com", ["+33123456789@fax.local", "+4930123456@fax.local"]),
        (LOST, "lost@example.com", ["+4930123456@fax.local"]),
    ]
    for login, sender, rcpts in cases:
        out = await arun_faxbridge("route", "--config", str(cfg), "--tls", "--user", login[0],
                                   "--from", sender, *[a for r in rcpts for a in ("--to", r)],
                                   "--data-dir", str(bridge.cfg.storage.data_dir), "--json")
        route = json.loads(out.stdout)
        mail, replies, _ = await as_user(bridge, login, sender, rcpts)
        assert route["mail"]["reply"] == mail, (login, sender, route["steps"])
        assert [r["reply"] for r in route["recipients"]] == replies, route["steps"]
    copier = json.loads((await arun_faxbridge(
        "route", "--config", str(cfg), "--tls", "--user", "scanner", "--from",
        "scan@copier.example", "--to", "+4930123456@fax.local", "--json")).stdout)
    assert copier["mail"]["report_to"] == "scanner@example.com"
    assert copier["recipients"][0]["rule"] == "berlin"
