"""`faxbridge route`: what the listener would answer a transaction, without sending.

It runs the accept path's own functions (`intake/accept.py`), in the listener's
order, so its verdict is the reply a real SMTP session would get."""

from __future__ import annotations

import argparse
from pathlib import Path

from faxbridge import config as config_mod
from faxbridge.cli.common import load_config, print_json, with_config


def cmd_route(args: argparse.Namespace) -> int:
    from faxbridge.operations import explain_route
    from faxbridge.store import open_store
    cfg = config_mod.with_database_url(load_config(args.config), args.database_url)
    data_dir = Path(args.data_dir) if args.data_dir else cfg.storage.data_dir
    where = str(data_dir / "faxbridge.sqlite3")
    # the store the listener counts in, when there is one (the dashboard's route
    # form runs the same explain_route on the running bridge's store); a cluster
    # counts in its shared database
    store = None
    if cfg.storage.database_url:
        store = open_store(Path(), database_url=cfg.storage.database_url, pool_size=1,
                           as_node=False)
        where = store.database()["location"]
    elif Path(where).exists():
        store = open_store(Path(where))
    try:
        out = explain_route(cfg, store, sender=args.sender, recipients=args.to,
                            peer=args.peer, user=args.user, tls=args.tls, where=where)
    finally:
        if store is not None:
            store.close()
    route = out.pop("route")
    out["to"] = args.to[0] if len(args.to) == 1 else args.to
    if args.json:
        print_json(out)
    else:
        print(f"  rate limits: {out['rate_counts']}")
        for s in route.steps():
            print("  " + s)
        print(route.verdict)
    return 0 if route.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    s = with_config(sub.add_parser("route", help="explain a routing decision"))
    s.add_argument("--from", dest="sender", required=True, metavar="ADDR")
    s.add_argument("--to", required=True, action="append", metavar="ADDR",
                   help="recipient (repeat for several, in RCPT order)")
    s.add_argument("--user", help="SMTP AUTH user (as if logged in with the right password): "
                   "its rule and its addresses decide, as in the listener")
    s.add_argument("--peer", default="127.0.0.1", help="client IP (default 127.0.0.1)")
    s.add_argument("--tls", action="store_true", help="the client did STARTTLS")
    s.add_argument("--data-dir", help="where to count faxes for rate limits (per sender, client, number)")
    s.add_argument("--database-url", metavar="URL",
                   help="a cluster's PostgreSQL, to count the faxes in")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_route)
