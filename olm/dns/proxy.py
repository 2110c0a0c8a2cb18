"""The DNS proxy: checks each query, asks the upstreams, and answers over UDP or TCP.

:class:`DnsProxy` is transport-agnostic. A UDP server feeds it datagrams through
:meth:`DnsProxy.datagram_protocol` (an ``asyncio.DatagramProtocol`` that works with netstack's
``create_datagram_endpoint`` as with the kernel's ``loop.create_datagram_endpoint``); a TCP
server hands it connections through :meth:`DnsProxy.handle_tcp_connection` (plain asyncio
reader/writer pairs, see :mod:`olm.dns.tcp`).

A query that is rejected by the rules of :mod:`olm.dns.message` or by the in-flight bound is
answered synchronously, without a task; only a query that goes upstream gets one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from dnslib import RCODE

from netstack.counters import Counters
from olm.dns.message import (
    MAX_TCP_MESSAGE,
    Query,
    check_query,
    client_reply,
    error_reply,
    fit_reply,
)
from olm.dns.tcp import TcpServer
from olm.dns.upstream import Resolver, UpstreamFailure

__all__ = ["DnsDatagramProtocol", "DnsProxy"]

log = logging.getLogger(__name__)


class DnsProxy:
    """Answers DNS queries from the upstreams of ``resolver``, within bounds.

    ``max_inflight`` bounds the queries waiting on upstreams across all transports; beyond it
    a query is answered REFUSED at once (RFC 1035 section 4.1.1). Counters (under
    ``counters``): ``queries.udp``, ``queries.tcp``, ``dropped.unreadable``,
    ``dropped.response``, ``formerr``, ``notimp``, ``badvers``, ``refused_inflight``,
    ``servfail``, ``answered``, ``truncated``, ``send_error``, ``icmp_error`` (an ICMP error
    about one of our replies), ``refused_stopping``, ``internal_error``, plus the
    resolver's ``upstream.*`` and the TCP server's ``tcp.*``.
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        max_inflight: int = 256,
        tcp_idle_timeout: float = 10.0,
        tcp_message_timeout: float = 5.0,
        tcp_max_connections: int = 64,
        tcp_max_inflight: int = 16,
        counters: Counters | None = None,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.resolver = resolver
        self.max_inflight = max_inflight
        self.counters = counters if counters is not None else Counters("dns")
        self._queries = self.counters.child("queries")
        self._dropped = self.counters.child("dropped")
        self.inflight = 0
        self.accepting = True  # False while shutting down: new queries get REFUSED
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self.tcp = TcpServer(
            self.handle_tcp_message,
            idle_timeout=tcp_idle_timeout,
            message_timeout=tcp_message_timeout,
            max_connections=tcp_max_connections,
            max_inflight=tcp_max_inflight,
            counters=self.counters,
        )

    # -- the core ------------------------------------------------------------------------

    def _admit(self, data: bytes) -> bytes | Query | None:
        """Apply the message rules and the in-flight bound; count what happened.

        Returns an immediate reply, a query to resolve (already counted as in flight), or
        None for a message dropped without a reply.
        """
        verdict = check_query(data)
        if not isinstance(verdict, Query):
            if verdict.reply is None:
                self._dropped.inc(verdict.reason)
            else:
                self.counters.inc(verdict.reason)
            return verdict.reply
        if not self.accepting:
            self.counters.inc("refused_stopping")
            return bytes(error_reply(verdict, RCODE.REFUSED).pack())
        if self.inflight >= self.max_inflight:
            self.counters.inc("refused_inflight")
            return bytes(error_reply(verdict, RCODE.REFUSED).pack())
        self.inflight += 1
        return verdict

    async def _resolve(self, query: Query, limit: int) -> bytes:
        """Resolve an admitted query and return the reply packed into ``limit`` bytes."""
        try:
            answer = await self.resolver.resolve(query)
            reply = client_reply(query, answer)
            if reply.header.rcode == RCODE.SERVFAIL:
                self.counters.inc("servfail")
        except UpstreamFailure as failure:
            self.counters.inc("servfail")
            log.info("answering SERVFAIL: %s", failure)
            reply = error_reply(query, RCODE.SERVFAIL)
        except Exception:
            # A bug must not leave the client without an answer (RFC 8906: always answer).
            self.counters.inc("internal_error")
            self.counters.inc("servfail")
            log.exception("resolving failed unexpectedly")
            reply = error_reply(query, RCODE.SERVFAIL)
        try:
            data, truncated = fit_reply(reply, limit)
        except Exception:  # dnslib failed to pack what it parsed: never leave the client silent
            self.counters.inc("internal_error")
            log.exception("could not pack a reply")
            data, truncated = fit_reply(error_reply(query, RCODE.SERVFAIL), limit)
        if truncated:
            self.counters.inc("truncated")
        self.counters.inc("answered")
        if log.isEnabledFor(logging.DEBUG):
            q = query.question
            log.debug(
                "answered %s %s (%d bytes%s)",
                q.qname,
                q.qtype,
                len(data),
                ", truncated" if truncated else "",
            )
        return data

    async def handle(self, data: bytes, *, tcp: bool = False) -> bytes | None:
        """Answer one message as received over UDP or TCP; None means no reply is sent."""
        self._queries.inc("tcp" if tcp else "udp")
        admitted = self._admit(data)
        if not isinstance(admitted, Query):
            return admitted
        limit = MAX_TCP_MESSAGE if tcp else admitted.udp_limit
        try:
            return await self._resolve(admitted, limit)
        finally:
            self._release()

    async def handle_tcp_message(self, data: bytes) -> bytes | None:
        """Answer one message received over TCP (the full answer, up to 65535 bytes)."""
        return await self.handle(data, tcp=True)

    def handle_datagram(self, data: bytes, reply: Callable[[bytes], None]) -> None:
        """Answer one UDP datagram: ``reply`` is called with the answer, now or later."""
        self._queries.inc("udp")
        admitted = self._admit(data)
        if admitted is None:
            return
        if isinstance(admitted, bytes):
            reply(admitted)
            return
        task = asyncio.ensure_future(self._resolve_datagram(admitted, reply))
        self._tasks.add(task)
        task.add_done_callback(self._datagram_done)

    async def _resolve_datagram(self, query: Query, reply: Callable[[bytes], None]) -> None:
        data = await self._resolve(query, query.udp_limit)
        try:
            reply(data)
        except OSError as exc:
            self.counters.inc("send_error")
            log.info("could not send a reply: %s", exc)

    def _datagram_done(self, task: asyncio.Task[None]) -> None:
        # Decrement here, not in the coroutine: a task cancelled before it starts never runs
        # its finally clause.
        self._tasks.discard(task)
        self._release()
        if not task.cancelled() and task.exception() is not None:
            self.counters.inc("internal_error")
            log.error("DNS query task failed", exc_info=task.exception())

    # -- transports ----------------------------------------------------------------------

    def datagram_protocol(self) -> DnsDatagramProtocol:
        """Return a new UDP protocol object for this proxy (usable as a protocol factory)."""
        return DnsDatagramProtocol(self)

    async def handle_tcp_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve one DNS-over-TCP connection (the callback for ``start_server``)."""
        await self.tcp.handle_connection(reader, writer)

    def _release(self) -> None:
        """One admitted query is finished; wake :meth:`drain` when none is left."""
        self.inflight -= 1
        if self.inflight == 0:
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()

    async def drain(self, timeout: float) -> bool:
        """Wait until no admitted query is in flight; return False if ``timeout`` ran out."""
        if self.inflight == 0:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Cancel every query in progress and every TCP connection, and wait for them."""
        await self.tcp.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


class DnsDatagramProtocol(asyncio.DatagramProtocol):
    """Serves DNS over UDP: each datagram goes to the proxy, each reply back to its sender."""

    def __init__(self, proxy: DnsProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport replies are sent through."""
        # Not an isinstance check: the kernel's selector transport is not a DatagramTransport
        # subclass on Python 3.11, although it has the same methods.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Hand the datagram to the proxy with a way to answer its sender."""
        transport = self.transport
        if transport is None:
            return

        def reply(answer: bytes) -> None:
            if transport.is_closing():
                self.proxy._dropped.inc("closing")  # the endpoint closed while resolving
            else:
                transport.sendto(answer, addr)

        self.proxy.handle_datagram(data, reply)

    def error_received(self, exc: Exception) -> None:
        """Count an ICMP error about an earlier reply; there is nothing else to do."""
        self.proxy.counters.inc("icmp_error")
