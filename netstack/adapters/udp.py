"""UDPSocket: a UDP socket on the stack with ``bind``/``connect``/``sendto`` and awaitable reads.

Received datagrams wait in a bounded queue (``StackOptions.udp_receive_queue``; what does not
fit is dropped and counted as ``udp.receive_queue_full``). A Future exists only while a reader
is actually waiting, so a busy socket costs no asyncio object per datagram.
"""

from __future__ import annotations

import asyncio
import errno
from collections import deque
from types import TracebackType

from netstack.adapters.address import Address, pack_address, unpack_address
from netstack.adapters.errors import control_error, os_error, stack_error
from netstack.addresses import format_address
from netstack.errors import StackError
from netstack.protocols import Control
from netstack.stack import Stack
from netstack.transport.udp import UDPEndpoint

__all__ = ["UDPSocket"]


class UDPSocket:
    """A UDP socket on the stack with awaitable receive."""

    def __init__(self, stack: Stack, *, queue_limit: int | None = None) -> None:
        self.stack = stack
        self._endpoint = UDPEndpoint(stack, self._on_datagram, self._on_error)
        self._queue: deque[tuple[bytes, Address]] = deque()
        self._limit = queue_limit if queue_limit is not None else stack.options.udp_receive_queue
        self._waiter: asyncio.Future[tuple[bytes, Address]] | None = None
        self._error: OSError | None = None
        self._counters = stack.udp.counters

    # -- setup -----------------------------------------------------------------------------

    def bind(self, address: Address) -> None:
        """Bind to ``(host, port)``; host "" or "0.0.0.0" (or "::") means every address."""
        addr, port = pack_address(address)
        try:
            self._endpoint.bind(addr, port)
        except StackError as exc:
            raise stack_error(exc) from exc

    def connect(self, address: Address) -> None:
        """Fix the peer: ``send`` goes to it and only its datagrams are received."""
        addr, port = pack_address(address)
        try:
            self._endpoint.connect(addr, port)
        except StackError as exc:
            raise stack_error(exc) from exc

    def getsockname(self) -> Address:
        """Return the bound ``(host, port)``."""
        ep = self._endpoint
        if ep.local_addr is None:
            return ("0.0.0.0", 0)
        return unpack_address(ep.local_addr, ep.local_port)

    def getpeername(self) -> Address:
        """Return the connected peer's ``(host, port)``."""
        ep = self._endpoint
        if ep.remote_addr is None:
            raise os_error(errno.ENOTCONN, "socket is not connected")
        return unpack_address(ep.remote_addr, ep.remote_port)

    # -- data ------------------------------------------------------------------------------

    def sendto(self, data: bytes, address: Address) -> None:
        """Send one datagram to ``address``."""
        addr, port = pack_address(address)
        try:
            self._endpoint.sendto(bytes(data), addr, port)
        except StackError as exc:
            raise stack_error(exc) from exc

    def send(self, data: bytes) -> None:
        """Send one datagram to the connected peer."""
        try:
            self._endpoint.sendto(bytes(data))
        except StackError as exc:
            raise stack_error(exc) from exc

    async def recvfrom(self) -> tuple[bytes, Address]:
        """Wait for the next datagram; return it with the sender's ``(host, port)``."""
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc
        if self._queue:
            return self._queue.popleft()
        if self._endpoint.closed:
            raise os_error(errno.EBADF, "socket is closed")
        if self._waiter is not None and not self._waiter.done():
            # As asyncio.StreamReader: one reader at a time, or the first would wait forever.
            raise RuntimeError("recvfrom() is already waiting for a datagram on this socket")
        waiter: asyncio.Future[tuple[bytes, Address]] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            return await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    async def recv(self) -> bytes:
        """Wait for the next datagram and return its payload."""
        data, _ = await self.recvfrom()
        return data

    @property
    def queued(self) -> int:
        """Number of datagrams waiting to be read."""
        return len(self._queue)

    def _on_datagram(self, payload: bytes, src: bytes, port: int, dst: bytes) -> None:
        # Per datagram: unpack_address written out, one call fewer (format_address is cached).
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result((payload, (format_address(src), port)))
            return
        if len(self._queue) >= self._limit:
            self._counters.inc("receive_queue_full")
            return
        self._queue.append((payload, (format_address(src), port)))

    def _on_error(self, control: Control, remote: bytes, port: int) -> None:
        if self._endpoint.remote_addr is None:
            # Like Linux without IP_RECVERR: an unconnected socket does not see ICMP errors,
            # which anyone can forge about any of its datagrams (RFC 1122 4.1.3.3 leaves the
            # reporting to the application interface).
            self._counters.inc("control_ignored_unconnected")
            return
        exc = control_error(control)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_exception(exc)
        else:
            self._error = exc

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        """Release the port; a pending ``recvfrom`` fails with EBADF."""
        self._endpoint.close()
        self._queue.clear()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(os_error(errno.EBADF, "socket is closed"))

    async def __aenter__(self) -> UDPSocket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
