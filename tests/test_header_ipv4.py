"""IPv4 header (RFC 791): round trips, validation reasons, checksum and known answers."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netstack.errors import ParseError
from netstack.header.checksum import checksum
from netstack.header.ipv4 import (
    IPv4Header,
    build_options,
    is_fragment,
    parse_options,
)
from netstack.header.numbers import IPPROTO_TCP, IPPROTO_UDP, protocol_name

addr4 = st.binary(min_size=4, max_size=4)
option_tlv = st.tuples(st.integers(2, 255), st.binary(max_size=10))


@st.composite
def option_areas(draw: st.DrawFn) -> bytes:
    """A well-formed option area: NOPs and TLVs, EOL-padded to a multiple of 4, <= 40 bytes."""
    area = bytearray()
    for item in draw(st.lists(st.one_of(st.just(None), option_tlv), max_size=6)):
        chunk = b"\x01" if item is None else bytes((item[0], len(item[1]) + 2)) + item[1]
        if len(area) + len(chunk) > 40:
            break
        area += chunk
    area += bytes(-len(area) & 3)
    return bytes(area)


@st.composite
def headers(draw: st.DrawFn) -> IPv4Header:
    return IPv4Header(
        src=draw(addr4),
        dst=draw(addr4),
        protocol=draw(st.integers(0, 255)),
        ttl=draw(st.integers(0, 255)),
        tos=draw(st.integers(0, 255)),
        ident=draw(st.integers(0, 0xFFFF)),
        reserved_flag=draw(st.booleans()),
        dont_fragment=draw(st.booleans()),
        more_fragments=draw(st.booleans()),
        fragment_offset=draw(st.integers(0, 0x1FFF)) * 8,
        options=draw(option_areas()),
    )


CLASSIC = bytes.fromhex("4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7")


def test_known_answer_classic_header() -> None:
    # The textbook header: 192.168.0.1 -> 192.168.0.199, UDP, DF, TTL 64, total length 115.
    packet = CLASSIC + bytes(0x73 - 20)
    hdr = IPv4Header.parse(packet)
    assert hdr == IPv4Header(
        src=bytes((192, 168, 0, 1)),
        dst=bytes((192, 168, 0, 199)),
        protocol=IPPROTO_UDP,
        ttl=64,
        dont_fragment=True,
        total_length=115,
    )
    assert hdr.checksum == 0xB861
    assert hdr.build(0x73 - 20) == CLASSIC
    assert hdr.header_length == 20


@given(headers(), st.binary(max_size=64), st.binary(max_size=8))
def test_round_trip(hdr: IPv4Header, payload: bytes, padding: bytes) -> None:
    packet = hdr.pack(payload)
    assert len(packet) == hdr.header_length + len(payload)
    expect = dataclasses.replace(hdr, total_length=len(packet))
    # Link padding after Total Length does not change what is parsed.
    parsed = IPv4Header.parse(packet + padding)
    assert parsed == expect
    assert parsed.checksum == int.from_bytes(packet[10:12], "big")
    assert checksum(packet[: hdr.header_length]) == 0
    assert parsed.build(len(payload)) == packet[: hdr.header_length]
    assert IPv4Header.parse(memoryview(packet)) == expect
    assert IPv4Header.parse(bytearray(packet)) == expect


@given(headers())
def test_dscp_ecn_and_is_fragment(hdr: IPv4Header) -> None:
    assert hdr.dscp << 2 | hdr.ecn == hdr.tos
    assert is_fragment(hdr) == (hdr.more_fragments or hdr.fragment_offset > 0)


@given(headers(), st.binary(max_size=16), st.data())
def test_one_bit_flip_in_header_is_detected(
    hdr: IPv4Header, payload: bytes, data: st.DataObject
) -> None:
    packet = bytearray(hdr.pack(payload))
    bit = data.draw(st.integers(0, hdr.header_length * 8 - 1))
    packet[bit // 8] ^= 1 << (bit % 8)
    # RFC 1071: a single-bit error always changes the one's-complement sum.
    assert checksum(packet[: hdr.header_length]) != 0
    with pytest.raises(ParseError):
        IPv4Header.parse(packet)


@given(st.binary(max_size=80))
def test_arbitrary_bytes_raise_only_parse_error(data: bytes) -> None:
    for verify in (True, False):
        try:
            hdr = IPv4Header.parse(data, verify_checksum=verify)
        except ParseError as exc:
            assert exc.reason in {
                "truncated",
                "bad_version",
                "bad_header_length",
                "bad_total_length",
                "bad_checksum",
                "bad_option",
            }
        else:
            assert 20 <= hdr.header_length <= hdr.total_length <= len(data)


@given(st.binary(min_size=20, max_size=80))
def test_arbitrary_v4_headers_raise_only_parse_error(data: bytes) -> None:
    # Force version 4 so the deeper checks (lengths, options) get exercised.
    packet = bytes((0x40 | (data[0] & 0x0F),)) + data[1:]
    try:
        hdr = IPv4Header.parse(packet, verify_checksum=False)
    except ParseError as exc:
        assert exc.reason != "bad_version"
    else:
        assert hdr.options == packet[20 : hdr.header_length]


def _raw(vihl: int = 0x45, total: int = 20, extra: bytes = b"", fix_checksum: bool = True) -> bytes:
    hdr = bytearray(
        bytes((vihl, 0)) + total.to_bytes(2, "big") + bytes(4) + bytes((64, 6, 0, 0)) + bytes(8)
    )
    hdr += extra
    if fix_checksum:
        hl = (vihl & 0xF) * 4
        hdr[10:12] = checksum(hdr[:hl]).to_bytes(2, "big")
    return bytes(hdr)


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"", "truncated"),
        (_raw()[:19], "truncated"),
        (_raw(vihl=0x65), "bad_version"),
        (_raw(vihl=0x44), "bad_header_length"),
        (_raw(vihl=0x46, total=24), "bad_header_length"),  # IHL says 24, only 20 bytes
        (_raw(total=19), "bad_total_length"),
        (_raw(total=21), "bad_total_length"),
        (_raw(vihl=0x46, total=20, extra=b"\x01\x01\x01\x01"), "bad_total_length"),
        (_raw(fix_checksum=False), "bad_checksum"),
        (_raw(vihl=0x46, total=24, extra=b"\x07\x01\x00\x00"), "bad_option"),  # length 1
        (_raw(vihl=0x46, total=24, extra=b"\x07\x05\x00\x00"), "bad_option"),  # past end
        (_raw(vihl=0x46, total=24, extra=b"\x01\x01\x01\x07"), "bad_option"),  # no length
    ],
)
def test_rejections(packet: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        IPv4Header.parse(packet)
    assert info.value.reason == reason


def test_checksum_can_be_skipped() -> None:
    packet = _raw(fix_checksum=False)
    assert IPv4Header.parse(packet, verify_checksum=False).protocol == IPPROTO_TCP


def test_parse_options_eol_nop_and_values() -> None:
    # Record Route (7) with pointer 4 and room for one address, NOP, then EOL and junk.
    area = b"\x01\x07\x07\x04" + bytes(4) + b"\x00\xff\xff\xff"
    assert parse_options(area) == [(7, b"\x04" + bytes(4))]
    assert parse_options(b"") == []
    assert parse_options(b"\x01\x01\x01\x00") == []


@given(st.lists(option_tlv, max_size=4))
def test_build_options_round_trip(options: list[tuple[int, bytes]]) -> None:
    try:
        area = build_options(options)
    except ValueError:
        assert sum(len(v) + 2 for _, v in options) > 40
        return
    assert len(area) % 4 == 0
    assert len(area) <= 40
    assert parse_options(area) == options


@pytest.mark.parametrize(
    "change",
    [
        {"options": b"\x01\x01\x01"},  # not a multiple of 4
        {"options": b"\x01" * 44},  # more than 40 bytes
        {"fragment_offset": 7},  # not a multiple of 8
        {"fragment_offset": 65536},
        {"ttl": 256},
        {"ident": -1},
        {"src": b"\x01\x02\x03"},
    ],
)
def test_build_rejects_bad_fields(change: dict[str, Any]) -> None:
    hdr = dataclasses.replace(IPv4Header(bytes(4), bytes(4), IPPROTO_UDP), **change)
    with pytest.raises(ValueError):
        hdr.build(0)


def test_build_rejects_oversized_payload() -> None:
    hdr = IPv4Header(bytes(4), bytes(4), IPPROTO_UDP)
    assert len(hdr.build(0xFFFF - 20)) == 20
    with pytest.raises(ValueError):
        hdr.build(0xFFFF - 19)


def test_protocol_names() -> None:
    assert protocol_name(17) == "udp"
    assert protocol_name(6) == "tcp"
    assert protocol_name(1) == "icmp"
    assert protocol_name(58) == "icmpv6"
    assert protocol_name(253) == "proto-253"


@given(
    src=st.binary(min_size=4, max_size=4),
    dst=st.binary(min_size=4, max_size=4),
    protocol=st.integers(0, 255),
    payload=st.binary(max_size=300),
    ttl=st.integers(0, 255),
    ident=st.integers(0, 0xFFFF),
    tos=st.integers(0, 255),
    df=st.booleans(),
)
def test_build_datagram_equals_header_pack(
    src: bytes,
    dst: bytes,
    protocol: int,
    payload: bytes,
    ttl: int,
    ident: int,
    tos: int,
    df: bool,
) -> None:
    """The send path's one-step builder makes exactly the bytes of IPv4Header.pack."""
    from netstack.header.ipv4 import build_datagram

    fast = build_datagram(
        src, dst, protocol, payload, ttl=ttl, ident=ident, tos=tos, dont_fragment=df
    )
    slow = IPv4Header(
        src=src, dst=dst, protocol=protocol, ttl=ttl, ident=ident, tos=tos, dont_fragment=df
    ).pack(payload)
    assert fast == slow
    assert checksum(fast[:20]) == 0


_BUILT = st.builds(
    lambda src, dst, proto, payload, ident, mf, offset: IPv4Header(
        src=src,
        dst=dst,
        protocol=proto,
        ident=ident,
        more_fragments=mf,
        fragment_offset=offset * 8,
    ).pack(payload),
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=4, max_size=4),
    st.integers(0, 255),
    st.binary(max_size=40),
    st.integers(0, 0xFFFF),
    st.booleans(),
    st.integers(0, 0x1FFF),
)


def _peek_fields(data: bytes) -> tuple[int, int, int, int, int, int, bytes, bytes]:
    """The fields the receive path once took from a tuple parser, read at the named offsets."""
    from netstack.header.ipv4 import (
        IPV4_DST,
        IPV4_FLAGS_AT,
        IPV4_IDENT_AT,
        IPV4_PROTOCOL_AT,
        IPV4_SRC,
        IPV4_TOTAL_LENGTH_AT,
    )

    def u16(at: int) -> int:
        return int.from_bytes(data[at : at + 2], "big")

    return (
        (data[0] & 0x0F) * 4,
        u16(IPV4_TOTAL_LENGTH_AT),
        u16(IPV4_IDENT_AT),
        u16(IPV4_FLAGS_AT),
        data[8],
        data[IPV4_PROTOCOL_AT],
        data[IPV4_SRC],
        data[IPV4_DST],
    )


@given(st.one_of(st.binary(max_size=80), _BUILT))
def test_the_named_offsets_agree_with_parse_on_any_bytes(data: bytes) -> None:
    """The named field offsets (the filter's and offload's peek) read what the parse reads."""
    try:
        record = IPv4Header.parse(data)
    except ParseError:
        return
    hl, total, ident, flags, ttl, proto, src, dst = _peek_fields(data)
    assert (hl, total, ident, ttl, proto, src, dst) == (
        record.header_length,
        record.total_length,
        record.ident,
        record.ttl,
        record.protocol,
        record.src,
        record.dst,
    )
    assert (flags & 0x1FFF) << 3 == record.fragment_offset
    assert bool(flags & 0x2000) == record.more_fragments
