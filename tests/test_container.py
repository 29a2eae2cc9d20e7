"""The container's demo: the image's FAXBRIDGE_TRUSTED_NETWORKS lets clients on
Docker's networks fax on the embedded default, and `faxbridge health` finds the
port the bridge really listens on. (No Docker engine here: the image's settings
are run outside it.)"""

from __future__ import annotations

import asyncio
import json
import os
import re
import smtplib
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, Proc

DOCKER_ENV = re.search(r"^ENV FAXBRIDGE_TRUSTED_NETWORKS=(\S+)", (ROOT / "Dockerfile").read_text(),
                       re.M)


def faxbridge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faxbridge", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_image_trusts_dockers_networks_on_the_embedded_default(tmp_path):
    assert DOCKER_ENV, "the Dockerfile sets FAXBRIDGE_TRUSTED_NETWORKS"
    env = {"FAXBRIDGE_TRUSTED_NETWORKS": DOCKER_ENV.group(1)}
    # 172.17.0.1: the docker0 gateway, the peer a published port shows the bridge
    out = faxbridge("route", "--from", "alice@example.com", "--to", "+4989123456@fax.local",
                    "--peer", "172.17.0.1", "--data-dir", str(tmp_path), env=env)
    assert out.stdout.splitlines()[-1] == "accept", out.stdout + out.stderr
    # without it, the built-in default trusts loopback only: the 530 of the issue
    out = faxbridge("route", "--from", "alice@example.com", "--to", "+4989123456@fax.local",
                    "--peer", "172.17.0.1", "--data-dir", str(tmp_path),
                    env={"FAXBRIDGE_TRUSTED_NETWORKS": ""})
    assert out.stdout.splitlines()[-1].startswith("reject 530"), out.stdout
    bad = faxbridge("serve", "--data-dir", str(tmp_path), env={"FAXBRIDGE_TRUSTED_NETWORKS":
                                                                 "10.0.0.0/8,nonsense"})
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "FAXBRIDGE_TRUSTED_NETWORKS: bad network 'nonsense'" in bad.stderr


async def test_serve_takes_the_trusted_networks_from_the_environment(tmp_path):
    # 127.0.0.2 trusted, 127.0.0.1 not: both are this host's loopback interface
    proc = Proc(["serve", "--data-dir", str(tmp_path / "d"), "--smtp-listen", "127.0.0.1:0",
                 "--http-listen", "127.0.0.1:0", "--simulator-listen", "127.0.0.1:0"],
                tmp_path, env={"FAXBRIDGE_TRUSTED_NETWORKS": "127.0.0.2/32"})
    try:
        host, port = (await proc.listening()).smtp.split(":")

        def mail_from(source: str) -> tuple[int, bytes]:
            with smtplib.SMTP(host, int(port), timeout=30, source_address=(source, 0)) as s:
                s.ehlo()
                s.docmd("MAIL FROM:<alice@example.com>")
                return s.docmd("RCPT TO:<+4989123456@fax.local>")
        assert (await asyncio.to_thread(mail_from, "127.0.0.2"))[0] == 250
        code, _ = await asyncio.to_thread(mail_from, "127.0.0.1")
        assert code == 503  # MAIL was refused with 530, so RCPT has no transaction
    finally:
        await asyncio.to_thread(proc.stop)


def test_health_uses_the_running_bridges_address_else_the_config(tmp_path: Path,
                                                                 refused_port: int):
    data = tmp_path / "data"
    data.mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[http]\nlisten = "0.0.0.0:{refused_port}"\n'
                   f'[storage]\ndata_dir = "{data}"\n')
    out = faxbridge("health", "--config", str(cfg))
    # from the config, the wildcard address asked on loopback
    assert out.returncode == 1
    assert f"http://127.0.0.1:{refused_port}/healthz (from http.listen of {cfg})" in out.stderr
    # what the running bridge wrote wins over the config
    (data / "listening.json").write_text(json.dumps({"http": f"http://127.0.0.2:{refused_port}"}))
    out = faxbridge("health", "--config", str(cfg))
    assert out.returncode == 1 and f"http://127.0.0.2:{refused_port}/healthz" in out.stderr
