"""What /readyz answers, computed once for the endpoint and the dashboard's health page,
so the page never tells a different story than the probe."""

from __future__ import annotations

from typing import Any

from faxbridge.runtime.db import Db
from faxbridge.runtime.health import Health


async def readiness(db: Db, health: Health) -> dict[str, Any]:
    """{"ready": bool, "checks": {...}} plus "reasons" (one line each) when not ready."""
    checks: dict[str, Any] = {}
    reasons: list[str] = []  # why not ready, one line each
    try:
        await db.run(db.store.writable)
        checks["store"] = "ok (writable)"
        # which database, its schema version (and, shared, this node and its peers)
        checks["database"] = await db.run(db.store.database)
    except Exception as exc:  # noqa: BLE001
        checks["store"] = f"error: {exc}"
        reasons.append(f"store: {exc}")
    checks["smtp"] = health.smtp_address or "not listening"
    if health.smtp_address is None:
        reasons.append("smtp: not listening")
    elif not health.accepting:
        reasons.append("smtp: shutting down")
    # The stages run in the workers process (the default of `serve`): whether it runs
    # and reports; its contacts, topics and mail problems come with its snapshots.
    if health.workers is not None:
        checks["workers"] = health.workers.describe()
        if problem := health.workers.problem():
            reasons.append(problem)
    checks["last_contact"] = health.contacts()
    topics = {}
    for name, st in health.all_topic_states().items():
        topics[name] = {"status": st.status, "last_poll": st.last_poll,
                        "last_success": st.last_success, "last_error": st.last_error,
                        "received": st.received}
        # A topic whose credentials are refused makes the bridge not ready: loudly.
        if st.status == "auth-refused":
            reasons.append(f"topic {name}: credentials refused: {st.last_error}")
    checks["topics"] = topics
    # Reports and received faxes that keep failing to be composed or delivered:
    # the bridge still accepts mail, but its users hear nothing back.
    mail, mail_reasons = health.metrics.mail_problems()
    checks["mail"] = mail or "ok"
    reasons += mail_reasons
    body: dict[str, Any] = {"ready": not reasons, "checks": checks}
    if reasons:
        body["reasons"] = reasons
    return body
