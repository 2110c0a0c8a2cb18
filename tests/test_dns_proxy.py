"""The engine with real upstreams: in-process fake resolvers on 127.0.0.1, kernel sockets only."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RD, RR, TXT, A, DNSRecord

from netstack.clock import AsyncioClock
from netstack.counters import Counters
from olm.config import Settings
from olm.dns.answer import render
from olm.dns.cache import CacheSettings
from olm.dns.engine import Engine
from olm.dns.frontends import KernelUdpServer, StackUdpServer, tcp_server
from olm.dns.handlers import Handler, Result
from olm.dns.pipeline import Pipeline
from olm.dns.request import TCP, UDP, Request
from olm.dns.upstream import (
    Policy,
    UdpTransport,
    Upstream,
    UpstreamConfigError,
    UpstreamFailure,
    UpstreamGroup,
    parse_upstream,
    resolv_conf_upstreams,
    upstream_from,
)

from fakedns import LOOPBACK, FakeUpstream, answer, answers_with, run, silent, start_fake
from stackutil import HOST4, STACK4, make_stack, udp_packet


def client_query(name: str = "www.example.com", *, edns: EDNS0 | None = None) -> bytes:
    record = DNSRecord.question(name)
    record.header.id = 0x4242
    if edns is not None:
        record.add_ar(edns)
    return bytes(record.pack())


def group(
    upstreams: list[Upstream], counters: Counters | None = None, **options: Any
) -> UpstreamGroup:
    node = (counters if counters is not None else Counters()).child("upstream")
    return UpstreamGroup("test", [UdpTransport(u, node) for u in upstreams], node, **options)


async def resolve(g: UpstreamGroup, name: str = "www.example.com") -> DNSRecord:
    request = Request(client_query(name))
    return DNSRecord.parse(render(await g.resolve(request), request, 0.0))


def make_engine(
    upstreams: list[Upstream],
    counters: Counters | None = None,
    *,
    cache: bool = False,
    **settings: Any,
) -> Engine:
    """The engine as ``olm up`` builds it, the cache off unless asked for."""
    options = {"timeout": 1.0, "deadline": 2.0, **settings}
    config = Settings(
        upstreams=[str(u) for u in upstreams], cache=CacheSettings(enabled=cache), **options
    )
    node = counters if counters is not None else Counters("dns")
    clock = AsyncioClock()
    pipeline = Pipeline(config, clock, node)
    return Engine(pipeline.build(config), clock, node, pipeline.gate)


async def ask(engine: Engine, data: bytes, transport: str = UDP) -> bytes | None:
    out = engine.handle(Request(data, transport=transport))
    if out is None or isinstance(out, bytes):
        return out
    return await out


def a_records(data: bytes | None) -> list[str]:
    assert data is not None
    return [str(rr.rdata) for rr in DNSRecord.parse(data).rr if rr.rtype == QTYPE.A]


# -- upstream addresses and resolv.conf --------------------------------------------------------


def test_parse_upstream_forms() -> None:
    assert parse_upstream("192.0.2.1") == Upstream("192.0.2.1", 53)
    assert parse_upstream("192.0.2.1:5353") == Upstream("192.0.2.1", 5353)
    assert parse_upstream("[2001:db8::1]:853") == Upstream("2001:db8::1", 853)
    assert parse_upstream("[2001:db8::1]") == Upstream("2001:db8::1", 53)
    assert parse_upstream("2001:db8::1") == Upstream("2001:db8::1", 53)
    assert str(Upstream("2001:db8::1", 5)) == "[2001:db8::1]:5"
    for bad in ("dns exa", "192.0.2.1:0", "192.0.2.1:x", "[2001:db8::1", "[::1]x", ""):
        with pytest.raises(UpstreamConfigError):
            parse_upstream(bad)


def test_parse_upstream_urls_and_tables() -> None:
    assert parse_upstream("tls://192.0.2.1") == Upstream("192.0.2.1", 853, "tls")
    assert parse_upstream("quic://[2001:db8::1]") == Upstream("2001:db8::1", 853, "quic")
    doh = parse_upstream("https://dns.example/dns-query")
    assert (doh.host, doh.port, doh.path, doh.is_ip) == ("dns.example", 443, "/dns-query", False)
    assert parse_upstream("https://192.0.2.1:8443").path == "/dns-query"
    assert parse_upstream("tcp://192.0.2.1:5353") == Upstream("192.0.2.1", 5353, "tcp")
    assert parse_upstream("dns.example") == Upstream("dns.example", 53)  # needs a bootstrap
    table = upstream_from(
        {"url": "tls://192.0.2.53", "server_name": "dns.example", "ca_file": "ca.pem"}
    )
    assert table.tls_name == "dns.example" and table.ca_file == "ca.pem" and table.encrypted
    get = upstream_from({"url": "https://192.0.2.53/q", "method": "get"})
    assert get.method == "GET" and str(get) == "https://192.0.2.53:443/q"
    for bad_url in ("ftp://192.0.2.1", "tls://192.0.2.1/path", "tls://u@192.0.2.1", "udp://:53"):
        with pytest.raises(UpstreamConfigError):
            parse_upstream(bad_url)
    for bad_table in (
        {"url": "tls://192.0.2.1", "colour": "red"},
        {"server_name": "x"},
        {"url": "tls://192.0.2.1", "socks5": "http://proxy:1"},
        {"url": "tls://192.0.2.1", "method": "GET"},
    ):
        with pytest.raises(UpstreamConfigError):
            upstream_from(bad_table)


def test_resolv_conf_skips_service_addresses_and_junk(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nsearch example\nnameserver 10.30.30.30\nnameserver bogus\n"
        "nameserver 127.0.0.53\nnameserver fd30:30:30::30\nnameserver ::1\n"
        "nameserver 127.0.0.53\noptions edns0\n"
    )
    got = resolv_conf_upstreams(conf, exclude=["10.30.30.30", "fd30:30:30::30"])
    assert got == [Upstream("127.0.0.53"), Upstream("::1")]


def test_resolv_conf_without_usable_nameserver_is_a_clear_error(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 10.30.30.30\n")
    with pytest.raises(UpstreamConfigError, match=r"no usable nameserver in .*skipped: 10\.30"):
        resolv_conf_upstreams(conf, exclude=["10.30.30.30"])
    with pytest.raises(UpstreamConfigError, match="cannot be read"):
        resolv_conf_upstreams(tmp_path / "missing")


# -- policies ----------------------------------------------------------------------------------


def test_sequential_fails_over_from_dead_to_second() -> None:
    async def main() -> None:
        dead, up_dead = await start_fake(silent)
        live, up_live = await start_fake(answers_with("192.0.2.7"))
        counters = Counters()
        g = group([up_dead, up_live], counters, timeout=0.2, deadline=2)
        record = await resolve(g)
        assert [str(rr.rdata) for rr in record.rr] == ["192.0.2.7"]
        assert len(dead.seen) == 1 and len(live.seen) == 1
        assert counters.get("upstream.timeout") == 1
        assert counters.get("upstream.answers") == 1

    run(main())


def test_refused_port_fails_over_quickly() -> None:
    async def main() -> None:
        # A port nobody listens on: the ICMP port unreachable ends the try at once.
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
        closed_port = sock.getsockname()[1]
        sock.close()
        _, up_live = await start_fake(answers_with("192.0.2.8"))
        counters = Counters()
        g = group([Upstream(LOOPBACK, closed_port), up_live], counters, timeout=5, deadline=8)
        record = await asyncio.wait_for(resolve(g), 2)
        assert str(record.rr[0].rdata) == "192.0.2.8"
        assert counters.get("upstream.error") == 1

    run(main())


def test_servfail_from_upstream_fails_over() -> None:
    def servfail(q: DNSRecord) -> list[tuple[float, bytes]]:
        reply = q.reply()
        reply.header.rcode = RCODE.SERVFAIL
        return [(0, reply.pack())]

    async def main() -> None:
        _, bad = await start_fake(servfail)
        _, good = await start_fake(answers_with("192.0.2.9"))
        counters = Counters()
        record = await resolve(group([bad, good], counters, timeout=1, deadline=2))
        assert str(record.rr[0].rdata) == "192.0.2.9"
        assert counters.get("upstream.rcode_failure") == 1

    run(main())


def test_all_dead_gives_servfail_within_the_deadline() -> None:
    async def main() -> None:
        _, a = await start_fake(silent)
        _, b = await start_fake(silent)
        counters = Counters("dns")
        engine = make_engine([a, b], counters, timeout=0.1, deadline=0.3)
        reply = await asyncio.wait_for(ask(engine, client_query(edns=EDNS0())), 2)
        assert reply is not None
        record = DNSRecord.parse(reply)
        assert record.header.rcode == RCODE.SERVFAIL and record.header.id == 0x4242
        # RFC 8914: Extended DNS Error 22, No Reachable Authority, for an EDNS client.
        (opt,) = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
        assert [(o.code, o.data[:2]) for o in opt.rdata] == [(15, b"\x00\x16")]
        assert counters.get("forward.servfail") == 1
        assert counters.get("upstream.timeout") == 2
        with pytest.raises(UpstreamFailure):
            await group([a], timeout=0.5, deadline=0.1).resolve(Request(client_query()))

    run(main())


def test_race_returns_the_fastest() -> None:
    async def main() -> None:
        _, slow = await start_fake(answers_with("192.0.2.1", delay=0.3))
        _, fast = await start_fake(answers_with("192.0.2.2"))
        race = group([slow, fast], policy="race", timeout=1, deadline=2)
        record = await resolve(race)
        assert str(record.rr[0].rdata) == "192.0.2.2"
        sequential = group([slow, fast], policy=Policy.SEQUENTIAL, timeout=1, deadline=2)
        record = await resolve(sequential)
        assert str(record.rr[0].rdata) == "192.0.2.1"

    run(main())


def test_race_with_all_dead_fails() -> None:
    async def main() -> None:
        _, a = await start_fake(silent)
        _, b = await start_fake(silent)
        counters = Counters()
        race = group([a, b], counters, policy="race", timeout=0.1, deadline=1)
        with pytest.raises(UpstreamFailure, match="all_failed"):
            await race.resolve(Request(client_query()))
        assert counters.get("upstream.timeout") == 2

    run(main())


def test_round_robin_rotates() -> None:
    async def main() -> None:
        fakes = [await start_fake(answers_with(f"192.0.2.{i}")) for i in (1, 2, 3)]
        g = group([u for _, u in fakes], policy="round-robin", timeout=1, deadline=2)
        got = [str((await resolve(g)).rr[0].rdata) for _ in range(4)]
        assert got == ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.1"]
        assert [len(f.seen) for f, _ in fakes] == [2, 1, 1]

    run(main())


# -- RFC 5452 ----------------------------------------------------------------------------------


def test_spoofed_replies_are_ignored_and_the_real_one_used() -> None:
    def spoofing(q: DNSRecord) -> list[tuple[float, bytes]]:
        wrong_id = answer(q, "203.0.113.66", qid=(q.header.id + 1) & 0xFFFF)
        other = DNSRecord.question("evil.example")
        other.header.id = q.header.id
        wrong_question = answer(other, "203.0.113.67")
        not_a_response = bytearray(answer(q, "203.0.113.68"))
        not_a_response[2] &= 0x7F  # clear QR
        return [
            (0, wrong_id),
            (0.01, wrong_question),
            (0.02, bytes(not_a_response)),
            (0.03, b"\x00"),
            (0.05, answer(q, "192.0.2.53")),
        ]

    async def main() -> None:
        _, up = await start_fake(spoofing)
        counters = Counters()
        record = await resolve(group([up], counters, timeout=1, deadline=2))
        assert [str(rr.rdata) for rr in record.rr] == ["192.0.2.53"]
        assert counters.get("upstream.spoofed_ignored") == 3
        assert counters.get("upstream.malformed_ignored") == 1

    run(main())


def test_each_upstream_query_has_fresh_id_and_port_and_matches_case_insensitively() -> None:
    def upper(q: DNSRecord) -> list[tuple[float, bytes]]:
        shouted = DNSRecord.question(str(q.q.qname).upper())
        shouted.header.id = q.header.id
        return [(0, answer(shouted, "192.0.2.10"))]

    async def main() -> None:
        fake, up = await start_fake(upper)
        g = group([up], timeout=1, deadline=2)
        for _ in range(8):
            record = await resolve(g)
            assert str(record.rr[0].rdata) == "192.0.2.10"
        ids = {q.header.id for q in fake.seen}
        ports = {addr[1] for addr in fake.sources}
        # 8 draws from 2**16: a repeat is possible but (1 - 28/65536) says it is rare. The
        # socket pool grows to its size (16) before any socket carries a second query.
        assert len(ids) >= 7 and len(ports) == 8
        assert 0x4242 not in ids or len(ids) == 8

    run(main())


# -- TC=1 from upstream: retry over TCP --------------------------------------------------------


def big_answer(query: DNSRecord, records: int) -> bytes:
    reply = query.reply()
    for i in range(records):
        reply.add_answer(RR(query.q.qname, QTYPE.TXT, rdata=TXT(f"{i:03d}" + "z" * 200)))
    packed: bytes = reply.pack()
    return packed


async def start_tc_upstream(records: int) -> tuple[Upstream, asyncio.Server, list[int]]:
    tcp_ids: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
        query = DNSRecord.parse(await reader.readexactly(n))
        tcp_ids.append(query.header.id)
        data = big_answer(query, records)
        writer.write(struct.pack("!H", len(data)) + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]

    def truncated(q: DNSRecord) -> list[tuple[float, bytes]]:
        reply = q.reply()
        reply.header.tc = 1
        return [(0, reply.pack())]

    await start_fake(truncated, port)
    return Upstream(LOOPBACK, port), server, tcp_ids


def test_truncated_udp_answer_is_retried_over_tcp() -> None:
    async def main() -> None:
        up, server, tcp_ids = await start_tc_upstream(records=12)
        counters = Counters("dns")
        engine = make_engine([up], counters, timeout=1, deadline=3)
        full = await ask(engine, client_query(), TCP)
        assert full is not None
        full_record = DNSRecord.parse(full)
        assert len(full_record.rr) == 12 and full_record.header.tc == 0
        small = await ask(engine, client_query())
        assert small is not None and len(small) <= 512
        cut = DNSRecord.parse(small)
        assert cut.header.tc == 1 and cut.rr == [] and str(cut.q.qname) == "www.example.com."
        roomy = await ask(engine, client_query(edns=EDNS0(udp_len=4096)))
        assert roomy is not None and len(DNSRecord.parse(roomy).rr) == 12
        assert counters.get("upstream.tc_retry_tcp") == 3
        assert counters.get("truncated") == 1
        assert len(tcp_ids) == 3
        server.close()

    run(main())


# -- the engine --------------------------------------------------------------------------------


def test_inflight_bound_gives_refused() -> None:
    async def main() -> None:
        _, up = await start_fake(answers_with("192.0.2.1", delay=0.2))
        counters = Counters("dns")
        engine = make_engine([up], counters, max_inflight=2)
        replies = await asyncio.gather(*(ask(engine, client_query()) for _ in range(3)))
        rcodes = [DNSRecord.parse(r).header.rcode for r in replies if r is not None]
        assert rcodes == [RCODE.NOERROR, RCODE.NOERROR, RCODE.REFUSED]
        assert counters.get("admission.refused_inflight") == 1
        assert engine.gate.inflight == 0

    run(main())


def test_udp_protocol_on_kernel_loopback() -> None:
    async def main() -> None:
        _, up = await start_fake(answers_with("192.0.2.77"))
        counters = Counters("dns")
        engine = make_engine([up], counters)
        loop = asyncio.get_running_loop()
        frontend = KernelUdpServer(engine, LOOPBACK, 0)
        server = frontend.address
        got: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                got.put_nowait(data)

        client, _ = await loop.create_datagram_endpoint(Client, remote_addr=server)
        client.sendto(client_query())
        assert a_records(await got.get()) == ["192.0.2.77"]
        client.sendto(b"\x00\x07" + b"\x01\x00\x00\x01" + bytes(6) + b"\x3f")  # bad question
        formerr = DNSRecord.parse(await got.get())
        assert formerr.header.rcode == RCODE.FORMERR and formerr.header.id == 7
        client.sendto(b"\x01")  # unreadable: no reply, counted
        client.sendto(client_query("second.example"))
        assert a_records(await got.get()) == ["192.0.2.77"]
        assert counters.get("queries.udp") == 4
        assert counters.get("sanitise.dropped.unreadable") == 1
        assert counters.get("sanitise.formerr") == 1
        assert counters.get("rcode.NOERROR") == 2
        # A burst larger than one wake-up's batch: every query answered.
        for i in range(200):
            client.sendto(client_query(f"burst{i}.example"))
        answers = [await got.get() for _ in range(200)]
        assert {str(DNSRecord.parse(a).q.qname) for a in answers} == {
            f"burst{i}.example." for i in range(200)
        }
        assert counters.get("queries.udp") == 204
        client.close()
        frontend.close()
        await engine.close()

    run(main())


def test_tcp_connection_on_kernel_loopback() -> None:
    async def main() -> None:
        _, up = await start_fake(answers_with("192.0.2.88"))
        counters = Counters("dns")
        engine = make_engine([up], counters)
        frontend = tcp_server(engine)
        server = await asyncio.start_server(frontend.handle_connection, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        for name in ("a.example", "b.example"):
            data = client_query(name)
            writer.write(struct.pack("!H", len(data)) + data)
        replies = set()
        for _ in range(2):
            (n,) = struct.unpack("!H", await reader.readexactly(2))
            record = DNSRecord.parse(await reader.readexactly(n))
            assert [str(rr.rdata) for rr in record.rr] == ["192.0.2.88"]
            replies.add(str(record.q.qname))
        assert replies == {"a.example.", "b.example."}
        assert counters.get("queries.tcp") == 2
        writer.close()
        await frontend.close()
        await engine.close()
        server.close()

    run(main())


def test_logs_hold_no_query_names_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """Per-query failures go to counters and DEBUG; INFO keeps names out, DEBUG has them."""

    async def main() -> None:
        _, dead = await start_fake(silent)
        _, live = await start_fake(answers_with("192.0.2.1"))
        engine = make_engine([dead, live], timeout=0.1, deadline=1)
        await ask(engine, client_query("secret-name.example"))
        engine_dead = make_engine([dead], timeout=0.1, deadline=0.5)
        await ask(engine_dead, client_query("secret-name.example"))

    with caplog.at_level(logging.INFO, logger="olm"):
        run(main())
    assert "secret-name" not in caplog.text
    assert "SERVFAIL" not in caplog.text and "no answer" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="olm"):
        run(main())
    assert "secret-name" in caplog.text
    assert "answering SERVFAIL" in caplog.text and "no answer within" in caplog.text


def test_udp_protocol_on_netstack() -> None:
    async def main() -> None:
        _, up = await start_fake(silent)
        stack, link, _ = make_stack()
        counters = Counters("dns")
        engine = make_engine([up], counters, timeout=0.05, deadline=0.1)
        server = StackUdpServer(engine, stack, STACK4, 53)
        update = DNSRecord.question("x.example")
        update.header.opcode, update.header.id = 5, 99
        link.inject(udp_packet(HOST4, STACK4, 4000, 53, bytes(update.pack())))
        (out,) = link.drain()  # answered synchronously, inside the receive path
        notimp = DNSRecord.parse(out[28:])
        assert notimp.header.rcode == RCODE.NOTIMP and notimp.header.id == 99
        link.inject(udp_packet(HOST4, STACK4, 4000, 53, client_query()))
        assert link.drain() == []
        while counters.get("forward.servfail") == 0:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0)
        (out,) = link.drain()
        assert DNSRecord.parse(out[28:]).header.rcode == RCODE.SERVFAIL
        server.close()
        await engine.close()

    run(main())


def test_a_bug_in_resolving_still_answers_servfail() -> None:
    """RFC 8906: always answer. An unexpected exception becomes SERVFAIL, counted."""

    class Broken(Handler):
        name = "broken"

        def handle(self, request: Request) -> Result:
            return self._fail()

        async def _fail(self) -> None:
            raise RuntimeError("a bug")

    async def main() -> None:
        _, up = await start_fake(answers_with("192.0.2.1"))
        counters = Counters("dns")
        engine = make_engine([up], counters)
        engine.chain = Broken(counters)
        reply = await ask(engine, client_query())
        assert reply is not None
        assert DNSRecord.parse(reply).header.rcode == RCODE.SERVFAIL
        assert counters.get("internal_error") == 1
        assert engine.gate.inflight == 0

    run(main())


# -- signed queries (RFC 8945) --------------------------------------------------------------------


def tsig_query(name: str = "signed.example") -> bytes:
    """A query with an OPT and, last, a TSIG record (its MAC is opaque to the proxy)."""
    record = DNSRecord.question(name)
    record.header.id = 0x5151
    record.add_ar(EDNS0(udp_len=1232))
    mac = bytes(range(32))
    rdata = (
        b"\x0bhmac-sha256\x00"  # algorithm name
        + struct.pack("!HIH", 0, 1_700_000_000, 300)  # time signed (48 bits), fudge
        + struct.pack("!H", len(mac))
        + mac
        + struct.pack("!HHH", 0x5151, 0, 0)  # original ID, error, other len
    )
    record.add_ar(RR("key.example.", QTYPE.TSIG, 255, 0, RD(rdata)))
    return bytes(record.pack())


def test_signed_query_is_forwarded_whole_and_its_answer_returned_whole() -> None:
    """RFC 8945 5.5: a TSIG query passes unchanged (only the ID, which TSIG allows for)."""
    seen: list[bytes] = []

    def signed_answer(q: DNSRecord) -> list[tuple[float, bytes]]:
        reply = q.reply()
        reply.add_answer(RR(q.q.qname, rdata=A("192.0.2.44"), ttl=300))
        reply.ar = [rr for rr in q.ar if rr.rtype == QTYPE.TSIG]  # "signed" by the server
        return [(0, bytes(reply.pack()))]

    class Recording(FakeUpstream):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            seen.append(data)
            super().datagram_received(data, addr)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Recording(signed_answer), local_addr=(LOOPBACK, 0)
        )
        up = Upstream(LOOPBACK, transport.get_extra_info("sockname")[1])
        counters = Counters("dns")
        engine = make_engine([up], counters, cache=True)
        query = tsig_query()
        replies = [await ask(engine, query), await ask(engine, query, TCP)]
        assert len(seen) == 2  # never answered from the cache
        for sent in seen:
            assert sent[2:] == query[2:]  # the signature and everything else unchanged
        # Fresh random IDs upstream (RFC 5452): both equal to the client's is a 2**-32 event.
        assert {sent[:2] for sent in seen} != {query[:2]}
        for reply in replies:
            assert reply is not None and reply[:2] == query[:2]
            parsed = DNSRecord.parse(reply)
            assert [rr.rtype for rr in parsed.ar] == [QTYPE.TSIG]  # returned as the server sent
            assert str(parsed.rr[0].rdata) == "192.0.2.44"
        assert counters.get("sanitise.signed") == 2
        assert counters.get("cache.bypass") == 2
        assert counters.get("cache.insert") == 0
        transport.close()

    run(main())


def test_tsig_before_the_last_record_is_formerr() -> None:
    """RFC 8945 section 5.1: a TSIG that is not the last additional record is FORMERR."""
    record = DNSRecord.parse(tsig_query())
    record.ar.reverse()  # TSIG, then OPT
    request = Request(bytes(record.pack()))
    assert not request.ok

    async def main() -> None:
        counters = Counters("dns")
        engine = make_engine([Upstream(LOOPBACK, 9)], counters)
        reply = await ask(engine, bytes(record.pack()))
        assert reply is not None and DNSRecord.parse(reply).header.rcode == RCODE.FORMERR
        assert counters.get("upstream.queries") == 0

    run(main())
