"""What the layers of the stack expect of each other, in one place (gVisor's registration.go).

A :class:`~netstack.stack.Stack` is built from registered protocols::

    Stack(clock, network=[IPv4Protocol, IPv6Protocol], transport=[UDPProtocol, TCPProtocol])

Each entry is a factory called with the stack. A :class:`NetworkProtocol` is found by the IP
version of an inbound packet, a :class:`TransportProtocol` by the protocol number in its IP
header. The protocols see the stack only through :class:`StackServices` (and the network
layer through :class:`NetworkServices`), and a NIC only through :class:`NetworkInterface`, so
``netstack.network`` and ``netstack.transport`` import this module and never ``netstack.stack``.

One packet in::

    link -> NIC -> NetworkProtocol.receive -> TransportProtocol.handle_packet -> endpoint
                                           <- Disposition (UNKNOWN_DESTINATION: ICMP answers)

One packet out::

    endpoint -> StackServices.find_route -> StackServices.send -> NetworkProtocol.send
             -> NetworkInterface.write -> link

ICMP errors about packets we sent come back up as a :class:`Control` through
:meth:`TransportProtocol.handle_control`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from netstack.clock import Clock
from netstack.counters import Counters
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import IPv6Header


@dataclass(slots=True)
class StackOptions:
    """Tunable limits and defaults; every bound in the stack has its knob here."""

    default_ttl: int = 64
    ipv4_reassembly_timeout: float = 30.0  # RFC 791 suggests 15 s upward; Linux uses 30 s
    ipv6_reassembly_timeout: float = 60.0  # RFC 8200 section 4.5
    reassembly_memory: int = 4 * 1024 * 1024  # bytes held by incomplete datagrams, per family
    reassembly_datagrams: int = 1024  # incomplete datagrams in progress, per family
    icmp_rate: float = 1000.0  # ICMP errors per second (token bucket; RFC 4443 section 2.4(f))
    icmp_burst: int = 50
    udp_receive_queue: int = 512  # datagrams queued per UDP socket before drops
    pmtu_entries: int = 1024
    route_cache_entries: int = 4096  # cached route lookups; the cache is flushed when full
    pmtu_lifetime: float = 600.0  # RFC 8201 section 4: retry a larger PMTU after ~10 minutes
    ephemeral_ports: tuple[int, int] = (32768, 60999)


class Control(enum.Enum):
    """What an ICMP error tells a transport about a packet it sent."""

    NET_UNREACHABLE = "net_unreachable"
    HOST_UNREACHABLE = "host_unreachable"
    PROTOCOL_UNREACHABLE = "protocol_unreachable"
    PORT_UNREACHABLE = "port_unreachable"
    ADMIN_PROHIBITED = "admin_prohibited"
    PACKET_TOO_BIG = "packet_too_big"
    TIME_EXCEEDED = "time_exceeded"
    PARAMETER_PROBLEM = "parameter_problem"


class Disposition(enum.Enum):
    """What became of an inbound packet a transport protocol was given.

    gVisor's ``TransportPacketDisposition``: the transport demultiplexes, and when no endpoint
    wants the packet it says so; the network layer then answers with ICMP (RFC 1122 3.2.2.1,
    RFC 4443 3.1). A transport with an answer of its own (TCP's RST, RFC 9293 3.10.7.1) sends
    it and reports HANDLED.
    """

    HANDLED = "handled"
    """An endpoint took the packet, or the transport answered or dropped it itself."""
    MALFORMED = "malformed"
    """The transport header or checksum was bad: dropped and counted, never answered."""
    UNKNOWN_DESTINATION = "unknown_destination"
    """No endpoint is bound to the destination port: the network layer sends port unreachable."""


HANDLED = Disposition.HANDLED
MALFORMED = Disposition.MALFORMED
UNKNOWN_DESTINATION = Disposition.UNKNOWN_DESTINATION


class NetworkInterface(Protocol):
    """What the network layer needs of a NIC: its name, its MTU and a way onto its link."""

    @property
    def name(self) -> str:
        """The NIC's name in the stack (``"eth0"``, ``"tun"``)."""

    @property
    def mtu(self) -> int:
        """The link MTU in bytes."""

    def write(self, packets: list[bytes]) -> int:
        """Send raw IP packets on the link; return how many it accepted."""


@dataclass(slots=True)
class Route:
    """Where a packet to ``remote`` goes: out of ``nic``, from ``local``, at most ``mtu`` bytes.

    ``network`` is the network protocol of the addresses' family, which carries the packet.
    """

    nic: NetworkInterface
    local: bytes
    remote: bytes
    next_hop: bytes | None
    mtu: int
    network: NetworkProtocol


class TransportProtocol(Protocol):
    """A transport protocol registered with the stack (UDP, TCP), found by ``number``."""

    @property
    def number(self) -> int:
        """The IP protocol number it is registered under (RFC 790; 6 TCP, 17 UDP)."""

    def handle_packet(
        self, nic: NetworkInterface, src: bytes, dst: bytes, payload: memoryview, packet: bytes
    ) -> Disposition:
        """Take one inbound transport packet; ``packet`` is the whole IP datagram (for ICMP).

        Return UNKNOWN_DESTINATION when no endpoint wants it, for the network layer to answer;
        HANDLED or MALFORMED otherwise.
        """

    def handle_control(
        self, control: Control, local: bytes, remote: bytes, header: bytes, info: int
    ) -> None:
        """Take an ICMP error about a packet we sent from ``local`` to ``remote``.

        ``header`` holds the start of our original transport header (at least 8 bytes);
        ``info`` is the next-hop MTU for PACKET_TOO_BIG, else 0.
        """


class NetworkProtocol(Protocol):
    """A network protocol registered with the stack (IPv4, IPv6), found by IP version."""

    @property
    def number(self) -> int:
        """The IP version it is registered under: the first nibble of its packets."""

    def receive(self, nic: NetworkInterface, packet: bytes) -> None:
        """Validate one inbound packet and deliver it up; must never raise on bad input."""

    def send(
        self,
        route: Route,
        protocol: int,
        payload: bytes,
        ttl: int | None = None,
        dont_fragment: bool = False,
    ) -> bool:
        """Send an upper-layer ``payload`` along ``route``; return False if it was dropped.

        ``ttl`` is the IPv4 Time to Live or the IPv6 Hop Limit (None: the stack's default).
        With ``dont_fragment`` the packet is never fragmented: IPv4 sets DF (RFC 791 3.1) and
        a payload too big for the route is dropped rather than fragmented at the source.
        """


class ICMPService(Protocol):
    """What the IP protocols ask of ICMP (RFC 792, RFC 4443): take messages, send errors."""

    def receive_v4(
        self, nic: NetworkInterface, ip: IPv4Header, payload: memoryview, packet: bytes
    ) -> None:
        """Handle one inbound ICMPv4 message addressed to the stack."""

    def receive_v6(
        self, nic: NetworkInterface, ip: IPv6Header, payload: memoryview, packet: bytes
    ) -> None:
        """Handle one inbound ICMPv6 message addressed to the stack."""

    def send_error_v4(
        self, nic: NetworkInterface, packet: bytes, type_: int, code: int, rest: int = 0
    ) -> bool:
        """Send an ICMPv4 error about ``packet`` unless RFC 1122 section 3.2.2 forbids it."""

    def send_error_v6(
        self, nic: NetworkInterface, packet: bytes, type_: int, code: int, rest: int = 0
    ) -> bool:
        """Send an ICMPv6 error about ``packet`` unless RFC 4443 section 2.4(e) forbids it."""


class StackServices(Protocol):
    """What a protocol may ask of the stack it is registered with."""

    @property
    def clock(self) -> Clock:
        """The stack's clock: the only source of time and timers."""

    @property
    def options(self) -> StackOptions:
        """The stack's limits and defaults."""

    @property
    def rng(self) -> random.Random:
        """The stack's random numbers (seeded in tests)."""

    @property
    def counters(self) -> Counters:
        """The root of the stack's counter tree; each protocol takes a child."""

    @property
    def networks(self) -> Mapping[int, NetworkProtocol]:
        """The registered network protocols by IP version."""

    @property
    def transports(self) -> Mapping[int, TransportProtocol]:
        """The registered transport protocols by IP protocol number."""

    def is_local(self, address: bytes) -> bool:
        """Tell whether ``address`` is assigned to one of the NICs."""

    def nic_of(self, address: bytes) -> NetworkInterface | None:
        """Return the NIC that holds ``address``, or None."""

    def find_route(self, remote: bytes, local: bytes | None = None) -> Route:
        """Return how to reach ``remote``, optionally from a given local address."""

    def update_path_mtu(self, remote: bytes, mtu: int) -> None:
        """Lower the path MTU to ``remote`` after an ICMP error reported a smaller one."""

    def send(
        self,
        route: Route,
        protocol: int,
        payload: bytes,
        *,
        ttl: int | None = None,
        dont_fragment: bool = False,
    ) -> bool:
        """Send an upper-layer ``payload`` along ``route`` (see :meth:`NetworkProtocol.send`)."""


class NetworkServices(StackServices, Protocol):
    """What a network protocol may ask of the stack: the above, and the stack's ICMP."""

    @property
    def icmp(self) -> ICMPService:
        """ICMPv4 and ICMPv6, shared by the IP protocols."""


NetworkProtocolFactory = Callable[[NetworkServices], NetworkProtocol]
"""Builds a network protocol for a stack (``IPv4Protocol`` itself is one)."""
TransportProtocolFactory = Callable[[StackServices], TransportProtocol]
"""Builds a transport protocol for a stack (``UDPProtocol`` itself is one)."""
