"""The Faxes API (Kazoo-compatible) over real HTTP against the real bridge and its
simulator: login the way a Kazoo client does, create by document URL and by
multipart, follow, list, page, resubmit, delete faxes and payloads, the inbox,
the SMTP log, errors in Kazoo's shape, and payload retention."""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from faxbridge.app import Bridge
from faxbridge.housekeeping import Housekeeper
from faxbridge.listen import HttpServer
from faxbridge.mail.transport import maildir_path
from faxbridge.simulator.pdf import tiny_pdf
from faxbridge.web.kazoo import GREGORIAN_OFFSET
from tests.conftest import arun_faxbridge, run_faxbridge, sim_jobs, wait_for
from tests.smtp_client import send

TOKEN, OTHER = "portal-" + secrets.token_hex(8), "other-" + secrets.token_hex(8)
LIMIT = 60_000  # api.max_document_bytes in these tests


class KazooClient:
    """A small client written from the Kazoo Faxes API document: API-key login
    (PUT /v2/api_auth) gives the auth token and account id; every call sends
    X-Auth-Token under /v2/accounts/{ACCOUNT_ID}/faxes."""

    def __init__(self, base: str) -> None:
        self.base, self.http = base, httpx.AsyncClient(timeout=30)
        self.auth_token: str | None = None
        self.account_id: str | None = None

    async def login(self, api_key: str) -> dict[str, Any]:
        r = await self.http.put(f"{self.base}/v2/api_auth", json={"data": {"api_key": api_key}})
        body = r.json()
        if r.status_code in (200, 201) and body["status"] == "success":
            self.auth_token, self.account_id = body["auth_token"], body["data"]["account_id"]
        return body

    def url(self, path: str = "", short: bool = False) -> str:
        prefix = "/v2/faxes" if short else f"/v2/accounts/{self.account_id}/faxes"
        return f"{self.base}{prefix}{path}"

    async def call(self, method: str, path: str = "", short: bool = False,
                   **kw: Any) -> httpx.Response:
        headers = {"X-Auth-Token": self.auth_token or "", **kw.pop("headers", {})}
        return await self.http.request(method, self.url(path, short), headers=headers, **kw)

    async def create(self, data: dict[str, Any], short: bool = False) -> httpx.Response:
        return await self.call("PUT", "", short, content=json.dumps({"data": data}))

    async def listing(self, folder: str, short: bool = False, **params: Any) -> dict[str, Any]:
        r = await self.call("GET", f"/{folder}", short, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    async def aclose(self) -> None:
        await self.http.aclose()


def multipart(meta: dict[str, Any], *docs: tuple[str, str, bytes]) -> tuple[str, bytes]:
    """multipart/mixed: the JSON first, then the documents (as the document's curl)."""
    boundary = secrets.token_hex(12)
    out = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n"
           f"{json.dumps({'data': meta})}\r\n").encode()
    for name, ctype, data in docs:
        out += (f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Disposition: "
                f'attachment; filename="{name}"\r\n\r\n').encode() + data + b"\r\n"
    return f"multipart/mixed; boundary={boundary}", out + f"--{boundary}--\r\n".encode()


def marked_pdf(marker: str) -> bytes:
    return tiny_pdf(f"Fax {marker}")


@pytest.fixture
async def docs() -> AsyncIterator[tuple[str, dict[str, bytes]]]:
    """A document server on loopback: /ok/NAME serves files[NAME] (404 if none)."""
    files: dict[str, bytes] = {}

    async def serve(request: Request) -> Response:
        data = files.get(request.path_params["name"])
        if data is None:
            return Response("no such document", status_code=404)
        return Response(data, media_type="application/pdf")

    app = Starlette(routes=[Route("/ok/{name}", serve), Route("/no/{name}", serve)])
    server = HttpServer(app, "127.0.0.1:0")
    await server.start()
    yield server.url, files
    await server.stop()


def api_section(doc_url: str, **kw: Any) -> dict[str, Any]:
    return {"tokens": [
        {"name": "portal", "token": {"env": "FB_TEST_API_PORTAL"}, "sender": "portal@example.com",
         "account_id": "acc1"},
        {"name": "other", "token": {"env": "FB_TEST_API_OTHER"}, "sender": "other@example.com",
         "account_id": "acc2"}],
        "fetch_allow": [f"{doc_url}/ok/"], "max_document_bytes": LIMIT, **kw}


@pytest.fixture
async def api(make_bridge: Any, docs: tuple[str, dict[str, bytes]], storage: dict[str, Any],
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Bridge, KazooClient]]:
    """The bridge with the Faxes API, on SQLite and on PostgreSQL."""
    monkeypatch.setenv("FB_TEST_API_PORTAL", TOKEN)
    monkeypatch.setenv("FB_TEST_API_OTHER", OTHER)
    bridge = await make_bridge(api=api_section(docs[0]), storage=storage)
    client = KazooClient(bridge.addresses()["http"])
    yield bridge, client
    await client.aclose()


async def until_status(client: KazooClient, fax_id: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        r = await client.call("GET", f"/outgoing/{fax_id}")
        data = r.json()["data"]
        return data if data["status"] == status else None
    return await wait_for(check)


def on_postgres(bridge: Bridge) -> bool:
    return bridge.cfg.storage.database_url is not None


def chunk_rows(bridge: Bridge) -> int:
    """PostgreSQL keeps every stored value in rows of its `chunks` table."""
    assert bridge.db is not None
    return int(bridge.db.store.query(  # type: ignore[attr-defined]
        "SELECT COUNT(*) AS n FROM chunks")[0]["n"])


def store_bytes(bridge: Bridge) -> bytes:
    """Every byte the store holds: the SQLite file and its WAL, or PostgreSQL's chunk
    rows (what a query can still read; the server's files are its own business)."""
    if on_postgres(bridge):
        assert bridge.db is not None
        return b"".join(bytes(r["data"]) for r in bridge.db.store.query(  # type: ignore
            "SELECT data FROM chunks ORDER BY owner, seq"))
    db = bridge.cfg.storage.data_dir / "faxbridge.sqlite3"
    wal = Path(f"{db}-wal")
    return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


# ---------------------------------------------------------------- the Kazoo way
async def test_kazoo_client_login_create_by_url_follow_and_list(api, docs):
    bridge, client = api
    doc_url, files = docs
    files["fax.pdf"] = pdf = marked_pdf("by-url")
    login = await client.login(TOKEN)
    assert login["status"] == "success" and login["auth_token"] == TOKEN
    assert client.account_id == "acc1"
    r = await client.create({"document": {"url": f"{doc_url}/ok/fax.pdf", "method": "get"},
                             "retries": 3, "from_name": "Test Fax", "from_number": "+4930111",
                             "to_name": "To Name", "to_number": "+4989123456",
                             "subject": "Invoice 42"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "success" and body["request_id"]
    fax = body["data"]
    assert fax["status"] == "pending" and fax["to_number"] == "+4989123456"
    assert fax["document"] == {"url": f"{doc_url}/ok/fax.pdf", "method": "get"}
    assert fax["retries"] == 3 and fax["from_name"] == "Test Fax"
    done = await until_status(client, fax["id"], "completed")
    assert done["tx_result"]["success"] is True
    # it reached the simulator with the fetched document and the subject as header
    jobs = await sim_jobs(bridge.sim_url)
    sent = [j for j in jobs if j["request"]["reference"]["customerDefinedId"] == fax["id"]]
    assert len(sent) == 1
    assert base64.b64decode(sent[0]["request"]["documents"][0]["data"]) == pdf
    assert sent[0]["request"]["renderingOptions"]["header"] == "Invoice 42"
    assert (await client.listing("outbox", short=True))["data"] == \
        (await client.listing("outbox"))["data"]
    listing = await client.listing("outbox")
    assert listing["status"] == "success" and listing["page_size"] == 1
    item = listing["data"][0]
    assert item["id"] == fax["id"] and item["status"] == "completed"
    assert item["from"] == "+4930111" and item["to"] == "+4989123456"
    assert abs(item["created"] - GREGORIAN_OFFSET - time.time()) < 120
    for short in (False, True):
        one = await client.call("GET", f"/outbox/{fax['id']}", short)
        assert one.status_code == 200 and one.json()["data"]["id"] == fax["id"]
        att = await client.call("GET", f"/outbox/{fax['id']}/attachment", short)
        assert att.status_code == 200 and att.content == pdf
        assert att.headers["content-type"] == "application/pdf"


async def test_multipart_create_fans_out_to_several_numbers(api):
    bridge, client = api
    await client.login(TOKEN)
    ctype, body = multipart({"to_number": ["+4989123456", "+4930999999"]},
                            ("a.pdf", "application/pdf", marked_pdf("mp-a")),
                            ("b.pdf", "application/pdf", marked_pdf("mp-b")))
    for short in (True, False):
        r = await client.call("PUT", "/outgoing" if short else "", short, content=body,
                              headers={"Content-Type": ctype})
        assert r.status_code == 201, r.text
        fax = r.json()["data"]
        assert fax["to_number"] == ["+4989123456", "+4930999999"]
        assert [d["name"] for d in fax["faxbridge"]["documents"]] == ["a.pdf", "b.pdf"]
        await until_status(client, fax["id"], "completed")
        att = await client.call("GET", f"/outbox/{fax['id']}/attachment")
        assert att.headers["content-type"].startswith("multipart/mixed")
        assert marked_pdf("mp-a") in att.content and marked_pdf("mp-b") in att.content


# ---------------------------------------------------------------- refusals
async def test_wrong_token_other_account_and_bad_requests(api, docs):
    bridge, client = api
    doc_url, files = docs
    files["big.pdf"] = b"%PDF-1.4 " + b"x" * (LIMIT + 10)
    bad = await client.login("not-a-token")
    assert bad["status"] == "error" and bad["error"] == "401"
    client.auth_token, client.account_id = "wrong", "acc1"
    for short in (False, True):
        r = await client.call("GET", "/outbox", short)
        assert r.status_code == 401 and r.json()["status"] == "error"
    await client.login(TOKEN)
    client.account_id = "acc2"  # the other token's account
    r = await client.call("GET", "/outbox")
    assert r.status_code == 403 and r.json()["error"] == "403"
    client.account_id = "acc1"
    r = await client.create({"to_number": "+4989123456",
                             "document": {"url": f"{doc_url}/no/fax.pdf"}})
    assert r.status_code == 400
    err = r.json()
    assert err["status"] == "error" and err["error"] == "400" and err["request_id"]
    assert "document.url" in err["data"] and "api.fetch_allow" in json.dumps(err["data"])
    r = await client.create({"document": {"url": f"{doc_url}/ok/fax.pdf"}})
    assert r.status_code == 400 and "to_number" in r.json()["data"]
    r = await client.create({"to_number": "+49900123456",
                             "document": {"url": f"{doc_url}/ok/fax.pdf"}})
    assert r.status_code == 400 and "to_number" in r.json()["data"]  # a denied destination
    # a document too large to fetch, and one not there: the fax is failed, as documented
    for name, why in (("big.pdf", "could not retrieve file, http response 200"),
                      ("gone.pdf", "could not retrieve file, http response 404")):
        r = await client.create({"to_number": "+4989123456",
                                 "document": {"url": f"{doc_url}/ok/{name}"}})
        assert r.status_code == 201, r.text
        fax = r.json()["data"]
        assert fax["status"] == "failed" and fax["tx_result"]["error_message"].startswith(why)
    # an upload too large is refused outright
    ctype, body = multipart({"to_number": "+4989123456"},
                            ("big.pdf", "application/pdf", files["big.pdf"]))
    r = await client.call("PUT", "", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 413 and "document" in r.json()["data"]
    assert not [j for j in await sim_jobs(bridge.sim_url)]  # nothing was sent


# ---------------------------------------------------------------- outgoing, paging
async def test_outgoing_while_in_progress_paging_and_time_filter(make_bridge, docs, monkeypatch):
    monkeypatch.setenv("FB_TEST_API_PORTAL", TOKEN)
    monkeypatch.setenv("FB_TEST_API_OTHER", OTHER)
    bridge = await make_bridge(api=api_section(docs[0]), simulator={"complete_after": 3600})
    client = KazooClient(bridge.addresses()["http"])
    try:
        await client.login(TOKEN)
        ids = []
        for i in range(3):
            ctype, body = multipart({"to_number": "+4989123456"},
                                    ("a.pdf", "application/pdf", marked_pdf(f"page{i}")))
            r = await client.call("PUT", "", content=body, headers={"Content-Type": ctype})
            ids.append(r.json()["data"]["id"])
        for short in (False, True):
            first = await client.listing("outgoing", short, page_size=2)
            assert first["page_size"] == 2 and "next_start_key" in first
            rest = await client.listing("outgoing", short, page_size=2,
                                        start_key=first["next_start_key"])
            assert rest["page_size"] == 1 and "next_start_key" not in rest
            got = [x["id"] for x in first["data"] + rest["data"]]
            assert sorted(got) == sorted(ids) and len(set(got)) == 3
            assert {x["status"] for x in first["data"]} <= {"pending", "processing"}
            one = await client.call("GET", f"/outgoing/{ids[0]}", short)
            assert one.json()["data"]["id"] == ids[0]
        future = int(time.time()) + GREGORIAN_OFFSET + 3600
        assert (await client.listing("outgoing", created_from=future))["data"] == []
        assert len((await client.listing("outgoing", created_to=future))["data"]) == 3
        # the other account sees none of them
        await client.login(OTHER)
        assert (await client.listing("outgoing"))["data"] == []
        assert (await client.call("GET", f"/outgoing/{ids[0]}")).status_code == 404
        # an unfinished fax is not in the outbox and cannot be resubmitted
        await client.login(TOKEN)
        r = await client.call("PUT", f"/outbox/{ids[0]}", json={"action": "resubmit"})
        assert r.status_code == 409 and "still in progress" in r.json()["data"]["message"]
        assert (await client.call("GET", f"/outbox/{ids[0]}")).status_code == 404
    finally:
        await client.aclose()


# ---------------------------------------------------------------- resubmit, delete
async def test_resubmit_then_delete_payload_frees_the_store(api):
    bridge, client = api
    await client.login(TOKEN)
    marker = "MARK-" + secrets.token_hex(12)
    doc = b"%PDF-1.4\n" + marker.encode() * 2000  # a fraction of the file's pages
    ctype, body = multipart({"to_number": "+4989123456"}, ("m.pdf", "application/pdf", doc))
    fax = (await client.call("PUT", "", content=body, headers={"Content-Type": ctype})
           ).json()["data"]
    await until_status(client, fax["id"], "completed")
    for short in (False, True):
        r = await client.call("PUT", f"/outbox/{fax['id']}", short,
                              json={"action": "resubmit", "data": {}})
        assert r.status_code == 201, r.text
        again = r.json()["data"]
        assert again["id"] != fax["id"]
        await until_status(client, again["id"], "completed")
    sent = [j for j in await sim_jobs(bridge.sim_url)
            if base64.b64decode(j["request"]["documents"][0]["data"]) == doc]
    assert len(sent) == 3  # the original and two resubmissions reached the simulator
    db_path = bridge.cfg.storage.data_dir / "faxbridge.sqlite3"

    def pages() -> int:
        if on_postgres(bridge):  # the chunk rows, one per MB of each stored value
            return chunk_rows(bridge)
        with sqlite3.connect(db_path) as c:
            return c.execute("PRAGMA page_count").fetchone()[0]
    assert marker.encode() in store_bytes(bridge)
    before = pages()
    listing = await client.listing("outbox")
    for i, item in enumerate(listing["data"]):
        r = await client.call("DELETE", f"/outbox/{item['id']}/attachment", bool(i % 2))
        assert r.status_code == 200, r.text
    assert marker.encode() not in store_bytes(bridge)
    if on_postgres(bridge):  # the chunk rows of three messages and three documents
        assert pages() <= before - 6
    else:  # the space went back to the file system
        assert pages() < before - 30
    # the metadata and the evidence stay
    one = (await client.call("GET", f"/outbox/{fax['id']}")).json()["data"]
    assert one["status"] == "completed" and one["faxbridge"]["payload_deleted"] is True
    assert (await client.call("GET", f"/outbox/{fax['id']}/attachment")).status_code == 404
    r = await client.call("PUT", f"/outbox/{fax['id']}", json={"action": "resubmit"})
    assert r.status_code == 409
    shown = await arun_faxbridge("jobs", "show", fax["id"], "--data-dir",
                                 str(bridge.cfg.storage.data_dir), "--json")
    assert "payload-deleted" in shown.stdout
    # deleting the fax itself: gone from every listing
    for short in (False, True):
        victim = listing["data"][0 if short else 1]["id"]
        assert (await client.call("DELETE", f"/outbox/{victim}", short)).status_code == 200
        assert (await client.call("GET", f"/outbox/{victim}", short)).status_code == 404
    assert (await client.listing("outbox"))["page_size"] == 1


# ---------------------------------------------------------------- SMTP log
async def test_smtplog_shows_the_accounts_mail_faxes(api):
    bridge, client = api
    await client.login(TOKEN)
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "portal@example.com", "+4989123456@fax.local", "by mail"
    m.set_content("hello")
    m.add_attachment(marked_pdf("smtp"), maintype="application", subtype="pdf",
                     filename="m.pdf")
    await send(bridge.smtp_address, m)
    m2 = EmailMessage()
    m2["From"], m2["To"], m2["Subject"] = "stranger@example.com", "+4989123456@fax.local", "x"
    m2.set_content("hello")
    await send(bridge.smtp_address, m2)
    for short in (False, True):
        log = await client.listing("smtplog", short)
        assert [x["from"] for x in log["data"]] == ["portal@example.com"]
        rec = log["data"][0]
        assert rec["subject"] == "by mail" and rec["ok"] and rec["fax_id"]
        one = await client.call("GET", f"/smtplog/{rec['id']}", short)
        assert one.status_code == 200 and one.json()["data"]["fax_id"] == rec["fax_id"]
        # the mail-initiated fax is in the account's outgoing faxes too
        fax = await client.call("GET", f"/outgoing/{rec['fax_id']}", short)
        assert fax.json()["data"]["faxbridge"]["source"] == "smtp"


# ---------------------------------------------------------------- inbox
async def test_inbox_incoming_attachment_and_deletes(api):
    bridge, client = api
    await client.login(TOKEN)
    pdfs = []
    async with httpx.AsyncClient() as c:
        for i in range(2):
            pdfs.append(tiny_pdf(f"received {i} {secrets.token_hex(6)}"))
            r = await c.post(f"{bridge.sim_url}/_sim/inbound", json={
                "topic": "demo", "documents": [{"data": base64.b64encode(pdfs[-1]).decode(),
                                                "extension": "pdf"}]})
            assert r.status_code == 201

    async def delivered() -> list[dict[str, Any]] | None:
        got = (await client.listing("inbox"))["data"]
        return got if len(got) == 2 and all(x["status"] == "delivered" for x in got) else None
    faxes = await wait_for(delivered)
    for short in (False, True):
        # delivered: in the inbox, no longer incoming
        assert (await client.listing("incoming", short))["data"] == []
        r = await client.call("GET", f"/incoming/{faxes[0]['id']}", short)
        assert r.status_code == 404 and r.json()["error"] == "404"
        assert (await client.listing("inbox", short))["page_size"] == 2
    for short in (False, True):
        for fax, pdf in zip(sorted(faxes, key=lambda x: x["id"]), pdfs, strict=True):
            one = await client.call("GET", f"/inbox/{fax['id']}", short)
            assert one.status_code == 200 and one.json()["data"]["faxbridge"]["topic"] == "demo"
            att = await client.call("GET", f"/inbox/{fax['id']}/attachment", short)
            assert att.content == pdf
    first, second = sorted(faxes, key=lambda x: x["id"])
    r = await client.call("DELETE", f"/inbox/{first['id']}/attachment", True)
    assert r.status_code == 200
    assert (await client.call("DELETE", f"/inbox/{first['id']}/attachment")).status_code == 200
    assert (await client.call("GET", f"/inbox/{first['id']}/attachment")).status_code == 404
    kept = (await client.call("GET", f"/inbox/{first['id']}")).json()["data"]
    assert kept["faxbridge"]["payload_deleted"] is True and kept["faxbridge"]["state"] == \
        "delivered"
    assert pdfs[0] not in store_bytes(bridge) and pdfs[1] in store_bytes(bridge)
    # deleting a fax whole waits for its Fax2WSPull ack (else Retarus offers it again)
    async def acked() -> bool:
        r = await client.call("GET", f"/inbox/{second['id']}")
        return r.json()["data"]["faxbridge"]["acked"]
    await wait_for(acked)
    r = await client.call("DELETE", f"/inbox/{second['id']}", True)
    assert r.status_code == 200, r.text
    assert (await client.call("GET", f"/inbox/{second['id']}")).status_code == 404
    assert [x["id"] for x in (await client.listing("inbox"))["data"]] == [first["id"]]


# ---------------------------------------------------------------- retention
async def test_retention_by_housekeeping_clock_and_by_cli(make_bridge, docs, monkeypatch):
    monkeypatch.setenv("FB_TEST_API_PORTAL", TOKEN)
    monkeypatch.setenv("FB_TEST_API_OTHER", OTHER)
    bridge = await make_bridge(api=api_section(docs[0]),
                               storage={"payload_retention_days": 30,
                                        "inbound_payload_retention_days": 7})
    client = KazooClient(bridge.addresses()["http"])
    try:
        await client.login(TOKEN)
        ids = []
        for i in range(2):
            ctype, body = multipart({"to_number": "+4989123456"},
                                    ("r.pdf", "application/pdf", marked_pdf(f"ret{i}")))
            r = await client.call("PUT", "", content=body, headers={"Content-Type": ctype})
            ids.append(r.json()["data"]["id"])
        for fax_id in ids:
            await until_status(client, fax_id, "completed")

        async def payload(fax_id: str) -> bool:
            r = await client.call("GET", f"/outbox/{fax_id}/attachment")
            return r.status_code == 200
        assert bridge.db is not None
        # the housekeeping round as of 29 days on: nothing is old enough yet
        keeper = Housekeeper(bridge.db, bridge.config, clock=lambda: time.time() + 29 * 86400)
        await keeper.dispose(0.0)  # cut-off 0: no SMTP log record goes
        assert await payload(ids[0]) and await payload(ids[1])
        # as of 31 days on: both payloads go, the faxes stay
        keeper.clock = lambda: time.time() + 31 * 86400
        await keeper.dispose(0.0)
        assert not await payload(ids[0]) and not await payload(ids[1])
        assert (await client.call("GET", f"/outbox/{ids[0]}")).json()["data"]["status"] == \
            "completed"
        assert marked_pdf("ret0") not in store_bytes(bridge)
        # the CLI applies the same retention, here with --older-than 0 (everything settled)
        ctype, body = multipart({"to_number": "+4989123456"},
                                ("r.pdf", "application/pdf", marked_pdf("ret-cli")))
        r = await client.call("PUT", "", content=body, headers={"Content-Type": ctype})
        cli_id = r.json()["data"]["id"]
        await until_status(client, cli_id, "completed")
        out = await arun_faxbridge("retention", "--older-than", "0", "--data-dir",
                                   str(bridge.cfg.storage.data_dir), "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["outbound"]["removed"] == [cli_id]
        assert not await payload(cli_id)
    finally:
        await client.aclose()


async def test_cli_deletes_agree_with_the_api(api):
    bridge, client = api
    await client.login(TOKEN)
    ctype, body = multipart({"to_number": "+4989123456"},
                            ("c.pdf", "application/pdf", marked_pdf("cli-del")))
    fax = (await client.call("PUT", "", content=body, headers={"Content-Type": ctype})
           ).json()["data"]
    data_dir = str(bridge.cfg.storage.data_dir)
    await until_status(client, fax["id"], "completed")
    out = await arun_faxbridge("jobs", "delete", fax["id"], "--payload-only",
                               "--data-dir", data_dir)
    assert out.returncode == 0 and "payload" in out.stdout, out.stderr
    assert (await client.call("GET", f"/outbox/{fax['id']}/attachment")).status_code == 404
    out = await arun_faxbridge("jobs", "delete", fax["id"], "--data-dir", data_dir)
    assert out.returncode == 0, out.stderr
    assert (await client.call("GET", f"/outbox/{fax['id']}")).status_code == 404


async def test_admin_api_deletes_agree_and_report_goes_to_send_to(make_bridge, docs,
                                                                 monkeypatch):
    monkeypatch.setenv("FB_TEST_API_PORTAL", TOKEN)
    monkeypatch.setenv("FB_TEST_API_OTHER", OTHER)
    monkeypatch.setenv("FB_TEST_ADMIN", "admin-secret")
    bridge = await make_bridge(api=api_section(docs[0]),
                               http={"admin_token": {"env": "FB_TEST_ADMIN"}})
    client = KazooClient(bridge.addresses()["http"])
    admin = {"Authorization": "Bearer admin-secret"}
    try:
        await client.login(TOKEN)
        ctype, body = multipart({"to_number": "+4989123456",
                                 "notifications": {"email": {"send_to": "boss@example.com"}}},
                                ("n.pdf", "application/pdf", marked_pdf("notify")))
        fax = (await client.call("PUT", "", content=body, headers={"Content-Type": ctype})
               ).json()["data"]
        assert fax["notifications"] == {"email": {"send_to": ["boss@example.com"]}}
        await until_status(client, fax["id"], "completed")
        # the report goes where the request asked, not to the token's sender
        boss = maildir_path(bridge.cfg.storage.data_dir / "mail", "boss@example.com") / "new"
        reports = await wait_for(lambda: list(boss.glob("*")) if boss.exists() else None)
        assert fax["id"] in reports[0].read_text()
        assert not maildir_path(bridge.cfg.storage.data_dir / "mail",
                                "portal@example.com").exists()
        base = client.base
        async with httpx.AsyncClient(headers=admin) as c:
            r = await c.delete(f"{base}/admin/jobs/{fax['id']}/payload")
            assert r.status_code == 200, r.text
            assert (await client.call("GET", f"/outbox/{fax['id']}/attachment")
                    ).status_code == 404
            r = await c.delete(f"{base}/admin/jobs/{fax['id']}")
            assert r.status_code == 200
            assert (await client.call("GET", f"/outbox/{fax['id']}")).status_code == 404
            assert (await c.delete(f"{base}/admin/jobs/{fax['id']}")).status_code == 404
            r = await c.post(f"{base}/admin/retention", params={"older_than": "0"})
            assert r.status_code == 200 and r.json()["outbound"]["removed"] == []
    finally:
        await client.aclose()


def test_a_token_whose_secret_is_missing_is_a_config_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[api.tokens]]\nname = "portal"\nsender = "p@example.com"\n'
                   'token = { env = "FB_TEST_UNSET_TOKEN_VAR" }\n'
                   '[[api.tokens]]\nname = "bad"\nsender = "not-an-address"\n'
                   'token = { env = "X" }\n')
    out = run_faxbridge("check", "--config", str(cfg))
    shown = out.stdout + out.stderr
    assert out.returncode == 1 and "api.tokens[1].sender: expected a mail address" in shown
    cfg.write_text('[[api.tokens]]\nname = "portal"\nsender = "p@example.com"\n'
                   'token = { env = "FB_TEST_UNSET_TOKEN_VAR" }\n')
    out = run_faxbridge("check", "--config", str(cfg))
    shown = out.stdout + out.stderr
    assert out.returncode == 1 and "api.tokens[0].token: environment variable" in shown
    assert "Traceback" not in shown


async def test_sender_rules_and_rate_limits_apply_as_for_mail(make_bridge, docs, monkeypatch):
    monkeypatch.setenv("FB_TEST_API_PORTAL", TOKEN)
    monkeypatch.setenv("FB_TEST_API_OTHER", OTHER)
    rules = [{"name": "portal", "match": ["portal@example.com"], "allow": ["+4989*"],
              "max_per_hour": 1}]
    bridge = await make_bridge(api=api_section(docs[0]), senders=rules)
    client = KazooClient(bridge.addresses()["http"])
    try:
        await client.login(TOKEN)

        async def create(number: str) -> httpx.Response:
            ctype, body = multipart({"to_number": number},
                                    ("a.pdf", "application/pdf", marked_pdf(number)))
            return await client.call("PUT", "", content=body, headers={"Content-Type": ctype})
        r = await create("+4930999999")  # not allowed by the rule
        assert r.status_code == 400 and "+4930999999" in json.dumps(r.json()["data"])
        assert (await create("+4989123456")).status_code == 201
        r = await create("+4989123457")  # the second in the hour: the rule's rate limit
        assert r.status_code == 429 and "to_number" in r.json()["data"]
        await client.login(OTHER)  # no rule matches other@example.com
        r = await create("+4989123456")
        assert r.status_code == 400 and "550" in json.dumps(r.json()["data"])
    finally:
        await client.aclose()
