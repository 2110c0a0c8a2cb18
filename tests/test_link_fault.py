"""Tests for the seeded fault-injecting link endpoint."""

from __future__ import annotations

import itertools
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.clock import ManualClock
from netstack.counters import Counters
from netstack.link.channel import ChannelEndpoint, Wire
from netstack.link.fault import FaultEndpoint

N = 2000


def pkt(i: int, size: int = 24) -> bytes:
    return struct.pack("!I", i) + bytes(size - 4)


def serial(packet: bytes) -> int:
    return int(struct.unpack_from("!I", packet)[0])


class Recorder:
    """A dispatcher that remembers every packet and the clock time it arrived."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock
        self.packets: list[bytes] = []
        self.times: list[float] = []

    def deliver_network_packet(self, packet: bytes) -> None:
        self.packets.append(packet)
        if self.clock is not None:
            self.times.append(self.clock.now())


def outbound(**faults: Any) -> tuple[FaultEndpoint, ChannelEndpoint, ManualClock]:
    clock = ManualClock()
    inner = ChannelEndpoint(capacity=100_000)
    faults.setdefault("seed", 1)
    return FaultEndpoint(inner, clock, direction="outbound", **faults), inner, clock


def send_all(ep: FaultEndpoint, packets: list[bytes]) -> None:
    for p in packets:  # one at a time, as a stack sends
        ep.write_packets([p])


def test_no_faults_passes_everything_unchanged_and_in_order() -> None:
    clock = ManualClock()
    inner = ChannelEndpoint(capacity=N)
    ep = FaultEndpoint(inner, clock, seed=7)
    rec = Recorder()
    ep.attach(rec)
    sent = [pkt(i) for i in range(N)]
    assert ep.write_packets(sent) == N
    assert inner.drain() == sent
    inner.inject_many(sent)
    assert rec.packets == sent
    assert clock.pending == 0
    assert ep.counters.get("outbound.packets") == N
    assert ep.counters.get("inbound.packets") == N
    assert ep.counters.total() == 2 * N  # nothing but the packet counts


def test_loss_rate() -> None:
    ep, inner, _ = outbound(loss=0.2)
    send_all(ep, [pkt(i) for i in range(N)])
    out = inner.drain()
    lost = ep.counters.get("outbound.lost")
    assert 0.15 * N < lost < 0.25 * N
    assert len(out) == N - lost
    serials = [serial(p) for p in out]
    assert serials == sorted(serials)  # loss alone never reorders


def test_duplicate_rate_and_copies_are_adjacent() -> None:
    ep, inner, _ = outbound(duplicate=0.1)
    sent = [pkt(i) for i in range(N)]
    send_all(ep, sent)
    out = inner.drain()
    dups = ep.counters.get("outbound.duplicated")
    assert 0.06 * N < dups < 0.14 * N
    assert len(out) == N + dups
    # Removing adjacent repeats gives back exactly what was sent.
    dedup = [p for i, p in enumerate(out) if i == 0 or out[i - 1] != p]
    assert dedup == sent


def test_corruption_flips_exactly_one_bit() -> None:
    ep, inner, _ = outbound(corrupt=0.1)
    sent = [pkt(i, 64) for i in range(N)]
    send_all(ep, sent)
    out = inner.drain()
    assert len(out) == N
    damaged = 0
    for before, after in zip(sent, out, strict=True):
        assert len(after) == len(before)
        flipped = bin(int.from_bytes(before, "big") ^ int.from_bytes(after, "big")).count("1")
        assert flipped in (0, 1)
        damaged += flipped
    assert damaged == ep.counters.get("outbound.corrupted")
    assert 0.06 * N < damaged < 0.14 * N


def test_corruption_hits_every_part_of_the_packet() -> None:
    ep, inner, _ = outbound(corrupt=1.0)
    send_all(ep, [bytes(8)] * 500)
    positions = {p.index(next(b for b in p if b)) for p in inner.drain()}
    assert positions == set(range(8))


def test_reorder_rate_and_nothing_lost() -> None:
    ep, inner, clock = outbound(reorder=0.1)
    send_all(ep, [pkt(i) for i in range(N)])
    ep.flush()
    out = [serial(p) for p in inner.drain()]
    assert sorted(out) == list(range(N))
    reordered = ep.counters.get("outbound.reordered")
    assert 0.06 * N < reordered < 0.14 * N
    # A held packet comes out right after the packet that overtook it.
    inversions = sum(1 for a, b in itertools.pairwise(out) if a > b)
    assert 0.05 * N < inversions <= reordered
    assert clock.pending == 0  # flush cancelled the hold timer


def test_held_packet_released_by_timer() -> None:
    ep, inner, clock = outbound(reorder=1.0, reorder_timeout=0.5)
    ep.write_packets([pkt(1)])
    assert inner.drain() == []
    assert ep.held == 1
    clock.advance(0.4)
    assert inner.drain() == []
    clock.advance(0.1)
    assert inner.drain() == [pkt(1)]
    assert ep.held == 0


def test_hold_is_bounded() -> None:
    ep, inner, _ = outbound(reorder=1.0, limit=10)
    send_all(ep, [pkt(i) for i in range(10)])
    assert ep.held == 10
    assert inner.pending == 0
    send_all(ep, [pkt(i) for i in range(10, 15)])
    assert ep.held == 4
    assert ep.counters.get("outbound.hold_full") == 1
    # The 11th packet finds the hold full, passes, and frees the ten before it; 11..14 are
    # then held again.
    out = [serial(p) for p in inner.drain()]
    assert out == [10, *range(10)]
    assert ep.flush() == 4
    assert [serial(p) for p in inner.drain()] == [11, 12, 13, 14]


def test_delay_and_jitter() -> None:
    clock = ManualClock()
    inner = ChannelEndpoint()
    ep = FaultEndpoint(inner, clock, seed=3, delay=0.1, jitter=0.05, direction="inbound")
    rec = Recorder(clock)
    ep.attach(rec)
    inner.inject_many([pkt(i) for i in range(200)])
    assert rec.packets == []
    assert ep.in_flight == 200
    clock.advance(0.0999)
    assert rec.packets == []
    clock.advance(0.06)
    assert len(rec.packets) == 200
    assert all(0.1 <= t <= 0.15 for t in rec.times)
    assert len(set(rec.times)) > 150  # jitter spreads arrival times
    assert ep.counters.get("inbound.delayed") == 200
    # Jitter larger than the gap between packets reorders them.
    assert [serial(p) for p in rec.packets] != list(range(200))
    assert sorted(serial(p) for p in rec.packets) == list(range(200))


def test_delay_without_jitter_keeps_order() -> None:
    ep, inner, clock = outbound(delay=0.2)
    send_all(ep, [pkt(i) for i in range(50)])
    assert inner.pending == 0
    clock.advance(0.2)
    assert [serial(p) for p in inner.drain()] == list(range(50))


def test_delayed_packets_are_bounded() -> None:
    ep, inner, clock = outbound(delay=1.0, limit=16)
    send_all(ep, [pkt(i) for i in range(20)])
    assert ep.in_flight == 16
    assert ep.counters.get("outbound.dropped_full") == 4
    clock.advance(1.0)
    assert [serial(p) for p in inner.drain()] == list(range(16))


def test_same_seed_same_output_different_seed_different_output() -> None:
    def run(seed: int) -> list[tuple[float, bytes]]:
        clock = ManualClock()
        inner = ChannelEndpoint(capacity=100_000)
        ep = FaultEndpoint(
            inner,
            clock,
            seed=seed,
            loss=0.1,
            duplicate=0.1,
            reorder=0.1,
            corrupt=0.1,
            delay=0.01,
            jitter=0.02,
        )
        out: list[tuple[float, bytes]] = []
        inner.on_write = lambda: out.extend((clock.now(), p) for p in inner.drain())
        for i in range(500):
            ep.write_packets([pkt(i)])
            clock.advance(0.001)
        clock.run_until_idle()
        return out

    first = run(42)
    assert len(first) > 400
    assert run(42) == first
    assert run(43) != first


def test_direction_outbound_leaves_inbound_alone() -> None:
    clock = ManualClock()
    inner = ChannelEndpoint(capacity=N)
    ep = FaultEndpoint(inner, clock, seed=5, loss=1.0, direction="outbound")
    rec = Recorder()
    ep.attach(rec)
    ep.write_packets([pkt(i) for i in range(10)])
    assert inner.pending == 0
    inner.inject_many([pkt(i) for i in range(10)])
    assert rec.packets == [pkt(i) for i in range(10)]
    assert "inbound" not in ep.counters.children


def test_direction_inbound_leaves_outbound_alone() -> None:
    clock = ManualClock()
    inner = ChannelEndpoint(capacity=N)
    ep = FaultEndpoint(inner, clock, seed=5, loss=1.0, direction="inbound")
    rec = Recorder()
    ep.attach(rec)
    assert ep.write_packets([pkt(i) for i in range(10)]) == 10
    assert inner.drain() == [pkt(i) for i in range(10)]
    inner.inject_many([pkt(i) for i in range(10)])
    assert rec.packets == []
    assert ep.counters.get("inbound.lost") == 10


def test_close_discards_held_and_ignores_timers() -> None:
    clock = ManualClock()
    inner = ChannelEndpoint()
    ep = FaultEndpoint(inner, clock, seed=1, reorder=1.0, delay=0.1, direction="outbound")
    ep.write_packets([pkt(1), pkt(2)])
    clock.advance(0.1)  # both leave the delay stage and are held
    assert ep.held == 2
    ep.write_packets([pkt(3)])
    ep.close()
    assert ep.held == 0
    clock.run_until_idle()
    assert inner.closed
    assert inner.pending == 0
    assert ep.write_packets([pkt(4)]) == 0


def test_counters_hang_under_parent_and_mtu_passes_through() -> None:
    root = Counters()
    inner = ChannelEndpoint(mtu=1280)
    ep = FaultEndpoint(inner, ManualClock(), seed=1, loss=1.0, counters=root)
    ep.write_packets([pkt(1)])
    assert root.get("fault.outbound.lost") == 1
    assert ep.mtu == 1280
    assert ep.inner is inner


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss": -0.1},
        {"duplicate": 1.5},
        {"delay": -1.0},
        {"jitter": -1.0},
        {"reorder_timeout": 0.0},
        {"limit": 0},
        {"direction": "sideways"},
    ],
)
def test_rejects_bad_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultEndpoint(ChannelEndpoint(), ManualClock(), seed=1, **kwargs)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    loss=st.floats(min_value=0.0, max_value=0.5),
    reorder=st.floats(min_value=0.0, max_value=0.5),
    jitter=st.floats(min_value=0.0, max_value=0.05),
)
def test_simulated_exchange_over_a_faulty_wire(
    seed: int, loss: float, reorder: float, jitter: float
) -> None:
    """Each side sends 100 numbered packets over a wire with faults on one side; what arrives is
    a subset of what was sent, with no packet invented, and the simulation loop terminates."""
    clock = ManualClock()
    a, b = ChannelEndpoint(), ChannelEndpoint()
    wire = Wire(a, b)
    faulty = FaultEndpoint(a, clock, seed=seed, loss=loss, reorder=reorder, jitter=jitter)
    at_a, at_b = Recorder(), Recorder()
    faulty.attach(at_a)
    b.attach(at_b)
    for i in range(100):
        faulty.write_packets([pkt(i)])
        b.write_packets([pkt(1000 + i)])
    steps = 0
    while (wire.pump() or clock.advance(0.01) or clock.pending) and steps < 10_000:
        steps += 1
    faulty.flush()
    wire.pump()
    assert steps < 10_000
    for rec, base, direction in ((at_b, 0, "outbound"), (at_a, 1000, "inbound")):
        got = [serial(p) - base for p in rec.packets]
        assert len(got) == len(set(got))  # no duplication configured, so no repeats
        assert set(got) <= set(range(100))
        assert len(got) == 100 - faulty.counters.get(f"{direction}.lost")
