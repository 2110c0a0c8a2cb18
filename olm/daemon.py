"""``olm up``: the virtual DNS proxy on a TUN, as a long-running daemon.

Wiring (DESIGN.md, "Data flow of one query")::

    TUN fd -> FdEndpoint -> [SnifferEndpoint] -> FilteredDevice --(dst is a service address)-->
        RuleLink -> Stack NIC -> IPv4/IPv6 -> UDP/TCP :53 -> DnsProxy -> upstreams (host sockets)
    DnsProxy -> Stack -> RuleLink -> FilteredDevice.write_packets -> TUN fd   (bypasses the rules)

Packets to other destinations are not the proxy's: they go to the FilteredDevice's next
consumer (dropped and counted here; in the WireGuard client they would enter the tunnel).

Signals: SIGINT/SIGTERM stop accepting queries, let the ones in flight finish (up to the
upstream deadline), then remove the routes, addresses and the TUN; SIGHUP reloads the settings
and switches the upstream list without dropping a query.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from netstack.clock import AsyncioClock
from netstack.counters import Counters
from netstack.link import LinkEndpoint
from netstack.link.fd import FdEndpoint
from netstack.link.pcap import PcapWriter
from netstack.link.sniffer import SnifferEndpoint
from netstack.stack import Stack
from olm.config import ConfigError, Settings
from olm.device.filtered import FilteredDevice
from olm.device.netconfig import NetConfig, configure_tun, default_host_address
from olm.device.tun import TunDevice, open_tun
from olm.dns.proxy import DnsProxy
from olm.dns.upstream import Resolver, UpstreamConfigError

log = logging.getLogger("olm.daemon")

DNS_PORT = 53


class StartupError(Exception):
    """The daemon cannot start; the message says why (exit status 1)."""


class Service:
    """The stack and the DNS proxy on its service addresses, on any link endpoint.

    Used by the daemon (over the TUN behind a FilteredDevice) and by ``olm demo`` (over an
    in-memory link): everything above the link is the same.
    """

    def __init__(self, settings: Settings, stack: Stack, resolver: Resolver) -> None:
        self.settings = settings
        self.stack = stack
        self.resolver = resolver
        self.proxy = DnsProxy(
            resolver,
            max_inflight=settings.max_inflight,
            tcp_idle_timeout=settings.tcp_idle_timeout,
            tcp_message_timeout=settings.tcp_message_timeout,
            tcp_max_connections=settings.tcp_max_connections,
            tcp_max_inflight=settings.tcp_max_inflight,
            counters=stack.counters.child("dns"),
        )
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[Any] = []

    def add_addresses(self, nic: str) -> None:
        """Give the stack its service addresses and a default route per family via ``nic``."""
        families = set()
        for text in self.settings.addresses:
            addr = ipaddress.ip_address(text)
            self.stack.add_address(nic, f"{addr}/{addr.max_prefixlen}")
            families.add(addr.version)
        if 4 in families:
            self.stack.add_route("0.0.0.0/0", nic)
        if 6 in families:
            self.stack.add_route("::/0", nic)

    async def start(self) -> None:
        """Listen on port 53 over UDP and TCP on every service address."""
        from netstack.sockets import create_datagram_endpoint
        from netstack.transport.tcp.streams import start_server

        for text in self.settings.addresses:
            transport, _ = await create_datagram_endpoint(
                self.stack, self.proxy.datagram_protocol, local_addr=(text, DNS_PORT)
            )
            self._udp.append(transport)
            server = await start_server(
                self.stack,
                self.proxy.handle_tcp_connection,
                text,
                DNS_PORT,
                backlog=self.settings.tcp_max_connections,
            )
            self._tcp.append(server)

    def reload(self, settings: Settings, resolv_conf: str | Path = "/etc/resolv.conf") -> None:
        """Switch to the upstreams and policy of ``settings``; queries in flight are unaffected."""
        upstreams = settings.upstream_list(resolv_conf)
        self.resolver.upstreams = list(upstreams)
        self.resolver.policy = type(self.resolver.policy)(settings.policy)
        self.resolver.timeout = settings.timeout
        self.resolver.deadline = settings.deadline
        self.settings = settings

    async def stop(self) -> None:
        """Stop accepting queries, finish those in flight (up to the deadline), then close."""
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        finished = await self.proxy.drain(self.resolver.deadline + 1.0)
        if not finished:
            log.warning("stopping with %d queries unanswered", self.proxy.inflight)
        await self.proxy.close()
        for server in self._tcp:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)


def make_resolver(settings: Settings, counters: Counters, resolv_conf: str | Path) -> Resolver:
    """Build the resolver for ``settings``; no usable upstream is a StartupError."""
    try:
        upstreams = settings.upstream_list(resolv_conf)
        return Resolver(
            upstreams,
            policy=settings.policy,
            timeout=settings.timeout,
            deadline=settings.deadline,
            counters=counters,
        )
    except (UpstreamConfigError, ConfigError) as exc:
        raise StartupError(str(exc)) from exc


class Daemon:
    """``olm up``: a TUN, a FilteredDevice, the stack and the DNS proxy, until told to stop."""

    def __init__(
        self,
        settings: Settings,
        *,
        reload_settings: Callable[[], Settings] | None = None,
        resolv_conf: str | Path = "/etc/resolv.conf",
        ready: Callable[[str], None] | None = None,
        offload: bool = True,
    ) -> None:
        self.settings = settings
        self.offload = offload  # TCP segmentation offload on the TUN, if the kernel agrees
        self.reload_settings = reload_settings
        self.resolv_conf = resolv_conf
        self.ready = ready or (lambda line: print(line, flush=True))
        self.device: TunDevice | None = None
        self.netconfig: NetConfig | None = None
        self.stack: Stack | None = None
        self.service: Service | None = None
        self._tun_link: LinkEndpoint | None = None
        self._pcap_file: BinaryIO | None = None
        self._pcap: PcapWriter | None = None
        self._stop = asyncio.Event()

    async def run(self) -> int:
        """Serve until SIGINT/SIGTERM; return the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            await self._start()
            addresses = ", ".join(self.settings.addresses)
            assert self.service is not None
            ups = ", ".join(str(u) for u in self.service.resolver.upstreams)
            self.ready(
                f"olm: ready on {self.settings.tun} ({addresses}) port 53, upstreams {ups}, "
                f"policy {self.settings.policy}"
            )
            await self._stop.wait()
            log.info("stopping")
            await self.service.stop()
        finally:
            await self._teardown()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

    async def _start(self) -> None:
        s = self.settings
        stack = Stack(AsyncioClock())
        self.stack = stack
        resolver = make_resolver(s, stack.counters.child("dns"), self.resolv_conf)
        self.device = open_tun(s.tun, s.mtu, offload=self.offload)
        # pyroute2's synchronous IPRoute runs an event loop of its own: keep it off ours.
        self.netconfig = await asyncio.to_thread(
            configure_tun,
            self.device.name,
            mtu=s.mtu,
            host_addresses=[default_host_address(a) for a in s.addresses],
            service_addresses=list(s.addresses),
        )
        tun: LinkEndpoint = FdEndpoint(
            self.device.fd, s.mtu, counters=stack.counters, vnet_hdr=self.device.offload
        )
        if s.pcap:
            self._pcap_file = open(s.pcap, "wb")  # noqa: SIM115 - closed in teardown
            self._pcap = PcapWriter(self._pcap_file)
            tun = SnifferEndpoint(tun, pcap=self._pcap, counters=stack.counters)
        self._tun_link = tun
        filtered = FilteredDevice(tun.write_packets, counters=stack.counters)
        tun.attach(filtered)
        stack.create_nic("tun", filtered.stack_link(s.mtu, s.addresses))
        self.service = Service(s, stack, resolver)
        self.service.add_addresses("tun")
        await self.service.start()

    def _reload(self) -> None:
        if self.reload_settings is None or self.service is None:
            return
        try:
            settings = self.reload_settings()
            self.service.reload(settings, self.resolv_conf)
        except (ConfigError, UpstreamConfigError) as exc:
            log.error("reload failed, keeping the old settings: %s", exc)
            return
        ups = ", ".join(str(u) for u in self.service.resolver.upstreams)
        log.info("reloaded: upstreams %s, policy %s", ups, settings.policy)
        print(f"olm: reloaded, upstreams {ups}", flush=True)

    async def _teardown(self) -> None:
        """Undo everything in reverse order; each step runs even if an earlier one failed."""
        if self._tun_link is not None:
            self._tun_link.close()
        if self._pcap is not None:
            self._pcap.close()
        for step in (self._undo_netconfig, self._close_tun):
            try:
                await asyncio.to_thread(step)
            except Exception as failure:  # report every failure, stop at none
                print(f"olm: teardown: {failure}", file=sys.stderr)

    def _undo_netconfig(self) -> None:
        if self.netconfig is not None:
            self.netconfig.undo()
            self.netconfig = None

    def _close_tun(self) -> None:
        if self.device is not None:
            self.device.close()
            self.device = None
