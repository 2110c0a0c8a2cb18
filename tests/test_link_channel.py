"""Tests for the in-memory channel link endpoint and the wire joining two of them."""

from __future__ import annotations

import struct
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netstack.counters import Counters
from netstack.link.channel import ChannelEndpoint, Wire


class Recorder:
    """A dispatcher that remembers every packet it is given."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def deliver_network_packet(self, packet: bytes) -> None:
        self.packets.append(packet)


class Echo:
    """A dispatcher that answers every packet by writing it (or a transform of it) back."""

    def __init__(self, link: ChannelEndpoint, hops: int | None = None) -> None:
        self.link = link
        self.hops = hops  # answer only packets whose counter is below this, or always
        self.seen: list[bytes] = []

    def deliver_network_packet(self, packet: bytes) -> None:
        self.seen.append(packet)
        (n,) = struct.unpack("!I", packet)
        if self.hops is None or n < self.hops:
            self.link.write_packets([struct.pack("!I", n + 1)])


def pkt(i: int, size: int = 20) -> bytes:
    return struct.pack("!I", i) + bytes(size - 4)


def test_inject_delivers_and_counts() -> None:
    ch = ChannelEndpoint()
    rec = Recorder()
    ch.attach(rec)
    ch.inject(pkt(1))
    ch.inject_many([pkt(2), pkt(3, 30)])
    assert rec.packets == [pkt(1), pkt(2), pkt(3, 30)]
    assert ch.counters.get("rx_packets") == 3
    assert ch.counters.get("rx_bytes") == 70


def test_inject_without_dispatcher_drops_and_counts() -> None:
    ch = ChannelEndpoint()
    ch.inject(pkt(1))
    rec = Recorder()
    ch.attach(rec)
    ch.attach(None)
    ch.inject(pkt(2))
    assert rec.packets == []
    assert ch.counters.get("rx_dropped_detached") == 2
    assert ch.counters.get("rx_packets") == 0


def test_write_read_drain_in_order() -> None:
    ch = ChannelEndpoint()
    assert ch.read() is None
    assert ch.write_packets([pkt(i) for i in range(5)]) == 5
    assert ch.pending == 5
    assert ch.read() == pkt(0)
    assert ch.drain(2) == [pkt(1), pkt(2)]
    assert ch.drain(0) == []
    assert ch.drain() == [pkt(3), pkt(4)]
    assert ch.pending == 0
    assert ch.drain() == []
    assert ch.counters.get("tx_packets") == 5
    assert ch.counters.get("tx_bytes") == 100


def test_write_copies_mutable_buffers() -> None:
    ch = ChannelEndpoint()
    buf = bytearray(pkt(7))
    ch.write_packets([buf])  # type: ignore[list-item]
    buf[0] = 0xFF
    assert ch.read() == pkt(7)


def test_bounded_queue_drops_and_counts() -> None:
    ch = ChannelEndpoint(capacity=3)
    assert ch.write_packets([pkt(i) for i in range(5)]) == 3
    assert ch.counters.get("dropped_full") == 2
    assert ch.drain() == [pkt(0), pkt(1), pkt(2)]
    # Room again once drained.
    assert ch.write_packets([pkt(9)]) == 1
    assert ch.counters.get("dropped_full") == 2
    assert ch.counters.get("tx_packets") == 4


def test_packets_over_mtu_are_refused() -> None:
    ch = ChannelEndpoint(mtu=100)
    assert ch.write_packets([pkt(1, 100), pkt(2, 101)]) == 1
    assert ch.counters.get("dropped_too_big") == 1
    assert ch.drain() == [pkt(1, 100)]
    assert ch.mtu == 100


def test_on_write_called_only_when_something_was_queued() -> None:
    ch = ChannelEndpoint(capacity=1)
    calls: list[int] = []
    ch.on_write = lambda: calls.append(ch.pending)
    ch.write_packets([])
    assert calls == []
    ch.write_packets([pkt(1)])
    assert calls == [1]
    ch.write_packets([pkt(2)])  # queue full: nothing queued, no wake-up
    assert calls == [1]


def test_close_drops_everything() -> None:
    ch = ChannelEndpoint()
    rec = Recorder()
    ch.attach(rec)
    ch.write_packets([pkt(1)])
    ch.close()
    assert ch.closed
    assert ch.pending == 0
    assert ch.write_packets([pkt(2), pkt(3)]) == 0
    assert ch.counters.get("dropped_closed") == 2
    ch.inject(pkt(4))
    assert rec.packets == []


def test_counters_hang_under_parent() -> None:
    root = Counters("stack")
    ch = ChannelEndpoint(capacity=1, counters=root)
    ch.write_packets([pkt(1), pkt(2)])
    assert root.get("channel.dropped_full") == 1
    assert root.snapshot()["channel.tx_packets"] == 1


def test_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        ChannelEndpoint(mtu=0)
    with pytest.raises(ValueError):
        ChannelEndpoint(capacity=0)


def test_wire_carries_both_ways_until_quiet() -> None:
    a, b = ChannelEndpoint(), ChannelEndpoint()
    wire = Wire(a, b)
    rec_a = Recorder()
    a.attach(rec_a)
    echo_b = Echo(b, hops=100)
    b.attach(echo_b)
    a.write_packets([struct.pack("!I", 0)])
    moved = wire.pump()
    # a's packet reaches b, b answers with 1, which reaches a; a does not answer.
    assert moved == 2
    assert echo_b.seen == [struct.pack("!I", 0)]
    assert rec_a.packets == [struct.pack("!I", 1)]
    assert wire.pump() == 0


def test_wire_ping_pong_is_iterative_and_bounded() -> None:
    a, b = ChannelEndpoint(), ChannelEndpoint()
    wire = Wire(a, b)
    echo_a, echo_b = Echo(a, hops=5000), Echo(b, hops=5000)
    a.attach(echo_a)
    b.attach(echo_b)
    a.write_packets([struct.pack("!I", 0)])
    # 5001 hops is far deeper than the recursion limit if pump recursed.
    assert wire.pump() == 5001
    # Even-numbered packets go a -> b, so b sees the last one and does not answer it.
    assert echo_b.seen[-1] == struct.pack("!I", 5000)
    assert len(echo_a.seen) == 2500
    assert a.pending == b.pending == 0


def test_wire_pump_stops_at_bound() -> None:
    a, b = ChannelEndpoint(), ChannelEndpoint()
    wire = Wire(a, b)
    a.attach(Echo(a))  # answers forever
    b.attach(Echo(b))
    a.write_packets([struct.pack("!I", 0)])
    assert wire.pump(max_packets=100) == 100
    assert a.pending + b.pending == 1  # the conversation is still going
    assert wire.pump(max_packets=7) == 7


def test_wire_needs_two_channels() -> None:
    ch = ChannelEndpoint()
    with pytest.raises(ValueError):
        Wire(ch, ch)


@given(
    capacity=st.integers(min_value=1, max_value=8),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("write"), st.integers(min_value=0, max_value=5)),
            st.tuples(st.just("drain"), st.one_of(st.none(), st.integers(0, 6))),
            st.tuples(st.just("read"), st.just(0)),
        ),
        max_size=40,
    ),
)
def test_queue_matches_bounded_fifo_model(capacity: int, ops: list[tuple[str, int | None]]) -> None:
    ch = ChannelEndpoint(capacity=capacity)
    model: deque[bytes] = deque()
    dropped = 0
    serial = 0
    for op, arg in ops:
        if op == "write":
            assert arg is not None
            batch = [pkt(serial + i) for i in range(arg)]
            serial += arg
            room = capacity - len(model)
            model.extend(batch[:room])
            dropped += max(0, len(batch) - room)
            assert ch.write_packets(batch) == min(len(batch), room)
        elif op == "drain":
            n = len(model) if arg is None else min(arg, len(model))
            assert ch.drain(arg) == [model.popleft() for _ in range(n)]
        else:
            assert ch.read() == (model.popleft() if model else None)
        assert ch.pending == len(model)
    assert ch.counters.get("dropped_full") == dropped
