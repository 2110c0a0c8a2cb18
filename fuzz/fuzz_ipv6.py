"""Fuzz the IPv6 fixed header, extension-header walk and TLV options (RFC 8200 sections 3-4).

Oracle: every parser raises only ParseError; a parsed fixed header rebuilds byte for byte; an
extension chain rebuilt with :func:`build_extensions` walks back to the same headers (AH,
whose 4-octet units the builder does not produce, excepted); option areas of Hop-by-Hop and
Destination Options headers parse or fail cleanly.
"""

from __future__ import annotations

from functools import partial

from fuzz.common import fuzz_main, parse_or_none
from netstack.header.ipv6 import (
    IPV6_HEADER_LEN,
    IPv6Extension,
    IPv6Header,
    build_extensions,
    build_tlv_options,
    parse_tlv_options,
    walk_extensions,
)
from netstack.header.numbers import IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_HOPOPTS


def test_one_input(data: bytes) -> None:
    """Parse ``data`` as an IPv6 packet and walk its extension headers."""
    hdr = parse_or_none(lambda: IPv6Header.parse(data))
    if hdr is None:
        # Walk anyway, as the ICMP error path does over a quoted (truncated) packet.
        if len(data) >= IPV6_HEADER_LEN:
            parse_or_none(lambda: walk_extensions(data, data[6]))
        return
    end = IPV6_HEADER_LEN + hdr.payload_length
    fixed = hdr.build(hdr.payload_length)
    assert fixed == data[:IPV6_HEADER_LEN]
    assert IPv6Header.parse(fixed + bytes(hdr.payload_length)) == hdr
    chain = parse_or_none(lambda: walk_extensions(data, hdr.next_header, IPV6_HEADER_LEN, end))
    if chain is None:
        return
    assert IPV6_HEADER_LEN <= chain.upper_offset <= end
    assert (chain.fragment is None) == (chain.fragment_offset_in_packet == -1)
    for ext in chain.headers:
        if isinstance(ext, IPv6Extension) and ext.kind in (IPPROTO_HOPOPTS, IPPROTO_DSTOPTS):
            options = parse_or_none(partial(parse_tlv_options, ext.data))
            if options is not None:
                rebuilt = build_tlv_options(options)
                assert parse_tlv_options(rebuilt) == options
    if any(ext.kind == IPPROTO_AH for ext in chain.headers):
        return
    first, encoded = build_extensions(chain.headers, chain.upper_protocol)
    assert first == hdr.next_header
    assert len(encoded) == chain.upper_offset - IPV6_HEADER_LEN
    again = walk_extensions(fixed + encoded, first)
    assert again.headers == chain.headers
    assert again.upper_protocol == chain.upper_protocol
    assert again.fragment_offset_in_packet == chain.fragment_offset_in_packet


if __name__ == "__main__":
    fuzz_main(test_one_input)
