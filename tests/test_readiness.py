"""/readyz turns 503 while report or fax mails keep failing to be composed or
delivered, names why, counts it in /metrics, and turns 200 again on recovery.

Real failures only: a relay port where nothing listens, and built-in templates
that vanish under a running bridge (as a package upgrade or removal in place
does). The bridge composes from a copy of its own built-in templates so that the
test can take a file away and put it back."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import httpx

from faxbridge.mail.compose import Composer
from tests.conftest import sim_jobs, wait_for
from tests.relay import Relay
from tests.smtp_client import send
from tests.test_reports import FAST, MAIL_FAST, fax_mail, maildir

GRACE = 1.5


async def readyz(bridge: Any) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{bridge.http_server.url}/readyz")
    return r.status_code, r.json()


async def metric(bridge: Any, name: str, **labels: str) -> float:
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"{bridge.http_server.url}/metrics")).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}\{{{want}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def not_ready_for(bridge: Any, text: str, timeout: float = 20.0) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        code, body = await readyz(bridge)
        if code == 503 and any(text in r for r in body.get("reasons", [])):
            return body
        return None
    return await wait_for(probe, timeout=timeout, interval=0.1)


async def ready_again(bridge: Any, timeout: float = 20.0) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        code, body = await readyz(bridge)
        return body if code == 200 and body["checks"]["mail"] == "ok" else None
    return await wait_for(probe, timeout=timeout, interval=0.1)


async def _pushed(bridge: Any) -> list[dict[str, Any]] | None:
    jobs = await sim_jobs(bridge.sim_url)
    return jobs if jobs and jobs[0]["pushes"] else None


def own_templates(bridge: Any, tmp_path: Path) -> Path:
    """Let the running bridge compose from a copy of its built-in templates."""
    copy = tmp_path / "builtin-templates"
    shutil.copytree(bridge.composer.builtin_dir, copy)
    bridge.composer = Composer(None, bridge.cfg.smtp.hostname, builtin_dir=copy)
    return copy


async def test_relay_down_longer_than_the_grace_period_is_not_ready(make_bridge):
    relay = Relay.reserved()  # its port refuses connections until the relay starts below
    port = relay.port
    bridge = await make_bridge(fax=FAST, mail={
        "transport": "smtp", **MAIL_FAST,
        "relay": {"host": "127.0.0.1", "port": port, "tls": "none"}})
    bridge.metrics.mail_grace_seconds = GRACE
    assert (await readyz(bridge))[0] == 200
    await send(bridge.smtp_address, fax_mail())

    # failing, but within the grace period: still ready, the failure shown
    async def failing_but_ready() -> dict[str, Any] | None:
        code, body = await readyz(bridge)
        mail = body["checks"]["mail"]
        return body if code == 200 and isinstance(mail, dict) else None
    body = await wait_for(failing_but_ready, timeout=20, interval=0.05)
    assert "status report mails could not be delivered" in body["checks"]["mail"][
        "report deliver"]
    first_seen = time.monotonic()

    body = await not_ready_for(bridge, "status report mails could not be delivered")
    assert time.monotonic() - first_seen > GRACE / 2  # the grace period was honoured
    assert not body["ready"] and f"127.0.0.1:{port} unreachable" in body["reasons"][0]
    assert await metric(bridge, "faxbridge_mail_transport_failures_total", kind="report",
                        outcome="deferred") >= 1

    await relay.start()
    try:
        body = await ready_again(bridge)
        assert "reasons" not in body and body["ready"] is True
        assert [rcpts for _, rcpts, _ in relay.messages] == [["alice@example.com"]]
    finally:
        await relay.stop()


async def test_report_that_cannot_be_composed_is_not_ready_until_it_can(make_bridge,
                                                                         tmp_path):
    bridge = await make_bridge(fax=FAST)
    bridge.metrics.mail_grace_seconds = GRACE
    templates = own_templates(bridge, tmp_path)
    lost = templates / "report.delivered.txt.j2"
    kept = lost.read_bytes()
    lost.unlink()
    t = await send(bridge.smtp_address, fax_mail())

    body = await not_ready_for(bridge, "status report mails could not be composed")
    assert "report.delivered.txt.j2" in body["reasons"][0]
    assert await metric(bridge, "faxbridge_mail_compose_failures_total", kind="report") >= 1
    job = bridge.store.job(t.job_id)
    # the final report is not recorded while its mail cannot be made: it is retried
    assert job.state == "submitted" and "report.delivered.txt.j2" in job.last_error
    # the simulator's status push was answered 503 (Retarus pushes again), not 500
    jobs = await wait_for(lambda: _pushed(bridge), timeout=20)
    assert {p.get("status") for p in jobs[0]["pushes"]} == {503}
    assert maildir(bridge) == []

    lost.write_bytes(kept)
    await ready_again(bridge)
    await wait_for(lambda: bridge.store.job(t.job_id).state == "done", timeout=20)
    msgs = await wait_for(lambda: maildir(bridge), timeout=20)
    assert msgs[0]["Subject"].startswith("Fax to +49 89 123456 delivered")


async def test_fax_mail_that_cannot_be_composed_is_not_ready_until_one_is(make_bridge,
                                                                          tmp_path):
    bridge = await make_bridge()  # the embedded simulator's demo topic → fax-inbox@localhost
    bridge.metrics.mail_grace_seconds = GRACE
    templates = own_templates(bridge, tmp_path)
    lost = templates / "inbound.fax.html.j2"
    kept = lost.read_bytes()
    lost.unlink()
    async with httpx.AsyncClient() as c:
        assert (await c.post(f"{bridge.sim_url}/_sim/inbound", json={"topic": "demo"})
                ).status_code == 201

    body = await not_ready_for(bridge, "received-fax mails could not be composed")
    assert "inbound.fax.html.j2" in body["reasons"][0]
    assert await metric(bridge, "faxbridge_mail_compose_failures_total", kind="inbound") >= 1
    held = bridge.store.list_inbound()
    assert [r.state for r in held] == ["held"]
    assert "could not compose its mail" in held[0].last_error
    assert "inbound.fax.html.j2" in held[0].last_error

    lost.write_bytes(kept)
    async with httpx.AsyncClient() as c:
        await c.post(f"{bridge.sim_url}/_sim/inbound", json={"topic": "demo"})
    await ready_again(bridge)
    await wait_for(lambda: maildir(bridge, "fax-inbox@localhost"), timeout=20)
    assert [r.state for r in bridge.store.list_inbound()] in (["delivered", "held"],
                                                                  ["mailing", "held"])
