"""Rate limits count faxes (one per recipient number) per sender (the
authenticated user, else MAIL FROM), per client address and per recipient
number, and hold across concurrent sessions. Real SMTP sessions over sockets.

The issue's observation: `max_per_hour = 3` let through 5 mails from 5 sender
addresses, 8 from 8 concurrent sessions, and a mail to 20 recipients counted as
one fax."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from faxbridge.config import SmtpUser
from faxbridge.smtp.auth import hash_password
from tests.conftest import wait_for
from tests.smtp_async import Session, send_one
from tests.test_identity import tls_files

NUMBER = "+4989123456@fax.local"


def limited(limit: int = 3, by: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"name": "office", "match": ["net:127.0.0.0/8"],
                            "max_per_hour": limit, **kw}
    if by is not None:
        rule["rate_limit_by"] = by
    return rule


def numbers(n: int, start: int = 0) -> list[str]:
    return [f"+4930{1000000 + start + i}@fax.local" for i in range(n)]


def jobs_faxes(bridge) -> int:
    return sum(len(bridge.store.job_recipients(j.id)) for j in bridge.store.list_jobs())


async def test_user_limit_holds_across_five_sender_addresses(make_bridge, tmp_path: Path):
    """One authenticated user, five MAIL FROM addresses it may use: three faxes."""
    users = [SmtpUser(name="scanner", password_hash=hash_password("s3cret", 1000),
                      addresses=("scanner@example.com",), send_as=("*@copier.example",),
                      rule="office").model_dump()]
    bridge = await make_bridge(smtp={"trusted_networks": [], "users": users,
                                     **tls_files(tmp_path)},
                               senders=[limited(3, ["sender"])])
    results = [await send_one(bridge.smtp_address, f"floor{i}@copier.example", [NUMBER],
                              tls=True, login=("scanner", "s3cret")) for i in range(5)]
    assert [r[2] is not None and r[2].startswith("250") for r in results] == [True] * 3 + [
        False] * 2
    assert results[3][1] == [
        "450 4.7.1 Rate limit of rule 'office' reached (3 faxes in the last hour) for user "
        "scanner (max_per_hour 3); try again later"]
    assert len(bridge.store.list_jobs()) == 3


async def test_limit_holds_across_eight_concurrent_sessions(make_bridge, storage):
    """Eight sessions of one sender, all past RCPT before any reaches DATA: three are
    accepted, five get 450, and exactly three jobs are committed (on either store)."""
    bridge = await make_bridge(senders=[limited(3, ["sender"])], storage=storage)
    all_rcpt = asyncio.Barrier(8)

    async def one(i: int) -> tuple[str, str | None]:
        s = await Session.open(bridge.smtp_address)
        try:
            assert (await s.mail("alice@example.com")).startswith("250")
            rcpt = await s.rcpt(f"+4930{2000000 + i}@fax.local")
            await all_rcpt.wait()  # every session holds its RCPT answer before any DATA
            data = await s.data("alice@example.com", "x@fax.local") if rcpt.startswith(
                "250") else None
            return rcpt, data
        finally:
            await s.close()

    results = await asyncio.gather(*[one(i) for i in range(8)])
    accepted = [r for r in results if r[0].startswith("250")]
    refused = [r for r in results if not r[0].startswith("250")]
    assert len(accepted) == 3 and all(d and d.startswith("250 2.0.0") for _, d in accepted)
    assert len(refused) == 5
    assert all(r.startswith("450 4.7.1 Rate limit of rule 'office' reached (3 faxes in the "
                            "last hour) for sender alice@example.com") for r, _ in refused), refused
    assert len(bridge.store.list_jobs()) == 3
    assert bridge.handler.inflight.holding() == 0


async def test_an_abandoned_transaction_gives_its_hold_back(make_bridge):
    """A session that held a fax at RCPT and then gave up (RSET, or dropped the
    connection) no longer counts."""
    bridge = await make_bridge(senders=[limited(2, ["sender"])])
    a = await Session.open(bridge.smtp_address)
    b = await Session.open(bridge.smtp_address)
    for s in (a, b):
        await s.mail("alice@example.com")
        assert (await s.rcpt(NUMBER)).startswith("250")
    c = await Session.open(bridge.smtp_address)
    await c.mail("alice@example.com")
    assert (await c.rcpt(NUMBER)).startswith("450 4.7.1")
    assert (await a.cmd("RSET")).startswith("250")
    b.w.close()  # dropped without QUIT
    with contextlib.suppress(ConnectionError):
        await b.w.wait_closed()
    await wait_for(lambda: bridge.handler.inflight.holding() == 0)
    assert (await c.rcpt(NUMBER)).startswith("250")
    await c.close()
    await a.close()


async def test_limit_per_recipient_number(make_bridge, storage):
    """Three faxes to one number from three senders; the fourth sender is refused for
    that number, another number still goes."""
    bridge = await make_bridge(senders=[limited(3, ["number"])], storage=storage)
    for i in range(3):
        _, _, data = await send_one(bridge.smtp_address, f"user{i}@example.com", [NUMBER])
        assert data is not None and data.startswith("250"), data
    _, rcpts, data = await send_one(bridge.smtp_address, "user9@example.com",
                                    [NUMBER, "+4930123456@fax.local"])
    assert rcpts[0] == ("450 4.7.1 Rate limit of rule 'office' reached (3 faxes in the last "
                        "hour) to number +4989123456 (max_per_hour 3); try again later")
    assert rcpts[1].startswith("250") and data is not None and data.startswith("250")


async def test_limit_per_client_address(make_bridge, storage):
    """Three faxes from 127.0.0.1 under three sender addresses: the client's fourth
    is refused; 127.0.0.2 still sends."""
    bridge = await make_bridge(senders=[limited(3, ["client"])], storage=storage)
    for i in range(3):
        _, _, data = await send_one(bridge.smtp_address, f"user{i}@example.com",
                                    numbers(1, i))
        assert data is not None and data.startswith("250"), data
    _, rcpts, _ = await send_one(bridge.smtp_address, "user9@example.com", numbers(1, 9))
    assert rcpts == ["450 4.7.1 Rate limit of rule 'office' reached (3 faxes in the last "
                     "hour) for client address 127.0.0.1 (max_per_hour 3); try again later"]
    _, rcpts, data = await send_one(bridge.smtp_address, "user9@example.com", numbers(1, 9),
                                    source="127.0.0.2")
    assert rcpts[0].startswith("250") and data is not None and data.startswith("250")


async def test_twenty_recipients_count_as_twenty_faxes(make_bridge, storage):
    """max_per_hour 25: a mail to 20 numbers uses 20; the next mail gets 5 numbers
    through and 452 for the rest (the client sends those later)."""
    bridge = await make_bridge(smtp={"max_recipients": 50},
                               senders=[limited(25, ["sender"])], storage=storage)
    _, rcpts, data = await send_one(bridge.smtp_address, "alice@example.com", numbers(20))
    assert all(r.startswith("250") for r in rcpts) and data and data.startswith("250")
    assert jobs_faxes(bridge) == 20
    _, rcpts, data = await send_one(bridge.smtp_address, "alice@example.com",
                                    numbers(20, 100))
    assert [r[:3] for r in rcpts] == ["250"] * 5 + ["452"] * 15
    assert rcpts[5] == ("452 4.7.1 Rate limit of rule 'office' reached (25 faxes in the last "
                        "hour) for sender alice@example.com (max_per_hour 25); send to the "
                        "other recipients later")
    assert data is not None and data.startswith("250") and jobs_faxes(bridge) == 25
    _, rcpts, _ = await send_one(bridge.smtp_address, "alice@example.com", numbers(1, 500))
    assert rcpts[0].startswith("450 4.7.1 Rate limit of rule 'office' reached (25 faxes")


async def test_one_mail_to_more_numbers_than_the_limit(make_bridge):
    """max_per_hour 3 and a first mail to 20 numbers: 3 accepted, 17 refused (452)."""
    bridge = await make_bridge(senders=[limited(3)])
    _, rcpts, data = await send_one(bridge.smtp_address, "alice@example.com", numbers(20))
    assert [r[:9] for r in rcpts] == ["250 2.1.5"] * 3 + ["452 4.7.1"] * 17
    assert data is not None and jobs_faxes(bridge) == 3


@pytest.mark.parametrize("by, refused_for", [
    (None, "for sender alice@example.com"),  # default: all three, sender named first
    (["client", "number"], "for client address 127.0.0.1"),
])
async def test_default_scopes(make_bridge, by, refused_for):
    bridge = await make_bridge(senders=[limited(2, by)])
    for _ in range(2):
        assert (await send_one(bridge.smtp_address, "alice@example.com", [NUMBER]))[2]
    _, rcpts, _ = await send_one(bridge.smtp_address, "alice@example.com", [NUMBER])
    assert rcpts[0].startswith("450 4.7.1") and refused_for in rcpts[0], rcpts
