"""Log output: plain lines or one JSON object per line (logging.format)."""

from __future__ import annotations

import json
import logging
import time

# What every LogRecord has; anything else on a record came from `extra=` and is a field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str | None = None) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z", "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        if self.process:
            out["process"], out["pid"] = self.process, record.process
        # The facts of a line (job, message_id, sender, recipients, reply …) as
        # fields of their own, so `jq 'select(.job == "…")'` needs no regex.
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(fmt: str = "plain", level: str = "INFO", process: str | None = None) -> None:
    """`process`: the role of a child that shares the listener's stdout (the workers
    process): its lines say so and give its pid, as Postfix's `postfix/smtp[1234]:`
    does, so an admin can tell whose line it is and match it to the listener's
    "workers process started (pid N)"."""
    handler = logging.StreamHandler()
    tag = f"[{process} %(process)d]" if process else ""
    handler.setFormatter(JsonFormatter(process) if fmt == "json" else logging.Formatter(
        f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs every command line at INFO; our SMTP log has the decisions.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
