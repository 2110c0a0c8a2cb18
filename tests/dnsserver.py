"""A small authoritative DNS server for tests: UDP and TCP on loopback, a fixed zone.

    python tests/dnsserver.py --port 5300 [--host 127.0.0.1] [--a 192.0.2.10]
        [--mode normal|silent|spoof-first] [--truncate-udp] [--ttl 60] [--negative-ttl 60]
        [--delay SECONDS] [--log-queries]

Prints ``dnsserver: ready udp+tcp HOST PORT`` once listening. Modes: ``silent`` never answers
(an upstream that times out); ``spoof-first`` sends a reply with a wrong ID (and one from the
right ID but the wrong question) before the real one, as an off-path attacker would
(RFC 5452). ``--truncate-udp`` answers every UDP query with TC=1 and no records, so the client
must retry over TCP. ``--ttl`` is the TTL of the zone's records; NXDOMAIN answers carry the
zone's SOA with TTL and MINIMUM ``--negative-ttl`` (RFC 2308). ``--delay`` holds every answer
that long. ``--log-queries`` prints ``query NAME TYPE udp|tcp`` for each query received.
"""

from __future__ import annotations

import argparse
import asyncio
import struct

from dnslib import AAAA, QTYPE, RR, SOA, TXT, A, DNSRecord

ZONE_TXT = ["x" * 250 for _ in range(6)]  # 1500+ bytes of TXT: larger than 1232 and 512


def answer(query: DNSRecord, a_addr: str, ttl: int = 60, negative_ttl: int = 60) -> DNSRecord:
    """Answer ``query`` from the fixed test zone (NXDOMAIN with the SOA outside it)."""
    reply = query.reply()
    q = query.q
    name = str(q.qname).lower().rstrip(".")
    qtype = QTYPE[q.qtype]
    # Any name with a label "any" (x.any.example.test, host.any.corp.internal) exists too.
    if name in ("example.test", "host.example.test", "www.example.test") or ".any." in (
        f".{name}."
    ):
        if qtype in ("A", "ANY"):
            reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(a_addr), ttl=ttl))
        if qtype in ("AAAA", "ANY"):
            reply.add_answer(RR(q.qname, QTYPE.AAAA, rdata=AAAA("2001:db8::10"), ttl=ttl))
    elif name == "big.example.test":
        if qtype in ("TXT", "ANY"):
            for text in ZONE_TXT:
                reply.add_answer(RR(q.qname, QTYPE.TXT, rdata=TXT(text), ttl=ttl))
    else:
        reply.header.rcode = 3  # NXDOMAIN
        times = (1, 3600, 600, 86400, negative_ttl)
        soa = SOA("ns.example.test.", "admin.example.test.", times)
        reply.add_auth(RR("example.test.", QTYPE.SOA, rdata=soa, ttl=negative_ttl))
    return reply


def log_query(args: argparse.Namespace, query: DNSRecord, transport: str) -> None:
    if args.log_queries:
        print(f"query {str(query.q.qname).lower()} {QTYPE[query.q.qtype]} {transport}", flush=True)


class Udp(asyncio.DatagramProtocol):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return
        log_query(self.args, query, "udp")
        if self.args.mode == "silent":
            return
        if self.args.delay:
            loop = asyncio.get_running_loop()
            loop.call_later(self.args.delay, self.respond, query, addr)
        else:
            self.respond(query, addr)

    def respond(self, query: DNSRecord, addr: tuple[str, int]) -> None:
        reply = answer(query, self.args.a, self.args.ttl, self.args.negative_ttl)
        if self.args.mode == "spoof-first":
            wrong_id = DNSRecord.parse(bytes(reply.pack()))
            wrong_id.header.id = (query.header.id + 1) & 0xFFFF
            wrong_id.rr = [RR(query.q.qname, QTYPE.A, rdata=A("203.0.113.66"), ttl=60)]
            self.transport.sendto(bytes(wrong_id.pack()), addr)  # type: ignore[attr-defined]
        if self.args.truncate_udp:
            reply = query.reply()
            reply.header.tc = 1
        self.transport.sendto(bytes(reply.pack()), addr)  # type: ignore[attr-defined]


async def tcp_client(
    args: argparse.Namespace, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            query = DNSRecord.parse(await reader.readexactly(size))
            log_query(args, query, "tcp")
            if args.mode == "silent":
                continue
            if args.delay:
                await asyncio.sleep(args.delay)
            reply = bytes(answer(query, args.a, args.ttl, args.negative_ttl).pack())
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5300)
    parser.add_argument("--a", default="192.0.2.10", help="the A record of example.test")
    parser.add_argument("--mode", choices=["normal", "silent", "spoof-first"], default="normal")
    parser.add_argument("--truncate-udp", action="store_true")
    parser.add_argument("--ttl", type=int, default=60)
    parser.add_argument("--negative-ttl", type=int, default=60)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--log-queries", action="store_true")
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: Udp(args), local_addr=(args.host, args.port))
    server = await asyncio.start_server(lambda r, w: tcp_client(args, r, w), args.host, args.port)
    print(f"dnsserver: ready udp+tcp {args.host} {args.port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
