"""Fax4A and Fax2WSPull clients against the simulator over real HTTP."""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from faxbridge.errors import AuthError, NotFound, Permanent, Transient
from faxbridge.outbound.request import submission_body
from faxbridge.retarus.fax4a import Fax4AClient, Fax4AEndpoints, make_client
from faxbridge.retarus.models import FaxJobRequest
from faxbridge.retarus.pull import PullClient
from tests.conftest import wait_for

PDF = b"%PDF-1.4\n1 0 obj<</Type /Page>>endobj\n2 0 obj<</Type /Page>>endobj\n%%EOF\n"


def job(number: str = "+4989123456", ref: str | None = "FB-1") -> FaxJobRequest:
    return FaxJobRequest.model_validate({
        "reference": {"customerDefinedId": ref} if ref else None,
        "recipients": [{"number": number}],
        "documents": [{"name": "doc.pdf", "data": base64.b64encode(PDF).decode()}],
    })


def final_report(fax4a: Fax4AClient, job_id: str):
    """For wait_for: (report, data center) once the report is final, else None."""
    async def check():
        rep, dc = await fax4a.get_report(job_id)
        return (rep, dc) if rep.final else None
    return check


async def control(url: str, path: str, body: dict) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{url}/_sim/{path}", json=body)
        assert r.status_code == 200, r.text


async def test_send_report_pending_then_final_on_exactly_one_dc(sim, fax4a):
    _, url = sim
    job_id, base = await fax4a.send(job())
    assert job_id.startswith("FJ") and base.endswith("/ha-de/rest/v1")
    rep, dc = await fax4a.get_report(job_id)
    assert rep.recipientStatus[0].status == "PENDING" and not rep.final
    # exactly one data center has it: the other answers 404
    async with httpx.AsyncClient(auth=("faxbridge", "simulator")) as c:
        codes = sorted([(await c.get(f"{u}/99999TE/fax/reports/{job_id}")).status_code
                        for u in fax4a.ep.datacenter_urls])
    assert codes == [200, 404]
    # the simulator completes it after complete_after (0.3 s)
    rep2, dc2 = await wait_for(final_report(fax4a, job_id))
    assert dc2 == dc and rep2.final
    assert rep2.recipientStatus[0].status == "OK" and rep2.pages == 2
    assert rep2.reference == {"customerDefinedId": "FB-1"}


async def test_report_found_only_on_second_datacenter(sim, fax4a):
    state, url = sim
    await control(url, "config", {"ha_route": {"ha-de": "de2"}})
    job_id, _ = await fax4a.send(job())
    rep, dc = await fax4a.get_report(job_id)
    assert dc.endswith("/de2/rest/v1") and rep.jobId == job_id
    assert [c["dc"] for c in state.calls if c["endpoint"] == "report"] == ["de1", "de2"]


async def test_unknown_report_is_not_found(fax4a):
    with pytest.raises(NotFound):
        await fax4a.get_report("FJUNKNOWN")


async def test_outcome_busy(sim, fax4a):
    _, url = sim
    await control(url, "outcomes", {"pattern": "+4930*", "status": "BUSY"})
    job_id, _ = await fax4a.send(job("+4930123456"))
    rep, _ = await wait_for(final_report(fax4a, job_id))
    assert rep.recipientStatus[0].status == "BUSY" and rep.pages == 0


async def test_failover_when_ha_refuses_connections(sim, refused_port):
    _, url = sim
    dead = f"http://127.0.0.1:{refused_port}/rest/v1"
    async with make_client("faxbridge", "simulator", 5.0) as http:
        client = Fax4AClient(Fax4AEndpoints("99999TE", dead, (f"{url}/fax4a/de1/rest/v1",
                                                             f"{url}/fax4a/de2/rest/v1")), http)
        job_id, base = await client.send(job())
        assert base.endswith("/de1/rest/v1")
        rep, dc = await client.get_report(job_id)
        assert dc == base


async def test_failover_when_ha_answers_503(sim, fax4a):
    state, url = sim
    await control(url, "faults", {"endpoint": "send", "dc": "ha-de", "count": 1, "status": 503})
    job_id, base = await fax4a.send(job())
    assert base.endswith("/de1/rest/v1")
    assert [c["dc"] for c in state.calls if c["endpoint"] == "send"] == ["ha-de", "de1"]


async def test_500_on_send_is_transient_and_not_failed_over(sim, fax4a):
    state, url = sim
    await control(url, "faults", {"endpoint": "send", "count": 1, "status": 520})
    with pytest.raises(Transient) as exc:
        await fax4a.send(job())
    assert exc.value.status == 520
    assert len(state.jobs) == 0


async def test_dropped_connection_is_transient(sim, fax4a):
    _, url = sim
    await control(url, "faults", {"endpoint": "report", "count": 2, "drop": True})
    job_id, _ = await fax4a.send(job())
    with pytest.raises(Transient):
        await fax4a.get_report(job_id)


async def test_wrong_password_is_auth_error(sim):
    _, url = sim
    async with make_client("faxbridge", "wrong", 5.0) as http:
        client = Fax4AClient(Fax4AEndpoints("99999TE", f"{url}/fax4a/ha-de/rest/v1",
                                            (f"{url}/fax4a/de1/rest/v1",)), http)
        with pytest.raises(AuthError) as exc:
            await client.send(job())
        assert exc.value.status == 401


async def test_invalid_document_name_gets_400(sim, fax4a):
    state, _ = sim
    bad = job()
    bad.documents[0].name = "my invoice (final).pdf"  # assignment skips validation
    with pytest.raises(Permanent) as exc:
        await fax4a.send(bad)
    assert exc.value.status == 400 and not state.jobs


GOOD = {"recipients": [{"number": "+4989123456"}]}
ONE_PDF = [("a.pdf", None, PDF)]


@pytest.mark.parametrize("skeleton, documents, why", [
    (GOOD, [("x" * 33 + ".pdf", None, PDF)], r"documents\.0\.name\n.*1-32 characters"),
    (GOOD, [("a.txt", "latin1", b"hello")], r"documents\.0\.charset"),
    (GOOD, [], "document or a cover page"),
    ({"recipients": []}, ONE_PDF, "recipients"),
    ({**GOOD, "transportOptions": {"csid": "x" * 21}}, ONE_PDF, r"transportOptions\.csid"),
], ids=["long document name", "unknown charset", "nothing to send", "no recipient",
        "long csid"])
async def test_client_refuses_invalid_requests_before_sending(sim, fax4a, skeleton, documents,
                                                              why):
    """The request is validated as it is built, both ways the client is given one (the
    streamed body the submit worker uses, and the model): an invalid one never reaches
    the wire, while the same request made valid does."""
    state, _ = sim
    with pytest.raises(ValueError, match=why):
        await fax4a.send(submission_body(skeleton, documents))
    with pytest.raises(ValueError, match=why):
        await fax4a.send(FaxJobRequest.model_validate(
            {**skeleton, "documents": [{"name": n, "charset": c,
                                        "data": base64.b64encode(d).decode()}
                                       for n, c, d in documents]}))
    assert state.calls == [] and state.jobs == []
    await fax4a.send(submission_body(GOOD, ONE_PDF))  # the control: this one is sent
    assert [c["endpoint"] for c in state.calls] == ["send"] and len(state.jobs) == 1


async def test_list_bulk_delete_and_delete_oldest(sim, fax4a):
    _, url = sim
    await control(url, "config", {"ha_route": {"ha-de": "de1"}})
    ids = [(await fax4a.send(job(ref=f"FB-{i}")))[0] for i in range(5)]
    de1 = fax4a.ep.datacenter_urls[0]
    assert await fax4a.list_reports(de1) == []  # not completed yet: not listed
    for job_id in ids:  # completed after complete_after (0.3 s)
        await wait_for(final_report(fax4a, job_id))
    listed = await fax4a.list_all_reports()
    assert sorted(r.jobId for r, _ in listed) == sorted(ids)
    got = await fax4a.bulk("get", ids[:2] + ["FJNOPE"], de1)
    assert sorted(r.jobId for r in got) == sorted(ids[:2])
    deleted = await fax4a.bulk("DELETE", [ids[0], "FJNOPE"], de1)
    assert [(d.jobId, d.deleted, d.reason) for d in deleted] == [
        (ids[0], True, None), ("FJNOPE", False, "NOT_FOUND")]
    one = await fax4a.delete_report(ids[1])
    assert one.deleted and one.jobId == ids[1]
    again = await fax4a.delete_report(ids[1])
    assert not again.deleted and again.reason == "NOT_FOUND"
    # delete-oldest is the simulator's (the client does not use it): reports of the
    # jobs not deleted yet, in the documented shape
    async with httpx.AsyncClient(auth=("faxbridge", "simulator")) as c:
        resp = await c.delete(f"{de1}/99999TE/fax/reports")
    assert resp.status_code == 200
    assert sorted((d["jobId"], d["deleted"]) for d in resp.json()["reports"]) == sorted(
        (i, True) for i in ids[2:])
    assert await fax4a.list_reports(de1) == []


async def test_bulk_is_chunked_to_1000(sim, fax4a):
    state, _ = sim
    out = await fax4a.bulk("GET", [f"FJX{i}" for i in range(2500)], fax4a.ep.datacenter_urls[0])
    assert out == []
    assert len([c for c in state.calls if c["endpoint"] == "bulk"]) == 3


# ---------------------------------------------------------------- Fax2WSPull
async def inject(url: str, topic: str = "demo", **kw) -> str:
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{url}/_sim/inbound", json={"topic": topic, **kw})
        assert r.status_code == 201
        return r.json()["id"]


async def offered(pull: PullClient, topic: str):
    """For wait_for: a poll's response if it offered something, else None."""
    r = await pull.poll(topic, fetch=5)
    return r if r.results else None


def unlocked(fax) -> bool:  # noqa: ANN001 - the simulator's SimFax
    """The simulator's lock on `fax` has run out: unacked, it would be offered again."""
    return fax.locked_until <= time.time()


async def test_pull_lock_reoffer_and_ack_via_next(sim):
    state, url = sim
    a = await inject(url)
    b = await inject(url)
    pull = PullClient(f"{url}/faxin/rest/v1", "99999TE", "simulator")
    try:
        first = await pull.poll("demo", fetch=1)
        assert [f.id for f in first.results] == [a]
        # locked: a second fetch does not see it
        second = await pull.poll("demo", fetch=10)
        assert [f.id for f in second.results] == [b]
        # the next URL of the first response acks `a` and fetches what is unlocked
        third = await pull.follow(first.meta.next)
        assert third.results == []  # b is still locked (60 s)
        assert [(f.fax_id, f.acked) for f in state.faxes["demo"]] == [(a, True), (b, False)]
        # the locks run out (the test's Retarus lets them): b comes back, a never does
        for fax in state.faxes["demo"]:
            fax.locked_until = 0.0
        again = await pull.poll("demo", fetch=10)
        assert [f.id for f in again.results] == [b]
    finally:
        await pull.aclose()


async def test_pull_reoffer_after_lock_and_ack_via_exit(sim):
    state, url = sim
    state.lock_seconds = 0.2
    fid = await inject(url, documents=[{"data": base64.b64encode(PDF).decode(),
                                        "extension": "pdf"}])
    pull = PullClient(f"{url}/faxin/rest/v1", "99999TE", "simulator")
    try:
        r1 = await pull.poll("demo", fetch=5)
        assert [f.id for f in r1.results] == [fid]
        data, ctype = await pull.download(r1.results[0].documents[0].url)
        assert data == PDF and ctype == "application/pdf"
        # not acknowledged: offered again once the lock runs out (polls in between find
        # nothing and lock nothing)
        r2 = await wait_for(lambda: offered(pull, "demo"))
        assert [f.id for f in r2.results] == [fid]
        await pull.follow(r2.meta.exit, "exit")  # ack only
        assert state.faxes["demo"][0].acked
        await wait_for(lambda: unlocked(state.faxes["demo"][0]))
        r3 = await pull.poll("demo", fetch=5)
        assert r3.results == []  # acknowledged faxes never return, even unlocked
    finally:
        await pull.aclose()


async def test_pull_ack_with_ids_parameter_and_wrong_password(sim):
    state, url = sim
    state.lock_seconds = 0.1
    fid = await inject(url, topic="t2")
    pull = PullClient(f"{url}/faxin/rest/v1", "99999TE", "simulator")
    bad = PullClient(f"{url}/faxin/rest/v1", "99999TE", "nope")
    try:
        with pytest.raises(AuthError):
            await bad.poll("t2", fetch=1)
        r = await pull.poll("t2", fetch=1)
        assert r.results[0].id == fid
        await pull.poll("t2", fetch=0, ack_ids=[fid])
        assert state.faxes["t2"][0].acked
        await wait_for(lambda: unlocked(state.faxes["t2"][0]))
        assert (await pull.poll("t2", fetch=1)).results == []  # acked: never again
        with pytest.raises(NotFound):
            await pull.download(f"{url}/faxin/rest/v1/files/nope.pdf")
    finally:
        await pull.aclose()
        await bad.aclose()
