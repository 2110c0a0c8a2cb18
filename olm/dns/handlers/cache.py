"""The cache handler: answers from the cache, and fills it from the rest of the chain.

* Hit: the stored answer is returned at once (the engine renders it for the client: no Task,
  no dnslib). If it is in the last tenth of its life, one refresh starts in the background
  (prefetch, as unbound's and CoreDNS's ``prefetch``).
* Expired, within ``stale_max_age`` and ``serve_stale`` on: the stale answer is returned at
  once with TTL 30 and Extended DNS Error 3 (RFC 8767 section 4, RFC 8914) while one refresh
  runs in the background. A refresh that fails leaves the stale entry in place (and is not
  tried again for 30 seconds), so clients keep getting it instead of SERVFAIL.
* Miss: the rest of the chain is asked, once per key however many clients ask at the same
  time (single flight); every waiter gets the answer served to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from netstack.clock import Clock
from netstack.counters import Counters
from olm.dns.answer import SERVFAIL, Answer
from olm.dns.cache import FAILURE, POSITIVE, STALE_RECHECK, Cache, Entry
from olm.dns.handlers import Handler, Result
from olm.dns.handlers.admission import Gate
from olm.dns.request import Request

__all__ = ["CacheHandler"]

log = logging.getLogger("olm.dns.cache")


class CacheHandler(Handler):
    """Serves and fills a :class:`~olm.dns.cache.Cache`.

    ``gate`` (shared with admission) bounds the background refreshes together with the
    queries that wait: when it is full, a refresh is skipped. Counters (on ``cache``, beside
    the store's): ``hit`` (with ``hit_negative`` and ``hit_failure`` for those kinds),
    ``miss``, ``stale``, ``stale_on_failure``, ``prefetch``, ``stale_refresh``,
    ``refresh_skipped``, ``refresh_failed``, ``coalesced``, ``bypass`` (signed queries).
    """

    name = "cache"

    def __init__(self, counters: Counters, cache: Cache, clock: Clock, gate: Gate | None) -> None:
        super().__init__(counters)
        self.cache = cache
        self.clock = clock
        self.gate = gate

    def handle(self, request: Request) -> Result:
        """Answer from the cache, or return the coroutine that fetches the answer."""
        values = self.counters.values
        if request.tsig:
            values["bypass"] = values.get("bypass", 0) + 1
            return self.next.handle(request)
        entry = self.cache.get(request.key)
        if entry is not None:
            now = self.clock.now()
            if now < entry.expires:
                if now >= entry.prefetch_at:
                    self._refresh(request, entry, now, "prefetch")
                values["hit"] = values.get("hit", 0) + 1
                if entry.kind is not POSITIVE:
                    self.counters.inc("hit_" + entry.kind)
                return entry.answer
            if now < entry.stale_until:
                values["stale"] = values.get("stale", 0) + 1
                self._refresh(request, entry, now, "stale_refresh")
                return entry.stale_answer()
            self.cache.discard(entry, now)
        values["miss"] = values.get("miss", 0) + 1
        return self._fetch(request)

    async def _fetch(self, request: Request) -> Answer | None:
        """Return the answer of the key's flight: join one in progress, or fly it ourselves."""
        followers = self.cache.flights.get(request.key)
        if followers is None:
            answer = await self._lead(request)
        else:
            self.counters.inc("coalesced")
            waiter: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
            followers.append(waiter)
            answer = await waiter
        if answer is not None and answer.rcode == SERVFAIL:
            entry = self.cache.peek(request.key)
            if entry is not None and entry.kind != FAILURE and self._usable_stale(entry):
                self.counters.inc("stale_on_failure")
                return entry.stale_answer()
        return answer

    def _usable_stale(self, entry: Entry) -> bool:
        return self.cache.settings.serve_stale and self.clock.now() < entry.stale_until

    async def _lead(self, request: Request) -> Answer | None:
        """Fly the one exchange for ``request.key`` and hand its answer to those who joined.

        The first asker does the work in its own Task (no Task per flight). If it is
        cancelled (its client went away, or shutdown), the askers who joined are handed a
        flight of their own; if it fails, they fail alike.
        """
        key = request.key
        flights = self.cache.flights
        followers: list[asyncio.Future[Answer | None]] = []
        flights[key] = followers
        try:
            answer = await self._resolve(request)
        except asyncio.CancelledError:
            self._land(key, followers)
            if followers:
                self._spawn(self._hand_over(request, followers))
            raise
        except Exception as exc:
            self._land(key, followers)
            for waiter in followers:
                if not waiter.done():
                    waiter.set_exception(exc)
            raise
        self._land(key, followers)
        for waiter in followers:
            if not waiter.done():
                waiter.set_result(answer)
        return answer

    def _land(self, key: bytes, followers: list[asyncio.Future[Answer | None]]) -> None:
        flights = self.cache.flights
        if flights.get(key) is followers:
            del flights[key]

    async def _hand_over(
        self, request: Request, followers: list[asyncio.Future[Answer | None]]
    ) -> None:
        """Fly again for the askers whose leader was cancelled."""
        followers = [w for w in followers if not w.done()]
        if not followers:
            return
        try:
            answer = await self._lead(request)
        except Exception as exc:
            for waiter in followers:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for waiter in followers:
            if not waiter.done():
                waiter.set_result(answer)

    def _spawn(self, coro: Coroutine[Any, Any, None], gate: Gate | None = None) -> None:
        """Run ``coro`` in the background, kept by the cache (cancelled on shutdown)."""
        task = asyncio.ensure_future(coro)
        background = self.cache.background
        background.add(task)
        if gate is not None:
            gate.enter()

        def landed(done: asyncio.Task[None]) -> None:
            background.discard(done)
            if gate is not None:
                gate.leave()
            if not done.cancelled() and done.exception() is not None:
                log.error("a cache refresh failed", exc_info=done.exception())

        task.add_done_callback(landed)

    async def _background(self, request: Request) -> None:
        """Refresh the key: fly for it and keep what comes back (nobody waits for it)."""
        with contextlib.suppress(Exception):
            await self._lead(request)

    async def _resolve(self, request: Request) -> Answer | None:
        """Ask the rest of the chain and keep what it answers (when the rules allow)."""
        result = self.next.handle(request)
        answer = result if result is None or isinstance(result, Answer) else await result
        if answer is None:
            return None
        now = self.clock.now()
        cache = self.cache
        current = cache.peek(request.key)
        if (
            answer.rcode == SERVFAIL
            and current is not None
            and current.kind != FAILURE
            and now < current.stale_until
        ):
            # RFC 8767 section 4: keep serving the stale entry; try again in 30 s at most.
            current.refreshing = False
            current.retry_at = now + STALE_RECHECK
            self.counters.inc("refresh_failed")
            return answer
        cache.put(request.key, answer, now)
        return answer

    def _refresh(self, request: Request, entry: Entry, now: float, why: str) -> None:
        """Start one background refresh of ``entry`` unless one runs or recently failed."""
        if entry.refreshing or now < entry.retry_at or request.key in self.cache.flights:
            return
        gate = self.gate
        if gate is not None and (gate.full or not gate.accepting):
            self.counters.inc("refresh_skipped")
            return
        entry.refreshing = True
        self.counters.inc(why)
        self._spawn(self._background(request), gate)
