"""Where the bridge's CPU goes under the 10 KB accept load: py-spy samples the
`faxbridge serve` process (only the thread holding the GIL: the process is
GIL-bound, so that is the cost the accept loop pays) while smtp-source sends,
then each sampled stack is put into one bucket and the buckets are printed as a
share of the samples and as CPU milliseconds per accepted mail.

    python bench/profile_accept.py [--messages 3000] [--bridge-arg ...]

Needs py-spy (pip install py-spy) and permission to ptrace the child (root, or
kernel.yama.ptrace_scope 0). Writes the raw collapsed stacks next to the results."""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from accept import bench_mail, simulator, smtp_source, wait_jobs
from common import RESULTS, bridge, bridge_config, free_port, table

# The buckets, tried in order on the whole stack (root to leaf joined): the first
# whose marker occurs in it takes the sample. Downstream first: a store call or a
# log line made by the submitter is the submitter's cost, not the accept path's.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("downstream (submit, track, report mail, housekeeping)",
     ("outbound/submit.py", "outbound/track.py", "mail/worker.py", "housekeeping.py",
      "inbound/", "retarus/", "runner.py", "httpx/", "httpcore/", "h11/")),
    ("commit (group commit, store)", ("groupcommit.py", "create_jobs", "store/")),
    ("SMTP log (log line, log record)", ("txlog.py", "logging/", "logsetup.py", "add_log")),
    # (not "email/" alone: aiosmtpd parses MAIL/RCPT addresses with it too)
    ("MIME parse (pool)", ("_parse (faxbridge/smtp/handler.py", "intake/mime.py",
                           "intake/slim.py", "_display_names")),
    ("routing (MAIL/RCPT decisions, rate holds)", ("intake/accept.py", "intake/rules.py",
                                                   "intake/numbers.py", "inflight.py",
                                                   "handle_RCPT", "handle_MAIL")),
    ("DATA handler rest (job build, header line)", ("smtp/handler.py",)),
    ("SMTP protocol (aiosmtpd, DATA reader, sockets)", ("aiosmtpd/", "smtp/server.py",
                                                        "smtp/spool.py", "asyncio/streams.py",
                                                        "selector_events.py", "sslproto")),
    ("web / health / metrics", ("starlette/", "uvicorn/", "web/", "metrics.py")),
    ("event loop, thread hand-offs, other", ("",)),
]


def bucket(stack: str) -> str:
    for name, markers in BUCKETS:
        if any(m in stack for m in markers):
            return name
    return BUCKETS[-1][0]


def _role(pid: int) -> str:
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    return "parse" if b"parsers" in cmd else "workers" if b"workers" in cmd else "child"


def spy_on(pid: int, path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--gil", "--rate", "200",
                             "--format", "raw", "--output", str(path), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--size", type=int, default=10_000)
    ap.add_argument("--bridge-arg", action="append", default=[])
    ap.add_argument("--name", default="profile-accept")
    a = ap.parse_args()
    raw = bench_mail(a.size)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{a.name}.txt"
    with tempfile.TemporaryDirectory() as d:
        mail = Path(d) / "mail.eml"
        mail.write_bytes(raw.replace(b"\r\n", b"\n"))
        sim_port, port = free_port(), free_port()
        sim = simulator(sim_port)
        fb = bridge(Path(d) / "data", port, extra=a.bridge_arg,
                    config=bridge_config(Path(d), sim_port, poll_min=None))
        try:
            smtp_source(port, mail, 100)  # warm-up
            wait_jobs(sim_port, 100)
            kids = Path(f"/proc/{fb.p.pid}/task/{fb.p.pid}/children").read_text().split()
            # the children: the workers process and the parse process(es), each apart
            sides = {k: out.with_suffix(f".{_role(int(k))}-{k}.txt") for k in kids}
            spies = [spy_on(int(pid), path) for pid, path in
                     [(fb.p.pid, out), *sides.items()]]
            time.sleep(1.0)  # py-spy attached
            t0 = time.perf_counter()
            r = smtp_source(port, mail, a.messages)
            secs = time.perf_counter() - t0
            for spy in spies:
                spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
            for spy in spies:
                spy.wait(60)
            if r["ok"] != a.messages:
                sys.exit(f"not every message was accepted: {r['error']}")
            jobs = wait_jobs(sim_port, a.messages + 100)
        finally:
            fb.stop()
            sim.stop()
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    children: collections.Counter[str] = collections.Counter()
    for side in sides.values():
        # the children's samples are not the accept loop's: each has its interpreter
        for line in side.read_text().splitlines() if side.exists() else []:
            n = line.rpartition(" ")[2]
            children[side.stem.split(".")[-1]] += int(n) if n.isdigit() else 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        counts[bucket(stack)] += int(n)
        total += int(n)
    # samples at 200/s of the GIL holder: one sample is 5 ms of GIL time
    ms = {k: v * 5.0 / a.messages for k, v in counts.items()}
    rows = [[k, f"{v / total * 100:.1f} %", f"{ms[k]:.2f}"] for k, v in counts.most_common()]
    print(f"{a.messages} mails of {a.size // 1000} KB in {secs:.1f}s "
          f"({a.messages / secs:.0f}/s); simulator jobs {jobs['jobs']}; {total} samples")
    print(table(rows, ["bucket", "share of GIL samples", "GIL ms per mail"]))
    for name, n in sorted(children.items()):
        print(f"child {name} (its own interpreter): {n} samples, "
              f"{n * 5.0 / a.messages:.2f} GIL ms per mail")
    print(f"collapsed stacks: {out}")


if __name__ == "__main__":
    main()
