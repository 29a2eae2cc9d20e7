"""A real SMTP relay for tests: aiosmtpd on 127.0.0.1, in the test's event loop.
It can refuse chosen recipients, defer (4xx) a number of transactions, stall before
answering RCPT, and be stopped and started again on its port."""

from __future__ import annotations

import asyncio
import email
import email.policy
from email.message import EmailMessage

from aiosmtpd.smtp import SMTP


class Relay:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.refuse: dict[str, str] = {}  # address → reply, e.g. "550 5.1.1 no such user"
        self.rcpt_attempts: list[str] = []
        self.defer_data: int = 0  # answer this many DATA commands with a 4xx
        self.data_reply_4xx = "451 4.3.0 try again later"
        self.rcpt_delay: float = 0.0  # stall before answering RCPT (a slow relay)
        self.data_replies: list[str] = []
        self.server: asyncio.base_events.Server | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001
        self.rcpt_attempts.append(address)
        if self.rcpt_delay:
            await asyncio.sleep(self.rcpt_delay)
        if address.lower() in self.refuse:
            return self.refuse[address.lower()]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
        if self.defer_data > 0:
            self.defer_data -= 1
            self.data_replies.append(self.data_reply_4xx)
            return self.data_reply_4xx
        self.data_replies.append("250")
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              envelope.original_content or envelope.content))
        return "250 2.0.0 queued"

    async def start(self) -> Relay:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self, decode_data=False, hostname="relay.test"), "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def parsed(self) -> list[EmailMessage]:
        return [email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
                for _, _, raw in self.messages]
