"""How a connection's peer is named in logs and counted by the per-address limits."""

from __future__ import annotations

import ipaddress

from twisted.internet.interfaces import IAddress


def describe(address: IAddress) -> str:
    """``host:port`` for logs, or the address as text if it has no host."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


def source(peer: str) -> str:
    """The address part of :func:`describe`'s ``host:port``: what log summaries count."""
    return peer.rsplit(":", 1)[0]


def host(address: IAddress) -> str:
    """The client address that per-address limits and login throttling count.

    An IPv6 client usually holds a whole /64, so that is its address here;
    an IPv4 address mapped into IPv6 is the IPv4 address.
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return str(address)
    if ":" in host:
        try:
            ip = ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return host
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return host
