"""The engine: every frontend's requests go through the current chain and come out as bytes.

:meth:`Engine.handle` is the whole path of a query between a frontend and the handlers: it asks
the chain, and an :class:`~olm.dns.answer.Answer` that is there at once is rendered for the
client at once, so a cache hit returns its reply bytes inside the receive callback, with no
Task or Future. Only an answer that must be waited for comes back as a coroutine, which the
frontend starts with :meth:`Engine.spawn`.

The chain is an attribute: assigning a new one (SIGHUP) takes effect for the next query, while
queries already on their way finish on the handlers they started with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Final

from netstack.clock import Clock
from netstack.counters import Counters
from olm.dns.answer import SERVFAIL, Answer, error_answer, render
from olm.dns.handlers import Handler, Pending
from olm.dns.handlers.admission import Gate
from olm.dns.request import Request
from olm.dns.wire import TC

__all__ = ["Engine", "Reply"]

log = logging.getLogger("olm.dns")

Reply = bytes | Coroutine[Any, Any, bytes | None] | None
"""What :meth:`Engine.handle` returns: reply bytes now, no reply, or reply bytes to wait for."""

_RCODE_NAMES: Final = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    16: "BADVERS",
}


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

    def handle(self, request: Request) -> Reply:
        """Answer one request: bytes to send now, None for no reply, or a coroutine."""
        result = self.chain.handle(request)
        if result is None:
            return None
        if result.__class__ is Answer:
            return self.render(result, request)
        return self._finish(result, request)  # type: ignore[arg-type]

    def render(self, answer: Answer, request: Request) -> bytes:
        """Return the reply bytes of ``answer`` for ``request``, counted by RCODE."""
        data = render(answer, request, self.clock.now())
        rcode = answer.rcode
        name = _RCODE_NAMES.get(rcode) or str(rcode)
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
