"""From settings to a chain of handlers, and what the chains of successive reloads share.

A :class:`Pipeline` owns what must outlive any one chain: the in-flight gate, the cache's
entries and flights, the upstream transports (their socket pools) and the counters. Each call
of :meth:`Pipeline.build` reads the settings' data files and makes a new chain over those, so
SIGHUP (or a changed data file) can swap chains atomically: a query in flight keeps the handlers
(and upstream group) it started with, and a query sees either the old data or the new.

The chain, in order (handlers that have nothing to do are left out)::

    sanitise -> admission -> views -> records -> hosts -> block -> fake_ip -> split -> cache
      -> fastest -> forward

``fastest`` sits below the cache, so the answer it reorders is the one cached: a hit costs no
probe. Upstream groups whose upstreams, policy and limits are unchanged are kept across
reloads with their health records (latency averages, marks down).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from netstack.clock import Clock
from netstack.counters import Counters
from olm.config import ConfigError, Settings
from olm.dns.blocklist import (
    Blocklists,
    DomainSet,
    ListError,
    ListRefresher,
    ListSource,
    ParsedList,
    load,
    wire_name,
)
from olm.dns.cache import Cache
from olm.dns.fakeip import FakeIpError, FakeIpPool
from olm.dns.handlers import Handler, link
from olm.dns.handlers.admission import Admission, Gate
from olm.dns.handlers.block import Block
from olm.dns.handlers.cache import CacheHandler
from olm.dns.handlers.fake_ip import FakeIp
from olm.dns.handlers.fastest import FastestAddress
from olm.dns.handlers.forward import Forward
from olm.dns.handlers.hosts import Hosts
from olm.dns.handlers.records import Records
from olm.dns.handlers.sanitise import Sanitise
from olm.dns.handlers.split import PRIVATE_REVERSE_ZONES, Split
from olm.dns.handlers.views import View, Views
from olm.dns.local import LocalData
from olm.dns.localfiles import (
    DataError,
    Lines,
    build_local_data,
    read_hosts_files,
    read_lines_file,
    read_records_file,
)
from olm.dns.upstream import (
    Transport,
    Upstream,
    UpstreamGroup,
    parse_upstream,
    upstream_from,
)
from olm.dns.upstream.bootstrap import Bootstrap
from olm.dns.upstream.factory import make_transport

__all__ = ["DataError", "Pipeline"]

log = logging.getLogger("olm.dns")


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
        self._transports: dict[Upstream, Transport] = {}
        self._groups: dict[tuple[object, ...], UpstreamGroup] = {}
        self._fastest: tuple[tuple[int, ...], dict[bytes, Any]] | None = None
        self.bootstrap: Bootstrap | None = None
        self._bootstrap_spec: list[str] = []
        self.settings = settings
        self.upstreams: list[Upstream] = []
        self._routing: tuple[object, ...] = ()
        self.local: LocalData | None = None
        self.block: Block | None = None
        self._lists: dict[str, tuple[object, DomainSet]] = {}
        self._refresher: ListRefresher | None = None
        self._refresh_key: tuple[ListSource, ...] = ()
        self._tasks: set[asyncio.Task[None]] = set()
        self.fake_pool: FakeIpPool | None = None

    @property
    def groups(self) -> list[UpstreamGroup]:
        """The upstream groups of the chain in force (default, views, split), once each."""
        return list(dict.fromkeys(self._groups.values()))

    def build(self, settings: Settings) -> Handler:
        """Make the chain for ``settings``, reading its data files.

        Raises ConfigError when no upstream is usable and DataError when a data file is bad;
        then nothing is changed. Applied to the shared state: the in-flight bound, the cache's
        bounds and rules (its entries are dropped when the upstreams change, as they answered
        for the old ones), and transports for new upstreams (those no longer named are closed
        once every query that may still use them has passed its deadline).
        """
        upstreams = settings.upstream_list(self.resolv_conf)
        local = self._local_data(settings)
        blocklists = self._blocklists(settings)
        lines = read_lines_file(settings.lines_file) if settings.lines_file else Lines()
        hosts = read_hosts_files(settings.hosts_files) if settings.hosts_files else None
        pool = self._fake_pool(settings)
        routing = self._routing_of(settings, upstreams)
        own = {ipaddress.ip_address(a) for a in settings.addresses}
        for spec in [
            *(u for v in settings.views for u in v.upstreams),
            *(u for s in settings.split for u in s.upstreams),
            *settings.private_reverse_upstreams,
        ]:
            upstream = upstream_from(spec)
            if upstream.is_ip and upstream.address in own:
                raise ConfigError(f"upstreams: {upstream} is one of the service addresses")
            if not upstream.is_ip and not settings.bootstrap:
                raise ConfigError(f"upstreams: {upstream} names a host: set bootstrap resolvers")
        # Everything read and checked: from here on nothing fails.
        if self._routing and routing != self._routing:
            self.cache.flush()
        self.cache.configure(settings.cache, self.clock.now())
        self.gate.limit = settings.max_inflight
        if settings.bootstrap != self._bootstrap_spec:
            if self.bootstrap is not None:
                self.bootstrap.close()
            self.bootstrap = Bootstrap(
                [parse_upstream(text) for text in settings.bootstrap],
                self.counters.child("bootstrap"),
                timeout=settings.timeout,
            )
            self._bootstrap_spec = list(settings.bootstrap)
        used: set[Upstream] = set()
        groups: dict[tuple[object, ...], UpstreamGroup] = {}
        default = self._group("default", upstreams, settings.policy, settings, used, groups)
        views = [
            View(
                v.name,
                tuple(ipaddress.ip_network(c, strict=False) for c in v.clients),
                self._group(f"view:{v.name}", v.upstreams, v.policy, settings, used, groups)
                if v.upstreams
                else None,
                frozenset(v.blocklists) if v.blocklists is not None else None,
            )
            for v in settings.views
        ]
        routes = {
            s.suffix: self._group(
                f"split:{s.suffix}", s.upstreams, s.policy, settings, used, groups
            )
            for s in settings.split
        }
        if settings.private_reverse_upstreams:
            private = self._group(
                "private-reverse",
                settings.private_reverse_upstreams,
                settings.policy,
                settings,
                used,
                groups,
            )
            for zone in PRIVATE_REVERSE_ZONES:
                routes.setdefault(zone, private)
        self._retire(used, settings.deadline)
        self._groups = groups
        c = self.counters
        handlers: list[Handler] = [Sanitise(c), Admission(c, self.gate)]
        if lines.prefixes or views:
            handlers.append(Views(c, lines, views))
        if local is not None:
            handlers.append(Records(c, local, self.clock))
        if hosts is not None:
            handlers.append(Hosts(c, hosts, settings.hosts_ttl, settings.local_negative_ttl))
        self.block = None
        if blocklists is not None:
            self.block = Block(c, blocklists, settings.block.answer, settings.block.ttl)
            handlers.append(self.block)
            self._refresh_lists(settings)
        if pool is not None:
            fake = settings.fake_ip
            handlers.append(FakeIp(c, pool, fake.suffixes, fake.exclude))
        if routes:
            handlers.append(Split(c, routes))
        if settings.cache.enabled:
            handlers.append(CacheHandler(c, self.cache, self.clock, self.gate))
        if settings.fastest_addr.enabled:
            handlers.append(self._fastest_handler(settings))
        handlers.append(Forward(c, default))
        self.settings = settings
        self.upstreams = upstreams
        self._routing = routing
        self.local = local
        return link(handlers, c)

    def _sources(self, settings: Settings) -> list[ListSource]:
        """Return the ``[block] lists`` as named sources (file or URL stems, made unique)."""
        sources: list[ListSource] = []
        names: set[str] = set()
        for location in settings.block.lists:
            stem = Path(location.split("?", 1)[0].rstrip("/")).stem or "list"
            name = stem
            n = 1
            while name in names:
                n += 1
                name = f"{stem}-{n}"
            names.add(name)
            sources.append(ListSource(name, location, settings.block.refresh))
        return sources

    def _blocklists(self, settings: Settings) -> Blocklists | None:
        """Read the block and allow lists; unchanged files are not read again."""
        block = settings.block
        if not block.lists:
            return None
        cache_dir = Path(settings.state_dir) / "lists"
        sets: list[tuple[str, DomainSet]] = []
        kept: dict[str, tuple[object, DomainSet]] = {}
        for source in self._sources(settings):
            stamp = _stamp(source.cache_path(cache_dir) if source.is_url else source.location)
            known = self._lists.get(source.location)
            if known is not None and stamp is not None and known[0] == stamp:
                names = known[1]
            else:
                try:
                    if source.is_url:
                        cache_dir.mkdir(parents=True, exist_ok=True)
                    parsed = load(source, cache_dir)
                except (ListError, OSError) as exc:
                    raise DataError(f"[block] list {source.location}: {exc}") from None
                names = DomainSet.build(parsed.block)
            kept[source.location] = (stamp, names)
            sets.append((source.name, names))
        allowed: list[bytes] = []
        for item in block.allow:
            if "/" in item:
                try:
                    parsed = load(ListSource("allow", item), cache_dir)
                except (ListError, OSError) as exc:
                    raise DataError(f"[block] allow {item}: {exc}") from None
                allowed += parsed.block + parsed.allow
            else:
                allowed.append(wire_name(item.removeprefix("*.")))
        self._lists = kept
        return Blocklists(sets, DomainSet.build(allowed))

    def _refresh_lists(self, settings: Settings) -> None:
        """Keep downloading the URL lists; each new one replaces its set in the chain."""
        sources = [s for s in self._sources(settings) if s.is_url]
        key = tuple(sources)
        if key == self._refresh_key:
            return
        if self._refresher is not None:
            self._spawn(self._refresher.stop())
            self._refresher = None
        self._refresh_key = key
        if not sources:
            return
        cache_dir = Path(settings.state_dir) / "lists"
        cache_dir.mkdir(parents=True, exist_ok=True)
        by_name = {s.name: s for s in sources}

        def updated(name: str, parsed: ParsedList) -> None:
            source = by_name.get(name)
            if source is not None:
                self._spawn(self._swap_list(source, parsed, cache_dir))

        self._refresher = ListRefresher(
            sources, cache_dir, updated, self.counters.child("block").child("refresh")
        )
        self._refresher.start()

    async def _swap_list(self, source: ListSource, parsed: ParsedList, cache_dir: Path) -> None:
        # Sorting a million hashes takes a second: off the event loop.
        names = await asyncio.to_thread(DomainSet.build, parsed.block)
        self._lists[source.location] = (_stamp(source.cache_path(cache_dir)), names)
        block = self.block
        if block is None:
            return
        lists = [(n, names if n == source.name else s) for n, s in block.lists.lists]
        block.lists = Blocklists(lists, block.lists.allow)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fake_pool(self, settings: Settings) -> FakeIpPool | None:
        """Return the fake-IP pool: kept across reloads unless its ranges or file change."""
        fake = settings.fake_ip
        if not fake.enabled:
            return None
        state = Path(fake.state_file or Path(settings.state_dir) / "fake-ip.json")
        pool = self.fake_pool
        if (
            pool is not None
            and str(pool.ipv4_network) == fake.ipv4_range
            and str(pool.ipv6_network or "") == (fake.ipv6_range or "")
            and pool.state_file == state
        ):
            return pool
        try:
            state.parent.mkdir(parents=True, exist_ok=True)
            new = FakeIpPool.open(
                state,
                fake.ipv4_range,
                fake.ipv6_range,
                counters=self.counters.child("fake_ip").child("pool"),
            )
        except (FakeIpError, OSError) as exc:
            raise DataError(f"[fake_ip] {exc}") from None
        if pool is not None:
            self.save_state()
        self.fake_pool = new
        return new

    def save_state(self, delay: float = 0.0) -> None:
        """Save the fake-IP table if it changed (at most every ``delay`` seconds)."""
        pool = self.fake_pool
        if pool is None:
            return
        try:
            if delay:
                pool.save_if_due(delay)
            elif pool.dirty:
                pool.save()
        except (FakeIpError, OSError) as exc:
            self.counters.child("fake_ip").inc("save_failed")
            log.warning("cannot save the fake-IP table: %s", exc)

    def _local_data(self, settings: Settings) -> LocalData | None:
        specs = list(settings.records)
        for path in settings.records_files:
            specs += read_records_file(path)
        if not (specs or settings.zones or settings.deny):
            return None
        return build_local_data(
            specs,
            zones=settings.zones,
            deny=settings.deny,
            auto_ptr=settings.auto_ptr,
            negative_ttl=settings.local_negative_ttl,
            serial=int(time.time()),
        )

    @staticmethod
    def _routing_of(settings: Settings, default: list[Upstream]) -> tuple[object, ...]:
        """Return what decides which upstream answers what (a change flushes the cache)."""
        return (
            tuple(default),
            tuple((s.suffix, s.upstreams) for s in settings.split),
            tuple((v.name, v.clients, v.upstreams) for v in settings.views),
            tuple(settings.private_reverse_upstreams),
        )

    def _group(
        self,
        name: str,
        upstreams: Sequence[Any],
        policy: str,
        settings: Settings,
        used: set[Upstream],
        groups: dict[tuple[object, ...], UpstreamGroup],
    ) -> UpstreamGroup:
        """Return the group ``name`` of these upstreams: the last chain's if nothing changed."""
        node = self.counters.child("upstream")
        chosen = [item if isinstance(item, Upstream) else upstream_from(item) for item in upstreams]
        used.update(chosen)
        h = settings.health
        key = (name, tuple(chosen), policy, settings.timeout, settings.deadline, h)
        group = self._groups.get(key)
        if group is None:
            transports = []
            for upstream in chosen:
                transport = self._transports.get(upstream)
                if transport is None:
                    transport = make_transport(upstream, node, self.bootstrap)
                    self._transports[upstream] = transport
                transports.append(transport)
            group = UpstreamGroup(
                name,
                transports,
                node,
                policy=policy,
                timeout=settings.timeout,
                deadline=settings.deadline,
                down_after=h.down_after,
                probe_interval=h.probe_interval,
                probe_max=h.probe_max,
                explore=h.explore,
            )
        groups[key] = group
        return group

    def _fastest_handler(self, settings: Settings) -> FastestAddress:
        """Make the fastest-address handler, with the last one's results if the ports agree."""
        spec = settings.fastest_addr
        handler = FastestAddress(
            self.counters,
            ports=spec.ports,
            budget=spec.budget,
            mode="only" if spec.mode == "only" else "first",
            max_probes=spec.max_probes,
            cache_ttl=spec.cache_ttl,
        )
        if self._fastest is not None and self._fastest[0] == spec.ports:
            handler.results = self._fastest[1]
        self._fastest = (spec.ports, handler.results)
        return handler

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
        """Save the fake-IP table; close every transport; cancel the background work."""
        self.save_state()
        self.cache.close()
        if self._refresher is not None:
            self._spawn(self._refresher.stop())
            self._refresher = None
        for transport in self._transports.values():
            with contextlib.suppress(Exception):
                transport.close()
        if self.bootstrap is not None:
            self.bootstrap.close()


def _stamp(path: str | Path) -> tuple[int, int, int] | None:
    """Return a file's identity and version (inode, size, mtime), None if unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
