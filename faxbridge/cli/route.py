"""`faxbridge route`: what the listener would answer a transaction, without sending.

It runs the accept path's own functions (`intake/accept.py`), in the listener's
order, so its verdict is the reply a real SMTP session would get."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faxbridge import config as config_mod
from faxbridge.cli.common import load_config, print_json, with_config

if TYPE_CHECKING:
    from faxbridge.intake.accept import Limit


def cmd_route(args: argparse.Namespace) -> int:
    from faxbridge.intake.accept import simulate
    cfg = load_config(args.config)
    with _RateCounts(cfg, args) as counter:
        route = simulate(cfg, peer=args.peer, sender=args.sender, recipients=args.to,
                         user=args.user, tls=args.tls, count=counter.count)
        source = counter.summary()
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


class _RateCounts:
    """The faxes each rate limit counts, from the store when there is one (the
    listener counts the same rows); else zero, and the output says so."""

    def __init__(self, cfg: config_mod.Config, args: argparse.Namespace) -> None:
        data_dir = Path(args.data_dir) if args.data_dir else cfg.storage.data_dir
        self.path = data_dir / "faxbridge.sqlite3"
        self.store: Any = None
        self.seen: list[str] = []

    def __enter__(self) -> _RateCounts:
        from faxbridge.store import open_store
        if self.path.exists():
            self.store = open_store(self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.store is not None:
            self.store.close()

    def count(self, limit: Limit) -> int:
        n = 0
        if self.store is not None:
            n = self.store.count_faxes_since(limit.scope, limit.key, time.time() - limit.seconds)
        self.seen.append(f"{n} fax(es) in the last {limit.label} {limit.describe()}")
        return n

    def summary(self) -> str:
        if self.store is None:
            return f"no store at {self.path}: counted as 0 faxes"
        return f"counted in {self.path}: " + ("; ".join(self.seen) or "no limit applies")


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
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_route)
