"""IP addresses as the stack holds them (packed ``bytes``, 4 or 16 long) and as people write them.

Inside the stack an address is its packed form; text appears only at the edges (the socket
adapters, ``Stack.add_address``, the ``ss``-like descriptions of endpoints).
"""

from __future__ import annotations

import functools
import ipaddress
import socket

from netstack.errors import AddressError


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> bytes:
    """Return the packed form of an IPv4 or IPv6 address given as text."""
    try:
        return ipaddress.ip_address(text).packed
    except ValueError as exc:
        raise AddressError(f"not an IP address: {text!r}") from exc


@functools.lru_cache(maxsize=4096)
def format_address(addr: bytes) -> str:
    """Return the text form of a packed IPv4 or IPv6 address."""
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def format_endpoint(addr: bytes | None, port: int) -> str:
    """Return ``addr:port`` as ``ss`` prints it: ``[addr]:port`` for IPv6, ``*:*`` for none."""
    if not addr:
        return "*:*"
    text = format_address(addr)
    return f"[{text}]:{port}" if len(addr) == 16 else f"{text}:{port}"
