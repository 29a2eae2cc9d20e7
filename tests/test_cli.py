"""The admin commands on a store filled by a real SMTP session."""

from __future__ import annotations

import json
from email.message import EmailMessage

from tests.conftest import arun_faxbridge, run_faxbridge, wait_for
from tests.smtp_client import send

cli = arun_faxbridge  # the bridge runs in the test's event loop: never block it


async def test_jobs_list_show_json_and_release(make_bridge):
    # the simulator never completes the fax: the job stays 'submitted' while we look
    bridge = await make_bridge(simulator={"complete_after": 3600})
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "alice@example.com", "+4989123456@fax.local", "Hello"
    m.set_content("body")
    t = await send(bridge.smtp_address, m)
    await wait_for(lambda: bridge.store.job(t.job_id).state == "submitted")
    data_dir = str(bridge.cfg.storage.data_dir)
    listed = json.loads((await cli("jobs", "--json", "--data-dir", data_dir)).stdout)
    assert listed[0]["id"] == t.job_id and "raw" not in listed[0]
    assert listed[0]["state"] == "submitted" and listed[0]["sender"] == "alice@example.com"
    shown = json.loads((await cli("jobs", "show", t.job_id, "--json", "--data-dir",
                                  data_dir)).stdout)
    assert [e["kind"] for e in shown["events"]][:3] == ["accepted", "submitting", "submitted"]
    assert shown["documents"] == [{"name": "mail-body.txt", "type": "text/plain", "size": 5}]
    text = (await cli("jobs", "show", t.job_id, "--data-dir", data_dir)).stdout
    assert "timeline:" in text and "accepted" in text
    raw = (await cli("jobs", "show", t.job_id, "--raw", "--data-dir", data_dir,
                     text=False)).stdout
    assert raw == m.as_bytes().replace(b"\n", b"\r\n")  # byte for byte as received
    # release only works on held jobs
    out = await cli("jobs", "release", t.job_id, "--data-dir", data_dir)
    assert out.returncode == 1 and "is not held" in out.stdout
    bridge.store.set_job_state(t.job_id, "held", event="held", detail="test")
    assert (await cli("jobs", "release", t.job_id, "--data-dir", data_dir)).returncode == 0
    assert bridge.store.job(t.job_id).state in ("queued", "submitting", "submitted")
    logs = json.loads((await cli("log", "--json", "--data-dir", data_dir)).stdout)
    assert logs[0]["job_id"] == t.job_id and logs[0]["recipients"][0]["number"] == "+4989123456"
    assert (await cli("log", "--since", "1h", "--number", "+4989123456", "--data-dir",
                      data_dir)).stdout.count("Queued as") == 1
    assert "--since: expected" in (await cli("log", "--since", "yesterday-ish", "--data-dir",
                                             data_dir)).stderr


def test_serve_reports_a_busy_port(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run_faxbridge("serve", "--data-dir", str(tmp_path), "--smtp-listen", "127.0.0.1:0",
                  "--simulator-listen", "127.0.0.1:0", "--http-listen", f"127.0.0.1:{port}")
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (http.listen)" in out.stderr
