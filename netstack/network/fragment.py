"""Fragment reassembly shared by IPv4 (RFC 791 section 3.2, RFC 815) and IPv6 (RFC 8200 4.5).

Bounded three ways: bytes held by incomplete datagrams, number of datagrams in progress, and
time (a timer per datagram through the injected clock). Overlapping fragments discard the whole
datagram and any of its fragments still to come (RFC 5722 for IPv6; applied to IPv4 too, as
RFC 8900 and modern stacks do); an exact duplicate of a fragment already held is ignored.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from netstack.clock import Clock, TimerHandle
from netstack.counters import Counters

# Bookkeeping charged per fragment on top of its payload, so that a flood of tiny fragments
# cannot hide under the byte bound.
FRAGMENT_OVERHEAD = 64


class _Datagram:
    __slots__ = ("first", "held", "pieces", "received", "starts", "timer", "total")

    def __init__(self) -> None:
        self.starts: list[int] = []  # sorted fragment offsets
        self.pieces: dict[int, bytes] = {}  # offset -> data
        self.received = 0  # payload bytes held
        self.total: int | None = None  # known once the last fragment (MF=0) arrived
        self.first: Any = None  # caller's info from the fragment at offset 0
        self.held = 0  # bytes charged to the memory bound
        self.timer: TimerHandle | None = None


class Reassembler:
    """Collects fragments per key and returns the payload once a datagram is complete."""

    def __init__(
        self,
        clock: Clock,
        counters: Counters,
        *,
        timeout: float,
        memory_limit: int,
        max_datagrams: int,
        max_payload: int = 65535,
        on_timeout: Callable[[Hashable, Any], None] | None = None,
    ) -> None:
        self.clock = clock
        self.counters = counters
        self.timeout = timeout
        self.memory_limit = memory_limit
        self.max_datagrams = max_datagrams
        self.max_payload = max_payload
        self.on_timeout = on_timeout
        self._datagrams: OrderedDict[Hashable, _Datagram] = OrderedDict()
        # Keys whose datagram was discarded for overlap: later fragments are dropped too.
        self._poisoned: OrderedDict[Hashable, TimerHandle] = OrderedDict()
        self.memory = 0

    @property
    def in_progress(self) -> int:
        """Number of incomplete datagrams held."""
        return len(self._datagrams)

    def add(
        self, key: Hashable, offset: int, more: bool, data: bytes, first: Any = None
    ) -> tuple[bytes, Any] | None:
        """Take one fragment; return ``(payload, first)`` when its datagram is complete.

        ``offset`` is in bytes; ``first`` is whatever the caller wants back from the fragment
        at offset 0 (it is ignored for other offsets).
        """
        c = self.counters
        c.inc("fragments")
        end = offset + len(data)
        if key in self._poisoned:
            c.inc("dropped_poisoned")
            return None
        if more and len(data) % 8:
            # Every fragment but the last carries a multiple of 8 octets (RFC 791, RFC 8200 4.5).
            c.inc("bad_fragment_length")
            return None
        if end > self.max_payload:
            c.inc("too_big")
            self._discard(key)
            return None
        if not data and more:
            c.inc("empty_fragment")
            return None

        dgram = self._datagrams.get(key)
        if dgram is None:
            if len(self._datagrams) >= self.max_datagrams:
                self._evict_oldest()
            dgram = _Datagram()
            self._datagrams[key] = dgram
            dgram.timer = self.clock.call_later(self.timeout, self._expire, key, dgram)

        # Where the end of the datagram is, if this is the last fragment, must agree with
        # everything seen so far.
        if not more:
            if (dgram.total is not None and dgram.total != end) or (
                dgram.starts and self._max_end(dgram) > end
            ):
                c.inc("inconsistent_length")
                self._poison(key)
                return None
            dgram.total = end
        elif dgram.total is not None and end > dgram.total:
            c.inc("inconsistent_length")
            self._poison(key)
            return None

        starts = dgram.starts
        i = bisect.bisect_left(starts, offset)
        if i < len(starts) and starts[i] == offset:
            existing = dgram.pieces[offset]
            if existing == data:
                c.inc("duplicates")
                return None
            c.inc("overlaps")
            self._poison(key)
            return None
        if i > 0:
            prev = starts[i - 1]
            if prev + len(dgram.pieces[prev]) > offset:
                c.inc("overlaps")
                self._poison(key)
                return None
        if i < len(starts) and starts[i] < end:
            c.inc("overlaps")
            self._poison(key)
            return None

        charge = len(data) + FRAGMENT_OVERHEAD
        if charge > self.memory_limit:
            c.inc("too_big")
            self._discard(key)
            return None
        while self.memory + charge > self.memory_limit:
            self._evict_oldest(keep=key)
            if self.memory + charge > self.memory_limit and len(self._datagrams) <= 1:
                c.inc("memory_full")
                self._discard(key)
                return None

        starts.insert(i, offset)
        dgram.pieces[offset] = data
        dgram.received += len(data)
        dgram.held += charge
        self.memory += charge
        if offset == 0:
            dgram.first = first

        if dgram.total is not None and dgram.received == dgram.total:
            payload = b"".join(dgram.pieces[s] for s in starts)
            info = dgram.first
            self._discard(key)
            c.inc("reassembled")
            return payload, info
        return None

    @staticmethod
    def _max_end(dgram: _Datagram) -> int:
        last = dgram.starts[-1]
        return last + len(dgram.pieces[last])

    def _discard(self, key: Hashable) -> None:
        dgram = self._datagrams.pop(key, None)
        if dgram is None:
            return
        self.memory -= dgram.held
        if dgram.timer is not None:
            dgram.timer.cancel()

    def _poison(self, key: Hashable) -> None:
        # RFC 5722 section 4: discard the datagram and every fragment of it still to come.
        self._discard(key)
        if key in self._poisoned:
            return
        if len(self._poisoned) >= self.max_datagrams:
            _, timer = self._poisoned.popitem(last=False)
            timer.cancel()
        self._poisoned[key] = self.clock.call_later(self.timeout, self._unpoison, key)

    def _unpoison(self, key: Hashable) -> None:
        self._poisoned.pop(key, None)

    def _evict_oldest(self, keep: Hashable | None = None) -> None:
        for key in self._datagrams:
            if key != keep:
                self._discard(key)
                self.counters.inc("evicted")
                return

    def _expire(self, key: Hashable, dgram: _Datagram) -> None:
        if self._datagrams.get(key) is not dgram:
            return
        first = dgram.first
        dgram.timer = None
        self._discard(key)
        self.counters.inc("timeouts")
        if first is not None and self.on_timeout is not None:
            self.on_timeout(key, first)

    def clear(self) -> None:
        """Drop everything held and cancel every timer."""
        for key in list(self._datagrams):
            self._discard(key)
        for timer in self._poisoned.values():
            timer.cancel()
        self._poisoned.clear()
