"""Templates that cannot be loaded stop `serve` before it binds anything and fail
`check`, each with one line naming the template; the example config is printed by
`faxbridge example-config`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from faxbridge.app import Bridge
from faxbridge.mail.compose import Composer, TemplateError
from tests.conftest import ROOT, bridge_config


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faxbridge", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def broken_override(tmp_path: Path) -> Path:
    tdir = tmp_path / "tpl"
    tdir.mkdir()
    (tdir / "report.failed.txt.j2").write_text("Sorry {{ target }\n")
    return tdir


def test_the_built_in_templates_pass_the_check():
    composer = Composer()
    assert composer.builtin_dir == ROOT / "templates"
    assert composer.check() == []


def test_check_finds_a_missing_partial_and_a_syntax_error_in_the_built_ins(tmp_path):
    copy = tmp_path / "t"
    shutil.copytree(ROOT / "templates", copy)
    (copy / "_report_table.txt.j2").unlink()  # only ever included, never loaded by name
    (copy / "inbound.fax.subject.j2").write_text("Fax from {% if calling %}{{ calling }}\n")
    problems = Composer(builtin_dir=copy).check()
    assert problems[0] == f"built-in template _report_table.txt.j2 is missing from {copy}"
    assert problems[1].startswith("built-in template inbound.fax.subject.j2 line 1: ")
    assert len(problems) == 2, problems


def test_check_on_an_install_without_templates():
    composer = Composer(builtin_dir=Path("/nonexistent/templates"))
    assert composer.check() == ["the built-in templates directory /nonexistent/templates "
                                "does not exist"]


def test_override_dir_must_exist_and_parse(tmp_path, broken_override):
    (broken_override / "inbound.fax.txt.j2").write_text("{% include '_nope.txt.j2' %}\n")
    (broken_override / "README").write_text("not a template {{")
    assert Composer(broken_override).check() == [
        f"mail.template_dir: template _nope.txt.j2 is missing from {broken_override} and "
        "the built-in templates",
        "mail.template_dir: template report.failed.txt.j2 line 1: unexpected '}'"]
    assert Composer(tmp_path / "nope").check() == [
        f"mail.template_dir: {tmp_path / 'nope'} is not a directory"]


async def test_start_refuses_before_binding_anything(tmp_path, broken_override):
    bridge = Bridge(bridge_config(tmp_path, mail={"template_dir": broken_override}))
    with pytest.raises(TemplateError) as err:
        await bridge.start()
    await bridge.stop(grace=0)
    assert str(err.value) == ("mail templates: mail.template_dir: template "
                              "report.failed.txt.j2 line 1: unexpected '}'")
    assert bridge.smtp_address is None and bridge.http_server is None
    assert bridge.sim_server is None and not (tmp_path / "data").exists()


def test_serve_and_check_name_the_broken_template_without_a_traceback(tmp_path,
                                                                      broken_override):
    cfg = tmp_path / "config.toml"
    # a sender rule, so that the zero-senders warning does not join the one line
    cfg.write_text(f'[mail]\ntemplate_dir = "{broken_override}"\n'
                   '[[senders]]\nname = "all"\nmatch = ["*"]\n')
    out = cli("serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d"),
              "--smtp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
              "--simulator-listen", "127.0.0.1:0", cwd=tmp_path)
    assert out.returncode == 1, out
    assert out.stderr.strip() == ("faxbridge: mail templates: mail.template_dir: template "
                                  "report.failed.txt.j2 line 1: unexpected '}'")
    assert "listening" not in out.stdout
    out = cli("check", "--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stdout.splitlines() == [
        "mail templates: 1 error(s)",
        "  mail.template_dir: template report.failed.txt.j2 line 1: unexpected '}'"]


def test_example_config_is_printed_and_passes_the_check(tmp_path):
    out = cli("example-config", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == (ROOT / "config.example.toml").read_text()
    (tmp_path / "config.toml").write_text(out.stdout)
    checked = cli("check", "--config", "config.toml", cwd=tmp_path)
    assert checked.returncode == 0 and checked.stdout.startswith("ok"), checked


def test_overrides_get_the_filters_and_can_include_the_built_in_partials(tmp_path):
    """An admin's template may use the filters for people and include the built-in
    partials; both pass the start-up check and render in mail.timezone."""
    tdir = tmp_path / "tpl"
    tdir.mkdir()
    (tdir / "report.delivered.html.j2").write_text(
        '{% set title = "Sent" %}{% set color = "#000" %}{% include "_mail_top.html.j2" %}'
        "<p>{{ sent_at|when|nobr }}, {{ pages|pages }}</p>"
        '{% include "_mail_bottom.html.j2" %}\n')
    composer = Composer(tdir, timezone="Asia/Tokyo")
    assert composer.check() == []
    html = composer.render("report.delivered.html.j2",
                           {"sent_at": "2026-11-30T13:05:00Z", "pages": 1})
    assert ('<span style="white-space:nowrap">Mon\xa030\xa0Nov\xa02026,\xa022:05\xa0JST'
            '</span>, 1 page') in html
