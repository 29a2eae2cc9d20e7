"""What the Retarus simulator remembers: jobs and their reports per data center,
inbound faxes per Fax2WSPull topic, injected faults, forced outcomes, settings and
the call log. Plain data and the rules that need no HTTP; the routes in fax4a.py,
pull.py and control.py read and change it (docs/retarus-wire.md §1.3, §2, §3).
"""

from __future__ import annotations

import fnmatch
import itertools
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from starlette.requests import Request

DATACENTERS = ("de1", "de2", "us1", "us2", "ch1", "sg1")
HA = {"ha-de": ("de1", "de2"), "ha-us": ("us1", "us2")}
FINAL_REASONS = {
    "OK": "OK", "BUSY": "Line busy", "NOFAX": "No fax machine answered",
    "NOFAX_DIS": "Remote hung up before handshake", "NOFAX_TO": "No fax signal (timeout)",
    "RING_TO": "No answer (ring timeout)", "REM_DIS": "simulated",
}


def new_job_id() -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "FJ" + "".join(secrets.choice(alphabet) for _ in range(20))


@dataclass
class SimJob:
    job_id: str
    dc: str
    via: str
    body: dict[str, Any]
    received: float
    completes_at: float
    outcomes: list[tuple[str, str]]
    pages: int
    pushes: list[dict[str, Any]] = field(default_factory=list)

    def final(self, now: float) -> bool:
        return now >= self.completes_at

    def report(self, now: float) -> dict[str, Any]:
        """The job's FaxReport as getStatusReport returns it (docs/retarus-wire.md §2.2)."""
        final = self.final(now)
        statuses = []
        for (status, reason), r in zip(self.outcomes, self.body["recipients"], strict=True):
            item: dict[str, Any] = {
                "number": r["number"], "alternativeNumbers": r.get("alternativeNumbers"),
                "properties": r.get("properties"),
                "status": status if final else "PENDING",
                "reason": reason if final else "Job is being processed",
                "durationInSecs": (12 * self.pages if status == "OK" else 0) if final else 0,
            }
            if final:
                item["sentTs"] = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                               time.gmtime(self.completes_at))
                digits = r["number"].lstrip("+")
                item["sentToNumber"] = ("00" + digits) if r["number"].startswith("+") else digits
                item["remoteCsid"] = r["number"] if status == "OK" else ""
            statuses.append(item)
        rep = {"jobId": self.job_id, "recipientStatus": statuses,
               "pages": (self.pages if final and any(s == "OK" for s, _ in self.outcomes) else 0)}
        if self.body.get("reference"):
            rep["reference"] = self.body["reference"]
        return rep


@dataclass
class SimFax:
    fax_id: str
    topic: str
    received: float
    metadata: dict[str, Any]
    files: list[tuple[str, bytes, str]]  # (file name "<id>-<n>.<ext>", bytes, content type)
    locked_until: float = 0.0
    acked: bool = False
    offered: int = 0


@dataclass
class Fault:
    after: int  # let this many matching calls pass first
    endpoint: str
    dc: str | None
    remaining: int
    status: int | None
    delay: float
    drop: bool
    retry_after: str | None
    body: Any = None  # JSON body of a status fault; None answers with an empty body


class SimState:
    def __init__(self, *, customer_number: str = "99999TE", username: str = "faxbridge",
                 password: str = "simulator", pull_password: str = "simulator",
                 complete_after: float = 2.0, lock_seconds: float = 60.0) -> None:
        self.customer_number = customer_number
        self.username = username
        self.password = password
        self.pull_password = pull_password
        self.complete_after = complete_after
        self.lock_seconds = lock_seconds
        # XML (the getFaxReports shape, Retarus' default) or JSON (on request)
        self.push_format = "xml"
        self.push_style = "plural"  # faxRecipients (status-push page) or singular faxRecipient
        # One client for every push: building one per push costs an SSL context each
        # (tens of ms of CPU), which made the simulator the bottleneck of benchmarks.
        self._push_client: httpx.AsyncClient | None = None
        self.reset()

    def push_client(self) -> httpx.AsyncClient:
        if self._push_client is None:
            self._push_client = httpx.AsyncClient(timeout=10.0)
        return self._push_client

    async def aclose(self) -> None:
        if self._push_client is not None:
            await self._push_client.aclose()
            self._push_client = None

    def reset(self) -> None:
        self.reports: dict[str, dict[str, SimJob]] = {dc: {} for dc in DATACENTERS}
        self.jobs: list[SimJob] = []
        self.outcomes: list[tuple[str, str, str | None]] = []
        self.faults: list[Fault] = []
        self.faxes: dict[str, list[SimFax]] = {}
        self.ha_route: dict[str, str] = {}
        self._rr = {name: itertools.cycle(dcs) for name, dcs in HA.items()}
        self._fax_seq = itertools.count(9201291)
        self.calls: list[dict[str, Any]] = []

    def pick_dc(self, ha: str) -> str:
        # docs/retarus-wire.md §1.3: the HA URL forwards to one data center; which one is not
        # observable (GUESS: round-robin). Tests may pin it with /_sim/config.
        return self.ha_route.get(ha) or next(self._rr[ha])

    def outcome_for(self, number: str) -> tuple[str, str]:
        for pattern, status, reason in self.outcomes:
            if fnmatch.fnmatchcase(number, pattern):
                return status, reason or FINAL_REASONS.get(status, status)
        return "OK", "OK"

    def take_fault(self, endpoint: str, dc: str | None) -> Fault | None:
        for f in self.faults:
            if f.remaining > 0 and f.endpoint in (endpoint, "any") and f.dc in (None, dc):
                if f.after > 0:
                    f.after -= 1
                    return None
                f.remaining -= 1
                return f
        return None

    def next_fax_id(self) -> str:
        """An id for an inbound fax that was injected without one."""
        return str(next(self._fax_seq))

    def completed(self, dc: str) -> list[SimJob]:
        """Final reports on one data center, oldest first, at most 1000 of them
        (getAllStatusReports / deleteOldestStatusReports, docs/retarus-wire.md §2.3, §2.6)."""
        now = time.time()
        jobs = [j for j in self.reports[dc].values() if j.final(now)]
        return sorted(jobs, key=lambda j: j.completes_at)[:1000]


def sim_state(request: Request) -> SimState:
    """The SimState of the simulator app serving this request (set by build_app)."""
    state: SimState = request.app.state.sim
    return state
