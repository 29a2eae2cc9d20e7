"""The two ends of `serve`'s workers process, in this process: the data directory's
workers lock (a second holder waits for the first), and the supervisor that restarts
a workers process dying on its own, with a backoff, and says so to readiness."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from faxbridge.runtime import workers
from faxbridge.runtime.health import Health
from faxbridge.runtime.workers import WorkersSupervisor
from faxbridge.runtime.workers_lock import LOCK_FILE, WorkersLock
from tests.conftest import wait_for


async def test_second_lock_holder_waits_until_the_first_released(tmp_path, caplog):
    caplog.set_level(logging.INFO, "faxbridge")
    first, second = WorkersLock(tmp_path), WorkersLock(tmp_path)
    await first.acquire()
    assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    told: list[str] = []
    order: list[str] = []

    async def take() -> None:
        await second.acquire(told.append)
        order.append("second acquired")
    task = asyncio.create_task(take())
    await wait_for(lambda: told)  # it found the lock taken, and by whom
    assert told == [str(os.getpid())] and not task.done() and not second.held
    assert f"waiting for the previous workers process (pid {os.getpid()}) to stop" \
        in caplog.text
    order.append("first released")
    first.release()
    await asyncio.wait_for(task, 10)
    assert order == ["first released", "second acquired"] and second.held
    second.release()
    # free again: taken at once, nobody waited for
    third_told: list[str] = []
    third = WorkersLock(tmp_path)
    await third.acquire(third_told.append)
    assert third_told == []
    third.release()


async def test_a_waiting_holder_can_be_cancelled(tmp_path):
    first, second = WorkersLock(tmp_path), WorkersLock(tmp_path)
    await first.acquire()
    told: list[str] = []
    task = asyncio.create_task(second.acquire(told.append))
    await wait_for(lambda: told)  # in its waiting loop
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and not second.held
    first.release()


async def test_supervisor_restarts_a_dying_workers_process_with_a_backoff(caplog):
    caplog.set_level(logging.INFO, "faxbridge")
    health = Health()
    starts: list[int] = []
    # a "workers process" that dies at once with status 3, every time
    sup = WorkersSupervisor([sys.executable, "-c", "import sys; sys.exit(3)"], dict(os.environ),
                            0, health, 5.0, lambda: starts.append(1))
    assert health.workers is sup
    await sup.start()
    try:
        # while it is down, readiness says why and when it comes back
        problem = await wait_for(lambda: sup.problem() if sup.problem() and sup.problem()
                                 .startswith("workers process not running") else None)
        assert problem.startswith("workers process not running (exit status 3), "
                                  "restarting in ")
        # restarted: 1 s after the first exit, 2 s after the second
        await wait_for(lambda: len(starts) >= 3, timeout=30)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert "exit status 3" in errors[0] and "restarting it in 1 s" in errors[0]
        assert "restarting it in 2 s" in errors[1]
    finally:
        await sup.stop()
    # a normal stop: no child left, nothing for readiness to report
    assert sup.process is None and sup.problem() is None


async def test_supervisor_stops_its_workers_process_without_restart(caplog):
    health = Health()
    # reads its stdin to the end, as the workers process does, then exits 0
    sup = WorkersSupervisor([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            dict(os.environ), 0, health, 5.0, lambda: None)
    await sup.start()
    proc = sup.process
    assert proc is not None and proc.returncode is None
    await sup.stop()
    assert proc.returncode == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# A stand-in workers process that reports once (a snapshot as the real one sends it,
# on the pipe the supervisor gives it), then keeps quiet until its stdin closes.
REPORTS_ONCE = """
import json, os, sys
fd = int(os.environ["FAXBRIDGE_WORKERS_STATUS_FD"])
snap = {"state": "running", "pid": os.getpid(), "last_contact": {"relay": 1000.0},
        "topics": {"demo": {"status": "auth-refused", "last_poll": 1.0, "last_success": None,
                            "last_error": "401", "received": 0, "errors": 1}},
        "mail_failing": [["deliver", "report", 1.0, "relay down"]], "metrics": []}
os.write(fd, json.dumps(snap).encode() + b"\\n")
sys.stdin.read()
"""


async def test_supervisor_merges_a_snapshot_and_calls_a_silent_child_stale(monkeypatch):
    monkeypatch.setattr(workers, "STALE_SECONDS", 1.0)
    health = Health()
    sup = WorkersSupervisor([sys.executable, "-c", REPORTS_ONCE], dict(os.environ), 0,
                            health, 5.0, lambda: None)
    await sup.start()
    try:
        await wait_for(lambda: health.peer_topic_states)
        assert health.contacts() == {"relay": 1000.0}
        assert health.all_topic_states()["demo"].status == "auth-refused"
        status, _ = health.metrics.mail_problems()
        assert "relay down" in status["report deliver"]
        pid = sup.process.pid  # type: ignore[union-attr]
        assert sup.describe() == f"running (pid {pid})"
        # it says nothing more: after STALE_SECONDS that is a readiness reason
        stale = await wait_for(sup.problem, timeout=30)
        assert stale.startswith(f"workers process (pid {pid}) sent no status for ")
    finally:
        await sup.stop()


def test_restart_delay_doubles_to_its_cap_and_resets_after_a_long_run():
    from faxbridge.runtime.children import RestartDelay
    d = RestartDelay(1.0, 8.0, 60.0)
    assert [d.after(0.0) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert d.after(61.0) == 1.0  # the child had run a minute: a rare crash
    assert d.after(3.0) == 2.0
