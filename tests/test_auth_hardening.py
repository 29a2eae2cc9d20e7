"""SMTP AUTH against guessing, over real sockets: the password hash runs off the
event loop, an unknown user costs a hash like a known one, failures delay the
next attempt (per client address and per user), too many end the session with
421, and every failure is logged with the peer."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from faxbridge.config import SmtpUser
from faxbridge.errors import ConfigError
from faxbridge.smtp import auth as smtp_auth
from faxbridge.smtp.auth import hash_password, verify_password
from tests.conftest import bridge_config, wait_for

ITER = 200_000  # the production cost: the timing tests need a hash that takes a while


def tls_files(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    return {"tls_cert": tmp_path / "cert.pem", "tls_key": tmp_path / "key.pem"}


async def auth_bridge(make_bridge: Any, tmp_path: Path, iterations: int = 1000,
                      **smtp: Any) -> Any:
    users = [SmtpUser(name="scanner", password_hash=await asyncio.to_thread(
        hash_password, "s3cret", iterations)).model_dump()]
    return await make_bridge(smtp={"trusted_networks": [], "users": users,
                                   **tls_files(tmp_path), **smtp})


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, address: str, tls: bool = True, source: str = "127.0.0.1") -> Client:
        host, port = address.split(":")
        c = cls(*await asyncio.open_connection(host, int(port), local_addr=(source, 0)))
        assert (await c.reply()).startswith("220")
        assert (await c.cmd("EHLO test.example")).startswith("250")
        if tls:
            assert (await c.cmd("STARTTLS")).startswith("220")
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            await c.w.start_tls(ctx)
            assert "AUTH" in await c.cmd("EHLO test.example")
        return c

    async def reply(self) -> str:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.r.readline(), 60)).decode()
            assert line, "connection closed"
            lines.append(line.rstrip())
            if line[3:4] != "-":
                return "\n".join(lines)

    async def cmd(self, line: str) -> str:
        self.w.write(line.encode() + b"\r\n")
        return await self.reply()

    async def auth(self, user: str, password: str) -> str:
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return await self.cmd(f"AUTH PLAIN {blob}")

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.r.read(), 20) == b""

    def close(self) -> None:
        self.w.close()


async def timed_auth(c: Client, user: str, password: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    reply = await c.auth(user, password)
    return time.perf_counter() - t0, reply


async def test_unknown_user_costs_a_hash_like_a_known_one(make_bridge, tmp_path):
    bridge = await auth_bridge(make_bridge, tmp_path, ITER, auth_failure_delay=0,
                               auth_max_failures=20)
    encoded = hash_password("x", ITER)
    hash_s = min(_timed(verify_password, "y", encoded) for _ in range(3))
    c = await Client.open(bridge.smtp_address)
    wrong, unknown = [], []
    for _ in range(3):
        t, reply = await timed_auth(c, "scanner", "wrong")
        assert reply.startswith("535 5.7.8"), reply
        wrong.append(t)
        t, reply = await timed_auth(c, "nobody", "wrong")
        assert reply.startswith("535 5.7.8"), reply  # the same reply as a wrong password
        unknown.append(t)
    print(f"hash {hash_s * 1000:.1f} ms; wrong password {min(wrong) * 1000:.1f} ms, "
          f"unknown user {min(unknown) * 1000:.1f} ms")
    # Both paths run PBKDF2 (without the dummy hash the unknown user answered in 0.1 ms)
    assert min(wrong) > hash_s / 4 and min(unknown) > hash_s / 4, (hash_s, wrong, unknown)
    assert (await c.auth("scanner", "s3cret")).startswith("235")
    c.close()


def _timed(fn: Any, *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


async def test_too_many_failures_end_the_session_with_421(make_bridge, tmp_path):
    bridge = await auth_bridge(make_bridge, tmp_path, auth_failure_delay=0, auth_max_failures=3)
    c = await Client.open(bridge.smtp_address)
    assert (await c.auth("scanner", "a")).startswith("535 5.7.8")
    assert (await c.auth("nobody", "b")).startswith("535 5.7.8")
    assert await c.auth("scanner", "c") == "421 4.7.0 Too many failed authentication attempts"
    assert await c.closed()
    # a new session may try again (and succeed: the limit is per session)
    c = await Client.open(bridge.smtp_address)
    assert (await c.auth("scanner", "s3cret")).startswith("235")
    assert (await c.cmd("QUIT")).startswith("221")


async def test_failures_delay_the_next_attempt_per_address_and_per_user(make_bridge, tmp_path):
    bridge = await auth_bridge(make_bridge, tmp_path, auth_failure_delay=0.3,
                               auth_failure_delay_max=0.6, auth_max_failures=10)
    c = await Client.open(bridge.smtp_address)
    t1, _ = await timed_auth(c, "scanner", "a")  # no failure yet: no delay
    t2, _ = await timed_auth(c, "scanner", "b")  # after 1 failure: 0.3 s
    t3, _ = await timed_auth(c, "scanner", "c")  # after 2: 0.6 s (the cap)
    t4, _ = await timed_auth(c, "scanner", "d")  # capped
    print(f"attempts took {t1:.2f} {t2:.2f} {t3:.2f} {t4:.2f} s")
    assert t2 >= 0.3 and t3 >= 0.6 and t4 >= 0.6, (t1, t2, t3, t4)
    c.close()
    # the address is remembered across sessions …
    c = await Client.open(bridge.smtp_address)
    t, _ = await timed_auth(c, "other", "x")
    assert t >= 0.6, t
    c.close()
    # … and the user across addresses
    c = await Client.open(bridge.smtp_address, source="127.0.0.2")
    t, _ = await timed_auth(c, "scanner", "e")
    assert t >= 0.6, t
    # a success clears the user's and the address's record
    c.close()
    c = await Client.open(bridge.smtp_address, source="127.0.0.3")
    t, reply = await timed_auth(c, "scanner", "s3cret")
    assert reply.startswith("235") and t >= 0.6, (t, reply)
    c.close()
    c = await Client.open(bridge.smtp_address, source="127.0.0.3")
    t, reply = await timed_auth(c, "scanner", "wrong")
    assert reply.startswith("535") and t < 0.3, (t, reply)
    c.close()


async def test_failed_auth_is_logged_with_peer_and_sanitised_user(make_bridge, tmp_path,
                                                                  caplog):
    caplog.set_level(logging.WARNING, logger="faxbridge.smtp")
    bridge = await auth_bridge(make_bridge, tmp_path, auth_failure_delay=0)
    c = await Client.open(bridge.smtp_address, source="127.0.0.5")
    assert (await c.auth("evil\x1b]0;pwned\x07user", "x")).startswith("535")
    c.close()
    lines = [r.getMessage() for r in caplog.records if "AUTH PLAIN failed" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert "peer=127.0.0.5" in lines[0] and "user=evil\\x1b]0;pwned\\x07user" in lines[0], lines
    assert "\x1b" not in lines[0] and "\x07" not in lines[0]


async def test_hashing_does_not_hold_other_sessions(make_bridge, tmp_path):
    """A hash that takes about a second is in progress; another client's NOOP is
    answered before it ends. Were the hash on the event loop, no reply could be
    sent until it finished, so the AUTH reply would come first."""
    bridge = await auth_bridge(make_bridge, tmp_path, 5_000_000, auth_failure_delay=0)
    slow = await Client.open(bridge.smtp_address)
    bystander = await Client.open(bridge.smtp_address, tls=False)
    order: list[str] = []

    async def auth() -> None:
        await slow.auth("scanner", "wrong")
        order.append("auth")

    task = asyncio.ensure_future(auth())
    await wait_for(lambda: smtp_auth.in_progress > 0, timeout=20)  # the hash has begun
    assert (await bystander.cmd("NOOP")).startswith("250")
    order.append("noop")
    await task
    assert order == ["noop", "auth"], order
    slow.close()
    bystander.close()


async def test_bystander_completes_during_an_auth_flood(make_bridge, tmp_path):
    bridge = await auth_bridge(make_bridge, tmp_path, ITER, auth_failure_delay=0)
    attempts = 0
    stop = asyncio.Event()

    async def flood() -> None:
        nonlocal attempts
        while not stop.is_set():
            c = await Client.open(bridge.smtp_address)
            while not stop.is_set():
                reply = await c.auth("scanner", "guess")
                attempts += 1
                if reply.startswith("421"):
                    break
            c.close()

    flooders = [asyncio.ensure_future(flood()) for _ in range(5)]
    try:
        await wait_for(lambda: attempts >= 10, timeout=60)
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            c = await Client.open(bridge.smtp_address, tls=False)
            assert (await c.cmd("NOOP")).startswith("250")
            assert (await c.cmd("QUIT")).startswith("221")
            c.close()
            times.append(time.perf_counter() - t0)
        during = attempts
    finally:
        stop.set()
        await asyncio.gather(*flooders, return_exceptions=True)
    times.sort()
    print(f"bystander EHLO/NOOP/QUIT under flood: median {times[5] * 1000:.1f} ms, "
          f"max {times[-1] * 1000:.1f} ms; {during} AUTH attempts")
    assert len(times) == 10


@pytest.mark.parametrize("smtp, problem", [
    ({"auth_max_failures": 0}, "smtp.auth_max_failures"),
    ({"auth_failure_delay": 1.0, "auth_failure_delay_max": 0.5}, "auth_failure_delay_max"),
])
def test_bad_auth_limits_are_named(tmp_path, smtp, problem):
    with pytest.raises(ConfigError) as info:
        bridge_config(tmp_path, smtp=smtp)
    assert problem in str(info.value), str(info.value)
