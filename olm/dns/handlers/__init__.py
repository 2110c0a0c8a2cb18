"""The engine's chain of handlers, in the style of CoreDNS plugins.

Each handler looks at a :class:`~olm.dns.request.Request` and either answers it or passes it to
the next handler. What :meth:`Handler.handle` returns says which, and how:

* an :class:`~olm.dns.answer.Answer`: answered now, with no Task or Future (a cache hit, a
  refusal, local data);
* None: drop the message without a reply (a response, a message too short to answer);
* a coroutine not yet started: the answer needs waiting for (an upstream exchange). The
  frontend runs it; a handler that wraps it (admission, the cache) returns its own coroutine.

The chain is built from the settings by :mod:`olm.dns.pipeline` and replaced as a whole on
SIGHUP: a query keeps the handlers it started with. One module per handler, each with its own
counter node named after it:

====================  =====================================================================
``sanitise``          the RFC checks: FORMERR, NOTIMP, BADVERS, dropped responses
``admission``         REFUSED while shutting down, or when ``max_inflight`` queries wait
``views``             the client's lines and view; a view's upstream group
``records``           custom records, wildcards, CNAME chains, deny
``hosts``             hosts files
``block``             blocklists: NXDOMAIN, REFUSED, null or given addresses, with EDE 15
``fake_ip``           pool addresses for matching names, PTR back
``split``             the upstream group of the longest matching suffix
``cache``             answers from the cache (serve-stale, prefetch, single flight)
``fastest``           of several addresses, the one that connects first goes first
``forward``           the upstream group's answer, or SERVFAIL
====================  =====================================================================

A view sets ``request.view``, split DNS ``request.group``: the forward handler asks that group.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any, ClassVar, TypeAlias

from netstack.counters import Counters
from olm.dns.answer import REFUSED, Answer, error_answer
from olm.dns.request import Request

__all__ = ["Handler", "Pending", "Refuse", "Result", "link"]

Pending: TypeAlias = Coroutine[Any, Any, Answer | None]
"""An answer still to come: a coroutine that has not been started."""

Result: TypeAlias = Answer | Pending | None
"""What a handler returns: an answer now, no answer at all, or an answer to wait for."""


class Handler:
    """One link of the chain: answers a request or passes it on to ``self.next``."""

    name: ClassVar[str] = "handler"
    next: Handler
    """The handler after this one; set by :func:`link`."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters.child(self.name)

    def handle(self, request: Request) -> Result:
        """Answer ``request`` or pass it on (the base class passes it on)."""
        return self.next.handle(request)

    def close(self) -> None:
        """Release what this handler holds once no query uses it any more."""


class Refuse(Handler):
    """The end of every chain: a query no handler answered is REFUSED (RFC 1035 4.1.1)."""

    name = "unanswered"

    def handle(self, request: Request) -> Result:
        """Refuse the query."""
        values = self.counters.values
        values["refused"] = values.get("refused", 0) + 1
        return error_answer(request, REFUSED)


def link(handlers: Sequence[Handler], counters: Counters) -> Handler:
    """Chain ``handlers`` in order, ending in :class:`Refuse`; return the first."""
    end = Refuse(counters)
    for handler, after in zip(handlers, [*handlers[1:], end], strict=True):
        handler.next = after
    return handlers[0] if handlers else end
