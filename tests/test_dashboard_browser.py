"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright,
against a real bridge and its simulator over real HTTP. Logs in (a wrong token
first), filters the jobs, opens a timeline, releases a held job, resends a received
fax and finds the new mail in the Maildir, asks the route form, and sees a hostile
subject as text. No browser is downloaded: Playwright launches /usr/bin/chromium.
Without Chromium or Playwright the test is skipped, unless CI is set: then it fails.

Screenshots go to build/screenshots/dashboard/ (or $FAXBRIDGE_SCREENSHOTS) for a
reviewer to look at."""

from __future__ import annotations

import base64
import email
import email.policy
import mailbox
import os
import shutil
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from faxbridge.mail.transport import maildir_path
from faxbridge.simulator.pdf import tiny_pdf
from tests.conftest import ROOT, wait_for
from tests.smtp_client import send

TOKEN = "browser-s3cret"
HOSTILE = "<script>alert(1)</script>"
CHROMIUM = os.environ.get("FAXBRIDGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# No sandbox: containers and CI runners as root cannot use Chromium's; the rest keeps
# a headless browser from calling home (updates, sync, field trials).
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("FAXBRIDGE_SCREENSHOTS")
             or ROOT / "build" / "screenshots" / "dashboard")


def unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: the browser test must run)")
    pytest.skip(why)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install playwright; no browser "
                    "download needed)")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


def mailbox_messages(data_dir: Path, address: str) -> list[EmailMessage]:
    path = maildir_path(data_dir / "mail", address)
    if not (path / "cur").exists():
        return []
    return [email.message_from_bytes(m.as_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for m in mailbox.Maildir(str(path), create=False)]


def mail(subject: str, sender: str = "alice@example.com") -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = sender, "+4989123456@fax.local", subject
    m.set_content("Please fax this.")
    return m


async def test_click_through_release_and_resend_in_chromium(browser, make_bridge,
                                                            monkeypatch):
    from playwright.async_api import expect
    monkeypatch.setenv("FB_ADMIN", TOKEN)
    bridge = await make_bridge(http={"admin_token": {"env": "FB_ADMIN"}},
                               retarus={"timeout": 1.0},
                               fax={"report_poll_min_seconds": 0.2,
                                    "report_poll_max_seconds": 0.5})
    store, data_dir = bridge.store, bridge.cfg.storage.data_dir
    done = await send(bridge.smtp_address, mail("Quarterly figures"))
    bobs = await send(bridge.smtp_address, mail("From Bob", sender="bob@example.com"))
    await wait_for(lambda: all(store.job(t.job_id).state == "done" for t in (done, bobs)))
    # The next submission gets its answer too late: the bridge cannot know whether
    # Retarus took it and holds it as unconfirmed, for the admin.
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{bridge.sim_url}/_sim/faults",
                         json={"endpoint": "send", "count": 1, "delay": 2.0, "status": 503})
        assert r.status_code == 200
    held = await send(bridge.smtp_address, mail(HOSTILE))
    await wait_for(lambda: store.job(held.job_id).state == "held")
    # A fax arrives on the demo topic and is mailed to its mailbox.
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{bridge.sim_url}/_sim/inbound", json={
            "topic": "demo", "metadata": {"callingNumber": "+4930555000",
                                          "remoteCsid": "ACME <b>FAX</b>", "pages": 1},
            "documents": [{"data": base64.b64encode(tiny_pdf("inbound")).decode(),
                           "extension": "pdf"}]})
        assert r.status_code == 201
    await wait_for(lambda: len(mailbox_messages(data_dir, "fax-inbox@localhost")) == 1)

    SHOTS.mkdir(parents=True, exist_ok=True)
    base = bridge.http_server.url
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = await context.new_page()
    dialogs: list[str] = []  # an alert() would mean a script from a mail ran
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    # -- log in: the wrong token is refused, the right one lands on the page asked for
    await page.goto(f"{base}/dashboard/held")
    await expect(page).to_have_url(f"{base}/dashboard/login?next=%2Fdashboard%2Fheld")
    await page.fill("input[name=token]", "not-the-token")
    await page.click("button[type=submit]")
    await expect(page.locator("#login-failed")).to_have_text("Wrong token.")
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{base}/dashboard/held")
    [cookie] = [c for c in await context.cookies() if c["name"] == "fb_dashboard"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # -- the held job, its hostile subject shown as text and nothing run
    row = page.locator("#held-jobs tr", has_text=held.job_id)
    await expect(row.locator(".subject")).to_have_text(HOSTILE)
    assert await page.locator("script").count() == 0
    await page.screenshot(path=str(SHOTS / "held.png"), full_page=True)

    # -- release: refused first (Retarus may have it), then forced, and it goes out
    await row.get_by_role("button", name="Release").click()
    await expect(page.locator("#problem")).to_contain_text("send the fax twice")
    await expect(page.locator("#job-state")).to_have_text("held")
    assert store.job(held.job_id).state == "held"
    await page.check("#release input[name=force]")
    await page.click("#release button")
    await expect(page.locator("#notice")).to_contain_text("Released")

    async def sent_again() -> bool:
        await page.reload()
        return await page.locator("#job-state").inner_text() in ("submitted", "done")
    await wait_for(sent_again, timeout=30, interval=0.3)
    await expect(page.locator("#timeline")).to_contain_text("released")
    assert store.job(held.job_id).state in ("submitted", "done")
    assert page.url == f"{base}/dashboard/jobs/{held.job_id}?released=1"
    await page.screenshot(path=str(SHOTS / "job-released.png"), full_page=True)

    # -- the jobs list with filters, and a job's timeline
    await page.get_by_role("link", name="Jobs", exact=True).click()
    await page.select_option("#job-filters select[name=state]", "done")
    await page.fill("#job-filters input[name=sender]", "bob@example.com")
    await page.click("#job-filters button")
    await expect(page.locator("#jobs")).to_contain_text(bobs.job_id)
    await expect(page.locator("#jobs")).not_to_contain_text(done.job_id)
    await page.fill("#job-filters input[name=sender]", "")
    await page.click("#job-filters button")
    await expect(page.locator("#jobs")).to_contain_text(done.job_id)
    await page.get_by_role("link", name=done.job_id).click()
    timeline = page.locator("#timeline")
    for kind in ("accepted", "submitted", "done"):
        await expect(timeline).to_contain_text(kind)
    await page.screenshot(path=str(SHOTS / "job-timeline.png"), full_page=True)

    # -- resend a received fax: a second mail lands in the mailbox
    await page.get_by_role("link", name="Inbox").click()
    fax_row = page.locator("#inbox tr.fax").first
    await expect(fax_row).to_contain_text("ACME <b>FAX</b>")  # Retarus' CSID, as text
    await fax_row.get_by_role("button", name="Resend").click()
    await expect(page.locator("#notice")).to_contain_text("queued to be mailed again")
    await wait_for(lambda: len(mailbox_messages(data_dir, "fax-inbox@localhost")) == 2)
    again = [m for m in mailbox_messages(data_dir, "fax-inbox@localhost")
             if "Sent again at the administrator's request." in
             m.get_body(("plain",)).get_content()]
    assert len(again) == 1
    await page.screenshot(path=str(SHOTS / "inbox-resent.png"), full_page=True)

    # -- the route form: the accept path's decision for an address typed in
    await page.get_by_role("link", name="Rules & route").click()
    await page.fill("#route input[name=from]", "alice@example.com")
    await page.fill("#route textarea[name=to]", "+499001234567@fax.local")
    await page.click("#route button")
    await expect(page.locator("#verdict")).to_contain_text("reject 550")
    await expect(page.locator("#decision")).to_contain_text("denied by pattern +49900*")
    await page.screenshot(path=str(SHOTS / "route.png"), full_page=True)

    # -- health and queue figures; then log out, and the pages are closed again
    await page.get_by_role("link", name="Overview").click()
    await expect(page.locator("#job-states")).to_be_visible()
    await expect(page.locator("#queues")).to_contain_text("mail_out")
    await page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)
    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(f"{base}/dashboard/login")
    await page.goto(f"{base}/dashboard/jobs")
    await expect(page.locator("input[name=token]")).to_be_visible()
    assert dialogs == []
    await context.close()
