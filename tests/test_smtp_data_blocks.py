"""DATA read in blocks (FaxSMTP._read_blocks): whatever way the client's bytes are
cut into TCP segments, the stored mail is the unstuffed data, the terminator is
found exactly once and nothing after it is swallowed."""

from __future__ import annotations

import base64
import os

from tests.test_smtp_data import HEAD, Wire


def big_body(lines: int) -> bytes:
    """Base64 lines, with dot-leading lines (stuffed on the wire) spread through."""
    out = []
    for i in range(lines):
        line = base64.b64encode(os.urandom(57))
        out.append(b"." + line if i % 97 == 0 else line)
    return b"\r\n".join(out) + b"\r\n"


async def send_in_pieces(wire: Wire, data: bytes, piece: int) -> None:
    for i in range(0, len(data), piece):
        wire.w.write(data[i:i + piece])
        await wire.w.drain()


async def test_cut_anywhere_stored_unstuffed(make_bridge):
    bridge = await make_bridge()
    body = big_body(3000)  # about 230 KB: many reader buffers
    stuffed = (HEAD + body).replace(b"\r\n.", b"\r\n..")
    # piece sizes that put the cut inside CRLF, before a dot, inside CRLF "." CRLF
    for piece in (7, 4093, 1 << 16):
        wire = await Wire.open(bridge.smtp_address)
        assert (await wire.cmd(b"MAIL FROM:<alice@example.com>")).startswith("250")
        assert (await wire.cmd(b"RCPT TO:<+4989123456@fax.local>")).startswith("250")
        assert (await wire.cmd(b"DATA")).startswith("354")
        await send_in_pieces(wire, stuffed + b".\r\n", piece)
        reply = await wire.reply()
        assert reply.startswith("250"), (piece, reply)
        job_id = reply.split("Queued as ")[1].split(":")[0]
        assert bridge.store.job_raw(job_id) == HEAD + body, piece
        assert (await wire.cmd(b"QUIT")).startswith("221")


async def test_command_right_after_the_dot_is_answered(make_bridge):
    """A client that pipelines its next command with the final dot (RFC 2920) gets
    both replies: the block reader stops at the terminator."""
    bridge = await make_bridge()
    wire = await Wire.open(bridge.smtp_address)
    assert (await wire.cmd(b"MAIL FROM:<alice@example.com>")).startswith("250")
    assert (await wire.cmd(b"RCPT TO:<+4989123456@fax.local>")).startswith("250")
    assert (await wire.cmd(b"DATA")).startswith("354")
    wire.w.write(HEAD + b"one line\r\n.\r\nNOOP\r\n")
    assert (await wire.reply()).startswith("250 2.0.0"), "the mail"
    assert (await wire.reply()).startswith("250"), "the NOOP"
    assert (await wire.cmd(b"QUIT")).startswith("221")


async def test_long_line_inside_a_block_is_refused(make_bridge):
    bridge = await make_bridge()
    wire = await Wire.open(bridge.smtp_address)
    body = b"short\r\n" * 50 + b"x" * 1200 + b"\r\n" + b"short\r\n" * 50
    reply = await wire.transaction(HEAD + body)
    assert reply.startswith("500"), reply
    assert "line" in reply.lower()
    # the connection is in step: the next mail is taken
    assert (await wire.transaction(HEAD + b"fine\r\n")).startswith("250")
    assert (await wire.cmd(b"QUIT")).startswith("221")


async def test_first_line_starting_with_a_dot_is_unstuffed(make_bridge):
    """The first byte "." takes the line-by-line reader (the final dot may follow at
    once); its unstuffing is the same."""
    bridge = await make_bridge()
    wire = await Wire.open(bridge.smtp_address)
    reply = await wire.transaction(b"..X-Dot: 1\r\n" + HEAD)
    # the mail's first line is ".X-Dot: 1", not a header: refused, but not as
    # bare newline or line length
    assert reply[:3] in ("250", "554"), reply
    assert "bare" not in reply.lower() and "line too long" not in reply.lower()
    assert (await wire.cmd(b"QUIT")).startswith("221")


async def test_data_starting_with_crlf_ends_at_the_dot(make_bridge):
    """Data whose first line is empty ("\r\n", then the final dot, or a body without
    headers) is read line by line from its first byte, CR: that CR's line ends at
    the LF right after it. (The fuzz run found "\r\n.\r\n" waiting for more data
    until the client timed out.)"""
    bridge = await make_bridge()
    for data, stored in ((b"", None), (b"hello\r\n", b"\r\nhello\r\n"),
                         (b"\r\r\n", None)):
        wire = await Wire.open(bridge.smtp_address)
        assert (await wire.cmd(b"MAIL FROM:<alice@example.com>")).startswith("250")
        assert (await wire.cmd(b"RCPT TO:<+4989123456@fax.local>")).startswith("250")
        assert (await wire.cmd(b"DATA")).startswith("354")
        wire.w.write(b"\r\n" + data + b".\r\n")
        reply = await wire.reply()  # an answer, not a hang until the idle timeout
        assert reply[:1] in ("2", "5"), (data, reply)
        if stored is not None and reply.startswith("250"):
            job_id = reply.split("Queued as ")[1].split(":")[0]
            assert bridge.store.job_raw(job_id) == stored
        assert (await wire.cmd(b"NOOP")).startswith("250"), data  # still in step
        assert (await wire.cmd(b"QUIT")).startswith("221")
