"""Pydantic models of the Retarus wire (docs/retarus-wire.md §2–§4; Retarus sendJobRequest page).

Requests are strict: the documented limits are enforced before anything is sent.
Responses are tolerant: extra fields ignored, `status` an open string, nulls allowed.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# fax4a-send-fax.md `documents.name`: ≤ 32 chars of a-zA-Z0-9-_. ; extension decides the type.
DOC_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
Charset = Literal["US-ASCII", "UTF-8", "UTF-16", "UTF-16BE", "UTF-16LE", "ISO-8859-1",
                  "Windows-1252"]
OverlayMode = Literal["ALL_PAGES", "NO_OVERLAY", "FIRST_PAGE", "LAST_PAGE",
                      "ALL_BUT_FIRST_PAGE", "ALL_BUT_LAST_PAGE",
                      "ALL_BUT_FIRST_AND_LAST_PAGE", "FIRST_FILE"]


class Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reference(Req):
    customerDefinedId: str | None = Field(default=None, max_length=256)
    billingCode: str | None = Field(default=None, max_length=80)
    billingInfo: str | None = Field(default=None, max_length=80)


class Property(Req):
    key: str
    value: str


class Recipient(Req):
    number: str = Field(min_length=1)
    alternativeNumbers: list[str] | None = None
    properties: list[Property] | None = None


class Document(Req):
    name: str
    charset: Charset | None = None
    reference: str | None = None
    data: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not DOC_NAME_RE.match(v):
            raise ValueError("document name must be 1-32 characters of a-z A-Z 0-9 - _ . "
                             f"(got {v!r})")
        return v

    @model_validator(mode="after")
    def _content(self) -> Document:
        if not self.data and not self.reference:
            raise ValueError("a document needs data or reference")
        return self


class TransportOptions(Req):
    csid: str | None = Field(default=None, max_length=20)
    isExpress: bool | None = None
    isBlacklistEnabled: bool | None = None


class Overlay(Req):
    name: str
    mode: OverlayMode


class RenderingOptions(Req):
    paperFormat: Literal["A4", "LETTER"] | None = None
    resolution: Literal["HIGH", "LOW"] | None = None
    coverpageTemplate: str | None = None
    overlay: Overlay | None = None
    header: str | None = None


class ReportMail(Req):
    successAddress: str | None = None
    failureAddress: str | None = None
    attachedFaxImageMode: Literal["NEVER", "SUCCESS_ONLY", "FAILURE_ONLY", "ALWAYS"] | None = None
    attachedFaxImageFormat: Literal["TIFF", "PDF", "PDF_WITH_OCR"] | None = None


class HttpStatusPush(Req):
    targetUrl: str
    principal: str | None = None
    credentials: str | None = None
    authMethod: Literal["NONE", "HTTP_BASIC", "HTTP_DIGEST", "OAUTH2"] | None = None


class StatusReportOptions(Req):
    reportPurgeTs: str | None = None
    reportMail: ReportMail | None = None
    httpStatusPush: HttpStatusPush | None = None


class JobValid(Req):
    start: str | None = None
    end: str | None = None

    @field_validator("start")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        # send-a-fax-job-request: a start without time zone is rejected with 400.
        if v is not None and not re.search(r"(Z|[+-]\d\d:?\d\d)$", v):
            raise ValueError("jobValid.start must carry a time zone")
        return v


class Meta(Req):
    customerReference: str
    jobValid: JobValid | None = None


class FaxJobRequest(Req):
    reference: Reference | None = None
    recipients: list[Recipient] = Field(min_length=1)
    documents: list[Document] | None = None
    transportOptions: TransportOptions | None = None
    renderingOptions: RenderingOptions | None = None
    statusReportOptions: StatusReportOptions | None = None
    meta: Meta | None = None

    @model_validator(mode="after")
    def _something_to_send(self) -> FaxJobRequest:
        # fax4a definitions: "If there is no document data and no cover page, the
        # Webservice will not accept the job."
        has_cover = bool(self.renderingOptions and self.renderingOptions.coverpageTemplate)
        if not self.documents and not has_cover:
            raise ValueError("a job needs at least one document or a cover page")
        return self

    def wire(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


# ------------------------------------------------------------------ responses
class Resp(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FaxJobResponse(Resp):
    jobId: str


class RecipientStatus(Resp):
    number: str | None = None
    alternativeNumbers: list[str] | None = None
    properties: list[dict[str, Any]] | None = None
    status: str = "PENDING"  # open string: OK, PENDING, BUSY, NOFAX, … (docs/retarus-wire.md §2.8)
    reason: str | None = None
    sentTs: str | None = None
    durationInSecs: int | None = None
    sentToNumber: str | None = None
    remoteCsid: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        # Push payloads may say sentTS (the XML spelling, docs/retarus-wire.md §4).
        if isinstance(data, dict) and "sentTS" in data and "sentTs" not in data:
            data = {**data, "sentTs": data["sentTS"]}
        return data


class FaxReport(Resp):
    jobId: str
    recipientStatus: list[RecipientStatus] = []
    pages: int | None = None
    reference: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _push_shape(cls, data: Any) -> Any:
        # The status push (docs/retarus-wire.md §4) names the list faxRecipient or faxRecipients.
        if isinstance(data, dict) and "recipientStatus" not in data:
            for key in ("faxRecipients", "faxRecipient"):
                if key in data:
                    val = data[key]
                    data = {**data, "recipientStatus": val if isinstance(val, list) else [val]}
                    break
        return data

    @property
    def final(self) -> bool:
        return bool(self.recipientStatus) and all(
            r.status.upper() != "PENDING" for r in self.recipientStatus)


class ReportList(Resp):
    reports: list[FaxReport] = []


class DeletionReport(Resp):
    jobId: str
    deleted: bool = False
    reason: str | None = None


class DeletionList(Resp):
    reports: list[DeletionReport] = []


# Fax2WSPull (docs/retarus-wire.md §3): only next/exit, id and documents[].url are known;
# everything else is kept as free metadata.
class PullDocument(Resp):
    model_config = ConfigDict(extra="allow")
    url: str


class PullFax(Resp):
    model_config = ConfigDict(extra="allow")
    id: str
    documents: list[PullDocument] = []

    def metadata(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if k not in ("documents",)}


class PullMeta(Resp):
    model_config = ConfigDict(extra="allow")
    next: str | None = None
    exit: str | None = None


class PullResponse(Resp):
    meta: PullMeta = PullMeta()
    results: list[PullFax] = []
