"""`faxbridge serve` (the bridge) and `faxbridge simulator` (the Retarus simulator alone)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from faxbridge.cli.common import load_config, with_config
from faxbridge.errors import ConfigError


def cmd_serve(args: argparse.Namespace) -> int:
    from faxbridge.app import Overrides, apply_overrides, run
    cfg = load_config(args.config)
    overrides = Overrides(
        data_dir=Path(args.data_dir) if args.data_dir else None,
        smtp_listen=args.smtp_listen, http_listen=args.http_listen,
        simulator_listen=args.simulator_listen, database_url=args.database_url)
    cfg = apply_overrides(cfg, overrides)
    from faxbridge.logsetup import configure
    configure(cfg.logging.format, "DEBUG" if args.verbose else cfg.logging.level,
              process="workers" if args.workers_child else None)
    if args.config is None and not args.workers_child:  # said once, by the listener
        print("no --config given: running on the embedded default (Retarus simulator, "
              f"Maildir, {'PostgreSQL' if cfg.storage.database_url else 'SQLite'}); "
              "loopback may fax any valid number")
    from faxbridge.errors import StoreError
    from faxbridge.mail.compose import TemplateError
    from faxbridge.web.server import ListenError
    # The default: the listener here, the downstream stages in a child process (so
    # that they do not take the accepting loop's interpreter); --single-process: all
    # in one, as before. --workers-process is the old name of the default.
    role = "workers" if args.workers_child else (
        "all" if args.single_process else "accept")
    workers_argv = None
    if role == "accept":
        # the same command line, minus the listeners the workers do not open
        workers_argv = [sys.executable, "-m", "faxbridge"] + (
            ["--verbose"] if args.verbose else []) + ["serve", "--workers-child"]
        for flag, value in (("--config", args.config), ("--data-dir", args.data_dir),
                            ("--database-url", args.database_url)):
            if value:
                workers_argv += [flag, str(value)]
    try:
        asyncio.run(run(cfg, print_fn=lambda s: print(s, flush=True),
                        config_path=Path(args.config) if args.config else None,
                        overrides=overrides, role=role, workers_argv=workers_argv,
                        workers_nice=args.workers_nice))
    except (ListenError, TemplateError, StoreError) as exc:
        print(f"faxbridge: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        # The preflight in Bridge.start (the same one `check` runs): print it like a
        # config file error, naming the file it concerns.
        raise ConfigError(exc.problems, exc.source or args.config or "embedded default") \
            from None
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


def register(sub: argparse._SubParsersAction) -> None:
    s = with_config(sub.add_parser("serve", help="run the bridge"))
    s.add_argument("--data-dir", metavar="DIR")
    s.add_argument("--database-url", metavar="URL",
                   help="PostgreSQL shared by several bridges (else SQLite in the data dir; "
                        "also FAXBRIDGE_DATABASE_URL)")
    s.add_argument("--smtp-listen", metavar="HOST:PORT")
    s.add_argument("--http-listen", metavar="HOST:PORT")
    s.add_argument("--simulator-listen", metavar="HOST:PORT")
    split = s.add_mutually_exclusive_group()
    split.add_argument("--single-process", action="store_true",
                       help="run submission, tracking, mails and polls in the listener's "
                            "process (by default they run in a second process, so that "
                            "they do not slow down accepting mail)")
    split.add_argument("--workers-process", action="store_true",
                       help="the default (kept so that existing command lines work)")
    s.add_argument("--workers-nice", type=int, default=10, metavar="N",
                   help="run the workers process N steps nicer (lower CPU priority) than "
                        "the listener (default 10; ignored with --single-process)")
    s.add_argument("--workers-child", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("simulator", help="run the Retarus simulator alone")
    s.add_argument("--listen", default="127.0.0.1:8099", metavar="HOST:PORT")
    s.add_argument("--complete-after", type=float, default=2.0, metavar="SECONDS")
    s.add_argument("--customer-number", default="99999TE")
    s.add_argument("--username", default="faxbridge")
    s.add_argument("--password", default="simulator")
    s.add_argument("--pull-password", default="simulator")
    s.set_defaults(func=cmd_simulator)
