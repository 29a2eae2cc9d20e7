"""`faxbridge log [list|show ID]`: the SMTP log, through the same operations as the
admin API's /admin/log."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from faxbridge import operations as ops
from faxbridge.cli.common import open_store, print_json, printable, ts, with_config

if TYPE_CHECKING:
    from faxbridge.store.protocol import Store


def cmd_log(args: argparse.Namespace) -> int:
    store = open_store(args)
    if args.action == "show":
        return _show(store, args)
    try:
        since = ops.parse_since(args.since)
    except ops.BadQuery as exc:
        raise SystemExit(f"--since: {exc}") from None
    records = ops.list_log(store, failed=args.failed, sender=args.sender, number=args.number,
                           since=since, limit=args.limit)
    if args.json:
        print_json(records)
        return 0
    for r in records:
        rcpts = ",".join(x.get("number") or x.get("address", "") for x in r["recipients"])
        print(printable(f"#{r['id']:<5} {ts(r['ts'])} {r['peer'] or '-':<15} {r['mail_from'] or '-':<28}"
              f" {rcpts:<20} {r['reply']}"))
    return 0


def _show(store: Store, args: argparse.Namespace) -> int:
    rec = ops.log_record(store, int(args.id)) if args.id.isdigit() else None
    if rec is None:
        print(printable(f"no SMTP log record {args.id}"))
        return 1
    if args.json:
        print_json(rec)
        return 0
    print(printable(f"#{rec['id']} {ts(rec['ts'])} peer {rec['peer']} helo {rec['helo']} "
          f"tls {'yes' if rec['tls'] else 'no'} auth {rec['auth_user'] or '-'}"))
    print(printable(f"  from {rec['mail_from']}  message-id {rec['message_id'] or '-'}  "
          f"size {rec['size'] or '-'}"))
    print(printable(f"  subject {rec['subject'] or '-'}"))
    for r in rec["recipients"]:
        print(printable(f"  rcpt {r.get('address')} number {r.get('number', '-')} rule "
              f"{r.get('rule', '-')}: {r.get('reply')}"))
    for p in rec["parts"]:
        mark = "USED" if p["used"] else "skip"
        print(printable(f"  part {p['path']} {p['type']} {p.get('name') or ''} {p['size']}B "
              f"[{mark}] {p['why']}" + (f" → {p['document']}" if p.get("document") else "")))
    print(printable(f"  reply {rec['reply']}"))
    print(printable(f"  job {rec['job_id'] or '-'}  timings {rec['timings']}"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = with_config(sub.add_parser("log", help="the SMTP log"))
    s.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    s.add_argument("id", nargs="?")
    s.add_argument("--data-dir")
    s.add_argument("--database-url", metavar="URL", help="PostgreSQL of a cluster")
    s.add_argument("--failed", action="store_true")
    s.add_argument("--sender")
    s.add_argument("--number")
    s.add_argument("--since")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_log)
