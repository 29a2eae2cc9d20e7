"""Outgoing mail: compose (Jinja → EmailMessage) and transports (SMTP relay, Maildir)."""
