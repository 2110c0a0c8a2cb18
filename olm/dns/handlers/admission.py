"""The admission handler: refuse while shutting down, and bound the queries that wait."""

from __future__ import annotations

import asyncio

from netstack.counters import Counters
from olm.dns.answer import REFUSED, Answer, error_answer
from olm.dns.handlers import Handler, Pending, Result
from olm.dns.request import Request

__all__ = ["Admission", "Gate"]


class Gate:
    """What outlives a chain: whether queries are accepted, and how many wait now.

    ``limit`` bounds the queries waiting for an answer (upstream exchanges, background cache
    refreshes) across all transports and chains; ``drain()`` waits until none is left.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("max_inflight must be at least 1")
        self.limit = limit
        self.inflight = 0
        self.accepting = True
        self._idle: list[asyncio.Future[None]] = []

    @property
    def full(self) -> bool:
        """Whether ``limit`` queries wait already."""
        return self.inflight >= self.limit

    def enter(self) -> None:
        """One more query waits."""
        self.inflight += 1

    def leave(self) -> None:
        """Count one waiting query out; wake :meth:`drain` when none is left."""
        self.inflight -= 1
        if self.inflight == 0:
            for waiter in self._idle:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle.clear()

    async def drain(self, timeout: float) -> bool:
        """Wait until no query waits; return False if ``timeout`` ran out first."""
        if self.inflight == 0:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        return True


class Admission(Handler):
    """REFUSED when stopping, or when an answer must wait and ``gate.limit`` already wait.

    A query the rest of the chain answers at once (a cache hit) is never refused for the
    bound: only waiting costs memory and upstream capacity. The bound is checked when the
    waiting starts, so it holds exactly however many queries arrive in one batch.
    Counters: ``refused_stopping``, ``refused_inflight``.
    """

    name = "admission"

    def __init__(self, counters: Counters, gate: Gate) -> None:
        super().__init__(counters)
        self.gate = gate

    def handle(self, request: Request) -> Result:
        """Refuse, or pass on and bound the answer if it must wait."""
        if not self.gate.accepting:
            self.counters.inc("refused_stopping")
            return error_answer(request, REFUSED)
        result = self.next.handle(request)
        if result is None or result.__class__ is Answer:
            return result
        return self._wait(result, request)  # type: ignore[arg-type]

    async def _wait(self, pending: Pending, request: Request) -> Answer | None:
        gate = self.gate
        if gate.full:
            pending.close()
            self.counters.inc("refused_inflight")
            return error_answer(request, REFUSED)
        gate.enter()
        try:
            return await pending
        finally:
            gate.leave()
