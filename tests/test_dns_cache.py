"""The cache and its handler under a ManualClock: what is kept, for how long, and how it is served.

The chain is the real one (sanitise, admission, cache) ending in :class:`Zone`, a fake upstream
that answers from a small zone, counts what it is asked, and can fail or hold its answers, so
every decision of the cache happens at a time the test chooses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, TXT, A, DNSHeader, DNSQuestion, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.clock import ManualClock
from netstack.counters import Counters
from olm.dns.answer import SERVFAIL, Answer, error_answer, learn
from olm.dns.cache import Cache, CacheSettings
from olm.dns.engine import Engine
from olm.dns.handlers import Handler, Result, link
from olm.dns.handlers.admission import Admission, Gate
from olm.dns.handlers.cache import CacheHandler
from olm.dns.handlers.sanitise import Sanitise
from olm.dns.request import UDP, Request

T = TypeVar("T")
SOA_RDATA = SOA("ns.example.test.", "admin.example.test.", (1, 3600, 600, 86400, 60))


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(20):
            return await coro

    return asyncio.run(bounded())


class Zone(Handler):
    """The test chain's upstream: ``name -> (rcode, ttl, soa)`` with A answers for NOERROR."""

    name = "forward"

    def __init__(self, counters: Counters) -> None:
        super().__init__(counters)
        self.asked: list[str] = []
        self.fail = False
        self.hold: asyncio.Future[None] | None = None
        self.ttl = 60
        self.address = "192.0.2.1"
        self.soa: tuple[int, int] | None = (3600, 60)  # SOA TTL, MINIMUM
        self.nxdomain: set[str] = set()
        self.nodata: set[str] = set()

    def handle(self, request: Request) -> Result:
        return self._answer(request)

    async def _answer(self, request: Request) -> Answer:
        self.asked.append(request.name)
        if self.hold is not None:
            await self.hold
        if self.fail:
            return error_answer(request, SERVFAIL)
        query = DNSRecord.parse(request.wire)
        reply = DNSRecord(
            DNSHeader(id=7, qr=1, aa=1, ra=1), q=DNSQuestion(request.name, query.q.qtype)
        )
        name = request.name
        if name in self.nxdomain or name in self.nodata:
            reply.header.rcode = RCODE.NXDOMAIN if name in self.nxdomain else RCODE.NOERROR
            if self.soa is not None:
                ttl, minimum = self.soa
                soa = SOA("ns.example.test.", "admin.example.test.", (1, 3600, 600, 86400, minimum))
                reply.add_auth(RR("example.test.", QTYPE.SOA, rdata=soa, ttl=ttl))
        elif query.q.qtype == QTYPE.TXT:
            reply.add_answer(RR(name, QTYPE.TXT, rdata=TXT("t" * (len(name) * 3)), ttl=self.ttl))
        else:
            reply.add_answer(RR(name, QTYPE.A, rdata=A(self.address), ttl=self.ttl))
        return learn(bytes(reply.pack()))


class Rig:
    """An engine over the real chain and a :class:`Zone`, on a ManualClock."""

    def __init__(self, **cache: Any) -> None:
        self.clock = ManualClock(1000.0)
        self.counters = Counters("dns")
        self.gate = Gate(1000)
        self.cache = Cache(CacheSettings(**cache), self.counters.child("cache"))
        self.zone = Zone(self.counters)
        self.engine = Engine(self.chain(self.zone), self.clock, self.counters, self.gate)

    def chain(self, zone: Handler) -> Handler:
        c = self.counters
        return link(
            [
                Sanitise(c),
                Admission(c, self.gate),
                CacheHandler(c, self.cache, self.clock, self.gate),
                zone,
            ],
            c,
        )

    def query(
        self,
        name: str,
        qtype: str = "A",
        *,
        qid: int = 1,
        do: bool = False,
        cd: bool = False,
        edns: bool = True,
    ) -> Request:
        record = DNSRecord.question(name, qtype)
        record.header.id = qid
        record.header.cd = int(cd)
        if edns:
            record.add_ar(EDNS0(udp_len=1232, flags="do" if do else ""))
        return Request(bytes(record.pack()), b"\x0a\x00\x00\x01", 5353, b"\x0a\x1e\x1e\x1e", UDP)

    async def ask(self, name: str, qtype: str = "A", **options: Any) -> DNSRecord:
        out = self.engine.handle(self.query(name, qtype, **options))
        if not isinstance(out, bytes):
            assert out is not None
            out = await out
        assert out is not None
        return DNSRecord.parse(out)

    def hit(self, name: str, qtype: str = "A", **options: Any) -> DNSRecord:
        """Ask, and insist on an answer at once: bytes, no coroutine (the fast path)."""
        out = self.engine.handle(self.query(name, qtype, **options))
        assert isinstance(out, bytes), f"{name} was not answered from the cache"
        return DNSRecord.parse(out)

    async def settle(self) -> None:
        """Let background refreshes run to their end."""
        for _ in range(5):
            await asyncio.sleep(0)


def ede_codes(reply: DNSRecord) -> list[int]:
    (opt,) = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
    return [int.from_bytes(o.data[:2], "big") for o in opt.rdata if o.code == 15]


# -- positive answers: ageing and expiry -------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 100_000), st.floats(0, 3.0))
def test_ttl_ages_and_the_entry_expires_exactly(ttl: int, fraction: float) -> None:
    async def main() -> None:
        rig = Rig(prefetch=False, max_ttl=2**31 - 1)
        rig.zone.ttl = ttl
        first = await rig.ask("www.example.test")
        assert first.rr[0].ttl == ttl and rig.zone.asked == ["www.example.test."]
        elapsed = ttl * fraction
        rig.clock.advance(elapsed)
        if elapsed < ttl:
            again = rig.hit("www.example.test")
            assert again.rr[0].ttl == ttl - int(elapsed)
            assert len(rig.zone.asked) == 1
        else:
            again = await rig.ask("www.example.test")
            assert again.rr[0].ttl == ttl  # fresh from the upstream again
            assert len(rig.zone.asked) == 2
            assert rig.counters.get("cache.expire") == 1

    run(main())


def test_hit_keeps_the_clients_id_spelling_and_flags() -> None:
    async def main() -> None:
        rig = Rig()
        await rig.ask("www.example.test", qid=1)
        reply = rig.hit("WwW.ExAmPlE.tEsT", qid=0xBEEF)
        assert reply.header.id == 0xBEEF
        assert reply.q.qname.label == (b"WwW", b"ExAmPlE", b"tEsT")
        assert reply.header.aa == 0 and reply.header.ra == 1 and reply.header.qr == 1
        plain = rig.hit("www.example.test", edns=False)
        assert [rr for rr in plain.ar if rr.rtype == QTYPE.OPT] == []
        assert rig.counters.get("cache.hit") == 2 and len(rig.zone.asked) == 1

    run(main())


def test_do_and_cd_are_cached_apart() -> None:
    async def main() -> None:
        rig = Rig()
        for options in ({}, {"do": True}, {"cd": True}, {"do": True, "cd": True}):
            await rig.ask("www.example.test", **options)
        assert len(rig.zone.asked) == 4 and len(rig.cache) == 4
        for options in ({}, {"do": True}, {"cd": True}, {"do": True, "cd": True}):
            rig.hit("www.example.test", **options)
        assert rig.counters.get("cache.hit") == 4

    run(main())


def test_min_and_max_ttl_clamp_what_is_kept_and_served() -> None:
    async def main() -> None:
        rig = Rig(min_ttl=30, max_ttl=100, prefetch=False)
        rig.zone.ttl = 5
        assert (await rig.ask("short.example.test")).rr[0].ttl == 5  # forwarded as it came
        rig.clock.advance(20)
        assert rig.hit("short.example.test").rr[0].ttl == 10  # kept 30 s, served within it
        rig.zone.ttl = 5000
        await rig.ask("long.example.test")
        rig.clock.advance(10)
        assert rig.hit("long.example.test").rr[0].ttl == 90
        rig.clock.advance(91)
        await rig.ask("long.example.test")
        assert rig.zone.asked.count("long.example.test.") == 2

    run(main())


def test_ttl_zero_is_not_cached() -> None:
    async def main() -> None:
        rig = Rig()
        rig.zone.ttl = 0
        await rig.ask("zero.example.test")
        await rig.ask("zero.example.test")
        assert len(rig.zone.asked) == 2
        assert rig.counters.get("cache.not_cached.zero_ttl") == 2

    run(main())


# -- negative answers (RFC 2308) and failures (RFC 9520) ---------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(1, 5_000), st.booleans())
def test_negative_ttl_is_the_lesser_of_soa_ttl_and_minimum_capped(
    soa_ttl: int, minimum: int, cap: int, nxdomain: bool
) -> None:
    async def main() -> None:
        rig = Rig(max_negative_ttl=cap, prefetch=False)
        rig.zone.soa = (soa_ttl, minimum)
        (rig.zone.nxdomain if nxdomain else rig.zone.nodata).add("gone.example.test.")
        first = await rig.ask("gone.example.test")
        assert first.header.rcode == (RCODE.NXDOMAIN if nxdomain else RCODE.NOERROR)
        life = min(soa_ttl, minimum, cap)
        if life == 0:
            assert len(rig.cache) == 0
            return
        rig.clock.advance(life - 0.5)
        again = rig.hit("gone.example.test")
        assert again.header.rcode == first.header.rcode and again.rr == []
        assert again.auth[0].ttl <= life  # the SOA never outlives the entry
        rig.clock.advance(0.5)
        await rig.ask("gone.example.test")
        assert len(rig.zone.asked) == 2

    run(main())


def test_negative_answer_without_soa_is_not_cached() -> None:
    async def main() -> None:
        rig = Rig()
        rig.zone.soa = None
        rig.zone.nxdomain.add("gone.example.test.")
        await rig.ask("gone.example.test")
        await rig.ask("gone.example.test")
        assert len(rig.zone.asked) == 2
        assert rig.counters.get("cache.not_cached.no_soa") == 2

    run(main())


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 300))
def test_failures_are_cached_for_failure_ttl(failure_ttl: int) -> None:
    """RFC 9520 section 3.2: a resolution failure is cached, at least 1 s and at most 5 min."""

    async def main() -> None:
        rig = Rig(failure_ttl=failure_ttl)
        rig.zone.fail = True
        first = await rig.ask("down.example.test")
        assert first.header.rcode == RCODE.SERVFAIL
        rig.clock.advance(failure_ttl - 0.01)
        assert rig.hit("down.example.test").header.rcode == RCODE.SERVFAIL
        assert rig.counters.get("cache.hit_failure") == 1
        rig.zone.fail = False
        rig.clock.advance(0.01)
        assert (await rig.ask("down.example.test")).header.rcode == RCODE.NOERROR
        assert len(rig.zone.asked) == 2

    run(main())


# -- serve-stale (RFC 8767) and prefetch -------------------------------------------------------


def test_stale_answer_at_once_with_ttl_30_and_ede_3_then_refreshed() -> None:
    async def main() -> None:
        rig = Rig(serve_stale=True, stale_max_age=600, prefetch=False)
        await rig.ask("www.example.test")
        rig.clock.advance(61)
        rig.zone.address = "192.0.2.2"
        stale = rig.hit("www.example.test")  # at once, while the refresh runs
        assert [str(rr.rdata) for rr in stale.rr] == ["192.0.2.1"]
        assert stale.rr[0].ttl == 30
        assert ede_codes(stale) == [3]  # RFC 8914: Stale Answer
        assert rig.counters.get("cache.stale") == 1
        await rig.settle()
        assert len(rig.zone.asked) == 2  # one background refresh
        fresh = rig.hit("www.example.test")
        assert [str(rr.rdata) for rr in fresh.rr] == ["192.0.2.2"] and fresh.rr[0].ttl == 60
        plain = rig.hit("www.example.test", edns=False)
        assert plain.ar == []

    run(main())


def test_stale_entry_survives_failed_refreshes_and_is_retried_after_30_s() -> None:
    async def main() -> None:
        rig = Rig(serve_stale=True, stale_max_age=600, prefetch=False)
        await rig.ask("www.example.test")
        rig.zone.fail = True
        rig.clock.advance(70)
        assert rig.hit("www.example.test").rr[0].ttl == 30
        await rig.settle()
        assert len(rig.zone.asked) == 2
        assert rig.counters.get("cache.refresh_failed") == 1
        rig.clock.advance(10)  # within the 30 s recheck: stale, no new refresh
        assert rig.hit("www.example.test").header.rcode == RCODE.NOERROR
        await rig.settle()
        assert len(rig.zone.asked) == 2
        rig.clock.advance(25)  # past it: stale again, one more refresh
        assert rig.hit("www.example.test").header.rcode == RCODE.NOERROR
        await rig.settle()
        assert len(rig.zone.asked) == 3
        rig.clock.advance(600)  # past stale_max_age: a miss, and the upstream still fails
        assert (await rig.ask("www.example.test")).header.rcode == RCODE.SERVFAIL

    run(main())


def test_without_serve_stale_an_expired_entry_is_a_miss() -> None:
    async def main() -> None:
        rig = Rig(serve_stale=False)
        await rig.ask("www.example.test")
        rig.zone.fail = True
        rig.clock.advance(61)
        assert (await rig.ask("www.example.test")).header.rcode == RCODE.SERVFAIL

    run(main())


def test_prefetch_in_the_last_tenth_of_the_ttl() -> None:
    async def main() -> None:
        rig = Rig(prefetch=True)
        rig.zone.ttl = 100
        await rig.ask("www.example.test")
        rig.clock.advance(89)
        rig.hit("www.example.test")
        await rig.settle()
        assert len(rig.zone.asked) == 1  # not yet
        rig.clock.advance(2)
        assert rig.hit("www.example.test").rr[0].ttl == 9  # served, and refreshed behind
        assert rig.counters.get("cache.prefetch") == 1
        rig.hit("www.example.test")  # one refresh at a time
        await rig.settle()
        assert len(rig.zone.asked) == 2
        rig.clock.advance(50)
        assert rig.hit("www.example.test").rr[0].ttl == 50  # the prefetched entry
        assert len(rig.zone.asked) == 2

    run(main())


# -- single flight ------------------------------------------------------------------------------


def test_many_concurrent_misses_share_one_upstream_exchange() -> None:
    async def main() -> None:
        rig = Rig()
        loop = asyncio.get_running_loop()
        rig.zone.hold = loop.create_future()
        names = ["www.example.test", "WWW.example.test", "www.EXAMPLE.test"]
        pending = []
        for i in range(200):
            request = rig.query(names[i % 3], qid=i)
            out = rig.engine.handle(request)
            assert out is not None and not isinstance(out, bytes)
            pending.append(asyncio.ensure_future(out))
        await asyncio.sleep(0.01)
        assert len(rig.zone.asked) == 1
        rig.zone.hold.set_result(None)
        replies = [DNSRecord.parse(r) for r in await asyncio.gather(*pending)]
        assert [r.header.id for r in replies] == list(range(200))
        assert all(str(r.rr[0].rdata) == "192.0.2.1" for r in replies)
        assert all(
            r.q.qname.label == tuple(names[i % 3].encode().split(b"."))
            for i, r in enumerate(replies)
        )
        assert rig.counters.get("cache.coalesced") == 199
        assert rig.gate.inflight == 0 and rig.cache.flights == {}

    run(main())


# -- bounds ---------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 50),
    st.integers(2_000, 20_000),
    st.lists(st.integers(0, 400), min_size=1, max_size=300),
)
def test_bounds_hold_after_every_insert(size: int, max_bytes: int, names: list[int]) -> None:
    async def main() -> None:
        rig = Rig(size=size, max_bytes=max_bytes)
        for n in names:
            await rig.ask(f"n{n}.example.test", "TXT")
            assert len(rig.cache) <= size
            assert rig.cache.bytes <= max_bytes
            assert rig.cache.bytes == sum(e.size for e in rig.cache.entries())

    run(main())


def test_a_flood_of_a_million_names_keeps_the_popular_ones() -> None:
    """The random-subdomain attack: unique names asked once cannot push out popular ones."""
    size = 2000
    cache = Cache(CacheSettings(size=size, max_bytes=2_000_000), Counters())
    popular = [Request(_query(f"popular{i}.example.test")).key for i in range(100)]
    answer = learn(_answer("popular0.example.test"))
    for key in popular:
        cache.put(key, answer, 0.0)
        assert cache.get(key) is not None  # asked again: protected
    flood_key = bytearray(Request(_query("q0000000.flood.example.test")).key)
    for i in range(1_000_000):
        flood_key[2:9] = b"%07d" % i
        cache.put(bytes(flood_key), answer, 0.0)
        if i % 1000 == 0:
            assert cache.get(popular[(i // 1000) % 100]) is not None
    assert len(cache) == size and cache.bytes <= 2_000_000
    assert all(cache.peek(key) is not None for key in popular)


def _query(name: str) -> bytes:
    return bytes(DNSRecord.question(name).pack())


def _answer(name: str) -> bytes:
    reply = DNSRecord.question(name).reply()
    reply.add_answer(RR(name, QTYPE.A, rdata=A("192.0.2.1"), ttl=3600))
    return bytes(reply.pack())


def test_flush_all_or_one_name() -> None:
    async def main() -> None:
        rig = Rig()
        for name in ("a.example.test", "b.example.test"):
            await rig.ask(name)
            await rig.ask(name, "TXT")
        assert rig.cache.flush(b"\x01A\x07example\x04test\x00") == 2
        rig.hit("b.example.test")
        assert rig.cache.flush() == 2 and rig.cache.bytes == 0

    run(main())


# -- the chain swapped while queries wait --------------------------------------------------


def test_chain_swapped_during_a_burst_loses_no_query() -> None:
    async def main() -> None:
        rig = Rig()
        loop = asyncio.get_running_loop()
        rig.zone.hold = loop.create_future()
        before = [rig.engine.handle(rig.query(f"n{i}.example.test", qid=i)) for i in range(150)]
        new_zone = Zone(rig.counters)
        new_zone.address = "192.0.2.99"
        rig.engine.chain = rig.chain(new_zone)  # what SIGHUP does
        after = [rig.engine.handle(rig.query(f"m{i}.example.test", qid=i)) for i in range(150)]
        tasks = [asyncio.ensure_future(p) for p in before + after]  # type: ignore[arg-type]
        await asyncio.sleep(0)
        rig.zone.hold.set_result(None)
        replies = [DNSRecord.parse(r) for r in await asyncio.gather(*tasks)]
        assert len(replies) == 300
        assert {str(r.rr[0].rdata) for r in replies[:150]} == {"192.0.2.1"}  # the old chain
        assert {str(r.rr[0].rdata) for r in replies[150:]} == {"192.0.2.99"}  # the new one
        assert len(rig.zone.asked) == 150 and len(new_zone.asked) == 150
        assert rig.gate.inflight == 0

    run(main())


def test_admission_refuses_waiting_queries_beyond_the_bound_but_serves_hits() -> None:
    async def main() -> None:
        rig = Rig()
        rig.gate.limit = 2
        await rig.ask("cached.example.test")
        rig.zone.hold = asyncio.get_running_loop().create_future()
        waiting = [asyncio.ensure_future(rig.ask(f"w{i}.example.test")) for i in range(3)]
        await asyncio.sleep(0.01)
        assert rig.hit("cached.example.test").header.rcode == RCODE.NOERROR
        rig.zone.hold.set_result(None)
        rcodes = [r.header.rcode for r in await asyncio.gather(*waiting)]
        assert sorted(rcodes) == [RCODE.NOERROR, RCODE.NOERROR, RCODE.REFUSED]
        assert rig.counters.get("admission.refused_inflight") == 1

    run(main())
