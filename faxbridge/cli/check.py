"""Configuration helpers: `faxbridge check`, `example-config`, `hash-password`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from faxbridge import config as config_mod
from faxbridge.cli.common import load_config, with_config
from faxbridge.errors import ConfigError


def cmd_check(args: argparse.Namespace) -> int:
    """The file, then what it names (TLS files, secrets, data directory): the same
    preflight `serve` runs at start and on every reload."""
    from faxbridge.preflight import preflight
    try:
        # --database-url, else FAXBRIDGE_DATABASE_URL, else the file's
        cfg = config_mod.with_database_url(load_config(args.config), args.database_url)
    except ConfigError as exc:
        print(f"{exc.source or 'config'}: {len(exc.problems)} error(s)")
        for p in exc.problems:
            print(f"  {p}")
        return 1
    pre = preflight(cfg)
    if pre.errors:
        print(f"{args.config or 'embedded default'}: {len(pre.errors)} error(s)")
        for p in pre.errors:
            print(f"  {p}")
    bad_templates = _template_problems(cfg)
    bad_database = _database_problems(cfg)
    if pre.errors or bad_templates or bad_database:
        for w in pre.warnings:
            print(f"  warning: {w}")
        return 1
    print("ok")
    for w in pre.warnings:
        print(f"  warning: {w}")
    for line in config_mod.summary(cfg):
        print("  " + line)
    return 0


def _database_problems(cfg: config_mod.Config) -> bool:
    """A configured PostgreSQL: reachable, and its schema version (read, never
    changed). Prints one line either way; SQLite needs no check here (the data
    directory's check covers it)."""
    if not cfg.storage.database_url:
        return False
    from faxbridge.errors import StoreError
    from faxbridge.store import open_store
    try:
        store = open_store(Path(), database_url=cfg.storage.database_url,
                           lease_seconds=cfg.storage.node_lease_seconds, pool_size=1,
                           as_node=False, migrate=False)
    except StoreError as exc:
        print(f"storage.database_url: {exc}")
        return True
    try:
        info = store.database()
    finally:
        store.close()
    have, want = info["schema_version"], info["schema_expected"]
    if have > want:
        print(f"storage.database_url: {info['location']}: schema version {have} is newer "
              f"than this faxbridge's ({want}); a bridge would refuse to start on it")
        return True
    note = "" if have == want else (
        f" (this faxbridge uses {want}; `serve` creates or migrates it at start)")
    print(f"database: {info['location']} reachable, schema version {have}{note}, "
          f"{info['nodes_alive']} node(s) alive")
    return False


def _template_problems(cfg: config_mod.Config) -> bool:
    """The same template check as `serve` runs before it starts; prints what it finds."""
    from faxbridge.mail.compose import Composer
    problems = Composer(cfg.mail.template_dir, cfg.smtp.hostname).check()
    if problems:
        print(f"mail templates: {len(problems)} error(s)")
        for p in problems:
            print(f"  {p}")
    return bool(problems)


def cmd_example_config(args: argparse.Namespace) -> int:
    from faxbridge.resources import example_config
    sys.stdout.write(example_config())
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from faxbridge.smtp.auth import hash_password
    pw = args.password if args.password is not None else getpass.getpass("password: ")
    print(hash_password(pw))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = with_config(sub.add_parser("check", help="validate a config file"))
    s.add_argument("--database-url", metavar="URL",
                   help="check this PostgreSQL (else FAXBRIDGE_DATABASE_URL or the config's)")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("example-config",
                       help="print the example config (faxbridge example-config > config.toml)")
    s.set_defaults(func=cmd_example_config)

    s = sub.add_parser("hash-password", help="hash an SMTP AUTH password for the config")
    s.add_argument("--password", help="(default: prompt)")
    s.set_defaults(func=cmd_hash_password)
