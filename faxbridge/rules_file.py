"""CLI-managed rules: kept in the config's first included file (TOML written with
tomli-w), so the admin's own file keeps its comments and layout. Every change is
validated against the whole configuration before it is written, and written
atomically (temp file + fsync + rename); the running bridge picks it up by reload."""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from faxbridge.config import Config, included_files, load
from faxbridge.errors import ConfigError

HEADER = ("# Managed by `faxbridge senders|topics add|remove`. Edits by hand are kept,\n"
          "# but comments in this file are not: put yours in the main config.\n")


def rules_path(config_path: Path) -> Path:
    incs = included_files(config_path)
    if not incs:
        raise ConfigError([f'include: the CLI keeps its rules in an included file; add '
                           f'include = ["rules.d/cli.toml"] at the top of {config_path}'],
                          str(config_path))
    return incs[0]


def read_rules(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    with path.open("rb") as fh:
        return tomllib.load(fh)


def validate(config_path: Path, rules: Path, data: dict[str, Any]) -> Config:
    return load(config_path, replace={rules.resolve(): data})


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(HEADER.encode())
            fh.write(tomli_w.dumps(data).encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add(config_path: Path, section: str, entry: dict[str, Any]) -> Path:
    path = rules_path(config_path)
    data = read_rules(path)
    items = list(data.get(section, []))
    items.append(entry)
    data[section] = items
    validate(config_path, path, data)  # raises ConfigError, nothing written
    write_atomic(path, data)
    return path


def remove(config_path: Path, section: str, name: str) -> Path:
    path = rules_path(config_path)
    data = read_rules(path)
    items = list(data.get(section, []))
    kept = [i for i in items if i.get("name") != name]
    if len(kept) == len(items):
        cfg = load(config_path)
        if any(x.name == name for x in getattr(cfg, section)):
            raise ConfigError([f"{section}: '{name}' is in {config_path}, not in the CLI's "
                               f"file {path}; remove it there by hand"], str(config_path))
        raise ConfigError([f"{section}: no entry named '{name}'"], str(path))
    data[section] = kept
    validate(config_path, path, data)
    write_atomic(path, data)
    return path
