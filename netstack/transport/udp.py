"""UDP (RFC 768, RFC 1122 section 4.1, RFC 8200 section 8.1): demultiplex, deliver, send.

The receive path calls the endpoint's ``on_datagram`` callback directly: no queue, Future or
Task per packet at this layer (the socket layer queues only when nobody is waiting).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from netstack.addresses import format_endpoint
from netstack.errors import MessageTooLongError, ParseError, StackError
from netstack.header.numbers import IPPROTO_UDP
from netstack.header.udp import UDPHeader, build_udp, udp_checksum_ok
from netstack.ports import Demux, unspecified
from netstack.protocols import (
    HANDLED,
    MALFORMED,
    UNKNOWN_DESTINATION,
    Control,
    Disposition,
    NetworkInterface,
    StackServices,
)

DatagramCallback = Callable[[bytes, bytes, int, bytes], None]
"""``on_datagram(payload, remote address, remote port, local address)``."""
ErrorCallback = Callable[[Control, bytes, int], None]
"""``on_error(control, remote address, remote port)`` for an ICMP error about our datagram."""


class UDPProtocol:
    """The UDP transport of a stack."""

    number = IPPROTO_UDP

    def __init__(self, stack: StackServices) -> None:
        self.stack = stack
        self.counters = stack.counters.child("udp")
        self.demux: Demux[UDPEndpoint] = Demux(stack.rng, stack.options.ephemeral_ports)

    def handle_packet(
        self, nic: NetworkInterface, src: bytes, dst: bytes, payload: memoryview, packet: bytes
    ) -> Disposition:
        """Validate one inbound datagram and hand it to the endpoint bound to its destination.

        A datagram no endpoint wants is UNKNOWN_DESTINATION: the network layer answers it with
        ICMP port unreachable (RFC 1122 section 4.1.3.1).
        """
        c = self.counters
        try:
            hdr = UDPHeader.parse(payload)
        except ParseError as exc:
            c.inc("malformed." + exc.reason)
            return MALFORMED
        datagram = payload[: hdr.length]
        if not udp_checksum_ok(src, dst, datagram):
            c.inc("malformed.zero_checksum" if hdr.checksum == 0 else "malformed.bad_checksum")
            return MALFORMED
        sport = hdr.src_port
        ep = self.demux.lookup(dst, hdr.dst_port, src, sport)
        if ep is None:
            c.inc("no_port")
            return UNKNOWN_DESTINATION
        values = c.values
        values["delivered"] = values.get("delivered", 0) + 1
        ep.on_datagram(bytes(datagram[8:]), src, sport, dst)
        return HANDLED

    def handle_control(
        self, control: Control, local: bytes, remote: bytes, header: bytes, info: int
    ) -> None:
        """Pass an ICMP error on to the endpoint that sent the datagram it quotes."""
        local_port = int.from_bytes(header[0:2], "big")
        remote_port = int.from_bytes(header[2:4], "big")
        ep = self.demux.lookup(local, local_port, remote, remote_port)
        if ep is None:
            self.counters.inc("control_no_endpoint")
            return
        self.counters.inc(f"control.{control.value}")
        if ep.on_error is not None:
            ep.on_error(control, remote, remote_port)


def udp_of(stack: StackServices) -> UDPProtocol:
    """Return the stack's registered UDP protocol (raising if there is none)."""
    udp = stack.transports.get(IPPROTO_UDP)
    if not isinstance(udp, UDPProtocol):
        raise StackError("the stack has no UDP protocol registered")
    return udp


def _drop(payload: bytes, remote: bytes, port: int, local: bytes) -> None:
    """Discard a datagram: the receiver of an endpoint given none."""


class UDPEndpoint:
    """A UDP endpoint of the stack: bind, connect, send, and a callback for what arrives."""

    __slots__ = (
        "_registered",
        "_reserved",
        "closed",
        "local_addr",
        "local_port",
        "on_datagram",
        "on_error",
        "protocol",
        "remote_addr",
        "remote_port",
        "stack",
    )

    def __init__(
        self,
        stack: StackServices,
        on_datagram: DatagramCallback | None = None,
        on_error: ErrorCallback | None = None,
    ) -> None:
        self.stack = stack
        self.protocol = udp_of(stack)
        self.on_datagram: DatagramCallback = on_datagram or _drop
        self.on_error = on_error
        self.local_addr: bytes | None = None
        self.local_port = 0
        self.remote_addr: bytes | None = None
        self.remote_port = 0
        self._reserved: bytes | None = None  # the address the port is reserved on
        self._registered = False
        self.closed = False

    def bind(self, addr: bytes, port: int) -> None:
        """Bind to a local address (or the unspecified one) and port (0 picks an ephemeral one)."""
        if self.closed:
            raise StackError("endpoint is closed")
        if self.local_addr is not None:
            raise StackError("endpoint is already bound")
        if addr != unspecified(len(addr)) and not self.stack.is_local(addr):
            raise StackError("cannot bind to an address the stack does not hold")
        demux = self.protocol.demux
        port = demux.reserve(addr, port)
        self._reserved = addr
        self.local_addr, self.local_port = addr, port
        self._register()

    def connect(self, addr: bytes, port: int) -> None:
        """Fix the remote address: sends default to it and only its datagrams are received."""
        if self.closed:
            raise StackError("endpoint is closed")
        if port <= 0 or port > 0xFFFF:
            raise StackError(f"bad port {port}")
        if self.local_addr is None:
            self.bind(unspecified(len(addr)), 0)
        assert self.local_addr is not None
        if len(addr) != len(self.local_addr):
            raise StackError("address family does not match the bound address")
        local = self.local_addr
        if local == unspecified(len(local)):
            # Like Linux: connect() on a wildcard-bound socket fixes the source address.
            local = self.stack.find_route(addr).local
        self._unregister()
        self.local_addr = local
        self.remote_addr, self.remote_port = addr, port
        self._register()

    def _register(self) -> None:
        demux = self.protocol.demux
        assert self.local_addr is not None
        if self.remote_addr is None:
            demux.register_bound(self.local_addr, self.local_port, self)
        else:
            demux.register_connected(
                self.local_addr, self.local_port, self.remote_addr, self.remote_port, self
            )
        self._registered = True

    def _unregister(self) -> None:
        if not self._registered or self.local_addr is None:
            return
        demux = self.protocol.demux
        if self.remote_addr is None:
            demux.unregister_bound(self.local_addr, self.local_port, self)
        else:
            demux.unregister_connected(
                self.local_addr, self.local_port, self.remote_addr, self.remote_port, self
            )
        self._registered = False

    def sendto(self, payload: bytes, addr: bytes | None = None, port: int = 0) -> bool:
        """Send one datagram to (addr, port), or to the connected peer when ``addr`` is None."""
        if self.closed:
            raise StackError("endpoint is closed")
        if addr is None:
            if self.remote_addr is None:
                raise StackError("endpoint is not connected and no address was given")
            addr, port = self.remote_addr, self.remote_port
        if not 0 < port <= 0xFFFF:
            raise StackError(f"bad port {port}")
        # RFC 768: the UDP length is 16 bits; over IPv4 the 20-byte header must fit in the
        # 65535-byte Total Length too (RFC 791 section 3.1).
        if len(payload) > (65507 if len(addr) == 4 else 65527):
            raise MessageTooLongError(f"a {len(payload)}-byte datagram cannot be sent")
        if self.local_addr is None:
            self.bind(unspecified(len(addr)), 0)
        local = self.local_addr
        assert local is not None
        if len(local) != len(addr):
            raise StackError("address family does not match the bound address")
        stack = self.stack
        route = stack.find_route(addr, None if local == unspecified(len(local)) else local)
        datagram = build_udp(route.local, addr, self.local_port, port, payload)
        c = self.protocol.counters.values
        c["sent"] = c.get("sent", 0) + 1
        return stack.send(route, IPPROTO_UDP, datagram)

    def close(self) -> None:
        """Stop receiving and release the port."""
        if self.closed:
            return
        self.closed = True
        self._unregister()
        if self._reserved is not None:
            self.protocol.demux.release(self._reserved, self.local_port)
            self._reserved = None

    def info(self) -> dict[str, Any]:
        """Describe the endpoint as ``ss -uan`` would: state, addresses, queues.

        ``recv_q`` and ``send_q`` are always 0: datagrams go straight to the callback on the
        way in and straight to the network layer on the way out, so nothing waits here.
        """
        state = "UNCONN" if self.remote_addr is None else "ESTAB"
        if self.closed:
            state = "CLOSED"
        return {
            "proto": "udp",
            "state": state,
            "local": format_endpoint(self.local_addr, self.local_port),
            "peer": format_endpoint(self.remote_addr, self.remote_port),
            "recv_q": 0,
            "send_q": 0,
        }
