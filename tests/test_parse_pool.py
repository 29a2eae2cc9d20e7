"""MIME parsing in a child process (smtp.parse_processes, runtime/parsers.py): mails
up to 1 MiB are parsed there, larger ones in a thread; a child that dies fails only
the mail it held (451, nothing queued) and is replaced."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import smtplib
from email.message import EmailMessage

import pytest

from faxbridge.runtime.parsers import PROCESS_MAX_BYTES, ParsePool, ParserUnavailable
from tests.conftest import wait_for

RCPT = "+4989123456@fax.local"
PID = b"__import__('os').getpid()"


@pytest.fixture
async def pool():
    p = ParsePool(1)
    p.start()
    await wait_for(lambda: p.pids(), timeout=60)
    yield p
    await p.close()


async def test_small_input_runs_in_the_child_large_in_a_thread(pool):
    [child] = pool.pids()
    assert child != os.getpid()
    assert await pool.run(eval, PID) == child
    # beyond PROCESS_MAX_BYTES: this process (a thread of its pool)
    assert await pool.run(eval, PID + b" " * PROCESS_MAX_BYTES) == os.getpid()
    assert pool.served == 1


async def test_an_exception_in_the_child_reaches_the_caller(pool):
    with pytest.raises(ZeroDivisionError):
        await pool.run(eval, b"1 / 0")
    assert await pool.run(eval, b"6 * 7") == 42  # the child goes on


async def test_a_child_that_dies_fails_its_call_and_is_replaced(pool):
    [first] = pool.pids()
    with pytest.raises(ParserUnavailable):
        await pool.run(exec, b"import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    await wait_for(lambda: pool.pids() and pool.pids() != [first], timeout=60)
    [second] = pool.pids()
    assert await pool.run(eval, PID) == second


async def test_no_children_with_zero_processes():
    p = ParsePool(0)
    p.start()
    try:
        assert p.pids() == []
        assert await p.run(eval, PID) == os.getpid()
    finally:
        await p.close()


def mail(subject: str) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "alice@example.com", f'"Dr. Who" <{RCPT}>', subject
    m.set_content("Please fax the attachment.")
    m.add_attachment(b"%PDF-1.4\n%%EOF\n", maintype="application", subtype="pdf",
                     filename="doc.pdf")
    return m


def send(address: str, m: EmailMessage) -> tuple[int, bytes]:
    host, port = address.rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=60) as s:
        s.ehlo()
        s.mail("alice@example.com")
        s.rcpt(RCPT)
        return s.data(m.as_bytes().replace(b"\n", b"\r\n"))


async def test_the_bridge_parses_mails_in_its_parse_process(make_bridge):
    bridge = await make_bridge()
    await wait_for(lambda: bridge.cpu.pids(), timeout=60)
    before = bridge.cpu.served
    code, reply = await asyncio.to_thread(send, bridge.smtp_address, mail("in the child"))
    assert code == 250, reply
    assert bridge.cpu.served == before + 1
    job_id = reply.decode().split("Queued as ")[1].split(":")[0]
    [rec] = bridge.store.job_recipients(job_id)
    assert rec.display_name == "Dr. Who"
    assert [d.name for d in bridge.store.job_documents(job_id)] == ["mail-body.txt",
                                                                   "doc.pdf"]


async def test_a_mail_whose_parse_process_dies_gets_451_and_the_next_one_250(make_bridge):
    bridge = await make_bridge()
    await wait_for(lambda: bridge.cpu.pids(), timeout=60)
    [child] = bridge.cpu.pids()
    os.kill(child, signal.SIGSTOP)  # it takes the mail, but does not answer
    try:
        sending = asyncio.ensure_future(asyncio.to_thread(send, bridge.smtp_address,
                                                          mail("lost parser")))
        await wait_for(lambda: any(c.pending for c in bridge.cpu.children), timeout=60)
    finally:
        os.kill(child, signal.SIGKILL)
    code, reply = await sending
    assert code == 451, reply
    assert reply.startswith(b"4.3.0 Local error"), reply
    assert bridge.store.jobs_in(("queued", "submitting", "submitted", "done")) == []
    await wait_for(lambda: bridge.cpu.pids() and bridge.cpu.pids() != [child], timeout=60)
    code, reply = await asyncio.to_thread(send, bridge.smtp_address, mail("after"))
    assert code == 250, reply


async def test_a_stuck_parse_process_is_killed_at_its_deadline(make_bridge):
    bridge = await make_bridge()
    await wait_for(lambda: bridge.cpu.pids(), timeout=60)
    bridge.cpu.deadline = 1.0  # 30 s in service; the mechanism is the same
    [child] = bridge.cpu.pids()
    os.kill(child, signal.SIGSTOP)  # alive, but it will never answer
    try:
        # nobody kills it here: the pool must, or the mail (and every later one)
        # waits for the client's DATA timeout
        code, reply = await asyncio.to_thread(send, bridge.smtp_address, mail("stuck"))
        assert code == 451, reply
        assert reply.startswith(b"4.3.0 Local error"), reply
        assert bridge.store.jobs_in(("queued", "submitting", "submitted", "done")) == []
        await wait_for(lambda: not os.path.exists(f"/proc/{child}"), timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    await wait_for(lambda: bridge.cpu.pids() and bridge.cpu.pids() != [child], timeout=60)
    code, reply = await asyncio.to_thread(send, bridge.smtp_address, mail("after"))
    assert code == 250, reply
    assert bridge.cpu.pids() != [child]


async def test_parse_processes_zero_parses_in_threads(make_bridge):
    bridge = await make_bridge(smtp={"parse_processes": 0})
    code, reply = await asyncio.to_thread(send, bridge.smtp_address, mail("threads"))
    assert code == 250, reply
    assert bridge.cpu.pids() == [] and bridge.cpu.served == 0
