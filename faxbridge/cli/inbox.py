"""`faxbridge inbox [list|resend ID|delete ID [--payload-only]]`: received faxes, through the same operations as
the admin API's /admin/inbox."""

from __future__ import annotations

import argparse
import sys

from faxbridge import operations as ops
from faxbridge.cli.common import load_config, open_store, print_json, printable, ts, with_config


def cmd_inbox(args: argparse.Namespace) -> int:
    store = open_store(args)
    if args.action == "resend":
        from faxbridge.mail.compose import ComposeError, Composer
        cfg = load_config(args.config)
        try:
            done = ops.resend_inbound(store, cfg,
                                      Composer.for_config(cfg.mail, cfg.smtp.hostname),
                                      args.id, to=args.to)
        except ops.NotFound as exc:
            print(printable(exc))
            return 1
        except ComposeError as exc:
            print(printable(f"fax {args.id} not queued: {exc}"), file=sys.stderr)
            return 1
        print(printable(f"fax {done['resent']} queued again for {', '.join(done['to'])} "
              "(the running bridge sends it)"))
        return 0
    if args.action == "delete":
        try:
            outcome = ops.delete_received(store, args.id, payload_only=args.payload_only)
        except ops.NotFound as exc:
            print(printable(exc))
            return 1
        print(printable(outcome.message))
        return 0 if outcome.ok else 1
    faxes = ops.list_inbox(store, args.limit)
    if args.json:
        print_json(faxes)
        return 0
    for r in faxes:
        print(printable(f"{r['id']:<22} {ts(r['received'])}  {r['state']:<9} "
              f"{'acked' if r['acked'] else 'unacked':<7} {r['delivered_to'] or '-'}"
              + (f"  ({r['last_error']})" if r["last_error"] else "")))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = with_config(sub.add_parser("inbox", help="received faxes"))
    s.add_argument("action", nargs="?", choices=["list", "resend", "delete"],
                   default="list")
    s.add_argument("id", nargs="?", help="fax id (topic/id or the Retarus id)")
    s.add_argument("--to", action="append", metavar="ADDR", help="(resend) other address(es)")
    s.add_argument("--data-dir")
    s.add_argument("--database-url", metavar="URL", help="PostgreSQL of a cluster")
    s.add_argument("--limit", type=int, default=100)
    s.add_argument("--json", action="store_true")
    s.add_argument("--payload-only", action="store_true",
                   help="delete: only the fax's files and mails; keep its record")
    s.set_defaults(func=cmd_inbox)
