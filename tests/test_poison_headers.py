"""A poison mail never wedges a stage: hostile headers (folded, RFC 2047 words carrying
CR/LF or ESC, raw control characters, 8-bit garbage, a megabyte) in Subject,
Message-ID, the display names and an attachment's file name, sent over a real SMTP
socket to a real bridge. Every accepted job must end (done / failed, or held with a
reason), its report mail must exist, and no header of that report, no log line and no
`faxbridge jobs` output may carry a control character."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import logging
import mailbox
import re
import sqlite3
import time
from typing import Any

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from faxbridge.intake.clean import clean_message_id, clean_text, printable
from faxbridge.mail.transport import maildir_path
from faxbridge.outbound.report import REPORT_HELD
from tests.conftest import arun_faxbridge, wait_for, wait_until
from tests.smtp_client import send

FAST = {"report_poll_min_seconds": 0.1, "report_poll_max_seconds": 0.3}
SENDER = "alice@example.com"
# What must never reach a header, a log line or a terminal (TAB aside).
CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
FINAL = ("done", "failed", "held")


def fold(value: bytes, width: int = 70) -> bytes:
    """A long value as a legitimately folded header (each line under SMTP's limit)."""
    return b"\r\n ".join(value[i:i + width] for i in range(0, len(value), width)) or b"x"


def encoded_word(text: str, how: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    if how == "b":
        return b"=?utf-8?b?" + base64.b64encode(data) + b"?="
    q = b"".join(bytes([c]) if 0x21 <= c <= 0x7e and c not in b"=?_" else b"=%02X" % c
                 for c in data)
    return b"=?utf-8?q?" + q + b"?="


HOSTILE_CHARS = st.sampled_from(
    ["\x1b]0;owned\x07", "\x1b[31m", "\x07", "\x00", "\x7f", "\x9b", "\r\n", "\n", "\r",
     "\u2028", "\t", "Bcc: eve@example.com", "%d", "<", ">", "@", "ä", "\ud800", "x"])
TEXT = st.lists(HOSTILE_CHARS, max_size=12).map("".join)


@st.composite
def hostile(draw: Any) -> bytes:
    """One header value as raw bytes, as a hostile client would write it."""
    kind = draw(st.sampled_from(["folded", "encoded", "raw", "8bit", "long"]))
    text = draw(TEXT)
    if kind == "folded":
        head = draw(st.sampled_from([b"<id@host>", b"plain", b""]))
        return head + b"\r\n " + clean_bytes(text) + b"\r\n\tBcc: eve@example.com"
    if kind == "encoded":
        return encoded_word(text, draw(st.sampled_from(["b", "q"])))
    if kind == "raw":
        return clean_bytes(text)
    if kind == "8bit":
        return draw(st.binary(min_size=1, max_size=40)).replace(b"\r", b"").replace(b"\n", b"")
    return fold(b"A" * draw(st.integers(1000, 20000)))


def clean_bytes(text: str) -> bytes:
    """The text as header bytes, control characters kept, line breaks dropped (a raw
    CR/LF would end the header rather than put a control character into it)."""
    return text.encode("utf-8", "replace").replace(b"\r", b"").replace(b"\n", b"")


def raw_mail(subject: bytes, msgid: bytes, from_name: bytes, to_name: bytes,
             filename: bytes) -> bytes:
    return (b"From: \"" + from_name + b"\" <" + SENDER.encode() + b">\r\n"
            b"To: \"" + to_name + b"\" <+4989123456@fax.local>\r\n"
            b"Subject: " + subject + b"\r\n"
            b"Message-ID: " + msgid + b"\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"b0undary\"\r\n\r\n"
            b"--b0undary\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease fax.\r\n"
            b"--b0undary\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Disposition: attachment; filename=\"" + filename + b"\"\r\n\r\n"
            b"The attachment.\r\n--b0undary--\r\n")


def reports(bridge: Any) -> list[email.message.EmailMessage]:
    path = maildir_path(bridge.cfg.storage.data_dir / "mail", SENDER)
    if not (path / "cur").exists():
        return []
    return [email.message_from_bytes(m.as_bytes(), policy=email.policy.default)
            for m in mailbox.Maildir(str(path), create=False)]


def report_of(bridge: Any, job_id: str) -> email.message.EmailMessage | None:
    for m in reports(bridge):
        if m["X-Faxbridge-Job"] == job_id:  # the report names its job in a header
            return m
    return None


def assert_clean_headers(msg: email.message.EmailMessage) -> None:
    raw = msg.as_bytes()
    head = raw.split(b"\n\n", 1)[0].replace(b"\r\n", b"\n").replace(b"\n ", b" ")
    head = head.replace(b"\n\t", b" ")
    for line in head.split(b"\n"):
        assert not re.search(rb"[\x00-\x08\x0b-\x1f\x7f]", line), line[:200]
    for name, value in msg.items():
        assert not CONTROL.search(str(value)), (name, str(value)[:200])


def no_control_in_log(caplog: Any) -> None:
    for rec in caplog.records:
        if rec.name.startswith("faxbridge"):
            text = rec.getMessage()
            assert not re.search("[\x00-\x08\x0b-\x1f\x7f\x1b\x07]", text), text[:300]


def test_clean_helpers_are_total() -> None:
    """The pure helpers: a folded Message-ID keeps its token, none is dropped, and
    nothing they return holds a control character."""
    assert clean_message_id("<id@host>\r\n Bcc: eve@example.com") == "<id@host>"
    assert clean_message_id("  <a.b@[127.0.0.1]> (comment)") == "<a.b@[127.0.0.1]>"
    assert clean_message_id("no id here") is None
    assert clean_message_id("<\x1b[31m@host>") is None
    assert clean_text("a\r\n\tb\x1b]0;t\x07c\ud800") == "a b ]0;t c\ufffd"
    assert len(clean_text("x" * 1_000_000)) == 1000
    assert printable("line 1\n\x1b[31mline 2\x07") == "line 1\n\ufffd[31mline 2\ufffd"


async def test_hostile_headers_end_in_a_final_state_with_a_clean_report(make_bridge, caplog):
    caplog.set_level(logging.INFO, logger="faxbridge")
    bridge = await make_bridge(fax=FAST)
    loop = asyncio.get_running_loop()

    def on_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    accepted: list[str] = []

    @settings(max_examples=25, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(subject=hostile(), msgid=hostile(), from_name=hostile(), to_name=hostile(),
           filename=hostile())
    # the mail of the issue: a folded Message-ID carrying a Bcc continuation line
    @example(subject=b"Invoice", msgid=b"<id@host>\r\n Bcc: eve@example.com",
             from_name=b"Alice", to_name=b"Office", filename=b"a.txt")
    # a megabyte of subject, folded into legal lines
    @example(subject=fold(b"S" * 1_000_000), msgid=b"<big@host>", from_name=b"A",
             to_name=b"B", filename=b"a.txt")
    # ESC / BEL sequences in every field, raw and encoded
    @example(subject=b"\x1b]0;owned\x07\x1b[31mred", msgid=b"<\x1b[31m@x>",
             from_name=encoded_word("\x1b[2J\r\nBcc: eve", "b"),
             to_name=encoded_word("\x07\r\n", "q"),
             filename=encoded_word("\x1b]0;t\x07.txt", "b"))
    def check(subject: bytes, msgid: bytes, from_name: bytes, to_name: bytes,
              filename: bytes) -> None:
        raw = raw_mail(subject, msgid, from_name, to_name, filename)
        t = asyncio.run_coroutine_threadsafe(
            send(bridge.smtp_address, raw, mail_from=SENDER,
                 rcpts=["+4989123456@fax.local"]), loop).result(120)
        if t.job_id is None:  # refused: a precise reply, no job to follow
            assert t.data is None or 400 <= t.data[0] < 600, t
            return
        accepted.append(t.job_id)
        job = wait_until(lambda: (j := on_loop(bridge.db.run(bridge.store.job, t.job_id)))
                         and j.state in FINAL and j, 60, f"job {t.job_id} final")
        if job.state == "held":
            assert job.last_error, "a held job says why"
            return
        report = wait_until(lambda: report_of(bridge, t.job_id), 60, f"report of {t.job_id}")
        assert_clean_headers(report)
        if job.message_id:
            assert clean_message_id(job.message_id) == job.message_id
            assert report["In-Reply-To"] == job.message_id
        assert not CONTROL.search(job.subject or "")

    await asyncio.to_thread(check)
    assert len(accepted) >= 10, accepted  # the generators reach the report path
    no_control_in_log(caplog)


async def test_folded_message_id_report_threads_under_the_clean_id(make_bridge):
    bridge = await make_bridge(fax=FAST)
    raw = raw_mail(b"Invoice 4711", b"<id@host>\r\n Bcc: eve@example.com", b"Alice",
                   b"Office", b"invoice.txt")
    t = await send(bridge.smtp_address, raw, mail_from=SENDER,
                   rcpts=["+4989123456@fax.local"])
    assert t.job_id, t
    job = await wait_for(lambda: (j := bridge.store.job(t.job_id)) and j.state in FINAL and j)
    assert job.state == "done", (job.state, job.last_error)
    assert job.message_id == "<id@host>"
    report = await wait_for(lambda: report_of(bridge, t.job_id))
    assert report["In-Reply-To"] == "<id@host>" == report["References"]
    assert "Bcc" not in report and "eve@example.com" not in report.as_string()
    assert_clean_headers(report)


async def test_jobs_output_holds_no_escape(make_bridge):
    bridge = await make_bridge(fax=FAST)
    raw = raw_mail(b"=?utf-8?b?" + base64.b64encode(b"\x1b]0;owned\x07\x1b[31mred") + b"?=",
                   b"<e@x>", b"A", encoded_word("\x1b[2J", "b"),
                   encoded_word("\x1b[31mevil\x07.txt", "b"))
    t = await send(bridge.smtp_address, raw, mail_from=SENDER,
                   rcpts=["+4989123456@fax.local"])
    assert t.job_id, t
    await wait_for(lambda: (j := bridge.store.job(t.job_id)) and j.state in FINAL)
    data_dir = str(bridge.cfg.storage.data_dir)
    listed = (await arun_faxbridge("jobs", "--data-dir", data_dir)).stdout
    shown = (await arun_faxbridge("jobs", "show", t.job_id, "--data-dir", data_dir)).stdout
    logged = (await arun_faxbridge("log", "show", "1", "--data-dir", data_dir)).stdout
    assert t.job_id in listed and "red" in listed
    for out in (listed, shown, logged):
        assert "\x1b" not in out and "\x07" not in out, out


async def test_a_report_that_cannot_be_composed_holds_the_job_with_its_reason(make_bridge,
                                                                               caplog):
    """A row the intake did not normalise (stored by an older version): its folded
    Message-ID makes its report impossible to write. The outcome is recorded, the job
    held with the reason (shown by `faxbridge jobs`, release refused: the fax went
    out), the bridge stays ready, and no poll logs a traceback."""
    caplog.set_level(logging.INFO, logger="faxbridge")
    bridge = await make_bridge(fax=FAST, simulator={"complete_after": 3600})
    bridge.health.metrics.mail_grace_seconds = 0  # any lasting failure: not ready at once
    raw = raw_mail(b"Invoice", b"<ok@host>", b"A", b"B", b"a.txt")
    t = await send(bridge.smtp_address, raw, mail_from=SENDER,
                   rcpts=["+4989123456@fax.local"])
    await wait_for(lambda: bridge.store.job(t.job_id).state == "submitted")
    db = bridge.cfg.storage.data_dir / "faxbridge.sqlite3"
    with sqlite3.connect(db) as c:
        c.execute("UPDATE jobs SET message_id=? WHERE id=?",
                  ("<id@host>\r\n Bcc: eve@example.com", t.job_id))
    c.close()
    # a poll claimed before the update holds the old row: wait for two polls after it
    # (the tracker polls one job at a time, so the second one read the new row)
    changed = time.time()
    await wait_for(lambda: len([e for e in bridge.store.job_events(t.job_id)
                                if e.kind == "poll" and e.ts > changed]) >= 2)
    for j in bridge.sim_state.jobs:  # the fax completes now; the next poll finds it
        j.completes_at = time.time()
    job = await wait_for(lambda: (j := bridge.store.job(t.job_id)) and j.state != "submitted"
                         and j)
    assert job.state == "held", (job.state, job.last_error)
    assert job.last_error.startswith(REPORT_HELD), job.last_error
    assert "\n" not in job.last_error and "\r" not in job.last_error
    assert [r.status for r in bridge.store.job_recipients(t.job_id)] == ["OK"]
    async with httpx.AsyncClient() as c:
        ready = await c.get(f"{bridge.http_server.url}/readyz")
    assert ready.status_code == 200, ready.json()
    data_dir = str(bridge.cfg.storage.data_dir)
    listed = (await arun_faxbridge("jobs", "--data-dir", data_dir)).stdout
    assert "held" in listed and REPORT_HELD in listed, listed
    out = await arun_faxbridge("jobs", "release", t.job_id, "--data-dir", data_dir)
    assert out.returncode == 1 and "send the fax again" in out.stdout, out.stdout
    assert bridge.store.job(t.job_id).state == "held"
    # held is final: the tracker no longer polls it, and nothing logged a traceback
    polls = len([e for e in bridge.store.job_events(t.job_id) if e.kind == "poll"])
    await wait_for(lambda: bridge.store.job(t.job_id).updated < time.time() - 0.5)
    assert len([e for e in bridge.store.job_events(t.job_id) if e.kind == "poll"]) == polls
    assert not [r for r in caplog.records if r.exc_info], [
        r.getMessage() for r in caplog.records if r.exc_info]


async def test_a_status_push_for_a_poison_job_holds_it_and_answers_2xx(make_bridge):
    """The push path: the outcome is committed (the job held with its results), so the
    push is answered 200; Retarus has nothing to send again."""
    # polls far apart: the simulator's status push is what ends the job
    bridge = await make_bridge(fax={"report_poll_min_seconds": 600,
                                    "report_poll_max_seconds": 600},
                               simulator={"complete_after": 3})
    raw = raw_mail(b"Invoice", b"<ok@host>", b"A", b"B", b"a.txt")
    t = await send(bridge.smtp_address, raw, mail_from=SENDER,
                   rcpts=["+4989123456@fax.local"])
    await wait_for(lambda: bridge.store.job(t.job_id).state == "submitted")
    with sqlite3.connect(bridge.cfg.storage.data_dir / "faxbridge.sqlite3") as c:
        c.execute("UPDATE jobs SET message_id=? WHERE id=?",
                  ("<id@host>\r\n Bcc: eve@example.com", t.job_id))
    c.close()
    sim_job = bridge.sim_state.jobs[0]
    await wait_for(lambda: sim_job.pushes)
    assert [p.get("status") for p in sim_job.pushes] == [200], sim_job.pushes
    job = bridge.store.job(t.job_id)
    assert job.state == "held" and job.last_error.startswith(REPORT_HELD), job
    held = [e.detail for e in bridge.store.job_events(t.job_id) if e.kind == "held"]
    assert len(held) == 1 and "(push)" in held[0], held


async def test_a_long_subject_with_a_literal_encoded_word_gets_its_report(make_bridge):
    """The fuzz run's find: a long subject whose text holds "=?" (here an encoded
    word that decodes to a literal "=?utf-8?q?x?=") made the report's Subject fold
    with a line break, composing failed and the job was held. Now the report is
    sent, and its Subject holds the sender's text exactly."""
    bridge = await make_bridge(fax=FAST)
    subject = "Befund =?utf-8?q?x?= " + "x" * 150 + " Ende"
    raw = raw_mail(b"Befund " + encoded_word("=?utf-8?q?x?=", "b") + b" " + b"x" * 150
                   + b" Ende", b"<long@host>", b"Alice", b"Office", b"a.txt")
    t = await send(bridge.smtp_address, raw, mail_from=SENDER,
                   rcpts=["+4989123456@fax.local"])
    assert t.job_id, t
    job = await wait_for(lambda: (j := bridge.store.job(t.job_id)) and j.state in FINAL and j)
    assert job.subject == subject
    assert job.state == "done", (job.state, job.last_error)
    report = await wait_for(lambda: report_of(bridge, t.job_id))
    assert subject in str(report["Subject"]), report["Subject"]
    assert_clean_headers(report)
