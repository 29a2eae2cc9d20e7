"""An AUTH flood must stall nobody else: a bystander's EHLO/NOOP/QUIT and /readyz,
p99 unloaded against p99 while 20 clients send wrong AUTH PLAIN lines as fast as
they are answered (each reconnects when the bridge ends its session).

    python bench/auth_flood.py [--seconds 15]

Two floods: with the default failure delays (what a deployment gets), and with
the delay off (smtp.auth_failure_delay = 0, 100 failures per session), which
measures only that hashing runs off the event loop. Target (issue 15): both
p99s within 2x of unloaded. AUTH is allowed without TLS here so the flood costs
the bridge hashes, not TLS handshakes."""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import tempfile
import time
from pathlib import Path

from common import Proc, free_port, simulator, table, write_result

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from faxbridge.smtp.auth import hash_password  # noqa: E402


class Line:
    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w = r, w

    async def reply(self) -> str:
        while True:
            line = (await self.r.readline()).decode()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != "-":
                return line

    async def cmd(self, text: str) -> str:
        self.w.write(text.encode() + b"\r\n")
        return await self.reply()


async def session(port: int) -> Line:
    c = Line(*await asyncio.open_connection("127.0.0.1", port))
    await c.reply()
    await c.cmd("EHLO bench.example")
    return c


async def bystander(port: int) -> float:
    t0 = time.perf_counter()
    c = await session(port)
    assert (await c.cmd("NOOP")).startswith("250")
    assert (await c.cmd("QUIT")).startswith("221")
    c.w.close()
    return time.perf_counter() - t0


async def readyz(port: int) -> float:
    t0 = time.perf_counter()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    await r.read()
    w.close()
    return time.perf_counter() - t0


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


async def measure(smtp: int, http: int, seconds: float) -> tuple[float, float, int, int]:
    """Bystander sessions and /readyz one after another for `seconds`: their p99s."""
    by, rz = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        by.append(await bystander(smtp))
        rz.append(await readyz(http))
        await asyncio.sleep(0.02)  # a probe, not a load
    return p99(by), p99(rz), len(by), len(rz)


async def flood(port: int, stop: asyncio.Event, counts: list[int]) -> None:
    blob = base64.b64encode(b"\0scanner\0wrong-guess").decode()
    while not stop.is_set():
        try:
            c = await session(port)
            while not stop.is_set():
                reply = await c.cmd(f"AUTH PLAIN {blob}")
                counts[0] += 1
                if reply.startswith("421"):
                    break
            c.w.close()
        except (ConnectionError, OSError):
            counts[1] += 1


def config(dir_: Path, sim_port: int, http_port: int, extra: str) -> Path:
    s = f"http://127.0.0.1:{sim_port}"
    cfg = dir_ / "bench.toml"
    cfg.write_text(f"""
[smtp]
auth_require_tls = false
{extra}
[[smtp.users]]
name = "scanner"
password_hash = "{hash_password('correct horse')}"
[http]
listen = "127.0.0.1:{http_port}"
[retarus]
send_url = "{s}/fax4a/ha-de/rest/v1"
datacenter_urls = ["{s}/fax4a/de1/rest/v1", "{s}/fax4a/de2/rest/v1"]
[[senders]]
name = "bench"
match = ["*"]
""")
    return cfg


async def case(name: str, extra: str, seconds: float, clients: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        sim_port, smtp, http = free_port(), free_port(), free_port()
        sim = simulator(sim_port)
        fb = Proc([sys.executable, "-m", "faxbridge", "serve", "--data-dir", f"{d}/data",
                   "--smtp-listen", f"127.0.0.1:{smtp}", "--config",
                   str(config(Path(d), sim_port, http, extra))],
                  env={"PYTHONUNBUFFERED": "1"})
        try:
            fb.wait_for("faxbridge listening")
            await measure(smtp, http, 1)  # warm-up
            by0, rz0, n0, _ = await measure(smtp, http, seconds)
            stop, counts = asyncio.Event(), [0, 0]
            tasks = [asyncio.ensure_future(flood(smtp, stop, counts)) for _ in range(clients)]
            await asyncio.sleep(1)  # the flood under way
            before = counts[0]
            by1, rz1, n1, _ = await measure(smtp, http, seconds)
            attempts = counts[0] - before
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            fb.stop()
            sim.stop()
    return {"case": name, "bystander_p99_ms": [by0 * 1000, by1 * 1000],
            "readyz_p99_ms": [rz0 * 1000, rz1 * 1000], "bystander_ratio": by1 / by0,
            "readyz_ratio": rz1 / rz0, "samples": [n0, n1],
            "auth_attempts_per_s": attempts / seconds, "flood_connect_errors": counts[1]}


async def run(seconds: float, clients: int) -> dict:
    results = [
        await case("default delays", "", seconds, clients),
        await case("no delay (hash in thread only)",
                   "auth_failure_delay = 0\nauth_max_failures = 100", seconds, clients),
    ]
    rows = [[r["case"], f"{r['bystander_p99_ms'][0]:.1f} -> {r['bystander_p99_ms'][1]:.1f}",
             f"{r['bystander_ratio']:.2f}",
             f"{r['readyz_p99_ms'][0]:.1f} -> {r['readyz_p99_ms'][1]:.1f}",
             f"{r['readyz_ratio']:.2f}", f"{r['auth_attempts_per_s']:.0f}"] for r in results]
    print(f"{clients} flooding clients, {seconds:.0f} s per measurement")
    print(table(rows, ["flood", "EHLO/NOOP/QUIT p99 ms", "ratio", "/readyz p99 ms", "ratio",
                       "AUTH/s"]))
    return {"clients": clients, "seconds": seconds, "results": results}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--clients", type=int, default=20)
    a = ap.parse_args()
    path = write_result("auth_flood", asyncio.run(run(a.seconds, a.clients)))
    print(f"written {path}")
