"""Which addresses keep a server on this machine, and which ports exist: the one rule for every
server we start."""

import ipaddress

from carbrand_search.core.errors import UserError

PORTS = range(1, 65536)


def is_loopback(host: str) -> bool:
    """Whether binding `host` leaves a server reachable from this machine only (127.0.0.0/8,
    ::1, localhost); a name other than localhost may resolve to anything, so it is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_port(port: int) -> None:
    """A one-line UserError for a port no server can listen on."""
    if port not in PORTS:
        raise UserError(f"--port must be in [1, 65535], got {port}")
