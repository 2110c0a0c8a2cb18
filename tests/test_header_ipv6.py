"""IPv6 fixed header and extension headers (RFC 8200): round trips, walks and rejections."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netstack.errors import ParseError
from netstack.header.ipv6 import (
    IPV6_HEADER_LEN,
    IPv6Extension,
    IPv6Fragment,
    IPv6Header,
    build_extensions,
    build_tlv_options,
    option_action,
    option_may_change,
    parse_tlv_options,
    walk_extensions,
)
from netstack.header.numbers import (
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_ESP,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMPV6,
    IPPROTO_NONE,
    IPPROTO_ROUTING,
    IPPROTO_TCP,
    IPPROTO_UDP,
)

addr6 = st.binary(min_size=16, max_size=16)
# Upper-layer values where a walk stops: transports, No Next Header, ESP, unassigned.
uppers = st.sampled_from([IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, IPPROTO_NONE, IPPROTO_ESP, 253])
tlv_options = st.lists(st.tuples(st.integers(2, 255), st.binary(max_size=12)), max_size=4)


@st.composite
def fixed_headers(draw: st.DrawFn) -> IPv6Header:
    return IPv6Header(
        src=draw(addr6),
        dst=draw(addr6),
        next_header=draw(st.integers(0, 255)),
        hop_limit=draw(st.integers(0, 255)),
        traffic_class=draw(st.integers(0, 255)),
        flow_label=draw(st.integers(0, 0xFFFFF)),
    )


def options_header(kind: int) -> st.SearchStrategy[IPv6Extension]:
    return tlv_options.map(lambda opts: IPv6Extension(kind, build_tlv_options(opts)))


def opaque_header(kind: int) -> st.SearchStrategy[IPv6Extension]:
    # Routing and AH bodies are opaque to the walk; any length making 8-byte multiples.
    return st.integers(0, 3).flatmap(
        lambda k: st.binary(min_size=6 + 8 * k, max_size=6 + 8 * k).map(
            lambda d: IPv6Extension(kind, d)
        )
    )


fragments = st.builds(
    IPv6Fragment,
    offset=st.integers(0, 0x1FFF).map(lambda v: v * 8),
    more=st.booleans(),
    ident=st.integers(0, 0xFFFFFFFF),
    res=st.integers(0, 3),
)


@st.composite
def chains(draw: st.DrawFn) -> list[IPv6Extension | IPv6Fragment]:
    """A valid chain: optional Hop-by-Hop first, then others, at most one Fragment header.

    A Fragment header with a nonzero offset ends the chain (the rest is fragment data).
    """
    headers: list[IPv6Extension | IPv6Fragment] = []
    if draw(st.booleans()):
        headers.append(draw(options_header(IPPROTO_HOPOPTS)))
    middle = st.one_of(
        options_header(IPPROTO_DSTOPTS),
        opaque_header(IPPROTO_ROUTING),
        opaque_header(IPPROTO_AH),
    )
    headers += draw(st.lists(middle, max_size=4))
    if draw(st.booleans()):
        frag = draw(fragments)
        if frag.offset:
            headers.append(frag)
        else:
            lowest = 1 if headers and headers[0].kind == IPPROTO_HOPOPTS else 0
            headers.insert(draw(st.integers(lowest, len(headers))), frag)
    return headers


@given(fixed_headers(), st.binary(max_size=64), st.binary(max_size=8))
def test_fixed_header_round_trip(hdr: IPv6Header, payload: bytes, padding: bytes) -> None:
    if not payload and hdr.next_header == IPPROTO_HOPOPTS:
        hdr = dataclasses.replace(hdr, next_header=IPPROTO_NONE)
    packet = hdr.pack(payload)
    assert len(packet) == IPV6_HEADER_LEN + len(payload)
    parsed = IPv6Header.parse(packet + padding)
    assert parsed == dataclasses.replace(hdr, payload_length=len(payload))
    assert parsed.dscp << 2 | parsed.ecn == hdr.traffic_class
    assert parsed.build(len(payload)) == packet[:IPV6_HEADER_LEN]


def test_fixed_header_known_answer() -> None:
    # fe80::1 -> fe80::2, UDP, hop limit 64, 12-byte payload (smoltcp's ICMPv6 test quote).
    raw = bytes.fromhex(
        "6000000000 0c 11 40 fe800000000000000000000000000001 fe800000000000000000000000000002"
    )
    hdr = IPv6Header.parse(raw + bytes(12))
    assert hdr == IPv6Header(
        src=bytes.fromhex("fe80" + "00" * 13 + "01"),
        dst=bytes.fromhex("fe80" + "00" * 13 + "02"),
        next_header=IPPROTO_UDP,
        hop_limit=64,
        payload_length=12,
    )
    assert hdr.build(12) == raw


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (bytes(39), "truncated"),
        (b"\x40" + bytes(39), "bad_version"),
        (b"\x60" + bytes(3) + b"\x00\x01" + bytes(34), "bad_length"),
        (b"\x60" + bytes(3) + b"\x00\x00\x00" + bytes(33) + bytes(8), "bad_length"),  # jumbo
    ],
)
def test_fixed_header_rejections(packet: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        IPv6Header.parse(packet)
    assert info.value.reason == reason


@given(chains(), uppers, st.binary(max_size=32))
def test_extension_chain_round_trip(
    headers: list[IPv6Extension | IPv6Fragment], upper: int, payload: bytes
) -> None:
    first, chain_bytes = build_extensions(headers, upper)
    packet = IPv6Header(bytes(16), bytes(16), first).pack(chain_bytes + payload)
    chain = walk_extensions(packet, first)
    assert chain.headers == headers
    assert chain.upper_protocol == upper
    assert chain.upper_offset == IPV6_HEADER_LEN + len(chain_bytes)
    frag_positions = [i for i, h in enumerate(headers) if isinstance(h, IPv6Fragment)]
    if frag_positions:
        i = frag_positions[0]
        assert chain.fragment == headers[i]
        start = IPV6_HEADER_LEN + sum(_len(h) for h in headers[:i])
        assert chain.fragment_offset_in_packet == start
        # The octet naming the Fragment header: the fixed header's, or the previous header's.
        assert chain.next_header_field_offset == (6 if i == 0 else start - _len(headers[i - 1]))
        assert packet[chain.next_header_field_offset] == IPPROTO_FRAGMENT
    else:
        assert chain.fragment is None
        assert chain.fragment_offset_in_packet == -1
        assert chain.next_header_field_offset == -1


def _len(hdr: IPv6Extension | IPv6Fragment) -> int:
    return 8 if isinstance(hdr, IPv6Fragment) else 2 + len(hdr.data)


def test_walk_stops_after_later_fragment() -> None:
    # A non-first fragment carries data, which must not be read as extension headers.
    frag = IPv6Fragment(offset=1448, more=True, ident=0xDEADBEEF)
    first, chain = build_extensions([frag], IPPROTO_HOPOPTS)
    packet = bytes(40) + chain + bytes(16)
    walked = walk_extensions(packet, first)
    assert walked.headers == [frag]
    assert walked.upper_protocol == IPPROTO_HOPOPTS
    assert walked.upper_offset == 48
    assert walked.next_header_field_offset == 6


def test_fragment_header_known_answer() -> None:
    # RFC 8200 section 4.5: next header 17, offset 185 (1480 bytes), M=1, id 0x12345678.
    raw = bytes.fromhex("11 00 05c9 12345678")
    chain = walk_extensions(bytes(40) + raw, IPPROTO_FRAGMENT)
    assert chain.fragment == IPv6Fragment(offset=1480, more=True, ident=0x12345678)
    assert chain.upper_protocol == IPPROTO_UDP
    assert build_extensions([chain.fragment], IPPROTO_UDP) == (IPPROTO_FRAGMENT, raw)


def test_hop_by_hop_must_be_first() -> None:
    dst = bytes((IPPROTO_HOPOPTS, 0)) + bytes(6)
    hbh = bytes((IPPROTO_UDP, 0)) + bytes(6)
    with pytest.raises(ParseError) as info:
        walk_extensions(bytes(40) + dst + hbh, IPPROTO_DSTOPTS)
    assert info.value.reason == "hop_by_hop_not_first"
    with pytest.raises(ValueError):
        build_extensions(
            [IPv6Extension(IPPROTO_DSTOPTS, bytes(6)), IPv6Extension(IPPROTO_HOPOPTS, bytes(6))],
            IPPROTO_UDP,
        )


def test_too_many_extension_headers() -> None:
    one = bytes((IPPROTO_DSTOPTS, 0)) + bytes(6)
    last = bytes((IPPROTO_UDP, 0)) + bytes(6)
    packet = bytes(40) + one * 19 + last
    with pytest.raises(ParseError) as info:
        walk_extensions(packet, IPPROTO_DSTOPTS)
    assert info.value.reason == "too_many_extension_headers"
    assert len(walk_extensions(packet, IPPROTO_DSTOPTS, max_headers=20).headers) == 20


@given(chains().filter(bool), st.data())
def test_truncated_chain_is_rejected(
    headers: list[IPv6Extension | IPv6Fragment], data: st.DataObject
) -> None:
    first, chain = build_extensions(headers, IPPROTO_UDP)
    cut = data.draw(st.integers(0, len(chain) - 1))
    packet = bytes(40) + chain
    with pytest.raises(ParseError) as info:
        walk_extensions(packet, first, end=40 + cut)
    assert info.value.reason == "truncated_extension"
    with pytest.raises(ParseError):
        walk_extensions(packet[: 40 + cut], first)


@given(st.binary(max_size=120), st.integers(0, 255), st.integers(0, 60))
def test_arbitrary_bytes_raise_only_parse_error(data: bytes, nh: int, offset: int) -> None:
    try:
        IPv6Header.parse(data)
    except ParseError as exc:
        assert exc.reason in {"truncated", "bad_version", "bad_length"}
    try:
        chain = walk_extensions(data, nh, offset)
    except ParseError as exc:
        assert exc.reason in {
            "truncated_extension",
            "hop_by_hop_not_first",
            "too_many_extension_headers",
        }
    else:
        assert chain.upper_offset <= max(len(data), offset)
    try:
        parse_tlv_options(data)
    except ParseError as exc:
        assert exc.reason == "bad_option"


@given(tlv_options, st.sampled_from([2, 4, 8]), st.integers(0, 7))
def test_tlv_options_round_trip(options: list[tuple[int, bytes]], pad_to: int, prefix: int) -> None:
    data = build_tlv_options(options, pad_to=pad_to, prefix=prefix)
    assert (prefix + len(data)) % pad_to == 0
    assert parse_tlv_options(data) == options


def test_tlv_padding_known_answer() -> None:
    # No options: 6 bytes of padding after the 2-byte prefix, as one PadN with 4 data bytes.
    assert build_tlv_options([]) == b"\x01\x04" + bytes(4)
    assert build_tlv_options([(0xC9, b"")], prefix=2) == b"\xc9\x00\x01\x02\x00\x00"
    assert build_tlv_options([(0xC9, b"\x01\x02\x03")]) == b"\xc9\x03\x01\x02\x03\x00"
    assert parse_tlv_options(b"\x00\x01\x00\x05\x01\xaa\x00") == [(5, b"\xaa")]
    assert option_action(0xC2) == 3
    assert option_action(0x05) == 0
    assert option_may_change(0x3E)
    assert not option_may_change(0xC2)


@pytest.mark.parametrize(
    "headers",
    [
        [IPv6Extension(IPPROTO_DSTOPTS, bytes(5))],  # 7 bytes: not a multiple of 8
        [IPv6Extension(IPPROTO_TCP, bytes(6))],  # not an extension header
        [IPv6Fragment(offset=4, more=False, ident=1)],  # offset not a multiple of 8
        [IPv6Fragment(offset=0, more=False, ident=1 << 32)],
        [IPv6Extension(IPPROTO_ROUTING, bytes(2048 + 6))],  # too long for Hdr Ext Len
    ],
)
def test_build_extensions_rejects(headers: list[IPv6Extension | IPv6Fragment]) -> None:
    with pytest.raises(ValueError):
        build_extensions(headers, IPPROTO_UDP)


def test_ah_length_counts_four_octet_units() -> None:
    # RFC 4302 section 2.2: Payload Len = (length in 4-octet units) - 2; 24 bytes -> 4.
    ah = IPv6Extension(IPPROTO_AH, bytes(22))
    first, raw = build_extensions([ah], IPPROTO_TCP)
    assert first == IPPROTO_AH
    assert raw[:2] == bytes((IPPROTO_TCP, 4))
    assert walk_extensions(bytes(40) + raw, first).upper_offset == 64
