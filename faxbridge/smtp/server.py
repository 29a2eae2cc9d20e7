"""The SMTP listener: aiosmtpd's protocol on our own event loop (no thread), with
STARTTLS, AUTH, SIZE and timeouts from the config."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

from faxbridge import replies
from faxbridge.listen import address, bind
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.health import Health
from faxbridge.smtp.auth import verify_password
from faxbridge.smtp.handler import FaxHandler


class FaxSMTP(SMTP):
    """aiosmtpd's SMTP plus: 421 to newcomers while shutting down, a count of
    sessions inside DATA (shutdown waits for them), an open-sessions gauge, and
    the log record of a transaction whose client disconnects without QUIT."""

    health: Health
    _refused = False

    def connection_made(self, transport: Any) -> None:
        if not self.health.accepting:
            self._refused = True
            transport.write(b"421 4.3.2 Service shutting down, try again later\r\n")
            transport.close()
            return
        self.health.metrics.sessions.inc()
        super().connection_made(transport)

    async def smtp_DATA(self, arg: str) -> None:
        self.health.sessions_in_data += 1
        try:
            await self._data(arg)
        finally:
            self.health.sessions_in_data -= 1

    async def _data(self, arg: str) -> None:
        """DATA, collected into one growing buffer.

        aiosmtpd keeps each received line as its own bytearray until the end (about
        1.75 × the message in object overhead, then the joined copy on top): with
        ten 10 MB mails arriving at once that alone was 240 MB. Same replies and
        limits; RFC 5321 §4.5.2 dot-unstuffing, §4.5.3.1.6 line length, SIZE
        (RFC 1870) checked as the data arrives and answered after the final dot."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(replies.S503_NEED_RCPT)
            return
        if arg:
            await self.push(replies.S501_DATA_ARG)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        buf = bytearray()
        limit = self.data_size_limit
        received = 0
        error: str | None = None
        in_long_line = False  # inside a line longer than the stream reader's limit
        while self.transport is not None:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.CancelledError:  # the client went away during DATA
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as exc:
                # a line beyond the reader's buffer limit: keep reading, refuse at the end
                chunk = await self._reader.read(exc.consumed)
                received += len(chunk)
                error = error or replies.S500_LINE_TOO_LONG
                in_long_line = True
                buf.clear()
                continue
            if in_long_line:  # the tail of an over-long line (it is not the final dot)
                in_long_line = False
                received += len(line)
                continue
            if line == b".\r\n":
                break
            received += len(line)
            if error is None and limit and received > limit:
                error = replies.S552_TOO_BIG.format(limit=limit)
            elif error is None and len(line) > self.line_length_limit:
                error = replies.S500_LINE_TOO_LONG
            if error is not None:
                buf.clear()  # drop what came, keep reading to the final dot
                continue
            buf += line[1:] if line.startswith(b".") else line
        if error is not None:
            # into the SMTP log with its reason (the handler never saw this message)
            if isinstance(self.event_handler, FaxHandler) and self.session is not None:
                self.event_handler.flush(self.session, error)
            await self.push(error)
            self._set_post_data_state()
            return
        # The buffer itself is the message (the handler only reads it): a bytes()
        # copy would double the peak for a large mail.
        self.envelope.content = buf
        self.envelope.original_content = buf
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        # Free the message before answering: the woken submitter reads the job's
        # documents next, and both at once set the peak for a large mail.
        del buf
        await self.push("250 OK" if status is MISSING else status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self.health.metrics.sessions.dec()
        handler = self.event_handler
        if isinstance(handler, FaxHandler) and self.session is not None:
            handler.flush(self.session, "(connection lost)")
        super().connection_lost(exc)


async def start_smtp(handler: FaxHandler, config: ConfigProvider, health: Health,
                     tls: Callable[[], ssl.SSLContext | None],
                     listen: str | None = None) -> tuple[asyncio.base_events.Server, str]:
    """Bind `listen` (default: the current smtp.listen) and serve SMTP on it.

    The STARTTLS context is not fixed here: each new session takes `tls()` as it
    is when the client connects. The app builds and validates that context in
    its preflight, so a reload can switch certificates without closing the port,
    and a certificate that does not load never replaces the one in use."""

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        users = {u.name: u.password_hash for u in config.current.smtp.users}
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        name = auth_data.login.decode("utf-8", "replace")
        encoded = users.get(name)
        if encoded and verify_password(auth_data.password.decode("utf-8", "replace"), encoded):
            session.fb_user = name
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def factory() -> FaxSMTP:
        current = config.current.smtp
        smtp = FaxSMTP(
            handler,
            data_size_limit=current.max_message_size,
            hostname=current.hostname,
            ident=current.banner,
            tls_context=tls(),
            require_starttls=False,
            timeout=current.timeout,
            authenticator=authenticator if current.users else None,
            auth_require_tls=current.auth_require_tls,
            auth_required=False,
            decode_data=False,
            enable_SMTPUTF8=True,
            loop=asyncio.get_running_loop(),
        )
        smtp.health = health
        return smtp

    sock = bind(listen or config.current.smtp.listen, "smtp.listen")
    server = await asyncio.get_running_loop().create_server(factory, sock=sock)
    return server, address(sock)
