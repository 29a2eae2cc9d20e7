"""`faxbridge retention [--older-than DAYS]`: remove the payloads past
storage.payload_retention_days now, as the running bridge's housekeeping does
every hour (the same operation)."""

from __future__ import annotations

import argparse

from faxbridge import operations as ops
from faxbridge.cli.common import load_config, open_store, print_json, printable


def cmd_retention(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    store = open_store(args)
    done = ops.apply_retention(store, cfg, days=args.older_than)
    if args.json:
        print_json(done)
        return 0
    if not done:
        print("no payload retention configured (storage.payload_retention_days); "
              "use --older-than DAYS to remove payloads now")
    for direction, what in done.items():
        print(printable(f"{direction}: removed the payload of {len(what['removed'])} "
                        f"settled fax(es) older than {what['days']} day(s)"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("retention", help="remove the payloads of old settled faxes now")
    s.add_argument("--config", metavar="PATH", help="config file (default: embedded)")
    s.add_argument("--data-dir")
    s.add_argument("--older-than", type=int, metavar="DAYS",
                   help="instead of the configured retention, for both directions "
                        "(0: every settled fax)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_retention)
