"""The mails people read, made for real (SMTP in, simulator outcomes, a fax made to
arrive, read back from the Maildir): times in the configured zone, what was faxed,
the text part saying what the HTML says, no internal ids, HTML that needs no CSS
and keeps numbers and times on one line."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo

import pytest

from faxbridge.config import parse
from faxbridge.errors import ConfigError
from tests.mailviews import html_text, sample_pdf, text_lines
from tests.smtp_client import send
from tests.test_mail_screenshots import every_kind_of_mail, fax_mail, one_mail
from tests.test_reports import FAST

NEW_YORK = zoneinfo.ZoneInfo("America/New_York")


def human(iso: str, zone: zoneinfo.ZoneInfo) -> str:
    """The expected form, computed here apart from the bridge's filter."""
    t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(zone)
    return f"{t:%a} {t.day} {t:%b %Y, %H:%M} {t.tzname()}"


@pytest.fixture
async def mails(make_bridge):
    return await every_kind_of_mail(make_bridge)


async def test_times_in_the_configured_zone_and_what_was_faxed(make_bridge):
    bridge = await make_bridge(fax=FAST, mail={"timezone": "America/New_York"})
    t = await send(bridge.smtp_address, fax_mail(
        "alice@example.com", "+4989123456@fax.local", "Invoice 4711",
        [("invoice.pdf", sample_pdf(3))]))
    msg = await one_mail(bridge, "alice@example.com")
    # 4 pages: the simulator renders the mail text as one page before the 3-page PDF
    assert msg["Subject"] == "Fax to +49 89 123456 delivered (4 pages): Invoice 4711"
    rec = bridge.store.job_recipients(t.job_id)[0]
    sent = human(rec.sent_ts, NEW_YORK)
    assert sent.endswith(" EST") and rec.sent_ts.endswith("Z")
    text = msg.get_body(("plain",)).get_content()
    html = html_text(msg.get_body(("html",)).get_content())
    for body in (text, html):
        assert f"4 pages, sent {sent}." in body
        assert rec.sent_ts not in body  # no raw ISO time anywhere
    lines = text_lines(msg)
    assert lines[lines.index("What was faxed") + 1:][:3] == [
        "Page 1: your mail text", "Pages 2–4: invoice.pdf",
        "The mail text was faxed as the first page."]
    assert "Page 1: your mail text Pages 2–4: invoice.pdf The mail text was faxed as the " \
           "first page." in html
    job = bridge.store.job(t.job_id)
    received = human(dt.datetime.fromtimestamp(job.created, dt.UTC).isoformat(), NEW_YORK)
    assert f"Your mail: Invoice 4711 (received {received})" in text


async def test_a_mail_without_text_lists_only_its_documents(make_bridge):
    bridge = await make_bridge(fax=FAST)
    m = fax_mail("bob@example.com", "+4989123456@fax.local", "Scan", [("scan.pdf",
                                                                       sample_pdf(2))], body="")
    await send(bridge.smtp_address, m)
    text = (await one_mail(bridge, "bob@example.com")).get_body(("plain",)).get_content()
    assert "- Pages 1–2: scan.pdf" in text and "mail text" not in text


async def test_every_mail_says_the_same_in_text_and_html_without_internal_ids(
        mails, make_bridge):
    for kind, msg in mails.items():
        html = msg.get_body(("html",)).get_content()
        seen = html_text(html)
        for line in text_lines(msg):
            assert line in seen, f"{kind}: text line missing from the HTML: {line!r}"
        # the references an admin needs are headers, not text for the reader
        ref = msg["X-Faxbridge-Job"] or msg["X-Faxbridge-Fax"]
        assert ref, kind
        plain = msg.get_body(("plain",)).get_content()
        for ident in (ref, ref.split("/")[-1]):
            assert ident not in plain and ident not in html, (kind, ident)
        assert not re.search(r"\bFJ\w{6,}|Fax job:|Retarus\b|topic", plain + seen), kind


async def test_html_needs_no_css_and_keeps_numbers_and_times_whole(mails):
    for kind, msg in mails.items():
        html = msg.get_body(("html",)).get_content()
        body = html.split("</head>", 1)[1]
        # nothing in a <style> block or a class, which many clients drop: the layout
        # is in tables and attributes, inline styles only refine it
        assert "<style" not in html and "class=" not in html, kind
        assert 'width="100%"' in html and "max-width:600px" in html
        # a phone number or a time with a breakable space could wrap in a narrow pane
        assert not re.search(r"\+\d+ \d", body), (kind, re.findall(r".{20}\+\d+ \d.{10}", body))
        assert not re.search(r"\d{4}, \d\d:\d\d|\d\d:\d\d [A-Z]{3}", body), kind
        assert re.search(r"\d{4},\xa0\d\d:\d\d\xa0[A-Z]{3}", body), kind


async def test_advice_fits_the_outcome(mails):
    texts = {k: m.get_body(("plain",)).get_content() for k, m in mails.items()}
    assert "What to do" not in texts["delivered"]
    assert "send your mail again to that number only" in texts["partial"]
    assert "What to do: Check that the number is a fax number." in texts["partial"]
    assert "What to do: Try again later" in texts["failed"]
    assert "What to do: Fix what the reason names" in texts["notsubmitted"]
    assert "What was to be faxed" in texts["notsubmitted"]
    assert "The mail text was faxed" not in texts["notsubmitted"]
    assert "The mail text was faxed as the first page." in texts["partial"]


def test_an_unknown_time_zone_is_refused_with_its_key():
    with pytest.raises(ConfigError) as err:
        parse({"mail": {"timezone": "Europe/Berln"}})
    assert "mail.timezone: unknown time zone 'Europe/Berln'" in str(err.value)
    assert parse({"mail": {"timezone": "Europe/Berlin"}}).mail.timezone == "Europe/Berlin"
    assert parse({}).mail.timezone is None  # the host's zone
