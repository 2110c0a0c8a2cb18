"""The UDP header (RFC 768) and its checksum over the IPv4 or IPv6 pseudo-header.

::

     0      7 8     15 16    23 24    31
    +--------+--------+--------+--------+
    |     Source      |   Destination   |
    |      Port       |      Port       |
    +--------+--------+--------+--------+
    |     Length      |    Checksum     |
    +--------+--------+--------+--------+
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from netstack.errors import ParseError
from netstack.header.checksum import checksum, pseudo_header_sum
from netstack.header.numbers import IPPROTO_UDP

UDP_HEADER_LEN: Final = 8
"""Length of the UDP header."""

# Where the header's fields sit (RFC 768), for code that reads one field of a datagram it does
# not parse; offsets from the start of the UDP header.
UDP_SRC_PORT_AT: Final = 0
"""Offset of Source Port (16 bits)."""
UDP_DST_PORT_AT: Final = 2
"""Offset of Destination Port (16 bits)."""
UDP_LENGTH_AT: Final = 4
"""Offset of Length (16 bits)."""
UDP_CHECKSUM_AT: Final = 6
"""Offset of Checksum (16 bits)."""

_HEADER: Final = struct.Struct("!HHHH")
_unpack_header = _HEADER.unpack_from
_new = object.__new__

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class UDPHeader:
    """One UDP header; ``length`` covers header and data (RFC 768).

    :meth:`parse` is the one validated parse of the header; ``checksum`` is the value as read
    and takes no part in comparisons.
    """

    src_port: int
    dst_port: int
    length: int = 0
    checksum: int = field(default=0, compare=False)

    def build(self) -> bytes:
        """Return the 8 header bytes with the record's fields as they are (checksum included)."""
        try:
            return _HEADER.pack(self.src_port, self.dst_port, self.length, self.checksum)
        except struct.error as exc:
            raise ValueError(f"UDP field out of range: {exc}") from exc

    @staticmethod
    def parse(buf: Buffer) -> UDPHeader:
        """Validate the header at the start of ``buf`` (the IP payload).

        Raises ParseError("truncated") below 8 bytes and ParseError("bad_length") when the
        Length field is below 8 or beyond the buffer. The checksum is checked apart, with the
        pseudo-header (:func:`udp_checksum_ok`).
        """
        n = len(buf)
        if n < UDP_HEADER_LEN:
            raise ParseError("truncated", f"{n} bytes, UDP header needs 8")
        sport, dport, length, csum = _unpack_header(buf)
        if length < UDP_HEADER_LEN or length > n:
            raise ParseError("bad_length", f"UDP length {length}, {n} bytes")
        # Once per received datagram: the record is filled in directly, not through __init__.
        hdr: UDPHeader = _new(UDPHeader)
        hdr.src_port = sport
        hdr.dst_port = dport
        hdr.length = length
        hdr.checksum = csum
        return hdr


def build_udp(
    src_addr: bytes, dst_addr: bytes, src_port: int, dst_port: int, payload: Buffer
) -> bytes:
    """Return a whole UDP datagram carrying ``payload``, checksum filled in.

    The checksum covers the pseudo-header of the family given by the address length (RFC 768,
    RFC 8200 section 8.1); a computed checksum of zero is sent as 0xFFFF (RFC 768).
    Raises ValueError when a port or the length is out of range.
    """
    length = UDP_HEADER_LEN + len(payload)
    if length > 0xFFFF:
        raise ValueError(f"UDP datagram too long: {length}")
    if not (0 <= src_port <= 0xFFFF and 0 <= dst_port <= 0xFFFF):
        raise ValueError(f"UDP port out of range: {src_port}, {dst_port}")
    # The header's words (ports, length, zero checksum) are added as integers: the sum is
    # congruent modulo 0xFFFF, and the payload starts word-aligned after the 8-byte header.
    initial = pseudo_header_sum(src_addr, dst_addr, IPPROTO_UDP, length)
    csum = checksum(payload, initial + src_port + dst_port + length) or 0xFFFF
    return _HEADER.pack(src_port, dst_port, length, csum) + payload


def udp_checksum_ok(src_addr: bytes, dst_addr: bytes, datagram: Buffer) -> bool:
    """Return True if the checksum of ``datagram`` (exactly ``length`` bytes) is right.

    A zero checksum means "not computed": accepted over IPv4 (RFC 768), rejected over IPv6
    where the checksum is mandatory (RFC 8200 section 8.1).
    """
    n = len(datagram)
    if n < UDP_HEADER_LEN:
        return False
    if datagram[UDP_CHECKSUM_AT] == 0 and datagram[UDP_CHECKSUM_AT + 1] == 0:
        return len(src_addr) == 4
    # Right when the one's-complement sum over pseudo-header and datagram is 0xFFFF, i.e. the
    # value below is a multiple of 0xFFFF (it is not zero: the checksum field is not). This is
    # pseudo_header_sum and ones_sum written out in one expression, as it runs per datagram.
    value = int.from_bytes(datagram) << 8 if n & 1 else int.from_bytes(datagram)
    return (value + int.from_bytes(src_addr + dst_addr) + n + IPPROTO_UDP) % 0xFFFF == 0
