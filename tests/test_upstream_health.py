"""Upstream health: latency averages, down and up again, background probes, the fastest policy.

Fake UDP resolvers on 127.0.0.1 only; their delays are loop.call_later timers.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import pytest
from dnslib import DNSRecord

from netstack.counters import Counters
from olm.dns.answer import render
from olm.dns.request import Request
from olm.dns.upstream import Policy, UdpTransport, Upstream, UpstreamFailure, UpstreamGroup
from olm.dns.upstream.health import Health

from fakedns import answers_with, refusing, run, silent, start_fake

NAME = "www.example.com"


def group(upstreams: list[Upstream], counters: Counters, **options: Any) -> UpstreamGroup:
    node = counters.child("upstream")
    return UpstreamGroup("test", [UdpTransport(u, node) for u in upstreams], node, **options)


def client_query(name: str = NAME) -> bytes:
    record = DNSRecord.question(name)
    record.header.id = 0x4242
    return bytes(record.pack())


async def resolve(g: UpstreamGroup, name: str = NAME) -> str:
    """Resolve ``name`` through ``g``; return the address answered."""
    request = Request(client_query(name))
    record = DNSRecord.parse(render(await g.resolve(request), request, 0.0))
    return str(record.rr[0].rdata)


async def until(condition: Callable[[], bool], limit: float = 5.0) -> None:
    """Wait (polling) until ``condition()`` holds; fail after ``limit`` seconds."""
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)


# -- the record --------------------------------------------------------------------------------


def test_health_average_and_marks() -> None:
    health = Health("192.0.2.1:53")
    assert health.snapshot()["latency_ms"] is None
    assert not health.success(0.100)  # the first sample sets the average
    assert health.latency == pytest.approx(0.100)
    health.success(0.200)  # moves it by alpha (0.2) of the difference
    assert health.latency == pytest.approx(0.120)
    assert not health.failure() and not health.failure()
    assert health.failure()  # the third in a row marks it down
    assert health.down and not health.failure()  # marked once
    assert health.success(0.050)  # one success brings it up
    assert health.snapshot() == {
        "url": "192.0.2.1:53",
        "latency_ms": pytest.approx(106.0),
        "failures_in_row": 0,
        "down": False,
        "answers": 3,
        "failures": 4,
    }
    with pytest.raises(ValueError):
        Health("x", down_after=0)


# -- fastest -----------------------------------------------------------------------------------


def test_fastest_prefers_the_quick_upstream_and_still_explores() -> None:
    async def main() -> None:
        slow, up_slow = await start_fake(answers_with("192.0.2.1", delay=0.08))
        quick, up_quick = await start_fake(answers_with("192.0.2.2"))
        counters = Counters()
        g = group([up_slow, up_quick], counters, policy=Policy.FASTEST, timeout=1, deadline=2)
        got = [await resolve(g) for _ in range(40)]
        # Query 1 measures the slow one (configured first, never measured), query 2 the quick
        # one; from then on the quick one, except queries 20 and 40 (one in 20) that go to
        # the slow one to keep its average current.
        assert got[:2] == ["192.0.2.1", "192.0.2.2"]
        assert [i + 1 for i, ip in enumerate(got) if ip == "192.0.2.1"] == [1, 20, 40]
        assert slow.asked(NAME) == 3 and quick.asked(NAME) == 37
        slow_health, quick_health = g.snapshot()
        assert slow_health["answers"] == 3 and quick_health["answers"] == 37
        assert slow_health["failures"] == quick_health["failures"] == 0
        assert slow_health["latency_ms"] is not None and quick_health["latency_ms"] is not None
        assert slow_health["latency_ms"] >= 75
        assert quick_health["latency_ms"] < slow_health["latency_ms"]
        assert counters.get("upstream.answers") == 40
        assert not g.probing
        g.close()

    run(main())


def test_fastest_without_exploring_fails_over_by_latency() -> None:
    async def main() -> None:
        slow, up_slow = await start_fake(answers_with("192.0.2.1", delay=0.03))
        quick, up_quick = await start_fake(answers_with("192.0.2.2"))
        counters = Counters()
        g = group([up_slow, up_quick], counters, policy="fastest", explore=0, timeout=1)
        got = [await resolve(g) for _ in range(25)]
        assert got.count("192.0.2.1") == 1  # only to be measured
        # The quick one starts failing: its failures fail over to the slow one.
        quick.behave = refusing
        assert await resolve(g) == "192.0.2.1"
        assert quick.asked(NAME) == 25 and slow.asked(NAME) == 2
        g.close()

    run(main())


# -- down, skipped, probed back up -------------------------------------------------------------


def test_dead_upstream_is_marked_down_skipped_and_probed_back_up() -> None:
    async def main() -> None:
        dead, up_dead = await start_fake(silent)
        live, up_live = await start_fake(answers_with("192.0.2.7"))
        counters = Counters()
        g = group(
            [up_dead, up_live],
            counters,
            timeout=0.1,
            deadline=2,
            probe_interval=0.1,
            probe_max=0.2,
        )
        for _ in range(3):
            assert await resolve(g) == "192.0.2.7"
        assert counters.get("upstream.marked_down") == 1
        assert counters.get("upstream.health.test." + str(up_dead) + ".marked_down") == 1
        assert g.health[0].down and not g.health[1].down and g.probing
        # Skipped: the next queries go straight to the live one.
        for _ in range(5):
            assert await resolve(g) == "192.0.2.7"
        assert dead.asked(NAME) == 3 and live.asked(NAME) == 8
        assert counters.get("upstream.timeout") == 3
        # Still silent: a probe goes out and fails, the upstream stays down.
        await until(lambda: dead.probed() >= 1 and counters.get("upstream.probes") >= 1)
        await asyncio.sleep(0.15)  # let that probe time out
        assert g.health[0].down
        # It comes back: the next probe marks it up, and probing stops.
        dead.behave = answers_with("192.0.2.6")
        await until(lambda: not g.health[0].down)
        assert counters.get("upstream.marked_up") == 1
        assert counters.get("upstream.health.test." + str(up_dead) + ".marked_up") == 1
        probes = counters.get("upstream.probes")
        assert probes >= 2 and dead.probed() == probes
        await until(lambda: not g.probing)
        assert await resolve(g) == "192.0.2.6"  # sequential: first again
        await asyncio.sleep(0.3)
        assert counters.get("upstream.probes") == probes  # nothing down, nothing probed
        snapshot = g.snapshot()
        assert snapshot[0]["url"] == str(up_dead)
        assert snapshot[0]["down"] is False and snapshot[0]["failures_in_row"] == 0
        assert snapshot[0]["failures"] == 3 + probes - 1 and snapshot[0]["answers"] == 2
        assert snapshot[1]["answers"] == 8 and snapshot[1]["failures"] == 0
        g.close()

    run(main())


def test_all_down_are_still_tried() -> None:
    async def main() -> None:
        a, up_a = await start_fake(silent)
        b, up_b = await start_fake(silent)
        counters = Counters()
        g = group([up_a, up_b], counters, timeout=0.05, deadline=1)
        for _ in range(4):
            with pytest.raises(UpstreamFailure, match="all_failed"):
                await resolve(g)
        assert all(h.down for h in g.health)
        assert counters.get("upstream.marked_down") == 2
        # Never refuse to try: the fourth query asked both anyway.
        assert a.asked(NAME) == 4 and b.asked(NAME) == 4
        assert g.probing
        g.close()
        await asyncio.sleep(0)
        assert not g.probing

    run(main())


def test_round_robin_skips_a_down_upstream() -> None:
    async def main() -> None:
        first, up_first = await start_fake(answers_with("192.0.2.1"))
        bad, up_bad = await start_fake(refusing)
        third, up_third = await start_fake(answers_with("192.0.2.3"))
        counters = Counters()
        g = group([up_first, up_bad, up_third], counters, policy="round-robin", timeout=1)
        # Queries 2, 5 and 8 start at the refusing one and fail over to the next.
        got = [await resolve(g) for _ in range(8)]
        assert got == ["192.0.2.1", "192.0.2.3", "192.0.2.3"] * 2 + ["192.0.2.1", "192.0.2.3"]
        assert g.health[1].down and counters.get("upstream.rcode_failure") == 3
        got = [await resolve(g) for _ in range(4)]
        assert got == ["192.0.2.1", "192.0.2.3"] * 2  # rotating over the two that are up
        assert bad.asked(NAME) == 3 and first.asked(NAME) == 5 and third.asked(NAME) == 7
        g.close()

    run(main())


def test_race_skips_a_down_upstream() -> None:
    async def main() -> None:
        bad, up_bad = await start_fake(refusing)
        good, up_good = await start_fake(answers_with("192.0.2.2", delay=0.02))
        counters = Counters()
        g = group([up_bad, up_good], counters, policy="race", timeout=1)
        for _ in range(5):
            assert await resolve(g) == "192.0.2.2"
        assert bad.asked(NAME) == 3 and good.asked(NAME) == 5
        assert g.health[0].down
        g.close()

    run(main())


def test_timeouts_cut_by_the_deadline_do_not_count() -> None:
    async def main() -> None:
        _, up = await start_fake(silent)
        counters = Counters()
        g = group([up], counters, timeout=0.5, deadline=0.05)
        for _ in range(4):
            with pytest.raises(UpstreamFailure):
                await resolve(g)
        assert g.health[0].failures == 0 and not g.health[0].down
        g.close()

    run(main())


def test_a_group_nobody_holds_stops_probing() -> None:
    async def main() -> None:
        _, up = await start_fake(refusing)
        counters = Counters()
        g = group([up], counters, timeout=0.5, probe_interval=0.05, probe_max=0.05)
        for _ in range(3):
            with pytest.raises(UpstreamFailure):
                await resolve(g)
        (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "probe upstreams of test"]
        transports = g.transports
        del g
        async with asyncio.timeout(2):
            while not task.done():
                gc.collect()
                await asyncio.sleep(0.02)
        probes = counters.get("upstream.probes")
        await asyncio.sleep(0.2)  # four probe intervals
        assert counters.get("upstream.probes") == probes
        for transport in transports:
            transport.close()

    run(main())
