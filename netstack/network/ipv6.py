"""IPv6 (RFC 8200): validate, walk extension headers, reassemble, deliver up; fragment, send.

A host, not a router: packets for addresses the stack does not hold (or multicast groups it
has not joined) are counted and dropped.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from netstack.errors import ParseError
from netstack.header import icmpv6
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
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMPV6,
    IPPROTO_NONE,
    IPPROTO_ROUTING,
    IPPROTO_TCP,
    IPPROTO_UDP,
)
from netstack.network.fragment import Reassembler
from netstack.protocols import UNKNOWN_DESTINATION, NetworkInterface, NetworkServices, Route

UNSPECIFIED = bytes(16)
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
_SOLICITED_PREFIX = bytes.fromhex("ff0200000000000000000001ff")
_FAST_PROTOCOLS = frozenset((IPPROTO_UDP, IPPROTO_TCP, IPPROTO_ICMPV6))
MIN_MTU = 1280  # RFC 8200 section 5


def solicited_node(address: bytes) -> bytes:
    """Return the solicited-node multicast group of a unicast address (RFC 4291 2.7.1)."""
    return _SOLICITED_PREFIX + address[13:]


class IPv6Protocol:
    """The IPv6 network protocol of a stack."""

    number = 6

    def __init__(self, stack: NetworkServices) -> None:
        self.stack = stack
        self.counters = stack.counters.child("ipv6")
        opts = stack.options
        self.reassembler = Reassembler(
            stack.clock,
            self.counters.child("reassembly"),
            timeout=opts.ipv6_reassembly_timeout,
            memory_limit=opts.reassembly_memory,
            max_datagrams=opts.reassembly_datagrams,
            max_payload=65535,
            on_timeout=self._reassembly_timeout,
        )
        # Multicast groups joined, with how many of our addresses need each (RFC 4291 2.7.1:
        # addresses that share their low 24 bits share a solicited-node group).
        self.groups: dict[bytes, int] = {ALL_NODES: 1}

    def join_solicited_node(self, address: bytes) -> None:
        """Listen on the solicited-node group of a newly assigned address."""
        group = solicited_node(address)
        self.groups[group] = self.groups.get(group, 0) + 1

    def leave_solicited_node(self, address: bytes) -> None:
        """Stop listening for an address that was removed (if no other address needs it)."""
        group = solicited_node(address)
        left = self.groups.get(group, 0) - 1
        if left > 0:
            self.groups[group] = left
        else:
            self.groups.pop(group, None)

    # -- receive ---------------------------------------------------------------------------

    def receive(self, nic: NetworkInterface, packet: bytes) -> None:
        """Validate one inbound IPv6 packet and deliver it to its upper-layer protocol."""
        c = self.counters
        try:
            hdr = IPv6Header.parse(packet)
        except ParseError as exc:
            c.inc("malformed." + exc.reason)
            return
        stack = self.stack
        dst = hdr.dst
        if not stack.is_local(dst) and (dst[0] != 0xFF or dst not in self.groups):
            c.inc("not_for_us.multicast" if dst[0] == 0xFF else "not_for_us")
            return
        if hdr.src[0] == 0xFF:
            # RFC 4291 section 2.7: a multicast address is never a source.
            c.inc("malformed.bad_source")
            return
        end = IPV6_HEADER_LEN + hdr.payload_length
        proto = hdr.next_header
        if proto in _FAST_PROTOCOLS:
            payload = memoryview(packet)[IPV6_HEADER_LEN:end]
        else:
            result = self._walk(nic, hdr, packet, end)
            if result is None:
                return
            proto, payload, packet = result
        if hdr.src == UNSPECIFIED and proto != IPPROTO_ICMPV6:
            # RFC 4291 section 2.5.2: :: is no address to answer; only Neighbor Discovery
            # (RFC 4861 section 4.3) and MLD (RFC 3810 section 5.2.13) messages come from it.
            c.inc("malformed.bad_source")
            return
        c.values["delivered"] = c.values.get("delivered", 0) + 1
        transport = stack.transports.get(proto)
        if transport is not None:
            if transport.handle_packet(nic, hdr.src, dst, payload, packet) is UNKNOWN_DESTINATION:
                # RFC 4443 section 3.1: no endpoint on the port, so the network layer answers
                # Destination Unreachable, code 4 (port unreachable).
                stack.icmp.send_error_v6(
                    nic, packet, icmpv6.DEST_UNREACHABLE, icmpv6.PORT_UNREACHABLE
                )
        elif proto == IPPROTO_ICMPV6:
            stack.icmp.receive_v6(nic, hdr, payload, packet)
        elif proto == IPPROTO_NONE:
            c.inc("no_next_header")
        else:
            c.inc("unknown_protocol")
            # RFC 8200 section 4: unrecognized Next Header -> Parameter Problem, code 1,
            # pointing at the octet that named it.
            pointer = self._last_next_header_offset(packet, hdr.next_header)
            stack.icmp.send_error_v6(
                nic,
                packet,
                icmpv6.PARAMETER_PROBLEM,
                icmpv6.UNRECOGNIZED_NEXT_HEADER,
                pointer,
            )

    def _walk(
        self, nic: NetworkInterface, hdr: IPv6Header, packet: bytes, end: int
    ) -> tuple[int, memoryview, bytes] | None:
        """Process the extension headers; return (protocol, payload, packet) or None if dropped."""
        c = self.counters
        try:
            chain = walk_extensions(packet, hdr.next_header, IPV6_HEADER_LEN, end)
        except ParseError as exc:
            c.inc("malformed." + exc.reason)
            if exc.reason == "hop_by_hop_not_first":
                # RFC 8200 section 4.1: Hop-by-Hop anywhere else -> Parameter Problem code 1.
                self.stack.icmp.send_error_v6(
                    nic, packet, icmpv6.PARAMETER_PROBLEM, icmpv6.UNRECOGNIZED_NEXT_HEADER, 6
                )
            return None
        if not self._extensions_ok(nic, packet, hdr, chain.headers, IPV6_HEADER_LEN):
            return None
        frag = chain.fragment
        if frag is None:
            return chain.upper_protocol, memoryview(packet)[chain.upper_offset : end], packet
        frag_at = chain.fragment_offset_in_packet
        after = frag_at + 8  # RFC 8200 section 4.5: the Fragment header is 8 octets
        data = memoryview(packet)[after:end]
        if frag.offset == 0 and not frag.more:
            # RFC 6946: an atomic fragment is processed as a whole packet, outside reassembly.
            c.inc("atomic_fragments")
            return self._upper(nic, packet, hdr, packet, packet[frag_at], after, end)
        if frag.more and len(data) % 8:
            # RFC 8200 section 4.5: Parameter Problem code 0 pointing at the Payload Length.
            c.inc("malformed.fragment_length")
            self.stack.icmp.send_error_v6(
                nic, packet, icmpv6.PARAMETER_PROBLEM, icmpv6.ERRONEOUS_HEADER, 4
            )
            return None
        if after - IPV6_HEADER_LEN + frag.offset + len(data) > 65535:
            # RFC 8200 section 4.5: the reassembled packet would exceed 65535 octets.
            c.inc("malformed.fragment_too_big")
            self.stack.icmp.send_error_v6(
                nic, packet, icmpv6.PARAMETER_PROBLEM, icmpv6.ERRONEOUS_HEADER, frag_at + 2
            )
            return None
        key = (hdr.src, hdr.dst, frag.ident)
        first = (packet, packet[frag_at], after) if frag.offset == 0 else None
        done = self.reassembler.add(key, frag.offset, frag.more, bytes(data), first)
        if done is None:
            return None
        whole, info = done
        first_packet, next_header, base = info
        return self._upper(nic, first_packet, hdr, whole, next_header, 0, len(whole), base)

    def _upper(
        self,
        nic: NetworkInterface,
        packet: bytes,
        hdr: IPv6Header,
        buf: bytes,
        next_header: int,
        start: int,
        end: int,
        base: int = 0,
    ) -> tuple[int, memoryview, bytes] | None:
        """Walk the headers that followed a Fragment header in ``buf`` (RFC 8200 4.5).

        ``packet`` is what ICMP errors quote; ``base`` maps offsets in ``buf`` to it.
        """
        try:
            inner = walk_extensions(buf, next_header, start, end)
        except ParseError as exc:
            self.counters.inc("malformed." + exc.reason)
            return None
        if inner.fragment is not None:
            self.counters.inc("malformed.nested_fragment")
            return None
        if not self._extensions_ok(nic, packet, hdr, inner.headers, base + start):
            return None
        return inner.upper_protocol, memoryview(buf)[inner.upper_offset : end], packet

    def _extensions_ok(
        self,
        nic: NetworkInterface,
        packet: bytes,
        hdr: IPv6Header,
        headers: list[IPv6Extension | IPv6Fragment],
        offset: int,
    ) -> bool:
        """Check the options and routing headers up to the first Fragment header."""
        for ext in headers:
            if isinstance(ext, IPv6Fragment):
                break
            if ext.kind in (IPPROTO_HOPOPTS, IPPROTO_DSTOPTS):
                if not self._options_ok(nic, packet, hdr, ext, offset):
                    return False
            elif ext.kind == IPPROTO_ROUTING and len(ext.data) >= 2 and ext.data[1] != 0:
                # RFC 8200 section 4.4: we implement no routing type; with Segments Left > 0
                # the packet is discarded with a Parameter Problem pointing at the type field.
                self.counters.inc("routing_header_dropped")
                self.stack.icmp.send_error_v6(
                    nic, packet, icmpv6.PARAMETER_PROBLEM, icmpv6.ERRONEOUS_HEADER, offset + 2
                )
                return False
            offset += 2 + len(ext.data)
        return True

    def _options_ok(
        self, nic: NetworkInterface, packet: bytes, hdr: IPv6Header, ext: IPv6Extension, start: int
    ) -> bool:
        """Apply RFC 8200 section 4.2's rules for options we do not recognize."""
        data = ext.data
        i = 0
        while i < len(data):
            kind = data[i]
            if kind == 0:  # Pad1
                i += 1
                continue
            length = data[i + 1] if i + 1 < len(data) else 0
            if kind not in (1, 5):  # PadN and Router Alert (RFC 2711) are understood
                action = kind >> 6
                self.counters.inc("unknown_option")
                if action == 0:
                    i += 2 + length
                    continue
                if action == 2 or (action == 3 and hdr.dst[0] != 0xFF):
                    self.stack.icmp.send_error_v6(
                        nic,
                        packet,
                        icmpv6.PARAMETER_PROBLEM,
                        icmpv6.UNRECOGNIZED_OPTION,
                        start + 2 + i,
                    )
                return False
            i += 2 + length
        return True

    @staticmethod
    def _last_next_header_offset(packet: bytes, first: int) -> int:
        """Offset of the Next Header field that names the upper-layer protocol."""
        pointer = 6
        kind = first
        offset = IPV6_HEADER_LEN
        while kind in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT):
            if offset + 2 > len(packet):
                break
            pointer = offset
            length = 8 if kind == IPPROTO_FRAGMENT else (packet[offset + 1] + 1) * 8
            kind = packet[offset]
            offset += length
        return pointer

    def _reassembly_timeout(self, key: Hashable, first: Any) -> None:
        # RFC 8200 section 4.5: Time Exceeded code 1, only if the first fragment arrived.
        nic = self.stack.nic_of(key[1])  # type: ignore[index]
        if nic is not None and first is not None:
            self.stack.icmp.send_error_v6(
                nic, first[0], icmpv6.TIME_EXCEEDED, icmpv6.REASSEMBLY_TIME_EXCEEDED
            )

    # -- send ------------------------------------------------------------------------------

    def send(
        self,
        route: Route,
        protocol: int,
        payload: bytes,
        ttl: int | None = None,
        dont_fragment: bool = False,
        *,
        traffic_class: int = 0,
    ) -> bool:
        """Send ``payload`` as one IPv6 packet along ``route``, fragmenting it at the source.

        ``ttl`` is the Hop Limit (RFC 8200 section 3). Routers never fragment IPv6 (RFC 8200
        section 5); with ``dont_fragment`` the source does not either, and a packet too big
        for the route is dropped (counted as ``send_too_big_df``).
        """
        hdr = IPv6Header(
            src=route.local,
            dst=route.remote,
            next_header=protocol,
            hop_limit=ttl if ttl is not None else self.stack.options.default_ttl,
            traffic_class=traffic_class,
        )
        c = self.counters.values
        if IPV6_HEADER_LEN + len(payload) <= route.mtu:
            c["sent"] = c.get("sent", 0) + 1
            return route.nic.write([hdr.pack(payload)]) == 1
        if dont_fragment:
            self.counters.inc("send_too_big_df")
            return False
        # RFC 7739: an unpredictable Identification per fragmented packet.
        ident = self.stack.rng.getrandbits(32)
        packets = fragment(hdr, payload, max(route.mtu, MIN_MTU), ident)
        self.counters.inc("sent")
        self.counters.inc("fragments_sent", len(packets))
        return route.nic.write(packets) == len(packets)


def fragment(hdr: IPv6Header, payload: bytes, mtu: int, ident: int) -> list[bytes]:
    """Split a packet with no extension headers into fragments that fit ``mtu`` (RFC 8200 4.5)."""
    room = (mtu - IPV6_HEADER_LEN - 8) // 8 * 8
    packets = []
    view = memoryview(payload)
    offset = 0
    while offset < len(payload):
        chunk = view[offset : offset + room]
        more = offset + len(chunk) < len(payload)
        first, chain = build_extensions(
            [IPv6Fragment(offset=offset, more=more, ident=ident)], hdr.next_header
        )
        outer = IPv6Header(
            src=hdr.src,
            dst=hdr.dst,
            next_header=first,
            hop_limit=hdr.hop_limit,
            traffic_class=hdr.traffic_class,
            flow_label=hdr.flow_label,
        )
        packets.append(outer.pack(chain + chunk))
        offset += len(chunk)
    return packets
