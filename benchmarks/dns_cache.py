"""The DNS cache in memory: the cost of a hit through the whole stack, and of an entry.

    .venv/bin/python benchmarks/dns_cache.py hit [--count 100000] [--rounds 5] [--profile]
    .venv/bin/python benchmarks/dns_cache.py miss [--count 20000] [--profile]
    .venv/bin/python benchmarks/dns_cache.py memory [--entries 100000]

``hit``: a Stack on an in-memory channel link with the DNS engine on 10.0.0.2:53 (the same
objects ``olm up`` runs: StackUdpServer, Engine, the chain, the cache), its cache filled with a
hundred names. Each round injects ``count`` query packets (the hundred names over and over,
IPv4/UDP, with EDNS) and drains the replies. Measured in the same run, on the same packets:

* the stack's UDP echo (``create_datagram_endpoint``): what any UDP service costs here;
* the bare responder of ``benchmarks/bare_tun_dns.py`` (no stack, no cache: patches the query
  into an answer), the floor for a Python DNS answer.

``miss``: the same engine with every query a new name, forwarded over the host's UDP sockets
to ``benchmarks/dns_upstream.py`` on 127.0.0.1 (started and stopped here), 100 queries
outstanding: the cost of a miss (forward, learn, insert, render) without the TUN, for profiles.

``memory``: fills a cache with ``entries`` answers of two A records (names of 20-30 octets) and
reports the bytes per entry that tracemalloc sees (what ``ENTRY_OVERHEAD`` in olm/dns/cache.py
estimates) and the process's RSS before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bare_tun_dns import answer as bare_answer
from dnslib import EDNS0, QTYPE, RR, A, DNSRecord

from netstack.adapters import create_datagram_endpoint
from netstack.clock import AsyncioClock, ManualClock
from netstack.counters import Counters
from netstack.header.ipv4 import IPv4Header
from netstack.header.udp import build_udp
from netstack.link.channel import ChannelEndpoint
from netstack.stack import Stack, parse_address
from olm.config import Settings
from olm.dns.answer import learn
from olm.dns.cache import Cache, CacheSettings
from olm.dns.engine import Engine
from olm.dns.frontends import StackUdpServer
from olm.dns.pipeline import Pipeline
from olm.dns.request import Request

HERE = Path(__file__).resolve().parent
CLIENT, SERVER = "10.0.0.1", "10.0.0.2"
NAMES = [f"host{i}.example.test" for i in range(100)]


def _query(name: str) -> bytes:
    record = DNSRecord.question(name, "A")
    record.add_ar(EDNS0(udp_len=1232))
    return bytes(record.pack())


def _answer_wire(name: str, records: int = 1) -> bytes:
    record = DNSRecord.question(name, "A")
    reply = record.reply()
    for i in range(records):
        reply.add_answer(RR(name, QTYPE.A, rdata=A(f"192.0.2.{i + 1}"), ttl=3600))
    return bytes(reply.pack())


def _packet(payload: bytes, port: int = 40000, dport: int = 53) -> bytes:
    s, d = parse_address(CLIENT), parse_address(SERVER)
    return IPv4Header(src=s, dst=d, protocol=17).pack(build_udp(s, d, port, dport, payload))


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


def _stack(count: int) -> tuple[Stack, ChannelEndpoint]:
    stack = Stack(ManualClock(), seed=1)
    link = ChannelEndpoint(mtu=1500, capacity=count + 16)
    stack.create_nic("eth0", link)
    stack.add_address("eth0", SERVER)
    stack.add_route("0.0.0.0/0", "eth0")
    return stack, link


def _timed(link: ChannelEndpoint, packets: list[bytes]) -> float:
    t0 = time.perf_counter()
    inject = link.inject
    for pkt in packets:
        inject(pkt)
    out = link.drain()
    elapsed = time.perf_counter() - t0
    assert len(out) == len(packets), (len(out), len(packets))
    return elapsed / len(packets)


def hit(count: int, rounds: int, profile: bool) -> None:
    """Time per cache hit through the stack, beside the stack's echo and the bare responder."""

    async def run() -> None:
        stack, link = _stack(count)
        settings = Settings(upstreams=["127.0.0.1:9"])
        counters = stack.counters.child("dns")
        pipeline = Pipeline(settings, stack.clock, counters)
        engine = Engine(pipeline.build(settings), stack.clock, counters, pipeline.gate)
        StackUdpServer(engine, stack, SERVER, 53)
        for name in NAMES:
            key = Request(_query(name)).key
            pipeline.cache.put(key, learn(_answer_wire(name)), stack.clock.now())
        dns_packets = [
            _packet(_query(NAMES[i % len(NAMES)]), 40000 + i % 1000) for i in range(count)
        ]
        echo_stack, echo_link = _stack(count)
        await create_datagram_endpoint(echo_stack, _Echo, local_addr=(SERVER, 7))
        echo_packets = [_packet(p[28:], 40000, 7) for p in dns_packets]

        times: dict[str, list[float]] = {"cache hit": [], "UDP echo": [], "bare responder": []}
        profiler = cProfile.Profile() if profile else None
        for _ in range(rounds):
            if profiler:
                profiler.enable()
            times["cache hit"].append(_timed(link, dns_packets))
            if profiler:
                profiler.disable()
            times["UDP echo"].append(_timed(echo_link, echo_packets))
            t0 = time.perf_counter()
            for pkt in dns_packets:
                bare_answer(pkt)
            times["bare responder"].append((time.perf_counter() - t0) / count)
        hits = counters.get("cache.hit")
        assert hits == count * rounds, (hits, counters.snapshot())
        base = statistics.median(times["bare responder"])
        for name, values in times.items():
            median = statistics.median(values)
            print(
                f"{name:15} {median * 1e6:6.2f} us/query  {1 / median:10,.0f} q/s  "
                f"({median / base:.1f}x bare)"
            )
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(18)

    asyncio.run(run())


def miss(count: int, profile: bool) -> None:
    """Queries per second of misses through the stack and engine to a loopback upstream."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "dns_upstream.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert upstream.stdout is not None and "ready" in upstream.stdout.readline()
        asyncio.run(_miss(count, port, profile))
    finally:
        upstream.terminate()
        upstream.wait(10)


async def _miss(count: int, port: int, profile: bool) -> None:
    stack = Stack(AsyncioClock(), seed=1)
    link = ChannelEndpoint(mtu=1500, capacity=count + 16)
    stack.create_nic("eth0", link)
    stack.add_address("eth0", SERVER)
    stack.add_route("0.0.0.0/0", "eth0")
    settings = Settings(upstreams=[f"127.0.0.1:{port}"], cache=CacheSettings(size=count * 2))
    counters = stack.counters.child("dns")
    pipeline = Pipeline(settings, stack.clock, counters)
    engine = Engine(pipeline.build(settings), stack.clock, counters, pipeline.gate)
    StackUdpServer(engine, stack, SERVER, 53)
    packets = [_packet(_query(f"q{i:07d}.bench.test"), 40000 + i % 1000) for i in range(count)]
    profiler = cProfile.Profile() if profile else None
    window, sent, answered = 100, 0, 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    while answered < count:
        while sent < count and sent - answered < window:
            link.inject(packets[sent])
            sent += 1
        await asyncio.sleep(0)
        answered += len(link.drain())
    if profiler:
        profiler.disable()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(
        f"miss: {cpu / count * 1e6:.1f} us CPU/query in this process (the upstream's apart), "
        f"{count / elapsed:,.0f} q/s"
    )
    print({k: v for k, v in counters.snapshot().items() if "cache" in k or "upstream" in k})
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    pipeline.close()


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory(entries: int) -> None:
    """Bytes per cache entry (tracemalloc) and RSS with the cache full."""
    settings = CacheSettings(size=entries, max_bytes=2**40)
    names = [f"q{i:07d}.bench.example.test" for i in range(entries)]
    rss0 = _rss_kib()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = Cache(settings, Counters())
    for name in names:
        # Everything an entry keeps is made here, under tracemalloc; the rest is freed.
        cache.put(Request(_query(name)).key, learn(_answer_wire(name, 2)), 0.0)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_entry = (after - before) / entries
    print(f"{entries} entries: {per_entry:.0f} bytes per entry (tracemalloc: all an entry keeps)")
    print(f"the cache's own estimate (max_bytes accounting): {cache.bytes / entries:.0f} bytes")
    print(f"RSS: {rss0 / 1024:.1f} MiB before filling, {_rss_kib() / 1024:.1f} MiB full")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("mode", choices=["hit", "miss", "memory"])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.mode == "hit":
        hit(args.count, args.rounds, args.profile)
    elif args.mode == "miss":
        miss(args.count, args.profile)
    else:
        memory(args.entries)


if __name__ == "__main__":
    main()
