"""`faxbridge health`: is the bridge of this config alive? For a container's
HEALTHCHECK and monitoring scripts: it asks GET /healthz where the bridge really
listens (its data directory's listening.json, written at start and on reload),
else where the config says, so no port is assumed."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from faxbridge.cli.common import load_config, with_config
from faxbridge.runtime.listening import read_listening


def _loopback(listen: str) -> str:
    """A wildcard listen address is reached on loopback."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def health_url(args: argparse.Namespace) -> tuple[str, str]:
    """The /healthz URL and where it came from."""
    cfg = load_config(args.config)
    data_dir = Path(args.data_dir) if args.data_dir else cfg.storage.data_dir
    running = read_listening(data_dir)
    if running and running.get("http", "").startswith("http://"):
        where = running["http"].removeprefix("http://")
        source = f"{data_dir}/listening.json"
    else:
        where, source = cfg.http.listen, "http.listen of " + (args.config or "the embedded default")
    return f"http://{_loopback(where)}/healthz", source


def cmd_health(args: argparse.Namespace) -> int:
    url, source = health_url(args)
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:  # noqa: S310 - http only
            body = json.loads(resp.read() or b"{}")
    except (OSError, ValueError) as exc:
        print(f"faxbridge health: {url} (from {source}): {exc}", file=sys.stderr)
        return 1
    if body.get("status") != "alive":
        print(f"faxbridge health: {url}: unexpected answer {body!r}", file=sys.stderr)
        return 1
    print(f"alive: {url}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = with_config(sub.add_parser(
        "health", help="check that the bridge answers GET /healthz (exit 0/1)"))
    s.add_argument("--data-dir", metavar="DIR",
                   help="the bridge's data directory (default: the config's)")
    s.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")
    s.set_defaults(func=cmd_health)
