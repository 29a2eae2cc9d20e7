"""The SMTP listener: aiosmtpd's protocol on our own event loop (no thread), with
STARTTLS, AUTH, SIZE and timeouts from the config."""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from faxbridge.smtp.auth import verify_password
from faxbridge.smtp.handler import FaxHandler
from faxbridge.web.server import address, bind

if TYPE_CHECKING:
    from faxbridge.app import Bridge


class FaxSMTP(SMTP):
    """aiosmtpd's SMTP plus: 421 to newcomers while shutting down, a count of
    sessions inside DATA (shutdown waits for them), an open-sessions gauge, and
    the log record of a transaction whose client disconnects without QUIT."""

    bridge: Bridge
    _refused = False

    def connection_made(self, transport: Any) -> None:
        if not self.bridge.accepting:
            self._refused = True
            transport.write(b"421 4.3.2 Service shutting down, try again later\r\n")
            transport.close()
            return
        self.bridge.metrics.sessions.inc()
        super().connection_made(transport)

    async def smtp_DATA(self, arg: str) -> None:
        self.bridge.sessions_in_data += 1
        try:
            await super().smtp_DATA(arg)
        finally:
            self.bridge.sessions_in_data -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self.bridge.metrics.sessions.dec()
        handler = self.event_handler
        if isinstance(handler, FaxHandler) and self.session is not None:
            handler.flush(self.session, "(connection lost)")
        super().connection_lost(exc)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def start_smtp(bridge: Bridge) -> tuple[asyncio.base_events.Server, str]:
    cfg = bridge.cfg.smtp
    handler = FaxHandler(bridge)
    ctx = tls_context(str(cfg.tls_cert), str(cfg.tls_key)) if cfg.tls_cert else None

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        users = {u.name: u.password_hash for u in bridge.cfg.smtp.users}
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        name = auth_data.login.decode("utf-8", "replace")
        encoded = users.get(name)
        if encoded and verify_password(auth_data.password.decode("utf-8", "replace"), encoded):
            session.fb_user = name
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def factory() -> FaxSMTP:
        current = bridge.cfg.smtp
        smtp = FaxSMTP(
            handler,
            data_size_limit=current.max_message_size,
            hostname=current.hostname,
            ident=current.banner,
            tls_context=ctx,
            require_starttls=False,
            timeout=current.timeout,
            authenticator=authenticator if current.users else None,
            auth_require_tls=current.auth_require_tls,
            auth_required=False,
            decode_data=False,
            enable_SMTPUTF8=True,
            loop=asyncio.get_running_loop(),
        )
        smtp.bridge = bridge
        return smtp

    sock = bind(cfg.listen, "smtp.listen")
    server = await asyncio.get_running_loop().create_server(factory, sock=sock)
    return server, address(sock)
