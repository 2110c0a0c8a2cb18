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
from netstack.header.checksum import checksum, ones_sum, pseudo_header_sum
from netstack.header.numbers import IPPROTO_UDP

UDP_HEADER_LEN: Final = 8
"""Length of the UDP header."""

_HEADER: Final = struct.Struct("!HHHH")

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class UDPHeader:
    """One UDP header; ``length`` covers header and data (RFC 768)."""

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

    @classmethod
    def parse(cls, buf: Buffer) -> UDPHeader:
        """Parse the header at the start of ``buf`` (the IP payload).

        Raises ParseError("truncated") below 8 bytes and ParseError("bad_length") when the
        Length field is below 8 or beyond the buffer.
        """
        return cls(*parse_fields(buf))


def parse_fields(buf: Buffer) -> tuple[int, int, int, int]:
    """Validate the header at the start of ``buf``; return (src port, dst port, length, checksum).

    The checks and ParseError reasons of :meth:`UDPHeader.parse`, which is built on this; the
    receive path uses it directly to skip building a record.
    """
    n = len(buf)
    if n < UDP_HEADER_LEN:
        raise ParseError("truncated", f"{n} bytes, UDP header needs 8")
    sport, dport, length, csum = _HEADER.unpack_from(buf)
    if length < UDP_HEADER_LEN or length > n:
        raise ParseError("bad_length", f"UDP length {length}, {n} bytes")
    return sport, dport, length, csum


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
    if datagram[6] == 0 and datagram[7] == 0:
        return len(src_addr) == 4
    # Right when the one's-complement sum over pseudo-header and datagram is 0xFFFF.
    return ones_sum(datagram, pseudo_header_sum(src_addr, dst_addr, IPPROTO_UDP, n)) == 0xFFFF
