"""Fake UDP resolvers on loopback for the engine's tests, and a bounded asyncio runner.

A :class:`FakeUpstream`'s replies, and their delays, are chosen by a function of the query
(a :data:`Behaviour`): ``answers_with("192.0.2.1", delay=0.1)``, ``silent``, ``refusing``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from olm.dns.upstream import Upstream

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
Behaviour = Callable[[DNSRecord], list[tuple[float, bytes]]]


def run(coro: Coroutine[Any, Any, T], limit: float = 20.0) -> T:
    """Run ``coro`` in a fresh event loop; fail it after ``limit`` seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(limit):
            return await coro

    return asyncio.run(bounded())


def answer(query: DNSRecord, ip: str = "192.0.2.1", *, qid: int | None = None) -> bytes:
    """A reply to ``query`` with one A record (TTL 60), under ``qid`` if given."""
    reply = query.reply()
    if qid is not None:
        reply.header.id = qid
    reply.add_answer(RR(query.q.qname, rdata=A(ip), ttl=60))
    packed: bytes = reply.pack()
    return packed


def answers_with(ip: str, delay: float = 0.0) -> Behaviour:
    """Answer every query with ``ip`` after ``delay`` seconds."""
    return lambda q: [(delay, answer(q, ip))]


def silent(q: DNSRecord) -> list[tuple[float, bytes]]:
    """Never answer."""
    return []


def refusing(q: DNSRecord) -> list[tuple[float, bytes]]:
    """Answer REFUSED at once."""
    reply = q.reply()
    reply.header.rcode = RCODE.REFUSED
    return [(0, reply.pack())]


class FakeUpstream(asyncio.DatagramProtocol):
    """A UDP resolver on loopback whose replies (and their delays) a function chooses."""

    def __init__(self, behave: Behaviour) -> None:
        self.behave = behave
        self.seen: list[DNSRecord] = []
        self.sources: list[Any] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = DNSRecord.parse(data)
        self.seen.append(query)
        self.sources.append(addr)
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        for delay, reply in self.behave(query):
            loop.call_later(delay, self.transport.sendto, reply, addr)

    def asked(self, name: str) -> int:
        """How many queries for ``name`` arrived."""
        return sum(1 for q in self.seen if str(q.q.qname) == name.rstrip(".") + ".")

    def probed(self) -> int:
        """How many health probes (``. IN NS``) arrived."""
        return sum(1 for q in self.seen if str(q.q.qname) == "." and q.q.qtype == QTYPE.NS)


async def start_fake(behave: Behaviour, port: int = 0) -> tuple[FakeUpstream, Upstream]:
    """Start a fake resolver on 127.0.0.1 (``port`` 0: any); return it and its Upstream."""
    loop = asyncio.get_running_loop()
    transport, fake = await loop.create_datagram_endpoint(
        lambda: FakeUpstream(behave), local_addr=(LOOPBACK, port)
    )
    return fake, Upstream(LOOPBACK, transport.get_extra_info("sockname")[1])
