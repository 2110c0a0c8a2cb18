"""Link endpoints: where packets enter and leave the stack.

Every endpoint carries raw IP packets (no link-layer header, like a TUN opened with
IFF_NO_PI); the IP version nibble tells the NIC which network protocol gets the packet.
Wrappers (sniffer, fault injector) are link endpoints around link endpoints, so they see
exactly what crosses the wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class NetworkDispatcher(Protocol):
    """What a link endpoint hands inbound packets to (a NIC, or a wrapping endpoint)."""

    def deliver_network_packet(self, packet: bytes) -> None:
        """Take one inbound raw IP packet; must never raise on malformed input."""


class LinkEndpoint(Protocol):
    """A link the stack sends raw IP packets through and receives them from."""

    @property
    def mtu(self) -> int:
        """Largest IP packet, in bytes, the link carries."""

    def attach(self, dispatcher: NetworkDispatcher | None) -> None:
        """Start delivering inbound packets to ``dispatcher`` (None detaches)."""

    def write_packets(self, packets: Iterable[bytes]) -> int:
        """Send outbound raw IP packets; return how many the link accepted."""

    def close(self) -> None:
        """Release the link's resources; later writes are dropped."""
