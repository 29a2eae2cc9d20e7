"""Accept throughput of the full bridge (routing, parsing, durable commit, SMTP log,
and the downstream work sharing its process) as a ratio against a bare aiosmtpd
server, measured as bench/README.md describes:

    python bench/accept.py                      # smtp-source, 3 repetitions, 10 KB and 200 KB
    python bench/accept.py --client python      # the aiosmtplib client of common.py instead
    python bench/accept.py --client both        # both, each printing its own ratios

Per repetition and size: the bare server (fresh process, warm-up, measured batch),
then the bridge (fresh process with its simulator at `nice -n 15`, warm-up, measured
batch, then wait until the simulator holds one job per accepted mail). The bridge is
stopped after draining, so the next bare run shares the CPU with nothing of it.
A repetition counts only if every message got its 250 and the simulator ends with
exactly one job (one distinct reference) per accepted mail.

Targets (issue 19): median ratio ≥ 0.5 at 10 KB and ≥ 1.0 at 200 KB, concurrency 20."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
from common import HERE, Proc, bridge, bridge_config, free_port, load, table, write_result

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SENDER, RCPT = "bench@example.com", "+4930123456@fax.local"
# (size, measured messages, warm-up messages) per repetition
SIZES = {10_000: (1000, 100), 200_000: (200, 50)}


def padded_pdf(size: int) -> bytes:
    """A valid one-page PDF padded to `size` bytes with an unreferenced binary
    stream object (readers skip it; the xref table stays right)."""
    content = b"BT /F1 18 Tf 72 720 Td (bench) Tj ET"
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    pad = max(0, size - 900)
    objs.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (pad, os.urandom(pad)))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objs) + 1, xref)
    return bytes(out)


def bench_mail(size: int) -> bytes:
    """multipart/mixed: a short text part and the PDF, CRLF line ends."""
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = SENDER, RCPT, "bench"
    m["Message-ID"] = f"<bench-{size}-{time.time_ns()}@example.com>"
    m.set_content("Please fax the attached document.")
    m.add_attachment(padded_pdf(size), maintype="application", subtype="pdf",
                     filename="doc.pdf")
    return m.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def smtp_source(port: int, mail_file: Path, count: int, sessions: int = 20) -> dict[str, Any]:
    """Postfix's smtp-source: one session per message, `sessions` in parallel. It
    exits non-zero at the first reply that is not the expected 2xx/3xx."""
    t0 = time.perf_counter()
    p = subprocess.run([SMTP_SOURCE, "-s", str(sessions), "-m", str(count), "-f", SENDER,
                        "-t", RCPT, "-F", str(mail_file), f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    return {"ok": count if p.returncode == 0 else 0, "seconds": elapsed,
            "per_second": count / elapsed, "error": p.stderr.strip()[-300:]}


def drive(client: str, port: int, raw: bytes, mail_file: Path, count: int) -> dict[str, Any]:
    if client == "smtp-source":
        return smtp_source(port, mail_file, count)
    r = asyncio.run(load(port, [raw] * count, 20))
    r["error"] = ""
    return r


def bare(port: int, uvloop: bool) -> Proc:
    args = [sys.executable, str(HERE / "bare_server.py"), str(port)]
    p = Proc(args + (["--uvloop"] if uvloop else []))
    p.wait_for("bare server on")
    return p


def simulator(port: int) -> Proc:
    """The Retarus stand-in, in its own process at low CPU priority: it runs elsewhere
    in production, so it should take CPU from the bridge as little as possible."""
    p = Proc(["nice", "-n", "15", sys.executable, "-m", "faxbridge", "simulator",
              "--listen", f"127.0.0.1:{port}", "--complete-after", "1.0"])
    p.wait_for("Retarus simulator on")
    return p


def wait_jobs(sim_port: int, want: int, timeout: float = 300) -> dict[str, int]:
    end = time.monotonic() + timeout
    got = {"jobs": -1, "references": -1}
    while time.monotonic() < end:
        got = httpx.get(f"http://127.0.0.1:{sim_port}/_sim/jobs/count", timeout=30).json()
        if got["jobs"] >= want:
            break
        time.sleep(0.2)
    return got


def one_rep(client: str, size: int, raw: bytes, mail_file: Path, extra: list[str],
            uvloop: bool) -> dict[str, Any]:
    n, warm = SIZES[size]
    port = free_port()
    b = bare(port, uvloop)
    try:
        drive(client, port, raw, mail_file, warm)
        base = drive(client, port, raw, mail_file, n)
    finally:
        b.stop()
    with tempfile.TemporaryDirectory() as d:
        sim_port, port = free_port(), free_port()
        sim = simulator(sim_port)
        fb = bridge(Path(d) / "data", port, extra=extra,
                    # the bridge's defaults but for Retarus and the sender rule
                    # (BENCH.md): reports by push, polled after 10 s at the earliest
                    config=bridge_config(Path(d), sim_port, poll_min=None))
        try:
            w = drive(client, port, raw, mail_file, warm)
            full = drive(client, port, raw, mail_file, n)
            accepted = w["ok"] + full["ok"]
            jobs = wait_jobs(sim_port, accepted)
            rss = fb.peak_rss_mb()
        finally:
            fb.stop()
            sim.stop()
    valid = (base["ok"] == n and full["ok"] == n and w["ok"] == warm
             and jobs["jobs"] == accepted and jobs["references"] == accepted)
    return {"size": size, "bare_per_s": base["per_second"], "bridge_per_s": full["per_second"],
            "ratio": full["per_second"] / base["per_second"], "valid": valid,
            "accepted": full["ok"], "sent": n, "sim_jobs": jobs["jobs"],
            "bridge_peak_rss_mb": rss, "error": base["error"] or full["error"]}


def run(client: str, reps: int, sizes: list[int], extra: list[str], uvloop: bool
        ) -> dict[str, Any]:
    mails = {s: bench_mail(s) for s in sizes}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        files = {}
        for s, raw in mails.items():
            files[s] = Path(d) / f"mail-{s}.eml"
            # smtp-source appends CRLF to each line it reads: the file has LF ends
            files[s].write_bytes(raw.replace(b"\r\n", b"\n"))
        for rep in range(reps):
            for s in sizes:
                r = one_rep(client, s, mails[s], files[s], extra, uvloop)
                r["rep"] = rep + 1
                results.append(r)
                print(f"  [{client}] rep {rep + 1} {s // 1000} KB: bare {r['bare_per_s']:.1f}/s "
                      f"bridge {r['bridge_per_s']:.1f}/s ratio {r['ratio']:.2f} "
                      f"{'ok' if r['valid'] else 'INVALID ' + r['error']}", flush=True)
    rows, summary = [], []
    for s in sizes:
        rs = [r for r in results if r["size"] == s]
        med = statistics.median(r["ratio"] for r in rs)
        all_valid = all(r["valid"] for r in rs)
        rows.append([f"{s // 1000} KB", client,
                     f"{statistics.median(r['bare_per_s'] for r in rs):.1f}",
                     f"{statistics.median(r['bridge_per_s'] for r in rs):.1f}",
                     " ".join(f"{r['ratio']:.2f}" for r in rs), f"{med:.2f}",
                     f"{max(r['bridge_peak_rss_mb'] for r in rs):.0f}",
                     "yes" if all_valid else "NO"])
        summary.append({"size": s, "client": client, "median_ratio": med, "valid": all_valid})
    print(table(rows, ["attachment", "client", "bare/s (med)", "bridge/s (med)", "ratios",
                       "median", "RSS MB", "valid"]))
    return {"client": client, "runs": results, "summary": summary}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", choices=["smtp-source", "python", "both"],
                    default="smtp-source")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sizes", default="10000,200000")
    ap.add_argument("--uvloop", action="store_true",
                    help="the bare server on uvloop (when the bridge runs on uvloop)")
    ap.add_argument("--bridge-arg", action="append", default=[],
                    help="an extra argument for `faxbridge serve` (repeatable)")
    # The bridge on PostgreSQL instead of SQLite: it inherits FAXBRIDGE_DATABASE_URL.
    ap.add_argument("--database-url", metavar="URL")
    a = ap.parse_args()
    if a.database_url:
        os.environ["FAXBRIDGE_DATABASE_URL"] = a.database_url
    sizes = [int(s) for s in a.sizes.split(",")]
    clients = ["smtp-source", "python"] if a.client == "both" else [a.client]
    out = {c: run(c, a.reps, sizes, a.bridge_arg, a.uvloop) for c in clients}
    suffix = "-postgres" if a.database_url else ""
    print(f"written {write_result('accept' + suffix, out)}")
