"""Input a client controls never stalls the event loop, never produces a traceback
(in the reply or in the log), and never bloats the SMTP log: a multi-megabyte To:
header, MIME nested a thousand deep, tens of thousands of RCPTs, and admin API
parameters that make no sense. Real sockets against a real bridge."""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import threading

import httpx

from faxbridge.intake import parse as mail_parse
from faxbridge.smtp import handler as smtp_handler
from tests.conftest import wait_for
from tests.smtp_client import send

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def mail_with(headers: bytes, body: bytes | None = None) -> bytes:
    body = body if body is not None else (
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nPlease fax this.\r\n")
    return (b"From: alice@example.com\r\nSubject: hostile\r\nMIME-Version: 1.0\r\n"
            + headers + body)


def no_tracebacks(records: list[logging.LogRecord]) -> None:
    for r in records:
        assert r.exc_info is None, (r.name, r.getMessage())
        assert "Traceback" not in r.getMessage(), r.getMessage()


async def test_huge_to_header_is_parsed_off_the_event_loop(make_bridge, monkeypatch):
    """A 4 MB To: header: while its display names are being parsed, /healthz is
    answered. The parse is held at its start until the test has that answer, so the
    proof is the order of events, not a timing: on the event loop the held parse
    would block the loop, and /healthz could only be answered after it."""
    bridge = await make_bridge()
    order: list[str] = []
    started, go = threading.Event(), threading.Event()
    real = mail_parse.display_names

    def held(raw, country):  # noqa: ANN001, ANN202
        order.append("parse started")
        started.set()
        go.wait(20)  # bounded: a parse on the event loop must not hang the test
        order.append("parse finished")
        return real(raw, country)

    monkeypatch.setattr(mail_parse, "display_names", held)
    names = b",\r\n ".join(b'"Name %d" <x%d@example.com>' % (i, i) for i in range(120_000))
    to = b'To: "Doctor Fax" <+4989123456@fax.local>,\r\n ' + names + b"\r\n"
    assert len(to) > 4_000_000
    sending = asyncio.ensure_future(send(bridge.smtp_address, mail_with(to),
                                         mail_from="alice@example.com",
                                         rcpts=["+4989123456@fax.local"]))
    await wait_for(started.is_set, timeout=60)
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{bridge.http_server.url}/healthz", timeout=30)
    assert r.status_code == 200
    order.append("healthz answered")
    go.set()
    t = await sending
    assert order == ["parse started", "healthz answered", "parse finished"], order
    assert t.data[0] == 250, t.data
    [rec] = bridge.store.job_recipients(t.job_id)
    assert rec.display_name == "Doctor Fax"


def nested(depth: int) -> bytes:
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n'
                       % (i, i) for i in range(depth))
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return opening + b"Content-Type: text/plain\r\n\r\nhello" + closing


async def test_mime_nested_1000_deep_is_refused_with_a_clean_reason(make_bridge, caplog):
    bridge = await make_bridge()
    caplog.set_level(logging.DEBUG, logger="faxbridge")
    t = await send(bridge.smtp_address, mail_with(b"To: +4989123456@fax.local\r\n",
                                                  nested(1000)),
                   mail_from="alice@example.com", rcpts=["+4989123456@fax.local"])
    code, text = t.data
    assert code == 554 and text.startswith("5.6.0 "), t.data
    assert "nested too deeply" in text
    assert "Recursion" not in text and "recursion" not in text
    no_tracebacks(caplog.records)
    [entry] = bridge.store.list_log()
    assert entry.reply.startswith("554 5.6.0") and not entry.ok and entry.job_id is None
    # 50 levels are read (the walker skips what lies below its limit): a clean refusal too
    t = await send(bridge.smtp_address, mail_with(b"To: +4989123456@fax.local\r\n",
                                                  nested(50)),
                   mail_from="alice@example.com", rcpts=["+4989123456@fax.local"])
    assert t.data[0] == 554 and "levels" in t.data[1], t.data
    no_tracebacks(caplog.records)


def _flood(address: str, count: int) -> tuple[int, int]:
    host, _, port = address.rpartition(":")
    with smtplib.SMTP(host, int(port), timeout=60) as s:
        s.ehlo()
        s.mail("alice@example.com")
        codes = [s.rcpt(f"+49891234{i:05d}@fax.local")[0] for i in range(count)]
        s.rset()
    return codes.count(250), len(codes) - codes.count(250)


async def test_rcpt_flood_gives_a_small_log_record(make_bridge):
    """Thousands of RCPTs in one transaction: the log keeps the first ones in full
    and counts the rest, and still says why the transaction ended. (smtp.max_commands
    is raised: the flood is the log's test, not the command limit's.)"""
    bridge = await make_bridge(smtp={"max_commands": 10_000})
    accepted, refused = await asyncio.to_thread(_flood, bridge.smtp_address, 3000)
    assert refused > 0  # beyond smtp.max_recipients
    [entry] = await wait_for(lambda: bridge.store.list_log())
    stored = json.loads(entry.recipients_json)
    assert len(stored) == smtp_handler.LOG_RECIPIENTS + 1
    omitted = stored[-1]["omitted"]
    assert sum(omitted.values()) == 3000 - smtp_handler.LOG_RECIPIENTS
    assert len(entry.recipients_json) < 40_000
    assert "reset by client" in entry.reply and "452" in entry.reply


async def test_admin_parameters_are_validated(make_bridge, monkeypatch):
    monkeypatch.setenv("FB_ADMIN", "tok")
    bridge = await make_bridge(http={"admin_token": {"env": "FB_ADMIN"}})
    auth = {"Authorization": "Bearer tok"}
    base = bridge.http_server.url
    async with httpx.AsyncClient() as c:
        for path, says in [("/admin/log?limit=abc", "limit: expected a whole number"),
                           ("/admin/log?limit=-1", "limit: expected a whole number from 1"),
                           ("/admin/jobs?limit=99999999", "from 1 to"),
                           ("/admin/inbox?limit=0", "from 1 to"),
                           ("/admin/jobs?state=bogus", "state: expected one of"),
                           ("/admin/log?failed=maybe", "failed: expected 1 or 0")]:
            r = await c.get(base + path, headers=auth)
            assert r.status_code == 400, (path, r.text)
            assert says in r.json()["error"], (path, r.text)
        r = await c.post(f"{base}/admin/jobs/nope/release?force=perhaps", headers=auth)
        assert r.status_code == 400 and "force: expected" in r.json()["error"]
        assert (await c.get(f"{base}/admin/jobs?state=held&limit=5",
                            headers=auth)).status_code == 200
