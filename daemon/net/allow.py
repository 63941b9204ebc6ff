"""Client allow-lists shared by the command port and the HTTP server."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def peer_allowed(address: str, networks: Iterable[str]) -> bool:
    """True if `address` (IPv4, IPv6 or IPv4-mapped IPv6) lies in one of `networks`."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for net in networks:
        try:
            if ip in ipaddress.ip_network(net, strict=False):
                return True
        except (ValueError, TypeError):
            continue
    return False
