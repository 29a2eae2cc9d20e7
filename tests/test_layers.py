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


def lint_with_extra_import(tmp_path: Path, module: str, line: str):
    """`lint-imports` on a copy of the package in which `module` has one more import."""
    shutil.copytree(ROOT / "faxbridge", tmp_path / "faxbridge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "faxbridge" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    return lint_imports(tmp_path)


def test_an_upward_import_breaks_the_contracts(tmp_path):
    """The contracts have teeth: a copy of the package whose store imports the app
    (the cycle this layering removed) fails `lint-imports`."""
    result = lint_with_extra_import(tmp_path, "store/groupcommit.py",
                                    "from faxbridge.app import Bridge")
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and "faxbridge.store.groupcommit -> faxbridge.app" in \
        result.stdout, result.stdout


def test_a_caller_importing_the_sqlite_backend_breaks_the_contracts(tmp_path):
    """Callers see the store through store.protocol / rows / new only: a stage that
    imports the SQLite backend (directly or through faxbridge.store) fails."""
    result = lint_with_extra_import(tmp_path, "outbound/track.py",
                                    "from faxbridge.store.sqlite import SqliteStore")
    assert result.returncode != 0, result.stdout
    assert "Callers use the store's interface, not its SQLite backend BROKEN" in \
        result.stdout, result.stdout
