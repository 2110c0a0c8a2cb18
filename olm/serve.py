"""``olm serve``: the DNS engine on kernel sockets, as a sidecar or a per-host daemon.

The same engine, chain, settings and reload as ``olm up``, answering UDP and TCP on ordinary
sockets (``--listen HOST:PORT``, repeatable): no TUN, and no privilege for ports from 1024 up.
This is how the DNS-to-DoT sidecar (plain DNS inside the pod, TLS once it leaves), the Pipy DNS
proxy and gateway proxies run. The dot-proxy's variables ``DOTPROXY_UPSTREAM_HOST``,
``DOTPROXY_UPSTREAM_PORT`` and ``DOTPROXY_LISTEN_PORT`` are accepted as aliases.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from netstack.clock import AsyncioClock
from netstack.counters import Counters
from olm.config import Settings
from olm.dns.frontends import KernelUdpServer
from olm.dns.upstream import parse_upstream
from olm.serving import DnsService, StartupError, Supervisor
from olm.trace import Tracer

__all__ = ["KernelService", "Serve", "dotproxy_environ", "listen_addresses"]

log = logging.getLogger("olm.serve")


def listen_addresses(texts: list[str]) -> list[tuple[str, int]]:
    """Parse ``host:port`` (IPv6 as ``[addr]:port``) listen addresses."""
    found = []
    for text in texts:
        upstream = parse_upstream(text)  # the same syntax, an IP address required
        if not upstream.is_ip:
            raise ValueError(f"{text!r}: listen on an IP address")
        found.append((upstream.host, upstream.port))
    return found


def dotproxy_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """Return ``environ`` with the dot-proxy's variables turned into olm's.

    ``DOTPROXY_UPSTREAM_HOST`` (and ``DOTPROXY_UPSTREAM_PORT``, 853 by default) become a
    ``tls://`` upstream, ``DOTPROXY_LISTEN_PORT`` a listen address on every IPv4 interface. An
    ``OLM_UPSTREAMS`` or ``OLM_LISTEN`` given as well wins.
    """
    env = dict(environ)
    host = env.get("DOTPROXY_UPSTREAM_HOST")
    if host and "OLM_UPSTREAMS" not in env:
        port = env.get("DOTPROXY_UPSTREAM_PORT", "853")
        bracketed = f"[{host}]" if ":" in host else host
        env["OLM_UPSTREAMS"] = f"tls://{bracketed}:{port}"
    listen_port = env.get("DOTPROXY_LISTEN_PORT")
    if listen_port and "OLM_LISTEN" not in env:
        env["OLM_LISTEN"] = f"0.0.0.0:{listen_port}"
    return env


class KernelService(DnsService):
    """The engine answering on kernel sockets: UDP and TCP on each listen address."""

    def __init__(
        self, settings: Settings, counters: Counters, resolv_conf: str | Path = "/etc/resolv.conf"
    ) -> None:
        super().__init__(settings, AsyncioClock(), counters.child("dns"), resolv_conf)

    async def start(self) -> None:
        """Bind UDP and TCP on every listen address; an address in use is a StartupError."""
        try:
            for host, port in listen_addresses(self.settings.listen):
                self._datagram.append(KernelUdpServer(self.engine, host, port))
                server = await asyncio.start_server(
                    self.tcp.handle_connection,
                    host,
                    port,
                    backlog=self.settings.tcp_max_connections,
                )
                self._listeners.append(server)
        except OSError as exc:
            for endpoint in self._datagram:
                endpoint.close()
            for server in self._listeners:
                server.close()
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


class Serve(Supervisor):
    """``olm serve``: a KernelService until SIGINT/SIGTERM, reloading on SIGHUP."""

    def __init__(
        self,
        settings: Settings,
        *,
        reload_settings: Callable[[], Settings] | None = None,
        resolv_conf: str | Path = "/etc/resolv.conf",
        ready: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(reload_settings, ready)
        self.settings = settings
        self.resolv_conf = resolv_conf

    async def run(self) -> int:
        """Serve until SIGINT/SIGTERM; return the exit status."""
        s = self.settings
        async with self.signals():
            service = KernelService(s, self.counters, self.resolv_conf)
            self.service = service
            await service.start()
            self.tracer = Tracer(self.counters, engines=[service.engine])
            where = ", ".join(s.listen)
            await self.serve(service, f"olm: ready on {where}, {service.describe()}")
        return 0
