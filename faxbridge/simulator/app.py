"""The Retarus simulator: Fax4A data centers + HA send URLs, Fax2WSPull, and a
control API under /_sim/ (README "The Retarus simulator"; behaviour from docs/retarus-wire.md).

Where docs/retarus-wire.md marks a behaviour unknown the simulator takes the
suggested default of its §8 table: 201 on send, empty error bodies, PENDING from
the owning data center and 404 from the others, 404 for deleting an unknown report.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fnmatch
import itertools
import json
import logging
import random
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from faxbridge.simulator.pdf import tiny_pdf
from faxbridge.simulator.validate import page_count, validate_job
from faxbridge.web.basic import basic_ok

log = logging.getLogger("faxbridge.simulator")

DATACENTERS = ("de1", "de2", "us1", "us2", "ch1", "sg1")
HA = {"ha-de": ("de1", "de2"), "ha-us": ("us1", "us2")}
FINAL_REASONS = {
    "OK": "OK", "BUSY": "Line busy", "NOFAX": "No fax machine answered",
    "NOFAX_DIS": "Remote hung up before handshake", "NOFAX_TO": "No fax signal (timeout)",
    "RING_TO": "No answer (ring timeout)", "REM_DIS": "simulated",
}


def _job_id() -> str:
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


def classify(method: str, path: str) -> tuple[str, str | None]:
    """(endpoint name, data center) of a request, for faults and the call log."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["fax4a"] and len(parts) >= 5:
        dc, rest = parts[1], parts[5:]
        if rest == ["fax"]:
            return "send", dc
        if rest[:2] == ["fax", "reports"]:
            if len(rest) == 2:
                return {"GET": "list", "POST": "bulk", "DELETE": "delete_oldest"}.get(
                    method, "other"), dc
            return ("report" if method == "GET" else "delete"), dc
    if parts[:3] == ["faxin", "rest", "v1"] and len(parts) >= 4:
        return ("pull" if parts[3] == "topics" else "file"), None
    return "other", None


class FaultLayer:
    """Outermost ASGI layer: applies injected faults before any routing. A dropped
    connection aborts the transport uvicorn handed us, so the client sees a reset."""

    def __init__(self, app: Starlette, state: SimState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim/"):
            await self.app(scope, receive, send)
            return
        endpoint, dc = classify(scope["method"], scope["path"])
        self.state.calls.append({"ts": time.time(), "method": scope["method"],
                                 "path": scope["path"], "endpoint": endpoint, "dc": dc})
        fault = self.state.take_fault(endpoint, dc)
        if fault is None:
            await self.app(scope, receive, send)
            return
        if fault.delay:
            # A slow server has the whole request and answers late: read the body
            # first, so the request takes effect even if the client gives up waiting.
            messages = []
            while True:
                msg = await receive()
                messages.append(msg)
                if msg["type"] != "http.request" or not msg.get("more_body"):
                    break
            await asyncio.sleep(fault.delay)
            replay = iter(messages)

            async def replayed() -> Message:
                return next(replay, {"type": "http.disconnect"})
            if not fault.drop and not fault.status:
                await self.app(scope, replayed, _ignore_closed(send))
                return
        if fault.drop:
            transport = getattr(getattr(receive, "__self__", None), "transport", None)
            if transport is not None:
                transport.abort()
                return
            raise ConnectionAbortedError("simulated drop")
        if fault.status:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            await Response(status_code=fault.status, headers=headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _ignore_closed(send: Send) -> Send:
    """The client may have gone away while we were slow; that is its business."""
    async def wrapped(message: Message) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            await send(message)
    return wrapped


def build_app(state: SimState) -> FaultLayer:
    tasks: set[asyncio.Task[None]] = set()

    def auth_ok(request: Request, user: str, password: str) -> bool:
        return basic_ok(request.headers.get("authorization", ""), user, password)

    def fax4a_guard(request: Request) -> tuple[str, Response | None]:
        dc = request.path_params["dc"]
        if dc not in DATACENTERS and dc not in HA:
            return dc, Response(status_code=404)
        if not auth_ok(request, state.username, state.password) \
                or request.path_params["cust"] != state.customer_number:
            return dc, Response(status_code=401)
        return dc, None

    async def push(job: SimJob) -> None:
        push_opts = ((job.body.get("statusReportOptions") or {}).get("httpStatusPush") or {})
        url = push_opts.get("targetUrl")
        delay = max(0.0, job.completes_at - time.time())
        await asyncio.sleep(delay)
        if not url:
            return
        rep = job.report(time.time())
        payload: dict[str, Any] = {"jobId": rep["jobId"], "pages": rep["pages"],
                                   "httpStatusPush": {"url": url,
                                                      "authMethod": push_opts.get("authMethod",
                                                                                  "NONE")}}
        recips = [{**r, "sentTS": r.get("sentTs")} for r in rep["recipientStatus"]]
        for r in recips:
            r.pop("sentTs", None)
        if state.push_style == "singular":
            payload["faxRecipient"] = recips
        else:
            payload["faxRecipients"] = recips
        auth = None
        if push_opts.get("authMethod") == "HTTP_BASIC":
            auth = httpx.BasicAuth(push_opts.get("principal") or "",
                                   push_opts.get("credentials") or "")
        client = state.push_client()
        for attempt in range(3):  # Retarus' retry policy is unknown (docs/retarus-wire.md §4)
            # a fault on the job's data center ("push" or "any") means that data
            # center is down: its push does not go out this time
            if state.take_fault("push", job.dc) is not None:
                job.pushes.append({"ts": time.time(), "error": "data center fault"})
                await asyncio.sleep(1.0 + attempt)
                continue
            try:
                resp = await client.post(url, json=payload, auth=auth)
                job.pushes.append({"ts": time.time(), "status": resp.status_code})
                if resp.status_code < 300 or 400 <= resp.status_code < 500:
                    return
            except httpx.HTTPError as exc:
                job.pushes.append({"ts": time.time(), "error": str(exc)})
            except RuntimeError:  # the simulator is stopping and closed its client
                return
            await asyncio.sleep(1.0 + attempt)

    async def send_fax(request: Request) -> Response:
        dc, err = fax4a_guard(request)
        if err:
            return err
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            return Response(status_code=400)  # "unable to process JSON"
        problems = validate_job(body)
        if problems:
            log.info("simulator rejects job: %s", "; ".join(problems))
            # Documented as "No Content"; the problem list goes to a header for debugging.
            return Response(status_code=400,
                            headers={"X-Sim-Problems": "; ".join(problems)[:1000]})
        target = state.pick_dc(dc) if dc in HA else dc
        now = time.time()
        job = SimJob(job_id=_job_id(), dc=target, via=dc, body=body, received=now,
                     completes_at=now + state.complete_after,
                     outcomes=[state.outcome_for(r["number"]) for r in body["recipients"]],
                     pages=page_count(body))
        state.reports[target][job.job_id] = job
        state.jobs.append(job)
        task = asyncio.get_running_loop().create_task(push(job))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return JSONResponse({"jobId": job.job_id}, status_code=201)

    async def get_report(request: Request) -> Response:
        dc, err = fax4a_guard(request)
        if err:
            return err
        if dc in HA:  # "inconsistent" results on the HA URL: ask a random DC
            dc = random.choice(HA[dc])
        job = state.reports[dc].get(request.path_params["job"])
        if job is None:
            return Response(status_code=404)
        return JSONResponse(job.report(time.time()))

    def completed(dc: str) -> list[SimJob]:
        now = time.time()
        jobs = [j for j in state.reports[dc].values() if j.final(now)]
        return sorted(jobs, key=lambda j: j.completes_at)[:1000]

    async def reports(request: Request) -> Response:
        dc, err = fax4a_guard(request)
        if err:
            return err
        if dc in HA:
            dc = random.choice(HA[dc])
        now = time.time()
        if request.method == "GET":
            return JSONResponse({"reports": [j.report(now) for j in completed(dc)]})
        if request.method == "DELETE":
            out = []
            for j in completed(dc):
                del state.reports[dc][j.job_id]
                out.append({"jobId": j.job_id, "deleted": True})
            return JSONResponse({"reports": out})
        try:
            body = json.loads(await request.body())
            action = str(body["action"]).upper()  # "Both options are case insensitive"
            ids = body["jobIds"]
            assert action in ("GET", "DELETE") and isinstance(ids, list) and len(ids) <= 1000
        except (ValueError, KeyError, TypeError, AssertionError):
            return Response(status_code=400)
        if action == "GET":
            return JSONResponse({"reports": [state.reports[dc][i].report(now) for i in ids
                                             if i in state.reports[dc]]})
        out = []
        for i in ids:
            if i in state.reports[dc]:
                del state.reports[dc][i]
                out.append({"jobId": i, "deleted": True})
            else:
                out.append({"jobId": i, "deleted": False, "reason": "NOT_FOUND"})
        return JSONResponse({"reports": out})

    async def delete_report(request: Request) -> Response:
        dc, err = fax4a_guard(request)
        if err:
            return err
        job_id = request.path_params["job"]
        if dc in HA:
            dc = random.choice(HA[dc])
        if state.reports[dc].pop(job_id, None) is None:
            return Response(status_code=404)
        return JSONResponse({"jobId": job_id, "deleted": True})

    # ------------------------------------------------------------ Fax2WSPull
    def pull_guard(request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        try:
            user = base64.b64decode(header[6:]).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            user = ""
        if user != state.customer_number or not auth_ok(request, user, state.pull_password):
            return Response(status_code=401)
        return None

    async def topic(request: Request) -> Response:
        err = pull_guard(request)
        if err:
            return err
        name = request.path_params["topic"]
        q = request.query_params
        try:
            fetch = int(q.get("fetch", "10"))
            lock = float(q.get("timeout", state.lock_seconds))
            assert fetch >= 0
        except (ValueError, AssertionError):
            return Response(status_code=400)
        faxes = state.faxes.setdefault(name, [])
        # ids: comma-separated, URL-encoded (%2C decodes to ',' here) — docs/retarus-wire.md §3
        ack = {i for i in q.get("ids", "").split(",") if i}
        for fax in faxes:
            if fax.fax_id in ack:
                fax.acked = True
        now = time.time()
        batch = [f for f in faxes if not f.acked and f.locked_until <= now][:fetch]
        for f in batch:
            f.locked_until = now + lock
            f.offered += 1
        base = str(request.base_url).rstrip("/") + "/faxin/rest/v1"
        ids = ",".join(f.fax_id for f in batch)
        url = f"{base}/topics/{name}?"
        meta = {"topic": name, "count": len(batch),
                "next": url + urlencode({"fetch": fetch or 10, "ids": ids}),
                "exit": url + urlencode({"fetch": 0, "ids": ids})}
        results = [{"id": f.fax_id, **f.metadata,
                    "documents": [{"url": f"{base}/files/{n}"} for n, _, _ in f.files]}
                   for f in batch]
        return JSONResponse({"meta": meta, "results": results})

    async def file(request: Request) -> Response:
        err = pull_guard(request)
        if err:
            return err
        name = request.path_params["name"]
        for faxes in state.faxes.values():
            for fax in faxes:
                for fname, data, ctype in fax.files:
                    if fname == name:
                        return Response(data, media_type=ctype)
        return Response(status_code=404)

    # ------------------------------------------------------------ control API
    async def sim_jobs(request: Request) -> Response:
        now = time.time()
        return JSONResponse([{"jobId": j.job_id, "datacenter": j.dc, "via": j.via,
                              "received": j.received, "request": j.body,
                              "final": j.final(now), "report": j.report(now),
                              "pushes": j.pushes} for j in state.jobs])

    async def sim_inbound(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            name = body.get("topic", "demo")
            fax_id = str(body.get("id") or next(state._fax_seq))
            docs = body.get("documents") or [{"data": None, "extension": "pdf"}]
            files = []
            for n, d in enumerate(docs):
                ext = d.get("extension", "pdf")
                raw = base64.b64decode(d["data"]) if d.get("data") else tiny_pdf(
                    f"Simulated fax {fax_id}")
                fname = f"{fax_id}.{ext}" if n == 0 else f"{fax_id}-{n}.{ext}"
                ctype = {"pdf": "application/pdf", "tif": "image/tiff",
                         "tiff": "image/tiff"}.get(ext, "application/octet-stream")
                files.append((fname, raw, ctype))
            meta = body.get("metadata")
            if meta is None:  # invented field names, see README "Simulator"
                meta = {"callingNumber": "+4989123456", "calledNumber": "+4930999999",
                        "remoteCsid": "SIM FAX", "pages": len(files),
                        "receivedTs": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            return JSONResponse({"error": f"bad inbound request: {exc}"}, status_code=400)
        fax = SimFax(fax_id, name, time.time(), meta, files)
        state.faxes.setdefault(name, []).append(fax)
        return JSONResponse({"id": fax_id, "topic": name,
                             "files": [n for n, _, _ in files]}, status_code=201)

    async def sim_inbound_list(request: Request) -> Response:
        return JSONResponse([{"id": f.fax_id, "topic": f.topic, "acked": f.acked,
                              "offered": f.offered, "files": [n for n, _, _ in f.files]}
                             for faxes in state.faxes.values() for f in faxes])

    async def sim_faults(request: Request) -> Response:
        try:
            b = json.loads(await request.body())
            if b.get("clear"):
                state.faults = []
                return JSONResponse({"ok": True, "faults": 0})
            f = Fault(after=int(b.get("after", 0)), endpoint=b.get("endpoint", "any"), dc=b.get("dc"),
                      remaining=int(b.get("count", 1)), status=b.get("status"),
                      delay=float(b.get("delay", 0)), drop=bool(b.get("drop", False)),
                      retry_after=(str(b["retry_after"]) if b.get("retry_after") is not None
                                   else None))
            assert f.status or f.delay or f.drop, "give status, delay or drop"
        except (ValueError, TypeError, AssertionError) as exc:
            return JSONResponse({"error": f"bad fault: {exc}"}, status_code=400)
        state.faults.append(f)
        return JSONResponse({"ok": True, "faults": len(state.faults)})

    async def sim_outcomes(request: Request) -> Response:
        try:
            b = json.loads(await request.body())
            state.outcomes.insert(0, (str(b["pattern"]), str(b["status"]).upper(),
                                      b.get("reason")))
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad outcome: {exc}"}, status_code=400)
        return JSONResponse({"ok": True})

    async def sim_config(request: Request) -> Response:
        b = json.loads(await request.body() or b"{}")
        if "complete_after" in b:
            state.complete_after = float(b["complete_after"])
        if "lock_seconds" in b:
            state.lock_seconds = float(b["lock_seconds"])
        if "ha_route" in b:
            state.ha_route = dict(b["ha_route"])
        if "push_style" in b:
            state.push_style = b["push_style"]
        return JSONResponse({"complete_after": state.complete_after,
                             "lock_seconds": state.lock_seconds, "ha_route": state.ha_route,
                             "push_style": state.push_style})

    async def sim_reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    async def sim_calls(request: Request) -> Response:
        return JSONResponse(state.calls)

    prefix = "/fax4a/{dc}/rest/v1/{cust}"
    app = Starlette(routes=[
        Route(prefix + "/fax", send_fax, methods=["POST"]),
        Route(prefix + "/fax/reports", reports, methods=["GET", "POST", "DELETE"]),
        Route(prefix + "/fax/reports/{job}", get_report, methods=["GET"]),
        Route(prefix + "/fax/reports/{job}", delete_report, methods=["DELETE"]),
        Route("/faxin/rest/v1/topics/{topic}", topic, methods=["POST"]),
        Route("/faxin/rest/v1/files/{name}", file, methods=["GET"]),
        Route("/_sim/jobs", sim_jobs, methods=["GET"]),
        Route("/_sim/inbound", sim_inbound, methods=["POST"]),
        Route("/_sim/inbound", sim_inbound_list, methods=["GET"]),
        Route("/_sim/faults", sim_faults, methods=["POST"]),
        Route("/_sim/outcomes", sim_outcomes, methods=["POST"]),
        Route("/_sim/config", sim_config, methods=["POST"]),
        Route("/_sim/calls", sim_calls, methods=["GET"]),
        Route("/_sim/reset", sim_reset, methods=["POST"]),
    ])
    return FaultLayer(app, state)
