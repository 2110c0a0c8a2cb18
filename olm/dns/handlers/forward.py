"""The forward handler: the answer of an upstream group, or SERVFAIL when none can give one."""

from __future__ import annotations

import logging

from netstack.counters import Counters
from olm.dns.answer import (
    EDE_NO_REACHABLE_AUTHORITY,
    SERVFAIL,
    Answer,
    ede_option,
    error_answer,
)
from olm.dns.handlers import Handler, Result
from olm.dns.request import Request
from olm.dns.upstream import UpstreamFailure, UpstreamGroup

__all__ = ["Forward"]

log = logging.getLogger("olm.dns.forward")

_UNREACHABLE = ede_option(EDE_NO_REACHABLE_AUTHORITY)


class Forward(Handler):
    """Asks the request's upstream group (``request.group``, else the default one).

    When the group fails (every upstream failed, or the deadline passed) the client gets
    SERVFAIL, with Extended DNS Error 22, No Reachable Authority, if it sent EDNS (RFC 8914):
    never silence (RFC 8906). Counters: ``queries``, ``servfail``.
    """

    name = "forward"

    def __init__(self, counters: Counters, default: UpstreamGroup) -> None:
        super().__init__(counters)
        self.default = default

    def handle(self, request: Request) -> Result:
        """Return the coroutine that asks the upstreams."""
        return self._forward(request)

    async def _forward(self, request: Request) -> Answer:
        group = request.group or self.default
        values = self.counters.values
        values["queries"] = values.get("queries", 0) + 1
        try:
            return await group.resolve(request)
        except UpstreamFailure as failure:
            self.counters.inc("servfail")
            log.debug("answering SERVFAIL: %s", failure)
            return error_answer(request, SERVFAIL, _UNREACHABLE)
