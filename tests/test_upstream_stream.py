"""DNS over TCP and TLS upstreams: persistent pipelined connections, resends, verification.

The servers are in the test, on 127.0.0.1: a DNS-over-TCP/TLS responder (asyncio streams,
dnslib answers) that can close its connections after every few queries, with certificates from
a test CA (trustme). Nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from pathlib import Path

import pytest
import trustme
from dnslib import QTYPE, RR, A, DNSRecord

from netstack.counters import Counters
from olm.dns.request import Request
from olm.dns.upstream import Upstream, UpstreamGroup
from olm.dns.upstream.base import Query
from olm.dns.upstream.bootstrap import Bootstrap
from olm.dns.upstream.stream import StreamTransport

from fakedns import answers_with, run, silent, start_fake


class StreamServer:
    """DNS over TCP (or TLS with ``context``) on 127.0.0.1: every name is 192.0.2.<n>."""

    def __init__(self, context: ssl.SSLContext | None = None, close_after: int = 0) -> None:
        self.context = context
        self.close_after = close_after  # close each connection after this many answers
        self.connections = 0
        self.answered = 0
        self.resumed = 0
        self.delay = 0.0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> StreamServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.session_reused:
            self.resumed += 1
        served = 0
        try:
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                query = DNSRecord.parse(await reader.readexactly(size))
                if self.delay:
                    await asyncio.sleep(self.delay)
                reply = query.reply()
                label = str(query.q.qname).split(".")[0]
                number = int(label[1:]) % 250 if label[1:].isdigit() else 1
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(f"192.0.2.{number}"), ttl=60))
                data = bytes(reply.pack())
                writer.write(struct.pack("!H", len(data)) + data)
                self.answered += 1
                served += 1
                if self.close_after and served >= self.close_after:
                    await writer.drain()
                    break  # the server ends the connection mid-burst (RFC 7766 6.2.3)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def query(name: str) -> Query:
    return Query(Request(bytes(DNSRecord.question(name).pack())))


async def ask(transport: StreamTransport, name: str, timeout: float = 5.0) -> str:
    answer = await transport.exchange(query(name), timeout)
    return str(DNSRecord.parse(answer.wire).rr[0].rdata)


def test_pipelined_queries_share_a_persistent_tcp_connection() -> None:
    async def main() -> None:
        server = await StreamServer().start()
        server.delay = 0.01
        counters = Counters()
        transport = StreamTransport(
            Upstream("127.0.0.1", server.port, "tcp"), counters, connections=2
        )
        got = await asyncio.gather(*(ask(transport, f"q{i}.test") for i in range(50)))
        assert got == [f"192.0.2.{i}" for i in range(50)]
        assert server.connections <= 2  # pipelined on the pool, not one per query
        assert await ask(transport, "q7.test") == "192.0.2.7"
        assert server.connections <= 2 and counters.get("tcp_connections") == server.connections
        transport.close()
        await server.stop()

    run(main())


def test_connections_closed_mid_burst_lose_no_query_and_answer_none_twice() -> None:
    async def main() -> None:
        server = await StreamServer(close_after=3).start()
        counters = Counters()
        transport = StreamTransport(Upstream("127.0.0.1", server.port, "tcp"), counters)
        names = [f"q{i}.test" for i in range(60)]
        got = await asyncio.gather(*(ask(transport, n) for n in names))
        assert got == [f"192.0.2.{i}" for i in range(60)]  # every query answered, once each
        assert server.connections >= 20
        assert counters.get("resent") >= 1
        transport.close()
        await server.stop()

    run(main())


def test_the_upstream_restarted_during_a_burst() -> None:
    async def main() -> None:
        server = await StreamServer().start()
        port = server.port
        counters = Counters()
        transport = StreamTransport(Upstream("127.0.0.1", port, "tcp"), counters)
        assert await ask(transport, "q1.test") == "192.0.2.1"
        server.delay = 0.2
        burst = [asyncio.ensure_future(ask(transport, f"q{i}.test")) for i in range(20)]
        await asyncio.sleep(0.05)
        await server.stop()  # closes the listener; the served connection ends below
        for connection in list(transport._connections):
            connection.writer.transport.abort()
        restarted = StreamServer()
        restarted.server = await asyncio.start_server(restarted._serve, "127.0.0.1", port)
        got = await asyncio.gather(*burst)
        assert got == [f"192.0.2.{i}" for i in range(20)]
        assert counters.get("resent") >= 1
        transport.close()
        await restarted.stop()

    run(main())


def test_dot_verifies_the_certificate_and_resumes_sessions(ca: trustme.CA, tmp_path: Path) -> None:
    async def main() -> None:
        server = await StreamServer(server_context(ca, "dns.test")).start()
        counters = Counters()
        upstream = Upstream(
            "127.0.0.1", server.port, "tls", server_name="dns.test", ca_file=ca_file(ca, tmp_path)
        )
        transport = StreamTransport(upstream, counters, idle_timeout=0.2)
        assert await ask(transport, "q5.test") == "192.0.2.5"
        await asyncio.sleep(0.5)  # the idle connection is closed ...
        assert counters.get("idle_closed") == 1
        assert await ask(transport, "q6.test") == "192.0.2.6"  # ... and a new one resumes
        assert counters.get("tls_connections") == 2
        assert counters.get("tls_resumed") == 1 and server.resumed == 1
        transport.close()
        await server.stop()

    run(main())


@pytest.mark.parametrize("problem", ["wrong_name", "unknown_ca"])
def test_dot_with_a_bad_certificate_fails_and_counts(
    ca: trustme.CA, tmp_path: Path, problem: str
) -> None:
    async def main() -> None:
        signer = trustme.CA() if problem == "unknown_ca" else ca
        server = await StreamServer(server_context(signer, "other.test")).start()
        name = "dns.test" if problem == "wrong_name" else "other.test"
        upstream = Upstream(
            "127.0.0.1", server.port, "tls", server_name=name, ca_file=ca_file(ca, tmp_path)
        )
        counters = Counters()
        group = UpstreamGroup(
            "g", [StreamTransport(upstream, counters)], counters, timeout=2, deadline=3
        )
        from olm.dns.upstream import UpstreamFailure

        with pytest.raises(UpstreamFailure):
            await group.resolve(Request(bytes(DNSRecord.question("q1.test").pack())))
        assert counters.get("tls_verify_failed") == 1
        assert server.answered == 0  # nothing was sent: not in plaintext, not at all
        group.close()
        await server.stop()

    run(main())


def test_a_host_name_is_found_through_the_bootstrap_resolver_and_cached() -> None:
    """tls/tcp://dns.example: its address from a plain-DNS bootstrap resolver, kept for its TTL."""

    async def main() -> None:
        server = await StreamServer().start()
        resolver, resolver_upstream = await start_fake(answers_with("127.0.0.1"))
        counters = Counters()
        bootstrap = Bootstrap([resolver_upstream], counters.child("bootstrap"))
        upstream = Upstream("dns.example", server.port, "tcp")
        transport = StreamTransport(upstream, counters, bootstrap=bootstrap, idle_timeout=0.05)
        assert await ask(transport, "n7.example") == "192.0.2.7"
        await asyncio.sleep(0.2)  # the idle connection closes: the next one needs the address
        assert await ask(transport, "n8.example") == "192.0.2.8"
        assert counters.get("tcp_connections") == 2
        # Asked once (A and AAAA; the fake answers A only), then from the cache (TTL 60).
        assert resolver.asked("dns.example") == 2
        assert counters.get("bootstrap.lookups") == 1 and counters.get("bootstrap.cached") == 1
        transport.close()
        bootstrap.close()
        await server.stop()

    run(main())


def test_a_name_the_bootstrap_resolver_cannot_find_is_a_failed_try() -> None:
    async def main() -> None:
        _, resolver_upstream = await start_fake(silent)
        counters = Counters()
        bootstrap = Bootstrap([resolver_upstream], counters.child("bootstrap"), timeout=0.1)
        transport = StreamTransport(
            Upstream("dns.example", 853, "tls"), counters, bootstrap=bootstrap
        )
        with pytest.raises(ConnectionError, match=r"no address for dns\.example"):
            await transport.exchange(query("www.example"), 2.0)
        assert counters.get("bootstrap.failed") == 1
        transport.close()
        bootstrap.close()

    run(main())
