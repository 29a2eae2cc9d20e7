"""A short run of the intake fuzzer (bench/fuzz.py runs 10,000 mails by hand): 150
generated malformed mails against a real bridge, with no crash, no traceback in any
log record, and no 250 without a job and an SMTP log record."""

from __future__ import annotations

from bench.fuzz import KINDS, run


async def test_malformed_mails_never_crash_or_trace(make_bridge):
    bridge = await make_bridge()
    res = await run(bridge, 150, seed=15, workers=3)
    print(res.table())
    assert set(res.sent) == set(KINDS)  # every kind of damage was tried
    assert not res.crashes, res.crashes[:5]
    assert not res.tracebacks, res.tracebacks[:5]
    assert not res.unbacked, res.unbacked[:5]
    assert res.healthy
    # both outcomes occur: the fuzzer is not only feeding mails refused up front
    codes = {code for _, code in res.replies}
    assert 250 in codes and 554 in codes, res.replies
