"""DoH and DoQ upstream transports against servers started on 127.0.0.1 by the tests.

DoH: unbound (https-port) answering a local zone; a TLS HTTP/1.1 server from http.server for
what unbound does not do (HTTP errors, wrong content types, slow answers, the request's shape);
an HTTP/2 server built on h2 for the HTTP/2 cases unbound cannot be made to show (a small stream
limit, refused and reset streams, GOAWAY or a dropped connection mid-burst, flow control, what
a timeout and an idle connection send).
DoQ: an aioquic server answering each stream from a small zone. Certificates come from a test CA
(trustme); the server certificates name ``dns.test`` only, so a client must verify that name
while it connects to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import SessionTicket
from dnslib import QTYPE, RR, TXT, A, DNSRecord
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.settings import SettingCodes

from netstack.counters import Counters
from olm.dns.answer import Answer
from olm.dns.request import Request
from olm.dns.upstream.address import Upstream
from olm.dns.upstream.base import Query, UpstreamFailure
from olm.dns.upstream.doh import DohError, DohTransport
from olm.dns.upstream.doq import DoqError, DoqStreamError, DoqTransport
from olm.dns.upstream.group import UpstreamGroup

from netns import Host, free_port, require_tool
from olmproc import OlmProcess, counters_from
from tlsutil import ServerFiles, TestCA
from unboundproc import Unbound

SERVER_NAME = "dns.test"
WWW = "www.example.test"
WWW_ADDRESS = "192.0.2.10"
MANY = 12  # names n1..n12.example.test, answered with 192.0.2.1..12


# -- helpers ------------------------------------------------------------------------------


def make_query(name: str = WWW, qtype: str = "A") -> Query:
    record = DNSRecord.question(name, qtype)
    record.header.id = 0x1234
    return Query(Request(bytes(record.pack())))


def addresses(answer: Answer) -> list[str]:
    return [str(rr.rdata) for rr in DNSRecord.parse(answer.wire).rr if rr.rtype == QTYPE.A]


def zone_reply(query: DNSRecord) -> DNSRecord:
    """The test zone: www and n1..n12 under example.test; NXDOMAIN for anything else."""
    reply = query.reply()
    name = str(query.q.qname).lower().rstrip(".")
    if name == WWW:
        reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(WWW_ADDRESS), ttl=60))
    elif name.startswith("n") and name.endswith(".example.test") and name[1:-13].isdigit():
        rdata = A(f"192.0.2.{int(name[1:-13])}")
        reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=rdata, ttl=60))
    else:
        reply.header.rcode = 3
    return reply


def doh_upstream(port: int, ca: TestCA, **kwargs: Any) -> Upstream:
    kwargs.setdefault("server_name", SERVER_NAME)
    return Upstream("127.0.0.1", port, "https", "/dns-query", ca_file=str(ca.ca_file), **kwargs)


def doq_upstream(port: int, ca: TestCA, **kwargs: Any) -> Upstream:
    kwargs.setdefault("server_name", SERVER_NAME)
    return Upstream("127.0.0.1", port, "quic", ca_file=str(ca.ca_file), **kwargs)


# -- certificates -------------------------------------------------------------------------


@dataclass
class Tls:
    ca: TestCA
    other_ca: TestCA  # trusted by nobody: its certificates must be refused
    named: ServerFiles  # for dns.test only
    both: ServerFiles  # for dns.test and 127.0.0.1


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    ca = TestCA.create(tmp_path)
    return Tls(
        ca,
        TestCA.create(tmp_path, "other"),
        ca.server(SERVER_NAME),
        ca.server(SERVER_NAME, "127.0.0.1"),
    )


# -- unbound serving DoH --------------------------------------------------------------------


#: The zone for the DoH tests: www and n1..n12 under example.test (as ``zone_reply``).
DOH_ZONE = [
    (f"{WWW}.", "A", WWW_ADDRESS),
    *((f"n{i}.example.test.", "A", f"192.0.2.{i}") for i in range(1, MANY + 1)),
]


@pytest.fixture
def unbound(host: Host, tmp_path: Path, tls: Tls) -> int:
    """Unbound answering DoH on 127.0.0.1 with the dns.test certificate; returns its port."""
    port = free_port()
    Unbound(host, tmp_path, tls.named, https=port, zone=DOH_ZONE)
    return port


# -- a TLS HTTP/1.1 server for what unbound does not do -----------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    message: bytes


class HttpDoh(ThreadingHTTPServer):
    """Answers DoH requests over HTTP/1.1 as ``mode`` says; records what it was sent."""

    daemon_threads = True
    mode = "answer"  # answer, status500, text, wrong_id, slow

    def __init__(self, files: ServerFiles) -> None:
        super().__init__(("127.0.0.1", 0), _HttpDohHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(files.cert, files.key)
        context.set_alpn_protocols(["http/1.1"])  # no h2: the client falls back
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.seen: list[Seen] = []
        self.port = int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (the timeout test) is no error here


class _HttpDohHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HttpDoh

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers.get("content-length", "0"))))

    def do_GET(self) -> None:
        (dns,) = parse_qs(urlsplit(self.path).query)["dns"]
        self._answer(base64.urlsafe_b64decode(dns + "=" * (-len(dns) % 4)))

    def _answer(self, message: bytes) -> None:
        server = self.server
        headers = {k.lower(): v for k, v in self.headers.items()}
        server.seen.append(Seen(self.command, self.path, headers, message))
        mode = server.mode
        if mode == "status500":
            self._send(500, "text/plain", b"")
            return
        reply = zone_reply(DNSRecord.parse(message))
        if mode == "wrong_id":
            reply.header.id = 0x4242
        if mode == "slow":
            time.sleep(1.0)
        content_type = "text/html" if mode == "text" else "application/dns-message"
        self._send(200, content_type, bytes(reply.pack()))

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("set-cookie", "track=1; Path=/")  # a client must not send it back
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_doh(tls: Tls) -> Iterator[HttpDoh]:
    server = HttpDoh(tls.both)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- an HTTP/2 server (h2) for what unbound does not do -----------------------------------


@dataclass
class H2Doh:
    """A DoH server over HTTP/2 (h2 on asyncio, ALPN h2) answering from the test zone.

    ``max_streams`` is its SETTINGS_MAX_CONCURRENT_STREAMS: a stream over it is refused
    (REFUSED_STREAM, RFC 9113 section 5.1.2), and so are the first ``refuse_first`` streams of
    the first connection. ``window`` is its SETTINGS_INITIAL_WINDOW_SIZE (the request bodies it
    lets in at once). ``delay`` holds each answer that long. With ``end_after``, the first
    connection ends at the request after that many answers: ``end`` ``goaway`` (GOAWAY naming
    the last stream answered, then close) or ``drop`` (the connection aborted, no GOAWAY). Names:
    ``hold.example.test`` is never answered, ``reset.example.test`` gets its stream reset
    (INTERNAL_ERROR), ``big.example.test`` gets an answer of about 8 KB.
    """

    files: ServerFiles
    max_streams: int = 100
    window: int = 65535
    delay: float = 0.0
    refuse_first: int = 0
    end_after: int | None = None
    end: str = "goaway"
    port: int = 0
    connections: int = 0
    #: (connection, stream, name) of every answer sent
    answered: list[tuple[int, int, str]] = field(default_factory=list)
    #: the request headers of each stream, by (connection, stream)
    requests: dict[tuple[int, int], dict[bytes, bytes]] = field(default_factory=dict)
    #: DATA frames each request body came in, by (connection, stream)
    data_frames: dict[tuple[int, int], int] = field(default_factory=dict)
    refused: int = 0
    peak: int = 0  # the most streams it had open at once
    resets: list[tuple[int, int, int]] = field(default_factory=list)  # RST_STREAMs received
    goaways: list[int] = field(default_factory=list)  # error codes of GOAWAYs received
    protocol_errors: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> int:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.files.cert, self.files.key)
        context.set_alpn_protocols(["h2"])
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def _protocol(self) -> _H2DohProtocol:
        self.connections += 1
        return _H2DohProtocol(self, self.connections)

    def names(self) -> list[str]:
        return sorted(name for _, _, name in self.answered)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


def big_reply(query: DNSRecord) -> DNSRecord:
    reply = query.reply()
    for i in range(32):
        reply.add_answer(RR(query.q.qname, QTYPE.TXT, rdata=TXT(f"{i:03d}" + "x" * 240), ttl=60))
    return reply


class _H2DohProtocol(asyncio.Protocol):
    def __init__(self, server: H2Doh, number: int) -> None:
        self.server = server
        self.number = number
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.open: set[int] = set()
        self.bodies: dict[int, bytearray] = {}
        self.unsent: dict[int, bytes] = {}
        self.answers = 0
        self.last_answered = 0
        self.ended = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.h2.initiate_connection()
        self.h2.update_settings(
            {
                SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: self.server.window,
            }
        )
        self._write()

    def _write(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.ended:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return
        server = self.server
        try:
            events = self.h2.receive_data(data)
        except H2ProtocolError:
            server.protocol_errors += 1
            self._write()
            self.ended = True
            assert self.transport is not None
            self.transport.close()
            return
        for event in events:
            key = (self.number, getattr(event, "stream_id", 0))
            if isinstance(event, RequestReceived):
                refuse = self.number == 1 and server.refused < server.refuse_first
                if refuse or len(self.open) >= server.max_streams:
                    server.refused += 1
                    self.h2.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
                    continue
                self.open.add(event.stream_id)
                server.peak = max(server.peak, len(self.open))
                server.requests[key] = dict(event.headers)  # type: ignore[arg-type]
                self.bodies[event.stream_id] = bytearray()
            elif isinstance(event, DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id in self.bodies:
                    self.bodies[event.stream_id] += event.data
                    server.data_frames[key] = server.data_frames.get(key, 0) + 1
            elif isinstance(event, StreamEnded) and event.stream_id in self.open:
                self._request(event.stream_id)
            elif isinstance(event, StreamReset):
                server.resets.append((self.number, event.stream_id, int(event.error_code)))
                self.open.discard(event.stream_id)
                self.unsent.pop(event.stream_id, None)
            elif isinstance(event, ConnectionTerminated):
                server.goaways.append(int(event.error_code or 0))
            elif isinstance(event, WindowUpdated):
                self._pump()
            if self.ended:
                return
        self._write()

    def _request(self, stream_id: int) -> None:
        headers = self.server.requests[(self.number, stream_id)]
        if headers[b":method"] == b"GET":
            (dns,) = parse_qs(urlsplit(headers[b":path"].decode()).query)["dns"]
            message = base64.urlsafe_b64decode(dns + "=" * (-len(dns) % 4))
        else:
            message = bytes(self.bodies.pop(stream_id))
        query = DNSRecord.parse(message)
        if self.server.delay:
            loop = asyncio.get_running_loop()
            loop.call_later(self.server.delay, self._answer_later, stream_id, query)
        else:
            self._answer(stream_id, query)

    def _answer_later(self, stream_id: int, query: DNSRecord) -> None:
        if not self.ended:
            self._answer(stream_id, query)
            self._write()

    def _answer(self, stream_id: int, query: DNSRecord) -> None:
        server = self.server
        assert self.transport is not None
        if stream_id not in self.open:
            return  # reset by the client meanwhile
        if self.number == 1 and server.end_after is not None and self.answers >= server.end_after:
            if server.end == "goaway":
                self.h2.close_connection(last_stream_id=self.last_answered)
                self._write()
                self.transport.close()
            else:  # the answers given go out first
                self._write()
                asyncio.get_running_loop().call_later(0.05, self.transport.abort)
            self.ended = True
            return
        name = str(query.q.qname).lower().rstrip(".")
        if name == "hold.example.test":
            return
        reply = big_reply(query) if name == "big.example.test" else zone_reply(query)
        body = bytes(reply.pack())
        headers = [
            (b":status", b"200"),
            (b"content-type", b"application/dns-message"),
            (b"content-length", str(len(body)).encode()),
        ]
        try:
            if name == "reset.example.test":
                self.open.discard(stream_id)
                self.h2.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
                return
            self.h2.send_headers(stream_id, headers)
        except H2ProtocolError:  # reset by the client in the same read as the request
            self.open.discard(stream_id)
            return
        self.unsent[stream_id] = body
        self.answers += 1
        self.last_answered = stream_id
        server.answered.append((self.number, stream_id, name))
        self._pump()

    def _pump(self) -> None:
        """Send the answers' bodies as flow control allows (RFC 9113 section 6.9)."""
        for stream_id, body in list(self.unsent.items()):
            try:
                while body:
                    window = self.h2.local_flow_control_window(stream_id)
                    room = min(window, self.h2.max_outbound_frame_size)
                    if room <= 0:
                        break
                    chunk, body = body[:room], body[room:]
                    self.h2.send_data(stream_id, chunk, end_stream=not body)
            except H2ProtocolError:  # reset by the client meanwhile
                body = b""
            if body:
                self.unsent[stream_id] = body
            else:
                del self.unsent[stream_id]
                self.open.discard(stream_id)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True


async def h2_pair(tls: Tls, **options: Any) -> tuple[H2Doh, int]:
    """Start an H2Doh server with ``options``; return it and its port."""
    server = H2Doh(tls.named, **options)
    return server, await server.start()


# -- an aioquic DoQ server ----------------------------------------------------------------


async def doq_pair(
    tls: Tls, mode: str = "answer", **options: Any
) -> tuple[DoqServer, DoqTransport, Counters]:
    """Start a DoQ server (``mode``) and make a transport to it, with counters of its own."""
    server = DoqServer(tls.named, mode)
    port = await server.start()
    counters = Counters()
    return server, DoqTransport(doq_upstream(port, tls.ca), counters, **options), counters


@dataclass
class DoqServer:
    """A DoQ server (RFC 9250) on 127.0.0.1 answering from the test zone.

    ``mode``: ``answer``; ``close_after_answer`` (closes each connection after its first
    answer); ``drop_first`` (closes the first connection on its first query, unanswered);
    ``hold`` (never answers). The name ``reset.example.test`` gets its stream reset. Session
    tickets are issued, so a client may resume; ``resumed`` tells, per connection, if it did.
    """

    files: ServerFiles
    mode: str = "answer"
    connections: int = 0
    #: (connection number, stream id, ID in the query, whether the length prefix was right)
    queries: list[tuple[int, int, int, bool]] = field(default_factory=list)
    port: int = 0
    protocols: list[_DoqServerProtocol] = field(default_factory=list)
    tickets: dict[bytes, SessionTicket] = field(default_factory=dict)
    _server: QuicServer | None = None

    async def start(self) -> int:
        configuration = QuicConfiguration(is_client=False, alpn_protocols=["doq"])
        configuration.load_cert_chain(self.files.cert, self.files.key)
        self.port = free_port()
        self._server = await serve(
            "127.0.0.1",
            self.port,
            configuration=configuration,
            create_protocol=self._protocol,
            session_ticket_fetcher=self.tickets.pop,
            session_ticket_handler=self._keep_ticket,
        )
        return self.port

    def _keep_ticket(self, ticket: SessionTicket) -> None:
        self.tickets[ticket.ticket] = ticket

    def _protocol(self, *args: Any, **kwargs: Any) -> _DoqServerProtocol:
        self.connections += 1
        protocol = _DoqServerProtocol(self, self.connections, *args, **kwargs)
        self.protocols.append(protocol)
        return protocol

    @property
    def resumed(self) -> list[bool]:
        return [bool(p._quic.tls.session_resumed) for p in self.protocols]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


class _DoqServerProtocol(QuicConnectionProtocol):
    def __init__(self, server: DoqServer, number: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server = server
        self.number = number
        self.buffers: dict[int, bytearray] = {}

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if not isinstance(event, events.StreamDataReceived):
            return
        buffer = self.buffers.setdefault(event.stream_id, bytearray())
        buffer += event.data
        if not event.end_stream:
            return  # RFC 9250 section 4.2: the query ends with the stream's FIN
        data = bytes(self.buffers.pop(event.stream_id))
        (length,) = struct.unpack_from("!H", data)
        query = DNSRecord.parse(data[2:])
        server = self.server
        server.queries.append(
            (self.number, event.stream_id, query.header.id, length == len(data) - 2)
        )
        if server.mode == "hold":
            return
        if server.mode == "drop_first" and self.number == 1:
            self.close()
            return
        if str(query.q.qname).rstrip(".") == "reset.example.test":
            self._quic.reset_stream(event.stream_id, 0x1)  # DOQ_INTERNAL_ERROR
            self.transmit()
            return
        reply = bytes(zone_reply(query).pack())
        self._quic.send_stream_data(
            event.stream_id, struct.pack("!H", len(reply)) + reply, end_stream=True
        )
        self.transmit()
        if server.mode == "close_after_answer":
            self.close()


# -- DoH ----------------------------------------------------------------------------------


def test_doh_post_over_http2_to_an_address_with_the_server_name_apart(
    unbound: int, tls: Tls
) -> None:
    # The certificate names dns.test only; the client connects to 127.0.0.1 and checks dns.test.
    async def scenario() -> None:
        counters = Counters()
        transport = DohTransport(doh_upstream(unbound, tls.ca), counters)
        answer = await transport.exchange(make_query(), 2.0)
        await transport.aclose()
        assert addresses(answer) == [WWW_ADDRESS]
        assert counters.get("doh.requests") == counters.get("doh.responses") == 1
        assert counters.get("doh.http2") == 1
        assert counters.get("doh.http1") == 0

    asyncio.run(scenario())


def test_doh_get_over_http2(unbound: int, tls: Tls) -> None:
    async def scenario() -> None:
        counters = Counters()
        transport = DohTransport(doh_upstream(unbound, tls.ca, method="GET"), counters)
        answer = await transport.exchange(make_query(), 2.0)
        await transport.aclose()
        assert addresses(answer) == [WWW_ADDRESS]
        assert counters.get("doh.http2") == counters.get("doh.responses") == 1

    asyncio.run(scenario())


def test_doh_concurrent_queries_share_one_http2_connection(unbound: int, tls: Tls) -> None:
    async def scenario() -> None:
        counters = Counters()
        transport = DohTransport(doh_upstream(unbound, tls.ca), counters)
        names = [f"n{i}.example.test" for i in range(1, MANY + 1)]
        answers = await asyncio.gather(*(transport.exchange(make_query(n), 3.0) for n in names))
        await transport.exchange(make_query(), 2.0)  # and the connection is kept for later
        await transport.aclose()
        assert [addresses(a) for a in answers] == [[f"192.0.2.{i}"] for i in range(1, MANY + 1)]
        assert counters.get("doh.connections") == 1
        assert counters.get("doh.http2") == MANY + 1

    asyncio.run(scenario())


def test_doh_certificate_for_another_name_fails_verification(unbound: int, tls: Tls) -> None:
    # No server name: the client checks 127.0.0.1, which the certificate does not name.
    async def scenario() -> None:
        counters = Counters()
        transport = DohTransport(doh_upstream(unbound, tls.ca, server_name=None), counters)
        with pytest.raises(ssl.SSLCertVerificationError):
            await transport.exchange(make_query(), 2.0)
        await transport.aclose()
        assert counters.get("tls_verify_failed") == 1
        assert counters.get("doh.responses") == 0

    asyncio.run(scenario())


def test_doh_certificate_from_an_untrusted_ca_fails_verification(unbound: int, tls: Tls) -> None:
    async def scenario() -> None:
        counters = Counters()
        transport = DohTransport(doh_upstream(unbound, tls.other_ca), counters)
        with pytest.raises(ssl.SSLCertVerificationError):
            await transport.exchange(make_query(), 2.0)
        await transport.aclose()
        assert counters.get("tls_verify_failed") == 1
        assert counters.get("doh.responses") == 0

    asyncio.run(scenario())


def test_doh_host_name_found_through_bootstrap(unbound: int, tls: Tls) -> None:
    # The upstream is written as a name: its address comes from the bootstrap, and the
    # certificate is checked against the name.
    class Bootstrap:
        def __init__(self) -> None:
            self.asked: list[str] = []

        async def lookup(self, host: str) -> list[str]:
            self.asked.append(host)
            return ["127.0.0.1"]

    async def scenario() -> None:
        counters = Counters()
        bootstrap = Bootstrap()
        upstream = Upstream(
            SERVER_NAME, unbound, "https", "/dns-query", ca_file=str(tls.ca.ca_file)
        )
        transport = DohTransport(upstream, counters, bootstrap)  # type: ignore[arg-type]
        answer = await transport.exchange(make_query(), 2.0)
        await transport.aclose()
        assert addresses(answer) == [WWW_ADDRESS]
        assert bootstrap.asked == [SERVER_NAME]

    asyncio.run(scenario())


def test_doh_bootstrap_failure_is_an_oserror(tls: Tls) -> None:
    class Bootstrap:
        async def lookup(self, host: str) -> list[str]:
            raise UpstreamFailure("bootstrap", f"no address for {host}")

    async def scenario() -> None:
        counters = Counters()
        upstream = Upstream(SERVER_NAME, 443, "https", "/dns-query", ca_file=str(tls.ca.ca_file))
        transport = DohTransport(upstream, counters, Bootstrap())  # type: ignore[arg-type]
        with pytest.raises(ConnectionError, match=r"no address for dns\.test"):
            await transport.exchange(make_query(), 2.0)
        await transport.aclose()

    asyncio.run(scenario())


def test_host_name_without_bootstrap_fails_the_try() -> None:
    async def scenario() -> None:
        doh = DohTransport(Upstream(SERVER_NAME, 443, "https", "/dns-query"), Counters())
        doq = DoqTransport(Upstream(SERVER_NAME, 853, "quic"), Counters())
        for transport in (doh, doq):
            with pytest.raises(ConnectionError, match="needs bootstrap resolvers"):
                await transport.exchange(make_query(), 1.0)
        await doh.aclose()
        doq.close()

    asyncio.run(scenario())


def test_doh_request_shape_post_and_get(http_doh: HttpDoh, tls: Tls) -> None:
    # Over HTTP/1.1 (the server offers no h2): what exactly the server receives, twice per
    # method on one transport (the second request must not return the server's cookie).
    async def scenario() -> None:
        counters = Counters()
        for method in ("POST", "GET"):
            upstream = doh_upstream(http_doh.port, tls.ca, method=method)
            transport = DohTransport(upstream, counters)
            for _ in range(2):
                answer = await transport.exchange(make_query("WWW.Example.TEST"), 2.0)
                assert addresses(answer) == [WWW_ADDRESS]
            await transport.aclose()
        assert counters.get("doh.http1") == 4

    asyncio.run(scenario())
    assert [seen.method for seen in http_doh.seen] == ["POST", "POST", "GET", "GET"]
    for seen in http_doh.seen:
        record = DNSRecord.parse(seen.message)
        assert record.header.id == 0  # RFC 8484 section 4.1
        assert str(record.q.qname) == "WWW.Example.TEST."
        assert seen.headers["host"] == f"{SERVER_NAME}:{http_doh.port}"
        assert seen.headers["accept"] == "application/dns-message"
        assert "user-agent" not in seen.headers
        assert "cookie" not in seen.headers
    post, _, get, _ = http_doh.seen
    assert post.path == "/dns-query"
    assert post.headers["content-type"] == "application/dns-message"
    dns = get.path.removeprefix("/dns-query?dns=")
    assert "=" not in dns  # base64url without padding (RFC 8484 section 4.1.1)
    assert base64.urlsafe_b64decode(dns + "=" * (-len(dns) % 4)) == post.message


def test_doh_http1_keeps_its_connection_and_replaces_one_given_up_on(
    http_doh: HttpDoh, tls: Tls
) -> None:
    # HTTP/1.1 (the server offers no h2): one connection for requests one after another; a
    # request that times out cannot be abandoned on its connection, which is closed.
    async def scenario() -> None:
        counters = Counters()
        transport = DohTransport(doh_upstream(http_doh.port, tls.ca), counters)
        for _ in range(3):
            await transport.exchange(make_query(), 2.0)
        assert counters.get("doh.connections") == 1
        http_doh.mode = "slow"
        with pytest.raises(TimeoutError):
            await transport.exchange(make_query(), 0.3)
        http_doh.mode = "answer"
        answer = await transport.exchange(make_query(), 2.0)
        await transport.aclose()
        assert addresses(answer) == [WWW_ADDRESS]
        assert counters.get("doh.cancelled") == 1
        assert counters.get("doh.connections") == 2
        assert counters.get("doh.http1") == 4
        assert counters.get("tls_resumed") == 1  # the second resumed the first's TLS session

    asyncio.run(scenario())


def test_doh_trusts_ssl_cert_file_without_ca_file(
    unbound: int, tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca.ca_file))

    async def scenario() -> None:
        upstream = Upstream("127.0.0.1", unbound, "https", "/dns-query", server_name=SERVER_NAME)
        transport = DohTransport(upstream, Counters())
        answer = await transport.exchange(make_query(), 2.0)
        await transport.aclose()
        assert addresses(answer) == [WWW_ADDRESS]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("mode", "counter"),
    [
        ("status500", "doh.http_error.500"),
        ("text", "doh.bad_content_type"),
        ("wrong_id", "doh.mismatch"),
    ],
)
def test_doh_unusable_response_is_counted_and_raised(
    http_doh: HttpDoh, tls: Tls, mode: str, counter: str
) -> None:
    # Against the certificate's IP address this time: no server name needed.
    http_doh.mode = mode

    async def scenario() -> None:
        counters = Counters()
        transport = DohTransport(doh_upstream(http_doh.port, tls.ca, server_name=None), counters)
        with pytest.raises(DohError):
            await transport.exchange(make_query(), 2.0)
        await transport.aclose()
        assert counters.get(counter) == 1
        assert counters.get("doh.responses") == 0

    asyncio.run(scenario())


def test_doh_timeout(http_doh: HttpDoh, tls: Tls) -> None:
    http_doh.mode = "slow"

    async def scenario() -> None:
        transport = DohTransport(doh_upstream(http_doh.port, tls.ca), Counters())
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await transport.exchange(make_query(), 0.3)
        assert time.monotonic() - started < 0.9
        await transport.aclose()

    asyncio.run(scenario())


def test_doh_failure_lets_the_group_fail_over(unbound: int, http_doh: HttpDoh, tls: Tls) -> None:
    http_doh.mode = "status500"

    async def scenario() -> None:
        counters = Counters()
        failing = DohTransport(doh_upstream(http_doh.port, tls.ca), counters.child("upstream"))
        working = DohTransport(doh_upstream(unbound, tls.ca), counters.child("upstream"))
        group = UpstreamGroup("doh", [failing, working], counters.child("group"), timeout=2.0)
        record = DNSRecord.question(WWW, "A")
        answer = await group.resolve(Request(bytes(record.pack())))
        await failing.aclose()
        await working.aclose()
        assert addresses(answer) == [WWW_ADDRESS]
        assert counters.get("upstream.doh.http_error.500") == 1
        assert counters.get("group.error") == 1

    asyncio.run(scenario())


def test_doh_through_socks5(unbound: int, tls: Tls) -> None:
    # A minimal SOCKS5 server (RFC 1928, CONNECT, no authentication) started by the test.
    targets: list[tuple[str, int]] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def socks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, nmethods = await reader.readexactly(2)
        await reader.readexactly(nmethods)
        writer.write(b"\x05\x00")
        _, command, _, atyp = await reader.readexactly(4)
        assert command == 1 and atyp == 1  # CONNECT to an IPv4 address
        host = ".".join(str(b) for b in await reader.readexactly(4))
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        targets.append((host, port))
        up_reader, up_writer = await asyncio.open_connection(host, port)
        writer.write(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def scenario() -> None:
        proxy = await asyncio.start_server(socks, "127.0.0.1", 0)
        proxy_port = proxy.sockets[0].getsockname()[1]
        counters = Counters()
        upstream = doh_upstream(unbound, tls.ca, socks5=f"socks5://127.0.0.1:{proxy_port}")
        transport = DohTransport(upstream, counters)
        answer = await transport.exchange(make_query(), 2.0)
        await transport.aclose()
        proxy.close()
        await proxy.wait_closed()
        assert addresses(answer) == [WWW_ADDRESS]
        assert targets == [("127.0.0.1", unbound)]
        assert counters.get("doh.http2") == 1

    asyncio.run(scenario())


# -- DoH over HTTP/2 against the h2 server ------------------------------------------------


def test_doh_http2_request_shape(tls: Tls) -> None:
    # What exactly the server gets over HTTP/2, POST then GET, on one connection each.
    async def scenario() -> None:
        server, port = await h2_pair(tls)
        counters = Counters()
        for method in ("POST", "GET"):
            transport = DohTransport(doh_upstream(port, tls.ca, method=method), counters)
            answer = await transport.exchange(make_query("WWW.Example.TEST"), 2.0)
            assert addresses(answer) == [WWW_ADDRESS]
            await transport.aclose()
        server.close()
        assert counters.get("doh.http2") == 2
        assert counters.get("doh.connections") == server.connections == 2
        post, get = server.requests[(1, 1)], server.requests[(2, 1)]
        for headers in (post, get):
            assert headers[b":authority"] == f"{SERVER_NAME}:{port}".encode()
            assert headers[b":scheme"] == b"https"
            assert headers[b"accept"] == b"application/dns-message"
            assert b"user-agent" not in headers and b"cookie" not in headers
        assert post[b":method"] == b"POST" and post[b":path"] == b"/dns-query"
        assert post[b"content-type"] == b"application/dns-message"
        assert get[b":method"] == b"GET"
        dns = get[b":path"].removeprefix(b"/dns-query?dns=")
        assert b"=" not in dns  # base64url without padding (RFC 8484 section 4.1.1)
        assert (
            DNSRecord.parse(base64.urlsafe_b64decode(dns + b"=" * (-len(dns) % 4))).header.id == 0
        )
        assert server.goaways == [0, 0]  # each connection closed with GOAWAY NO_ERROR

    asyncio.run(scenario())


def test_doh_more_concurrent_queries_than_the_server_takes_share_one_connection(
    tls: Tls,
) -> None:
    # The server takes 4 streams at once (SETTINGS_MAX_CONCURRENT_STREAMS) and answers each after
    # 50 ms. A cold burst may run ahead of the server's SETTINGS: the streams it refuses are
    # sent again. Once the SETTINGS are known, the queries over the limit wait for a stream.
    async def scenario() -> None:
        server, port = await h2_pair(tls, max_streams=4, delay=0.05)
        counters = Counters()
        transport = DohTransport(doh_upstream(port, tls.ca), counters)
        names = [f"n{i}.example.test" for i in range(1, 41)]
        cold = await asyncio.gather(*(transport.exchange(make_query(n), 5.0) for n in names))
        refused = server.refused
        warm = await asyncio.gather(*(transport.exchange(make_query(n), 5.0) for n in names))
        await transport.aclose()
        server.close()
        expected = [[f"192.0.2.{i}"] for i in range(1, 41)]
        assert [addresses(a) for a in cold] == [addresses(a) for a in warm] == expected
        assert counters.get("doh.connections") == server.connections == 1
        assert server.protocol_errors == 0  # never more streams than the SETTINGS allow
        assert server.peak == 4
        assert server.refused == refused == counters.get("doh.refused")  # none once known
        assert counters.get("doh.queued") >= 40 - 4
        assert server.names() == sorted(names * 2)  # each query answered once
        assert counters.get("doh.responses") == 80

    asyncio.run(scenario())


def test_doh_refused_streams_are_sent_again(tls: Tls) -> None:
    async def scenario() -> None:
        server, port = await h2_pair(tls, refuse_first=3)
        counters = Counters()
        transport = DohTransport(doh_upstream(port, tls.ca), counters)
        names = [f"n{i}.example.test" for i in range(1, 6)]
        answers = await asyncio.gather(*(transport.exchange(make_query(n), 3.0) for n in names))
        await transport.aclose()
        server.close()
        assert [addresses(a) for a in answers] == [[f"192.0.2.{i}"] for i in range(1, 6)]
        assert counters.get("doh.refused") == counters.get("doh.resent") == 3
        assert server.names() == sorted(names)
        assert counters.get("doh.connections") == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("end", ["goaway", "drop"])
def test_doh_connection_ending_mid_burst_answers_every_query_once(tls: Tls, end: str) -> None:
    # The first connection answers 4 queries of a burst of 12, then sends GOAWAY and closes (or
    # is dropped): the 8 not answered are sent again on a second connection.
    async def scenario() -> None:
        server, port = await h2_pair(tls, end_after=4, end=end)
        counters = Counters()
        transport = DohTransport(doh_upstream(port, tls.ca), counters)
        names = [f"n{i}.example.test" for i in range(1, MANY + 1)]
        answers = await asyncio.gather(*(transport.exchange(make_query(n), 3.0) for n in names))
        await transport.aclose()
        server.close()
        assert [addresses(a) for a in answers] == [[f"192.0.2.{i}"] for i in range(1, MANY + 1)]
        assert server.names() == sorted(names)  # never answered twice
        assert [c for c, _, _ in server.answered].count(1) == 4
        assert counters.get("doh.connections") == server.connections == 2
        assert counters.get("doh.resent") == MANY - 4
        assert counters.get("doh.responses") == MANY
        assert counters.get("doh.goaway") == (1 if end == "goaway" else 0)

    asyncio.run(scenario())


def test_doh_timeout_resets_its_stream_and_keeps_the_connection(tls: Tls) -> None:
    async def scenario() -> None:
        server, port = await h2_pair(tls)
        counters = Counters()
        transport = DohTransport(doh_upstream(port, tls.ca), counters)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await transport.exchange(make_query("hold.example.test"), 0.3)
        assert time.monotonic() - started < 0.9
        answer = await transport.exchange(make_query(), 2.0)
        await transport.aclose()
        server.close()
        assert addresses(answer) == [WWW_ADDRESS]
        assert server.resets == [(1, 1, 0x8)]  # RST_STREAM CANCEL (RFC 9113 section 7)
        assert counters.get("doh.cancelled") == 1
        assert counters.get("doh.connections") == server.connections == 1

    asyncio.run(scenario())


def test_doh_stream_reset_by_the_server_fails_that_query_only(tls: Tls) -> None:
    async def scenario() -> None:
        server, port = await h2_pair(tls)
        counters = Counters()
        transport = DohTransport(doh_upstream(port, tls.ca), counters)
        with pytest.raises(DohError, match="stream reset"):
            await transport.exchange(make_query("reset.example.test"), 2.0)
        answer = await transport.exchange(make_query(), 2.0)
        await transport.aclose()
        server.close()
        assert addresses(answer) == [WWW_ADDRESS]
        assert counters.get("doh.stream_errors") == 1
        assert counters.get("doh.connections") == 1

    asyncio.run(scenario())


def test_doh_flow_control_both_ways(tls: Tls) -> None:
    # Answers of about 8 KB, 24 of them: more than the connection's first window of 65535
    # bytes, so only acknowledged data lets the later ones through. And the server lets 16 bytes
    # of a request body in at a time: the body goes out as its window opens.
    async def scenario() -> None:
        server, port = await h2_pair(tls, window=16)
        counters = Counters()
        transport = DohTransport(doh_upstream(port, tls.ca), counters)
        await transport.exchange(make_query(), 2.0)  # the server's SETTINGS are known now
        answers = await asyncio.gather(
            *(transport.exchange(make_query("big.example.test", "TXT"), 3.0) for _ in range(24))
        )
        await transport.aclose()
        server.close()
        assert all(len(a.wire) > 7000 for a in answers)
        assert counters.get("doh.connections") == 1
        assert counters.get("doh.responses") == 25
        later = [n for (_, stream), n in server.data_frames.items() if stream > 1]
        assert later and min(later) >= 3  # each body (about 40 bytes) in pieces of 16

    asyncio.run(scenario())


def test_doh_idle_connection_is_closed_with_goaway(tls: Tls) -> None:
    async def scenario() -> None:
        server, port = await h2_pair(tls)
        counters = Counters()
        transport = DohTransport(doh_upstream(port, tls.ca), counters, idle_timeout=0.2)
        await transport.exchange(make_query(), 2.0)
        await asyncio.sleep(0.5)
        assert counters.get("doh.idle_closed") == 1
        assert server.goaways == [0]  # NO_ERROR (RFC 9113 section 6.8)
        answer = await transport.exchange(make_query(), 2.0)
        await transport.aclose()
        server.close()
        assert addresses(answer) == [WWW_ADDRESS]
        assert counters.get("doh.connections") == server.connections == 2
        assert counters.get("tls_resumed") == 1  # the second resumed the first's TLS session

    asyncio.run(scenario())


# -- DoQ ----------------------------------------------------------------------------------


def test_doq_answers_with_id_0_and_a_length_prefix(tls: Tls) -> None:
    async def scenario() -> None:
        server, transport, counters = await doq_pair(tls)
        answer = await transport.exchange(make_query(), 2.0)
        transport.close()
        server.close()
        assert addresses(answer) == [WWW_ADDRESS]
        assert server.queries == [(1, 0, 0, True)]  # stream 0, ID 0, length right
        assert counters.get("doq.queries") == counters.get("doq.connections") == 1

    asyncio.run(scenario())


def test_doq_concurrent_queries_one_stream_each_on_one_connection(tls: Tls) -> None:
    async def scenario() -> None:
        server, transport, counters = await doq_pair(tls)
        names = [f"n{i}.example.test" for i in range(1, MANY + 1)]
        answers = await asyncio.gather(*(transport.exchange(make_query(n), 3.0) for n in names))
        transport.close()
        server.close()
        assert [addresses(a) for a in answers] == [[f"192.0.2.{i}"] for i in range(1, MANY + 1)]
        assert counters.get("doq.connections") == server.connections == 1
        streams = sorted(stream for _, stream, _, _ in server.queries)
        assert streams == [4 * i for i in range(MANY)]  # client-initiated bidirectional

    asyncio.run(scenario())


@pytest.mark.parametrize("case", ["other_name", "untrusted_ca"])
def test_doq_verification_failure(tls: Tls, case: str) -> None:
    async def scenario() -> None:
        server = DoqServer(tls.named)
        port = await server.start()
        counters = Counters()
        if case == "other_name":
            upstream = doq_upstream(port, tls.ca, server_name=None)  # checks 127.0.0.1
        else:
            upstream = doq_upstream(port, tls.other_ca)
        transport = DoqTransport(upstream, counters)
        with pytest.raises(ssl.SSLCertVerificationError):
            await transport.exchange(make_query(), 3.0)
        transport.close()
        server.close()
        assert counters.get("tls_verify_failed") == 1
        assert counters.get("doq.connections") == 0
        assert server.queries == []

    asyncio.run(scenario())


def test_doq_server_closing_between_queries_means_a_reconnect(tls: Tls) -> None:
    async def scenario() -> None:
        server, transport, counters = await doq_pair(tls, "close_after_answer")
        first = await transport.exchange(make_query(), 2.0)
        await asyncio.sleep(0.2)  # the close reaches the client
        second = await transport.exchange(make_query("n1.example.test"), 2.0)
        transport.close()
        server.close()
        assert addresses(first) == [WWW_ADDRESS]
        assert addresses(second) == ["192.0.2.1"]
        assert counters.get("doq.connections") == server.connections == 2
        assert counters.get("doq.reconnects") == 1
        assert counters.get("doq.retries") == 0  # the close was seen before the query
        assert server.resumed == [False, True]  # the reconnect resumed the TLS session

    asyncio.run(scenario())


def test_doq_query_whose_connection_dies_is_retried_once(tls: Tls) -> None:
    async def scenario() -> None:
        server, transport, counters = await doq_pair(tls, "drop_first")
        answer = await transport.exchange(make_query(), 3.0)
        transport.close()
        server.close()
        assert addresses(answer) == [WWW_ADDRESS]
        assert [number for number, _, _, _ in server.queries] == [1, 2]
        assert counters.get("doq.retries") == 1
        assert counters.get("doq.reconnects") == 1

    asyncio.run(scenario())


def test_doq_stream_reset_is_a_stream_error(tls: Tls) -> None:
    async def scenario() -> None:
        server, transport, counters = await doq_pair(tls)
        with pytest.raises(DoqStreamError, match="reset"):
            await transport.exchange(make_query("reset.example.test"), 2.0)
        answer = await transport.exchange(make_query(), 2.0)  # the connection lives on
        transport.close()
        server.close()
        assert addresses(answer) == [WWW_ADDRESS]
        assert counters.get("doq.stream_errors") == 1
        assert counters.get("doq.connections") == 1

    asyncio.run(scenario())


def test_doq_timeout_then_close_fails_waiting_queries(tls: Tls) -> None:
    async def scenario() -> None:
        server = DoqServer(tls.named, mode="hold")
        port = await server.start()
        transport = DoqTransport(doq_upstream(port, tls.ca), Counters())
        with pytest.raises(TimeoutError):
            await transport.exchange(make_query(), 0.3)
        waiting = asyncio.ensure_future(transport.exchange(make_query(), 5.0))
        await asyncio.sleep(0.1)
        transport.close()
        with pytest.raises(ConnectionError):
            await waiting
        server.close()
        assert len(server.queries) == 2

    asyncio.run(scenario())


def test_doq_idle_connection_is_closed(tls: Tls) -> None:
    async def scenario() -> None:
        server, transport, counters = await doq_pair(tls, idle_timeout=0.2)
        await transport.exchange(make_query(), 2.0)
        await asyncio.sleep(0.5)
        assert counters.get("doq.idle_closed") == 1
        answer = await transport.exchange(make_query(), 2.0)
        transport.close()
        server.close()
        assert addresses(answer) == [WWW_ADDRESS]
        assert counters.get("doq.connections") == 2
        assert counters.get("doq.reconnects") == 0  # a new connection, not a replacement

    asyncio.run(scenario())


def test_doq_mismatched_reply_is_refused(tls: Tls) -> None:
    # A reply for another question on the query's stream.
    async def scenario() -> None:
        server, transport, counters = await doq_pair(tls)
        query = make_query()
        other = make_query("n1.example.test")
        query.template = other.template  # asks n1 while expecting www
        with pytest.raises(DoqError):
            await transport.exchange(query, 2.0)
        transport.close()
        server.close()
        assert counters.get("doq.mismatch") == 1

    asyncio.run(scenario())


def test_doq_trusts_ssl_cert_file_without_ca_file(
    tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca.ca_file))

    async def scenario() -> None:
        server = DoqServer(tls.named)
        port = await server.start()
        upstream = Upstream("127.0.0.1", port, "quic", server_name=SERVER_NAME)
        transport = DoqTransport(upstream, Counters())
        answer = await transport.exchange(make_query(), 2.0)
        transport.close()
        server.close()
        assert addresses(answer) == [WWW_ADDRESS]

    asyncio.run(scenario())


def test_doq_refuses_socks5() -> None:
    upstream = Upstream("127.0.0.1", 853, "quic", socks5="socks5://127.0.0.1:1080")
    with pytest.raises(ValueError, match="SOCKS5 cannot carry DNS over QUIC"):
        DoqTransport(upstream, Counters())


def test_olm_serve_answers_dig_and_kdig_over_a_doq_upstream(
    host: Host, tls: Tls, tmp_path: Path
) -> None:
    """The whole path: dig and kdig -> olm serve (a process) -> DoQ -> the aioquic server."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = DoqServer(tls.named)
    try:
        port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        listen = free_port()
        config = tmp_path / "olm.toml"
        config.write_text(
            f'listen = ["127.0.0.1:{listen}"]\n'
            f'upstreams = [{{ url = "quic://127.0.0.1:{port}", server_name = "{SERVER_NAME}", '
            f'ca_file = "{tls.ca.ca_file}" }}]\n[cache]\nenabled = false\n'
        )
        olm = OlmProcess(host, ["serve", "--config", str(config), "--stats"])
        dig = host.run([require_tool("dig"), "+short", "-p", str(listen), "@127.0.0.1", WWW])
        assert dig.stdout.split() == [WWW_ADDRESS]
        kdig_argv = [require_tool("kdig"), "+tcp", "+short", "-p", str(listen), "@127.0.0.1"]
        kdig = host.run([*kdig_argv, "n3.example.test"])
        assert kdig.stdout.split() == ["192.0.2.3"]
        code, _, err = olm.stop()
        assert code == 0
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    # Both on one QUIC connection, each on its own stream, with ID 0 and a right length prefix.
    assert [(c, i, ok) for c, _, i, ok in server.queries] == [(1, 0, True), (1, 0, True)]
    assert len({stream for _, stream, _, _ in server.queries}) == 2
    counters = counters_from(err)
    assert counters["dns.upstream.doq.queries"] == 2, counters
