"""A small asyncio SMTP client for tests that need many sessions at once
(asyncio.gather), a chosen client address (127.0.0.2 …) and every reply as
sent: no smtplib thread per session, no rewriting of addresses."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, address: str, *, source: str = "127.0.0.1", tls: bool = False,
                   login: tuple[str, str] | None = None) -> Session:
        host, _, port = address.rpartition(":")
        s = cls(*await asyncio.open_connection(host, int(port), local_addr=(source, 0)))
        try:
            await s._start(tls, login)
        except BaseException:
            s.w.close()  # no transport left open behind a failed assertion
            raise
        return s

    async def _start(self, tls: bool, login: tuple[str, str] | None) -> None:
        s = self
        assert (await s.reply()).startswith("220")
        assert (await s.cmd("EHLO client.example")).startswith("250")
        if tls:
            assert (await s.cmd("STARTTLS")).startswith("220")
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            await s.w.start_tls(ctx)
            assert (await s.cmd("EHLO client.example")).startswith("250")
        if login:
            blob = base64.b64encode(f"\0{login[0]}\0{login[1]}".encode()).decode()
            reply = await s.cmd(f"AUTH PLAIN {blob}")
            assert reply.startswith("235"), reply

    async def reply(self) -> str:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.r.readline(), 60)).decode()
            assert line, "connection closed"
            lines.append(line.rstrip("\r\n"))
            if line[3:4] != "-":
                return "\n".join(lines)

    async def cmd(self, line: str) -> str:
        self.w.write(line.encode() + b"\r\n")
        return await self.reply()

    async def mail(self, sender: str) -> str:
        return await self.cmd(f"MAIL FROM:<{sender}>")

    async def rcpt(self, address: str) -> str:
        return await self.cmd(f"RCPT TO:<{address}>")

    async def data(self, sender: str, to: str, subject: str = "t") -> str:
        reply = await self.cmd("DATA")
        assert reply.startswith("354"), reply
        body = (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
                "Content-Type: text/plain\r\n\r\nhello\r\n.\r\n")
        self.w.write(body.encode())
        return await self.reply()

    async def close(self) -> None:
        # the server may have closed already (421, or after a refusal): fine here
        with contextlib.suppress(AssertionError, ConnectionError):
            await self.cmd("QUIT")
        self.w.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.w.wait_closed()


async def send_one(address: str, sender: str, rcpts: list[str], *, source: str = "127.0.0.1",
                   tls: bool = False, login: tuple[str, str] | None = None
                   ) -> tuple[str, list[str], str | None]:
    """One whole transaction: (MAIL reply, RCPT replies, DATA reply or None when no
    recipient was accepted)."""
    s = await Session.open(address, source=source, tls=tls, login=login)
    try:
        m = await s.mail(sender)
        if not m.startswith("250"):
            return m, [], None
        replies = [await s.rcpt(r) for r in rcpts]
        if not any(r.startswith("250") for r in replies):
            return m, replies, None
        return m, replies, await s.data(sender, rcpts[0])
    finally:
        await s.close()
