"""Command line: `faxbridge serve|check|example-config|route|log|jobs|simulator|hash-password`."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from faxbridge import config as config_mod
from faxbridge.errors import ConfigError


def _load(path: str | None) -> config_mod.Config:
    if path is None:
        return config_mod.embedded_default()
    return config_mod.load(Path(path))


def _ts(t: float | None) -> str:
    if not t:
        return "-"
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _store(args: argparse.Namespace):  # noqa: ANN202
    from faxbridge.store import Store
    cfg = _load(args.config)
    data_dir = Path(args.data_dir) if getattr(args, "data_dir", None) else cfg.storage.data_dir
    db = data_dir / "faxbridge.sqlite3"
    if not db.exists():
        raise SystemExit(f"no store at {db} (has `faxbridge serve` run with this data dir?)")
    return Store(db)


def _since(value: str | None) -> float | None:
    """'2h', '30m', '7d' or an ISO date."""
    if not value:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1] in units and value[:-1].isdigit():
        return time.time() - int(value[:-1]) * units[value[-1]]
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise SystemExit(f"--since: expected e.g. 2h, 30m, 7d or 2026-11-22, got {value!r}") from None


def _public(row: Any) -> dict[str, Any]:
    """A job row without the raw message and stored request (sqlite3.Row iterates
    values, so go through dict())."""
    return {k: v for k, v in dict(row).items() if k not in ("raw", "request_json")}


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


# ------------------------------------------------------------------ commands
def cmd_serve(args: argparse.Namespace) -> int:
    from faxbridge.app import Overrides, apply_overrides, run
    cfg = _load(args.config)
    overrides = Overrides(
        data_dir=Path(args.data_dir) if args.data_dir else None,
        smtp_listen=args.smtp_listen, http_listen=args.http_listen,
        simulator_listen=args.simulator_listen)
    cfg = apply_overrides(cfg, overrides)
    from faxbridge.logsetup import configure
    configure(cfg.logging.format, "DEBUG" if args.verbose else cfg.logging.level)
    if args.config is None:
        print("no --config given: running on the embedded default (Retarus simulator, "
              "Maildir, SQLite); loopback may fax any valid number")
    from faxbridge.mail.compose import TemplateError
    from faxbridge.web.server import ListenError
    try:
        asyncio.run(run(cfg, print_fn=lambda s: print(s, flush=True),
                        config_path=Path(args.config) if args.config else None,
                        overrides=overrides))
    except (ListenError, TemplateError) as exc:
        print(f"faxbridge: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        # The preflight in Bridge.start (the same one `check` runs): print it like a
        # config file error, naming the file it concerns.
        raise ConfigError(exc.problems, exc.source or args.config or "embedded default") \
            from None
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """The file, then what it names (TLS files, secrets, data directory): the same
    preflight `serve` runs at start and on every reload."""
    from faxbridge.preflight import preflight
    try:
        cfg = _load(args.config)
    except ConfigError as exc:
        print(f"{exc.source or 'config'}: {len(exc.problems)} error(s)")
        for p in exc.problems:
            print(f"  {p}")
        return 1
    pre = preflight(cfg)
    if pre.errors:
        print(f"{args.config or 'embedded default'}: {len(pre.errors)} error(s)")
        for p in pre.errors:
            print(f"  {p}")
    bad_templates = _template_problems(cfg)
    if pre.errors or bad_templates:
        for w in pre.warnings:
            print(f"  warning: {w}")
        return 1
    print("ok")
    for w in pre.warnings:
        print(f"  warning: {w}")
    for line in config_mod.summary(cfg):
        print("  " + line)
    return 0


def _template_problems(cfg: config_mod.Config) -> bool:
    """The same template check as `serve` runs before it starts; prints what it finds."""
    from faxbridge.mail.compose import Composer
    problems = Composer(cfg.mail.template_dir, cfg.smtp.hostname).check()
    if problems:
        print(f"mail templates: {len(problems)} error(s)")
        for p in problems:
            print(f"  {p}")
    return bool(problems)


def cmd_example_config(args: argparse.Namespace) -> int:
    from faxbridge.resources import example_config
    sys.stdout.write(example_config())
    return 0


def cmd_simulator(args: argparse.Namespace) -> int:
    from faxbridge.simulator.app import SimState, build_app
    from faxbridge.web.server import HttpServer

    async def main() -> None:
        state = SimState(complete_after=args.complete_after, username=args.username,
                         password=args.password, pull_password=args.pull_password,
                         customer_number=args.customer_number)
        server = HttpServer(build_app(state), args.listen)
        await server.start()
        print(f"Retarus simulator on {server.url} (customer {state.customer_number}, "
              f"user {state.username})", flush=True)
        stop = asyncio.Event()
        import signal
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()
        await state.aclose()

    asyncio.run(main())
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    """What the listener would answer this transaction: the accept path's own functions."""
    from faxbridge.intake.accept import simulate
    cfg = _load(args.config)
    counts, source = _rate_counts(cfg, args)
    route = simulate(cfg, peer=args.peer, sender=args.sender, recipients=args.to,
                     user=args.user, tls=args.tls, counts=counts)
    out = {"from": args.sender, "to": args.to[0] if len(args.to) == 1 else args.to,
           "rate_counts": source, **route.as_dict()}
    if args.json:
        _print_json(out)
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
    from faxbridge.store import Store
    data_dir = Path(args.data_dir) if args.data_dir else cfg.storage.data_dir
    db = data_dir / "faxbridge.sqlite3"
    if not db.exists():
        return {}, f"no store at {db}: counted as 0 faxes"
    store = Store(db)
    try:
        now, sender = time.time(), (envelope_address(args.sender) or "").lower()
        counts = {label: store.count_jobs_since(sender, now - seconds)
                  for label, seconds in WINDOWS}
    finally:
        store.close()
    return counts, (f"counted in {db}: {counts['hour']} fax(es) in the last hour, "
                    f"{counts['day']} in the last day")


def cmd_log(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.action == "show":
        row = store.log_entry(int(args.id))
        if row is None:
            print(f"no SMTP log record {args.id}")
            return 1
        rec = dict(row)
        for k in ("recipients_json", "parts_json", "timings_json"):
            rec[k.removesuffix("_json")] = json.loads(rec.pop(k))
        if args.json:
            _print_json(rec)
            return 0
        print(f"#{rec['id']} {_ts(rec['ts'])} peer {rec['peer']} helo {rec['helo']} "
              f"tls {'yes' if rec['tls'] else 'no'} auth {rec['auth_user'] or '-'}")
        print(f"  from {rec['mail_from']}  message-id {rec['message_id'] or '-'}  "
              f"size {rec['size'] or '-'}")
        print(f"  subject {rec['subject'] or '-'}")
        for r in rec["recipients"]:
            print(f"  rcpt {r.get('address')} number {r.get('number', '-')} rule "
                  f"{r.get('rule', '-')}: {r.get('reply')}")
        for p in rec["parts"]:
            mark = "USED" if p["used"] else "skip"
            print(f"  part {p['path']} {p['type']} {p.get('name') or ''} {p['size']}B "
                  f"[{mark}] {p['why']}" + (f" → {p['document']}" if p.get("document") else ""))
        print(f"  reply {rec['reply']}")
        print(f"  job {rec['job_id'] or '-'}  timings {rec['timings']}")
        return 0
    rows = store.list_log(failed=args.failed, sender=args.sender, number=args.number,
                          since=_since(args.since), limit=args.limit)
    if args.json:
        _print_json([{**dict(r), "recipients": json.loads(r["recipients_json"]),
                      "parts": json.loads(r["parts_json"])} for r in rows])
        return 0
    for r in rows:
        rcpts = ",".join(x.get("number") or x.get("address", "")
                         for x in json.loads(r["recipients_json"]))
        print(f"#{r['id']:<5} {_ts(r['ts'])} {r['peer'] or '-':<15} {r['mail_from'] or '-':<28}"
              f" {rcpts:<20} {r['reply']}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.action == "show":
        job = store.job(args.id)
        if job is None:
            print(f"no job {args.id}")
            return 1
        if args.raw:  # the mail exactly as it was received, for debugging routing
            sys.stdout.buffer.write(store.job_raw(args.id) or b"")
            sys.stdout.flush()
            return 0
        recips = [dict(r) for r in store.job_recipients(args.id)]
        events = [dict(e) for e in store.job_events(args.id)]
        docs = [{"name": d["name"], "type": d["content_type"], "size": len(d["data"])}
                for d in store.job_documents(args.id)]
        from faxbridge.outbound.submit import confirmation
        info = {**_public(job), "confirmation": confirmation(job)}
        if args.json:
            _print_json({**info, "recipients": recips, "documents": docs, "events": events})
            return 0
        print(f"job {job['id']}  state {job['state']}  retarus {job['retarus_job_id'] or '-'}")
        print(f"  from {job['sender']}  subject {job['subject']!r}  rule {job['rule']}")
        for r in recips:
            print(f"  to {r['number']} ({r['display_name'] or '-'}): {r['status'] or '-'} "
                  f"{r['reason'] or ''}")
        for d in docs:
            print(f"  document {d['name']} {d['type']} {d['size']}B")
        if job["last_error"]:
            print(f"  last error: {job['last_error']}")
        if info["confirmation"]:
            print(f"  at Retarus: {info['confirmation']['note']}")
        print("  timeline:")
        for e in events:
            print(f"    {_ts(e['ts'])} {e['kind']:<11} {e['detail'] or ''}")
        return 0
    if args.action == "release":
        from faxbridge.outbound.submit import release_job
        ok, message = release_job(store, args.id, by="admin (CLI)", force=args.force)
        print(message)
        return 0 if ok else 1
    rows = store.list_jobs(state=args.state, sender=args.sender, limit=args.limit)
    if args.json:
        _print_json([_public(r) for r in rows])
        return 0
    for r in rows:
        print(f"{r['id']}  {_ts(r['created'])}  {r['state']:<10} {r['sender']:<28} "
              f"{(r['subject'] or '')[:40]}")
    return 0


def cmd_inbox(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.action == "resend":
        from faxbridge.inbound.deliver import addresses_for, compose_fax_mail
        from faxbridge.mail.compose import Composer
        cfg = _load(args.config)
        row = store.inbound(args.id) or next(
            (r for r in store.list_inbound(1000) if r["fax_id"] == args.id), None)
        if row is None:
            print(f"no received fax {args.id}")
            return 1
        topic = next((t for t in cfg.topics if t.name == row["topic"]), None)
        to = args.to or (addresses_for(topic, json.loads(row["metadata_json"])) if topic
                         else [cfg.mail.fallback_mailbox])
        from faxbridge.mail.compose import ComposeError
        try:
            raw = compose_fax_mail(Composer(cfg.mail.template_dir, cfg.smtp.hostname),
                                   cfg.mail.from_address, row, store.inbound_files(row["id"]),
                                   to, note="Sent again at the administrator's request.")
        except ComposeError as exc:
            print(f"fax {row['id']} not queued: {exc}", file=sys.stderr)
            return 1
        store.queue_mail("inbound", row["id"], cfg.mail.from_address, to, raw,
                         inbound_state=(row["id"], "mailing"))
        print(f"fax {row['id']} queued again for {', '.join(to)} (the running bridge sends it)")
        return 0
    rows = store.list_inbound(args.limit)
    out = [{"id": r["id"], "fax_id": r["fax_id"], "topic": r["topic"], "state": r["state"],
            "acked": bool(r["acked"]), "received": r["created"],
            "delivered_to": r["delivered_to"], "last_error": r["last_error"],
            "metadata": json.loads(r["metadata_json"]),
            "files": [f["name"] for f in store.inbound_files(r["id"])]} for r in rows]
    if args.json:
        _print_json(out)
        return 0
    for r in out:
        print(f"{r['id']:<22} {_ts(r['received'])}  {r['state']:<9} "
              f"{'acked' if r['acked'] else 'unacked':<7} {r['delivered_to'] or '-'}"
              + (f"  ({r['last_error']})" if r["last_error"] else ""))
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    """faxbridge senders|topics list|add|remove."""
    from faxbridge import rules_file
    section = args.command
    if args.config is None:
        print(f"faxbridge {section}: --config is required (the file whose rules to change)",
              file=sys.stderr)
        return 2
    cfg_path = Path(args.config)
    if args.action == "list":
        cfg = config_mod.load(cfg_path)
        cli_names = {e.get("name") for e in rules_file.read_rules(
            rules_file.rules_path(cfg_path)).get(section, [])} if config_mod.included_files(
            cfg_path) else set()
        items = getattr(cfg, section)
        if args.json:
            _print_json([{**i.model_dump(mode="json"), "managed_by_cli": i.name in cli_names}
                         for i in items])
            return 0
        for i in items:
            origin = "cli" if i.name in cli_names else "file"
            if section == "senders":
                print(f"{i.name:<16} [{origin}] match {', '.join(i.match)}; allow "
                      f"{', '.join(i.allow)}; deny {', '.join(i.deny) or '-'}")
            else:
                print(f"{i.name:<16} [{origin}] → {', '.join(i.addresses)}")
        return 0
    if not args.name:
        print(f"faxbridge {section} {args.action}: NAME is required", file=sys.stderr)
        return 2
    if args.action == "remove":
        path = rules_file.remove(cfg_path, section, args.name)
        print(f"removed {section[:-1]} '{args.name}' from {path}")
        return 0
    entry: dict[str, Any] = {"name": args.name}
    if section == "senders":
        if not args.match:
            print("faxbridge senders add: at least one --match is required", file=sys.stderr)
            return 2
        entry["match"] = args.match
        for key in ("allow", "deny"):
            if getattr(args, key):
                entry[key] = getattr(args, key)
        for key in ("billing_code", "body", "notify", "max_per_hour", "max_per_day"):
            if getattr(args, key) is not None:
                entry[key] = getattr(args, key)
    else:
        if not args.address:
            print("faxbridge topics add: at least one --address is required", file=sys.stderr)
            return 2
        entry["addresses"] = args.address
        if args.url:
            entry["url"] = args.url
        if args.password_env:
            entry["password"] = {"env": args.password_env}
        if args.customer_number:
            entry["customer_number"] = args.customer_number
    path = rules_file.add(cfg_path, section, entry)
    print(f"added {section[:-1]} '{args.name}' to {path}; a running bridge reloads it")
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from faxbridge.smtp.auth import hash_password
    pw = args.password if args.password is not None else getpass.getpass("password: ")
    print(hash_password(pw))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="faxbridge", description="Email-to-fax bridge for Retarus")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", metavar="PATH", help="config file (default: embedded)")
        return sp

    s = with_config(sub.add_parser("serve", help="run the bridge"))
    s.add_argument("--data-dir", metavar="DIR")
    s.add_argument("--smtp-listen", metavar="HOST:PORT")
    s.add_argument("--http-listen", metavar="HOST:PORT")
    s.add_argument("--simulator-listen", metavar="HOST:PORT")
    s.set_defaults(func=cmd_serve)

    s = with_config(sub.add_parser("check", help="validate a config file"))
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("example-config",
                       help="print the example config (faxbridge example-config > config.toml)")
    s.set_defaults(func=cmd_example_config)

    s = sub.add_parser("simulator", help="run the Retarus simulator alone")
    s.add_argument("--listen", default="127.0.0.1:8099", metavar="HOST:PORT")
    s.add_argument("--complete-after", type=float, default=2.0, metavar="SECONDS")
    s.add_argument("--customer-number", default="99999TE")
    s.add_argument("--username", default="faxbridge")
    s.add_argument("--password", default="simulator")
    s.add_argument("--pull-password", default="simulator")
    s.set_defaults(func=cmd_simulator)

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

    s = with_config(sub.add_parser("log", help="the SMTP log"))
    s.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    s.add_argument("id", nargs="?")
    s.add_argument("--data-dir")
    s.add_argument("--failed", action="store_true")
    s.add_argument("--sender")
    s.add_argument("--number")
    s.add_argument("--since")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_log)

    s = with_config(sub.add_parser("jobs", help="outbound fax jobs"))
    s.add_argument("action", nargs="?", choices=["list", "show", "release"], default="list")
    s.add_argument("id", nargs="?")
    s.add_argument("--data-dir")
    s.add_argument("--state")
    s.add_argument("--sender")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--json", action="store_true")
    s.add_argument("--raw", action="store_true", help="show: print the mail as received")
    s.add_argument("--force", action="store_true",
                   help="release: even a job that may be at Retarus already")
    s.set_defaults(func=cmd_jobs)

    s = with_config(sub.add_parser("inbox", help="received faxes"))
    s.add_argument("action", nargs="?", choices=["list", "resend"], default="list")
    s.add_argument("id", nargs="?", help="fax id (topic/id or the Retarus id)")
    s.add_argument("--to", action="append", metavar="ADDR", help="(resend) other address(es)")
    s.add_argument("--data-dir")
    s.add_argument("--limit", type=int, default=100)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_inbox)

    s = with_config(sub.add_parser("senders", help="list/add/remove sender rules"))
    s.add_argument("action", choices=["list", "add", "remove"])
    s.add_argument("name", nargs="?")
    s.add_argument("--match", action="append", help="address, *@domain, user:NAME, net:CIDR")
    s.add_argument("--allow", action="append", help="E.164 pattern, e.g. +49*")
    s.add_argument("--deny", action="append", help="E.164 pattern, e.g. +49900*")
    s.add_argument("--billing-code")
    s.add_argument("--body", choices=["first", "ignore"])
    s.add_argument("--notify", choices=["always", "failure", "never"])
    s.add_argument("--max-per-hour", type=int)
    s.add_argument("--max-per-day", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_rules)

    s = with_config(sub.add_parser("topics", help="list/add/remove inbound topics"))
    s.add_argument("action", choices=["list", "add", "remove"])
    s.add_argument("name", nargs="?")
    s.add_argument("--address", action="append", help="mailbox for the topic's faxes")
    s.add_argument("--url", help="Fax2WSPull base URL")
    s.add_argument("--password-env", help="environment variable with the topic password")
    s.add_argument("--customer-number")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_rules)

    s = sub.add_parser("hash-password", help="hash an SMTP AUTH password for the config")
    s.add_argument("--password", help="(default: prompt)")
    s.set_defaults(func=cmd_hash_password)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from faxbridge.logsetup import configure
    configure("plain", "DEBUG" if args.verbose else "INFO")
    if getattr(args, "action", None) in ("show", "release", "resend") and not args.id:
        print(f"faxbridge {args.command} {args.action}: an ID is required", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"config error in {exc.source or 'config'}:", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return 1
