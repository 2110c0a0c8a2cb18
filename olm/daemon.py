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

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from netstack.clock import AsyncioClock
from netstack.stack import Stack
from olm.config import ConfigError, Settings
from olm.dns.engine import Engine
from olm.dns.frontends import StackUdpServer, tcp_server
from olm.dns.pipeline import DataError, Pipeline
from olm.dns.upstream import UpstreamConfigError
from olm.runtime import TunStack, TunStackConfig, assign_service_addresses

log = logging.getLogger("olm.daemon")

DNS_PORT = 53


class StartupError(Exception):
    """The daemon cannot start; the message says why, ``status`` is the exit status.

    1 when the environment lacks something (no usable upstream in resolv.conf), 2 for a bad
    data file (records, lines, hosts, lists), whose file, line and field the message names.
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class Service:
    """The stack and the DNS engine on its service addresses, on any link endpoint.

    Used by the daemon (over the TUN behind a FilteredDevice) and by ``olm demo`` (over an
    in-memory link): everything above the link is the same. Building it builds the first
    chain, so a configuration without a usable upstream is a :class:`StartupError` here.
    """

    def __init__(
        self, settings: Settings, stack: Stack, resolv_conf: str | Path = "/etc/resolv.conf"
    ) -> None:
        self.settings = settings
        self.stack = stack
        counters = stack.counters.child("dns")
        self.pipeline = Pipeline(settings, stack.clock, counters, resolv_conf)
        try:
            chain = self.pipeline.build(settings)
        except DataError as exc:
            raise StartupError(str(exc), status=2) from exc
        except (UpstreamConfigError, ConfigError) as exc:
            raise StartupError(str(exc)) from exc
        self.engine = Engine(chain, stack.clock, counters, self.pipeline.gate)
        self.tcp = tcp_server(
            self.engine,
            idle_timeout=settings.tcp_idle_timeout,
            message_timeout=settings.tcp_message_timeout,
            max_connections=settings.tcp_max_connections,
            max_inflight=settings.tcp_max_inflight,
        )
        self._udp: list[StackUdpServer] = []
        self._tcp: list[Any] = []

    def add_addresses(self, nic: str) -> None:
        """Give the stack its service addresses and a default route per family via ``nic``."""
        assign_service_addresses(self.stack, nic, self.settings.addresses)

    async def start(self) -> None:
        """Listen on port 53 over UDP and TCP on every service address."""
        from netstack.transport.tcp.streams import start_server

        for text in self.settings.addresses:
            self._udp.append(StackUdpServer(self.engine, self.stack, text, DNS_PORT))
            server = await start_server(
                self.stack,
                self.tcp.handle_connection,
                text,
                DNS_PORT,
                backlog=self.settings.tcp_max_connections,
            )
            self._tcp.append(server)

    RELOADABLE = frozenset(
        {
            "block",
            "upstreams",
            "policy",
            "timeout",
            "deadline",
            "max_inflight",
            "cache",
            "records_files",
            "records",
            "zones",
            "deny",
            "auto_ptr",
            "local_negative_ttl",
            "lines_file",
            "hosts_files",
            "hosts_ttl",
            "split",
            "private_reverse_upstreams",
            "views",
            "watch_interval",
        }
    )
    """Settings a SIGHUP applies; the others (the TUN, addresses, TCP limits...) need a restart."""

    def reload(self, settings: Settings) -> list[str]:
        """Apply the reloadable settings; return the changed ones that need a restart.

        A new chain is built and swapped in: queries in flight finish on the chain they
        started on, new ones take the new chain. Raises ConfigError (and changes nothing)
        when the new settings have no usable upstream.
        """
        old = self.settings
        ignored = [
            name
            for name in Settings.__dataclass_fields__
            if name not in self.RELOADABLE and getattr(old, name) != getattr(settings, name)
        ]
        # Keep describing what is in force: the non-reloadable fields stay as they were.
        effective = replace(settings, **{name: getattr(old, name) for name in ignored})
        self.engine.chain = self.pipeline.build(effective)
        self.settings = effective
        return ignored

    def rebuild(self) -> None:
        """Read the data files again and swap in a new chain (a watched file changed).

        Raises DataError (or ConfigError) and changes nothing when the files are bad.
        """
        self.engine.chain = self.pipeline.build(self.settings)

    @property
    def upstreams(self) -> list[str]:
        """The upstreams in force, as text."""
        return [str(u) for u in self.pipeline.upstreams]

    async def stop(self) -> None:
        """Stop accepting queries, finish those in flight (up to the deadline), then close.

        New queries arriving meanwhile are answered REFUSED (RFC 8906: always answer); the UDP
        endpoints stay open until the queries in flight have had their answers sent.
        """
        gate = self.pipeline.gate
        gate.accepting = False
        for server in self._tcp:
            server.close()  # no new connections; open ones finish their queries
        finished = await gate.drain(self.settings.deadline + 1.0)
        if not finished:
            log.warning("stopping with %d queries unanswered", gate.inflight)
        for udp in self._udp:
            udp.close()
        await self.tcp.close()
        await self.engine.close()
        self.pipeline.close()
        for server in self._tcp:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)


class Daemon:
    """``olm up``: a TUN, a FilteredDevice, the stack and the DNS proxy, until told to stop."""

    def __init__(
        self,
        settings: Settings,
        *,
        reload_settings: Callable[[], Settings] | None = None,
        resolv_conf: str | Path = "/etc/resolv.conf",
        ready: Callable[[str], None] | None = None,
        offload: bool = False,
    ) -> None:
        self.settings = settings
        # TCP segmentation offload on the TUN: off by default, as DNS is small UDP messages,
        # which pay for it (docs/performance.md); bulk TCP is what gains.
        self.offload = offload
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
            service = self.service = Service(s, stack, self.resolv_conf)
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
                watcher = asyncio.ensure_future(self._watch())
                cache = f"cache {s.cache.size} entries" if s.cache.enabled else "no cache"
                self.ready(
                    f"olm: ready on {s.tun} ({', '.join(s.addresses)}) port 53, "
                    f"upstreams {', '.join(service.upstreams)}, policy {s.policy}, {cache}"
                )
                await self._stop.wait()
                log.info("stopping")
                watcher.cancel()
                await service.stop()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

    def _reload(self) -> None:
        if self.reload_settings is None or self.service is None:
            return
        try:
            settings = self.reload_settings()
            ignored = self.service.reload(settings)
        except (ConfigError, UpstreamConfigError, DataError) as exc:
            self._reload_failed(exc)
            return
        if ignored:
            log.warning("reload: %s changed but take effect only on restart", ", ".join(ignored))
        ups = ", ".join(self.service.upstreams)
        log.info("reloaded: upstreams %s, policy %s", ups, settings.policy)
        print(f"olm: reloaded, upstreams {ups}", flush=True)

    def fake_ip_packet(self, packet: bytes) -> None:
        """Take a packet sent to a fake-IP address: count it, and name its destination.

        A transparent proxy would take the traffic from here, knowing which name it is for
        (``pipeline.fake_pool.name_for``); olm counts it and logs the name at DEBUG.
        """
        service = self.service
        if service is None:
            return
        service.stack.counters.child("dns").child("fake_ip").inc("traffic")
        pool = service.pipeline.fake_pool
        if pool is not None and log.isEnabledFor(logging.DEBUG):
            destination = packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]
            log.debug("traffic for %s", pool.name_for(destination))

    def _reload_failed(self, exc: Exception) -> None:
        """Keep the old settings and data; log the error (file, line, field) and count it."""
        if self.stack is not None:
            self.stack.counters.child("dns").inc("reload_failed")
        log.error("reload failed, keeping the old settings and data: %s", exc)

    async def _watch(self) -> None:
        """Rebuild the chain when a data file changes (polled every ``watch_interval``).

        A file that changed is read again with all the others; when any of them is bad the
        old chain stays, and the change is retried when the file changes again.
        """
        seen = _stats(self.settings.data_files)
        while True:
            service = self.service
            await asyncio.sleep(service.settings.watch_interval if service else 2.0)
            if service is None:
                continue
            service.pipeline.save_state(delay=30.0)
            now = _stats(service.settings.data_files)
            if now == seen:
                continue
            seen = now
            try:
                service.rebuild()
            except (ConfigError, UpstreamConfigError, DataError) as exc:
                self._reload_failed(exc)
                continue
            service.stack.counters.child("dns").inc("data_reloaded")
            log.info("data files changed: reloaded")


def _stats(paths: list[str]) -> dict[str, tuple[int, int, int] | None]:
    """Return each file's (inode, size, mtime in ns), or None if it cannot be read."""
    result: dict[str, tuple[int, int, int] | None] = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            result[path] = None
            continue
        result[path] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return result
