"""The Retarus status push body, XML or JSON, into one model (docs/retarus-wire.md §4).

Retarus posts the push by default in the shape of the SOAP getFaxReports answer: a
`faxJobReport` element in the namespace `http://retarus.com/fax4ba/faxws/3/0`, bare or
inside a SOAP `Envelope/Body`, with one `faxRecipient` / `document` element per item and
`sentTS`; on request it posts JSON instead (`faxRecipients` or `faxRecipient`, `sentTs`
or `sentTS`). Both become a FaxReport, the model the report poll yields, so the rest of
the bridge never knows which format arrived.

The XML comes from the network: it is parsed with defusedxml, which refuses DTDs,
entity declarations and external references, so neither a file read through an
external entity nor an entity-expansion bomb ("billion laughs") gets past the parser.
"""

from __future__ import annotations

from typing import Any, Literal
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from pydantic import ValidationError

from faxbridge.retarus.models import FaxReport

NS = "http://retarus.com/fax4ba/faxws/3/0"
SOAP_NAMESPACES = ("http://schemas.xmlsoap.org/soap/envelope/",  # SOAP 1.1
                   "http://www.w3.org/2003/05/soap-envelope")    # SOAP 1.2
# A push carries one job's report: a few kB even with hundreds of recipients. The cap
# keeps a hostile or broken sender from making the bridge buffer without end.
MAX_PUSH_BYTES = 1_000_000
XML_TYPES = ("text/xml", "application/xml", "application/soap+xml")
JSON_TYPES = ("application/json",)
# The FaxRecipientWithStatus fields kept from the XML (the rest, e.g. numId, is ignored
# by the model just as extra JSON keys are).
_RECIPIENT_FIELDS = ("number", "status", "reason", "sentTS", "sentTs", "durationInSecs",
                     "sentToNumber", "remoteCsid")


class PushError(Exception):
    """A push the receiver refuses: the HTTP status to answer and a reason for a human."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def push_format(content_type: str) -> Literal["xml", "json"]:
    """The format a Content-Type announces; anything else is refused with 415."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in XML_TYPES:
        return "xml"
    if media in JSON_TYPES:
        return "json"
    raise PushError(415, f"unsupported Content-Type {media or '(none)'!r}: a status push is "
                         f"XML ({', '.join(XML_TYPES)}) or JSON ({', '.join(JSON_TYPES)})")


def parse_push(body: bytes, content_type: str) -> FaxReport:
    """The report a push body carries. Raises PushError (415, 413 or 400) with the reason."""
    fmt = push_format(content_type)
    if len(body) > MAX_PUSH_BYTES:
        raise PushError(413, f"status push larger than {MAX_PUSH_BYTES} bytes")
    if fmt == "json":
        try:
            return FaxReport.model_validate_json(body)
        except ValidationError as exc:
            raise PushError(400, f"not a fax report: {_errors(exc)}") from exc
    return parse_xml(body)


def parse_xml(body: bytes) -> FaxReport:
    try:
        root = fromstring(body, forbid_dtd=True, forbid_entities=True,
                          forbid_external=True)
    except DefusedXmlException as exc:
        raise PushError(400, f"XML with a DTD, entities or external references is refused "
                             f"({type(exc).__name__})") from exc
    except ParseError as exc:
        raise PushError(400, f"malformed XML: {exc}") from exc
    report = _report_element(root)
    data: dict[str, Any] = {"jobId": _text(report, "jobId"), "pages": _text(report, "pages"),
                            "faxRecipient": [_recipient(r) for r in _children(report,
                                                                               "faxRecipient")]}
    if not data["jobId"]:
        raise PushError(400, "faxJobReport without jobId")
    if not data["faxRecipient"]:  # "Required: Yes" on the getFaxReports page
        raise PushError(400, "faxJobReport without faxRecipient")
    try:
        return FaxReport.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        raise PushError(400, f"not a fax report: {_errors(exc)}") from exc


def _local(el: Element) -> tuple[str, str]:
    """(namespace, local name) of an element."""
    tag = el.tag if isinstance(el.tag, str) else ""
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


def _report_element(root: Element) -> Element:
    ns, name = _local(root)
    if name == "Envelope" and ns in SOAP_NAMESPACES:
        body = next((c for c in root if _local(c) == (ns, "Body")), None)
        if body is None:
            raise PushError(400, "SOAP envelope without Body")
        # the report may sit directly in Body or in an operation wrapper
        # (getFaxReportsResponse); the first faxJobReport below Body is the push
        found = next((e for e in body.iter() if _local(e)[1] == "faxJobReport"), None)
        if found is None:
            raise PushError(400, "SOAP Body without faxJobReport")
        root, (ns, name) = found, _local(found)
    if name != "faxJobReport":
        raise PushError(400, f"root element {name!r} is not faxJobReport (or a SOAP Envelope)")
    if ns not in (NS, ""):
        raise PushError(400, f"faxJobReport in namespace {ns!r}, expected {NS!r}")
    return root


def _children(el: Element, name: str) -> list[Element]:
    # Child elements are matched by local name: a schema with unqualified elements
    # puts them in no namespace, a qualified one in Retarus' namespace.
    return [c for c in el if _local(c)[1] == name]


def _text(el: Element, name: str) -> str | None:
    found = _children(el, name)
    if not found:
        return None
    text = (found[0].text or "").strip()
    return text or None


def _recipient(el: Element) -> dict[str, Any]:
    return {f: v for f in _RECIPIENT_FIELDS if (v := _text(el, f)) is not None}


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(body)'}: {e['msg']}"
                     for e in exc.errors()[:3])
