"""ICMP for IPv6 (RFC 4443), with Neighbor Discovery and MLD type numbers.

Type numbers come from RFC 4443, RFC 4861 (Neighbor Discovery), RFC 2710 and RFC 3810 (MLD).
The message layout is that of ICMPv4 (type, code, checksum, a 32-bit rest word, payload), but
the checksum also covers the IPv6 pseudo-header (RFC 4443 section 2.3, RFC 8200 section 8.1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from netstack.errors import ParseError
from netstack.header.checksum import checksum, ones_sum, pseudo_header_sum, transport_checksum
from netstack.header.numbers import IPPROTO_ICMPV6

ICMPV6_HEADER_LEN: Final = 8
"""Type, code, checksum and the 32-bit rest-of-header word."""

# Error types (RFC 4443 section 3): values below 128.
DEST_UNREACHABLE: Final = 1
PACKET_TOO_BIG: Final = 2
TIME_EXCEEDED: Final = 3
PARAMETER_PROBLEM: Final = 4
# Informational types (RFC 4443 section 4, RFC 2710 section 3, RFC 4861 section 4,
# RFC 3810 section 5.2).
ECHO_REQUEST: Final = 128
ECHO_REPLY: Final = 129
MLD_QUERY: Final = 130
MLD_REPORT: Final = 131
MLD_DONE: Final = 132
ROUTER_SOLICITATION: Final = 133
ROUTER_ADVERTISEMENT: Final = 134
NEIGHBOR_SOLICITATION: Final = 135
NEIGHBOR_ADVERTISEMENT: Final = 136
REDIRECT: Final = 137
MLDV2_REPORT: Final = 143

# Destination Unreachable codes (RFC 4443 section 3.1).
NO_ROUTE: Final = 0
ADMIN_PROHIBITED: Final = 1
BEYOND_SCOPE: Final = 2
ADDRESS_UNREACHABLE: Final = 3
PORT_UNREACHABLE: Final = 4
SOURCE_POLICY_FAILED: Final = 5
REJECT_ROUTE: Final = 6

# Time Exceeded codes (RFC 4443 section 3.3).
HOP_LIMIT_EXCEEDED: Final = 0
REASSEMBLY_TIME_EXCEEDED: Final = 1

# Parameter Problem codes (RFC 4443 section 3.4).
ERRONEOUS_HEADER: Final = 0
UNRECOGNIZED_NEXT_HEADER: Final = 1
UNRECOGNIZED_OPTION: Final = 2

TYPE_NAMES: Final[dict[int, str]] = {
    DEST_UNREACHABLE: "destination unreachable",
    PACKET_TOO_BIG: "packet too big",
    TIME_EXCEEDED: "time exceeded",
    PARAMETER_PROBLEM: "parameter problem",
    ECHO_REQUEST: "echo request",
    ECHO_REPLY: "echo reply",
    MLD_QUERY: "multicast listener query",
    MLD_REPORT: "multicast listener report",
    MLD_DONE: "multicast listener done",
    ROUTER_SOLICITATION: "router solicitation",
    ROUTER_ADVERTISEMENT: "router advertisement",
    NEIGHBOR_SOLICITATION: "neighbor solicitation",
    NEIGHBOR_ADVERTISEMENT: "neighbor advertisement",
    REDIRECT: "redirect",
    MLDV2_REPORT: "multicast listener report v2",
}
"""Human-readable names of the types above (for logs and the sniffer)."""

UNREACHABLE_NAMES: Final[dict[int, str]] = {
    NO_ROUTE: "no route",
    ADMIN_PROHIBITED: "administratively prohibited",
    BEYOND_SCOPE: "beyond scope",
    ADDRESS_UNREACHABLE: "address unreachable",
    PORT_UNREACHABLE: "port unreachable",
    SOURCE_POLICY_FAILED: "source address failed policy",
    REJECT_ROUTE: "reject route",
}
"""Human-readable names of the Destination Unreachable codes above."""

_HEADER: Final = struct.Struct("!BBHI")
_new = object.__new__

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class ICMPv6Message:
    """One ICMPv6 message; ``rest`` is the 32-bit word after the checksum.

    :meth:`parse` is the one validated parse; ``checksum`` is the value as read and takes no
    part in comparisons.
    """

    type: int
    code: int
    rest: int = 0
    payload: bytes = b""
    checksum: int = field(default=0, compare=False)

    @property
    def ident(self) -> int:
        """Return the Identifier of an echo message (high 16 bits of rest, RFC 4443 4.1)."""
        return self.rest >> 16

    @property
    def sequence(self) -> int:
        """Return the Sequence Number of an echo message (low 16 bits of rest)."""
        return self.rest & 0xFFFF

    @property
    def mtu(self) -> int:
        """Return the MTU of a Packet Too Big message: all 32 bits (RFC 4443 section 3.2)."""
        return self.rest

    @property
    def pointer(self) -> int:
        """Return the Pointer of a Parameter Problem message: all 32 bits (RFC 4443 3.4)."""
        return self.rest

    @property
    def is_error(self) -> bool:
        """Return True for error messages: types below 128 (RFC 4443 section 2.1)."""
        return self.type < 128

    def build(self, src: bytes, dst: bytes) -> bytes:
        """Return the message bytes, checksummed with the pseudo-header of ``src``/``dst``.

        RFC 4443 section 2.3 includes the IPv6 pseudo-header in the checksum.
        """
        try:
            zeroed = _HEADER.pack(self.type, self.code, 0, self.rest)
        except struct.error as exc:
            raise ValueError(f"ICMPv6 field out of range: {exc}") from exc
        payload = self.payload
        length = ICMPV6_HEADER_LEN + len(payload)
        partial = ones_sum(zeroed, pseudo_header_sum(src, dst, IPPROTO_ICMPV6, length))
        csum = checksum(payload, partial)
        return _HEADER.pack(self.type, self.code, csum, self.rest) + payload

    @staticmethod
    def parse(
        buf: Buffer, src: bytes, dst: bytes, *, verify_checksum: bool = True
    ) -> ICMPv6Message:
        """Parse a whole ICMPv6 message (the upper-layer data of an IPv6 packet).

        Raises ParseError("truncated") below 8 bytes and ParseError("bad_checksum").
        """
        n = len(buf)
        if n < ICMPV6_HEADER_LEN:
            raise ParseError("truncated", f"{n} bytes, ICMPv6 header needs 8")
        kind, code, csum, rest = _HEADER.unpack_from(buf)
        if verify_checksum and transport_checksum(src, dst, IPPROTO_ICMPV6, buf) != 0:
            raise ParseError("bad_checksum", f"ICMPv6 checksum {csum:#06x}")
        msg: ICMPv6Message = _new(ICMPv6Message)
        msg.type = kind
        msg.code = code
        msg.rest = rest
        msg.payload = bytes(buf[ICMPV6_HEADER_LEN:])
        msg.checksum = csum
        return msg


def echo_request(ident: int, sequence: int, payload: bytes = b"") -> ICMPv6Message:
    """Return an Echo Request with the given identifier, sequence number and data."""
    if not 0 <= ident <= 0xFFFF or not 0 <= sequence <= 0xFFFF:
        raise ValueError(f"echo identifier {ident} or sequence {sequence} out of range")
    return ICMPv6Message(ECHO_REQUEST, 0, (ident << 16) | sequence, payload)


def echo_reply_for(request: ICMPv6Message) -> ICMPv6Message:
    """Return the Echo Reply to ``request``: same identifier, sequence and data.

    RFC 4443 section 4.2: the reply echoes the request's identifier, sequence and data.
    """
    if request.type != ECHO_REQUEST:
        raise ValueError(f"not an echo request: type {request.type}")
    return ICMPv6Message(ECHO_REPLY, 0, request.rest, request.payload)
