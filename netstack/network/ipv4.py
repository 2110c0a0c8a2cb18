"""IPv4 (RFC 791, RFC 1122 section 3.2.1): validate, reassemble, deliver up; route, fragment, send.

The stack is a host, not a router: packets for addresses it does not hold are counted and
dropped, never forwarded.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from netstack.errors import ParseError
from netstack.header import icmpv4
from netstack.header.ipv4 import (
    IPV4_MIN_HEADER_LEN,
    IPv4Header,
    build_datagram,
    parse_options,
)
from netstack.header.numbers import IPPROTO_ICMP
from netstack.network.fragment import Reassembler
from netstack.protocols import UNKNOWN_DESTINATION, NetworkInterface, NetworkServices, Route

BROADCAST = b"\xff\xff\xff\xff"


def is_multicast_or_broadcast(addr: bytes) -> bool:
    """Tell whether an IPv4 address is broadcast, multicast or class E (RFC 1122 3.2.1.3)."""
    return addr[0] >= 224


class IPv4Protocol:
    """The IPv4 network protocol of a stack."""

    number = 4

    def __init__(self, stack: NetworkServices) -> None:
        self.stack = stack
        self.counters = stack.counters.child("ipv4")
        opts = stack.options
        self.reassembler = Reassembler(
            stack.clock,
            self.counters.child("reassembly"),
            timeout=opts.ipv4_reassembly_timeout,
            memory_limit=opts.reassembly_memory,
            max_datagrams=opts.reassembly_datagrams,
            max_payload=65535 - IPV4_MIN_HEADER_LEN,
            on_timeout=self._reassembly_timeout,
        )
        self._ident = stack.rng.randrange(0x10000)

    # -- receive ---------------------------------------------------------------------------

    def receive(self, nic: NetworkInterface, packet: bytes) -> None:
        """Validate one inbound IPv4 packet and deliver it to its upper-layer protocol."""
        c = self.counters
        try:
            hdr = IPv4Header.parse(packet)
        except ParseError as exc:
            c.inc("malformed." + exc.reason)
            return
        # No TTL check: RFC 1122 section 3.2.1.7, a host MUST NOT discard a datagram just
        # because it was received with TTL less than 2 (expiry is the forwarding router's job).
        stack = self.stack
        src, dst, proto = hdr.src, hdr.dst, hdr.protocol
        if not stack.is_local(dst):
            c.inc("not_for_us.multicast" if is_multicast_or_broadcast(dst) else "not_for_us")
            return
        if is_multicast_or_broadcast(src) or src[0] == 127 or src[0] == 0:
            # RFC 1122 section 3.2.1.3: a host silently discards such source addresses.
            c.inc("malformed.bad_source")
            return
        payload = memoryview(packet)[hdr.header_length : hdr.total_length]
        if hdr.more_fragments or hdr.fragment_offset:
            offset = hdr.fragment_offset
            first = packet if offset == 0 else None
            done = self.reassembler.add(
                (src, dst, proto, hdr.ident), offset, hdr.more_fragments, bytes(payload), first
            )
            if done is None:
                return
            data, first_packet = done
            payload = memoryview(data)
            # ICMP errors about a reassembled datagram quote its first fragment.
            packet = first_packet
        c.values["delivered"] = c.values.get("delivered", 0) + 1
        transport = stack.transports.get(proto)
        if transport is not None:
            if transport.handle_packet(nic, src, dst, payload, packet) is UNKNOWN_DESTINATION:
                # RFC 1122 sections 3.2.2.1 and 4.1.3.1: no endpoint on the port, so the
                # network layer answers Destination Unreachable, Port Unreachable.
                stack.icmp.send_error_v4(
                    nic, packet, icmpv4.DEST_UNREACHABLE, icmpv4.PORT_UNREACHABLE
                )
        elif proto == IPPROTO_ICMP:
            stack.icmp.receive_v4(nic, hdr, payload, packet)
        else:
            c.inc("unknown_protocol")
            stack.icmp.send_error_v4(
                nic, packet, icmpv4.DEST_UNREACHABLE, icmpv4.PROTOCOL_UNREACHABLE
            )

    def _reassembly_timeout(self, key: Hashable, first: Any) -> None:
        # RFC 792 / RFC 1122 section 3.3.2: time exceeded, code 1, if the first fragment came.
        nic = self.stack.nic_of(key[1])  # type: ignore[index]
        if nic is not None and isinstance(first, bytes):
            self.stack.icmp.send_error_v4(
                nic, first, icmpv4.TIME_EXCEEDED, icmpv4.REASSEMBLY_TIME_EXCEEDED
            )

    # -- send ------------------------------------------------------------------------------

    def next_ident(self) -> int:
        """Return the next IP identification value (RFC 6864: unique per source, dest, protocol)."""
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def send(
        self,
        route: Route,
        protocol: int,
        payload: bytes,
        ttl: int | None = None,
        dont_fragment: bool = False,
        *,
        tos: int = 0,
    ) -> bool:
        """Send ``payload`` as one IPv4 datagram along ``route``, fragmenting it if needed.

        With ``dont_fragment`` the datagram carries DF (RFC 791 section 3.1) and one too big
        for the route is dropped, not fragmented (counted as ``send_too_big_df``).
        """
        if len(payload) > 0xFFFF - IPV4_MIN_HEADER_LEN:
            # RFC 791 section 3.1: Total Length is 16 bits, fragmented or not.
            self.counters.inc("send_too_big")
            return False
        ttl = ttl if ttl is not None else self.stack.options.default_ttl
        ident = self.next_ident()
        c = self.counters.values
        if IPV4_MIN_HEADER_LEN + len(payload) <= route.mtu:
            c["sent"] = c.get("sent", 0) + 1
            packet = build_datagram(
                route.local,
                route.remote,
                protocol,
                payload,
                ttl=ttl,
                ident=ident,
                tos=tos,
                dont_fragment=dont_fragment,
            )
            return route.nic.write([packet]) == 1
        if dont_fragment:
            self.counters.inc("send_too_big_df")
            return False
        hdr = IPv4Header(
            src=route.local, dst=route.remote, protocol=protocol, ttl=ttl, tos=tos, ident=ident
        )
        packets = fragment(hdr, payload, route.mtu)
        self.counters.inc("sent")
        self.counters.inc("fragments_sent", len(packets))
        return route.nic.write(packets) == len(packets)

    def send_packet(self, nic: NetworkInterface, packet: bytes) -> bool:
        """Write an already-built IPv4 packet out of ``nic``."""
        return nic.write([packet]) == 1


def fragment(hdr: IPv4Header, payload: bytes, mtu: int) -> list[bytes]:
    """Split one datagram into fragments that fit ``mtu`` (RFC 791 section 3.2, "Fragmentation").

    Options whose copied flag is set travel in every fragment; the others only in the first.
    """
    first_len = (mtu - hdr.header_length) // 8 * 8
    if first_len <= 0:
        raise ValueError(f"MTU {mtu} is too small to fragment into")
    copied = b"".join(
        bytes([kind, len(data) + 2]) + data
        for kind, data in parse_options(hdr.options)
        if kind & 0x80 and kind > 1
    )
    if len(copied) % 4:
        copied += bytes(4 - len(copied) % 4)
    packets = []
    offset = 0
    view = memoryview(payload)
    options = hdr.options
    while offset < len(payload):
        room = first_len if offset == 0 else (mtu - IPV4_MIN_HEADER_LEN - len(copied)) // 8 * 8
        chunk = view[offset : offset + room]
        more = offset + len(chunk) < len(payload)
        frag = IPv4Header(
            src=hdr.src,
            dst=hdr.dst,
            protocol=hdr.protocol,
            ttl=hdr.ttl,
            tos=hdr.tos,
            ident=hdr.ident,
            more_fragments=more,
            fragment_offset=offset,
            options=options if offset == 0 else copied,
        )
        packets.append(frag.pack(chunk))
        offset += len(chunk)
    return packets
