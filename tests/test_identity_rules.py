"""The pure parts of "identity, not claims": which rule a user goes by, which MAIL
FROM it may use and where its reports go, the rate limits one fax counts against,
the in-flight holds, and the config checks that name their key path."""

from __future__ import annotations

import pytest

from faxbridge.config import SenderRule, SmtpUser, parse
from faxbridge.errors import ConfigError
from faxbridge.intake import accept
from faxbridge.intake.rules import Who, find_rule, sender_login
from faxbridge.runtime.inflight import InFlight

HASH = "pbkdf2_sha256$1000$00$00"
RULES = (SenderRule(name="boss", match=("boss@example.com", "*@example.com")),
         SenderRule(name="berlin", match=("net:192.0.2.0/24",), allow=("+4930*",)),
         SenderRule(name="clerks", match=("user:clerk",)))
USERS = (SmtpUser(name="scanner", password_hash=HASH, addresses=("scanner@example.com",),
                  send_as=("*@copier.example",), rule="berlin"),
         SmtpUser(name="clerk", password_hash=HASH, addresses=("clerk@example.com",)),
         SmtpUser(name="bare", password_hash=HASH))


def test_the_user_decides_the_rule_not_mail_from():
    assert find_rule(RULES, Who("boss@example.com", "scanner"), USERS).name == "berlin"
    assert find_rule(RULES, Who("boss@example.com", "clerk"), USERS).name == "clerks"
    assert find_rule(RULES, Who("boss@example.com", "bare"), USERS) is None
    assert find_rule(RULES, Who("boss@example.com"), USERS).name == "boss"
    # user: patterns never match a client that did not authenticate
    assert find_rule(RULES[2:], Who("clerk@example.com"), USERS) is None


def test_sender_login():
    scanner = USERS[0]
    assert sender_login(scanner, "Scanner@Example.COM")[0] == "scanner@example.com"
    report, why = sender_login(scanner, "scan@copier.example")
    assert report == "scanner@example.com" and "send_as *@copier.example" in why
    report, why = sender_login(scanner, "boss@example.com")
    assert report is None and "not an address of user scanner" in why
    assert sender_login(USERS[2], "bare@example.com") == (
        None, "bare@example.com is not an address of user bare (it may use: "
              "none configured)")


def cfg():
    return parse({"smtp": {"users": [u.model_dump() for u in USERS]},
                  "senders": [r.model_dump() for r in RULES]})


def test_mail_decision_and_report_address():
    c = cfg()
    client = accept.Client("127.0.0.1", auth_user="scanner", tls=True)
    assert accept.mail(c, client, "boss@example.com").reply.startswith("553 5.7.1 ")
    own = accept.mail(c, client, "scanner@example.com")
    assert own.accepted and own.report_to is None
    other = accept.mail(c, client, "scan@copier.example")
    assert other.accepted and other.report_to == "scanner@example.com"
    # without AUTH, MAIL FROM is what it always was: no owner check
    assert accept.mail(c, accept.Client("127.0.0.1"), "boss@example.com").accepted
    # a user removed by a reload while its session was open
    gone = accept.mail(c, accept.Client("127.0.0.1", auth_user="ghost", tls=True), "a@example.com")
    assert gone.reply.startswith("553 5.7.1 <a@example.com>: Sender address rejected")


def test_rate_keys_and_limits():
    rule = SenderRule(name="r", match=("*",), max_per_hour=3, max_per_day=10)
    user = accept.MailState("scan@copier.example", accept.Client("10.0.0.9", auth_user="scanner"))
    assert accept.rate_keys(user, "+4930123") == (
        ("user", "scanner"), ("client", "10.0.0.9"), ("number", "+4930123"))
    anon = accept.MailState("Alice@Example.com", accept.Client("10.0.0.9"))
    assert accept.rate_keys(anon, "+4930123")[0] == ("sender", "alice@example.com")
    limits = accept.rate_limits(rule, user, "+4930123")
    assert [(lim.scope, lim.label, lim.limit) for lim in limits] == [
        ("user", "hour", 3), ("user", "day", 10), ("client", "hour", 3), ("client", "day", 10),
        ("number", "hour", 3), ("number", "day", 10)]
    only = rule.model_copy(update={"rate_limit_by": ("number",)})
    assert [lim.scope for lim in accept.rate_limits(only, user, "+4930123")] == ["number"] * 2


def test_inflight_holds_and_releases():
    f = InFlight()
    a, b = object(), object()
    f.hold(a, [("sender", "x"), ("number", "+1")])
    f.hold(a, [("sender", "x")])
    f.hold(b, [("sender", "x")])
    assert f.others(b, ("sender", "x")) == 2 and f.others(a, ("sender", "x")) == 1
    # a commit during a read: the reader learns of it; without a read nothing stays
    mark = f.begin_read([("sender", "x")])
    f.release(a, committed=True)
    assert f.end_read(mark) == {("sender", "x"): 2}
    assert f.others(b, ("sender", "x")) == 0 and f.holding() == 1
    f.release(b)
    assert f.holding() == 0 and f.end_read(f.begin_read([("sender", "x")])) == {
        ("sender", "x"): 0}


@pytest.mark.parametrize("users, senders, expected", [
    ([{"name": "s", "password_hash": HASH, "rule": "nope"}], [{"name": "a", "match": ["*"]}],
     "smtp.users[0].rule: no sender rule named 'nope' (senders: a)"),
    ([{"name": "s", "password_hash": HASH, "send_as": ["*@x.example"]}], [],
     "smtp.users[0]: send_as needs addresses"),
    ([{"name": "s", "password_hash": HASH, "addresses": ["*@x.example"]}], [],
     "smtp.users[0].addresses[0]: expected an address"),
    ([{"name": "s", "password_hash": HASH}, {"name": "s", "password_hash": HASH}], [],
     "smtp.users[1].name: duplicate user 's'"),
    ([], [{"name": "a", "match": ["*"], "refuse_number_types": ["premium"]}],
     "senders[0].refuse_number_types[0]: Input should be 'premium_rate'"),
    ([], [{"name": "a", "match": ["*"], "rate_limit_by": ["ip"]}],
     "senders[0].rate_limit_by[0]: Input should be 'sender', 'client' or 'number'"),
])
def test_config_errors_name_the_key(users, senders, expected):
    with pytest.raises(ConfigError) as exc:
        parse({"smtp": {"users": users}, "senders": senders})
    text = "\n".join(exc.value.problems)
    assert expected in text, text
