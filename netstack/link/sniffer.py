"""A link endpoint that watches the packets crossing another one.

:class:`SnifferEndpoint` wraps any endpoint. Every packet in either direction is appended to a
pcap file (when given one) and, when given a ``log`` callable, described in one line: the
direction (``in `` or ``out``), a space, and :func:`netstack.header.summary.summarize` of the
packet. It changes nothing it forwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from netstack.counters import Counters
from netstack.header.summary import summarize
from netstack.link import LinkEndpoint, NetworkDispatcher
from netstack.link.pcap import PcapWriter

__all__ = ["SnifferEndpoint"]


class SnifferEndpoint:
    """Wraps ``inner`` and records every inbound and outbound packet to a pcap and/or a log.

    A pcap write that fails (disk full, closed file) is counted as ``pcap_errors`` and the packet
    is still forwarded: watching must never break the link.

    Counters (under the ``sniffer`` node): ``in_packets``, ``out_packets``, ``pcap_errors``.
    """

    __slots__ = ("_dispatcher", "_inner", "_log", "_pcap", "_time", "counters")

    def __init__(
        self,
        inner: LinkEndpoint,
        *,
        pcap: PcapWriter | None = None,
        log: Callable[[str], None] | None = None,
        time_source: Callable[[], float] = time.time,
        counters: Counters | None = None,
    ) -> None:
        self.counters: Counters = (
            counters.child("sniffer") if counters is not None else Counters("sniffer")
        )
        self._inner = inner
        self._pcap = pcap
        self._log = log
        self._time = time_source
        self._dispatcher: NetworkDispatcher | None = None

    @property
    def inner(self) -> LinkEndpoint:
        """The endpoint being watched."""
        return self._inner

    @property
    def mtu(self) -> int:
        """The wrapped endpoint's MTU."""
        return self._inner.mtu

    def attach(self, dispatcher: NetworkDispatcher | None) -> None:
        """Deliver the inner endpoint's inbound packets, after recording them, to ``dispatcher``."""
        self._dispatcher = dispatcher
        self._inner.attach(self if dispatcher is not None else None)

    def _record(self, direction: str, packet: bytes) -> None:
        pcap = self._pcap
        if pcap is not None:
            try:
                pcap.write(packet, self._time())
            except (OSError, ValueError):
                self.counters.inc("pcap_errors")
        log = self._log
        if log is not None:
            log(f"{direction} {summarize(packet)}")

    def deliver_network_packet(self, packet: bytes) -> None:
        """Record one inbound packet and pass it to the attached dispatcher."""
        self.counters.inc("in_packets")
        self._record("in ", packet)
        dispatcher = self._dispatcher
        if dispatcher is not None:
            dispatcher.deliver_network_packet(packet)

    def write_packets(self, packets: Iterable[bytes]) -> int:
        """Record outbound packets and send them through the inner endpoint."""
        batch = packets if isinstance(packets, list) else list(packets)
        if self._pcap is not None or self._log is not None:
            for packet in batch:
                self._record("out", packet)
        self.counters.inc("out_packets", len(batch))
        return self._inner.write_packets(batch)

    def flush(self) -> None:
        """Flush the pcap file, if any, so that readers see every packet so far."""
        if self._pcap is not None:
            try:
                self._pcap.flush()
            except (OSError, ValueError):
                self.counters.inc("pcap_errors")

    def close(self) -> None:
        """Flush the pcap (it stays open: its owner closes it) and close the inner endpoint."""
        self.flush()
        self._dispatcher = None
        self._inner.close()
