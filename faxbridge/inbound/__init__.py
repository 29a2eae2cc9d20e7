"""Inbound: Fax2WSPull poller and fax-to-mail delivery."""
