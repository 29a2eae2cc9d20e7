"""Retarus transmission status codes in plain words, with what to do
(docs.retarus.com "transmission status codes outbound fax", docs/retarus-wire.md §2.8).
Codes not listed are shown as they are: the enum is not published in full."""

from __future__ import annotations

EXPLAIN: dict[str, tuple[str, str]] = {
    "OK": ("Delivered: all pages were transmitted.", ""),
    "PENDING": ("Still being processed.", "Wait for the final report."),
    "BUSY": ("The line was busy on every attempt.",
             "Try again later, or check the number with the recipient."),
    "NOFAX": ("A person, answering machine or modem answered instead of a fax machine.",
              "Check that the number is a fax number."),
    "NOFAX_DIS": ("The remote side hung up before the fax handshake.",
                  "The fax machine may be faulty or switched off; try again later."),
    "NOFAX_TO": ("The call was answered but no fax signal came (timeout).",
                 "Check that the number is a fax number and the machine is on."),
    "RING_TO": ("Nobody answered: the line rang until the timeout.",
                "The fax machine may be off or out of paper; try again later."),
    "NOT_SENT": ("The fax was not sent: it never reached the fax service.",
                 "Send your mail again later, or ask your administrator."),
    "REFUSED": ("The fax service refused the job, so nothing was sent.",
                "Fix what the reason names (for example an attachment's name or type, or "
                "the number) and send your mail again; if it names nothing in your mail, "
                "ask your administrator."),
    "UNKNOWN": ("No final report arrived from the fax service.",
                "Ask your administrator whether the fax went out before sending it again."),
    "REM_DIS": ("The remote side disconnected during the transmission.",
                "Send the fax again; if it repeats, ask the recipient to check their machine."),
}


def explain(status: str | None) -> tuple[str, str]:
    if not status:
        return ("No status was reported.", "Ask your administrator (faxbridge jobs show).")
    return EXPLAIN.get(status.upper(), (f"Fax service status {status}.",
                                        "Ask your administrator about this code."))
