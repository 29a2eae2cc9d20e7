"""Real SMTP sessions against the running bridge; for each accepted mail, the job
the simulator received is compared with what was sent (documents byte for byte)."""

from __future__ import annotations

import base64
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import pytest

from faxbridge.retarus.models import DOC_NAME_RE
from tests.conftest import sim_jobs, wait_for
from tests.smtp_client import send
from tests.tnef_builder import winmail_dat

PDF = b"%PDF-1.4\n1 0 obj<</Type /Page>>endobj\n%\xe2\xe3\xcf\xd3 binary\n%%EOF\n"
PDF2 = b"%PDF-1.7\n1 0 obj<</Type /Page>>endobj\n2 0 obj<</Type /Page>>endobj\n%%EOF\n"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


@pytest.fixture
async def bridge(make_bridge):
    return await make_bridge()


async def submitted(bridge, job_id: str) -> dict[str, Any]:
    """Wait until the simulator has the job whose customerDefinedId is ours."""
    async def find():
        for j in await sim_jobs(bridge.sim_url):
            if (j["request"].get("reference") or {}).get("customerDefinedId") == job_id:
                return j
        return None
    return await wait_for(find)


def docs(job: dict[str, Any]) -> list[tuple[str, bytes, str | None]]:
    return [(d["name"], base64.b64decode(d["data"]), d.get("charset"))
            for d in job["request"]["documents"]]


def basic(subject: str = "Test", to: str = "+4989123456@fax.local") -> EmailMessage:
    m = EmailMessage()
    m["From"] = "alice@example.com"
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = "<test-1@example.com>"
    return m


async def test_outlook_html_with_inline_logo_and_pdf(bridge):
    outer = MIMEMultipart("mixed")
    outer["From"], outer["To"] = "alice@example.com", "Dr. Jane Roe <+49 89 123456@fax.local>"
    outer["Subject"], outer["Message-ID"] = "Befund", "<outlook-1@example.com>"
    related = MIMEMultipart("related")
    alt = MIMEMultipart("alternative")
    alt.attach(MIMEText("Dear Jane,\nthe report is attached.\n", "plain", "utf-8"))
    alt.attach(MIMEText('<p>Dear Jane,</p><p>the report is attached.</p><img src="cid:logo1">',
                        "html", "utf-8"))
    related.attach(alt)
    logo = MIMEImage(PNG, "png")
    logo.add_header("Content-ID", "<logo1>")
    logo.add_header("Content-Disposition", "inline", filename="image001.png")
    related.attach(logo)
    outer.attach(related)
    pdf = MIMEApplication(PDF, "pdf")
    pdf.add_header("Content-Disposition", "attachment", filename="Befund.pdf")
    outer.attach(pdf)
    t = await send(bridge.smtp_address, outer.as_bytes(), mail_from="alice@example.com",
                   rcpts=["+49 89 123456@fax.local".replace(" ", "")])
    assert t.data[0] == 250, t
    job = await submitted(bridge, t.job_id)
    got = docs(job)
    assert [n for n, _, _ in got] == ["mail-body.txt", "Befund.pdf"]
    assert got[0][1] == b"Dear Jane,\nthe report is attached.\n" and got[0][2] == "UTF-8"
    assert got[1][1] == PDF
    assert job["request"]["recipients"] == [{"number": "+4989123456", "properties": [
        {"key": "ToName", "value": "Dr. Jane Roe"}]}]
    assert job["request"]["renderingOptions"]["header"] == "Befund"
    # the log tells why the logo and the HTML alternative were not faxed
    rec = bridge.store.list_log()[0]
    assert "inline image" in rec.parts_json and "HTML alternative" in rec.parts_json


async def test_apple_mail_nesting(bridge):
    # Apple Mail: alternative(text, related(html, pdf inline with a filename))
    outer = MIMEMultipart("alternative")
    outer["From"], outer["To"], outer["Subject"] = ("alice@example.com", "+4989123456@fax.local",
                                                    "Contract")
    outer.attach(MIMEText("Here it is.\n\n-- \nAlice\nACME", "plain"))
    related = MIMEMultipart("related")
    related.attach(MIMEText("<html><body>Here it is.<br></body></html>", "html"))
    pdf = MIMEApplication(PDF2, "pdf")
    pdf.add_header("Content-Disposition", "inline", filename="Contract.pdf")
    pdf.add_header("Content-Id", "<apple-1>")
    related.attach(pdf)
    outer.attach(related)
    t = await send(bridge.smtp_address, outer.as_bytes(), mail_from="alice@example.com",
                   rcpts=["+4989123456@fax.local"])
    job = await submitted(bridge, t.job_id)
    assert docs(job) == [("mail-body.txt", b"Here it is.\n", "UTF-8"),
                         ("Contract.pdf", PDF2, None)]


async def test_text_only_and_signature_dropped(bridge):
    m = basic()
    m.set_content("Bitte zurückrufen.\nGrüße\n-- \nAlice Example\nPhone 123\n")
    t = await send(bridge.smtp_address, m)
    job = await submitted(bridge, t.job_id)
    assert docs(job) == [("mail-body.txt", "Bitte zurückrufen.\nGrüße\n".encode(), "UTF-8")]


async def test_html_only(bridge):
    m = basic()
    m.set_content("<html><head><style>p{color:red}</style></head><body><p>Line&nbsp;one</p>"
                  "<ul><li>item &amp; more</li></ul></body></html>", subtype="html")
    t = await send(bridge.smtp_address, m)
    job = await submitted(bridge, t.job_id)
    body = docs(job)[0][1].decode()
    assert "Line one" in body and "- item & more" in body and "color" not in body


async def test_octet_stream_pdf_without_extension(bridge):
    m = basic()
    m.set_content("see scan")
    m.add_attachment(PDF, maintype="application", subtype="octet-stream", filename="scan0001")
    t = await send(bridge.smtp_address, m)
    job = await submitted(bridge, t.job_id)
    assert docs(job)[1] == ("scan0001.pdf", PDF, None)


async def test_outlook_winmail_dat(bridge):
    m = basic()
    m.set_content("rich text")
    m.add_attachment(winmail_dat([("Angebot.pdf", PDF), ("setup.exe", b"MZ\x90\x00")]),
                     maintype="application", subtype="ms-tnef", filename="winmail.dat")
    t = await send(bridge.smtp_address, m)
    job = await submitted(bridge, t.job_id)
    assert [n for n, _, _ in docs(job)] == ["mail-body.txt", "Angebot.pdf"]
    assert docs(job)[1][1] == PDF
    parts = bridge.store.list_log()[0].parts_json
    assert "winmail.dat unpacked" in parts and "cannot be faxed" in parts


async def test_long_non_ascii_names_and_duplicates(bridge):
    m = basic()
    m.set_content("two files")
    long_name = "Überweisungsbestätigung für Müller & Söhne GmbH – März 2026 (final).pdf"
    m.add_attachment(PDF, maintype="application", subtype="pdf", filename=long_name)
    m.add_attachment(PDF2, maintype="application", subtype="pdf", filename=long_name)
    m.add_attachment("Zeile 1\nZeile 2 äöü\n".encode("iso-8859-1"), maintype="text",
                     subtype="plain", filename="notiz.txt")
    t = await send(bridge.smtp_address, m)
    job = await submitted(bridge, t.job_id)
    got = docs(job)
    names = [n for n, _, _ in got]
    assert names[0] == "mail-body.txt"
    assert all(DOC_NAME_RE.match(n) for n in names) and len(set(names)) == 4
    assert names[1].startswith("Uberweisungsbestatigung") and names[1].endswith(".pdf")
    assert names[2].endswith("-2.pdf") and len(names[2]) <= 32
    assert got[1][1] == PDF and got[2][1] == PDF2
    assert got[3] == ("notiz.txt", "Zeile 1\nZeile 2 äöü\n".encode(), "UTF-8")


async def test_rfc2047_subject_with_percent(bridge):
    m = basic(subject="Rechnung 100% bezahlt – %d%m Überweisung")
    m.set_content("x")
    t = await send(bridge.smtp_address, m)
    assert b"=?utf-8?" in m.as_bytes()
    job = await submitted(bridge, t.job_id)
    header = job["request"]["renderingOptions"]["header"]
    assert header == "Rechnung 100 bezahlt – dm Überweisung"


async def test_several_fax_recipients_one_job(bridge):
    m = basic(to="Jane <+4989123456@fax.local>, Bob <030-1234567@fax.local>")
    m.set_content("to both")
    t = await send(bridge.smtp_address, m)
    assert [c for c, _ in t.rcpt] == [250, 250]
    job = await submitted(bridge, t.job_id)
    assert [(r["number"], r["properties"][0]["value"]) for r in job["request"]["recipients"]] \
        == [("+4989123456", "Jane"), ("+49301234567", "Bob")]
    assert len(await sim_jobs(bridge.sim_url)) == 1


async def test_mixed_fax_and_non_fax_recipients(bridge):
    m = basic(to="+4989123456@fax.local, bob@example.com")
    m.set_content("mixed")
    t = await send(bridge.smtp_address, m)
    assert t.rcpt[0][0] == 250
    assert t.rcpt[1][0] == 550 and t.rcpt[1][1].startswith("5.7.1 Relaying denied")
    job = await submitted(bridge, t.job_id)
    assert [r["number"] for r in job["request"]["recipients"]] == ["+4989123456"]


async def test_job_lifecycle_recorded(bridge):
    m = basic()
    m.set_content("x")
    t = await send(bridge.smtp_address, m)
    await submitted(bridge, t.job_id)
    row = await wait_for(lambda: (j := bridge.store.job(t.job_id)).state == "submitted" and j)
    assert row.retarus_job_id.startswith("FJ") and row.message_id == "<test-1@example.com>"
    kinds = [e.kind for e in bridge.store.job_events(t.job_id)]
    assert kinds[:3] == ["accepted", "submitting", "submitted"]
