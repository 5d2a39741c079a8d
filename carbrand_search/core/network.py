"""Which addresses keep a server on this machine: the one rule for every server we start."""

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether binding `host` leaves a server reachable from this machine only (127.0.0.0/8,
    ::1, localhost); a name other than localhost may resolve to anything, so it is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
