"""Serve an ASGI app with uvicorn inside the running event loop, on a socket we
bind ourselves (so port 0 works and the real port is known before serving)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import uvicorn


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


class HttpServer:
    def __init__(self, app: Any, listen: str, what: str = "HTTP") -> None:
        self.sock = bind(listen, what)
        self.address = address(self.sock)
        self.url = f"http://{self.address}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=5, access_log=False)
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
