"""Frontends: where queries come in and replies go out, each turning messages into Requests.

* :class:`StackUdpServer`: DNS over UDP on a netstack endpoint. The stack calls it from its
  receive path with packed addresses; a cache hit is answered before that call returns.
* :class:`KernelUdpServer`: the same on a kernel socket, drained in batches.
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


class KernelUdpServer:
    """Serves DNS over UDP on a kernel socket bound to ``host``:``port``.

    The socket is watched with ``add_reader`` and drained when readable, up to ``batch``
    datagrams a wake-up, as the TUN endpoint is: a burst costs one event-loop turn, not one per
    query (asyncio's datagram transport reads one datagram a turn). Replies are sent at once
    with ``sendto``; a reply the kernel will not take (its buffer full) is dropped and counted,
    as the network would drop it. The local address is the bound one (the wildcard when bound
    to one). Counters as :class:`StackUdpServer`, plus ``send_error``.
    """

    def __init__(self, engine: Engine, host: str, port: int, *, batch: int = 64) -> None:
        self.engine = engine
        self.counters = engine.counters
        self._queries = engine.counters.child("queries").values
        self.batch = batch
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setblocking(False)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self._local = _packed(self.address[0])
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self.closed = False

    def _readable(self) -> None:
        """Answer every datagram waiting, up to ``batch`` (at once when the chain can)."""
        sock, engine, local = self.sock, self.engine, self._local
        queries = self._queries
        for _ in range(self.batch):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error about an earlier reply (Linux reports it here)
                self.counters.inc("icmp_error")
                continue
            queries[UDP] = queries.get(UDP, 0) + 1
            out = engine.handle(Request(data, _packed(addr[0]), addr[1], local, UDP))
            if out is None:
                continue
            if out.__class__ is bytes:
                self._send(out, addr)
            else:
                engine.spawn(self._later(out, addr))  # type: ignore[arg-type]

    async def _later(self, pending: Coroutine[Any, Any, bytes | None], addr: Any) -> None:
        out = await pending
        if out is not None:
            self._send(out, addr)

    def _send(self, data: bytes, addr: Any) -> None:
        if self.closed:
            self.counters.inc("dropped.closing")
            return
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            self.counters.inc("send_error")
            log.debug("could not send a reply: %s", exc)

    def close(self) -> None:
        """Stop receiving and close the socket; answers still on their way are dropped."""
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


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
