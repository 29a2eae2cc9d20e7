"""The wheel works on its own: built from the repository, installed with its
dependencies into a fresh virtual environment (no access to this checkout), its
`faxbridge serve` turns a mail into a fax and a report mail, and a received fax
into a mail, from an unrelated working directory.

One wheel and one venv for the module: building and installing takes a while."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from faxbridge.simulator.pdf import tiny_pdf
from tests.conftest import ROOT, wait_until

BIN = "Scripts" if os.name == "nt" else "bin"


def junk(path: str, names: list[str]) -> set[str]:
    """What the copy the wheel is built from leaves out: caches everywhere, and
    build output, data directories and the git store at the top."""
    top = Path(path) == ROOT
    return {n for n in names
            if n in ("__pycache__", ".pytest_cache", ".ruff_cache") or n.endswith(".egg-info")
            or (top and n in (".git", "build", "dist", "faxbridge-data", "data", ".venv"))}


class Venv:
    def __init__(self, root: Path, wheel: Path) -> None:
        self.root, self.wheel = root, wheel
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}

    def exe(self, name: str) -> str:
        return str(self.root / BIN / name)

    def run(self, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.exe("faxbridge"), *args], cwd=cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)


def run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    base = tmp_path_factory.mktemp("wheel")
    # Built from a copy: pip builds in the source tree, and a stale build/ there
    # could put files into the wheel that the repository no longer has.
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=junk)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(base / "dist"),
         str(src)], timeout=600)
    wheel = next((base / "dist").glob("faxbridge-*.whl"))
    run([sys.executable, "-m", "venv", str(base / "venv")], timeout=300)
    v = Venv(base / "venv", wheel)
    run([v.exe("python"), "-m", "pip", "install", "-q", str(wheel)], timeout=900, env=v.env)
    return v


def test_the_wheel_holds_every_package_the_templates_and_the_example(venv):
    names = set(zipfile.ZipFile(venv.wheel).namelist())
    packages = {p.parent.relative_to(ROOT).as_posix()
                for p in (ROOT / "faxbridge").rglob("__init__.py")}
    assert {f"{p}/__init__.py" for p in packages} <= names
    templates = {f"faxbridge/templates/{p.name}" for p in (ROOT / "templates").glob("*.j2")}
    assert len(templates) >= 15 and templates <= names
    assert "faxbridge/examples/config.example.toml" in names
    pages = {f"faxbridge/web/templates/{p.name}"
             for p in (ROOT / "faxbridge" / "web" / "templates").glob("*.j2")}
    assert len(pages) >= 10 and pages <= names  # the dashboard's
    data = {n for n in names if not n.endswith(".py") and ".dist-info/" not in n}
    assert data == templates | pages | {"faxbridge/examples/config.example.toml"}


def test_installed_package_uses_its_own_files(venv, tmp_path):
    code = ("import faxbridge, faxbridge.resources as r; from faxbridge.mail.compose import "
            "Composer; print(faxbridge.__file__); print(r.source_root()); "
            "print(Composer().builtin_dir)")
    out = run([venv.exe("python"), "-c", code], timeout=60, cwd=tmp_path, env=venv.env)
    module, source, templates = out.stdout.splitlines()
    site = Path(module).parent.parent
    assert site.is_relative_to(venv.root) and source == "None"
    assert Path(templates) == site / "faxbridge" / "templates"


def test_example_config_from_the_wheel(venv, tmp_path):
    out = venv.run("example-config", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == (ROOT / "config.example.toml").read_text()
    (tmp_path / "config.toml").write_text(out.stdout)
    checked = venv.run("check", "--config", "config.toml", cwd=tmp_path)
    assert checked.returncode == 0 and checked.stdout.startswith("ok"), checked


def maildir_messages(box: Path) -> list[EmailMessage]:
    if not (box / "new").is_dir():
        return []
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in sorted((box / "new").iterdir())]


@pytest.fixture
def server(venv: Venv, tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, Path]]:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [venv.exe("faxbridge"), "serve", "--data-dir", str(data), "--smtp-listen",
             "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--simulator-listen",
             "127.0.0.1:0"], cwd=cwd, env=venv.env, stdout=fh, stderr=subprocess.STDOUT)
        try:
            def listening() -> re.Match[str] | None:
                text = log.read_text(errors="replace")
                assert proc.poll() is None, f"serve exited:\n{text}"
                return re.search(r"faxbridge listening: SMTP (\S+), HTTP (\S+), "
                                 r"simulator (\S+)\n", text)
            m = wait_until(listening, 60, "faxbridge listening")
            yield {"smtp": m.group(1), "http": m.group(2), "simulator": m.group(3)}, data, log
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                assert proc.wait(60) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    text = log.read_text(errors="replace")
    assert "faxbridge stopped" in text and "Traceback" not in text, text


def test_serve_from_the_wheel_faxes_reports_and_mails_a_received_fax(server):
    addrs, data, log = server
    host, port = addrs["smtp"].rsplit(":", 1)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", addrs["http"]), addrs
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = ("alice@example.com", "+4989123456@fax.local",
                                        "Wheel test")
    m.set_content("Please fax the attachment.")
    m.add_attachment(tiny_pdf("wheel test"), maintype="application", subtype="pdf",
                     filename="letter.pdf")
    with smtplib.SMTP(host, int(port), timeout=30) as s:
        s.send_message(m)

    reports = wait_until(lambda: maildir_messages(data / "mail" / "alice@example.com"), 60,
                         "the report mail")
    assert len(reports) == 1
    report = reports[0]
    # two pages: the mail's text and the PDF
    assert report["Subject"] == "Fax to +49 89 123456 delivered (2 pages): Wheel test"
    text = report.get_body(("plain",)).get_content()
    assert "Your fax to +49 89 123456 was delivered." in text and "2 pages, sent" in text
    assert "The mail text was faxed as the first page." in text  # pypdfium2 counted 1
    assert "was delivered" in report.get_body(("html",)).get_content()

    req = urllib.request.Request(f"{addrs['simulator']}/_sim/inbound",
                                 data=json.dumps({"topic": "demo"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201
    box = data / "mail" / "fax-inbox@localhost"
    faxes = wait_until(lambda: maildir_messages(box), 60, "the received fax's mail")
    assert len(faxes) == 1
    fax = faxes[0]
    assert "+49 89 123456" in fax["Subject"]
    assert "+49 89 123456" in fax.get_body(("plain",)).get_content()
    [att] = list(fax.iter_attachments())
    assert att.get_content_type() == "application/pdf"
    assert att.get_filename().endswith(".pdf") and att.get_content().startswith(b"%PDF-")

    with urllib.request.urlopen(f"{addrs['http']}/readyz", timeout=10) as resp:
        ready = json.loads(resp.read())
    assert ready["ready"] is True and ready["checks"]["mail"] == "ok"
    # The dashboard's pages come from the wheel too: without an admin token it says
    # so on a page rendered from them.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{addrs['http']}/dashboard/", timeout=10)
    page = refused.value.read().decode()
    assert refused.value.code == 403 and page.startswith("<!doctype html>")
    assert "set http.admin_token" in page
    assert "TemplateNotFound" not in log.read_text(errors="replace")


def test_an_installation_that_lost_a_template_refuses_to_start(venv, tmp_path):
    out = run([venv.exe("python"), "-c", "import faxbridge; print(faxbridge.__file__)"],
              timeout=60, cwd=tmp_path, env=venv.env)
    lost = Path(out.stdout.strip()).parent / "templates" / "report.partial.html.j2"
    kept = lost.read_bytes()
    lost.unlink()
    try:
        problem = f"built-in template report.partial.html.j2 is missing from {lost.parent}"
        checked = venv.run("check", cwd=tmp_path)
        assert checked.returncode == 1 and f"  {problem}" in checked.stdout.splitlines()
        served = venv.run("serve", "--data-dir", str(tmp_path / "d"), "--smtp-listen",
                          "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                          "--simulator-listen", "127.0.0.1:0", cwd=tmp_path)
        assert served.returncode == 1 and "listening" not in served.stdout
        assert served.stderr.strip() == f"faxbridge: mail templates: {problem}"
    finally:
        lost.write_bytes(kept)
