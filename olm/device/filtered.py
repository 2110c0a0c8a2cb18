"""FilteredDevice: sends packets for chosen destinations to handlers, the rest on.

Between the TUN and the rest of the program sit two kinds of rules:

* address rules, keyed by packed destination address (4 bytes for IPv4, 16 for IPv6; the
  lengths keep the families apart in one dict): one lookup per packet;
* prefix rules, claiming a whole prefix (say the fake-IP pool, 198.18.0.0/15) for one handler.
  They are looked at only when no address rule matched, longest prefix first; prefixes may
  overlap.

A packet read from the TUN whose destination has a rule goes to that rule's handler; every other
packet is "unclaimed" and goes to ``next_consumer`` (by default: dropped and counted). Packets
written by the stack go straight to the TUN, bypassing the rules.

Nothing here does I/O: the device is given the function that writes to the TUN and is fed the
packets read from it, so it works the same over a real TUN and in tests.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable

from netstack.counters import Counters
from netstack.header.ipv4 import IPV4_DST, IPV4_DST_AT, IPV4_MIN_HEADER_LEN
from netstack.header.ipv6 import IPV6_DST, IPV6_DST_AT, IPV6_HEADER_LEN
from netstack.link import NetworkDispatcher

__all__ = ["FilteredDevice", "RuleLink"]

PacketHandler = Callable[[bytes], None]
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Per family, the prefix rules as (shift, {destination >> shift: handler}), shortest shift
# (longest prefix) first: one dict lookup per distinct prefix length.
_PrefixTable = list[tuple[int, dict[int, PacketHandler]]]
# Destination addresses as integers (RFC 791 section 3.1, RFC 8200 section 3; the offsets are
# the header modules'), IPv6 in two halves.
_unpack_v4 = struct.Struct("!I").unpack_from
_unpack_v6 = struct.Struct("!QQ").unpack_from


def _key(address: str) -> bytes:
    """Pack an IPv4 or IPv6 address text into the rule table's key."""
    return ipaddress.ip_address(address).packed


def _network(network: str) -> _Network:
    """Parse a prefix rule's network (ValueError if host bits are set)."""
    return ipaddress.ip_network(network)


def _prefix_table(networks: Iterable[tuple[_Network, PacketHandler]], bits: int) -> _PrefixTable:
    """Build one family's prefix lookup table from its rules."""
    by_shift: dict[int, dict[int, PacketHandler]] = {}
    for network, handler in networks:
        shift = bits - network.prefixlen
        by_shift.setdefault(shift, {})[int(network.network_address) >> shift] = handler
    return sorted(by_shift.items())


def _match_prefix(
    tables: tuple[_PrefixTable, _PrefixTable],
    packet: bytes,
    version: int,
) -> PacketHandler | None:
    """Return the handler of the longest prefix rule holding the packet's destination."""
    if version == 4:
        destination = _unpack_v4(packet, IPV4_DST_AT)[0]
        table = tables[0]
    else:
        high, low = _unpack_v6(packet, IPV6_DST_AT)
        destination = high << 64 | low
        table = tables[1]
    for shift, networks in table:
        handler = networks.get(destination >> shift)
        if handler is not None:
            return handler
    return None


class FilteredDevice:
    """Dispatches inbound packets by destination address or prefix; writes bypass the rules.

    An address rule beats any prefix rule; among prefix rules the longest prefix wins.

    Counters (under ``filter``): ``claimed`` (by any rule), ``claimed_prefix`` (those of them
    claimed by a prefix rule), ``unclaimed``, ``unclaimed_dropped`` (by the default consumer),
    ``malformed.empty``, ``malformed.bad_version``, ``malformed.short_ipv4``,
    ``malformed.short_ipv6``, ``written``.
    """

    __slots__ = (
        "_malformed",
        "_prefix_rules",
        "_prefix_tables",
        "_rules",
        "_write",
        "counters",
        "next_consumer",
    )

    def __init__(
        self,
        write: Callable[[list[bytes]], int],
        *,
        next_consumer: PacketHandler | None = None,
        counters: Counters | None = None,
    ) -> None:
        self.counters = counters.child("filter") if counters is not None else Counters("filter")
        self._malformed = self.counters.child("malformed")
        self._write = write
        self._rules: dict[bytes, PacketHandler] = {}
        self._prefix_rules: dict[_Network, PacketHandler] = {}
        # None while there is no prefix rule: the packet loop then never looks further.
        self._prefix_tables: tuple[_PrefixTable, _PrefixTable] | None = None
        self.next_consumer: PacketHandler = (
            next_consumer if next_consumer is not None else self._drop
        )

    # -- rules -----------------------------------------------------------------------------

    def add_rule(self, address: str, handler: PacketHandler) -> None:
        """Send every inbound packet addressed to ``address`` to ``handler``."""
        key = _key(address)
        if key in self._rules:
            raise ValueError(f"{address} already has a rule")
        self._rules[key] = handler

    def remove_rule(self, address: str) -> None:
        """Stop claiming packets for ``address`` (KeyError if it has no rule)."""
        del self._rules[_key(address)]

    @property
    def addresses(self) -> list[str]:
        """The addresses that have a rule, as text."""
        return [str(ipaddress.ip_address(key)) for key in self._rules]

    def add_prefix_rule(self, network: str, handler: PacketHandler) -> None:
        """Send every inbound packet to an address in ``network`` without a rule of its own.

        ``network`` is a prefix such as ``198.18.0.0/15`` (ValueError if host bits are set, or
        if the same prefix already has a rule). Prefixes may overlap: the longest wins.
        """
        key = _network(network)
        if key in self._prefix_rules:
            raise ValueError(f"{key} already has a prefix rule")
        self._prefix_rules[key] = handler
        self._build_prefix_tables()

    def remove_prefix_rule(self, network: str) -> None:
        """Stop claiming packets for ``network`` (KeyError if it has no prefix rule)."""
        del self._prefix_rules[_network(network)]
        self._build_prefix_tables()

    @property
    def prefixes(self) -> list[str]:
        """The prefixes that have a rule, as text, in the order they were added."""
        return [str(network) for network in self._prefix_rules]

    def _build_prefix_tables(self) -> None:
        """Rebuild the lookup tables from the prefix rules (rules change rarely)."""
        rules = self._prefix_rules
        if not rules:
            self._prefix_tables = None
            return
        v4 = [(net, handler) for net, handler in rules.items() if net.version == 4]
        v6 = [(net, handler) for net, handler in rules.items() if net.version == 6]
        self._prefix_tables = (_prefix_table(v4, 32), _prefix_table(v6, 128))

    # -- inbound ---------------------------------------------------------------------------

    def filter(self, packets: Iterable[bytes]) -> list[bytes]:
        """Give claimed packets to their handlers; return the unclaimed ones, in order.

        The destination is read straight from the fixed header at the offsets the header
        modules name (``IPV4_DST``, ``IPV6_DST``) and nothing else is checked: validation
        belongs to whoever gets the packet (a full parse here would double its cost). A packet
        too short for its version's header, or of no known version, is counted and returned
        as unclaimed.
        """
        rules = self._rules
        prefixes = self._prefix_tables
        unclaimed: list[bytes] = []
        claimed = 0
        by_prefix = 0
        for packet in packets:
            n = len(packet)
            if n == 0:
                self._malformed.inc("empty")
                unclaimed.append(packet)
                continue
            version = packet[0] >> 4
            if version == 4:
                if n < IPV4_MIN_HEADER_LEN:
                    self._malformed.inc("short_ipv4")
                    unclaimed.append(packet)
                    continue
                handler = rules.get(packet[IPV4_DST])
            elif version == 6:
                if n < IPV6_HEADER_LEN:
                    self._malformed.inc("short_ipv6")
                    unclaimed.append(packet)
                    continue
                handler = rules.get(packet[IPV6_DST])
            else:
                self._malformed.inc("bad_version")
                unclaimed.append(packet)
                continue
            if handler is None:
                if prefixes is not None:
                    handler = _match_prefix(prefixes, packet, version)
                    if handler is not None:
                        by_prefix += 1
                        handler(packet)
                        continue
                unclaimed.append(packet)
            else:
                claimed += 1
                handler(packet)
        if by_prefix:
            claimed += by_prefix
            self.counters.inc("claimed_prefix", by_prefix)
        if claimed:
            self.counters.inc("claimed", claimed)
        if unclaimed:
            self.counters.inc("unclaimed", len(unclaimed))
        return unclaimed

    def rule_for(self, packet: bytes) -> str:
        """Say which rule claims ``packet`` (for ``olm trace``), as :meth:`filter` decides."""
        version = packet[0] >> 4 if packet else 0
        if version not in (4, 6) or len(packet) < (
            IPV4_MIN_HEADER_LEN if version == 4 else IPV6_HEADER_LEN
        ):
            return "malformed: passed on"
        dst = packet[IPV4_DST] if version == 4 else packet[IPV6_DST]
        if dst in self._rules:
            return f"address rule {ipaddress.ip_address(dst)}: to the stack"
        if self._prefix_tables is not None:
            address = ipaddress.ip_address(dst)
            for network in self._prefix_rules:
                if address in network:
                    return f"prefix rule {network}"
        return "no rule: passed on"

    def receive(self, packets: Iterable[bytes]) -> None:
        """Filter a batch read from the TUN and pass each unclaimed packet to ``next_consumer``."""
        consumer = self.next_consumer
        for packet in self.filter(packets):
            consumer(packet)

    def deliver_network_packet(self, packet: bytes) -> None:
        """Take one packet read from the TUN (the device is the TUN link's dispatcher)."""
        self.receive((packet,))

    def _drop(self, packet: bytes) -> None:
        """Drop an unclaimed packet (the default consumer)."""
        self.counters.inc("unclaimed_dropped")

    # -- outbound --------------------------------------------------------------------------

    def write_packets(self, packets: Iterable[bytes]) -> int:
        """Write packets to the TUN, bypassing the rules; return how many were accepted."""
        batch = packets if isinstance(packets, list) else list(packets)
        written = self._write(batch)
        self.counters.inc("written", written)
        return written

    def stack_link(self, mtu: int, addresses: Iterable[str] = ()) -> RuleLink:
        """Return a link endpoint for a stack NIC whose inbound packets are claimed ones.

        A rule is added for each of ``addresses`` (more can point at :meth:`RuleLink.deliver`);
        the link's writes go straight to the TUN, and closing it removes its rules.
        """
        link = RuleLink(self, mtu)
        try:
            for address in addresses:
                link.claim(address)
        except BaseException:
            link.close()
            raise
        return link


class RuleLink:
    """A :class:`netstack.link.LinkEndpoint` behind the rules of a :class:`FilteredDevice`."""

    __slots__ = ("_claimed", "_closed", "_device", "_dispatcher", "_mtu", "counters")

    def __init__(self, device: FilteredDevice, mtu: int) -> None:
        if mtu <= 0:
            raise ValueError(f"mtu must be positive, not {mtu}")
        self._device = device
        self._mtu = mtu
        self._dispatcher: NetworkDispatcher | None = None
        self._claimed: list[str] = []
        self._closed = False
        self.counters = device.counters.child("link")

    @property
    def mtu(self) -> int:
        """Largest IP packet, in bytes, the link carries."""
        return self._mtu

    def attach(self, dispatcher: NetworkDispatcher | None) -> None:
        """Deliver claimed packets to ``dispatcher`` from now on (None detaches)."""
        self._dispatcher = dispatcher

    def claim(self, address: str) -> None:
        """Add a rule sending packets for ``address`` to this link."""
        self._device.add_rule(address, self.deliver)
        self._claimed.append(address)

    def deliver(self, packet: bytes) -> None:
        """Take one claimed inbound packet into the attached stack (a rule handler)."""
        dispatcher = self._dispatcher
        if dispatcher is None or self._closed:
            self.counters.inc("rx_dropped_detached")
            return
        dispatcher.deliver_network_packet(packet)

    def write_packets(self, packets: Iterable[bytes]) -> int:
        """Send the stack's packets to the TUN, bypassing the rules."""
        if self._closed:
            self.counters.inc("dropped_closed")
            return 0
        return self._device.write_packets(packets)

    def close(self) -> None:
        """Remove this link's rules; later writes are dropped."""
        if self._closed:
            return
        self._closed = True
        for address in self._claimed:
            self._device.remove_rule(address)
        self._claimed.clear()
