"""`faxbridge route`: what the listener would answer a transaction, without sending.

It runs the accept path's own functions (`intake/accept.py`), in the listener's
order, so its verdict is the reply a real SMTP session would get."""

from __future__ import annotations

import argparse
import time
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
    from faxbridge.intake.accept import WINDOWS, envelope_address
    from faxbridge.store import open_store
    cfg = config_mod.with_database_url(cfg, args.database_url)
    data_dir = Path(args.data_dir) if args.data_dir else cfg.storage.data_dir
    db: Path | str = data_dir / "faxbridge.sqlite3"
    if cfg.storage.database_url:  # a cluster counts in its shared database
        store = open_store(Path(), database_url=cfg.storage.database_url, pool_size=1,
                           as_node=False)
        db = store.database()["location"]
    elif not Path(db).exists():
        return {}, f"no store at {db}: counted as 0 faxes"
    else:
        store = open_store(Path(db))
    try:
        now, sender = time.time(), (envelope_address(args.sender) or "").lower()
        counts = {label: store.count_jobs_since(sender, now - seconds)
                  for label, seconds in WINDOWS}
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
    s.add_argument("--database-url", metavar="URL",
                   help="a cluster's PostgreSQL, to count the sender's faxes in")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_route)
