"""The response models parse the real Retarus fixtures unchanged (WIRE.md §6)."""

from __future__ import annotations

import json

import pytest

from faxbridge.retarus.models import DeletionList, FaxJobResponse, FaxReport, ReportList
from tests.conftest import SHARED

FIXTURES = SHARED if SHARED.exists() else None
pytestmark = pytest.mark.skipif(FIXTURES is None, reason="shared/reference not beside the repo")


def test_send_fax_response_fixture():
    raw = (SHARED / "java-fax_send_fax_response.json").read_bytes()
    assert FaxJobResponse.model_validate_json(raw).jobId == "FJLI3102O5BEPYOTB5LPC9"


def test_get_fax_reports_fixture():
    raw = (SHARED / "java-fax_get_fax_reports_response.json").read_bytes()
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
    raw = (SHARED / "java-fax_delete_reports_response.json").read_bytes()
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
