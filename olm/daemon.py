"""``olm up``: the virtual DNS proxy on a TUN, as a long-running daemon.

Wiring (DESIGN.md, "Data flow of one query")::

    TUN fd -> FdEndpoint -> [SnifferEndpoint] -> FilteredDevice --(dst is a service address)-->
        RuleLink -> Stack NIC -> IPv4/IPv6 -> UDP/TCP :53 -> Engine -> upstreams (host sockets)
    Engine -> Stack -> RuleLink -> FilteredDevice.write_packets -> TUN fd   (bypasses the rules)

Packets to other destinations are not the proxy's: they go to the FilteredDevice's next
consumer (dropped and counted here; in the WireGuard client they would enter the tunnel).

Signals: SIGINT/SIGTERM stop accepting queries, let the ones in flight finish (up to the
upstream deadline), then remove the routes, addresses and the TUN; SIGHUP reloads the settings
and swaps in a new chain of handlers without dropping a query.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from netstack.clock import AsyncioClock
from netstack.stack import Stack
from olm.config import Settings
from olm.dns.frontends import StackUdpServer
from olm.runtime import TunStack, TunStackConfig, assign_service_addresses
from olm.serving import DnsService, StartupError, Supervisor
from olm.trace import Tracer

__all__ = ["Daemon", "Service", "StartupError"]

log = logging.getLogger("olm.daemon")

DNS_PORT = 53


class Service(DnsService):
    """The stack and the DNS engine on its service addresses, on any link endpoint.

    Used by the daemon (over the TUN behind a FilteredDevice) and by ``olm demo`` (over an
    in-memory link): everything above the link is the same.
    """

    def __init__(
        self, settings: Settings, stack: Stack, resolv_conf: str | Path = "/etc/resolv.conf"
    ) -> None:
        super().__init__(settings, stack.clock, stack.counters.child("dns"), resolv_conf)
        self.stack = stack

    def add_addresses(self, nic: str) -> None:
        """Give the stack its service addresses and a default route per family via ``nic``."""
        assign_service_addresses(self.stack, nic, self.settings.addresses)

    async def start(self) -> None:
        """Listen on port 53 over UDP and TCP on every service address."""
        from netstack.adapters import start_server

        for text in self.settings.addresses:
            self._datagram.append(StackUdpServer(self.engine, self.stack, text, DNS_PORT))
            server = await start_server(
                self.stack,
                self.tcp.handle_connection,
                text,
                DNS_PORT,
                backlog=self.settings.tcp_max_connections,
            )
            self._listeners.append(server)


class Daemon(Supervisor):
    """``olm up``: a TUN, a FilteredDevice, the stack and the DNS proxy, until told to stop."""

    kind = "up"

    def __init__(
        self,
        settings: Settings,
        *,
        reload_settings: Callable[[], Settings] | None = None,
        resolv_conf: str | Path = "/etc/resolv.conf",
        ready: Callable[[str], None] | None = None,
        offload: bool = False,
    ) -> None:
        super().__init__(reload_settings, ready)
        self.settings = settings
        # TCP segmentation offload on the TUN: off by default, as DNS is small UDP messages,
        # which pay for it (docs/performance.md); bulk TCP is what gains.
        self.offload = offload
        self.resolv_conf = resolv_conf

    async def run(self) -> int:
        """Serve until SIGINT/SIGTERM; return the exit status."""
        s = self.settings
        async with self.signals():
            stack = self.stack = Stack(AsyncioClock())
            self.counters = stack.counters
            # No usable upstream, or a bad data file, is a startup error before anything is
            # created.
            service = Service(s, stack, self.resolv_conf)
            self.service = service
            fake = s.fake_ip
            ranges = [fake.ipv4_range, *([fake.ipv6_range] if fake.ipv6_range else [])]
            tun = TunStackConfig(
                tun=s.tun,
                addresses=list(s.addresses),
                mtu=s.mtu,
                pcap=s.pcap,
                offload=self.offload,
                filtered=True,
                prefixes=ranges if fake.enabled else [],
            )
            async with TunStack(tun, stack) as running:
                if fake.enabled and running.filtered is not None:
                    # Traffic to fake addresses comes to us: hand it to whoever maps it back.
                    for prefix in ranges:
                        running.filtered.add_prefix_rule(prefix, self.fake_ip_packet)
                await service.start()
                self.tracer = Tracer(
                    stack.counters,
                    engines=[service.engine],
                    stack=stack,
                    link=running.link,
                    dispatcher=running.filtered,
                    nic=stack.nics["tun"],
                    filtered=running.filtered,
                )
                await self.serve(
                    service,
                    f"olm: ready on {s.tun} ({', '.join(s.addresses)}) port 53, "
                    f"{service.describe()}",
                )
        return 0

    def fake_ip_packet(self, packet: bytes) -> None:
        """Take a packet sent to a fake-IP address: count it, and name its destination.

        A transparent proxy would take the traffic from here, knowing which name it is for
        (``pipeline.fake_pool.name_for``); olm counts it and logs the name at DEBUG.
        """
        service = self.service
        if service is None:
            return
        service.counters.child("fake_ip").inc("traffic")
        pool = service.pipeline.fake_pool
        if pool is not None and log.isEnabledFor(logging.DEBUG):
            destination = packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]
            log.debug("traffic for %s", pool.name_for(destination))
