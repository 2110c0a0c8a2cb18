"""Frontends: where queries come in and replies go out, each turning messages into Requests.

* :class:`StackUdpServer`: DNS over UDP on a netstack endpoint. The stack calls it from its
  receive path with packed addresses; a cache hit is answered before that call returns.
* :class:`KernelUdpServer`: the same on a kernel socket (``loop.create_datagram_endpoint``).
* :func:`tcp_server`: DNS over TCP (RFC 7766) for any listener that hands out asyncio
  reader/writer pairs: netstack's ``start_server`` and asyncio's.

No frontend drops the client's address or the local address: both travel in the Request, for
views and logs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from typing import Any

from netstack.errors import StackError
from netstack.stack import Control, Stack, parse_address
from netstack.transport.udp import UDPEndpoint
from olm.dns.engine import Engine
from olm.dns.request import TCP, UDP, Request
from olm.dns.tcp import Peer, TcpServer

__all__ = ["KernelUdpServer", "StackUdpServer", "tcp_server"]

log = logging.getLogger("olm.dns")


class StackUdpServer:
    """Serves DNS over UDP on ``host``:``port`` of a netstack Stack.

    Counters (on the engine's node): ``queries.udp``, ``send_error`` (the stack refused a
    reply), ``icmp_error`` (an ICMP error came back about one of our replies),
    ``dropped.closing`` (an answer that found the endpoint closed).
    """

    def __init__(self, engine: Engine, stack: Stack, host: str, port: int = 53) -> None:
        self.engine = engine
        self.counters = engine.counters
        self._queries = engine.counters.child("queries").values
        self.endpoint = UDPEndpoint(stack, self._on_datagram, self._on_error)
        self.endpoint.bind(parse_address(host), port)

    def _on_datagram(self, payload: bytes, src: bytes, port: int, dst: bytes) -> None:
        queries = self._queries
        queries[UDP] = queries.get(UDP, 0) + 1
        out = self.engine.handle(Request(payload, src, port, dst, UDP))
        if out is None:
            return
        if out.__class__ is bytes:
            self._send(out, src, port)
        else:
            self.engine.spawn(self._later(out, src, port))  # type: ignore[arg-type]

    async def _later(
        self, pending: Coroutine[Any, Any, bytes | None], src: bytes, port: int
    ) -> None:
        out = await pending
        if out is not None:
            self._send(out, src, port)

    def _send(self, data: bytes, addr: bytes, port: int) -> None:
        endpoint = self.endpoint
        if endpoint.closed:
            self.counters.inc("dropped.closing")
            return
        try:
            endpoint.sendto(data, addr, port)
        except StackError as exc:
            self.counters.inc("send_error")
            log.debug("could not send a reply: %s", exc)

    def _on_error(self, control: Control, remote: bytes, port: int) -> None:
        self.counters.inc("icmp_error")

    def close(self) -> None:
        """Stop receiving; replies still on their way are dropped and counted."""
        self.endpoint.close()


def _packed(host: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)


class KernelUdpServer(asyncio.DatagramProtocol):
    """Serves DNS over UDP on a kernel socket: the protocol for ``create_datagram_endpoint``.

    The local address is the one the socket is bound to (the wildcard when bound to one).
    Counters as :class:`StackUdpServer`.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.counters = engine.counters
        self._queries = engine.counters.child("queries").values
        self.transport: asyncio.DatagramTransport | None = None
        self._local = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport replies are sent through, and its local address."""
        # Not an isinstance check: the kernel's selector transport is not a DatagramTransport
        # subclass on Python 3.11, although it has the same methods.
        self.transport = transport  # type: ignore[assignment]
        sockname = transport.get_extra_info("sockname")
        if sockname:
            self._local = _packed(sockname[0])

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Answer one datagram (at once when the chain can)."""
        queries = self._queries
        queries[UDP] = queries.get(UDP, 0) + 1
        try:
            client = _packed(addr[0])
        except (OSError, ValueError, TypeError, IndexError):
            client = b""
        out = self.engine.handle(Request(data, client, addr[1], self._local, UDP))
        if out is None:
            return
        if out.__class__ is bytes:
            self._send(out, addr)
        else:
            self.engine.spawn(self._later(out, addr))  # type: ignore[arg-type]

    async def _later(self, pending: Coroutine[Any, Any, bytes | None], addr: Any) -> None:
        out = await pending
        if out is not None:
            self._send(out, addr)

    def _send(self, data: bytes, addr: Any) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            self.counters.inc("dropped.closing")
            return
        transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        """Count an ICMP error about an earlier reply; there is nothing else to do."""
        self.counters.inc("icmp_error")


def tcp_server(engine: Engine, **limits: Any) -> TcpServer:
    """Return a DNS-over-TCP server answering with ``engine``.

    Its ``handle_connection`` is the callback for a ``start_server``. ``limits`` are those of
    :class:`olm.dns.tcp.TcpServer` (``idle_timeout``, ``message_timeout``, ``max_connections``,
    ``max_inflight``); its counters live under the engine's ``tcp`` node, and each message
    counts in ``queries.tcp``.
    """
    queries = engine.counters.child("queries").values

    def message(data: bytes, peer: Peer) -> bytes | Coroutine[Any, Any, bytes | None] | None:
        queries[TCP] = queries.get(TCP, 0) + 1
        return engine.handle(Request(data, peer.client, peer.port, peer.local, TCP))

    return TcpServer(message, counters=engine.counters, **limits)
