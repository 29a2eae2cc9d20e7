"""Shared helpers for the benchmarks: processes on 127.0.0.1, an asyncio SMTP load
client (aiosmtplib), peak RSS from /proc, result tables and JSON."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}, " \
           f"Python {platform.python_version()}"


def pdf_of(size: int) -> bytes:
    head = b"%PDF-1.4\n1 0 obj<</Type /Page>>endobj\n"
    body = os.urandom(max(0, size - len(head) - 6))
    return head + body + b"\n%%EOF"


def message(size: int, n: int = 0, to: str = "+4989123456@fax.local") -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "bench@example.com", to, f"bench {n}"
    m["Message-ID"] = f"<bench-{n}-{time.monotonic_ns()}@example.com>"
    m.set_content("benchmark")
    m.add_attachment(pdf_of(size), maintype="application", subtype="pdf", filename="doc.pdf")
    return m.as_bytes().replace(b"\n", b"\r\n")


class Proc:
    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.log = Path(tempfile.mkstemp(prefix="bench-", suffix=".log")[1])
        self.fh = self.log.open("wb")
        self.p = subprocess.Popen(args, stdout=self.fh, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})}, cwd=cwd)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            out = self.log.read_text(errors="replace")
            if text in out:
                return out
            if self.p.poll() is not None:
                raise RuntimeError(out)
            time.sleep(0.05)
        raise TimeoutError(self.log.read_text(errors="replace"))

    def peak_rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
        self.fh.close()


def simulator(port: int, complete_after: float = 1.0) -> Proc:
    """The Retarus stand-in in its own process: it is not part of what is measured."""
    p = Proc([sys.executable, "-m", "faxbridge", "simulator", "--listen", f"127.0.0.1:{port}",
              "--complete-after", str(complete_after)])
    p.wait_for("Retarus simulator on")
    return p


def bridge_config(dir_: Path, sim_port: int, extra: str = "",
                  poll_min: float | None = 1.0) -> Path:
    """The bridge on the simulator at `sim_port`, one sender rule matching anyone.
    `poll_min`: fax.report_poll_min_seconds (None: the bridge's default, 10 s); the
    end-to-end benches poll every second so that a lost push shows in their figures."""
    s = f"http://127.0.0.1:{sim_port}"
    cfg = dir_ / "bench.toml"
    poll = "" if poll_min is None else f"report_poll_min_seconds = {poll_min}"
    cfg.write_text(f"""
[retarus]
send_url = "{s}/fax4a/ha-de/rest/v1"
datacenter_urls = ["{s}/fax4a/de1/rest/v1", "{s}/fax4a/de2/rest/v1"]
[fax]
{poll}
[[senders]]
name = "bench"
match = ["*"]
{extra}
""")
    return cfg


def bridge(data_dir: Path, smtp_port: int, extra: list[str] | None = None,
           config: Path | None = None) -> Proc:
    args = [sys.executable, "-m", "faxbridge", "serve", "--data-dir", str(data_dir),
            "--smtp-listen", f"127.0.0.1:{smtp_port}", "--http-listen", "127.0.0.1:0"]
    if config:
        args += ["--config", str(config)]
    else:
        args += ["--simulator-listen", "127.0.0.1:0"]
    p = Proc(args + (extra or []), env={"PYTHONUNBUFFERED": "1"})
    p.wait_for("faxbridge listening")
    return p


def bare(smtp_port: int) -> Proc:
    p = Proc([sys.executable, str(HERE / "bare_server.py"), str(smtp_port)])
    p.wait_for("bare server on")
    return p


async def load(port: int, messages: list[bytes], concurrency: int) -> dict[str, Any]:
    """Send every message over `concurrency` connections; each connection sends
    its share one after another (one transaction each)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for m in messages:
        queue.put_nowait(m)
    codes: list[int] = []
    times: list[float] = []

    async def worker() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=120)
        await client.connect()
        try:
            while True:
                try:
                    raw = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                try:
                    _, resp = await client.sendmail("bench@example.com",
                                                    ["+4989123456@fax.local"], raw)
                    codes.append(250)
                except aiosmtplib.SMTPException:
                    codes.append(0)
                times.append(time.perf_counter() - t0)
        finally:
            await client.quit()

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    elapsed = time.perf_counter() - t0
    return {"messages": len(messages), "ok": codes.count(250), "seconds": elapsed,
            "per_second": len(messages) / elapsed}


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S"), **data}
    path.write_text(json.dumps(data, indent=2))
    return path


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
