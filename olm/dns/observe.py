"""Watching queries go by: what metrics, the query log and ``olm trace`` see of each query.

An :class:`Observer` is told when a query starts and when its reply is ready. Observers are
attached to the :class:`~olm.dns.engine.Engine`; while none is, the engine answers on its plain
path and observing costs nothing at all (the engine swaps its ``handle`` method, so there is
not even a check).

An observer that wants to know *how* a query was answered (which handler answered, each
handler's verdict, each upstream try) asks for a :class:`QueryTrace`: the query then carries
one (``request.trace``) through a chain whose handlers record themselves, and the upstream
group and transports add their tries. Handlers report their verdict through their own counter
node: what a handler counted while it held the query (``hit``, ``miss``, ``blocked``...) is
its verdict, so the trace says nothing the counters do not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from netstack.counters import Counters

if TYPE_CHECKING:
    from olm.dns.handlers import Handler, Result
    from olm.dns.request import Request

__all__ = ["Event", "Observer", "QueryTrace", "trace_chain", "untrace_chain"]

Event = tuple[float, str, str]
"""One step of a trace: (seconds since the trace began, layer, what happened)."""

_clock = time.perf_counter


class QueryTrace:
    """What one query went through, in order, with the time of each step.

    ``answered_by`` is the deepest handler the query reached (the one whose answer it got),
    ``upstream`` the resolver that answered (None: no upstream did). ``sink``, when set, gets
    each event as it happens (``olm trace`` streams them live). A trace without ``detail``
    keeps only ``answered_by`` and ``upstream`` (what the query log and metrics need) and
    records no events, so it costs almost nothing.
    """

    __slots__ = ("answered_by", "detail", "events", "sink", "start", "upstream")

    def __init__(self, start: float | None = None, *, detail: bool = True) -> None:
        self.start = _clock() if start is None else start
        self.detail = detail
        self.events: list[Event] = []
        self.answered_by = ""
        self.upstream: str | None = None
        self.sink: Callable[[Event], None] | None = None

    def event(self, layer: str, text: str) -> None:
        """Record that ``layer`` did ``text`` now (nothing without ``detail``)."""
        if not self.detail:
            return
        step = (_clock() - self.start, layer, text)
        self.events.append(step)
        sink = self.sink
        if sink is not None:
            sink(step)

    def micros(self) -> float:
        """Microseconds since the trace began."""
        return (_clock() - self.start) * 1e6


class Observer(Protocol):
    """Something told about every query the engine answers."""

    def begin(self, request: Request) -> QueryTrace | bool:
        """Take a query that starts: a trace to fill, True or False.

        True asks for a trace without detail (which handler and upstream answered), False
        for none.
        """

    def finished(
        self, request: Request, reply: bytes | None, elapsed: float, trace: QueryTrace | None
    ) -> None:
        """Take its reply (None: no reply), ready ``elapsed`` seconds after it began."""


def _delta(before: dict[str, int], after: dict[str, int]) -> str:
    """Return the counters that moved, as ``name+N`` words."""
    moved = [
        f"{name}+{value - before.get(name, 0)}"
        for name, value in after.items()
        if value != before.get(name, 0)
    ]
    return " ".join(moved)


def _verdict(result: Any) -> str:
    from olm.dns.answer import Answer

    if result is None:
        return "no reply"
    if isinstance(result, Answer):
        return f"answer rcode {result.rcode}"
    return "waits"


def _traced(handler: Handler, plain: Callable[[Request], Result]) -> Callable[[Request], Result]:
    """Return ``handler``'s handle, recording into the query's trace when it has one."""
    name = handler.name
    counters: Counters = handler.counters

    def handle(request: Request) -> Result:
        trace: QueryTrace | None = request.trace
        if trace is None:
            return plain(request)
        trace.answered_by = name
        if not trace.detail:
            return plain(request)
        before = counters.snapshot()
        trace.event(name, "enter")
        result = plain(request)
        moved = _delta(before, counters.snapshot())
        verdict = _verdict(result)
        trace.event(name, f"{verdict} {moved}".rstrip())
        if verdict != "waits":
            return result
        return _await(result, trace, name, counters)  # type: ignore[arg-type]

    return handle


async def _await(
    pending: Coroutine[Any, Any, Any], trace: QueryTrace, name: str, counters: Counters
) -> Any:
    before = counters.snapshot()
    try:
        answer = await pending
    except BaseException as exc:
        trace.event(name, f"failed: {exc.__class__.__name__}")
        raise
    trace.event(name, f"{_verdict(answer)} {_delta(before, counters.snapshot())}".rstrip())
    return answer


def trace_chain(first: Handler) -> None:
    """Make every handler of the chain from ``first`` record itself in traced queries.

    Untraced queries (``request.trace`` None) pass as before, at the cost of one check per
    handler; :func:`untrace_chain` takes the recording away again.
    """
    handler: Handler | None = first
    while handler is not None:
        if "handle" not in vars(handler):
            plain = type(handler).handle.__get__(handler)
            handler.handle = _traced(handler, plain)  # type: ignore[method-assign,assignment]
        handler = getattr(handler, "next", None)


def untrace_chain(first: Handler) -> None:
    """Undo :func:`trace_chain`."""
    handler: Handler | None = first
    while handler is not None:
        if "handle" in vars(handler):
            del handler.handle
        handler = getattr(handler, "next", None)
