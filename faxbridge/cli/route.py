"""`faxbridge route`: what the listener would answer a transaction, without sending.

It runs the accept path's own functions (`intake/accept.py`), in the listener's
order, so its verdict is the reply a real SMTP session would get."""

from __future__ import annotations

import argparse
from pathlib import Path

from faxbridge import config as config_mod
from faxbridge.cli.common import load_config, print_json, with_config


def cmd_route(args: argparse.Namespace) -> int:
    from faxbridge.intake.accept import simulate
    cfg = load_config(args.config)
    counts, source = _rate_counts(cfg, args)
    route = simulate(cfg, peer=args.peer, sender=args.sender, recipients=args.to,
                     user=args.user, tls=args.tls, counts=counts)
    out = {"from": args.sender, "to": args.to[0] if len(args.to) == 1 else args.to,
           "rate_counts": source, **route.as_dict()}
    if args.json:
        print_json(out)
    else:
        print(f"  rate limits: {source}")
        for s in route.steps():
            print("  " + s)
        print(route.verdict)
    return 0 if route.ok else 1


def _rate_counts(cfg: config_mod.Config, args: argparse.Namespace) -> tuple[dict[str, int], str]:
    """The sender's faxes in the last hour and day, from the store when there is one
    (the listener counts the same rows); else zero, and the output says so."""
    from faxbridge.operations import rate_counts
    from faxbridge.store import open_store
    data_dir = Path(args.data_dir) if args.data_dir else cfg.storage.data_dir
    db = data_dir / "faxbridge.sqlite3"
    if not db.exists():
        return {}, f"no store at {db}: counted as 0 faxes"
    store = open_store(db)
    try:
        counts = rate_counts(store, args.sender)  # the dashboard's route form counts so too
    finally:
        store.close()
    return counts, (f"counted in {db}: {counts['hour']} fax(es) in the last hour, "
                    f"{counts['day']} in the last day")


def register(sub: argparse._SubParsersAction) -> None:
    s = with_config(sub.add_parser("route", help="explain a routing decision"))
    s.add_argument("--from", dest="sender", required=True, metavar="ADDR")
    s.add_argument("--to", required=True, action="append", metavar="ADDR",
                   help="recipient (repeat for several, in RCPT order)")
    s.add_argument("--user", help="SMTP AUTH user (as if logged in with the right password)")
    s.add_argument("--peer", default="127.0.0.1", help="client IP (default 127.0.0.1)")
    s.add_argument("--tls", action="store_true", help="the client did STARTTLS")
    s.add_argument("--data-dir", help="where to count the sender's faxes for rate limits")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_route)
