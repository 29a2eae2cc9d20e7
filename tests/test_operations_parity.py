"""The CLI and the admin API are two faces of the same operations: on one bridge with a
held job, a finished job, a refused mail, a received fax and their SMTP log, every
`faxbridge … --json` answer equals the admin API's answer to the same question."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from faxbridge.outbound.submit import NOT_FOUND
from tests.conftest import arun_faxbridge, wait_for
from tests.smtp_client import send
from tests.test_inbound import inbox, inject, settle, topic, wired


@pytest.fixture(autouse=True)
def env(monkeypatch):
    monkeypatch.setenv("FB_PULL_PW", "simulator")
    monkeypatch.setenv("FB_ADMIN", "parity-token")


def mail(to: str, subject: str) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "alice@example.com", to, subject
    m.set_content("hello")
    return m


async def test_cli_json_equals_admin_api(sim, make_bridge, tmp_path):
    _, url = sim
    fid = await inject(url)
    bridge = await make_bridge(**wired(tmp_path, url, [topic("demo", url, ["in@example.com"])],
                                       http={"admin_token": {"env": "FB_ADMIN"}}))
    data_dir = bridge.cfg.storage.data_dir
    held = await send(bridge.smtp_address, mail("+4989123456@fax.local", "to be held"))
    done = await send(bridge.smtp_address, mail("+4930999999@fax.local", "to be sent"))
    await send(bridge.smtp_address, mail("bob@example.org", "refused: not a fax domain"))
    for t in (held, done):
        await wait_for(lambda t=t: bridge.store.job(t.job_id).state == "done", timeout=60)
    # A held job the confirmation pass gave up on: its view carries a confirmation
    # note, and nothing in the bridge touches it any more.
    assert bridge.store.set_job_state(held.job_id, "held", event="held", detail="parity test",
                                      error=NOT_FOUND)
    await settle(lambda: inbox(data_dir, "in@example.com"), bridge.store, url)

    base, auth = bridge.http_server.url, {"Authorization": "Bearer parity-token"}
    async with httpx.AsyncClient() as c:
        async def api(path: str) -> Any:
            r = await c.get(f"{base}{path}", headers=auth)
            assert r.status_code == 200, r.text
            return r.json()

        async def cli(*args: str) -> Any:
            out = await arun_faxbridge(*args, "--json", "--data-dir", str(data_dir))
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        async def same(path: str, *args: str) -> Any:
            """The CLI's answer equals the API's, taken between two equal API answers
            (report deletion may still add a timeline event meanwhile)."""
            async def stable() -> tuple[Any, Any] | None:
                before, got = await api(path), await cli(*args)
                return (before, got) if await api(path) == before else None
            before, got = await wait_for(stable)
            assert got == before, (path, args)
            return got

        jobs = await same("/admin/jobs", "jobs")
        assert {j["id"]: j["state"] for j in jobs} == {held.job_id: "held",
                                                       done.job_id: "done"}
        assert all("raw" not in j and "request_json" not in j for j in jobs)
        assert [j["id"] for j in await same("/admin/jobs?state=held", "jobs", "--state",
                                            "held")] == [held.job_id]
        view = await same(f"/admin/jobs/{held.job_id}", "jobs", "show", held.job_id)
        assert view["confirmation"]["looking"] is False
        assert view["documents"] == [{"name": "mail-body.txt", "type": "text/plain",
                                      "size": 6}]
        assert "held" in [e["kind"] for e in view["events"]]
        assert view["recipients"][0]["number"] == "+4989123456"
        await same(f"/admin/jobs/{done.job_id}", "jobs", "show", done.job_id)

        faxes = await same("/admin/inbox", "inbox")
        assert [(f["id"], f["acked"], f["state"], f["files"]) for f in faxes] == [
            (f"demo/{fid}", True, "delivered", [f"{fid}.pdf"])]

        records = await same("/admin/log", "log")
        assert len(records) == 3 and all(
            isinstance(r["recipients"], list) and isinstance(r["timings"], dict)
            and "recipients_json" not in r for r in records)
        [refused] = await same("/admin/log?failed=1", "log", "--failed")
        assert "550 5.7.1 Relaying denied" in refused["reply"]
        assert await same("/admin/log?since=1h&number=%2B4930999999", "log", "--since", "1h",
                          "--number", "+4930999999") == [
            r for r in records if r["job_id"] == done.job_id]
        await same(f"/admin/log/{refused['id']}", "log", "show", str(refused["id"]))

        await _bad_requests_are_explained(lambda p, **kw: c.request(
            kw.pop("method", "GET"), f"{base}{p}", headers=auth, **kw))

        # A resend by the Retarus fax id alone answers where it went
        r = await c.post(f"{base}/admin/inbox/{fid}/resend", headers=auth,
                         json={"to": ["other@example.com"]})
        assert r.status_code == 200 and r.json() == {"resent": f"demo/{fid}",
                                                     "to": ["other@example.com"]}, r.text
    msgs = await settle(lambda: inbox(data_dir, "other@example.com"), bridge.store, url)
    assert "administrator's request" in msgs[0].get_body(("plain",)).get_content()


async def _bad_requests_are_explained(
        request: Callable[..., Awaitable[httpx.Response]]) -> None:
    """A query the API cannot understand is a 400 naming the parameter, not a 500."""
    for path, method, body, says in [
            ("/admin/log?since=yesterday-ish", "GET", None, "since: expected"),
            ("/admin/jobs?limit=many", "GET", None, "limit: expected a whole number"),
            ("/admin/inbox/demo/x/resend", "POST", b"{not json", "body: expected JSON"),
            ("/admin/inbox/demo/x/resend", "POST", b'{"to": "a@b"}', "to: expected a list")]:
        r = await request(path, method=method, content=body)
        assert r.status_code == 400 and says in r.json()["error"], (path, r.text)
    r = await request("/admin/inbox/demo/nope/resend", method="POST", content=b"{}")
    assert r.status_code == 404
