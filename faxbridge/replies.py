"""The one table of SMTP replies. Enhanced status codes per RFC 3463; texts are
written for the person whose mail client shows them in a bounce."""

from __future__ import annotations

S250_QUEUED = "250 2.0.0 Queued as {job_id}: fax to {numbers}"
S250_SENDER_OK = "250 2.1.0 Sender OK"
S250_RCPT_OK = "250 2.1.5 Fax number {number} OK"
S250_PROBE_OK = "250 2.1.5 Fax number {number} OK (verification only: mail from this sender is not faxed)"
_RATE = ("4.7.1 Rate limit of rule '{rule}' reached ({count} faxes in the last {window}) "
         "{scope} (max_per_{window} {limit}); ")
# 450: earlier mails used the limit up; 452: this mail's own recipients did (RFC 5321
# §4.5.3.1.10: the client sends the recipients refused with 452 in a later mail)
S450_RATE = "450 " + _RATE + "try again later"
S452_RATE = "452 " + _RATE + "send to the other recipients later"
S451_STORE = "451 4.3.0 Temporary failure storing your fax; nothing was queued, try again later"
# an unexpected error at end of DATA: no internal details go to the client
S451_INTERNAL = "451 4.3.0 Local error while processing your fax; nothing was queued, try again later"
S452_TOO_MANY = "452 4.5.3 Too many recipients (at most {limit} per mail)"
S503_NEED_RCPT = "503 5.5.1 No valid fax recipient; nothing to send"
S501_DATA_ARG = "501 5.5.4 Syntax: DATA takes no argument"
S552_TOO_BIG = "552 5.3.4 Message too big: this server takes at most {limit} bytes"
S500_LINE_TOO_LONG = ("500 5.5.2 Line too long: lines may have at most 1000 characters "
                      "(RFC 5321 section 4.5.3.1.6)")
S421_AUTH_FAILURES = "421 4.7.0 Too many failed authentication attempts"
S554_BARE_NEWLINE = ("554 5.5.2 Bare <LF> or <CR> received; lines must end with CRLF "
                     "(RFC 5321 section 2.3.8)")
S530_AUTH = ("530 5.7.0 Authentication required: your network ({peer}) may only send faxes "
             "after SMTP AUTH")
S550_RELAY = ("550 5.7.1 Relaying denied: {domain} is not a fax domain of this server "
              "(fax domains: {domains})")
S550_NULL_SENDER = ("550 5.7.1 The null sender <> cannot send faxes (mail from <> and "
                    "verification probes are checked up to RCPT only)")
S550_SENDER = "550 5.7.1 Sender {sender} is not allowed to send faxes (no sender rule matches)"
S553_SENDER_LOGIN = ("553 5.7.1 <{sender}>: Sender address rejected: not owned by user {user} "
                     "(smtp.users addresses / send_as)")
S550_USER_NO_RULE = ("550 5.7.1 User {user} is not allowed to send faxes (no sender rule for "
                     "this user: smtp.users rule, or 'user:{user}' in a rule's match)")
S550_DEST = "550 5.7.1 Fax number {number} is blocked by rule '{rule}': {why}"
S553_NUMBER = "553 5.1.3 Bad fax number in <{address}>: {why}"
S554_NOTHING = "554 5.6.1 Nothing to fax in this mail: {why}"
S554_BAD_MIME = "554 5.6.0 The mail could not be read: {why}"
# aiosmtpd's own reply to an address it cannot parse (the handler never sees it)
S553_MALFORMED = "553 5.1.3 Error: malformed address"
# Limits on what one client may hold (smtp.max_sessions … smtp.data_timeout)
S421_SESSIONS_CLIENT = ("421 4.7.0 Too many connections from {peer} (at most {limit} at a "
                        "time); try again later")
S421_SESSIONS = "421 4.7.0 Too many connections (at most {limit} at a time); try again later"
S421_COMMANDS = ("421 4.7.0 Too many commands in one session (at most {limit}); "
                 "reconnect to go on")
S421_IDLE = "421 4.4.2 No data from you for {seconds:g} seconds; closing the connection"
S421_DATA_DEADLINE = ("421 4.4.2 DATA not completed within {seconds:g} seconds; nothing was "
                      "queued")
S452_SPOOL = ("452 4.3.1 Insufficient system storage for your message; nothing was queued, "
              "try again later")
