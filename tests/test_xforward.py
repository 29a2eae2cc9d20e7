"""XFORWARD (the MTA in front names its client) and recipient verification probes,
straight against the bridge: what the Postfix recipe relies on, also where no
Postfix is installed."""

from __future__ import annotations

import asyncio
import logging
import smtplib

from tests.conftest import sim_jobs, wait_for


def session(address: str, *commands: str) -> list[tuple[int, str]]:
    """EHLO, then each raw command; every answer (EHLO's first)."""
    host, port = address.split(":")
    with smtplib.SMTP(host, int(port), timeout=30) as s:
        code, text = s.ehlo("mta.example.test")
        answers = [(code, text.decode())]
        for cmd in commands:
            code, text = s.docmd(cmd)
            answers.append((code, text.decode()))
        return answers


async def test_xforward_only_from_xforward_networks(make_bridge):
    closed = await make_bridge(senders=[{"name": "lan", "match": ["net:10.1.2.0/24"]}])
    answers = await asyncio.to_thread(session, closed.smtp_address,
                                      "XFORWARD ADDR=10.1.2.3 NAME=pc.example.com")
    assert "XFORWARD" not in answers[0][1]
    assert answers[1] == (550, "5.7.0 Error: insufficient authorization")


async def test_xforward_addr_is_what_net_rules_judge(make_bridge, caplog):
    caplog.set_level(logging.INFO, logger="faxbridge.smtp")
    bridge = await make_bridge(smtp={"xforward_networks": ["127.0.0.1/32"]},
                               senders=[{"name": "lan", "match": ["net:10.1.2.0/24"]}])
    answers = await asyncio.to_thread(
        session, bridge.smtp_address,
        "XFORWARD NAME=pc.example.com ADDR=10.1.2.3 PORT=4711",
        "XFORWARD PROTO=ESMTP HELO=pc.example.com SOURCE=REMOTE IDENT=[UNAVAILABLE]",
        "MAIL FROM:<alice@example.com>", "RCPT TO:<+4989123456@fax.local>", "RSET",
        # applies to one transaction: the next one is judged by the peer again
        "MAIL FROM:<alice@example.com>", "RCPT TO:<+4989123456@fax.local>",
        "XFORWARD BOGUS=1")
    assert "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE" in answers[0][1]
    assert answers[1][0] == answers[2][0] == 250
    assert answers[4][0] == 250, answers[4]          # 10.1.2.3 matches net:10.1.2.0/24
    assert answers[7][0] == 550 and "not allowed" in answers[7][1], answers[7]  # 127.0.0.1
    assert answers[8] == (503, "5.5.1 Error: MAIL transaction in progress")
    assert bridge.store is not None
    # the session is over, but its two log records are committed in the background
    logged = await wait_for(lambda: (rows := bridge.store.list_log()) and len(rows) >= 2
                            and rows)
    rec = logged[-1]  # oldest first of two
    assert rec.peer == "10.1.2.3 via 127.0.0.1", rec
    await wait_for(lambda: sum(r.getMessage().startswith("abandoned")
                               for r in caplog.records))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("abandoned")]
    assert lines[0].startswith("abandoned: peer=127.0.0.1 client=10.1.2.3 "
                               "from=<alice@example.com> to=<+4989123456@fax.local>"), lines
    assert any(getattr(r, "client", None) == "10.1.2.3" for r in caplog.records)  # a field


async def test_probe_sender_checks_the_number_and_never_faxes(make_bridge):
    bridge = await make_bridge(senders=[{"name": "office", "match": ["*@example.com"]}])
    answers = await asyncio.to_thread(
        session, bridge.smtp_address, "MAIL FROM:<double-bounce@mta.example.test>",
        "RCPT TO:<+4989123456@fax.local>", "RCPT TO:<+49891@fax.local>",
        "RCPT TO:<someone@gmail.com>", "DATA")
    assert answers[1][0] == 250
    assert answers[2] == (250, "2.1.5 Fax number +49 89 123456 OK (verification only: "
                               "mail from this sender is not faxed)")
    assert answers[3][0] == 553 and "Bad fax number" in answers[3][1]
    assert answers[4][0] == 550 and "Relaying denied" in answers[4][1]
    assert answers[5][0] == 550 and "cannot send faxes" in answers[5][1]
    assert await sim_jobs(bridge.sim_url) == []
    assert bridge.store is not None and bridge.store.list_jobs() == []


async def test_probe_senders_is_configurable(make_bridge):
    bridge = await make_bridge(smtp={"probe_senders": []},
                               senders=[{"name": "office", "match": ["*@example.com"]}])
    answers = await asyncio.to_thread(
        session, bridge.smtp_address, "MAIL FROM:<double-bounce@mta.example.test>",
        "RCPT TO:<+4989123456@fax.local>")
    assert answers[2][0] == 550 and "is not allowed to send faxes" in answers[2][1]
