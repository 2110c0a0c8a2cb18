"""ICMP for IPv4 (RFC 792), with the Fragmentation Needed MTU field of RFC 1191.

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     Type      |     Code      |          Checksum             |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |          rest: identifier/sequence, unused/MTU, pointer...    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     payload: echo data, or the original IP header + data      |
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from netstack.errors import ParseError
from netstack.header.checksum import checksum, ones_sum

ICMPV4_HEADER_LEN: Final = 8
"""Type, code, checksum and the 32-bit rest-of-header word."""

# Types (RFC 792).
ECHO_REPLY: Final = 0
DEST_UNREACHABLE: Final = 3
SOURCE_QUENCH: Final = 4
REDIRECT: Final = 5
ECHO_REQUEST: Final = 8
TIME_EXCEEDED: Final = 11
PARAMETER_PROBLEM: Final = 12
TIMESTAMP: Final = 13
TIMESTAMP_REPLY: Final = 14

# Destination Unreachable codes (RFC 792; 6-15 from RFC 1122 section 3.2.2.1 and RFC 1812
# section 5.2.7.1).
NET_UNREACHABLE: Final = 0
HOST_UNREACHABLE: Final = 1
PROTOCOL_UNREACHABLE: Final = 2
PORT_UNREACHABLE: Final = 3
FRAGMENTATION_NEEDED: Final = 4
SOURCE_ROUTE_FAILED: Final = 5
NET_UNKNOWN: Final = 6
HOST_UNKNOWN: Final = 7
NET_PROHIBITED: Final = 9
HOST_PROHIBITED: Final = 10
ADMIN_PROHIBITED: Final = 13

# Time Exceeded codes (RFC 792).
TTL_EXCEEDED: Final = 0
REASSEMBLY_TIME_EXCEEDED: Final = 1

ERROR_TYPES: Final = frozenset(
    (DEST_UNREACHABLE, SOURCE_QUENCH, REDIRECT, TIME_EXCEEDED, PARAMETER_PROBLEM)
)
"""Types that report an error about a quoted datagram (RFC 1122 section 3.2.2)."""

TYPE_NAMES: Final[dict[int, str]] = {
    ECHO_REPLY: "echo reply",
    DEST_UNREACHABLE: "destination unreachable",
    SOURCE_QUENCH: "source quench",
    REDIRECT: "redirect",
    ECHO_REQUEST: "echo request",
    TIME_EXCEEDED: "time exceeded",
    PARAMETER_PROBLEM: "parameter problem",
    TIMESTAMP: "timestamp request",
    TIMESTAMP_REPLY: "timestamp reply",
}
"""Human-readable names of the types above (for logs and the sniffer)."""

UNREACHABLE_NAMES: Final[dict[int, str]] = {
    NET_UNREACHABLE: "net unreachable",
    HOST_UNREACHABLE: "host unreachable",
    PROTOCOL_UNREACHABLE: "protocol unreachable",
    PORT_UNREACHABLE: "port unreachable",
    FRAGMENTATION_NEEDED: "fragmentation needed",
    SOURCE_ROUTE_FAILED: "source route failed",
    NET_UNKNOWN: "net unknown",
    HOST_UNKNOWN: "host unknown",
    NET_PROHIBITED: "net prohibited",
    HOST_PROHIBITED: "host prohibited",
    ADMIN_PROHIBITED: "administratively prohibited",
}
"""Human-readable names of the Destination Unreachable codes above."""

_HEADER: Final = struct.Struct("!BBHI")
_new = object.__new__

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class ICMPv4Message:
    """One ICMP message; ``rest`` is the 32-bit word after the checksum.

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
        """Return the Identifier of an echo or timestamp message (high 16 bits of rest)."""
        return self.rest >> 16

    @property
    def sequence(self) -> int:
        """Return the Sequence Number of an echo or timestamp message (low 16 bits of rest)."""
        return self.rest & 0xFFFF

    @property
    def mtu(self) -> int:
        """Return the Next-Hop MTU of a Fragmentation Needed message (RFC 1191 section 4)."""
        return self.rest & 0xFFFF

    @property
    def pointer(self) -> int:
        """Return the Pointer of a Parameter Problem message (high 8 bits of rest)."""
        return self.rest >> 24

    @property
    def is_error(self) -> bool:
        """Return True for error messages (unreachable, quench, redirect, time, parameter)."""
        return self.type in ERROR_TYPES

    def build(self) -> bytes:
        """Return the message bytes with the checksum computed (RFC 792)."""
        try:
            zeroed = _HEADER.pack(self.type, self.code, 0, self.rest)
        except struct.error as exc:
            raise ValueError(f"ICMP field out of range: {exc}") from exc
        csum = checksum(self.payload, ones_sum(zeroed))
        return _HEADER.pack(self.type, self.code, csum, self.rest) + self.payload

    @staticmethod
    def parse(buf: Buffer, *, verify_checksum: bool = True) -> ICMPv4Message:
        """Parse a whole ICMP message (the IP payload).

        Raises ParseError("truncated") below 8 bytes and ParseError("bad_checksum").
        """
        n = len(buf)
        if n < ICMPV4_HEADER_LEN:
            raise ParseError("truncated", f"{n} bytes, ICMP header needs 8")
        kind, code, csum, rest = _HEADER.unpack_from(buf)
        if verify_checksum and checksum(buf) != 0:
            raise ParseError("bad_checksum", f"ICMP checksum {csum:#06x}")
        msg: ICMPv4Message = _new(ICMPv4Message)
        msg.type = kind
        msg.code = code
        msg.rest = rest
        msg.payload = bytes(buf[ICMPV4_HEADER_LEN:])
        msg.checksum = csum
        return msg


def echo_request(ident: int, sequence: int, payload: bytes = b"") -> ICMPv4Message:
    """Return an Echo Request with the given identifier, sequence number and data."""
    if not 0 <= ident <= 0xFFFF or not 0 <= sequence <= 0xFFFF:
        raise ValueError(f"echo identifier {ident} or sequence {sequence} out of range")
    return ICMPv4Message(ECHO_REQUEST, 0, (ident << 16) | sequence, payload)


def echo_reply_for(request: ICMPv4Message) -> ICMPv4Message:
    """Return the Echo Reply to ``request``: same identifier, sequence and data (RFC 792)."""
    if request.type != ECHO_REQUEST:
        raise ValueError(f"not an echo request: type {request.type}")
    return ICMPv4Message(ECHO_REPLY, 0, request.rest, request.payload)
