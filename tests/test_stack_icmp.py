"""ICMP in the stack: echo on both families, errors out and in, and what a fresh TUN sends."""

from __future__ import annotations

from netstack.header import icmpv4, icmpv6
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import IPv6Header
from netstack.header.numbers import IPPROTO_ICMP, IPPROTO_ICMPV6

from stackutil import HOST4, HOST6, STACK4, STACK6, a, make_stack, udp_packet


def _icmp4(src: str, dst: str, msg: icmpv4.ICMPv4Message, ttl: int = 64) -> bytes:
    return IPv4Header(src=a(src), dst=a(dst), protocol=IPPROTO_ICMP, ttl=ttl).pack(msg.build())


def _icmp6(src: str, dst: str, msg: icmpv6.ICMPv6Message, hop: int = 64) -> bytes:
    s, d = a(src), a(dst)
    return IPv6Header(src=s, dst=d, next_header=IPPROTO_ICMPV6, hop_limit=hop).pack(msg.build(s, d))


def test_ipv4_echo_request_gets_reply_with_same_id_seq_data() -> None:
    """RFC 1122 section 3.2.2.6."""
    stack, link, _ = make_stack()
    req = icmpv4.ICMPv4Message(icmpv4.ECHO_REQUEST, 0, (0x1234 << 16) | 7, b"payload" * 20)
    link.inject(_icmp4(HOST4, STACK4, req))
    (out,) = link.drain()
    ip = IPv4Header.parse(out)
    assert (ip.src, ip.dst) == (a(STACK4), a(HOST4))
    reply = icmpv4.ICMPv4Message.parse(out[ip.header_length :])
    assert (reply.type, reply.ident, reply.sequence, reply.payload) == (
        icmpv4.ECHO_REPLY,
        0x1234,
        7,
        b"payload" * 20,
    )
    assert stack.counters.get("icmpv4.out.echo_reply") == 1


def test_ipv6_echo_request_gets_reply() -> None:
    """RFC 4443 section 4.2."""
    _, link, _ = make_stack()
    req = icmpv6.ICMPv6Message(icmpv6.ECHO_REQUEST, 0, (99 << 16) | 3, b"abc")
    link.inject(_icmp6(HOST6, STACK6, req))
    (out,) = link.drain()
    ip = IPv6Header.parse(out)
    reply = icmpv6.ICMPv6Message.parse(out[40:], ip.src, ip.dst)
    assert (reply.type, reply.ident, reply.sequence, reply.payload) == (
        icmpv6.ECHO_REPLY,
        99,
        3,
        b"abc",
    )


def test_large_ping_is_reassembled_and_the_reply_fragmented() -> None:
    stack, link, _ = make_stack(mtu=1500)
    from netstack.network.ipv4 import fragment

    req = icmpv4.ICMPv4Message(icmpv4.ECHO_REQUEST, 0, 5, bytes(4000))
    hdr = IPv4Header(src=a(HOST4), dst=a(STACK4), protocol=IPPROTO_ICMP, ident=77)
    for frag in reversed(fragment(hdr, req.build(), 1500)):
        link.inject(frag)
    out = link.drain()
    assert len(out) == 3
    assert stack.counters.get("ipv4.reassembly.reassembled") == 1


def test_unknown_protocol_gets_protocol_unreachable() -> None:
    stack, link, _ = make_stack()
    packet = IPv4Header(src=a(HOST4), dst=a(STACK4), protocol=253).pack(b"x" * 12)
    link.inject(packet)
    (out,) = link.drain()
    msg = icmpv4.ICMPv4Message.parse(out[20:])
    assert (msg.type, msg.code) == (icmpv4.DEST_UNREACHABLE, icmpv4.PROTOCOL_UNREACHABLE)
    assert stack.counters.get("ipv4.unknown_protocol") == 1


def test_unknown_next_header_gets_parameter_problem_pointing_at_it() -> None:
    """RFC 8200 section 4: code 1, pointer to the Next Header field (offset 6)."""
    _, link, _ = make_stack()
    packet = IPv6Header(src=a(HOST6), dst=a(STACK6), next_header=253).pack(b"x" * 8)
    link.inject(packet)
    (out,) = link.drain()
    ip = IPv6Header.parse(out)
    msg = icmpv6.ICMPv6Message.parse(out[40:], ip.src, ip.dst)
    assert (msg.type, msg.code, msg.pointer) == (
        icmpv6.PARAMETER_PROBLEM,
        icmpv6.UNRECOGNIZED_NEXT_HEADER,
        6,
    )


def test_no_error_about_an_icmp_error() -> None:
    """RFC 1122 section 3.2.2: never send an ICMP error about an ICMP error."""
    stack, link, _ = make_stack()
    # An ICMP error to us that quotes nothing we sent: dropped, and no error goes back.
    err = icmpv4.ICMPv4Message(icmpv4.DEST_UNREACHABLE, 3, 0, bytes(28))
    link.inject(_icmp4(HOST4, STACK4, err))
    assert link.drain() == []
    assert stack.icmp.send_error_v4(stack.nics["eth0"], _icmp4(HOST4, STACK4, err), 3, 3) is False
    assert stack.counters.get("icmpv4.error_suppressed.icmp_error") == 1


def test_kernel_chatter_on_a_fresh_tun_is_counted_and_dropped() -> None:
    """Router solicitations and MLDv2 reports to multicast groups never produce output."""
    stack, link, _ = make_stack()
    rs = icmpv6.ICMPv6Message(icmpv6.ROUTER_SOLICITATION, 0, 0, b"")
    link.inject(_icmp6("fe80::1", "ff02::2", rs, hop=255))  # all-routers: not joined
    link.inject(_icmp6("fe80::1", "ff02::1", rs, hop=255))  # all-nodes: joined
    mld = icmpv6.ICMPv6Message(icmpv6.MLDV2_REPORT, 0, 1, bytes(20))
    link.inject(_icmp6("fe80::1", "ff02::16", mld, hop=1))
    assert link.drain() == []
    assert stack.counters.get("icmpv6.ndp_mld.router_solicitation") == 1
    assert stack.counters.get("ipv6.not_for_us.multicast") == 2


def test_port_unreachable_from_peer_reaches_connected_endpoint() -> None:
    from netstack.stack import Control
    from netstack.transport.udp import UDPEndpoint

    stack, link, _ = make_stack()
    errors: list[tuple[Control, bytes, int]] = []
    ep = UDPEndpoint(stack, on_error=lambda c, r, p: errors.append((c, r, p)))
    ep.bind(a(STACK4), 4444)
    ep.connect(a(HOST4), 53)
    ep.sendto(b"query")
    (sent,) = link.drain()
    err = icmpv4.ICMPv4Message(icmpv4.DEST_UNREACHABLE, icmpv4.PORT_UNREACHABLE, 0, sent[:28])
    link.inject(_icmp4(HOST4, STACK4, err))
    assert errors == [(Control.PORT_UNREACHABLE, a(HOST4), 53)]


def test_packet_too_big_lowers_path_mtu() -> None:
    """RFC 8201: a Packet Too Big lowers the PMTU to the destination; it expires later."""
    from netstack.transport.udp import UDPEndpoint

    stack, link, clock = make_stack()
    ep = UDPEndpoint(stack)
    ep.bind(a(STACK6), 4444)
    ep.sendto(bytes(1400), a(HOST6), 53)
    (sent,) = link.drain()
    ptb = icmpv6.ICMPv6Message(icmpv6.PACKET_TOO_BIG, 0, 1280, sent[:1232])
    link.inject(_icmp6(HOST6, STACK6, ptb))
    ep.sendto(bytes(1400), a(HOST6), 53)
    frags = link.drain()
    assert len(frags) == 2 and all(len(f) <= 1280 for f in frags)
    clock.advance(stack.options.pmtu_lifetime + 1)
    ep.sendto(bytes(1400), a(HOST6), 53)
    assert len(link.drain()) == 1


def test_ttl_zero_is_delivered_and_bad_source_dropped() -> None:
    """RFC 1122 3.2.1.7: a host never drops for a low TTL; 3.2.1.3: nor accepts a bad source."""
    from netstack.transport.udp import UDPEndpoint

    stack, link, _ = make_stack()
    got: list[bytes] = []
    ep = UDPEndpoint(stack, lambda p, *_: got.append(p))
    ep.bind(a(STACK4), 9)
    link.inject(udp_packet(HOST4, STACK4, 1, 9, b"ttl0", ttl=0))
    link.inject(udp_packet("224.0.0.1", STACK4, 1, 9, b"x"))
    assert got == [b"ttl0"]
    assert link.drain() == []
    assert stack.counters.get("ipv4.malformed.bad_source") == 1


def test_not_for_us_is_counted_not_forwarded() -> None:
    stack, link, _ = make_stack()
    link.inject(udp_packet(HOST4, "10.0.0.99", 1, 9, b"x"))
    link.inject(udp_packet(HOST6, "fd00::99", 1, 9, b"x"))
    assert link.drain() == []
    assert stack.counters.get("ipv4.not_for_us") == 1
    assert stack.counters.get("ipv6.not_for_us") == 1


def test_truncated_and_garbage_packets_are_counted() -> None:
    stack, link, _ = make_stack()
    for junk in (b"", b"\x45", b"\x60" + bytes(10), b"\x10" * 30, bytes(20)):
        link.inject(junk)
    assert link.drain() == []
    c = stack.counters.snapshot()
    assert c["nic.eth0.rx_empty"] == 1
    assert c["ipv4.malformed.truncated"] == 1
    assert c["ipv6.malformed.truncated"] == 1
    assert c["nic.eth0.rx_unknown_version"] == 2


def test_path_mtu_is_never_raised_and_never_below_the_minimum() -> None:
    """RFC 1191 6.3 / RFC 8201 4: Too Big messages only lower; below 1280 (IPv6) is discarded."""
    stack, _, _ = make_stack()
    remote = a(HOST6)
    stack.update_path_mtu(remote, 1400)
    stack.update_path_mtu(remote, 1480)  # a larger value does not raise the estimate
    assert stack.path_mtu(remote, 1500) == 1400
    stack.update_path_mtu(remote, 1000)  # below the IPv6 minimum: discarded, not clamped
    assert stack.path_mtu(remote, 1500) == 1400
    assert stack.counters.get("route.pmtu_below_minimum") == 1
    stack.update_path_mtu(remote, 1280)
    assert stack.path_mtu(remote, 1500) == 1280


def test_fragmentation_needed_about_a_datagram_without_df_is_ignored() -> None:
    """RFC 1191 section 3: only a DF datagram draws Fragmentation Needed; ours (UDP) had none."""
    from netstack.transport.udp import UDPEndpoint

    stack, link, _ = make_stack()
    ep = UDPEndpoint(stack)
    ep.bind(a(STACK4), 4444)
    ep.sendto(bytes(1400), a(HOST4), 53)
    (sent,) = link.drain()
    assert not sent[6] & 0x40  # UDP over IPv4 goes without DF
    forged = icmpv4.ICMPv4Message(
        icmpv4.DEST_UNREACHABLE, icmpv4.FRAGMENTATION_NEEDED, 576, sent[:28]
    )
    link.inject(_icmp4(HOST4, STACK4, forged))
    assert stack.path_mtu(a(HOST4), 1500) == 1500
    assert stack.counters.get("icmpv4.pmtu_ignored_no_df") == 1
    # The same message about a DF datagram (TCP sets DF) is believed.
    with_df = bytearray(sent[:28])
    with_df[6] |= 0x40
    real = icmpv4.ICMPv4Message(
        icmpv4.DEST_UNREACHABLE, icmpv4.FRAGMENTATION_NEEDED, 576, bytes(with_df)
    )
    link.inject(_icmp4(HOST4, STACK4, real))
    assert stack.path_mtu(a(HOST4), 1500) == 576


def test_solicited_node_groups_follow_the_addresses() -> None:
    """RFC 4291 2.7.1: a group is joined per address and left with the last address needing it."""
    from netstack.network.ipv6 import solicited_node

    stack, _, _ = make_stack()
    stack.add_address("eth0", "2001:db8::1:ab:cdef/64")
    stack.add_address("eth0", "2001:db8::2:ab:cdef/64")  # same low 24 bits: same group
    group = solicited_node(a("2001:db8::1:ab:cdef"))
    assert group in stack.ipv6.groups
    stack.remove_address("2001:db8::1:ab:cdef")
    assert group in stack.ipv6.groups  # still needed by ::2:ab:cdef
    stack.remove_address("2001:db8::2:ab:cdef")
    assert group not in stack.ipv6.groups
