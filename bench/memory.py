"""Peak RSS of the bridge: one mail with a 25 MB attachment, then 10 concurrent
mails with 10 MB each. Budget (issue 7): 60 MB + 3 × the bytes in flight.

    python bench/memory.py"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from common import bridge, bridge_config, free_port, load, message, simulator, table, write_result


async def case(label: str, size: int, count: int) -> list:
    msgs = [message(size, i) for i in range(count)]
    in_flight = sum(len(m) for m in msgs)
    with tempfile.TemporaryDirectory() as d:
        sim_port, port = free_port(), free_port()
        sim = simulator(sim_port)
        cfg = bridge_config(Path(d), sim_port, extra="[smtp]\nmax_message_size = 60000000\n")
        fb = bridge(Path(d) / "data", port, config=cfg)
        try:
            idle = fb.peak_rss_mb()
            res = await load(port, msgs, count)
            await asyncio.sleep(4)  # submission of the documents happens after the 250
            peak = fb.peak_rss_mb()
        finally:
            fb.stop()
            sim.stop()
    budget = 60 + 3 * in_flight / 1e6
    return [label, f"{in_flight / 1e6:.1f}", f"{idle:.0f}", f"{peak:.0f}", f"{budget:.0f}",
            "yes" if peak <= budget else "NO", f"{res['ok']}/{count}"]


async def run() -> dict:
    rows = [await case("1 × 25 MB", 25_000_000, 1), await case("10 × 10 MB", 10_000_000, 10)]
    print(table(rows, ["case", "MB in flight", "idle RSS", "peak RSS", "budget", "within",
                       "250s"]))
    return {"results": [dict(zip(["case", "mb_in_flight", "idle_rss_mb", "peak_rss_mb",
                                  "budget_mb", "within", "accepted"], r, strict=True))
                        for r in rows]}


if __name__ == "__main__":
    print(f"written {write_result('memory', asyncio.run(run()))}")
