"""ICMP for IPv4 (RFC 792, RFC 1122 3.2.2) and IPv6 (RFC 4443): echo, errors in, errors out.

Inbound errors are matched to the transport endpoint they concern through the quoted original
header. Outbound errors obey the "never in response to" rules and a token-bucket rate limit.
Neighbour discovery and MLD messages, which the kernel sends on every fresh TUN, are counted
and dropped: a TUN link has no link-layer addresses to resolve.
"""

from __future__ import annotations

from netstack.counters import Counters
from netstack.errors import NoRouteError, ParseError, StackError
from netstack.header import icmpv4, icmpv6
from netstack.header.ipv4 import (
    FLAG_DF,
    IPV4_DST,
    IPV4_FLAGS_AT,
    IPV4_PROTOCOL_AT,
    IPV4_SRC,
    IPv4Header,
)
from netstack.header.ipv6 import IPV6_HEADER_LEN, IPv6Header, walk_extensions
from netstack.header.numbers import IPPROTO_ICMP, IPPROTO_ICMPV6
from netstack.protocols import Control, NetworkInterface, NetworkServices, Route

# RFC 1122 section 3.2.2: quote the IP header and at least 8 octets; RFC 1812 4.3.2.3 allows
# as much as fits in 576 octets. RFC 4443 section 2.4(c): as much as fits in the minimum MTU.
_V4_ERROR_LIMIT = 576
_UNSPECIFIED6 = bytes(16)
_V6_ERROR_LIMIT = 1280

_V4_UNREACH = {
    icmpv4.NET_UNREACHABLE: Control.NET_UNREACHABLE,
    icmpv4.HOST_UNREACHABLE: Control.HOST_UNREACHABLE,
    icmpv4.PROTOCOL_UNREACHABLE: Control.PROTOCOL_UNREACHABLE,
    icmpv4.PORT_UNREACHABLE: Control.PORT_UNREACHABLE,
    icmpv4.FRAGMENTATION_NEEDED: Control.PACKET_TOO_BIG,
}
_V6_UNREACH = {
    icmpv6.NO_ROUTE: Control.NET_UNREACHABLE,
    icmpv6.ADMIN_PROHIBITED: Control.ADMIN_PROHIBITED,
    icmpv6.ADDRESS_UNREACHABLE: Control.HOST_UNREACHABLE,
    icmpv6.PORT_UNREACHABLE: Control.PORT_UNREACHABLE,
}
_NDP_MLD = {
    icmpv6.MLD_QUERY: "mld_query",
    icmpv6.MLD_REPORT: "mld_report",
    icmpv6.MLD_DONE: "mld_done",
    icmpv6.MLDV2_REPORT: "mldv2_report",
    icmpv6.ROUTER_SOLICITATION: "router_solicitation",
    icmpv6.ROUTER_ADVERTISEMENT: "router_advertisement",
    icmpv6.NEIGHBOR_SOLICITATION: "neighbor_solicitation",
    icmpv6.NEIGHBOR_ADVERTISEMENT: "neighbor_advertisement",
    icmpv6.REDIRECT: "redirect",
}


def _carries_icmpv6_error(packet: bytes) -> bool:
    """Tell whether an IPv6 packet carries an ICMPv6 error message (RFC 4443 2.4(e.1)).

    The extension headers are walked: the message may sit behind any of them. A packet whose
    chain does not parse is judged by the fixed header's Next Header alone; a non-initial
    fragment carries no message header to judge.
    """
    offset = IPV6_HEADER_LEN
    try:
        chain = walk_extensions(packet, packet[6], IPV6_HEADER_LEN)
    except ParseError:
        proto = packet[6]
    else:
        if chain.fragment is not None and chain.fragment.offset:
            return False
        proto, offset = chain.upper_protocol, chain.upper_offset
    return proto == IPPROTO_ICMPV6 and len(packet) > offset and packet[offset] < 128


def _counter_name(names: dict[int, str], type_: int) -> str:
    """Return a counter-friendly name for an ICMP type ("echo_request", "type_42")."""
    name = names.get(type_)
    return name.replace(" ", "_") if name else f"type_{type_}"


class TokenBucket:
    """A token bucket on the stack's clock: ``rate`` tokens a second, at most ``burst`` saved."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ICMP:
    """ICMPv4 and ICMPv6 of a stack."""

    def __init__(self, stack: NetworkServices) -> None:
        self.stack = stack
        self.v4 = stack.counters.child("icmpv4")
        self.v6 = stack.counters.child("icmpv6")
        now = stack.clock.now()
        opts = stack.options
        # RFC 4443 section 2.4(f) and RFC 1812 4.3.2.8: limit the rate of errors we originate.
        self._bucket_v4 = TokenBucket(opts.icmp_rate, opts.icmp_burst, now)
        self._bucket_v6 = TokenBucket(opts.icmp_rate, opts.icmp_burst, now)

    def _reply_route(self, nic: NetworkInterface, local: bytes, remote: bytes) -> Route:
        """Route back to ``remote`` from ``local``; without a route, leave by the ingress NIC."""
        try:
            return self.stack.find_route(remote, local)
        except NoRouteError:
            self.stack.counters.inc("route.reply_via_ingress")
            network = self.stack.networks[4 if len(remote) == 4 else 6]
            return Route(nic, local, remote, None, nic.mtu, network)

    # -- IPv4 ------------------------------------------------------------------------------

    def receive_v4(
        self, nic: NetworkInterface, ip: IPv4Header, payload: memoryview, packet: bytes
    ) -> None:
        """Handle one inbound ICMPv4 message addressed to the stack."""
        c = self.v4
        try:
            msg = icmpv4.ICMPv4Message.parse(payload)
        except ParseError as exc:
            c.inc("malformed." + exc.reason)
            return
        c.inc("in." + _counter_name(icmpv4.TYPE_NAMES, msg.type))
        if msg.type == icmpv4.ECHO_REQUEST:
            # RFC 1122 section 3.2.2.6: reply with the same identifier, sequence and data.
            reply = icmpv4.echo_reply_for(msg)
            try:
                route = self._reply_route(nic, ip.dst, ip.src)
            except StackError:
                c.inc("no_route")
                return
            if self.stack.send(route, IPPROTO_ICMP, reply.build()):
                c.inc("out.echo_reply")
        elif msg.type == icmpv4.ECHO_REPLY:
            c.inc("echo_reply_ignored")
        elif msg.type in (icmpv4.DEST_UNREACHABLE, icmpv4.TIME_EXCEEDED, icmpv4.PARAMETER_PROBLEM):
            self._error_v4(msg)
        else:
            c.inc("ignored")

    def _error_v4(self, msg: icmpv4.ICMPv4Message) -> None:
        c = self.v4
        if msg.type == icmpv4.DEST_UNREACHABLE:
            control = _V4_UNREACH.get(msg.code, Control.HOST_UNREACHABLE)
        elif msg.type == icmpv4.TIME_EXCEEDED:
            control = Control.TIME_EXCEEDED
        else:
            control = Control.PARAMETER_PROBLEM
        try:
            orig = IPv4Header.parse(msg.payload, verify_checksum=False)
        except ParseError:
            # The quote may be cut short after the transport's first 8 octets: parse leniently.
            orig = None
        quoted = msg.payload
        if orig is None:
            if len(quoted) < 20 or quoted[0] >> 4 != 4:
                c.inc("malformed.bad_quote")
                return
            ihl = (quoted[0] & 0x0F) * 4
            src, dst = bytes(quoted[IPV4_SRC]), bytes(quoted[IPV4_DST])
            proto = quoted[IPV4_PROTOCOL_AT]
        else:
            ihl = orig.header_length
            src, dst, proto = orig.src, orig.dst, orig.protocol
        mtu = 0
        if control is Control.PACKET_TOO_BIG:
            # RFC 1191 section 3: Fragmentation Needed only answers a datagram sent with DF.
            # One about a datagram we let routers fragment is forged: ignore its MTU.
            if len(quoted) >= 8 and quoted[IPV4_FLAGS_AT] & (FLAG_DF >> 8):
                mtu = msg.mtu
            else:
                c.inc("pmtu_ignored_no_df")
        self._to_transport(c, control, src, dst, proto, bytes(quoted[ihl : ihl + 64]), mtu)

    def _to_transport(
        self,
        c: Counters,
        control: Control,
        src: bytes,
        dst: bytes,
        proto: int,
        header: bytes,
        mtu: int,
    ) -> None:
        """Hand an ICMP error to the transport that sent the quoted packet from ``src``.

        The quote must name one of our addresses as its source and carry at least the first
        8 octets of the transport header (RFC 1122 3.2.2, RFC 4443 2.4(c)); a Fragmentation
        Needed / Packet Too Big lowers the path MTU first (RFC 1191, RFC 8201).
        """
        if not self.stack.is_local(src) or len(header) < 8:
            c.inc("malformed.bad_quote")
            return
        if mtu:
            self.stack.update_path_mtu(dst, mtu)
        transport = self.stack.transports.get(proto)
        if transport is None:
            c.inc("error_no_transport")
            return
        transport.handle_control(control, src, dst, header, mtu)

    def send_error_v4(
        self, nic: NetworkInterface, packet: bytes, type_: int, code: int, rest: int = 0
    ) -> bool:
        """Send an ICMPv4 error about ``packet`` unless RFC 1122 section 3.2.2 forbids it."""
        c = self.v4
        try:
            orig = IPv4Header.parse(packet, verify_checksum=False)
        except ParseError:
            c.inc("error_suppressed.malformed")
            return False
        # RFC 1122 section 3.2.2: never about an ICMP error, a non-initial fragment, a packet
        # to a broadcast or multicast address, or one from a non-unicast source.
        if orig.fragment_offset:
            c.inc("error_suppressed.fragment")
            return False
        if orig.dst[0] >= 224 or orig.src[0] >= 224 or orig.src[0] == 0 or orig.src[0] == 127:
            c.inc("error_suppressed.not_unicast")
            return False
        if orig.protocol == IPPROTO_ICMP:
            hl = orig.header_length
            if len(packet) > hl and packet[hl] not in (icmpv4.ECHO_REQUEST, icmpv4.ECHO_REPLY):
                c.inc("error_suppressed.icmp_error")
                return False
        if not self._bucket_v4.take(self.stack.clock.now()):
            c.inc("error_rate_limited")
            return False
        quote = packet[: _V4_ERROR_LIMIT - 20 - 8]
        msg = icmpv4.ICMPv4Message(type_, code, rest, bytes(quote))
        try:
            route = self._reply_route(nic, orig.dst, orig.src)
        except StackError:
            c.inc("no_route")
            return False
        c.inc("out." + _counter_name(icmpv4.TYPE_NAMES, type_))
        return self.stack.send(route, IPPROTO_ICMP, msg.build())

    # -- IPv6 ------------------------------------------------------------------------------

    def receive_v6(
        self, nic: NetworkInterface, ip: IPv6Header, payload: memoryview, packet: bytes
    ) -> None:
        """Handle one inbound ICMPv6 message addressed to the stack."""
        c = self.v6
        try:
            msg = icmpv6.ICMPv6Message.parse(payload, ip.src, ip.dst)
        except ParseError as exc:
            c.inc("malformed." + exc.reason)
            return
        kind = _NDP_MLD.get(msg.type)
        if kind is not None:
            # Sent by the kernel on every fresh TUN (router solicitations, MLD reports).
            c.inc(f"ndp_mld.{kind}")
            return
        if ip.src == _UNSPECIFIED6:
            # RFC 4291 section 2.5.2: nothing but NDP and MLD comes from ::, and no answer
            # can go to it.
            c.inc("unspecified_source")
            return
        c.inc("in." + _counter_name(icmpv6.TYPE_NAMES, msg.type))
        if msg.type == icmpv6.ECHO_REQUEST:
            if ip.dst[0] == 0xFF:
                # RFC 4443 section 4.2 allows answering multicast echo; we stay quiet.
                c.inc("echo_multicast_ignored")
                return
            reply = icmpv6.echo_reply_for(msg)
            try:
                route = self._reply_route(nic, ip.dst, ip.src)
            except StackError:
                c.inc("no_route")
                return
            if self.stack.send(route, IPPROTO_ICMPV6, reply.build(ip.dst, ip.src)):
                c.inc("out.echo_reply")
        elif msg.type == icmpv6.ECHO_REPLY:
            c.inc("echo_reply_ignored")
        elif msg.is_error:
            self._error_v6(msg)
        else:
            c.inc("ignored")

    def _error_v6(self, msg: icmpv6.ICMPv6Message) -> None:
        c = self.v6
        if msg.type == icmpv6.DEST_UNREACHABLE:
            control = _V6_UNREACH.get(msg.code, Control.HOST_UNREACHABLE)
        elif msg.type == icmpv6.PACKET_TOO_BIG:
            control = Control.PACKET_TOO_BIG
        elif msg.type == icmpv6.TIME_EXCEEDED:
            control = Control.TIME_EXCEEDED
        elif msg.type == icmpv6.PARAMETER_PROBLEM:
            control = Control.PARAMETER_PROBLEM
        else:
            c.inc("ignored")  # RFC 4443 section 2.4(b): unknown errors go to the upper layer
            return
        quoted = msg.payload
        if len(quoted) < IPV6_HEADER_LEN or quoted[0] >> 4 != 6:
            c.inc("malformed.bad_quote")
            return
        src, dst = bytes(quoted[8:24]), bytes(quoted[24:40])
        try:
            chain = walk_extensions(quoted, quoted[6], IPV6_HEADER_LEN, len(quoted))
        except ParseError:
            c.inc("malformed.bad_quote")
            return
        header = bytes(quoted[chain.upper_offset : chain.upper_offset + 64])
        mtu = msg.mtu if control is Control.PACKET_TOO_BIG else 0
        self._to_transport(c, control, src, dst, chain.upper_protocol, header, mtu)

    def send_error_v6(
        self, nic: NetworkInterface, packet: bytes, type_: int, code: int, rest: int = 0
    ) -> bool:
        """Send an ICMPv6 error about ``packet`` unless RFC 4443 section 2.4(e) forbids it."""
        c = self.v6
        if len(packet) < IPV6_HEADER_LEN:
            c.inc("error_suppressed.malformed")
            return False
        src, dst = bytes(packet[8:24]), bytes(packet[24:40])
        # RFC 4443 section 2.4(e): not about an ICMPv6 error, not to a multicast destination
        # (except Packet Too Big and unrecognized options), never from a non-unicast source.
        if src[0] == 0xFF or src == bytes(16):
            c.inc("error_suppressed.not_unicast")
            return False
        if dst[0] == 0xFF and not (
            type_ == icmpv6.PACKET_TOO_BIG
            or (type_ == icmpv6.PARAMETER_PROBLEM and code == icmpv6.UNRECOGNIZED_OPTION)
        ):
            c.inc("error_suppressed.multicast")
            return False
        if _carries_icmpv6_error(packet):
            c.inc("error_suppressed.icmp_error")
            return False
        if not self._bucket_v6.take(self.stack.clock.now()):
            c.inc("error_rate_limited")
            return False
        local = dst if self.stack.is_local(dst) else None
        try:
            if local is None:
                route = self.stack.find_route(src)
            else:
                route = self._reply_route(nic, local, src)
        except StackError:
            c.inc("no_route")
            return False
        quote = bytes(packet[: _V6_ERROR_LIMIT - IPV6_HEADER_LEN - 8])
        msg = icmpv6.ICMPv6Message(type_, code, rest, quote)
        c.inc("out." + _counter_name(icmpv6.TYPE_NAMES, type_))
        return self.stack.send(route, IPPROTO_ICMPV6, msg.build(route.local, src))
