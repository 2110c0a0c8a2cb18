"""The one validated parse per header: round trips with the builders, field by field; the
malformed cases; and the unparsed reads (the named field offsets, the TUN filter, the
segmentation offload) agreeing with the parse on random packets.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from netstack.errors import ParseError
from netstack.header import ipv4 as h4
from netstack.header import ipv6 as h6
from netstack.header import tcp as ht
from netstack.header import udp as hu
from netstack.header.icmpv4 import ICMPv4Message
from netstack.header.icmpv6 import ICMPv6Message
from netstack.header.ipv4 import IPv4Header, build_datagram, build_options
from netstack.header.ipv6 import (
    IPV6_HEADER_LEN,
    IPv6Extension,
    IPv6Fragment,
    IPv6Header,
    build_extensions,
    walk_extensions,
)
from netstack.header.numbers import (
    IPPROTO_DSTOPTS,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
)
from netstack.header.tcp import ACK, NO_OPTIONS, PSH, TCPHeader, TCPOptions, build_tcp
from netstack.header.udp import UDPHeader, build_udp
from netstack.link.offload import _tcp_offset, starts_run
from olm.device.filtered import FilteredDevice

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
addr4 = st.binary(min_size=4, max_size=4)
addr6 = st.binary(min_size=16, max_size=16)
families = st.sampled_from([4, 16]).flatmap(
    lambda n: st.tuples(st.binary(min_size=n, max_size=n), st.binary(min_size=n, max_size=n))
)


def u16_at(buf: bytes, at: int) -> int:
    return int.from_bytes(buf[at : at + 2], "big")


def u32_at(buf: bytes, at: int) -> int:
    return int.from_bytes(buf[at : at + 4], "big")


# -- builders' inputs ---------------------------------------------------------------------------


@st.composite
def ipv4_headers(draw: st.DrawFn) -> IPv4Header:
    options = build_options(
        draw(st.lists(st.tuples(st.integers(2, 255), st.binary(max_size=6)), max_size=3))
    )
    return IPv4Header(
        src=draw(addr4),
        dst=draw(addr4),
        protocol=draw(u8),
        ttl=draw(u8),
        tos=draw(u8),
        ident=draw(u16),
        reserved_flag=draw(st.booleans()),
        dont_fragment=draw(st.booleans()),
        more_fragments=draw(st.booleans()),
        fragment_offset=draw(st.integers(0, 0x1FFF)) * 8,
        options=options,
    )


def _fits(options: TCPOptions) -> bool:
    try:
        options.build()
    except ValueError:
        return False
    return True


tcp_options = st.builds(
    TCPOptions,
    mss=st.none() | u16,
    window_scale=st.none() | st.integers(0, 14),
    sack_permitted=st.booleans(),
    sack_blocks=st.lists(st.tuples(u32, u32), max_size=3).map(tuple),
    timestamp=st.none() | st.tuples(u32, u32),
    unknown=st.lists(st.tuples(st.integers(9, 255), st.binary(max_size=4)), max_size=1).map(tuple),
).filter(_fits)


tcp_headers = st.builds(
    TCPHeader,
    src_port=u16,
    dst_port=u16,
    seq=u32,
    ack=u32,
    flags=u8,
    window=u16,
    urgent=u16,
    options=st.just(NO_OPTIONS) | tcp_options,
)


# -- round trips: every named field -------------------------------------------------------------


@given(ipv4_headers(), st.binary(max_size=64), st.binary(max_size=8))
def test_ipv4_round_trip_field_by_field(hdr: IPv4Header, payload: bytes, padding: bytes) -> None:
    packet = hdr.pack(payload)
    got = IPv4Header.parse(packet + padding)
    assert got.src == hdr.src
    assert got.dst == hdr.dst
    assert got.protocol == hdr.protocol
    assert got.ttl == hdr.ttl
    assert got.tos == hdr.tos
    assert got.ident == hdr.ident
    assert got.reserved_flag is hdr.reserved_flag
    assert got.dont_fragment is hdr.dont_fragment
    assert got.more_fragments is hdr.more_fragments
    assert got.fragment_offset == hdr.fragment_offset
    assert got.options == hdr.options
    assert got.total_length == len(packet)
    assert got.header_length == hdr.header_length == 20 + len(hdr.options)
    assert got.checksum == u16_at(packet, h4.IPV4_CHECKSUM_AT)
    assert type(got) is IPv4Header
    assert got.build(len(payload)) == packet[: got.header_length]


@given(addr4, addr4, u8, st.binary(max_size=64), u8, u16, u8, st.booleans())
def test_ipv4_send_path_builder_round_trip(
    src: bytes, dst: bytes, proto: int, payload: bytes, ttl: int, ident: int, tos: int, df: bool
) -> None:
    packet = build_datagram(
        src, dst, proto, payload, ttl=ttl, ident=ident, tos=tos, dont_fragment=df
    )
    got = IPv4Header.parse(packet)
    assert (got.src, got.dst, got.protocol, got.ttl, got.ident, got.tos) == (
        src,
        dst,
        proto,
        ttl,
        ident,
        tos,
    )
    assert (got.dont_fragment, got.more_fragments, got.reserved_flag) == (df, False, False)
    assert (got.fragment_offset, got.options, got.header_length) == (0, b"", 20)
    assert got.total_length == 20 + len(payload)


@given(
    addr6,
    addr6,
    u8,
    u8,
    st.integers(0, 0xFFFFF),
    st.lists(st.binary(min_size=6, max_size=6).map(lambda d: IPv6Extension(IPPROTO_DSTOPTS, d))),
    st.none() | st.tuples(st.integers(0, 0x1FFF), st.booleans(), u32),
    st.binary(max_size=40),
)
def test_ipv6_round_trip_with_extension_walk(
    src: bytes,
    dst: bytes,
    hop_limit: int,
    traffic_class: int,
    flow: int,
    options: list[IPv6Extension],
    fragment: tuple[int, bool, int] | None,
    data: bytes,
) -> None:
    chain: list[IPv6Extension | IPv6Fragment] = list(options[:3])
    if fragment is not None:
        chain.append(IPv6Fragment(offset=fragment[0] * 8, more=fragment[1], ident=fragment[2]))
    first, ext = build_extensions(chain, IPPROTO_UDP)
    hdr = IPv6Header(src, dst, first, hop_limit, traffic_class, flow)
    packet = hdr.pack(ext + data)
    got = IPv6Header.parse(packet)
    assert (got.src, got.dst, got.next_header, got.hop_limit) == (src, dst, first, hop_limit)
    assert (got.traffic_class, got.flow_label) == (traffic_class, flow)
    assert got.payload_length == len(ext) + len(data)
    assert type(got) is IPv6Header
    walked = walk_extensions(packet, got.next_header, IPV6_HEADER_LEN, len(packet))
    assert walked.headers == chain
    assert walked.upper_protocol == IPPROTO_UDP
    assert walked.upper_offset == IPV6_HEADER_LEN + len(ext)
    assert walked.fragment == (chain[-1] if fragment is not None else None)


@given(families, u16, u16, st.binary(max_size=64), st.binary(max_size=4))
def test_udp_round_trip_field_by_field(
    addrs: tuple[bytes, bytes], sport: int, dport: int, payload: bytes, trailer: bytes
) -> None:
    datagram = build_udp(addrs[0], addrs[1], sport, dport, payload)
    got = UDPHeader.parse(datagram + trailer)
    assert (got.src_port, got.dst_port, got.length) == (sport, dport, 8 + len(payload))
    assert got.checksum == u16_at(datagram, hu.UDP_CHECKSUM_AT) != 0
    assert type(got) is UDPHeader


@given(families, tcp_headers, st.binary(max_size=64))
def test_tcp_round_trip_field_by_field(
    addrs: tuple[bytes, bytes], hdr: TCPHeader, payload: bytes
) -> None:
    segment = build_tcp(addrs[0], addrs[1], hdr, payload)
    got = TCPHeader.parse(segment)
    assert got.src_port == hdr.src_port
    assert got.dst_port == hdr.dst_port
    assert got.seq == hdr.seq
    assert got.ack == hdr.ack
    assert got.flags == hdr.flags
    assert got.window == hdr.window
    assert got.urgent == hdr.urgent
    assert got.header_length == len(segment) - len(payload)
    assert got.checksum == u16_at(segment, ht.TCP_CHECKSUM_AT)
    opts = got.options
    assert opts.mss == hdr.options.mss
    assert opts.window_scale == hdr.options.window_scale
    assert opts.sack_permitted == hdr.options.sack_permitted
    assert opts.sack_blocks == hdr.options.sack_blocks
    assert opts.timestamp == hdr.options.timestamp
    assert opts.unknown == hdr.options.unknown
    assert type(got) is TCPHeader and type(opts) is TCPOptions
    assert ht.tcp_checksum_ok(addrs[0], addrs[1], segment)


@given(u32, u32)
def test_tcp_timestamp_layout_read_in_one_step_equals_the_general_walk(
    tsval: int, tsecr: int
) -> None:
    # NOP, NOP, Timestamps (RFC 7323 Appendix A) is read in one step; a layout of the same
    # length with the option first and two NOPs after it goes through the general walk.
    aligned = bytes((1, 1, 8, 10)) + tsval.to_bytes(4, "big") + tsecr.to_bytes(4, "big")
    trailing = bytes((8, 10)) + aligned[4:] + bytes((1, 1))
    assert TCPOptions.parse(aligned) == TCPOptions.parse(trailing)
    assert TCPOptions.parse(aligned) == TCPOptions(timestamp=(tsval, tsecr))


@given(u8, u8, u32, st.binary(max_size=40), addr6, addr6)
def test_icmp_round_trips(
    kind: int, code: int, rest: int, payload: bytes, src: bytes, dst: bytes
) -> None:
    v4 = ICMPv4Message.parse(ICMPv4Message(kind, code, rest, payload).build())
    assert (v4.type, v4.code, v4.rest, v4.payload) == (kind, code, rest, payload)
    assert type(v4) is ICMPv4Message
    v6 = ICMPv6Message.parse(ICMPv6Message(kind, code, rest, payload).build(src, dst), src, dst)
    assert (v6.type, v6.code, v6.rest, v6.payload) == (kind, code, rest, payload)
    assert type(v6) is ICMPv6Message


# -- malformed input: ParseError with its reason ------------------------------------------------


def _expect(reason: str, parse: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(ParseError) as info:
        parse(*args, **kwargs)
    assert info.value.reason == reason


@given(ipv4_headers(), st.binary(max_size=16), st.data())
def test_ipv4_rejections(hdr: IPv4Header, payload: bytes, data: st.DataObject) -> None:
    packet = hdr.pack(payload)
    _expect("truncated", IPv4Header.parse, packet[: data.draw(st.integers(0, 19))])
    bad = bytearray(packet)
    bad[0] = data.draw(st.integers(0, 15).filter(lambda v: v != 4)) << 4 | (bad[0] & 0xF)
    _expect("bad_version", IPv4Header.parse, bytes(bad), verify_checksum=False)
    bad = bytearray(packet)
    bad[0] = 0x40 | data.draw(st.integers(0, 4))
    _expect("bad_header_length", IPv4Header.parse, bytes(bad), verify_checksum=False)
    # An IHL past the end of the buffer.
    cut = packet[: hdr.header_length + len(payload)][: data.draw(st.integers(20, 59))]
    bad = bytearray(cut)
    bad[0] = 0x40 | (len(cut) // 4 + 1)
    assume((bad[0] & 0xF) <= 15)
    _expect("bad_header_length", IPv4Header.parse, bytes(bad), verify_checksum=False)
    # Total Length beyond the buffer: the packet cut short.
    if payload:
        _expect("bad_total_length", IPv4Header.parse, packet[:-1], verify_checksum=False)
    # A flipped bit in TTL, identification or the addresses: only the checksum can tell.
    at = data.draw(st.sampled_from([4, 5, 8, *range(12, 20)]))
    bad = bytearray(packet)
    bad[at] ^= 1 << data.draw(st.integers(0, 7))
    _expect("bad_checksum", IPv4Header.parse, bytes(bad))
    lenient = IPv4Header.parse(bytes(bad), verify_checksum=False)
    assert lenient.checksum == u16_at(packet, h4.IPV4_CHECKSUM_AT)


@given(addr6, addr6, st.binary(max_size=32), st.data())
def test_ipv6_rejections(src: bytes, dst: bytes, payload: bytes, data: st.DataObject) -> None:
    packet = IPv6Header(src, dst, IPPROTO_UDP).pack(payload)
    _expect("truncated", IPv6Header.parse, packet[: data.draw(st.integers(0, 39))])
    bad = bytearray(packet)
    bad[0] = data.draw(st.integers(0, 15).filter(lambda v: v != 6)) << 4 | (bad[0] & 0xF)
    _expect("bad_version", IPv6Header.parse, bytes(bad))
    if payload:
        _expect("bad_length", IPv6Header.parse, packet[:-1])


@given(families, u16, u16, st.binary(max_size=32), st.data())
def test_udp_rejections(
    addrs: tuple[bytes, bytes], sport: int, dport: int, payload: bytes, data: st.DataObject
) -> None:
    datagram = build_udp(addrs[0], addrs[1], sport, dport, payload)
    _expect("truncated", UDPHeader.parse, datagram[: data.draw(st.integers(0, 7))])
    bad = bytearray(datagram)
    bad[4:6] = data.draw(st.integers(0, 7)).to_bytes(2, "big")
    _expect("bad_length", UDPHeader.parse, bytes(bad))
    if payload:
        _expect("bad_length", UDPHeader.parse, datagram[:-1])


@given(families, tcp_headers, st.binary(max_size=16), st.data())
def test_tcp_rejections(
    addrs: tuple[bytes, bytes], hdr: TCPHeader, payload: bytes, data: st.DataObject
) -> None:
    segment = build_tcp(addrs[0], addrs[1], hdr, payload)
    _expect("truncated", TCPHeader.parse, segment[: data.draw(st.integers(0, 19))])
    bad = bytearray(segment)
    bad[ht.TCP_DATA_OFFSET_AT] = data.draw(st.integers(0, 4)) << 4
    _expect("bad_data_offset", TCPHeader.parse, bytes(bad))
    # A data offset past the end of the buffer.
    hl = TCPHeader.parse(segment).header_length
    cut = segment[: data.draw(st.integers(20, hl))]
    words = len(cut) // 4 + 1
    assume(words <= 15)
    bad = bytearray(cut)
    bad[ht.TCP_DATA_OFFSET_AT] = words << 4
    _expect("bad_data_offset", TCPHeader.parse, bytes(bad))
    # The checksum is checked apart, over the pseudo-header.
    flipped = bytearray(segment)
    flipped[data.draw(st.integers(0, len(segment) - 1))] ^= 1
    assert not ht.tcp_checksum_ok(addrs[0], addrs[1], bytes(flipped))


@given(u8, u8, u32, st.binary(max_size=32), addr6, addr6, st.data())
def test_icmp_rejections(
    kind: int,
    code: int,
    rest: int,
    payload: bytes,
    src: bytes,
    dst: bytes,
    data: st.DataObject,
) -> None:
    v4 = ICMPv4Message(kind, code, rest, payload).build()
    v6 = ICMPv6Message(kind, code, rest, payload).build(src, dst)
    short = data.draw(st.integers(0, 7))
    _expect("truncated", ICMPv4Message.parse, v4[:short])
    _expect("truncated", ICMPv6Message.parse, v6[:short], src, dst)
    at = data.draw(st.integers(0, len(v4) - 1))
    bit = 1 << data.draw(st.integers(0, 7))
    bad4, bad6 = bytearray(v4), bytearray(v6)
    bad4[at] ^= bit
    bad6[at] ^= bit
    _expect("bad_checksum", ICMPv4Message.parse, bytes(bad4))
    _expect("bad_checksum", ICMPv6Message.parse, bytes(bad6), src, dst)
    assert ICMPv4Message.parse(bytes(bad4), verify_checksum=False).code == bad4[1]
    assert ICMPv6Message.parse(bytes(bad6), src, dst, verify_checksum=False).code == bad6[1]


# -- unparsed reads agree with the parse --------------------------------------------------------


@st.composite
def ip_packets(draw: st.DrawFn, tcp_only: bool = False) -> bytes:
    """A valid IPv4 or IPv6 packet carrying a UDP datagram or a TCP segment."""
    v4 = draw(st.booleans())
    src, dst = draw(addr4 if v4 else addr6), draw(addr4 if v4 else addr6)
    payload = draw(st.binary(max_size=48))
    if not tcp_only and draw(st.booleans()):
        proto, upper = IPPROTO_UDP, build_udp(src, dst, draw(u16), draw(u16), payload)
    else:
        # Flags biased towards the data segments segmentation offload merges.
        flags = draw(st.sampled_from([ACK, ACK | PSH]) | u8)
        hdr = draw(tcp_headers)
        hdr.flags = flags
        proto, upper = IPPROTO_TCP, build_tcp(src, dst, hdr, payload)
    if v4:
        return IPv4Header(
            src,
            dst,
            proto,
            ident=draw(u16),
            dont_fragment=draw(st.booleans()),
            more_fragments=draw(st.booleans()),
            fragment_offset=draw(st.sampled_from([0, 0, 8, 1480])),
            options=draw(st.sampled_from([b"", b"\x01\x01\x01\x00"])),
        ).pack(upper)
    return IPv6Header(src, dst, proto, hop_limit=draw(u8)).pack(upper)


@given(ip_packets())
def test_named_offsets_read_what_the_parse_reads(packet: bytes) -> None:
    if packet[0] >> 4 == 4:
        ip4 = IPv4Header.parse(packet)
        assert packet[h4.IPV4_SRC] == ip4.src and packet[h4.IPV4_DST] == ip4.dst
        assert packet[h4.IPV4_ADDRESSES] == ip4.src + ip4.dst
        assert packet[h4.IPV4_PROTOCOL_AT] == ip4.protocol
        assert u16_at(packet, h4.IPV4_TOTAL_LENGTH_AT) == ip4.total_length
        assert u16_at(packet, h4.IPV4_IDENT_AT) == ip4.ident
        flags = u16_at(packet, h4.IPV4_FLAGS_AT)
        assert bool(flags & h4.FLAG_DF) == ip4.dont_fragment
        assert bool(flags & h4.FLAG_MF) == ip4.more_fragments
        assert (flags & h4.OFFSET_MASK) * 8 == ip4.fragment_offset
        assert u16_at(packet, h4.IPV4_CHECKSUM_AT) == ip4.checksum
        proto, t = ip4.protocol, ip4.header_length
    else:
        ip6 = IPv6Header.parse(packet)
        assert packet[h6.IPV6_SRC] == ip6.src and packet[h6.IPV6_DST] == ip6.dst
        assert packet[h6.IPV6_ADDRESSES] == ip6.src + ip6.dst
        assert packet[h6.IPV6_NEXT_HEADER_AT] == ip6.next_header
        assert packet[h6.IPV6_HOP_LIMIT_AT] == ip6.hop_limit
        assert u16_at(packet, h6.IPV6_PAYLOAD_LENGTH_AT) == ip6.payload_length
        proto, t = ip6.next_header, IPV6_HEADER_LEN
    upper = packet[t:]
    if proto == IPPROTO_UDP:
        u = UDPHeader.parse(upper)
        assert u16_at(upper, hu.UDP_SRC_PORT_AT) == u.src_port
        assert u16_at(upper, hu.UDP_DST_PORT_AT) == u.dst_port
        assert u16_at(upper, hu.UDP_LENGTH_AT) == u.length
        assert u16_at(upper, hu.UDP_CHECKSUM_AT) == u.checksum
    else:
        s = TCPHeader.parse(upper)
        assert u16_at(upper, ht.TCP_SRC_PORT_AT) == s.src_port
        assert u16_at(upper, ht.TCP_DST_PORT_AT) == s.dst_port
        assert u32_at(upper, ht.TCP_SEQ_AT) == s.seq
        assert u32_at(upper, ht.TCP_ACK_AT) == s.ack
        assert (upper[ht.TCP_DATA_OFFSET_AT] >> 4) * 4 == s.header_length
        assert upper[ht.TCP_FLAGS_AT] == s.flags
        assert u16_at(upper, ht.TCP_WINDOW_AT) == s.window
        assert u16_at(upper, ht.TCP_CHECKSUM_AT) == s.checksum
        assert u16_at(upper, ht.TCP_URGENT_AT) == s.urgent


@given(st.lists(ip_packets(), min_size=1, max_size=8), st.data())
def test_filter_claims_exactly_what_the_parse_says_is_addressed_to_a_rule(
    packets: list[bytes], data: st.DataObject
) -> None:
    import ipaddress

    def destination(packet: bytes) -> bytes:
        if packet[0] >> 4 == 4:
            return IPv4Header.parse(packet).dst
        return IPv6Header.parse(packet).dst

    # Rules for some of the packets' destinations (as the parse reads them), and one more.
    chosen = {destination(p) for p in packets if data.draw(st.booleans())}
    chosen.add(data.draw(addr4))
    claimed: list[bytes] = []
    device = FilteredDevice(lambda batch: len(batch))
    for address in chosen:
        device.add_rule(str(ipaddress.ip_address(address)), claimed.append)
    unclaimed = device.filter(packets)
    assert claimed == [p for p in packets if destination(p) in chosen]
    assert unclaimed == [p for p in packets if destination(p) not in chosen]
    for packet in packets:
        verdict = device.rule_for(packet)
        assert verdict.startswith("address rule") == (destination(packet) in chosen)


@settings(max_examples=400)
@given(ip_packets(tcp_only=True))
def test_offload_peek_agrees_with_the_parse(packet: bytes) -> None:
    # The coalescing peek takes a TCP data segment with flags ACK or ACK|PSH, in IPv4 without
    # options and not a fragment, or in IPv6 with TCP as the fixed header's Next Header.
    if packet[0] >> 4 == 4:
        ip4 = IPv4Header.parse(packet)
        plain = ip4.header_length == 20 and not (ip4.more_fragments or ip4.fragment_offset)
        proto, t = ip4.protocol, ip4.header_length
    else:
        ip6 = IPv6Header.parse(packet)
        plain, proto, t = True, ip6.next_header, IPV6_HEADER_LEN
    expect = 0
    seg = None
    if plain and proto == IPPROTO_TCP:
        seg = TCPHeader.parse(packet[t:])
        if seg.flags in (ACK, ACK | PSH) and len(packet) > t + seg.header_length:
            expect = t
    assert _tcp_offset(packet) == expect
    assert starts_run(packet) == (expect != 0 and seg is not None and seg.flags == ACK)


def test_parse_fills_every_field_of_the_record() -> None:
    # The record the parse fills in is the builder's record, with nothing left unset.
    packet = build_datagram(bytes(4), bytes((10, 0, 0, 1)), IPPROTO_ICMPV6, b"x")
    got = IPv4Header.parse(packet)
    for name in IPv4Header.__slots__:
        getattr(got, name)
    assert got == IPv4Header(bytes(4), bytes((10, 0, 0, 1)), IPPROTO_ICMPV6, total_length=21)
