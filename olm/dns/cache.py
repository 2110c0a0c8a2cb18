"""The answer cache: what may be kept and for how long (the RFCs' rules), bounded in memory.

Keys come from the request view: the question's name in lower case, its type and class, and
the DO and CD bits (an answer with DNSSEC records, or one not validated, is a different answer).
Values are :class:`~olm.dns.answer.Answer` objects: wire bytes with their TTL offsets, so that
serving one is a copy and a few writes.

How long an answer is kept:

* positive: its smallest TTL (RFC 2181 section 5.2), within ``[min_ttl, max_ttl]``;
* negative (NXDOMAIN, NODATA): the lesser of the SOA record's TTL and its MINIMUM field
  (RFC 2308 section 5), at most ``max_negative_ttl``; without a SOA it is not kept;
* SERVFAIL (from upstream, or every upstream failing): ``failure_ttl`` seconds, which RFC 9520
  section 3.2 asks to be at least 1 second and at most 5 minutes;
* never: truncated or signed answers, other RCODEs, a TTL of 0.

Served TTLs never exceed what the entry has left: records are clamped into the entry's range
when stored and aged by the whole seconds since.

Bounds: ``size`` entries and ``max_bytes`` bytes (wire, key and a fixed per-entry overhead).
Eviction is a segmented LRU: a new entry starts on probation and moves to the protected segment
(80% of the entries) when asked for again, so a flood of names asked once (the random-subdomain
attack) evicts only other names asked once, never the popular ones.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from netstack.counters import Counters
from olm.dns.answer import EDE_STALE_ANSWER, SERVFAIL, Answer, ede_option

__all__ = ["ENTRY_OVERHEAD", "Cache", "CacheSettings", "Entry"]

#: Bytes an entry costs beyond its wire bytes and key: the Entry and Answer objects, the TTL
#: offset tuples, the bytes objects' headers and the segment's dict slot. Measured with
#: tracemalloc (``benchmarks/dns_cache.py memory``): 826 bytes in all for an answer of two A
#: records, of which 111 are wire and key.
ENTRY_OVERHEAD: Final = 720

#: RFC 8767 section 4: stale answers carry this TTL ...
STALE_TTL: Final = 30
#: ... and after a failed refresh, the stale entry is not refreshed again for this long.
STALE_RECHECK: Final = 30.0

_STALE_EDE: Final = ede_option(EDE_STALE_ANSWER)
_PROTECTED_SHARE: Final = 0.8


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The cache's knobs (TOML ``[cache]``, ``OLM_CACHE_*``, ``--cache-*``)."""

    enabled: bool = True
    size: int = 10_000
    max_bytes: int = 16 * 1024 * 1024
    min_ttl: int = 0
    max_ttl: int = 86_400
    max_negative_ttl: int = 3_600
    failure_ttl: int = 5
    serve_stale: bool = False
    stale_max_age: int = 86_400
    prefetch: bool = True


POSITIVE: Final = "positive"
NEGATIVE: Final = "negative"
FAILURE: Final = "failure"


class Entry:
    """One cached answer and its timers (all times on the engine's clock)."""

    __slots__ = (
        "answer",
        "expires",
        "key",
        "kind",
        "prefetch_at",
        "refreshing",
        "retry_at",
        "size",
        "stale",
        "stale_until",
    )

    def __init__(
        self,
        key: bytes,
        answer: Answer,
        kind: str,
        expires: float,
        prefetch_at: float,
        stale_until: float,
    ) -> None:
        self.key = key
        self.answer = answer
        self.kind = kind
        self.expires = expires
        self.prefetch_at = prefetch_at
        self.stale_until = stale_until
        self.size = len(answer.wire) + len(key) + ENTRY_OVERHEAD
        self.refreshing = False
        self.retry_at = 0.0
        self.stale: Answer | None = None

    def stale_answer(self) -> Answer:
        """Return the answer served once expired: TTL 30 everywhere, EDE 3 (RFC 8767, 8914)."""
        if self.stale is None:
            self.stale = self.answer.stale(STALE_TTL, _STALE_EDE)
        return self.stale


class Cache:
    """Cached answers by key, with the flights (upstream exchanges) in progress per key.

    Counters (on the node given): ``insert``, ``evict``, ``expire``, ``not_cached.<reason>``
    (``signed``, ``truncated``, ``rcode``, ``zero_ttl``, ``no_soa``, ``too_large``,
    ``failure``). The handler counts hits and misses.
    """

    def __init__(self, settings: CacheSettings, counters: Counters) -> None:
        self.settings = settings
        self.counters = counters
        self._probation: OrderedDict[bytes, Entry] = OrderedDict()
        self._protected: OrderedDict[bytes, Entry] = OrderedDict()
        self._protected_cap = max(1, int(settings.size * _PROTECTED_SHARE))
        self.bytes = 0
        #: Upstream exchanges in progress, one per key (single flight): the futures of the
        #: askers who joined the first one.
        self.flights: dict[bytes, list[asyncio.Future[Answer | None]]] = {}
        #: Background refreshes (prefetch, stale) running now.
        self.background: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    def entries(self) -> list[Entry]:
        """Every entry, least recently used first (probation, then protected)."""
        return [*self._probation.values(), *self._protected.values()]

    # -- lookups -------------------------------------------------------------------------

    def get(self, key: bytes) -> Entry | None:
        """Return the entry for ``key`` and mark it used, whether fresh or not."""
        protected = self._protected
        entry = protected.get(key)
        if entry is not None:
            protected.move_to_end(key)
            return entry
        entry = self._probation.pop(key, None)
        if entry is not None:
            # Asked for again: promote, demoting the protected segment's oldest if full.
            protected[key] = entry
            if len(protected) > self._protected_cap:
                old_key, old = protected.popitem(last=False)
                self._probation[old_key] = old
        return entry

    def peek(self, key: bytes) -> Entry | None:
        """Return the entry for ``key`` without marking it used."""
        return self._protected.get(key) or self._probation.get(key)

    # -- what may be kept ----------------------------------------------------------------

    def lifetime(self, answer: Answer) -> tuple[int, str] | str:
        """How long ``answer`` may be kept and as what kind, or why it may not."""
        s = self.settings
        if answer.signed or answer.raw:
            return "signed"
        if answer.truncated:
            return "truncated"
        if answer.rcode == SERVFAIL:
            return (s.failure_ttl, FAILURE) if s.failure_ttl > 0 else "failure"
        if answer.negative:
            if answer.ttl < 0:
                return "no_soa"
            ttl = min(answer.ttl, s.max_negative_ttl)
            return (ttl, NEGATIVE) if ttl > 0 else "zero_ttl"
        if answer.positive:
            ttl = min(max(answer.ttl, s.min_ttl), s.max_ttl)
            return (ttl, POSITIVE) if ttl > 0 else "zero_ttl"
        return "rcode"

    def put(self, key: bytes, answer: Answer, now: float) -> Entry | None:
        """Keep ``answer`` under ``key`` if the rules allow; return the new entry."""
        verdict = self.lifetime(answer)
        if isinstance(verdict, str):
            self.counters.inc("not_cached." + verdict)
            return None
        life, kind = verdict
        s = self.settings
        low = s.min_ttl if kind == POSITIVE else 0
        # A freshly learned answer belongs to no one else: it is kept as it is, not copied.
        stored = answer.clamped(low, life if kind != POSITIVE else s.max_ttl)
        stored.born = now
        expires = now + life
        prefetch_at = now + life * 0.9 if s.prefetch and kind != FAILURE else expires
        stale_until = expires + s.stale_max_age if s.serve_stale and kind != FAILURE else expires
        entry = Entry(key, stored, kind, expires, prefetch_at, stale_until)
        if entry.size > s.max_bytes:
            self.counters.inc("not_cached.too_large")
            return None
        old = self._protected.pop(key, None)
        segment = self._protected
        if old is None:
            old = self._probation.pop(key, None)
            segment = self._probation
        if old is not None:
            self.bytes -= old.size
        segment[key] = entry
        self.bytes += entry.size
        self.counters.inc("insert")
        self._evict(now)
        return entry

    # -- removal -------------------------------------------------------------------------

    def discard(self, entry: Entry, now: float) -> None:
        """Remove ``entry`` (if still the one cached), counting it expired or evicted."""
        key = entry.key
        for segment in (self._protected, self._probation):
            if segment.get(key) is entry:
                del segment[key]
                self.bytes -= entry.size
                self.counters.inc("expire" if entry.stale_until <= now else "evict")
                return

    def _evict(self, now: float) -> None:
        s = self.settings
        probation, protected = self._probation, self._protected
        while len(probation) + len(protected) > s.size or self.bytes > s.max_bytes:
            segment = probation if probation else protected
            _, victim = segment.popitem(last=False)
            self.bytes -= victim.size
            self.counters.inc("expire" if victim.stale_until <= now else "evict")

    def configure(self, settings: CacheSettings, now: float) -> None:
        """Apply new bounds and TTL rules; entries beyond the new bounds are evicted."""
        self.settings = settings
        self._protected_cap = max(1, int(settings.size * _PROTECTED_SHARE))
        while len(self._protected) > self._protected_cap:
            key, entry = self._protected.popitem(last=False)
            self._probation[key] = entry
            self._probation.move_to_end(key, last=False)
        self._evict(now)

    def flush(self, name: bytes | None = None) -> int:
        """Drop every entry, or those whose name is ``name`` (wire form); return how many."""
        dropped = 0
        for segment in (self._probation, self._protected):
            if name is None:
                dropped += len(segment)
                segment.clear()
                continue
            name = name.lower()
            # A key is the name, type, class and a DO/CD byte, then maybe a group's tag.
            size = len(name) + 5
            keys = [k for k in segment if k[: size - 5] == name and k[size : size + 1] in b"@"]
            for key in keys:
                dropped += 1
                del segment[key]
        self.bytes = sum(e.size for e in self.entries())
        return dropped

    def close(self) -> None:
        """Cancel the background refreshes in progress."""
        for task in list(self.background):
            task.cancel()
