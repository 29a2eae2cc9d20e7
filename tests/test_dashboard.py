"""The dashboard over real HTTP, without a browser: who gets in (token, session cookie,
its attributes), what a POST needs (session CSRF token, same origin), that everything
that came from a mail is escaped, and that the route form answers what the SMTP
listener answers. The clicking through in Chromium is tests/test_dashboard_browser.py."""

from __future__ import annotations

import base64
import contextlib
import html
import re
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from faxbridge import operations as ops
from faxbridge.simulator.pdf import tiny_pdf
from tests.conftest import loopback_rule, wait_for
from tests.smtp_client import send

TOKEN = "dash-s3cret"
HOSTILE = "<script>alert(1)</script>"
ADMIN = {"admin_token": {"env": "FB_ADMIN"}}


@pytest.fixture
def admin_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FB_ADMIN", TOKEN)
    return TOKEN


def mail(sender: str = "alice@example.com", to: str = "+4989123456@fax.local",
         subject: str = "dashboard") -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = sender, to, subject
    m.set_content("hello")
    return m


@contextlib.asynccontextmanager
async def logged_in(base: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client holding a dashboard session, like a browser after the login form."""
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/dashboard/login", data={"token": TOKEN, "next": "/dashboard/"})
        assert r.status_code == 303 and "fb_dashboard" in c.cookies, r.text
        yield c


async def get_with_cookie(base: str, path: str, value: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, cookies={"fb_dashboard": value}) as c:
        return await c.get(path)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def test_disabled_without_an_admin_token(make_bridge):
    bridge = await make_bridge()
    async with httpx.AsyncClient(base_url=bridge.http_server.url) as c:
        for path in ("/dashboard/", "/dashboard/login"):
            r = await c.get(path)
            assert r.status_code == 403 and "set http.admin_token" in r.text
        r = await c.post("/dashboard/login", data={"token": ""})
        assert r.status_code == 403 and "fb_dashboard" not in r.headers.get("set-cookie", "")


async def test_login_sets_a_strict_signed_session_and_a_wrong_token_gets_nothing(
        make_bridge, admin_token, monkeypatch):
    bridge = await make_bridge(http=ADMIN)
    base = bridge.http_server.url
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.get("/dashboard/jobs?state=held")
        assert r.status_code == 303
        assert r.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fjobs%3Fstate%3Dheld"
        r = await c.post("/dashboard/login", data={"token": "wrong", "next": "/dashboard/"})
        assert r.status_code == 401 and "Wrong token" in r.text
        assert "set-cookie" not in r.headers
        # another site's form cannot log a browser in
        r = await c.post("/dashboard/login", data={"token": TOKEN},
                         headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and "set-cookie" not in r.headers
        r = await c.post("/dashboard/login",
                         data={"token": TOKEN, "next": "/dashboard/jobs?state=held"})
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/jobs?state=held"
        cookie = r.headers["set-cookie"]
        attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "path", "samesite", "max-age"} <= attrs and "secure" not in attrs
        assert "samesite=strict" in cookie.lower() and "path=/dashboard" in cookie.lower()
        assert TOKEN not in cookie
        r = await c.get("/dashboard/jobs?state=held")
        assert r.status_code == 200 and "Outbound jobs" in r.text

        # a forged or altered cookie is no session
        value = c.cookies["fb_dashboard"]
        expires, nonce, mac = value.split(".")
        for forged in (f"{int(expires) + 3600}.{nonce}.{mac}", f"{expires}.{nonce}.{'0' * 64}",
                       "garbage", ""):
            r = await get_with_cookie(base, "/dashboard/", forged)
            assert r.status_code == 303 and "/dashboard/login" in r.headers["location"]

        # a new admin token ends every session
        monkeypatch.setenv("FB_ADMIN", "rotated")
        assert (await c.get("/dashboard/")).status_code == 303
        monkeypatch.setenv("FB_ADMIN", TOKEN)
        assert (await c.get("/dashboard/")).status_code == 200

        # logging out ends this session even for a copy of its cookie
        page = (await c.get("/dashboard/")).text
        r = await c.post("/dashboard/logout", data={"csrf": csrf_of(page)})
        assert r.status_code == 303
        assert (await get_with_cookie(base, "/dashboard/", value)).status_code == 303

    # no open redirect after logging in
    async with httpx.AsyncClient(base_url=base) as c:
        for target in ("https://evil.example/", "//evil.example/", "/admin/jobs"):
            r = await c.post("/dashboard/login", data={"token": TOKEN, "next": target})
            assert r.headers["location"] == "/dashboard/", target
    # over HTTPS (a TLS proxy in front on this host) the cookie is Secure
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/dashboard/login", data={"token": TOKEN},
                         headers={"X-Forwarded-Proto": "https"})
        assert r.status_code == 303 and "; secure" in r.headers["set-cookie"].lower()


async def test_the_bearer_token_opens_the_pages_for_scripts(make_bridge, admin_token):
    bridge = await make_bridge(http=ADMIN)
    async with httpx.AsyncClient(base_url=bridge.http_server.url) as c:
        r = await c.get("/dashboard/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and "Health and queues" in r.text
        r = await c.get("/dashboard/", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 303
        # every page forbids scripts and framing, whatever its content
        r = await c.get("/dashboard/log", headers={"Authorization": f"Bearer {TOKEN}"})
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert "frame-ancestors 'none'" in csp and r.headers["x-frame-options"] == "DENY"


async def test_post_forms_need_the_session_csrf_token_and_the_same_origin(
        make_bridge, admin_token):
    bridge = await make_bridge(http=ADMIN)
    t = await send(bridge.smtp_address, mail())
    assert t.job_id
    base = bridge.http_server.url
    async with logged_in(base) as c:
        page = (await c.get(f"/dashboard/jobs/{t.job_id}")).text
        token = csrf_of(page)
        release = f"/dashboard/jobs/{t.job_id}/release"
        before = [e.kind for e in bridge.store.job_events(t.job_id)]
        for data, headers in (({}, {}), ({"csrf": "0" * 40}, {}),
                              ({"csrf": token}, {"Origin": "http://evil.example"}),
                              ({"csrf": token}, {"Origin": "null"})):
            r = await c.post(release, data=data, headers=headers)
            assert r.status_code == 403, (data, headers, r.text)
        # the token of another session does not do either
        async with logged_in(base) as other:
            r = await other.post(release, data={"csrf": token})
            assert r.status_code == 403
        # not logged in at all
        async with httpx.AsyncClient(base_url=base) as anon:
            r = await anon.post(release, data={"csrf": token})
            assert r.status_code == 403 and "Not logged in" in r.text
        assert [e.kind for e in bridge.store.job_events(t.job_id)][:len(before)] == before
        assert "released" not in [e.kind for e in bridge.store.job_events(t.job_id)]
        # with it, the request reaches the operation: this job is not held
        r = await c.post(release, data={"csrf": token}, headers={"Origin": base})
        assert r.status_code == 409 and "is not held" in r.text

        # resend: refused without the token, nothing queued
        # (only received-fax mails count: the job's own report may be queued meanwhile)
        def fax_mails() -> int:
            return sum(m.kind != "report" for m in bridge.store.list_mail(1000))
        mails = fax_mails()
        r = await c.post("/dashboard/inbox/resend", data={"id": "demo/x"})
        assert r.status_code == 403 and fax_mails() == mails
        r = await c.post("/dashboard/inbox/resend", data={"id": "demo/x", "csrf": token})
        assert r.status_code == 404 and "No received fax demo/x" in r.text


async def test_everything_that_came_from_a_mail_is_escaped(make_bridge, admin_token,
                                                           tmp_path):
    bridge = await make_bridge(http=ADMIN)
    m = EmailMessage()
    m["From"] = f'"{HOSTILE}" <alice@example.com>'
    m["To"] = '"<img src=x onerror=alert(2)>" <+4989123456@fax.local>'
    m["Subject"] = HOSTILE
    m.set_content("hello")
    m.add_attachment(tiny_pdf("x"), maintype="application", subtype="pdf",
                     filename="<b onmouseover=alert(3)>.pdf")
    t = await send(bridge.smtp_address, m)
    assert t.job_id
    # a quoted local part may hold anything: the listener refuses it and logs it as given
    refused = await send(bridge.smtp_address, mail(),
                         rcpts=['"<svg onload=alert(4)>"@fax.local'])
    assert refused.rcpt[0][0] >= 500
    # a received fax whose metadata (from Retarus, i.e. from whoever faxed) is hostile
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{bridge.sim_url}/_sim/inbound", json={
            "topic": "demo", "metadata": {"remoteCsid": HOSTILE, "callingNumber": "<i>1</i>",
                                          "pages": 1},
            "documents": [{"data": base64.b64encode(tiny_pdf("in")).decode(),
                           "extension": "pdf"}]})
        assert r.status_code == 201
    await wait_for(lambda: bridge.store.list_inbound(10), timeout=30)
    entry = await wait_for(lambda: next((r for r in bridge.store.list_log(limit=10)
                                         if not r.ok), None))
    [accepted] = [r for r in bridge.store.list_log(limit=10) if r.job_id == t.job_id]
    async with logged_in(bridge.http_server.url) as c:
        pages: dict[str, str] = {}
        for path in ("/dashboard/jobs", f"/dashboard/jobs/{t.job_id}", "/dashboard/log",
                     f"/dashboard/log/{entry.id}", f"/dashboard/log/{accepted.id}",
                     "/dashboard/inbox", "/dashboard/held"):
            r = await c.get(path)
            assert r.status_code == 200, path
            pages[path] = r.text
    raw = ("<script", "<img", "<b onmouseover", "<svg", "<i>1</i>")
    for path, text in pages.items():
        found = [x for x in raw if x in text]
        assert not found, f"{path} carries unescaped {found}"
    assert html.escape(HOSTILE, quote=False) in pages[f"/dashboard/jobs/{t.job_id}"]
    # the attachment's own name, as the SMTP log keeps it (the document is renamed)
    assert "&lt;b onmouseover=alert(3)&gt;.pdf" in pages[f"/dashboard/log/{accepted.id}"]
    assert html.escape(HOSTILE, quote=False) in pages[f"/dashboard/log/{accepted.id}"]
    assert "&lt;svg onload=alert(4)&gt;" in pages[f"/dashboard/log/{entry.id}"]
    assert html.escape(HOSTILE, quote=False) in pages["/dashboard/inbox"]
    assert "&lt;i&gt;1&lt;/i&gt;" in pages["/dashboard/inbox"]


def reply_cells(page: str) -> list[str]:
    return [html.unescape(x) for x in re.findall(r'<td class="mono reply">([^<]*)</td>', page)]


async def test_the_route_form_answers_what_the_listener_answers(make_bridge, admin_token):
    """Rate limit included: the form counts the sender's faxes in the store, as the
    listener does, so after one fax the second gets the listener's 450."""
    bridge = await make_bridge(http=ADMIN, senders=[loopback_rule(max_per_hour=1)])
    first = await send(bridge.smtp_address, mail())
    assert first.data and first.data[0] == 250
    over = await send(bridge.smtp_address, mail(to="+4930123456@fax.local"))
    blocked = await send(bridge.smtp_address, mail(to="+499001234567@fax.local"))
    listener = [f"{code} {text}" for t in (over, blocked) for code, text in t.rcpt]
    assert listener[0].startswith("450") and listener[1].startswith("550"), listener
    async with logged_in(bridge.http_server.url) as c:
        r = await c.get("/dashboard/rules", params={
            "from": "alice@example.com", "to": "+4930123456@fax.local\n+499001234567@fax.local"})
        assert r.status_code == 200
        assert reply_cells(r.text) == listener
        # the steps are the accept path's own, as `faxbridge route --json` prints them
        expected: dict[str, Any] = await bridge.db.run(
            lambda s: ops.explain_route(bridge.cfg, s, sender="alice@example.com",
                                        recipients=["+4930123456@fax.local",
                                                    "+499001234567@fax.local"]),
            bridge.store)
        text = html.unescape(r.text)
        for step in (s for rcpt in expected["recipients"] for s in rcpt["steps"]):
            assert step in text
        assert "1 fax(es) in the last hour" in text
        r = await c.get("/dashboard/rules", params={"from": "alice@example.com"})
        assert r.status_code == 400 and "at least one recipient" in r.text
        # a refused transaction in the SMTP log links to this form with its envelope
        [rec] = [x for x in bridge.store.list_log(limit=10)
                 if "+499001234567" in x.recipients_json]
        page = (await c.get(f"/dashboard/log/{rec.id}")).text
        assert "Why was this refused?" in page and "denied by pattern +49900*" in page
        ask = html.unescape(re.search(r'href="([^"]+)" id="ask-rules"', page).group(1))
        r = await c.get(ask)
        assert reply_cells(r.text) == [listener[1]]


async def test_job_filters_and_figures(make_bridge, admin_token):
    bridge = await make_bridge(http=ADMIN)
    a = await send(bridge.smtp_address, mail(subject="from alice"))
    b = await send(bridge.smtp_address, mail(sender="bob@example.com", subject="from bob"))
    await wait_for(lambda: all(bridge.store.job(t.job_id).state == "done" for t in (a, b)))
    async with logged_in(bridge.http_server.url) as c:
        page = (await c.get("/dashboard/jobs", params={"sender": "bob@example.com"})).text
        assert b.job_id in page and a.job_id not in page
        page = (await c.get("/dashboard/jobs", params={"state": "done"})).text
        assert b.job_id in page and a.job_id in page
        page = (await c.get("/dashboard/jobs", params={"state": "held"})).text
        assert a.job_id not in page and "No job matches" in page
        r = await c.get("/dashboard/jobs", params={"state": "bogus"})
        assert r.status_code == 400 and "state: expected one of" in r.text
        r = await c.get("/dashboard/log", params={"since": "yesterday-ish"})
        assert r.status_code == 400 and "since: expected e.g. 2h" in r.text
        page = (await c.get("/dashboard/")).text
        done = re.search(r'href="/dashboard/jobs\?state=done">(\d+)</a>', page)
        assert done and done.group(1) == "2"
        assert 'id="ready"' in page and "Ready" in page
