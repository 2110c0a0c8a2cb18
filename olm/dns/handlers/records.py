"""The records handler: custom local records, answered authoritatively (AA=1).

Answers come from :class:`olm.dns.local.LocalData` (records files, ``[[records]]`` in the
settings). Each answer is built once per question and line set and kept, so a local answer
costs what a cache hit costs: a dict lookup and a render. A CNAME whose target is not local is
followed through the rest of the chain, and the reply holds the whole chain (RFC 1034 3.6.2).
"""

from __future__ import annotations

from typing import Final

from netstack.clock import Clock
from netstack.counters import Counters
from olm.dns.answer import NXDOMAIN, REFUSED, SERVFAIL, Answer, error_answer
from olm.dns.handlers import Handler, Result
from olm.dns.local import LocalData, Lookup, Outcome, local_answer
from olm.dns.request import Request
from olm.dns.wire import CD, HEADER, RD, UPSTREAM_PAYLOAD, WireError, expand_records, opt_record

__all__ = ["Records"]

_MEMO_LIMIT: Final = 20_000
_NOT_OURS: Final = object()  # remembered: local data has nothing for this question
_CLASS_IN: Final = b"\x00\x01"


class Records(Handler):
    """Answers the names of local data; passes on the rest.

    Counters: ``answer``, ``nodata``, ``nxdomain``, ``denied`` (REFUSED), ``loop`` (SERVFAIL
    for a CNAME loop), ``chased`` (CNAMEs followed to the rest of the chain).
    """

    name = "records"

    def __init__(self, counters: Counters, data: LocalData, clock: Clock) -> None:
        super().__init__(counters)
        self.data = data
        self.clock = clock
        self._memo: dict[object, object] = {}

    def handle(self, request: Request) -> Result:
        """Answer from local data, or pass the request on."""
        view = request.view
        lines = view.lines if view is not None else None
        # Without lines the key alone will do: no tuple to build on the way of every query.
        memo_key: object = request.key if lines is None else (request.key, lines)
        found = self._memo.get(memo_key)
        if found is None:
            found = self._lookup(request, lines)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            if not isinstance(found, Lookup):  # a CNAME chased elsewhere is never kept
                self._memo[memo_key] = found
        if found is _NOT_OURS:
            return self.next.handle(request)
        if isinstance(found, Lookup):
            return self._chase(request, found)
        return found  # type: ignore[return-value]

    def _lookup(self, request: Request, lines: frozenset[str] | None) -> object:
        """Return the Answer for the request, _NOT_OURS, or a Lookup to follow elsewhere."""
        wire = request.wire
        if wire[request.qend - 2 : request.qend] != _CLASS_IN:
            return _NOT_OURS
        name = request.key[: request.nend - 12]
        lookup = self.data.lookup(name, request.qtype, lines)
        outcome = lookup.outcome
        counters = self.counters
        if outcome is Outcome.NOT_OURS:
            return _NOT_OURS
        counters.inc(outcome.value)
        question = wire[12 : request.qend]
        if outcome is Outcome.DENIED:
            return error_answer(request, REFUSED)
        if outcome is Outcome.LOOP:
            return error_answer(request, SERVFAIL)
        if outcome is Outcome.CNAME_OUT:
            return lookup
        rcode = NXDOMAIN if outcome is Outcome.NXDOMAIN else 0
        authority = [lookup.soa] if lookup.soa else []
        return local_answer(question, name, lookup.records, rcode=rcode, authority=authority)

    async def _chase(self, request: Request, lookup: Lookup) -> Answer | None:
        """Ask the rest of the chain for the CNAME target; answer with the whole chain."""
        self.counters.inc("chased")
        target = lookup.target
        question = request.wire[request.nend : request.qend]  # type and class
        wire = HEADER.pack(request.id, request.flags & (RD | CD), 1, 0, 0, 1 if request.edns else 0)
        wire += target + question
        if request.edns:
            wire += opt_record(UPSTREAM_PAYLOAD, do=request.do)
        sub = Request(wire, request.client, request.port, request.local, request.transport)
        sub.view = request.view
        result = self.next.handle(sub)
        answer = result if result is None or isinstance(result, Answer) else await result
        name = request.key[: request.nend - 12]
        own = request.wire[12 : request.qend]
        if answer is None or answer.raw:
            return error_answer(request, SERVFAIL)
        try:
            tail = answer.wire[: answer.qend] + answer.records_at(self.clock.now())
            sections = expand_records(tail, answer.qend)
        except WireError:
            return error_answer(request, SERVFAIL)
        answers = [data for section, data in sections if section == 0]
        authority = [data for section, data in sections if section == 1]
        combined = local_answer(
            own,
            name,
            lookup.records,
            rcode=answer.rcode,
            authority=authority,
            extra=b"".join(answers),
            extra_count=len(answers),
        )
        combined.bits |= answer.bits & 0x0020  # AD, as the rest of the chain said
        combined.ede = answer.ede
        return combined
