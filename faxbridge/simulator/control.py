"""The simulator's control API under /_sim/ (no Retarus counterpart; README "The Retarus
simulator"): what jobs arrived, make inbound faxes arrive, inject faults, force
transmission outcomes, change settings, read the call log, reset everything.
Calls here bypass the fault layer and are not logged as Retarus calls.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from faxbridge.simulator.pdf import tiny_pdf
from faxbridge.simulator.state import Fault, SimFax, sim_state

CONTENT_TYPES = {"pdf": "application/pdf", "tif": "image/tiff", "tiff": "image/tiff"}


# Shown in place of a secret the job carries: the control API is for tests and
# scripts, and whoever reaches it must not learn the bridge's push password.
HIDDEN = "(hidden)"


def without_secrets(body: dict[str, Any]) -> dict[str, Any]:
    """A job request as received, with its status push credentials hidden (the
    only secret a sendJobRequest carries: statusReportOptions.httpStatusPush)."""
    options = body.get("statusReportOptions")
    push = options.get("httpStatusPush") if isinstance(options, dict) else None
    if not isinstance(push, dict) or "credentials" not in push:
        return body
    return {**body, "statusReportOptions": {
        **options, "httpStatusPush": {**push, "credentials": HIDDEN}}}


async def jobs(request: Request) -> Response:
    """Every job received, its request as sent but for the push credentials, and
    whether a data center still stores its report (false once the client deleted it)."""
    now = time.time()
    state = sim_state(request)
    return JSONResponse([{"jobId": j.job_id, "datacenter": j.dc, "via": j.via,
                          "received": j.received, "request": without_secrets(j.body),
                          "final": j.final(now), "report": j.report(now),
                          "report_stored": any(j.job_id in r for r in state.reports.values()),
                          "pushes": j.pushes} for j in state.jobs])


async def jobs_count(request: Request) -> Response:
    """How many jobs arrived, and under how many distinct customer references: a
    benchmark polls this while the bridge drains (the full list carries every
    document and is megabytes long)."""
    state = sim_state(request)
    refs = {(j.body.get("reference") or {}).get("customerDefinedId") for j in state.jobs}
    return JSONResponse({"jobs": len(state.jobs), "references": len(refs)})


async def inbound(request: Request) -> Response:
    """A fax arrives on a topic: given documents (base64) or a generated one-page PDF."""
    state = sim_state(request)
    try:
        body = json.loads(await request.body() or b"{}")
        name = body.get("topic", "demo")
        fax_id = str(body.get("id") or state.next_fax_id())
        docs = body.get("documents") or [{"data": None, "extension": "pdf"}]
        files = []
        for d in docs:
            ext = str(d.get("extension", "pdf")).lower()
            raw = base64.b64decode(d["data"]) if d.get("data") else tiny_pdf(
                f"Simulated fax {fax_id}")
            # A file is GET /files/{id}.{extension}, named by the fax's id: so a fax
            # has at most one document per extension (the same fax as PDF and TIFF).
            # GUESS: the pages show one document per fax; a second one is only ever
            # the same fax in another format here.
            fname = f"{fax_id}.{ext}"
            if any(f[0] == fname for f in files):
                raise ValueError(f"two documents with extension {ext!r}: a received fax "
                                 "has one document per format (<id>.<extension>)")
            files.append((fname, raw, CONTENT_TYPES.get(ext, "application/octet-stream")))
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


async def inbound_list(request: Request) -> Response:
    return JSONResponse([{"id": f.fax_id, "topic": f.topic, "acked": f.acked,
                          "offered": f.offered, "files": [n for n, _, _ in f.files]}
                         for faxes in sim_state(request).faxes.values() for f in faxes])


async def faults(request: Request) -> Response:
    """Add a fault (status, delay or drop; see app.FaultLayer), or {"clear": true}."""
    state = sim_state(request)
    try:
        b = json.loads(await request.body())
        if b.get("clear"):
            state.faults = []
            return JSONResponse({"ok": True, "faults": 0})
        f = Fault(after=int(b.get("after", 0)), endpoint=b.get("endpoint", "any"), dc=b.get("dc"),
                  remaining=int(b.get("count", 1)), status=b.get("status"),
                  delay=float(b.get("delay", 0)), drop=bool(b.get("drop", False)),
                  retry_after=(str(b["retry_after"]) if b.get("retry_after") is not None
                               else None),
                  body=b.get("body"))
        assert f.status or f.delay or f.drop, "give status, delay or drop"
    except (ValueError, TypeError, AssertionError) as exc:
        return JSONResponse({"error": f"bad fault: {exc}"}, status_code=400)
    state.faults.append(f)
    return JSONResponse({"ok": True, "faults": len(state.faults)})


async def outcomes(request: Request) -> Response:
    """Force a final status for numbers matching a glob; the newest rule wins."""
    try:
        b = json.loads(await request.body())
        sim_state(request).outcomes.insert(0, (str(b["pattern"]), str(b["status"]).upper(),
                                               b.get("reason")))
    except (ValueError, KeyError, TypeError) as exc:
        return JSONResponse({"error": f"bad outcome: {exc}"}, status_code=400)
    return JSONResponse({"ok": True})


async def config(request: Request) -> Response:
    state = sim_state(request)
    b = json.loads(await request.body() or b"{}")
    if "complete_after" in b:
        state.complete_after = float(b["complete_after"])
    if "lock_seconds" in b:
        state.lock_seconds = float(b["lock_seconds"])
    if "ha_route" in b:
        state.ha_route = dict(b["ha_route"])
    if "push_style" in b:
        state.push_style = b["push_style"]
    if "push_format" in b:
        if b["push_format"] not in ("xml", "json"):
            return JSONResponse({"error": "push_format: expected \"xml\" or \"json\""},
                                status_code=400)
        state.push_format = b["push_format"]
    return JSONResponse({"complete_after": state.complete_after,
                         "lock_seconds": state.lock_seconds, "ha_route": state.ha_route,
                         "push_style": state.push_style, "push_format": state.push_format})


async def reset(request: Request) -> Response:
    sim_state(request).reset()
    return JSONResponse({"ok": True})


async def calls(request: Request) -> Response:
    return JSONResponse(sim_state(request).calls)


ROUTES = [
    Route("/_sim/jobs", jobs, methods=["GET"]),
    Route("/_sim/jobs/count", jobs_count, methods=["GET"]),
    Route("/_sim/inbound", inbound, methods=["POST"]),
    Route("/_sim/inbound", inbound_list, methods=["GET"]),
    Route("/_sim/faults", faults, methods=["POST"]),
    Route("/_sim/outcomes", outcomes, methods=["POST"]),
    Route("/_sim/config", config, methods=["POST"]),
    Route("/_sim/calls", calls, methods=["GET"]),
    Route("/_sim/reset", reset, methods=["POST"]),
]
