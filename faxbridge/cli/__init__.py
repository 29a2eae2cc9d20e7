"""Command line: `faxbridge serve|check|health|example-config|route|log|jobs|inbox|retention|senders|topics|
simulator|hash-password`. One module per command group; this one wires them into one
parser and turns configuration errors into readable messages."""

from __future__ import annotations

import argparse
import sys

from faxbridge.cli import check, health, inbox, jobs, log, retention, route, rules, serve
from faxbridge.errors import ConfigError

# Order of `faxbridge --help`: running it, configuring it, then looking into it.
GROUPS = (serve, check, health, route, log, jobs, inbox, retention, rules)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="faxbridge", description="Email-to-fax bridge for Retarus")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from faxbridge.logsetup import configure
    configure("plain", "DEBUG" if args.verbose else "INFO")
    if getattr(args, "action", None) in ("show", "release", "resend", "delete") and not args.id:
        print(f"faxbridge {args.command} {args.action}: an ID is required", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"config error in {exc.source or 'config'}:", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return 1
