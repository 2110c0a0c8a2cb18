"""IP protocol numbers (IANA "Assigned Internet Protocol Numbers") used by the stack.

The same number space names the IPv4 Protocol field (RFC 791 section 3.1) and the IPv6 Next
Header field (RFC 8200 section 3), including the IPv6 extension headers (RFC 8200 section 4).
"""

from __future__ import annotations

from typing import Final

IPPROTO_HOPOPTS: Final = 0
"""IPv6 Hop-by-Hop Options header (RFC 8200 section 4.3)."""
IPPROTO_ICMP: Final = 1
"""ICMP for IPv4 (RFC 792)."""
IPPROTO_TCP: Final = 6
"""TCP (RFC 9293)."""
IPPROTO_UDP: Final = 17
"""UDP (RFC 768)."""
IPPROTO_ROUTING: Final = 43
"""IPv6 Routing header (RFC 8200 section 4.4)."""
IPPROTO_FRAGMENT: Final = 44
"""IPv6 Fragment header (RFC 8200 section 4.5)."""
IPPROTO_ESP: Final = 50
"""Encapsulating Security Payload (RFC 4303)."""
IPPROTO_AH: Final = 51
"""Authentication Header (RFC 4302)."""
IPPROTO_ICMPV6: Final = 58
"""ICMP for IPv6 (RFC 4443)."""
IPPROTO_NONE: Final = 59
"""IPv6 "No Next Header" (RFC 8200 section 4.7)."""
IPPROTO_DSTOPTS: Final = 60
"""IPv6 Destination Options header (RFC 8200 section 4.6)."""

_NAMES: Final[dict[int, str]] = {
    IPPROTO_HOPOPTS: "hopopts",
    IPPROTO_ICMP: "icmp",
    IPPROTO_TCP: "tcp",
    IPPROTO_UDP: "udp",
    IPPROTO_ROUTING: "routing",
    IPPROTO_FRAGMENT: "fragment",
    IPPROTO_ESP: "esp",
    IPPROTO_AH: "ah",
    IPPROTO_ICMPV6: "icmpv6",
    IPPROTO_NONE: "none",
    IPPROTO_DSTOPTS: "dstopts",
}


def protocol_name(n: int) -> str:
    """Return a short lower-case name for protocol number ``n`` ("udp", "tcp", "proto-N")."""
    name = _NAMES.get(n)
    return name if name is not None else f"proto-{n}"
