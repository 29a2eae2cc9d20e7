"""What the command modules share: loading the config, opening the store of a data
directory, printing times and JSON."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faxbridge import config as config_mod
from faxbridge.intake.clean import printable as _printable

if TYPE_CHECKING:
    from faxbridge.store.protocol import Store


def load_config(path: str | None) -> config_mod.Config:
    if path is None:
        return config_mod.embedded_default()
    return config_mod.load(Path(path))


def ts(t: float | None) -> str:
    if not t:
        return "-"
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def open_store(args: argparse.Namespace) -> Store:
    """The store of --data-dir, else of the config's data directory; never a new one
    (a typo in the path must not look like an empty bridge)."""
    from faxbridge.store import open_store as open_db
    cfg = config_mod.with_database_url(load_config(args.config),
                                       getattr(args, "database_url", None))
    if cfg.storage.database_url:  # the cluster's database: every node's jobs and mails
        return open_db(Path(), database_url=cfg.storage.database_url,
                       lease_seconds=cfg.storage.node_lease_seconds, pool_size=2,
                       as_node=False)
    data_dir = Path(args.data_dir) if getattr(args, "data_dir", None) else cfg.storage.data_dir
    db = data_dir / "faxbridge.sqlite3"
    if not db.exists():
        raise SystemExit(f"no store at {db} (has `faxbridge serve` run with this data dir?)")
    return open_db(db)


def printable(value: object) -> str:
    """Text from a mail or the store made safe for the terminal: no ESC sequence in a
    subject, sender or file name can set colours, move the cursor or retitle it."""
    return _printable(value)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sp.add_argument("--config", metavar="PATH", help="config file (default: embedded)")
    return sp
