"""An in-memory link endpoint, and a wire joining two of them.

:class:`ChannelEndpoint` is the link of tests, benchmarks and the demo: the test injects inbound
packets by hand and reads back what the stack wrote. :class:`Wire` joins two channels so that two
stacks can talk to each other inside one process, driven step by step (no threads, no timers).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

from netstack.counters import Counters
from netstack.link import NetworkDispatcher

__all__ = ["ChannelEndpoint", "Wire"]


class ChannelEndpoint:
    """A link whose far side is the program itself: inbound by :meth:`inject`, outbound queued.

    Outbound packets wait in a bounded FIFO until :meth:`read` or :meth:`drain` takes them; when
    the FIFO holds ``capacity`` packets, further writes are dropped and counted (``dropped_full``),
    as a full transmit ring would. Packets longer than ``mtu`` are refused (``dropped_too_big``),
    which catches a stack that forgets to fragment.

    Counters (under the ``channel`` node): ``rx_packets``, ``rx_bytes``, ``rx_dropped_detached``,
    ``tx_packets``, ``tx_bytes``, ``dropped_full``, ``dropped_too_big``, ``dropped_closed``.
    """

    __slots__ = ("_capacity", "_closed", "_dispatcher", "_mtu", "_queue", "counters", "on_write")

    def __init__(
        self, mtu: int = 1500, capacity: int = 4096, counters: Counters | None = None
    ) -> None:
        if mtu <= 0:
            raise ValueError(f"mtu must be positive, not {mtu}")
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, not {capacity}")
        self.counters: Counters = (
            counters.child("channel") if counters is not None else Counters("channel")
        )
        # Called with no arguments after a write_packets() that queued something, so a driver
        # (an event loop, a benchmark) can wake up and drain.
        self.on_write: Callable[[], None] | None = None
        self._mtu = mtu
        self._capacity = capacity
        self._queue: deque[bytes] = deque()
        self._dispatcher: NetworkDispatcher | None = None
        self._closed = False

    @property
    def mtu(self) -> int:
        """Largest IP packet, in bytes, the channel carries."""
        return self._mtu

    @property
    def capacity(self) -> int:
        """Most outbound packets the channel holds before it drops writes."""
        return self._capacity

    @property
    def pending(self) -> int:
        """Number of outbound packets waiting to be read."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def attach(self, dispatcher: NetworkDispatcher | None) -> None:
        """Deliver injected packets to ``dispatcher`` from now on (None detaches)."""
        self._dispatcher = dispatcher

    # Inbound -----------------------------------------------------------------------------

    def inject(self, packet: bytes) -> None:
        """Deliver one inbound raw IP packet to the attached dispatcher (dropped if none)."""
        dispatcher = self._dispatcher
        counters = self.counters
        if dispatcher is None or self._closed:
            counters.inc("rx_dropped_detached")
            return
        counters.inc("rx_packets")
        counters.inc("rx_bytes", len(packet))
        dispatcher.deliver_network_packet(packet)

    def inject_many(self, packets: Iterable[bytes]) -> None:
        """Deliver several inbound packets in order, as :meth:`inject` does one."""
        for packet in packets:
            # Re-read the dispatcher each time: a delivery may detach or close the channel.
            self.inject(packet)

    # Outbound ----------------------------------------------------------------------------

    def write_packets(self, packets: Iterable[bytes]) -> int:
        """Queue outbound packets for :meth:`read`; return how many were queued."""
        counters = self.counters
        if self._closed:
            counters.inc("dropped_closed", sum(1 for _ in packets))
            return 0
        queue = self._queue
        capacity = self._capacity
        mtu = self._mtu
        queued = 0
        nbytes = 0
        for packet in packets:
            if type(packet) is not bytes:
                # Own the bytes: the caller may reuse a bytearray or memoryview buffer.
                packet = bytes(packet)
            if len(packet) > mtu:
                counters.inc("dropped_too_big")
            elif len(queue) >= capacity:
                counters.inc("dropped_full")
            else:
                queue.append(packet)
                queued += 1
                nbytes += len(packet)
        if queued:
            counters.inc("tx_packets", queued)
            counters.inc("tx_bytes", nbytes)
            on_write = self.on_write
            if on_write is not None:
                on_write()
        return queued

    def read(self) -> bytes | None:
        """Take the oldest outbound packet, or return None when none is waiting."""
        queue = self._queue
        return queue.popleft() if queue else None

    def drain(self, limit: int | None = None) -> list[bytes]:
        """Take up to ``limit`` (default: all) outbound packets, oldest first."""
        queue = self._queue
        if limit is None or limit >= len(queue):
            packets = list(queue)
            queue.clear()
            return packets
        popleft = queue.popleft
        return [popleft() for _ in range(max(0, limit))]

    def close(self) -> None:
        """Detach, discard queued packets and drop every later write or injection."""
        self._closed = True
        self._dispatcher = None
        self._queue.clear()


class Wire:
    """Two channels joined back to back: what one side writes, the other side receives.

    Nothing moves by itself; :meth:`pump` carries packets across until both sides are quiet, so a
    simulation alternates pumping the wire and advancing its clock::

        while wire.pump() or clock.advance(step):
            ...
    """

    __slots__ = ("a", "b")

    def __init__(self, a: ChannelEndpoint, b: ChannelEndpoint) -> None:
        if a is b:
            raise ValueError("a wire needs two distinct channels")
        self.a = a
        self.b = b

    def pump(self, max_packets: int = 1_000_000) -> int:
        """Carry packets both ways until the wire is quiet; return how many moved.

        Moves a->b and b->a until neither side has anything queued or ``max_packets`` have
        moved. A return of 0 means the wire was already quiet.
        """
        a, b = self.a, self.b
        moved = 0
        # Iterative, not recursive: a delivery that makes the receiver answer only queues the
        # answer on the receiver's side, and the next round of this loop carries it back.
        while moved < max_packets and (a.pending or b.pending):
            for src, dst in ((a, b), (b, a)):
                budget = max_packets - moved
                if budget <= 0:
                    break
                batch = src.drain(budget)
                if batch:
                    moved += len(batch)
                    dst.inject_many(batch)
        return moved


class LoopWire:
    """Joins two channels on an asyncio loop: packets cross as soon as the loop runs.

    Each write schedules one :meth:`Wire.pump` with ``loop.call_soon`` (writes in the same loop
    iteration share it), so neither side calls into the other from inside its own send path.
    """

    __slots__ = ("_loop", "_scheduled", "wire")

    def __init__(
        self,
        a: ChannelEndpoint,
        b: ChannelEndpoint,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.wire = Wire(a, b)
        self._loop = loop or asyncio.get_running_loop()
        self._scheduled = False
        a.on_write = self._schedule
        b.on_write = self._schedule

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._scheduled = False
        self.wire.pump()
