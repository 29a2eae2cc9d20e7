"""Peak RSS of `faxbridge serve` while many SMTP sessions hold unfinished DATA:
each sends SIZE MB and never the final dot. Target (issue 15): 300 sessions of
20 MB stay under 200 MB peak RSS (smtp.data_memory_limit caps the memory all
unfinished DATA phases hold together; the excess is spooled to disk).

    python bench/hold.py [--sessions 300] [--mb 20] [--memory-limit BYTES]

RSS is the bridge process's own, from /proc/PID/status (VmHWM: the peak, VmRSS:
now). The bridge has read everything when its faxbridge_smtp_data_unfinished_bytes
gauge reaches sessions × size (so nothing is still waiting in socket buffers)."""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from pathlib import Path

import httpx
from common import bridge, bridge_config, free_port, simulator, table, write_result


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def metric(http: str, name: str) -> float:
    async with httpx.AsyncClient() as h:
        text = (await h.get(f"{http}/metrics")).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


async def reply(r: asyncio.StreamReader) -> str:
    while True:
        line = (await r.readline()).decode()
        if not line or line[3:4] != "-":
            return line


async def hold(port: int, body: bytes, ready: asyncio.Event, in_data: list[int]
               ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    assert (await reply(r)).startswith("220")
    for cmd in ("EHLO bench.example", "MAIL FROM:<bench@example.com>",
                "RCPT TO:<+4989123456@fax.local>", "DATA"):
        w.write(cmd.encode() + b"\r\n")
        answer = await reply(r)
        assert answer[:1] in "23", f"{cmd}: {answer}"
    in_data[0] += 1
    await ready.wait()  # all sessions in DATA, then all send at once
    w.write(body)
    await w.drain()
    return r, w


async def run(sessions: int, mb: int, memory_limit: int | None) -> dict:
    line = b"x" * 996 + b"\r\n"  # long lines: the bridge's cost is per line
    body = line * (mb * 1_000_000 // len(line))
    extra = (f"[smtp]\nmax_sessions = {sessions + 10}\n"
             f"max_sessions_per_client = {sessions + 10}\n")
    if memory_limit is not None:
        extra += f"data_memory_limit = {memory_limit}\n"
    with tempfile.TemporaryDirectory() as d:
        sim_port, port = free_port(), free_port()
        sim = simulator(sim_port)
        fb = bridge(Path(d) / "data", port, config=bridge_config(Path(d), sim_port, extra))
        http = re.search(r"HTTP (http://\S+?)[,\s]", fb.wait_for("faxbridge listening"))
        assert http
        try:
            idle = status_mb(fb.p.pid, "VmRSS")
            ready, in_data = asyncio.Event(), [0]
            tasks = [asyncio.create_task(hold(port, body, ready, in_data))
                     for _ in range(sessions)]
            while in_data[0] < sessions:
                if failed := [t for t in tasks if t.done() and t.exception()]:
                    raise failed[0].exception()  # type: ignore[misc]
                await asyncio.sleep(0.2)
            t0 = time.perf_counter()
            ready.set()
            conns = await asyncio.gather(*tasks)
            goal = sessions * len(body)
            while await metric(http.group(1), "faxbridge_smtp_data_unfinished_bytes") < goal:
                await asyncio.sleep(0.5)
            seconds = time.perf_counter() - t0
            peak = status_mb(fb.p.pid, "VmHWM")
            now = status_mb(fb.p.pid, "VmRSS")
            in_memory = await metric(http.group(1), "faxbridge_smtp_data_memory_bytes")
            spooled = await metric(http.group(1), "faxbridge_smtp_data_spooled")
            for _, w in conns:
                w.close()
        finally:
            fb.stop()
            sim.stop()
    row = [f"{sessions} × {mb} MB", f"{goal / 1e6:.0f}", f"{idle:.0f}", f"{peak:.0f}",
           f"{now:.0f}", f"{in_memory / 2**20:.1f}", f"{spooled:.0f}", f"{seconds:.0f}",
           "yes" if peak < 200 else "NO"]
    print(table([row], ["case", "MB unfinished", "idle RSS", "peak RSS", "RSS at end",
                        "MiB in memory", "spooled", "seconds", "< 200 MB"]))
    return dict(zip(["case", "mb_unfinished", "idle_rss_mb", "peak_rss_mb", "end_rss_mb",
                     "mib_in_memory", "sessions_spooled", "seconds", "under_200_mb"], row,
                    strict=True))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=300)
    ap.add_argument("--mb", type=int, default=20)
    ap.add_argument("--memory-limit", type=int, default=None,
                    help="smtp.data_memory_limit (default: the bridge's default)")
    a = ap.parse_args()
    result = asyncio.run(run(a.sessions, a.mb, a.memory_limit))
    print(f"written {write_result('hold', result)}")
