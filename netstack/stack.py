"""The Stack: the registered protocols, NICs, addresses, routes, path MTUs and counters.

The one object an application holds. It is built from registered protocols (the interfaces are
in :mod:`netstack.protocols`): network protocols by IP version, transport protocols by IP
protocol number. Packets come in through a NIC's link endpoint
(``NIC.deliver_network_packet``), go up through the network protocol registered for their IP
version to the transport registered for the protocol in the header, and end at an endpoint
found by the transport's demultiplexer. Packets go out through :meth:`Stack.send` along a
:class:`~netstack.protocols.Route` (which NIC, which source address, what MTU) to the network
protocol, which writes them to the NIC's link endpoint.

Addresses inside the stack are ``bytes`` (4 or 16 long); the socket layer converts text.
"""

from __future__ import annotations

import ipaddress
import random
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from netstack.addresses import format_address, format_endpoint, parse_address
from netstack.clock import Clock
from netstack.counters import Counters
from netstack.errors import AddressError, NoRouteError, StackError
from netstack.link import LinkEndpoint
from netstack.network.icmp import ICMP
from netstack.network.ipv4 import IPv4Protocol
from netstack.network.ipv6 import IPv6Protocol
from netstack.protocols import (
    Control,
    NetworkProtocol,
    NetworkProtocolFactory,
    Route,
    StackOptions,
    TransportProtocol,
    TransportProtocolFactory,
)
from netstack.transport.tcp.protocol import TCPProtocol
from netstack.transport.udp import UDPProtocol

# Besides its own classes the stack re-exports what an application needs with it: Control,
# Route and StackOptions (netstack.protocols), the address helpers and the address errors.
__all__ = [
    "NIC",
    "AddressEntry",
    "AddressError",
    "Control",
    "NoRouteError",
    "Route",
    "RouteEntry",
    "RouteTable",
    "Stack",
    "StackOptions",
    "format_address",
    "format_endpoint",
    "parse_address",
]

DEFAULT_NETWORK: tuple[NetworkProtocolFactory, ...] = (IPv4Protocol, IPv6Protocol)
"""The network protocols a stack registers unless told otherwise."""
DEFAULT_TRANSPORT: tuple[TransportProtocolFactory, ...] = (UDPProtocol, TCPProtocol)
"""The transport protocols a stack registers unless told otherwise."""

_P = TypeVar("_P")


def _endpoint_order(text: str) -> tuple[int, bytes, int]:
    """Sort key of a :func:`format_endpoint` text: family, address, then port, numerically."""
    host, _, port = text.rpartition(":")
    if host == "*":
        return (0, b"", 0)
    packed = parse_address(host.strip("[]"))
    return (len(packed), packed, int(port))


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
        # The stack's network protocols as 16 slots, one per value of the version nibble.
        self._by_version = stack._by_version

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
        network = self._by_version[packet[0] >> 4]
        if network is None:
            self.counters.inc("rx_unknown_version")
            return
        network.receive(self, packet)

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
        self,
        clock: Clock,
        options: StackOptions | None = None,
        *,
        seed: int | None = None,
        network: Sequence[NetworkProtocolFactory] = DEFAULT_NETWORK,
        transport: Sequence[TransportProtocolFactory] = DEFAULT_TRANSPORT,
    ) -> None:
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
        # The registration tables: network protocols by IP version, transports by number.
        self.networks: dict[int, NetworkProtocol] = {}
        self.transports: dict[int, TransportProtocol] = {}
        # ``networks`` again as a list indexed by the version nibble: the NIC's lookup.
        self._by_version: list[NetworkProtocol | None] = [None] * 16
        # ICMP belongs to the network layer; IPv4 and IPv6 share it (RFC 792, RFC 4443).
        self.icmp = ICMP(self)
        for make_network in network:
            self.register_network(make_network(self))
        for make_transport in transport:
            self.register_transport(make_transport(self))

    # -- registration --------------------------------------------------------------------

    def register_network(self, protocol: NetworkProtocol) -> None:
        """Make ``protocol`` receive packets whose IP version is ``protocol.number``."""
        if not 0 <= protocol.number < len(self._by_version):
            raise StackError(f"{protocol.number} is no IP version (RFC 791: four bits)")
        self.networks[protocol.number] = protocol
        self._by_version[protocol.number] = protocol
        self._route_cache.clear()  # cached routes name the protocol they were found for

    def register_transport(self, protocol: TransportProtocol) -> None:
        """Make ``protocol`` receive packets whose IP protocol number is ``protocol.number``."""
        self.transports[protocol.number] = protocol

    @staticmethod
    def _registered(table: dict[int, Any], number: int, kind: type[_P]) -> _P:
        protocol = table.get(number)
        if not isinstance(protocol, kind):
            raise StackError(f"no {kind.__name__} is registered under {number}")
        return protocol

    @property
    def ipv4(self) -> IPv4Protocol:
        """The registered IPv4 protocol."""
        return self._registered(self.networks, 4, IPv4Protocol)

    @property
    def ipv6(self) -> IPv6Protocol:
        """The registered IPv6 protocol."""
        return self._registered(self.networks, 6, IPv6Protocol)

    @property
    def udp(self) -> UDPProtocol:
        """The registered UDP protocol."""
        return self._registered(self.transports, UDPProtocol.number, UDPProtocol)

    @property
    def tcp(self) -> TCPProtocol:
        """The registered TCP protocol; assigning one registers it in place of the old."""
        return self._registered(self.transports, TCPProtocol.number, TCPProtocol)

    @tcp.setter
    def tcp(self, protocol: TCPProtocol) -> None:
        self.register_transport(protocol)

    # -- configuration -------------------------------------------------------------------

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
            self._solicited_node(entry.address, join=False)
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
        self._solicited_node(packed, join=True)
        return packed

    def remove_address(self, address: str) -> None:
        """Unassign an address from whichever NIC holds it."""
        packed = parse_address(address)
        nic = self._local_addresses.pop(packed, None)
        if nic is None:
            raise AddressError(f"{address} is not assigned")
        nic.addresses = [e for e in nic.addresses if e.address != packed]
        self._solicited_node(packed, join=False)
        self._route_cache.clear()

    def _solicited_node(self, address: bytes, *, join: bool) -> None:
        """Join or leave the solicited-node group of an IPv6 address (RFC 4291 2.7.1)."""
        ipv6 = self.networks.get(6)
        if len(address) != 16 or not isinstance(ipv6, IPv6Protocol):
            return
        if join:
            ipv6.join_solicited_node(address)
        else:
            ipv6.leave_solicited_node(address)

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
        network = self._by_version[4 if len(remote) == 4 else 6]
        if network is None:
            raise NoRouteError(f"no network protocol for {format_address(remote)}")
        mtu = self.path_mtu(remote, nic.mtu)
        return Route(nic, local, remote, entry.gateway, mtu, network)

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

    def send(
        self,
        route: Route,
        protocol: int,
        payload: bytes,
        *,
        ttl: int | None = None,
        dont_fragment: bool = False,
    ) -> bool:
        """Send an upper-layer ``payload`` along ``route``; return False if it was dropped.

        The one way out for every transport and for ICMP. ``ttl`` is the Time to Live or Hop
        Limit (None: ``options.default_ttl``). ``dont_fragment`` keeps the packet whole: TCP
        asks for it because it sizes segments to the path MTU (RFC 1191, RFC 9293 3.7.1).
        """
        return route.network.send(route, protocol, payload, ttl, dont_fragment)

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
