"""Prometheus metrics: ``/metrics`` for ``--metrics ADDR:PORT`` (olm up, olm serve, olm stack).

What is exported
    A prometheus-client collector, registered on a registry of its own (never the global
    one), reads everything at scrape time: the counter tree, and the live objects of the DNS
    service (the in-flight gate, the cache, each upstream group's health records, the
    blocklists, the fake-IP pool). Counting costs the hot path nothing more than the dict
    increments it does anyway. Only the request-duration histogram and the queries by type
    need a step per query: an engine observer (:class:`QueryObserver`) that adds to a list of
    bucket counts, attached only while ``/metrics`` is served.

How counter-tree names become metric names (the rule, also in docs/dns.md)
    Every counter of the tree is exported, once, as a counter. Its dotted name (as
    ``olm inspect counters`` and ``--stats`` print it) is mapped like this, first rule first:

    1. Named rules, for the counters the DNS dashboard is made of (:data:`RENAMED`,
       :data:`LABELLED`): ``dns.queries.<transport>`` -> ``olm_dns_queries_total{transport}``,
       ``dns.rcode.<rcode>`` -> ``olm_dns_responses_total{rcode}``, ``dns.cache.hit``
       (``hit_negative``, ``hit_failure``) -> ``olm_dns_cache_hits_total{kind}``,
       ``dns.cache.miss`` -> ``olm_dns_cache_misses_total``, ``dns.block.list.<list>`` ->
       ``olm_dns_blocked_total{list}``, ``icmpv4.in.<type>`` ->
       ``olm_icmpv4_messages_total{direction,type}``,
       ``dns.upstream.health.<group>.<upstream>.<event>`` ->
       ``olm_dns_upstream_health_events_total{group,upstream,event}``...
    2. An instance node becomes a label: ``nic.<name>.<rest>`` -> ``olm_nic_<rest>{nic}``.
    3. A reason node becomes a label: after ``malformed``, ``dropped``, ``error_suppressed``,
       ``not_cached`` or ``ndp_mld``, the rest of the name is the ``reason``:
       ``ipv4.malformed.bad_checksum`` -> ``olm_ipv4_malformed_total{reason="bad_checksum"}``.
    4. The rest is the path: ``olm_`` + the components joined by ``_`` + ``_total``:
       ``tcp.retransmits`` -> ``olm_tcp_retransmits_total``, ``ipv4.reassembly.overlaps`` ->
       ``olm_ipv4_reassembly_overlaps_total``, ``dns.upstream.timeout`` ->
       ``olm_dns_upstream_timeout_total``; ``not_for_us`` is spelled ``not_for_this_host``
       (``us`` would read as microseconds).
    5. A name that cannot be mapped cleanly (a component outside ``[a-z0-9_]`` left in the
       metric name, a word Prometheus' linter takes for a unit such as ``s`` or ``ms``, or a
       name another family already holds with other labels) is not dropped: it is
       ``olm_unmapped_total{counter="<dotted name>"}``.

    Label values come from the code (transports, RCODEs, reasons, ICMP types) or from the
    configuration (group, upstream URL, list, split suffix, NIC name): never a query name or a
    client address.

Why an asyncio HTTP server with h11, not prometheus-client's
    prometheus-client's ``start_http_server`` answers in a thread, while the counters are
    plain dicts the event loop's thread mutates without locks: reading them from another
    thread could see a dict change size mid-iteration. So ``/metrics`` is served on the event
    loop itself (h11 for HTTP/1.1 over ``asyncio.start_server``), and a scrape is one plain
    function call between two packets. Requests are bounded in size (:data:`MAX_REQUEST`),
    connections in number and idle time.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

import h11
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from netstack.counters import Counters
from olm.dns.upstream.health import LATENCY_BUCKETS

if TYPE_CHECKING:
    from olm.dns.observe import QueryTrace
    from olm.dns.request import Request
    from olm.serving import DnsService

__all__ = [
    "DURATION_BUCKETS",
    "LABELLED",
    "MAX_REQUEST",
    "RENAMED",
    "Metrics",
    "MetricsServer",
    "OlmCollector",
    "QueryObserver",
    "metric_for",
    "open_metrics",
    "parse_address",
]

log = logging.getLogger("olm.metrics")

#: Upper bounds (seconds) of the request-duration histogram: a cache hit takes tens of
#: microseconds, an upstream exchange milliseconds, a deadline seconds.
DURATION_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: The longest request (line, headers and body) taken; longer ones get 431 or 413.
MAX_REQUEST: Final = 16 * 1024
#: Connections served at once; more are closed at once.
MAX_CONNECTIONS: Final = 16
#: A connection with no request for this long is closed (Prometheus reconnects).
IDLE_TIMEOUT: Final = 60.0
#: A request must arrive whole, and its response be written, within this.
REQUEST_TIMEOUT: Final = 10.0

#: QTYPEs counted by name in ``olm_dns_query_types_total``; the others are ``other``.
QTYPES: Final = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    13: "HINFO",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    35: "NAPTR",
    43: "DS",
    46: "RRSIG",
    48: "DNSKEY",
    64: "SVCB",
    65: "HTTPS",
    252: "AXFR",
    255: "ANY",
    257: "CAA",
}
_TYPE_NAMES: Final = (*QTYPES.values(), "other")
_TYPE_SLOT: Final = {qtype: slot for slot, qtype in enumerate(QTYPES)}
_OTHER_TYPE: Final = len(QTYPES)

#: Counters renamed whole (rule 1): dotted name -> metric name without ``_total``.
RENAMED: Final = {
    "dns.cache.miss": "olm_dns_cache_misses",
    "dns.cache.stale": "olm_dns_cache_stale_answers",
    "dns.cache.prefetch": "olm_dns_cache_prefetches",
    "dns.cache.insert": "olm_dns_cache_inserts",
    "dns.cache.evict": "olm_dns_cache_evictions",
    "dns.cache.expire": "olm_dns_cache_expirations",
}
#: Counters whose last part is a label (rule 1): prefix -> (metric without ``_total``, label).
LABELLED: Final = {
    "dns.queries.": ("olm_dns_queries", "transport"),
    "dns.rcode.": ("olm_dns_responses", "rcode"),
    "dns.block.list.": ("olm_dns_blocked", "list"),
    "dns.split.routed.": ("olm_dns_split_routed", "suffix"),
    "dns.upstream.doh.http_error.": ("olm_dns_upstream_doh_http_errors", "status"),
}
#: ``dns.cache.hit`` counts every hit; these count the hits of two kinds among them.
_HIT_KINDS: Final = {"dns.cache.hit_negative": "negative", "dns.cache.hit_failure": "failure"}
_HEALTH_PREFIX: Final = "dns.upstream.health."
#: Nodes whose children are reasons (rule 3).
REASON_NODES: Final = frozenset(
    {"malformed", "dropped", "error_suppressed", "not_cached", "ndp_mld"}
)
_ICMP: Final = re.compile(r"(icmpv[46])\.(in|out)\.(.+)")
_CLEAN: Final = re.compile(r"[a-z0-9_]+")
#: Words spelled out in metric names (rule 4): "us" would read as microseconds.
_SPELLED: Final = {"not_for_us": "not_for_this_host"}
#: Words Prometheus' linter takes for abbreviated units: a name holding one goes by rule 5.
_UNIT_WORDS: Final = frozenset(
    {"s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d"}
)
#: Where a counter goes that cannot be mapped cleanly (rule 5).
FALLBACK: Final = "olm_unmapped"

#: Series shown at 0 before anything is counted, so that rate() and dashboards have them.
_ZERO_TRANSPORTS: Final = ("udp", "tcp")
_ZERO_TYPES: Final = ("A", "AAAA")
_ZERO_RCODES: Final = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED")
_FAILURE_KINDS: Final = ("timeout", "error", "rcode", "probe")

Mapped = tuple[str, tuple[str, ...], tuple[str, ...]]
"""A counter's metric: (family name without ``_total``, label names, label values)."""


def metric_for(dotted: str) -> Mapped | None:
    """Return the metric of the counter ``dotted`` by rules 1 to 4; None: rule 5 applies.

    ``dns.upstream.health.*`` and ``dns.cache.hit*`` are mapped by the collector, which
    knows the groups and adds up the kinds of hits.
    """
    mapped = _map(dotted)
    return None if mapped is None else mapped[:3]


def _map(dotted: str) -> tuple[str, tuple[str, ...], tuple[str, ...], str] | None:
    """:func:`metric_for`, and the pattern of the family's counters (for its HELP)."""
    renamed = RENAMED.get(dotted)
    if renamed is not None:
        return renamed, (), (), dotted
    for prefix, (family, label) in LABELLED.items():
        if dotted.startswith(prefix) and len(dotted) > len(prefix):
            return family, (label,), (dotted[len(prefix) :],), f"{prefix}<{label}>"
    icmp = _ICMP.fullmatch(dotted)
    if icmp is not None:
        labels = ("direction", "type")
        return f"olm_{icmp[1]}_messages", labels, (icmp[2], icmp[3]), f"{icmp[1]}.<in|out>.<type>"
    parts = dotted.split(".")
    names: list[str] = []
    values: list[str] = []
    pattern = list(parts)
    if parts[0] == "nic" and len(parts) >= 3:
        names.append("nic")
        values.append(parts[1])
        pattern[1] = "<nic>"
        parts = ["nic", *parts[2:]]
    for i, part in enumerate(parts[:-1]):
        if part in REASON_NODES:
            names.append("reason")
            values.append(".".join(parts[i + 1 :]))
            pattern = [*pattern[: len(pattern) - len(parts) + i + 1], "<reason>"]
            parts = parts[: i + 1]
            break
    parts = [_SPELLED.get(part, part) for part in parts]
    if not all(_CLEAN.fullmatch(part) for part in parts):
        return None
    family = "olm_" + "_".join(parts)
    if _UNIT_WORDS.intersection(family.split("_")):
        return None
    return family.removesuffix("_total"), tuple(names), tuple(values), ".".join(pattern)


# -- the per-query observer --------------------------------------------------------------------


class _Histogram:
    """Bucket counts (not cumulative; one more for the rest) and the sum of observations."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * (size + 1)
        self.sum = 0.0


class QueryObserver:
    """An engine observer: each query's duration (per transport) and its type.

    It needs no trace (``begin`` says False), and ``finished`` is two list increments and a
    float addition: the engine calls it on the event loop, the collector reads it there too,
    so nothing is locked (prometheus-client's Histogram takes a lock per observation).
    """

    def __init__(self) -> None:
        self.durations: dict[str, _Histogram] = {
            name: _Histogram(len(DURATION_BUCKETS)) for name in _ZERO_TRANSPORTS
        }
        self.types = [0] * (len(QTYPES) + 1)

    def begin(self, request: Request) -> bool:
        """Take a query that starts: no trace wanted."""
        return False

    def finished(
        self, request: Request, reply: bytes | None, elapsed: float, trace: QueryTrace | None
    ) -> None:
        """Count the query's duration and type."""
        histogram = self.durations.get(request.transport)
        if histogram is None:  # a transport the code adds later: bounded by the code
            histogram = self.durations[request.transport] = _Histogram(len(DURATION_BUCKETS))
        histogram.counts[bisect.bisect_left(DURATION_BUCKETS, elapsed)] += 1
        histogram.sum += elapsed
        self.types[_TYPE_SLOT.get(request.qtype, _OTHER_TYPE)] += 1


# -- the collector ------------------------------------------------------------------------------


@dataclass
class _Family:
    kind: str  # counter, gauge, histogram
    help: str
    labels: tuple[str, ...]
    samples: dict[tuple[str, ...], float] = field(default_factory=dict)
    histograms: dict[tuple[str, ...], tuple[list[float], float]] = field(default_factory=dict)


class _Families:
    """The families of one scrape, refusing a name that another family's samples hold."""

    def __init__(self) -> None:
        self.families: dict[str, _Family] = {}
        self._owner: dict[str, str] = {}  # every sample name -> the family that writes it

    def family(self, name: str, kind: str, help: str, labels: tuple[str, ...]) -> _Family | None:
        """Return the family ``name``, made if new; None if the name is held otherwise."""
        found = self.families.get(name)
        if found is not None:
            return found if found.kind == kind and found.labels == labels else None
        written: tuple[str, ...]
        if kind == "counter":
            written = (name, f"{name}_total", f"{name}_created")
        elif kind == "histogram":
            written = (name, f"{name}_bucket", f"{name}_count", f"{name}_sum", f"{name}_created")
        else:
            written = (name,)
        if any(self._owner.get(n, name) != name for n in written):
            return None
        for n in written:
            self._owner[n] = name
        made = self.families[name] = _Family(kind, help, labels)
        return made

    def add(
        self,
        name: str,
        kind: str,
        help: str,
        labels: tuple[str, ...],
        values: tuple[str, ...],
        value: float,
    ) -> bool:
        """Add one sample (counters with the same labels add up); False: the name is taken."""
        family = self.family(name, kind, help, labels)
        if family is None:
            return False
        if kind == "counter":
            family.samples[values] = family.samples.get(values, 0) + value
        else:
            family.samples.setdefault(values, value)
        return True

    def histogram(
        self,
        name: str,
        help: str,
        labels: tuple[str, ...],
        values: tuple[str, ...],
        counts: Sequence[int],
        total: float,
    ) -> None:
        """Add one histogram: per-bucket ``counts`` (not cumulative) and their ``total``."""
        family = self.family(name, "histogram", help, labels)
        if family is None:
            return
        old = family.histograms.get(values)
        merged = [float(c) for c in counts]
        if old is not None:  # the same labels twice (an upstream listed twice): add up
            merged = [a + b for a, b in zip(old[0], merged, strict=True)]
            total += old[1]
        family.histograms[values] = (merged, total)

    def metrics(self, bounds: dict[str, Sequence[float]]) -> Iterator[Metric]:
        """Yield the prometheus-client families, in name order."""
        for name in sorted(self.families):
            family = self.families[name]
            if not family.samples and not family.histograms:
                continue
            metric: Metric
            if family.kind == "counter":
                metric = CounterMetricFamily(name, family.help, labels=family.labels)
            elif family.kind == "gauge":
                metric = GaugeMetricFamily(name, family.help, labels=family.labels)
            else:
                histogram = HistogramMetricFamily(name, family.help, labels=family.labels)
                for values, (counts, total) in sorted(family.histograms.items()):
                    histogram.add_metric(list(values), _cumulative(bounds[name], counts), total)
                yield histogram
                continue
            for values, value in sorted(family.samples.items()):
                metric.add_metric(list(values), value)
            yield metric


def _cumulative(bounds: Sequence[float], counts: Sequence[float]) -> list[tuple[str, float]]:
    """Turn per-bucket counts (one more than ``bounds``) into Prometheus' cumulative buckets."""
    result: list[tuple[str, float]] = []
    running = 0.0
    for bound, count in zip(bounds, counts, strict=False):
        running += count
        result.append((_le(bound), running))
    result.append(("+Inf", running + counts[len(bounds)]))
    return result


def _le(bound: float) -> str:
    return repr(float(bound))


class OlmCollector:
    """Reads the counter tree and the DNS service's live objects at each scrape.

    ``counters`` is the root of the tree; ``service`` the DNS service (None for ``olm
    stack``); ``observer`` the query observer attached to its engine (None: no histogram).
    """

    def __init__(
        self,
        counters: Counters,
        service: DnsService | None = None,
        observer: QueryObserver | None = None,
    ) -> None:
        self.counters = counters
        self.service = service
        self.observer = observer
        #: "<group>.<upstream>" -> (group, upstream) of every group seen: the keys of the
        #: ``dns.upstream.health`` node (names and URLs hold dots, so they are looked up).
        self._pairs: dict[str, tuple[str, str]] = {}
        self._bounds: dict[str, Sequence[float]] = {
            "olm_dns_request_duration_seconds": DURATION_BUCKETS,
            "olm_dns_upstream_latency_seconds": LATENCY_BUCKETS,
        }

    def collect(self) -> Iterator[Metric]:
        """Return every metric, read now (called by prometheus-client on each scrape)."""
        out = _Families()
        if self.service is not None:
            self._service(out, self.service)
        if self.observer is not None:
            self._observed(out, self.observer)
        self._tree(out)
        return out.metrics(self._bounds)

    # -- the counter tree --------------------------------------------------------------------

    def _tree(self, out: _Families) -> None:
        items = list(self.counters.items())
        hits: dict[str, int] = {}
        for dotted, value in items:
            if dotted == "dns.cache.hit" or dotted in _HIT_KINDS:
                hits[dotted] = hits.get(dotted, 0) + value
        if hits or self.service is not None:
            help = "Queries answered from the cache (dns.cache.hit*), by kind of entry."
            kinds = {kind: hits.get(dotted, 0) for dotted, kind in _HIT_KINDS.items()}
            # dns.cache.hit counts them all; the other kinds are counted among them.
            kinds["positive"] = hits.get("dns.cache.hit", 0) - sum(kinds.values())
            for kind, count in sorted(kinds.items()):
                out.add("olm_dns_cache_hits", "counter", help, ("kind",), (kind,), count)
        fallback = "Counters of the tree whose names map to no metric of their own, by name."
        out.family(FALLBACK, "counter", fallback, ("counter",))  # held before any tree name
        # Each series of the tree comes from one dotted name: two names mapping to the same
        # series (``a_total`` and ``a``) must not add up silently.
        written: dict[tuple[str, tuple[str, ...]], str] = {}
        for dotted, value in items:
            if dotted in hits:
                continue
            if dotted.startswith(_HEALTH_PREFIX) and self._health_event(out, dotted, value):
                continue
            mapped = _map(dotted)
            if mapped is not None:
                name, labels, values, pattern = mapped
                help = _counter_help(pattern, labels)
                owner = written.setdefault((name, values), dotted)
                if owner == dotted and out.add(name, "counter", help, labels, values, value):
                    continue
            out.add(FALLBACK, "counter", fallback, ("counter",), (dotted,), value)

    def _health_event(self, out: _Families, dotted: str, value: int) -> bool:
        head, _, event = dotted[len(_HEALTH_PREFIX) :].rpartition(".")
        pair = self._pairs.get(head)
        if pair is None:
            return False
        return out.add(
            "olm_dns_upstream_health_events",
            "counter",
            "Upstreams marked down and up, and probes sent, per group and upstream "
            "(dns.upstream.health.<group>.<upstream>.<event>).",
            ("group", "upstream", "event"),
            (*pair, event),
            value,
        )

    # -- the DNS service's live objects ------------------------------------------------------

    def _service(self, out: _Families, service: DnsService) -> None:
        pipeline = service.pipeline
        gate = pipeline.gate
        gauge = _gauge(out)
        gauge("olm_dns_queries_in_flight", "Queries waiting for an upstream now.", gate.inflight)
        gauge(
            "olm_dns_queries_in_flight_limit",
            "The bound on queries waiting for an upstream (max_inflight).",
            gate.limit,
        )
        gauge(
            "olm_dns_replies_waiting",
            "Replies the engine waits for now (each a Task).",
            service.engine.waiting,
        )
        tcp_help = "DNS-over-TCP connections served now."
        gauge("olm_dns_tcp_open_connections", tcp_help, service.tcp.active)
        cache = pipeline.cache
        gauge("olm_dns_cache_entries", "Entries in the cache.", len(cache))
        gauge("olm_dns_cache_bytes", "Bytes the cache's entries take (estimated).", cache.bytes)
        gauge("olm_dns_cache_max_entries", "The cache's bound on entries.", cache.settings.size)
        gauge("olm_dns_cache_max_bytes", "The cache's bound on bytes.", cache.settings.max_bytes)
        for transport in _ZERO_TRANSPORTS:
            out.add(
                "olm_dns_queries",
                "counter",
                _counter_help("dns.queries.<transport>", ("transport",)),
                ("transport",),
                (transport,),
                0,
            )
        for rcode in _ZERO_RCODES:
            out.add(
                "olm_dns_responses",
                "counter",
                _counter_help("dns.rcode.<rcode>", ("rcode",)),
                ("rcode",),
                (rcode,),
                0,
            )
        for dotted, name in RENAMED.items():
            out.add(name, "counter", _counter_help(dotted, ()), (), (), 0)
        self._upstreams(out, service)
        block = pipeline.block
        if block is not None:
            for name, domains in block.lists.lists:
                labels = ("list",)
                out.add(
                    "olm_dns_blocklist_domains",
                    "gauge",
                    "Names in each blocklist.",
                    labels,
                    (name,),
                    len(domains),
                )
                out.add(
                    "olm_dns_blocklist_bytes",
                    "gauge",
                    "Bytes each blocklist's set takes.",
                    labels,
                    (name,),
                    domains.nbytes,
                )
                out.add(
                    "olm_dns_blocked",
                    "counter",
                    _counter_help("dns.block.list.<list>", labels),
                    labels,
                    (name,),
                    0,
                )
        pool = pipeline.fake_pool
        if pool is not None:
            gauge(
                "olm_dns_fake_ip_pool_capacity",
                "Mappings the fake-IP table holds at most.",
                pool.size,
            )
            gauge("olm_dns_fake_ip_pool_used", "Mappings in the fake-IP table now.", len(pool))

    def _upstreams(self, out: _Families, service: DnsService) -> None:
        labels = ("group", "upstream")
        for group in service.pipeline.groups:
            for health in group.health:
                values = (group.name, health.url)
                self._pairs[f"{group.name}.{health.url}"] = values
                out.add(
                    "olm_dns_upstream_up",
                    "gauge",
                    "1 while the upstream is up in its group, 0 while it is marked down.",
                    labels,
                    values,
                    0 if health.down else 1,
                )
                out.add(
                    "olm_dns_upstream_failures_in_row",
                    "gauge",
                    "Failed tries of the upstream since its last answer.",
                    labels,
                    values,
                    health.failures_in_row,
                )
                if health.latency is not None:
                    out.add(
                        "olm_dns_upstream_latency_average_seconds",
                        "gauge",
                        "Moving average of the upstream's answer latency (what the fastest "
                        "policy ranks by).",
                        labels,
                        values,
                        health.latency,
                    )
                tries = "Tries of the upstream by result: answer, or the kind of failure."
                out.add(
                    "olm_dns_upstream_tries",
                    "counter",
                    tries,
                    (*labels, "result"),
                    (*values, "answer"),
                    health.answers,
                )
                kinds = health.failure_kinds
                for kind in sorted({*_FAILURE_KINDS, *kinds}):
                    out.add(
                        "olm_dns_upstream_tries",
                        "counter",
                        tries,
                        (*labels, "result"),
                        (*values, kind),
                        kinds.get(kind, 0),
                    )
                out.histogram(
                    "olm_dns_upstream_latency_seconds",
                    "Answer latency of the upstream (its count: the answers).",
                    labels,
                    values,
                    health.latency_counts,
                    health.latency_sum,
                )

    def _observed(self, out: _Families, observer: QueryObserver) -> None:
        for transport, histogram in sorted(observer.durations.items()):
            out.histogram(
                "olm_dns_request_duration_seconds",
                "Time from a query to its reply, per transport.",
                ("transport",),
                (transport,),
                histogram.counts,
                histogram.sum,
            )
        for name, count in zip(_TYPE_NAMES, observer.types, strict=True):
            if not count and name not in _ZERO_TYPES:
                continue
            out.add(
                "olm_dns_query_types",
                "counter",
                "Queries by QTYPE (the common types by name, the rest as other).",
                ("type",),
                (name,),
                count,
            )


def _gauge(out: _Families) -> Callable[[str, str, float], None]:
    def add(name: str, help: str, value: float) -> None:
        out.add(name, "gauge", help, (), (), value)

    return add


def _counter_help(dotted: str, labels: tuple[str, ...]) -> str:
    """Return the HELP of counters taken from the tree: where they come from."""
    if not labels:
        return f"Counter {dotted} of the counter tree (docs/dns.md, Metrics)."
    return f"Counters {dotted} of the counter tree, by {', '.join(labels)} (docs/dns.md, Metrics)."


# -- the HTTP server ----------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """Split ``ADDR:PORT`` (IPv6 as ``[addr]:port``) into host and port; ValueError if bad."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{address!r}: give ADDR:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class MetricsServer:
    """``/metrics`` over HTTP/1.1 on the event loop (h11 on ``asyncio.start_server``).

    GET (or HEAD) ``/metrics`` gets the registry's text; any other path 404, any other method
    405, a request h11 cannot read 400 (431 for headers over :data:`MAX_REQUEST`, 413 for a
    body over it). Connections are kept alive between scrapes and closed after
    ``idle_timeout`` without a request; beyond ``max_connections`` they are closed at once.

    Counters (node ``metrics``): ``scrapes``, ``not_found``, ``bad_method``, ``bad_request``,
    ``connections``, ``refused_connections``, ``idle_closed``, ``timeouts``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        counters: Counters,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        max_request: int = MAX_REQUEST,
    ) -> None:
        self.registry = registry
        self.counters = counters.child("metrics")
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.max_request = max_request
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host``:``port`` (0: any free port); OSError if it cannot."""
        self._server = await asyncio.start_server(
            self._connection, host, port, reuse_address=True, backlog=self.max_connections
        )

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The (host, port) pairs listened on."""
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def close(self) -> None:
        """Stop listening and end the open connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.wait(self._clients, timeout=2.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2.0)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= self.max_connections:
            self.counters.inc("refused_connections")
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        self.counters.inc("connections")
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_request)
        while True:
            try:
                request = await self._request(conn, reader)
            except _BadRequest as exc:
                self.counters.inc("bad_request")
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._respond(conn, writer, exc.status, f"{exc}\n".encode(), close=True)
                return
            except TimeoutError:
                self.counters.inc("timeouts")
                return
            if request is None:
                return
            await self._answer(conn, writer, request)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # Connection: close, or HTTP/1.0
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> h11.Request | None:
        """Read one whole request (its body read and dropped); None when the client left."""
        request: h11.Request | None = None
        body = received = 0
        timeout = self.idle_timeout
        async with asyncio.timeout(None) as deadline:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    raise _BadRequest(exc.error_status_hint, "bad request") from None
                if event is h11.NEED_DATA:
                    try:
                        data = await asyncio.wait_for(reader.read(self.max_request), timeout)
                    except TimeoutError:
                        if request is None and timeout == self.idle_timeout:
                            self.counters.inc("idle_closed")
                            return None
                        raise
                    received += len(data)
                    if received > self.max_request:
                        if request is None:
                            raise _BadRequest(431, "request header fields too large")
                        raise _BadRequest(413, "request too large")
                    if deadline.when() is None:  # the request began: it has a time limit
                        deadline.reschedule(
                            asyncio.get_running_loop().time() + self.request_timeout
                        )
                        timeout = self.request_timeout
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += len(event.data)
                    if body > self.max_request:
                        raise _BadRequest(413, "request body too large")
                elif isinstance(event, h11.EndOfMessage):
                    return request
                elif isinstance(event, h11.ConnectionClosed):
                    return None
                else:  # PAUSED cannot happen before our response: treat as the end
                    return None

    async def _answer(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request
    ) -> None:
        path = request.target.split(b"?", 1)[0]
        if path != b"/metrics":
            self.counters.inc("not_found")
            await self._respond(conn, writer, 404, b"not found: try /metrics\n")
            return
        if request.method not in (b"GET", b"HEAD"):
            self.counters.inc("bad_method")
            await self._respond(
                conn, writer, 405, b"GET or HEAD only\n", extra=[(b"allow", b"GET, HEAD")]
            )
            return
        self.counters.inc("scrapes")
        body = generate_latest(self.registry)
        await self._respond(
            conn,
            writer,
            200,
            body,
            content_type=CONTENT_TYPE_LATEST.encode(),
            head=request.method == b"HEAD",
        )

    async def _respond(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        content_type: bytes = b"text/plain; charset=utf-8",
        extra: Sequence[tuple[bytes, bytes]] = (),
        close: bool = False,
        head: bool = False,
    ) -> None:
        headers = [
            (b"content-type", content_type),
            (b"content-length", b"%d" % len(body)),
            *extra,
        ]
        if close:
            headers.append((b"connection", b"close"))
        try:
            reason = HTTPStatus(status).phrase.encode()
            parts = [conn.send(h11.Response(status_code=status, headers=headers, reason=reason))]
            if not head:
                parts.append(conn.send(h11.Data(data=body)))
            parts.append(conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            return
        writer.write(b"".join(part for part in parts if part))
        await asyncio.wait_for(writer.drain(), self.request_timeout)


class Metrics:
    """What ``--metrics`` opens: a registry, its collector, an observer and the server.

    A private registry with an :class:`OlmCollector`, the :class:`QueryObserver` on the
    service's engine, and the :class:`MetricsServer`.

    ``counters`` is the root of the counter tree, ``service`` the DNS service (None for
    ``olm stack``: the tree only, no observer).
    """

    def __init__(self, counters: Counters, service: DnsService | None = None) -> None:
        self.service = service
        self.observer = QueryObserver() if service is not None else None
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = OlmCollector(counters, service, self.observer)
        self.registry.register(self.collector)
        self.server = MetricsServer(self.registry, counters)

    async def start(self, address: str) -> None:
        """Listen on ``address`` (``ADDR:PORT``), then observe the engine.

        An address that cannot be bound is a StartupError (exit status 1).
        """
        from olm.serving import StartupError

        try:
            host, port = parse_address(address)
            await self.server.start(host, port)
        except (ValueError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StartupError(f"metrics: cannot listen on {address}: {reason}", status=1) from exc
        if self.service is not None and self.observer is not None:
            self.service.engine.add_observer(self.observer)

    async def close(self) -> None:
        """Stop observing and serving."""
        if self.service is not None and self.observer is not None:
            self.service.engine.remove_observer(self.observer)
        await self.server.close()


async def open_metrics(
    address: str,
    counters: Counters,
    service: DnsService | None,
    views: contextlib.AsyncExitStack,
) -> None:
    """Serve ``/metrics`` on ``address`` (``ADDR:PORT``) until ``views`` closes.

    ``counters`` is the root of the counter tree, ``service`` the DNS service whose engine
    gets a :class:`QueryObserver` (None for ``olm stack``). An address that cannot be bound is
    a StartupError (exit status 1).
    """
    metrics = Metrics(counters, service)
    await metrics.start(address)
    views.push_async_callback(metrics.close)
    log.info("metrics on http://%s/metrics", address)
