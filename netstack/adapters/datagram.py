"""The callback form of UDP: ``create_datagram_endpoint`` and its asyncio DatagramTransport.

Works like ``loop.create_datagram_endpoint``: the protocol's ``datagram_received`` is called
directly from the stack's receive path (no queue, no Future), and ``transport.sendto`` hands
the datagram to the stack at once.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from typing import Any, TypeVar

from netstack.adapters.address import Address, pack_address, unpack_address
from netstack.adapters.errors import control_error, os_error, stack_error
from netstack.addresses import format_address
from netstack.errors import StackError
from netstack.protocols import Control
from netstack.stack import Stack
from netstack.transport.udp import UDPEndpoint

__all__ = ["StackDatagramTransport", "create_datagram_endpoint"]

_P = TypeVar("_P", bound=asyncio.BaseProtocol)


class StackDatagramTransport(asyncio.DatagramTransport):
    """An ``asyncio.DatagramTransport`` whose datagrams travel through the stack."""

    def __init__(self, stack: Stack, protocol: asyncio.DatagramProtocol) -> None:
        super().__init__()
        self._stack = stack
        self._protocol = protocol
        self._endpoint = UDPEndpoint(stack, self._deliver, self._error)
        self._closing = False

    def _deliver(self, payload: bytes, src: bytes, port: int, dst: bytes) -> None:
        # Per datagram: unpack_address written out, one call fewer (format_address is cached).
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
            raise os_error(errno.EBADF, "transport is closing")
        try:
            if addr is None:
                self._endpoint.sendto(bytes(data))
            else:
                a, p = pack_address(addr)
                self._endpoint.sendto(bytes(data), a, p)
        except StackError as exc:
            self._protocol.error_received(stack_error(exc))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return 'sockname', 'peername' or 'stack' like an asyncio transport."""
        ep = self._endpoint
        if name == "sockname" and ep.local_addr is not None:
            return unpack_address(ep.local_addr, ep.local_port)
        if name == "peername" and ep.remote_addr is not None:
            return unpack_address(ep.remote_addr, ep.remote_port)
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
    """Open a UDP endpoint on the stack, like ``loop.create_datagram_endpoint``.

    A host that is not an address raises AddressError and a bad port ValueError (as for every
    adapter); what the stack refuses (a port in use, no route) raises the socket's OSError.
    """
    # A malformed address is refused before anything is made, as by every adapter.
    local = pack_address(local_addr) if local_addr is not None else None
    remote = pack_address(remote_addr) if remote_addr is not None else None
    protocol = protocol_factory()
    if not isinstance(protocol, asyncio.DatagramProtocol):
        raise TypeError("protocol_factory must return an asyncio.DatagramProtocol")
    transport = StackDatagramTransport(stack, protocol)
    ep = transport._endpoint
    try:
        if local is not None:
            ep.bind(*local)
        if remote is not None:
            ep.connect(*remote)
    except StackError as exc:
        ep.close()
        raise stack_error(exc) from exc
    protocol.connection_made(transport)
    return transport, protocol
