"""Accept throughput of the full bridge (routing, parsing, durable commit, SMTP log)
as a ratio against a bare aiosmtpd server, same client and messages, same run.

    python bench/accept.py [--messages 1000]

Targets (issue 7): ratio ≥ 0.5 at 10 KB and ≥ 0.6 at 200 KB, concurrency 20."""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from common import (
    bare,
    bridge,
    bridge_config,
    free_port,
    load,
    message,
    simulator,
    table,
    write_result,
)


async def run(n: int) -> dict:
    """Each case: the bare server, then the full bridge. The last case repeats
    10 KB at concurrency 20 with no simulator behind the bridge (its submissions
    fail fast and wait for a retry): the cost of accepting alone, without the
    submission, push and report work that shares the event loop."""
    rows, out = [], []
    cases = [(10_000, 1, True), (10_000, 20, True), (200_000, 1, True), (200_000, 20, True),
             (10_000, 20, False)]
    for size, conc, with_retarus in cases:
        msgs = [message(size, i) for i in range(n)]
        port = free_port()
        b = bare(port)
        try:
            base = await load(port, msgs, conc)
        finally:
            b.stop()
        port = free_port()
        with tempfile.TemporaryDirectory() as d:
            sim_port = free_port()
            sim = simulator(sim_port) if with_retarus else None
            fb = bridge(Path(d) / "data", port, config=bridge_config(Path(d), sim_port))
            try:
                full = await load(port, msgs, conc)
                rss = fb.peak_rss_mb()
            finally:
                fb.stop()
                if sim is not None:
                    sim.stop()
        ratio = full["per_second"] / base["per_second"]
        label = f"{size // 1000} KB" + ("" if with_retarus else ", intake only")
        rows.append([label, conc, f"{base['per_second']:.1f}", f"{full['per_second']:.1f}",
                     f"{ratio:.2f}", f"{rss:.0f}", f"{full['ok']}/{n}"])
        out.append({"size": size, "concurrency": conc, "retarus": with_retarus,
                    "bare_per_s": base["per_second"], "bridge_per_s": full["per_second"],
                    "ratio": ratio, "bridge_peak_rss_mb": rss, "accepted": full["ok"],
                    "sent": n})
    print(table(rows, ["attachment", "conc", "bare/s", "bridge/s", "ratio", "RSS MB", "250s"]))
    return {"results": out}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    # 1000: at 300 a 10 KB run at concurrency 20 lasts ~2 s and the ratio wobbles ±0.05
    ap.add_argument("--messages", type=int, default=1000)
    # The bridge on PostgreSQL instead of SQLite (README "Running two or more nodes"):
    # it inherits FAXBRIDGE_DATABASE_URL; the results go to <name>-postgres.json.
    ap.add_argument("--database-url", metavar="URL")
    a = ap.parse_args()
    if a.database_url:
        os.environ["FAXBRIDGE_DATABASE_URL"] = a.database_url
    suffix = "-postgres" if a.database_url else ""
    path = write_result("accept" + suffix, asyncio.run(run(a.messages)))
    print(f"written {path}")
