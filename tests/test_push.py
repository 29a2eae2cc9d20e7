"""The Retarus status push, end to end: the simulator pushes a job's outcome to a real
bridge in XML (Retarus' default) or JSON, with Basic or Digest auth as the job asked,
and the bridge's webhook refuses what it must (bad XML, hostile XML, too big, wrong
credentials, wrong Content-Type) without changing anything."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from faxbridge.retarus.push import MAX_PUSH_BYTES, PushError, parse_push
from tests.conftest import DATA, wait_for
from tests.smtp_client import send
from tests.test_reports import fax_mail, maildir, one_report

# The report poll waits an hour: only the push can finish a job within a test.
NO_POLL = {"report_poll_min_seconds": 3600, "report_poll_max_seconds": 3600}
EXAMPLE = (DATA / "retarus" / "status_push.xml").read_bytes()
EXAMPLE_SOAP = (DATA / "retarus" / "status_push_soap.xml").read_bytes()
EXAMPLE_JOB = b"FJIJPNJYN906EDIJNFGI5S"


async def sim_config(bridge, **settings) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{bridge.sim_url}/_sim/config", json=settings)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("fmt", ["xml", "json"])
@pytest.mark.parametrize("auth", ["basic", "digest"])
async def test_simulator_push_finishes_the_job(make_bridge, fmt, auth):
    bridge = await make_bridge(fax=NO_POLL, retarus={"push_auth": auth})
    if fmt == "json":
        await sim_config(bridge, push_format="json")
    t = await send(bridge.smtp_address, fax_mail())
    msg = await one_report(bridge)  # exactly one report mail
    assert msg["Subject"] == "Fax to +49 89 123456 delivered (1 page): Invoice 4711"
    job = bridge.store.job(t.job_id)
    assert job.state == "done"
    done = [e for e in bridge.store.job_events(t.job_id) if e.kind == "done"]
    assert len(done) == 1 and "(push)" in done[0].detail
    rec = bridge.store.job_recipients(t.job_id)[0]
    assert (rec.status, rec.sent_to_number) == ("OK", "004989123456") and rec.sent_ts
    sim = next(j for j in bridge.sim_state.jobs if j.job_id == job.retarus_job_id)
    method = {"basic": "HTTP_BASIC", "digest": "HTTP_DIGEST"}[auth]
    # the job asked for the configured method, and the push used it in the format set
    assert sim.body["statusReportOptions"]["httpStatusPush"]["authMethod"] == method
    assert [(p["status"], p["format"], p["auth"]) for p in sim.pushes] == [(200, fmt, method)]


@pytest.fixture
async def waiting(make_bridge) -> AsyncIterator:
    """A bridge with one submitted job whose outcome neither poll nor push will bring."""
    yield await _waiting(make_bridge, "basic")


async def _waiting(make_bridge, auth: str):
    bridge = await make_bridge(fax=NO_POLL, simulator={"complete_after": 3600},
                               retarus={"push_auth": auth})
    t = await send(bridge.smtp_address, fax_mail())
    job = await wait_for(lambda: (j := bridge.store.job(t.job_id)).state == "submitted" and j)
    bridge.job_id, bridge.retarus_id = t.job_id, job.retarus_job_id
    return bridge


def complete_at_retarus(bridge):
    """Make the waiting job's report final at the simulator now (its own push stays
    asleep until the configured hour has passed), and return the simulator's job."""
    sim = next(j for j in bridge.sim_state.jobs if j.job_id == bridge.retarus_id)
    sim.completes_at = time.time()
    return sim


def report_for(bridge, example: bytes = EXAMPLE) -> bytes:
    return example.replace(EXAMPLE_JOB, bridge.retarus_id.encode())


async def post(bridge, content, ctype: str = "text/xml", auth="right",
               headers: dict[str, str] | None = None) -> httpx.Response:
    """POST to the webhook; auth "right" is Basic with the right password, None none."""
    if auth == "right":
        auth = (bridge.cfg.retarus.push_username, bridge.push_secret)
    async with httpx.AsyncClient() as c:
        return await c.post(f"{bridge.http_server.url}/retarus/push", content=content,
                            auth=auth, headers={"Content-Type": ctype, **(headers or {})})


def unchanged(bridge) -> bool:
    """The waiting job is as submitted: no push event, no outcome, no mail."""
    kinds = [e.kind for e in bridge.store.job_events(bridge.job_id)]
    return (bridge.store.job(bridge.job_id).state == "submitted"
            and "push" not in kinds and "done" not in kinds
            and not bridge.store.list_mail() and not maildir(bridge))


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE faxJobReport [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE faxJobReport [<!ENTITY xxe SYSTEM "file:///etc/hostname">]>
"""


async def test_refused_bodies_change_nothing(waiting):
    bridge = waiting
    good = report_for(bridge)
    body = good.split(b"?>", 1)[1]  # without the XML declaration, for a DTD in front
    cases = [
        (good[: len(good) // 2], "text/xml", 400, "malformed XML"),
        (BILLION_LAUGHS + body.replace(b"<reason>OK</reason>", b"<reason>&lol4;</reason>"),
         "text/xml", 400, "DTD"),
        (EXTERNAL_ENTITY + body.replace(b"<reason>OK</reason>", b"<reason>&xxe;</reason>"),
         "application/xml", 400, "DTD"),
        (b"<faxJobReport xmlns='http://retarus.com/fax4ba/faxws/3/0'><jobId>"
         + bridge.retarus_id.encode() + b"</jobId></faxJobReport>",
         "text/xml", 400, "without faxRecipient"),
        (b"<faxJobReport xmlns='urn:other'><jobId>X</jobId></faxJobReport>", "text/xml", 400,
         "namespace"),
        (good.replace(b"</faxJobReport>", b"<!--" + b"x" * MAX_PUSH_BYTES + b"--></faxJobReport>"),
         "text/xml", 413, "larger than"),
        (good, "text/plain", 415, "Content-Type"),
        (good, "", 415, "Content-Type"),
        (b'{"jobId": ', "application/json", 400, "not a fax report"),
    ]
    for content, ctype, status, reason in cases:
        r = await post(bridge, content, ctype)
        assert r.status_code == status, (reason, r.text)
        assert reason in r.json()["error"], r.text
        assert unchanged(bridge), reason

    # too big without a Content-Length: the webhook stops reading at the limit
    async def chunks():
        for _ in range(MAX_PUSH_BYTES // 65536 + 2):
            yield b" " * 65536
    r = await post(bridge, chunks())
    assert r.status_code == 413 and unchanged(bridge)

    r = await post(bridge, good, auth=("retarus", "wrong"))
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic ")
    assert unchanged(bridge)

    # the Retarus example itself, with this job's id, is taken once the report at
    # Retarus is final; what is recorded is that report, not the push's copy of it
    sim = complete_at_retarus(bridge)
    r = await post(bridge, good, "text/xml; charset=UTF-8")
    assert r.status_code == 200 and r.json()["status"] == "recorded"
    assert bridge.store.job(bridge.job_id).state == "done"
    rec = bridge.store.job_recipients(bridge.job_id)[0]
    expected = sim.report(time.time())["recipientStatus"][0]
    assert (rec.status, rec.sent_ts, rec.remote_csid, rec.sent_to_number) == (
        "OK", expected["sentTs"], "+4989123456", "004989123456")
    # (the simulator never pushes this job: one_report's wait for its push does not apply)
    await wait_for(lambda: maildir(bridge))
    await wait_for(lambda: all(m.state != "queued" for m in bridge.store.list_mail()))
    assert len(maildir(bridge)) == 1


async def test_soap_wrapped_push_is_taken(waiting):
    complete_at_retarus(waiting)
    r = await post(waiting, report_for(waiting, EXAMPLE_SOAP), "application/soap+xml")
    assert r.status_code == 200 and r.json()["status"] == "recorded", r.text
    assert waiting.store.job(waiting.job_id).state == "done"


def test_xml_and_json_give_the_same_model():
    json_push = (b'{"jobId": "FJIJPNJYN906EDIJNFGI5S", "pages": 1, "faxRecipients": [{'
                 b'"number": "+498912504001710", "status": "OK", "reason": "OK",'
                 b'"sentTs": "2018-11-08T15:38:08Z", "durationInSecs": 26,'
                 b'"sentToNumber": "00498912504001710", "remoteCsid": "+49/89/1250400-1710"}]}')
    bare = parse_push(EXAMPLE, "text/xml")
    assert bare == parse_push(EXAMPLE_SOAP, "text/xml") == parse_push(json_push,
                                                                      "application/json")
    assert bare.final and bare.recipientStatus[0].durationInSecs == 26
    with pytest.raises(PushError) as exc:
        parse_push(EXAMPLE, "text/html")
    assert exc.value.status == 415


def digest_md5(challenge: str, user: str, password: str, uri: str) -> str:
    """An Authorization header answering an MD5 challenge, computed from RFC 7616 by hand
    (httpx picks the first, SHA-256, challenge)."""
    fields = dict(re.findall(r'(\w+)="?([^",]+)"?', challenge.removeprefix("Digest ")))
    assert fields["algorithm"] == "MD5" and fields["qop"] == "auth"

    def h(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    nc, cnonce = "00000001", "0a4f113b"
    ha1, ha2 = h(f"{user}:{fields['realm']}:{password}"), h(f"POST:{uri}")
    response = h(f"{ha1}:{fields['nonce']}:{nc}:{cnonce}:auth:{ha2}")
    return (f'Digest username="{user}", realm="{fields["realm"]}", nonce="{fields["nonce"]}", '
            f'uri="{uri}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}", '
            f'response="{response}", opaque="{fields["opaque"]}"')


async def test_digest_receiver(make_bridge):
    bridge = await _waiting(make_bridge, "digest")
    user, secret = bridge.cfg.retarus.push_username, bridge.push_secret
    good = report_for(bridge)
    # Basic with the right password is not what the job asked for
    r = await post(bridge, good, auth=(user, secret))
    assert r.status_code == 401 and unchanged(bridge)
    challenges = r.headers.get_list("www-authenticate")
    assert [c.split("algorithm=")[1].split(",")[0] for c in challenges] == ["SHA-256", "MD5"]
    assert all(c.startswith("Digest ") and 'qop="auth"' in c for c in challenges)
    r = await post(bridge, good, auth=httpx.DigestAuth(user, "wrong"))
    assert r.status_code == 401 and unchanged(bridge)
    # an MD5 answer to the challenge, but for another request-target
    r = await post(bridge, good, auth=None, headers={
        "Authorization": digest_md5(challenges[1], user, secret, "/elsewhere")})
    assert r.status_code == 401 and unchanged(bridge)
    complete_at_retarus(bridge)
    r = await post(bridge, good, auth=None, headers={
        "Authorization": digest_md5(challenges[1], user, secret, "/retarus/push")})
    assert r.status_code == 200 and r.json()["status"] == "recorded", r.text
    assert bridge.store.job(bridge.job_id).state == "done"
