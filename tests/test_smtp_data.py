"""DATA as received on the wire (the listener collects it itself, see FaxSMTP._data):
dot-unstuffing, the size and line-length limits, and that the connection stays
usable after a refused message."""

from __future__ import annotations

import asyncio

from tests.conftest import wait_for

HEAD = (b"From: alice@example.com\r\nTo: +4989123456@fax.local\r\nSubject: dots\r\n"
        b"Message-ID: <dots@example.com>\r\n\r\n")


class Wire:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, address: str) -> Wire:
        host, port = address.split(":")
        wire = cls(*await asyncio.open_connection(host, int(port)))
        assert (await wire.reply()).startswith("220")
        assert (await wire.cmd(b"EHLO test.example")).startswith("250")
        return wire

    async def reply(self) -> str:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.r.readline(), 20)).decode()
            lines.append(line.rstrip())
            if line[3:4] != "-":
                return "\n".join(lines)

    async def cmd(self, line: bytes) -> str:
        self.w.write(line + b"\r\n")
        return await self.reply()

    async def transaction(self, data: bytes) -> str:
        assert (await self.cmd(b"MAIL FROM:<alice@example.com>")).startswith("250")
        assert (await self.cmd(b"RCPT TO:<+4989123456@fax.local>")).startswith("250")
        assert (await self.cmd(b"DATA")).startswith("354")
        self.w.write(data + b".\r\n")
        return await self.reply()


async def test_dot_stuffed_lines_are_stored_unstuffed(make_bridge):
    bridge = await make_bridge()
    wire = await Wire.open(bridge.smtp_address)
    body = b"first\r\n..hidden dot line\r\n...two dots\r\n.\r\n"  # the last is data too
    stuffed = HEAD + body.replace(b"\r\n.", b"\r\n..")
    reply = await wire.transaction(stuffed)
    assert reply.startswith("250"), reply
    job_id = reply.split("Queued as ")[1].split(":")[0]
    assert bridge.store.job_raw(job_id) == HEAD + body
    await wire.cmd(b"QUIT")


async def test_refused_data_leaves_the_connection_usable(make_bridge):
    bridge = await make_bridge(smtp={"max_message_size": 20000})
    wire = await Wire.open(bridge.smtp_address)
    big = HEAD + (b"x" * 70 + b"\r\n") * 400
    assert (await wire.transaction(big)) == \
        "552 5.3.4 Message too big: this server takes at most 20000 bytes"
    long_line = HEAD + b"y" * 1500 + b"\r\n"
    assert (await wire.transaction(long_line)).startswith("500 5.5.2 Line too long")
    # longer than the stream reader's buffer limit: read through in pieces
    huge_line = HEAD + b"z" * 200_000 + b"\r\nafter\r\n"
    assert (await wire.transaction(huge_line)).startswith("500 5.5.2 Line too long")
    ok = await wire.transaction(HEAD + b"fine\r\n")
    assert ok.startswith("250"), ok
    await wire.cmd(b"QUIT")
    await wait_for(lambda: len(bridge.store.list_jobs()) == 1)
    # each refusal is in the SMTP log with the reply the client got, and no job
    rows = await wait_for(lambda: len(r := bridge.store.list_log()) >= 4 and r)
    replies = sorted(row.reply[:9] for row in rows if row.job_id is None)
    assert replies == ["500 5.5.2", "500 5.5.2", "552 5.3.4"]
