"""The long-running workers of `faxbridge serve`."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from faxbridge.housekeeping import housekeeping
from faxbridge.inbound.deliver import Deliverer
from faxbridge.mail.worker import Mailer
from faxbridge.outbound.submit import Submitter
from faxbridge.outbound.track import ReportCleaner, Tracker

if TYPE_CHECKING:
    from faxbridge.app import Bridge


def workers_for(bridge: Bridge) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    return [("submit", Submitter(bridge).run()), ("track", Tracker(bridge).run()),
            ("mail", Mailer(bridge).run()), ("report-cleanup", ReportCleaner(bridge).run()),
            ("housekeeping", housekeeping(bridge)), ("deliver", Deliverer(bridge).run())]
