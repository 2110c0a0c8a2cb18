"""Fuzz the UDP header parser and checksum (RFC 768, RFC 8200 section 8.1).

The first byte picks the address family for the pseudo-header; the rest is the datagram.
Oracle: parse raises only ParseError; the header rebuilds byte for byte; a datagram rebuilt
with :func:`build_udp` always passes the checksum check.
"""

from __future__ import annotations

from fuzz.common import fuzz_main, parse_or_none
from netstack.header.udp import UDPHeader, build_udp, udp_checksum_ok

SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6, DST6 = bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02")


def test_one_input(data: bytes) -> None:
    """Parse the datagram after the family byte and check what parses."""
    if not data:
        return
    src, dst = (SRC4, DST4) if data[0] & 1 else (SRC6, DST6)
    datagram = data[1:]
    hdr = parse_or_none(lambda: UDPHeader.parse(datagram))
    ok = udp_checksum_ok(src, dst, datagram)
    if hdr is None:
        return
    assert 8 <= hdr.length <= len(datagram)
    assert hdr.build() == datagram[:8]
    exact = datagram[: hdr.length]
    if len(exact) == len(datagram):
        assert udp_checksum_ok(src, dst, exact) == ok
    if hdr.checksum == 0:
        # RFC 768: zero means "no checksum", allowed over IPv4 only (RFC 8200 section 8.1).
        assert udp_checksum_ok(src, dst, exact) == (len(src) == 4)
    rebuilt = build_udp(src, dst, hdr.src_port, hdr.dst_port, exact[8:])
    assert udp_checksum_ok(src, dst, rebuilt)
    assert rebuilt[6:8] != b"\0\0"
    assert UDPHeader.parse(rebuilt) == UDPHeader(hdr.src_port, hdr.dst_port, hdr.length)


if __name__ == "__main__":
    fuzz_main(test_one_input)
