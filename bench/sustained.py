"""Sustained throughput: 10 KB mails at a fixed offered rate for a while, and per
second what came through each stage, so that a backlog shows as a growing queue.

    python bench/sustained.py --rate 60 [--seconds 60] [--bridge-arg=--single-process]
    python bench/sustained.py --find 20,40,60,80,100 --seconds 30

Each second: mails accepted (250s), jobs the simulator received, report mails
written, and the queue depth (jobs not yet at the simulator + jobs waiting for their
report + report mails not yet written, read from the store). The rate counts as
sustained when every mail was accepted and the backlog at the end is no bigger than
a few seconds of arrivals (it does not grow with time). `--find` tries the rates in
order and prints the highest sustained one."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
from accept import RCPT, SENDER, bench_mail, simulator
from common import bridge, bridge_config, free_port, table, write_result


def store_counts(db: Path) -> tuple[int, int]:
    """(queue depth, report mails written) from the bridge's SQLite file."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            jobs = dict(c.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
            mails = dict(c.execute("SELECT state, COUNT(*) FROM mail_out GROUP BY state"))
    except sqlite3.Error:
        return -1, -1
    depth = sum(jobs.get(s, 0) for s in ("queued", "deferred", "submitting", "submitted"))
    return depth + mails.get("queued", 0), mails.get("sent", 0)


async def run(rate: float, seconds: float, extra: list[str],
              poll_min: float | None = None) -> dict[str, Any]:
    raw = bench_mail(10_000)
    with tempfile.TemporaryDirectory() as d:
        sim_port, port = free_port(), free_port()
        sim = simulator(sim_port)
        fb = bridge(Path(d) / "data", port, extra=extra,
                    config=bridge_config(Path(d), sim_port, poll_min=poll_min))
        db = Path(d) / "data" / "faxbridge.sqlite3"
        accepted = failed = 0
        rows: list[dict[str, Any]] = []
        try:
            async def one() -> None:
                nonlocal accepted, failed
                try:
                    await aiosmtplib.send(raw, sender=SENDER, recipients=[RCPT],
                                          hostname="127.0.0.1", port=port, timeout=60)
                    accepted += 1
                except (aiosmtplib.SMTPException, OSError):
                    failed += 1

            async def sample(http: httpx.AsyncClient) -> None:
                prev = {"accepted": 0, "jobs": 0, "reports": 0}
                t0 = time.monotonic()
                while True:
                    await asyncio.sleep(max(0.0, t0 + len(rows) + 1 - time.monotonic()))
                    jobs = (await http.get(f"http://127.0.0.1:{sim_port}/_sim/jobs/count")
                            ).json()["jobs"]
                    depth, reports = await asyncio.to_thread(store_counts, db)
                    now = {"accepted": accepted, "jobs": jobs, "reports": reports}
                    rows.append({"second": len(rows) + 1, "queue_depth": depth,
                                 **{k: now[k] - prev[k] for k in now}})
                    prev = now

            async with httpx.AsyncClient() as http:
                sampler = asyncio.create_task(sample(http))
                start, tasks = time.monotonic(), []
                for i in range(int(rate * seconds)):  # open loop: a steady arrival rate
                    await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                    tasks.append(asyncio.create_task(one()))
                await asyncio.gather(*tasks)
                await asyncio.sleep(1.5)
                sampler.cancel()
            rss = fb.peak_rss_mb()
        finally:
            fb.stop()
            sim.stop()
    n = int(rate * seconds)
    end_depth = rows[-1]["queue_depth"] if rows else -1
    # bounded: all accepted, and the backlog is a few seconds of arrivals at most
    # (a report is due complete_after + a poll later, so some depth is normal)
    sustained = accepted == n and 0 <= end_depth <= rate * 5
    print(table([[r["second"], r["accepted"], r["jobs"], r["reports"], r["queue_depth"]]
                 for r in rows], ["s", "accepted", "submitted", "reports", "queue depth"]))
    print(f"offered {rate:g}/s for {seconds:g}s: {accepted}/{n} accepted, {failed} failed, "
          f"queue depth at the end {end_depth}: {'sustained' if sustained else 'NOT sustained'}"
          f"; bridge peak RSS {rss:.0f} MB")
    return {"rate": rate, "seconds": seconds, "accepted": accepted, "sent": n,
            "end_queue_depth": end_depth, "sustained": sustained, "per_second": rows,
            "bridge_peak_rss_mb": rss}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=60)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--find", help="comma-separated rates to try in order")
    ap.add_argument("--bridge-arg", action="append", default=[])
    ap.add_argument("--poll-min", type=float, default=None,
                    help="fax.report_poll_min_seconds (default: the bridge's own, 10 s)")
    a = ap.parse_args()
    rates = [float(r) for r in a.find.split(",")] if a.find else [a.rate]
    results, best = [], None
    for r in rates:
        res = asyncio.run(run(r, a.seconds, a.bridge_arg, a.poll_min))
        results.append(res)
        if not res["sustained"]:
            break
        best = r
    print(f"highest sustained rate tried: {best if best is not None else 'none'}/s")
    print(f"written {write_result('sustained', {'runs': results, 'best': best})}")
    sys.exit(0)
