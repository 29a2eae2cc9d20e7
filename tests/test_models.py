"""The response models parse Retarus' own fixtures unchanged (tests/data/retarus)."""

from __future__ import annotations

import json

import pytest

from faxbridge.retarus.models import DeletionList, FaxJobResponse, FaxReport, ReportList
from tests.conftest import DATA

FIXTURES = DATA / "retarus"


def test_send_fax_response_fixture():
    raw = (FIXTURES / "java-fax_send_fax_response.json").read_bytes()
    assert FaxJobResponse.model_validate_json(raw).jobId == "FJLI3102O5BEPYOTB5LPC9"


def test_get_fax_reports_fixture():
    raw = (FIXTURES / "java-fax_get_fax_reports_response.json").read_bytes()
    reports = ReportList.model_validate_json(raw).reports
    assert len(reports) == 1
    rep = reports[0]
    assert rep.jobId == "FJLI3102O5BEPYOTB5LPC9" and rep.pages == 2 and rep.final
    rs = rep.recipientStatus[0]
    assert (rs.status, rs.reason, rs.durationInSecs, rs.sentToNumber) == (
        "REM_DIS", "simulated", 42, "004900000000")
    assert rs.alternativeNumbers is None and len(rs.properties or []) == 8
    assert rep.reference["billingCode"].endswith("_billingCode")


def test_delete_reports_fixture():
    raw = (FIXTURES / "java-fax_delete_reports_response.json").read_bytes()
    rep = DeletionList.model_validate_json(raw).reports[0]
    assert rep.deleted and rep.jobId == "FJLI3102O5BEPYOTB5LPC9" and rep.reason is None


def test_push_shapes_singular_plural_and_sentTS():
    plural = {"jobId": "FJ1", "faxRecipients": [{"number": "+49", "status": "OK",
                                                "reason": "OK", "sentTS": "2018-11-08T15:38:08Z",
                                                "durationInSecs": 26}], "pages": 1,
              "unknownField": {"x": 1}}
    singular = {"jobId": "FJ1", "faxRecipient": {"number": "+49", "status": "BUSY",
                                                  "sentTs": "2018-11-08T15:38:08Z"}}
    a = FaxReport.model_validate(plural)
    b = FaxReport.model_validate(singular)
    assert a.recipientStatus[0].sentTs == "2018-11-08T15:38:08Z"
    assert b.recipientStatus[0].status == "BUSY" and b.recipientStatus[0].sentTs
    assert FaxReport.model_validate_json(json.dumps(
        {"jobId": "FJ2", "recipientStatus": [{"status": "SOMETHING_NEW"}]})).final


def test_streamed_body_is_the_json_of_the_whole_request():
    """The body sent in base64 chunks is byte for byte a JSON document whose data
    fields decode to the documents; its announced length is its real length."""
    import asyncio
    import base64

    from faxbridge.outbound.request import submission_body
    from faxbridge.retarus.body import CHUNK

    skeleton = {"reference": {"customerDefinedId": "J1"},
                "recipients": [{"number": "+4989123456"}],
                # a header that imitates the placeholder cannot confuse the cut
                "renderingOptions": {"header": 'x "fb-data-0" \u00e4'}}
    docs = [("a.pdf", None, bytes(range(256)) * (CHUNK // 256 + 7)),
            ("b.txt", "UTF-8", "grüß".encode()), ("c.pdf", None, b"%PDF-1.4 12")]
    body = submission_body(skeleton, docs, "s3cret")
    whole = bytes(body)
    assert len(whole) == len(body)

    async def collect() -> bytes:
        return b"".join([c async for c in body])
    assert asyncio.run(collect()) == whole == asyncio.run(collect())  # iterable again
    parsed = json.loads(whole)
    assert [base64.b64decode(d["data"]) for d in parsed["documents"]] == \
        [d for _, _, d in docs]
    assert parsed["renderingOptions"]["header"] == 'x "fb-data-0" \u00e4'
    assert parsed["documents"][1]["charset"] == "UTF-8"


def test_streamed_body_validates_like_the_model():
    from pydantic import ValidationError

    from faxbridge.outbound.request import submission_body
    with pytest.raises(ValidationError):
        submission_body({"recipients": []}, [("a.pdf", None, b"x")])
    with pytest.raises(ValidationError):  # a document without data
        submission_body({"recipients": [{"number": "+4989123456"}]}, [("a.pdf", None, b"")])
