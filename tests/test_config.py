"""Config loading: the example is valid; each kind of mistake names its key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from faxbridge.config import load
from faxbridge.errors import ConfigError
from tests.conftest import ROOT


def test_example_config_loads():
    cfg = load(ROOT / "config.example.toml")
    assert cfg.senders[0].name == "office" and cfg.topics[0].addresses == ("fax-inbox@localhost",)


def test_check_command_ok():
    out = subprocess.run([sys.executable, "-m", "faxbridge", "check", "--config",
                          str(ROOT / "config.example.toml")], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ok")


@pytest.mark.parametrize("toml, expected", [
    ("[smtp]\nlisten = 'nope'\n", "smtp.listen: expected HOST:PORT"),
    ("[smtp]\nmax_mesage_size = 5\n", "smtp.max_mesage_size: unknown key"),
    ("[smtp]\nmax_message_size = 'big'\n", "smtp.max_message_size: Input should be a valid integer"),
    ("[fax]\npaper_format = 'A3'\n", "fax.paper_format: Input should be 'A4' or 'LETTER'"),
    ("[fax]\ncsid = '123456789012345678901'\n", "fax.csid: String should have at most 20"),
    ("[[senders]]\nname='a'\nmatch=['*@x.com']\n[[senders]]\nname='b'\nmatch=['*@y.com']\n"
     "allow=['+49*', '0049*']\n", "senders[1].allow[1]: expected an E.164 pattern"),
    ("[[senders]]\nname='a'\nmatch=['not an address']\n", "senders[0].match[0]: expected"),
    ("[[senders]]\nname='a'\n", "senders[0].match: required key is missing"),
    ("[[topics]]\nname='t'\naddresses=[]\n", "topics[0].addresses: Tuple should have at least 1 item"),
    ("[retarus]\nregion = 'eu'\n", "retarus.region: Input should be"),
    ("[smtp]\ntrusted_networks = ['10.0.0.0/33']\n", "smtp.trusted_networks: bad network '10.0.0.0/33'"),
    ("[smtp\n", "not valid TOML"),
])
def test_bad_config_names_the_key(tmp_path, toml, expected):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load(path)
    text = "\n".join(exc.value.problems)
    assert expected in text, text


def test_check_command_lists_every_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[smtp]\nlisten='x'\nfoo=1\n[fax]\nresolution='MID'\n")
    out = subprocess.run([sys.executable, "-m", "faxbridge", "check", "--config", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    for key in ("smtp.listen", "smtp.foo", "fax.resolution"):
        assert key in out.stdout


def test_include_appends_rules_and_rejects_other_keys(tmp_path):
    (tmp_path / "extra.toml").write_text("[[senders]]\nname='cli'\nmatch=['*@cli.example']\n")
    main = tmp_path / "main.toml"
    main.write_text("include=['extra.toml', 'missing.toml']\n"
                    "[[senders]]\nname='hand'\nmatch=['*@x.example']\n")
    assert [s.name for s in load(main).senders] == ["hand", "cli"]
    (tmp_path / "extra.toml").write_text("[smtp]\nlisten='127.0.0.1:1'\n")
    with pytest.raises(ConfigError, match="only 'senders' and 'topics'"):
        load(main)
