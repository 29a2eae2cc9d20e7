"""Peak RSS of the bridge: one mail with a 25 MB attachment, then 10 concurrent
mails with 10 MB each. Budget (issue 7): 60 MB + 3 × the bytes in flight.

    python bench/memory.py [--bridge-arg=--single-process]

The workers process's peak (serve's default; it reads the documents back to submit
them) is printed beside the listener's, and the budget is checked on each."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from common import bridge, bridge_config, free_port, load, message, simulator, table, write_result


def workers_peak_mb(pid: int) -> float:
    """The highest peak RSS among the bridge's child processes (0: none)."""
    peak = 0.0
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for kid in kids:
            for line in Path(f"/proc/{kid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    except OSError:
        pass
    return peak


async def case(label: str, size: int, count: int, extra: list[str]) -> list:
    msgs = [message(size, i) for i in range(count)]
    in_flight = sum(len(m) for m in msgs)
    with tempfile.TemporaryDirectory() as d:
        sim_port, port = free_port(), free_port()
        sim = simulator(sim_port)
        cfg = bridge_config(Path(d), sim_port, extra="[smtp]\nmax_message_size = 60000000\n")
        fb = bridge(Path(d) / "data", port, extra=extra, config=cfg)
        try:
            idle = fb.peak_rss_mb()
            res = await load(port, msgs, count)
            await asyncio.sleep(4)  # submission of the documents happens after the 250
            peak = fb.peak_rss_mb()
            workers = workers_peak_mb(fb.p.pid)
        finally:
            fb.stop()
            sim.stop()
    budget = 60 + 3 * in_flight / 1e6
    return [label, f"{in_flight / 1e6:.1f}", f"{idle:.0f}", f"{peak:.0f}",
            f"{workers:.0f}" if workers else "-", f"{budget:.0f}",
            "yes" if max(peak, workers) <= budget else "NO", f"{res['ok']}/{count}"]


async def run(extra: list[str]) -> dict:
    rows = [await case("1 × 25 MB", 25_000_000, 1, extra),
            await case("10 × 10 MB", 10_000_000, 10, extra)]
    print(table(rows, ["case", "MB in flight", "idle RSS", "peak RSS", "workers peak",
                       "budget", "within", "250s"]))
    return {"bridge_args": extra,
            "results": [dict(zip(["case", "mb_in_flight", "idle_rss_mb", "peak_rss_mb",
                                  "workers_peak_rss_mb", "budget_mb", "within", "accepted"],
                                 r, strict=True)) for r in rows]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bridge-arg", action="append", default=[])
    a = ap.parse_args()
    name = "memory" + ("-single" if "--single-process" in a.bridge_arg else "")
    print(f"written {write_result(name, asyncio.run(run(a.bridge_arg)))}")
