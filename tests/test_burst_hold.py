"""fax.burst_hold_seconds: while jobs are accepted at 50 or more a second, the
submitter leaves them queued for up to that long (the listener has the CPU for
the clients), then submits as usual; a lone mail is submitted at once."""

from __future__ import annotations

import asyncio
import smtplib
import sys
from email.message import EmailMessage

from faxbridge.app import Bridge, _WakeReader
from faxbridge.outbound.submit import BURST_RATE, Submitter, burst_hold
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.wakeups import Wakeups
from tests.conftest import bridge_config, wait_for

RCPT = "+4989123456@fax.local"


def test_burst_hold_decisions():
    # below the burst rate: never held, no burst
    assert burst_hold(BURST_RATE - 1, None, 100.0, 5.0) == (False, None)
    # the burst begins: held, from now
    assert burst_hold(BURST_RATE, None, 100.0, 5.0) == (True, 100.0)
    # still within the hold
    assert burst_hold(50, 100.0, 104.9, 5.0) == (True, 100.0)
    # the hold is over while the burst goes on: submit as usual, same burst
    assert burst_hold(50, 100.0, 105.0, 5.0) == (False, 100.0)
    # the pace dropped: the burst is over (a new one may hold again)
    assert burst_hold(3, 100.0, 110.0, 5.0) == (False, None)
    # 0 turns it off
    assert burst_hold(500, None, 100.0, 0.0) == (False, None)


async def test_the_pace_counts_accepts_of_the_last_second_across_the_pipe():
    wk = Wakeups()
    wk.accepted(4, now=10.0)
    wk.accepted(1, now=10.8)
    assert wk.accept_rate(10.9) == 5
    assert wk.accept_rate(11.5) == 1  # the four of 10.0 are older than a second
    assert wk.submit.is_set()
    # the workers process: every "a" byte from the listener is one accepted job
    child = Wakeups()
    _WakeReader(child, lambda: None).data_received(b"aaasa")
    assert child.accept_rate() == 4 and child.submit.is_set()


async def test_the_listener_tells_the_workers_process_of_each_accepted_job(tmp_path):
    """`serve`'s listener writes one "a" per accepted job down its workers process's
    stdin (what the pace above counts). The child here is a process that only
    records what arrives on its stdin until the listener closes it."""
    record = tmp_path / "stdin.bin"
    child = [sys.executable, "-c", "import sys; data = sys.stdin.buffer.read(); "
             f"open({str(record)!r}, 'wb').write(data)"]
    bridge = Bridge(bridge_config(tmp_path), "accept", child)
    await bridge.start()
    try:
        await asyncio.to_thread(send, bridge.smtp_address, 3)
    finally:
        await bridge.stop()  # ends the child's stdin: it writes what it got
    got = record.read_bytes()
    assert got.count(b"a") == 3, got
    assert set(got) <= set(b"asmi"), got  # only wake-up bytes


def mail(n: int) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "alice@example.com", RCPT, f"burst {n}"
    m.set_content("Please fax this.")
    return m.as_bytes().replace(b"\n", b"\r\n")


def send(address: str, count: int) -> None:
    host, port = address.rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=60) as s:
        for n in range(count):
            s.sendmail("alice@example.com", [RCPT], mail(n))


async def stop_submitter(bridge) -> None:  # noqa: ANN001
    """The bridge's own submitter stops: the one under test claims by our clock."""
    for runner, task in bridge._runners:
        if isinstance(runner, Submitter):
            runner.stop()
            await task


async def test_the_submitter_holds_queued_jobs_during_a_burst(make_bridge):
    bridge = await make_bridge()
    await stop_submitter(bridge)
    await asyncio.to_thread(send, bridge.smtp_address, 3)
    await wait_for(lambda: len(bridge.store.jobs_in(("queued",))) == 3)
    clock = [100.0]
    wk = Wakeups()
    sub = Submitter(bridge.db, bridge.config, bridge.retarus, bridge.health, wk,
                    bridge.finisher, clock=lambda: clock[0])
    wk.accepted(BURST_RATE, now=99.9)  # a burst: that many jobs in the last second
    assert await sub.claim(8, frozenset()) == []
    clock[0] = 104.5
    wk.accepted(BURST_RATE, now=104.4)  # still arriving, within the 5 s hold
    assert await sub.claim(8, frozenset()) == []
    clock[0] = 105.1
    wk.accepted(BURST_RATE, now=105.0)  # still arriving, but the hold is over
    assert len(await sub.claim(8, frozenset())) == 3
    # a new burst after a quiet second holds again; then the pace drops
    clock[0] = 200.0
    assert len(await sub.claim(8, frozenset())) == 3 and sub.burst_since is None
    wk.accepted(BURST_RATE, now=200.0)
    assert await sub.claim(8, frozenset()) == []
    clock[0] = 201.5
    assert len(await sub.claim(8, frozenset())) == 3


async def test_a_lone_mail_is_not_held_and_zero_never_holds(make_bridge):
    bridge = await make_bridge(fax={"burst_hold_seconds": 0})
    await stop_submitter(bridge)
    await asyncio.to_thread(send, bridge.smtp_address, 1)
    await wait_for(lambda: len(bridge.store.jobs_in(("queued",))) == 1)
    wk = Wakeups()
    sub = Submitter(bridge.db, bridge.config, bridge.retarus, bridge.health, wk,
                    bridge.finisher, clock=lambda: 100.0)
    wk.accepted(500, now=100.0)  # any pace: burst_hold_seconds = 0 never holds
    assert len(await sub.claim(8, frozenset())) == 1
    live = Wakeups()  # the default hold, one mail: not a burst
    five = bridge.cfg.model_copy(update={"fax": bridge.cfg.fax.model_copy(
        update={"burst_hold_seconds": 5.0})})
    sub = Submitter(bridge.db, ConfigProvider(five), bridge.retarus, bridge.health, live,
                    bridge.finisher, clock=lambda: 100.0)
    live.accepted(1, now=100.0)
    assert len(await sub.claim(8, frozenset())) == 1
