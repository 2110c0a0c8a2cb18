"""Prometheus metrics (olm/metrics.py): what a scrape shows, the mapping, the HTTP server.

The first tests run in-process with no privilege: the daemon's Service over a channel link
(stack counters included) with fake upstreams on 127.0.0.1, scraped over loopback TCP. The last
one runs `olm serve --metrics` in a network namespace, digs at it, checks the scrape with
promtool and lets a real Prometheus server, started by the test in that namespace, scrape it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
from dnslib import DNSRecord
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from test_dns_proxy import answers_with, client_query, start_fake
from test_olm_service import _service

from netstack.adapters import UDPSocket
from netstack.counters import Counters
from olm.config import BlockSettings, FakeIpSettings
from olm.daemon import Service
from olm.metrics import (
    DURATION_BUCKETS,
    Metrics,
    OlmCollector,
    metric_for,
    open_metrics,
)
from olm.serving import StartupError

from fakedns import refusing, run
from netns import NetNS, free_port, require_tool, skip_or_fail
from olmproc import OlmProcess
from test_kernel_dns import start_upstream

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "docs" / "grafana" / "olm-dashboard.json"
LOOPBACK = "127.0.0.1"
CLIENT = "10.30.30.7"
SERVICE = "10.30.30.30"
NAME = re.compile(r"olm_[a-z0-9_]+")


# -- helpers ---------------------------------------------------------------------------------


def promtool_check(text: str) -> None:
    """`promtool check metrics` must accept ``text`` without a word of complaint."""
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("needs the `promtool` command (Debian package prometheus)")
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr
    )


def samples(text: str) -> dict[str, list[Sample]]:
    """The scrape's samples by sample name (``..._total``, ``..._bucket``...)."""
    found: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(
        s.value
        for s in samples(text).get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


async def http(port: int, target: str = "/metrics", method: str = "GET") -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method=method, target=target, headers=[("host", "olm")])
    writer.write(conn.send(request) + conn.send(h11.EndOfMessage()))
    status, body = await _response(conn, reader)
    writer.close()
    return status, body


async def _response(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status = 0
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await asyncio.wait_for(reader.read(65536), 5))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, body


async def raw(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes (or 5 s pass)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def scrape(metrics: Metrics) -> str:
    (_, port), *_ = metrics.server.sockets
    status, body = await http(port)
    assert status == 200
    return body.decode()


async def service_with(upstreams: list[str], **more: Any) -> tuple[Service, UDPSocket]:
    """olm up's Service on 10.30.30.30 behind a channel, and a client socket from 10.30.30.7."""
    service, client = await _service(
        upstreams, CLIENT, timeout=1, deadline=2, policy="sequential", **more
    )
    sock = UDPSocket(client)
    sock.connect((SERVICE, 53))
    return service, sock


async def ask(sock: UDPSocket, wire: bytes) -> DNSRecord:
    sock.send(wire)
    return DNSRecord.parse(await asyncio.wait_for(sock.recv(), 3))


# -- what a scrape shows ----------------------------------------------------------------------


def test_values_move_as_queries_are_made() -> None:
    async def main() -> str:
        _, bad = await start_fake(refusing)
        _, good = await start_fake(answers_with("192.0.2.7"))
        bad_url, good_url = f"{bad.host}:{bad.port}", f"{good.host}:{good.port}"
        service, sock = await service_with([bad_url, good_url])
        metrics = Metrics(service.stack.counters, service)
        await metrics.start(f"{LOOPBACK}:0")
        try:
            before = await scrape(metrics)
            assert value(before, "olm_dns_cache_hits_total") == 0
            assert value(before, "olm_dns_cache_misses_total") == 0
            assert value(before, "olm_dns_upstream_up", upstream=bad_url) == 1

            await ask(sock, client_query("one.example"))
            first = await scrape(metrics)
            assert value(first, "olm_dns_cache_misses_total") == 1
            assert value(first, "olm_dns_cache_hits_total", kind="positive") == 0
            assert value(first, "olm_dns_cache_entries") == 1
            # The refusing upstream failed by kind "rcode", the good one answered.
            labels = {"group": "default"}
            assert value(first, "olm_dns_upstream_tries_total", upstream=bad_url, result="rcode")
            assert value(first, "olm_dns_upstream_tries_total", upstream=bad_url, **labels) == 1
            assert value(first, "olm_dns_upstream_tries_total", upstream=good_url, result="answer")
            assert value(first, "olm_dns_upstream_latency_seconds_count", upstream=good_url) == 1

            await ask(sock, client_query("one.example"))
            second = await scrape(metrics)
            assert value(second, "olm_dns_cache_hits_total", kind="positive") == 1
            assert value(second, "olm_dns_cache_misses_total") == 1
            assert value(second, "olm_dns_responses_total", rcode="NOERROR") == 2

            # Two more misses: the refusing upstream fails three times in a row and is down.
            for name in ("two.example", "three.example"):
                assert (await ask(sock, client_query(name))).header.rcode == 0
            # An opcode the proxy does not implement (STATUS): NOTIMP, counted by RCODE.
            status = DNSRecord.question("four.example")
            status.header.opcode = 2
            assert (await ask(sock, bytes(status.pack()))).header.rcode == 4
            after = await scrape(metrics)
        finally:
            await metrics.close()
            await service.stop()
        assert not service.engine.observers  # closing took the observer away
        assert value(after, "olm_dns_upstream_tries_total", upstream=bad_url, result="rcode") == 3
        assert value(after, "olm_dns_upstream_up", upstream=bad_url) == 0
        assert value(after, "olm_dns_upstream_up", upstream=good_url) == 1
        health = {"upstream": bad_url, "group": "default"}
        assert value(after, "olm_dns_upstream_health_events_total", event="marked_down", **health)
        assert value(after, "olm_dns_responses_total", rcode="NOTIMP") == 1
        assert value(after, "olm_dns_responses_total", rcode="NOERROR") == 4
        assert value(after, "olm_dns_queries_total", transport="udp") == 5
        assert value(after, "olm_dns_queries_total", transport="tcp") == 0
        assert value(after, "olm_dns_query_types_total", type="A") == 5
        # The histograms: cumulative, ending with +Inf, which is their count.
        count = value(after, "olm_dns_request_duration_seconds_count", transport="udp")
        assert count == 5
        buckets = [
            s
            for s in samples(after)["olm_dns_request_duration_seconds_bucket"]
            if s.labels["transport"] == "udp"
        ]
        assert [s.labels["le"] for s in buckets][-1] == "+Inf"
        assert len(buckets) == len(DURATION_BUCKETS) + 1
        counts = [s.value for s in buckets]
        assert counts == sorted(counts) and counts[-1] == count
        # The stack under the service: counted per NIC, and every packet of the five queries.
        assert value(after, "olm_nic_rx_packets_total", nic="tun") >= 5
        assert value(after, "olm_udp_delivered_total") == 5
        return after

    text = run(main())
    check_conventions(text)
    promtool_check(text)


def check_conventions(text: str) -> None:
    """Prometheus' naming rules, and nothing about a query or a client in a label."""
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        assert re.fullmatch(r"olm_[a-z0-9_]+", family.name), family.name
        assert family.documentation, family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        else:
            assert not family.name.endswith("_total"), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        assert not re.search(r"_(ms|milliseconds|kilobytes|percent)(_|$)", family.name)
        for sample in family.samples:
            for label, text_value in sample.labels.items():
                assert re.fullmatch(r"[a-z_]+", label), label
                assert "example" not in text_value, (sample, label)  # no query name
                assert CLIENT not in text_value, (sample, label)  # no client address
                assert SERVICE not in text_value, (sample, label)


# -- the counter tree ----------------------------------------------------------------------------


def test_counter_names_map_to_metric_names_and_labels() -> None:
    assert metric_for("ipv4.malformed.bad_checksum") == (
        "olm_ipv4_malformed",
        ("reason",),
        ("bad_checksum",),
    )
    assert metric_for("nic.olm0.rx_packets") == ("olm_nic_rx_packets", ("nic",), ("olm0",))
    assert metric_for("tcp.retransmits") == ("olm_tcp_retransmits", (), ())
    assert metric_for("ipv6.reassembly.overlaps") == ("olm_ipv6_reassembly_overlaps", (), ())
    assert metric_for("icmpv6.in.echo_request") == (
        "olm_icmpv6_messages",
        ("direction", "type"),
        ("in", "echo_request"),
    )
    assert metric_for("dns.queries.tcp") == ("olm_dns_queries", ("transport",), ("tcp",))
    assert metric_for("dns.rcode.SERVFAIL") == ("olm_dns_responses", ("rcode",), ("SERVFAIL",))
    assert metric_for("dns.block.list.ads.txt") == ("olm_dns_blocked", ("list",), ("ads.txt",))
    assert metric_for("dns.sanitise.dropped.unreadable") == (
        "olm_dns_sanitise_dropped",
        ("reason",),
        ("unreadable",),
    )
    assert metric_for("dns.upstream.doh.http_error.503") == (
        "olm_dns_upstream_doh_http_errors",
        ("status",),
        ("503",),
    )
    assert metric_for("dns.upstream.Odd-Name") is None  # rule 5: by its dotted name


def test_every_counter_of_the_tree_is_exported_once() -> None:
    root = Counters()
    names = {
        "nic.tun0.rx_packets": 7,
        "nic.tun1.rx_packets": 2,
        "ipv4.malformed.bad_checksum": 3,
        "ipv4.malformed.truncated": 1,
        "ipv4.not_for_us": 4,
        "ipv4.not_for_us.multicast": 5,
        "icmpv4.in.echo_request": 6,
        "icmpv4.out.echo_reply": 6,
        "icmpv6.ndp_mld.router_solicitation": 2,
        "tcp.retransmits": 9,
        "tcp.segments.in": 11,
        "dns.split.routed.corp.internal": 1,
        "dns.cache.hit": 5,
        "dns.cache.hit_negative": 2,
        "odd.Name-With:chars": 8,  # rule 5
        "clash.dropped": 1,  # a family without labels...
        "clash.dropped.why": 2,  # ...and one with: the second goes by rule 5
        "also_total": 1,
        "also": 2,  # olm_also_total twice: the second goes by rule 5
        "unmapped": 3,  # olm_unmapped_total is rule 5's: this goes there too
        "dns.upstream.health.gone.127.0.0.1:53.probes": 4,  # a group no longer known
    }
    for dotted, count in names.items():
        node_path, _, key = dotted.rpartition(".")
        node = root
        for part in node_path.split(".") if node_path else []:
            node = node.child(part)
        node.inc(key, count)
    # Keys may hold dots: the same name reached through a key with dots.
    root.child("udp").inc("malformed.bad_checksum", 3)
    metrics = Metrics(root)
    text = asyncio.run(_scrape_once(metrics))
    check_conventions(text)
    promtool_check(text)
    found = samples(text)
    exported = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for group in found.values()
        for s in group
        if not s.name.startswith("olm_metrics_")
    }
    # Every counter's value, once: the totals agree (dns.cache.hit counts the negative hits
    # too; they are one kind of hit in olm_dns_cache_hits_total).
    assert sum(exported.values()) == sum(names.values()) + 3 - names["dns.cache.hit_negative"]
    assert value(text, "olm_nic_rx_packets_total", nic="tun0") == 7
    assert value(text, "olm_ipv4_malformed_total", reason="truncated") == 1
    assert value(text, "olm_ipv4_not_for_this_host_total") == 4
    assert value(text, "olm_ipv4_not_for_this_host_multicast_total") == 5
    assert value(text, "olm_icmpv4_messages_total", direction="out", type="echo_reply") == 6
    assert value(text, "olm_icmpv6_ndp_mld_total", reason="router_solicitation") == 2
    assert value(text, "olm_udp_malformed_total", reason="bad_checksum") == 3
    assert value(text, "olm_dns_split_routed_total", suffix="corp.internal") == 1
    assert value(text, "olm_dns_cache_hits_total", kind="positive") == 3
    assert value(text, "olm_dns_cache_hits_total", kind="negative") == 2
    assert value(text, "olm_unmapped_total", counter="odd.Name-With:chars") == 8
    assert value(text, "olm_clash_dropped_total") == 1
    assert value(text, "olm_unmapped_total", counter="clash.dropped.why") == 2
    # "also" and "also_total" would both be olm_also_total: the second, in name order, goes by
    # rule 5 rather than adding up with the first.
    assert value(text, "olm_also_total") == 2
    assert value(text, "olm_unmapped_total", counter="also_total") == 1
    assert value(text, "olm_ipv4_malformed_total", reason="bad_checksum") == 3
    assert value(text, "olm_unmapped_total", counter="unmapped") == 3
    dotted = "dns.upstream.health.gone.127.0.0.1:53.probes"
    assert value(text, "olm_unmapped_total", counter=dotted) == 4


async def _scrape_once(metrics: Metrics) -> str:
    await metrics.start(f"{LOOPBACK}:0")
    try:
        return await scrape(metrics)
    finally:
        await metrics.close()


def test_upstream_latency_buckets_are_cumulative() -> None:
    from olm.dns.upstream.health import LATENCY_BUCKETS

    async def main() -> str:
        _, good = await start_fake(answers_with("192.0.2.7", delay=0.03))
        service, sock = await service_with([f"{good.host}:{good.port}"])
        try:
            for name in ("a.example", "b.example", "c.example"):
                await ask(sock, client_query(name))
            collector = OlmCollector(service.stack.counters, service)
            families = {f.name: f for f in collector.collect()}
        finally:
            await service.stop()
        latency = families["olm_dns_upstream_latency_seconds"]
        buckets = {s.labels["le"]: s.value for s in latency.samples if s.name.endswith("_bucket")}
        assert len(buckets) == len(LATENCY_BUCKETS) + 1
        assert buckets["0.025"] == 0 and buckets["0.05"] == 3 and buckets["+Inf"] == 3
        return "ok"

    run(main())


# -- the HTTP server -----------------------------------------------------------------------------


def test_http_paths_methods_bad_requests_and_bounds() -> None:
    async def main() -> None:
        counters = Counters()
        counters.child("tcp").inc("retransmits")
        metrics = Metrics(counters)
        metrics.server.idle_timeout = 0.3
        metrics.server.max_connections = 2
        await metrics.start(f"{LOOPBACK}:0")
        (_, port), *_ = metrics.server.sockets
        try:
            status, body = await http(port)
            assert status == 200 and b"olm_tcp_retransmits_total 1.0" in body
            assert (await http(port, "/metrics?x=1"))[0] == 200
            status, body = await http(port, method="HEAD")
            assert status == 200 and body == b""
            assert (await http(port, "/"))[0] == 404
            assert (await http(port, "/metrics/x"))[0] == 404
            assert (await http(port, method="POST"))[0] == 405
            assert (await raw(port, b"NOT HTTP AT ALL\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
            huge = b"GET /metrics HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 40000 + b"\r\n\r\n"
            assert (await raw(port, huge)).startswith(b"HTTP/1.1 431 ")
            body_too_big = b"POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 40000\r\n\r\n"
            assert (await raw(port, body_too_big + b"a" * 40000)).startswith(b"HTTP/1.1 413 ")
            # Kept alive between scrapes, closed when idle.
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            conn = h11.Connection(h11.CLIENT)
            for _ in range(2):
                request = h11.Request(method="GET", target="/metrics", headers=[("host", "x")])
                writer.write(conn.send(request) + conn.send(h11.EndOfMessage()))
                assert (await _response(conn, reader))[0] == 200
                conn.start_next_cycle()
            assert await asyncio.wait_for(reader.read(), 3) == b""  # idle: closed
            writer.close()
            # At most max_connections at once: the third is closed at once.
            held = [await asyncio.open_connection(LOOPBACK, port) for _ in range(2)]
            await asyncio.sleep(0.05)
            r3, w3 = await asyncio.open_connection(LOOPBACK, port)
            assert await asyncio.wait_for(r3.read(), 3) == b""
            for _, w in [*held, (r3, w3)]:
                w.close()
        finally:
            await metrics.close()
        values = counters.child("metrics").values
        assert values["scrapes"] == 5
        assert values["not_found"] == 2 and values["bad_method"] == 1
        assert values["bad_request"] == 3 and values["idle_closed"] >= 1
        assert values["refused_connections"] == 1
        # Closed: nothing listens any more.
        with pytest.raises(OSError):
            await asyncio.open_connection(LOOPBACK, port)

    run(main())


def test_open_metrics_on_a_busy_address_is_a_startup_error() -> None:
    async def main() -> None:
        with socket.socket() as busy:
            busy.bind((LOOPBACK, 0))
            busy.listen()
            port = busy.getsockname()[1]
            async with contextlib.AsyncExitStack() as views:
                with pytest.raises(StartupError) as caught:
                    await open_metrics(f"{LOOPBACK}:{port}", Counters(), None, views)
            assert caught.value.status == 1
            assert str(caught.value).startswith(f"metrics: cannot listen on {LOOPBACK}:{port}: ")

    run(main())


def test_open_metrics_closes_with_the_views_and_serves_ipv6() -> None:
    async def main() -> None:
        _, good = await start_fake(answers_with("192.0.2.7"))
        service, _ = await service_with([f"{good.host}:{good.port}"])
        port = free_port()
        try:
            async with contextlib.AsyncExitStack() as views:
                await open_metrics(f"{LOOPBACK}:{port}", service.stack.counters, service, views)
                assert len(service.engine.observers) == 1
                assert (await http(port))[0] == 200
            assert not service.engine.observers
            with pytest.raises(OSError):
                await asyncio.open_connection(LOOPBACK, port)
            if socket.has_ipv6:
                six = free_port("::1")
                async with contextlib.AsyncExitStack() as views:
                    await open_metrics(f"[::1]:{six}", Counters(), None, views)
                    reader, writer = await asyncio.open_connection("::1", six)
                    writer.write(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
                    writer.close()
        finally:
            await service.stop()

    run(main())


# -- the Grafana dashboard ----------------------------------------------------------------------

#: Metrics of the dashboard that appear only once their counter moved (a retransmission, a
#: drop): each with a counter-tree name that maps to it, and the file and literal counting it.
_IPV4, _IPV6, _FRAG, _ICMP = (
    f"netstack/network/{m}.py" for m in ("ipv4", "ipv6", "fragment", "icmp")
)
_UDP, _TCP = "netstack/transport/udp.py", "netstack/transport/tcp/endpoint.py"
_TCP_SND, _TCP_REC = "netstack/transport/tcp/sender.py", "netstack/transport/tcp/recovery.py"
_TCP_HS = "netstack/transport/tcp/handshake.py"
LAZY = {
    "olm_ipv4_malformed_total": ("ipv4.malformed.bad_checksum", _IPV4, '"malformed.'),
    "olm_ipv6_malformed_total": ("ipv6.malformed.truncated", _IPV6, '"malformed.'),
    "olm_udp_malformed_total": ("udp.malformed.bad_checksum", _UDP, '"malformed.bad_checksum"'),
    "olm_filter_malformed_total": ("filter.malformed.empty", "olm/device/filtered.py", "malformed"),
    "olm_udp_no_port_total": ("udp.no_port", _UDP, '"no_port"'),
    "olm_udp_receive_queue_full_total": (
        "udp.receive_queue_full",
        "netstack/adapters/udp.py",
        '"receive_queue_full"',
    ),
    "olm_ipv4_not_for_this_host_total": ("ipv4.not_for_us", _IPV4, '"not_for_us"'),
    "olm_tcp_segments_out_of_window_total": ("tcp.segments.out_of_window", _TCP, "out_of_window"),
    "olm_tcp_retransmits_total": ("tcp.retransmits", _TCP_SND, '"retransmits"'),
    "olm_tcp_timeouts_total": ("tcp.timeouts", _TCP_SND, '"timeouts"'),
    "olm_tcp_fast_retransmits_total": ("tcp.fast_retransmits", _TCP_REC, '"fast_retransmits"'),
    "olm_tcp_syn_retransmits_total": ("tcp.syn_retransmits", _TCP_HS, '"syn_retransmits"'),
    "olm_tcp_established_total": ("tcp.established", _TCP, '"established"'),
    "olm_tcp_rst_sent_total": ("tcp.rst.sent", "netstack/transport/tcp/protocol.py", '"rst.sent"'),
    "olm_ipv4_reassembly_reassembled_total": ("ipv4.reassembly.reassembled", _FRAG, "reassembled"),
    "olm_ipv4_reassembly_timeouts_total": ("ipv4.reassembly.timeouts", _FRAG, '"timeouts"'),
    "olm_ipv4_reassembly_overlaps_total": ("ipv4.reassembly.overlaps", _FRAG, '"overlaps"'),
    "olm_icmpv4_messages_total": ("icmpv4.in.echo_request", _ICMP, '"in." + '),
    "olm_icmpv6_messages_total": ("icmpv6.out.echo_reply", _ICMP, '"out.echo_reply"'),
}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def local_answers_scrape(tmp: Path) -> str:
    """Scrape a service with a blocklist and a fake-IP pool after a blocked and a fake answer."""

    async def main() -> str:
        listfile = tmp / "ads.txt"
        listfile.write_text("ads.example\n")
        _, good = await start_fake(answers_with("192.0.2.7"))
        service, sock = await service_with(
            [f"{good.host}:{good.port}"],
            state_dir=str(tmp / "state"),
            block=BlockSettings(lists=(str(listfile),)),
            fake_ip=FakeIpSettings(
                enabled=True, ipv4_range="198.18.0.0/24", suffixes=("fake.example",)
            ),
        )
        metrics = Metrics(service.stack.counters, service)
        await metrics.start(f"{LOOPBACK}:0")
        try:
            assert (await ask(sock, client_query("one.example"))).header.rcode == 0
            assert (await ask(sock, client_query("ads.example"))).header.rcode == 3
            assert str((await ask(sock, client_query("a.fake.example"))).rr[0].rdata).startswith(
                "198.18.0."
            )
            return await scrape(metrics)
        finally:
            await metrics.close()
            await service.stop()

    return run(main())


def test_blocked_answers_per_list_and_the_fake_ip_pool(tmp_path: Path) -> None:
    text = local_answers_scrape(tmp_path)
    assert value(text, "olm_dns_blocked_total", list="ads") == 1
    assert value(text, "olm_dns_blocklist_domains", list="ads") == 1
    assert value(text, "olm_dns_blocklist_bytes", list="ads") > 0
    assert value(text, "olm_dns_fake_ip_pool_used") == 1
    assert value(text, "olm_dns_fake_ip_pool_capacity") >= 200
    check_conventions(text)
    promtool_check(text)


def test_every_dashboard_query_names_a_metric_the_exporter_emits(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"]
    emitted = set(samples(local_answers_scrape(tmp_path)))
    # The lazy ones: their tree names map to them, and the code counts those names.
    for metric, (dotted, path, literal) in LAZY.items():
        mapped = metric_for(dotted)
        assert mapped is not None and f"{mapped[0]}_total" == metric, (metric, mapped)
        assert literal in (REPO / path).read_text(), (metric, path, literal)
    known = emitted | set(LAZY)
    exprs = 0
    used: set[str] = set()
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = NAME.findall(target["expr"])
            assert names, target["expr"]
            assert set(names) <= known, (panel["title"], set(names) - known)
            used.update(names)
            exprs += 1
    assert exprs >= 20
    # What the issue asks to chart is there.
    for wanted in (
        "olm_dns_queries_total",
        "olm_dns_responses_total",
        "olm_dns_request_duration_seconds_bucket",
        "olm_dns_queries_in_flight",
        "olm_dns_cache_hits_total",
        "olm_dns_cache_misses_total",
        "olm_dns_upstream_latency_seconds_bucket",
        "olm_dns_upstream_tries_total",
        "olm_dns_upstream_up",
        "olm_dns_blocked_total",
        "olm_dns_fake_ip_pool_used",
        "olm_ipv4_malformed_total",
        "olm_tcp_retransmits_total",
    ):
        assert wanted in used, wanted


# -- a daemon, promtool and a real Prometheus -----------------------------------------------------


def _get(ns: NetNS, url: str) -> str:
    """GET ``url`` from inside the namespace; its body."""
    code = (
        "import sys, urllib.request\n"
        "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
    )
    return str(ns.python(code, url, timeout=30).stdout)


HIT_RATE = (
    "sum(rate(olm_dns_cache_hits_total[15s])) / (sum(rate(olm_dns_cache_hits_total[15s]))"
    " + sum(rate(olm_dns_cache_misses_total[15s])))"
)


@pytest.mark.privileged
def test_olm_serve_metrics_pass_promtool_and_prometheus_scrapes_them(
    netns: NetNS, olm: list[OlmProcess], tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        skip_or_fail("needs the `prometheus` command (Debian package prometheus)")
    require_tool("dig")
    start_upstream(netns, 5300)
    serve = OlmProcess(
        netns,
        [
            "serve",
            "--listen",
            "127.0.0.1:5353",
            "--metrics",
            "127.0.0.1:9153",
            "--upstream",
            "127.0.0.1:5300",
            "--control",
            str(tmp_path / "olm.sock"),
        ],
    )
    olm.append(serve)

    def dig(name: str) -> None:
        done = netns.run(["dig", "+time=3", "+tries=1", "-p", "5353", "@127.0.0.1", name, "A"])
        assert "status: NOERROR" in done.stdout, done.stdout

    url = "http://127.0.0.1:9153/metrics"
    before = _get(netns, url)
    dig("example.test")
    dig("example.test")
    after = _get(netns, url)
    promtool_check(after)
    check_conventions(after)
    assert value(before, "olm_dns_cache_hits_total", kind="positive") == 0
    assert value(after, "olm_dns_cache_hits_total", kind="positive") == 1
    assert value(after, "olm_dns_cache_misses_total") == 1
    assert value(after, "olm_dns_queries_total", transport="udp") == 2

    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: olm\n    static_configs:\n"
        "      - targets: ['127.0.0.1:9153']\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    server = netns.popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            "--web.listen-address=127.0.0.1:9090",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        query = "http://127.0.0.1:9090/api/v1/query?query=" + urllib.parse.quote(HIT_RATE)
        result: list[Any] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            dig("example.test")  # hits keep the rate above 0
            with contextlib.suppress(subprocess.CalledProcessError):
                answer = json.loads(_get(netns, query))
                result = answer["data"]["result"]
                if result and not math.isnan(float(result[0]["value"][1])):
                    break
            time.sleep(0.5)
        targets = ""
        with contextlib.suppress(subprocess.CalledProcessError):
            targets = _get(netns, "http://127.0.0.1:9090/api/v1/targets")
        assert result, f"Prometheus returned no hit rate; targets: {targets}"
        rate = float(result[0]["value"][1])
        assert 0 < rate <= 1, rate
        health = json.loads(targets)["data"]["activeTargets"][0]
        assert health["health"] == "up" and not health["lastError"], health
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        log.close()
    code, _, err = serve.stop()
    assert code == 0, err


@pytest.mark.privileged
def test_olm_up_over_a_real_tun_exports_the_stack_under_its_queries(
    netns: NetNS, olm_up: Callable[..., OlmProcess]
) -> None:
    """``olm up --metrics``: two digs through the TUN move the DNS and the stack's metrics."""
    require_tool("dig")
    start_upstream(netns, 5300)
    olm_up("--upstream", "127.0.0.1:5300", "--metrics", "127.0.0.1:9153")
    url = "http://127.0.0.1:9153/metrics"
    before = _get(netns, url)
    for _ in range(2):
        done = netns.run(["dig", "+time=3", "+tries=1", "@10.30.30.30", "example.test", "A"])
        assert "status: NOERROR" in done.stdout, done.stdout
    after = _get(netns, url)
    promtool_check(after)
    check_conventions(after)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("olm_dns_queries_total", transport="udp") == 2
    assert moved("olm_dns_cache_misses_total") == 1
    assert moved("olm_dns_cache_hits_total", kind="positive") == 1
    # The same two queries, counted by the stack on their way in from the TUN.
    assert moved("olm_udp_delivered_total") == 2
    assert moved("olm_nic_rx_packets_total") >= 2
