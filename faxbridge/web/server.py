"""The listener helpers moved to faxbridge.listen (the SMTP listener and the simulator
use them too, and they sit below both); this name stays for the command line."""

from faxbridge.listen import HttpServer, ListenError, address, bind

__all__ = ["HttpServer", "ListenError", "address", "bind"]
