"""A link endpoint that damages traffic on purpose, reproducibly: a bad network for tests.

:class:`FaultEndpoint` wraps another endpoint and, per packet, decides with a seeded
``random.Random`` whether to lose it, send it twice, flip one of its bits, hold it back behind the
next packet (reordering), or deliver it late (delay plus jitter, on the injected clock). The same
seed, settings, input and clock always give the same output, so a failing simulation replays
exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Literal

from netstack.clock import Clock, TimerHandle
from netstack.counters import Counters
from netstack.link import LinkEndpoint, NetworkDispatcher

__all__ = ["Direction", "FaultEndpoint"]

Direction = Literal["both", "outbound", "inbound"]


class _Lane:
    """Fault state of one direction: its own random stream, held packets and counters."""

    __slots__ = ("counters", "held", "in_flight", "rng", "send", "timer")

    def __init__(
        self, rng: random.Random, counters: Counters, send: Callable[[list[bytes]], None]
    ) -> None:
        self.rng = rng
        self.counters = counters
        self.held: list[bytes] = []
        self.timer: TimerHandle | None = None
        self.in_flight = 0
        self.send = send


class FaultEndpoint:
    """Wraps ``inner`` and injects seeded faults into packets going in ``direction``.

    Per packet, in this order, each with its own probability: ``loss`` drops it; ``duplicate``
    sends it twice; ``corrupt`` flips one random bit of a copy; a copy is then delayed by
    ``delay + uniform(0, jitter)`` seconds on ``clock`` (when either is nonzero); finally, as it
    leaves, ``reorder`` holds it back until the next packet of the same direction has passed, or
    until ``reorder_timeout`` seconds have passed, whichever comes first.

    Each direction draws from its own ``random.Random`` derived from ``seed``, so the faults of
    one direction do not depend on traffic in the other. At most ``limit`` packets per direction
    are held for reordering (beyond that, packets pass without being held) and at most ``limit``
    are in flight on delay timers (beyond that, they are dropped: ``dropped_full``).

    Counters: under the ``fault`` node, one child per faulted direction (``outbound``,
    ``inbound``) with ``packets``, ``lost``, ``duplicated``, ``corrupted``, ``delayed``,
    ``reordered``, ``hold_full``, ``dropped_full``.
    """

    __slots__ = (
        "_clock",
        "_closed",
        "_corrupt",
        "_delay",
        "_delaying",
        "_dispatcher",
        "_duplicate",
        "_inbound",
        "_inner",
        "_jitter",
        "_limit",
        "_loss",
        "_outbound",
        "_reorder",
        "_reorder_timeout",
        "counters",
    )

    def __init__(
        self,
        inner: LinkEndpoint,
        clock: Clock,
        *,
        seed: int,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        corrupt: float = 0.0,
        delay: float = 0.0,
        jitter: float = 0.0,
        direction: Direction = "both",
        reorder_timeout: float = 0.05,
        limit: int = 1024,
        counters: Counters | None = None,
    ) -> None:
        for name, p in (
            ("loss", loss),
            ("duplicate", duplicate),
            ("reorder", reorder),
            ("corrupt", corrupt),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], not {p}")
        if delay < 0 or jitter < 0:
            raise ValueError(f"delay and jitter must not be negative ({delay}, {jitter})")
        if reorder_timeout <= 0:
            raise ValueError(f"reorder_timeout must be positive, not {reorder_timeout}")
        if limit <= 0:
            raise ValueError(f"limit must be positive, not {limit}")
        if direction not in ("both", "outbound", "inbound"):
            raise ValueError(f"direction must be both, outbound or inbound, not {direction!r}")
        self.counters: Counters = (
            counters.child("fault") if counters is not None else Counters("fault")
        )
        self._inner = inner
        self._clock = clock
        self._loss = loss
        self._duplicate = duplicate
        self._reorder = reorder
        self._corrupt = corrupt
        self._delay = delay
        self._jitter = jitter
        self._delaying = delay > 0 or jitter > 0
        self._reorder_timeout = reorder_timeout
        self._limit = limit
        self._dispatcher: NetworkDispatcher | None = None
        self._closed = False
        # String seeds hash deterministically (random.seed version 2), unlike tuples.
        self._outbound = (
            _Lane(
                random.Random(f"{seed}/outbound"),
                self.counters.child("outbound"),
                self._send_outbound,
            )
            if direction in ("both", "outbound")
            else None
        )
        self._inbound = (
            _Lane(
                random.Random(f"{seed}/inbound"),
                self.counters.child("inbound"),
                self._send_inbound,
            )
            if direction in ("both", "inbound")
            else None
        )

    @property
    def inner(self) -> LinkEndpoint:
        """The endpoint the faults are applied in front of."""
        return self._inner

    @property
    def mtu(self) -> int:
        """The wrapped endpoint's MTU."""
        return self._inner.mtu

    @property
    def held(self) -> int:
        """Number of packets (both directions) currently held back for reordering."""
        return sum(len(lane.held) for lane in (self._outbound, self._inbound) if lane is not None)

    @property
    def in_flight(self) -> int:
        """Number of packets (both directions) currently waiting on a delay timer."""
        return sum(lane.in_flight for lane in (self._outbound, self._inbound) if lane is not None)

    def attach(self, dispatcher: NetworkDispatcher | None) -> None:
        """Deliver the inner endpoint's inbound packets, after faults, to ``dispatcher``."""
        self._dispatcher = dispatcher
        self._inner.attach(self if dispatcher is not None else None)

    # Directions --------------------------------------------------------------------------

    def write_packets(self, packets: Iterable[bytes]) -> int:
        """Send outbound packets through the faults; return how many were taken.

        A lossy wire takes the packets it loses, as a real one does: lost packets count.
        """
        if self._closed:
            return 0
        lane = self._outbound
        if lane is None:
            return self._inner.write_packets(packets)
        out: list[bytes] = []
        taken = 0
        for packet in packets:
            taken += 1
            self._admit(lane, bytes(packet), out)
        if out:
            self._inner.write_packets(out)
        return taken

    def deliver_network_packet(self, packet: bytes) -> None:
        """Take one inbound packet from the inner endpoint, apply faults and deliver the result."""
        if self._closed:
            return
        lane = self._inbound
        if lane is None:
            dispatcher = self._dispatcher
            if dispatcher is not None:
                dispatcher.deliver_network_packet(packet)
            return
        out: list[bytes] = []
        self._admit(lane, packet, out)
        if out:
            self._send_inbound(out)

    def _send_outbound(self, packets: list[bytes]) -> None:
        if not self._closed:
            self._inner.write_packets(packets)

    def _send_inbound(self, packets: list[bytes]) -> None:
        for packet in packets:
            dispatcher = self._dispatcher  # re-read: a delivery may detach us
            if dispatcher is None or self._closed:
                return
            dispatcher.deliver_network_packet(packet)

    # Fault pipeline ----------------------------------------------------------------------

    def _admit(self, lane: _Lane, packet: bytes, out: list[bytes]) -> None:
        """Decide one arriving packet's fate; append what leaves now to ``out``."""
        rng = lane.rng
        counters = lane.counters
        counters.inc("packets")
        if self._loss and rng.random() < self._loss:
            counters.inc("lost")
            return
        copies = 1
        if self._duplicate and rng.random() < self._duplicate:
            counters.inc("duplicated")
            copies = 2
        for _ in range(copies):
            copy = packet
            if self._corrupt and copy and rng.random() < self._corrupt:
                bit = rng.randrange(len(copy) * 8)
                damaged = bytearray(copy)
                damaged[bit >> 3] ^= 0x80 >> (bit & 7)
                copy = bytes(damaged)
                counters.inc("corrupted")
            if self._delaying:
                if lane.in_flight >= self._limit:
                    counters.inc("dropped_full")
                    continue
                wait = self._delay + (rng.uniform(0.0, self._jitter) if self._jitter else 0.0)
                lane.in_flight += 1
                counters.inc("delayed")
                self._clock.call_later(wait, self._on_delay_done, lane, copy)
            else:
                self._leave(lane, copy, out)

    def _leave(self, lane: _Lane, packet: bytes, out: list[bytes]) -> None:
        """Send ``packet`` on (into ``out``) or hold it back for reordering.

        A packet that leaves frees the packets held before it, which then follow it.
        """
        if self._reorder and lane.rng.random() < self._reorder:
            if len(lane.held) < self._limit:
                lane.held.append(packet)
                lane.counters.inc("reordered")
                if lane.timer is None:
                    lane.timer = self._clock.call_later(
                        self._reorder_timeout, self._on_hold_timeout, lane
                    )
                return
            lane.counters.inc("hold_full")
        out.append(packet)
        if lane.held:
            out.extend(lane.held)
            self._clear_hold(lane)

    def _on_delay_done(self, lane: _Lane, packet: bytes) -> None:
        lane.in_flight -= 1
        if self._closed:
            return
        out: list[bytes] = []
        self._leave(lane, packet, out)
        if out:
            lane.send(out)

    def _on_hold_timeout(self, lane: _Lane) -> None:
        lane.timer = None
        self._release(lane)

    def _clear_hold(self, lane: _Lane) -> None:
        lane.held = []
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None

    def _release(self, lane: _Lane) -> int:
        """Send every packet held in ``lane``, oldest first; return how many."""
        held = lane.held
        self._clear_hold(lane)
        if held and not self._closed:
            lane.send(held)
        return len(held)

    def flush(self) -> int:
        """Send every packet held back for reordering now; return how many.

        Outbound packets go first, then inbound. Packets on delay timers stay on the clock.
        """
        released = 0
        for lane in (self._outbound, self._inbound):
            if lane is not None:
                released += self._release(lane)
        return released

    def close(self) -> None:
        """Discard held packets, ignore pending delay timers, and close the inner endpoint."""
        if self._closed:
            return
        self._closed = True
        for lane in (self._outbound, self._inbound):
            if lane is not None:
                self._clear_hold(lane)
        self._dispatcher = None
        self._inner.close()
