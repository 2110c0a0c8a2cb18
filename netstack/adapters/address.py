"""Socket addresses: the API's ``(host, port)`` text and the stack's ``(bytes, port)``.

Inside the stack an address is its packed form (4 or 16 bytes); only the adapters see text.
Every adapter converts with these functions, so a UDP socket and a TCP connection accept the
same addresses and refuse the same ones with the same error:

* a host that is not an IP address literal: :class:`~netstack.stack.AddressError` (the stack
  resolves no names);
* a port that is not an integer in 0..65535: ``ValueError``.

The wildcard hosts mean every address of a family, as for a kernel socket: ``""``,
``"0.0.0.0"`` (and None where asyncio allows it) for IPv4, ``"::"`` for IPv6. A socket bound
to ``::`` receives IPv6 only (IPV6_V6ONLY semantics).
"""

from __future__ import annotations

from typing import Any

from netstack.addresses import format_address, parse_address
from netstack.ports import unspecified

__all__ = ["Address", "is_wildcard", "pack_address", "pack_host", "unpack_address"]

#: ``(host, port)``, for IPv4 and IPv6 alike (asyncio's 4-tuples for IPv6 are accepted too).
Address = tuple[str, int]

_WILDCARD_V4 = unspecified(4)
_WILDCARD_V6 = unspecified(16)


def pack_host(host: str | None) -> bytes:
    """Return the packed address of ``host``; a wildcard gives the unspecified address."""
    if not host or host == "0.0.0.0":
        return _WILDCARD_V4
    if host == "::":
        return _WILDCARD_V6
    return parse_address(host)


def pack_address(address: tuple[Any, ...]) -> tuple[bytes, int]:
    """Convert a ``(host, port)`` pair (extra items ignored) to ``(packed, port)``."""
    host, port = address[0], address[1]
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad port {port!r}")
    return pack_host(host), port


def is_wildcard(addr: bytes) -> bool:
    """Tell whether a packed address is its family's unspecified address."""
    return addr in (_WILDCARD_V4, _WILDCARD_V6)


def unpack_address(addr: bytes, port: int) -> Address:
    """Convert ``(packed, port)`` to the API's ``(host, port)``."""
    return (format_address(addr), port)
