"""One-line, tcpdump-like descriptions of raw IP packets, for the sniffer and for logs.

:func:`summarize` never raises: whatever cannot be decoded is named with the ParseError reason
that a receive path would count for it, e.g. ``IPv4 malformed (bad_checksum) 60 bytes``.
"""

from __future__ import annotations

import socket
from typing import Final

from netstack.errors import ParseError
from netstack.header import icmpv4, icmpv6
from netstack.header.ipv4 import IPv4Header, is_fragment
from netstack.header.ipv6 import IPV6_HEADER_LEN, IPv6Extension, IPv6Header, walk_extensions
from netstack.header.numbers import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_NONE,
    IPPROTO_TCP,
    IPPROTO_UDP,
    protocol_name,
)
from netstack.header.tcp import ACK, URG, TCPHeader, TCPOptions, flags_str, tcp_checksum_ok
from netstack.header.udp import UDP_HEADER_LEN, UDPHeader, udp_checksum_ok

Buffer = bytes | bytearray | memoryview

_DISPLAY: Final[dict[int, str]] = {
    IPPROTO_ICMP: "ICMP",
    IPPROTO_TCP: "TCP",
    IPPROTO_UDP: "UDP",
    IPPROTO_ICMPV6: "ICMPv6",
}


def summarize(packet: Buffer) -> str:
    """Return a one-line description of the raw IPv4 or IPv6 ``packet``; never raises."""
    try:
        return _summarize(packet)
    except Exception as exc:  # A decoding bug must not take the sniffer down with it.
        return f"undecodable packet ({type(exc).__name__}) {len(packet)} bytes"


def _summarize(packet: Buffer) -> str:
    n = len(packet)
    if n == 0:
        return "empty packet"
    version = packet[0] >> 4
    if version == 4:
        return _ipv4(packet)
    if version == 6:
        return _ipv6(packet)
    return f"IP version {version} (unknown) {n} bytes"


def _ipv4(packet: Buffer) -> str:
    try:
        hdr = IPv4Header.parse(packet)
    except ParseError as exc:
        return f"IPv4 malformed ({exc.reason}) {len(packet)} bytes"
    src = socket.inet_ntop(socket.AF_INET, hdr.src)
    dst = socket.inet_ntop(socket.AF_INET, hdr.dst)
    data = memoryview(packet)[hdr.header_length : hdr.total_length]
    if is_fragment(hdr):
        more = "+" if hdr.more_fragments else ""
        return (
            f"IPv4 {src} > {dst}: {_name(hdr.protocol)} frag id {hdr.ident} "
            f"off {hdr.fragment_offset}{more} len {len(data)}"
        )
    return "IPv4 " + _transport(src, dst, hdr.protocol, data, hdr.src, hdr.dst)


def _ipv6(packet: Buffer) -> str:
    try:
        hdr = IPv6Header.parse(packet)
    except ParseError as exc:
        return f"IPv6 malformed ({exc.reason}) {len(packet)} bytes"
    src = socket.inet_ntop(socket.AF_INET6, hdr.src)
    dst = socket.inet_ntop(socket.AF_INET6, hdr.dst)
    end = IPV6_HEADER_LEN + hdr.payload_length
    try:
        chain = walk_extensions(packet, hdr.next_header, IPV6_HEADER_LEN, end)
    except ParseError as exc:
        return f"IPv6 {src} > {dst}: malformed ({exc.reason}) {len(packet)} bytes"
    names = [protocol_name(h.kind) for h in chain.headers if isinstance(h, IPv6Extension)]
    ext = f"[{','.join(names)}] " if names else ""
    data = memoryview(packet)[chain.upper_offset : end]
    frag = chain.fragment
    if frag is not None:
        more = "+" if frag.more else ""
        return (
            f"IPv6 {src} > {dst}: {ext}{_name(chain.upper_protocol)} frag id {frag.ident} "
            f"off {frag.offset}{more} len {len(data)}"
        )
    return f"IPv6 {ext}" + _transport(src, dst, chain.upper_protocol, data, hdr.src, hdr.dst)


def _name(protocol: int) -> str:
    return _DISPLAY.get(protocol) or protocol_name(protocol)


def _transport(
    src: str, dst: str, protocol: int, data: memoryview, src_addr: bytes, dst_addr: bytes
) -> str:
    if protocol == IPPROTO_UDP:
        return _udp(src, dst, data, src_addr, dst_addr)
    if protocol == IPPROTO_TCP:
        return _tcp(src, dst, data, src_addr, dst_addr)
    if protocol == IPPROTO_ICMP and len(src_addr) == 4:
        return f"{src} > {dst}: " + _icmpv4(data)
    if protocol == IPPROTO_ICMPV6 and len(src_addr) == 16:
        return f"{src} > {dst}: " + _icmpv6(data, src_addr, dst_addr)
    if protocol == IPPROTO_NONE and len(src_addr) == 16:
        return f"{src} > {dst}: no next header len {len(data)}"
    return f"{src} > {dst}: {protocol_name(protocol)} len {len(data)}"


def _udp(src: str, dst: str, data: memoryview, src_addr: bytes, dst_addr: bytes) -> str:
    try:
        udp = UDPHeader.parse(data)
    except ParseError as exc:
        return f"{src} > {dst}: UDP malformed ({exc.reason}) {len(data)} bytes"
    bad = "" if udp_checksum_ok(src_addr, dst_addr, data[: udp.length]) else " bad cksum"
    return (
        f"{src}.{udp.src_port} > {dst}.{udp.dst_port}: UDP len {udp.length - UDP_HEADER_LEN}{bad}"
    )


def _tcp(src: str, dst: str, data: memoryview, src_addr: bytes, dst_addr: bytes) -> str:
    try:
        tcp = TCPHeader.parse(data)
    except ParseError as exc:
        return f"{src} > {dst}: TCP malformed ({exc.reason}) {len(data)} bytes"
    parts = [
        f"{src}.{tcp.src_port} > {dst}.{tcp.dst_port}: TCP [{flags_str(tcp.flags)}] seq {tcp.seq}"
    ]
    if tcp.flags & ACK:
        parts.append(f"ack {tcp.ack}")
    parts.append(f"win {tcp.window} len {len(data) - tcp.header_length}")
    if tcp.flags & URG:
        parts.append(f"urg {tcp.urgent}")
    options = _tcp_options(tcp.options)
    if options:
        parts.append(f"<{options}>")
    if not tcp_checksum_ok(src_addr, dst_addr, data):
        parts.append("bad cksum")
    return " ".join(parts)


def _tcp_options(options: TCPOptions) -> str:
    parts: list[str] = []
    if options.mss is not None:
        parts.append(f"mss {options.mss}")
    if options.sack_permitted:
        parts.append("sackOK")
    if options.timestamp is not None:
        parts.append(f"TS val {options.timestamp[0]} ecr {options.timestamp[1]}")
    if options.window_scale is not None:
        parts.append(f"wscale {options.window_scale}")
    if options.sack_blocks:
        parts.append("sack " + " ".join(f"{le}:{re}" for le, re in options.sack_blocks))
    parts.extend(f"opt-{kind} len {len(value)}" for kind, value in options.unknown)
    return ",".join(parts)


def _icmpv4(data: memoryview) -> str:
    try:
        msg = icmpv4.ICMPv4Message.parse(data)
    except ParseError as exc:
        return f"ICMP malformed ({exc.reason}) {len(data)} bytes"
    name = icmpv4.TYPE_NAMES.get(msg.type)
    if msg.type in (icmpv4.ECHO_REQUEST, icmpv4.ECHO_REPLY):
        return f"ICMP {name} id {msg.ident} seq {msg.sequence}"
    if msg.type == icmpv4.DEST_UNREACHABLE:
        reason = icmpv4.UNREACHABLE_NAMES.get(msg.code) or f"code {msg.code}"
        mtu = f" mtu {msg.mtu}" if msg.code == icmpv4.FRAGMENTATION_NEEDED else ""
        return f"ICMP {name} ({reason}){mtu}"
    if msg.type == icmpv4.TIME_EXCEEDED:
        reason = "reassembly" if msg.code == icmpv4.REASSEMBLY_TIME_EXCEEDED else "ttl"
        return f"ICMP {name} ({reason}) code {msg.code}"
    if msg.type == icmpv4.PARAMETER_PROBLEM:
        return f"ICMP {name} code {msg.code} pointer {msg.pointer}"
    if name is None:
        return f"ICMP type {msg.type} code {msg.code} len {len(msg.payload)}"
    return f"ICMP {name} code {msg.code}"


def _icmpv6(data: memoryview, src_addr: bytes, dst_addr: bytes) -> str:
    try:
        msg = icmpv6.ICMPv6Message.parse(data, src_addr, dst_addr)
    except ParseError as exc:
        return f"ICMPv6 malformed ({exc.reason}) {len(data)} bytes"
    name = icmpv6.TYPE_NAMES.get(msg.type)
    kind = msg.type
    if kind in (icmpv6.ECHO_REQUEST, icmpv6.ECHO_REPLY):
        return f"ICMPv6 {name} id {msg.ident} seq {msg.sequence}"
    if kind == icmpv6.DEST_UNREACHABLE:
        reason = icmpv6.UNREACHABLE_NAMES.get(msg.code) or f"code {msg.code}"
        return f"ICMPv6 {name} ({reason})"
    if kind == icmpv6.PACKET_TOO_BIG:
        return f"ICMPv6 {name} mtu {msg.mtu}"
    if kind == icmpv6.PARAMETER_PROBLEM:
        return f"ICMPv6 {name} code {msg.code} pointer {msg.pointer}"
    if kind in (icmpv6.NEIGHBOR_SOLICITATION, icmpv6.NEIGHBOR_ADVERTISEMENT) and (
        len(msg.payload) >= 16
    ):
        # RFC 4861 sections 4.3 and 4.4: the Target Address follows the reserved/flags word.
        target = socket.inet_ntop(socket.AF_INET6, msg.payload[:16])
        return f"ICMPv6 {name} target {target}"
    if name is None:
        return f"ICMPv6 type {kind} code {msg.code} len {len(msg.payload)}"
    return f"ICMPv6 {name} code {msg.code}"
