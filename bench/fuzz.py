"""Fuzz the SMTP intake with generated malformed mails (run by hand, never in CI).

    PYTHONPATH=. python3 bench/fuzz.py [--count 10000] [--seed 1] [--workers 4]

Starts a real bridge in this process (embedded default: the simulator, SQLite in a
temporary directory, ports 0) and sends every mail over SMTP from client threads.
Each mail is one of: broken MIME boundaries, nesting 40-60 levels deep, base64
garbage, huge headers (up to 1 MB), NUL bytes, invalid UTF-8, or a mix of these.

Checked, and printed as counts per kind of mail: the bridge never crashes (every
session gets an SMTP reply, /healthz answers at the end), nothing logs a traceback
(any log record with exception info, or "Traceback" in its text, at any level),
and no 250 is given without a job and an SMTP log record for it in the store.
Exit status 1 when any of that fails. tests/test_fuzz.py runs 200 of these mails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import random
import smtplib
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("broken_boundary", "deep_nesting", "base64_garbage", "huge_header", "nul_bytes",
         "invalid_utf8", "mixed")
RCPT = "+4989123456@fax.local"
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


# ---------------------------------------------------------------- generation
def _fold(name: bytes, value: bytes, width: int = 76) -> bytes:
    """A header folded into lines under SMTP's 1000-octet limit."""
    lines, line = [], name + b": "
    for word in value.split(b" "):
        if len(line) + len(word) > width and line.strip():
            lines.append(line.rstrip())
            line = b" "
        line += word + b" "
    lines.append(line.rstrip())
    return b"\r\n".join(lines) + b"\r\n"


def _b64_lines(data: bytes) -> bytes:
    enc = base64.b64encode(data)
    return b"\r\n".join(enc[i:i + 76] for i in range(0, len(enc), 76)) + b"\r\n"


def _junk(rng: random.Random, n: int) -> bytes:
    # no CR or LF: a bare one is refused up front, which would hide what comes after
    return bytes(b for b in rng.randbytes(n) if b not in (10, 13))


def _head(rng: random.Random, extra: bytes = b"", subject: bytes = b"fuzz") -> bytes:
    return (b"From: Fuzz <fuzz@example.com>\r\nTo: " + RCPT.encode() + b"\r\n"
            b"Subject: " + subject + b"\r\nMessage-ID: <" + str(rng.random()).encode()
            + b"@fuzz>\r\nMIME-Version: 1.0\r\n" + extra)


def broken_boundary(rng: random.Random) -> bytes:
    b = rng.choice([b"abc", b"", b"a b c", b"--", b"x" * 80, b'"q"', b"\x00z", b"\xff\xfe"])
    variants = [
        # declared boundary never used
        b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n\r\nno parts here\r\n',
        # parts, but no closing delimiter
        b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\n--zz\r\nContent-Type: '
        b"text/plain\r\n\r\nbody\r\n--zz\r\nContent-Type: application/pdf; name=a.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64_lines(PDF),
        # no boundary parameter at all
        b"Content-Type: multipart/mixed\r\n\r\n--\r\nContent-Type: text/plain\r\n\r\nx\r\n",
        # delimiters of another boundary, and a closing one first
        b'Content-Type: multipart/mixed; boundary="aa"\r\n\r\n--aa--\r\n--bb\r\n'
        b"Content-Type: text/plain\r\n\r\nafter the end\r\n--aa\r\n\r\n",
        # a nested multipart reusing its parent's boundary
        b'Content-Type: multipart/mixed; boundary="p"\r\n\r\n--p\r\nContent-Type: '
        b'multipart/alternative; boundary="p"\r\n\r\n--p\r\nContent-Type: text/plain\r\n'
        b"\r\ninner\r\n--p--\r\n--p--\r\n",
        # header block of a part cut off
        b'Content-Type: multipart/mixed; boundary="c"\r\n\r\n--c\r\nContent-Type: appli',
    ]
    return _head(rng) + rng.choice(variants)


def deep_nesting(rng: random.Random) -> bytes:
    depth = rng.randint(40, 60)
    kinds = [b"mixed", b"related", b"alternative", b"rfc822"]
    opening, closing = b"", b""
    for i in range(depth):
        kind = rng.choice(kinds)
        if kind == b"rfc822":
            opening += b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n"
            continue
        opening += (b"Content-Type: multipart/" + kind + b'; boundary="n%d"\r\n\r\n--n%d\r\n'
                    % (i, i))
        closing = b"\r\n--n%d--\r\n" % i + closing
    leaf = (b"Content-Type: application/pdf; name=deep.pdf\r\nContent-Transfer-Encoding: "
            b"base64\r\n\r\n" + _b64_lines(PDF))
    return _head(rng) + opening + leaf + closing


def base64_garbage(rng: random.Random) -> bytes:
    garbage = rng.choice([
        _b64_lines(PDF)[:-7] + b"=\r\n",                      # bad padding
        b"!!!!@@@@####\r\n" * 20,                              # not base64 at all
        base64.b64encode(_junk(rng, 3000))[:2999] + b"\r\n",   # odd length, one long line
        _b64_lines(_junk(rng, 5000)).replace(b"A", b"\x00"),    # NULs inside
        b"====\r\n" * 10,
        _b64_lines(rng.randbytes(400 * 1024)),                 # large: the slim() path
        _b64_lines(rng.randbytes(300 * 1024))[:-5] + b"*\r\n",
    ])
    cte = rng.choice([b"base64", b"BASE64", b"base-64", b"quoted-printable", b"x-uue"])
    ctype = rng.choice([b"application/pdf", b"application/octet-stream", b"image/tiff",
                        b"application/ms-tnef", b"text/plain"])
    return _head(rng) + (b'Content-Type: multipart/mixed; boundary="g"\r\n\r\n--g\r\n'
                         b"Content-Type: text/plain\r\n\r\nsee attachment\r\n--g\r\n"
                         b"Content-Type: " + ctype + b'; name="f.pdf"\r\n'
                         b"Content-Disposition: attachment; filename=\"f.pdf\"\r\n"
                         b"Content-Transfer-Encoding: " + cte + b"\r\n\r\n" + garbage
                         + b"--g--\r\n")


def huge_header(rng: random.Random) -> bytes:
    size = rng.choice([20_000, 100_000, 300_000, 1_000_000])
    name = rng.choice([b"Subject", b"To", b"Cc", b"X-Junk", b"Content-Type", b"Message-ID",
                       b"Received"])
    words = b" ".join(b"w%d" % i if name not in (b"To", b"Cc") else b"n%d <a%d@x.test>," % (i, i)
                      for i in range(size // 8))
    if name == b"Content-Type":
        words = b"multipart/mixed; boundary=\"h\"; " + words.replace(b" ", b"; p=")
    return _head(rng, extra=_fold(name, words[:size])) + (
        b"\r\nbody text to fax\r\n" if name != b"Content-Type" else
        b"\r\n--h\r\nContent-Type: text/plain\r\n\r\nx\r\n--h--\r\n")


def nul_bytes(rng: random.Random) -> bytes:
    where = rng.randrange(4)
    subject = b"nul\x00subject" if where == 0 else b"fine"
    name = b"fi\x00le.pdf" if where == 1 else b"file.pdf"
    boundary = b"nu\x00ll" if where == 2 else b"nb"
    body = b"text\x00with\x00nuls" if where == 3 else b"text"
    return _head(rng, subject=subject) + (
        b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--' + boundary
        + b"\r\nContent-Type: text/plain; charset=\"ut\x00f-8\"\r\n\r\n" + body + b"\r\n--"
        + boundary + b'\r\nContent-Type: application/pdf; name="' + name + b'"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64_lines(PDF) + b"--" + boundary
        + b"--\r\n")


def invalid_utf8(rng: random.Random) -> bytes:
    bad = rng.choice([b"\xc3\x28", b"\xff\xfe\xfd", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80",
                      b"\xe2\x82", b"\xc0\xaf"])
    subject = rng.choice([b"Rechnung " + bad, b"=?utf-8?B?" + base64.b64encode(bad) + b"?=",
                          b"=?utf-8?Q?" + bad + b"?=", b"=?x-unknown?Q?abc?=",
                          b"=?utf-8?B?////?="])
    return _head(rng, subject=subject) + (
        b'Content-Type: multipart/mixed; boundary="u"\r\n\r\n--u\r\n'
        b"Content-Type: text/plain; charset=" + rng.choice([b"utf-8", b"bogus", b"utf-16"])
        + b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\nText " + bad + b"\r\n--u\r\n"
        b"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename*=utf-8''"
        + bad + b"%ZZ.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" + _b64_lines(PDF)
        + b"--u--\r\n")


def mixed(rng: random.Random) -> bytes:
    a, b = rng.sample([broken_boundary, deep_nesting, base64_garbage, nul_bytes,
                       invalid_utf8], 2)
    first, second = a(rng), b(rng)
    # the first mail's headers over the second's body, or a body cut off anywhere
    cut = rng.randrange(len(second))
    return rng.choice([first.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                       + second.split(b"\r\n\r\n", 1)[-1], second[:cut] + b"\r\n",
                       first + b"\r\n" + second])


GENERATORS = {"broken_boundary": broken_boundary, "deep_nesting": deep_nesting,
              "base64_garbage": base64_garbage, "huge_header": huge_header,
              "nul_bytes": nul_bytes, "invalid_utf8": invalid_utf8, "mixed": mixed}


def generate(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(KINDS)
    return kind, GENERATORS[kind](rng)


# ------------------------------------------------------------------ running
class Tracebacks(logging.Handler):
    """Every log record that carries a traceback, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info or record.stack_info or "Traceback" in text:
            self.found.append(f"{record.name}: {text[:300]}")


@dataclass
class Result:
    sent: Counter = field(default_factory=Counter)         # kind → mails
    replies: Counter = field(default_factory=Counter)      # (kind, code) → mails
    crashes: list[str] = field(default_factory=list)       # no reply, connection lost
    unbacked: list[str] = field(default_factory=list)      # 250 without job or log record
    tracebacks: list[str] = field(default_factory=list)
    healthy: bool = False

    @property
    def ok(self) -> bool:
        return self.healthy and not (self.crashes or self.unbacked or self.tracebacks)

    def table(self) -> str:
        codes = sorted({c for _, c in self.replies})
        rows = [f"{'kind':16}{'mails':>7}" + "".join(f"{c:>7}" for c in codes)]
        for kind in KINDS:
            rows.append(f"{kind:16}{self.sent[kind]:>7}"
                        + "".join(f"{self.replies[(kind, c)]:>7}" for c in codes))
        rows.append(f"{'total':16}{sum(self.sent.values()):>7}" + "".join(
            f"{sum(n for (_, cc), n in self.replies.items() if cc == c):>7}" for c in codes))
        rows += [f"crashes (no SMTP reply): {len(self.crashes)}",
                 f"tracebacks logged: {len(self.tracebacks)}",
                 f"250 without a job and a log record: {len(self.unbacked)}",
                 f"bridge healthy afterwards: {self.healthy}"]
        return "\n".join(rows)


def _send_one(address: str, raw: bytes) -> tuple[int, str]:
    host, _, port = address.rpartition(":")
    with smtplib.SMTP(host, int(port), timeout=120) as s:
        s.ehlo()
        code, _ = s.mail("fuzz@example.com")
        if code != 250:
            return code, "MAIL refused"
        code, msg = s.rcpt(RCPT)
        if code != 250:
            return code, msg.decode()
        code, msg = s.data(raw)
        return code, msg.decode("utf-8", "replace")


async def run(bridge: Any, count: int, seed: int, workers: int = 4,
              progress: bool = False) -> Result:
    """Send `count` generated mails to a started bridge and check what it did."""
    import httpx
    rng = random.Random(seed)
    mails = [generate(rng) for _ in range(count)]
    res = Result()
    catcher = Tracebacks()
    root = logging.getLogger()
    root.addHandler(catcher)
    queue: asyncio.Queue[tuple[int, str, bytes]] = asyncio.Queue()
    for i, (kind, raw) in enumerate(mails):
        queue.put_nowait((i, kind, raw))
    accepted: list[tuple[str, str]] = []  # (kind, job id)
    t0 = time.monotonic()

    async def worker() -> None:
        while not queue.empty():
            i, kind, raw = queue.get_nowait()
            res.sent[kind] += 1
            try:
                code, text = await asyncio.to_thread(_send_one, bridge.smtp_address, raw)
            except (smtplib.SMTPException, OSError) as exc:
                res.crashes.append(f"mail {i} ({kind}): {type(exc).__name__}: {exc}")
                continue
            res.replies[(kind, code)] += 1
            if code == 250:
                accepted.append((kind, text.split("Queued as ", 1)[-1].split(":", 1)[0]))
            if progress and (i + 1) % 500 == 0:
                print(f"  {i + 1} mails, {time.monotonic() - t0:.0f} s", file=sys.stderr)

    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
        store = bridge.store
        logged = {r.job_id for r in await asyncio.to_thread(
            store.list_log, limit=count + 10) if r.job_id}
        for kind, job_id in accepted:
            if store.job(job_id) is None or job_id not in logged:
                res.unbacked.append(f"{kind}: {job_id}")
        async with httpx.AsyncClient() as c:
            res.healthy = (await c.get(f"{bridge.http_server.url}/healthz")).status_code == 200
    finally:
        root.removeHandler(catcher)
    res.tracebacks = catcher.found
    return res


def bridge_config(data_dir: Path) -> Any:
    from faxbridge.config import embedded_default, parse
    base = embedded_default().model_dump(mode="python")
    for key in ("smtp", "http", "simulator"):
        base[key]["listen"] = "127.0.0.1:0"
    base["storage"]["data_dir"] = data_dir
    return parse(base)


async def main_async(args: argparse.Namespace) -> int:
    from faxbridge.app import Bridge
    with tempfile.TemporaryDirectory(prefix="faxbridge-fuzz-") as tmp:
        bridge = Bridge(bridge_config(Path(tmp)))
        await bridge.start()
        t0 = time.monotonic()
        try:
            res = await run(bridge, args.count, args.seed, args.workers, progress=True)
        finally:
            await bridge.stop(grace=5)
        print(f"{args.count} mails, seed {args.seed}, {time.monotonic() - t0:.0f} s")
        print(res.table())
        for line in (res.crashes + res.unbacked + res.tracebacks)[:20]:
            print("  " + line)
        return 0 if res.ok else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
