"""The daemon's Service (stack + DNS proxy) over an in-memory TUN: shutdown and reload."""

from __future__ import annotations

import asyncio

from dnslib import RCODE, DNSRecord
from test_dns_proxy import answers_with, client_query, start_fake

from netstack.clock import AsyncioClock
from netstack.link.channel import ChannelEndpoint, LoopWire
from netstack.sockets import UDPSocket
from netstack.stack import Stack
from olm.config import Settings
from olm.daemon import Service, make_resolver


async def _service(upstream: str) -> tuple[Service, Stack]:
    """A Service on 10.30.30.30 behind a channel, and a client stack wired to it."""
    settings = Settings(addresses=["10.30.30.30"], upstreams=[upstream], timeout=2, deadline=3)
    stack = Stack(AsyncioClock(), seed=2)
    link = ChannelEndpoint()
    stack.create_nic("tun", link)
    service = Service(settings, stack, make_resolver(settings, stack.counters.child("dns"), ""))
    service.add_addresses("tun")
    await service.start()
    client = Stack(AsyncioClock(), seed=1)
    client_link = ChannelEndpoint()
    client.create_nic("tun", client_link)
    client.add_address("tun", "10.30.30.1/24")
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
        assert counters.get("dns.refused_stopping") == 1
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
        ignored = service.reload(new, "")
        assert sorted(ignored) == ["mtu", "tcp_idle_timeout"]
        assert service.proxy.max_inflight == 7
        assert service.settings.mtu == 1500  # still the MTU in force
        sock = UDPSocket(client)
        sock.connect(("10.30.30.30", 53))
        sock.send(client_query())
        reply = DNSRecord.parse(await asyncio.wait_for(sock.recv(), 2))
        assert str(reply.rr[0].rdata) == "192.0.2.2"
        await service.stop()

    asyncio.run(main())
