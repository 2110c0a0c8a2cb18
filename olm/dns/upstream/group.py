"""Upstream groups: resolvers asked under one policy, with a per-try timeout and a deadline."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Sequence
from typing import Final, NoReturn

from netstack.counters import Counters
from olm.dns.answer import Answer
from olm.dns.request import Request
from olm.dns.upstream.base import Query, Transport, UpstreamFailure

__all__ = ["Policy", "UpstreamGroup"]

log = logging.getLogger("olm.dns.upstream")

#: RCODEs meaning "this upstream could not help": ask the next one (RFC 1035 section 4.1.1):
#: FORMERR, SERVFAIL, NOTIMP, REFUSED.
_FAILURE_RCODES: Final = frozenset({1, 2, 4, 5})
_RCODE_NAMES: Final = {1: "FORMERR", 2: "SERVFAIL", 4: "NOTIMP", 5: "REFUSED"}


class Policy(enum.StrEnum):
    """How the upstreams of one query are chosen."""

    SEQUENTIAL = "sequential"  # in configured order, next one on failure
    RACE = "race"  # all at once, first good answer wins
    ROUND_ROBIN = "round-robin"  # start one further along each query, then fail over in order


class UpstreamGroup:
    """Resolvers asked for one query following a :class:`Policy`.

    ``timeout`` bounds each try, ``deadline`` the whole resolution. A try fails on a timeout,
    a network error, or an answer whose RCODE is FORMERR, SERVFAIL, NOTIMP or REFUSED; the
    group then asks the next resolver the policy names. Counters (on the node given):
    ``queries``, ``answers``, ``timeout``, ``error``, ``rcode_failure``, ``deadline``,
    ``all_failed``; the transports count what they ignore.
    """

    def __init__(
        self,
        name: str,
        transports: Sequence[Transport],
        counters: Counters,
        *,
        policy: Policy | str = Policy.SEQUENTIAL,
        timeout: float = 2.0,
        deadline: float = 5.0,
    ) -> None:
        if not transports:
            raise ValueError("an upstream group needs at least one upstream")
        if timeout <= 0 or deadline <= 0:
            raise ValueError("timeout and deadline must be positive")
        self.name = name
        #: Appended to the cache keys of the queries this group answers (see Request.route).
        self.tag = b"@" + name.encode("utf-8", "replace")
        self.transports = list(transports)
        self.counters = counters
        self.policy = Policy(policy)
        self.timeout = timeout
        self.deadline = deadline
        self._next = 0

    @property
    def upstreams(self) -> list[str]:
        """The resolvers, as text, in configured order."""
        return [str(t.upstream) for t in self.transports]

    async def resolve(self, request: Request) -> Answer:
        """Return the first good answer to ``request``, or raise :class:`UpstreamFailure`."""
        query = Query(request)
        loop = asyncio.get_running_loop()
        query.deadline = loop.time() + self.deadline
        if self.policy is Policy.RACE:
            try:
                async with asyncio.timeout_at(query.deadline):
                    return await self._race(query)
            except TimeoutError:
                return self._past_deadline()
        # In turn: each try's timeout is cut to what is left before the deadline, so no
        # timer beyond the tries' own is needed.
        last: UpstreamFailure | None = None
        for transport in self._order():
            if loop.time() >= query.deadline:
                return self._past_deadline()
            try:
                return await self._try(transport, query)
            except UpstreamFailure as failure:
                last = failure
        if loop.time() >= query.deadline:
            return self._past_deadline()
        self.counters.inc("all_failed")
        raise UpstreamFailure("all_failed", str(last) if last else "")

    def _past_deadline(self) -> NoReturn:
        self.counters.inc("deadline")
        raise UpstreamFailure("deadline", f"no answer within {self.deadline} s")

    def _order(self) -> list[Transport]:
        ups = self.transports
        if self.policy is Policy.ROUND_ROBIN:
            start = self._next
            self._next = (start + 1) % len(ups)
            return ups[start:] + ups[:start]
        return ups

    async def _race(self, query: Query) -> Answer:
        tasks = {asyncio.ensure_future(self._try(t, query)) for t in self.transports}
        last: BaseException | None = None
        try:
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if exc is None:
                        return task.result()
                    last = exc
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
        self.counters.inc("all_failed")
        raise UpstreamFailure("all_failed", str(last) if last else "")

    async def _try(self, transport: Transport, query: Query) -> Answer:
        """Ask one resolver once; raise UpstreamFailure when it cannot help."""
        counters = self.counters
        counters.inc("queries")
        upstream = transport.upstream
        try:
            answer = await transport.exchange(query, self.timeout)
        except TimeoutError:
            counters.inc("timeout")
            log.info("upstream %s: no answer within %s s", upstream, self.timeout)
            raise UpstreamFailure("timeout", str(upstream)) from None
        except OSError as exc:
            counters.inc("error")
            log.info("upstream %s: %s", upstream, exc)
            raise UpstreamFailure("error", f"{upstream}: {exc}") from None
        rcode = answer.rcode
        if rcode in _FAILURE_RCODES:
            counters.inc("rcode_failure")
            log.info("upstream %s answered %s", upstream, _RCODE_NAMES[rcode])
            raise UpstreamFailure("rcode", f"{upstream}: {_RCODE_NAMES[rcode]}")
        counters.inc("answers")
        return answer

    def close(self) -> None:
        """Close every transport's sockets."""
        for transport in self.transports:
            transport.close()
