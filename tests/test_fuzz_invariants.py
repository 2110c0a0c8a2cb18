"""The live-stack invariants of fuzz/invariants.py under Hypothesis (no atheris needed).

Hypothesis draws the operation sequences: as bytes for the fuzz decoder (crafted IPv4/IPv6
packets, fragment trains, TCP segments on an established connection, clock steps) and
directly as fragment trains in every order. The checker itself is checked on packets that
break each rule.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.invariants import InvariantViolation, check_output
from fuzz.live import LiveStack, small_limits
from fuzz.packets import HOST4, HOST6, SINK_PORT, STACK4, STACK6, Inject, decode_ops
from netstack.header import icmpv4, icmpv6
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import IPv6Fragment, IPv6Header, build_extensions
from netstack.header.numbers import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP
from netstack.header.udp import build_udp

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(data=st.binary(max_size=1500), tight=st.booleans(), seed=st.integers(0, 255))
def test_decoded_operation_sequences_keep_every_invariant(
    data: bytes, tight: bool, seed: int
) -> None:
    live = LiveStack(small_limits() if tight else None, seed=seed)
    live.run(decode_ops(data))
    assert live.nic.counters.values["rx_packets"] == live.injected


def _fragments4(datagram: bytes, size: int) -> list[bytes]:
    packets = []
    for off in range(0, len(datagram), size):
        hdr = IPv4Header(
            src=HOST4,
            dst=STACK4,
            protocol=IPPROTO_UDP,
            ident=99,
            more_fragments=off + size < len(datagram),
            fragment_offset=off,
        )
        packets.append(hdr.pack(datagram[off : off + size]))
    return packets


def _fragments6(datagram: bytes, size: int) -> list[bytes]:
    packets = []
    for off in range(0, len(datagram), size):
        frag = IPv6Fragment(offset=off, more=off + size < len(datagram), ident=99)
        first, chain = build_extensions([frag], IPPROTO_UDP)
        hdr = IPv6Header(src=HOST6, dst=STACK6, next_header=first)
        packets.append(hdr.pack(chain + datagram[off : off + size]))
    return packets


@FAST
@given(
    payload=st.binary(min_size=1, max_size=3000),
    units=st.integers(1, 40),
    v6=st.booleans(),
    order=st.randoms(use_true_random=False),
    repeat=st.booleans(),
)
def test_fragment_trains_in_any_order_deliver_exactly_once(
    payload: bytes, units: int, v6: bool, order: object, repeat: bool
) -> None:
    live = LiveStack()
    sink = live.sockets[2 if v6 else 0]
    src, dst = (HOST6, STACK6) if v6 else (HOST4, STACK4)
    datagram = build_udp(src, dst, 5353, SINK_PORT, payload)
    fragments = (_fragments6 if v6 else _fragments4)(datagram, 8 * units)
    order.shuffle(fragments)  # type: ignore[attr-defined]
    if repeat:
        fragments.append(fragments[0])  # a late duplicate
    for packet in fragments:
        live.apply(Inject(packet))
    # A duplicate after completion starts a new datagram that never completes (RFC 791).
    assert sink.queued == 1 or (len(fragments) == 2 and repeat and sink.queued == 2)
    assert sink._queue[0][0] == payload
    live.run([])


def test_checker_rejects_a_bad_udp_checksum() -> None:
    live = LiveStack()
    datagram = bytearray(build_udp(STACK4, HOST4, 53, 5353, b"answer"))
    datagram[-1] ^= 1
    packet = IPv4Header(src=STACK4, dst=HOST4, protocol=IPPROTO_UDP).pack(bytes(datagram))
    with pytest.raises(InvariantViolation, match="UDP checksum"):
        check_output(live, [packet])


def test_checker_rejects_an_icmp_error_about_an_icmp_error() -> None:
    live = LiveStack()
    inner = icmpv4.ICMPv4Message(icmpv4.DEST_UNREACHABLE, 3, 0, bytes(28)).build()
    quoted = IPv4Header(src=HOST4, dst=STACK4, protocol=IPPROTO_ICMP).pack(inner)
    error = icmpv4.ICMPv4Message(icmpv4.DEST_UNREACHABLE, 3, 0, quoted).build()
    packet = IPv4Header(src=STACK4, dst=HOST4, protocol=IPPROTO_ICMP).pack(error)
    with pytest.raises(InvariantViolation, match="ICMP error about an ICMP error"):
        check_output(live, [packet])


def test_checker_rejects_an_icmpv6_error_about_a_multicast_packet() -> None:
    live = LiveStack()
    group = bytes.fromhex("ff02" + "00" * 13 + "01")
    quoted = IPv6Header(src=HOST6, dst=group, next_header=IPPROTO_UDP).pack(bytes(8))
    error = icmpv6.ICMPv6Message(icmpv6.DEST_UNREACHABLE, 4, 0, quoted).build(STACK6, HOST6)
    packet = IPv6Header(src=STACK6, dst=HOST6, next_header=IPPROTO_ICMPV6).pack(error)
    with pytest.raises(InvariantViolation, match="multicast"):
        check_output(live, [packet])


def test_checker_rejects_an_incomplete_fragment_train() -> None:
    live = LiveStack()
    datagram = build_udp(STACK4, HOST4, 53, 5353, bytes(100))
    first = IPv4Header(
        src=STACK4, dst=HOST4, protocol=IPPROTO_UDP, ident=5, more_fragments=True
    ).pack(datagram[:64])
    with pytest.raises(InvariantViolation, match="no last fragment"):
        check_output(live, [first])


def test_checker_rejects_tcp_state_over_its_bounds() -> None:
    from fuzz.invariants import check_tcp_bounds

    live = LiveStack()
    check_tcp_bounds(live)  # a fresh stack with its listeners and connection is within bounds
    endpoints = [ep for ep in live.stack.tcp.demux.connected.values() if hasattr(ep, "rcv")]
    assert endpoints, "the live stack holds an established connection"
    endpoints[0].rcv.queued = live.stack.tcp.config.receive_buffer + 1
    with pytest.raises(InvariantViolation, match="receive queue"):
        check_tcp_bounds(live)
