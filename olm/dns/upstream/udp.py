"""DNS over UDP to one upstream, from a pool of connected sockets on random ports.

As unbound's outgoing-range: sockets are opened ahead of need, each connected to the upstream
(so the kernel takes only datagrams from its address and port, RFC 5452 section 9.1) and bound
by the kernel to a random ephemeral port (RFC 6056). A try takes an idle socket chosen at random
and a fresh random ID; one socket carries one query at a time. A socket is retired after
``max_uses`` queries or after a try that timed out (a late reply must never meet the next query
on that port), so the ports in use keep moving. Each socket is watched with ``add_reader``: a
reply is matched and checked inside the callback, with no Task per query.

A truncated answer (TC=1) is asked again over TCP (RFC 7766 section 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from typing import TYPE_CHECKING, Final

from netstack.counters import Counters
from olm.dns.answer import Answer
from olm.dns.upstream.address import Upstream
from olm.dns.upstream.base import Query, new_id
from olm.dns.upstream.tcp import TcpTransport
from olm.dns.wire import WireError

if TYPE_CHECKING:
    from olm.dns.upstream.bootstrap import Bootstrap

__all__ = ["UdpTransport"]

_RECV_SIZE: Final = 65535


class _Slot:
    """One pooled socket and the one query it carries now."""

    __slots__ = ("fd", "qid", "query", "sock", "uses", "waiter")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.uses = 0
        self.qid = 0
        self.query: Query | None = None
        self.waiter: asyncio.Future[Answer] | None = None


class UdpTransport:
    """UDP exchanges with one upstream, from a pool of sockets; TCP when an answer is cut.

    Counters (on the node given): ``sockets_opened``, ``sockets_retired``,
    ``spoofed_ignored`` (wrong ID, QR or question), ``malformed_ignored`` (too short, or a
    broken layout), ``late_ignored`` (a reply for no query in progress), ``tc_retry_tcp``.
    """

    def __init__(
        self,
        upstream: Upstream,
        counters: Counters,
        *,
        pool_size: int = 128,
        max_uses: int = 100,
        tcp: TcpTransport | None = None,
        bootstrap: Bootstrap | None = None,
    ) -> None:
        self.upstream = upstream
        self.bootstrap = bootstrap
        # Where the sockets connect: the host itself, or (a name) its bootstrap address.
        self._target: tuple[str, int] | None = (
            (upstream.host, upstream.port) if upstream.is_ip else None
        )
        self.counters = counters
        self.pool_size = pool_size
        self.max_uses = max_uses
        self.tcp = tcp if tcp is not None else TcpTransport(upstream, counters)
        self._idle: list[_Slot] = []
        self._busy = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- the pool ------------------------------------------------------------------------

    def _open(self) -> _Slot:
        target = self._target
        assert target is not None
        sock = socket.socket(
            socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_DGRAM
        )
        try:
            sock.setblocking(False)
            # Connecting binds the socket to a random ephemeral port chosen by the kernel.
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        slot = _Slot(sock)
        assert self._loop is not None
        self._loop.add_reader(slot.fd, self._readable, slot)
        self.counters.inc("sockets_opened")
        return slot

    def _retire(self, slot: _Slot) -> None:
        assert self._loop is not None
        self._loop.remove_reader(slot.fd)
        slot.sock.close()
        self.counters.inc("sockets_retired")

    def _acquire(self) -> _Slot:
        idle = self._idle
        # Grow to the pool size before reusing: then each query leaves from a port chosen at
        # random among ``pool_size``, on top of its random ID.
        if idle and len(idle) + self._busy >= self.pool_size:
            # A random idle socket: the port of the next query is not predictable either.
            i = secrets.randbelow(len(idle))
            idle[i], idle[-1] = idle[-1], idle[i]
            slot = idle.pop()
        else:
            slot = self._open()
        self._busy += 1
        return slot

    def _release(self, slot: _Slot, reusable: bool) -> None:
        self._busy -= 1
        slot.query = slot.waiter = None
        if (
            reusable
            and not self._closed
            and slot.uses < self.max_uses
            and len(self._idle) < self.pool_size
        ):
            self._idle.append(slot)
        else:
            self._retire(slot)

    # -- one exchange --------------------------------------------------------------------

    async def exchange(self, query: Query, timeout: float) -> Answer:
        """Ask once over UDP, and over TCP if the answer is truncated."""
        if self._closed:
            raise ConnectionError("transport closed")
        loop = self._loop = asyncio.get_running_loop()
        if self._target is None:
            if self.bootstrap is None:
                raise OSError(f"{self.upstream}: a host name needs bootstrap resolvers")
            address = (await self.bootstrap.lookup(self.upstream.host))[0]
            self._target = self.tcp.target = (address, self.upstream.port)
        slot = self._acquire()
        slot.uses += 1
        slot.qid = qid = new_id()
        slot.query = query
        waiter: asyncio.Future[Answer] = loop.create_future()
        slot.waiter = waiter
        reusable = False
        timer = loop.call_later(query.timeout(timeout, loop.time()), _expire, waiter)
        try:
            slot.sock.send(query.wire(qid))
            if query.trace is not None and query.trace.detail:
                port = slot.sock.getsockname()[1]
                query.trace.event("upstream", f"udp sent from port {port}")
            answer = await waiter
            reusable = True
        finally:
            timer.cancel()
            self._release(slot, reusable)
        if answer.truncated and query.tcp_fallback:
            self.counters.inc("tc_retry_tcp")
            if query.trace is not None and query.trace.detail:
                query.trace.event("upstream", "answer truncated (TC=1): retry over TCP")
            answer = await self.tcp.exchange(query, timeout)
        return answer

    def _readable(self, slot: _Slot) -> None:
        """Read one datagram waiting on ``slot``: the first good reply ends its query.

        One read per readiness event: the loop calls again while more are waiting (epoll is
        level-triggered), and the usual case, one reply, costs no failed read.
        """
        try:
            data = slot.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # An ICMP error on the connected socket (port unreachable...): fail at once.
            waiter = slot.waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            return
        values = self.counters.values
        waiter = slot.waiter
        query = slot.query
        if waiter is None or query is None or waiter.done():
            values["late_ignored"] = values.get("late_ignored", 0) + 1
            return
        if len(data) < 12:
            values["malformed_ignored"] = values.get("malformed_ignored", 0) + 1
            return
        if not query.matches(data, slot.qid):
            values["spoofed_ignored"] = values.get("spoofed_ignored", 0) + 1
            return
        try:
            answer = query.answer(data)
        except WireError:
            values["malformed_ignored"] = values.get("malformed_ignored", 0) + 1
            return
        waiter.set_result(answer)

    def close(self) -> None:
        """Close the idle sockets now and the busy ones when their query ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for slot in idle:
            self._retire(slot)
        self.tcp.close()

    @property
    def sockets(self) -> int:
        """Sockets open now, idle or busy."""
        return len(self._idle) + self._busy


def _expire(waiter: asyncio.Future[Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
    with contextlib.suppress(BaseException):
        waiter.exception()  # seen: a waiter nobody awaits any more must not be logged
