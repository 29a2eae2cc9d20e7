"""The README's Postfix recipe against a real Postfix: a private instance (its own
config, queue and data directories; loopback only) in front of the real bridge.

Needs Debian's postfix package and root (Postfix's master starts as root and its
daemons drop to the user postfix). Skipped without them, except under CI, where
a missing Postfix is a failure: these tests are the recipe's proof.
"""

from __future__ import annotations

import asyncio
import os
import re
import smtplib
import sys
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from faxbridge.app import Bridge
from tests import postfix
from tests.conftest import bridge_config, wait_for
from tests.relay import Relay

WHY = postfix.missing()
if WHY is not None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {WHY}: .ci/run must install it", pytrace=False)
    pytestmark = pytest.mark.skip(reason=WHY)

# The client of the MTA: not 127.0.0.1 (Postfix's own address towards the bridge),
# so the bridge can only know it through XFORWARD.
CLIENT = "127.0.0.2"


def recipe(bridge_port: int, relay_port: int) -> dict[str, str]:
    """main.cf as the README's "Behind Postfix" section has it (plus test plumbing:
    other mail goes to the capture relay, short retry times)."""
    return {
        "relay_domains": "fax.local",
        "transport_maps": f"inline:{{ fax.local=smtp:[127.0.0.1]:{bridge_port} }}",
        "message_size_limit": "26148864",
        "smtp_send_xforward_command": "yes",
        "smtpd_restriction_classes": "fax_senders",
        "fax_senders": "permit_mynetworks, permit_sasl_authenticated, reject",
        "smtpd_recipient_restrictions": (
            "check_recipient_access inline:{ {fax.local = fax_senders} }, "
            "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"),
        # the bounces to the sender (example.com) are caught by the test's relay
        "default_transport": f"smtp:[127.0.0.1]:{relay_port}",
        "relay_transport": f"smtp:[127.0.0.1]:{relay_port}",
        "smtp_tls_security_level": "none",
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
        "delay_warning_time": "0",
    }


def fax_mail(to: str, msgid: str) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = "alice@example.com", to, "Invoice", msgid
    m.set_content("Please find the invoice.")
    m.add_attachment(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
                     maintype="application", subtype="pdf", filename="invoice.pdf")
    return m


def submit(port: int, msg: EmailMessage, rcpts: list[str]) -> dict[str, tuple[int, bytes]]:
    """Send through Postfix from CLIENT; the refused recipients."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=(CLIENT, 0)) as s:
        return s.send_message(msg, from_addr="alice@example.com", to_addrs=rcpts)


def bridge_cfg(tmp_path: Path, smtp_listen: str = "127.0.0.1:0") -> Any:
    # Only CLIENT may fax: the bridge sees 127.0.0.1 (Postfix) as its peer, so a job
    # proves that the original client came through XFORWARD.
    return bridge_config(
        tmp_path, smtp={"listen": smtp_listen, "xforward_networks": ["127.0.0.1/32"]},
        senders=[{"name": "office-lan", "match": [f"net:{CLIENT}/32"]}])


@pytest.fixture
async def capture() -> AsyncIterator[Relay]:
    relay = await Relay().start()
    yield relay
    await relay.stop()


@pytest.fixture
async def mta() -> AsyncIterator[Callable[..., Any]]:
    started: list[postfix.PrivatePostfix] = []

    async def start(settings: dict[str, str],
                    extra: dict[str, dict[str, str]] | None = None) -> postfix.PrivatePostfix:
        p = postfix.PrivatePostfix(settings, extra)
        started.append(p)
        await asyncio.to_thread(p.start)
        return p

    yield start
    for p in started:
        await asyncio.to_thread(p.stop)


@pytest.fixture
async def bridges() -> AsyncIterator[list[Bridge]]:
    running: list[Bridge] = []
    yield running
    for b in running:
        await b.stop()


async def start_bridge(running: list[Bridge], cfg: Any) -> Bridge:
    bridge = Bridge(cfg)
    await bridge.start()
    running.append(bridge)
    return bridge


def port_of(address: str | None) -> int:
    assert address is not None
    return int(address.rpartition(":")[2])


async def test_valid_fax_becomes_a_job_with_the_original_client(tmp_path, mta, capture,
                                                                bridges):
    bridge = await start_bridge(bridges, bridge_cfg(tmp_path))
    pf = await mta(recipe(port_of(bridge.smtp_address), capture.port))
    refused = await asyncio.to_thread(submit, pf.port, fax_mail("+4989123456@fax.local",
                                                                "<pf-1@example.com>"),
                                      ["+4989123456@fax.local"])
    assert refused == {}
    store = bridge.store
    assert store is not None
    jobs = await wait_for(lambda: store.list_jobs(), timeout=60)
    assert len(jobs) == 1 and jobs[0].sender == "alice@example.com"
    assert jobs[0].message_id == "<pf-1@example.com>"
    log = store.list_log()
    assert log[0].ok and log[0].peer == f"{CLIENT} via 127.0.0.1", log[0]
    assert capture.messages == []  # no bounce


async def test_invalid_number_bounces_to_the_sender_with_the_bridges_reason(
        tmp_path, mta, capture, bridges):
    bridge = await start_bridge(bridges, bridge_cfg(tmp_path))
    pf = await mta(recipe(port_of(bridge.smtp_address), capture.port))
    refused = await asyncio.to_thread(submit, pf.port, fax_mail("+49891@fax.local",
                                                                "<pf-2@example.com>"),
                                      ["+49891@fax.local"])
    assert refused == {}  # Postfix took it; the bridge refuses it at RCPT
    await wait_for(lambda: capture.messages, timeout=90)
    mail_from, rcpts, raw = capture.messages[0]
    assert mail_from == "<>" and rcpts == ["alice@example.com"]  # a DSN, from <>
    dsn = raw.decode("utf-8", "replace")
    assert "multipart/report" in dsn and "report-type=delivery-status" in dsn
    assert "Status: 5.1.3" in dsn
    # the bridge's own words, as Postfix quotes them to the sender
    assert "553 5.1.3 Bad fax number in <+49891@fax.local>" in re.sub(r"\s+", " ", dsn), dsn
    assert bridge.store is not None and bridge.store.list_jobs() == []


async def test_bridge_down_postfix_defers_and_delivers_once_when_back(tmp_path, mta, capture,
                                                                      bridges):
    first = await start_bridge(bridges, bridge_cfg(tmp_path))
    address = first.smtp_address
    assert address is not None
    pf = await mta(recipe(port_of(address), capture.port))
    await first.stop()
    bridges.remove(first)
    refused = await asyncio.to_thread(submit, pf.port, fax_mail("+4989123456@fax.local",
                                                                "<pf-3@example.com>"),
                                      ["+4989123456@fax.local"])
    assert refused == {}
    # Postfix tried, could not connect, and keeps the mail
    await wait_for(lambda: "status=deferred" in pf.log(), timeout=60)
    assert "+4989123456@fax.local" in await asyncio.to_thread(pf.queue)
    # the bridge comes back on the same address (its store kept)
    bridge = await start_bridge(bridges, bridge_cfg(tmp_path, address))
    store = bridge.store
    assert store is not None
    try:
        await wait_for(lambda: store.list_jobs(), timeout=90)
        await wait_for(lambda: "status=sent" in pf.log(), timeout=60)
    except AssertionError as exc:
        for task in asyncio.all_tasks():  # where the bridge's sessions are, if stuck
            task.print_stack(file=sys.stderr)
        raise AssertionError(f"{exc}; Postfix's log:\n{pf.log()[-4000:]}\n"
                             f"its queue:\n{pf.queue()}\nthe bridge's SMTP log: "
                             f"{store.list_log()}") from None
    assert "Mail queue is empty" in await asyncio.to_thread(pf.queue)
    # once: one job, one delivery to the bridge, nothing left to retry
    assert len(store.list_jobs()) == 1
    assert len(re.findall(r"to=<\+4989123456@fax\.local>.*status=sent", pf.log())) == 1
    assert capture.messages == []


async def test_reject_unverified_recipient_probes_pass_for_valid_numbers(
        tmp_path, mta, capture, bridges):
    bridge = await start_bridge(bridges, bridge_cfg(tmp_path))
    settings = recipe(port_of(bridge.smtp_address), capture.port)
    # the hardening the README recommends, on a listener of its own
    pf = await mta(settings, {"verify": {"fax_senders": (
        "reject_unverified_recipient, permit_mynetworks, permit_sasl_authenticated, reject"),
        "unverified_recipient_reject_code": "550"}})

    def rcpt(address: str) -> tuple[int, str]:
        # a fresh session per address; the first answer may be 450 "verification in
        # progress" when the probe outlasts Postfix's wait: ask again, as a client does
        with smtplib.SMTP("127.0.0.1", pf.ports["verify"], timeout=60,
                          source_address=(CLIENT, 0)) as s:
            s.ehlo("client.example.com")
            s.mail("alice@example.com")
            code, text = s.rcpt(address)
            return code, text.decode()

    good = await _answer(rcpt, "+4989123456@fax.local")
    assert good[0] == 250, good
    bad = await _answer(rcpt, "+49891@fax.local")
    assert bad[0] == 550 and "553 5.1.3 Bad fax number in <+49891@fax.local>" in bad[1], bad
    store = bridge.store
    assert store is not None
    # the probes reached the bridge, from Postfix's probe sender, and ended before DATA
    probes = [r for r in store.list_log() if r.mail_from.startswith("double-bounce@")]
    assert len(probes) >= 2 and not any(r.ok for r in probes), probes
    assert store.list_jobs() == []


async def _answer(rcpt: Callable[[str], tuple[int, str]], address: str) -> tuple[int, str]:
    """The final RCPT answer: 450 "address verification in progress" is asked again."""
    async def final() -> tuple[int, str] | None:
        code, text = await asyncio.to_thread(rcpt, address)
        return None if code == 450 and "in progress" in text else (code, text)
    return await wait_for(final, timeout=90, interval=0.5)
