"""`faxbridge senders|topics list|add|remove`: the sender rules and inbound topics a
running bridge reloads, kept in the rules file next to the config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from faxbridge import config as config_mod
from faxbridge.cli.common import print_json, with_config


def cmd_rules(args: argparse.Namespace) -> int:
    """faxbridge senders|topics list|add|remove."""
    from faxbridge import rules_file
    section = args.command
    if args.config is None:
        print(f"faxbridge {section}: --config is required (the file whose rules to change)",
              file=sys.stderr)
        return 2
    cfg_path = Path(args.config)
    if args.action == "list":
        cfg = config_mod.load(cfg_path)
        cli_names = {e.get("name") for e in rules_file.read_rules(
            rules_file.rules_path(cfg_path)).get(section, [])} if config_mod.included_files(
            cfg_path) else set()
        items = getattr(cfg, section)
        if args.json:
            print_json([{**i.model_dump(mode="json"), "managed_by_cli": i.name in cli_names}
                         for i in items])
            return 0
        for i in items:
            origin = "cli" if i.name in cli_names else "file"
            if section == "senders":
                print(f"{i.name:<16} [{origin}] match {', '.join(i.match)}; allow "
                      f"{', '.join(i.allow)}; deny {', '.join(i.deny) or '-'}")
            else:
                print(f"{i.name:<16} [{origin}] → {', '.join(i.addresses)}")
        return 0
    if not args.name:
        print(f"faxbridge {section} {args.action}: NAME is required", file=sys.stderr)
        return 2
    if args.action == "remove":
        path = rules_file.remove(cfg_path, section, args.name)
        print(f"removed {section[:-1]} '{args.name}' from {path}")
        return 0
    entry: dict[str, Any] = {"name": args.name}
    if section == "senders":
        if not args.match:
            print("faxbridge senders add: at least one --match is required", file=sys.stderr)
            return 2
        entry["match"] = args.match
        for key in ("allow", "deny"):
            if getattr(args, key):
                entry[key] = getattr(args, key)
        for key in ("billing_code", "body", "notify", "max_per_hour", "max_per_day"):
            if getattr(args, key) is not None:
                entry[key] = getattr(args, key)
    else:
        if not args.address:
            print("faxbridge topics add: at least one --address is required", file=sys.stderr)
            return 2
        entry["addresses"] = args.address
        if args.url:
            entry["url"] = args.url
        if args.password_env:
            entry["password"] = {"env": args.password_env}
        if args.customer_number:
            entry["customer_number"] = args.customer_number
    path = rules_file.add(cfg_path, section, entry)
    print(f"added {section[:-1]} '{args.name}' to {path}; a running bridge reloads it")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = with_config(sub.add_parser("senders", help="list/add/remove sender rules"))
    s.add_argument("action", choices=["list", "add", "remove"])
    s.add_argument("name", nargs="?")
    s.add_argument("--match", action="append", help="address, *@domain, user:NAME, net:CIDR")
    s.add_argument("--allow", action="append", help="E.164 pattern, e.g. +49*")
    s.add_argument("--deny", action="append", help="E.164 pattern, e.g. +49900*")
    s.add_argument("--billing-code")
    s.add_argument("--body", choices=["first", "ignore"])
    s.add_argument("--notify", choices=["always", "failure", "never"])
    s.add_argument("--max-per-hour", type=int)
    s.add_argument("--max-per-day", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_rules)

    s = with_config(sub.add_parser("topics", help="list/add/remove inbound topics"))
    s.add_argument("action", choices=["list", "add", "remove"])
    s.add_argument("name", nargs="?")
    s.add_argument("--address", action="append", help="mailbox for the topic's faxes")
    s.add_argument("--url", help="Fax2WSPull base URL")
    s.add_argument("--password-env", help="environment variable with the topic password")
    s.add_argument("--customer-number")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_rules)
