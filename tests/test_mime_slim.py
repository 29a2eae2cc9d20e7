"""slim(): large base64 bodies are decoded from the received bytes instead of going
through the email package. Whatever the message, the extraction must be exactly
what a full parse gives (the bodies are cut with a tiny threshold here)."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import faxbridge.intake.slim as slim_mod
from faxbridge.intake import mime
from faxbridge.intake.slim import slim
from tests.test_bad_input import ALLOWED
from tests.test_bad_input import mime as any_mime


def full_parse(raw: bytes) -> mime.Extraction:
    return mime._extract(raw, ALLOWED, "first", raw, {})


@pytest.fixture(autouse=True)
def tiny_threshold(monkeypatch):
    monkeypatch.setattr(slim_mod, "THRESHOLD", 8)


def b64(data: bytes, eol: bytes = b"\r\n") -> bytes:
    return base64.encodebytes(data).replace(b"\n", eol)


def part(ctype: str, body: bytes, cte: str = "base64", name: str = "a.pdf",
         eol: bytes = b"\r\n") -> bytes:
    return (f"Content-Type: {ctype}; name=\"{name}\"{eol.decode()}"
            f"Content-Transfer-Encoding: {cte}{eol.decode()}"
            f"Content-Disposition: attachment; filename=\"{name}\"{eol.decode()}{eol.decode()}"
            ).encode() + body


def multipart(boundary: str, parts: list[bytes], sub: str = "mixed", eol: bytes = b"\r\n",
              close: bool = True, preamble: bytes = b"") -> bytes:
    b = boundary.encode()
    body = preamble + b"".join(b"--" + b + eol + p + eol for p in parts)
    if close:
        body += b"--" + b + b"--" + eol
    return (f"Content-Type: multipart/{sub}; boundary=\"{boundary}\"{eol.decode()}"
            f"{eol.decode()}").encode() + body


PDF = b"%PDF-1.4\n" + os.urandom(3000)


def mail(body: bytes, eol: bytes = b"\r\n") -> bytes:
    return b"From: a@example.com" + eol + b"Subject: s" + eol + body


CASES = {
    "one attachment": mail(multipart("b1", [part("text/plain", b"hello", "7bit", "t.txt"),
                                            part("application/pdf", b64(PDF))])),
    "LF only": mail(multipart("b1", [part("application/pdf", b64(PDF, b"\n"), eol=b"\n")],
                              eol=b"\n"), b"\n"),
    "inner boundary extends the outer": mail(multipart("abc", [
        multipart("abcd", [part("application/pdf", b64(PDF)),
                           part("application/pdf", b64(PDF[::-1]), name="b.pdf")])])),
    "no close delimiter": mail(multipart("b1", [part("application/pdf", b64(PDF))],
                                         close=False)),
    "preamble with a fake delimiter": mail(multipart(
        "b1", [part("application/pdf", b64(PDF))], preamble=b"--b1x not one\r\n")),
    "bad padding": mail(multipart("b1", [part("application/pdf", b64(PDF).rstrip(b"=\r\n")
                                              [:-1])])),
    "junk in base64": mail(multipart("b1", [part("application/pdf",
                                                 b64(PDF)[:500] + b"!!" + b64(PDF)[500:])])),
    "top level base64": mail(part("application/pdf", b64(PDF))),
    "forwarded message": mail(multipart("o", [
        b"Content-Type: message/rfc822\r\n\r\n" + mail(multipart(
            "i", [part("application/pdf", b64(PDF))]))])),
    "part without headers": mail(multipart("b1", [b"\r\n" + b64(PDF)])),
    "quoted-printable stays": mail(multipart("b1", [part("application/pdf", b"=25PDF-1.4\r\n",
                                                         "quoted-printable")])),
    "delimiter inside body": mail(multipart("b1", [part(
        "application/pdf", b64(PDF)[:300] + b"\r\n--b1\r\n" + b64(PDF)[300:])])),
}


@pytest.mark.parametrize("name", CASES)
def test_slimmed_extraction_equals_the_full_parse(name):
    raw = CASES[name]
    assert mime.extract(raw, ALLOWED, "first") == full_parse(raw)


def test_big_bodies_are_really_cut(monkeypatch):
    raw = CASES["inner boundary extends the outer"]
    s = slim(raw)
    assert len(s.cuts) == 2 and len(s.data) < 1000
    parsed: list[int] = []  # what the email package is given to parse
    real = mime.email.message_from_bytes
    monkeypatch.setattr(mime.email, "message_from_bytes",
                        lambda data, **kw: parsed.append(len(data)) or real(data, **kw))
    res = mime.extract(raw, ALLOWED, "first")
    assert [d.data for d in res.documents] == [PDF, PDF[::-1]]
    assert parsed == [len(s.data)]  # only the slim message, no fallback to a full parse
    assert not slim(CASES["junk in base64"]).cuts  # not pure base64: left to the parser


@st.composite
def with_good_base64(draw) -> bytes:
    """The bad-input generator, plus well-formed base64 leaves (which get cut)."""
    leaves = draw(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4))
    parts = [part(draw(st.sampled_from(["application/pdf", "text/plain", "image/png",
                                        "application/ms-tnef"])),
                  b64(data, draw(st.sampled_from([b"\r\n", b"\n"]))),
                  name=f"f{i}.pdf") for i, data in enumerate(leaves)]
    parts += draw(st.lists(any_mime(), max_size=2))
    order = draw(st.permutations(parts))
    return mail(multipart(draw(st.sampled_from(["b", "b-1", "=_x"])), list(order),
                          close=draw(st.booleans())))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(st.one_of(with_good_base64(), any_mime()))
def test_slimmed_extraction_equals_the_full_parse_for_generated_mail(raw):
    assert mime.extract(raw, ALLOWED, "first") == full_parse(raw)


def test_header_block_stops_at_the_blank_line_with_crlf_or_lf():
    from faxbridge.intake.slim import header_block
    assert header_block(b"To: a\r\nCc: b\r\n\r\nbody\r\n\r\nmore") == b"To: a\r\nCc: b\r\n\r\n"
    assert header_block(b"To: a\nCc: b\n\nbody\n\nmore") == b"To: a\nCc: b\n\n"
    assert header_block(b"To: a\r\n") == b"To: a\r\n"  # no body at all
