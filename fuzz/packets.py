"""Inputs for the live-stack harness: decode fuzz bytes into packets and clock steps.

The decoder spends input bytes on *decisions* (which source address, which protocol, how to
split a datagram into fragments, how to reorder them) and builds each packet with the
``netstack.header`` builders, so that most inputs pass the checksums and reach deep into the
receive path instead of dying at the first header check. Raw and mutated packets are mixed in
to cover the shallow paths as well.

The same builders serve the Hypothesis test (tests/test_fuzz_invariants.py), which draws the
decisions from its own strategies.
"""

from __future__ import annotations

from dataclasses import dataclass

from fuzz.common import ByteReader, parse_or_none
from netstack.header import icmpv4, icmpv6
from netstack.header.checksum import checksum
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import (
    IPv6Extension,
    IPv6Fragment,
    IPv6Header,
    build_extensions,
    build_tlv_options,
)
from netstack.header.numbers import (
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_NONE,
    IPPROTO_ROUTING,
    IPPROTO_TCP,
    IPPROTO_UDP,
)
from netstack.header.tcp import (
    ACK,
    FIN,
    NO_OPTIONS,
    PSH,
    RST,
    SYN,
    TCPHeader,
    TCPOptions,
    build_tcp,
)
from netstack.header.udp import build_udp


def _a4(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


HOST4 = _a4("10.0.0.1")
STACK4 = _a4("10.0.0.2")
HOST6 = bytes.fromhex("fd00" + "00" * 13 + "01")
STACK6 = bytes.fromhex("fd00" + "00" * 13 + "02")

SINK_PORT = 53
"""A bound UDPSocket with a small receive queue listens here (both families)."""
ECHO_PORT = 7
"""An endpoint that answers every datagram (large answers when the payload starts with F)."""
CONNECTED_PORT = 5300
"""A UDPSocket bound here is connected to the host's PEER_PORT (it receives ICMP errors)."""
PEER_PORT = 5353
CLOSED_PORT = 9
TCP_LISTEN_PORT = 80
"""A TCP listener (both families) whose connections echo what they receive."""
TCP_LOCAL_PORT = 40000
"""The stack's end of a TCP connection it opened to the host's TCP_PEER_PORT (IPv4)."""
TCP_PEER_PORT = 8080

SOURCES4 = (
    HOST4,
    HOST4,
    HOST4,
    _a4("10.0.0.77"),
    _a4("192.0.2.9"),  # off-link, reached through the default route (TEST-NET-1)
    _a4("224.0.0.1"),
    _a4("255.255.255.255"),
    _a4("127.0.0.1"),
    _a4("0.0.0.0"),
    STACK4,
)
DESTINATIONS4 = (
    STACK4,
    STACK4,
    STACK4,
    STACK4,
    _a4("10.0.0.255"),
    _a4("224.0.0.1"),
    _a4("255.255.255.255"),
    _a4("10.0.0.3"),
)
SOURCES6 = (
    HOST6,
    HOST6,
    HOST6,
    bytes.fromhex("fd00" + "00" * 13 + "77"),
    bytes.fromhex("20010db8" + "00" * 11 + "09"),  # off-link documentation prefix
    bytes.fromhex("ff02" + "00" * 13 + "01"),
    bytes(16),
    bytes(15) + b"\x01",
    STACK6,
)
DESTINATIONS6 = (
    STACK6,
    STACK6,
    STACK6,
    STACK6,
    bytes.fromhex("ff02" + "00" * 13 + "01"),  # all nodes: joined
    bytes.fromhex("ff0200000000000000000001ff000002"),  # solicited-node of STACK6: joined
    bytes.fromhex("ff02" + "00" * 13 + "02"),  # all routers: not joined
    bytes.fromhex("fd00" + "00" * 13 + "03"),
)
CLOCK_STEPS = (0.0, 0.001, 0.5, 1.0, 5.0, 29.0, 30.0, 31.0, 59.0, 61.0, 700.0)
MAX_OPS = 48
MAX_PACKETS = 160


@dataclass(slots=True, frozen=True)
class Inject:
    """Deliver ``packet`` to the stack through its link."""

    packet: bytes


@dataclass(slots=True, frozen=True)
class Advance:
    """Move the manual clock forward by ``seconds``."""

    seconds: float


@dataclass(slots=True, frozen=True)
class TcpToConnection:
    """A segment from the host on the established connection, numbered relative to its state.

    ``seq`` is ``seq_delta`` past the next byte the host would send and ``ack`` is
    ``ack_delta`` past the next byte the stack would send, so that small deltas land in window.
    """

    flags: int
    seq_delta: int
    ack_delta: int
    window: int
    options: TCPOptions
    payload: bytes


Op = Inject | Advance | TcpToConnection


# -- transport payloads -----------------------------------------------------------------------


def udp_datagram(r: ByteReader, src: bytes, dst: bytes) -> bytes:
    """A UDP datagram to one of the stack's interesting ports, checksum filled in."""
    dport = r.choice((SINK_PORT, ECHO_PORT, CONNECTED_PORT, CLOSED_PORT, r.u16()))
    sport = r.choice((PEER_PORT, 0, r.u16()))
    payload = r.blob(48)
    if r.below(8) == 0:
        payload = b"F" + payload  # the echo endpoint answers with a fragmented datagram
    if r.below(8) == 0:
        payload += bytes(8 * r.below(1200))  # big enough to press on the reassembly bounds
    datagram = build_udp(src, dst, sport, dport, payload)
    if len(src) == 4 and r.below(8) == 0:
        datagram = datagram[:6] + b"\0\0" + datagram[8:]  # RFC 768: no checksum
    return datagram


def our_packet(r: ByteReader, family: int) -> bytes:
    """A packet as the stack would have sent it, for ICMP errors to quote."""
    proto = r.choice((IPPROTO_UDP, IPPROTO_UDP, IPPROTO_TCP, IPPROTO_ICMP, r.u8()))
    if family == 4:
        local, remote = r.choice((STACK4, STACK4, HOST4)), r.choice((HOST4, SOURCES4[1]))
    else:
        local, remote = r.choice((STACK6, STACK6, HOST6)), r.choice((HOST6, SOURCES6[1]))
    sport = r.choice((CONNECTED_PORT, SINK_PORT, r.u16()))
    dport = r.choice((PEER_PORT, r.u16()))
    if proto == IPPROTO_UDP:
        body = build_udp(local, remote, sport, dport, r.blob(16))
    else:
        body = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + r.blob(24)
    if family == 4:
        if proto == IPPROTO_ICMP:
            body = bytes((r.choice((icmpv4.ECHO_REQUEST, icmpv4.DEST_UNREACHABLE)),)) + body
        return IPv4Header(src=local, dst=remote, protocol=proto, ident=r.u16()).pack(body)
    if proto == IPPROTO_ICMP:
        proto = IPPROTO_ICMPV6
        body = bytes((r.choice((icmpv6.ECHO_REQUEST, icmpv6.DEST_UNREACHABLE)),)) + body
    return IPv6Header(src=local, dst=remote, next_header=proto).pack(body)


def icmp_message(r: ByteReader, src: bytes, dst: bytes) -> tuple[int, bytes]:
    """An ICMPv4 or ICMPv6 message (echo, an error quoting one of our packets, or other)."""
    v4 = len(src) == 4
    kind = r.below(4)
    rest = r.u32()
    if kind == 0:
        type_ = icmpv4.ECHO_REQUEST if v4 else icmpv6.ECHO_REQUEST
        payload = r.blob(64)
    elif kind == 1:
        if v4:
            type_ = r.choice(
                (icmpv4.DEST_UNREACHABLE, icmpv4.TIME_EXCEEDED, icmpv4.PARAMETER_PROBLEM, 5, 4)
            )
        else:
            type_ = r.choice(
                (
                    icmpv6.DEST_UNREACHABLE,
                    icmpv6.PACKET_TOO_BIG,
                    icmpv6.TIME_EXCEEDED,
                    icmpv6.PARAMETER_PROBLEM,
                    r.below(128),
                )
            )
        quoted = our_packet(r, 4 if v4 else 6)
        payload = quoted[: r.choice((len(quoted), 28, 48, r.below(len(quoted) + 1)))]
    elif kind == 2:
        type_ = r.u8()
        payload = r.blob(32)
    else:
        type_ = r.choice((icmpv4.ECHO_REPLY, 13, 17) if v4 else (129, 130, 133, 135, 143))
        payload = r.blob(16)
    code = r.choice((0, 1, 2, 3, 4, r.u8()))
    if v4:
        return IPPROTO_ICMP, icmpv4.ICMPv4Message(type_, code, rest, payload).build()
    return IPPROTO_ICMPV6, icmpv6.ICMPv6Message(type_, code, rest, payload).build(src, dst)


def tcp_segment(r: ByteReader, src: bytes, dst: bytes) -> bytes:
    """A TCP segment with chosen flags and options, checksum filled in."""
    options = parse_or_none(lambda: TCPOptions.parse(r.blob(40))) or NO_OPTIONS
    hdr = TCPHeader(
        src_port=r.choice((PEER_PORT, TCP_PEER_PORT, r.u16())),
        dst_port=r.choice((TCP_LISTEN_PORT, TCP_LISTEN_PORT, TCP_LOCAL_PORT, CLOSED_PORT, r.u16())),
        seq=r.u32(),
        ack=r.u32(),
        flags=r.choice((SYN, SYN, ACK, ACK | FIN, RST, r.u8())),
        window=r.u16(),
        urgent=r.choice((0, r.u16())),
        options=options,
    )
    try:
        return build_tcp(src, dst, hdr, r.blob(32))
    except ValueError:
        return build_tcp(src, dst, TCPHeader(hdr.src_port, hdr.dst_port, hdr.seq, 0, 2, 1024))


def transport(r: ByteReader, src: bytes, dst: bytes) -> tuple[int, bytes]:
    """Pick an upper-layer protocol and build its payload for ``src`` -> ``dst``."""
    kind = r.below(6)
    if kind <= 1:
        proto, payload = IPPROTO_UDP, udp_datagram(r, src, dst)
    elif kind == 2:
        proto, payload = icmp_message(r, src, dst)
    elif kind == 3:
        proto, payload = IPPROTO_TCP, tcp_segment(r, src, dst)
    elif kind == 4:
        proto, payload = r.choice((IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6, r.u8())), r.blob(64)
    else:
        proto, payload = r.choice((IPPROTO_NONE, 132, 253)), r.blob(16)  # unknown protocols
    if payload and r.below(10) == 0:
        # A single flipped bit: the checksum must catch it.
        i = r.below(len(payload))
        payload = payload[:i] + bytes((payload[i] ^ (1 << r.below(8)),)) + payload[i + 1 :]
    return proto, payload


# -- fragment trains ----------------------------------------------------------------------------


def split(r: ByteReader, data: bytes) -> list[tuple[int, bool, bytes]]:
    """Cut ``data`` into (offset, more, chunk) fragments, then reorder, drop, repeat, overlap."""
    size = r.choice((8 * (1 + r.below(24)), 1232, 1480))
    pieces = [
        (off, off + size < len(data), data[off : off + size]) for off in range(0, len(data), size)
    ] or [(0, False, b"")]
    for _ in range(r.below(3)):
        how = r.below(7)
        i = r.below(len(pieces))
        if how == 1:
            pieces.reverse()
        elif how == 2 and len(pieces) > 1:
            del pieces[i]
        elif how == 3:
            pieces.insert(r.below(len(pieces) + 1), pieces[i])
        elif how == 4:
            off, more, chunk = pieces[i]
            shift = 8 * (1 + r.below(4))
            pieces[i] = (max(0, off - shift), more, r.take(shift).ljust(shift, b"\xa5") + chunk)
        elif how == 5:
            k = r.below(len(pieces))
            pieces = pieces[k:] + pieces[:k]
        elif how == 6:
            off, more, chunk = pieces[i]
            pieces[i] = (off, not more, chunk[: r.below(len(chunk) + 1)])
    return pieces


# -- whole packets ------------------------------------------------------------------------------


def ipv4_packets(r: ByteReader) -> list[bytes]:
    """One IPv4 datagram, whole or as a (disordered) fragment train."""
    src, dst = r.choice(SOURCES4), r.choice(DESTINATIONS4)
    proto, payload = transport(r, src, dst)
    options = r.choice(
        (b"", b"", b"", b"", b"\x01\x01\x01\x00", b"\x94\x04\x00\x00", r.take(4 * r.below(11)))
    )
    hdr = IPv4Header(
        src=src,
        dst=dst,
        protocol=proto,
        ttl=r.choice((64, 64, 64, 64, 1, 0, 255)),
        tos=r.u8(),
        ident=r.u16(),
        dont_fragment=r.flag(),
        options=options,
    )
    mode = r.below(5)
    if mode <= 1:
        return [hdr.pack(payload)]
    if mode == 2:
        hdr.more_fragments = r.flag()
        hdr.fragment_offset = 8 * r.below(0x2000)
        return [_pack4(hdr, payload)]
    packets = []
    for off, more, chunk in split(r, payload):
        hdr.fragment_offset, hdr.more_fragments = off, more
        packets.append(_pack4(hdr, chunk))
    return packets


def _pack4(hdr: IPv4Header, payload: bytes) -> bytes:
    try:
        return hdr.pack(payload)
    except ValueError:
        hdr.fragment_offset = 0
        return hdr.pack(payload[: 0xFFFF - hdr.header_length])


def _extension(r: ByteReader, first: bool) -> IPv6Extension | IPv6Fragment:
    kind = r.choice(
        (IPPROTO_HOPOPTS, IPPROTO_DSTOPTS, IPPROTO_DSTOPTS, IPPROTO_ROUTING, IPPROTO_AH, 44)
    )
    if kind == IPPROTO_HOPOPTS and not first:
        kind = IPPROTO_DSTOPTS
    if kind in (IPPROTO_HOPOPTS, IPPROTO_DSTOPTS):
        # RFC 8200 section 4.2: the two high bits of an option type say what to do with it.
        opt = r.choice((1, 1, 5, 5, 0x1E, 0x7E, 0xBE, 0xFE, 0xC2, r.u8()))
        try:
            data = build_tlv_options([(opt, r.blob(10))]) if opt > 1 else build_tlv_options([])
        except ValueError:
            data = build_tlv_options([])
        return IPv6Extension(kind, data)
    if kind == IPPROTO_ROUTING:
        return IPv6Extension(kind, bytes((r.u8(), r.below(3))) + r.take(4).ljust(4, b"\0"))
    if kind == IPPROTO_AH:
        return IPv6Extension(kind, r.take(14).ljust(14, b"\0"))
    return IPv6Fragment(offset=0, more=False, ident=r.u32())  # atomic (RFC 6946)


def ipv6_packets(r: ByteReader) -> list[bytes]:
    """One IPv6 packet with extension headers, whole or as a (disordered) fragment train."""
    src, dst = r.choice(SOURCES6), r.choice(DESTINATIONS6)
    proto, payload = transport(r, src, dst)
    exts = [_extension(r, i == 0) for i in range(r.choice((0, 0, 0, 1, 1, 2, 3)))]
    try:
        first, chain = build_extensions(exts, proto)
    except ValueError:
        first, chain = proto, b""
    hdr = IPv6Header(
        src=src, dst=dst, next_header=first, hop_limit=r.choice((64, 64, 64, 1, 0, 255))
    )
    if r.below(3):
        packet = hdr.pack(chain + payload)
        if r.below(12) == 0:
            packet += r.blob(8)  # link padding past Payload Length
        return [packet]
    # RFC 8200 section 4.5: the Hop-by-Hop header stays in front, the rest is fragmented.
    unfrag: list[IPv6Extension | IPv6Fragment] = []
    if exts and exts[0].kind == IPPROTO_HOPOPTS:
        unfrag = [exts.pop(0)]
    try:
        inner_first, inner = build_extensions(exts, proto)
    except ValueError:
        inner_first, inner = proto, b""
    ident = r.choice((r.u32(), 7))
    packets = []
    for off, more, chunk in split(r, inner + payload):
        frag = IPv6Fragment(offset=min(off, 0xFFF8) & 0xFFF8, more=more, ident=ident)
        try:
            nh, headers = build_extensions([*unfrag, frag], inner_first)
        except ValueError:
            continue
        hdr.next_header = nh
        try:
            packets.append(hdr.pack(headers + chunk))
        except ValueError:
            continue
    return packets


def mutated(r: ByteReader, packet: bytes) -> bytes:
    """``packet`` with one byte changed or cut short; an IPv4 header checksum may be redone."""
    if not packet:
        return packet
    i = r.below(min(len(packet), 0x10000))
    change = r.flag()
    packet = packet[:i] + bytes((r.u8(),)) + packet[i + 1 :] if change else packet[: max(1, i)]
    if packet[0] >> 4 == 4 and len(packet) >= 20 and r.flag():
        hl = min(len(packet), max(20, (packet[0] & 0xF) * 4))
        head = bytearray(packet[:hl])
        head[10:12] = b"\0\0"
        head[10:12] = checksum(head).to_bytes(2, "big")
        packet = bytes(head) + packet[hl:]
    return packet


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def tcp_to_connection(r: ByteReader) -> TcpToConnection:
    """A segment for the established connection, mostly near the right sequence numbers."""
    flags = r.choice(
        (ACK, ACK, ACK | PSH, ACK | PSH, ACK | FIN, RST, RST | ACK, SYN, SYN | ACK, r.u8())
    )
    seq_delta = r.choice((0, 0, 0, 0, -1, 1, 8, -100, 70000, _signed(r.u32())))
    ack_delta = r.choice((0, 0, 0, -1, 1, 50, -70000, _signed(r.u32())))
    window = r.choice((65535, 65535, 0, 1, r.u16()))
    options = NO_OPTIONS
    if r.below(4) == 0:
        options = parse_or_none(lambda: TCPOptions.parse(r.blob(40))) or NO_OPTIONS
    payload = r.blob(64)
    if r.below(8) == 0:
        payload += bytes(r.below(3000))
    return TcpToConnection(flags, seq_delta, ack_delta, window, options, payload)


def decode_ops(data: bytes) -> list[Op]:
    """Turn a fuzz input into a bounded list of operations on a live stack."""
    r = ByteReader(data)
    ops: list[Op] = []
    last = b""
    injected = 0
    while r.remaining and len(ops) < MAX_OPS and injected < MAX_PACKETS:
        kind = r.below(11)
        if kind == 6:
            ops.append(Advance(r.choice(CLOCK_STEPS)))
            continue
        if kind >= 9:
            ops.append(tcp_to_connection(r))
            injected += 1
            continue
        if kind <= 1:
            packets = ipv4_packets(r)
        elif kind <= 3:
            packets = ipv6_packets(r)
        elif kind == 4:
            packets = [r.blob(1600)]
        elif kind == 5:
            packets = [mutated(r, last)]
        elif kind == 7:
            packets = [last] * (1 + r.below(3))  # exact duplicates
        else:
            packets = [r.take(r.below(64)) + bytes(r.below(64))]
        for packet in packets[: MAX_PACKETS - injected]:
            ops.append(Inject(packet))
            injected += 1
            last = packet
    return ops


__all__ = [
    "CONNECTED_PORT",
    "ECHO_PORT",
    "HOST4",
    "HOST6",
    "PEER_PORT",
    "SINK_PORT",
    "STACK4",
    "STACK6",
    "TCP_LISTEN_PORT",
    "TCP_LOCAL_PORT",
    "TCP_PEER_PORT",
    "Advance",
    "Inject",
    "Op",
    "TcpToConnection",
    "decode_ops",
    "ipv4_packets",
    "ipv6_packets",
]
