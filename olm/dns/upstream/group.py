"""Upstream groups: resolvers asked under one policy, with a per-try timeout and a deadline.

Every try feeds the upstream's :class:`~olm.dns.upstream.health.Health` record in its group:
its answer latency (the loop's clock around ``exchange``) or a failure. After ``down_after``
failures in a row an upstream is down, and every policy skips it while another upstream of the
group is up; when all are down, all are tried anyway (a group never refuses to try). A down
upstream is probed in the background, by one task per group that runs only while something is
down: every ``probe_interval`` seconds, doubling up to ``probe_max`` while it stays down, it is
asked ``. IN NS``; one good answer brings it back up.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import weakref
from collections.abc import Sequence
from typing import Final, NoReturn

from netstack.counters import Counters
from olm.dns.answer import Answer
from olm.dns.request import Request
from olm.dns.upstream.base import Query, Transport, UpstreamFailure
from olm.dns.upstream.health import DOWN_AFTER, Health, HealthSnapshot
from olm.dns.wire import HEADER, RCODE_NAMES, RD

__all__ = ["Policy", "UpstreamGroup"]

log = logging.getLogger("olm.dns.upstream")

#: RCODEs meaning "this upstream could not help": ask the next one (RFC 1035 section 4.1.1):
#: FORMERR, SERVFAIL, NOTIMP, REFUSED.
_FAILURE_RCODES: Final = frozenset({1, 2, 4, 5})

#: The probe of a down upstream: ``. IN NS`` with RD, always cached by a working resolver (the
#: query dnscrypt-proxy measures its resolvers with).
_PROBE: Final = HEADER.pack(0, RD, 1, 0, 0, 0) + b"\x00" + b"\x00\x02" + b"\x00\x01"


class Policy(enum.StrEnum):
    """How the upstreams of one query are chosen (upstreams marked down are skipped)."""

    SEQUENTIAL = "sequential"  # in configured order, next one on failure
    RACE = "race"  # all at once, first good answer wins
    ROUND_ROBIN = "round-robin"  # start one further along each query, then fail over in order
    # The lowest average latency first, then the others by latency; one query in ``explore``
    # goes first to another upstream, in turn, to keep its average current. Upstreams ranked
    # by measured latency as in AdGuard's dnsproxy (load balancing by RTT), dnscrypt-proxy
    # and SmartDNS.
    FASTEST = "fastest"


class UpstreamGroup:
    """Resolvers asked for one query following a :class:`Policy`.

    ``timeout`` bounds each try, ``deadline`` the whole resolution. A try fails on a timeout,
    a network error, or an answer whose RCODE is FORMERR, SERVFAIL, NOTIMP or REFUSED; the
    group then asks the next resolver the policy names.

    ``health`` holds one :class:`Health` per transport (same order). A failure counts towards
    marking an upstream down, except a timeout cut short by the deadline and a try cancelled
    because another won a race: neither says anything about the upstream. ``down_after``
    failures in a row mark it down; it is then probed every ``probe_interval`` seconds,
    doubling up to ``probe_max``, until a good answer marks it up. The ``fastest`` policy sends
    one query in ``explore`` (a counter, not chance; 0: never) first to an upstream other than
    the fastest, taken in turn; upstreams never measured count as fastest.

    Counters (on the node given): ``queries``, ``answers``, ``timeout``, ``error``,
    ``rcode_failure``, ``deadline``, ``all_failed``, ``marked_down``, ``marked_up``,
    ``probes``, and the last three per upstream as ``health.<group>.<upstream>.<event>``;
    the transports count what they ignore.
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
        down_after: int = DOWN_AFTER,
        probe_interval: float = 5.0,
        probe_max: float = 60.0,
        explore: int = 20,
    ) -> None:
        if not transports:
            raise ValueError("an upstream group needs at least one upstream")
        if timeout <= 0 or deadline <= 0:
            raise ValueError("timeout and deadline must be positive")
        if probe_interval <= 0 or probe_max < probe_interval:
            raise ValueError("probe_interval must be positive and at most probe_max")
        if explore < 0:
            raise ValueError("explore must not be negative")
        self.name = name
        #: Appended to the cache keys of the queries this group answers (see Request.route).
        self.tag = b"@" + name.encode("utf-8", "replace")
        self.transports = list(transports)
        self.counters = counters
        self.policy = Policy(policy)
        self.timeout = timeout
        self.deadline = deadline
        self.probe_interval = probe_interval
        self.probe_max = probe_max
        self.explore = explore
        #: One record per transport, in the same order.
        self.health = [Health(str(t.upstream), down_after=down_after) for t in self.transports]
        # Per-upstream events: one flat node, keys "<group>.<upstream>.<event>", so that
        # names holding dots (addresses, split suffixes) still read back with Counters.get.
        self._events = counters.child("health")
        self._next = 0
        #: The indexes of the upstreams not down (all of them when all are down), kept as
        #: health changes so that choosing costs no scan per query.
        self._all = list(range(len(self.transports)))
        self._usable = self._all
        self._queries = 0
        self._explored = 0
        self._prober: asyncio.Task[None] | None = None

    @property
    def upstreams(self) -> list[str]:
        """The resolvers, as text, in configured order."""
        return [str(t.upstream) for t in self.transports]

    @property
    def probing(self) -> bool:
        """Whether the background task probing down upstreams is running."""
        return self._prober is not None and not self._prober.done()

    def snapshot(self) -> list[HealthSnapshot]:
        """Return each upstream's health (see :meth:`Health.snapshot`), in configured order."""
        return [h.snapshot() for h in self.health]

    async def resolve(self, request: Request) -> Answer:
        """Return the first good answer to ``request``, or raise :class:`UpstreamFailure`."""
        query = Query(request)
        loop = asyncio.get_running_loop()
        query.deadline = loop.time() + self.deadline
        order = self._order()
        if self.policy is Policy.RACE:
            try:
                async with asyncio.timeout_at(query.deadline):
                    return await self._race(order, query)
            except TimeoutError:
                return self._past_deadline()
        # In turn: each try's timeout is cut to what is left before the deadline, so no
        # timer beyond the tries' own is needed.
        last: UpstreamFailure | None = None
        for index in order:
            if loop.time() >= query.deadline:
                return self._past_deadline()
            try:
                return await self._try(index, query)
            except UpstreamFailure as failure:
                last = failure
        if loop.time() >= query.deadline:
            return self._past_deadline()
        self.counters.inc("all_failed")
        raise UpstreamFailure("all_failed", str(last) if last else "")

    def _past_deadline(self) -> NoReturn:
        self.counters.inc("deadline")
        raise UpstreamFailure("deadline", f"no answer within {self.deadline} s")

    def _order(self) -> list[int]:
        """Return the indexes of the transports to try, in the order the policy gives."""
        usable = self._usable
        policy = self.policy
        if policy is Policy.ROUND_ROBIN:
            start = self._next % len(usable)
            self._next += 1
            return usable[start:] + usable[:start]
        if policy is Policy.FASTEST:
            return self._fastest(usable)
        return usable

    def _fastest(self, usable: list[int]) -> list[int]:
        health = self.health

        def rank(i: int) -> tuple[bool, float, int]:
            latency = health[i].latency
            return (latency is not None, latency or 0.0, i)  # never measured: first

        order = sorted(usable, key=rank)
        self._queries += 1
        if self.explore and len(order) > 1 and self._queries % self.explore == 0:
            others = [i for i in usable if i != order[0]]
            pick = others[self._explored % len(others)]
            self._explored += 1
            order.remove(pick)
            order.insert(0, pick)
        return order

    async def _race(self, order: list[int], query: Query) -> Answer:
        tasks = {asyncio.ensure_future(self._try(i, query)) for i in order}
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

    async def _try(self, index: int, query: Query) -> Answer:
        """Ask one resolver once; raise UpstreamFailure when it cannot help."""
        counters = self.counters
        counters.inc("queries")
        transport = self.transports[index]
        upstream = transport.upstream
        loop = asyncio.get_running_loop()
        start = loop.time()
        whole = query.deadline - start >= self.timeout  # not cut short by the deadline
        trace = query.trace
        detail = trace if trace is not None and trace.detail else None  # events wanted
        if detail is not None:
            detail.event("upstream", f"try {upstream} (group {self.name}, policy {self.policy})")
        try:
            answer = await transport.exchange(query, self.timeout)
        except TimeoutError:
            counters.inc("timeout")
            log.debug("upstream %s: no answer within %s s", upstream, self.timeout)
            if detail is not None:
                detail.event("upstream", f"{upstream}: no answer within {self.timeout} s")
            if whole:
                self._failed(index, "timeout")
            raise UpstreamFailure("timeout", str(upstream)) from None
        except OSError as exc:
            counters.inc("error")
            log.debug("upstream %s: %s", upstream, exc)
            if detail is not None:
                detail.event("upstream", f"{upstream}: {exc.__class__.__name__} {exc}")
            self._failed(index, "error")
            raise UpstreamFailure("error", f"{upstream}: {exc}") from None
        rcode = answer.rcode
        latency = loop.time() - start
        if detail is not None:
            detail.event(
                "upstream",
                f"{upstream} answered {RCODE_NAMES.get(rcode, rcode)} in {latency * 1e3:.3f} ms",
            )
        if rcode in _FAILURE_RCODES:
            counters.inc("rcode_failure")
            log.debug("upstream %s answered %s", upstream, RCODE_NAMES[rcode])
            self._failed(index, "rcode")
            raise UpstreamFailure("rcode", f"{upstream}: {RCODE_NAMES[rcode]}")
        counters.inc("answers")
        self._answered(index, latency)
        if trace is not None:
            trace.upstream = str(upstream)
        return answer

    # -- health --------------------------------------------------------------------------

    def _event(self, index: int, event: str) -> None:
        if event in ("marked_down", "marked_up"):
            up = [i for i, h in enumerate(self.health) if not h.down]
            self._usable = up or self._all  # all down: try them all rather than none
        self.counters.inc(event)
        self._events.inc(f"{self.name}.{self.health[index].url}.{event}")

    def _answered(self, index: int, latency: float) -> None:
        health = self.health[index]
        if health.success(latency):
            self._event(index, "marked_up")
            log.info("upstream %s of group %s is up again", health.url, self.name)

    def _failed(self, index: int, kind: str = "error") -> None:
        health = self.health[index]
        if not health.failure(kind):
            return
        self._event(index, "marked_down")
        log.warning(
            "upstream %s of group %s is down after %d failures in a row",
            health.url,
            self.name,
            health.failures_in_row,
        )
        health.probe_wait = self.probe_interval
        health.probe_at = asyncio.get_running_loop().time() + self.probe_interval
        prober = self._prober
        if prober is None or prober.done():
            # The task holds the group only weakly: a group nobody uses any more (an old
            # chain after a reload) is collected, and its probing ends with it.
            self._prober = asyncio.get_running_loop().create_task(
                _probe_loop(weakref.ref(self)), name=f"probe upstreams of {self.name}"
            )

    def _probe_delay(self) -> float | None:
        """Return how long to wait before looking for due probes; None when nothing is down.

        At most ``probe_interval``: an upstream marked down meanwhile is then probed on time,
        not after another's longer back-off.
        """
        due = [h.probe_at for h in self.health if h.down]
        if not due:
            return None
        wait = min(due) - asyncio.get_running_loop().time()
        return min(max(0.0, wait), self.probe_interval)

    async def _probe_due(self) -> None:
        """Probe, at the same time, every down upstream whose probe is due."""
        now = asyncio.get_running_loop().time()
        due = [i for i, h in enumerate(self.health) if h.down and h.probe_at <= now]
        await asyncio.gather(*(self._probe(i) for i in due))

    async def _probe(self, index: int) -> None:
        """Ask a down upstream ``. IN NS``; a good answer marks it up, else back off."""
        self._event(index, "probes")
        transport = self.transports[index]
        health = self.health[index]
        query = Query(Request(_PROBE))
        loop = asyncio.get_running_loop()
        start = loop.time()
        query.deadline = start + self.timeout
        try:
            answer = await transport.exchange(query, self.timeout)
        except (TimeoutError, OSError) as exc:
            log.debug("probe of upstream %s failed: %r", health.url, exc)
            good = False
        else:
            good = answer.rcode not in _FAILURE_RCODES
        if good:
            self._answered(index, loop.time() - start)
            return
        health.failure("probe")
        health.probe_wait = min(health.probe_wait * 2, self.probe_max)
        health.probe_at = loop.time() + health.probe_wait

    def close(self) -> None:
        """Stop the background probes and close every transport's sockets."""
        if self._prober is not None:
            self._prober.cancel()
            self._prober = None
        for transport in self.transports:
            transport.close()


async def _probe_loop(ref: weakref.ref[UpstreamGroup]) -> None:
    """Probe the group's down upstreams when due; end when none is down or the group is gone."""
    while True:
        group = ref()
        if group is None:
            return
        delay = group._probe_delay()
        if delay is None:
            group._prober = None
            return
        del group  # not held while sleeping
        await asyncio.sleep(delay)
        group = ref()
        if group is None:
            return
        await group._probe_due()
        del group
