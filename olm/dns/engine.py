"""The engine: every frontend's requests go through the current chain and come out as bytes.

:meth:`Engine.handle` is the whole path of a query between a frontend and the handlers: it asks
the chain, and an :class:`~olm.dns.answer.Answer` that is there at once is rendered for the
client at once, so a cache hit returns its reply bytes inside the receive callback, with no
Task or Future. Only an answer that must be waited for comes back as a coroutine, which the
frontend starts with :meth:`Engine.spawn`.

The chain is an attribute: assigning a new one (SIGHUP) takes effect for the next query, while
queries already on their way finish on the handlers they started with.

Observers (metrics, the query log, ``olm trace``: :mod:`olm.dns.observe`) are told of every
query while attached. With none attached the engine's ``handle`` is the plain path; attaching
one swaps in the observed path, so watching costs nothing while nobody watches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from netstack.clock import Clock
from netstack.counters import Counters
from olm.dns.answer import SERVFAIL, Answer, error_answer, render
from olm.dns.handlers import Handler, Pending
from olm.dns.handlers.admission import Gate
from olm.dns.observe import Observer, QueryTrace, trace_chain, untrace_chain
from olm.dns.request import Request
from olm.dns.wire import RCODE_NAMES, TC

__all__ = ["Engine", "Reply"]

log = logging.getLogger("olm.dns")

Reply = bytes | Coroutine[Any, Any, bytes | None] | None
"""What :meth:`Engine.handle` returns: reply bytes now, no reply, or reply bytes to wait for."""


class Engine:
    """Runs requests through ``chain`` and renders the answers.

    Counters (on the node given, e.g. ``dns``): ``queries.<transport>`` (counted by the
    frontends), ``rcode.<NAME>`` for every reply sent, ``truncated`` (replies cut to the
    client's limit), ``internal_error`` (a handler failed: the client got SERVFAIL).
    """

    def __init__(self, chain: Handler, clock: Clock, counters: Counters, gate: Gate) -> None:
        self.chain = chain
        self.clock = clock
        self.counters = counters
        self.gate = gate
        self._rcodes = counters.child("rcode").values
        self._tasks: set[asyncio.Task[None]] = set()
        self.observers: list[Observer] = []
        self._traced: Handler | None = None  # the chain whose handlers record into traces

    def add_observer(self, observer: Observer) -> None:
        """Tell ``observer`` about every query from now on."""
        self.observers.append(observer)
        # An instance attribute shadows the plain method: the frontends' lookup finds it.
        self.handle = self._handle_observed  # type: ignore[method-assign]

    def remove_observer(self, observer: Observer) -> None:
        """Stop telling ``observer``; with none left, go back to the plain path."""
        if observer in self.observers:
            self.observers.remove(observer)
        if not self.observers:
            vars(self).pop("handle", None)
            if self._traced is not None:
                untrace_chain(self._traced)
                self._traced = None

    def handle(self, request: Request) -> Reply:
        """Answer one request: bytes to send now, None for no reply, or a coroutine."""
        result = self.chain.handle(request)
        if result is None:
            return None
        if result.__class__ is Answer:
            return self.render(result, request)
        return self._finish(result, request)  # type: ignore[arg-type]

    def _handle_observed(self, request: Request) -> Reply:
        """:meth:`handle`, telling the observers of the query and of its reply."""
        start = time.perf_counter()
        trace: QueryTrace | None = None
        for observer in self.observers:
            wanted = observer.begin(request)
            if wanted is False:
                continue
            if isinstance(wanted, QueryTrace):
                trace = wanted
            elif trace is None:
                trace = QueryTrace(start, detail=False)
        if trace is not None:
            request.trace = trace
            chain = self.chain
            if self._traced is not chain:  # a new chain since (SIGHUP): record it too
                trace_chain(chain)
                self._traced = chain
        reply = Engine.handle(self, request)
        if reply is None or reply.__class__ is bytes:
            self._finished(request, reply, start)
            return reply
        return self._observe_later(reply, request, start)  # type: ignore[arg-type]

    async def _observe_later(
        self, pending: Coroutine[Any, Any, bytes | None], request: Request, start: float
    ) -> bytes | None:
        reply = None
        try:
            reply = await pending
        finally:
            self._finished(request, reply, start)
        return reply

    def _finished(self, request: Request, reply: bytes | None, start: float) -> None:
        elapsed = time.perf_counter() - start
        trace = request.trace
        for observer in self.observers:
            try:
                observer.finished(request, reply, elapsed, trace)
            except Exception:  # an observer's bug must not cost the client its answer
                self.counters.inc("observer_error")
                log.exception("an observer failed")

    def render(self, answer: Answer, request: Request) -> bytes:
        """Return the reply bytes of ``answer`` for ``request``, counted by RCODE."""
        data = render(answer, request, self.clock.now())
        rcode = answer.rcode
        name = RCODE_NAMES.get(rcode) or str(rcode)
        rcodes = self._rcodes
        rcodes[name] = rcodes.get(name, 0) + 1
        if data[2] & (TC >> 8) and not answer.truncated:
            self.counters.inc("truncated")
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "answered %s type %d from %s: %s, %d bytes",
                request.name,
                request.qtype,
                request.transport,
                name,
                len(data),
            )
        return data

    async def _finish(self, pending: Pending, request: Request) -> bytes | None:
        try:
            answer = await pending
        except Exception:
            # A bug must not leave the client without an answer (RFC 8906: always answer).
            self.counters.inc("internal_error")
            log.exception("answering a query failed unexpectedly")
            answer = error_answer(request, SERVFAIL)
        if answer is None:
            return None
        return self.render(answer, request)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a frontend's coroutine (a reply to wait for) as a Task the engine keeps."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counters.inc("internal_error")
            log.error("a DNS reply task failed", exc_info=task.exception())

    @property
    def waiting(self) -> int:
        """Replies being waited for now."""
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel every reply still being waited for, and wait until they are gone."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
