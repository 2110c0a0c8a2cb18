"""The sanitise handler: the RFC checks every query passes before anything else sees it."""

from __future__ import annotations

from olm.dns.handlers import Handler, Result
from olm.dns.message import Rejection, judge
from olm.dns.request import Request

__all__ = ["Sanitise"]


class Sanitise(Handler):
    """Passes ordinary queries on untouched; judges the others (:func:`olm.dns.message.judge`).

    Counters: ``dropped.unreadable``, ``dropped.response`` (no reply), ``formerr``,
    ``notimp``, ``badvers`` (answered with that RCODE), ``rebuilt`` (an unusual but valid query
    put into ordinary shape), ``signed`` (a TSIG query, passed on whole).
    """

    name = "sanitise"

    def handle(self, request: Request) -> Result:
        """Pass an ordinary query on; judge any other."""
        if request.ok:
            return self.next.handle(request)
        verdict = judge(request)
        if isinstance(verdict, Rejection):
            if verdict.answer is None:
                self.counters.inc("dropped." + verdict.reason)
            else:
                self.counters.inc(verdict.reason)
            return verdict.answer
        self.counters.inc("signed" if verdict.tsig else "rebuilt")
        return self.next.handle(verdict)
