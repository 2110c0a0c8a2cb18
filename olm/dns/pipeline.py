"""From settings to a chain of handlers, and what the chains of successive reloads share.

A :class:`Pipeline` owns what must outlive any one chain: the in-flight gate, the cache's
entries and flights, the upstream transports (their socket pools) and the counters. Each call
of :meth:`Pipeline.build` makes a new chain from settings over those, so SIGHUP can swap chains
atomically: a query in flight keeps the handlers (and upstream group) it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from netstack.clock import Clock
from netstack.counters import Counters
from olm.config import Settings
from olm.dns.cache import Cache
from olm.dns.handlers import Handler, link
from olm.dns.handlers.admission import Admission, Gate
from olm.dns.handlers.cache import CacheHandler
from olm.dns.handlers.forward import Forward
from olm.dns.handlers.sanitise import Sanitise
from olm.dns.upstream import Upstream, UpstreamGroup
from olm.dns.upstream.udp import UdpTransport

__all__ = ["Pipeline"]


class Pipeline:
    """Builds chains from settings over shared state (see the module docstring).

    ``counters`` is the DNS node (``dns``): handlers count under ``dns.<handler>``, the
    upstreams under ``dns.upstream``.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        counters: Counters,
        resolv_conf: str | Path = "/etc/resolv.conf",
    ) -> None:
        self.clock = clock
        self.counters = counters
        self.resolv_conf = resolv_conf
        self.gate = Gate(settings.max_inflight)
        self.cache = Cache(settings.cache, counters.child("cache"))
        self._transports: dict[Upstream, UdpTransport] = {}
        self.settings = settings
        self.upstreams: list[Upstream] = []

    def build(self, settings: Settings) -> Handler:
        """Make the chain for ``settings``; raises ConfigError when no upstream is usable.

        Applied to the shared state: the in-flight bound, the cache's bounds and rules (its
        entries are dropped when the upstreams change, as they answered for the old ones), and
        transports for new upstreams (those no longer named are closed once every query that
        may still use them has passed its deadline).
        """
        upstreams = settings.upstream_list(self.resolv_conf)
        now = self.clock.now()
        if self.upstreams and upstreams != self.upstreams:
            self.cache.flush()
        self.cache.configure(settings.cache, now)
        self.gate.limit = settings.max_inflight
        node = self.counters.child("upstream")
        transports = []
        for upstream in upstreams:
            transport = self._transports.get(upstream)
            if transport is None:
                transport = self._transports[upstream] = UdpTransport(upstream, node)
            transports.append(transport)
        self._retire(set(upstreams), settings.deadline)
        group = UpstreamGroup(
            "default",
            transports,
            node,
            policy=settings.policy,
            timeout=settings.timeout,
            deadline=settings.deadline,
        )
        c = self.counters
        handlers: list[Handler] = [Sanitise(c), Admission(c, self.gate)]
        if settings.cache.enabled:
            handlers.append(CacheHandler(c, self.cache, self.clock, self.gate))
        handlers.append(Forward(c, group))
        self.settings = settings
        self.upstreams = upstreams
        return link(handlers, c)

    def _retire(self, keep: set[Upstream], deadline: float) -> None:
        gone = [u for u in self._transports if u not in keep]
        if not gone:
            return
        loop = asyncio.get_running_loop()
        for upstream in gone:
            transport = self._transports.pop(upstream)
            # Queries of the old chain may still try it, until their deadline.
            loop.call_later(deadline + 1.0, transport.close)

    def close(self) -> None:
        """Close every transport and cancel the cache's flights."""
        self.cache.close()
        for transport in self._transports.values():
            with contextlib.suppress(Exception):
                transport.close()
