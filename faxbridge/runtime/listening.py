"""Where a running bridge listens, kept in its data directory for `faxbridge health`
(the container's HEALTHCHECK): the addresses its config and flags gave, as bound,
so a health check never assumes a port."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

LISTENING_FILE = "listening.json"
log = logging.getLogger("faxbridge")


def write_listening(data_dir: Path, addrs: dict[str, str]) -> None:
    """Replaced atomically, so a reader never sees half a file."""
    tmp = data_dir / (LISTENING_FILE + ".tmp")
    try:
        tmp.write_text(json.dumps(addrs) + "\n", encoding="utf-8")
        os.replace(tmp, data_dir / LISTENING_FILE)
    except OSError as exc:
        log.warning("could not write %s: %s", data_dir / LISTENING_FILE, exc)


def read_listening(data_dir: Path) -> dict[str, str] | None:
    try:
        data = json.loads((data_dir / LISTENING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
