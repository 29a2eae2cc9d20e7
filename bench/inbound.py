"""Inbound rate: faxes of 100 KB on a simulator topic, mailed to a bare aiosmtpd
relay. Target (issue 7): ≥ 20 faxes per second for 500 faxes.

    python bench/inbound.py [--faxes 500]"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sqlite3
import tempfile
import time
from pathlib import Path

import httpx
from common import bare, bridge, bridge_config, free_port, pdf_of, simulator, table, write_result


async def run(faxes: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        sim_port, relay_port, port = free_port(), free_port(), free_port()
        sim = simulator(sim_port)
        relay = bare(relay_port)
        s = f"http://127.0.0.1:{sim_port}"
        doc = base64.b64encode(pdf_of(100_000)).decode()
        async with httpx.AsyncClient() as c:
            for _ in range(faxes):
                await c.post(f"{s}/_sim/inbound", json={
                    "topic": "bench", "documents": [{"data": doc, "extension": "pdf"}]})
        extra = f"""
[[topics]]
name = "bench"
url = "{s}/faxin/rest/v1"
password = {{ env = "BENCH_PULL_PW" }}
addresses = ["in@example.com"]
batch_size = 50
poll_interval = 0.2
[mail]
transport = "smtp"
[mail.relay]
host = "127.0.0.1"
port = {relay_port}
tls = "none"
"""
        cfg = bridge_config(Path(d), sim_port, extra=extra)
        import os
        os.environ["BENCH_PULL_PW"] = "simulator"
        t0 = time.monotonic()
        fb = bridge(Path(d) / "data", port, config=cfg)
        db = Path(d) / "data" / "faxbridge.sqlite3"
        try:
            while True:
                with sqlite3.connect(db) as con:
                    done = con.execute("SELECT COUNT(*) FROM inbound WHERE state='delivered'"
                                       ).fetchone()[0]
                if done >= faxes or time.monotonic() - t0 > 600:
                    break
                await asyncio.sleep(0.2)
            elapsed = time.monotonic() - t0
            rss = fb.peak_rss_mb()
        finally:
            fb.stop()
            relay.stop()
            sim.stop()
    rate = done / elapsed
    print(table([[faxes, done, f"{elapsed:.1f}", f"{rate:.1f}", f"{rss:.0f}"]],
                ["faxes", "mailed", "seconds", "faxes/s", "RSS MB"]))
    return {"faxes": faxes, "mailed": done, "seconds": elapsed, "per_second": rate,
            "bridge_peak_rss_mb": rss}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--faxes", type=int, default=500)
    a = ap.parse_args()
    print(f"written {write_result('inbound', asyncio.run(run(a.faxes)))}")
