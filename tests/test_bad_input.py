"""Bad input: the MIME walker never raises, and the SMTP listener answers every
nasty mail within the timeout, never 250 without a committed job, and keeps
working afterwards. Abuse attempts are all refused and all in the SMTP log."""

from __future__ import annotations

import base64
import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faxbridge.config import FaxConfig
from faxbridge.intake.mime import extract
from tests.smtp_client import send

ALLOWED = FaxConfig().allowed_types

header_value = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
ctype = st.sampled_from(["text/plain", "text/html", "application/pdf",
                         "application/octet-stream", "multipart/mixed", "multipart/related",
                         "multipart/alternative", "message/rfc822", "image/png",
                         "application/ms-tnef", "x/garbage", "", "multipart/"])
charset = st.sampled_from(["utf-8", "iso-8859-1", "x-unknown-42", "utf-7", "", "ascii\x00"])
cte = st.sampled_from(["base64", "quoted-printable", "7bit", "8bit", "binary", "x-uue", ""])


@st.composite
def mime(draw, depth: int = 0) -> bytes:
    boundary = draw(st.text("abcXYZ019=_-", min_size=1, max_size=20))
    ct = draw(ctype)
    head = (f"Content-Type: {ct}; boundary=\"{boundary}\"; charset={draw(charset)}; "
            f"name=\"{draw(header_value)}\"\r\n"
            f"Content-Transfer-Encoding: {draw(cte)}\r\n"
            f"Content-Disposition: {draw(st.sampled_from(['attachment', 'inline', '']))}; "
            f"filename=\"{draw(header_value)}\"\r\n").encode("utf-8", "surrogatepass")
    if ct.startswith("multipart") and depth < 4:
        parts = draw(st.lists(mime(depth + 1), max_size=4))
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
        if draw(st.booleans()):
            body += b"--" + boundary.encode() + b"--\r\n"
    else:
        body = draw(st.binary(max_size=400))
        if draw(st.booleans()):
            body = base64.b64encode(body)[: draw(st.integers(0, 600))]  # broken base64
    return head + b"\r\n" + body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mime(), st.binary(max_size=2000)))
def test_mime_walker_never_raises(raw):
    res = extract(raw, ALLOWED, "first")
    for doc in res.documents:  # whatever it makes is a valid Fax4A document
        assert 1 <= len(doc.name) <= 32 and doc.data
    assert all(p.why for p in res.parts)


def nasty_corpus() -> list[tuple[str, bytes]]:
    rnd = random.Random(7)
    head = b"From: alice@example.com\r\nTo: +4989123456@fax.local\r\nSubject: nasty\r\n"
    deep = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
    for i in range(1, 120):
        deep += f"--b{i - 1}\r\nContent-Type: multipart/mixed; boundary=b{i}\r\n\r\n".encode()
    many = b"Content-Type: multipart/mixed; boundary=m\r\n\r\n" + b"".join(
        b"--m\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; "
        b"filename=p%d.pdf\r\n\r\n%%PDF-1.4 x\r\n" % i for i in range(3000)) + b"--m--\r\n"
    return [
        ("nul bytes", head + b"\r\nhello\x00world\x00\r\n"),
        ("broken base64", head + b"Content-Type: application/pdf\r\nContent-Transfer-Encoding:"
                                 b" base64\r\nContent-Disposition: attachment; filename=a.pdf"
                                 b"\r\n\r\nJVBERi0x!!!@@@###LjQK=\r\n"),
        ("unknown charset", head + b"Content-Type: text/plain; charset=x-klingon\r\n\r\n"
                                   b"\xff\xfe\xfa text\r\n"),
        ("huge header", head + b"X-Long: " + b"a" * 900 + b"\r\n" + b"X-Folded: " +
         b"\r\n ".join([b"b" * 900] * 50) + b"\r\n\r\nbody\r\n"),
        ("deep nesting", head + deep),
        ("thousands of parts", head + many),
        ("random binary", head + b"\r\n" + bytes(rnd.randrange(1, 256) for _ in range(20000))
         .replace(b"\r", b"").replace(b"\n", b"\r\n")),
        ("no header end", b"garbage without any header structure"),
        ("8bit subject", b"From: a@example.com\r\nSubject: \xe4\xf6\xfc =?x-bad?Q?=ZZ?=\r\n\r\nhi"),
    ]


async def test_nasty_mails_answered_and_never_250_without_job(make_bridge):
    bridge = await make_bridge(smtp={"timeout": 30})
    for name, raw in nasty_corpus():
        t = await send(bridge.smtp_address, raw, mail_from="alice@example.com",
                       rcpts=["+4989123456@fax.local"])
        code = t.data[0]
        assert code in (250, 500, 552, 554) or 400 <= code < 500, (name, t.data)
        if code == 250:
            assert bridge.store.job(t.job_id) is not None, name
    t = await send(bridge.smtp_address, b"From: a@example.com\r\nSubject: ok\r\n\r\nfine\r\n",
                   mail_from="alice@example.com", rcpts=["+4989123456@fax.local"])
    assert t.data[0] == 250  # still healthy afterwards
    # every nasty transaction is in the SMTP log with the reply it got
    from tests.conftest import wait_for
    rows = await wait_for(lambda: len(r := bridge.store.list_log(limit=50))
                          >= len(nasty_corpus()) + 1 and r)
    assert all(r.reply for r in rows)
    accepted = [r for r in rows if r.ok]
    assert all(bridge.store.job(r.job_id) is not None for r in accepted)


async def test_abuse_refused_and_logged(make_bridge, tmp_path):
    bridge = await make_bridge(smtp={"trusted_networks": ["10.0.0.0/8"], "max_recipients": 5})
    t = await send(bridge.smtp_address, b"Subject: x\r\n\r\nx", mail_from="alice@example.com",
                   rcpts=["victim@gmail.com"])
    assert t.mail[0] == 530  # untrusted network, no AUTH: nothing, not even relaying
    assert "AUTH" not in t.ehlo[1]  # no AUTH without TLS
    open_bridge = await make_bridge(smtp={"max_recipients": 5},
                                    storage={"data_dir": tmp_path / "data2"})
    flood = [f"+49891234{i:03d}@fax.local" for i in range(8)]
    t2 = await send(open_bridge.smtp_address, b"Subject: x\r\n\r\nx",
                    mail_from="alice@example.com",
                    rcpts=["victim@gmail.com", "+499001234567@fax.local", *flood])
    codes = [c for c, _ in t2.rcpt]
    assert codes[0] == 550 and codes[1] == 550
    assert codes[2:] == [250] * 5 + [452] * 3
    from tests.conftest import wait_for
    rows = await wait_for(lambda: len(bridge.store.list_log()) >= 1 and bridge.store.list_log())
    assert rows[0].reply.startswith("530 5.7.0")
    logged = await wait_for(lambda: open_bridge.store.list_log())
    rcpts = json.loads(logged[0].recipients_json)
    replies = [r["reply"][:3] for r in rcpts]
    assert replies[0] == "550" and replies[1] == "550" and "452" in replies
