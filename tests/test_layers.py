"""The import contracts of pyproject.toml ([tool.importlinter]) hold: the layers
(app on top, nothing imports it but the command line), the independence of
intake / retarus / simulator / store, and no import cycles. `lint-imports` is
run the way CI would run it, from the repository root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # The package under `root`, not an installed faxbridge: PYTHONPATH first.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
        cwd=root, env=env, capture_output=True, text=True, timeout=240)


def test_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contracts(tmp_path):
    """The contracts have teeth: a copy of the package whose store imports the app
    (the cycle this layering removed) fails `lint-imports`."""
    shutil.copytree(ROOT / "faxbridge", tmp_path / "faxbridge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    groupcommit = tmp_path / "faxbridge" / "store" / "groupcommit.py"
    groupcommit.write_text(groupcommit.read_text() + "\nfrom faxbridge.app import Bridge  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and "faxbridge.store.groupcommit -> faxbridge.app" in \
        result.stdout, result.stdout


def test_a_caller_importing_the_sqlite_backend_breaks_the_contracts(tmp_path):
    """Callers see the store through store.protocol / rows / new only: a stage that
    imports the SQLite backend (directly or through faxbridge.store) fails."""
    shutil.copytree(ROOT / "faxbridge", tmp_path / "faxbridge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    track = tmp_path / "faxbridge" / "outbound" / "track.py"
    track.write_text(track.read_text() + "\nfrom faxbridge.store.sqlite import SqliteStore  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "Callers use the store's interface, not its SQLite backend BROKEN" in \
        result.stdout, result.stdout
