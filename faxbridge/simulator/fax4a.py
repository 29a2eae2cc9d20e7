"""The simulator's Fax4A REST v1: sending on the HA URLs and the data centers, status
reports (get one, list, bulk get/delete, delete one, delete the oldest) and the HTTP
status push when a job completes. Behaviour from the Retarus pages sendJobRequest,
getStatusReport, getAllStatusReports, bulkStatusReports, deleteOldestStatusReports
and Status push, as summarised in docs/retarus-wire.md §1.3, §2 and §4.

The send endpoint answers as sendJobRequest documents it: `200 {"jobId"}`, and
`400` / `401` with a JSON `{"code", "message"}` body. The report endpoints answer
errors with an empty body, as their pages document ("No Content").
Where docs/retarus-wire.md marks a behaviour unknown the simulator picks one of the
allowed answers: PENDING from the owning data center and 404 from the others (§2.2),
404 for deleting an unknown report (§2.5).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import xml.etree.ElementTree as ET
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from faxbridge.basic_auth import basic_ok
from faxbridge.simulator.state import DATACENTERS, HA, SimJob, SimState, new_job_id, sim_state
from faxbridge.simulator.validate import page_count, validate_job

log = logging.getLogger("faxbridge.simulator")

PREFIX = "/fax4a/{dc}/rest/v1/{cust}"


def error(code: int, message: str) -> JSONResponse:
    """sendJobRequest's documented error body: `{"code": <int>, "message": <string>}`."""
    return JSONResponse({"code": code, "message": message}, status_code=code)


def guard(request: Request, json_errors: bool = False) -> tuple[str, Response | None]:
    """The data center (or HA name) of the URL, and the refusal if the request has no
    business there: 404 for an unknown host, 401 for wrong credentials or customer.
    The 401 carries sendJobRequest's JSON body on the send endpoint (`json_errors`)
    and no body on the report endpoints, each as its page documents it."""
    state = sim_state(request)
    dc = request.path_params["dc"]
    if dc not in DATACENTERS and dc not in HA:
        return dc, Response(status_code=404)
    if not basic_ok(request.headers.get("authorization", ""), state.username, state.password) \
            or request.path_params["cust"] != state.customer_number:
        # the example message of sendJobRequest's 401
        return dc, error(401, "Authentication failed") if json_errors \
            else Response(status_code=401)
    return dc, None


def report_dc(dc: str) -> str:
    """Reports asked on an HA URL give "inconsistent" results: a random data center answers."""
    return random.choice(HA[dc]) if dc in HA else dc


PUSH_NS = "http://retarus.com/fax4ba/faxws/3/0"


def push_xml(job: SimJob, rep: dict[str, Any], push_opts: dict[str, Any]) -> bytes:
    """The push as Retarus posts it by default: the faxJobReport of the SOAP
    getFaxReports answer (the example of the HTTP status push page), one faxRecipient
    and one document element per item; reportMail only when the job asked for one."""
    ET.register_namespace("", PUSH_NS)

    def sub(parent: ET.Element, name: str, text: object = None) -> ET.Element:
        el = ET.SubElement(parent, f"{{{PUSH_NS}}}{name}")
        if text is not None:
            el.text = str(text).lower() if isinstance(text, bool) else str(text)
        return el

    root = ET.Element(f"{{{PUSH_NS}}}faxJobReport")
    sub(root, "jobId", rep["jobId"])
    mail = (job.body.get("statusReportOptions") or {}).get("reportMail")
    if mail:
        rm = sub(root, "reportMail")
        for key in ("successAddress", "failureAddress", "attachedFaxImageMode",
                    "attachedFaxImageFormat"):
            sub(rm, key, mail.get(key) or "")
    hp = sub(root, "httpStatusPush")
    sub(hp, "url", push_opts.get("targetUrl"))
    sub(hp, "authMethod", push_opts.get("authMethod", "NONE"))
    for i, r in enumerate(rep["recipientStatus"]):
        fr = sub(root, "faxRecipient")
        sub(fr, "number", r["number"])
        # the page's example carries a per-recipient id; ours is derived from the job id
        sub(fr, "numId", f"FN{job.job_id[2:20]}{i:02d}")
        for key, wire in (("status", "status"), ("reason", "reason"), ("sentTs", "sentTS"),
                          ("durationInSecs", "durationInSecs"),
                          ("sentToNumber", "sentToNumber"), ("remoteCsid", "remoteCsid")):
            if r.get(key) is not None:
                sub(fr, wire, r[key])
    for d in job.body.get("documents") or []:
        doc = sub(root, "document")
        sub(doc, "name", d.get("name", ""))
        sub(doc, "isText", str(d.get("name", "")).lower().endswith(".txt"))
    sub(root, "pages", rep["pages"])
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def push_json(rep: dict[str, Any], push_opts: dict[str, Any], style: str) -> dict[str, Any]:
    """The JSON push (on request at Retarus): the XML's fields under JSON names; the
    list is faxRecipients (REST page) or faxRecipient (push_style "singular")."""
    payload: dict[str, Any] = {"jobId": rep["jobId"], "pages": rep["pages"],
                               "httpStatusPush": {"url": push_opts.get("targetUrl"),
                                                  "authMethod": push_opts.get("authMethod",
                                                                              "NONE")}}
    recips = [{**r, "sentTS": r.get("sentTs")} for r in rep["recipientStatus"]]
    for r in recips:
        r.pop("sentTs", None)
    payload["faxRecipient" if style == "singular" else "faxRecipients"] = recips
    return payload


async def push(state: SimState, job: SimJob) -> None:
    """Post the job's final report to its httpStatusPush target once it completes, in
    the configured format (XML by default, as Retarus), authenticated as the job asked."""
    push_opts = ((job.body.get("statusReportOptions") or {}).get("httpStatusPush") or {})
    url = push_opts.get("targetUrl")
    delay = max(0.0, job.completes_at - time.time())
    await asyncio.sleep(delay)
    if not url:
        return
    rep = job.report(time.time())
    if state.push_format == "json":
        content = json.dumps(push_json(rep, push_opts, state.push_style)).encode()
        ctype = "application/json"
    else:
        content, ctype = push_xml(job, rep, push_opts), "text/xml; charset=utf-8"
    principal, secret = push_opts.get("principal") or "", push_opts.get("credentials") or ""
    method = push_opts.get("authMethod") or "NONE"
    client = state.push_client()
    for attempt in range(3):  # Retarus' retry policy is unknown (docs/retarus-wire.md §4)
        # a fault on the job's data center ("push" or "any") means that data
        # center is down: its push does not go out this time
        if state.take_fault("push", job.dc) is not None:
            job.pushes.append({"ts": time.time(), "error": "data center fault"})
            await asyncio.sleep(1.0 + attempt)
            continue
        # Digest: a fresh auth per attempt sends the first request without credentials,
        # answers the server's 401 challenge and sends again (RFC 7616). OAUTH2 would
        # need a token endpoint the job cannot name: sent without credentials.
        auth: httpx.Auth | None = None
        if method == "HTTP_BASIC":
            auth = httpx.BasicAuth(principal, secret)
        elif method == "HTTP_DIGEST":
            auth = httpx.DigestAuth(principal, secret)
        try:
            resp = await client.post(url, content=content, headers={"Content-Type": ctype},
                                     auth=auth)
            job.pushes.append({"ts": time.time(), "status": resp.status_code,
                               "format": state.push_format, "auth": method})
            if resp.status_code < 300 or 400 <= resp.status_code < 500:
                return
        except httpx.HTTPError as exc:
            job.pushes.append({"ts": time.time(), "error": str(exc)})
        except RuntimeError:  # the simulator is stopping and closed its client
            return
        await asyncio.sleep(1.0 + attempt)


async def send_fax(request: Request) -> Response:
    dc, err = guard(request, json_errors=True)
    if err:
        return err
    state = sim_state(request)
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError as exc:
        return error(400, f"unable to process JSON: {exc}")
    problems = validate_job(body)
    if problems:
        log.info("simulator rejects job: %s", "; ".join(problems))
        # The wording of the message is ours (the page documents only its presence).
        return error(400, "; ".join(problems)[:1000])
    target = state.pick_dc(dc) if dc in HA else dc
    now = time.time()
    job = SimJob(job_id=new_job_id(), dc=target, via=dc, body=body, received=now,
                 completes_at=now + state.complete_after,
                 outcomes=[state.outcome_for(r["number"]) for r in body["recipients"]],
                 pages=page_count(body))
    state.reports[target][job.job_id] = job
    state.jobs.append(job)
    # The app keeps the push tasks: the event loop holds only weak references to tasks.
    tasks: set[asyncio.Task[None]] = request.app.state.push_tasks
    task = asyncio.get_running_loop().create_task(push(state, job))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return JSONResponse({"jobId": job.job_id})  # 200, sendJobRequest's documented answer


async def get_report(request: Request) -> Response:
    dc, err = guard(request)
    if err:
        return err
    job = sim_state(request).reports[report_dc(dc)].get(request.path_params["job"])
    if job is None:
        return Response(status_code=404)
    return JSONResponse(job.report(time.time()))


async def reports(request: Request) -> Response:
    """GET lists, DELETE deletes the oldest, POST is the bulk get/delete by job ids."""
    dc, err = guard(request)
    if err:
        return err
    state = sim_state(request)
    dc = report_dc(dc)
    now = time.time()
    if request.method == "GET":
        return JSONResponse({"reports": [j.report(now) for j in state.completed(dc)]})
    if request.method == "DELETE":
        out = []
        for j in state.completed(dc):
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
    dc, err = guard(request)
    if err:
        return err
    job_id = request.path_params["job"]
    if sim_state(request).reports[report_dc(dc)].pop(job_id, None) is None:
        return Response(status_code=404)
    return JSONResponse({"jobId": job_id, "deleted": True})


# Order matters: Starlette answers 405 from the first route whose path matches.
ROUTES = [
    Route(PREFIX + "/fax", send_fax, methods=["POST"]),
    Route(PREFIX + "/fax/reports", reports, methods=["GET", "POST", "DELETE"]),
    Route(PREFIX + "/fax/reports/{job}", get_report, methods=["GET"]),
    Route(PREFIX + "/fax/reports/{job}", delete_report, methods=["DELETE"]),
]
