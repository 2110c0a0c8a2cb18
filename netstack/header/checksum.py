"""The Internet checksum (RFC 1071) and the pseudo-header sums of RFC 768, RFC 9293 and RFC 8200.

The one's-complement sum of 16-bit big-endian words equals the value of the whole buffer read
as one big-endian integer, reduced modulo 0xFFFF (because 2**16 == 1 mod 0xFFFF), with a nonzero
multiple of 0xFFFF standing for 0xFFFF ("negative zero"). ``int.from_bytes`` and ``%`` run in C,
so a checksum costs no per-byte Python work.
"""

from __future__ import annotations

from typing import Final

_FOLD: Final = 0xFFFF


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Return the 16-bit one's-complement sum of ``data`` (odd lengths padded with a zero byte)."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    value += initial
    if value == 0:
        return 0
    rem = value % _FOLD
    return rem if rem else 0xFFFF


def combine(a: int, b: int) -> int:
    """Add two one's-complement 16-bit sums (RFC 1071 section 2(A): sums are associative)."""
    s = a + b
    s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Return the Internet checksum of ``data``: the complement of its one's-complement sum."""
    return ~ones_sum(data, initial) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """Return the one's-complement sum of an IPv4 or IPv6 pseudo-header, unreduced.

    RFC 768 (IPv4) and RFC 8200 section 8.1 (IPv6), for an upper-layer packet of ``length``
    bytes; the family follows ``len(src)``. The value is congruent modulo 0xFFFF to the 16-bit
    sum; pass it as ``initial`` to :func:`ones_sum` or :func:`checksum`.
    """
    # Both layouts sum to the same words: addresses, then the length and the protocol number
    # (IPv6 puts them in 32-bit fields whose high bytes are zero, which do not change the sum).
    # The result is left unreduced: it is congruent modulo 0xFFFF to the 16-bit sum, which is
    # all ``ones_sum(data, initial)`` needs, and saves a reduction on every packet.
    return int.from_bytes(src + dst, "big") + (length & 0xFFFF) + (length >> 16) + protocol


def transport_checksum(
    src: bytes, dst: bytes, protocol: int, segment: bytes | bytearray | memoryview
) -> int:
    """Return the checksum of a UDP/TCP/ICMPv6 ``segment`` with its pseudo-header.

    With the checksum field zeroed this is the value to store; over a correct segment with its
    checksum in place it is 0.
    """
    return checksum(segment, pseudo_header_sum(src, dst, protocol, len(segment)))
