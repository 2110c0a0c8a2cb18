"""The daemon's Service (stack + DNS engine) over an in-memory TUN: shutdown and reload."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from dnslib import RCODE, DNSRecord
from test_dns_proxy import answers_with, client_query, start_fake

from netstack.adapters import UDPSocket
from netstack.clock import AsyncioClock
from netstack.link.channel import ChannelEndpoint, LoopWire
from netstack.stack import Stack
from olm.config import ConfigError, Settings
from olm.daemon import Service
from olm.dns.cache import CacheSettings


async def _service(
    upstream: str | list[str], client_address: str = "10.30.30.1", **more: Any
) -> tuple[Service, Stack]:
    """A Service on 10.30.30.30 behind a channel, and a client stack wired to it.

    ``more`` are further Settings fields (timeout 2 and deadline 3 unless given).
    """
    upstreams = [upstream] if isinstance(upstream, str) else upstream
    fields: dict[str, Any] = {"timeout": 2, "deadline": 3, **more}
    settings = Settings(addresses=["10.30.30.30"], upstreams=upstreams, **fields)
    stack = Stack(AsyncioClock(), seed=2)
    link = ChannelEndpoint()
    stack.create_nic("tun", link)
    service = Service(settings, stack)
    service.add_addresses("tun")
    await service.start()
    client = Stack(AsyncioClock(), seed=1)
    client_link = ChannelEndpoint()
    client.create_nic("tun", client_link)
    client.add_address("tun", f"{client_address}/24")
    client.add_route("0.0.0.0/0", "tun")
    LoopWire(client_link, link)
    return service, client


def test_stop_answers_queries_in_flight_and_refuses_new_ones() -> None:
    async def main() -> None:
        _, up = await start_fake(answers_with("192.0.2.7", delay=0.3))
        service, client = await _service(f"{up.host}:{up.port}")
        sock = UDPSocket(client)
        sock.connect(("10.30.30.30", 53))
        sock.send(client_query("slow.example"))
        await asyncio.sleep(0.05)  # the query is now waiting on the upstream
        stopping = asyncio.ensure_future(service.stop())
        await asyncio.sleep(0.05)
        sock.send(client_query("late.example"))
        first = DNSRecord.parse(await asyncio.wait_for(sock.recv(), 2))
        second = DNSRecord.parse(await asyncio.wait_for(sock.recv(), 2))
        await stopping
        by_name = {str(r.q.qname): r for r in (first, second)}
        assert by_name["late.example."].header.rcode == RCODE.REFUSED
        slow = by_name["slow.example."]
        assert slow.header.rcode == RCODE.NOERROR and str(slow.rr[0].rdata) == "192.0.2.7"
        counters = service.stack.counters
        assert counters.get("dns.admission.refused_stopping") == 1
        assert counters.get("dns.dropped.closing") == 0

    asyncio.run(main())


def test_reload_applies_upstreams_and_limits_and_names_what_needs_a_restart() -> None:
    async def main() -> None:
        _, up1 = await start_fake(answers_with("192.0.2.1"))
        _, up2 = await start_fake(answers_with("192.0.2.2"))
        service, client = await _service(f"{up1.host}:{up1.port}")
        new = Settings(
            addresses=["10.30.30.30"],
            upstreams=[f"{up2.host}:{up2.port}"],
            max_inflight=7,
            tcp_idle_timeout=99.0,
            mtu=1400,
        )
        ignored = service.reload(new)
        assert sorted(ignored) == ["mtu", "tcp_idle_timeout"]
        assert service.engine.gate.limit == 7
        assert service.settings.mtu == 1500  # still the MTU in force
        sock = UDPSocket(client)
        sock.connect(("10.30.30.30", 53))
        sock.send(client_query())
        reply = DNSRecord.parse(await asyncio.wait_for(sock.recv(), 2))
        assert str(reply.rr[0].rdata) == "192.0.2.2"
        await service.stop()

    asyncio.run(main())


async def _ask(client: Stack, name: str) -> DNSRecord:
    sock = UDPSocket(client)
    sock.connect(("10.30.30.30", 53))
    sock.send(client_query(name))
    try:
        return DNSRecord.parse(await asyncio.wait_for(sock.recv(), 2))
    finally:
        sock.close()


def test_reload_keeps_the_cache_unless_the_upstreams_change() -> None:
    async def main() -> None:
        _, up1 = await start_fake(answers_with("192.0.2.1"))
        _, up2 = await start_fake(answers_with("192.0.2.2"))
        service, client = await _service(f"{up1.host}:{up1.port}")
        await _ask(client, "kept.example")
        cache = service.pipeline.cache
        assert len(cache) == 1
        same_upstream = replace(service.settings, cache=CacheSettings(size=500, min_ttl=5))
        assert service.reload(same_upstream) == []
        assert len(cache) == 1 and cache.settings.size == 500
        hits = service.stack.counters.get("dns.cache.hit")
        assert str((await _ask(client, "kept.example")).rr[0].rdata) == "192.0.2.1"
        assert service.stack.counters.get("dns.cache.hit") == hits + 1
        moved = replace(service.settings, upstreams=[f"{up2.host}:{up2.port}"])
        service.reload(moved)
        assert len(cache) == 0  # the old upstream's answers are gone with it
        assert str((await _ask(client, "kept.example")).rr[0].rdata) == "192.0.2.2"
        await service.stop()

    asyncio.run(main())


def test_reload_without_usable_upstream_changes_nothing() -> None:
    async def main() -> None:
        _, up1 = await start_fake(answers_with("192.0.2.1"))
        service, client = await _service(f"{up1.host}:{up1.port}")
        chain = service.engine.chain
        broken = replace(service.settings, upstreams=["10.30.30.30"])  # ourselves
        with pytest.raises(ConfigError, match="service addresses"):
            service.reload(broken)
        assert service.engine.chain is chain
        assert str((await _ask(client, "still.example")).rr[0].rdata) == "192.0.2.1"
        await service.stop()

    asyncio.run(main())
