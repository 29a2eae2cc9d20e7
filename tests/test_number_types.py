"""Premium-rate, shared-cost and satellite numbers are refused by their number type
(libphonenumber's metadata, every country), configurable per rule; the prefix deny
patterns stay as extra rules.

The issue's observation: the default block was two prefixes (+49900*, +1900*), so
UK +44909…, Austria +43900…, France +33899…, Switzerland +41900…, German
0137/0180 and satellite numbers (+881, +870) were accepted and faxed."""

from __future__ import annotations

import pytest

from faxbridge.config import SenderRule
from faxbridge.intake.numbers import number_kind, parse_number
from faxbridge.intake.rules import destination_allowed
from tests.conftest import sim_jobs
from tests.smtp_async import send_one

# (recipient as written, the number as the reply shows it, its type)
REFUSED = [
    ("+449098790000", "+44 909 879 0000", "premium_rate", "a premium-rate number"),
    ("+43900123456", "+43 900 123456", "premium_rate", "a premium-rate number"),
    ("+33899123456", "+33 899 12 34 56", "premium_rate", "a premium-rate number"),
    ("+41900123456", "+41 900 123 456", "premium_rate", "a premium-rate number"),
    ("01377123456", "+49 137 7 123456", "premium_rate", "a premium-rate number"),
    ("01371234567", "+49 137 1 234567", "shared_cost", "a shared-cost number"),
    ("0180512345", "+49 180 5 12345", "shared_cost", "a shared-cost number"),
    ("+881612345678", "+881 6 123 45678", "satellite", "a satellite number"),
    ("+870773111111", "+870 773 111 111", "satellite", "a satellite number"),
    ("+88216123456789", "+882 16 1234 56789", "international_network",
     "a number of an international network"),
]


@pytest.mark.parametrize("local, pretty, kind, text", REFUSED)
def test_number_kind_from_metadata(local, pretty, kind, text):
    parsed = parse_number(local, "DE")
    assert parsed.ok and parsed.pretty == pretty, parsed
    assert parsed.kind == kind == number_kind(parsed.number)


def test_ordinary_numbers_are_typed_and_allowed():
    rule = SenderRule(name="r", match=("*",))
    for local, kind in (("+4989123456", "fixed_line"), ("+4915112345678", "mobile"),
                        ("+33123456789", "fixed_line")):
        parsed = parse_number(local, "DE")
        assert parsed.kind == kind
        assert destination_allowed(rule, parsed.number, parsed.kind)[0]
    assert number_kind("not a number") == "unknown"


def test_patterns_first_then_types_then_allow():
    rule = SenderRule(name="r", match=("*",), allow=("+49*",))
    assert destination_allowed(rule, "+499001234567", "premium_rate") == (
        False, "denied by pattern +49900*")
    assert destination_allowed(rule, "+4918012345", "shared_cost") == (
        False, "a shared-cost number (number type shared_cost is in refuse_number_types)")
    assert destination_allowed(rule, "+33123456789", "fixed_line") == (
        False, "matches none of the allowed patterns +49*")
    # a type refused by the rule wins over an allow pattern naming the number
    narrow = SenderRule(name="r", match=("*",), allow=("+4915*",),
                        refuse_number_types=("mobile",))
    assert not destination_allowed(narrow, "+4915112345678", "mobile")[0]


async def test_each_costly_number_is_refused_naming_its_type(make_bridge):
    bridge = await make_bridge()
    _, rcpts, data = await send_one(bridge.smtp_address, "alice@example.com",
                                    [f"{local}@fax.local" for local, *_ in REFUSED])
    assert rcpts == [f"550 5.7.1 Fax number {pretty} is blocked by rule 'loopback': {text} "
                     f"(number type {kind} is in refuse_number_types)"
                     for _, pretty, kind, text in REFUSED]
    assert data is None and bridge.store.list_jobs() == [] and await sim_jobs(
        bridge.sim_url) == []


async def test_refused_types_are_configured_per_rule(make_bridge):
    """A rule that refuses no types lets a French premium number through (its deny
    patterns still hold); one that refuses mobiles refuses a German mobile."""
    bridge = await make_bridge(senders=[
        {"name": "open", "match": ["open@example.com"], "refuse_number_types": []},
        {"name": "nomobile", "match": ["*"], "refuse_number_types": ["mobile"]},
    ])
    _, rcpts, data = await send_one(bridge.smtp_address, "open@example.com",
                                    ["+33899123456@fax.local", "+499001234567@fax.local"])
    assert rcpts[0] == "250 2.1.5 Fax number +33 899 12 34 56 OK"
    assert rcpts[1] == ("550 5.7.1 Fax number +49 900 1 234567 is blocked by rule 'open': "
                        "denied by pattern +49900*")
    assert data is not None and data.startswith("250")
    _, rcpts, _ = await send_one(bridge.smtp_address, "bob@example.com",
                                 ["+4915112345678@fax.local", "+33899123456@fax.local"])
    assert rcpts == [
        "550 5.7.1 Fax number +49 1511 2345678 is blocked by rule 'nomobile': a mobile number "
        "(number type mobile is in refuse_number_types)",
        "250 2.1.5 Fax number +33 899 12 34 56 OK"]
