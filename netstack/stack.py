"""The Stack: NICs, addresses, routes, protocols, ports and counters.

The one object an application holds. Packets come in through a NIC's link endpoint
(``NIC.deliver_network_packet``), go up through the network protocol of their IP version to the
transport protocol named in the header, and end at an endpoint found by the transport's
demultiplexer. Packets go out through a :class:`Route` (which NIC, which source address, what
MTU) to the network protocol, which writes them to the NIC's link endpoint.

Addresses inside the stack are ``bytes`` (4 or 16 long); the socket layer converts text.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import random
import socket
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from netstack.clock import Clock
from netstack.counters import Counters
from netstack.errors import StackError
from netstack.link import LinkEndpoint

if TYPE_CHECKING:
    from netstack.network.icmp import ICMP
    from netstack.network.ipv4 import IPv4Protocol
    from netstack.network.ipv6 import IPv6Protocol
    from netstack.transport.udp import UDPProtocol


class NoRouteError(StackError):
    """No route leads to the destination (ENETUNREACH)."""


class AddressError(StackError):
    """An address is malformed or not assigned to the stack (EADDRNOTAVAIL)."""


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


class TransportProtocol(Protocol):
    """A transport protocol registered with the stack (UDP, TCP)."""

    number: int

    def handle_packet(
        self, nic: NIC, src: bytes, dst: bytes, payload: memoryview, packet: bytes
    ) -> None:
        """Take one inbound transport packet; ``packet`` is the whole IP datagram (for ICMP)."""

    def handle_control(
        self, control: Control, local: bytes, remote: bytes, header: bytes, info: int
    ) -> None:
        """Take an ICMP error about a packet we sent from ``local`` to ``remote``.

        ``header`` holds the start of our original transport header (at least 8 bytes);
        ``info`` is the next-hop MTU for PACKET_TOO_BIG, else 0.
        """


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> bytes:
    """Return the packed form of an IPv4 or IPv6 address given as text."""
    try:
        return ipaddress.ip_address(text).packed
    except ValueError as exc:
        raise AddressError(f"not an IP address: {text!r}") from exc


@functools.lru_cache(maxsize=4096)
def format_address(addr: bytes) -> str:
    """Return the text form of a packed IPv4 or IPv6 address."""
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def format_endpoint(addr: bytes | None, port: int) -> str:
    """Return ``addr:port`` as ``ss`` prints it: ``[addr]:port`` for IPv6, ``*:*`` for none."""
    if not addr:
        return "*:*"
    text = format_address(addr)
    return f"[{text}]:{port}" if len(addr) == 16 else f"{text}:{port}"


def _endpoint_order(text: str) -> tuple[int, bytes, int]:
    """Sort key of a :func:`format_endpoint` text: family, address, then port, numerically."""
    host, _, port = text.rpartition(":")
    if host == "*":
        return (0, b"", 0)
    packed = parse_address(host.strip("[]"))
    return (len(packed), packed, int(port))


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


@dataclass(slots=True)
class AddressEntry:
    """An address assigned to a NIC with its prefix length."""

    address: bytes
    prefix_len: int

    def contains(self, other: bytes) -> bool:
        """Tell whether ``other`` lies in this address's subnet."""
        if len(other) != len(self.address):
            return False
        bits = len(other) * 8
        shift = bits - self.prefix_len
        a = int.from_bytes(self.address, "big") >> shift if shift < bits else 0
        b = int.from_bytes(other, "big") >> shift if shift < bits else 0
        return a == b


class NIC:
    """A network interface: a link endpoint, its addresses, and per-NIC counters."""

    def __init__(self, stack: Stack, name: str, link: LinkEndpoint) -> None:
        self.stack = stack
        self.name = name
        self.link = link
        self.addresses: list[AddressEntry] = []
        self.counters = stack.counters.child("nic").child(name)
        self.enabled = True

    @property
    def mtu(self) -> int:
        """The link MTU in bytes."""
        return self.link.mtu

    def deliver_network_packet(self, packet: bytes) -> None:
        """Take one inbound raw IP packet from the link and hand it to its network protocol."""
        counters = self.counters.values
        counters["rx_packets"] = counters.get("rx_packets", 0) + 1
        if not packet:
            self.counters.inc("rx_empty")
            return
        version = packet[0] >> 4
        if version == 4:
            self.stack.ipv4.receive(self, packet)
        elif version == 6:
            self.stack.ipv6.receive(self, packet)
        else:
            self.counters.inc("rx_unknown_version")

    def write(self, packets: list[bytes]) -> int:
        """Send raw IP packets on the link; return how many it accepted."""
        sent = self.link.write_packets(packets)
        counters = self.counters.values
        counters["tx_packets"] = counters.get("tx_packets", 0) + sent
        if sent < len(packets):
            self.counters.inc("tx_dropped", len(packets) - sent)
        return sent

    def primary_address(self, family_len: int, toward: bytes | None = None) -> bytes | None:
        """Pick a source address of the given family, preferring one on ``toward``'s subnet."""
        best: bytes | None = None
        for entry in self.addresses:
            if len(entry.address) != family_len:
                continue
            if toward is not None and entry.contains(toward):
                return entry.address
            if best is None:
                best = entry.address
        return best


@dataclass(slots=True)
class Route:
    """Where a packet to ``remote`` goes: out of ``nic``, from ``local``, at most ``mtu`` bytes."""

    nic: NIC
    local: bytes
    remote: bytes
    next_hop: bytes | None
    mtu: int


@dataclass(slots=True)
class RouteEntry:
    """One line of the route table: a destination prefix through a NIC (and maybe a gateway)."""

    network: bytes
    prefix_len: int
    nic: NIC
    gateway: bytes | None = None
    _value: int = field(default=0, repr=False)

    def matches(self, dst: bytes) -> bool:
        """Tell whether ``dst`` is inside this entry's prefix."""
        if len(dst) != len(self.network):
            return False
        shift = len(dst) * 8 - self.prefix_len
        return (int.from_bytes(dst, "big") >> shift) == self._value


class RouteTable:
    """A longest-prefix-match route table with a bounded lookup cache."""

    def __init__(self, cache_size: int = 4096) -> None:
        self.entries: list[RouteEntry] = []
        self._cache: OrderedDict[bytes, RouteEntry | None] = OrderedDict()
        self._cache_size = cache_size

    def add(self, entry: RouteEntry) -> None:
        """Add a route; more specific prefixes win on lookup."""
        shift = len(entry.network) * 8 - entry.prefix_len
        entry._value = int.from_bytes(entry.network, "big") >> shift
        self.entries.append(entry)
        self.entries.sort(key=lambda e: e.prefix_len, reverse=True)
        self._cache.clear()

    def remove_nic(self, nic: NIC) -> None:
        """Drop every route through ``nic``."""
        self.entries = [e for e in self.entries if e.nic is not nic]
        self._cache.clear()

    def lookup(self, dst: bytes) -> RouteEntry | None:
        """Return the most specific route for ``dst``, or None."""
        cache = self._cache
        if dst in cache:
            return cache[dst]
        found = None
        for entry in self.entries:
            if entry.matches(dst):
                found = entry
                break
        cache[dst] = found
        if len(cache) > self._cache_size:
            cache.popitem(last=False)
        return found


class Stack:
    """A userspace TCP/IP host: create NICs, assign addresses and routes, open endpoints."""

    def __init__(
        self, clock: Clock, options: StackOptions | None = None, *, seed: int | None = None
    ) -> None:
        # Imports here keep module import order simple: the protocols import stack types.
        from netstack.network.icmp import ICMP
        from netstack.network.ipv4 import IPv4Protocol
        from netstack.network.ipv6 import IPv6Protocol
        from netstack.transport.tcp.protocol import TCPProtocol
        from netstack.transport.udp import UDPProtocol

        self.clock = clock
        self.options = options or StackOptions()
        self.rng = random.Random(seed)
        self.counters = Counters()
        self.nics: dict[str, NIC] = {}
        self.routes = RouteTable(self.options.route_cache_entries)
        self._local_addresses: dict[bytes, NIC] = {}
        self._pmtu: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        # (remote, requested local) -> (route, valid until); cleared on any change that could
        # alter a route: addresses, routes, NICs, path MTUs.
        self._route_cache: dict[tuple[bytes, bytes | None], tuple[Route, float]] = {}
        self.transports: dict[int, TransportProtocol] = {}
        self.icmp: ICMP = ICMP(self)
        self.ipv4: IPv4Protocol = IPv4Protocol(self)
        self.ipv6: IPv6Protocol = IPv6Protocol(self)
        self.udp: UDPProtocol = UDPProtocol(self)
        self.register_transport(self.udp)
        self.tcp: TCPProtocol = TCPProtocol(self)
        self.register_transport(self.tcp)

    # -- configuration -------------------------------------------------------------------

    def register_transport(self, protocol: TransportProtocol) -> None:
        """Make ``protocol`` receive packets whose IP protocol number is ``protocol.number``."""
        self.transports[protocol.number] = protocol

    def create_nic(self, name: str, link: LinkEndpoint) -> NIC:
        """Add a NIC called ``name`` on ``link`` and start receiving from it."""
        if name in self.nics:
            raise StackError(f"NIC {name!r} exists")
        nic = NIC(self, name, link)
        self.nics[name] = nic
        link.attach(nic)
        return nic

    def remove_nic(self, name: str) -> None:
        """Detach and forget a NIC, its addresses and its routes."""
        nic = self.nics.pop(name)
        nic.link.attach(None)
        for entry in nic.addresses:
            self._local_addresses.pop(entry.address, None)
            if len(entry.address) == 16:
                self.ipv6.leave_solicited_node(entry.address)
        self.routes.remove_nic(nic)
        self._route_cache.clear()

    def add_address(self, nic_name: str, address: str) -> bytes:
        """Assign ``address`` (``"10.0.0.1"`` or ``"10.0.0.1/24"``) to a NIC; return it packed."""
        nic = self._nic(nic_name)
        try:
            iface = ipaddress.ip_interface(address)
        except ValueError as exc:
            raise AddressError(f"not an IP address: {address!r}") from exc
        packed = iface.ip.packed
        if packed in self._local_addresses:
            raise AddressError(f"{iface.ip} is already assigned")
        nic.addresses.append(AddressEntry(packed, iface.network.prefixlen))
        self._local_addresses[packed] = nic
        self._route_cache.clear()
        if len(packed) == 16:
            self.ipv6.join_solicited_node(packed)
        return packed

    def remove_address(self, address: str) -> None:
        """Unassign an address from whichever NIC holds it."""
        packed = parse_address(address)
        nic = self._local_addresses.pop(packed, None)
        if nic is None:
            raise AddressError(f"{address} is not assigned")
        nic.addresses = [e for e in nic.addresses if e.address != packed]
        if len(packed) == 16:
            self.ipv6.leave_solicited_node(packed)
        self._route_cache.clear()

    def add_route(self, destination: str, nic_name: str, gateway: str | None = None) -> None:
        """Route ``destination`` (a prefix like ``"0.0.0.0/0"`` or ``"fd00::/8"``) via a NIC."""
        nic = self._nic(nic_name)
        try:
            net = ipaddress.ip_network(destination, strict=False)
        except ValueError as exc:
            raise AddressError(f"not a prefix: {destination!r}") from exc
        gw = parse_address(gateway) if gateway else None
        self.routes.add(RouteEntry(net.network_address.packed, net.prefixlen, nic, gw))
        self._route_cache.clear()

    def _nic(self, name: str) -> NIC:
        try:
            return self.nics[name]
        except KeyError:
            raise StackError(f"no NIC named {name!r}") from None

    # -- queries -------------------------------------------------------------------------

    def is_local(self, address: bytes) -> bool:
        """Tell whether ``address`` is assigned to one of the NICs."""
        return address in self._local_addresses

    def nic_of(self, address: bytes) -> NIC | None:
        """Return the NIC that holds ``address``, or None."""
        return self._local_addresses.get(address)

    def find_route(self, remote: bytes, local: bytes | None = None) -> Route:
        """Return how to reach ``remote``, optionally from a given local address."""
        key = (remote, local)
        cached = self._route_cache.get(key)
        if cached is not None and cached[1] > self.clock.now():
            return cached[0]
        route = self._find_route(remote, local)
        if len(self._route_cache) >= self.options.route_cache_entries:
            self._route_cache.clear()
            self.counters.inc("route.cache_flushes")
        pmtu = self._pmtu.get(remote)
        self._route_cache[key] = (route, pmtu[1] if pmtu else float("inf"))
        return route

    def _find_route(self, remote: bytes, local: bytes | None) -> Route:
        entry = self.routes.lookup(remote)
        if entry is None:
            self.counters.inc("route.no_route")
            raise NoRouteError(f"no route to {format_address(remote)}")
        nic = entry.nic
        if local is None or local == bytes(len(remote)):
            local = nic.primary_address(len(remote), entry.gateway or remote)
            if local is None:
                # Weak host model (RFC 1122 section 3.3.4.2): any address of the family will do.
                local = next((a for a in self._local_addresses if len(a) == len(remote)), None)
            if local is None:
                raise AddressError(f"no local address to reach {format_address(remote)}")
        elif local not in self._local_addresses:
            raise AddressError(f"{format_address(local)} is not a local address")
        return Route(nic, local, remote, entry.gateway, self.path_mtu(remote, nic.mtu))

    # -- path MTU (RFC 1191, RFC 8201) -----------------------------------------------------

    def path_mtu(self, remote: bytes, link_mtu: int) -> int:
        """Return the path MTU to ``remote``: the link MTU unless an ICMP error lowered it."""
        entry = self._pmtu.get(remote)
        if entry is None:
            return link_mtu
        mtu, expires = entry
        if self.clock.now() >= expires:
            del self._pmtu[remote]
            return link_mtu
        return min(mtu, link_mtu)

    def update_path_mtu(self, remote: bytes, mtu: int) -> None:
        """Lower the path MTU to ``remote`` after a Fragmentation Needed / Packet Too Big.

        Never raises the estimate (RFC 1191 section 6.3, RFC 8201 section 4); a value below
        the family's minimum (68, RFC 791; 1280, RFC 8200 section 5) is discarded, as RFC 8201
        section 4 requires for IPv6, not clamped.
        """
        floor = 68 if len(remote) == 4 else 1280
        if mtu < floor:
            self.counters.inc("route.pmtu_below_minimum")
            return
        current = self._pmtu.get(remote)
        if current is not None and self.clock.now() < current[1] and mtu >= current[0]:
            return
        self._pmtu[remote] = (mtu, self.clock.now() + self.options.pmtu_lifetime)
        self._pmtu.move_to_end(remote)
        if len(self._pmtu) > self.options.pmtu_entries:
            self._pmtu.popitem(last=False)
        self.counters.inc("route.pmtu_updates")
        self._route_cache.clear()

    # -- sending ---------------------------------------------------------------------------

    def send(self, route: Route, protocol: int, payload: bytes, *, ttl: int | None = None) -> bool:
        """Send an upper-layer ``payload`` along ``route``; return False if it was dropped."""
        if len(route.remote) == 4:
            return self.ipv4.send(route, protocol, payload, ttl=ttl)
        return self.ipv6.send(route, protocol, payload, hop_limit=ttl)

    def write(self, nic: NIC, packets: Iterable[bytes]) -> int:
        """Write already-built IP packets out of ``nic``."""
        return nic.write(list(packets))

    # -- introspection ---------------------------------------------------------------------

    def sockets(self) -> list[dict[str, Any]]:
        """Describe every UDP endpoint, TCP listener and TCP connection, like ``ss -tuanie``.

        One plain, JSON-serialisable dict per registered endpoint (its ``info()``), including
        TCP connections still closing or in TIME-WAIT; sorted by protocol, local address and
        peer address (addresses and ports in numeric order).
        """
        rows = [ep.info() for ep in self.udp.demux.endpoints()]
        rows += [ep.info() for ep in self.tcp.demux.endpoints()]
        rows.sort(
            key=lambda r: (r["proto"], _endpoint_order(r["local"]), _endpoint_order(r["peer"]))
        )
        return rows
