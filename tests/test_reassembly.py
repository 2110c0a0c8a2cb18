"""Fragmentation and reassembly (RFC 791 section 3.2, RFC 8200 section 4.5, RFC 5722)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.clock import ManualClock
from netstack.counters import Counters
from netstack.header import icmpv4
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import IPv6Header
from netstack.header.numbers import IPPROTO_UDP
from netstack.header.udp import build_udp
from netstack.network import ipv4 as net4
from netstack.network import ipv6 as net6
from netstack.network.fragment import FRAGMENT_OVERHEAD, Reassembler
from netstack.stack import StackOptions
from netstack.transport.udp import UDPEndpoint

from stackutil import HOST4, HOST6, STACK4, STACK6, a, make_stack


def _fragments(family: int, payload: bytes, mtu: int, ident: int = 4242) -> list[bytes]:
    if family == 4:
        s, d = a(HOST4), a(STACK4)
        datagram = build_udp(s, d, 1000, 53, payload)
        hdr = IPv4Header(src=s, dst=d, protocol=IPPROTO_UDP, ident=ident & 0xFFFF)
        return net4.fragment(hdr, datagram, mtu)
    s, d = a(HOST6), a(STACK6)
    datagram = build_udp(s, d, 1000, 53, payload)
    return net6.fragment(IPv6Header(src=s, dst=d, next_header=IPPROTO_UDP), datagram, mtu, ident)


def _listening(family: int):  # type: ignore[no-untyped-def]
    stack, link, clock = make_stack(mtu=9000)
    got: list[bytes] = []
    ep = UDPEndpoint(stack, lambda p, *_: got.append(p))
    ep.bind(a(STACK4 if family == 4 else STACK6), 53)
    return stack, link, clock, got


@settings(max_examples=60, deadline=None)
@given(
    family=st.sampled_from([4, 6]),
    size=st.integers(min_value=1, max_value=20000),
    mtu=st.integers(min_value=1280, max_value=3000),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    dup_rate=st.floats(min_value=0, max_value=0.5),
)
def test_any_fragmentation_in_any_order_with_duplicates_reassembles_exactly(
    family: int, size: int, mtu: int, seed: int, dup_rate: float
) -> None:
    rng = random.Random(seed)
    payload = rng.randbytes(size)
    frags = _fragments(family, payload, mtu)
    assert all(len(f) <= mtu for f in frags)
    if len(frags) > 1:  # a whole datagram sent twice is two datagrams
        frags += [f for f in frags if rng.random() < dup_rate]
    rng.shuffle(frags)
    stack, link, clock, got = _listening(family)
    for f in frags:
        link.inject(f)
    # Exactly the payload, at least once. If a duplicate of every fragment arrives after the
    # first copy completed, they form a second, identical datagram: IP does not deduplicate.
    assert got and all(g == payload for g in got)
    assert len(got) <= 1 + min(frags.count(f) - 1 for f in set(frags))
    # Duplicates that arrive after completion start a new partial datagram, which the timer
    # reclaims: nothing is held for good.
    clock.advance(61)
    reasm = stack.ipv4.reassembler if family == 4 else stack.ipv6.reassembler
    assert reasm.memory == 0 and reasm.in_progress == 0


@settings(max_examples=40, deadline=None)
@given(
    family=st.sampled_from([4, 6]),
    size=st.integers(min_value=3000, max_value=8000),
    shift=st.integers(min_value=1, max_value=64),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_overlapping_fragments_drop_the_datagram(
    family: int, size: int, shift: int, seed: int
) -> None:
    """RFC 5722: overlap discards the datagram and the fragments still to come."""
    rng = random.Random(seed)
    frags = _fragments(family, rng.randbytes(size), 1280)
    stack, link, _, got = _listening(family)
    # Rebuild the second fragment 8*shift bytes earlier, so it overlaps the first.
    if family == 4:
        hdr = IPv4Header.parse(frags[1])
        body = frags[1][hdr.header_length :]
        hdr.fragment_offset -= 8 * min(shift, hdr.fragment_offset // 8)
        evil = hdr.pack(body)
    else:
        fh = bytearray(frags[1][40:48])
        off = int.from_bytes(fh[2:4], "big") & 0xFFF8
        off -= 8 * min(shift, off // 8)
        fh[2:4] = (off | (fh[3] & 1)).to_bytes(2, "big")
        evil = IPv6Header.parse(frags[1]).pack(bytes(fh) + frags[1][48:])
    link.inject(frags[0])
    link.inject(evil)
    for f in frags[1:]:
        link.inject(f)
    assert got == []
    assert stack.counters.get(f"ipv{family}.reassembly.overlaps") >= 1


@settings(max_examples=25, deadline=None)
@given(
    limit=st.integers(min_value=2000, max_value=50000),
    count=st.integers(min_value=1, max_value=400),
    size=st.sampled_from([8, 64, 512, 1024]),
)
def test_flood_of_incomplete_fragments_stays_within_the_memory_bound(
    limit: int, count: int, size: int
) -> None:
    options = StackOptions(reassembly_memory=limit, reassembly_datagrams=64)
    stack, link, _ = make_stack(options=options, mtu=9000)
    s, d = a(HOST4), a(STACK4)
    for i in range(count):
        hdr = IPv4Header(
            src=s, dst=d, protocol=IPPROTO_UDP, ident=i, more_fragments=True, fragment_offset=8
        )
        link.inject(hdr.pack(bytes(size)))
        reasm = stack.ipv4.reassembler
        assert reasm.memory <= limit
        assert reasm.in_progress <= 64
    assert reasm.memory == sum(1 for _ in range(reasm.in_progress)) * (size + FRAGMENT_OVERHEAD)


def test_reassembly_timeout_frees_memory_and_sends_time_exceeded() -> None:
    """RFC 792 / RFC 1122 3.3.2: time exceeded (code 1) only when the first fragment came."""
    stack, link, clock = make_stack(mtu=9000)
    frags = _fragments(4, bytes(3000), 1280)
    link.inject(frags[0])
    link.inject(_fragments(4, bytes(3000), 1280, ident=99)[1])  # no first fragment
    assert stack.ipv4.reassembler.in_progress == 2
    clock.advance(stack.options.ipv4_reassembly_timeout + 0.1)
    assert stack.ipv4.reassembler.in_progress == 0
    assert stack.ipv4.reassembler.memory == 0
    (out,) = link.drain()
    msg = icmpv4.ICMPv4Message.parse(out[20:])
    assert (msg.type, msg.code) == (icmpv4.TIME_EXCEEDED, icmpv4.REASSEMBLY_TIME_EXCEEDED)
    assert stack.counters.get("ipv4.reassembly.timeouts") == 2


def test_ipv6_fragment_not_multiple_of_eight_is_a_parameter_problem() -> None:
    stack, link, _ = make_stack()
    frag = _fragments(6, bytes(3000), 1280)[0]
    bad = IPv6Header.parse(frag).pack(frag[40:-3])
    link.inject(bad)
    (out,) = link.drain()
    assert out[40] == 4 and out[41] == 0  # Parameter Problem, erroneous header field
    assert int.from_bytes(out[44:48], "big") == 4  # pointer at Payload Length
    assert stack.counters.get("ipv6.malformed.fragment_length") == 1


def test_atomic_fragment_is_delivered_directly() -> None:
    """RFC 6946."""
    stack, link, _, got = _listening(6)
    frags = _fragments(6, b"tiny", 1280)
    assert len(frags) == 1  # fits: net6.fragment still adds a fragment header
    link.inject(frags[0])
    assert got == [b"tiny"]
    assert stack.counters.get("ipv6.atomic_fragments") == 1


def test_reassembler_unit_rules() -> None:
    clock = ManualClock()
    counters = Counters()
    r = Reassembler(clock, counters, timeout=5, memory_limit=10_000, max_datagrams=4)
    assert r.add("k", 0, True, b"a" * 7) is None  # not a multiple of 8 with MF set
    assert counters.get("bad_fragment_length") == 1
    assert r.add("k", 8, False, b"tail") is None
    assert r.add("k", 16, True, b"b" * 8) is None  # beyond the known end
    assert counters.get("inconsistent_length") == 1
    assert r.add("k", 0, True, b"c" * 8) is None  # poisoned by the inconsistency
    assert counters.get("dropped_poisoned") == 1
    clock.advance(6)
    assert r.add("k", 0, True, b"c" * 8) is None
    assert r.add("k", 8, False, b"tail") == (b"c" * 8 + b"tail", None)
