"""Serve an ASGI app with uvicorn inside the running event loop, on a socket we
bind ourselves (so port 0 works and the real port is known before serving)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


class ListenError(OSError):
    """A listener could not bind; the message names the address and why."""


def bind(listen: str, what: str = "listener") -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {listen} ({what}): {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus a deadline for a request's headers.

    uvicorn closes a keep-alive connection that stays silent after a response
    (timeout_keep_alive), but nothing else: a connection that never sends a byte,
    or sends its headers a byte at a time, is held forever (and counts against
    limit_concurrency). Here the headers of a request must be complete within
    `header_timeout` of the connection opening or of the request's first byte."""

    header_timeout = 10.0  # set by the subclass HttpServer makes

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        super().data_received(data)
        if self.cycle is not before:  # a request's headers are complete
            self._disarm_header_timer()
        elif self._header_timer is None and (self.cycle is None
                                             or self.cycle.response_complete):
            self._arm_header_timer()  # the first bytes of the next request

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class HttpServer:
    """uvicorn on our socket. `max_concurrency`: open connections beyond which a
    request is answered 503; `idle_timeout`: a keep-alive connection without a
    request is closed after this long; `header_timeout`: see HeaderTimeoutProtocol."""

    def __init__(self, app: Any, listen: str, what: str = "HTTP", *,
                 max_concurrency: int | None = None, idle_timeout: float = 10.0,
                 header_timeout: float = 10.0) -> None:
        self.sock = bind(listen, what)
        self.address = address(self.sock)
        self.url = f"http://{self.address}"
        protocol = type("HeaderTimeout", (HeaderTimeoutProtocol,),
                        {"header_timeout": header_timeout})
        config = uvicorn.Config(app, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=5, access_log=False,
                                http=protocol,
                                # uvicorn counts the connection asking too: one more
                                # so that max_concurrency connections are served
                                limit_concurrency=(max_concurrency + 1 if max_concurrency
                                                   else None),
                                timeout_keep_alive=idle_timeout)  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        # We own signals (app.py); uvicorn must not install its own handlers.
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
