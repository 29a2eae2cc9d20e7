"""faxbridge: an email-to-fax / fax-to-email bridge for Retarus cloud fax."""

__version__ = "0.1.0"
