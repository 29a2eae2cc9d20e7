"""Outbound: build the Fax4A request, submit it, track it, report it."""
