"""asyncio streams over the stack's TCP: ``open_connection`` and ``start_server``.

The reader and writer are the standard library's own ``asyncio.StreamReader`` and
``asyncio.StreamWriter``, driven through ``asyncio.StreamReaderProtocol`` by
:class:`TCPTransport`, an ``asyncio.Transport`` over a :class:`TCPEndpoint`. So application code
written for ``asyncio.open_connection`` runs unchanged:

* ``writer.drain()`` waits while the endpoint's bounded send buffer (plus the transport's small
  overflow) is full: real back-pressure from the peer's window and the congestion window;
* the ``StreamReader`` pausing the transport shrinks the advertised receive window;
* ``writer.write_eof()`` is a TCP half close (FIN after the queued data).

Addresses and errors are those of every adapter (:mod:`netstack.adapters.address`,
:mod:`netstack.adapters.errors`): a refused connection raises ConnectionRefusedError, a port
in use OSError(EADDRINUSE), as with kernel sockets.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from typing import Any

from netstack.adapters.address import Address, is_wildcard, pack_address, unpack_address
from netstack.adapters.errors import os_error, stack_error
from netstack.errors import StackError
from netstack.stack import Stack
from netstack.transport.tcp.endpoint import TCPEndpoint
from netstack.transport.tcp.listener import TCPListener
from netstack.transport.tcp.protocol import TCPProtocol

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]

_DEFAULT_LIMIT = 2**16  # asyncio.streams._DEFAULT_LIMIT

__all__ = ["ClientConnected", "Server", "TCPTransport", "open_connection", "start_server", "tcp_of"]


def tcp_of(stack: Stack) -> TCPProtocol:
    """Return the stack's registered TCP protocol (raising if there is none)."""
    tcp = stack.transports.get(TCPProtocol.number)
    if not isinstance(tcp, TCPProtocol):
        raise RuntimeError("the stack has no TCP protocol registered")
    return tcp


class TCPTransport(asyncio.Transport):
    """An ``asyncio.Transport`` over one TCP endpoint of the stack."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        endpoint: TCPEndpoint,
        protocol: asyncio.Protocol,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._ep = endpoint
        self._protocol = protocol
        self._backlog = bytearray()  # written while the endpoint's buffer was full
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._writing_paused = False
        self._closing = False
        self._eof_pending = False
        self._lost = False
        self._connected = False
        endpoint.on_data = protocol.data_received
        endpoint.on_eof = self._on_eof
        endpoint.on_send_space = self._on_send_space
        endpoint.on_close = self._on_close

    # -- wiring ------------------------------------------------------------------------------

    def start(self) -> None:
        """Announce the connection to the protocol and deliver anything already received."""
        self._connected = True
        self._protocol.connection_made(self)
        self._ep.resume_reading()

    def _on_eof(self) -> None:
        keep_open = self._protocol.eof_received()
        if not keep_open:
            self.close()

    def _on_send_space(self) -> None:
        self._push()

    def _on_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._backlog.clear()
        if not self._connected:
            return
        exc_: Exception | None = exc if isinstance(exc, Exception) or exc is None else None
        self._loop.call_soon(self._protocol.connection_lost, exc_)

    def _push(self) -> None:
        """Move overflow into the endpoint; resume the writer when it drained enough."""
        ep = self._ep
        backlog = self._backlog
        if backlog and ep.send_space:
            n = ep.send(backlog)
            del backlog[:n]
        if not backlog:
            if self._eof_pending:
                self._eof_pending = False
                ep.shutdown()
            if self._closing and not self._lost:
                ep.close()
        self._maybe_resume()

    def _buffered(self) -> int:
        ep = self._ep
        return len(self._backlog) + ep.unsent

    def _maybe_pause(self) -> None:
        if not self._writing_paused and self._backlog and self._buffered() > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _maybe_resume(self) -> None:
        if self._writing_paused and self._buffered() <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()

    # -- asyncio.WriteTransport --------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; it is sent as windows allow (never blocks, never drops)."""
        if self._closing or self._eof_pending or self._ep.fin_queued:
            raise RuntimeError("cannot write after close() or write_eof()")
        if not data:
            return
        if self._backlog:
            self._backlog += data
        else:
            try:
                n = self._ep.send(data)
            except OSError:
                return  # the connection is gone; connection_lost reports why
            if n < len(data):
                self._backlog += memoryview(data)[n:]
        self._maybe_pause()

    def writelines(self, list_of_data: Any) -> None:
        """Queue several buffers."""
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        """Half close: send FIN once everything written so far has been queued."""
        if self._closing or self._eof_pending or self._ep.fin_queued:
            return
        if self._backlog:
            self._eof_pending = True
        else:
            self._ep.shutdown()

    def can_write_eof(self) -> bool:
        """TCP supports half close."""
        return True

    def get_write_buffer_size(self) -> int:
        """Bytes written and not yet sent."""
        return self._buffered()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """Return the (low, high) water marks for pause_writing/resume_writing."""
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks (defaults: 64 KiB high, a quarter of it low)."""
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause()

    def abort(self) -> None:
        """Reset the connection at once (RST); queued data is discarded."""
        self._closing = True
        self._backlog.clear()
        if not self._lost:
            self._ep.abort()

    # -- asyncio.ReadTransport ---------------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop delivering data; the advertised window shrinks as data queues."""
        self._ep.pause_reading()

    def resume_reading(self) -> None:
        """Deliver queued data and reopen the window."""
        self._ep.resume_reading()

    def is_reading(self) -> bool:
        """Whether data is being delivered."""
        return not self._ep.reading_paused

    # -- asyncio.BaseTransport ---------------------------------------------------------------

    def close(self) -> None:
        """Close after sending what was written (FIN); connection_lost follows."""
        if self._closing:
            return
        self._closing = True
        if not self._backlog and not self._lost:
            self._ep.close()

    def is_closing(self) -> bool:
        """Whether close() or abort() was called or the connection ended."""
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol (must be an asyncio.Protocol)."""
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol
        self._ep.on_data = protocol.data_received

    def get_protocol(self) -> asyncio.BaseProtocol:
        """Return the protocol."""
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """'peername', 'sockname' as (host, port); 'tcp_endpoint' for the endpoint itself."""
        ep = self._ep
        if name == "peername":
            return unpack_address(ep.remote_addr, ep.remote_port)
        if name == "sockname":
            return unpack_address(ep.local_addr, ep.local_port)
        if name == "tcp_endpoint":
            return ep
        return default


class ListeningSocket:
    """What ``Server.sockets`` holds: enough of a socket to ask where it listens."""

    def __init__(self, listener: TCPListener) -> None:
        self._listener = listener

    def getsockname(self) -> Address:
        """Return the (host, port) the server listens on."""
        return unpack_address(self._listener.local_addr, self._listener.local_port)


class Server:
    """A listening TCP server on the stack, shaped like ``asyncio.Server``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: TCPListener,
        client_connected_cb: ClientConnected,
        limit: int,
    ) -> None:
        self._loop = loop
        self._listener = listener
        self._cb = client_connected_cb
        self._limit = limit
        self._serving = True
        self._closed = loop.create_future()
        listener.on_connection = self._accept_all

    def _accept_all(self) -> None:
        while (ep := self._listener.accept()) is not None:
            reader = asyncio.StreamReader(limit=self._limit, loop=self._loop)
            protocol = asyncio.StreamReaderProtocol(reader, self._cb, loop=self._loop)
            TCPTransport(self._loop, ep, protocol).start()

    @property
    def sockets(self) -> tuple[ListeningSocket, ...]:
        """The listening "sockets" (one)."""
        return (ListeningSocket(self._listener),) if self._serving else ()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """'sockname' as (host, port)."""
        if name == "sockname":
            return ListeningSocket(self._listener).getsockname()
        return default

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """Return the loop the server runs on."""
        return self._loop

    def is_serving(self) -> bool:
        """Whether the server still accepts connections."""
        return self._serving

    async def start_serving(self) -> None:
        """Servers start serving at creation; present for asyncio.Server compatibility."""

    def close(self) -> None:
        """Stop listening; established connections are left alone."""
        if not self._serving:
            return
        self._serving = False
        self._listener.close()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has been called."""
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def start_server(
    stack: Stack,
    client_connected_cb: ClientConnected,
    host: str | None,
    port: int,
    *,
    backlog: int = 128,
    limit: int = _DEFAULT_LIMIT,
) -> Server:
    """Listen on (host, port) of the stack, like ``asyncio.start_server``.

    ``client_connected_cb(reader, writer)`` runs for every connection (a coroutine function
    becomes a task). ``host`` None or "" means every IPv4 address, "::" every IPv6 address.
    """
    loop = asyncio.get_running_loop()
    addr, port = pack_address((host, port))
    try:
        listener = tcp_of(stack).listen(addr, port, backlog)
    except StackError as exc:
        raise stack_error(exc) from exc
    return Server(loop, listener, client_connected_cb, limit)


async def open_connection(
    stack: Stack,
    host: str,
    port: int,
    *,
    limit: int = _DEFAULT_LIMIT,
    local_addr: Address | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to (host, port) through the stack, like ``asyncio.open_connection``.

    Raises ConnectionRefusedError (RST or ICMP), TimeoutError (no answer) and friends;
    ``local_addr`` picks the source (a wildcard host leaves the choice to the route).
    """
    loop = asyncio.get_running_loop()
    tcp = tcp_of(stack)
    remote, port = pack_address((host, port))
    local: bytes | None = None
    local_port = 0
    if local_addr is not None:
        local, local_port = pack_address(local_addr)
        if is_wildcard(local):
            local = None
    try:
        ep = tcp.connect(remote, port, local=local, local_port=local_port)
    except StackError as exc:
        raise stack_error(exc) from exc
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = TCPTransport(loop, ep, protocol)
    done: asyncio.Future[None] = loop.create_future()

    def established() -> None:
        ep.on_close = transport._on_close
        if not done.done():
            done.set_result(None)
        transport.start()

    def failed(exc: BaseException | None) -> None:
        if not done.done():
            done.set_exception(exc or os_error(errno.ECONNRESET))

    ep.on_established = established
    ep.on_close = failed
    try:
        await done
    except BaseException:
        ep.abort()
        raise
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer
