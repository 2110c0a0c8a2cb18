"""DNS over QUIC to one upstream (RFC 9250), with aioquic.

One QUIC connection is kept and shared by every query; each query is a stream of its own, a
client-initiated bidirectional one (section 4.2): the message with its 2-byte length prefix and
ID 0 (section 4.2.1), then the stream's FIN; the reply is read to the end of the stream. The
connection offers ALPN ``doq`` (section 4.1) and TLS 1.3, the only version QUIC runs on (RFC
9001 section 4.2), and checks the server's certificate and name as every encrypted transport
does (RFC 8310 section 8): against ``ca_file``, or the system's store as ``SSL_CERT_FILE`` and
``SSL_CERT_DIR`` set it. The session ticket of the last connection is offered on the next one,
so a reconnect costs an abbreviated handshake (section 4.5; no 0-RTT).

A connection that ended (closed by the server, timed out, failed) is replaced at the next
query; a query whose stream ended with its connection is asked once more, on a fresh one,
within its deadline. A connection left idle is closed by us with DOQ_NO_ERROR (section 4.4),
and QUIC's own idle timeout (RFC 9000 section 10.1) ends one whose peer went away. SOCKS5
cannot carry QUIC, which runs over UDP.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING, Final

from aioquic.asyncio.protocol import QuicConnectionProtocol, QuicStreamHandler
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import END_STATES, NetworkAddress, QuicConnection
from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import AlertDescription, SessionTicket

from netstack.counters import Counters
from olm.dns.answer import Answer
from olm.dns.upstream.address import Upstream
from olm.dns.upstream.base import Query
from olm.dns.upstream.connect import address_of
from olm.dns.wire import U16, WireError

if TYPE_CHECKING:
    from olm.dns.upstream.bootstrap import Bootstrap

__all__ = ["DoqError", "DoqTransport"]

#: RFC 9250 section 4.3: DoQ error codes.
DOQ_NO_ERROR: Final = 0x0
DOQ_PROTOCOL_ERROR: Final = 0x2
DOQ_REQUEST_CANCELLED: Final = 0x3

_LENGTH: Final = U16
#: A reply is one message: its length prefix and at most 65535 bytes (RFC 9250 section 4.2).
_MAX_REPLY: Final = 2 + 65535
#: TLS alerts of a failed certificate or name check (RFC 8446 section 6.2), which QUIC sends
#: as CRYPTO_ERROR plus the alert (RFC 9001 section 4.8).
_VERIFY_ALERTS: Final = frozenset(
    int(QuicErrorCode.CRYPTO_ERROR) + int(alert)
    for alert in (
        AlertDescription.bad_certificate,
        AlertDescription.unsupported_certificate,
        AlertDescription.certificate_revoked,
        AlertDescription.certificate_expired,
        AlertDescription.certificate_unknown,
        AlertDescription.unknown_ca,
    )
)


class DoqError(OSError):
    """A DoQ exchange got a reply that is not a DNS answer to the query."""


class DoqStreamError(ConnectionError):
    """A query's stream failed: reset by the server, badly framed, or ended with its connection."""


class _ConnectionLost(DoqStreamError):
    """The connection ended while a stream awaited its reply."""


class _Connection(QuicConnectionProtocol):
    """One QUIC connection to the upstream, and the replies its streams await."""

    def __init__(
        self, quic: QuicConnection, stream_handler: QuicStreamHandler | None = None
    ) -> None:
        super().__init__(quic, stream_handler)
        self.streams: dict[int, tuple[bytearray, asyncio.Future[bytes]]] = {}
        self.terminated: events.ConnectionTerminated | None = None
        self.closed_by_us = False

    @property
    def usable(self) -> bool:
        """Whether new streams may be opened on this connection."""
        # aioquic reports a close by the peer only when the draining period is over (three
        # PTOs, RFC 9000 section 10.2); the connection's state tells at once.
        return (
            self.terminated is None
            and not self.closed_by_us
            and self._quic._state not in END_STATES
        )

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        """Process a datagram; fail the awaited streams at once if it closed the connection."""
        super().datagram_received(data, addr)
        if self.streams and not self.usable:
            self._fail_all(_ConnectionLost("the connection is closing"))

    def ask(self, payload: bytes) -> tuple[int, asyncio.Future[bytes]]:
        """Send ``payload`` on a new stream, then FIN; return the stream and its reply."""
        quic = self._quic
        stream_id = quic.get_next_available_stream_id()
        reply: asyncio.Future[bytes] = self._loop.create_future()
        self.streams[stream_id] = (bytearray(), reply)
        quic.send_stream_data(stream_id, payload, end_stream=True)
        self.transmit()
        return stream_id, reply

    def forget(self, stream_id: int, *, cancel: bool) -> None:
        """Stop awaiting a stream; ``cancel`` tells the server too (RFC 9250 section 4.3.1)."""
        if self.streams.pop(stream_id, None) is None or not cancel or not self.usable:
            return
        try:
            self._quic.reset_stream(stream_id, DOQ_REQUEST_CANCELLED)
            self._quic.stop_stream(stream_id, DOQ_REQUEST_CANCELLED)
        except ValueError:
            return  # the stream is over at its end already
        self.transmit()

    def shut(self, error_code: int, reason: str, failure: BaseException) -> None:
        """Close the connection with ``error_code``; fail every awaited stream."""
        self.closed_by_us = True
        self._fail_all(failure)
        self.close(error_code=error_code, reason_phrase=reason)  # sends CONNECTION_CLOSE now
        if self._transport is not None:
            self._transport.close()

    def _fail_all(self, failure: BaseException) -> None:
        streams, self.streams = self.streams, {}
        for _, reply in streams.values():
            if not reply.done():
                reply.set_exception(failure)

    def quic_event_received(self, event: events.QuicEvent) -> None:
        """Collect each stream's reply; fail the streams of a reset or ended connection."""
        if isinstance(event, events.StreamDataReceived):
            entry = self.streams.get(event.stream_id)
            if entry is None:
                return  # a stream we are not waiting on (cancelled, or never ours)
            data, reply = entry
            data += event.data
            if len(data) > _MAX_REPLY:
                self.shut(
                    DOQ_PROTOCOL_ERROR,
                    "reply too long",
                    DoqStreamError(f"a reply over {_MAX_REPLY} bytes"),
                )
            elif event.end_stream:
                del self.streams[event.stream_id]
                reply.set_result(bytes(data))
        elif isinstance(event, events.StreamReset):
            entry = self.streams.pop(event.stream_id, None)
            if entry is not None:
                entry[1].set_exception(
                    DoqStreamError(f"stream reset by the server (error {event.error_code:#x})")
                )
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = event
            reason = event.reason_phrase or "no reason given"
            self._fail_all(
                _ConnectionLost(f"connection closed (error {event.error_code:#x}: {reason})")
            )
            if self._transport is not None:
                self._transport.close()


class DoqTransport:
    """DoQ exchanges with one upstream over one shared QUIC connection.

    Counters (on the node given): ``doq.queries``, ``doq.connections`` (handshakes completed),
    ``doq.reconnects`` (connections opened to replace one that ended other than by our idle
    close), ``doq.retries`` (queries asked again after their connection ended),
    ``doq.stream_errors`` (streams reset, badly framed or ended with their connection),
    ``doq.mismatch``, ``doq.malformed``, ``doq.idle_closed``, ``tls_verify_failed``.
    """

    def __init__(
        self,
        upstream: Upstream,
        counters: Counters,
        bootstrap: Bootstrap | None = None,
        *,
        idle_timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        if upstream.socks5:
            raise ValueError(
                f"upstream {upstream}: SOCKS5 cannot carry DNS over QUIC, which runs over UDP; "
                "remove socks5 or use an https:// or tls:// upstream"
            )
        self.upstream = upstream
        self.counters = counters
        self.bootstrap = bootstrap
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._replacing = False
        self._ticket: SessionTicket | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_used = 0.0
        self._closed = False

    # -- the connection ------------------------------------------------------------------

    def _configuration(self) -> QuicConfiguration:
        upstream = self.upstream
        configuration = QuicConfiguration(
            alpn_protocols=["doq"],
            is_client=True,
            server_name=upstream.tls_name,
            verify_mode=ssl.CERT_REQUIRED,
            # A backstop behind our own idle close: ends a connection whose peer went away.
            idle_timeout=2 * self.idle_timeout,
            session_ticket=self._ticket,
        )
        if upstream.ca_file:
            configuration.load_verify_locations(cafile=upstream.ca_file)
        else:
            paths = ssl.get_default_verify_paths()  # SSL_CERT_FILE and SSL_CERT_DIR first
            if paths.cafile or paths.capath:
                configuration.load_verify_locations(cafile=paths.cafile, capath=paths.capath)
        return configuration

    def _remember_ticket(self, ticket: SessionTicket) -> None:
        self._ticket = ticket

    async def _connect(self) -> _Connection:
        """Open a connection and complete its handshake."""
        loop = asyncio.get_running_loop()
        address = await address_of(self.upstream, self.bootstrap)
        sock = socket.socket(
            socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM
        )
        try:
            sock.setblocking(False)
            # Connected: the kernel passes on only datagrams from the upstream's address.
            sock.connect((address, self.upstream.port))
            peer = sock.getpeername()
            quic = QuicConnection(
                configuration=self._configuration(), session_ticket_handler=self._remember_ticket
            )
            _, connection = await loop.create_datagram_endpoint(
                lambda: _Connection(quic), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        connection.connect(peer)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await connection.wait_connected()
        except TimeoutError:
            connection.shut(
                DOQ_NO_ERROR, "handshake timed out", ConnectionError("handshake timed out")
            )
            raise
        except ConnectionError:
            event = connection.terminated
            reason = event.reason_phrase if event is not None else "connection failed"
            if event is not None and event.error_code in _VERIFY_ALERTS:
                self.counters.inc("tls_verify_failed")
                raise ssl.SSLCertVerificationError(f"DoQ {self.upstream}: {reason}") from None
            raise ConnectionError(f"DoQ {self.upstream}: handshake failed: {reason}") from None
        except BaseException:
            connection.shut(DOQ_NO_ERROR, "", ConnectionError("cancelled"))
            raise
        self.counters.inc("doq.connections")
        if self._replacing:
            self.counters.inc("doq.reconnects")
            self._replacing = False
        return connection

    async def _connected(self) -> _Connection:
        """Return the connection, opening one if there is none or it ended."""
        if self._closed:
            raise ConnectionError("transport closed")
        connection = self._connection
        if connection is not None:
            if connection.usable:
                return connection
            self._connection = None
            if not connection.closed_by_us:
                self._replacing = True
        connecting = self._connecting
        if connecting is None:
            # One handshake for every query that waits; a query that gives up does not
            # abandon it for the others.
            connecting = self._connecting = asyncio.ensure_future(self._connect())
            connecting.add_done_callback(self._connect_done)
        connection = await asyncio.shield(connecting)
        if not connection.usable:  # closed while its handshake went on
            raise ConnectionError(f"DoQ {self.upstream}: connection closed")
        return connection

    def _connect_done(self, task: asyncio.Future[_Connection]) -> None:
        self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return
        connection = task.result()
        if self._closed:
            connection.shut(DOQ_NO_ERROR, "", ConnectionError("transport closed"))
        else:
            self._connection = connection

    def _idle_check(self) -> None:
        """Close the connection once no stream is open and it has been idle long enough."""
        self._idle_timer = None
        connection = self._connection
        if connection is None or not connection.usable:
            return
        loop = asyncio.get_running_loop()
        left = self._last_used + self.idle_timeout - loop.time()
        if connection.streams or left > 0:
            self._idle_timer = loop.call_later(max(left, 0.1), self._idle_check)
            return
        self._connection = None
        self.counters.inc("doq.idle_closed")
        connection.shut(DOQ_NO_ERROR, "idle", ConnectionError("idle"))

    # -- one exchange --------------------------------------------------------------------

    async def exchange(self, query: Query, timeout: float) -> Answer:
        """Ask once over QUIC; raise TimeoutError, or OSError when no answer came back."""
        loop = asyncio.get_running_loop()
        self.counters.inc("doq.queries")
        wire = query.wire(0)  # RFC 9250 section 4.2.1: ID 0
        payload = _LENGTH.pack(len(wire)) + wire
        try:
            async with asyncio.timeout(query.timeout(timeout, loop.time())):
                connection = await self._connected()
                try:
                    data = await self._ask(connection, payload)
                except _ConnectionLost:
                    # The connection ended under the stream (the server closed it, or it
                    # failed): once more on a fresh one.
                    self.counters.inc("doq.stream_errors")
                    self.counters.inc("doq.retries")
                    connection = await self._connected()
                    data = await self._ask(connection, payload)
        except DoqStreamError:
            self.counters.inc("doq.stream_errors")
            raise
        finally:
            self._last_used = loop.time()
            if self._idle_timer is None and not self._closed:
                self._idle_timer = loop.call_later(self.idle_timeout, self._idle_check)
        return self._answer(connection, query, data)

    async def _ask(self, connection: _Connection, payload: bytes) -> bytes:
        stream_id, reply = connection.ask(payload)
        try:
            return await reply
        finally:
            connection.forget(stream_id, cancel=reply.cancelled())

    def _answer(self, connection: _Connection, query: Query, data: bytes) -> Answer:
        """Check a stream's bytes: one length-prefixed message answering ``query``."""
        if len(data) < 2 or _LENGTH.unpack_from(data)[0] != len(data) - 2:
            # RFC 9250 section 4.3.3: a stream whose data is not one whole message.
            self.counters.inc("doq.stream_errors")
            connection.shut(DOQ_PROTOCOL_ERROR, "bad length", ConnectionError("protocol error"))
            raise DoqStreamError(f"DoQ {self.upstream}: a reply whose length prefix is wrong")
        message = data[2:]
        if not query.matches(message, 0):
            self.counters.inc("doq.mismatch")
            raise DoqError(f"DoQ {self.upstream}: the reply does not answer the query")
        try:
            return query.answer(message)
        except WireError as exc:
            self.counters.inc("doq.malformed")
            raise DoqError(f"DoQ {self.upstream}: malformed reply ({exc})") from None

    def close(self) -> None:
        """Close the connection (DOQ_NO_ERROR); exchanges in progress fail."""
        self._closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        connection, self._connection = self._connection, None
        if connection is not None and connection.usable:
            connection.shut(DOQ_NO_ERROR, "", ConnectionError("transport closed"))
