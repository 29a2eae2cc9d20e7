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
import time
from email.message import EmailMessage

import httpx

from faxbridge.config import load
from tests.conftest import ROOT, Proc, free_port, wait_for
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
    http_port, smtp_port = free_port(), free_port()
    cfg.write_text(HAND_WRITTEN + f'\n[storage]\ndata_dir = "{tmp_path / "data"}"\n'
                   '[simulator]\ncomplete_after = 0.2\n')
    bridge = Proc(["serve", "--config", str(cfg), "--smtp-listen", f"127.0.0.1:{smtp_port}",
                   "--http-listen", f"127.0.0.1:{http_port}"], tmp_path)
    procs.append(bridge)
    bridge.wait_output("faxbridge listening")
    addr = f"127.0.0.1:{smtp_port}"
    t = await send(addr, mail(sender="scan@copier.example"))
    assert t.rcpt[0][0] == 550
    # a rule only the CLI adds: the running bridge reloads the included file
    assert cli("senders", "add", "copiers", "--config", str(cfg), "--match",
               "*@copier.example").returncode == 0
    bridge.wait_output("configuration reloaded", timeout=10)
    t = await send(addr, mail(sender="scan@copier.example"))
    assert t.data and t.data[0] == 250, t
    async with httpx.AsyncClient() as c:
        metrics = (await c.get(f"http://127.0.0.1:{http_port}/metrics")).text
    assert 'faxbridge_smtp_mails_total{reason="250",result="accepted"} 1.0' in metrics
    # a broken file: refused, logged with its key path, the old rules stay in force
    cfg.write_text(cfg.read_text() + "\n[smtp]\nmax_recipients = 'many'\n")
    bridge.wait_output("reload (file changed) refused", timeout=10)
    assert "smtp.max_recipients" in bridge.log.read_text()
    t = await send(addr, mail(sender="scan@copier.example"))
    assert t.data and t.data[0] == 250
    # SIGHUP reload after fixing it
    cfg.write_text(cfg.read_text().replace("max_recipients = 'many'", "max_recipients = 1"))
    bridge.p.send_signal(signal.SIGHUP)
    await wait_for(lambda: bridge.log.read_text().count("configuration reloaded") >= 2,
                   timeout=10)
    t = await send(addr, mail(), rcpts=["+4989123456@fax.local", "+4930123456@fax.local"])
    assert [c for c, _ in t.rcpt] == [250, 452]


async def test_metrics_count_a_known_sequence(make_bridge):
    bridge = await make_bridge()
    for _ in range(2):
        assert (await send(bridge.smtp_address, mail())).data[0] == 250
    await send(bridge.smtp_address, mail(to="bob@example.org"))
    await send(bridge.smtp_address, mail(to="+499001234567@fax.local"))
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{bridge.http_server.url}/metrics")
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


async def test_health_and_readiness_while_the_simulator_is_down(sim, make_bridge, monkeypatch):
    state, url = sim
    monkeypatch.setenv("FB_PULL_PW", "simulator")
    dead = f"http://127.0.0.1:{free_port()}"
    bridge = await make_bridge(
        retarus={"send_url": f"{dead}/fax4a/ha-de/rest/v1",
                 "datacenter_urls": [f"{dead}/fax4a/de1/rest/v1"]},
        topics=[{"name": "demo", "url": f"{dead}/faxin/rest/v1", "poll_interval": 0.1,
                 "password": {"env": "FB_PULL_PW"}, "addresses": ["in@example.com"]}])
    t = await send(bridge.smtp_address, mail())
    assert t.data[0] == 250  # mail is still accepted and queued
    await wait_for(lambda: bridge.store.job(t.job_id)["state"] == "deferred")
    async with httpx.AsyncClient() as c:
        assert (await c.get(f"{bridge.http_server.url}/healthz")).json() == {"status": "alive"}
        await wait_for(lambda: bridge.topic_states["demo"].status == "error")
        ready = (await c.get(f"{bridge.http_server.url}/readyz")).json()
    assert ready["checks"]["store"] == "ok (writable)" and ready["checks"]["last_contact"] == {}
    assert ready["checks"]["topics"]["demo"]["status"] == "error"
    assert "connection failed" in ready["checks"]["topics"]["demo"]["last_error"]


def _slow_data(addr: str, size: int, result: dict) -> None:
    host, port = addr.split(":")
    try:
        s = smtplib.SMTP(host, int(port), timeout=30)
        s.ehlo()
        s.mail("alice@example.com")
        s.rcpt("+4989123456@fax.local")
        s.putcmd("data")
        code, _ = s.getreply()
        assert code == 354
        head = b"From: alice@example.com\r\nTo: +4989123456@fax.local\r\nSubject: big\r\n\r\n"
        s.sock.sendall(head)
        line = b"x" * 998 + b"\r\n"
        for i in range(size // 1000):
            s.sock.sendall(line)
            if i % 200 == 0:
                time.sleep(0.05)
        s.sock.sendall(b".\r\n")
        result["reply"] = s.getreply()
        s.close()
    except (OSError, smtplib.SMTPException) as exc:
        result["error"] = repr(exc)


async def test_sigterm_during_large_data_never_loses_a_250(tmp_path, procs):
    smtp_port = free_port()
    args = ["serve", "--data-dir", str(tmp_path / "data"), "--smtp-listen",
            f"127.0.0.1:{smtp_port}", "--http-listen", "127.0.0.1:0", "--simulator-listen",
            "127.0.0.1:0"]
    bridge = Proc(args, tmp_path)
    procs.append(bridge)
    bridge.wait_output("faxbridge listening")
    addr = f"127.0.0.1:{smtp_port}"
    result: dict = {}
    th = threading.Thread(target=_slow_data, args=(addr, 3_000_000, result))
    th.start()
    await asyncio.sleep(0.6)  # well inside DATA
    bridge.p.send_signal(signal.SIGTERM)
    await asyncio.to_thread(bridge.wait_output, "faxbridge stopping")
    late: dict = {}
    try:  # a newcomer during shutdown is told to come back later
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as s:
            late["code"] = s.ehlo()[0]
    except smtplib.SMTPConnectError as exc:
        late["code"] = exc.smtp_code
    except (OSError, smtplib.SMTPException) as exc:
        late["error"] = repr(exc)
    th.join(60)
    bridge.p.wait(60)
    assert bridge.p.returncode == 0
    assert late.get("code") == 421 or "error" in late, late
    reply = result.get("reply")
    assert reply is not None, result
    code, text = reply
    assert code == 250 or 400 <= code < 500, reply
    if code == 250:
        job_id = text.decode().split("Queued as ")[1].split(":")[0]
        again = Proc(args, tmp_path)
        procs.append(again)
        again.wait_output("faxbridge listening")
        from faxbridge.store import Store
        store = Store(tmp_path / "data" / "faxbridge.sqlite3")
        assert store.job(job_id) is not None
        await wait_for(lambda: store.job(job_id)["state"] in ("submitted", "done"), timeout=20)
        assert len(store.job_documents(job_id)[0]["data"]) > 2_900_000


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
    assert hc and "/healthz" in hc.group(1)
    # run the health check command against a real bridge
    port = free_port()
    bridge = Proc(["serve", "--data-dir", str(tmp_path / "d"), "--smtp-listen", "127.0.0.1:0",
                   "--http-listen", f"127.0.0.1:{port}", "--simulator-listen", "127.0.0.1:0"],
                  tmp_path)
    try:
        bridge.wait_output("faxbridge listening")
        argv = shlex.split(hc.group(1).replace("8025", str(port)))
        argv[0] = sys.executable
        assert subprocess.run(argv, timeout=20).returncode == 0
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
    new_port = free_port()
    moved = bridge.cfg.model_copy(update={
        "smtp": bridge.cfg.smtp.model_copy(update={"listen": f"127.0.0.1:{new_port}"}),
        "retarus": bridge.cfg.retarus.model_copy(update={"timeout": 5.0})})
    old_client = bridge.fax4a
    assert await bridge.reload(moved) == ["smtp listener", "retarus", "smtp"]
    assert bridge.smtp_address == f"127.0.0.1:{new_port}" and bridge.fax4a is not old_client
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
