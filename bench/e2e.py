"""End to end: mails at a steady rate; time from the 250 to the job's arrival at
the simulator (same clock: both on this machine).

    python bench/e2e.py [--rate 20] [--seconds 60]

Targets (issue 7): p50 ≤ 100 ms, p99 ≤ 500 ms at 20 mails/s for 60 s."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiosmtplib
import httpx
from common import bridge, bridge_config, free_port, message, simulator, table, write_result


async def run(rate: float, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        sim_port, port = free_port(), free_port()
        sim = simulator(sim_port)
        fb = bridge(Path(d) / "data", port, config=bridge_config(Path(d), sim_port))
        accepted: dict[str, float] = {}
        try:
            n = int(rate * seconds)
            msgs = [message(10_000, i) for i in range(n)]

            async def one(raw: bytes) -> None:
                errors, resp = await aiosmtplib.send(
                    raw, sender="bench@example.com", recipients=["+4989123456@fax.local"],
                    hostname="127.0.0.1", port=port, timeout=60)
                accepted[resp.split("Queued as ")[1].split(":")[0]] = time.time()

            start = time.monotonic()
            tasks = []
            for i, raw in enumerate(msgs):  # open loop: a steady arrival rate
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                tasks.append(asyncio.create_task(one(raw)))
            await asyncio.gather(*tasks)
            await asyncio.sleep(3)
            async with httpx.AsyncClient() as c:
                jobs = (await c.get(f"http://127.0.0.1:{sim_port}/_sim/jobs")).json()
            rss = fb.peak_rss_mb()
        finally:
            fb.stop()
            sim.stop()
    arrived = {j["request"]["reference"]["customerDefinedId"]: j["received"] for j in jobs}
    lat = sorted((arrived[k] - t) * 1000 for k, t in accepted.items() if k in arrived)
    p50 = statistics.median(lat)
    p99 = lat[max(0, int(len(lat) * 0.99) - 1)]
    print(table([[f"{rate:g}/s", f"{seconds:g}s", len(accepted), len(lat), f"{p50:.1f}",
                  f"{p99:.1f}", f"{max(lat):.1f}", f"{rss:.0f}"]],
                ["rate", "time", "250s", "arrived", "p50 ms", "p99 ms", "max ms", "RSS MB"]))
    return {"rate": rate, "seconds": seconds, "accepted": len(accepted), "arrived": len(lat),
            "p50_ms": p50, "p99_ms": p99, "max_ms": max(lat), "bridge_peak_rss_mb": rss}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=20)
    ap.add_argument("--seconds", type=float, default=60)
    # The bridge on PostgreSQL instead of SQLite (README "Running two or more nodes"):
    # it inherits FAXBRIDGE_DATABASE_URL; the results go to <name>-postgres.json.
    ap.add_argument("--database-url", metavar="URL")
    a = ap.parse_args()
    if a.database_url:
        os.environ["FAXBRIDGE_DATABASE_URL"] = a.database_url
    suffix = "-postgres" if a.database_url else ""
    print(f"written {write_result('e2e' + suffix, asyncio.run(run(a.rate, a.seconds)))}")
