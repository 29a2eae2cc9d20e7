"""`serve --workers-process`: the listener accepts and commits, a second process
(its child) submits, tracks, writes the report mails and serves the status push;
it stops with the listener."""

from __future__ import annotations

import asyncio
import mailbox
import os
import re
import smtplib
from email.message import EmailMessage
from pathlib import Path

import httpx

from faxbridge.mail.transport import maildir_path
from tests.conftest import (
    ALL_SENDERS_TOML,
    Proc,
    retarus_toml,
    serve_args,
    start_simulator,
    wait_for,
)

RCPT = "+4989123456@fax.local"
WORKERS_RE = re.compile(r"workers process started \(pid (\d+)\)")


def pdf_mail(n: int) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "alice@example.com", RCPT, f"split {n}"
    m.set_content("see attachment")
    m.add_attachment(b"%PDF-1.4\n%%EOF\n", maintype="application", subtype="pdf",
                     filename="doc.pdf")
    return m.as_bytes().replace(b"\n", b"\r\n")


def send(smtp: str, raw: bytes) -> None:
    host, port = smtp.rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=30) as s:
        s.sendmail("alice@example.com", [RCPT], raw)


def reports(data_dir: Path) -> int:
    path = maildir_path(data_dir / "mail", "alice@example.com")
    if not (path / "cur").is_dir():
        return 0
    return len(list(mailbox.Maildir(str(path), create=False)))


async def test_workers_process_submits_reports_and_stops_with_the_listener(tmp_path, procs):
    sim = start_simulator(procs, tmp_path, "--complete-after", "0.3")
    data = tmp_path / "data"
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{data}"\n[fax]\nreport_poll_min_seconds = 1.0\n'
                   + retarus_toml(sim) + ALL_SENDERS_TOML)
    bridge = Proc(serve_args(cfg) + ["--workers-process"], tmp_path)
    procs.append(bridge)
    addr = await bridge.listening()
    await bridge.output_seen("faxbridge workers process running")
    pid = int(WORKERS_RE.search(bridge.output).group(1))  # type: ignore[union-attr]
    # the child is the workers process, not a second listener
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--workers-child" in cmdline and b"--smtp-listen" not in cmdline
    for n in range(3):
        await asyncio.to_thread(send, addr.smtp, pdf_mail(n))

    async def jobs() -> int:
        async with httpx.AsyncClient() as c:
            return (await c.get(f"{sim}/_sim/jobs/count")).json()["jobs"] == 3
    await wait_for(jobs, timeout=60)
    # the final status arrives (push to the workers' webhook, or the poll) and the
    # report mails are written by the workers process
    await wait_for(lambda: reports(data) == 3, timeout=60)
    bridge.stop()
    # the listener's end closes the workers' stdin: the child stops too
    await wait_for(lambda: not os.path.exists(f"/proc/{pid}")
                   or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", timeout=60)
