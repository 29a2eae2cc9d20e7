"""The baseline: a bare aiosmtpd server whose handler answers 250 at once."""

from __future__ import annotations

import asyncio
import sys

from aiosmtpd.smtp import SMTP


class Handler:
    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201
        return "250 2.0.0 OK"


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), decode_data=False, data_size_limit=50 * 1024 * 1024),
        "127.0.0.1", port)
    print(f"bare server on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    # --uvloop: the same loop kind as a bridge running on uvloop
    if "--uvloop" in sys.argv[2:]:
        import uvloop
        uvloop.run(main(int(sys.argv[1])))
    else:
        asyncio.run(main(int(sys.argv[1])))
