"""DNS over HTTPS to one upstream (RFC 8484): HTTP/2 with h2, HTTP/1.1 with h11, over asyncio.

Each query is one request. POST carries the message as the body; GET carries it as the ``dns``
parameter, base64url without padding (section 4.1.1). The DNS ID is 0 in both (section 4.1: it
keeps equal queries equal for HTTP caches); the client's own is put back when the answer is
rendered for it. The connection goes to the upstream's address, while ``:authority`` (HTTP/1.1:
Host), the TLS SNI and the certificate check use its TLS name. A certificate or name that does
not verify fails the try; there is never a plaintext fallback (RFC 8310 section 8). No
User-Agent, cookies or other headers that tell clients apart are sent (section 8.2). Only a 200
response of type ``application/dns-message`` whose body is one message answering the query
counts.

TLS offers ALPN ``h2`` then ``http/1.1``. When the server picks ``h2`` (RFC 8484 section 5.2
recommends HTTP/2), one connection carries every concurrent query, each on a stream of its own,
up to the server's SETTINGS_MAX_CONCURRENT_STREAMS (taken as 100 until its SETTINGS arrive, RFC
9113 section 6.5.2); queries over the limit wait for a stream, and a stream the server refuses
(REFUSED_STREAM, section 8.7) is sent again. Received data is acknowledged as it is read (flow
control, section 6.9), and a request body waits for window when there is none. What h2 has to
send is written once per event-loop turn: the requests made in one turn go out together. A
query that times out or is cancelled resets its stream (RST_STREAM CANCEL, section 8.7). After
a GOAWAY (section 6.8) or a lost connection the queries not answered yet are sent again on a
fresh connection, within their deadline, for as long as connections answer something (three
tries on connections that answer nothing, as DoT does). Each try is a future settled once, so a
query is answered once; as h2 reads no frame after a GOAWAY, a stream at or below its last
stream ID is sent again too, and the server may see such a query twice. A connection idle for
30 s is closed with a GOAWAY; a new one resumes the last TLS session.

Why h2 directly instead of httpx, as before: through httpx a DoH query cost well over a
millisecond of CPU, nearly all of it httpx/httpcore/anyio generic machinery around the h2 work
(a connection pool scanning its requests, anyio locks, ``sniffio`` import tried on every call,
about 2.7 socket sends per query). Here a read or a write carries dozens of queries, and what
is left is h2's own cost (HPACK, frames, stream states: about 80 us a query). Measured with a
load script of the design ``benchmarks/dns_transports.py`` now has (unbound on 127.0.0.1, 3,000
queries, 100 outstanding, CPU time of the client process; ten rounds in two sessions, each
round running the three transports one after the other); medians, with the ranges:

==========================  =======================  ===========================
transport                   q/s                      CPU per query
==========================  =======================  ===========================
DoH over httpx (before)     494 (435 - 652)          1,995 us (1,528 - 2,228)
DoH over h2 (this module)   3,957 (3,522 - 5,357)    245 us (185 - 271)
DoT, stream.py (baseline)   8,500 (7,314 - 10,041)   100 us (82 - 113)
==========================  =======================  ===========================

``sudo .venv/bin/python benchmarks/dns_transports.py`` measures every transport so; on the
day this module was merged it gave UDP 62 us, TCP 61 us, DoT 97 us and DoH 168 us of CPU per
query (medians of 5 rounds).

When the server does not pick ``h2`` (an HTTP/1.1-only server; RFC 8484 section 5.2 allows
HTTP/1.1), the same TLS connection carries HTTP/1.1 with h11: one request at a time per
connection, kept alive, up to eight connections, requests waiting beyond that. h11 was chosen
over falling back to httpx: the connection ALPN settled on is used at once instead of being
dropped and dialled again by a second client, and both versions share one way to connect
(bootstrap, SOCKS5 through python-socks as DoT, one verifying TLS context), to time out, to send
again and to count. An HTTP/1.1 request cannot be abandoned: one given up on closes its
connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

import h11
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import FlowControlError, FrameTooLargeError, H2Error
from h2.settings import SettingCodes, Settings

from netstack.counters import Counters
from olm.dns.answer import Answer
from olm.dns.upstream.address import Upstream
from olm.dns.upstream.base import Query
from olm.dns.upstream.connect import IdleSweep, address_of, open_connection, remember_session
from olm.dns.upstream.tls import client_context
from olm.dns.wire import WireError

if TYPE_CHECKING:
    from olm.dns.upstream.bootstrap import Bootstrap

__all__ = ["DohError", "DohTransport"]

log = logging.getLogger("olm.dns.upstream")

#: RFC 8484 section 6: the media type of a DNS message.
DNS_MESSAGE: Final = "application/dns-message"
_DNS_MESSAGE: Final = DNS_MESSAGE.encode("ascii")
#: The largest DNS message (RFC 8484 section 6: the body is one message).
_MAX_BODY: Final = 65535
#: Connections with nothing to do for this long are closed.
_IDLE_TIMEOUT: Final = 30.0
#: How long one TCP (and SOCKS5) connect with its TLS handshake may take.
_CONNECT_TIMEOUT: Final = 10.0
#: HTTP/1.1 connections kept at most (each carries one request at a time).
_H1_CONNECTIONS: Final = 8
#: Streams opened before the server's SETTINGS say how many it takes (RFC 9113 section 6.5.2:
#: no limit at first, and a limit is recommended to be no smaller than 100).
_ASSUMED_STREAMS: Final = 100
#: Tries in a row on connections that ended without answering anything (see stream.py).
_FRUITLESS: Final = 3
#: Headers are bytes both ways; ours are built well-formed, so h2 need not check them again.
_H2_CONFIG: Final = H2Configuration(
    client_side=True,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


class DohError(OSError):
    """A DoH exchange got an HTTP response that is not a DNS answer to the query."""


class _Retry(ConnectionError):
    """The request got no answer on its connection and may be sent again on another."""


class _Request:
    """One query as an HTTP request, tried on one connection at a time."""

    __slots__ = (
        "body",
        "future",
        "h2_headers",
        "method",
        "received",
        "sent",
        "stream_id",
        "target",
    )

    def __init__(
        self, method: bytes, target: bytes, body: bytes, h2_headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.method = method
        self.target = target
        self.body = body
        self.h2_headers = h2_headers
        #: The reply of the current try (the body, or why there is none).
        self.future: asyncio.Future[bytes] | None = None
        self.stream_id = 0
        self.received = bytearray()
        self.sent = 0  # bytes of the body sent on the current HTTP/2 stream


def _settle(request: _Request, result: bytes | BaseException) -> None:
    """End the current try of ``request`` with its body or an exception (once)."""
    future = request.future
    if future is None or future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
        future.exception()  # seen, also if nobody awaits it any more
    else:
        future.set_result(result)


def _response_fields(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, bytes, bytes]:
    """Return the ``:status``, ``content-type`` and ``content-length`` of response headers."""
    status = media = length = b""
    for name, value in headers:
        if name == b":status":
            status = value
        elif name == b"content-type":
            media = value
        elif name == b"content-length":
            length = value
    return status, media, length


class _Handshake(asyncio.Protocol):
    """Set up, once TLS is up, the connection for the HTTP version ALPN chose."""

    def __init__(self, owner: DohTransport) -> None:
        self.owner = owner
        self.connection: _Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Make the HTTP/2 or HTTP/1.1 connection and hand it the transport."""
        assert isinstance(transport, asyncio.Transport)
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        # RFC 9113 section 3.2: HTTP/2 over TLS only when the server selected "h2".
        kind = _H2Connection if alpn == "h2" else _H1Connection
        self.connection = kind(self.owner, transport)
        transport.set_protocol(self.connection)


class _Connection(asyncio.Protocol):
    """One TLS connection to the upstream, its requests in flight and those waiting for it."""

    http2 = False
    #: Requests it carries at once.
    capacity = 1

    def __init__(self, owner: DohTransport, transport: asyncio.Transport) -> None:
        self.owner = owner
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.waiting: deque[_Request] = deque()
        self.closed = False
        self.answered = 0
        self.last_used = self.loop.time()
        #: Done when the transport is closed.
        self.gone: asyncio.Future[None] = self.loop.create_future()

    @property
    def active(self) -> int:
        """Requests sent and not answered yet."""
        raise NotImplementedError

    @property
    def load(self) -> int:
        """Requests sent or waiting to be."""
        return self.active + len(self.waiting)

    def submit(self, request: _Request) -> asyncio.Future[bytes]:
        """Send ``request`` now if there is room, else when there is; return its reply."""
        future: asyncio.Future[bytes] = self.loop.create_future()
        request.future = future
        self.last_used = self.loop.time()
        if self.closed:
            _settle(request, _Retry(f"DoH {self.owner.upstream}: the connection closed"))
        elif self.active < self.capacity:
            self._start(request)
        else:
            self.waiting.append(request)
            self.owner.counters.inc("doh.queued")
        return future

    def _start(self, request: _Request) -> None:
        raise NotImplementedError

    def _start_waiting(self) -> None:
        """Send waiting requests while there is room."""
        waiting = self.waiting
        while waiting and self.active < self.capacity and not self.closed:
            request = waiting.popleft()
            if request.future is not None and not request.future.done():
                self._start(request)

    def cancel(self, request: _Request) -> None:
        """Stop the try of ``request`` on this connection (it timed out or was cancelled)."""
        raise NotImplementedError

    def _answered(self, request: _Request) -> None:
        """Settle ``request`` with its body."""
        _settle(request, bytes(request.received))
        self.answered += 1
        if self.answered == 1:
            self.owner.remember(self)

    def _requests(self) -> Iterator[_Request]:
        """Take out and return the requests sent and not answered yet."""
        raise NotImplementedError

    def _end(self, kind: type[OSError], why: str, *, abort: bool = False) -> None:
        """Close (or abort) the transport; every request on it or waiting for it fails."""
        if self.closed:
            return
        self.closed = True
        requests = [*self._requests(), *self.waiting]
        self.waiting.clear()
        for request in requests:
            _settle(request, kind(f"DoH {self.owner.upstream}: {why}"))
        if abort:
            self.transport.abort()
        else:
            self.transport.close()
        self.owner.dropped(self)

    def close(self, why: str) -> None:
        """Close the connection; requests on it fail with ConnectionError."""
        self._end(ConnectionError, why)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the requests not answered yet as ones to send elsewhere (the transport closed)."""
        self._end(_Retry, "the connection closed")
        if not self.gone.done():
            self.gone.set_result(None)


class _H2Connection(_Connection):
    """HTTP/2 (RFC 9113): every request a stream of this one connection."""

    http2 = True

    def __init__(self, owner: DohTransport, transport: asyncio.Transport) -> None:
        super().__init__(owner, transport)
        h2 = self.h2 = H2Connection(_H2_CONFIG)
        # Our SETTINGS (RFC 9113 section 6.5.2): no server push (section 8.4), and the header
        # list size h2 enforces, made known.
        h2.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.MAX_HEADER_LIST_SIZE: H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE,
            },
        )
        h2.initiate_connection()  # the connection preface (section 3.4)
        self.capacity = _ASSUMED_STREAMS
        self.streams: dict[int, _Request] = {}
        #: Streams whose request body waits for flow-control window (section 6.9).
        self.blocked: dict[int, _Request] = {}
        self._flushing = False
        transport.write(h2.data_to_send())

    @property
    def active(self) -> int:
        """Streams open."""
        return len(self.streams)

    def _requests(self) -> Iterator[_Request]:
        streams, self.streams = self.streams, {}
        self.blocked.clear()
        return iter(streams.values())

    # -- sending ---------------------------------------------------------------------------

    def _start(self, request: _Request) -> None:
        h2 = self.h2
        body = request.body
        try:
            stream_id = h2.get_next_available_stream_id()
            h2.send_headers(stream_id, request.h2_headers, end_stream=not body)
        except H2Error as exc:  # out of stream IDs, or the connection is ending
            self.waiting.appendleft(request)
            self._end(_Retry, f"no new stream ({exc})")
            return
        request.stream_id = stream_id
        request.received = bytearray()
        request.sent = 0
        self.streams[stream_id] = request
        if body:
            try:  # at once, in one DATA frame, when window and frame size allow
                h2.send_data(stream_id, body, end_stream=True)
                request.sent = len(body)
            except (FlowControlError, FrameTooLargeError):
                self._send_body(request)
        self._flush_soon()

    def _send_body(self, request: _Request) -> None:
        """Send as much of the body as flow control allows (RFC 9113 sections 6.9, 4.2)."""
        h2 = self.h2
        stream_id = request.stream_id
        body = request.body
        while request.sent < len(body):
            room = min(h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size)
            if room <= 0:
                self.blocked[stream_id] = request  # the rest on WINDOW_UPDATE
                return
            chunk = body[request.sent : request.sent + room]
            request.sent += len(chunk)
            h2.send_data(stream_id, chunk, end_stream=request.sent == len(body))
        self.blocked.pop(stream_id, None)

    def _flush_soon(self) -> None:
        """Write what h2 has to send at the end of this event-loop turn (once)."""
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        if not self.closed:
            data = self.h2.data_to_send()
            if data:
                self.transport.write(data)

    def cancel(self, request: _Request) -> None:
        """Reset the stream of ``request`` (CANCEL), or take it out of the waiting line."""
        stream_id = request.stream_id
        if self.streams.get(stream_id) is not request:
            with contextlib.suppress(ValueError):
                self.waiting.remove(request)
            return
        del self.streams[stream_id]
        self.blocked.pop(stream_id, None)
        if self.closed:
            return
        # RFC 9113 section 8.7 (and 7): CANCEL, the answer is no longer needed.
        self._reset(stream_id)
        self.owner.counters.inc("doh.cancelled")
        self._start_waiting()

    def _reset(self, stream_id: int) -> None:
        with contextlib.suppress(H2Error):  # already closed at the server's end
            self.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
        self._flush_soon()

    def _fail_stream(self, stream_id: int, error: BaseException) -> None:
        """End a stream whose response is of no use: reset it, and fail its request."""
        request = self.streams.pop(stream_id)
        self.blocked.pop(stream_id, None)
        self._reset(stream_id)
        _settle(request, error)

    # -- receiving -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Feed h2; settle the requests whose responses ended; send what h2 must answer."""
        if self.closed:
            return
        h2 = self.h2
        try:
            events = h2.receive_data(data)
        except H2Error as exc:
            self._flush()  # h2's GOAWAY (RFC 9113 section 5.4.1)
            self._end(_Retry, f"HTTP/2 protocol error ({exc})")
            return
        streams = self.streams
        ended = False
        for event in events:
            if isinstance(event, DataReceived):
                stream_id = event.stream_id
                # Flow control (RFC 9113 section 6.9): the data is read, its window is free.
                h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
                request = streams.get(stream_id)
                if request is not None:
                    request.received += event.data
                    if len(request.received) > _MAX_BODY:
                        self._fail_stream(stream_id, self.owner.too_large())
            elif isinstance(event, StreamEnded):
                request = streams.pop(event.stream_id, None)
                if request is not None:
                    self._answered(request)
                    ended = True
            elif isinstance(event, ResponseReceived):
                stream_id = event.stream_id
                if stream_id in streams:
                    status, media, length = _response_fields(event.headers)
                    code = int(status) if status.isdigit() else 0
                    error = self.owner.check_response(code, media, length, http2=True)
                    if error is not None:
                        self._fail_stream(stream_id, error)
                        ended = True
            elif isinstance(event, StreamReset):
                ended |= self._stream_reset(event)
            elif isinstance(event, RemoteSettingsChanged):
                self.capacity = h2.remote_settings.max_concurrent_streams
                ended = True
            elif isinstance(event, WindowUpdated):
                for request in list(self.blocked.values()):
                    self._send_body(request)
            elif isinstance(event, ConnectionTerminated):
                self._goaway(event)
                return
        if ended:
            self.last_used = self.loop.time()
            if self.waiting:
                self._start_waiting()
        self._flush()  # SETTINGS and PING acknowledgements, WINDOW_UPDATEs, new streams

    def _stream_reset(self, event: StreamReset) -> bool:
        """Fail the request of a stream the server reset; return whether it was ours."""
        request = self.streams.pop(event.stream_id, None)
        if request is None:
            return False
        self.blocked.pop(event.stream_id, None)
        code = event.error_code
        if code == ErrorCodes.REFUSED_STREAM:
            # RFC 9113 section 8.7: a refused stream was not processed; it may be sent again.
            self.owner.counters.inc("doh.refused")
            _settle(request, _Retry(f"DoH {self.owner.upstream}: stream refused"))
        else:
            self.owner.counters.inc("doh.stream_errors")
            name = code.name if isinstance(code, ErrorCodes) else hex(code)
            _settle(request, DohError(f"DoH {self.owner.upstream}: stream reset ({name})"))
        return True

    def _goaway(self, event: ConnectionTerminated) -> None:
        """End the connection the server is closing (RFC 9113 section 6.8)."""
        self.owner.counters.inc("doh.goaway")
        code = event.error_code
        name = code.name if isinstance(code, ErrorCodes) else str(code)
        # Streams above the last stream ID were not processed and may be sent again; h2 reads
        # nothing after a GOAWAY, so the others, unanswered, are sent again too.
        self._end(_Retry, f"GOAWAY ({name}, last stream {event.last_stream_id})")

    def close(self, why: str) -> None:
        """Say GOAWAY (NO_ERROR, RFC 9113 section 6.8) and close; requests on it fail."""
        if not self.closed:
            with contextlib.suppress(H2Error):
                self.h2.close_connection()
            self._flush()
        super().close(why)


class _H1Connection(_Connection):
    """HTTP/1.1 (RFC 9112): one request at a time on a persistent connection."""

    def __init__(self, owner: DohTransport, transport: asyncio.Transport) -> None:
        super().__init__(owner, transport)
        self.h11 = h11.Connection(h11.CLIENT)
        self.current: _Request | None = None
        self.failure: DohError | None = None

    @property
    def active(self) -> int:
        """1 while a request is out, else 0."""
        return self.current is not None

    def _requests(self) -> Iterator[_Request]:
        request, self.current = self.current, None
        return iter(() if request is None else (request,))

    def _start(self, request: _Request) -> None:
        self.current = request
        self.failure = None
        request.received = bytearray()
        body = request.body
        headers = [(b"host", self.owner.authority), (b"accept", _DNS_MESSAGE)]
        if body:
            headers += [(b"content-type", _DNS_MESSAGE), (b"content-length", b"%d" % len(body))]
        conn = self.h11
        try:
            parts = [
                conn.send(
                    h11.Request(method=request.method, target=request.target, headers=headers)
                )
            ]
            if body:
                parts.append(conn.send(h11.Data(data=body)))
            parts.append(conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            self._end(_Retry, f"HTTP/1.1 request refused by h11 ({exc})")
            return
        self.transport.write(b"".join(part for part in parts if part is not None))

    def cancel(self, request: _Request) -> None:
        """Take ``request`` out of the line, or close the connection if it is out."""
        if self.current is request:
            self.current = None
            self.owner.counters.inc("doh.cancelled")
            # HTTP/1.1 cannot abandon a request and keep its connection (RFC 9112 9.6).
            self._end(_Retry, "a request was abandoned", abort=True)
            return
        with contextlib.suppress(ValueError):
            self.waiting.remove(request)

    def data_received(self, data: bytes) -> None:
        """Feed h11; settle the request whose response ended."""
        if self.closed:
            return
        conn = self.h11
        conn.receive_data(data)
        try:
            while not self.closed:
                event = conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                if isinstance(event, h11.Response):
                    _, media, length = _response_fields(event.headers)
                    self.failure = self.owner.check_response(
                        event.status_code, media, length, http2=False
                    )
                elif isinstance(event, h11.Data):
                    self._data(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._complete()
                elif isinstance(event, h11.ConnectionClosed):
                    self._end(_Retry, "the server closed the connection")
        except h11.RemoteProtocolError as exc:
            self._end(_Retry, f"HTTP/1.1 protocol error ({exc})")

    def _data(self, data: bytes) -> None:
        request = self.current
        if request is None or self.failure is not None:
            return
        request.received += data
        if len(request.received) > _MAX_BODY:
            _settle(request, self.owner.too_large())
            self.current = None
            self._end(_Retry, "a body too large")

    def _complete(self) -> None:
        request, self.current = self.current, None
        if request is not None:
            if self.failure is not None:
                _settle(request, self.failure)
            else:
                self._answered(request)
        conn = self.h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # the connection persists (RFC 9112 section 9.3)
            self.last_used = self.loop.time()
            self._start_waiting()
        else:
            self._end(_Retry, "the server closes the connection")


class DohTransport:
    """DoH exchanges with one upstream: over one HTTP/2 connection, or a few HTTP/1.1 ones.

    Counters (on the node given): ``doh.requests`` (exchanges), ``doh.responses`` (answers
    returned), ``doh.connections`` (TLS connections made), ``doh.http2`` and ``doh.http1``
    (HTTP responses by version), ``doh.http_error.<status>``, ``doh.bad_content_type``,
    ``doh.too_large``, ``doh.mismatch``, ``doh.malformed``, ``doh.resent`` (requests sent again
    after their connection ended or their stream was refused), ``doh.goaway``, ``doh.refused``
    (streams refused by the server), ``doh.stream_errors`` (streams reset by the server),
    ``doh.cancelled`` (requests given up on once sent: their stream reset, or their HTTP/1.1
    connection closed), ``doh.queued`` (requests that waited for room on a connection),
    ``doh.idle_closed``, ``tls_resumed``, ``tls_verify_failed``.
    """

    def __init__(
        self,
        upstream: Upstream,
        counters: Counters,
        bootstrap: Bootstrap | None = None,
        *,
        idle_timeout: float = _IDLE_TIMEOUT,
    ) -> None:
        self.upstream = upstream
        self.counters = counters
        self.bootstrap = bootstrap
        self.idle_timeout = idle_timeout
        name = upstream.tls_name
        # The authority names the server, with the port unless it is https' own (RFC 9110
        # section 7.2); an IPv6 literal is bracketed.
        host = f"[{name}]" if ":" in name else name
        authority = host if upstream.port == 443 else f"{host}:{upstream.port}"
        self.authority = authority.encode("ascii")
        # Characters a path may not hold (spaces, non-ASCII) percent-encoded (RFC 3986 2.1).
        self._path = quote(upstream.path, safe="/:@!$&'()*+,;=%~").encode("ascii")
        # RFC 9113 section 8.3.1: the pseudo-header fields first.
        self._post_headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", self.authority),
            (b":path", self._path),
            (b"accept", _DNS_MESSAGE),
            (b"content-type", _DNS_MESSAGE),
        ]
        self.context = client_context(upstream.ca_file, ["h2", "http/1.1"], resuming=True)
        self._connections: list[_Connection] = []
        self._closing: set[_Connection] = set()
        self._connecting: asyncio.Task[_Connection] | None = None
        self._idle = IdleSweep(idle_timeout, self._close_idle)
        self._closed = False

    # -- connections -----------------------------------------------------------------------

    async def _open(self) -> _Connection:
        """Connect (through the SOCKS5 proxy if set), verify TLS, set up the HTTP version."""
        upstream = self.upstream
        async with asyncio.timeout(_CONNECT_TIMEOUT):
            address = await address_of(upstream, self.bootstrap)
            _, made = await open_connection(
                lambda: _Handshake(self), upstream, address, self.context, self.counters
            )
        connection = made.connection
        assert connection is not None
        self.counters.inc("doh.connections")
        return connection

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        """Keep a connection just made (or close it if the transport closed meanwhile)."""
        self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return  # the exchanges that waited for it have the exception
        connection = task.result()
        if self._closed:
            connection.close("transport closed")
        elif not connection.closed:
            self._connections.append(connection)
            self._idle.arm()

    async def _connection(self) -> _Connection:
        """Return a connection for one more request.

        One with room; else a new one, or the least loaded when there are enough (HTTP/2: the
        one connection, where requests wait for a stream).
        """
        while True:
            if self._closed:
                raise ConnectionError("transport closed")
            best: _Connection | None = None
            for connection in self._connections:
                load = connection.load
                if load < connection.capacity:
                    return connection
                if best is None or load < best.load:
                    best = connection
            if best is not None and (best.http2 or len(self._connections) >= _H1_CONNECTIONS):
                return best
            connecting = self._connecting
            if connecting is None:
                # One connect at a time, shared by all who wait; one who gives up does not
                # abandon it for the others.
                connecting = self._connecting = asyncio.ensure_future(self._open())
                connecting.add_done_callback(self._opened)
            connection = await asyncio.shield(connecting)
            if self._closed:
                raise ConnectionError("transport closed")
            if connection.closed:
                raise ConnectionError(f"DoH {self.upstream}: the connection closed at once")

    def dropped(self, connection: _Connection) -> None:
        """Forget a connection that ended (aclose waits until its transport is closed)."""
        if connection in self._connections:
            self._connections.remove(connection)
        gone = connection.gone
        if not gone.done():
            self._closing.add(connection)
            gone.add_done_callback(lambda _: self._closing.discard(connection))

    def remember(self, connection: _Connection) -> None:
        """Keep a connection's TLS session for the next one."""
        remember_session(self.context, self.upstream, connection.transport)

    def _close_idle(self, now: float) -> bool:
        """Close the connections idle for ``idle_timeout``; return whether any is left."""
        for connection in list(self._connections):
            if connection.load == 0 and now - connection.last_used >= self.idle_timeout:
                self.counters.inc("doh.idle_closed")
                connection.close("idle")
        return bool(self._connections)

    # -- responses -------------------------------------------------------------------------

    def check_response(
        self, status: int, media: bytes, length: bytes, *, http2: bool
    ) -> DohError | None:
        """Count a response; return why it cannot carry the answer, if it cannot."""
        counters = self.counters
        counters.inc("doh.http2" if http2 else "doh.http1")
        # RFC 8484 section 4.2.1: a DNS answer, whatever its RCODE, comes with a 2xx status;
        # servers send 200, and anything else carries no message to use.
        if status != 200:
            counters.inc(f"doh.http_error.{status}")
            return DohError(f"DoH {self.upstream}: HTTP status {status}")
        media = media.partition(b";")[0].strip().lower()
        if media != _DNS_MESSAGE:
            counters.inc("doh.bad_content_type")
            shown = media.decode("ascii", "replace") or "missing"
            return DohError(f"DoH {self.upstream}: content type {shown}")
        if length.isdigit() and int(length) > _MAX_BODY:
            counters.inc("doh.too_large")
            return DohError(f"DoH {self.upstream}: a body of {int(length)} bytes")
        return None

    def too_large(self) -> DohError:
        """Count and return the error of a body longer than one message."""
        self.counters.inc("doh.too_large")
        return DohError(f"DoH {self.upstream}: a body over {_MAX_BODY} bytes")

    # -- one exchange ----------------------------------------------------------------------

    def _request(self, query: Query) -> _Request:
        wire = query.wire(0)  # RFC 8484 section 4.1: ID 0
        if self.upstream.method == "GET":
            dns = base64.urlsafe_b64encode(wire).rstrip(b"=")  # section 4.1.1: no padding
            target = self._path + b"?dns=" + dns
            headers = [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", self.authority),
                (b":path", target),
                (b"accept", _DNS_MESSAGE),
            ]
            return _Request(b"GET", target, b"", headers)
        headers = [*self._post_headers, (b"content-length", b"%d" % len(wire))]
        return _Request(b"POST", self._path, wire, headers)

    async def exchange(self, query: Query, timeout: float) -> Answer:
        """Ask once over HTTPS; raise TimeoutError, or OSError when no answer came back.

        A request whose connection ends before its answer is sent again on a fresh one
        within the same time.
        """
        if self._closed:
            raise ConnectionError("transport closed")
        loop = asyncio.get_running_loop()
        now = loop.time()
        limit = query.timeout(timeout, now)
        if limit <= 0:
            raise TimeoutError
        request = self._request(query)
        self.counters.inc("doh.requests")
        fruitless = 0
        try:
            async with asyncio.timeout_at(now + limit):
                while True:
                    connection = await self._connection()
                    future = connection.submit(request)
                    try:
                        data = await future
                        break
                    except _Retry:
                        if self._closed:
                            raise ConnectionError("transport closed") from None
                        fruitless = 0 if connection.answered else fruitless + 1
                        if fruitless > _FRUITLESS:
                            raise
                        self.counters.inc("doh.resent")
                    finally:
                        if future.cancelled() or not future.done():
                            connection.cancel(request)
        except TimeoutError:
            raise TimeoutError(f"DoH {self.upstream}: no answer within {limit:.3g} s") from None
        if not query.matches(data, 0):
            self.counters.inc("doh.mismatch")
            raise DohError(f"DoH {self.upstream}: the reply does not answer the query")
        try:
            answer = query.answer(data)
        except WireError as exc:
            self.counters.inc("doh.malformed")
            raise DohError(f"DoH {self.upstream}: malformed reply ({exc})") from None
        self.counters.inc("doh.responses")
        return answer

    def close(self) -> None:
        """Close the connections; exchanges in progress fail."""
        self._closed = True
        self._idle.stop()
        for connection in list(self._connections):
            with contextlib.suppress(Exception):  # also when the event loop is gone
                connection.close("transport closed")

    async def aclose(self) -> None:
        """Close the connections and wait (a little) until they are closed."""
        self.close()
        if self._connecting is not None:  # a connection being made is closed once made
            await asyncio.wait([self._connecting], timeout=1.0)
        connections = list(self._closing)
        gone = [connection.gone for connection in connections]
        if gone:
            await asyncio.wait(gone, timeout=1.0)
        late = [connection for connection in connections if not connection.gone.done()]
        for connection in late:
            connection.transport.abort()
        if late:
            await asyncio.sleep(0)  # the aborted sockets close on the next loop turn
