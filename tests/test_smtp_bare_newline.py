"""Bare <LF> and bare <CR> in DATA: refused with the same reply naming the
problem whatever the mail's size, and only CRLF "." CRLF ends the data."""

from __future__ import annotations

import pytest

from faxbridge import replies
from tests.test_smtp_data import HEAD, Wire


def lf_body(size: int) -> bytes:
    lines = []
    n = 0
    while n < size:
        lines.append(f"line {len(lines)} of a mail written with bare LF".encode())
        n += len(lines[-1]) + 1
    return HEAD + b"\n".join(lines) + b"\r\n"


@pytest.mark.parametrize("body", [
    lf_body(200),                       # small: was accepted
    lf_body(50_000),                    # one 50 kB "line": was "500 5.5.2 Line too long"
    lf_body(300_000),                   # beyond the stream reader's buffer limit
    HEAD + b"a bare CR\rin the middle\r\n",
    HEAD + b"ends with CR CR LF\r\r\n",
    HEAD + b"fine\r\n" + b"x" * 2000 + b"\r\nand then\nbare\r\n",  # after a long line
], ids=["small-lf", "50k-lf", "300k-lf", "bare-cr", "cr-crlf", "long-line-then-lf"])
async def test_bare_newlines_get_one_precise_reply(make_bridge, body):
    bridge = await make_bridge()
    wire = await Wire.open(bridge.smtp_address)
    reply = await wire.transaction(body)
    assert reply == replies.S554_BARE_NEWLINE, reply
    assert reply.startswith("554 5.5.2 Bare <LF> or <CR>")
    # the session goes on, and the refusal is in the SMTP log
    assert (await wire.cmd(b"NOOP")).startswith("250")
    await wire.cmd(b"QUIT")


async def test_lf_dot_lf_does_not_end_data(make_bridge):
    bridge = await make_bridge()
    wire = await Wire.open(bridge.smtp_address)
    # "\n.\n" (and "\r\n.\n", "\n.\r\n") inside the data: none of them is the end;
    # a command after them is still data. The only reply comes after CRLF.CRLF.
    wire.w.write(b"MAIL FROM:<alice@example.com>\r\n")
    assert (await wire.reply()).startswith("250")
    assert (await wire.cmd(b"RCPT TO:<+4989123456@fax.local>")).startswith("250")
    assert (await wire.cmd(b"DATA")).startswith("354")
    wire.w.write(HEAD + b"body\n.\nNOOP\r\nx\r\n.\nNOOP\r\ny\n.\r\nNOOP\r\n.\r\n")
    assert await wire.reply() == replies.S554_BARE_NEWLINE
    # the next reply answers this VRFY (252), not one of the NOOPs (250): nothing
    # in the data was taken as a command
    assert (await wire.cmd(b"VRFY someone")).startswith("252")
    await wire.cmd(b"QUIT")


async def test_crlf_mail_is_still_accepted(make_bridge):
    bridge = await make_bridge()
    wire = await Wire.open(bridge.smtp_address)
    reply = await wire.transaction(HEAD + b"line one\r\nline two\r\n")
    assert reply.startswith("250"), reply
    await wire.cmd(b"QUIT")
