"""`faxbridge route`: explain the routing decision for one recipient without sending."""

from __future__ import annotations

import argparse
from typing import Any

from faxbridge.cli.common import load_config as _load
from faxbridge.cli.common import print_json as _print_json
from faxbridge.cli.common import with_config


def cmd_route(args: argparse.Namespace) -> int:
    from faxbridge.intake.numbers import parse_number, split_address
    from faxbridge.intake.rules import Who, destination_allowed, find_rule, matching_pattern
    cfg = _load(args.config)
    steps: list[str] = []
    verdict = "accept"
    local, domain = split_address(args.to)
    who = Who(sender=args.sender.lower(), auth_user=args.user, peer_ip=args.peer)
    out: dict[str, Any] = {"from": args.sender, "to": args.to}
    if domain not in cfg.fax.domains:
        verdict = f"reject 550 5.7.1: {domain} is not a fax domain ({', '.join(cfg.fax.domains)})"
    else:
        steps.append(f"domain {domain} is a fax domain")
        parsed = parse_number(local, cfg.fax.default_country)
        if not parsed.ok:
            verdict = f"reject 553 5.1.3: {parsed.error}"
        else:
            out["number"] = parsed.number
            steps.append(f"number {local!r} → {parsed.number} ({parsed.pretty})")
            rule = find_rule(cfg.senders, who)
            if rule is None:
                verdict = f"reject 550 5.7.1: no sender rule matches {args.sender}"
                steps.append("rules tried: " + ", ".join(r.name for r in cfg.senders))
            else:
                out["rule"] = rule.name
                steps.append(f"sender rule '{rule.name}' matches by "
                             f"{matching_pattern(rule, who)!r}")
                ok, why = destination_allowed(rule, parsed.number)
                steps.append(f"destination {why}")
                if not ok:
                    verdict = f"reject 550 5.7.1: blocked by rule '{rule.name}': {why}"
                else:
                    steps.append(f"billing code {rule.billing_code or '-'}, body {rule.body}, "
                                 f"notify {rule.notify}")
    out["steps"], out["verdict"] = steps, verdict
    if args.json:
        _print_json(out)
    else:
        for s in steps:
            print("  " + s)
        print(verdict)
    return 0 if verdict == "accept" else 1


def register(sub: argparse._SubParsersAction) -> None:
    s = with_config(sub.add_parser("route", help="explain a routing decision"))
    s.add_argument("--from", dest="sender", required=True, metavar="ADDR")
    s.add_argument("--to", required=True, metavar="ADDR")
    s.add_argument("--user", help="SMTP AUTH user")
    s.add_argument("--peer", default="127.0.0.1", help="client IP (default 127.0.0.1)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_route)
