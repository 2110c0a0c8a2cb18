"""Invariants of a live stack, checked after every input by the fuzzers and Hypothesis.

A violation raises :class:`InvariantViolation` (an AssertionError, so libFuzzer reports it as
a crash and pytest as a failure). What is checked:

* counters: the NIC and the link both counted exactly the packets injected; what the NIC says
  it sent is what the link took; no packet was refused by the link for exceeding the MTU; no
  counter is negative;
* bounds: reassembly memory and datagrams in progress within the StackOptions limits (and the
  memory figure equal to what the held datagrams are charged), UDP socket queues within their
  limit, the path-MTU table within its limit;
* output: every packet the stack emits parses with the header parsers, has valid header and
  transport checksums (fragment trains are reassembled first), comes from a local unicast
  address and goes to a unicast one;
* ICMP errors: never about an ICMP error, never about a packet sent to a multicast or
  broadcast address (RFC 4443 section 2.4(e) exceptions aside), never about a non-initial
  IPv4 fragment, always to the source of the packet they quote (RFC 1122 section 3.2.2,
  RFC 4443 section 2.4);
* after a clock step longer than every timeout (:func:`check_drained`): no reassembly state
  and no timer left.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from typing import TYPE_CHECKING

from netstack.errors import ParseError
from netstack.header import icmpv4, icmpv6
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import IPV6_HEADER_LEN, IPv6Header, walk_extensions
from netstack.header.numbers import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP
from netstack.header.tcp import TCPHeader, tcp_checksum_ok
from netstack.header.udp import UDPHeader, udp_checksum_ok
from netstack.network.fragment import Reassembler
from netstack.transport.tcp.endpoint import TCPEndpoint

if TYPE_CHECKING:
    from fuzz.live import LiveStack


class InvariantViolation(AssertionError):
    """The live stack broke one of the invariants above."""


def require(condition: bool, message: str) -> None:
    """Raise InvariantViolation with ``message`` unless ``condition`` holds."""
    if not condition:
        raise InvariantViolation(message)


def check_invariants(live: LiveStack, emitted: list[bytes]) -> None:
    """Check counters, bounds and the packets ``emitted`` since the previous check."""
    check_counters(live)
    check_bounds(live)
    check_output(live, emitted)


def check_counters(live: LiveStack) -> None:
    """The NIC and link counters agree with what was injected and what came out."""
    nic = live.nic.counters.values
    link = live.link.counters.values
    require(
        nic.get("rx_packets", 0) == live.injected,
        f"nic rx_packets {nic.get('rx_packets', 0)} != injected {live.injected}",
    )
    require(link.get("rx_packets", 0) == live.injected, "link rx_packets != injected")
    require(
        nic.get("tx_packets", 0) == link.get("tx_packets", 0),
        f"nic tx_packets {nic.get('tx_packets', 0)} != link {link.get('tx_packets', 0)}",
    )
    require(not link.get("dropped_too_big"), "the stack wrote a packet larger than the MTU")
    for name, value in live.stack.counters.items():
        require(isinstance(value, int) and value >= 0, f"counter {name} = {value!r}")


def _check_reassembler(name: str, r: Reassembler, memory_limit: int, datagrams: int) -> None:
    require(r.memory_limit == memory_limit, f"{name}: memory limit is not the configured one")
    require(0 <= r.memory <= memory_limit, f"{name}: memory {r.memory} > {memory_limit}")
    require(r.in_progress <= datagrams, f"{name}: {r.in_progress} datagrams > {datagrams}")
    # The fuzzer reads the reassembler's books: the memory figure must be the sum of charges.
    held = sum(d.held for d in r._datagrams.values())
    require(r.memory == held, f"{name}: memory {r.memory} != held {held}")
    require(len(r._poisoned) <= datagrams, f"{name}: {len(r._poisoned)} poisoned keys")


def check_bounds(live: LiveStack) -> None:
    """Every bounded structure is within its bound."""
    stack = live.stack
    opts = stack.options
    for name, proto in (("ipv4", stack.ipv4), ("ipv6", stack.ipv6)):
        _check_reassembler(
            name, proto.reassembler, opts.reassembly_memory, opts.reassembly_datagrams
        )
    for sock in live.sockets:
        require(sock.queued <= opts.udp_receive_queue, f"UDP queue {sock.queued} over limit")
    require(len(stack._pmtu) <= opts.pmtu_entries, "path MTU table over its limit")
    require(live.link.pending <= live.link.capacity, "link queue over capacity")
    check_tcp_bounds(live)


def check_tcp_bounds(live: LiveStack) -> None:
    """Listener queues within the backlog; every connection's buffers within TCPConfig."""
    tcp = live.stack.tcp
    config = tcp.config
    for listener in live.listeners:
        require(len(listener.half_open) <= listener.backlog, "half-open connections over backlog")
        require(len(listener.accept_queue) <= listener.backlog, "accept queue over backlog")
    for ep in tcp.demux.connected.values():
        if not isinstance(ep, TCPEndpoint):
            continue
        require(len(ep.sndbuf) <= config.send_buffer, f"send buffer {len(ep.sndbuf)} over limit")
        require(
            ep.readable <= config.receive_buffer,
            f"receive queue {ep.readable} over {config.receive_buffer}",
        )
        ooo = ep.rcv.ooo
        require(ooo.bytes <= config.reassembly_limit, f"out-of-order bytes {ooo.bytes} over limit")
        require(len(ooo) <= config.reassembly_segments, "out-of-order ranges over limit")


def check_drained(live: LiveStack, *, expect_idle_clock: bool = True) -> None:
    """After every timeout has passed, nothing is held: no fragments, no poisoned keys.

    With ``expect_idle_clock`` (true while no TCP connection can be open) no timer is pending.
    """
    for name, proto in (("ipv4", live.stack.ipv4), ("ipv6", live.stack.ipv6)):
        r = proto.reassembler
        require(r.memory == 0, f"{name}: {r.memory} reassembly bytes held after the drain")
        require(r.in_progress == 0, f"{name}: {r.in_progress} datagrams held after the drain")
        require(not r._poisoned, f"{name}: poisoned keys held after the drain")
    if expect_idle_clock:
        require(live.clock.pending == 0, f"{live.clock.pending} timers pending after the drain")


# -- output ------------------------------------------------------------------------------------


def _unicast4(addr: bytes) -> bool:
    # RFC 1122 section 3.2.1.3: not 0/8, not 127/8, not multicast, class E or broadcast.
    return addr[0] not in (0, 127) and addr[0] < 224


def check_output(live: LiveStack, packets: list[bytes]) -> None:
    """Every emitted packet is well formed; fragment trains are complete and reassemble."""
    trains: dict[Hashable, list[tuple[int, bool, bytes]]] = defaultdict(list)
    uppers: dict[Hashable, int] = {}
    for packet in packets:
        require(len(packet) <= live.link.mtu, f"{len(packet)}-byte packet over the MTU")
        require(len(packet) > 0, "empty packet emitted")
        version = packet[0] >> 4
        if version == 4:
            _output_v4(live, packet, trains, uppers)
        elif version == 6:
            _output_v6(live, packet, trains, uppers)
        else:
            raise InvariantViolation(f"emitted a packet of IP version {version}")
    for key, pieces in trains.items():
        pieces.sort(key=lambda p: p[0])
        data = bytearray()
        for offset, _more, chunk in pieces:
            require(offset == len(data), f"emitted fragments of {key!r} leave a gap or overlap")
            data += chunk
        require(not pieces[-1][1], f"emitted fragment train {key!r} has no last fragment")
        require(all(more for _, more, _ in pieces[:-1]), "a middle fragment lacks MF")
        src, dst = key[0], key[1]  # type: ignore[index]
        _check_transport(src, dst, uppers[key], bytes(data))


def _output_v4(
    live: LiveStack,
    packet: bytes,
    trains: dict[Hashable, list[tuple[int, bool, bytes]]],
    uppers: dict[Hashable, int],
) -> None:
    try:
        hdr = IPv4Header.parse(packet)
    except ParseError as exc:
        raise InvariantViolation(f"emitted IPv4 packet does not parse: {exc}") from exc
    require(hdr.total_length == len(packet), "IPv4 total length != packet length")
    require(live.stack.is_local(hdr.src), "IPv4 packet from an address the stack does not hold")
    require(_unicast4(hdr.dst), "IPv4 packet to a non-unicast address")
    require(hdr.ttl > 0, "IPv4 packet sent with TTL 0")
    payload = packet[hdr.header_length :]
    if hdr.more_fragments or hdr.fragment_offset:
        key = (hdr.src, hdr.dst, hdr.protocol, hdr.ident)
        trains[key].append((hdr.fragment_offset, hdr.more_fragments, payload))
        uppers[key] = hdr.protocol
        return
    _check_transport(hdr.src, hdr.dst, hdr.protocol, payload)


def _output_v6(
    live: LiveStack,
    packet: bytes,
    trains: dict[Hashable, list[tuple[int, bool, bytes]]],
    uppers: dict[Hashable, int],
) -> None:
    try:
        hdr = IPv6Header.parse(packet)
        chain = walk_extensions(packet, hdr.next_header)
    except ParseError as exc:
        raise InvariantViolation(f"emitted IPv6 packet does not parse: {exc}") from exc
    require(IPV6_HEADER_LEN + hdr.payload_length == len(packet), "IPv6 payload length wrong")
    require(live.stack.is_local(hdr.src), "IPv6 packet from an address the stack does not hold")
    require(hdr.dst[0] != 0xFF and hdr.dst != bytes(16), "IPv6 packet to a non-unicast address")
    require(hdr.hop_limit > 0, "IPv6 packet sent with hop limit 0")
    frag = chain.fragment
    if frag is not None:
        key = (hdr.src, hdr.dst, frag.ident)
        after = chain.fragment_offset_in_packet + 8
        trains[key].append((frag.offset, frag.more, packet[after:]))
        if frag.offset == 0:
            uppers[key] = chain.upper_protocol
        return
    _check_transport(hdr.src, hdr.dst, chain.upper_protocol, packet[chain.upper_offset :])


def _check_transport(src: bytes, dst: bytes, proto: int, data: bytes) -> None:
    """The upper-layer data of an emitted datagram parses and its checksum is right."""
    try:
        if proto == IPPROTO_UDP:
            udp = UDPHeader.parse(data)
            require(udp.length == len(data), "UDP length != datagram length")
            require(udp.checksum != 0, "UDP datagram sent without a checksum")
            require(udp_checksum_ok(src, dst, data), "UDP checksum wrong")
        elif proto == IPPROTO_TCP:
            TCPHeader.parse(data)
            require(tcp_checksum_ok(src, dst, data), "TCP checksum wrong")
        elif proto == IPPROTO_ICMP and len(src) == 4:
            msg4 = icmpv4.ICMPv4Message.parse(data)
            if msg4.is_error:
                check_icmp_error_v4(dst, msg4)
        elif proto == IPPROTO_ICMPV6 and len(src) == 16:
            msg6 = icmpv6.ICMPv6Message.parse(data, src, dst)
            if msg6.is_error:
                check_icmp_error_v6(dst, msg6)
        else:
            raise InvariantViolation(f"emitted protocol {proto} the stack does not speak")
    except ParseError as exc:
        raise InvariantViolation(f"emitted protocol {proto} data does not parse: {exc}") from exc


def check_icmp_error_v4(to: bytes, msg: icmpv4.ICMPv4Message) -> None:
    """An ICMPv4 error the stack sent obeys RFC 1122 section 3.2.2."""
    quote = msg.payload
    require(len(quote) >= 20 and quote[0] >> 4 == 4, "ICMP error without the IP header quoted")
    ihl = (quote[0] & 0xF) * 4
    q_src, q_dst, q_proto = quote[12:16], quote[16:20], quote[9]
    require(q_src == to, "ICMP error not sent to the source of the packet it quotes")
    require(_unicast4(q_src), "ICMP error about a packet from a non-unicast source")
    require(_unicast4(q_dst), "ICMP error about a packet to a multicast/broadcast address")
    require(int.from_bytes(quote[6:8], "big") & 0x1FFF == 0, "ICMP error about a later fragment")
    if q_proto == IPPROTO_ICMP and len(quote) > ihl:
        require(quote[ihl] not in icmpv4.ERROR_TYPES, "ICMP error about an ICMP error")


def check_icmp_error_v6(to: bytes, msg: icmpv6.ICMPv6Message) -> None:
    """An ICMPv6 error the stack sent obeys RFC 4443 section 2.4(e)."""
    quote = msg.payload
    require(len(quote) >= IPV6_HEADER_LEN and quote[0] >> 4 == 6, "ICMPv6 error without header")
    q_src, q_dst = quote[8:24], quote[24:40]
    require(q_src == to, "ICMPv6 error not sent to the source of the packet it quotes")
    require(q_src[0] != 0xFF and q_src != bytes(16), "ICMPv6 error about a non-unicast source")
    if q_dst[0] == 0xFF:
        # RFC 4443 section 2.4(e.2)/(e.3): only Packet Too Big and Parameter Problem code 2.
        require(
            msg.type == icmpv6.PACKET_TOO_BIG
            or (msg.type == icmpv6.PARAMETER_PROBLEM and msg.code == icmpv6.UNRECOGNIZED_OPTION),
            f"ICMPv6 error type {msg.type} code {msg.code} about a multicast packet",
        )
    try:
        chain = walk_extensions(quote, quote[6])
    except ParseError:
        return  # a quote cut short inside the extension headers
    first_part = chain.fragment is None or chain.fragment.offset == 0
    if chain.upper_protocol == IPPROTO_ICMPV6 and first_part and chain.upper_offset < len(quote):
        # RFC 4443 section 2.4(e.1): never in response to an ICMPv6 error message.
        require(quote[chain.upper_offset] >= 128, "ICMPv6 error about an ICMPv6 error")
