"""Operations: live reload, rule editing, metrics, admin API, readiness, shutdown,
and what the Dockerfile names."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import signal
import smtplib
import subprocess
import sys
import threading
from email.message import EmailMessage

import httpx

from faxbridge.config import load
from tests.conftest import ROOT, Proc, arun_faxbridge, wait_for
from tests.smtp_client import send


def mail(sender: str = "alice@example.com", to: str = "+4989123456@fax.local") -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = sender, to, "ops"
    m.set_content("hello")
    return m


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faxbridge", *args], capture_output=True,
                          text=True, timeout=60)


HAND_WRITTEN = """# Hand-written by the admin: keep this comment!
include = ["rules.d/cli.toml"]

[[senders]]
name = "office"   # the office may fax
match = ["*@example.com"]
"""


def test_rule_add_remove_round_trip_keeps_the_comment(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(HAND_WRITTEN)
    out = cli("senders", "add", "scanners", "--config", str(cfg), "--match", "user:scanner",
              "--allow", "+49*", "--notify", "failure")
    assert out.returncode == 0, out.stderr
    assert [s.name for s in load(cfg).senders] == ["office", "scanners"]
    assert cfg.read_text() == HAND_WRITTEN
    bad = cli("senders", "add", "broken", "--config", str(cfg), "--match", "not an address")
    assert bad.returncode == 1 and "senders[1].match[0]" in bad.stderr.replace("[2]", "[1]")
    assert [s.name for s in load(cfg).senders] == ["office", "scanners"]  # nothing written
    listed = json.loads(cli("senders", "list", "--config", str(cfg), "--json").stdout)
    assert [(x["name"], x["managed_by_cli"]) for x in listed] == [("office", False),
                                                                 ("scanners", True)]
    refused = cli("senders", "remove", "office", "--config", str(cfg))
    assert refused.returncode == 1 and "remove it there by hand" in refused.stderr
    assert cli("senders", "remove", "scanners", "--config", str(cfg)).returncode == 0
    assert [s.name for s in load(cfg).senders] == ["office"]
    assert cli("topics", "add", "sales", "--config", str(cfg), "--address",
               "sales@example.com").returncode == 0
    assert [t.name for t in load(cfg).topics] == ["sales"]
    assert cli("topics", "remove", "sales", "--config", str(cfg)).returncode == 0
    assert cfg.read_text() == HAND_WRITTEN
    assert not list((tmp_path / "rules.d").glob(".*.tmp"))  # no temp files left


def test_rule_editing_needs_an_include(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[[senders]]\nname='a'\nmatch=['*']\n")
    out = cli("senders", "add", "x", "--config", str(cfg), "--match", "*@x.example")
    assert out.returncode == 1 and 'include = ["rules.d/cli.toml"]' in out.stderr


async def test_live_reload_by_cli_and_broken_file_keeps_old_rules(tmp_path, procs):
    cfg = tmp_path / "c.toml"
    cfg.write_text(HAND_WRITTEN + f'\n[storage]\ndata_dir = "{tmp_path / "data"}"\n'
                   '[simulator]\ncomplete_after = 0.2\n')
    bridge = Proc(["serve", "--config", str(cfg), "--smtp-listen", "127.0.0.1:0",
                   "--http-listen", "127.0.0.1:0"], tmp_path)
    procs.append(bridge)
    listening = await bridge.listening()
    addr = listening.smtp
    t = await send(addr, mail(sender="scan@copier.example"))
    assert t.rcpt[0][0] == 550
    # a rule only the CLI adds: the running bridge reloads the included file
    assert (await arun_faxbridge("senders", "add", "copiers", "--config", str(cfg), "--match",
                                 "*@copier.example")).returncode == 0
    await bridge.output_seen("configuration reloaded (senders)")
    t = await send(addr, mail(sender="scan@copier.example"))
    assert t.data and t.data[0] == 250, t
    async with httpx.AsyncClient() as c:
        metrics = (await c.get(f"{listening.http}/metrics")).text
    assert 'faxbridge_smtp_mails_total{reason="250",result="accepted"} 1.0' in metrics
    # a broken file: refused, logged with its key path, the old rules stay in force
    cfg.write_text(cfg.read_text() + "\n[smtp]\nmax_recipients = 'many'\n")
    out = await bridge.output_seen("reload (file changed) refused")
    assert "smtp.max_recipients" in out
    t = await send(addr, mail(sender="scan@copier.example"))
    assert t.data and t.data[0] == 250
    t = await send(addr, mail(), rcpts=["+4989123456@fax.local", "+4930123456@fax.local"])
    assert [c for c, _ in t.rcpt] == [250, 250]  # still the old limit
    # fixed: the file watcher reloads it
    cfg.write_text(cfg.read_text().replace("max_recipients = 'many'", "max_recipients = 1"))
    await bridge.output_seen("configuration reloaded (smtp)")
    t = await send(addr, mail(), rcpts=["+4989123456@fax.local", "+4930123456@fax.local"])
    assert [c for c, _ in t.rcpt] == [250, 452]
    # SIGHUP reloads too: the file is unchanged, so only the signal can cause this one
    bridge.p.send_signal(signal.SIGHUP)
    await bridge.output_seen("configuration reloaded (nothing changed)")


async def test_metrics_count_a_known_sequence(make_bridge):
    bridge = await make_bridge()
    for _ in range(2):
        assert (await send(bridge.smtp_address, mail())).data[0] == 250
    await send(bridge.smtp_address, mail(to="bob@example.org"))
    await send(bridge.smtp_address, mail(to="+499001234567@fax.local"))

    async def counted() -> httpx.Response | None:
        """/metrics once all four mails are counted and their sessions closed (the
        client's QUIT returns before the bridge has closed its side)."""
        async with httpx.AsyncClient() as c:
            r = await c.get(f"{bridge.http_server.url}/metrics")
        total = sum(float(n) for n in re.findall(
            r'^faxbridge_smtp_mails_total\{[^}]*\} (\S+)$', r.text, re.M))
        return r if total >= 4 and "faxbridge_smtp_sessions_open 0.0" in r.text else None
    r = await wait_for(counted)
    text = r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert 'faxbridge_smtp_mails_total{reason="250",result="accepted"} 2.0' in text
    rejected = re.findall(r'faxbridge_smtp_mails_total\{reason="([^"]+)",result="rejected"\} '
                          r'(\S+)', text)
    reasons = {r: float(n) for r, n in rejected}
    assert reasons == {"relay_denied": 1.0, "destination_blocked": 1.0}, reasons
    assert "faxbridge_smtp_sessions_open 0.0" in text
    assert re.search(r'faxbridge_jobs\{state="(queued|submitting|submitted)"\}', text)
    assert 'faxbridge_queue_depth{queue="mail_out"}' in text


async def test_admin_api_needs_the_token(make_bridge, monkeypatch):
    monkeypatch.setenv("FB_ADMIN", "s3cret-token")
    bridge = await make_bridge(http={"admin_token": {"env": "FB_ADMIN"}})
    t = await send(bridge.smtp_address, mail())
    base = bridge.http_server.url
    async with httpx.AsyncClient() as c:
        assert (await c.get(f"{base}/admin/jobs")).status_code == 401
        r = await c.get(f"{base}/admin/jobs", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        auth = {"Authorization": "Bearer s3cret-token"}
        jobs = (await c.get(f"{base}/admin/jobs", headers=auth)).json()
        assert [j["id"] for j in jobs] == [t.job_id] and "raw" not in jobs[0]
        one = (await c.get(f"{base}/admin/jobs/{t.job_id}", headers=auth)).json()
        assert one["events"][0]["kind"] == "accepted"
        logs = (await c.get(f"{base}/admin/log?failed=0", headers=auth)).json()
        assert logs[0]["job_id"] == t.job_id and logs[0]["recipients"][0]["number"]
        assert (await c.get(f"{base}/admin/log/{logs[0]['id']}", headers=auth)).json()[
            "reply"].startswith("250")
        r = await c.post(f"{base}/admin/jobs/{t.job_id}/release", headers=auth)
        assert r.status_code == 409
        assert (await c.get(f"{base}/admin/inbox", headers=auth)).json() == []


async def test_admin_api_disabled_without_token(make_bridge):
    bridge = await make_bridge()
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{bridge.http_server.url}/admin/jobs")
    assert r.status_code == 403 and "http.admin_token" in r.json()["error"]


async def test_health_and_readiness_while_the_simulator_is_down(sim, make_bridge, monkeypatch,
                                                                refused_port):
    state, url = sim
    monkeypatch.setenv("FB_PULL_PW", "simulator")
    dead = f"http://127.0.0.1:{refused_port}"
    bridge = await make_bridge(
        retarus={"send_url": f"{dead}/fax4a/ha-de/rest/v1",
                 "datacenter_urls": [f"{dead}/fax4a/de1/rest/v1"]},
        topics=[{"name": "demo", "url": f"{dead}/faxin/rest/v1", "poll_interval": 0.1,
                 "password": {"env": "FB_PULL_PW"}, "addresses": ["in@example.com"]}])
    t = await send(bridge.smtp_address, mail())
    assert t.data[0] == 250  # mail is still accepted and queued
    await wait_for(lambda: bridge.store.job(t.job_id).state == "deferred")
    async with httpx.AsyncClient() as c:
        assert (await c.get(f"{bridge.http_server.url}/healthz")).json() == {"status": "alive"}
        await wait_for(lambda: bridge.topic_states["demo"].status == "error")
        ready = (await c.get(f"{bridge.http_server.url}/readyz")).json()
    assert ready["checks"]["store"] == "ok (writable)" and ready["checks"]["last_contact"] == {}
    assert ready["checks"]["topics"]["demo"]["status"] == "error"
    assert "connection failed" in ready["checks"]["topics"]["demo"]["last_error"]


def _slow_data(addr: str, size: int, in_data: threading.Event, go_on: threading.Event,
               result: dict) -> None:
    """Send a mail of `size` bytes; halfway through DATA set `in_data` and wait for
    `go_on` before sending the rest."""
    host, port = addr.split(":")
    try:
        s = smtplib.SMTP(host, int(port), timeout=60)
        s.ehlo()
        s.mail("alice@example.com")
        s.rcpt("+4989123456@fax.local")
        s.putcmd("data")
        code, _ = s.getreply()
        assert code == 354
        head = b"From: alice@example.com\r\nTo: +4989123456@fax.local\r\nSubject: big\r\n\r\n"
        s.sock.sendall(head)
        line = b"x" * 998 + b"\r\n"
        lines = size // 1000
        s.sock.sendall(line * (lines // 2))
        in_data.set()
        if not go_on.wait(120):
            raise TimeoutError("the test never let the client go on")
        s.sock.sendall(line * (lines - lines // 2))
        s.sock.sendall(b".\r\n")
        result["reply"] = s.getreply()
        s.close()
    except (OSError, smtplib.SMTPException) as exc:
        result["error"] = repr(exc)
    finally:
        in_data.set()  # a failure before DATA must not leave the test waiting


def _connect_code(addr: str) -> dict:
    host, port = addr.split(":")
    try:
        with smtplib.SMTP(host, int(port), timeout=30) as s:
            return {"code": s.ehlo()[0]}
    except smtplib.SMTPConnectError as exc:
        return {"code": exc.smtp_code}
    except (OSError, smtplib.SMTPException) as exc:
        return {"error": repr(exc)}


async def test_sigterm_during_large_data_never_loses_a_250(tmp_path, procs):
    """SIGTERM arrives while a 3 MB mail is halfway through DATA: the bridge turns
    newcomers away with 421, lets the transfer finish, answers 250, commits the job
    and exits 0; after a restart the job is there, whole, and goes to Retarus."""
    args = ["serve", "--data-dir", str(tmp_path / "data"), "--smtp-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0", "--simulator-listen", "127.0.0.1:0"]
    bridge = Proc(args, tmp_path)
    procs.append(bridge)
    addr = (await bridge.listening()).smtp
    result: dict = {}
    in_data, go_on = threading.Event(), threading.Event()
    th = threading.Thread(target=_slow_data, args=(addr, 3_000_000, in_data, go_on, result))
    th.start()
    try:
        assert await asyncio.to_thread(in_data.wait, 60) and not result, result
        bridge.p.send_signal(signal.SIGTERM)
        await bridge.output_seen("faxbridge stopping")
        # a newcomer during shutdown is told to come back later (the bridge is still
        # there: it waits for the mail in DATA)
        late = await asyncio.to_thread(_connect_code, addr)
        assert late == {"code": 421}, late
    finally:
        go_on.set()
        await asyncio.to_thread(th.join, 120)
    assert await asyncio.to_thread(bridge.p.wait, 120) == 0, bridge.output
    reply = result.get("reply")
    assert reply is not None, result
    code, text = reply
    assert code == 250, reply
    job_id = text.decode().split("Queued as ")[1].split(":")[0]
    again = Proc(args, tmp_path)
    procs.append(again)
    await again.listening()
    from faxbridge.store import Store
    store = Store(tmp_path / "data" / "faxbridge.sqlite3")
    try:
        assert store.job(job_id) is not None
        await wait_for(lambda: store.job(job_id).state in ("submitted", "done"), timeout=60)
        assert len(store.job_documents(job_id)[0].data) > 2_900_000
    finally:
        store.close()


def test_dockerfile_entry_point_and_healthcheck_exist(tmp_path):
    text = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r'^CMD (\[.*?\])\s*$', text.replace("\\\n", " "),
                               re.M | re.S).group(1))
    assert cmd[:2] == ["faxbridge", "serve"]
    flags = [a for a in cmd[2:] if a.startswith("--")]
    help_text = cli("serve", "--help").stdout
    for flag in flags:
        assert flag in help_text, flag
    assert re.search(r"^USER faxbridge", text, re.M) and "VOLUME" in text
    hc = re.search(r'HEALTHCHECK .*?CMD (.*?)\|\| exit 1', text.replace("\\\n", " "), re.S)
    # no port in the check: it asks where the bridge of that data directory listens
    assert hc and "8025" not in hc.group(1) and "faxbridge health" in hc.group(1)
    # run the health check command against a real bridge, on a port of its own
    bridge = Proc(["serve", "--data-dir", str(tmp_path / "d"), "--smtp-listen", "127.0.0.1:0",
                   "--http-listen", "127.0.0.1:0", "--simulator-listen", "127.0.0.1:0"],
                  tmp_path)
    try:
        bridge.wait_listening()
        argv = shlex.split(hc.group(1).replace("/var/lib/faxbridge", str(tmp_path / "d")))
        assert argv[0] == "faxbridge"
        argv[:1] = [sys.executable, "-m", "faxbridge"]
        assert subprocess.run(argv, timeout=60).returncode == 0
        bridge.stop()  # and against none: the check fails
        assert subprocess.run(argv, timeout=60, capture_output=True).returncode != 0
    finally:
        bridge.stop()
    for path in ("pyproject.toml", "README.md", "config.example.toml", "faxbridge", "templates"):
        assert (ROOT / path).exists() and path in text



async def test_reload_moves_the_listener_and_keeps_the_old_config_on_a_busy_port(
        make_bridge):
    import socket

    import pytest
    bridge = await make_bridge()
    old_port = int(bridge.smtp_address.rsplit(":", 1)[1])
    # another loopback address, port 0: a different listen setting without guessing a
    # free port (on Linux all of 127.0.0.0/8 is the loopback interface)
    moved = bridge.cfg.model_copy(update={
        "smtp": bridge.cfg.smtp.model_copy(update={"listen": "127.0.0.2:0"}),
        "retarus": bridge.cfg.retarus.model_copy(update={"timeout": 5.0})})
    old_client = bridge.fax4a
    assert await bridge.reload(moved) == ["smtp listener", "retarus", "smtp"]
    assert bridge.smtp_address.startswith("127.0.0.2:") and bridge.fax4a is not old_client
    assert (await send(bridge.smtp_address, mail())).data[0] == 250
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", old_port), timeout=2).close()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = bridge.cfg.model_copy(update={"smtp": bridge.cfg.smtp.model_copy(
            update={"listen": f"127.0.0.1:{busy.getsockname()[1]}", "max_recipients": 1})})
        assert await bridge.reload(taken) == []
    assert bridge.cfg is moved and bridge.cfg.smtp.max_recipients == 50
    t = await send(bridge.smtp_address, mail(), rcpts=["+4989123456@fax.local",
                                                        "+4930123456@fax.local"])
    assert [c for c, _ in t.rcpt] == [250, 250]  # the old limits are still in force
