"""`serve` (by default): the listener accepts and commits, a second process (its
child) submits, tracks, writes the report mails and serves the status push; it
stops with the listener, is restarted when it dies, reports its counters, contacts
and mail problems to the listener's /metrics and /readyz, and waits for a previous
set of workers on the same SQLite data directory."""

from __future__ import annotations

import asyncio
import json
import mailbox
import os
import re
import signal
import smtplib
from email.message import EmailMessage
from pathlib import Path

import httpx

from faxbridge.mail.transport import maildir_path
from faxbridge.runtime.workers_lock import LOCK_FILE
from tests.conftest import (
    ALL_SENDERS_TOML,
    Proc,
    retarus_toml,
    serve_args,
    start_simulator,
    wait_for,
)
from tests.relay import Relay

RCPT = "+4989123456@fax.local"
WORKERS_RE = re.compile(r"workers process started \(pid (\d+)\)")
RUNNING = "faxbridge workers process running"


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


def bridge_toml(tmp_path: Path, sim: str, extra: str = "") -> tuple[Path, Path]:
    data = tmp_path / "data"
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{data}"\n[fax]\nreport_poll_min_seconds = 1.0\n'
                   + retarus_toml(sim) + ALL_SENDERS_TOML + extra)
    return cfg, data


def workers_pids(bridge: Proc) -> list[int]:
    return [int(m.group(1)) for m in WORKERS_RE.finditer(bridge.output)]


def gone(pid: int) -> bool:
    return (not os.path.exists(f"/proc/{pid}")
            or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z")


def nice_of(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state …", the niceness is the 19th field
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as c:
        return await c.get(url)


def sample(text: str, line_start: str) -> float:
    m = re.search(rf"^{re.escape(line_start)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_workers_process_is_the_default_reports_to_the_listener_and_stops_with_it(
        tmp_path, procs):
    sim = start_simulator(procs, tmp_path, "--complete-after", "0.3")
    cfg, data = bridge_toml(tmp_path, sim)
    bridge = Proc(serve_args(cfg), tmp_path)  # no flag: the split is the default
    procs.append(bridge)
    addr = await bridge.listening()
    await bridge.output_seen(RUNNING)
    pid = workers_pids(bridge)[0]
    # the child is the workers process, not a second listener, 10 steps nicer
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--workers-child" in cmdline and b"--smtp-listen" not in cmdline
    assert nice_of(pid) == min(19, nice_of(bridge.p.pid) + 10)
    for n in range(3):
        await asyncio.to_thread(send, addr.smtp, pdf_mail(n))

    async def jobs() -> int:
        async with httpx.AsyncClient() as c:
            return (await c.get(f"{sim}/_sim/jobs/count")).json()["jobs"] == 3
    await wait_for(jobs, timeout=60)
    # the final status arrives (push to the workers' webhook, or the poll) and the
    # report mails are written by the workers process
    await wait_for(lambda: reports(data) == 3, timeout=60)

    # What the workers counted shows in the listener's /metrics under the names one
    # process uses (the listener itself observes no report latency), and their
    # contacts in its /readyz.
    async def merged() -> bool:
        text = (await get(f"{addr.http}/metrics")).text
        return sample(text, "faxbridge_report_latency_seconds_count") == 3
    await wait_for(merged, timeout=30)
    text = (await get(f"{addr.http}/metrics")).text
    assert sample(text, 'faxbridge_smtp_mails_total{reason="250",result="accepted"}') == 3
    assert text.count("# TYPE faxbridge_report_latency_seconds histogram") == 1
    ready = (await get(f"{addr.http}/readyz")).json()
    assert ready["ready"], ready
    assert ready["checks"]["workers"] == f"running (pid {pid})"
    assert {"retarus", "relay"} <= set(ready["checks"]["last_contact"])
    # both write to the same stdout: the workers' lines name their process and pid
    # (Postfix's `postfix/smtp[1234]:`), the listener's stay as in one process
    await bridge.output_seen(f"INFO faxbridge.mail[workers {pid}]: sent report mail",
                             count=3)
    assert bridge.output.count("INFO faxbridge.smtp: accepted: ") == 3, bridge.output

    bridge.stop()
    assert bridge.p.returncode == 0, bridge.output
    # the listener's end closes the workers' stdin: the child stops too, unrestarted
    await wait_for(lambda: gone(pid), timeout=60)
    assert "exited unexpectedly" not in bridge.output and len(workers_pids(bridge)) == 1
    # `faxbridge health` reads the listener's addresses, never the child's
    assert json.loads((data / "listening.json").read_text())["smtp"] == addr.smtp


async def test_killed_workers_process_is_restarted_and_mail_goes_on(tmp_path, procs):
    sim = start_simulator(procs, tmp_path, "--complete-after", "0.3")
    cfg, data = bridge_toml(tmp_path, sim)
    bridge = Proc(serve_args(cfg), tmp_path)
    procs.append(bridge)
    addr = await bridge.listening()
    await bridge.output_seen(RUNNING)
    first = workers_pids(bridge)[0]
    os.kill(first, signal.SIGKILL)
    await bridge.output_seen(f"ERROR faxbridge: workers process (pid {first}) exited "
                             "unexpectedly (exit status -9, killed by SIGKILL)")
    await bridge.output_seen(RUNNING, count=2)
    second = workers_pids(bridge)[1]
    assert second != first and not gone(second)

    # mail accepted after the crash is submitted and reported by the new child
    await asyncio.to_thread(send, addr.smtp, pdf_mail(1))
    await wait_for(lambda: reports(data) == 1, timeout=60)

    async def ready() -> bool:
        body = (await get(f"{addr.http}/readyz")).json()
        return body["ready"] and body["checks"]["workers"] == f"running (pid {second})"
    await wait_for(ready, timeout=30)
    bridge.stop()
    assert bridge.p.returncode == 0
    await wait_for(lambda: gone(second), timeout=60)


async def test_report_mail_failing_in_the_workers_shows_in_the_listeners_readyz(
        tmp_path, procs):
    relay = Relay.reserved()  # its port refuses connections until the relay starts
    sim = start_simulator(procs, tmp_path, "--complete-after", "0.3")
    cfg, data = bridge_toml(tmp_path, sim, (
        '[mail]\ntransport = "smtp"\nretry_min_seconds = 0.2\nretry_max_seconds = 0.5\n'
        f'[mail.relay]\nhost = "127.0.0.1"\nport = {relay.port}\ntls = "none"\n'))
    bridge = Proc(serve_args(cfg), tmp_path)
    procs.append(bridge)
    addr = await bridge.listening()
    await bridge.output_seen(RUNNING)
    await asyncio.to_thread(send, addr.smtp, pdf_mail(1))

    async def failing() -> dict | None:
        body = (await get(f"{addr.http}/readyz")).json()
        mail = body["checks"]["mail"]
        return body if mail != "ok" and "report deliver" in mail else None
    body = await wait_for(failing, timeout=60)
    assert "status report mails could not be delivered" in body["checks"]["mail"][
        "report deliver"]
    text = (await get(f"{addr.http}/metrics")).text
    assert sample(text, 'faxbridge_mail_transport_failures_total'
                        '{kind="report",outcome="deferred"}') >= 1
    # the relay comes up: the report goes out, the listener's /readyz clears
    await relay.start()
    try:
        async def ok() -> bool:
            return (await get(f"{addr.http}/readyz")).json()["checks"]["mail"] == "ok"
        await wait_for(ok, timeout=60)
        assert [rcpts for _, rcpts, _ in relay.messages] == [["alice@example.com"]]
    finally:
        bridge.stop()
        await relay.stop()


async def test_sighup_reaches_the_workers_process(tmp_path, procs):
    sim = start_simulator(procs, tmp_path)
    cfg, _ = bridge_toml(tmp_path, sim)
    # the old flag still starts the (now default) split
    bridge = Proc(serve_args(cfg) + ["--workers-process"], tmp_path)
    procs.append(bridge)
    await bridge.listening()
    await bridge.output_seen(RUNNING)
    assert len(workers_pids(bridge)) == 1
    # the file is unchanged: only the forwarded signal makes the child reload
    bridge.p.send_signal(signal.SIGHUP)
    out = await bridge.output_seen("configuration reloaded", count=2)
    assert "exited unexpectedly" not in out


async def test_workers_wait_for_the_previous_set_on_the_same_data_directory(tmp_path, procs):
    sim = start_simulator(procs, tmp_path, "--complete-after", "0.3")
    cfg, data = bridge_toml(tmp_path, sim)
    # one bridge in a single process holds the data directory's workers lock …
    first = Proc(serve_args(cfg) + ["--single-process"], tmp_path)
    procs.append(first)
    await first.listening()
    assert (data / LOCK_FILE).read_text().strip() == str(first.p.pid)
    # … a second one on the same directory listens, but its workers wait for it
    second = Proc(serve_args(cfg), tmp_path)
    procs.append(second)
    addr = await second.listening()
    await second.output_seen(f"waiting for the previous workers process "
                             f"(pid {first.p.pid}) to stop")
    child = workers_pids(second)[0]

    async def waiting() -> dict | None:
        body = (await get(f"{addr.http}/readyz")).json()
        return body if not body["ready"] and any(
            "waiting for the previous workers process" in r for r in body["reasons"]) else None
    await wait_for(waiting, timeout=30)
    # the child blocks before its runners start: not running, the lock still the first's
    assert RUNNING not in second.output
    assert (data / LOCK_FILE).read_text().strip() == str(first.p.pid)

    first.stop()
    assert first.p.returncode == 0
    # only now the second set starts, and holds the lock itself
    await second.output_seen(RUNNING)
    assert (data / LOCK_FILE).read_text().strip() == str(child)
    await asyncio.to_thread(send, addr.smtp, pdf_mail(1))
    await wait_for(lambda: reports(data) == 1, timeout=60)
