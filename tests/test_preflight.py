"""What `faxbridge check` calls ok, `faxbridge serve` starts: the environment a
config names (TLS files, secrets) is checked by both, each problem one line with
its key path, and `serve` exits without a traceback. A live reload with a broken
certificate keeps the running listener and its TLS context."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from faxbridge.app import Bridge
from tests.conftest import ALL_SENDERS_TOML, Proc

# Variables a case may need unset, whatever the developer's shell holds.
UNSET = ("FAXBRIDGE_RETARUS_PASSWORD", "FB_TEST_RELAY_PW", "FB_TEST_PULL_PW")


@dataclass
class Certs:
    ca: trustme.CA
    cert: Path        # certificate for 127.0.0.1 issued by `ca`
    key: Path         # its key
    other_key: Path   # a valid key of another certificate: does not match `cert`
    not_cert: Path    # a PEM file holding a private key, not a certificate
    encrypted_key: Path

    def issue(self, directory: Path, name: str) -> tuple[Path, Path]:
        """A fresh certificate + key for 127.0.0.1 from the same CA."""
        leaf = self.ca.issue_cert("127.0.0.1", f"{name}.faxbridge.test")
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    ca = trustme.CA()
    d = tmp_path / "tls"
    d.mkdir()
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(d / "key.pem"))
    ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(d / "other-key.pem"))
    # A real PEM file, just not a certificate: the key, as admins mix them up.
    (d / "not-a-cert.pem").write_bytes((d / "key.pem").read_bytes())
    enc = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"))
    (d / "encrypted-key.pem").write_bytes(enc)
    return Certs(ca, d / "cert.pem", d / "key.pem", d / "other-key.pem",
                 d / "not-a-cert.pem", d / "encrypted-key.pem")


def faxbridge(*args: str, cwd: Path, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in UNSET}
    return subprocess.run([sys.executable, "-m", "faxbridge", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env={**clean, **(env or {})})


def serve(cfg: Path, tmp_path: Path, env: dict[str, str] | None = None,
          *extra: str) -> subprocess.CompletedProcess[str]:
    return faxbridge("serve", "--config", str(cfg), "--data-dir", str(tmp_path / "data"),
                     "--smtp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                     *extra, cwd=tmp_path, env=env, timeout=30)


def tls_toml(cert: Path, key: Path) -> str:
    return f'[smtp]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'


# (id, config text from the certs, expected line); each config is otherwise valid.
CASES: list[tuple[str, Callable[[Certs], str], Callable[[Certs], str]]] = [
    ("missing certificate file",
     lambda c: tls_toml(c.cert.with_name("gone.pem"), c.key),
     lambda c: f"  smtp.tls_cert: {c.cert.with_name('gone.pem')}: file not found"),
    ("PEM that is not a certificate",
     lambda c: tls_toml(c.not_cert, c.key),
     lambda c: f"  smtp.tls_cert: {c.not_cert}: no PEM certificate in it"),
    ("key of another certificate",
     lambda c: tls_toml(c.cert, c.other_key),
     lambda c: f"  smtp.tls_key: {c.other_key}: the key does not match the certificate in "
               f"smtp.tls_cert ({c.cert})"),
    ("encrypted key",
     lambda c: tls_toml(c.cert, c.encrypted_key),
     lambda c: f"  smtp.tls_key: {c.encrypted_key}: the private key is encrypted"),
    ("live mode without the Retarus password",
     lambda c: '[retarus]\nmode = "live"\npassword = { env = "FAXBRIDGE_RETARUS_PASSWORD" }\n',
     lambda c: "  retarus.password: environment variable FAXBRIDGE_RETARUS_PASSWORD is not set "
               "(needed in live mode)"),
    ("topic password file that does not exist",
     lambda c: '[[topics]]\nname = "sales"\naddresses = ["a@example.com"]\n'
               '[[topics]]\nname = "support"\naddresses = ["b@example.com"]\n'
               f'password = {{ file = "{c.cert.parent / "support.pw"}" }}\n',
     lambda c: f"  topics[1].password.file: {c.cert.parent / 'support.pw'}: file not found"),
    ("relay password for the SMTP transport",
     lambda c: '[mail]\ntransport = "smtp"\n[mail.relay]\nusername = "fb"\n'
               'password = { env = "FB_TEST_RELAY_PW" }\n',
     lambda c: "  mail.relay.password: environment variable FB_TEST_RELAY_PW is not set"),
]


@pytest.mark.parametrize("name, toml, line", CASES, ids=[c[0] for c in CASES])
def test_check_and_serve_report_the_same_line(tmp_path, certs, name, toml, line):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml(certs) + ALL_SENDERS_TOML)
    expected = line(certs)
    checked = faxbridge("check", "--config", str(cfg), cwd=tmp_path)
    assert checked.returncode == 1, checked.stdout
    assert checked.stdout.splitlines()[0] == f"{cfg}: 1 error(s)"
    assert any(x.startswith(expected) for x in checked.stdout.splitlines()), checked.stdout
    served = serve(cfg, tmp_path)
    output = served.stdout + served.stderr
    assert served.returncode == 1, output
    assert "Traceback" not in output
    assert served.stderr.splitlines()[0] == f"config error in {cfg}:"
    assert any(x.startswith(expected) for x in served.stderr.splitlines()), output
    assert "faxbridge listening" not in output


def test_the_same_configs_pass_once_the_environment_is_right(tmp_path, certs):
    """The counterpart of the cases above: the check is about the file or variable."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[retarus]\nmode = "live"\npassword = { env = "FAXBRIDGE_RETARUS_PASSWORD" }\n'
                   + tls_toml(certs.cert, certs.key) + ALL_SENDERS_TOML)
    out = faxbridge("check", "--config", str(cfg), cwd=tmp_path,
                    env={"FAXBRIDGE_RETARUS_PASSWORD": "s3cret"})
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout
    assert "TLS on" in out.stdout


def test_every_problem_is_listed_at_once(tmp_path, certs):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[retarus]\nmode = "live"\npassword = { env = "FAXBRIDGE_RETARUS_PASSWORD" }\n'
                   + tls_toml(certs.not_cert, certs.key) + ALL_SENDERS_TOML)
    out = faxbridge("check", "--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0] == f"{cfg}: 2 error(s)"
    assert lines[1].startswith("  smtp.tls_cert: ") and lines[2].startswith("  retarus.password: ")


def test_zero_sender_rules_is_a_warning_in_check_and_at_serve(tmp_path, procs):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[fax]\ndomains = ["fax.local"]\n')
    out = faxbridge("check", "--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("ok\n"), out.stdout
    assert ("  warning: senders: no sender rules: every mail to a fax domain is refused "
            "(550 5.7.1)") in out.stdout
    with_rule = tmp_path / "d.toml"
    with_rule.write_text(ALL_SENDERS_TOML)
    assert "warning" not in faxbridge("check", "--config", str(with_rule), cwd=tmp_path).stdout
    bridge = Proc(["serve", "--config", str(cfg), "--data-dir", str(tmp_path / "data"),
                   "--smtp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"], tmp_path)
    procs.append(bridge)
    text = bridge.wait_output("faxbridge listening")
    assert "WARNING faxbridge: config: senders: no sender rules" in text


def test_serve_reports_a_busy_smtp_port_in_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(ALL_SENDERS_TOML)
        out = faxbridge("serve", "--config", str(cfg), "--data-dir", str(tmp_path / "data"),
                        "--smtp-listen", f"127.0.0.1:{port}", "--http-listen", "127.0.0.1:0",
                        cwd=tmp_path, timeout=30)
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        f"faxbridge: cannot listen on 127.0.0.1:{port} (smtp.listen): Address already in use"]


# ------------------------------------------------------------------ live reload
def _starttls_peer_cert(address: str, ca: trustme.CA) -> tuple[str, bytes]:
    """EHLO, STARTTLS verified against `ca`, EHLO again: the first EHLO reply and
    the certificate the server presented (DER)."""
    host, _, port = address.rpartition(":")
    with smtplib.SMTP(host, int(port), timeout=10) as s:
        code, text = s.ehlo()
        assert code == 250
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        s.starttls(context=ctx)
        assert s.ehlo()[0] == 250
        der = s.sock.getpeercert(binary_form=True)
        assert der is not None
        return text.decode(), der


def _der(pem_path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_path.read_text())


async def _readyz(bridge: Bridge) -> dict:
    assert bridge.http_server is not None
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{bridge.http_server.url}/readyz")
    return {"status": r.status_code, **r.json()}


async def test_reload_with_a_broken_certificate_keeps_the_listener_and_its_tls(
        make_bridge, tmp_path, certs, caplog):
    import asyncio
    bridge = await make_bridge(smtp={"tls_cert": certs.cert, "tls_key": certs.key})
    address, listener = bridge.smtp_address, bridge.smtp_server
    ehlo, der = await asyncio.to_thread(_starttls_peer_cert, address, certs.ca)
    assert "STARTTLS" in ehlo.upper() and der == _der(certs.cert)

    def with_tls(cert: Path, key: Path):  # noqa: ANN202
        return bridge.cfg.model_copy(update={"smtp": bridge.cfg.smtp.model_copy(
            update={"tls_cert": cert, "tls_key": key, "max_recipients": 7})})

    running = bridge.cfg
    # 1. other paths: a key that does not match; 2. not a certificate; 3. the file in
    # use overwritten with garbage (a renewal gone wrong), same paths as running.
    garbage = tmp_path / "tls" / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                       "-----END CERTIFICATE-----\n")
    for cfg, key_path in ((with_tls(certs.cert, certs.other_key), "smtp.tls_key"),
                          (with_tls(certs.not_cert, certs.key), "smtp.tls_cert")):
        caplog.clear()
        assert await bridge.reload(cfg) == []
        # the same listener object, still serving, the old certificate on STARTTLS
        assert bridge.smtp_server is listener and listener.is_serving()
        ehlo, der = await asyncio.to_thread(_starttls_peer_cert, address, certs.ca)
        assert "STARTTLS" in ehlo.upper() and der == _der(certs.cert)
        ready = await _readyz(bridge)
        assert ready["status"] == 200 and ready["checks"]["smtp"] == address
        assert bridge.cfg is running and bridge.cfg.smtp.max_recipients == 50
        assert f"reload refused, keeping the running config: {key_path}: " in caplog.text
    original = certs.cert.read_bytes()
    certs.cert.write_bytes(garbage.read_bytes())
    caplog.clear()
    assert await bridge.reload(with_tls(certs.cert, certs.key)) == []
    assert "smtp.tls_cert: " in caplog.text and bridge.cfg is running
    ehlo, der = await asyncio.to_thread(_starttls_peer_cert, address, certs.ca)
    assert der == _der_from(original)  # the context in memory, not the file on disk
    # a valid new certificate on the same port: new sessions get it, no rebind
    new_cert, new_key = certs.issue(tmp_path / "tls", "renewed")
    assert await bridge.reload(with_tls(new_cert, new_key)) == ["smtp TLS", "smtp"]
    assert bridge.smtp_server is listener and bridge.smtp_address == address
    _, der = await asyncio.to_thread(_starttls_peer_cert, address, certs.ca)
    assert der == _der(new_cert) and der != _der_from(original)
    assert bridge.cfg.smtp.max_recipients == 7
    assert (await _readyz(bridge))["checks"]["smtp"] == address


def _der_from(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


async def test_renewed_certificate_at_the_same_path_is_taken_on_reload(
        make_bridge, tmp_path, certs):
    import asyncio
    bridge = await make_bridge(smtp={"tls_cert": certs.cert, "tls_key": certs.key})
    assert await bridge.reload(bridge.cfg) == []  # nothing changed, nothing to say
    new_cert, new_key = certs.issue(tmp_path / "tls", "renewed")
    certs.cert.write_bytes(new_cert.read_bytes())
    certs.key.write_bytes(new_key.read_bytes())
    assert await bridge.reload(bridge.cfg) == ["smtp TLS"]
    _, der = await asyncio.to_thread(_starttls_peer_cert, bridge.smtp_address, certs.ca)
    assert der == _der(new_cert)


async def test_sighup_with_a_broken_certificate_keeps_serving(tmp_path, certs, procs):
    """The same through a real `serve` process and SIGHUP."""
    import asyncio
    cfg = tmp_path / "c.toml"
    good = tls_toml(certs.cert, certs.key) + ALL_SENDERS_TOML
    cfg.write_text(good)
    bridge = Proc(["serve", "--config", str(cfg), "--data-dir", str(tmp_path / "data"),
                   "--smtp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"], tmp_path)
    procs.append(bridge)
    address = (await bridge.listening()).smtp
    cfg.write_text(tls_toml(certs.cert, certs.other_key) + ALL_SENDERS_TOML)
    bridge.p.send_signal(signal.SIGHUP)
    log = await bridge.output_seen("reload refused")
    assert (f"reload refused, keeping the running config: smtp.tls_key: {certs.other_key}: "
            "the key does not match") in log
    assert "Traceback" not in log
    _, der = await asyncio.to_thread(_starttls_peer_cert, address, certs.ca)
    assert der == _der(certs.cert)
