"""A real SMTP relay for tests: aiosmtpd on 127.0.0.1, in the test's event loop.
It can refuse chosen recipients, defer (4xx) a number of transactions, stall before
answering RCPT until released, and start later on a port held for it (refusing
connections until then)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from email.message import EmailMessage

from aiosmtpd.smtp import SMTP


class Relay:
    def __init__(self) -> None:
        self.port = 0
        self._sock: socket.socket | None = None
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.refuse: dict[str, str] = {}  # address → reply, e.g. "550 5.1.1 no such user"
        self.rcpt_attempts: list[str] = []
        self.defer_data: int = 0  # answer this many DATA commands with a 4xx
        self.data_reply_4xx = "451 4.3.0 try again later"
        # a slow relay: RCPT is answered only once this is set (a stalled RCPT then
        # goes on; its client has usually given up by then)
        self.rcpt_go = asyncio.Event()
        self.rcpt_go.set()
        self.rcpt_stalls = 0  # RCPT commands that found rcpt_go cleared
        self.data_replies: list[str] = []
        self.queue_ids: list[str] = []  # of the messages accepted, in order
        self.server: asyncio.base_events.Server | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001
        self.rcpt_attempts.append(address)
        if not self.rcpt_go.is_set():
            self.rcpt_stalls += 1
            await self.rcpt_go.wait()
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
        # worded like Postfix's answer, with a queue id of its own per message
        queue_id = f"RQ{len(self.messages):04d}"
        self.queue_ids.append(queue_id)
        return f"250 2.0.0 Ok: queued as {queue_id}"

    @classmethod
    def reserved(cls) -> Relay:
        """A relay not started yet whose port is already taken for it: bound, not
        listening, so connections are refused until start() and no other process can
        take the port meanwhile."""
        relay = cls()
        relay._sock = socket.socket()
        relay._sock.bind(("127.0.0.1", 0))
        relay.port = relay._sock.getsockname()[1]
        return relay

    async def start(self) -> Relay:
        loop = asyncio.get_running_loop()
        factory = lambda: SMTP(self, decode_data=False, hostname="relay.test")  # noqa: E731
        if self._sock is not None:
            sock, self._sock = self._sock, None
            self.server = await loop.create_server(factory, sock=sock)
        else:
            self.server = await loop.create_server(factory, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.rcpt_go.set()  # let a stalled handler finish
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def parsed(self) -> list[EmailMessage]:
        return [email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
                for _, _, raw in self.messages]
