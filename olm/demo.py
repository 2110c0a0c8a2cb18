"""``olm demo``: the virtual DNS proxy end to end, with no root and no network.

What stands in for what:

* the kernel and ``dig``: a second netstack stack (10.30.30.1, fd30:30:30::1), the "host";
* the TUN: an in-memory channel joined to the host by a wire, with a sniffer that prints every
  packet (the packet walk);
* the FilteredDevice and the proxy's stack: exactly the daemon's (``olm.daemon.Service``);
* the upstream resolver: a small authoritative server for ``example.test`` answered in this
  process on 127.0.0.1 (a loopback socket: nothing leaves the machine).

The host then asks a handful of real questions over UDP and TCP, one with an answer too large
for UDP, which comes back truncated and is asked again over TCP, as a stub resolver would, and
one asked twice, the second time answered from the cache.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

from dnslib import AAAA, CNAME, QTYPE, RR, TXT, A, DNSRecord

from netstack.adapters import UDPSocket, open_connection
from netstack.clock import AsyncioClock
from netstack.link.channel import ChannelEndpoint, LoopWire
from netstack.link.sniffer import SnifferEndpoint
from netstack.stack import Stack
from olm.config import Settings
from olm.daemon import Service
from olm.device.filtered import FilteredDevice

V4, V6 = "10.30.30.30", "fd30:30:30::30"

_TXT = [f"demo-{i:02} " + "v=olm " * 40 for i in range(6)]  # about 1500 bytes in all


def zone_answer(query: DNSRecord) -> DNSRecord:
    """Answer from the demo zone: example.test (A, AAAA), www (CNAME), big (1.5 kB of TXT)."""
    reply = query.reply()
    q = query.q
    name = str(q.qname).lower().rstrip(".")
    qtype = QTYPE[q.qtype]
    if name == "www.example.test":
        reply.add_answer(RR(q.qname, QTYPE.CNAME, rdata=CNAME("example.test."), ttl=300))
        name, q_target = "example.test", "example.test."
    else:
        q_target = str(q.qname)
    if name == "example.test" and qtype in ("A", "ANY"):
        reply.add_answer(RR(q_target, QTYPE.A, rdata=A("192.0.2.10"), ttl=300))
    if name == "example.test" and qtype in ("AAAA", "ANY"):
        reply.add_answer(RR(q_target, QTYPE.AAAA, rdata=AAAA("2001:db8::10"), ttl=300))
    if name == "big.example.test" and qtype in ("TXT", "ANY"):
        for text in _TXT:
            reply.add_answer(RR(q.qname, QTYPE.TXT, rdata=TXT(text), ttl=300))
    if not reply.rr and not name.endswith("example.test"):
        reply.header.rcode = 3  # NXDOMAIN
    return reply


class _ZoneUdp(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = bytes(zone_answer(DNSRecord.parse(data)).pack())
        except Exception:
            return
        if len(reply) > 1232:  # what the proxy advertises upstream (RFC 6891 6.2.5)
            short = DNSRecord.parse(data).reply()
            short.header.tc = 1
            reply = bytes(short.pack())
        self.transport.sendto(reply, addr)  # type: ignore[attr-defined]


async def _zone_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            reply = bytes(zone_answer(DNSRecord.parse(await reader.readexactly(size))).pack())
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def _short(answer: DNSRecord) -> str:
    """One line per record, dig-style, long TXT data shortened."""
    flags = "TC " if answer.header.tc else ""
    rcode = answer.header.rcode
    lines = [f"   rcode {rcode} {flags}({len(answer.rr)} answers)"]
    for rr in answer.rr:
        text = str(rr.rdata)
        if len(text) > 48:
            text = text[:45] + "..."
        lines.append(f"   {rr.rname} {rr.ttl} {QTYPE[rr.rtype]} {text}")
    return "\n".join(lines)


async def _udp_query(host: Stack, server: str, name: str, qtype: str) -> DNSRecord:
    sock = UDPSocket(host)
    sock.connect((server, 53))
    sock.send(bytes(DNSRecord.question(name, qtype).pack()))
    data = await asyncio.wait_for(sock.recv(), 5)
    sock.close()
    return DNSRecord.parse(data)


async def _tcp_query(host: Stack, server: str, name: str, qtype: str) -> DNSRecord:
    reader, writer = await open_connection(host, server, 53)
    query = bytes(DNSRecord.question(name, qtype).pack())
    writer.write(struct.pack("!H", len(query)) + query)
    await writer.drain()
    (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))
    answer = DNSRecord.parse(await reader.readexactly(size))
    writer.close()
    await writer.wait_closed()
    return answer


async def _later(delay: float, query: Awaitable[DNSRecord]) -> DNSRecord:
    await asyncio.sleep(delay)
    return await query


async def tour(out: TextIO = sys.stdout, trace: bool = True) -> dict[str, int]:
    """Run the demo, printing to ``out``; return the proxy stack's counters."""
    loop = asyncio.get_running_loop()
    say: Callable[[str], None] = lambda line: print(line, file=out)  # noqa: E731

    udp_t, _ = await loop.create_datagram_endpoint(_ZoneUdp, local_addr=("127.0.0.1", 0))
    port = udp_t.get_extra_info("sockname")[1]
    tcp_server = await asyncio.start_server(_zone_tcp, "127.0.0.1", port)

    # The host: what the kernel and dig are in real life.
    host = Stack(AsyncioClock(), seed=1)
    host_link = ChannelEndpoint(mtu=1500)
    host.create_nic("tun", host_link)
    host.add_address("tun", "10.30.30.1/24")
    host.add_address("tun", "fd30:30:30::1/64")
    host.add_route("0.0.0.0/0", "tun")
    host.add_route("::/0", "tun")

    # The daemon side: TUN (channel + sniffer) -> FilteredDevice -> stack with the proxy.
    settings = Settings(upstreams=[f"127.0.0.1:{port}"], timeout=2.0, deadline=4.0)
    stack = Stack(AsyncioClock(), seed=2)
    tun_channel = ChannelEndpoint(mtu=1500)
    log = (lambda line: say(f"      tun {line}")) if trace else None
    tun = SnifferEndpoint(tun_channel, log=log, counters=stack.counters)
    filtered = FilteredDevice(tun.write_packets, counters=stack.counters)
    tun.attach(filtered)
    stack.create_nic("tun", filtered.stack_link(settings.mtu, settings.addresses))
    service = Service(settings, stack)
    service.add_addresses("tun")
    await service.start()
    LoopWire(host_link, tun_channel)

    say(f"upstream: the demo zone on 127.0.0.1:{port}; proxy on {V4} and {V6} port 53\n")
    steps: list[tuple[str, Callable[[], object]]] = [
        (
            "dig @10.30.30.30 example.test A (UDP)",
            lambda: _udp_query(host, V4, "example.test", "A"),
        ),
        (
            "dig @fd30:30:30::30 example.test AAAA (UDP over IPv6)",
            lambda: _udp_query(host, V6, "example.test", "AAAA"),
        ),
        (
            "dig +tcp @10.30.30.30 www.example.test A (TCP)",
            lambda: _tcp_query(host, V4, "www.example.test", "A"),
        ),
        (
            "a second later, dig @10.30.30.30 example.test A again (from the cache: no upstream "
            "query, the TTL counting down)",
            lambda: _later(1.1, _udp_query(host, V4, "example.test", "A")),
        ),
        (
            "dig @10.30.30.30 big.example.test TXT (UDP: 1.5 kB does not fit 512)",
            lambda: _udp_query(host, V4, "big.example.test", "TXT"),
        ),
    ]
    for n, (title, run) in enumerate(steps, start=1):
        say(f"{n}. {title}")
        answer: DNSRecord = await run()  # type: ignore[misc]
        say(_short(answer))
        if answer.header.tc:
            say(f"{n}b. truncated: the stub resolver asks again over TCP")
            answer = await _tcp_query(host, V4, "big.example.test", "TXT")
            say(_short(answer))
    say(f"{len(steps) + 1}. ping 10.30.30.30 and a packet for 10.30.30.99 (no rule: not ours)")
    from netstack.header import icmpv4
    from netstack.header.numbers import IPPROTO_ICMP
    from netstack.stack import parse_address

    for target in (V4, "10.30.30.99"):
        route = host.find_route(parse_address(target))
        host.send(route, IPPROTO_ICMP, icmpv4.echo_request(7, 1, b"olm demo").build())
        await asyncio.sleep(0.05)

    await service.stop()
    tcp_server.close()
    udp_t.close()
    counters = stack.counters.snapshot()
    say("\nproxy-side counters:")
    for name, value in counters.items():
        if name.startswith(("dns.", "filter.", "udp.", "tcp.", "icmpv4.")):
            say(f"  {name:42} {value}")
    return counters


def main(trace: bool = True) -> int:
    """Entry point of ``olm demo``."""
    asyncio.run(tour(trace=trace))
    return 0
