"""What ``olm up`` and ``olm serve`` share: the engine with its settings, and its supervision.

* :class:`DnsService`: the pipeline and engine built from the settings, the DNS-over-TCP
  server, reload (SIGHUP), rebuild (a data file changed) and a draining stop. Subclasses put
  listeners on it: netstack endpoints behind a TUN (``olm up``, :class:`olm.daemon.Service`) or
  kernel sockets (``olm serve``, :class:`olm.serve.KernelService`).
* :class:`Supervisor`: signals (SIGINT/SIGTERM stop, SIGHUP reloads), the watcher of data files,
  and the ready line.
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

from netstack.clock import Clock
from netstack.counters import Counters
from netstack.stack import Stack
from olm.config import ConfigError, Settings
from olm.dns.engine import Engine
from olm.dns.frontends import tcp_server
from olm.dns.pipeline import DataError, Pipeline
from olm.dns.upstream import UpstreamConfigError

__all__ = ["DnsService", "StartupError", "Supervisor"]

log = logging.getLogger("olm")


class StartupError(Exception):
    """The daemon cannot start; the message says why, ``status`` is the exit status.

    1 when the environment lacks something (no usable upstream in resolv.conf, an address in
    use), 2 for a bad setting or data file (records, lines, hosts, lists), whose file, line and
    field the message names, or a missing privilege.
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class DnsService:
    """The engine of one configuration, with what any listener needs around it.

    Building it builds the first chain, so a configuration without a usable upstream, or with
    a bad data file, is a :class:`StartupError` here, before anything else is created.
    """

    RELOADABLE = frozenset(
        {
            "block",
            "upstreams",
            "bootstrap",
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
            "fastest_addr",
            "health",
        }
    )
    """Settings a SIGHUP applies; the others (the TUN, addresses, TCP limits...) need a restart."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        counters: Counters,
        resolv_conf: str | Path = "/etc/resolv.conf",
    ) -> None:
        self.settings = settings
        self.counters = counters  # the "dns" node
        self.pipeline = Pipeline(settings, clock, counters, resolv_conf)
        try:
            chain = self.pipeline.build(settings)
        except DataError as exc:
            raise StartupError(str(exc), status=2) from exc
        except (UpstreamConfigError, ConfigError) as exc:
            raise StartupError(str(exc)) from exc
        self.engine = Engine(chain, clock, counters, self.pipeline.gate)
        self.tcp = tcp_server(
            self.engine,
            idle_timeout=settings.tcp_idle_timeout,
            message_timeout=settings.tcp_message_timeout,
            max_connections=settings.tcp_max_connections,
            max_inflight=settings.tcp_max_inflight,
        )
        self._listeners: list[Any] = []  # TCP servers: close() and wait_closed()
        self._datagram: list[Any] = []  # UDP endpoints: close()

    def reload(self, settings: Settings) -> list[str]:
        """Apply the reloadable settings; return the changed ones that need a restart.

        A new chain is built and swapped in: queries in flight finish on the chain they
        started on, new ones take the new chain. Raises ConfigError or DataError (and changes
        nothing) when the new settings or their files are bad.
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

    def describe(self) -> str:
        """One line on what serves: upstreams, policy, cache."""
        s = self.settings
        cache = f"cache {s.cache.size} entries" if s.cache.enabled else "no cache"
        return f"upstreams {', '.join(self.upstreams)}, policy {s.policy}, {cache}"

    async def stop(self) -> None:
        """Stop accepting queries, finish those in flight (up to the deadline), then close.

        New queries arriving meanwhile are answered REFUSED (RFC 8906: always answer); the UDP
        endpoints stay open until the queries in flight have had their answers sent.
        """
        gate = self.pipeline.gate
        gate.accepting = False
        for server in self._listeners:
            server.close()  # no new connections; open ones finish their queries
        finished = await gate.drain(self.settings.deadline + 1.0)
        if not finished:
            log.warning("stopping with %d queries unanswered", gate.inflight)
        for endpoint in self._datagram:
            endpoint.close()
        await self.tcp.close()
        await self.engine.close()
        self.pipeline.close()
        for server in self._listeners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)


class Supervisor:
    """Runs a service until SIGINT/SIGTERM: reloads on SIGHUP, watches the data files.

    ``reload_settings`` re-reads flags, environment and file (None: SIGHUP does nothing);
    ``ready`` gets the one line printed when serving. It is what the control socket shows
    (:class:`olm.control.Inspectable`).
    """

    kind = "serve"

    def __init__(
        self,
        reload_settings: Callable[[], Settings] | None = None,
        ready: Callable[[str], None] | None = None,
    ) -> None:
        self.reload_settings = reload_settings
        self.ready = ready or (lambda line: print(line, flush=True))
        self.service: DnsService | None = None
        #: The userspace stack under the service (None for ``olm serve``: kernel sockets).
        self.stack: Stack | None = None
        #: The root of the counter tree (the stack's, or the service's own).
        self.counters = Counters()
        #: Follows packets and queries for ``olm trace`` (olm.trace.Tracer); set by run().
        self.tracer: Any = None
        self._stop = asyncio.Event()

    @contextlib.asynccontextmanager
    async def signals(self) -> Any:
        """Install the signal handlers for the duration of the block."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def serve(self, service: DnsService, line: str) -> None:
        """Print ``line``, then serve until told to stop; stop the service, draining."""
        self.service = service
        watcher = asyncio.ensure_future(self._watch(service))
        async with contextlib.AsyncExitStack() as views:
            await self._open_views(service, views)
            self.ready(line)
            try:
                await self._stop.wait()
                log.info("stopping")
            finally:
                watcher.cancel()
                await service.stop()

    async def _open_views(self, service: DnsService, views: contextlib.AsyncExitStack) -> None:
        """Open what looks inside: the control socket, ``/metrics``, the query log.

        Each registers its closing with ``views``; a view that cannot open is a StartupError.
        """
        from olm.control import open_control

        settings = service.settings
        await open_control(settings.control, self, views)
        if settings.metrics:
            from olm.metrics import open_metrics

            await open_metrics(settings.metrics, self.counters, service, views)
        if settings.query_log.enabled:
            from olm.querylog import open_query_log

            open_query_log(settings.query_log, service.engine, views)

    def stop(self) -> None:
        """Ask the service to stop (as SIGTERM does)."""
        self._stop.set()

    def reload(self) -> None:
        """Re-read the settings and apply them; on failure keep the old ones (SIGHUP)."""
        service = self.service
        if self.reload_settings is None or service is None:
            return
        try:
            settings = self.reload_settings()
            ignored = service.reload(settings)
        except (ConfigError, UpstreamConfigError, DataError) as exc:
            self._failed(service, exc)
            return
        if ignored:
            log.warning("reload: %s changed but take effect only on restart", ", ".join(ignored))
        ups = ", ".join(service.upstreams)
        log.info("reloaded: upstreams %s, policy %s", ups, settings.policy)
        print(f"olm: reloaded, upstreams {ups}", flush=True)

    @staticmethod
    def _failed(service: DnsService, exc: Exception) -> None:
        """Keep the old settings and data; log the error (file, line, field) and count it."""
        service.counters.inc("reload_failed")
        log.error("reload failed, keeping the old settings and data: %s", exc)

    async def _watch(self, service: DnsService) -> None:
        """Rebuild the chain when a data file changes (polled every ``watch_interval``).

        A file that changed is read again with all the others; when any of them is bad the
        old chain stays, and the change is retried when the file changes again.
        """
        seen = _stats(service.settings.data_files)
        while True:
            await asyncio.sleep(service.settings.watch_interval)
            service.pipeline.save_state(delay=30.0)
            now = _stats(service.settings.data_files)
            if now == seen:
                continue
            seen = now
            try:
                service.rebuild()
            except (ConfigError, UpstreamConfigError, DataError) as exc:
                self._failed(service, exc)
                continue
            service.counters.inc("data_reloaded")
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
