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
    """aiosmtpd's SMTP with one addition: an unfinished transaction is logged when
    the client disconnects without QUIT."""

    def connection_lost(self, exc: Exception | None) -> None:
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
        return FaxSMTP(
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

    sock = bind(cfg.listen, "smtp.listen")
    server = await asyncio.get_running_loop().create_server(factory, sock=sock)
    return server, address(sock)
