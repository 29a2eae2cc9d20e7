"""The simulator against the Retarus pages, and the client against every variant the
pages allow (docs/retarus-wire.md "Conformance" names a test of this file per fact).

The simulator side is checked by an independent client: plain httpx calls whose
bodies are taken from the pages' examples (not built with faxbridge's models), so a
shape our own client and simulator merely agree on does not pass here.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from faxbridge.errors import AuthError, NotFound, Permanent, Transient
from faxbridge.retarus.pull import PullClient
from tests.conftest import wait_for

CUST = "99999TE"
AUTH = ("faxbridge", "simulator")
# sendJobRequest: the smallest body the official SDKs' live tests send
MINIMAL = {"recipients": [{"number": "+4989000000000"}],
           "documents": [{"name": "test.txt", "data": "dGVzdGZheAo="}]}
MINIMAL_BODY = json.dumps(MINIMAL).encode()  # what our client is given: a ready body


# The send page's example document name is 35 characters long, against the same
# page's rule "The maximum possible length of a file name is 32 characters". The rule
# is the explicit one and is kept; the example is sent with a name that follows it
# (test_page_example_name_breaks_the_pages_own_rule shows the conflict).
PAGE_EXAMPLE_NAME = "test-document-inline-byte-array.txt"


def full_example(push_url: str) -> dict[str, Any]:
    """Every field of the send page, with the page's own example values (the push
    target made a loopback URL: tests send traffic to 127.0.0.1 only; the document
    name shortened to the page's 32-character rule)."""
    return {
        "reference": {"customerDefinedId": "2022-04-7T11:04:37.057Z_customerDefinedId",
                      "billingCode": "2022-04-7T11:04:37.057Z_billingCode",
                      "billingInfo": "2022-04-7T11:04:37.057Z_billingInfo"},
        "recipients": [{"number": "0012012051598",
                        "properties": [{"key": "key123", "value": "value123"}]}],
        "documents": [{"name": "test-document-inline.txt", "charset": "UTF-8",
                       "data": "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0aW5nIGRvY3VtZW50IGJvZHkgY3Jl"
                               "YXRlZCBmb3IgOTk5OTlURQ=="}],
        "transportOptions": {"csid": "test-csid", "isExpress": False,
                             "isBlacklistEnabled": True},
        "renderingOptions": {
            "paperFormat": "A4", "resolution": "HIGH",
            "coverpageTemplate": "coverpage-default.ftl.html",
            "overlay": {"name": "LetterHead", "mode": "FIRST_PAGE"},
            "header": "%tz=CEST Testfax: CSID: %C Recipient number: %# Date: %d.%m.%Y "
                      "%H:%M %z"},
        "statusReportOptions": {
            "reportPurgeTs": "2022-11-03T20:14:37.098+02:00",
            "reportMail": {"successAddress": "john.doe@retarus.com",
                           "failureAddress": "jane.doe@retarus.com",
                           "attachedFaxImageMode": "SUCCESS_ONLY",
                           "attachedFaxImageFormat": "PDF"},
            "httpStatusPush": {"targetUrl": push_url, "principal": "none",
                               "credentials": "none", "authMethod": "HTTP_BASIC"}},
        "meta": {"jobValid": {"start": "2022-10-11T15:50:21.372Z", "end": "PT80M"}},
    }


def send_url(url: str, host: str = "ha-de", cust: str = CUST) -> str:
    return f"{url}/fax4a/{host}/rest/v1/{cust}/fax"


async def post_job(url: str, body: Any, auth: tuple[str, str] = AUTH) -> httpx.Response:
    async with httpx.AsyncClient(auth=auth) as c:
        return await c.post(send_url(url), json=body)


async def control(url: str, path: str, body: dict) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{url}/_sim/{path}", json=body)
        assert r.status_code == 200, r.text


def is_job_id(r: httpx.Response) -> bool:
    """sendJobRequest's "Response 200": application/json `{"jobId": <string>}`."""
    return (r.status_code == 200 and r.headers["content-type"].startswith("application/json")
            and set(r.json()) == {"jobId"} and isinstance(r.json()["jobId"], str))


def is_error(r: httpx.Response, code: int) -> bool:
    """sendJobRequest's "Response 400/401": application/json `{"code", "message"}`."""
    body = r.json()
    return (r.status_code == code and r.headers["content-type"].startswith("application/json")
            and body["code"] == code and isinstance(body["message"], str) and body["message"])


# ---------------------------------------------------------------- send: the simulator

async def test_page_minimal_body_is_accepted_with_200_job_id(sim):
    state, url = sim
    r = await post_job(url, MINIMAL)
    assert is_job_id(r), (r.status_code, r.text)
    assert [j.job_id for j in state.jobs] == [r.json()["jobId"]]


async def test_page_full_example_body_is_accepted(sim, refused_port):
    state, url = sim
    r = await post_job(url, full_example(f"http://127.0.0.1:{refused_port}/push"))
    assert is_job_id(r), (r.status_code, r.text)
    assert len(state.jobs) == 1


async def test_page_example_name_breaks_the_pages_own_rule(sim):
    """Known conflict on the send page: its example name is longer than its rule
    allows. The simulator follows the rule (32 characters) and says so."""
    _, url = sim
    assert len(PAGE_EXAMPLE_NAME) > 32
    r = await post_job(url, {**MINIMAL, "documents": [{"name": PAGE_EXAMPLE_NAME,
                                                        "data": "YQ=="}]})
    assert is_error(r, 400) and "at most 32 characters" in r.json()["message"]


@pytest.mark.parametrize("change", [
    {"documents": [{"name": "a.txt", "charset": "utf-8", "data": "YQ=="}]},
    {"documents": [{"name": "a.txt", "charset": "WINDOWS-1252", "data": "YQ=="}]},
    {"documents": [{"name": "a.txt", "charset": "iso-8859-1", "data": "YQ==",
                    "reference": None}]},
    {"renderingOptions": {"paperFormat": "LETTER"}},
    {"renderingOptions": {"paperFormat": None, "overlay": None}},  # the Java SDK's nulls
    {"meta": {"jobValid": {"start": "2024-05-01T08:00:00+02:00", "end": "P1DT2H"}}},
    {"meta": {"jobValid": {"start": None, "end": "2022-10-11T15:50:21.372Z"}}},
    {"meta": {"customerReference": "batch-7", "jobValid": {"end": "pt80m"}}},
    {"meta": {}},
    {"someFutureField": {"x": 1}},  # unknown fields: the pages say nothing, so tolerated
    {"recipients": [{"number": "+4989000000000", "alternativeNumbers": ["+4989000000001"]}]},
], ids=["charset utf-8", "charset WINDOWS-1252", "charset lower, null reference",
        "paper LETTER", "paperFormat null", "start with offset, end duration",
        "end date-time", "customerReference, lower-case duration", "empty meta",
        "unknown top-level field", "unknown nested field"])
async def test_what_the_pages_and_sdks_send_is_accepted(sim, change):
    _, url = sim
    r = await post_job(url, {**MINIMAL, **change})
    assert is_job_id(r), (r.status_code, r.text)


@pytest.mark.parametrize("change, named", [
    ({"renderingOptions": {"resolution": "HIGH"}}, "paperFormat is required"),
    ({"renderingOptions": {"paperFormat": "Letter"}}, "paperFormat"),
    ({"meta": {"jobValid": {"start": "2024-05-01T08:00:00"}}}, "Job Expiration error"),
    ({"meta": {"jobValid": {"end": "80 minutes"}}}, "Job Expiration error"),
    ({"meta": {"jobValid": {"end": "2024-13-45T08:00:00Z"}}}, "Job Expiration error"),
    ({"meta": {"jobValid": {"end": "P"}}}, "Job Expiration error"),
    ({"documents": [{"name": "my invoice.pdf", "data": "YQ=="}]}, "documents[0].name"),
    ({"documents": [{"name": "x" * 29 + ".pdf", "data": "YQ=="}]}, "documents[0].name"),
    ({"documents": [{"name": "a.txt", "charset": "latin1", "data": "YQ=="}]},
     "documents[0].charset"),
    ({"documents": [{"name": "a.pdf", "data": "not base64!"}]}, "base64"),
    ({"documents": []}, "no document and no cover page"),
    ({"recipients": []}, "recipients"),
    ({"transportOptions": {"csid": "x" * 21}}, "csid"),
    ({"reference": {"customerDefinedId": "x" * 257}}, "customerDefinedId"),
    ({"statusReportOptions": {"httpStatusPush": {"authMethod": "OAUTH"}}}, "targetUrl"),
], ids=["no paperFormat", "paperFormat Letter", "start without zone", "end free text",
        "end impossible date", "end empty duration", "name with space", "name 33 chars",
        "charset latin1", "data not base64", "nothing to send", "no recipient",
        "csid 21 chars", "customerDefinedId 257 chars", "push without targetUrl"])
async def test_documented_refusals_are_400_with_code_and_message(sim, change, named):
    state, url = sim
    r = await post_job(url, {**MINIMAL, **change})
    assert is_error(r, 400), (r.status_code, r.text)
    assert named in r.json()["message"]
    assert state.jobs == []


async def test_unreadable_json_is_400_with_code_and_message(sim):
    _, url = sim
    async with httpx.AsyncClient(auth=AUTH) as c:
        r = await c.post(send_url(url), content=b"{not json",
                         headers={"content-type": "application/json"})
    assert is_error(r, 400) and "JSON" in r.json()["message"]


async def test_send_401_is_json_authentication_failed(sim):
    _, url = sim
    for r in (await post_job(url, MINIMAL, auth=("faxbridge", "wrong")),
              await post_job(url, MINIMAL, auth=("nobody", "simulator"))):
        assert is_error(r, 401) and r.json()["message"] == "Authentication failed"
    async with httpx.AsyncClient(auth=AUTH) as c:  # another customer number
        r = await c.post(send_url(url, cust="12345"), json=MINIMAL)
    assert is_error(r, 401)


# ---------------------------------------------------------------- reports: the simulator

async def test_report_endpoints_answer_errors_with_empty_bodies(sim):
    _, url = sim
    base = f"{url}/fax4a/de1/rest/v1/{CUST}/fax/reports"
    async with httpx.AsyncClient(auth=("faxbridge", "wrong")) as c:
        for method, u in (("GET", base), ("GET", f"{base}/FJX"), ("DELETE", f"{base}/FJX"),
                          ("DELETE", base), ("POST", base)):
            r = await c.request(method, u, json={"action": "GET", "jobIds": []})
            assert (r.status_code, r.content) == (401, b""), (method, u)
    async with httpx.AsyncClient(auth=AUTH) as c:
        r = await c.get(f"{base}/FJNOSUCHJOB")
        assert (r.status_code, r.content) == (404, b"")
        r = await c.post(base, json={"action": "FETCH", "jobIds": []})
        assert (r.status_code, r.content) == (400, b"")


async def test_reports_answer_in_the_documented_shapes(sim):
    """getStatusReport: the report; getAllStatusReports: {"reports": [...]} (also when
    empty); bulk GET/DELETE (action case-insensitive); delete one; delete the oldest."""
    _, url = sim
    await control(url, "config", {"ha_route": {"ha-de": "de1"}})
    job_id = (await post_job(url, MINIMAL)).json()["jobId"]
    base = f"{url}/fax4a/de1/rest/v1/{CUST}/fax/reports"
    async with httpx.AsyncClient(auth=AUTH) as c:
        assert (await c.get(base)).json() == {"reports": []}  # in progress: not listed
        pending = (await c.get(f"{base}/{job_id}")).json()
        assert pending["jobId"] == job_id
        assert pending["recipientStatus"][0]["status"] == "PENDING"

        async def final() -> dict | None:
            rep = (await c.get(f"{base}/{job_id}")).json()
            return rep if rep["recipientStatus"][0]["status"] != "PENDING" else None
        rep = await wait_for(final)
        status = rep["recipientStatus"][0]
        assert status["number"] == "+4989000000000" and status["status"] == "OK"
        assert {"reason", "sentTs", "durationInSecs"} <= set(status)
        assert isinstance(rep["pages"], int)
        assert [r["jobId"] for r in (await c.get(base)).json()["reports"]] == [job_id]
        got = (await c.post(base, json={"action": "get", "jobIds": [job_id]})).json()
        assert [r["jobId"] for r in got["reports"]] == [job_id]
        gone = (await c.post(base, json={"action": "Delete",
                                         "jobIds": ["FJNOPE"]})).json()
        assert gone == {"reports": [{"jobId": "FJNOPE", "deleted": False,
                                     "reason": "NOT_FOUND"}]}
        assert (await c.delete(base)).json() == {"reports": [{"jobId": job_id,
                                                              "deleted": True}]}
        assert (await c.get(base)).json() == {"reports": []}
        second = (await post_job(url, MINIMAL)).json()["jobId"]
        one = await c.delete(f"{base}/{second}")
        assert one.json() == {"jobId": second, "deleted": True}


# ---------------------------------------------------------------- pull: the simulator

async def test_pull_answer_carries_only_documented_fields_and_id_named_files(sim):
    _, url = sim
    pdf, tif = b"%PDF-1.4 fax\n", b"II*\x00fax"
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{url}/_sim/inbound", json={"topic": "abc123", "documents": [
            {"data": base64.b64encode(pdf).decode(), "extension": "pdf"},
            {"data": base64.b64encode(tif).decode(), "extension": "tif"}]})
        fax_id = r.json()["id"]
        # a second document in the same format could not be named /files/<id>.<ext>
        dup = await c.post(f"{url}/_sim/inbound", json={"topic": "abc123", "documents": [
            {"extension": "pdf"}, {"extension": "pdf"}]})
        assert dup.status_code == 400 and "one document per format" in dup.text
    base = f"{url}/faxin/rest/v1"
    async with httpx.AsyncClient(auth=(CUST, "simulator")) as c:
        body = (await c.post(f"{base}/topics/abc123", params={"fetch": 10}, json={})).json()
        assert set(body) == {"meta", "results"}
        assert set(body["meta"]) == {"next", "exit"}  # no invented topic/count
        [fax] = body["results"]
        assert fax["id"] == fax_id
        urls = [d["url"] for d in fax["documents"]]
        assert urls == [f"{base}/files/{fax_id}.pdf", f"{base}/files/{fax_id}.tif"]
        assert [(await c.get(u)).content for u in urls] == [pdf, tif]
        # ids: "comma-separated and presented URL-encoded"; fetch=0 only acknowledges
        acked = await c.post(f"{base}/topics/abc123?fetch=0&ids={fax_id}%2CNOSUCH", json={})
        assert acked.json()["results"] == []
        after = await c.post(f"{base}/topics/abc123", params={"fetch": 10}, json={})
        assert after.json()["results"] == []


# ---------------------------------------------------------------- the client's side

async def test_client_accepts_200_and_201_on_send(sim, fax4a):
    """sendJobRequest lists both 200 and 201 for an accepted job."""
    state, url = sim
    job_id, _ = await fax4a.send(MINIMAL_BODY)
    assert job_id == state.jobs[0].job_id  # the simulator's documented 200
    await control(url, "faults", {"endpoint": "send", "count": 1, "status": 201,
                                  "body": {"jobId": "FJCREATED201"}})
    assert (await fax4a.send(MINIMAL_BODY))[0] == "FJCREATED201"


@pytest.mark.parametrize("status, body, kind, reason", [
    (400, {"code": 400, "message": "renderingOptions.paperFormat is required"}, Permanent,
     "renderingOptions.paperFormat is required"),
    (400, None, Permanent, None),
    (401, {"code": 401, "message": "Authentication failed"}, AuthError,
     "Authentication failed"),
    (401, None, AuthError, None),
    (409, None, Permanent, None),
    (429, None, Transient, None),
    (429, {"code": 429, "message": "too many requests"}, Transient, "too many requests"),
    (500, None, Transient, None),
    (500, {"code": 500, "message": "cannot apply transliteration"}, Transient,
     "cannot apply transliteration"),
    (520, None, Transient, None),
], ids=["400 json", "400 empty", "401 json", "401 empty", "409 empty", "429 empty",
        "429 json", "500 empty", "500 json", "520 empty"])
async def test_client_error_kinds_with_and_without_body(sim, fax4a, status, body, kind,
                                                        reason):
    """Permanent vs transient by status alone; Retarus' `message` kept when there is one."""
    _, url = sim
    await control(url, "faults", {"endpoint": "send", "count": 1, "status": status,
                                  **({"body": body} if body is not None else {})})
    with pytest.raises(kind) as exc:
        await fax4a.send(MINIMAL_BODY)
    assert exc.value.status == status and exc.value.reason == reason
    if kind is Permanent:
        assert not isinstance(exc.value, Transient | AuthError)
    if reason:
        assert reason in str(exc.value)


async def test_client_quotes_the_simulators_own_400_message(sim, fax4a):
    _, url = sim
    bad = json.dumps({**MINIMAL, "renderingOptions": {"resolution": "LOW"}}).encode()
    with pytest.raises(Permanent) as exc:
        await fax4a.send(bad)
    assert exc.value.status == 400 and "paperFormat is required" in exc.value.reason


async def test_client_takes_empty_list_as_json_or_404(sim, fax4a):
    """getAllStatusReports: an empty list may be {"reports": []} or a 404."""
    _, url = sim
    de1 = fax4a.ep.datacenter_urls[0]
    assert await fax4a.list_reports(de1) == []
    await control(url, "faults", {"endpoint": "list", "count": 1, "status": 404})
    assert await fax4a.list_reports(de1) == []


async def test_client_takes_pending_and_404_as_not_final(sim, fax4a):
    """getStatusReport of a job in progress: PENDING on its data center, 404 on the
    other; both only mean "not final yet"."""
    _, url = sim
    job_id, _ = await fax4a.send(MINIMAL_BODY)
    rep, dc = await fax4a.get_report(job_id)
    assert not rep.final and rep.recipientStatus[0].status == "PENDING"
    await control(url, "faults", {"endpoint": "report", "count": 2, "status": 404})
    with pytest.raises(NotFound):  # nobody has it (yet)
        await fax4a.get_report(job_id)


async def test_pull_client_acks_with_comma_separated_ids(sim):
    state, url = sim
    ids = []
    async with httpx.AsyncClient() as c:
        for _ in range(2):
            ids.append((await c.post(f"{url}/_sim/inbound", json={"topic": "t"})).json()["id"])
    pull = PullClient(f"{url}/faxin/rest/v1", CUST, "simulator")
    try:
        got = await pull.poll("t", fetch=10)
        assert sorted(f.id for f in got.results) == sorted(ids)
        await pull.poll("t", fetch=0, ack_ids=ids)
        assert all(f.acked for f in state.faxes["t"])
    finally:
        await pull.aclose()


@pytest.mark.parametrize("status", [400, 404])
async def test_client_takes_400_or_404_on_delete_as_not_found(sim, fax4a, status):
    """deleteStatusReport of an unknown job: 400 (SAP swagger) or 404 (the SDKs'
    handling), with or without a body; both mean "not here", on every data center."""
    state, url = sim
    await control(url, "faults", {"endpoint": "delete", "count": 2, "status": status})
    rep = await fax4a.delete_report("FJUNKNOWN")
    assert (rep.deleted, rep.reason) == (False, "NOT_FOUND")
    assert [c["dc"] for c in state.calls if c["endpoint"] == "delete"] == ["de1", "de2"]


def test_conformance_table_names_real_tests():
    """Each row of docs/retarus-wire.md "Conformance" has tests, and every test it
    names exists (a renamed or deleted test breaks the table here)."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    table = (root / "docs" / "retarus-wire.md").read_text().split("## Conformance", 1)[1]
    short = {"C": "test_conformance.py", "RC": "test_retarus_clients.py",
             "S": "test_submit.py", "R": "test_reports.py", "I": "test_inbound.py"}
    named = [(short[k], t) for k, t in re.findall(r"`(C|RC|S|R|I)::(\w+)`", table)]
    named += re.findall(r"`tests/(test_\w+\.py)::(test_\w+)`", table)
    defined: dict[str, set[str]] = {}
    for file, test in named:
        if file not in defined:
            tree = ast.parse((root / "tests" / file).read_text())
            defined[file] = {n.name for n in ast.walk(tree)
                             if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        assert test in defined[file], f"{file}::{test} is named but does not exist"
    rows = re.findall(r"^\| \d+ \|.*$", table, re.M)
    assert len(rows) >= 20
    assert all("::" in row for row in rows)
