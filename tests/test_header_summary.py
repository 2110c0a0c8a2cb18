"""One-line packet summaries: exact lines for known packets, and never an exception."""

from __future__ import annotations

import socket

from hypothesis import given
from hypothesis import strategies as st

from netstack.header import icmpv4, icmpv6
from netstack.header.icmpv4 import ICMPv4Message
from netstack.header.icmpv6 import ICMPv6Message
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import (
    IPv6Extension,
    IPv6Fragment,
    IPv6Header,
    build_extensions,
    build_tlv_options,
)
from netstack.header.numbers import (
    IPPROTO_HOPOPTS,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_NONE,
    IPPROTO_TCP,
    IPPROTO_UDP,
)
from netstack.header.summary import summarize
from netstack.header.tcp import ACK, PSH, SYN, TCPHeader, TCPOptions, build_tcp
from netstack.header.udp import build_udp


def v4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


CLIENT, SERVER = v4("10.0.0.1"), v4("10.30.30.30")
CLIENT6, SERVER6 = v6("fd30::1"), v6("fd30::30")


def udp4(payload: bytes = bytes(30)) -> bytes:
    datagram = build_udp(CLIENT, SERVER, 5353, 53, payload)
    return IPv4Header(CLIENT, SERVER, IPPROTO_UDP, ident=5).pack(datagram)


def tcp4(header: TCPHeader, payload: bytes = b"") -> bytes:
    segment = build_tcp(CLIENT, SERVER, header, payload)
    return IPv4Header(CLIENT, SERVER, IPPROTO_TCP).pack(segment)


def test_udp() -> None:
    assert summarize(udp4()) == "IPv4 10.0.0.1.5353 > 10.30.30.30.53: UDP len 30"
    assert summarize(memoryview(udp4())) == "IPv4 10.0.0.1.5353 > 10.30.30.30.53: UDP len 30"


def test_udp_bad_checksum_and_malformed() -> None:
    packet = bytearray(udp4())
    packet[-1] ^= 1
    assert summarize(packet).endswith("UDP len 30 bad cksum")
    short = IPv4Header(CLIENT, SERVER, IPPROTO_UDP).pack(b"\x00\x01\x00\x02\x00\x20\x00\x00")
    assert summarize(short) == "IPv4 10.0.0.1 > 10.30.30.30: UDP malformed (bad_length) 8 bytes"


def test_tcp_syn() -> None:
    syn = TCPHeader(40000, 53, 1, 0, SYN, 64240)
    assert (
        summarize(tcp4(syn))
        == "IPv4 10.0.0.1.40000 > 10.30.30.30.53: TCP [SYN] seq 1 win 64240 len 0"
    )


def test_tcp_with_ack_payload_and_options() -> None:
    options = TCPOptions(mss=1460, window_scale=7, sack_permitted=True, timestamp=(5, 6))
    seg = TCPHeader(40000, 53, 100, 200, PSH | ACK, 512, options=options)
    assert summarize(tcp4(seg, b"hello")) == (
        "IPv4 10.0.0.1.40000 > 10.30.30.30.53: TCP [PSH,ACK] seq 100 ack 200 win 512 len 5 "
        "<mss 1460,sackOK,TS val 5 ecr 6,wscale 7>"
    )


def test_icmpv4_echo_and_unreachable() -> None:
    echo = icmpv4.echo_request(7, 1, b"ping")
    packet = IPv4Header(CLIENT, SERVER, IPPROTO_ICMP).pack(echo.build())
    assert summarize(packet) == "IPv4 10.0.0.1 > 10.30.30.30: ICMP echo request id 7 seq 1"
    unreach = ICMPv4Message(icmpv4.DEST_UNREACHABLE, icmpv4.PORT_UNREACHABLE, 0, udp4()[:28])
    packet = IPv4Header(SERVER, CLIENT, IPPROTO_ICMP).pack(unreach.build())
    assert summarize(packet) == (
        "IPv4 10.30.30.30 > 10.0.0.1: ICMP destination unreachable (port unreachable)"
    )


def test_ipv4_fragments() -> None:
    first = IPv4Header(CLIENT, SERVER, IPPROTO_UDP, ident=5, more_fragments=True)
    later = IPv4Header(CLIENT, SERVER, IPPROTO_UDP, ident=5, fragment_offset=1480)
    assert summarize(first.pack(bytes(1480))) == (
        "IPv4 10.0.0.1 > 10.30.30.30: UDP frag id 5 off 0+ len 1480"
    )
    assert summarize(later.pack(bytes(8))) == (
        "IPv4 10.0.0.1 > 10.30.30.30: UDP frag id 5 off 1480 len 8"
    )
    middle = IPv4Header(
        CLIENT, SERVER, IPPROTO_UDP, ident=5, fragment_offset=1480, more_fragments=True
    )
    assert "frag id 5 off 1480+" in summarize(middle.pack(bytes(8)))


def test_ipv4_malformed() -> None:
    packet = bytearray(IPv4Header(CLIENT, SERVER, IPPROTO_UDP).pack(bytes(40)))
    packet[8] ^= 0xFF  # the TTL, under the header checksum
    assert summarize(packet) == "IPv4 malformed (bad_checksum) 60 bytes"
    assert summarize(packet[:12]) == "IPv4 malformed (truncated) 12 bytes"


def test_ipv6_icmp_echo() -> None:
    echo = icmpv6.echo_request(7, 1, b"ping").build(CLIENT6, SERVER6)
    packet = IPv6Header(CLIENT6, SERVER6, IPPROTO_ICMPV6).pack(echo)
    assert summarize(packet) == "IPv6 fd30::1 > fd30::30: ICMPv6 echo request id 7 seq 1"


def test_ipv6_udp_with_extensions_and_fragment() -> None:
    datagram = build_udp(CLIENT6, SERVER6, 5353, 53, bytes(10))
    hbh = IPv6Extension(IPPROTO_HOPOPTS, build_tlv_options([]))
    first, chain = build_extensions([hbh], IPPROTO_UDP)
    packet = IPv6Header(CLIENT6, SERVER6, first).pack(chain + datagram)
    assert summarize(packet) == "IPv6 [hopopts] fd30::1.5353 > fd30::30.53: UDP len 10"
    frag = IPv6Fragment(offset=1232, more=True, ident=99)
    first, chain = build_extensions([frag], IPPROTO_UDP)
    packet = IPv6Header(CLIENT6, SERVER6, first).pack(chain + bytes(16))
    assert summarize(packet) == "IPv6 fd30::1 > fd30::30: UDP frag id 99 off 1232+ len 16"


def test_ipv6_neighbor_solicitation_and_no_next_header() -> None:
    ns = ICMPv6Message(icmpv6.NEIGHBOR_SOLICITATION, 0, 0, SERVER6).build(CLIENT6, SERVER6)
    packet = IPv6Header(CLIENT6, SERVER6, IPPROTO_ICMPV6, hop_limit=255).pack(ns)
    assert summarize(packet) == (
        "IPv6 fd30::1 > fd30::30: ICMPv6 neighbor solicitation target fd30::30"
    )
    empty = IPv6Header(CLIENT6, SERVER6, IPPROTO_NONE).pack(b"")
    assert summarize(empty) == "IPv6 fd30::1 > fd30::30: no next header len 0"


def test_odd_inputs() -> None:
    assert summarize(b"") == "empty packet"
    assert summarize(b"\x50" + bytes(19)) == "IP version 5 (unknown) 20 bytes"
    assert summarize(bytes(39) + b"\x60") == "IP version 0 (unknown) 40 bytes"
    assert summarize(b"\x60" + bytes(10)) == "IPv6 malformed (truncated) 11 bytes"


@given(st.binary(max_size=120))
def test_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    line = summarize(data)
    assert "undecodable" not in line
    assert "\n" not in line


@given(st.sampled_from([0x40, 0x45, 0x46, 0x60]), st.binary(max_size=120))
def test_never_raises_on_ip_like_bytes(first: int, rest: bytes) -> None:
    line = summarize(bytes((first,)) + rest)
    assert line.startswith("IPv4" if first < 0x60 else "IPv6")
    assert "undecodable" not in line


VALID = [
    udp4(),
    tcp4(
        TCPHeader(40000, 53, 1, 0, SYN, 64240, options=TCPOptions(mss=1460, sack_blocks=((1, 2),)))
    ),
    IPv6Header(CLIENT6, SERVER6, IPPROTO_ICMPV6).pack(
        icmpv6.echo_request(7, 1).build(CLIENT6, SERVER6)
    ),
    IPv6Header(CLIENT6, SERVER6, IPPROTO_TCP).pack(
        build_tcp(CLIENT6, SERVER6, TCPHeader(1, 2, 3, 4, ACK, 5), b"data")
    ),
]


edits = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4)


@given(st.sampled_from(VALID), edits)
def test_never_raises_on_mutated_packets(packet: bytes, changes: list[tuple[int, int]]) -> None:
    mutated = bytearray(packet)
    for pos, value in changes:
        if pos < len(mutated):
            mutated[pos] = value
    line = summarize(bytes(mutated))
    assert "undecodable" not in line
    assert line.startswith(("IPv4", "IPv6", "IP version"))
