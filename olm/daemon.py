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
import logging
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from netstack.clock import AsyncioClock
from netstack.counters import Counters
from netstack.stack import Stack
from olm.config import ConfigError, Settings
from olm.dns.proxy import DnsProxy
from olm.dns.upstream import Resolver, UpstreamConfigError
from olm.runtime import TunStack, TunStackConfig, assign_service_addresses

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
        assign_service_addresses(self.stack, nic, self.settings.addresses)

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

    RELOADABLE = frozenset({"upstreams", "policy", "timeout", "deadline", "max_inflight"})
    """Settings a SIGHUP applies; the others (the TUN, addresses, TCP limits...) need a restart."""

    def reload(self, settings: Settings, resolv_conf: str | Path = "/etc/resolv.conf") -> list[str]:
        """Apply the reloadable settings; return the changed ones that need a restart.

        Queries in flight keep the upstream list they started with; new ones use the new list.
        """
        upstreams = settings.upstream_list(resolv_conf)
        self.resolver.upstreams = list(upstreams)
        self.resolver.policy = type(self.resolver.policy)(settings.policy)
        self.resolver.timeout = settings.timeout
        self.resolver.deadline = settings.deadline
        self.proxy.max_inflight = settings.max_inflight
        old = self.settings
        ignored = [
            name
            for name in Settings.__dataclass_fields__
            if name not in self.RELOADABLE and getattr(old, name) != getattr(settings, name)
        ]
        # Keep describing what is in force: the non-reloadable fields stay as they were.
        self.settings = replace(settings, **{name: getattr(old, name) for name in ignored})
        return ignored

    async def stop(self) -> None:
        """Stop accepting queries, finish those in flight (up to the deadline), then close.

        New queries arriving meanwhile are answered REFUSED (RFC 8906: always answer); the UDP
        endpoints stay open until the queries in flight have had their answers sent.
        """
        self.proxy.accepting = False
        for server in self._tcp:
            server.close()  # no new connections; open ones finish their queries
        finished = await self.proxy.drain(self.resolver.deadline + 1.0)
        if not finished:
            log.warning("stopping with %d queries unanswered", self.proxy.inflight)
        for transport in self._udp:
            transport.close()
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
        self.stack: Stack | None = None
        self.service: Service | None = None
        self._stop = asyncio.Event()

    async def run(self) -> int:
        """Serve until SIGINT/SIGTERM; return the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        s = self.settings
        try:
            stack = self.stack = Stack(AsyncioClock())
            # No usable upstream is a startup error before anything is created.
            resolver = make_resolver(s, stack.counters.child("dns"), self.resolv_conf)
            tun = TunStackConfig(
                tun=s.tun,
                addresses=list(s.addresses),
                mtu=s.mtu,
                pcap=s.pcap,
                offload=self.offload,
                filtered=True,
            )
            async with TunStack(tun, stack):
                self.service = Service(s, stack, resolver)
                await self.service.start()
                ups = ", ".join(str(u) for u in resolver.upstreams)
                self.ready(
                    f"olm: ready on {s.tun} ({', '.join(s.addresses)}) port 53, "
                    f"upstreams {ups}, policy {s.policy}"
                )
                await self._stop.wait()
                log.info("stopping")
                await self.service.stop()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

    def _reload(self) -> None:
        if self.reload_settings is None or self.service is None:
            return
        try:
            settings = self.reload_settings()
            ignored = self.service.reload(settings, self.resolv_conf)
        except (ConfigError, UpstreamConfigError) as exc:
            log.error("reload failed, keeping the old settings: %s", exc)
            return
        if ignored:
            log.warning("reload: %s changed but take effect only on restart", ", ".join(ignored))
        ups = ", ".join(str(u) for u in self.service.resolver.upstreams)
        log.info("reloaded: upstreams %s, policy %s", ups, settings.policy)
        print(f"olm: reloaded, upstreams {ups}", flush=True)
