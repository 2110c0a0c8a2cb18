"""The socket-like API over the stack (gVisor's gonet, shaped for asyncio).

TCP: :func:`start_server` and :func:`open_connection` work like their asyncio namesakes and
give the standard library's own ``StreamReader``/``StreamWriter`` (netstack/transport/tcp).

Two ways to use UDP:

* :class:`UDPSocket`: ``bind``/``connect``/``sendto`` and awaitable ``recvfrom``, with a bounded
  receive queue. A Future exists only while a reader is actually waiting.
* :func:`create_datagram_endpoint`: the callback form of ``loop.create_datagram_endpoint``; the
  stack calls ``protocol.datagram_received`` directly from its receive path.

Addresses are ``(host, port)`` tuples of text and int for both families, as the stack is not
bound by the kernel's four-tuple for IPv6.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from netstack.errors import StackError
from netstack.ports import unspecified
from netstack.stack import Control, Stack, format_address, parse_address
from netstack.transport.tcp.streams import Server, open_connection, start_server
from netstack.transport.udp import UDPEndpoint

__all__ = [
    "Server",
    "StackDatagramTransport",
    "UDPSocket",
    "create_datagram_endpoint",
    "open_connection",
    "start_server",
]

Address = tuple[str, int]
_P = TypeVar("_P", bound=asyncio.BaseProtocol)

_ERRNO = {
    Control.PORT_UNREACHABLE: errno.ECONNREFUSED,
    Control.PROTOCOL_UNREACHABLE: errno.ECONNREFUSED,
    Control.NET_UNREACHABLE: errno.ENETUNREACH,
    Control.HOST_UNREACHABLE: errno.EHOSTUNREACH,
    Control.ADMIN_PROHIBITED: errno.EHOSTUNREACH,
    Control.TIME_EXCEEDED: errno.EHOSTUNREACH,
    Control.PACKET_TOO_BIG: errno.EMSGSIZE,
    Control.PARAMETER_PROBLEM: errno.EPROTO,
}


def control_error(control: Control) -> OSError:
    """Return the OSError (e.g. ConnectionRefusedError) a socket reports for an ICMP error."""
    code = _ERRNO[control]
    return OSError(code, os.strerror(code))  # OSError picks the subclass from errno


def to_endpoint(address: Address) -> tuple[bytes, int]:
    """Convert a ``(host, port)`` pair to the stack's packed form."""
    host, port = address[0], address[1]
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad port {port!r}")
    if host in ("", "0.0.0.0"):
        return unspecified(4), port
    if host == "::":
        return unspecified(16), port
    return parse_address(host), port


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
        addr, port = to_endpoint(address)
        try:
            self._endpoint.bind(addr, port)
        except StackError as exc:
            raise _os_error(exc) from exc

    def connect(self, address: Address) -> None:
        """Fix the peer: ``send`` goes to it and only its datagrams are received."""
        addr, port = to_endpoint(address)
        try:
            self._endpoint.connect(addr, port)
        except StackError as exc:
            raise _os_error(exc) from exc

    def getsockname(self) -> Address:
        """Return the bound ``(host, port)``."""
        ep = self._endpoint
        if ep.local_addr is None:
            return ("0.0.0.0", 0)
        return (format_address(ep.local_addr), ep.local_port)

    def getpeername(self) -> Address:
        """Return the connected peer's ``(host, port)``."""
        ep = self._endpoint
        if ep.remote_addr is None:
            raise OSError(errno.ENOTCONN, "socket is not connected")
        return (format_address(ep.remote_addr), ep.remote_port)

    # -- data ------------------------------------------------------------------------------

    def sendto(self, data: bytes, address: Address) -> None:
        """Send one datagram to ``address``."""
        addr, port = to_endpoint(address)
        try:
            self._endpoint.sendto(bytes(data), addr, port)
        except StackError as exc:
            raise _os_error(exc) from exc

    def send(self, data: bytes) -> None:
        """Send one datagram to the connected peer."""
        try:
            self._endpoint.sendto(bytes(data))
        except StackError as exc:
            raise _os_error(exc) from exc

    async def recvfrom(self) -> tuple[bytes, Address]:
        """Wait for the next datagram; return it with the sender's ``(host, port)``."""
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc
        if self._queue:
            return self._queue.popleft()
        if self._endpoint.closed:
            raise OSError(errno.EBADF, "socket is closed")
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
        ep = self._endpoint
        if ep.remote_addr is None:
            # Like Linux without IP_RECVERR: unconnected sockets do not see ICMP errors.
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
            waiter.set_exception(OSError(errno.EBADF, "socket is closed"))

    async def __aenter__(self) -> UDPSocket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _os_error(exc: StackError) -> OSError:
    """Translate a stack refusal into the OSError a socket would raise."""
    from netstack.errors import MessageTooLongError
    from netstack.ports import PortInUseError, PortsExhaustedError
    from netstack.stack import AddressError, NoRouteError

    if isinstance(exc, MessageTooLongError):
        code = errno.EMSGSIZE
    elif isinstance(exc, PortInUseError):
        code = errno.EADDRINUSE
    elif isinstance(exc, PortsExhaustedError):
        code = errno.EAGAIN
    elif isinstance(exc, NoRouteError):
        code = errno.ENETUNREACH
    elif isinstance(exc, AddressError):
        code = errno.EADDRNOTAVAIL
    else:
        code = errno.EINVAL
    return OSError(code, str(exc))


class StackDatagramTransport(asyncio.DatagramTransport):
    """An ``asyncio.DatagramTransport`` whose datagrams travel through the stack."""

    def __init__(self, stack: Stack, protocol: asyncio.DatagramProtocol) -> None:
        super().__init__()
        self._stack = stack
        self._protocol = protocol
        self._endpoint = UDPEndpoint(stack, self._deliver, self._error)
        self._closing = False

    def _deliver(self, payload: bytes, src: bytes, port: int, dst: bytes) -> None:
        self._protocol.datagram_received(payload, (format_address(src), port))

    def _error(self, control: Control, remote: bytes, port: int) -> None:
        if self._endpoint.remote_addr is None:
            # Like Linux without IP_RECVERR: an unconnected socket does not see ICMP errors,
            # which anyone can forge about any of its datagrams.
            self._stack.udp.counters.inc("control_ignored_unconnected")
            return
        self._protocol.error_received(control_error(control))

    def sendto(self, data: Any, addr: Any = None) -> None:
        """Send one datagram to ``addr`` (or the connected peer)."""
        if self._closing:
            raise OSError(errno.EBADF, "transport is closing")
        try:
            if addr is None:
                self._endpoint.sendto(bytes(data))
            else:
                a, p = to_endpoint(addr)
                self._endpoint.sendto(bytes(data), a, p)
        except StackError as exc:
            self._protocol.error_received(_os_error(exc))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return 'sockname', 'peername' or 'stack' like an asyncio transport."""
        ep = self._endpoint
        if name == "sockname" and ep.local_addr is not None:
            return (format_address(ep.local_addr), ep.local_port)
        if name == "peername" and ep.remote_addr is not None:
            return (format_address(ep.remote_addr), ep.remote_port)
        if name == "stack":
            return self._stack
        return default

    def is_closing(self) -> bool:
        """Tell whether close() was called."""
        return self._closing

    def close(self) -> None:
        """Stop receiving; ``connection_lost(None)`` follows on the next loop iteration."""
        if self._closing:
            return
        self._closing = True
        self._endpoint.close()
        try:
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)
        except RuntimeError:
            self._protocol.connection_lost(None)

    def abort(self) -> None:
        """Close at once: UDP has nothing buffered."""
        self.close()

    def get_write_buffer_size(self) -> int:
        """Return 0: datagrams are handed to the link at once."""
        return 0


async def create_datagram_endpoint(
    stack: Stack,
    protocol_factory: Callable[[], _P],
    local_addr: Address | None = None,
    remote_addr: Address | None = None,
) -> tuple[StackDatagramTransport, _P]:
    """Open a UDP endpoint on the stack, like ``loop.create_datagram_endpoint``."""
    protocol = protocol_factory()
    if not isinstance(protocol, asyncio.DatagramProtocol):
        raise TypeError("protocol_factory must return an asyncio.DatagramProtocol")
    transport = StackDatagramTransport(stack, protocol)
    ep = transport._endpoint
    try:
        if local_addr is not None:
            a, p = to_endpoint(local_addr)
            ep.bind(a, p)
        if remote_addr is not None:
            a, p = to_endpoint(remote_addr)
            ep.connect(a, p)
    except StackError as exc:
        ep.close()
        raise _os_error(exc) from exc
    protocol.connection_made(transport)
    return transport, protocol
