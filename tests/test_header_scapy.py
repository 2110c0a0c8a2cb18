"""Cross-checks against Scapy, an independent implementation of the same wire formats.

Packets built here are dissected by Scapy and the other way round; checksums computed by one
side must verify on the other. Skipped when Scapy (a test extra) is not installed.
"""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.header import icmpv4
from netstack.header.icmpv4 import ICMPv4Message
from netstack.header.icmpv6 import ICMPv6Message
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import (
    IPV6_HEADER_LEN,
    IPv6Extension,
    IPv6Fragment,
    IPv6Header,
    walk_extensions,
)
from netstack.header.numbers import (
    IPPROTO_DSTOPTS,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMP,
    IPPROTO_ROUTING,
    IPPROTO_TCP,
    IPPROTO_UDP,
)
from netstack.header.tcp import TCPHeader, TCPOptions, build_tcp, tcp_checksum_ok
from netstack.header.udp import UDPHeader, build_udp, udp_checksum_ok

inet = pytest.importorskip("scapy.layers.inet")
inet6 = pytest.importorskip("scapy.layers.inet6")
Raw = pytest.importorskip("scapy.packet").Raw
IP, TCP, UDP, ICMP = inet.IP, inet.TCP, inet.UDP, inet.ICMP
IPv6, ICMPv6EchoRequest = inet6.IPv6, inet6.ICMPv6EchoRequest
IPv6ExtHdrHopByHop, IPv6ExtHdrRouting = inet6.IPv6ExtHdrHopByHop, inet6.IPv6ExtHdrRouting
IPv6ExtHdrDestOpt, IPv6ExtHdrFragment = inet6.IPv6ExtHdrDestOpt, inet6.IPv6ExtHdrFragment

EXAMPLES = settings(max_examples=60, deadline=None)
addr4 = st.binary(min_size=4, max_size=4)
addr6 = st.binary(min_size=16, max_size=16)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def ntop4(a: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET, a)


def ntop6(a: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, a)


@EXAMPLES
@given(
    addr4,
    addr4,
    u16,
    u16,
    st.integers(0, 255),
    st.integers(0, 255),
    u16,
    st.booleans(),
    st.integers(0, 0x1FFF),
    st.binary(max_size=64),
)
def test_our_ipv4_udp_dissected_by_scapy(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    ttl: int,
    tos: int,
    ident: int,
    df: bool,
    frag: int,
    payload: bytes,
) -> None:
    datagram = build_udp(src, dst, sport, dport, payload)
    hdr = IPv4Header(
        src,
        dst,
        IPPROTO_UDP,
        ttl=ttl,
        tos=tos,
        ident=ident,
        dont_fragment=df,
        fragment_offset=frag * 8,
    )
    raw = hdr.pack(datagram)
    pkt = IP(raw)
    assert (pkt.src, pkt.dst, pkt.ttl, pkt.tos, pkt.id, pkt.frag, pkt.proto, pkt.len) == (
        ntop4(src),
        ntop4(dst),
        ttl,
        tos,
        ident,
        frag,
        IPPROTO_UDP,
        len(raw),
    )
    assert bool(pkt.flags.DF) == df
    if frag == 0:
        assert (pkt[UDP].sport, pkt[UDP].dport, pkt[UDP].len) == (sport, dport, len(datagram))
    # Scapy recomputes both checksums from scratch: they must equal ours.
    del pkt.chksum
    if frag == 0:
        del pkt[UDP].chksum
    assert bytes(pkt) == raw


@EXAMPLES
@given(
    addr4,
    addr4,
    u16,
    u16,
    u32,
    u32,
    st.integers(0, 255),
    u16,
    st.binary(max_size=64),
    st.none() | u16,
    st.none() | st.integers(0, 14),
    st.booleans(),
    st.none() | st.tuples(u32, u32),
    st.lists(st.tuples(u32, u32), max_size=2),
)
def test_scapy_tcp_parsed_by_us(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes,
    mss: int | None,
    wscale: int | None,
    sack_ok: bool,
    ts: tuple[int, int] | None,
    sacks: list[tuple[int, int]],
) -> None:
    options: list[tuple[str, object]] = []
    if mss is not None:
        options.append(("MSS", mss))
    if sack_ok:
        options.append(("SAckOK", b""))
    if ts is not None:
        options.append(("Timestamp", ts))
    if wscale is not None:
        options.append(("WScale", wscale))
    if sacks:
        options.append(("SAck", tuple(edge for block in sacks for edge in block)))
    pkt = (
        IP(src=ntop4(src), dst=ntop4(dst))
        / TCP(
            sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window, options=options
        )
        / Raw(payload)
    )
    raw = bytes(pkt)
    ip = IPv4Header.parse(raw)
    segment = raw[ip.header_length : ip.total_length]
    assert tcp_checksum_ok(src, dst, segment)
    tcp = TCPHeader.parse(segment)
    assert (tcp.src_port, tcp.dst_port, tcp.seq, tcp.ack, tcp.flags, tcp.window) == (
        sport,
        dport,
        seq,
        ack,
        flags,
        window,
    )
    assert tcp.options == TCPOptions(
        mss=mss,
        window_scale=wscale,
        sack_permitted=sack_ok,
        sack_blocks=tuple(sacks),
        timestamp=ts,
    )
    assert segment[tcp.header_length :] == payload
    # Rebuilt by us (canonical option order), the segment is valid for Scapy too.
    ours = build_tcp(src, dst, tcp, payload)
    theirs = IP(IPv4Header(src, dst, IPPROTO_TCP).pack(ours))
    assert theirs[TCP].chksum == int.from_bytes(ours[16:18], "big")
    del theirs[TCP].chksum
    assert bytes(theirs[TCP]) == ours


@EXAMPLES
@given(addr6, addr6, u16, u16, st.binary(max_size=64), st.integers(0, 0x1FFF), u32)
def test_scapy_ipv6_chain_walked_by_us(
    src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, frag_off: int, ident: int
) -> None:
    pkt = (
        IPv6(src=ntop6(src), dst=ntop6(dst))
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrFragment(offset=frag_off, m=1, id=ident)
        / UDP(sport=sport, dport=dport)
        / Raw(payload)
    )
    raw = bytes(pkt)
    hdr = IPv6Header.parse(raw)
    assert hdr.payload_length == len(raw) - IPV6_HEADER_LEN
    chain = walk_extensions(raw, hdr.next_header)
    assert [h.kind for h in chain.headers] == [
        IPPROTO_HOPOPTS,
        IPPROTO_ROUTING,
        IPPROTO_DSTOPTS,
        44,
    ]
    assert chain.fragment == IPv6Fragment(offset=frag_off * 8, more=True, ident=ident)
    assert chain.fragment_offset_in_packet == len(raw) - 8 - 8 - len(payload)
    assert raw[chain.next_header_field_offset] == 44
    if frag_off == 0:
        assert chain.upper_protocol == IPPROTO_UDP
        datagram = raw[chain.upper_offset :]
        assert UDPHeader.parse(datagram) == UDPHeader(sport, dport, 8 + len(payload))
        assert udp_checksum_ok(src, dst, datagram)
    else:
        assert chain.upper_protocol == IPPROTO_UDP
        assert chain.upper_offset == chain.fragment_offset_in_packet + 8
    assert isinstance(chain.headers[0], IPv6Extension)


@EXAMPLES
@given(addr6, addr6, u16, u16, st.binary(max_size=64))
def test_icmpv6_echo_both_ways(src: bytes, dst: bytes, ident: int, seq: int, data: bytes) -> None:
    theirs = bytes(
        IPv6(src=ntop6(src), dst=ntop6(dst)) / ICMPv6EchoRequest(id=ident, seq=seq, data=data)
    )
    msg = ICMPv6Message.parse(theirs[IPV6_HEADER_LEN:], src, dst)
    assert (msg.type, msg.ident, msg.sequence, msg.payload) == (128, ident, seq, data)
    assert msg.build(src, dst) == theirs[IPV6_HEADER_LEN:]


@EXAMPLES
@given(addr4, addr4, u16, u16, st.binary(max_size=64))
def test_icmpv4_echo_both_ways(src: bytes, dst: bytes, ident: int, seq: int, data: bytes) -> None:
    theirs = bytes(IP(src=ntop4(src), dst=ntop4(dst)) / ICMP(id=ident, seq=seq) / Raw(data))
    ip = IPv4Header.parse(theirs)
    assert ip.protocol == IPPROTO_ICMP
    msg = ICMPv4Message.parse(theirs[ip.header_length :])
    assert msg == icmpv4.echo_request(ident, seq, data)
    assert msg.build() == theirs[ip.header_length :]
