"""The process log an admin can grep: one INFO line per SMTP transaction (accepted,
refused or abandoned) with peer, sender, recipients, reply and job id, and one per
mail sent with the relay's reply and queue id; in JSON mode these are fields."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import smtplib
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import Proc, loopback_rule, wait_for
from tests.relay import Relay
from tests.smtp_client import send

FAST = {"report_poll_min_seconds": 0.1, "report_poll_max_seconds": 0.3}
MAIL_FAST = {"retry_min_seconds": 0.2, "retry_max_seconds": 0.5}


def fax_mail(to: str = "+4989123456@fax.local", msgid: str = "<log-1@example.com>"
             ) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = "alice@example.com", to, "t", msgid
    m.set_content("hello")
    return m


def lines(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]


async def test_text_lines_accepted_refused_abandoned_and_sent(make_bridge, caplog):
    caplog.set_level(logging.INFO, logger="faxbridge")
    relay = await Relay().start()
    try:
        bridge = await make_bridge(fax=FAST, senders=[loopback_rule().model_dump()], mail={
            "transport": "smtp", **MAIL_FAST,
            "relay": {"host": "127.0.0.1", "port": relay.port, "tls": "none"}})
        t = await send(bridge.smtp_address, fax_mail())
        assert t.data[0] == 250
        bad = await send(bridge.smtp_address, fax_mail("+49891@fax.local", "<log-2@x>"))
        assert bad.rcpt[0][0] == 553

        def probe() -> None:  # MAIL FROM:<>, one RCPT, QUIT: nothing to fax
            host, port = bridge.smtp_address.split(":")
            with smtplib.SMTP(host, int(port), timeout=30) as s:
                s.ehlo("probe.test")
                s.mail("<>")
                s.rcpt("+4930123456@fax.local")
        await asyncio.to_thread(probe)

        accepted = await wait_for(lambda: lines(caplog, "accepted: "))
        assert len(accepted) == 1 and re.fullmatch(
            rf"accepted: peer=127\.0\.0\.1 from=<alice@example\.com> to=<\+4989123456@fax\.local> "
            rf"job={t.job_id} message_id=<log-1@example\.com> size=\d+ "
            rf"reply=\"250 2\.0\.0 Queued as {t.job_id}: fax to \+49 89 123456\"", accepted[0]), \
            accepted
        refused = await wait_for(lambda: lines(caplog, "refused: "))
        assert refused == ["refused: peer=127.0.0.1 from=<alice@example.com> "
                           "to=<+49891@fax.local> reply=\"553 5.1.3 Bad fax number in "
                           "<+49891@fax.local>: '+49891' read as +49891 is not valid for country code "
                           "+49 (DE)\""]
        abandoned = await wait_for(lambda: lines(caplog, "abandoned: "))
        assert abandoned == ["abandoned: peer=127.0.0.1 from=<> to=<+4930123456@fax.local> "
                             "reply=\"(client quit)\""]
        # the status report goes out through the relay: its queue id is in the line
        sent = await wait_for(lambda: lines(caplog, "sent report mail "))
        assert relay.queue_ids == ["RQ0001"]
        assert re.fullmatch(rf"sent report mail \d+ for {t.job_id}: from=<faxbridge@localhost> "
                            r"to=<alice@example\.com> reply=\"250 2\.0\.0 Ok: queued as RQ0001\"",
                            sent[0]), sent
    finally:
        await relay.stop()


def json_lines(out: str) -> list[dict]:
    found = []
    for line in out.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


async def test_json_mode_has_the_facts_as_fields(tmp_path: Path):
    relay = await Relay().start()
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        '[logging]\nformat = "json"\n'
        '[simulator]\ncomplete_after = 0.3\n'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        '[fax]\nreport_poll_min_seconds = 0.1\nreport_poll_max_seconds = 0.3\n'
        '[mail]\ntransport = "smtp"\nretry_min_seconds = 0.2\nretry_max_seconds = 0.5\n'
        f'[mail.relay]\nhost = "127.0.0.1"\nport = {relay.port}\ntls = "none"\n'
        '[[senders]]\nname = "office"\nmatch = ["*@example.com"]\n')
    proc = Proc(["serve", "--config", str(cfg), "--smtp-listen", "127.0.0.1:0",
                 "--http-listen", "127.0.0.1:0", "--simulator-listen", "127.0.0.1:0"],
                tmp_path)
    try:
        where = await proc.listening()
        t = await send(where.smtp, fax_mail())
        assert t.data[0] == 250
        bad = await send(where.smtp, fax_mail("+4989123456@fax.local", "<log-3@x>"),
                         mail_from="mallory@evil.test")
        assert bad.rcpt[0][0] == 550
        await proc.output_seen('"event": "mail_sent"', timeout=60)
        records = json_lines(proc.output)
        smtp = [r for r in records if r.get("event") == "smtp"]
        ok = next(r for r in smtp if r["result"] == "accepted")
        assert ok["level"] == "INFO" and ok["job"] == t.job_id
        assert ok["message_id"] == "<log-1@example.com>" and ok["sender"] == "alice@example.com"
        assert ok["recipients"] == ["+4989123456@fax.local"] and ok["code"] == 250
        assert ok["peer"] == "127.0.0.1" and ok["reply"].startswith("250 2.0.0 Queued as ")
        no = next(r for r in smtp if r["result"] == "refused")
        assert no["sender"] == "mallory@evil.test" and no["code"] == 550 and no["job"] is None
        assert no["recipients"] == ["+4989123456@fax.local"]
        assert "not allowed to send faxes" in no["reply"]
        sent = next(r for r in records if r.get("event") == "mail_sent")
        assert sent["kind"] == "report" and sent["job"] == t.job_id
        assert sent["queue_id"] == relay.queue_ids[0] == "RQ0001"
        assert sent["reply"] == "250 2.0.0 Ok: queued as RQ0001"
        assert sent["recipients"] == ["alice@example.com"]
        # the report mail is written by the workers process (serve's default): its
        # records say so, with its pid; the listener's carry no process field
        workers_pid = int(re.search(r"workers process started \(pid (\d+)\)",
                                    proc.output).group(1))
        assert (sent["process"], sent["pid"]) == ("workers", workers_pid), sent
        assert "process" not in ok and "pid" not in ok, ok
    finally:
        await asyncio.to_thread(proc.stop)
        await relay.stop()
