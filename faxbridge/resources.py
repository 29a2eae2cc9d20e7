"""Where the files that ship with faxbridge are: the built-in mail templates and the
example configuration.

In the repository they sit at the top (templates/, config.example.toml), where
admins look for them; an installed wheel carries them as package data of
faxbridge.templates and faxbridge.examples (pyproject.toml maps those packages to
the top-level files). A source checkout, on sys.path or installed editable, uses
its own top-level copies: a working tree runs with the templates it holds, and
setuptools' editable finder cannot import namespace packages mapped outside the
package directory.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

EXAMPLE_CONFIG = "config.example.toml"


def source_root() -> Path | None:
    """The repository this package is imported from, or None when it is installed.
    A source checkout is recognised by its pyproject.toml beside the package."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "templates").is_dir():
        return root
    return None


def builtin_templates_dir() -> Path | None:
    """The directory of the built-in templates, or None if they are not installed."""
    root = source_root()
    if root is not None:
        return root / "templates"
    # A package without __init__.py (admins should not find one in templates/):
    # its directory is the namespace package's search location.
    spec = importlib.util.find_spec("faxbridge.templates")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def example_config() -> str:
    """The text of the example configuration that documents every key."""
    root = source_root()
    if root is not None:
        return (root / EXAMPLE_CONFIG).read_text(encoding="utf-8")
    return (importlib.resources.files("faxbridge.examples") / EXAMPLE_CONFIG).read_text(
        encoding="utf-8")
