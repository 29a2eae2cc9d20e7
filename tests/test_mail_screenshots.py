"""Screenshots of every kind of mail the bridge writes, for a reviewer to look at.

The mails are real: faxes sent over SMTP to the bridge, outcomes decided by the
simulator, a TIFF fax made to arrive on the simulator's topic; they are read back
from the Maildir. Each HTML part (its cid: images as data: URIs) is opened in
headless Chromium at a narrow mail-pane width and a wide one.

Output: tests/_screenshots/ (gitignored): <kind>.html, <kind>.txt (the text part),
<kind>.eml, <kind>-{narrow,wide}.png, and <kind>-nocss-narrow.png of the HTML with
every style attribute removed (a client without CSS). Without Chromium the test is skipped;
with the environment variable CI set, it fails instead.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import subprocess
import tempfile
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageStat

from tests.conftest import wait_for
from tests.mailviews import sample_pdf, sample_tiff, self_contained_html
from tests.smtp_client import send
from tests.test_reports import FAST, maildir, outcome

OUT = Path(__file__).parent / "_screenshots"
CHROMIUM = "/usr/bin/chromium"
SHOTS = {"narrow": (420, 900), "wide": (1000, 900), "nocss-narrow": (420, 900)}


def fax_mail(sender: str, to: str, subject: str, docs: list[tuple[str, bytes]],
             body: str = "Dear Sir or Madam,\n\nplease find our invoice attached.\n\n"
             "Kind regards\nAlice") -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = sender, to, subject
    m["Message-ID"] = f"<{subject.replace(' ', '-')}@example.com>"
    m.set_content(body)
    for name, data in docs:
        m.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    return m


async def one_mail(bridge, address: str) -> EmailMessage:
    msgs = await wait_for(lambda: maildir(bridge, address), timeout=60)
    assert len(msgs) == 1, [m["Subject"] for m in msgs]
    return msgs[0]


async def every_kind_of_mail(make_bridge) -> dict[str, EmailMessage]:
    """One real mail of each kind, through the bridge and its simulator."""
    bridge = await make_bridge(fax=FAST, mail={"timezone": "Europe/Berlin"})
    out: dict[str, EmailMessage] = {}
    # not submitted: Fax4A refuses the job (the fault hits the next send only, so
    # this mail goes first and alone)
    async with httpx.AsyncClient() as c:
        await c.post(f"{bridge.sim_url}/_sim/faults", json={
            "endpoint": "send", "count": 1, "status": 400, "body": {
                "code": 400, "message": "documents[1].name: at most 32 characters"}})
    await send(bridge.smtp_address, fax_mail(
        "notsubmitted@example.com", "+4989123456@fax.local", "Contract draft",
        [("contract.pdf", sample_pdf(2, "Contract"))]))
    out["notsubmitted"] = await one_mail(bridge, "notsubmitted@example.com")
    await outcome(bridge.sim_url, "+4930*", "NOFAX")
    await outcome(bridge.sim_url, "+4940*", "BUSY")
    await send(bridge.smtp_address, fax_mail(
        "delivered@example.com", "ACME Accounting <+4989123456@fax.local>", "Invoice 4711",
        [("invoice-4711.pdf", sample_pdf(3))]))
    await send(bridge.smtp_address, fax_mail(
        "partial@example.com",
        "Jane Doe <+4989123456@fax.local>, Bob's Office <+49301234567@fax.local>",
        "Price list 2027", [("prices.pdf", sample_pdf(2, "Prices")),
                            ("terms.pdf", sample_pdf(1, "Terms"))]))
    await send(bridge.smtp_address, fax_mail(
        "failed@example.com", "+494012345678@fax.local", "Order 815",
        [("order.pdf", sample_pdf(1, "Order"))]))
    for kind in ("delivered", "partial", "failed"):
        out[kind] = await one_mail(bridge, f"{kind}@example.com")
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{bridge.sim_url}/_sim/inbound", json={
            "topic": "demo", "metadata": {
                "callingNumber": "+4989987654", "calledNumber": "+4930999999",
                "remoteCsid": "ACME LOGISTICS", "receivedTs": "2026-11-30T13:05:00Z"},
            "documents": [{"data": base64.b64encode(sample_tiff(2)).decode(),
                           "extension": "tif"}]})
        assert r.status_code == 201, r.text
    out["inbound"] = await one_mail(bridge, "fax-inbox@localhost")
    return out


def screenshot(html_file: Path, png: Path, size: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             "--hide-scrollbars", f"--screenshot={png}", f"--window-size={size[0]},{size[1]}",
             html_file.as_uri()],
            check=True, capture_output=True, timeout=120)


def not_blank(png: Path) -> bool:
    """Real content: several shades, and more than a sliver of the page not white."""
    img = Image.open(png).convert("L")
    hist = img.histogram()
    shades = sum(1 for n in hist if n)
    return shades > 8 and sum(hist[:200]) > 0.005 * img.width * img.height \
        and ImageStat.Stat(img).stddev[0] > 5


def right_margin_is_empty(png: Path) -> bool:
    """Nothing was cut off at the right edge: the last 4 columns are background."""
    img = Image.open(png).convert("L")
    strip = img.crop((img.width - 4, 0, img.width, img.height))
    return strip.getextrema()[0] > 230


async def test_screenshots_of_every_kind_of_mail(make_bridge):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (Debian package chromium); CI needs it")
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)")
    mails = await every_kind_of_mail(make_bridge)
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    for kind, msg in mails.items():
        (OUT / f"{kind}.eml").write_bytes(msg.as_bytes())
        (OUT / f"{kind}.txt").write_text(msg.get_body(("plain",)).get_content())
        html = self_contained_html(msg)
        (OUT / f"{kind}.html").write_text(html)
        # as a client that drops every style shows it: attributes and tables only
        (OUT / f"{kind}-nocss.html").write_text(re.sub(r'\sstyle="[^"]*"', "", html))
        for name, size in SHOTS.items():
            page = OUT / f"{kind}{'-nocss' if name.startswith('nocss') else ''}.html"
            png = OUT / f"{kind}-{name}.png"
            await asyncio.to_thread(screenshot, page, png, size)
            assert png.exists() and not_blank(png), png
            assert right_margin_is_empty(png), f"{png}: content cut off at the right edge"
    print(f"\nmail screenshots: {OUT}")
    assert sorted(p.name for p in OUT.glob("*.png")) == sorted(
        f"{k}-{n}.png" for k in mails for n in SHOTS)
