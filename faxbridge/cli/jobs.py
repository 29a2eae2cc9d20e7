"""`faxbridge jobs [list|show ID|release ID|resolve ID|delete ID [--payload-only]]`: outbound fax jobs, through the same
operations as the admin API's /admin/jobs."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from faxbridge import operations as ops
from faxbridge.cli.common import load_config, open_store, print_json, printable, ts, with_config

if TYPE_CHECKING:
    from faxbridge.store.protocol import Store


def cmd_jobs(args: argparse.Namespace) -> int:
    store = open_store(args)
    if args.action == "show":
        return _show(store, args)
    if args.action == "release":
        outcome = ops.release_job(store, args.id, by="admin (CLI)", force=args.force)
        print(printable(outcome.message))
        return 0 if outcome.ok else 1
    if args.action == "resolve":
        return _resolve(store, args)
    if args.action == "delete":
        try:
            outcome = ops.delete_fax(store, args.id, payload_only=args.payload_only,
                                     by="admin (CLI)")
        except ops.NotFound as exc:
            print(printable(exc))
            return 1
        print(printable(outcome.message))
        return 0 if outcome.ok else 1
    jobs = ops.list_jobs(store, state=args.state, sender=args.sender, limit=args.limit)
    if args.json:
        print_json(jobs)
        return 0
    for r in jobs:
        # a held job says why: that is what the admin has to act on
        why = f"  [{r['last_error']}]" if r["state"] == "held" and r["last_error"] else ""
        print(printable(f"{r['id']}  {ts(r['created'])}  {r['state']:<10} {r['sender']:<28} "
                        f"{(r['subject'] or '')[:40]}{why}"))
    return 0


def _resolve(store: Store, args: argparse.Namespace) -> int:
    """Close a held job by its recorded outcome; the plain fallback report mail is
    composed with the templates and sender address of --config (the running bridge's
    mail worker sends it)."""
    from faxbridge.mail.compose import Composer
    cfg = load_config(args.config)
    try:
        outcome = ops.resolve_job(store, args.id, by="admin (CLI)",
                                  composer=Composer(cfg.mail.template_dir, cfg.smtp.hostname),
                                  mail_from=cfg.mail.from_address)
    except ops.NotFound as exc:
        print(printable(exc))
        return 1
    print(printable(outcome.message))
    return 0 if outcome.ok else 1


def _show(store: Store, args: argparse.Namespace) -> int:
    job = ops.show_job(store, args.id)
    if job is None:
        print(printable(f"no job {args.id}"))
        return 1
    if args.raw:  # the mail exactly as it was received, for debugging routing
        sys.stdout.buffer.write(ops.job_message(store, args.id) or b"")
        sys.stdout.flush()
        return 0
    if args.json:
        print_json(job)
        return 0
    print(printable(f"job {job['id']}  state {job['state']}  retarus {job['retarus_job_id'] or '-'}"))
    print(printable(f"  from {job['sender']}  subject {job['subject']!r}  rule {job['rule']}"))
    for r in job["recipients"]:
        print(printable(f"  to {r['number']} ({r['display_name'] or '-'}): {r['status'] or '-'} "
              f"{r['reason'] or ''}"))
    for d in job["documents"]:
        print(printable(f"  document {d['name']} {d['type']} {d['size']}B"))
    if job["last_error"]:
        print(printable(f"  last error: {job['last_error']}"))
    if job["confirmation"]:
        print(printable(f"  at Retarus: {job['confirmation']['note']}"))
    if job["outcome_recorded"]:
        print(f"  sent, outcome recorded: close it with `faxbridge jobs resolve {job['id']}`")
    print("  timeline:")
    for e in job["events"]:
        print(printable(f"    {ts(e['ts'])} {e['kind']:<11} {e['detail'] or ''}"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = with_config(sub.add_parser("jobs", help="outbound fax jobs"))
    s.add_argument("action", nargs="?", choices=["list", "show", "release", "resolve",
                                                  "delete"],
                   default="list")
    s.add_argument("id", nargs="?")
    s.add_argument("--data-dir")
    s.add_argument("--database-url", metavar="URL", help="PostgreSQL of a cluster")
    s.add_argument("--state")
    s.add_argument("--sender")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--json", action="store_true")
    s.add_argument("--raw", action="store_true", help="show: print the mail as received")
    s.add_argument("--force", action="store_true",
                   help="release: even a job that may be at Retarus already")
    s.add_argument("--payload-only", action="store_true",
                   help="delete: only the mail, documents and report mails; keep the job")
    s.set_defaults(func=cmd_jobs)
